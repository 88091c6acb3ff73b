"""``torch.optim.RMSprop``'s state to and from :class:`~rmsprop_jax.RMSpropState`.

PyTorch keeps, for each parameter that has had a gradient, ``step`` (a float
tensor), ``square_avg`` (:math:`v`), ``grad_avg`` (:math:`m`, centered only)
and ``momentum_buffer`` (:math:`b`, momentum only), keyed by the parameter's
position in the optimizer's parameter groups, one group after another. Only
``torch`` tensors' own methods are used to read them; ``torch`` is imported
only to write them back (:func:`to_torch`).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rmsprop_jax import _migrate, presets
from rmsprop_jax._core import RMSpropState

_SETTINGS = ("lr", "alpha", "eps", "weight_decay", "momentum", "centered", "maximize")
_DEFAULTS = {"maximize": False}  # older state dicts lack it; PyTorch fills it so
# The state's fields, PyTorch's names for them, and when the settings make them.
_KEYS = {"nu": "square_avg", "mu": "grad_avg", "trace": "momentum_buffer"}
_USED = {
    "nu": lambda s: True,
    "mu": lambda s: bool(s["centered"]),
    "trace": lambda s: bool(s["momentum"]),
}


def _state_dict(optimizer: Any) -> Mapping[str, Any]:
    """The optimizer's ``state_dict()``, or the dict itself; ValueError unless
    it is RMSprop's."""
    if hasattr(optimizer, "state_dict") and callable(optimizer.state_dict):
        sd = optimizer.state_dict()
    elif isinstance(optimizer, Mapping) and {"state", "param_groups"} <= set(optimizer):
        sd = optimizer
    else:
        raise ValueError(
            "`optimizer` must be a torch.optim.RMSprop or its `state_dict()`, got "
            f"{type(optimizer).__name__}."
        )
    for i, group in enumerate(sd["param_groups"]):
        missing = [k for k in _SETTINGS if k not in group and k not in _DEFAULTS]
        if missing:
            raise ValueError(
                f"Parameter group {i} has no `{missing[0]}`: this is not the state of "
                "torch.optim.RMSprop."
            )
    return sd


def _groups(sd: Mapping[str, Any], group: int | None) -> list[int]:
    n = len(sd["param_groups"])
    if group is None:
        return list(range(n))
    if not isinstance(group, int) or isinstance(group, bool) or not 0 <= group < n:
        raise ValueError(f"`group` must be an int in [0, {n}), got {group!r}.")
    return [group]


def _setting(group: Mapping[str, Any], key: str) -> Any:
    value = group.get(key, _DEFAULTS.get(key))
    if hasattr(value, "item"):  # a tensor learning rate
        value = value.item()
    return value


def _agreed(sd: Mapping[str, Any], groups: list[int], keys: Sequence[str], fix: str) -> dict:
    """The settings ``keys`` of ``groups``, which must agree on each."""
    settings = {}
    for key in keys:
        values = [_setting(sd["param_groups"][g], key) for g in groups]
        if key == "momentum":  # only whether there is a buffer shapes the state
            values = [v if v > 0 else 0 for v in values]
        for g, value in zip(groups[1:], values[1:], strict=True):
            if value != values[0]:
                raise ValueError(
                    f"Parameter groups {groups[0]} and {g} differ in `{key}` "
                    f"({values[0]!r} and {value!r}). {fix}"
                )
        settings[key] = values[0]
    return settings


def pytorch_kwargs(optimizer: Any, group: int | None = None) -> dict[str, Any]:
    """The arguments of :func:`rmsprop_jax.presets.pytorch` that reproduce ``optimizer``.

    Args:
      optimizer: a ``torch.optim.RMSprop``, or its ``state_dict()``.
      group: the parameter group to read; by default all of them, which must
        then agree on every setting.

    Returns:
      ``{"lr", "alpha", "eps", "weight_decay", "momentum", "centered",
      "maximize"}``. ``lr`` is the group's current rate: a learning-rate
      scheduler writes into it, so for a schedule pass your own function of
      the step count instead (see :func:`from_torch`).

    Raises:
      ValueError: if the groups differ in a setting (name one with ``group``,
        and build one preset per group with ``optax.partition``).
    """
    sd = _state_dict(optimizer)
    return _agreed(
        sd,
        _groups(sd, group),
        _SETTINGS,
        "Build one preset per group (`group=`) and combine them with optax.partition.",
    )


def _numpy(tensor: Any) -> np.ndarray:
    """A tensor's values as a NumPy copy (never a view of PyTorch's memory)."""
    tensor = tensor.detach().cpu()
    if str(tensor.dtype) == "torch.bfloat16":  # NumPy has no bfloat16: exact in float32
        tensor = tensor.float()
    if tensor.is_complex():
        tensor = tensor.resolve_conj()
    return np.array(tensor.numpy())


def _parameters(sd: Mapping[str, Any], groups: list[int]) -> list[tuple[int, Any]]:
    """(group, parameter id) of each parameter of ``groups``, in PyTorch's order."""
    return [(g, pid) for g in groups for pid in sd["param_groups"][g]["params"]]


def from_torch(
    optimizer: Any,
    params: Any,
    *,
    group: int | None = None,
    order: Sequence[str] | None = None,
    layout: _migrate.Layout | None = None,
    count: int | None = None,
) -> RMSpropState:
    r"""The state that continues a ``torch.optim.RMSprop`` run with :func:`presets.pytorch`.

    For each parameter, PyTorch's state maps onto :class:`~rmsprop_jax.RMSpropState` as

    .. math::

      \nu = \texttt{square\_avg}, \qquad \mu = \texttt{grad\_avg}, \qquad
      \texttt{trace} = -\texttt{momentum\_buffer}, \qquad
      \texttt{count} = \texttt{step}

    (the buffer is negated because ``trace`` holds it with the update's sign;
    PyTorch's :math:`b` in :math:`b \leftarrow \mu b + g/d,\ p \leftarrow p -
    \eta b` has the gradient's). Complex parameters' state becomes a trailing
    (real, imaginary) axis, as ``split_complex`` keeps it. A parameter that
    PyTorch has not stepped yet gets what ``init`` gives (zeros), as PyTorch
    would. Then ``presets.pytorch(**migrate.pytorch_kwargs(optimizer))``
    (with your schedule as ``lr``, if the run has one) takes the same next
    steps as ``optimizer.step()`` would.

    **Which leaf is which parameter.** PyTorch numbers its parameters in the
    order they were given to the optimizer (``model.parameters()``:
    registration order), group after group. By default they are matched to
    ``jax.tree.leaves(params)`` in that order; flax orders dict keys
    alphabetically, so usually pass ``order``: the leaf paths of ``params`` in
    PyTorch's order, e.g. ``["hidden/kernel", "hidden/bias", "out/kernel",
    "out/bias"]`` (``/``-separated keys, or ``jax.tree_util.keystr``'s form).

    **Layouts.** The state of a parameter is laid out like the parameter. Where
    the port changes a layout (``torch.nn.Linear`` keeps (out, in), flax (in,
    out)), give ``layout``: the path of that leaf mapped to the function that
    turns PyTorch's array into the JAX layout, the same one applied to the
    weight (``{"hidden/kernel": np.transpose}``).

    Args:
      optimizer: a ``torch.optim.RMSprop`` or its ``state_dict()``.
      params: the JAX parameters, a pytree of arrays (or ``ShapeDtypeStruct``).
        The state takes their dtypes and shardings.
      group: move only this parameter group (``params`` then holds only its
        parameters). By default all groups, which must agree on ``momentum``
        (none or some) and ``centered``.
      order: the leaf paths of ``params`` in PyTorch's parameter order.
      layout: leaf path to a function from PyTorch's layout to the JAX one.
      count: the step count to store; by default PyTorch's ``step``, which must
        then be the same for every parameter that has one. The count only
        matters to learning-rate and weight-decay schedules.

    Returns:
      The :class:`~rmsprop_jax.RMSpropState` for ``presets.pytorch``.

    Raises:
      ValueError: if the numbers of parameters, their shapes, the groups'
        options or their step counts differ, naming the parameter on both sides.

    Example::

      linear = torch.nn.Linear(3, 2)  # weight (2, 3), bias (2,)
      opt = torch.optim.RMSprop(linear.parameters(), lr=0.01, momentum=0.9)
      ...  # training in PyTorch
      params = {"kernel": jnp.asarray(linear.weight.detach().numpy().T),
                "bias": jnp.asarray(linear.bias.detach().numpy())}
      state = migrate.from_torch(opt, params, order=["kernel", "bias"],
                                 layout={"kernel": np.transpose})
      tx = presets.pytorch(**migrate.pytorch_kwargs(opt))
      updates, state = tx.update(grads, state, params)  # PyTorch's next step
    """
    sd = _state_dict(optimizer)
    groups = _groups(sd, group)
    shape = _agreed(
        sd,
        groups,
        ("momentum", "centered"),
        "They make differently shaped state: move one group at a time (`group=`).",
    )
    leaves = _migrate.Leaves(params)
    members = _parameters(sd, groups)
    positions = _migrate.arrange(leaves, order, len(members), "The PyTorch optimizer")
    fns = _migrate.layouts(leaves, layout)
    template = presets.pytorch(
        momentum=0.5 if shape["momentum"] else 0.0, centered=shape["centered"]
    ).init(params)

    needed = [name for name, used in _USED.items() if used(shape)]
    fields: dict[str, list[Any]] = {name: [None] * len(leaves) for name in ("nu", "mu", "trace")}
    steps: dict[int, float] = {}
    for k, ((g, pid), j) in enumerate(zip(members, positions, strict=True)):
        entry = sd["state"].get(pid)
        if not entry:
            continue
        for name in needed:
            key = _KEYS[name]
            if key not in entry:
                raise ValueError(
                    f"PyTorch's state of parameter {k} (group {g}) has no `{key}`, which "
                    f"group {g}'s settings need: the state does not match the optimizer."
                )
            value = _migrate.to_state_layout(_numpy(entry[key]), fns[j], split=True)
            fields[name][j] = -value if name == "trace" else value
        steps[k] = float(entry["step"])

    if count is None:
        if len(set(steps.values())) > 1:
            shown = ", ".join(f"parameter {k}: {s:g}" for k, s in list(steps.items())[:6])
            raise ValueError(
                f"PyTorch's parameters have taken different numbers of steps ({shown}); "
                "the state has one count. Pass `count` (it only matters to schedules)."
            )
        count = int(next(iter(steps.values()), 0))

    def describe(name: str, j: int) -> str:
        return f"PyTorch's `{_KEYS[name]}` of parameter {positions.index(j)}"

    return _migrate.fill(template, leaves, fields, _migrate.check_count(count, "`count`"), describe)


def to_torch(
    state: Any,
    optimizer: Any,
    *,
    group: int | None = None,
    order: Sequence[str] | None = None,
    layout: _migrate.Layout | None = None,
) -> dict[str, Any]:
    r"""The ``state_dict`` that puts a :func:`presets.pytorch` state into ``optimizer``.

    The inverse of :func:`from_torch`: ``optimizer.load_state_dict(to_torch(state,
    optimizer))`` makes the PyTorch optimizer continue the JAX run. Every
    parameter gets ``step = count`` and its ``square_avg`` (:math:`\nu`),
    ``grad_avg`` (:math:`\mu`) and ``momentum_buffer`` (``-trace``), in the
    parameter's dtype and on its device. The settings (``param_groups``) are
    ``optimizer``'s own.

    Args:
      state: an :class:`~rmsprop_jax.RMSpropState`, or a state holding one (a chain's).
      optimizer: the ``torch.optim.RMSprop`` to load into; its parameters fix
        the shapes.
      group: fill only this group's parameters (``state`` holds only theirs);
        the other groups keep their state.
      order: as in :func:`from_torch`.
      layout: leaf path to a function from the JAX layout to PyTorch's (the
        inverse of :func:`from_torch`'s).

    Returns:
      A ``state_dict`` for ``optimizer.load_state_dict``.

    Raises:
      ValueError: if the state's options (momentum, centered) or shapes differ
        from the optimizer's.
    """
    import torch

    if not isinstance(optimizer, torch.optim.RMSprop):
        raise ValueError(
            "`optimizer` must be the torch.optim.RMSprop to load the state into, got "
            f"{type(optimizer).__name__}."
        )
    sd = _state_dict(optimizer)
    groups = _groups(sd, group)
    rms, _ = _migrate.find_state(state)
    leaves, fields = _migrate.state_leaves(rms)
    members = _parameters(sd, groups)
    tensors = [p for g in groups for p in optimizer.param_groups[g]["params"]]
    positions = _migrate.arrange(leaves, order, len(members), "The PyTorch optimizer")
    fns = _migrate.layouts(leaves, layout)
    shape = _agreed(sd, groups, ("momentum", "centered"), "Move one group at a time (`group=`).")
    for field, key in (("mu", "centered"), ("trace", "momentum")):
        if (fields[field] is not None) != bool(shape[key]):
            raise ValueError(
                f"The state {'has' if fields[field] is not None else 'has no'} `{field}`, "
                f"but the PyTorch optimizer has `{key}={shape[key]!r}`: build it with the "
                "settings of the preset the state is from."
            )
    step_dtype = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
    count = float(np.asarray(rms.count))
    new_state = dict(sd["state"])
    for k, ((_, pid), p, j) in enumerate(zip(members, tensors, positions, strict=True)):
        entry = {"step": torch.tensor(count, dtype=step_dtype)}
        for field, key in _KEYS.items():
            values = fields[field]
            if values is None:
                continue
            x: np.ndarray = values[j].astype(
                np.float64 if values[j].dtype == np.float64 else np.float32
            )
            x = np.negative(x) if field == "trace" else x
            if p.is_complex():
                if x.shape[-1:] != (2,):
                    raise ValueError(
                        f"The state's `{field}` at {leaves.name(j)!r} has shape {x.shape}, "
                        f"but PyTorch's parameter {k} is complex: its state needs a trailing "
                        "(real, imaginary) axis of size 2 (`split_complex=True`)."
                    )
                x = _migrate.join_complex(x)
            fn = fns[j]
            x = np.asarray(fn(x)) if fn is not None else x
            if tuple(x.shape) != tuple(p.shape):
                raise ValueError(
                    f"The state's `{field}` at {leaves.name(j)!r} has shape {tuple(x.shape)}"
                    f"{' after `layout`' if fns[j] is not None else ''}, but PyTorch's "
                    f"parameter {k} has shape {tuple(p.shape)}. If the parameters are in "
                    "another order, pass `order`; if this one is laid out differently, "
                    "pass `layout`."
                )
            entry[key] = torch.from_numpy(np.array(x, order="C")).to(dtype=p.dtype, device=p.device)
        new_state[pid] = entry
    return {"state": new_state, "param_groups": copy.deepcopy(sd["param_groups"])}
