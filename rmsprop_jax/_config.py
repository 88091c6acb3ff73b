"""One way to build a configuration: :func:`configure`, used by every public factory.

A configuration has two parts, made here once and never copied field by field:

- :class:`Options`, static and hashable: every choice that shapes the compiled
  program (the flags, the storage, and what the numbers' values allow the
  program to leave out). The jitted leaf step takes it as a static argument.
- the numbers as given (Python numbers, arrays, tracers under
  ``optax.inject_hyperparams``, schedules), kept in :class:`Config` beside the
  options. :func:`rmsprop_jax._numbers.numbers` evaluates them once per step
  into the pytree the leaf step takes.

``rmsprop``, ``scale_by_rms`` and every preset call :func:`configure` with
keyword arguments; it rounds the numbers as the preset's original does, then
checks them (naming each argument as its caller calls it, so that
``presets.pytorch`` reports ``lr`` and ``alpha``). A new flag is a field of
:class:`Options` (checked with the other flags), the stage of
``rmsprop_jax._step`` that reads it, and the factory that exposes it.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

from rmsprop_jax import _dtypes
from rmsprop_jax import _validation as v

_F32 = jnp.finfo(jnp.float32)


@dataclasses.dataclass(frozen=True)
class Options:
    """Every choice that shapes the compiled step (hashable; no arrays)."""

    # The second moment and its normalisation (scale_by_rms).
    centered: bool = False
    eps_in_sqrt: bool = True
    bias_correction: bool = False
    split_complex: bool = False
    # Storage.
    nu_dtype: Any = None  # None: the parameter's (see _dtypes)
    mu_dtype: Any = None
    stochastic_rounding: bool = False
    factored: bool = False
    min_dim_size_to_factor: int | None = 128  # None: traced (init asks for a static one)
    # What follows the normalised gradient s. scale_only (scale_by_rms) returns s.
    scale_only: bool = False
    momentum: bool = False  # a momentum buffer
    nesterov: bool = False
    lr_in_momentum: bool = True
    weight_decay_mode: str | None = None  # None: no weight-decay term in the program
    maximize: bool = False
    # What the numbers' values allow the program to leave out, decided once from
    # the values known when the transform is built (see _facts).
    decay_zero: bool = False  # decay is 0: no decay * nu term
    decay_known: bool = True  # else a run-time decay of 1 meets inf as 0
    eps_guard: bool = True  # the denominator can be 0: s = 0 there, not 0/0
    s_bound: float | None = None  # a bound on |s| for a full second moment
    eps_s_bound: float | None = None  # a bound on |s| that eps gives any second moment
    buffer_gain: float | None = None  # |buffer| <= buffer_gain * (a bound on |s|)
    clip_lr: bool = False  # a run-time learning rate is clipped to s_bound's limit
    momentum_unbounded: bool = False  # the buffer's bound cannot be shown at build
    run_time_check: bool = False  # some number is known only at run time: see _numbers


@dataclasses.dataclass(frozen=True)
class Config:
    """The options and the numbers as given (checked, rounded as the caller's original does)."""

    options: Options
    learning_rate: Any  # None for scale_by_rms
    decay: Any
    eps: Any
    initial_scale: Any
    momentum: Any  # None: no momentum buffer
    weight_decay: Any  # None: no weight decay
    weight_decay_mask: Any
    seed: Any


def configure(
    *,
    decay: Any,
    eps: Any,
    initial_scale: Any = 0.0,
    eps_in_sqrt: bool = True,
    bias_correction: bool = False,
    centered: bool = False,
    split_complex: bool = False,
    nu_dtype: Any = None,
    mu_dtype: Any = None,
    stochastic_rounding: bool = False,
    seed: Any = 0,
    factored: bool = False,
    min_dim_size_to_factor: Any = 128,
    scale_only: bool = False,
    learning_rate: Any = None,
    momentum: Any = None,
    nesterov: bool = False,
    lr_in_momentum: bool = True,
    weight_decay: Any = 0.0,
    weight_decay_mode: str = "decoupled",
    weight_decay_mask: Any = None,
    maximize: bool = False,
    names: Mapping[str, str] | None = None,
    rounding: Callable[[Any], Any] | None = None,
    rounding_note: str = "",
) -> Config:
    """Checks the arguments and returns the :class:`Config` they describe.

    ``names`` maps this function's argument names to the caller's (a preset's
    ``lr``, ``alpha``, ``rho``, ``epsilon``), for the error messages.
    ``rounding`` rounds each Python-number hyperparameter as the caller's
    original computes it (TensorFlow makes float32 tensors of them) *before*
    the checks, so that a value the original rounds out of range is refused
    here, with ``rounding_note`` saying why. Only concrete values are checked:
    tracers pass (see ``_validation``).
    """
    name = lambda arg: (names or {}).get(arg, arg)
    given = {
        "learning_rate": learning_rate,
        "decay": decay,
        "eps": eps,
        "initial_scale": initial_scale,
        "momentum": momentum,
        "weight_decay": weight_decay,
    }
    numbers = {arg: v.as_float(name(arg), x) for arg, x in given.items()}
    if rounding is not None:
        numbers = {arg: rounding(x) if v.is_number(x) else x for arg, x in numbers.items()}
    try:
        _check_numbers(numbers, nesterov, bias_correction, scale_only, name)
    except ValueError as error:
        rounded = [
            f"`{name(arg)}`={v.show(given[arg])} is {v.show(x)} {rounding_note}"
            for arg, x in numbers.items()
            if f"`{name(arg)}`" in str(error) and v.is_number(x) and x != given[arg]
        ]
        if not rounded:
            raise
        raise ValueError(f"{str(error).rstrip('.')} ({'; '.join(rounded)}).") from None

    flags = {
        "eps_in_sqrt": eps_in_sqrt,
        "bias_correction": bias_correction,
        "centered": centered,
        "split_complex": split_complex,
        "stochastic_rounding": stochastic_rounding,
        "factored": factored,
        "nesterov": nesterov,
        "lr_in_momentum": lr_in_momentum,
        "maximize": maximize,
    }
    for arg, flag in flags.items():
        v.check_static_bool(name(arg), flag)
    if factored and centered:
        raise ValueError(
            f"`{name('factored')}=True` cannot be combined with `{name('centered')}=True`: a "
            "factored second moment is a rank-one estimate that can fall below the "
            "squared mean, so the centered variance has no meaning there. Use one or "
            "the other."
        )
    # Only init needs it (update reads the factoring from the state), so a
    # traced value (inject_hyperparams under jit) passes here: see init.
    min_dim = v.static_int(name("min_dim_size_to_factor"), min_dim_size_to_factor, minimum=1)
    v.check_seed(name("seed"), seed)
    if not scale_only:
        v.check_weight_decay_mode(weight_decay_mode)
        if weight_decay_mask is not None and not callable(weight_decay_mask):
            v.check_mask_leaves(weight_decay_mask)
    if scale_only:
        numbers.update(learning_rate=None, momentum=None, weight_decay=None)
    # Zero means off. A momentum that is None or a Python/NumPy number 0 makes
    # no buffer; an array (as optax.inject_hyperparams passes, whose value may
    # change between steps) always gets one, so that an eager init and a jitted
    # update agree on the state's structure. A weight decay that is None or
    # known to be 0 is left out of the program.
    if v.is_number(numbers["momentum"]) and numbers["momentum"] == 0:
        numbers["momentum"] = None
    if v.is_zero(numbers["weight_decay"]):
        numbers["weight_decay"] = None
    options = Options(
        centered=centered,
        eps_in_sqrt=eps_in_sqrt,
        bias_correction=bias_correction,
        split_complex=split_complex,
        nu_dtype=_dtypes.check_state_dtype(name("nu_dtype"), nu_dtype),
        mu_dtype=_dtypes.check_state_dtype(name("mu_dtype"), mu_dtype),
        stochastic_rounding=stochastic_rounding,
        factored=factored,
        min_dim_size_to_factor=min_dim if factored else 128,
        scale_only=scale_only,
        momentum=numbers["momentum"] is not None,
        nesterov=nesterov,
        lr_in_momentum=lr_in_momentum,
        weight_decay_mode=None if numbers["weight_decay"] is None else weight_decay_mode,
        maximize=maximize,
        **_facts(numbers, centered, eps_in_sqrt, lr_in_momentum),
    )
    return Config(
        options=options,
        learning_rate=numbers["learning_rate"],
        decay=numbers["decay"],
        eps=numbers["eps"],
        initial_scale=numbers["initial_scale"],
        momentum=numbers["momentum"],
        weight_decay=numbers["weight_decay"],
        weight_decay_mask=weight_decay_mask,
        seed=seed,
    )


def _check_numbers(
    numbers: dict[str, Any],
    nesterov: bool,
    bias_correction: bool,
    scale_only: bool,
    name: Callable[[str], str],
) -> None:
    v.check_precise(name("decay"), numbers["decay"])
    v.check_precise(name("momentum"), numbers["momentum"])
    v.check_unit_interval(name("decay"), numbers["decay"])
    v.check_nonnegative(name("eps"), numbers["eps"])
    v.check_nonnegative(name("initial_scale"), numbers["initial_scale"])
    v.check_bias_correction(bias_correction, numbers["initial_scale"], name("initial_scale"))
    if not scale_only:
        v.check_rate(name("learning_rate"), numbers["learning_rate"])
        if numbers["weight_decay"] is not None:
            v.check_rate(name("weight_decay"), numbers["weight_decay"])
        v.check_momentum(numbers["momentum"], nesterov, name("momentum"))


def _value(x: Any) -> float | None:
    """A known number as a float; None for a schedule, a tracer or None."""
    return float(np.asarray(x, np.float64)) if v.is_known(x) else None


def _facts(
    numbers: dict[str, Any], centered: bool, eps_in_sqrt: bool, lr_in_momentum: bool
) -> dict[str, Any]:
    """What the known values allow the compiled step to leave out.

    ``s = g / d`` must stay finite, and so must ``lr * s`` and the momentum
    buffer, which grows to ``lr * s / (1 - m)``: ``0 * inf`` would be NaN. The
    bounds are checked against float32's range, the narrowest a step is
    computed in; where they hold there, they hold in float64 too.

    - Without centering, a full second moment bounds ``s`` by itself: the
      current step alone puts at least ``(1 - decay) g^2`` into it, so
      ``|s| <= 1 / sqrt(1 - decay)`` (doubled here for rounding and narrow
      storage). Then only the learning rate needs bounding: statically where
      it is known, by clipping it once per step where it is not.
    - A centered variance can be 0 (constant gradients), so ``s = g / sqrt(eps)``,
      which eps bounds: where the full second moment is finite so is ``g^2``
      (it holds ``(1 - decay) g^2``), so ``|g| <= sqrt(max)`` and
      ``|s| <= sqrt(max) / sqrt(eps)`` (``/ eps`` with eps outside the root;
      doubled for rounding). This holds however ``nu`` is stored.
    - The same bound from eps holds for a factored second moment (``s = 0``
      where ``g^2`` overflowed) and a full one that a narrow dtype can round to
      0 (``eps_s_bound``), where the learning rate and momentum are known.
    - Otherwise (a run-time learning rate with centering or factoring, eps 0, or
      a bound too large for the learning rate) the step clamps ``s`` to
      ``max * (1 - m) / max(|lr|, 1)``.

    Where ``|s| <= S`` statically, the buffer ``b <- m b + lr s`` (``+ s`` with the
    rate outside it) stays within ``buffer_gain * S``, ``buffer_gain =
    |lr| (1 + d) / (1 - m (1 + d))``, even if every store rounds it up by
    ``d = 2**-7`` (bfloat16's relative spacing, the coarsest storage dtype): the
    step then stores it without saturating where that bound fits the dtype.
    """
    decay, eps = _value(numbers["decay"]), _value(numbers["eps"])
    lr, m = _value(numbers["learning_rate"]), _value(numbers["momentum"])
    has_m = numbers["momentum"] is not None
    m_known = not has_m or m is not None
    eps_positive = eps is not None and eps >= float(_F32.tiny)  # XLA flushes subnormals
    eps_bound = None
    if eps_positive and decay is not None:
        assert eps is not None
        root_max = float(np.sqrt(float(_F32.max)))
        eps_bound = 2.0 * root_max / (float(np.sqrt(eps)) if eps_in_sqrt else eps)
        eps_bound = eps_bound if eps_bound <= float(_F32.max) else None
    has_lr = numbers["learning_rate"] is not None

    def fits(bound: float | None) -> float | None:
        """``bound`` where the known learning rate and momentum keep ``lr * s`` and
        the buffer within range with it; None where they do not, or are not known."""
        if bound is None or not has_lr:
            return bound
        if lr is None or not m_known:
            return None
        one_minus_m = max(1 - (m or 0.0), float(_F32.eps))
        return None if max(abs(lr), 1.0) * bound > float(_F32.max) * one_minus_m else bound

    clip_lr = False
    if centered:
        # Clipping a run-time rate at max * (1 - m) / bound could change a finite
        # step here (the bound is loose): s is clamped instead.
        bound = fits(eps_bound)
    else:
        bound = None if decay is None else 2.0 / float(np.sqrt(1 - decay))
        if bound is not None and has_lr and (lr is None or not m_known):
            clip_lr = True
        else:
            bound = fits(bound)
    # initial_scale is read by init alone.
    run_time = [
        x
        for arg, x in numbers.items()
        if arg != "initial_scale" and (callable(x) or v.is_traced(x))
    ]
    buffer_gain = None
    if has_m and m is not None and (lr is not None or not lr_in_momentum):
        grow = 1 + 2.0**-7
        if m * grow < 1:
            rate = abs(lr) if lr_in_momentum and lr is not None else 1.0
            buffer_gain = rate * grow / (1 - m * grow)
    return dict(
        buffer_gain=buffer_gain,
        decay_zero=decay == 0,
        decay_known=decay is not None,
        eps_guard=not eps_positive,
        s_bound=bound,
        eps_s_bound=fits(eps_bound),
        clip_lr=clip_lr,
        momentum_unbounded=has_m and (m is None or 1 - m < float(_F32.eps)),
        run_time_check=bool(run_time),
    )


# The configuration behind each transform this library builds, keyed by its
# update function (a transform is a plain (init, update) pair), for the
# functions that read a state back through its configuration
# (``step_size_stats``).
_CONFIGS: weakref.WeakKeyDictionary[Any, Config] = weakref.WeakKeyDictionary()


def register(transform: Any, cfg: Config) -> Any:
    """Remembers ``cfg`` as the configuration of ``transform``; returns it."""
    _CONFIGS[transform.update] = cfg
    return transform


def config_of(transform: Any) -> Config | None:
    """The configuration of a transform this library built (else None)."""
    update = getattr(transform, "update", None)
    return _CONFIGS.get(update) if update is not None else None
