"""The compiled 8-bit step holds no float32 temporary the size of a leaf.

XLA:CPU writes such a temporary to fresh memory at every step, and each one
cost the 8-bit step more than the whole float32 step on a large leaf: a
reduction that selected the finite new values, a normalised gradient shared
by the update and the momentum buffer's codes, and scalar constants that two
leaves of one shape shared (broadcast in full). The benchmark measures the
time (``benchmarks/eight_bit_speed.py``); this test pins the causes: per leaf,
the only leaf-sized float32 array the program makes is the new parameter."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rmsprop_jax
from rmsprop_jax import _blockwise

EIGHT = rmsprop_jax.blockwise_8bit()
JAX_VERSION = tuple(int(re.match(r"\d+", x)[0]) for x in jax.__version__.split(".")[:3])
pytestmark = pytest.mark.skipif(
    JAX_VERSION < (0, 10, 2),
    reason="the program's structure is pinned for jax >= 0.10.2's XLA:CPU",
)

CASES = {
    "to nearest": dict(),
    "stochastic": dict(stochastic_rounding=True),
    "momentum, to nearest": dict(momentum=0.9),
    "momentum, stochastic": dict(momentum=0.9, stochastic_rounding=True),
    "nesterov, lr outside": dict(momentum=0.9, nesterov=True, stochastic_rounding=True),
}
SHAPES = [(64, 1024), (64, 1024), (3, 3, 32, 256)]  # two leaves of one shape


def _entry(hlo: str) -> str:
    start = hlo.index("\nENTRY ")
    return hlo[start : hlo.index("\n}", start)]


def _leaf_sized_f32(hlo: str) -> list[str]:
    """The instructions of the entry computation that make a float32 array
    with as many elements as a leaf (parameters aside)."""
    sizes = {int(np.prod(s)) for s in SHAPES}
    found = []
    for line in _entry(hlo).splitlines():
        m = re.match(r"\s*(?:ROOT )?%(\S+) = f32\[([\d,]*)\]", line)
        if not m or " parameter(" in line or " bitcast(" in line:
            continue
        n = int(np.prod([int(d) for d in m[2].split(",") if d])) if m[2] else 1
        if n in sizes:
            found.append(m[1])
    return found


@pytest.mark.parametrize("name", CASES)
def test_the_only_leaf_sized_float32_arrays_are_the_new_parameters(name):
    opt = rmsprop_jax.rmsprop(1e-3, nu_dtype=EIGHT, mu_dtype=EIGHT, **CASES[name])
    params = [jnp.ones(s) for s in SHAPES]
    state = opt.init(params)

    def step(p, s, g):
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s

    hlo = jax.jit(step, donate_argnums=(0, 1)).lower(params, state, params).compile().as_text()
    made = _leaf_sized_f32(hlo)
    assert len(made) == len(SHAPES), made


def test_rounded_to_nearest_each_block_keeps_its_largest_value_on_the_top_code():
    # The scales come from a reduction over the step's inputs, with the old
    # codes decoded by float arithmetic; they must still be each block's
    # largest new value, which then takes the top code (and a block of zeros
    # the bottom one).
    g = jax.random.normal(jax.random.PRNGKey(0), (8, 1024)) * jnp.logspace(-6, 2, 8)[:, None]
    g = g.at[3, :256].set(0.0)
    opt = rmsprop_jax.rmsprop(1e-2, decay=0.95, nu_dtype=EIGHT)
    state = opt.init(jnp.zeros_like(g))
    step = jax.jit(opt.update)
    for t in range(4):
        _, state = step(g * (1 + 0.5 * t), state)
    is_q = lambda x: isinstance(x, rmsprop_jax.QuantizedArray)
    (q,) = [x for x in jax.tree.leaves(state, is_leaf=is_q) if is_q(x)]
    top = np.asarray(q.codes).reshape(8, 4, 256).max(axis=-1)
    expected = np.full((8, 4), 255)
    expected[3, 0] = 0
    np.testing.assert_array_equal(top, expected)
    # and the stored largest value is the float32 average's, to float32 rounding
    nu64 = np.zeros(g.shape)
    for t in range(4):
        nu64 = 0.95 * nu64 + 0.05 * np.asarray(g * (1 + 0.5 * t), np.float64) ** 2
    largest = nu64.reshape(8, 4, 256).max(axis=-1)
    stored = np.asarray(q.scales).reshape(8, 4) * float(_blockwise.code_values("nu")[-1])
    mask = largest > 0
    np.testing.assert_allclose(stored[mask], largest[mask], rtol=2e-5)
