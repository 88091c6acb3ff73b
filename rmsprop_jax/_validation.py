"""Checks of hyperparameters, made once when a transform is built.

Only concrete values are checked: a tracer (under ``jax.jit``/``jax.vmap``, as
``optax.inject_hyperparams`` produces) cannot be read without breaking the
trace, so it passes here and meets the run-time rule of
:mod:`rmsprop_jax._numbers` instead. Every error is a ``ValueError`` whose
message names the argument in backticks, the allowed range and the value
received, as given (``None`` as ``None``).

Numbers must be real, finite scalars: a Python or NumPy number, or a 0-d
array. Integers act as the same float. Bools and strings are refused even
though NumPy would convert them.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

WEIGHT_DECAY_MODES = ("decoupled", "coupled")
_SEED_LIMIT = 2**32


def is_traced(value: Any) -> bool:
    """A value known only when the compiled step runs."""
    return isinstance(value, jax.core.Tracer)


def is_number(value: Any) -> bool:
    """A Python or NumPy real number (not a bool, not an array)."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_)
    )


def is_known(value: Any) -> bool:
    """A number whose value can be read when the transform is built: not a
    schedule, not a tracer, not ``None``."""
    return value is not None and not callable(value) and not is_traced(value)


def show(value: Any) -> str:
    """The value as the user gave it: repr for Python objects, the number for 0-d arrays."""
    if isinstance(value, (jax.Array, np.ndarray)) and np.ndim(value) == 0:
        return repr(np.asarray(value).item())
    return repr(value)


def as_float(name: str, value: Any) -> Any:
    """A number as the step uses it: an integer as the same float, a complex
    array as its real part. ``None`` and schedules are returned as they are.

    ``optax.inject_hyperparams`` turns a Python int into an int32 array and,
    for a model with complex leaves, stores every hyperparameter as a complex
    array whose imaginary part is 0; both mean the same real number. A
    concrete non-zero imaginary part is refused here; a traced one meets the
    run-time rule."""
    if value is None or callable(value) or is_number(value):
        return value
    dtype = getattr(value, "dtype", None)
    if dtype is None:
        return value  # refused by the range checks, which name it
    if jnp.issubdtype(dtype, jnp.complexfloating):
        if not is_traced(value) and np.any(np.imag(np.asarray(value)) != 0):
            raise ValueError(f"`{name}` must be real, got the complex value {show(value)}.")
        return jnp.real(value)
    if jnp.issubdtype(dtype, jnp.integer):
        return jnp.asarray(value, dtype=float)
    return value


def check_precise(name: str, value: Any) -> None:
    """``decay`` and ``momentum`` arrays must be float32 or wider: what matters is
    1 - x, which bfloat16 and float16 cannot hold (0.999 is 1.0 in bfloat16)."""
    dtype = getattr(value, "dtype", None)
    if dtype is None or not isinstance(value, (jax.Array, np.ndarray)):
        return
    if jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        raise ValueError(
            f"`{name}` is a {jnp.dtype(dtype).name} array, which cannot hold it precisely "
            "(1 - 0.999 is 0 in bfloat16). optax.inject_hyperparams stores float "
            "hyperparameters in the parameters' dtype: pass `hyperparam_dtype=jnp.float32` "
            "to it."
        )


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
        raise ValueError(f"`{name}` must be a number {allowed}, got {show(value)}.")
    try:
        array = np.asarray(value)
    except Exception:
        raise ValueError(f"`{name}` must be a number {allowed}, got {show(value)}.") from None
    if jnp.issubdtype(array.dtype, jnp.complexfloating):
        raise ValueError(
            f"`{name}` must be a real number {allowed}, got the complex value {show(value)}."
        )
    if not (jnp.issubdtype(array.dtype, jnp.floating) or jnp.issubdtype(array.dtype, jnp.integer)):
        raise ValueError(f"`{name}` must be a number {allowed}, got {show(value)}.")
    if array.ndim != 0:
        raise ValueError(
            f"`{name}` must be a scalar {allowed}, got an array of shape {array.shape}: "
            f"{np.array2string(array, threshold=8)}."
        )
    return float(array.astype(np.float64))


def check_nonnegative(name: str, value: Any) -> None:
    """A finite number >= 0."""
    x = _number(name, value, ">= 0")
    if x is not None and not (0 <= x < np.inf):
        raise ValueError(f"`{name}` must be a finite number >= 0, got {show(value)}.")


def check_rate(name: str, value: Any) -> None:
    """A learning rate or weight decay: a callable schedule, or a finite number >= 0."""
    if callable(value):
        return
    allowed = ">= 0 or a schedule (a function of the step count)"
    x = _number(name, value, allowed)
    if x is not None and not (0 <= x < np.inf):
        raise ValueError(f"`{name}` must be finite and {allowed}, got {show(value)}.")


def check_unit_interval(name: str, value: Any) -> None:
    """A number in [0, 1)."""
    x = _number(name, value, "in [0, 1)")
    if x is not None and not (0 <= x < 1):
        raise ValueError(f"`{name}` must be in [0, 1), got {show(value)}.")


def is_zero(value: Any) -> bool:
    """True only when ``value`` is None, or known and exactly 0."""
    if value is None:
        return True
    if not is_known(value):
        return False
    return bool(np.all(np.asarray(value) == 0))


def check_momentum(momentum: Any, nesterov: bool, name: str = "momentum") -> None:
    if momentum is not None:
        check_unit_interval(name, momentum)
    if nesterov and is_zero(momentum):
        raise ValueError(
            f"`nesterov=True` needs `{name}` > 0, got {name}={show(momentum)}; "
            f"pass a {name} in (0, 1) or set `nesterov=False`."
        )


def check_bias_correction(bias_correction: bool, initial_scale: Any, name: str) -> None:
    if bias_correction and not is_zero(initial_scale) and is_known(initial_scale):
        raise ValueError(
            f"`bias_correction=True` needs `{name}` == 0 (the correction assumes the "
            f"average starts at zero), got {name}={show(initial_scale)}."
        )


def check_weight_decay_mode(mode: Any) -> None:
    if mode not in WEIGHT_DECAY_MODES:
        raise ValueError(f"`weight_decay_mode` must be one of {WEIGHT_DECAY_MODES}, got {mode!r}.")


def check_static_bool(name: str, value: Any) -> None:
    """Structural flags decide the program's shape, so they must be Python bools."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"`{name}` must be True or False, got {value!r}.")


def check_seed(name: str, seed: Any) -> None:
    """A 32-bit unsigned integer; a traced seed passes."""
    if is_traced(seed):
        return
    allowed = f"an integer in [0, 2**32) (a 32-bit unsigned seed), got {show(seed)}"
    if isinstance(seed, (bool, np.bool_)):
        raise ValueError(f"`{name}` must be {allowed}.")
    array = np.asarray(seed) if isinstance(seed, (int, np.integer, jax.Array, np.ndarray)) else None
    if array is None or array.ndim != 0 or not jnp.issubdtype(array.dtype, jnp.integer):
        raise ValueError(f"`{name}` must be {allowed}.")
    if not 0 <= int(array) < _SEED_LIMIT:
        raise ValueError(f"`{name}` must be {allowed}.")


def static_int(name: str, value: Any, *, minimum: int) -> int | None:
    """An int argument that shapes the state (which leaves are factored).

    ``optax.inject_hyperparams`` turns int arguments into arrays, and under
    ``jax.jit`` into tracers. A concrete array is read; a tracer gives None
    (``init`` then asks for a static value; ``update`` does not need one)."""
    if is_traced(value):
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


def is_bool_leaf(leaf: Any) -> bool:
    """A bool, a NumPy bool or a boolean array (a mask's leaf)."""
    dtype = getattr(leaf, "dtype", None)
    return isinstance(leaf, (bool, np.bool_)) or (
        dtype is not None and jnp.issubdtype(dtype, jnp.bool_)
    )


def check_mask_leaves(mask: Any) -> None:
    """Every leaf of a weight-decay mask is a bool or a boolean array."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(mask)[0]:
        if not is_bool_leaf(leaf):
            where = jax.tree_util.keystr(path) or "the root"
            raise ValueError(
                "`weight_decay_mask` leaves must be True, False or boolean arrays, "
                f"got {leaf!r} at {where}."
            )
