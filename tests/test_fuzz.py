"""Fuzzing: random options, random pytrees, random finite gradients.

For every combination: no exception besides the documented ones, no NaN or Inf
in the updates or the state, structure and dtypes preserved. `make fuzz` runs
many more examples (HYPOTHESIS_PROFILE=fuzz).

Gradients range over zeros, tiny values (1e-30, subnormals), ordinary ones and
large ones whose squares come near the largest finite value of the state
dtype. Squares beyond it are outside the promise; their behaviour is pinned by
test_square_overflow_freezes_the_coordinate_without_nan.
"""

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import rmsprop_jax

DTYPES = ["float16", "bfloat16", "float32", "float64", "complex64"]


class Pair(NamedTuple):
    first: object
    second: object


@dataclasses.dataclass(frozen=True)
class Leaf:  # a placeholder that jax treats as a leaf, replaced by an array
    shape: tuple
    dtype: str


shapes = st.lists(st.integers(0, 3), min_size=0, max_size=3).map(tuple)
leaves = st.builds(Leaf, shapes, st.sampled_from(DTYPES))
trees = st.recursive(
    st.one_of(st.none(), leaves),
    lambda children: st.one_of(
        st.dictionaries(st.sampled_from("abcd"), children, max_size=3),
        st.lists(children, max_size=3),
        st.lists(children, max_size=3).map(tuple),
        st.builds(Pair, children, children),
    ),
    max_leaves=6,
)


def _schedule(count):
    return 0.01 / (1 + 0.1 * jnp.asarray(count, float))


@st.composite
def options(draw):
    kw = {}
    kw["learning_rate"] = draw(st.sampled_from([0.0, 1e-3, 0.1, 1.0, _schedule]))
    kw["decay"] = draw(st.sampled_from([0.0, 0.5, 0.9, 0.999]))
    kw["eps"] = draw(st.sampled_from([0.0, 1e-30, 1e-8, 1.0]))
    kw["bias_correction"] = draw(st.booleans())
    kw["initial_scale"] = 0.0 if kw["bias_correction"] else draw(st.sampled_from([0.0, 1.0]))
    kw["eps_in_sqrt"] = draw(st.booleans())
    kw["centered"] = draw(st.booleans())
    kw["momentum"] = draw(st.sampled_from([None, 0.0, 0.5, 0.99]))
    kw["nesterov"] = bool(kw["momentum"]) and draw(st.booleans())
    kw["lr_in_momentum"] = draw(st.booleans())
    kw["weight_decay"] = draw(st.sampled_from([0.0, 0.1, _schedule]))
    kw["weight_decay_mode"] = draw(st.sampled_from(["decoupled", "coupled"]))
    if draw(st.booleans()):
        kw["weight_decay_mask"] = lambda p: jax.tree.map(lambda x: jnp.ndim(x) > 0, p)
    kw["maximize"] = draw(st.booleans())
    kw["split_complex"] = draw(st.booleans())
    kw["nu_dtype"] = draw(st.sampled_from([None, jnp.bfloat16, jnp.float32]))
    kw["mu_dtype"] = draw(st.sampled_from([None, jnp.bfloat16, jnp.float32]))
    kw["stochastic_rounding"] = draw(st.booleans())
    kw["seed"] = draw(st.integers(0, 2**31 - 1))
    return kw


def _gradient(rng, leaf, kind, nu_dtype):
    real = np.float32 if leaf.dtype in ("complex64", "bfloat16", "float16") else leaf.dtype
    info = np.finfo(np.float16 if leaf.dtype == "float16" else real)
    # The largest gradient whose square the second moment's storage can hold.
    storage = nu_dtype or (np.float64 if leaf.dtype == "float64" else np.float32)
    state_max = float(jnp.finfo(storage).max)
    big = min(float(info.max), float(np.sqrt(state_max))) * 0.7
    values = {
        "zero": np.zeros(leaf.shape),
        "tiny": rng.choice([1e-30, -1e-30, float(info.smallest_subnormal)], size=leaf.shape),
        "normal": rng.normal(size=leaf.shape),
        "large": big * rng.choice([-1.0, 1.0], size=leaf.shape) * rng.uniform(0.5, 1, leaf.shape),
        "mixed": rng.choice([0.0, 1e-30, 1.0, -3.0, big], size=leaf.shape),
    }[kind]
    if leaf.dtype == "complex64":
        values = values + 1j * values[::-1] if values.ndim else values + 1j * values
    return jnp.asarray(values, leaf.dtype)


def _finite(tree):
    return all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(tree))


@given(
    spec=trees,
    kw=options(),
    kinds=st.lists(
        st.sampled_from(["zero", "tiny", "normal", "large", "mixed"]), min_size=3, max_size=3
    ),
    seed=st.integers(0, 99),
)
def test_fuzz_no_nan_structure_and_dtypes(spec, kw, kinds, seed):
    rng = np.random.default_rng(seed)
    is_leaf = lambda x: isinstance(x, Leaf)
    with jax.enable_x64(True):
        params = jax.tree.map(
            lambda leaf: jnp.asarray(rng.normal(size=leaf.shape), leaf.dtype), spec, is_leaf=is_leaf
        )
        opt = rmsprop_jax.rmsprop(**kw)
        state = opt.init(params)
        assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(state))
        for kind in kinds:
            grads = jax.tree.map(
                lambda leaf: _gradient(rng, leaf, kind, kw["nu_dtype"]), spec, is_leaf=is_leaf
            )
            updates, state = opt.update(grads, state, params)
            assert jax.tree.structure(updates) == jax.tree.structure(params)
            for u, p in zip(jax.tree.leaves(updates), jax.tree.leaves(params)):
                assert u.dtype == p.dtype and u.shape == p.shape
            if not (_finite(updates) and _finite(state)):
                raise AssertionError(
                    f"non-finite with {kind} gradients: {spec} {kw} "
                    f"{jax.tree.map(lambda x: x.dtype, state)}"
                )
            # The parameters stay at their draws: applying a saturated update
            # (e.g. g / 1e-30 with a zero centered variance) would make the
            # coupled-decay term wd * p itself overflow, which is the documented
            # overflow case, not a new input.


def test_square_overflow_freezes_the_coordinate_without_nan():
    """|g| = 1e30 (a bfloat16 can hold it) squares to inf in float32 state:
    that coordinate's nu becomes +inf and its step is 0 from then on. No NaN."""
    for kw in (dict(), dict(centered=True, momentum=0.9), dict(eps=0.0, bias_correction=True)):
        opt = rmsprop_jax.rmsprop(0.1, **kw)
        params = {"w": jnp.zeros(3, jnp.bfloat16)}
        state = opt.init(params)
        for g in ([1e30, 1.0, 0.0], [1.0, 1.0, 1.0], [1.0, -1.0, 0.5]):
            updates, state = opt.update({"w": jnp.asarray(g, jnp.bfloat16)}, state, params)
            u = np.asarray(updates["w"], np.float32)
            assert np.all(np.isfinite(u)) and u[0] == 0
            assert u[1] != 0
            assert not any(
                np.isnan(np.asarray(x, np.float32)).any() for x in jax.tree.leaves(state)
            )
        assert np.isinf(np.asarray(state.nu["w"])[0])
