"""The transformation: state, ``init`` and ``update`` over pytrees.

:func:`build` turns a :class:`~rmsprop_jax._config.Config` into an
``optax.GradientTransformationExtraArgs``. The structure of the state is
decided once, by ``init``: ``update`` follows the state it is given (which
fields exist, which leaves are factored), checks the gradients and parameters
against it, evaluates the step's numbers once (:mod:`rmsprop_jax._numbers`),
and calls the jitted leaf step (:func:`rmsprop_jax._step.leaf_step`) for every
trained leaf.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rmsprop_jax import (
    _config,
    _dtypes,
    _factored,
    _numbers,
    _quantized,
    _step,
    _storage,
    _trees,
    _weight_decay,
)
from rmsprop_jax import _validation as v
from rmsprop_jax._config import Config

Array = jax.Array

# Traced once per distinct leaf (options, factored axes, shapes, dtypes); each
# leaf of a tree is then one call, which XLA inlines before it optimises.
_leaf_step = jax.jit(_step.leaf_step, static_argnums=(0, 1))


class RMSpropState(NamedTuple):
    """State of RMSprop: step count, second moment and optional mean and momentum."""

    # int32 scalar: the number of updates made so far. (`count` shadows
    # tuple.count for the type checker only.)
    count: Array  # type: ignore[assignment]
    nu: optax.Updates  # moving average of |g|^2 (or its factors).
    mu: optax.Updates | None  # moving average of g; only when centered.
    trace: optax.Updates | None  # momentum buffer, with the update's sign (as optax's).


# So that `jax.export` can serialize a step whose inputs or outputs hold it.
jax.export.register_namedtuple_serialization(
    RMSpropState, serialized_name="rmsprop_jax.RMSpropState"
)


def _init_leaf(cfg: Config, p: Any) -> tuple[Any, Array | None, Array | None]:
    """The state of one parameter leaf, made like it (so it follows its sharding)."""
    o = cfg.options
    shape, dtype = _trees.shape_and_dtype(p)
    if not _trees.is_trained(dtype):  # integers, booleans, keys: never updated
        zeros = lambda: _trees.full_like(p, 0, jnp.dtype(jnp.float32))
        return zeros(), zeros() if o.centered else None, zeros() if o.momentum else None
    complex_state = jnp.issubdtype(dtype, jnp.complexfloating)
    split = o.split_complex and complex_state
    real = _dtypes.state_dtype(dtype)
    # The 8-bit format applies to large leaves; the others keep `real`.
    eight_bit = lambda fmt: isinstance(fmt, _quantized.Blockwise8bit)
    nu_dtype = real if o.nu_dtype is None or eight_bit(o.nu_dtype) else o.nu_dtype
    mu_dtype = real if o.mu_dtype is None or eight_bit(o.mu_dtype) else o.mu_dtype
    complex_mu = complex_state and not split
    if complex_mu:
        mu_dtype = _dtypes.complex_of(mu_dtype)
    if split:  # the real and imaginary parts side by side: shape (..., 2)
        p = _trees.split_complex_like(p, real)
        shape = (*shape, 2)

    def make(fmt: Any, value: Any, dtype: jnp.dtype, kind: str, parts: bool) -> Any:
        if _quantized.uses_blocks(fmt, shape):
            q = _quantized.init(p, value, fmt, kind, parts)
            if q is not None:
                return q
        return _trees.full_like(p, value, dtype)

    axes = None
    if o.factored:
        if o.min_dim_size_to_factor is None:
            raise ValueError(
                "`min_dim_size_to_factor` must be a concrete Python int when `init` "
                "runs, got a traced value; with `optax.inject_hyperparams` and a jitted "
                "`init`, pass `static_args=('min_dim_size_to_factor',)`."
            )
        axes = _factored.factored_axes(shape, o.min_dim_size_to_factor)
    nu: Any
    if axes is None:
        nu = make(o.nu_dtype, cfg.initial_scale, nu_dtype, "nu", False)
    else:  # the factors are small: they keep `real` under the 8-bit format
        nu = _factored.init(p, axes, cfg.initial_scale, nu_dtype)
    mu = make(o.mu_dtype, 0.0, mu_dtype, "signed", complex_mu) if o.centered else None
    trace = make(o.mu_dtype, 0.0, mu_dtype, "signed", complex_mu) if o.momentum else None
    return nu, mu, trace


def _check_fields(cfg: Config, state: Any) -> None:
    """The optional fields of the state are those the configuration uses.

    (A ``None`` parameter tree makes every field ``None``: nothing to check.)"""
    if getattr(state, "nu", None) is None:
        return
    for field, used, option in (
        ("mu", cfg.options.centered, "centered=True"),
        ("trace", cfg.options.momentum, "momentum"),
    ):
        present = getattr(state, field, None) is not None
        if present != used:
            raise ValueError(
                f"The optimizer state {'has' if present else 'has no'} `{field}`, but this "
                f"optimizer {'does not use' if present else 'uses'} {option}: the state was "
                "made by `init` of an optimizer with other options. Call `init` of this "
                "optimizer, or keep the options the state was made with."
            )


def _check_quantized(
    where: str, name: str, x: Any, shape: tuple[int, ...], fmt: Any, parts: bool
) -> None:
    problem = _quantized.check(x, (*shape, 2) if parts else shape, fmt)
    if problem is not None:
        raise ValueError(
            f"The optimizer state's `{name}` at {where} does not fit this optimizer: "
            f"{problem}. Call `init` of this optimizer, or keep the options the state "
            "was made with."
        )


def _check_leaf_state(
    cfg: Config, path: str, g: Any, state_shape: tuple[int, ...], nu: Any, mu: Any, trace: Any
) -> tuple[int, int] | None:
    """Checks one leaf's state against the shape the gradient needs; returns the
    factored axes, or None for a full second moment."""
    where = path or "the root"
    axes = None
    o = cfg.options
    parts = jnp.iscomplexobj(g) and not o.split_complex  # an 8-bit complex mean's parts
    if _quantized.is_quantized(nu):
        _check_quantized(where, "nu", nu, state_shape, o.nu_dtype, False)
    elif hasattr(nu, "shape"):
        if tuple(nu.shape) != state_shape:
            raise ValueError(
                f"The gradient at {where} needs optimizer state of shape {state_shape}, but "
                f"the state's `nu` there has shape {tuple(nu.shape)}. Call `init` with "
                "parameters shaped like the gradients."
            )
    else:
        axes = _factored.factor_axes(nu, state_shape) if _factored.is_factored(nu) else None
        if axes is None:
            raise ValueError(
                f"The gradient at {where} (state shape {state_shape}) does not match the "
                f"optimizer state's `nu` there, {jax.tree.map(np.shape, nu)}: the gradient "
                "tree is not the tree the state was initialised for."
            )
    for name, x in (("mu", mu), ("trace", trace)):
        if x is not None and _quantized.is_quantized(x):
            _check_quantized(where, name, x, state_shape, o.mu_dtype, parts)
        elif x is not None and (not hasattr(x, "shape") or tuple(x.shape) != state_shape):
            got = tuple(x.shape) if hasattr(x, "shape") else jax.tree.map(np.shape, x)
            raise ValueError(
                f"The gradient at {where} needs optimizer state of shape {state_shape}, "
                f"but the state's `{name}` there is {got}."
            )
    return axes


def _gradient_leaf(path: str, g: Any) -> Any:
    """A gradient leaf as an array (a Python number is a 0-d array); a PRNG key,
    which has no zero of its kind to return, is refused naming the leaf, and so
    is anything that is not an array of numbers."""
    _trees.check_leaf(path, g, "gradient")
    if not hasattr(g, "dtype"):
        return jnp.asarray(g)
    if jax.dtypes.issubdtype(g.dtype, jax.dtypes.prng_key):
        raise ValueError(
            f"The gradient at {path or 'the root'} is a PRNG key array ({g.dtype}), which "
            "cannot be trained. Differentiate with `jax.grad(..., allow_int=True)` (it "
            "gives `float0` there, which passes through), or keep keys out of the "
            "optimized tree (`optax.masked`, or `nnx.Optimizer`'s `wrt`)."
        )
    return g


def _zero_update(g: Any) -> Any:
    """The update of a leaf that is not trained: a zero of its kind."""
    if g.dtype == jax.dtypes.float0:
        return g
    return jnp.zeros_like(g)


def build(cfg: Config) -> optax.GradientTransformationExtraArgs:
    """Returns the transformation that ``cfg`` describes."""
    o = cfg.options

    def init_fn(params: optax.Params) -> RMSpropState:
        leaves, treedef = _trees.flatten(params)
        for path, p in zip(_trees.paths(params), leaves, strict=True):
            _trees.check_leaf(path, p)
        per_leaf = [_init_leaf(cfg, p) for p in leaves]
        nu = treedef.unflatten([x[0] for x in per_leaf])
        mu = treedef.unflatten([x[1] for x in per_leaf]) if o.centered else None
        trace = treedef.unflatten([x[2] for x in per_leaf]) if o.momentum else None
        return RMSpropState(count=jnp.zeros([], jnp.int32), nu=nu, mu=mu, trace=trace)

    def update_fn(
        updates: optax.Updates,
        state: RMSpropState,
        params: optax.Params | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, RMSpropState]:
        del extra_args
        g_leaves, treedef = _trees.flatten(updates)
        n = treedef.num_leaves
        _check_fields(cfg, state)
        nu_leaves = _trees.match(treedef, state.nu, "optimizer state")
        mu_leaves = _trees.match(treedef, state.mu, "optimizer state") if o.centered else [None] * n
        tr_leaves = (
            _trees.match(treedef, state.trace, "optimizer state") if o.momentum else [None] * n
        )
        paths = _trees.paths(updates)
        g_leaves = [_gradient_leaf(path, g) for path, g in zip(paths, g_leaves, strict=True)]
        trained = [_trees.is_trained(g.dtype) for g in g_leaves]
        axes = []
        for path, g, nu, mu, tr in zip(
            paths, g_leaves, nu_leaves, mu_leaves, tr_leaves, strict=True
        ):
            split = o.split_complex and jnp.iscomplexobj(g)
            shape = (*g.shape, 2) if split else tuple(g.shape)
            axes.append(_check_leaf_state(cfg, path, g, shape, nu, mu, tr))

        # Weight decay: each leaf's parameter where it decays, and its mask.
        p_leaves: list[Any] = [None] * n
        masks: list[Any] = [None] * n
        have_params = params is not None
        if o.weight_decay_mode is not None and any(trained):
            wd = cfg.weight_decay
            if not have_params and (callable(wd) or not v.is_traced(wd)):
                raise ValueError(
                    "`params` must be passed to `update` when weight decay is "
                    "used: call `update(grads, state, params)`."
                )
            if have_params:
                p_leaves = _trees.match(treedef, params, "parameters")
                for path, p, g, t in zip(paths, p_leaves, g_leaves, trained, strict=True):
                    if t:
                        _trees.check_param(path, p, tuple(g.shape))
                entries = _weight_decay.mask_leaves(cfg.weight_decay_mask, params, treedef, paths)
                p_leaves = [
                    p if m is not False else None for p, m in zip(p_leaves, entries, strict=True)
                ]
                masks = [None if isinstance(m, bool) else m for m in entries]

        t = optax.safe_increment(jnp.asarray(state.count))
        compute = [
            _step.dtypes(o, g, nu, mu, tr)[0]
            for g, nu, mu, tr, ok in zip(
                g_leaves, nu_leaves, mu_leaves, tr_leaves, trained, strict=True
            )
            if ok
        ]
        numbers = None
        if compute:
            widest = _dtypes.widest(*compute)
            narrowest = min(compute, key=lambda d: jnp.finfo(d).bits)
            numbers = _numbers.numbers(cfg, state.count, t, widest, narrowest, have_params)
        keys: list[Array | None] = [None] * n
        if o.stochastic_rounding and n:
            # Deterministic for a given seed: one stream per step and leaf.
            keys = [_storage.mix(cfg.seed, t, i) for i in range(n)]

        results = []
        for i in range(n):
            g, nu, mu, tr = g_leaves[i], nu_leaves[i], mu_leaves[i], tr_leaves[i]
            if not trained[i]:  # integer, boolean and float0 leaves: a zero update
                results.append((_zero_update(g), nu, mu, tr))
                continue
            results.append(
                _leaf_step(o, axes[i], numbers, g, p_leaves[i], masks[i], nu, mu, tr, keys[i])
            )
        new_updates, new_nu, new_mu, new_trace = (
            treedef.unflatten([r[i] for r in results]) for i in range(4)
        )
        return new_updates, RMSpropState(
            count=t,
            nu=new_nu,
            mu=new_mu if o.centered else None,
            trace=new_trace if o.momentum else None,
        )

    return _config.register(optax.GradientTransformationExtraArgs(init_fn, update_fn), cfg)
