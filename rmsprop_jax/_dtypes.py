"""The dtype policy: which dtypes the state is stored in and the step computed in.

- State defaults to the parameter's real dtype promoted to at least float32:
  bfloat16 and float16 parameters get float32 state, float64 stays float64,
  complex64 parameters get a real float32 second moment and complex64 means.
- The step is computed in the widest of the gradient's and the stored state's
  real dtypes, and at least float32; complex gradients in the matching complex
  dtype.
- Updates come out in the gradient's dtype.

Every dtype decision is written out rather than left to type promotion, so it
holds under ``jax_numpy_dtype_promotion="strict"`` too.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rmsprop_jax import _quantized

Array = jax.Array


def real_dtype(dtype: jnp.dtype) -> jnp.dtype:
    """float32 for complex64, float64 for complex128, the dtype itself otherwise."""
    return jnp.finfo(dtype).dtype if jnp.issubdtype(dtype, jnp.complexfloating) else dtype


def widest(*dtypes: jnp.dtype) -> jnp.dtype:
    """The widest of some real floating dtypes, and at least float32."""
    result = jnp.dtype(jnp.float32)
    for dtype in dtypes:
        if jnp.finfo(dtype).bits > result.itemsize * 8:
            result = jnp.dtype(dtype)
    return result


def state_dtype(param_dtype: Any) -> jnp.dtype:
    """The default storage dtype of a parameter's state: its real dtype, at least float32."""
    real = real_dtype(jnp.dtype(param_dtype))
    if not jnp.issubdtype(real, jnp.floating):
        return jnp.dtype(jnp.float32)
    return widest(real)


def complex_of(dtype: jnp.dtype) -> jnp.dtype:
    """The complex dtype whose parts are ``dtype`` (complex128 for float64)."""
    return jnp.dtype(jnp.complex128 if jnp.finfo(dtype).bits > 32 else jnp.complex64)


def split_complex(x: Array) -> Array:
    """A complex parameter's array (its gradient, the parameter itself, its
    weight-decay mask) as a real one with a trailing axis: the real and
    imaginary parts side by side. A real array (a mask) applies to both parts."""
    if jnp.iscomplexobj(x):
        return jnp.stack([jnp.real(x), jnp.imag(x)], axis=-1)
    return jnp.stack([x, x], axis=-1)


def merge_complex(x: Array, dtype: jnp.dtype) -> Array:
    """The inverse of :func:`split_complex`."""
    return jax.lax.complex(x[..., 0], x[..., 1]).astype(dtype)


def compute_dtypes(g_dtype: Any, stored: list[Any]) -> tuple[jnp.dtype, jnp.dtype]:
    """(real, work): the real dtype the step is computed in, and the gradient's
    working dtype (its complex counterpart for complex gradients)."""
    g_dtype = jnp.dtype(g_dtype)
    real = widest(
        state_dtype(g_dtype),
        *(real_dtype(s.dtype) for s in stored if s is not None),
    )
    return real, complex_of(real) if jnp.issubdtype(g_dtype, jnp.complexfloating) else real


STATE_DTYPES = ("float16", "bfloat16", "float32", "float64")


def check_state_dtype(name: str, dtype: Any) -> Any:
    """One of float16, bfloat16, float32, float64 (as the dtype), the 8-bit
    format as given, or None for None."""
    if dtype is None or isinstance(dtype, _quantized.Blockwise8bit):
        return dtype
    if isinstance(dtype, (jax.Array, np.ndarray)):
        # optax.inject_hyperparams takes a dtype class for a schedule and passes
        # an array of that dtype: it is the dtype that was meant.
        dtype = dtype.dtype
    message = (
        f"`{name}` must be one of {', '.join(STATE_DTYPES)}, "
        f"`rmsprop_jax.blockwise_8bit(...)` or None, got {dtype!r}."
    )
    try:
        canonical = jnp.dtype(dtype)
    except TypeError:
        raise ValueError(message) from None
    if canonical.name not in STATE_DTYPES:
        raise ValueError(message)
    return canonical
