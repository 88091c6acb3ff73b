"""One way to build a configuration: :func:`configure`, used by every public factory.

``rmsprop``, ``scale_by_rms`` and every preset call :func:`configure` with
keyword arguments; it checks them (naming each argument as its caller calls
it, so that ``presets.pytorch`` reports ``lr`` and ``alpha``), makes the
"zero means off" decisions, and returns a :class:`Config`, which
:func:`rmsprop_jax._core.build` turns into a transformation. A new option
touches this file, its stage of the step, and the factory that exposes it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

from rmsprop_jax import _validation as v


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything that decides the step. Numbers may be Python numbers, arrays or tracers."""

    # The second moment and its normalisation (scale_by_rms).
    decay: Any
    eps: Any
    initial_scale: Any
    eps_in_sqrt: bool
    bias_correction: bool
    centered: bool
    split_complex: bool
    # Storage.
    nu_dtype: jnp.dtype | None
    mu_dtype: jnp.dtype | None
    stochastic_rounding: bool
    seed: Any
    factored: bool
    min_dim_size_to_factor: int | None  # None: traced, known only at run time
    # True for scale_by_rms: the output is the normalised gradient s, with no
    # learning rate, momentum, weight decay or maximize (all unset below).
    scale_only: bool
    learning_rate: Any
    momentum: Any  # None: no momentum buffer.
    nesterov: bool
    lr_in_momentum: bool
    weight_decay: Any  # None: no weight decay.
    weight_decay_mode: str
    weight_decay_mask: Any
    maximize: bool


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
) -> Config:
    """Checks the arguments and returns the :class:`Config` they describe.

    ``names`` maps this function's argument names to the caller's (a preset's
    ``lr``, ``alpha``, ``rho``, ``epsilon``), for the error messages. Only
    concrete values are checked: tracers pass (see ``_validation``).
    """
    name = lambda arg: (names or {}).get(arg, arg)
    decay, eps, initial_scale = (
        v.real_array(name(arg), x)
        for arg, x in (("decay", decay), ("eps", eps), ("initial_scale", initial_scale))
    )
    learning_rate, momentum, weight_decay = (
        v.real_array(name(arg), x)
        for arg, x in (
            ("learning_rate", learning_rate),
            ("momentum", momentum),
            ("weight_decay", weight_decay),
        )
    )
    v.check_precise(name("decay"), decay)
    v.check_precise(name("momentum"), momentum)
    v.check_unit_interval(name("decay"), decay)
    v.check_nonnegative(name("eps"), eps)
    v.check_nonnegative(name("initial_scale"), initial_scale)
    flags = {
        "eps_in_sqrt": eps_in_sqrt,
        "bias_correction": bias_correction,
        "centered": centered,
        "split_complex": split_complex,
        "stochastic_rounding": stochastic_rounding,
        "factored": factored,
    }
    for arg, flag in flags.items():
        v.check_static_bool(name(arg), flag)
    v.check_bias_correction(bias_correction, initial_scale, name("initial_scale"))
    if factored and centered:
        raise ValueError(
            f"`{name('factored')}=True` cannot be combined with `{name('centered')}=True`: a "
            "factored second moment is a rank-one estimate that can fall below the "
            "squared mean, so the centered variance has no meaning there. Use one or "
            "the other."
        )
    # Only init needs it (update reads the factoring from the state), so a
    # traced value (inject_hyperparams under jit) passes here: see init.
    min_dim = v.static_int(
        name("min_dim_size_to_factor"), min_dim_size_to_factor, needed=False, minimum=1
    )
    v.check_seed(name("seed"), seed)
    if not scale_only:
        v.check_rate(name("learning_rate"), learning_rate)
        if weight_decay is not None:
            v.check_rate(name("weight_decay"), weight_decay)
        v.check_momentum(momentum, nesterov, name("momentum"))
        v.check_weight_decay_mode(weight_decay_mode)
        step_flags = {"nesterov": nesterov, "lr_in_momentum": lr_in_momentum, "maximize": maximize}
        for arg, flag in step_flags.items():
            v.check_static_bool(name(arg), flag)
        if weight_decay_mask is not None and not callable(weight_decay_mask):
            v.check_mask_leaves(weight_decay_mask)
    return Config(
        decay=decay,
        eps=eps,
        initial_scale=initial_scale,
        eps_in_sqrt=eps_in_sqrt,
        bias_correction=bias_correction,
        centered=centered,
        split_complex=split_complex,
        nu_dtype=v.check_state_dtype(name("nu_dtype"), nu_dtype),
        mu_dtype=v.check_state_dtype(name("mu_dtype"), mu_dtype),
        stochastic_rounding=stochastic_rounding,
        seed=seed,
        factored=factored,
        min_dim_size_to_factor=min_dim if factored else 128,
        scale_only=scale_only,
        learning_rate=None if scale_only else learning_rate,
        # Zero means off. A momentum that is None or a Python/NumPy number 0
        # makes no buffer; an array (as optax.inject_hyperparams passes, whose
        # value may change between steps) always gets one, so that an eager
        # init and a jitted update agree on the state's structure. A weight
        # decay that is None or concretely 0 is left out of the program.
        momentum=None if scale_only or v.is_python_zero(momentum) else momentum,
        nesterov=nesterov,
        lr_in_momentum=lr_in_momentum,
        weight_decay=None if scale_only or v.is_zero(weight_decay) else weight_decay,
        weight_decay_mode=weight_decay_mode,
        weight_decay_mask=weight_decay_mask,
        maximize=maximize,
    )
