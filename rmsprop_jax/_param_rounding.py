r"""``stochastic_param_rounding``: low-precision parameters that still take small steps.

With bfloat16 or float16 parameters and no float32 master copy,
``optax.apply_updates`` rounds :math:`p + u` to nearest, so every update
smaller than half a unit in the last place of :math:`p` is lost: small
learning rates and late training stall. This transformation, placed last in a
chain, rounds :math:`p + u` *stochastically* instead: up or down at random
with the probabilities that make the expected new parameter exactly
:math:`p + u`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from rmsprop_jax import _storage, _trees
from rmsprop_jax import _validation as v

Array = jax.Array

_NARROW = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


class ParamRoundingState(NamedTuple):
    """State of :func:`stochastic_param_rounding`: the step count, which seeds the rounding."""

    count: Array  # type: ignore[assignment]


# So that `jax.export` can serialize a step whose inputs or outputs hold it.
jax.export.register_namedtuple_serialization(
    ParamRoundingState, serialized_name="rmsprop_jax.ParamRoundingState"
)


def _land(p: Array, u: Array, key: Array) -> Array:
    """The update that takes ``p`` to ``p + u`` rounded stochastically to ``p``'s dtype."""
    narrow = jnp.dtype(p.dtype)
    target = p.astype(jnp.float32) + u.astype(jnp.float32)
    rounded = _storage.stochastic_round(_storage.saturate(target, narrow), narrow, key)
    # r - p is exact in float32. In the update's own dtype it is exact whenever
    # it is representable there, which holds for every step smaller than the
    # parameter (Sterbenz: p/2 <= r <= 2p), the steps rounding exists for.
    # Otherwise, of its two neighbours in that dtype, take the one with which
    # p + u', rounded to p's dtype as apply_updates does, lands on r.
    diff = rounded.astype(jnp.float32) - p.astype(jnp.float32)
    near = diff.astype(u.dtype)
    if jnp.dtype(u.dtype).itemsize >= 4:
        return near
    other = _next_toward(near, near.astype(jnp.float32) < diff)
    lands = (p.astype(jnp.float32) + near.astype(jnp.float32)).astype(narrow) == rounded
    return jnp.where(lands, near, other)


def _next_toward(x: Array, up: Array) -> Array:
    """The neighbour of 16-bit float ``x`` above it (where ``up``) or below it.

    On the sign-magnitude bits it is one integer add (``jnp.nextafter``'s
    result, in fewer operations): the magnitude grows where the direction
    points away from 0, and from 0 the neighbour is the smallest subnormal of
    that sign."""
    bits = jax.lax.bitcast_convert_type(x, jnp.int16)
    grows = up == (x > 0)
    moved = bits + jnp.where(grows, jnp.int16(1), jnp.int16(-1))
    from_zero = jnp.where(up, jnp.int16(1), jnp.int16(-32767))  # 0x0001, 0x8001
    return jax.lax.bitcast_convert_type(jnp.where(x == 0, from_zero, moved), x.dtype)


def stochastic_param_rounding(seed: int = 0) -> optax.GradientTransformation:
    r"""Makes ``optax.apply_updates`` round low-precision parameters stochastically.

    For every parameter leaf stored in bfloat16 or float16, the incoming update
    :math:`u` is replaced by

    .. math::

      u' = r - p, \qquad r = \operatorname{SR}(p + u), \qquad
      \mathbb{E}[r] = p + u

    where :math:`\operatorname{SR}` rounds :math:`p + u` (computed in float32)
    to the parameter's dtype up or down at random, with probability of rounding
    up equal to the fraction of the gap it covers. ``optax.apply_updates``
    computes ``p + u'`` and rounds it to the parameter's dtype; since
    :math:`u' = r - p` exactly, that lands on :math:`r`, bit for bit. Float32,
    float64, complex and integer leaves pass through unchanged.

    Where the guarantee ends:

    - ``u'`` must be representable in the update's dtype. It is for every
      step smaller than the parameter itself (then :math:`p/2 \le r \le 2p`
      and the difference is exact), which covers the small steps that round-to-
      nearest loses. For a larger step (a parameter that changes sign or
      halves in one step) the neighbour of :math:`r - p` with which ``p + u'``
      still rounds to :math:`r` is returned where there is one; where there is
      none, ``apply_updates`` lands within half a unit in the last place of
      that step of :math:`r`. With float32 updates it is always exact.
    - It must be the *last* transformation before ``apply_updates``: anything
      that changes the updates afterwards (a scaling, ``optax.MultiSteps``
      wrapping only it) changes where they land.
    - A value of :math:`p + u` beyond the dtype's range saturates at its
      largest finite value.

    The rounding is deterministic for a given ``seed``, step count and leaf:
    a run is reproducible. Under ``jax.vmap`` every member draws the same
    random numbers.

    Args:
      seed: a 32-bit unsigned integer (an int, or a traced integer array).

    Returns:
      An ``optax.GradientTransformation`` whose ``update`` needs ``params``.

    Example:
      >>> import jax.numpy as jnp
      >>> import optax
      >>> import rmsprop_jax
      >>> params = {"w": jnp.ones(4, jnp.bfloat16)}
      >>> tx = optax.chain(optax.sgd(1e-3), rmsprop_jax.stochastic_param_rounding(seed=0))
      >>> updates, _ = tx.update({"w": jnp.ones(4, jnp.bfloat16)}, tx.init(params), params)
      >>> new = optax.apply_updates(params, updates)  # each 1.0 or 0.99609375, mean 0.999
    """
    v.check_seed("seed", seed)

    def init_fn(params: optax.Params) -> ParamRoundingState:
        del params
        return ParamRoundingState(count=jnp.zeros([], jnp.int32))

    def update_fn(
        updates: optax.Updates, state: ParamRoundingState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, ParamRoundingState]:
        u_leaves, treedef = _trees.flatten(updates)
        if params is None:
            if not u_leaves:
                return updates, ParamRoundingState(count=optax.safe_increment(state.count))
            raise ValueError(
                "`params` must be passed to `update`: stochastic_param_rounding rounds "
                "p + u and needs p. Call `update(updates, state, params)`."
            )
        p_leaves = _trees.match(treedef, params, "parameters")
        paths = _trees.paths(updates)
        # Seeded by the new count (not the old one, whose buffer the new one
        # may reuse when the state is donated).
        count = optax.safe_increment(state.count)
        out = []
        for i, (path, u, p) in enumerate(zip(paths, u_leaves, p_leaves, strict=True)):
            if not hasattr(u, "dtype"):  # a Python number: no parameter to round
                out.append(u)
                continue
            _trees.check_param(path, p, tuple(u.shape))
            dtype = _trees.shape_and_dtype(p)[1]
            if not (_trees.is_trained(dtype) and _trees.is_trained(u.dtype) and dtype in _NARROW):
                out.append(u)  # wide, integer, key or float0: passed through
                continue
            out.append(_land(jnp.asarray(p), u, _storage.mix(seed, count, i)))
        return treedef.unflatten(out), ParamRoundingState(count=count)

    return optax.GradientTransformation(init_fn, update_fn)
