"""Checks of hyperparameters, made once when a transform is built.

Only concrete values are checked: a tracer (under ``jax.jit``/``jax.vmap``, as
``optax.inject_hyperparams`` produces) cannot be read without breaking the
trace, so it passes unchecked. Every error is a ``ValueError`` whose message
names the argument in backticks, the allowed range and the value received,
as given (``None`` as ``None``).

Numbers must be real, finite scalars: a Python or NumPy number, or a 0-d
array. Bools and strings are refused even though NumPy would convert them.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

WEIGHT_DECAY_MODES = ("decoupled", "coupled")
STATE_DTYPES = ("float16", "bfloat16", "float32", "float64")
_SEED_LIMIT = 2**32


def is_traced(value: Any) -> bool:
    return isinstance(value, jax.core.Tracer)


def _show(value: Any) -> str:
    """The value as the user gave it: repr for Python objects, the number for 0-d arrays."""
    if isinstance(value, (jax.Array, np.ndarray)) and np.ndim(value) == 0:
        return repr(np.asarray(value).item())
    return repr(value)


def _number(name: str, value: Any, allowed: str) -> float | None:
    """A concrete real scalar as a float; None for a tracer; ValueError otherwise.

    ``allowed`` is the range, for the message (e.g. "in [0, 1)")."""
    dtype = getattr(value, "dtype", None)
    if dtype is not None and jnp.issubdtype(dtype, jnp.bool_):  # known for tracers too
        raise ValueError(
            f"`{name}` must be a number {allowed}, got a boolean array. "
            "(optax.inject_hyperparams stores hyperparameters in the parameters' dtype; "
            "for parameters with no floating leaf pass `hyperparam_dtype=jnp.float32` to it.)"
        )
    if is_traced(value):
        return None
    if value is None or isinstance(value, (bool, np.bool_, str, bytes)):
        raise ValueError(f"`{name}` must be a number {allowed}, got {_show(value)}.")
    try:
        array = np.asarray(value)
    except Exception:
        raise ValueError(f"`{name}` must be a number {allowed}, got {_show(value)}.") from None
    if jnp.issubdtype(array.dtype, jnp.complexfloating):
        raise ValueError(
            f"`{name}` must be a real number {allowed}, got the complex value {_show(value)}."
        )
    if not (jnp.issubdtype(array.dtype, jnp.floating) or jnp.issubdtype(array.dtype, jnp.integer)):
        raise ValueError(f"`{name}` must be a number {allowed}, got {_show(value)}.")
    if array.ndim != 0:
        raise ValueError(
            f"`{name}` must be a scalar {allowed}, got an array of shape {array.shape}: "
            f"{np.array2string(array, threshold=8)}."
        )
    return float(array.astype(np.float64))


def real_array(name: str, value: Any) -> Any:
    """A complex *array* hyperparameter as its real part.

    ``optax.inject_hyperparams`` stores hyperparameters in the parameters'
    highest dtype, so a model with complex leaves gets complex hyperparameters
    whose imaginary part is 0. A concrete one must have a zero imaginary part;
    a Python complex number is refused by the range checks."""
    dtype = getattr(value, "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.complexfloating):
        return value
    if not is_traced(value) and np.any(np.imag(np.asarray(value)) != 0):
        raise ValueError(f"`{name}` must be real, got the complex value {_show(value)}.")
    return jnp.real(value)


def check_precise(name: str, value: Any) -> None:
    """``decay`` and ``momentum`` arrays must be float32 or wider: what matters is
    1 - x, which bfloat16 and float16 cannot hold (0.999 is 1.0 in bfloat16),
    and an integer array holds only 0 (0.9 becomes 0)."""
    dtype = getattr(value, "dtype", None)
    if dtype is None or not isinstance(value, (jax.Array, np.ndarray)):
        return
    dtype = jnp.dtype(dtype)
    if dtype in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)) or jnp.issubdtype(
        dtype, jnp.integer
    ):
        raise ValueError(
            f"`{name}` is a {dtype.name} array, which cannot hold it precisely "
            "(1 - 0.999 is 0 in bfloat16; 0.9 is 0 as an integer). "
            "optax.inject_hyperparams stores hyperparameters in the parameters' dtype: "
            "pass `hyperparam_dtype=jnp.float32` to it."
        )


def check_nonnegative(name: str, value: Any) -> None:
    """A finite number >= 0."""
    x = _number(name, value, ">= 0")
    if x is not None and not (0 <= x < np.inf):
        raise ValueError(f"`{name}` must be a finite number >= 0, got {_show(value)}.")


def check_rate(name: str, value: Any) -> None:
    """A learning rate or weight decay: a callable schedule, or a finite number >= 0."""
    if callable(value):
        return
    allowed = ">= 0 or a schedule (a function of the step count)"
    x = _number(name, value, allowed)
    if x is not None and not (0 <= x < np.inf):
        raise ValueError(f"`{name}` must be finite and {allowed}, got {_show(value)}.")


def check_unit_interval(name: str, value: Any) -> None:
    """A number in [0, 1)."""
    x = _number(name, value, "in [0, 1)")
    if x is not None and not (0 <= x < 1):
        raise ValueError(f"`{name}` must be in [0, 1), got {_show(value)}.")


def is_zero(value: Any) -> bool:
    """True only when ``value`` is None, or concrete and exactly 0."""
    if value is None:
        return True
    if callable(value) or is_traced(value):
        return False
    return bool(np.all(np.asarray(value) == 0))


def is_python_zero(value: Any) -> bool:
    """None, or a Python/NumPy *number* equal to 0 (not an array: an array may be an
    injected hyperparameter whose value changes later)."""
    if value is None:
        return True
    return isinstance(value, (int, float, np.number)) and value == 0


def check_momentum(momentum: Any, nesterov: bool, name: str = "momentum") -> None:
    if momentum is not None:
        check_unit_interval(name, momentum)
    if nesterov and is_zero(momentum):
        raise ValueError(
            f"`nesterov=True` needs `{name}` > 0, got {name}={momentum!r}; "
            f"pass a {name} in (0, 1) or set `nesterov=False`."
        )


def check_bias_correction(bias_correction: bool, initial_scale: Any, name: str) -> None:
    if bias_correction and not is_traced(initial_scale) and not is_zero(initial_scale):
        raise ValueError(
            f"`bias_correction=True` needs `{name}` == 0 (the correction assumes the "
            f"average starts at zero), got {name}={_show(initial_scale)}."
        )


def check_weight_decay_mode(mode: Any) -> None:
    if mode not in WEIGHT_DECAY_MODES:
        raise ValueError(f"`weight_decay_mode` must be one of {WEIGHT_DECAY_MODES}, got {mode!r}.")


def check_state_dtype(name: str, dtype: Any) -> jnp.dtype | None:
    """One of float16, bfloat16, float32, float64 (as the dtype); None for None."""
    if dtype is None:
        return None
    if isinstance(dtype, (jax.Array, np.ndarray)):
        # optax.inject_hyperparams takes a dtype class for a schedule and passes
        # an array of that dtype: it is the dtype that was meant.
        dtype = dtype.dtype
    message = f"`{name}` must be one of {', '.join(STATE_DTYPES)} or None, got {dtype!r}."
    try:
        canonical = jnp.dtype(dtype)
    except TypeError:
        raise ValueError(message) from None
    if canonical.name not in STATE_DTYPES:
        raise ValueError(message)
    return canonical


def check_static_bool(name: str, value: Any) -> None:
    """Structural flags decide the program's shape, so they must be Python bools."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"`{name}` must be True or False, got {value!r}.")


def check_seed(name: str, seed: Any) -> None:
    """A 32-bit unsigned integer; a traced seed passes."""
    if is_traced(seed):
        return
    allowed = f"an integer in [0, 2**32) (a 32-bit unsigned seed), got {_show(seed)}"
    if isinstance(seed, (bool, np.bool_)):
        raise ValueError(f"`{name}` must be {allowed}.")
    array = np.asarray(seed) if isinstance(seed, (int, np.integer, jax.Array, np.ndarray)) else None
    if array is None or array.ndim != 0 or not jnp.issubdtype(array.dtype, jnp.integer):
        raise ValueError(f"`{name}` must be {allowed}.")
    if not 0 <= int(array) < _SEED_LIMIT:
        raise ValueError(f"`{name}` must be {allowed}.")


def static_int(name: str, value: Any, *, needed: bool, minimum: int) -> int | None:
    """An int argument that shapes the program (which leaves are factored).

    ``optax.inject_hyperparams`` turns int arguments into arrays, and under
    ``jax.jit`` into tracers. A concrete array is read; a tracer is accepted
    only where the value is not ``needed`` (returns None)."""
    if is_traced(value):
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


def check_mask_leaves(mask: Any) -> None:
    """Every leaf of a weight-decay mask is a bool or a boolean array."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(mask)[0]:
        dtype = getattr(leaf, "dtype", None)
        if isinstance(leaf, (bool, np.bool_)) or (
            dtype is not None and jnp.issubdtype(dtype, jnp.bool_)
        ):
            continue
        where = jax.tree_util.keystr(path) or "the root"
        raise ValueError(
            "`weight_decay_mask` leaves must be True, False or boolean arrays, "
            f"got {leaf!r} at {where}."
        )
