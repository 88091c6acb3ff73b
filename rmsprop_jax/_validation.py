"""Checks of hyperparameters, made once when a transform is built.

Only concrete values are checked: a tracer (under ``jax.jit``/``jax.vmap``, as
``optax.inject_hyperparams`` produces) cannot be read without breaking the
trace, so it passes unchecked. Every error is a ``ValueError`` whose message
names the argument in backticks, the allowed range and the value received.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

WEIGHT_DECAY_MODES = ("decoupled", "coupled")


def _concrete(name: str, value: Any) -> np.ndarray | None:
    """Returns ``value`` as a float64 NumPy array, or None for a tracer."""
    if isinstance(value, jax.core.Tracer):
        return None
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"`{name}` must be a number, got the boolean {value!r}.")
    if isinstance(value, (str, bytes)):
        raise ValueError(f"`{name}` must be a number or an array of numbers, got {value!r}.")
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(
            f"`{name}` must be a number or an array of numbers, got {value!r}."
        ) from None


def _show(values: np.ndarray) -> str:
    return repr(values.item()) if values.size == 1 else np.array2string(values)


def check_nonnegative(name: str, value: Any) -> None:
    """Raises if a concrete ``value`` has an element < 0 or NaN."""
    values = _concrete(name, value)
    if values is not None and not np.all(values >= 0):
        raise ValueError(f"`{name}` must be >= 0, got {_show(values)}.")


def check_rate(name: str, value: Any) -> None:
    """A learning rate or weight decay: a callable schedule, or a number >= 0."""
    if callable(value):
        return
    values = _concrete(name, value)
    if values is not None and not np.all(values >= 0):
        raise ValueError(
            f"`{name}` must be >= 0 or a schedule (a callable of the step count), "
            f"got {_show(values)}."
        )


def check_unit_interval(name: str, value: Any) -> None:
    """Raises unless a concrete ``value`` lies in [0, 1)."""
    values = _concrete(name, value)
    if values is not None and not np.all((values >= 0) & (values < 1)):
        raise ValueError(f"`{name}` must be in [0, 1), got {_show(values)}.")


def is_zero(value: Any) -> bool:
    """True only when ``value`` is concrete and every element is exactly 0."""
    if value is None:
        return True
    if callable(value) or isinstance(value, jax.core.Tracer):
        return False
    return bool(np.all(np.asarray(value) == 0))


def check_momentum(momentum: Any, nesterov: bool, name: str = "momentum") -> None:
    if momentum is not None:
        check_unit_interval(name, momentum)
    if nesterov and is_zero(momentum):
        raise ValueError(
            f"`nesterov=True` needs `{name}` > 0, got {name}={momentum!r}; "
            f"pass a {name} in (0, 1) or set `nesterov=False`."
        )


def check_bias_correction(bias_correction: bool, initial_scale: Any) -> None:
    if bias_correction and not is_zero(initial_scale):
        raise ValueError(
            "`bias_correction=True` needs `initial_scale` == 0 (the correction "
            f"assumes the average starts at zero), got initial_scale={initial_scale!r}."
        )


def check_weight_decay_mode(mode: Any) -> None:
    if mode not in WEIGHT_DECAY_MODES:
        raise ValueError(f"`weight_decay_mode` must be one of {WEIGHT_DECAY_MODES}, got {mode!r}.")


def check_float_dtype(name: str, dtype: Any) -> jnp.dtype | None:
    """Returns the canonical dtype, None for None; raises for non-float dtypes."""
    if dtype is None:
        return None
    try:
        canonical = jnp.dtype(dtype)
    except TypeError:
        raise ValueError(
            f"`{name}` must be a real floating dtype such as jnp.float32 or "
            f"jnp.bfloat16, or None, got {dtype!r}."
        ) from None
    if not jnp.issubdtype(canonical, jnp.floating):
        raise ValueError(
            f"`{name}` must be a real floating dtype such as jnp.float32 or "
            f"jnp.bfloat16, or None, got {canonical}."
        )
    return canonical


def check_static_bool(name: str, value: Any) -> None:
    """Structural flags decide the program's shape, so they must be Python bools."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"`{name}` must be True or False, got {value!r}.")


def static_int(name: str, value: Any, *, needed: bool, minimum: int) -> int | None:
    """An int argument that shapes the program (e.g. which leaves are factored).

    ``optax.inject_hyperparams`` turns int arguments into arrays, and under
    ``jax.jit`` into tracers. A concrete array is read; a tracer is accepted
    only where the value is not ``needed`` (returns None).
    """
    if isinstance(value, jax.core.Tracer):
        if needed:
            raise ValueError(
                f"`{name}` must be a concrete Python int, got a traced value; with "
                f"`optax.inject_hyperparams`, pass `static_args=({name!r},)`."
            )
        return None
    if isinstance(value, (bool, np.bool_)) or not (
        isinstance(value, (int, np.integer))
        or (
            isinstance(value, (jax.Array, np.ndarray))
            and np.ndim(value) == 0
            and np.issubdtype(np.asarray(value).dtype, np.integer)
        )
    ):
        raise ValueError(f"`{name}` must be an int >= {minimum}, got {value!r}.")
    if int(value) < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}, got {int(value)!r}.")
    return int(value)
