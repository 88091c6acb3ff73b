"""Differential fuzzing: random configurations, trees, dtypes and gradients.

Hypothesis draws a transformation from *every* option (factored second
moments, stochastic rounding, narrow state, schedules, masks, presets, and
``optax.inject_hyperparams`` around any of them), a random pytree of float16,
bfloat16, float32, float64, complex64, integer, boolean and Python-float
leaves, a usage path (eager ``init`` and jitted ``update``, or both jitted),
and gradients ranging over zeros, subnormals, ordinary values, values whose
squares come near the largest finite number of the state dtype, and values
whose squares overflow it. It runs several steps and checks:

- against the float64 reference (``tests/reference.py``) where the reference
  applies: ordinary or zero gradients, full-precision state, well-conditioned
  options; the floating leaves' updates must agree step by step;
- everywhere: no exception but the documented refusals, updates finite and in
  the parameters' dtypes and shapes, the state's structure and dtypes kept,
  no NaN in the state (an overflowed square leaves +inf in ``nu``, which
  freezes that coordinate, as documented).

Each example runs with JAX's 64-bit mode off (the default, what users run)
or on, and through ``jax.export`` as well as ``jax.jit``. `make test` runs a
few dozen examples; `make fuzz` runs thousands.
"""

from __future__ import annotations

import dataclasses
import re
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import standard_promotion
from hypothesis import given
from hypothesis import strategies as st
from reference import Reference

import rmsprop_jax
from rmsprop_jax import presets

FLOATS = ["float16", "bfloat16", "float32", "float64", "complex64"]
OTHERS = ["int32", "bool", "python_float"]


class Pair(NamedTuple):
    first: object
    second: object


@dataclasses.dataclass(frozen=True)
class Leaf:  # a placeholder that jax treats as a leaf, replaced by an array
    shape: tuple
    dtype: str


shapes = st.lists(st.integers(0, 4), min_size=0, max_size=3).map(tuple)
leaves = st.one_of(
    st.builds(Leaf, shapes, st.sampled_from(FLOATS)),
    st.builds(Leaf, st.just(()), st.sampled_from(OTHERS)),
)
trees = st.recursive(
    st.one_of(st.none(), leaves),
    lambda children: st.one_of(
        st.dictionaries(st.sampled_from("abcd"), children, max_size=3),
        st.lists(children, max_size=3),
        st.builds(Pair, children, children),
    ),
    max_leaves=5,
)


def _schedule(count):
    return 0.01 / (1 + 0.1 * count.astype(jnp.float32))


def _wd_schedule(count):
    return 0.1 * jnp.maximum(1 - count.astype(jnp.float32) / 10, 0)


def _matrices_only(params):
    return jax.tree.map(lambda p: jnp.ndim(p) > 1, params)


def _element_masks(params):
    """A boolean array of each parameter's shape, fixed by the shape."""

    def one(p):
        shape = jnp.shape(p)
        rng = np.random.default_rng(abs(hash(shape)) % 2**32)
        return jnp.asarray(rng.uniform(size=shape) < 0.5)

    return jax.tree.map(one, params)


def _scalar_array_masks(params):
    return jax.tree.map(lambda p: jnp.asarray(jnp.size(p) % 2 == 0), params)


MASKS = [None, _matrices_only, _element_masks, _scalar_array_masks]


@st.composite
def rmsprop_options(draw):
    kw = {}
    # Python ints among the numbers: they act as the same float, given
    # directly or through inject_hyperparams (which makes int32 arrays of them).
    kw["learning_rate"] = draw(st.sampled_from([0.0, 1e-3, 0.1, 1.0, 1, _schedule]))
    kw["decay"] = draw(st.sampled_from([0, 0.0, 0.5, 0.9, 0.999, 0.99999999]))
    kw["eps"] = draw(st.sampled_from([0, 0.0, 1e-30, 1e-8, 1.0, 1]))
    kw["bias_correction"] = draw(st.booleans())
    kw["initial_scale"] = draw(st.sampled_from([0.0, 0.0, 1.0]))
    kw["eps_in_sqrt"] = draw(st.booleans())
    kw["centered"] = draw(st.booleans())
    kw["momentum"] = draw(st.sampled_from([None, 0, 0.0, 0.5, 0.99, 0.99999999]))
    kw["nesterov"] = draw(st.booleans())
    kw["lr_in_momentum"] = draw(st.booleans())
    kw["weight_decay"] = draw(st.sampled_from([0, 0.0, 0.1, 1, _wd_schedule]))
    kw["weight_decay_mode"] = draw(st.sampled_from(["decoupled", "coupled"]))
    mask = draw(st.sampled_from(MASKS))
    if mask is not None:
        kw["weight_decay_mask"] = mask
    kw["maximize"] = draw(st.booleans())
    kw["split_complex"] = draw(st.booleans())
    kw["nu_dtype"] = draw(st.sampled_from([None, None, jnp.bfloat16, jnp.float16, jnp.float32]))
    kw["mu_dtype"] = draw(st.sampled_from([None, None, jnp.bfloat16, jnp.float32]))
    kw["stochastic_rounding"] = draw(st.booleans())
    kw["seed"] = draw(st.integers(0, 2**32 - 1))
    kw["factored"] = draw(st.booleans())
    kw["min_dim_size_to_factor"] = draw(st.sampled_from([1, 2, 3]))
    return kw


PRESETS = {
    "pytorch": dict(lr=0.01, alpha=0.9, momentum=0.5, centered=True, weight_decay=0.1),
    "keras": dict(learning_rate=0.01, momentum=0.5, weight_decay=0.1, clipnorm=1.0),
    "tensorflow_v1": dict(learning_rate=0.01, momentum=0.9, centered=True),
    "timm_tf": dict(lr=0.01, momentum=0.9, weight_decay=0.1, decoupled_decay=True),
    "sonnet": dict(learning_rate=0.01, momentum=0.9),
    "lasagne": dict(learning_rate=0.01),
    "hinton_2012": dict(learning_rate=0.01),
    "graves_2013": dict(),
    "dqn_nature_2015": dict(),
}

# The presets as keyword arguments of the reference (where they map onto it).
PRESET_REFERENCE = {
    "pytorch": dict(
        learning_rate=0.01,
        decay=0.9,
        eps=1e-8,
        eps_in_sqrt=False,
        momentum=0.5,
        centered=True,
        lr_in_momentum=False,
        weight_decay=0.1,
        weight_decay_mode="coupled",
        split_complex=True,
    ),
    "tensorflow_v1": dict(
        learning_rate=0.01, decay=0.9, eps=1e-10, initial_scale=1.0, momentum=0.9, centered=True
    ),
    "timm_tf": dict(
        learning_rate=0.01, decay=0.9, eps=1e-10, initial_scale=1.0, momentum=0.9, weight_decay=0.1
    ),
    "sonnet": dict(learning_rate=0.01, decay=0.9, eps=1e-10, momentum=0.9),
    "lasagne": dict(learning_rate=0.01, decay=0.9, eps=1e-6),
    "graves_2013": dict(learning_rate=1e-4, decay=0.95, eps=1e-4, momentum=0.9, centered=True),
    "dqn_nature_2015": dict(learning_rate=2.5e-4, decay=0.95, eps=0.01, centered=True),
}


@st.composite
def setups(draw):
    """(factory, kwargs, injected, path)."""
    source = draw(st.sampled_from(["rmsprop", "rmsprop", "rmsprop", "scale_by_rms", "preset"]))
    if source == "preset":
        name = draw(st.sampled_from(sorted(PRESETS)))
        factory, kw = getattr(presets, name), dict(PRESETS[name])
    elif source == "scale_by_rms":
        kw = draw(rmsprop_options())
        keep = ("decay", "eps", "initial_scale", "eps_in_sqrt", "bias_correction", "centered")
        keep += ("split_complex", "nu_dtype", "mu_dtype", "stochastic_rounding", "seed")
        keep += ("factored", "min_dim_size_to_factor")
        factory, kw = rmsprop_jax.scale_by_rms, {k: kw[k] for k in keep}
    else:
        factory, kw = rmsprop_jax.rmsprop, draw(rmsprop_options())
    injected = draw(st.sampled_from([False, "float32", "from_params"]))
    path = draw(st.sampled_from(["eager_init", "jit_init", "export"]))
    return factory, kw, injected, path


def _refusals(kw, injected, path):
    """The documented refusals a configuration meets (the library reports the
    first it checks); empty if it is valid.

    Flags are checked whatever the path; numbers only where they are concrete,
    which under ``inject_hyperparams`` means an eager ``init`` (a jitted one
    sees tracers). Injected numbers are float32 arrays, so 0.99999999 arrives
    as 1.0, outside [0, 1)."""
    found = []
    if kw.get("factored") and kw.get("centered"):
        found.append("`factored=True` cannot be combined")
    concrete = not injected or path != "jit_init"
    if kw.get("nesterov") and (kw.get("momentum") is None or (concrete and kw["momentum"] == 0)):
        found.append("`nesterov=True` needs `momentum` > 0")
    if concrete and kw.get("bias_correction") and kw.get("initial_scale", 0.0) != 0:
        found.append("`bias_correction=True` needs `initial_scale` == 0")
    return found


def _rounds_to_one_when_injected(kw, injected, path):
    """inject_hyperparams casts numbers to float32 or the parameters' dtype:
    0.99999999 is 1.0 in float32 and refused at an eager init, but stays below 1
    in float64."""
    return (
        injected
        and path != "jit_init"
        and any(kw.get(name) == 0.99999999 for name in ("decay", "momentum"))
    )


def _build(factory, kw, injected):
    if not injected:
        return factory(**kw)
    # Callables other than schedules (a mask) and ints that shape the state
    # stay static, as inject_hyperparams' documentation asks.
    static = tuple(k for k in ("weight_decay_mask", "min_dim_size_to_factor", "seed") if k in kw)
    dtypes = tuple(k for k in ("nu_dtype", "mu_dtype") if k in kw)
    hyperparam_dtype = jnp.float32 if injected == "float32" else None
    return optax.inject_hyperparams(
        factory, static_args=static + dtypes, hyperparam_dtype=hyperparam_dtype
    )(**kw)


def _injection_refusal(params, injected, kw, path):
    """inject_hyperparams without hyperparam_dtype stores float hyperparameters
    in the parameters' highest dtype. For an all-bfloat16/float16 tree, decay
    and momentum are refused (they cannot be held precisely); for a tree of
    booleans they become booleans, refused; integers act as the same float
    (a tree with no floating leaf trains nothing); and optax itself cannot pick
    one for float64 beside complex64."""
    if injected != "from_params" or not jax.tree.leaves(params):
        return None
    try:
        dtype = optax.tree.dtype(params, "highest")
    except ValueError:
        return "Cannot compare dtype"  # optax's own error
    # (optax converts float hyperparameters only: a Python int stays int32)
    narrow = [kw.get("decay", 0.9)] + ([kw["momentum"]] if "momentum" in kw else [])
    if dtype in (jnp.bfloat16, jnp.float16) and any(isinstance(x, float) for x in narrow):
        return "cannot hold it precisely"
    if jnp.issubdtype(dtype, jnp.bool_):
        return "hyperparam_dtype=jnp.float32"
    if jnp.issubdtype(dtype, jnp.integer) and kw.get("nesterov") and path != "jit_init":
        return "`nesterov=True` needs"  # optax makes the momentum int32: 0.5 is 0
    return None


def _dtype(leaf):
    """The leaf's dtype in the current mode: float64 and complex128 exist only
    with x64 (without it JAX makes float32 of them, as users get)."""
    if not jax.config.jax_enable_x64:
        return {"float64": "float32", "complex128": "complex64"}.get(leaf.dtype, leaf.dtype)
    return leaf.dtype


def _array(rng, leaf, values):
    if leaf.dtype == "python_float":
        return float(values.reshape(-1)[0]) if values.size else 0.5
    if leaf.dtype == "int32":
        return jnp.asarray(np.clip(np.round(values * 10), -(2**30), 2**30), jnp.int32)
    if leaf.dtype == "bool":
        return jnp.asarray(values > 0)
    if leaf.dtype == "complex64":
        values = values + 1j * values[::-1] if values.ndim else values + 1j * values
    return jnp.asarray(values, _dtype(leaf))


def _gradient(rng, leaf, kind, state_dtype):
    """One leaf's gradient of the given kind."""
    real = {"float16": np.float16, "bfloat16": np.float32, "complex64": np.float32}
    info = np.finfo(real.get(leaf.dtype, np.float32 if _dtype(leaf) != "float64" else np.float64))
    largest = float(info.max)
    # |g| whose square is near the state's largest finite value, and one
    # whose square overflows it (where the gradient's dtype can hold it).
    near = min(largest, float(np.sqrt(float(jnp.finfo(state_dtype).max)))) * 0.7
    over = min(largest, float(np.sqrt(float(jnp.finfo(state_dtype).max))) * 4)
    shape = leaf.shape
    values = {
        "zero": np.zeros(shape),
        "tiny": rng.choice([1e-30, -1e-30, float(info.smallest_subnormal)], size=shape),
        "normal": rng.normal(size=shape),
        "large": near * rng.choice([-1.0, 1.0], size=shape) * rng.uniform(0.5, 1, shape),
        "overflow": rng.choice([0.0, 1.0, over, -over], size=shape),
        "mixed": rng.choice([0.0, 1e-30, 1.0, -3.0, near], size=shape),
    }[kind]
    return _array(rng, leaf, values)


def _state_dtype(leaf, kw):
    widest = np.float64 if _dtype(leaf) == "float64" else np.float32
    nu = kw.get("nu_dtype")
    return widest if nu is None else nu


def _reference_kwargs(factory, kw):
    """The reference's arguments for this configuration, or None where it does not apply."""
    if factory is rmsprop_jax.rmsprop:
        ref = dict(kw)
        if ref.get("nu_dtype") or ref.get("mu_dtype"):
            return None  # narrow storage: rounding is the point, not the reference
        for key in ("nu_dtype", "mu_dtype", "stochastic_rounding", "seed"):
            ref.pop(key, None)
        if callable(ref.get("weight_decay_mask")):
            ref.pop("weight_decay_mask")
            ref["_mask_fn"] = kw["weight_decay_mask"]
    elif factory is rmsprop_jax.scale_by_rms:
        return None  # the reference is of rmsprop; scale_by_rms is tested against optax
    else:
        name = factory.__name__
        if name not in PRESET_REFERENCE:
            return None
        ref = dict(PRESET_REFERENCE[name])
    decay, eps = ref.get("decay", 0.9), ref.get("eps", 1e-8)
    if ref.get("centered") and (decay == 0 or eps < 1e-8 or ref.get("bias_correction")):
        return None  # the centered variance is pure rounding there
    if eps < 1e-8 and not ref.get("eps_in_sqrt", True):
        return None  # g / (sqrt(v) + 1e-30) amplifies rounding without bound
    if decay == 0.99999999 or ref.get("momentum") == 0.99999999:
        return None  # float32 cannot hold them (computed within its resolution)
    return ref


def _finite_except_frozen(state, allow_inf_nu):
    for field in ("count", "nu", "mu", "trace"):
        for x in jax.tree.leaves(optax.tree_utils.tree_get(state, field)):
            x = np.asarray(x, np.complex128 if np.iscomplexobj(x) else np.float64)
            assert not np.isnan(x).any(), f"NaN in {field}"
            if field == "nu" and allow_inf_nu:
                assert not np.isneginf(x).any(), "nu = -inf"
            else:
                assert np.isfinite(x).all(), f"inf in {field}"


@given(
    spec=trees,
    setup=setups(),
    kinds=st.lists(
        st.sampled_from(["zero", "tiny", "normal", "large", "overflow", "mixed"]),
        min_size=3,
        max_size=3,
    ),
    seed=st.integers(0, 2**16),
    x64=st.booleans(),
)
def test_differential(spec, setup, kinds, seed, x64):
    factory, kw, injected, path = setup
    rng = np.random.default_rng(seed)
    is_leaf = lambda x: isinstance(x, Leaf)
    refusals = _refusals(kw, injected, path)
    with jax.enable_x64(x64), standard_promotion(injected):
        if refusals:
            if _rounds_to_one_when_injected(kw, injected, path):
                refusals += ["must be in [0, 1), got 1.0", "cannot hold it precisely"]
            with pytest.raises(ValueError, match="|".join(map(re.escape, refusals))):
                opt = _build(factory, kw, injected)
                opt.init({}) if path != "jit_init" else jax.jit(opt.init)({})
            return
        if _rounds_to_one_when_injected(kw, injected, path):
            try:
                _build(factory, kw, injected).init(
                    jax.tree.map(
                        lambda leaf: _array(rng, leaf, np.ones(leaf.shape)), spec, is_leaf=is_leaf
                    )
                )
            except ValueError as error:
                documented = ("must be in [0, 1), got 1.0", "cannot hold it precisely")
                documented += ("hyperparam_dtype=jnp.float32", "Cannot compare dtype")
                documented += ("`nesterov=True` needs",)  # an int32 tree: momentum 0.5 is 0
                assert any(text in str(error) for text in documented), error
                return
        params = jax.tree.map(
            lambda leaf: _array(rng, leaf, rng.normal(size=leaf.shape)), spec, is_leaf=is_leaf
        )
        opt = _build(factory, kw, injected)
        expected = _injection_refusal(params, injected, kw, path)
        if expected is not None:
            with pytest.raises(ValueError, match=re.escape(expected)):
                opt.init(params) if path != "jit_init" else jax.jit(opt.init)(params)
            return
        state = opt.init(params) if path != "jit_init" else jax.jit(opt.init)(params)
        structure = jax.tree.map(lambda x: (jnp.shape(x), jnp.result_type(x)), state)
        update = _exported(opt.update) if path == "export" else jax.jit(opt.update)

        ref_kw = _reference_kwargs(factory, kw)
        use_reference = ref_kw is not None and all(k in ("zero", "normal") for k in kinds)
        if use_reference:
            ref_leaves = [
                x
                for x in jax.tree.leaves(params)
                if jnp.issubdtype(jnp.result_type(x), jnp.inexact)
            ]
            mask_fn = ref_kw.pop("_mask_fn", None)
            if mask_fn is not None:
                entries = [np.asarray(m) for m in jax.tree.leaves(mask_fn(params))]
                ref_kw["weight_decay_mask"] = [
                    m
                    for m, x in zip(entries, jax.tree.leaves(params))
                    if jnp.issubdtype(jnp.result_type(x), jnp.inexact)
                ]
            reference = Reference(**ref_kw)
            reference.init([np.asarray(x) for x in ref_leaves])

        overflowed = False
        for kind in kinds:
            grads = jax.tree.map(
                lambda leaf: _gradient(rng, leaf, kind, _state_dtype(leaf, kw)),
                spec,
                is_leaf=is_leaf,
            )
            overflowed |= kind in ("overflow",)
            updates, state = update(grads, state, params)
            assert jax.tree.structure(updates) == jax.tree.structure(params)
            for u, p in zip(jax.tree.leaves(updates), jax.tree.leaves(params), strict=True):
                assert jnp.shape(u) == jnp.shape(p)
                assert jnp.result_type(u) == jnp.result_type(p) or isinstance(p, float)
                assert np.isfinite(np.asarray(u, np.complex128)).all(), (kind, kw)
            assert jax.tree.map(lambda x: (jnp.shape(x), jnp.result_type(x)), state) == structure
            _finite_except_frozen(getattr(state, "inner_state", state), overflowed)
            if use_reference:
                g_leaves = [
                    np.asarray(g)
                    for g, x in zip(jax.tree.leaves(grads), jax.tree.leaves(params))
                    if jnp.issubdtype(jnp.result_type(x), jnp.inexact)
                ]
                want = reference.step(g_leaves, [np.asarray(x) for x in ref_leaves])
                got = [
                    np.asarray(u)
                    for u, x in zip(jax.tree.leaves(updates), jax.tree.leaves(params))
                    if jnp.issubdtype(jnp.result_type(x), jnp.inexact)
                ]
                _compare(got, want, ref_leaves, injected)
                params = optax.apply_updates(params, updates)
                ref_leaves = [
                    x
                    for x in jax.tree.leaves(params)
                    if jnp.issubdtype(jnp.result_type(x), jnp.inexact)
                ]


def _exported(update):
    """``update`` through ``jax.export``: exported at its first call, called back
    from the exported program at every step."""
    exported = []

    def call(*args):
        if not exported:
            exported.append(jax.export.export(jax.jit(update))(*args))
        return exported[0].call(*args)

    return call


def _compare(got, want, leaves, injected):
    """Each floating leaf's update against the reference, relative to the largest
    reference update of the same precision."""
    for precision, tol in (("low", 2e-2), ("single", 1e-4), ("double", 1e-4 if injected else 1e-9)):
        pairs = [
            (np.asarray(a, np.complex128), np.asarray(b, np.complex128))
            for a, b, x in zip(got, want, leaves)
            if _precision(x) == precision
        ]
        scale = max((float(np.max(np.abs(b), initial=0)) for _, b in pairs), default=0.0)
        for a, b in pairs:
            err = float(np.max(np.abs(a - b), initial=0))
            assert err <= tol * scale + 1e-30, (precision, err, scale)


def _precision(x):
    dtype = jnp.result_type(x)
    if dtype in (jnp.float16, jnp.bfloat16):
        return "low"
    return "double" if dtype in (jnp.float64, jnp.complex128) else "single"


def test_square_overflow_freezes_the_coordinate_without_nan():
    """|g| = 1e30 (a bfloat16 can hold it) squares to inf in float32 state: that
    coordinate's step is 0. A full nu becomes +inf there and stays so (the
    coordinate is frozen); a factored nu leaves the square out of its averages
    and zeroes only that step. No NaN anywhere."""
    for kw in (
        dict(),
        dict(centered=True, momentum=0.9),
        # nu = g^2 and mu^2 = g^2 overflow together; with no memory, the
        # coordinate moves again at the next step.
        dict(centered=True, decay=0.0),
        dict(eps=0.0, bias_correction=True),
        dict(factored=True, min_dim_size_to_factor=2),
        dict(factored=True, min_dim_size_to_factor=2, decay=0.0),
    ):
        opt = rmsprop_jax.rmsprop(0.1, **kw)
        params = {"w": jnp.zeros((3, 2), jnp.bfloat16)}
        state = opt.init(params)
        for i, g in enumerate(([1e30, 1.0, 0.0], [1.0, 1.0, 1.0], [1.0, -1.0, 0.5])):
            g = jnp.asarray(np.stack([g, g], axis=1), jnp.bfloat16)
            updates, state = opt.update({"w": g}, state, params)
            u = np.asarray(updates["w"], np.float32)
            assert np.all(np.isfinite(u)), kw
            frozen = not kw.get("factored") and kw.get("decay") != 0.0
            if i == 0 or frozen:
                assert np.all(u[0] == 0), (kw, i, u)  # frozen coordinate: no step
            assert np.all(u[1] != 0), (kw, i, u)
            for x in jax.tree.leaves(state):
                assert not np.isnan(np.asarray(x, np.float32)).any(), kw
        if not kw.get("factored") and kw.get("decay") != 0.0:
            assert np.all(np.isinf(np.asarray(state.nu["w"])[0]))
        else:
            assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.nu))
