"""The one implementation of RMSprop that every public function configures.

``scale_by_rms``, ``rmsprop`` and every preset build a :class:`_Config` and
call :func:`build`. The whole step for one leaf is written in
:func:`_leaf_step` as one elementwise expression, left to XLA to fuse. (On
CPU, XLA makes one loop per output, so the gradient is read more than once;
see the README's performance section.)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
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


class FactoredNu(NamedTuple):
    """A factored second moment: moving averages of |g|^2 over rows and columns."""

    row: Array  # mean over the second factored axis, kept as a size-1 dimension
    col: Array  # mean over the first factored axis, kept as a size-1 dimension


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
    factored: bool = False
    min_dim_size_to_factor: int = 128
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
# Factored second moment (Adafactor, Shazeer & Stern 2018).


def _factored_axes(cfg: _Config, shape: tuple[int, ...]) -> tuple[int, int] | None:
    """The two largest axes (in order) if both reach ``min_dim_size_to_factor``."""
    if not cfg.factored or len(shape) < 2:
        return None
    a, b = sorted(sorted(range(len(shape)), key=lambda d: (shape[d], d))[-2:])
    if min(shape[a], shape[b]) < max(2, cfg.min_dim_size_to_factor):
        return None
    return a, b


def _is_factored(x: Any) -> bool:
    """A factored second moment: a container of two arrays rather than an array.

    Containers are not only :class:`FactoredNu`: ``flax.nnx.Optimizer`` turns
    the state's NamedTuples into its own ``State`` mappings, so the factors are
    told apart by their shapes, never by their order or container type."""
    return not hasattr(x, "dtype")


def _factors(nu: Any, axes: tuple[int, int]) -> tuple[Array, Array, Any]:
    """(row, col, rebuild): rebuild(new_row, new_col) returns nu's own container."""
    leaves, treedef = _flatten(nu)
    first_is_row = leaves[0].shape[axes[1]] == 1 and leaves[0].shape[axes[0]] != 1
    row, col = leaves if first_is_row else leaves[::-1]

    def rebuild(new_row: Any, new_col: Any) -> Any:
        return treedef.unflatten([new_row, new_col] if first_is_row else [new_col, new_row])

    return row, col, rebuild


def _reconstruct(row: Array, col: Array, a: int) -> Array:
    """The full second moment from its factors: row * col / mean(row)."""
    scale = jnp.mean(row, axis=a, keepdims=True)
    ok = scale > 0
    return jnp.where(ok, row * col / jnp.where(ok, scale, 1), 0)


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
    return jnp.where(_uniform(key, jnp.shape(x), x.dtype) < p, other, nearest)


def _uniform(key: Array, shape: tuple[int, ...], dtype: jnp.dtype) -> Array:
    """Uniform [0, 1) numbers from a counter-based hash of (key, element index).

    The murmur3 finaliser of the element's index mixed with a 32-bit key: a few
    integer operations that XLA fuses into the step, where threefry
    (``jax.random``) made a bfloat16 step 5.9x slower on CPU. Rounding needs
    well-spread bits, not cryptographic ones; the result is deterministic."""
    size = int(np.prod(shape))
    if size == 0:
        return jnp.zeros(shape, dtype)
    x = jax.lax.iota(jnp.uint32, size).reshape(shape)
    x = x * jnp.uint32(0x9E3779B1) + key
    x = (x ^ (x >> 16)) * jnp.uint32(0x85EBCA6B)
    x = (x ^ (x >> 13)) * jnp.uint32(0xC2B2AE35)
    x = x ^ (x >> 16)
    return ((x >> 8).astype(jnp.float32) * jnp.float32(2.0**-24)).astype(dtype)


def _mix(*words: Any) -> Array:
    """A 32-bit key from integers (seed, step, leaf, buffer), hashed in turn."""
    h = jnp.uint32(0x811C9DC5)
    for w in words:
        h = (h ^ jnp.asarray(w).astype(jnp.uint32)) * jnp.uint32(0x01000193)
        h = h ^ (h >> 15)
    return h


def _store_nu(new: Any, old: Any, key: Array | None) -> Any:
    """Stores nu, or each factor of a factored nu, in the old storage dtypes."""
    if not _is_factored(new):
        return _store(new, old.dtype, key)
    new_leaves, treedef = _flatten(new)
    old_leaves = jax.tree.leaves(old)
    keys = [None if key is None else _mix(key, i) for i in range(len(new_leaves))]
    return treedef.unflatten(
        [_store(x, o.dtype, k) for x, o, k in zip(new_leaves, old_leaves, keys, strict=True)]
    )


def _saturate_to(x: Array, largest: Array) -> Array:
    """Clips ``x`` to [-largest, largest], real and imaginary parts separately
    for complex ``x`` (NaN stays NaN)."""
    if jnp.iscomplexobj(x):
        largest = jnp.real(largest) if jnp.iscomplexobj(largest) else largest
        return jax.lax.complex(
            _saturate_to(jnp.real(x), largest), _saturate_to(jnp.imag(x), largest)
        )
    return jnp.minimum(jnp.maximum(x, -largest), largest)


def _saturate(x: Array, dtype: jnp.dtype) -> Array:
    """Clips ``x`` to the finite range of ``dtype``."""
    return _saturate_to(x, jnp.asarray(jnp.finfo(_real_dtype(jnp.dtype(dtype))).max, x.dtype))


def _store(x: Array, dtype: jnp.dtype, key: Array | None, saturate: bool = False) -> Array:
    """Casts a new state value to its storage dtype (stochastically if asked).

    With ``saturate``, a value beyond a *narrower* storage dtype's range is
    stored as its largest finite value (only then: at full precision nothing
    is added to the step)."""
    narrower = jnp.finfo(dtype).bits < jnp.finfo(x.dtype).bits
    if saturate and narrower:
        x = _saturate(x, dtype)
    if key is not None and narrower:
        if jnp.iscomplexobj(x):
            k_re, k_im = _mix(key, 1), _mix(key, 2)
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


def _init_leaf(cfg: _Config, p: Array) -> tuple[Any, Array | None, Array | None]:
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
    axes = _factored_axes(cfg, jnp.shape(p))
    nu: Any
    if axes is None:
        nu = jnp.full_like(p, cfg.initial_scale, dtype=nu_dtype)
    else:
        a, b = axes
        first_of = lambda axis: jax.lax.index_in_dim(p, 0, axis, keepdims=True)
        nu = FactoredNu(
            row=jnp.full_like(first_of(b), cfg.initial_scale, dtype=nu_dtype),
            col=jnp.full_like(first_of(a), cfg.initial_scale, dtype=nu_dtype),
        )
    mu = jnp.zeros_like(p, dtype=mu_dtype) if cfg.centered else None
    trace = jnp.zeros_like(p, dtype=mu_dtype) if cfg.momentum is not None else None
    return nu, mu, trace


def _eps_keeps_d_positive(eps: Any, real: jnp.dtype) -> bool:
    """True when eps alone keeps the denominator positive: a concrete eps at
    least the dtype's smallest normal number (XLA flushes subnormals to zero).
    Then the guard against 0/0 is left out of the program (smaller, faster to
    compile)."""
    if isinstance(eps, jax.core.Tracer):
        return False
    return bool(np.all(np.asarray(eps, np.float64) >= float(jnp.finfo(real).tiny)))


class _Scalars(NamedTuple):
    """The step's scalar hyperparameters in one dtype, made once per step and
    dtype rather than once per leaf (a 2000-leaf tree compiled 2x slower)."""

    decay: Array
    one_minus_decay: Array
    eps: Array
    lr: Array | None
    momentum: Array | None
    correction: Array | None
    s_max: Array
    guard_zero_d: bool  # False when eps alone keeps the denominator positive


def _scalars(cfg: _Config, real: jnp.dtype, lr: Any, t: Array) -> _Scalars:
    decay = jnp.asarray(cfg.decay, real)
    lr_r = None if cfg.learning_rate is None else jnp.asarray(lr, real)
    m = None if cfg.momentum is None else jnp.asarray(cfg.momentum, real)
    # s = g / d can be astronomically large (g / eps with a zero variance). It
    # is bounded so that lr * s and the momentum buffer (which grows to
    # lr * s / (1 - m)) stay finite: 0 * inf would be NaN. Bounding s once is
    # free; clamping the stored buffer instead made XLA copy and re-read the
    # state (a 5x slower step).
    s_max = jnp.asarray(jnp.finfo(real).max, real)
    if m is not None:
        s_max = s_max * (1 - m)
    if lr_r is not None:
        s_max = s_max / jnp.maximum(jnp.abs(lr_r), 1)
    return _Scalars(
        decay=decay,
        one_minus_decay=_one_minus(cfg.decay, real),
        eps=jnp.asarray(cfg.eps, real),
        lr=lr_r,
        momentum=m,
        correction=1 - decay ** t.astype(real) if cfg.bias_correction else None,
        s_max=s_max,
        guard_zero_d=not _eps_keeps_d_positive(cfg.eps, real),
    )


def _leaf_step(
    cfg: _Config,
    g: Array,
    p: Array | None,
    nu: Any,
    mu: Array | None,
    trace: Array | None,
    scalars: Callable[[jnp.dtype], _Scalars],
    wd: Any,
    key: Array | None,
) -> tuple[Array, Any, Array | None, Array | None]:
    """One RMSprop step for one leaf; returns (update, nu, mu, trace).

    ``key`` is None unless the state is rounded stochastically."""
    out_dtype = jnp.result_type(g)
    split = cfg.split_complex and jnp.iscomplexobj(g)
    if split:
        g = _split(g)
        p = None if p is None else _split(p)
    # Compute in the state's precision: at least float32, float64 stays float64.
    stored = [*jax.tree.leaves(nu), mu, trace]
    real = _widest(
        _default_real_dtype(jnp.result_type(g)),
        *(_real_dtype(s.dtype) for s in stored if s is not None),
    )
    work = _to_complex(real) if jnp.iscomplexobj(g) else real
    sc = scalars(real)

    g = g.astype(work)
    if cfg.maximize:
        g = -g
    if wd is not None and cfg.weight_decay_mode == "coupled":
        assert p is not None
        g = g + jnp.asarray(wd, real).astype(work) * p.astype(work)

    decay, one_minus_decay = sc.decay, sc.one_minus_decay
    g2 = _abs_sq(g)
    axes = _factored_axes(cfg, g.shape) if _is_factored(nu) else None
    if axes is not None:
        a, b = axes
        row, col, rebuild = _factors(nu, axes)
        row = one_minus_decay * jnp.mean(g2, axis=b, keepdims=True) + decay * row.astype(real)
        col = one_minus_decay * jnp.mean(g2, axis=a, keepdims=True) + decay * col.astype(real)
        new_nu: Any = rebuild(row, col)
    else:
        new_nu = one_minus_decay * g2 + decay * nu.astype(real)
    new_mu = None
    if cfg.centered:
        assert mu is not None
        new_mu = one_minus_decay.astype(work) * g + decay.astype(work) * mu.astype(work)

    correction = sc.correction
    if axes is not None:
        if correction is not None:
            row, col = row / correction, col / correction
        nu_hat = _reconstruct(row, col, axes[0])
    else:
        nu_hat = new_nu if correction is None else new_nu / correction
    mu_hat = new_mu
    if correction is not None and new_mu is not None:
        mu_hat = new_mu / correction.astype(work)
    v = nu_hat
    if cfg.centered:
        assert mu_hat is not None
        # The variance can round below zero; clamp so the root stays real.
        # Where a square overflowed (nu = inf, and then mu^2 = inf too), keep
        # v = inf, so the step is 0 as documented, rather than inf - inf = NaN.
        v = jnp.where(nu_hat < jnp.inf, jnp.maximum(nu_hat - _abs_sq(mu_hat), 0), nu_hat)

    eps = sc.eps
    d = jnp.sqrt(v + eps) if cfg.eps_in_sqrt else jnp.sqrt(v) + eps
    # d == 0 only when eps == 0 and v == 0: the step is then 0, not 0/0. The
    # inner `where` keeps the discarded branch finite so gradients stay finite.
    if sc.guard_zero_d:
        positive = d > 0
        s = jnp.where(positive, g / jnp.where(positive, d, 1).astype(work), 0)
    else:
        s = g / d.astype(work)

    s = _saturate_to(s, sc.s_max)  # see _scalars

    new_trace = None
    if cfg.learning_rate is None:  # scale_by_rms: the learning-rate-free s.
        update = s
    else:
        assert sc.lr is not None
        lr = sc.lr.astype(work)
        if cfg.momentum is None:
            step = lr * s
        else:
            assert sc.momentum is not None and trace is not None
            m = sc.momentum.astype(work)
            buf = trace.astype(work)
            if cfg.lr_in_momentum:
                new_trace = m * buf + lr * s
                step = lr * s + m * new_trace if cfg.nesterov else new_trace
            else:
                new_trace = m * buf + s
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
        keys = [_mix(key, i) for i in range(3)]
    return (
        update.astype(out_dtype),
        _store_nu(new_nu, nu, keys[0]),
        # nu is not saturated: a square beyond its range is +inf, which makes
        # that coordinate's step 0 (documented). mu averages g, so it stays in
        # range; the buffer is bounded through s above.
        None if new_mu is None or mu is None else _store(new_mu, mu.dtype, keys[1], True),
        None
        if new_trace is None or trace is None
        else _store(new_trace, trace.dtype, keys[2], True),
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
        try:  # where nu is factored, the state has two arrays for one gradient
            nu_leaves = treedef.flatten_up_to(state.nu)
        except (ValueError, TypeError):
            raise ValueError(
                "The gradient tree does not match the optimizer state: the "
                f"gradients have structure {treedef}, but the state was "
                f"initialised for {jax.tree.structure(state.nu)}. Call `init` with "
                "parameters shaped like the gradients."
            ) from None
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
        mu_leaves = treedef.flatten_up_to(state.mu) if cfg.centered else [None] * n
        tr_leaves = treedef.flatten_up_to(state.trace) if cfg.momentum is not None else [None] * n

        lr = _evaluate(cfg.learning_rate, state.count)
        wd_t = _evaluate(wd, state.count)
        t = optax.safe_increment(state.count)
        keys: list[Array | None] = [None] * n
        if cfg.stochastic_rounding and n:
            # Deterministic for a given seed: one stream per step and leaf.
            keys = [_mix(cfg.seed, state.count, i) for i in range(n)]
        cache: dict[Any, _Scalars] = {}

        def scalars(real: jnp.dtype) -> _Scalars:
            if real not in cache:
                cache[real] = _scalars(cfg, real, lr, t)
            return cache[real]

        results = [
            _leaf_step(cfg, g, p, nu, mu, tr, scalars, _leaf_weight_decay(wd_t, m), k)
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
