r"""The scalars of one step, made once per step and dtype pair, not once per leaf.

The hyperparameters (constants, schedules' values or injected arrays) are
evaluated, checked where they are traced, bounded to what the computation
dtype can hold and cast: the learning rate with the step's sign folded in,
the decays and their complements, eps, the weight-decay products, the bias
corrections, and the bounds the final saturation needs. The per-leaf stages
(:mod:`rmsprop_jax._step`) only read them.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rmsprop_jax._config import Config

Array = jax.Array


class Scalars(NamedTuple):
    """The step's scalar hyperparameters in one dtype, and the static decisions
    that depend on them, made once per step and dtype rather than once per leaf
    (a 2000-leaf tree compiled 2x slower)."""

    decay: Array | None  # None where decay is concretely 0: no decay * nu term
    decay_traced: bool  # decay known only at run time: guard 0 * inf
    one_minus_decay: Array
    eps: Array
    lr: Array | None  # None for scale_by_rms; bounded, see scalars()
    neg_lr: Array | None  # -lr, folded into the update where there is no buffer
    momentum: Array | None
    correction: Array | None
    s_max: Array  # the bound on |s| where it has no natural one
    s_min: Array  # -s_max
    natural: bool  # a full second moment bounds |s| (see scalars()), statically
    natural_any_storage: bool  # ... even when nu is stored in float16
    momentum_unbounded: bool  # the buffer's bound cannot be proven statically
    guard_zero_d: bool  # False when eps alone keeps the denominator positive
    # The same scalars in the gradient's working dtype (complex for complex
    # gradients), so that no leaf converts a scalar.
    decay_w: Array | None
    one_minus_decay_w: Array
    correction_w: Array | None
    lr_w: Array | None
    neg_lr_w: Array | None
    momentum_w: Array | None


# The fields of Scalars that are static decisions (Python bools), not arrays.
_STATIC = ("decay_traced", "natural", "natural_any_storage", "momentum_unbounded", "guard_zero_d")


def split(sc: Scalars) -> tuple[dict[str, Any], tuple[bool, ...]]:
    """(arrays, decisions): what a jitted leaf step takes as arguments, and as
    static arguments."""
    d = sc._asdict()
    return {k: v for k, v in d.items() if k not in _STATIC}, tuple(d[k] for k in _STATIC)


def join(arrays: dict[str, Any], decisions: tuple[bool, ...]) -> Scalars:
    """The inverse of :func:`split`."""
    fields: dict[str, Any] = {**arrays, **dict(zip(_STATIC, decisions, strict=True))}
    return Scalars(**fields)


def _is_python_number(x: Any) -> bool:
    return isinstance(x, (int, float, np.number)) and not isinstance(x, bool)


def _one_minus(x: Any, dtype: jnp.dtype) -> Array:
    """``1 - x`` in ``dtype``; a Python number is subtracted in float64 first,
    as optax does, so that ``1 - 0.9`` is not rounded twice and ``1 - x`` of an
    ``x`` that rounds to 1 in ``dtype`` is not 0."""
    if _is_python_number(x):
        return jnp.asarray(1 - float(x), dtype)
    return 1 - jnp.asarray(x, dtype)


def _eps_keeps_d_positive(eps: Any, real: jnp.dtype) -> bool:
    """True when eps alone keeps the denominator positive: a concrete eps at
    least the dtype's smallest normal number (XLA flushes subnormals to zero).
    Then the guard against 0/0 is left out of the program."""
    if isinstance(eps, jax.core.Tracer):
        return False
    return bool(np.all(np.asarray(eps, np.float64) >= float(jnp.finfo(real).tiny)))


def _rate(name: str, value: Any, real: jnp.dtype) -> Array:
    """A learning rate or weight decay at this step, in ``real``.

    A concrete value beyond the range of ``real`` cannot be honoured and is
    refused; a value known only at run time (a schedule under jit, an injected
    hyperparameter) is bounded to the finite range, so that it cannot turn a
    step into inf or NaN."""
    if np.ndim(value) != 0:
        raise ValueError(
            f"`{name}` must be a scalar at every step; its schedule returned shape "
            f"{np.shape(value)}."
        )
    largest = float(jnp.finfo(real).max)
    if not isinstance(value, jax.core.Tracer):
        x = float(np.asarray(value, np.float64).real)
        if not abs(x) <= largest:
            raise ValueError(
                f"`{name}` is {x!r} at this step, beyond the range of "
                f"{jnp.dtype(real).name}, the dtype this step is computed in (largest "
                f"{largest:.4g}); use a smaller value or float64 parameters."
            )
        return jnp.asarray(value, real)
    value = jnp.asarray(value).real.astype(real)
    return jnp.clip(value, -largest, largest)


def to_dtype(x: Array, dtype: jnp.dtype) -> Array:
    """``x`` in ``dtype``, with no op where it already is."""
    return x if x.dtype == dtype else jax.lax.convert_element_type(x, dtype)


def cast_or_none(x: Array | None, dtype: jnp.dtype) -> Array | None:
    return None if x is None else to_dtype(x, dtype)


def scalars(cfg: Config, real: jnp.dtype, work: jnp.dtype, lr: Any, wd: Any, t: Array) -> Scalars:
    """The scalars of step ``t`` (1, 2, ...) in dtype ``real`` (and ``work``).

    ``s = g / d`` must stay finite, and so must ``lr * s`` and the momentum
    buffer, which grows to ``lr * s / (1 - m)``: ``0 * inf`` would be NaN.

    - Without centering, a full second moment bounds ``s`` by itself: the
      current step alone puts at least ``(1 - decay) g^2`` into it, so
      ``|s| <= 1 / sqrt(1 - decay)`` (doubled here for rounding and narrow
      storage). Then only the learning rate needs bounding, once per step:
      statically where it is a number, by a scalar clip where it is traced.
    - A centered variance can be 0 (constant gradients), so ``s = g / sqrt(eps)``,
      which eps bounds: where the full second moment is finite so is ``g^2``
      (it holds ``(1 - decay) g^2``), so ``|g| <= sqrt(max)`` and
      ``|s| <= sqrt(max) / sqrt(eps)`` (``/ eps`` with eps outside the root;
      doubled for rounding). This holds however ``nu`` is stored. When the decay
      and eps are numbers and the learning rate and momentum are too, the whole
      step is then bounded statically.
    - Otherwise (a factored second moment, a run-time learning rate with
      centering, or a bound too large for the learning rate) ``s`` is clamped to
      ``max * (1 - m) / max(|lr|, 1)``. Clamping ``s`` once is cheap; clamping
      the stored buffer instead made XLA copy and re-read the state (a 5x
      slower step). A momentum that rounds to 1 in this dtype keeps the bound
      at ``max * eps``, not 0.
    """
    decay_zero = _is_python_number(cfg.decay) and float(cfg.decay) == 0
    decay = None if decay_zero else jnp.asarray(cfg.decay, real)
    if wd is not None:
        _rate("weight_decay", wd, real)  # refuses what cannot be honoured
    finfo = jnp.finfo(real)
    largest = float(finfo.max)
    m = None if cfg.momentum is None else jnp.asarray(cfg.momentum, real)
    static_m = cfg.momentum is None or _is_python_number(cfg.momentum)
    one_minus_m_static = 1.0 if cfg.momentum is None else None
    if cfg.momentum is not None and static_m:
        one_minus_m_static = max(1 - float(cfg.momentum), float(finfo.eps))
    one_minus_m = (
        jnp.asarray(1.0, real)
        if m is None
        else jnp.maximum(_one_minus(cfg.momentum, real), finfo.eps)
    )

    bound = _natural_bound(cfg, real)
    natural = bound is not None
    lr_r = None
    if not cfg.scale_only:
        lr_r = _rate("learning_rate", lr, real)
        if bound is not None:
            if isinstance(lr, jax.core.Tracer) or one_minus_m_static is None:
                if cfg.centered:
                    # Clipping the rate at max * (1 - m) / bound could change a
                    # finite step here (the bound is loose): clamp s instead.
                    natural = False
                else:
                    limit = largest * one_minus_m / bound
                    lr_r = jnp.clip(lr_r, -limit, limit)
            elif max(abs(float(np.asarray(lr).real)), 1.0) * bound > largest * one_minus_m_static:
                natural = False  # a learning rate this large: clamp s instead
    s_max = jnp.asarray(largest, real) * one_minus_m
    if lr_r is not None:
        s_max = s_max / jnp.maximum(jnp.abs(lr_r), 1)
    # A saturation bound, not part of the mathematics: meta-gradients do not
    # flow through it. (This also keeps the clamp's scalar bounds out of
    # differentiation, where JAX's clamp rule fails for scalar bounds.)
    s_max = jax.lax.stop_gradient(s_max)
    momentum_unbounded = cfg.momentum is not None and (
        not static_m or 1 - float(cfg.momentum) < float(finfo.eps)
    )
    one_minus_decay = _one_minus(cfg.decay, real)
    correction = _bias_correction(cfg, real, t) if cfg.bias_correction else None
    neg_lr = None if lr_r is None else -lr_r
    return Scalars(
        decay=decay,
        decay_traced=decay is not None and not _is_python_number(cfg.decay),
        one_minus_decay=one_minus_decay,
        eps=jnp.asarray(cfg.eps, real),
        lr=lr_r,
        neg_lr=neg_lr,
        momentum=m,
        correction=correction,
        decay_w=cast_or_none(decay, work),
        one_minus_decay_w=to_dtype(one_minus_decay, work),
        correction_w=cast_or_none(correction, work),
        lr_w=cast_or_none(lr_r, work),
        neg_lr_w=cast_or_none(neg_lr, work),
        momentum_w=cast_or_none(m, work),
        s_max=s_max,
        s_min=-s_max,
        natural=natural,
        natural_any_storage=natural and cfg.centered,
        momentum_unbounded=momentum_unbounded,
        guard_zero_d=not _eps_keeps_d_positive(cfg.eps, real),
    )


def _natural_bound(cfg: Config, real: jnp.dtype) -> float | None:
    """A static bound on ``|s|`` for a full second moment (see :func:`scalars`),
    or None where there is none: a decay known only at run time (a decay of 1
    keeps ``g^2`` out of ``nu``), or, centered, an eps that is not a number
    keeping the denominator positive."""
    if not _is_python_number(cfg.decay):
        return None
    if not cfg.centered:
        return 2.0 / float(np.sqrt(1 - float(cfg.decay)))
    if isinstance(cfg.eps, jax.core.Tracer) or not _eps_keeps_d_positive(cfg.eps, real):
        return None
    eps = float(np.asarray(cfg.eps, np.float64))
    root_max = float(np.sqrt(float(jnp.finfo(real).max)))
    bound = 2.0 * root_max / (float(np.sqrt(eps)) if cfg.eps_in_sqrt else eps)
    return bound if bound <= float(jnp.finfo(real).max) else None


def _bias_correction(cfg: Config, real: jnp.dtype, t: Array) -> Array | None:
    r""":math:`1 - \rho^t`, as optax computes it, kept exact where that cannot be.

    A Python-number decay that rounds to 1 in ``real`` (0.99999999 in
    float32) would make :math:`1 - \rho^t` exactly 0; there it is computed as
    :math:`-\operatorname{expm1}(t \log\rho)` with :math:`\log\rho` taken in
    float64. A traced decay (known at run time only) is kept above zero."""
    decay = jnp.asarray(cfg.decay, real)
    if _is_python_number(cfg.decay):
        if float(cfg.decay) == 0:
            return None  # 1 - 0^t = 1
        if float(np.asarray(cfg.decay, real)) == 1:
            log_decay = jnp.asarray(np.log1p(-(1 - float(cfg.decay))), real)
            return -jnp.expm1(t.astype(real) * log_decay)
        return 1 - decay ** t.astype(real)
    return jnp.maximum(1 - decay ** t.astype(real), jnp.finfo(real).tiny)
