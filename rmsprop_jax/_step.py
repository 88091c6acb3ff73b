r"""One RMSprop step for one leaf, as a composition of small pure stages.

In the order of the mathematics (``docs/algorithm.md`` has the whole of it):

1. :func:`effective_gradient`: ``maximize`` and coupled weight decay.
2. :func:`moments`: the second moment :math:`\nu` (full or factored) and,
   when centered, the mean :math:`\mu`.
3. :func:`debias`: the estimates :math:`\hat\nu, \hat\mu`.
4. :func:`normalise`: :math:`s = g / d` with the denominator :math:`d` and the
   0/0 guard.
5. :func:`momentum_step`: learning rate, momentum buffer, Nesterov.
6. decoupled weight decay (``_weight_decay.decoupled``).
7. storage (:func:`_keeper`): casts, saturation and stochastic rounding
   (``_storage``); narrow state is read back as stored.

Every stage is elementwise (the factored average aside) and left to XLA to fuse.
The scalars a step needs are made once per step and dtype, in :mod:`rmsprop_jax._scalars`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from rmsprop_jax import _dtypes, _factored, _storage, _trees, _weight_decay
from rmsprop_jax._config import Config
from rmsprop_jax._scalars import Scalars, to_dtype

Array = jax.Array


class Options(NamedTuple):
    """The choices of a configuration that shape one leaf's step: hashable, so
    that the jitted leaf step (``_core``) takes them as a static argument. The
    numbers (decay, eps, rates) are not here: they come in as :class:`Scalars`."""

    maximize: bool
    weight_decay_mode: str
    centered: bool
    eps_in_sqrt: bool
    momentum: bool  # a momentum buffer
    lr_in_momentum: bool
    nesterov: bool
    scale_only: bool
    split_complex: bool


def options(cfg: Config) -> Options:
    return Options(
        maximize=cfg.maximize,
        weight_decay_mode=cfg.weight_decay_mode,
        centered=cfg.centered,
        eps_in_sqrt=cfg.eps_in_sqrt,
        momentum=cfg.momentum is not None,
        lr_in_momentum=cfg.lr_in_momentum,
        nesterov=cfg.nesterov,
        scale_only=cfg.scale_only,
        split_complex=cfg.split_complex,
    )


@jax.custom_jvp
def _sqrt(x: Array) -> Array:
    """``jnp.sqrt`` whose derivative at 0 is 0 rather than inf.

    The forward program is the same; only differentiation through ``update``
    (meta-learning) sees the difference: where the second moment is 0 (a
    parameter that has only seen zero gradients) its tangent is 0 too, and an
    infinite derivative would turn 0 * inf into NaN."""
    return jnp.sqrt(x)


@_sqrt.defjvp
def _sqrt_jvp(primals: tuple[Array], tangents: tuple[Array]) -> tuple[Array, Array]:
    (x,), (dx,) = primals, tangents
    y = jnp.sqrt(x)
    positive = y > 0
    return y, jnp.where(positive, dx / (2 * jnp.where(positive, y, 1)), 0)


def _abs_sq(x: Array) -> Array:
    """:math:`|x|^2`, real for complex ``x``."""
    if jnp.iscomplexobj(x):
        return jax.lax.real(jax.lax.mul(x, jax.lax.conj(x)))
    return jax.lax.mul(x, x)


# --------------------------------------------------------------------------
# The stages.


def effective_gradient(opts: Options, g: Array, p: Array | None, wd: Any, real: jnp.dtype) -> Array:
    r""":math:`g \leftarrow -g` if maximize; :math:`g \leftarrow g + \lambda p` if coupled."""
    if opts.maximize:
        g = jax.lax.neg(g)
    if wd is not None and opts.weight_decay_mode == "coupled":
        assert p is not None
        g = _weight_decay.coupled(g, p, wd, real)
    return g


def _decayed(decay: Array | None, traced: bool, x: Array) -> Array | None:
    """:math:`\rho x`; None where the decay is concretely 0. Where it is known only
    at run time, 0 * inf (a square that overflowed earlier) is taken as 0."""
    if decay is None:
        return None
    if traced:
        return jnp.where(decay > 0, jax.lax.mul(decay, x), 0)
    return jax.lax.mul(decay, x)


def moments(
    opts: Options,
    g: Array,
    nu: Any,
    mu: Array | None,
    sc: Scalars,
    axes: tuple[int, int] | None,
    real: jnp.dtype,
) -> tuple[Any, Array | None, Array | None]:
    r"""(nu, mu, finite): :math:`\nu \leftarrow \rho\nu + (1-\rho)|g|^2` (or its factors);
    :math:`\mu \leftarrow \rho\mu + (1-\rho)g` when centered; for factored
    leaves, where :math:`|g|^2` is finite (see ``_factored.update``)."""
    g2 = _abs_sq(g)
    finite = None
    if axes is not None:
        row, col, rebuild = _factored.unpack(nu, axes)
        row, col, finite = _factored.update(g2, row, col, axes, sc.decay, sc.one_minus_decay, real)
        new_nu: Any = rebuild(row, col)
    else:
        new_nu = jax.lax.mul(sc.one_minus_decay, g2)
        if sc.decay_traced:  # a run-time decay of 1 (1 - decay = 0) meets inf as 0
            new_nu = jnp.where(sc.one_minus_decay > 0, new_nu, 0)
        decayed = _decayed(sc.decay, sc.decay_traced, to_dtype(nu, real))
        if decayed is not None:
            new_nu = jax.lax.add(new_nu, decayed)
    new_mu = None
    if opts.centered:
        assert mu is not None
        new_mu = jax.lax.mul(sc.one_minus_decay_w, g)
        decayed = _decayed(sc.decay_w, sc.decay_traced, to_dtype(mu, g.dtype))
        if decayed is not None:
            new_mu = jax.lax.add(new_mu, decayed)
    return new_nu, new_mu, finite


def debias(
    nu: Any, mu: Array | None, sc: Scalars, axes: tuple[int, int] | None
) -> tuple[Array, Array | None]:
    r""":math:`\hat\nu = \nu / (1 - \rho^t)`, :math:`\hat\mu = \mu / (1 - \rho^t)`
    with bias correction, else the averages themselves; a factored
    :math:`\nu` is expanded to its full estimate here."""
    correction = sc.correction
    if axes is not None:
        row, col, _ = _factored.unpack(nu, axes)
        if correction is not None:
            row, col = row / correction, col / correction
        nu_hat = _factored.estimate(row, col, axes[0])
    else:
        nu_hat = nu if correction is None else jax.lax.div(nu, correction)
    mu_hat = mu
    if correction is not None and mu is not None:
        assert sc.correction_w is not None
        mu_hat = jax.lax.div(mu, sc.correction_w)
    return nu_hat, mu_hat


def normalise(
    opts: Options,
    g: Array,
    nu_hat: Array,
    mu_hat: Array | None,
    finite: Array | None,
    sc: Scalars,
    clamp: bool = True,
) -> Array:
    r""":math:`s = g / d`, :math:`d = \sqrt{v + \epsilon}` or :math:`\sqrt{v} + \epsilon`,
    with :math:`v = \max(\hat\nu - |\hat\mu|^2, 0)` when centered, else :math:`\hat\nu`.

    Where :math:`d = 0` (only with ``eps == 0`` and no history) :math:`s = 0`,
    not 0/0; where a square overflowed, :math:`s = 0` (a full :math:`\nu` is inf
    there, which gives it; a factored one says so through ``finite``); and
    :math:`|s|` is bounded so that later products stay finite."""
    work = g.dtype
    v = nu_hat
    if opts.centered:
        assert mu_hat is not None
        # v = nu - min(mu^2, nu) is max(nu - mu^2, 0) to the last bit, in one
        # op: a rounded difference of b <= a is never below 0, so a variance
        # that would round below zero is 0 and the root stays real. mu^2 is
        # first bounded by the largest finite value, so that where a square
        # overflowed (nu = inf) v stays inf and the step is 0, as documented,
        # rather than inf - inf = NaN.
        largest = nu_hat.dtype.type(jnp.finfo(nu_hat.dtype).max)
        mu2 = jax.lax.min(_abs_sq(mu_hat), largest)
        v = jax.lax.sub(nu_hat, jax.lax.min(mu2, nu_hat))
    eps = sc.eps
    if sc.guard_zero_d:
        # d == 0 only with eps == 0 and a zero history: s = 0 there, not 0/0.
        # The inner `where` keeps the discarded branch finite for gradients.
        d = _sqrt(v + eps) if opts.eps_in_sqrt else _sqrt(v) + eps
        positive = d > 0
        s = jnp.where(positive, g / jnp.where(positive, d, 1).astype(work), 0)
    elif opts.eps_in_sqrt:
        s = jax.lax.mul(g, to_dtype(jax.lax.rsqrt(jax.lax.add(v, eps)), work))  # as optax does
    else:
        s = jax.lax.div(g, to_dtype(jax.lax.add(_sqrt(v), eps), work))
    if finite is not None:
        s = jnp.where(finite, s, 0)
    if not clamp:
        return s  # bounded statically: see scalars()
    if jnp.iscomplexobj(s):
        return _storage.saturate_to(s, sc.s_max)
    # Scalar bounds (JAX broadcasts them when lowering). They are outside differentiation
    # (stop_gradient in _scalars), so meta-gradients pass through the clamp.
    return jax.lax.clamp(sc.s_min, s, sc.s_max)


def momentum_step(
    opts: Options, s: Array, trace: Array | None, sc: Scalars, keep: Callable[[Array], Any]
) -> tuple[Array, Array | None]:
    r"""(update, stored buffer). The update is minus the step.

    With ``lr_in_momentum``: :math:`b \leftarrow m b + \eta s`, step :math:`= b`
    (Nesterov: :math:`\eta s + m b`). Without: :math:`b \leftarrow m b + s`, step
    :math:`= \eta b` (Nesterov: :math:`\eta (s + m b)`). No momentum: :math:`\eta s`.

    The buffer is *stored with the update's sign*, :math:`-b`, as optax's
    ``trace`` holds it: the update is then the stored buffer itself (no
    negation, which cost XLA one extra loop per leaf), and the state holds the
    same numbers as optax's. ``keep`` stores the new buffer and returns
    (stored, the value to go on with)."""
    lax = jax.lax
    assert sc.lr_w is not None and sc.neg_lr_w is not None
    lr, neg_lr = sc.lr_w, sc.neg_lr_w
    if not opts.momentum:
        return lax.mul(neg_lr, s), None
    assert sc.momentum_w is not None and trace is not None
    m = sc.momentum_w
    neg_b = to_dtype(trace, s.dtype)  # -b
    if opts.lr_in_momentum:
        stored, neg_b = keep(lax.add(lax.mul(m, neg_b), lax.mul(neg_lr, s)))
        update = lax.add(lax.mul(neg_lr, s), lax.mul(m, neg_b)) if opts.nesterov else neg_b
    else:
        stored, neg_b = keep(lax.sub(lax.mul(m, neg_b), s))
        update = lax.mul(lr, lax.sub(lax.mul(m, neg_b), s) if opts.nesterov else neg_b)
    return update, stored


def _keeper(dtype: jnp.dtype, key: Array | None, saturated: bool) -> Callable[[Array], Any]:
    """Stores a new state value in ``dtype``; returns (stored, the value the step
    goes on with).

    Where the storage is narrower than the computation, the step goes on with
    the *stored* value, read back: then the update and the new state are
    computed from the new state alone, and XLA writes the (donated) state in
    place instead of copying it to keep the old one for a second pass."""

    def keep(x: Array) -> tuple[Array, Array]:
        stored = _storage.store(x, dtype, key, saturated)
        if jnp.finfo(dtype).bits < jnp.finfo(x.dtype).bits:
            return stored, to_dtype(stored, x.dtype)
        return stored, x

    return keep


def _keep_nu(new_nu: Any, nu: Any, key: Array | None) -> tuple[Any, Any]:
    """Stores nu (each factor of a factored nu) in the old storage dtypes.

    nu is not saturated: a square beyond its range is +inf, which makes that
    coordinate's step 0 (documented). mu averages g, so it stays in range, and
    is saturated only against a narrower dtype; the buffer is bounded through s
    (see :func:`scalars`)."""
    if not _factored.is_factored(new_nu):
        return _keeper(nu.dtype, key, saturated=False)(new_nu)
    new_leaves, treedef = _trees.flatten(new_nu)
    old_leaves = jax.tree.leaves(nu)
    keys = [None if key is None else _storage.mix(key, i) for i in range(len(new_leaves))]
    pairs = [
        _keeper(o.dtype, k, saturated=False)(x)
        for x, o, k in zip(new_leaves, old_leaves, keys, strict=True)
    ]
    return treedef.unflatten([x for x, _ in pairs]), treedef.unflatten([y for _, y in pairs])


def dtypes(
    opts: Options, g: Array, nu: Any, mu: Array | None, trace: Array | None
) -> tuple[jnp.dtype, jnp.dtype]:
    """(real, work): the dtypes a leaf's step is computed in (see ``_dtypes``)."""
    g_dtype = jnp.result_type(g)
    if opts.split_complex and jnp.issubdtype(g_dtype, jnp.complexfloating):
        g_dtype = _dtypes.real_dtype(g_dtype)  # split into real parts
    return _dtypes.compute_dtypes(g_dtype, [*jax.tree.leaves(nu), mu, trace])


def leaf_step(
    opts: Options,
    g: Array,
    p: Array | None,
    nu: Any,
    mu: Array | None,
    trace: Array | None,
    axes: tuple[int, int] | None,
    sc: Scalars,
    wd: Any,
    key: Array | None,
) -> tuple[Array, Any, Array | None, Array | None]:
    """One step for one leaf: (update, nu, mu, trace).

    ``axes`` are the factored axes of ``nu`` (None for a full second moment);
    ``sc`` the step's scalars in this leaf's dtypes (:func:`dtypes`); ``wd``
    is this leaf's weight decay (None for none); ``key`` is None unless the
    state is rounded stochastically."""
    out_dtype = jnp.result_type(g)
    split = opts.split_complex and jnp.iscomplexobj(g)
    if split:
        g = _dtypes.split_complex(g)
        p = None if p is None else _dtypes.split_complex(jnp.asarray(p))
    real, work = dtypes(opts, g, nu, mu, trace)

    keys: list[Array | None] = [None, None, None]
    if key is not None:
        keys = [_storage.mix(key, i) for i in range(3)]

    g = effective_gradient(opts, to_dtype(g, work), p, wd, real)
    new_nu, new_mu, finite = moments(opts, g, nu, mu, sc, axes, real)
    stored_nu, new_nu = _keep_nu(new_nu, nu, keys[0])
    stored_mu = None
    if new_mu is not None and mu is not None:
        stored_mu, new_mu = _keeper(mu.dtype, keys[1], saturated=True)(new_mu)
    nu_hat, mu_hat = debias(new_nu, new_mu, sc, axes)
    # |s| needs a clamp unless a full second moment bounds it (scalars()); one
    # stored in float16 can underflow to 0, which only the centered bound allows.
    full = axes is None and (sc.natural_any_storage or jnp.dtype(nu.dtype) != jnp.float16)
    s = normalise(opts, g, nu_hat, mu_hat, finite, sc, clamp=not (sc.natural and full))

    stored_trace = None
    if opts.scale_only:
        update = s
    else:
        keep = _keeper(trace.dtype, keys[2], saturated=True) if trace is not None else None
        update, stored_trace = momentum_step(opts, s, trace, sc, keep)  # type: ignore[arg-type]
    decoupled = wd is not None and opts.weight_decay_mode == "decoupled" and not opts.scale_only
    if decoupled:
        assert p is not None and sc.lr is not None
        update = _weight_decay.decoupled(update, jnp.asarray(p), sc.lr, wd, real)

    # A step beyond the range of the gradient's dtype (float16 tops out at
    # 65504) saturates at its largest finite value instead of becoming Inf.
    # In the computation's own dtype the bounds of scalars() already hold,
    # unless a decay term or a momentum known only at run time is added.
    narrower = jnp.finfo(out_dtype).bits < jnp.finfo(work).bits
    if narrower or decoupled or sc.momentum_unbounded:
        update = _storage.saturate(update, out_dtype if not split else real)
    if split:
        update = _dtypes.merge_complex(update, out_dtype)
    return to_dtype(update, out_dtype), stored_nu, stored_mu, stored_trace
