"""``rmsprop``: the optimizer, a configuration of the one core transform."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import optax

from rmsprop_jax import _core
from rmsprop_jax._config import configure
from rmsprop_jax._quantized import Blockwise8bit


def rmsprop(
    learning_rate: optax.ScalarOrSchedule,
    decay: jax.typing.ArrayLike = 0.9,
    eps: jax.typing.ArrayLike = 1e-8,
    initial_scale: jax.typing.ArrayLike = 0.0,
    eps_in_sqrt: bool = True,
    centered: bool = False,
    momentum: jax.typing.ArrayLike | None = None,
    nesterov: bool = False,
    bias_correction: bool = False,
    *,
    lr_in_momentum: bool = True,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    weight_decay_mode: str = "decoupled",
    weight_decay_mask: Any | Callable[[optax.Params], Any] | None = None,
    maximize: bool = False,
    split_complex: bool = False,
    nu_dtype: jax.typing.DTypeLike | Blockwise8bit | None = None,
    mu_dtype: jax.typing.DTypeLike | Blockwise8bit | None = None,
    stochastic_rounding: bool = False,
    seed: int = 0,
    factored: bool = False,
    min_dim_size_to_factor: int = 128,
) -> optax.GradientTransformationExtraArgs:
    r"""The RMSprop optimizer, a drop-in for :func:`optax.rmsprop` with more options.

    For step :math:`t = 1, 2, \dots`, with :math:`\eta` = ``learning_rate``
    and :math:`\lambda` = ``weight_decay`` evaluated at :math:`t - 1`, and
    :math:`s_t` the output of :func:`scale_by_rms` (which also describes
    ``decay``, ``eps``, ``initial_scale``, ``eps_in_sqrt``, ``centered``,
    ``bias_correction`` and the dtypes):

    .. math::

      g_t &\leftarrow -g_t \quad \text{if maximize} \\
      g_t &\leftarrow g_t + \lambda\,p_{t-1} \quad \text{if weight_decay_mode = "coupled"} \\
      b_t &= m\,b_{t-1} + \eta\,s_t, \quad \text{step} = b_t
        \text{ or } \eta\,s_t + m\,b_t \text{ (nesterov)} \quad \text{(lr_in_momentum)} \\
      b_t &= m\,b_{t-1} + s_t, \quad \text{step} = \eta\,b_t
        \text{ or } \eta\,(s_t + m\,b_t) \text{ (nesterov)} \quad \text{(not lr_in_momentum)} \\
      u_t &= -\text{step} - \eta\,\lambda\,p_{t-1} \quad \text{(the last term if "decoupled")}

    Without momentum, step :math:`= \eta\,s_t`. Apply :math:`u_t` with
    :func:`optax.apply_updates`.

    Args:
      learning_rate: :math:`\eta` >= 0, or a schedule of the step count.
      decay: decay of the moving averages, in [0, 1).
      eps: added to the denominator, >= 0.
      initial_scale: starting value of the second moment, >= 0.
      eps_in_sqrt: ``eps`` inside the square root (True) or outside (False).
      centered: divide by the centered second moment (the variance).
      momentum: :math:`m` in [0, 1), or None (no momentum buffer; 0 is the
        same).
      nesterov: use Nesterov momentum (needs ``momentum`` > 0).
      bias_correction: correct the averages by :math:`1 - \rho^t`.
      lr_in_momentum: whether the learning rate enters the momentum buffer
        (optax, Keras, TF) or multiplies it afterwards (PyTorch). The two
        agree for a constant learning rate and differ under a schedule.
      weight_decay: :math:`\lambda` >= 0, or a schedule.
      weight_decay_mode: ``"decoupled"`` (AdamW-style, applied outside the
        momentum buffer, scaled by the learning rate) or ``"coupled"`` (added
        to the gradient, as PyTorch's ``weight_decay``).
      weight_decay_mask: a tree of booleans shaped like the parameters, or a
        function of the parameters returning one; False leaves get no decay.
      maximize: ascend instead of descend.
      split_complex: see :func:`scale_by_rms`.
      nu_dtype: storage dtype of the second moment, or
        :func:`rmsprop_jax.blockwise_8bit` for one byte per parameter.
      mu_dtype: storage dtype (or :func:`rmsprop_jax.blockwise_8bit`) of the
        mean and the momentum buffer.
      stochastic_rounding: round narrow-dtype state stochastically (see
        :func:`scale_by_rms`).
      seed: seed of the stochastic rounding.
      factored: factor the second moment of large matrices (see
        :func:`scale_by_rms`).
      min_dim_size_to_factor: the smallest size of both factored dimensions.

    Returns:
      An :class:`optax.GradientTransformationExtraArgs` whose state is a
      :class:`RMSpropState` with fields ``count``, ``nu``, ``mu`` (None unless
      centered) and ``trace`` (None without momentum).

    Example:
      >>> import jax.numpy as jnp
      >>> import optax
      >>> import rmsprop_jax
      >>> params = {"w": jnp.array([1.0, -2.0])}
      >>> opt = rmsprop_jax.rmsprop(learning_rate=0.1, momentum=0.9)
      >>> state = opt.init(params)
      >>> grads = {"w": jnp.array([0.5, -0.5])}
      >>> updates, state = opt.update(grads, state, params)
      >>> optax.apply_updates(params, updates)["w"]  # each moves by 0.1 * sqrt(10)
      Array([ 0.6837723, -1.6837723], dtype=float32)

    .. warning::
      Frameworks differ in the details. PyTorch puts ``eps`` outside the
      square root, keeps the learning rate out of the momentum buffer and
      couples weight decay (its second moment starts at zero, as here);
      TensorFlow 1 and timm's ``RMSpropTF`` start the second moment at one. Use
      :mod:`rmsprop_jax.presets` to reproduce them exactly.

    References:
      Hinton, Srivastava and Swersky, `Neural Networks for Machine Learning,
      lecture 6e <https://www.cs.toronto.edu/~tijmen/csc321/slides/lecture_slides_lec6.pdf>`_, 2012.

      Graves, `Generating Sequences With Recurrent Neural Networks
      <https://arxiv.org/abs/1308.0850>`_, 2013.

      Loshchilov and Hutter, `Decoupled Weight Decay Regularization
      <https://arxiv.org/abs/1711.05101>`_, 2019.
    """
    return _core.build(
        configure(
            learning_rate=learning_rate,
            decay=decay,
            eps=eps,
            initial_scale=initial_scale,
            eps_in_sqrt=eps_in_sqrt,
            centered=centered,
            momentum=momentum,
            nesterov=nesterov,
            bias_correction=bias_correction,
            lr_in_momentum=lr_in_momentum,
            weight_decay=weight_decay,
            weight_decay_mode=weight_decay_mode,
            weight_decay_mask=weight_decay_mask,
            maximize=maximize,
            split_complex=split_complex,
            nu_dtype=nu_dtype,
            mu_dtype=mu_dtype,
            stochastic_rounding=stochastic_rounding,
            seed=seed,
            factored=factored,
            min_dim_size_to_factor=min_dim_size_to_factor,
        )
    )
