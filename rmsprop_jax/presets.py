r"""Other frameworks' and papers' RMSprop, reproduced exactly.

Each function takes the original's argument names and defaults, so a
configuration copies across unchanged, and returns a configuration of the same
core transform as :func:`rmsprop_jax.rmsprop` (see the table below). Learning
rates and weight decays also accept ``optax`` schedules, evaluated at the step
count before it is incremented.

===================  =====  ====  ===========  ============  =========================
preset               eps    nu_0  lr in mom.   weight decay  other
===================  =====  ====  ===========  ============  =========================
``pytorch``          out    0     no           coupled       complex split, maximize
``keras``            in     0     yes          decoupled     clipnorm/clipvalue/global
``tensorflow_v1``    in     1     yes          --
``timm_tf``          in     1     option       both          TF-style EMA
``sonnet``           in     0     yes          --
``lasagne``          in     0     --           --
``hinton_2012``      none   0     --           --
``graves_2013``      in     0     yes          --            centered
``dqn_nature_2015``  in     0     --           --            centered
===================  =====  ====  ===========  ============  =========================

Every preset also takes, keyword-only, the storage arguments of
:func:`rmsprop_jax.rmsprop`: ``nu_dtype``, ``mu_dtype`` (a dtype or
:func:`rmsprop_jax.blockwise_8bit`), ``stochastic_rounding`` and ``seed``. They
say how the state is kept, which no original decides; the defaults keep it as
the original does.

Two deliberate differences from every original: a centered variance that
rounds below zero is clamped to zero (the originals return NaN there), and a
zero denominator (``eps=0``, zero history) gives a zero step instead of 0/0.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rmsprop_jax import _config, _core, _step, _trees
from rmsprop_jax import _validation as v
from rmsprop_jax._config import configure
from rmsprop_jax._quantized import Blockwise8bit

__all__ = [
    "dqn_nature_2015",
    "graves_2013",
    "hinton_2012",
    "keras",
    "lasagne",
    "pytorch",
    "sonnet",
    "tensorflow_v1",
    "timm_tf",
]


# A Python number as TensorFlow uses it: ``convert_to_tensor``/``tf.cast`` make
# a float32 tensor first, so even float64 variables see the float32 rounding of
# e.g. 0.01. Arrays and schedules are used as they are. configure() rounds before
# it checks, so a decay that rounds to 1 is refused, saying so.
_TENSORFLOW: dict[str, Any] = dict(
    rounding=lambda x: float(np.float32(x)),
    rounding_note="in float32, which TensorFlow computes its hyperparameters in",
)


def _storage(nu_dtype: Any, mu_dtype: Any, stochastic_rounding: bool, seed: Any) -> dict:
    """The storage arguments every preset takes (keyword-only, after the
    original's own): how the state is kept, which no original decides."""
    return dict(
        nu_dtype=nu_dtype, mu_dtype=mu_dtype, stochastic_rounding=stochastic_rounding, seed=seed
    )


def pytorch(
    lr: optax.ScalarOrSchedule = 1e-2,
    alpha: jax.typing.ArrayLike = 0.99,
    eps: jax.typing.ArrayLike = 1e-8,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    momentum: jax.typing.ArrayLike = 0.0,
    centered: bool = False,
    maximize: bool = False,
    *,
    nu_dtype: jax.typing.DTypeLike | Blockwise8bit | None = None,
    mu_dtype: jax.typing.DTypeLike | Blockwise8bit | None = None,
    stochastic_rounding: bool = False,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
    r"""``torch.optim.RMSprop``.

    .. math::

      g &\leftarrow -g \text{ if maximize}; \quad g \leftarrow g + \lambda p \\
      v &\leftarrow \alpha v + (1-\alpha) g^2, \quad v_0 = 0; \qquad
      m \leftarrow \alpha m + (1-\alpha) g \text{ (centered)} \\
      d &= \sqrt{v - m^2} + \epsilon \text{ (centered) or } \sqrt{v} + \epsilon \\
      b &\leftarrow \mu b + g/d; \quad p \leftarrow p - \eta b
        \quad (\text{no momentum: } p \leftarrow p - \eta g/d)

    Differs from :func:`rmsprop_jax.rmsprop`'s defaults: ``eps`` outside the
    root, decay 0.99, the learning rate applied after the momentum buffer
    (``lr_in_momentum=False``, visible under a schedule), coupled weight decay,
    and complex parameters treated as independent real and imaginary parts
    (``split_complex=True``).

    Example:
      >>> import jax.numpy as jnp
      >>> from rmsprop_jax import presets
      >>> opt = presets.pytorch(lr=0.01, alpha=0.99, momentum=0.9)
      >>> state = opt.init({"w": jnp.zeros(3)})
    """
    return _core.build(
        configure(
            **_storage(nu_dtype, mu_dtype, stochastic_rounding, seed),
            learning_rate=lr,
            decay=alpha,
            eps=eps,
            eps_in_sqrt=False,
            centered=centered,
            momentum=momentum,
            lr_in_momentum=False,
            weight_decay=weight_decay,
            weight_decay_mode="coupled",
            maximize=maximize,
            split_complex=True,
            names={"learning_rate": "lr", "decay": "alpha"},
        )
    )


def _clip_to_norm(groups: Any, max_norm: Any) -> optax.GradientTransformation:
    """Keras' ``clipnorm`` (``groups`` maps each array to itself) and
    ``global_clipnorm`` (the whole tree is one group): each group scaled to an
    L2 norm <= max_norm. Leaves that are not trained (integers, booleans) pass
    through. The norm's derivative at 0 is taken as 0 (a group of zero
    gradients), so that meta-gradients through the clipping stay finite."""

    def clip(tree: Any) -> Any:
        trained = [g for g in jax.tree.leaves(tree) if _trees.is_trained(jnp.result_type(g))]
        if not trained:
            return tree
        squares = functools.reduce(
            jnp.add, [jnp.sum(_step.abs_sq(jnp.asarray(g))) for g in trained]
        )
        norm = _step.safe_sqrt(squares)
        limit = jnp.asarray(max_norm, norm.dtype)
        over = norm > limit
        scale = jnp.where(over, limit / jnp.where(over, norm, 1), 1)
        return jax.tree.map(
            lambda g: g * scale.astype(g.dtype) if _trees.is_trained(jnp.result_type(g)) else g,
            tree,
        )

    def update_fn(updates: optax.Updates, state: Any, params: Any = None) -> tuple:
        del params
        return groups(clip, updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def keras(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    rho: jax.typing.ArrayLike = 0.9,
    momentum: jax.typing.ArrayLike = 0.0,
    epsilon: jax.typing.ArrayLike = 1e-7,
    centered: bool = False,
    weight_decay: optax.ScalarOrSchedule | None = None,
    clipnorm: float | None = None,
    clipvalue: float | None = None,
    global_clipnorm: float | None = None,
    *,
    nu_dtype: jax.typing.DTypeLike | Blockwise8bit | None = None,
    mu_dtype: jax.typing.DTypeLike | Blockwise8bit | None = None,
    stochastic_rounding: bool = False,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
    r"""``keras.optimizers.RMSprop`` (Keras 3).

    .. math::

      g &\leftarrow \text{clip}(g) \quad \text{(at most one of clipnorm,
        global_clipnorm, clipvalue)} \\
      p &\leftarrow p - \eta \lambda p \quad \text{(weight decay, before the step)} \\
      v &\leftarrow \rho v + (1-\rho) g^2; \quad
      m \leftarrow \rho m + (1-\rho) g \text{ (centered)} \\
      \Delta &= \eta g / \sqrt{v [- m^2] + \epsilon}; \quad
      b \leftarrow \mu b + \Delta; \quad p \leftarrow p - b
        \quad (\text{no momentum: } p \leftarrow p - \Delta)

    ``clipnorm`` clips each gradient array to that L2 norm, ``global_clipnorm``
    the whole tree, ``clipvalue`` each element. Differs from
    :func:`rmsprop_jax.rmsprop`'s defaults in ``epsilon`` (1e-7) and in the
    clipping; Keras' weight decay is this library's decoupled mode.
    Keras has no Nesterov option.

    Example:
      >>> from rmsprop_jax import presets
      >>> opt = presets.keras(learning_rate=1e-3, rho=0.9, global_clipnorm=1.0)
    """
    clips = {"clipnorm": clipnorm, "clipvalue": clipvalue, "global_clipnorm": global_clipnorm}
    clips = {name: v.as_float(name, value) for name, value in clips.items()}
    given = [name for name, value in clips.items() if value is not None]
    if len(given) > 1:
        raise ValueError(
            "Only one of `clipnorm`, `clipvalue` and `global_clipnorm` can be set, "
            f"got {', '.join(f'{n}={clips[n]!r}' for n in given)}."
        )
    for name in given:
        v.check_nonnegative(name, clips[name])
    core = _core.build(
        configure(
            **_storage(nu_dtype, mu_dtype, stochastic_rounding, seed),
            learning_rate=learning_rate,
            decay=rho,
            eps=epsilon,
            centered=centered,
            momentum=momentum,
            weight_decay=0.0 if weight_decay is None else weight_decay,
            weight_decay_mode="decoupled",
            names={"decay": "rho", "eps": "epsilon"},
        )
    )
    # As in Keras, a clip value of 0 means no clipping. An array (a value that
    # optax.inject_hyperparams may change between steps) keeps the clipping in
    # the program, with 0 (or, known only at run time, less) turned into no
    # limit when the step runs.
    if not given or v.is_zero(clips[given[0]]):
        return core
    limit = clips[given[0]]
    if isinstance(limit, (jax.Array, np.ndarray)):
        limit = jnp.where(limit > 0, limit, jnp.inf)
    if given[0] == "clipvalue":
        clip = optax.clip(limit)
    else:
        per_array = given[0] == "clipnorm"
        clip = _clip_to_norm(jax.tree.map if per_array else lambda f, tree: f(tree), limit)
    cfg = _config.config_of(core)
    assert cfg is not None
    return _config.register(optax.chain(clip, core), cfg)


def tensorflow_v1(
    learning_rate: optax.ScalarOrSchedule,
    decay: jax.typing.ArrayLike = 0.9,
    momentum: jax.typing.ArrayLike = 0.0,
    epsilon: jax.typing.ArrayLike = 1e-10,
    centered: bool = False,
    *,
    nu_dtype: jax.typing.DTypeLike | Blockwise8bit | None = None,
    mu_dtype: jax.typing.DTypeLike | Blockwise8bit | None = None,
    stochastic_rounding: bool = False,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
    r"""``tf.compat.v1.train.RMSPropOptimizer``.

    .. math::

      ms &\leftarrow ms + (g^2 - ms)(1-\rho), \quad ms_0 = 1; \qquad
      mg \leftarrow mg + (g - mg)(1-\rho) \text{ (centered)} \\
      mom &\leftarrow \mu\, mom + \eta g / \sqrt{ms [- mg^2] + \epsilon}; \quad
      p \leftarrow p - mom

    Differs from :func:`rmsprop_jax.rmsprop`'s defaults: the mean square starts
    at **one** (``initial_scale=1``), so the first steps are much smaller than
    optax's, and ``epsilon`` is 1e-10. The EMA is written in TensorFlow's form;
    it equals ``rho*ms + (1-rho)*g^2`` up to rounding. As in TensorFlow, Python
    numbers given as hyperparameters are rounded to float32 first (TF makes a
    float32 tensor of them before casting), which matters for float64
    parameters; arrays and schedules are used as they are.

    Example:
      >>> from rmsprop_jax import presets
      >>> opt = presets.tensorflow_v1(0.001, decay=0.9, momentum=0.9)
    """
    return _core.build(
        configure(
            **_storage(nu_dtype, mu_dtype, stochastic_rounding, seed),
            learning_rate=learning_rate,
            decay=decay,
            eps=epsilon,
            initial_scale=1.0,
            centered=centered,
            momentum=momentum,
            names={"eps": "epsilon"},
            **_TENSORFLOW,
        )
    )


def timm_tf(
    lr: optax.ScalarOrSchedule = 1e-2,
    alpha: jax.typing.ArrayLike = 0.9,
    eps: jax.typing.ArrayLike = 1e-10,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    momentum: jax.typing.ArrayLike = 0.0,
    centered: bool = False,
    decoupled_decay: bool = False,
    lr_in_momentum: bool = True,
    *,
    nu_dtype: jax.typing.DTypeLike | Blockwise8bit | None = None,
    mu_dtype: jax.typing.DTypeLike | Blockwise8bit | None = None,
    stochastic_rounding: bool = False,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
    r"""timm's ``RMSpropTF`` (PyTorch Image Models, used for EfficientNet).

    .. math::

      p &\leftarrow p(1 - \eta\lambda) \text{ if decoupled_decay, else }
        g \leftarrow g + \lambda p \\
      v &\leftarrow v + (g^2 - v)(1-\alpha), \quad v_0 = 1; \qquad
      m \leftarrow m + (g - m)(1-\alpha) \text{ (centered)} \\
      d &= \sqrt{v [- m^2] + \epsilon} \\
      b &\leftarrow \mu b + \eta g/d,\ p \leftarrow p - b \text{ (lr_in_momentum)};
        \quad b \leftarrow \mu b + g/d,\ p \leftarrow p - \eta b \text{ (otherwise)}

    Differs from :func:`rmsprop_jax.rmsprop`'s defaults: the square average
    starts at **one**, ``eps`` is 1e-10, and weight decay is coupled unless
    ``decoupled_decay=True``.

    Example:
      >>> from rmsprop_jax import presets
      >>> opt = presets.timm_tf(lr=0.016, alpha=0.9, eps=1e-3, momentum=0.9, weight_decay=1e-5)
    """
    v.check_static_bool("decoupled_decay", decoupled_decay)
    return _core.build(
        configure(
            **_storage(nu_dtype, mu_dtype, stochastic_rounding, seed),
            learning_rate=lr,
            decay=alpha,
            eps=eps,
            initial_scale=1.0,
            centered=centered,
            momentum=momentum,
            lr_in_momentum=lr_in_momentum,
            weight_decay=weight_decay,
            weight_decay_mode="decoupled" if decoupled_decay else "coupled",
            names={"learning_rate": "lr", "decay": "alpha"},
        )
    )


def sonnet(
    learning_rate: optax.ScalarOrSchedule,
    decay: jax.typing.ArrayLike = 0.9,
    momentum: jax.typing.ArrayLike = 0.0,
    epsilon: jax.typing.ArrayLike = 1e-10,
    centered: bool = False,
    *,
    nu_dtype: jax.typing.DTypeLike | Blockwise8bit | None = None,
    mu_dtype: jax.typing.DTypeLike | Blockwise8bit | None = None,
    stochastic_rounding: bool = False,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
    r"""Sonnet 2's ``snt.optimizers.RMSProp``.

    .. math::

      ms &\leftarrow \rho\, ms + (1-\rho) g^2, \quad ms_0 = 0; \qquad
      mg \leftarrow \rho\, mg + (1-\rho) g \text{ (centered)} \\
      mom &\leftarrow \mu\, mom + \eta g / \sqrt{ms [- mg^2] + \epsilon}; \quad
      p \leftarrow p - mom

    The same as :func:`rmsprop_jax.rmsprop` but for ``epsilon`` (1e-10). Unlike
    TensorFlow 1, the mean square starts at zero. Python-number hyperparameters
    are rounded to float32 first, as ``tf.cast`` does.

    Example:
      >>> from rmsprop_jax import presets
      >>> opt = presets.sonnet(0.01, momentum=0.9, centered=True)
    """
    return _core.build(
        configure(
            **_storage(nu_dtype, mu_dtype, stochastic_rounding, seed),
            learning_rate=learning_rate,
            decay=decay,
            eps=epsilon,
            centered=centered,
            momentum=momentum,
            names={"eps": "epsilon"},
            **_TENSORFLOW,
        )
    )


def lasagne(
    learning_rate: optax.ScalarOrSchedule = 1.0,
    rho: jax.typing.ArrayLike = 0.9,
    epsilon: jax.typing.ArrayLike = 1e-6,
    *,
    nu_dtype: jax.typing.DTypeLike | Blockwise8bit | None = None,
    mu_dtype: jax.typing.DTypeLike | Blockwise8bit | None = None,
    stochastic_rounding: bool = False,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
    r"""Lasagne's ``lasagne.updates.rmsprop``.

    .. math::

      a \leftarrow \rho a + (1-\rho) g^2; \quad p \leftarrow p - \eta g / \sqrt{a + \epsilon}

    Differs from :func:`rmsprop_jax.rmsprop`'s defaults: learning rate 1.0 and
    ``epsilon`` 1e-6; no momentum.

    Example:
      >>> from rmsprop_jax import presets
      >>> opt = presets.lasagne(learning_rate=0.01)
    """
    return _core.build(
        configure(
            **_storage(nu_dtype, mu_dtype, stochastic_rounding, seed),
            learning_rate=learning_rate,
            decay=rho,
            eps=epsilon,
            names={"decay": "rho", "eps": "epsilon"},
        )
    )


def hinton_2012(
    learning_rate: optax.ScalarOrSchedule,
    decay: jax.typing.ArrayLike = 0.9,
    *,
    nu_dtype: jax.typing.DTypeLike | Blockwise8bit | None = None,
    mu_dtype: jax.typing.DTypeLike | Blockwise8bit | None = None,
    stochastic_rounding: bool = False,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
    r"""RMSprop as on Hinton's slide (Neural Networks for Machine Learning, lecture 6e).

    .. math::

      MeanSquare \leftarrow 0.9\, MeanSquare + 0.1\, g^2; \quad
      p \leftarrow p - \eta g / \sqrt{MeanSquare}

    No epsilon: where the mean square is zero the step is zero (the slide's
    formula would divide 0 by 0).

    Example:
      >>> from rmsprop_jax import presets
      >>> opt = presets.hinton_2012(0.001)
    """
    return _core.build(
        configure(
            **_storage(nu_dtype, mu_dtype, stochastic_rounding, seed),
            learning_rate=learning_rate,
            decay=decay,
            eps=0.0,
        )
    )


def graves_2013(
    learning_rate: optax.ScalarOrSchedule = 1e-4,
    decay: jax.typing.ArrayLike = 0.95,
    momentum: jax.typing.ArrayLike = 0.9,
    epsilon: jax.typing.ArrayLike = 1e-4,
    *,
    nu_dtype: jax.typing.DTypeLike | Blockwise8bit | None = None,
    mu_dtype: jax.typing.DTypeLike | Blockwise8bit | None = None,
    stochastic_rounding: bool = False,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
    r"""Graves (2013), *Generating Sequences With Recurrent Neural Networks*, eqs. 38-41.

    .. math::

      n &\leftarrow \aleph n + (1-\aleph) g^2; \quad
      \bar g \leftarrow \aleph \bar g + (1-\aleph) g \\
      \Delta &\leftarrow \beth \Delta - \gimel\, g / \sqrt{n - \bar g^2 + \daleth}; \quad
      w \leftarrow w + \Delta

    with :math:`\aleph = 0.95`, :math:`\beth = 0.9`, :math:`\gimel = 10^{-4}`,
    :math:`\daleth = 10^{-4}`: centered RMSprop with the learning rate inside
    the momentum buffer.

    Example:
      >>> from rmsprop_jax import presets
      >>> opt = presets.graves_2013()
    """
    return _core.build(
        configure(
            **_storage(nu_dtype, mu_dtype, stochastic_rounding, seed),
            learning_rate=learning_rate,
            decay=decay,
            eps=epsilon,
            centered=True,
            momentum=momentum,
            names={"eps": "epsilon"},
        )
    )


def dqn_nature_2015(
    learning_rate: optax.ScalarOrSchedule = 2.5e-4,
    decay: jax.typing.ArrayLike = 0.95,
    min_squared_gradient: jax.typing.ArrayLike = 0.01,
    *,
    nu_dtype: jax.typing.DTypeLike | Blockwise8bit | None = None,
    mu_dtype: jax.typing.DTypeLike | Blockwise8bit | None = None,
    stochastic_rounding: bool = False,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
    r"""The RMSprop of DQN (Mnih et al., Nature 2015; DeepMind's Lua code).

    .. math::

      \bar g &\leftarrow 0.95 \bar g + 0.05 g; \quad
      g_2 \leftarrow 0.95 g_2 + 0.05 g^2 \\
      p &\leftarrow p - \eta g / \sqrt{g_2 - \bar g^2 + 0.01}

    Centered, no momentum, and a large constant (``min_squared_gradient``)
    inside the root. The Lua code adds ``lr * dw / tmp`` with ``dw`` the
    ascent direction; this is the same step written for a loss gradient.

    Example:
      >>> from rmsprop_jax import presets
      >>> opt = presets.dqn_nature_2015()
    """
    return _core.build(
        configure(
            **_storage(nu_dtype, mu_dtype, stochastic_rounding, seed),
            learning_rate=learning_rate,
            decay=decay,
            eps=min_squared_gradient,
            centered=True,
            names={"eps": "min_squared_gradient"},
        )
    )
