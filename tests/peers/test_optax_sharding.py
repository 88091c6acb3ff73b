"""optax's sharding tests, ported to rmsprop_jax.

Source: google-deepmind/optax, ``optax/_src/sharding_test.py`` at v0.2.8,
class ``ShardingTest``: ``test_init_with_abstract_input``,
``test_state_sharding_type_init_match_update`` and
``test_state_sharding_type_preserved_with_jit``, for the peer's
``rmsprop(1.0)`` entry and, beyond the peer, the other factories below.
``test_microbatch_with_explicit_sharding`` tests optax.microbatching, not an
optimizer (see ``NOT_APPLICABLE.md``).

The peer runs on 8 simulated CPU devices. Here the tests run on however many
devices the process has (one, in the default suite), and
``test_the_same_on_8_simulated_devices`` runs the two sharding tests again for
the peer's ``rmsprop`` entry in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (every entry would cost
the suite's time budget; ``tests/multidevice`` covers sharding more widely).
"""

import math
import os
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from _helpers import types_of

import rmsprop_jax
from rmsprop_jax import presets

OPTIMIZERS = {
    "rmsprop": lambda: rmsprop_jax.rmsprop(1.0),  # the peer's entry
    "rmsprop_centered_momentum": lambda: rmsprop_jax.rmsprop(1.0, centered=True, momentum=0.9),
    "scale_by_rms": lambda: rmsprop_jax.scale_by_rms(),
    "pytorch": lambda: presets.pytorch(1.0, momentum=0.9, weight_decay=0.1),
    "keras": lambda: presets.keras(1.0, centered=True, clipnorm=1.0),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_init_with_abstract_input(name):
    opt = OPTIMIZERS[name]()
    abstract = jax.ShapeDtypeStruct(shape=(2, 4, 8), dtype=jnp.float32)
    state = opt.init(abstract)
    assert state is not None
    # Beyond the peer: the same shapes and dtypes as from a real array.
    shapes = lambda tree: jax.tree.map(lambda x: (jnp.shape(x), jnp.result_type(x)), tree)
    assert shapes(state) == shapes(opt.init(jnp.zeros((2, 4, 8), jnp.float32)))


def explicit_mesh():
    """A 1-D mesh with Explicit axis 'x' over as many devices as divide 8."""
    size = math.gcd(8, jax.device_count())
    return jax.make_mesh(
        (size,), ("x",), axis_types=(jax.sharding.AxisType.Explicit,), devices=jax.devices()[:size]
    )


def sharded_params(mesh):
    sharding = jax.sharding.NamedSharding(mesh, jax.P(None, "x"))
    return jnp.zeros((2, 8, 4), dtype=jnp.float16, out_sharding=sharding)


def assert_state_follows_params(state, params):
    """Beyond the peer: every parameter-shaped state leaf has the parameters'
    sharding (the dtype is float32 here: float16 parameters get float32 state)."""
    want = jax.typeof(params).sharding.spec
    leaves = [x for x in jax.tree.leaves(state) if jnp.shape(x) == params.shape]
    assert leaves
    for leaf in leaves:
        assert jax.typeof(leaf).sharding.spec == want


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_state_sharding_type_init_match_update(name):
    opt = OPTIMIZERS[name]()
    mesh = explicit_mesh()
    with jax.set_mesh(mesh):
        params = sharded_params(mesh)
        state0 = opt.init(params)
        _, state1 = opt.update(params, state0, params)
        assert types_of(state0) == types_of(state1)
        assert_state_follows_params(state1, params)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_state_sharding_type_preserved_with_jit(name):
    opt = OPTIMIZERS[name]()
    mesh = explicit_mesh()
    with jax.set_mesh(mesh):
        params = sharded_params(mesh)
        state0 = opt.init(params)
        state1 = jax.jit(opt.init)(params)
        assert types_of(state0) == types_of(state1)
        _, state2 = opt.update(params, state0, params)
        _, state3 = jax.jit(opt.update)(params, state0, params)
        assert types_of(state2) == types_of(state3)
        assert_state_follows_params(state3, params)


def test_the_same_on_8_simulated_devices():
    if jax.device_count() >= 8:
        pytest.skip("this process already has 8 devices: the tests above are the 8-device run")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    here = pathlib.Path(__file__).resolve()
    result = subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"),
            f"{here}::test_state_sharding_type_init_match_update[rmsprop]",
            f"{here}::test_state_sharding_type_preserved_with_jit[rmsprop]",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=here.parents[2],
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    passed = re.search(r"(\d+) passed", out)
    assert passed and int(passed.group(1)) == 2 and "skipped" not in out, out[-2000:]
