"""The one implementation of RMSprop that every public function configures.

``scale_by_rms``, ``rmsprop`` and every preset build a :class:`_Config` and
call :func:`build`. The whole step for one leaf happens in
:func:`_leaf_step`, so XLA sees one fused elementwise program per leaf and
the state is read and written once.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

Array = jax.Array


class RMSpropState(NamedTuple):
    """State of RMSprop: step count, second moment and optional mean and momentum."""

    # int32 scalar: the number of updates made so far. (The SPEC names it
    # `count`, which shadows tuple.count for the type checker only.)
    count: Array  # type: ignore[assignment]
    nu: optax.Updates  # moving average of |g|^2.
    mu: optax.Updates | None  # moving average of g; only when centered.
    trace: optax.Updates | None  # momentum buffer; only with momentum.


@dataclasses.dataclass(frozen=True)
class _Config:
    """Everything that decides the update. Numbers may be arrays or tracers."""

    decay: Any
    eps: Any
    initial_scale: Any
    eps_in_sqrt: bool
    bias_correction: bool
    centered: bool
    split_complex: bool
    nu_dtype: jnp.dtype | None
    mu_dtype: jnp.dtype | None
    stochastic_rounding: bool = False
    seed: Any = 0
    # Everything below is unused by ``scale_by_rms`` (learning_rate=None).
    learning_rate: Any = None
    momentum: Any = None  # None: no momentum buffer.
    nesterov: bool = False
    lr_in_momentum: bool = True
    weight_decay: Any = None  # None: no weight decay.
    weight_decay_mode: str = "decoupled"
    weight_decay_mask: Any = None
    maximize: bool = False


# --------------------------------------------------------------------------
# Dtype policy.


def _real_dtype(dtype: jnp.dtype) -> jnp.dtype:
    return jnp.finfo(dtype).dtype if jnp.issubdtype(dtype, jnp.complexfloating) else dtype


def _widest(*dtypes: jnp.dtype) -> jnp.dtype:
    """The widest of some real floating dtypes, and at least float32.

    Written out rather than left to type promotion, so that it holds under
    ``jax_numpy_dtype_promotion="strict"`` too.
    """
    widest = jnp.dtype(jnp.float32)
    for dtype in dtypes:
        if jnp.finfo(dtype).bits > widest.itemsize * 8:
            widest = jnp.dtype(dtype)
    return widest


def _default_real_dtype(param_dtype: jnp.dtype) -> jnp.dtype:
    """The parameter's real dtype promoted to at least float32."""
    real = _real_dtype(jnp.dtype(param_dtype))
    if not jnp.issubdtype(real, jnp.floating):
        return jnp.dtype(jnp.float32)
    return _widest(real)


def _to_complex(dtype: jnp.dtype) -> jnp.dtype:
    return jnp.dtype(jnp.complex128 if jnp.finfo(dtype).bits > 32 else jnp.complex64)


def _is_complex(x: Any) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.complexfloating)


def _split(x: Array) -> Array:
    """A complex array as a real one with a trailing axis (real, imag)."""
    return jnp.stack([jnp.real(x), jnp.imag(x)], axis=-1)


def _merge(x: Array, dtype: jnp.dtype) -> Array:
    return jax.lax.complex(x[..., 0], x[..., 1]).astype(dtype)


# --------------------------------------------------------------------------
# Storing state in a narrow dtype.


def _stochastic_round(x: Array, dtype: jnp.dtype, key: Array) -> Array:
    """Rounds ``x`` to ``dtype`` up or down at random, unbiasedly: the expected
    result is ``x`` exactly. Round-to-nearest would instead drop every increment
    smaller than half a unit in the last place, so a slow average (decay 0.999)
    kept in bfloat16 stops moving."""
    nearest = x.astype(dtype)
    back = nearest.astype(x.dtype)
    err = x - back
    other = jnp.nextafter(nearest, jnp.where(err > 0, jnp.inf, -jnp.inf).astype(dtype))
    gap = other.astype(x.dtype) - back  # same sign as err, or inf at the top of the range
    ok = (err != 0) & jnp.isfinite(gap) & (gap != 0)
    p = jnp.where(ok, err / jnp.where(ok, gap, 1), 0)
    u = jax.random.uniform(key, jnp.shape(x), x.dtype)
    return jnp.where(u < p, other, nearest)


def _saturate(x: Array, dtype: jnp.dtype) -> Array:
    """Clips real ``x`` to the finite range of ``dtype`` (NaN stays NaN)."""
    if jnp.iscomplexobj(x):
        return x
    largest = float(jnp.finfo(dtype).max)
    return jnp.clip(x, -largest, largest)


def _store(x: Array, dtype: jnp.dtype, key: Array | None) -> Array:
    """Casts a new state value to its storage dtype (stochastically if asked)."""
    if key is not None and jnp.finfo(dtype).bits < jnp.finfo(x.dtype).bits:
        if jnp.iscomplexobj(x):
            k_re, k_im = jax.random.split(key)
            real = _real_dtype(jnp.dtype(dtype))
            return jax.lax.complex(
                _stochastic_round(jnp.real(x), real, k_re),
                _stochastic_round(jnp.imag(x), real, k_im),
            ).astype(dtype)
        return _stochastic_round(x, dtype, key)
    return x.astype(dtype)


# --------------------------------------------------------------------------
# Per-leaf step.


def _one_minus(x: Any, dtype: jnp.dtype) -> Array:
    """``1 - x`` in ``dtype``; a Python number is subtracted in float64 first,
    as optax does, so that ``1 - 0.9`` is not rounded twice."""
    if isinstance(x, (int, float)):
        return jnp.asarray(1 - x, dtype)
    return 1 - jnp.asarray(x, dtype)


def _abs_sq(x: Array) -> Array:
    if jnp.iscomplexobj(x):
        return jnp.real(x * jnp.conj(x))
    return x * x


def _init_leaf(cfg: _Config, p: Array) -> tuple[Array, Array | None, Array | None]:
    # State is made *like* the parameter (``full_like``), so it inherits the
    # parameter's sharding, eagerly and under jit alike.
    p = jnp.asarray(p)
    complex_state = _is_complex(p)
    if cfg.split_complex and complex_state:
        p = _split(p)  # shape (..., 2): real and imaginary parts
        complex_state = False
    real = _default_real_dtype(jnp.result_type(p))
    nu_dtype = cfg.nu_dtype or real
    mu_dtype = cfg.mu_dtype or real
    if complex_state:
        mu_dtype = _to_complex(mu_dtype)
    nu = jnp.full_like(p, cfg.initial_scale, dtype=nu_dtype)
    mu = jnp.zeros_like(p, dtype=mu_dtype) if cfg.centered else None
    trace = jnp.zeros_like(p, dtype=mu_dtype) if cfg.momentum is not None else None
    return nu, mu, trace


def _leaf_step(
    cfg: _Config,
    g: Array,
    p: Array | None,
    nu: Array,
    mu: Array | None,
    trace: Array | None,
    lr: Any,
    wd: Any,
    t: Array,
    key: Array | None,
) -> tuple[Array, Array, Array | None, Array | None]:
    """One RMSprop step for one leaf; returns (update, nu, mu, trace).

    ``key`` is None unless the state is rounded stochastically."""
    out_dtype = jnp.result_type(g)
    split = cfg.split_complex and jnp.iscomplexobj(g)
    if split:
        g = _split(g)
        p = None if p is None else _split(p)
    # Compute in the state's precision: at least float32, float64 stays float64.
    real = _widest(
        _default_real_dtype(jnp.result_type(g)),
        *(_real_dtype(s.dtype) for s in (nu, mu, trace) if s is not None),
    )
    work = _to_complex(real) if jnp.iscomplexobj(g) else real

    g = g.astype(work)
    if cfg.maximize:
        g = -g
    if wd is not None and cfg.weight_decay_mode == "coupled":
        assert p is not None
        g = g + jnp.asarray(wd, real).astype(work) * p.astype(work)

    decay = jnp.asarray(cfg.decay, real)
    one_minus_decay = _one_minus(cfg.decay, real)
    new_nu = one_minus_decay * _abs_sq(g) + decay * nu.astype(real)
    new_mu = None
    if cfg.centered:
        assert mu is not None
        new_mu = one_minus_decay.astype(work) * g + decay.astype(work) * mu.astype(work)

    nu_hat, mu_hat = new_nu, new_mu
    if cfg.bias_correction:
        correction = 1 - decay ** t.astype(real)
        nu_hat = new_nu / correction
        mu_hat = None if new_mu is None else new_mu / correction.astype(work)
    v = nu_hat
    if cfg.centered:
        assert mu_hat is not None
        # The variance can round below zero; clamp so the root stays real.
        v = jnp.maximum(nu_hat - _abs_sq(mu_hat), 0)

    eps = jnp.asarray(cfg.eps, real)
    d = jnp.sqrt(v + eps) if cfg.eps_in_sqrt else jnp.sqrt(v) + eps
    # d == 0 only when eps == 0 and v == 0: the step is then 0, not 0/0. The
    # inner `where` keeps the discarded branch finite so gradients stay finite.
    positive = d > 0
    s = jnp.where(positive, g / jnp.where(positive, d, 1).astype(work), 0)

    new_trace = None
    if cfg.learning_rate is None:  # scale_by_rms: the learning-rate-free s.
        update = s
    else:
        lr = jnp.asarray(lr, real).astype(work)
        if cfg.momentum is None:
            step = lr * s
        else:
            m = jnp.asarray(cfg.momentum, real).astype(work)
            assert trace is not None
            b = trace.astype(work)
            if cfg.lr_in_momentum:
                new_trace = m * b + lr * s
                step = lr * s + m * new_trace if cfg.nesterov else new_trace
            else:
                new_trace = m * b + s
                step = lr * (s + m * new_trace) if cfg.nesterov else lr * new_trace
        update = -step
        if wd is not None and cfg.weight_decay_mode == "decoupled":
            assert p is not None
            update = update - (lr * jnp.asarray(wd, real).astype(work)) * p.astype(work)

    # A step beyond the range of the gradient's dtype (float16 tops out at
    # 65504; g / eps with a zero variance can exceed any range) saturates at
    # the largest finite value instead of becoming Inf.
    update = _merge(update, out_dtype) if split else _saturate(update, out_dtype)
    keys: list[Array | None] = [None, None, None]
    if key is not None:
        keys = list(jax.random.split(key, 3))
    return (
        update.astype(out_dtype),
        _store(new_nu, nu.dtype, keys[0]),
        # nu is not saturated: a square beyond its range is +inf, which makes
        # that coordinate's step 0 (documented); mu and the buffer saturate.
        None
        if new_mu is None or mu is None
        else _store(_saturate(new_mu, mu.dtype), mu.dtype, keys[1]),
        None
        if new_trace is None or trace is None
        else _store(_saturate(new_trace, trace.dtype), trace.dtype, keys[2]),
    )


# --------------------------------------------------------------------------
# The transformation.


def _flatten(tree: Any) -> tuple[list[Any], Any]:
    """``jax.tree.flatten``, with the treedef typed loosely (jaxlib ships no stubs)."""
    return jax.tree.flatten(tree)


def _evaluate(rate: Any, count: Array) -> Any:
    return rate(count) if callable(rate) else rate


def _mask_leaves(cfg: _Config, params: Any, treedef: Any) -> list[Any]:
    mask = cfg.weight_decay_mask
    if mask is None:
        return [True] * treedef.num_leaves
    if callable(mask):
        mask = mask(params)
    mask_def = jax.tree.structure(mask)
    if mask_def != treedef:
        raise ValueError(
            "`weight_decay_mask` must have the same tree structure as the "
            f"parameters; the mask has {mask_def}, the parameters {treedef}."
        )
    return jax.tree.leaves(mask)


def build(cfg: _Config) -> optax.GradientTransformationExtraArgs:
    """Returns the transformation that ``cfg`` describes."""

    def init_fn(params: optax.Params) -> RMSpropState:
        leaves, treedef = _flatten(params)
        per_leaf = [_init_leaf(cfg, p) for p in leaves]
        nu = treedef.unflatten([x[0] for x in per_leaf])
        mu = treedef.unflatten([x[1] for x in per_leaf]) if cfg.centered else None
        has_trace = cfg.momentum is not None
        trace = treedef.unflatten([x[2] for x in per_leaf]) if has_trace else None
        return RMSpropState(count=jnp.zeros([], jnp.int32), nu=nu, mu=mu, trace=trace)

    def update_fn(
        updates: optax.Updates,
        state: RMSpropState,
        params: optax.Params | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, RMSpropState]:
        del extra_args
        g_leaves, treedef = _flatten(updates)
        state_def: Any = jax.tree.structure(state.nu)
        if treedef != state_def:
            raise ValueError(
                "The gradient tree does not match the optimizer state: the "
                f"gradients have structure {treedef}, but the state was "
                f"initialised for {state_def}. Call `init` with parameters "
                "shaped like the gradients."
            )
        n = treedef.num_leaves
        wd = cfg.weight_decay
        if wd is not None and n:
            if params is None:
                raise ValueError(
                    "`params` must be passed to `update` when weight decay is "
                    "used: call `update(grads, state, params)`."
                )
            p_leaves = treedef.flatten_up_to(params)
            mask = _mask_leaves(cfg, params, treedef)
        else:
            p_leaves, mask = [None] * n, [False] * n
        nu_leaves = treedef.flatten_up_to(state.nu)
        mu_leaves = treedef.flatten_up_to(state.mu) if cfg.centered else [None] * n
        tr_leaves = treedef.flatten_up_to(state.trace) if cfg.momentum is not None else [None] * n

        lr = _evaluate(cfg.learning_rate, state.count)
        wd_t = _evaluate(wd, state.count)
        t = optax.safe_increment(state.count)
        keys: list[Array | None] = [None] * n
        if cfg.stochastic_rounding and n:
            # Deterministic for a given seed: one stream per step and leaf.
            step_key = jax.random.fold_in(jax.random.PRNGKey(cfg.seed), state.count)
            keys = [jax.random.fold_in(step_key, i) for i in range(n)]
        results = [
            _leaf_step(cfg, g, p, nu, mu, tr, lr, _leaf_weight_decay(wd_t, m), t, k)
            for g, p, nu, mu, tr, m, k in zip(
                g_leaves, p_leaves, nu_leaves, mu_leaves, tr_leaves, mask, keys, strict=True
            )
        ]
        new_updates, new_nu, new_mu, new_trace = (
            treedef.unflatten([r[i] for r in results]) for i in range(4)
        )
        return new_updates, RMSpropState(
            count=t,
            nu=new_nu,
            mu=new_mu if cfg.centered else None,
            trace=new_trace if cfg.momentum is not None else None,
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _leaf_weight_decay(wd: Any, mask: Any) -> Any:
    """The weight decay of one leaf: None where the mask is a Python False."""
    if wd is None or mask is False or mask is None:
        return None
    if isinstance(mask, (bool, np.bool_)):
        return wd if mask else None
    return jnp.where(jnp.asarray(mask, bool), jnp.asarray(wd), 0)
