"""Sharded state on 8 simulated CPU devices (run by tests/test_scale.py in a
subprocess with XLA_FLAGS=--xla_force_host_platform_device_count=8)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import rmsprop_jax

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 devices")

COLLECTIVES = re.compile(r"all-reduce|all-gather|reduce-scatter|collective-permute|all-to-all")

CONFIGS = [
    dict(learning_rate=0.1),
    dict(
        learning_rate=optax.linear_schedule(0.1, 0.01, 10),
        centered=True,
        momentum=0.9,
        nesterov=True,
        bias_correction=True,
    ),
    dict(
        learning_rate=0.1,
        weight_decay=0.1,
        weight_decay_mode="coupled",
        momentum=0.9,
        lr_in_momentum=False,
        split_complex=True,
    ),
    dict(
        learning_rate=0.1,
        weight_decay=0.1,
        nu_dtype=jnp.bfloat16,
        mu_dtype=jnp.bfloat16,
        stochastic_rounding=True,
        centered=True,
    ),
]

FACTORED = dict(learning_rate=0.1, factored=True, min_dim_size_to_factor=4, momentum=0.9)
CONFIGS.append(FACTORED)

SPECS = {
    "w": ((8, 16), jnp.float32, P("data", "model")),
    "v": ((16, 8), jnp.float32, P(None, "data")),
    "b": ((16,), jnp.float32, P("model")),
    "flat": ((32,), jnp.float32, P(("data", "model"))),
    "rep": ((3, 5), jnp.float32, P()),
    "z": ((8,), jnp.complex64, P("model")),
    "h": ((4, 8), jnp.bfloat16, P("data", None)),
}


def _mesh(kind):
    return jax.make_mesh((2, 4), ("data", "model"), axis_types=(kind, kind))


def _params(mesh):
    return {
        name: jax.device_put(jnp.ones(shape, dtype), NamedSharding(mesh, spec))
        for name, (shape, dtype, spec) in SPECS.items()
    }


def _norm(spec, ndim):
    """A PartitionSpec as a tuple of length ndim: P() and P(None, None) are equal."""
    spec = tuple(spec)
    return spec + (None,) * (ndim - len(spec))


def _check_follows(state, params, split_complex):
    """Every state leaf has its parameter's sharding; a factor of a factored
    second moment has it on the axis it keeps (the averaged axis is size 1)."""
    for field in ("nu", "mu", "trace"):
        tree = getattr(state, field)
        if tree is None:
            continue
        for name, value in tree.items():
            want = params[name].sharding.spec
            if split_complex and jnp.iscomplexobj(params[name]):
                want = P(*want, None)
            for leaf in jax.tree.leaves(value):
                spec = _norm(want, leaf.ndim)
                spec = tuple(None if n == 1 else e for n, e in zip(leaf.shape, spec))
                got = _norm(leaf.sharding.spec, leaf.ndim)
                assert got == spec, (field, name, got, spec)


@pytest.mark.parametrize("kw", CONFIGS)
@pytest.mark.parametrize("kind", [AxisType.Explicit, AxisType.Auto])
def test_state_has_the_parameters_shardings(kw, kind):
    mesh = _mesh(kind)
    params = _params(mesh)
    opt = rmsprop_jax.rmsprop(**kw)
    split = kw.get("split_complex", False)
    state = opt.init(params)
    _check_follows(state, params, split)  # eager
    with jax.set_mesh(mesh):
        if kind == AxisType.Explicit:
            # With explicit axes the sharding is part of the type, so init under
            # jit keeps it. (With Auto axes the compiler chooses init's output
            # shardings, and out_shardings decides; see the README.)
            state = jax.jit(opt.init)(params)
            _check_follows(state, params, split)  # under jit
        grads = jax.tree.map(lambda p: p * 0.5, params)
        updates, state = jax.jit(opt.update)(grads, state, params)
    _check_follows(state, params, split)  # after a jitted update
    for name, u in updates.items():
        assert _norm(u.sharding.spec, u.ndim) == _norm(params[name].sharding.spec, u.ndim)


@pytest.mark.parametrize("kw", [kw for kw in CONFIGS if not kw.get("factored")])
def test_compiled_update_has_no_collectives(kw):
    mesh = _mesh(AxisType.Explicit)
    params = _params(mesh)
    opt = rmsprop_jax.rmsprop(**kw)
    with jax.set_mesh(mesh):
        state = jax.jit(opt.init)(params)
        hlo = jax.jit(opt.update).lower(params, state, params).compile().as_text()
    assert "fusion" in hlo  # we are looking at a real compiled program
    assert not COLLECTIVES.search(hlo), COLLECTIVES.findall(hlo)[:5]


def _per_device_bytes(tree):
    return sum(x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(tree))


def test_shard_state_zero1_cuts_memory_and_changes_nothing():
    mesh = _mesh(AxisType.Auto)
    # Data parallel: parameters replicated over "data", one sharded over "model".
    shapes = {"w": (64, 32), "b": (32,), "odd": (3, 5), "m": (16, 8)}
    specs = {"w": P(), "b": P(), "odd": P(), "m": P(None, "model")}
    rng = np.random.default_rng(0)
    params0 = {
        k: jax.device_put(
            jnp.asarray(rng.normal(size=s), jnp.float32), NamedSharding(mesh, specs[k])
        )
        for k, s in shapes.items()
    }
    opt = rmsprop_jax.rmsprop(0.01, centered=True, momentum=0.9)
    zero1 = rmsprop_jax.shard_state(opt.init(params0), mesh, "data")
    assert zero1.nu["w"].spec == P("data", None)  # the largest dimension
    assert zero1.nu["b"].spec == P("data")
    assert zero1.nu["odd"].spec == P(None, None)  # 3 and 5: nothing 2 divides
    assert zero1.nu["m"].spec == P("data", "model")
    assert zero1.count.spec == P()
    # From shapes alone (jax.eval_shape carries no shardings with Auto axes),
    # every leaf counts as replicated: the same answer for the replicated ones.
    from_shapes = rmsprop_jax.shard_state(jax.eval_shape(opt.init, params0), mesh, "data")
    for name in ("w", "b", "odd"):
        assert from_shapes.nu[name].spec == zero1.nu[name].spec

    def step(params, state, x):
        grads = jax.grad(lambda p: sum(jnp.sum(jnp.sin(v * x)) for v in jax.tree.leaves(p)))(params)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    param_shardings = jax.tree.map(lambda p: p.sharding, params0)
    plain = jax.jit(step)
    sharded = jax.jit(step, out_shardings=(param_shardings, zero1))
    a = (params0, opt.init(params0))
    b = (params0, jax.jit(opt.init, out_shardings=zero1)(params0))
    for i in range(5):
        x = jnp.float32(0.3 + 0.1 * i)
        a = plain(*a, x)
        b = sharded(*b, x)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7)
    # Per-device state memory falls by the size of the data axis (2) for every
    # leaf that could be split; "odd" and the count stay whole.
    full, zero = _per_device_bytes(a[1]), _per_device_bytes(b[1])
    unsplittable = 3 * (3 * 5 * 4) + 4  # odd's nu, mu, trace and the int32 count
    assert zero - unsplittable == (full - unsplittable) // 2
    assert b[1].nu["w"].sharding.spec == P("data", None)


def test_factored_update_reduces_only_for_its_means():
    """A factored leaf's row and column means reduce over sharded axes: those
    all-reduces are the only collectives."""
    mesh = _mesh(AxisType.Explicit)
    params = _params(mesh)
    opt = rmsprop_jax.rmsprop(**FACTORED)
    with jax.set_mesh(mesh):
        state = jax.jit(opt.init)(params)
        hlo = jax.jit(opt.update).lower(params, state, params).compile().as_text()
    kinds = set(COLLECTIVES.findall(hlo))
    assert kinds <= {"all-reduce"}, kinds


@pytest.mark.parametrize("kind", [AxisType.Explicit, AxisType.Auto])
def test_init_from_sharded_shape_dtype_structs(kind):
    """Abstract initialisation keeps the shardings the structs name."""
    mesh = _mesh(kind)
    params = _params(mesh)
    structs = jax.tree.map(
        lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype, sharding=p.sharding), params
    )
    for kw in (CONFIGS[0], CONFIGS[2], FACTORED):
        opt = rmsprop_jax.rmsprop(**kw)
        state = opt.init(structs)
        want = opt.init(params)
        assert jax.tree.map(lambda x: (x.shape, x.dtype), state) == jax.tree.map(
            lambda x: (x.shape, x.dtype), want
        )
        _check_follows(state, params, kw.get("split_complex", False))


def test_shard_state_with_factored_leaves():
    """ZeRO-1 over factored state: shard_state's shardings work as out_shardings
    under explicit axes, and results equal the unsharded run."""
    mesh = _mesh(AxisType.Explicit)
    rng = np.random.default_rng(0)
    params0 = {
        "w": jax.device_put(
            jnp.asarray(rng.normal(size=(16, 8)), jnp.float32), NamedSharding(mesh, P())
        ),
        "m": jax.device_put(
            jnp.asarray(rng.normal(size=(8, 16)), jnp.float32),
            NamedSharding(mesh, P(None, "model")),
        ),
    }
    opt = rmsprop_jax.rmsprop(**FACTORED)
    with jax.set_mesh(mesh):
        zero1 = rmsprop_jax.shard_state(opt.init(params0), mesh, "data")

        def step(params, state, x):
            grads = jax.tree.map(lambda v: jnp.sin(v * x), params)
            updates, state = opt.update(grads, state, params)
            return optax.apply_updates(params, updates), state

        shardings = jax.tree.map(lambda p: p.sharding, params0)
        a = (params0, opt.init(params0))
        b = (params0, jax.jit(opt.init, out_shardings=zero1)(params0))
        for i in range(3):
            x = jnp.float32(0.3 + 0.1 * i)
            a = jax.jit(step)(*a, x)
            b = jax.jit(step, out_shardings=(shardings, zero1))(*b, x)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7)
    assert isinstance(b[1].nu["w"], rmsprop_jax.FactoredNu)


# 8-bit state: blocks of 4 so that the small sharded leaves above use the format.
EIGHT = dict(
    learning_rate=0.1,
    nu_dtype=rmsprop_jax.blockwise_8bit(block_size=4, min_size=0),
    mu_dtype=rmsprop_jax.blockwise_8bit(block_size=4, min_size=0),
    momentum=0.9,
    centered=True,
)
EIGHT_SR = dict(EIGHT, centered=False, stochastic_rounding=True)


def _check_blocks_follow(state, params):
    """8-bit leaves: codes sharded like the parameter, scales like it on the
    axes before the rows and, where the rows start at a sharded axis, on the
    blocks' axis too; every shard holds whole blocks."""
    seen = 0
    for field in ("nu", "mu", "trace"):
        for name, q in (getattr(state, field) or {}).items():
            if not isinstance(q, rmsprop_jax.QuantizedArray):
                continue
            seen += 1
            want = _norm(params[name].sharding.spec, params[name].ndim)
            want = want + (None,) * (q.codes.ndim - len(want))
            assert _norm(q.codes.sharding.spec, q.codes.ndim) == want, (field, name)
            k = q.scales.ndim - 1
            scales_spec = _norm(q.scales.sharding.spec, k + 1)
            assert scales_spec[:k] == want[:k], (field, name, scales_spec)
            assert scales_spec[k] in (None, want[k] if k < len(want) else None)
            # whole blocks per shard: the shard's codes and scales agree in size
            shard_codes = q.codes.addressable_shards[0].data.size
            shard_scales = q.scales.addressable_shards[0].data.size
            assert shard_codes / shard_scales <= 4 + 1e-9
    assert seen >= 6


@pytest.mark.parametrize("kw", [EIGHT, EIGHT_SR])
@pytest.mark.parametrize("kind", [AxisType.Explicit, AxisType.Auto])
def test_eight_bit_state_follows_the_shardings_with_no_collectives(kind, kw):
    mesh = _mesh(kind)
    params = _params(mesh)
    opt = rmsprop_jax.rmsprop(**kw)
    state = opt.init(params)
    _check_blocks_follow(state, params)
    grads = jax.tree.map(lambda p: p * 0.5, params)
    with jax.set_mesh(mesh):
        if kind == AxisType.Explicit:
            state = jax.jit(opt.init)(params)
            _check_blocks_follow(state, params)
        step = jax.jit(opt.update)
        hlo = step.lower(grads, state, params).compile().as_text()
        updates, new_state = step(grads, state, params)
    assert not COLLECTIVES.search(hlo), COLLECTIVES.findall(hlo)[:5]
    _check_blocks_follow(new_state, params)
    # the same numbers as on one device
    single = jax.tree.map(lambda x: jnp.asarray(np.asarray(x)), (grads, params))
    plain = rmsprop_jax.rmsprop(**kw)
    want, _ = plain.update(single[0], plain.init(single[1]), single[1])
    for name in params:
        np.testing.assert_allclose(
            np.asarray(updates[name]), np.asarray(want[name]), rtol=1e-6, atol=1e-7
        )


def test_shard_state_splits_eight_bit_leaves_on_whole_blocks():
    mesh = _mesh(AxisType.Auto)
    params = {"w": jnp.ones((64, 32)), "flat": jnp.ones((256,)), "odd": jnp.ones((3, 5))}
    params = jax.tree.map(lambda p: jax.device_put(p, NamedSharding(mesh, P())), params)
    opt = rmsprop_jax.rmsprop(**EIGHT)
    state = opt.init(params)
    zero1 = rmsprop_jax.shard_state(state, mesh, "data")
    # (64, 32): rows of 32 start at axis 1; axis 0 comes before them
    assert state.nu["w"].scales.shape == (64, 8)
    assert zero1.nu["w"].codes.spec == P("data", None) and zero1.nu["w"].scales.spec == P(
        "data", None
    )
    # (256,): one row of 64 blocks, split into two halves of whole blocks
    assert zero1.nu["flat"].codes.spec == P("data") and zero1.nu["flat"].scales.spec == P("data")
    # (3, 5): one padded row; left whole
    assert zero1.nu["odd"].codes.spec == P(None, None)

    def step(params, state, x):
        grads = jax.tree.map(lambda v: jnp.sin(v * x), params)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    shardings = jax.tree.map(lambda p: p.sharding, params)
    a = (params, state)
    b = (params, jax.jit(opt.init, out_shardings=zero1)(params))
    for i in range(3):
        x = jnp.float32(0.3 + 0.1 * i)
        a = jax.jit(step)(*a, x)
        b = jax.jit(step, out_shardings=(shardings, zero1))(*b, x)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7)
    assert b[1].nu["w"].codes.sharding.spec == P("data", None)
