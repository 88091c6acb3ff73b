"""``scale_by_rms``: the learning-rate-free RMS normalisation."""

from __future__ import annotations

import jax
import optax

from rmsprop_jax import _core
from rmsprop_jax._config import configure
from rmsprop_jax._quantized import Blockwise8bit


def scale_by_rms(
    decay: jax.typing.ArrayLike = 0.9,
    eps: jax.typing.ArrayLike = 1e-8,
    initial_scale: jax.typing.ArrayLike = 0.0,
    eps_in_sqrt: bool = True,
    bias_correction: bool = False,
    *,
    centered: bool = False,
    split_complex: bool = False,
    nu_dtype: jax.typing.DTypeLike | Blockwise8bit | None = None,
    mu_dtype: jax.typing.DTypeLike | Blockwise8bit | None = None,
    stochastic_rounding: bool = False,
    seed: int = 0,
    factored: bool = False,
    min_dim_size_to_factor: int = 128,
) -> optax.GradientTransformationExtraArgs:
    r"""Divides updates by the root of a moving average of their squares.

    The learning-rate-free core of RMSprop. With ``centered=False`` it matches
    :func:`optax.scale_by_rms`, with ``centered=True``
    :func:`optax.scale_by_stddev`. For step :math:`t = 1, 2, \dots`:

    .. math::

      \nu_t &= \rho\,\nu_{t-1} + (1 - \rho)\,|g_t|^2, \qquad \nu_0 = \text{initial_scale} \\
      \mu_t &= \rho\,\mu_{t-1} + (1 - \rho)\,g_t \quad \text{(centered only)} \\
      v_t &= \max(\hat\nu_t - |\hat\mu_t|^2, 0) \text{ if centered else } \hat\nu_t \\
      s_t &= g_t / \sqrt{v_t + \epsilon} \quad\text{or}\quad g_t / (\sqrt{v_t} + \epsilon)

    where :math:`\hat x = x / (1 - \rho^t)` with ``bias_correction`` and
    :math:`\hat x = x` without.

    Args:
      decay: :math:`\rho`, the decay of the moving averages, in [0, 1).
      eps: :math:`\epsilon` >= 0, added to the denominator.
      initial_scale: starting value of :math:`\nu` (TensorFlow 1 uses 1).
      eps_in_sqrt: add ``eps`` inside the square root (optax, Keras, TF) or
        outside it (PyTorch).
      bias_correction: divide the averages by :math:`1 - \rho^t` (needs
        ``initial_scale == 0``).
      centered: subtract the squared mean of the gradients (Graves 2013).
      split_complex: treat the real and imaginary parts of complex parameters
        as independent real parameters (PyTorch) instead of sharing one
        :math:`|g|^2` (optax).
      nu_dtype: storage dtype of :math:`\nu`; defaults to the parameter's
        real dtype promoted to at least float32. ``rmsprop_jax.blockwise_8bit()``
        stores it as 8-bit codes with a float32 scale per block (about one
        byte per parameter; see :func:`rmsprop_jax.blockwise_8bit`).
      mu_dtype: storage dtype of :math:`\mu`, same default and choices.
      stochastic_rounding: round state stored in a dtype narrower than the
        computation (e.g. ``nu_dtype=jnp.bfloat16``, or the 8-bit codes) up or
        down at random so that it is unbiased; round-to-nearest stalls slow
        averages. Has no effect on state kept at full precision.
      seed: seed of the stochastic rounding; with the step count and the leaf
        it fixes every random choice, so runs are reproducible.
      factored: for every leaf whose two largest dimensions are both at least
        ``min_dim_size_to_factor``, keep moving averages of :math:`|g|^2`
        over its rows and its columns instead of the full :math:`\nu`, and
        use their outer product divided by their mean (Adafactor). State
        memory for such a leaf is O(rows + cols); other leaves keep the full
        :math:`\nu`.
      min_dim_size_to_factor: the smallest size of both factored dimensions.

    Returns:
      An :class:`optax.GradientTransformationExtraArgs` whose state is a
      :class:`RMSpropState`.

    Example:
      >>> import jax.numpy as jnp
      >>> import rmsprop_jax
      >>> tx = rmsprop_jax.scale_by_rms(decay=0.9, eps=0.0)
      >>> state = tx.init({"w": jnp.zeros(2)})
      >>> s, state = tx.update({"w": jnp.array([2.0, -3.0])}, state)
      >>> s["w"]  # g / sqrt(0.1 * g^2) = sign(g) * sqrt(10)
      Array([ 3.1622777, -3.1622777], dtype=float32)

    References:
      Hinton, Srivastava and Swersky, `Neural Networks for Machine Learning,
      lecture 6e <https://www.cs.toronto.edu/~tijmen/csc321/slides/lecture_slides_lec6.pdf>`_, 2012.

      Graves, `Generating Sequences With Recurrent Neural Networks
      <https://arxiv.org/abs/1308.0850>`_, 2013.
    """
    return _core.build(
        configure(
            scale_only=True,
            decay=decay,
            eps=eps,
            initial_scale=initial_scale,
            eps_in_sqrt=eps_in_sqrt,
            bias_correction=bias_correction,
            centered=centered,
            split_complex=split_complex,
            nu_dtype=nu_dtype,
            mu_dtype=mu_dtype,
            stochastic_rounding=stochastic_rounding,
            seed=seed,
            factored=factored,
            min_dim_size_to_factor=min_dim_size_to_factor,
        )
    )
