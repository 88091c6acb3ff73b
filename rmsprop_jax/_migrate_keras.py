"""Keras 3 ``keras.optimizers.RMSprop``'s state to and from :class:`~rmsprop_jax.RMSpropState`.

A built Keras optimizer keeps ``iterations`` and, for each trainable variable
in the order it was built with, a ``velocity`` (:math:`v`), an
``average_gradient`` (:math:`m`, centered only) and a ``momentum``
(:math:`b`, momentum only). ``keras`` is imported only inside these functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from rmsprop_jax import _migrate, presets

# The state's fields, Keras' lists of them, and their variables' names.
_FIELDS = {
    "nu": ("_velocities", "velocity"),
    "mu": ("_average_gradients", "average_gradient"),
    "trace": ("_momentums", "momentum"),
}
_CLIPS = ("clipnorm", "clipvalue", "global_clipnorm")


def _check(optimizer: Any) -> None:
    """ValueError unless ``optimizer`` is a Keras 3 RMSprop whose steps the preset can take."""
    import keras

    if not isinstance(optimizer, keras.optimizers.RMSprop):
        raise ValueError(
            f"`optimizer` must be a keras.optimizers.RMSprop, got {type(optimizer).__name__}."
        )
    if optimizer.gradient_accumulation_steps:
        raise ValueError(
            "The Keras optimizer accumulates gradients over "
            f"`gradient_accumulation_steps={optimizer.gradient_accumulation_steps}`, which "
            "presets.keras does not: wrap the preset in optax.MultiSteps and move the "
            "state at a step where no gradients are pending."
        )


def _settings(optimizer: Any) -> dict[str, Any]:
    """The preset's arguments, the learning rate as Keras uses it."""
    import keras

    lr = optimizer._learning_rate
    if isinstance(lr, keras.optimizers.schedules.LearningRateSchedule):
        learning_rate: Any = lr
    elif isinstance(lr, keras.Variable):
        learning_rate = float(keras.ops.convert_to_numpy(lr.value))
    else:
        raise ValueError(
            "The Keras optimizer's `learning_rate` is a function of no arguments, which "
            "the preset cannot call at a step count: pass `learning_rate=` yourself, as a "
            "number or a function of the step count."
        )
    kwargs = dict(
        learning_rate=learning_rate,
        rho=optimizer.rho,
        momentum=optimizer.momentum,
        epsilon=optimizer.epsilon,
        centered=optimizer.centered,
        weight_decay=optimizer.weight_decay,
    )
    kwargs.update({name: getattr(optimizer, name) for name in _CLIPS})
    return kwargs


def keras_kwargs(optimizer: Any) -> dict[str, Any]:
    """The arguments of :func:`rmsprop_jax.presets.keras` that reproduce ``optimizer``.

    Args:
      optimizer: a ``keras.optimizers.RMSprop``.

    Returns:
      ``{"learning_rate", "rho", "momentum", "epsilon", "centered",
      "weight_decay", "clipnorm", "clipvalue", "global_clipnorm"}``. A fixed
      learning rate is the value of Keras' variable (a float32 number); a
      ``LearningRateSchedule`` is passed on as it is: on Keras' JAX backend it
      is a function of the step count, as the preset wants.

    Raises:
      ValueError: for what the preset does not do: gradient accumulation,
        an exponential moving average of the weights (``use_ema``), weight
        decay with excluded variables (use :func:`rmsprop_jax.rmsprop` with a
        ``weight_decay_mask``), or a learning rate that is a function of no
        arguments.
    """
    _check(optimizer)
    if optimizer.use_ema:
        raise ValueError(
            "The Keras optimizer keeps a moving average of the weights (`use_ema=True`), "
            "which presets.keras does not: keep one with optax.ema beside it if needed."
        )
    excluded = getattr(optimizer, "_exclude_from_weight_decay", None) or getattr(
        optimizer, "_exclude_from_weight_decay_pattern", None
    )
    if optimizer.weight_decay and excluded:
        raise ValueError(
            "The Keras optimizer excludes variables from weight decay, which presets.keras "
            "cannot: use rmsprop_jax.rmsprop(learning_rate, decay=rho, eps=epsilon, "
            "momentum=momentum, centered=centered, weight_decay=weight_decay, "
            "weight_decay_mask=...) instead."
        )
    return _settings(optimizer)


def _numpy(variable: Any) -> np.ndarray:
    import keras

    return np.array(keras.ops.convert_to_numpy(variable.value))


def from_keras(
    optimizer: Any,
    params: Any,
    *,
    order: Sequence[str] | None = None,
    layout: _migrate.Layout | None = None,
) -> Any:
    r"""The state that continues a Keras 3 ``RMSprop`` run with :func:`presets.keras`.

    For each trainable variable, Keras' state maps onto
    :class:`~rmsprop_jax.RMSpropState` as

    .. math::

      \nu = \texttt{velocity}, \qquad \mu = \texttt{average\_gradient}, \qquad
      \texttt{trace} = -\texttt{momentum}, \qquad \texttt{count} = \texttt{iterations}

    (the buffer is negated because ``trace`` holds it with the update's sign;
    Keras' :math:`b \leftarrow \mu b + \eta g / \sqrt{v + \epsilon},\ p
    \leftarrow p - b` has the gradient's). Then
    ``presets.keras(**migrate.keras_kwargs(optimizer))`` takes the same next
    steps as the Keras optimizer would. The count also drives a
    ``LearningRateSchedule``.

    The variables are Keras' trainable variables in the order the optimizer
    was built with (``model.trainable_variables``); by default they are
    matched to ``jax.tree.leaves(params)`` in that order. ``order`` and
    ``layout`` work as in :func:`from_torch` (Keras and flax lay dense and
    convolution kernels out alike, so ``layout`` is rarely needed).

    Args:
      optimizer: a ``keras.optimizers.RMSprop``. If it is not built yet (no
        step taken), the state is what ``init`` gives.
      params: the JAX parameters, a pytree of arrays; the state takes their
        dtypes and shardings.
      order: the leaf paths of ``params`` in Keras' variable order.
      layout: leaf path to a function from Keras' layout to the JAX one.

    Returns:
      The state of ``presets.keras`` with the optimizer's settings: the
      :class:`~rmsprop_jax.RMSpropState` itself, or, where the optimizer clips
      gradients (so that the preset is a chain), the chain's state holding it.

    Raises:
      ValueError: if the numbers of variables or their shapes differ, naming
        the variable on both sides, or if the optimizer accumulates gradients.
    """
    import keras

    _check(optimizer)
    # The state's structure: its fields (momentum, centered) and, with clipping,
    # the chain around it. The numbers are the preset's business, not the state's.
    structure = {name: getattr(optimizer, name) for name in _CLIPS}
    structure.update(momentum=0.5 if optimizer.momentum > 0 else 0.0, centered=optimizer.centered)
    template, replace = _migrate.find_state(presets.keras(**structure).init(params))
    leaves = _migrate.Leaves(params)
    count = _migrate.check_count(
        keras.ops.convert_to_numpy(optimizer.iterations.value), "The Keras optimizer's `iterations`"
    )
    fields: dict[str, list[Any]] = {name: [None] * len(leaves) for name in _FIELDS}
    if not optimizer.built:  # no step taken: nothing to move but the count
        return replace(_migrate.fill(template, leaves, fields, count, lambda name, j: ""))
    variables = list(optimizer._trainable_variables)
    positions = _migrate.arrange(leaves, order, len(variables), "The Keras optimizer")
    fns = _migrate.layouts(leaves, layout)
    for name, (attribute, _) in _FIELDS.items():
        if getattr(template, name) is None:
            continue
        slots = getattr(optimizer, attribute)
        for k, j in enumerate(positions):
            value = _migrate.to_state_layout(_numpy(slots[k]), fns[j], split=False)
            fields[name][j] = -value if name == "trace" else value

    def describe(name: str, j: int) -> str:
        k = positions.index(j)
        return f"Keras' `{_FIELDS[name][1]}` of variable {k} ({variables[k].path!r})"

    return replace(_migrate.fill(template, leaves, fields, count, describe))


def to_keras(
    state: Any,
    optimizer: Any,
    *,
    order: Sequence[str] | None = None,
    layout: _migrate.Layout | None = None,
) -> None:
    """Writes a :func:`presets.keras` state into a built Keras 3 ``RMSprop``.

    The inverse of :func:`from_keras`: every ``velocity``, ``average_gradient``
    and ``momentum`` (``-trace``) variable and ``iterations`` are assigned, so
    that the Keras optimizer continues the JAX run.

    Args:
      state: an :class:`~rmsprop_jax.RMSpropState`, or a state holding one (a chain's).
      optimizer: a built ``keras.optimizers.RMSprop`` (``optimizer.build(
        model.trainable_variables)`` builds one that has taken no step).
      order: as in :func:`from_keras`.
      layout: leaf path to a function from the JAX layout to Keras' (the
        inverse of :func:`from_keras`'s).

    Raises:
      ValueError: if the optimizer is not built, or its options (momentum,
        centered), number of variables or shapes differ from the state's.
    """
    import keras

    _check(optimizer)
    if not optimizer.built:
        raise ValueError(
            "The Keras optimizer is not built, so it has no state to write into: call "
            "`optimizer.build(model.trainable_variables)` first."
        )
    rms, _ = _migrate.find_state(state)
    leaves, fields = _migrate.state_leaves(rms)
    variables = list(optimizer._trainable_variables)
    positions = _migrate.arrange(leaves, order, len(variables), "The Keras optimizer")
    fns = _migrate.layouts(leaves, layout)
    for name, option, used in (
        ("mu", "centered", optimizer.centered),
        ("trace", "momentum", optimizer.momentum > 0),
    ):
        if (fields[name] is not None) != bool(used):
            raise ValueError(
                f"The state {'has' if fields[name] is not None else 'has no'} `{name}`, but "
                f"the Keras optimizer has `{option}={getattr(optimizer, option)!r}`: build "
                "it with the settings of the preset the state is from."
            )
    writes = []
    for name, (attribute, slot) in _FIELDS.items():
        values = fields[name]
        if values is None:
            continue
        targets = getattr(optimizer, attribute)
        for k, j in enumerate(positions):
            x = np.negative(values[j]) if name == "trace" else values[j]
            fn = fns[j]
            x = np.asarray(fn(x)) if fn is not None else x
            if tuple(x.shape) != tuple(targets[k].shape):
                raise ValueError(
                    f"The state's `{name}` at {leaves.name(j)!r} has shape {tuple(x.shape)}, "
                    f"but Keras' `{slot}` of variable {k} ({variables[k].path!r}) has shape "
                    f"{tuple(targets[k].shape)}. If the variables are in another order, "
                    "pass `order`; if this one is laid out differently, pass `layout`."
                )
            writes.append((targets[k], x))
    # Everything is checked before anything is written.
    for variable, x in writes:
        variable.assign(keras.ops.convert_to_tensor(x, dtype=variable.dtype))
    optimizer.iterations.assign(int(np.asarray(rms.count)))
