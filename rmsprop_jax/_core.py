"""The transformation: state, ``init`` and ``update`` over pytrees.

:func:`build` turns a :class:`~rmsprop_jax._config.Config` into an
``optax.GradientTransformationExtraArgs``. ``update`` matches the gradients
against the state, evaluates schedules and per-step scalars once, and calls
:func:`rmsprop_jax._step.leaf_step` for every leaf.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from rmsprop_jax import _dtypes, _factored, _step, _storage, _trees, _weight_decay
from rmsprop_jax._config import Config

Array = jax.Array


class RMSpropState(NamedTuple):
    """State of RMSprop: step count, second moment and optional mean and momentum."""

    # int32 scalar: the number of updates made so far. (`count` shadows
    # tuple.count for the type checker only.)
    count: Array  # type: ignore[assignment]
    nu: optax.Updates  # moving average of |g|^2 (or its factors).
    mu: optax.Updates | None  # moving average of g; only when centered.
    trace: optax.Updates | None  # momentum buffer; only with momentum.


def _init_leaf(cfg: Config, p: Array) -> tuple[Any, Array | None, Array | None]:
    # State is made *like* the parameter (``full_like``), so it inherits the
    # parameter's sharding, eagerly and under jit alike.
    p = jnp.asarray(p)
    complex_state = _dtypes.is_complex(p)
    if cfg.split_complex and complex_state:
        p = _dtypes.split_complex(p)  # shape (..., 2): real and imaginary parts
        complex_state = False
    real = _dtypes.state_dtype(jnp.result_type(p))
    nu_dtype = cfg.nu_dtype or real
    mu_dtype = cfg.mu_dtype or real
    if complex_state:
        mu_dtype = _dtypes.complex_of(mu_dtype)
    axes = None
    if cfg.factored:
        axes = _factored.factored_axes(jnp.shape(p), cfg.min_dim_size_to_factor)
    nu: Any
    if axes is None:
        nu = jnp.full_like(p, cfg.initial_scale, dtype=nu_dtype)
    else:
        nu = _factored.init(p, axes, cfg.initial_scale, nu_dtype)
    mu = jnp.zeros_like(p, dtype=mu_dtype) if cfg.centered else None
    trace = jnp.zeros_like(p, dtype=mu_dtype) if cfg.momentum is not None else None
    return nu, mu, trace


def _evaluate(rate: Any, count: Array) -> Any:
    return rate(count) if callable(rate) else rate


def build(cfg: Config) -> optax.GradientTransformationExtraArgs:
    """Returns the transformation that ``cfg`` describes."""

    def init_fn(params: optax.Params) -> RMSpropState:
        leaves, treedef = _trees.flatten(params)
        per_leaf = [_init_leaf(cfg, p) for p in leaves]
        nu = treedef.unflatten([x[0] for x in per_leaf])
        mu = treedef.unflatten([x[1] for x in per_leaf]) if cfg.centered else None
        has_trace = cfg.momentum is not None
        trace = treedef.unflatten([x[2] for x in per_leaf]) if has_trace else None
        return RMSpropState(count=jnp.zeros([], jnp.int32), nu=nu, mu=mu, trace=trace)

    def update_fn(
        updates: optax.Updates,
        state: RMSpropState,
        params: optax.Params | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, RMSpropState]:
        del extra_args
        g_leaves, treedef = _trees.flatten(updates)
        try:  # where nu is factored, the state has two arrays for one gradient
            nu_leaves = treedef.flatten_up_to(state.nu)
        except (ValueError, TypeError):
            raise ValueError(
                "The gradient tree does not match the optimizer state: the "
                f"gradients have structure {treedef}, but the state was "
                f"initialised for {jax.tree.structure(state.nu)}. Call `init` with "
                "parameters shaped like the gradients."
            ) from None
        n = treedef.num_leaves
        wd = cfg.weight_decay
        if wd is not None and n:
            if params is None:
                raise ValueError(
                    "`params` must be passed to `update` when weight decay is "
                    "used: call `update(grads, state, params)`."
                )
            p_leaves = treedef.flatten_up_to(params)
            mask = _weight_decay.mask_leaves(cfg.weight_decay_mask, params, treedef)
        else:
            p_leaves, mask = [None] * n, [False] * n
        mu_leaves = treedef.flatten_up_to(state.mu) if cfg.centered else [None] * n
        tr_leaves = treedef.flatten_up_to(state.trace) if cfg.momentum is not None else [None] * n

        lr = _evaluate(cfg.learning_rate, state.count)
        wd_t = _evaluate(wd, state.count)
        t = optax.safe_increment(state.count)
        keys: list[Array | None] = [None] * n
        if cfg.stochastic_rounding and n:
            # Deterministic for a given seed: one stream per step and leaf.
            keys = [_storage.mix(cfg.seed, state.count, i) for i in range(n)]
        cache: dict[Any, _step.Scalars] = {}

        def scalars_of(real: jnp.dtype) -> _step.Scalars:
            if real not in cache:
                cache[real] = _step.scalars(cfg, real, lr, t)
            return cache[real]

        results = [
            _step.leaf_step(cfg, g, p, nu, mu, tr, scalars_of, _weight_decay.leaf_value(wd_t, m), k)
            for g, p, nu, mu, tr, m, k in zip(
                g_leaves, p_leaves, nu_leaves, mu_leaves, tr_leaves, mask, keys, strict=True
            )
        ]
        new_updates, new_nu, new_mu, new_trace = (
            treedef.unflatten([r[i] for r in results]) for i in range(4)
        )
        return new_updates, RMSpropState(
            count=t,
            nu=new_nu,
            mu=new_mu if cfg.centered else None,
            trace=new_trace if cfg.momentum is not None else None,
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
