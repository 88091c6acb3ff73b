r"""The numbers of one step, evaluated once per step into one pytree.

:func:`numbers` evaluates the hyperparameters of a :class:`~rmsprop_jax._config.Config`
(constants, schedules' values, arrays that ``optax.inject_hyperparams``
passes) at the step count, in one dtype (the widest the step computes in), and
returns a :class:`Numbers`: a registered dataclass that goes straight into the
jitted leaf step (``rmsprop_jax._step``), which casts each number to the leaf's
dtype where it needs it.

Values known only at run time follow one rule, the same for every factory:

- integers act as the same float;
- a learning rate or weight decay that is negative, complex (a non-zero
  imaginary part) or not finite, a decay or momentum outside [0, 1), an eps
  below 0 or not finite, or a weight decay other than 0 when ``update`` got no
  ``params``, makes ``ok`` False: the update is zero and the state is kept as it
  was (the count still advances), instead of a step that the same constant
  would have been refused for. Under ``jax.experimental.checkify`` the same
  condition is a check that fails with the values;
- a finite learning rate beyond the range of the narrowest dtype the step
  computes in is clipped to it, so that it cannot turn a step into inf.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

from rmsprop_jax import _validation as v
from rmsprop_jax._config import Config

Array = jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Numbers:
    """The hyperparameters of one step, in one dtype (None where absent)."""

    lr: Array | None  # None for scale_by_rms
    decay: Array | None  # None where the decay is 0: no decay * nu term
    one_minus_decay: Array
    eps: Array
    momentum: Array | None
    wd: Array | None  # None: no weight-decay term this step
    correction: Array | None  # 1 - decay^t, with bias correction
    s_max: Array  # the bound on |s| where it has no static one
    ok: Array | None  # None where every number was checked when the transform was built


def _one_minus(x: Any, dtype: jnp.dtype) -> Array:
    """``1 - x`` in ``dtype``; a Python number is subtracted in float64 first,
    as optax does, so that ``1 - 0.9`` is not rounded twice and ``1 - x`` of an
    ``x`` that rounds to 1 in ``dtype`` is not 0."""
    if v.is_number(x):
        return jnp.asarray(1 - float(x), dtype)
    return 1 - jnp.asarray(x, dtype)


def _rate(name: str, rate: Any, count: Array, dtype: jnp.dtype, narrow: jnp.dtype) -> Any:
    """(value, check): a learning rate or weight decay at this step, in ``dtype``,
    and for a run-time value the condition under which it is used (else None)."""
    value = rate(count) if callable(rate) else rate
    if np.ndim(value) != 0:
        raise ValueError(
            f"`{name}` must be a scalar at every step; its schedule returned shape "
            f"{np.shape(value)}."
        )
    largest = float(jnp.finfo(narrow).max)
    if not (callable(rate) or v.is_traced(rate)):
        x = float(np.asarray(value, np.float64))
        if not abs(x) <= largest:
            raise ValueError(
                f"`{name}` is {x!r} at this step, beyond the range of "
                f"{jnp.dtype(narrow).name}, the dtype this step is computed in (largest "
                f"{largest:.4g}); use a smaller value or float64 parameters."
            )
        return jnp.asarray(value, dtype), None
    value = jnp.asarray(value)
    check = None
    if jnp.iscomplexobj(value):
        check = jnp.imag(value) == 0
        value = jnp.real(value)
    value = value.astype(dtype)
    valid = jnp.isfinite(value) & (value >= 0)
    check = valid if check is None else check & valid
    return jnp.clip(value, -largest, largest), check


def numbers(
    cfg: Config,
    count: Array,
    t: Array,
    dtype: jnp.dtype,
    narrow: jnp.dtype,
    have_params: bool,
) -> Numbers:
    """The numbers of step ``t`` (= ``count + 1``) in ``dtype``, with the bounds of
    ``narrow``, the narrowest dtype a leaf's step is computed in."""
    o = cfg.options
    checks: dict[str, Array] = {}  # name -> the condition under which it is used
    seen: dict[str, Array] = {}  # name -> its value, for checkify's message
    safe = {"learning_rate": 0.0, "weight_decay": 0.0, "decay": 0.0, "eps": 1.0, "momentum": 0.0}

    def run_time(name: str, x: Any, valid: Any) -> Any:
        if valid is not None:
            checks[name], seen[name] = valid, x
        return x

    rate = lambda name, x: _rate(name, x, count, dtype, narrow)
    lr = wd = None
    if not o.scale_only:
        lr = run_time("learning_rate", *rate("learning_rate", cfg.learning_rate))
    if o.weight_decay_mode is not None:
        wd = run_time("weight_decay", *rate("weight_decay", cfg.weight_decay))
        if not have_params:  # a run-time weight decay (a known one needs params: see _core)
            run_time("weight_decay", wd, checks.get("weight_decay", True) & (wd == 0))
            wd = None
    decay = jnp.asarray(cfg.decay, dtype)
    if v.is_traced(cfg.decay):
        run_time("decay", decay, (decay >= 0) & (decay < 1))
    eps = jnp.asarray(cfg.eps, dtype)
    if v.is_traced(cfg.eps):
        run_time("eps", eps, jnp.isfinite(eps) & (eps >= 0))
    momentum = None
    if o.momentum:
        momentum = jnp.asarray(cfg.momentum, dtype)
        if v.is_traced(cfg.momentum):
            run_time("momentum", momentum, (momentum >= 0) & (momentum < 1))

    ok = None
    if checks:
        ok = functools.reduce(jnp.logical_and, checks.values())
        message = ", ".join(f"`{name}`={{}}" for name in seen)
        checkify.debug_check(
            ok,
            f"a hyperparameter known only at run time is out of range ({message}): "
            "this update makes no step",
            *seen.values(),
        )
        # What the step computes with when it is not taken: finite values, so
        # that neither the discarded step nor its derivative is NaN.
        fix = lambda name, x: jnp.where(ok, x, safe[name]) if name in checks else x
        lr = None if lr is None else fix("learning_rate", lr)
        wd = None if wd is None else fix("weight_decay", wd)
        decay, eps = fix("decay", decay), fix("eps", eps)
        momentum = None if momentum is None else fix("momentum", momentum)

    finfo = jnp.finfo(narrow)
    largest = float(finfo.max)
    one_minus_m = (
        jnp.asarray(1.0, dtype)
        if momentum is None
        else jnp.maximum(_complement(cfg.momentum, momentum, dtype), jnp.asarray(finfo.eps, dtype))
    )
    if lr is not None and o.clip_lr:
        assert o.s_bound is not None
        limit = largest * one_minus_m / o.s_bound
        lr = jnp.clip(lr, -limit, limit)
    s_max = jnp.asarray(largest, dtype) * one_minus_m
    if lr is not None:
        s_max = s_max / jnp.maximum(jnp.abs(lr), 1)
    # A saturation bound, not part of the mathematics: meta-gradients do not
    # flow through it. (This also keeps the clamp's scalar bounds out of
    # differentiation, where JAX's clamp rule fails for scalar bounds.)
    s_max = jax.lax.stop_gradient(s_max)
    return Numbers(
        lr=lr,
        decay=None if o.decay_zero else decay,
        one_minus_decay=_complement(cfg.decay, decay, dtype),
        eps=eps,
        momentum=momentum,
        wd=wd,
        correction=_bias_correction(cfg, decay, t, dtype, narrow) if o.bias_correction else None,
        s_max=s_max,
        ok=ok,
    )


def _complement(given: Any, used: Array, dtype: jnp.dtype) -> Array:
    """``1 - x`` of a decay or momentum: from the value as given where it is known
    (exact for a Python number), else from the value used."""
    return _one_minus(given, dtype) if not v.is_traced(given) else 1 - used


def _bias_correction(
    cfg: Config, decay: Array, t: Array, dtype: jnp.dtype, narrow: jnp.dtype
) -> Array | None:
    r""":math:`1 - \rho^t`, as optax computes it, kept exact where that cannot be.

    A known decay that rounds to 1 in ``narrow`` (0.99999999 in float32) would
    make :math:`1 - \rho^t` exactly 0; there it is computed as
    :math:`-\operatorname{expm1}(t \log\rho)` with :math:`\log\rho` taken in
    float64. A run-time decay is kept above zero."""
    if cfg.options.decay_known:
        known = float(np.asarray(cfg.decay, np.float64))
        if known == 0:
            return None  # 1 - 0^t = 1
        if float(np.asarray(known, narrow)) == 1:
            log_decay = jnp.asarray(np.log1p(-(1 - known)), dtype)
            return -jnp.expm1(t.astype(dtype) * log_decay)
        return 1 - decay ** t.astype(dtype)
    return jnp.maximum(1 - decay ** t.astype(dtype), jnp.finfo(dtype).tiny)
