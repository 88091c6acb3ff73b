r"""The effective step size, read from an optimizer's configuration and state.

RMSprop scales each coordinate's gradient by :math:`\eta / d` with
:math:`d = \sqrt{\hat v + \epsilon}` (or :math:`\sqrt{\hat v} + \epsilon`),
:math:`\hat v` the (centered, bias-corrected) second moment. When the loss
jumps late in training, the usual cause is visible here: coordinates whose
:math:`d` has decayed towards :math:`\sqrt\epsilon` take steps hundreds of
times larger than the rest the moment a gradient reaches them.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from rmsprop_jax import _factored, _quantized
from rmsprop_jax._config import Config, config_of
from rmsprop_jax._core import RMSpropState

Array = jax.Array


class StepSizeStats(NamedTuple):
    """Statistics of one leaf's per-coordinate step size :math:`\\eta / d`."""

    median: Array  # over the coordinates that can move
    max: Array  # the largest: the coordinate a sudden gradient moves most
    frozen: Array  # fraction of coordinates whose step is 0 whatever the gradient


def _find_state(state: Any) -> Any:
    found = [
        x
        for x in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, RMSpropState))
        if isinstance(x, RMSpropState)
    ]
    if len(found) != 1:
        raise ValueError(
            f"`state` must hold exactly one rmsprop_jax RMSpropState, found {len(found)}: "
            "pass the state of the transform (or of a chain around it)."
        )
    return found[0]


def _denominator(cfg: Config, nu: Any, mu: Any, count: Array) -> Array:
    """d for one leaf, float32 (float64 where the state is)."""
    o = cfg.options
    mu_values = mu
    if mu is not None and _quantized.is_quantized(mu):
        block = o.mu_dtype.block_size
        mu_values = _quantized.load(mu, "signed", block)
        if mu_values.ndim and mu_values.shape[-1] == 2 and not o.split_complex:
            mu_values = jax.lax.complex(mu_values[..., 0], mu_values[..., 1])
    if _factored.is_factored(nu):
        leaves = jax.tree.leaves(nu)
        shape = tuple(max(a, b) for a, b in zip(leaves[0].shape, leaves[1].shape, strict=True))
        axes = _factored.factor_axes(nu, shape)
        assert axes is not None
        row, col, _ = _factored.unpack(nu, axes)
        v = _factored.estimate(row, col, axes[0])
    elif _quantized.is_quantized(nu):
        v = _quantized.load(nu, "nu", o.nu_dtype.block_size)
        if o.centered and mu_values is not None:  # the slot holds the variance
            v = v + jnp.abs(mu_values).astype(v.dtype) ** 2
    else:
        v = jnp.asarray(nu)
    real = jnp.result_type(v, jnp.float32)
    v = v.astype(real)
    decay = jnp.asarray(cfg.decay, real)
    if o.bias_correction:
        correction = 1 - decay ** jnp.maximum(count, 1).astype(real)
        v = v / correction
        if mu_values is not None:
            mu_values = mu_values / correction.astype(mu_values.dtype)
    if o.centered and mu_values is not None:
        v = v - jnp.minimum(jnp.abs(mu_values).astype(real) ** 2, v)
    eps = jnp.asarray(cfg.eps, real)
    return jnp.sqrt(v + eps) if o.eps_in_sqrt else jnp.sqrt(v) + eps


def step_size_stats(optimizer: Any, state: Any, learning_rate: Any = None) -> Any:
    r"""Per leaf, statistics of the step size :math:`\eta / d` of each coordinate.

    :math:`d` is the denominator the next step divides the gradient by: the
    root of the (centered, bias-corrected) second moment with ``eps``, from
    ``state``; :math:`\eta` is the learning rate the next step uses (a
    schedule is evaluated at the state's count; ``scale_by_rms`` has none and
    counts as 1). With momentum :math:`m`, a gradient that keeps its sign
    moves a coordinate by up to :math:`\eta / (d (1 - m))` per step.

    A coordinate is *frozen* when its step is 0 whatever its gradient: a
    square that overflowed made :math:`d` infinite, or ``eps=0`` and no
    gradient yet make it 0 (which the step turns into no step). ``median``
    and ``max`` are taken over the other coordinates (0 if there are none).

    It runs eagerly or under ``jit``/``scan``, and works on every state
    layout (factored and 8-bit leaves included).

    Args:
      optimizer: a transform built by this library (``rmsprop``,
        ``scale_by_rms`` or a preset), not a chain around it.
      state: its state, or the state of a chain (or ``inject_hyperparams``)
        holding it.
      learning_rate: overrides the optimizer's, e.g. the value
        ``optax.inject_hyperparams`` holds in its state.

    Returns:
      A tree shaped like the parameters with a :class:`StepSizeStats` per
      leaf (for a leaf that is never trained, an integer one, the figures
      describe state that no step uses).

    Example:
      >>> import jax.numpy as jnp
      >>> import rmsprop_jax
      >>> opt = rmsprop_jax.rmsprop(0.01, eps=1e-8)
      >>> params = {"w": jnp.zeros(3)}
      >>> _, state = opt.update({"w": jnp.array([1.0, 1e-3, 0.0])}, opt.init(params))
      >>> stats = rmsprop_jax.step_size_stats(opt, state)["w"]  # lr / sqrt(nu + eps)
      >>> print(f"{float(stats.median):.3g} {float(stats.max):.3g} {float(stats.frozen):.3g}")
      30.2 100 0
    """
    cfg = config_of(optimizer)
    if cfg is None:
        raise ValueError(
            "`optimizer` must be a transform built by rmsprop_jax (`rmsprop`, "
            f"`scale_by_rms` or a preset), got {optimizer!r}; for a chain, pass the "
            "rmsprop_jax transform inside it and the chain's state."
        )
    s = _find_state(state)
    count = jnp.asarray(s.count)
    if learning_rate is None:
        learning_rate = cfg.learning_rate
    if learning_rate is None:
        learning_rate = 1.0
    lr = learning_rate(count) if callable(learning_rate) else learning_rate

    def leaf(nu: Any, mu: Any) -> StepSizeStats:
        d = _denominator(cfg, nu, mu, count)
        size = jnp.asarray(lr, d.dtype) / d
        moving = jnp.isfinite(size) & (size > 0)
        n = max(int(d.size), 1)
        frozen = 1 - jnp.sum(moving) / n
        safe = jnp.where(moving, size, jnp.nan)
        median = jnp.nanmedian(safe) if d.size else jnp.zeros((), d.dtype)
        any_moving = jnp.any(moving)
        return StepSizeStats(
            median=jnp.where(any_moving, median, 0),
            max=jnp.where(any_moving, jnp.max(jnp.where(moving, size, 0), initial=0), 0),
            frozen=frozen,
        )

    stop = lambda x: _factored.is_factored(x) or _quantized.is_quantized(x)
    if s.mu is None:
        return jax.tree.map(lambda nu: leaf(nu, None), s.nu, is_leaf=stop)
    return jax.tree.map(leaf, s.nu, s.mu, is_leaf=stop)
