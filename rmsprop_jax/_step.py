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

Every stage is elementwise (the factored average aside) and left to XLA to
fuse. The numbers come in one :class:`~rmsprop_jax._numbers.Numbers` pytree,
made once per step; each stage casts what it reads to the leaf's dtypes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from rmsprop_jax import (
    _blockwise,
    _dtypes,
    _factored,
    _quantized,
    _storage,
    _trees,
    _weight_decay,
)
from rmsprop_jax._config import Options
from rmsprop_jax._numbers import Numbers

Array = jax.Array


def to_dtype(x: Array, dtype: jnp.dtype) -> Array:
    """``x`` in ``dtype``, with no op where it already is."""
    return x if x.dtype == dtype else jax.lax.convert_element_type(x, dtype)


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


safe_sqrt = _sqrt


def abs_sq(x: Array) -> Array:
    """:math:`|x|^2`, real for complex ``x``."""
    if jnp.iscomplexobj(x):
        return jax.lax.real(jax.lax.mul(x, jax.lax.conj(x)))
    return jax.lax.mul(x, x)


# --------------------------------------------------------------------------
# The stages.


def effective_gradient(
    opts: Options, g: Array, p: Array | None, mask: Array | None, wd: Array | None
) -> Array:
    r""":math:`g \leftarrow -g` if maximize; :math:`g \leftarrow g + \lambda p` if coupled."""
    if opts.maximize:
        g = jax.lax.neg(g)
    if p is not None and opts.weight_decay_mode == "coupled":
        assert wd is not None
        g = _weight_decay.coupled(g, p, mask, wd)
    return g


def _decayed(decay: Array | None, known: bool, x: Array) -> Array | None:
    r""":math:`\rho x`; None where the decay is 0. Where it is known only at run
    time, 0 * inf (a square that overflowed earlier) is taken as 0."""
    if decay is None:
        return None
    if not known:
        return jnp.where(decay > 0, jax.lax.mul(decay, x), 0)
    return jax.lax.mul(decay, x)


def moments(
    opts: Options,
    g: Array,
    nu: Any,
    mu: Array | None,
    n: Numbers,
    axes: tuple[int, int] | None,
    real: jnp.dtype,
) -> tuple[Any, Array | None, Array | None]:
    r"""(nu, mu, finite): :math:`\nu \leftarrow \rho\nu + (1-\rho)|g|^2` (or its factors);
    :math:`\mu \leftarrow \rho\mu + (1-\rho)g` when centered; for factored
    leaves, where :math:`|g|^2` is finite (see ``_factored.update``)."""
    finite = None
    decay = None if n.decay is None else to_dtype(n.decay, real)
    one_minus_decay = to_dtype(n.one_minus_decay, real)
    if axes is not None:
        row, col, rebuild = _factored.unpack(nu, axes)
        row, col, finite = _factored.update(g, row, col, axes, decay, one_minus_decay, real)
        new_nu: Any = rebuild(row, col)
    else:
        new_nu = jax.lax.mul(one_minus_decay, abs_sq(g))
        decayed = _decayed(decay, opts.decay_known, to_dtype(nu, real))
        if decayed is not None:
            new_nu = jax.lax.add(new_nu, decayed)
    new_mu = None
    if opts.centered:
        assert mu is not None
        work = g.dtype
        new_mu = jax.lax.mul(to_dtype(n.one_minus_decay, work), g)
        decay_w = None if n.decay is None else to_dtype(n.decay, work)
        decayed = _decayed(decay_w, opts.decay_known, to_dtype(mu, work))
        if decayed is not None:
            new_mu = jax.lax.add(new_mu, decayed)
    return new_nu, new_mu, finite


def debias(
    nu: Any, mu: Array | None, n: Numbers, axes: tuple[int, int] | None, real: jnp.dtype
) -> tuple[Any, Array | None]:
    r""":math:`\hat\nu = \nu / (1 - \rho^t)`, :math:`\hat\mu = \mu / (1 - \rho^t)`
    with bias correction, else the averages themselves. A factored estimate is
    kept as its two factors, :math:`\hat\nu_{ij} = x_i y_j` (``_factored.scales``)."""
    correction = None if n.correction is None else to_dtype(n.correction, real)
    nu_hat: Any
    if axes is not None:
        row, col, _ = _factored.unpack(nu, axes)
        nu_hat = _factored.scales(row, col, axes[0], correction)
    else:
        nu_hat = nu if correction is None else jax.lax.div(nu, correction)
    mu_hat = mu
    if n.correction is not None and mu is not None:
        mu_hat = jax.lax.div(mu, to_dtype(n.correction, mu.dtype))
    return nu_hat, mu_hat


def normalise(
    opts: Options,
    g: Array,
    nu_hat: Any,
    mu_hat: Array | None,
    finite: Array | None,
    n: Numbers,
    clamp: bool,
) -> Array:
    r""":math:`s = g / d`, :math:`d = \sqrt{v + \epsilon}` or :math:`\sqrt{v} + \epsilon`,
    with :math:`v = \max(\hat\nu - |\hat\mu|^2, 0)` when centered, else :math:`\hat\nu`.

    A factored :math:`\hat\nu_{ij} = x_i y_j` comes as its factors: with eps
    outside the root, :math:`\sqrt{\hat\nu_{ij}} = \sqrt{x_i}\sqrt{y_j}` takes
    its roots of the factors, so each element costs a multiply and a divide;
    with eps inside, :math:`v = x_i y_j` is formed per element.

    Where :math:`d = 0` (only with ``eps == 0`` and no history) :math:`s = 0`,
    not 0/0; where a square overflowed, :math:`s = 0` (a full :math:`\nu` is inf
    there, which gives it; a factored one says so through ``finite``); and, with
    ``clamp``, :math:`|s|` is bounded so that later products stay finite."""
    work = g.dtype
    root = None  # sqrt(v), where it is had without a root per element
    if isinstance(nu_hat, tuple):
        x, y = nu_hat
        real = x.dtype
        if opts.eps_in_sqrt:
            v = jax.lax.mul(x, y)
        else:
            root = jax.lax.mul(_sqrt(x), _sqrt(y))
    else:
        real = nu_hat.dtype
        v = nu_hat
    if opts.centered:
        assert mu_hat is not None
        # v = nu - min(mu^2, nu) is max(nu - mu^2, 0) to the last bit, in one
        # op: a rounded difference of b <= a is never below 0, so a variance
        # that would round below zero is 0 and the root stays real. mu^2 is
        # first bounded by the largest finite value, so that where a square
        # overflowed (nu = inf) v stays inf and the step is 0, as documented,
        # rather than inf - inf = NaN.
        largest = real.type(jnp.finfo(real).max)
        mu2 = jax.lax.min(abs_sq(mu_hat), largest)
        v = jax.lax.sub(nu_hat, jax.lax.min(mu2, nu_hat))
    eps = to_dtype(n.eps, real)
    # With eps inside the root, d = sqrt(v + eps) (or its reciprocal) is formed below.
    d = None if opts.eps_in_sqrt else jax.lax.add(_sqrt(v) if root is None else root, eps)
    if opts.eps_guard:
        # d == 0 only with eps == 0 and a zero history: s = 0 there, not 0/0.
        # The inner `where` keeps the discarded branch finite for gradients.
        d = _sqrt(v + eps) if d is None else d
        positive = d > 0
        s = jnp.where(positive, g / jnp.where(positive, d, 1).astype(work), 0)
    elif d is None:
        s = jax.lax.mul(g, to_dtype(jax.lax.rsqrt(jax.lax.add(v, eps)), work))  # as optax does
    else:
        s = jax.lax.div(g, to_dtype(d, work))
    if finite is not None:
        s = jnp.where(finite, s, 0)
    if not clamp:
        return s
    s_max = to_dtype(n.s_max, real)
    if jnp.iscomplexobj(s):
        return _storage.saturate_to(s, s_max)
    # Scalar bounds (JAX broadcasts them when lowering). They are outside
    # differentiation (stop_gradient in _numbers), so meta-gradients pass.
    return jax.lax.clamp(jax.lax.neg(s_max), s, s_max)


def momentum_step(
    opts: Options, s: Array, trace: Array | None, n: Numbers, keep: Callable[[Array], Any] | None
) -> tuple[Array, Array | None]:
    r"""(update, stored buffer). The update is minus the step.

    With ``lr_in_momentum``: :math:`b \leftarrow m b + \eta s`, step :math:`= b`
    (Nesterov: :math:`\eta s + m b`). Without: :math:`b \leftarrow m b + s`, step
    :math:`= \eta b` (Nesterov: :math:`\eta (s + m b)`). No momentum: :math:`\eta s`.

    The buffer is *stored with the update's sign*, :math:`-b`, as optax's
    ``trace`` holds it: the update is then the stored buffer itself, and the
    state holds the same numbers as optax's. ``keep`` stores the new buffer and
    returns (stored, the value to go on with)."""
    lax = jax.lax
    assert n.lr is not None
    lr, neg_lr = to_dtype(n.lr, s.dtype), to_dtype(lax.neg(n.lr), s.dtype)
    if not opts.momentum:
        return lax.mul(neg_lr, s), None
    assert n.momentum is not None and trace is not None and keep is not None
    m = to_dtype(n.momentum, s.dtype)
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
    place instead of keeping the old one for a second pass."""

    def keep(x: Array) -> tuple[Array, Array]:
        stored = _storage.store(x, dtype, key, saturated)
        if jnp.finfo(dtype).bits < jnp.finfo(x.dtype).bits:
            return stored, to_dtype(stored, x.dtype)
        return stored, x

    return keep


def _keep_nu(new_nu: Any, nu: Any, key: Array | None) -> tuple[Any, Any]:
    """Stores nu (each factor of a factored nu) in the old storage dtypes.

    A full nu is not saturated: a square beyond its range is +inf, which makes
    that coordinate's step 0 (documented). The factors of a factored nu are
    averages, bounded by the computation's largest value, and saturated
    against a narrower storage dtype, so that they stay finite (an inf factor
    would make the estimate inf / inf). mu averages g, so it stays in range,
    and is saturated only against a narrower dtype; the buffer is bounded
    through s (see ``_config``)."""
    if not _factored.is_factored(new_nu):
        return _keeper(nu.dtype, key, saturated=False)(new_nu)
    new_leaves, treedef = _trees.flatten(new_nu)
    old_leaves = jax.tree.leaves(nu)
    keys = [None if key is None else _storage.mix(key, i) for i in range(len(new_leaves))]
    pairs = [
        _keeper(o.dtype, k, saturated=True)(x)
        for x, o, k in zip(new_leaves, old_leaves, keys, strict=True)
    ]
    return treedef.unflatten([x for x, _ in pairs]), treedef.unflatten([y for _, y in pairs])


def dtypes(
    opts: Options, g: Any, nu: Any, mu: Any | None, trace: Any | None
) -> tuple[jnp.dtype, jnp.dtype]:
    """(real, work): the dtypes a leaf's step is computed in (see ``_dtypes``)."""
    g_dtype = jnp.dtype(g.dtype)
    if opts.split_complex and jnp.issubdtype(g_dtype, jnp.complexfloating):
        g_dtype = _dtypes.real_dtype(g_dtype)  # split into real parts
    # 8-bit state is computed with in float32 (the stand-in's dtype).
    f32 = jax.ShapeDtypeStruct((), jnp.float32)
    stored = [
        f32 if _quantized.is_quantized(x) else x
        for x in (*jax.tree.leaves(nu, is_leaf=_quantized.is_quantized), mu, trace)
    ]
    return _dtypes.compute_dtypes(g_dtype, stored)


def _load(x: Any, fmt: Any, kind: str, complex_dtype: jnp.dtype | None) -> Any:
    """A stored state leaf as an array to compute with: 8-bit leaves dequantized
    (to float32; a complex mean's parts merged into ``complex_dtype``)."""
    if x is None or not _quantized.is_quantized(x):
        return x
    values = _quantized.load(x, kind, fmt.block_size)
    return values if complex_dtype is None else _dtypes.merge_complex(values, complex_dtype)


def _quantizer(
    old: Any, fmt: Any, kind: str, key: Array | None, split: bool, scales: Array | None = None
) -> Callable[[Array], Any]:
    """Stores a new state value in the 8-bit format of ``old``; returns (stored,
    the value the step goes on with: the unrounded one). ``scales`` are the new
    blocks' scales (see :func:`_scales`); None: from the new values."""

    def keep(x: Array) -> tuple[Any, Array]:
        parts = _dtypes.split_complex(x) if split else x
        bits = None if key is None else _storage.round_bits(key, parts.shape)
        return _quantized.store(parts, old, kind, fmt.block_size, bits, scales), x

    return keep


# A bound on |s| that the momentum buffer's scale may use: beyond it the
# buffer's scale would leave too few of the signed map's binades for its values.
_S_LIMIT_FOR_SCALES = 256.0
# Room for float32 rounding between a bound and the values it bounds.
_ROUNDING_ROOM = 1.0 + 2.0**-20


def _scales(
    opts: Options,
    n: Numbers,
    g: Array,
    stored: tuple[Any, Any, Any],
    mu: Array | None,
    full: bool,
    nearest: bool,
    real: jnp.dtype,
) -> dict[str, Array]:
    r"""The new 8-bit blocks' scales, each from one reduction over inputs of
    the step (the gradient, the old codes and scales), never over the new
    values: on XLA:CPU a reduction of values the step also writes makes it
    write them to memory as float32 first, and a reduction whose input has an
    integer or bit operation runs element by element. Each reduction reads
    its inputs in blocks through ``_quantized.blocks_to_reduce``.

    With :math:`g` the effective gradient and :math:`B` the largest value an
    old block can hold:

    - :math:`\nu` rounded to nearest: each block's largest new value, by the
      step's own :func:`moments` (and :func:`_variance_kept` when centered)
      evaluated on the old values decoded by float arithmetic
      (``_blockwise.decode_for_reduction``, within about :math:`10^{-6}`;
      an element above the top of the map by that much is stored as the top
      code). Round-to-nearest needs the scale to move with the block's
      largest value: that re-rounds every element at every step, and without
      it slow averages stall (measured; see docs/low_precision.md).
    - :math:`\nu` rounded stochastically: the bound
      :math:`\max_j \rho B + (1-\rho) g_j^2`; centered (the variance kept),
      :math:`\max_j \rho B + \rho(1-\rho)(|g_j| + M)^2`, :math:`M` the
      largest :math:`|\mu|` the old mean's block holds.
    - :math:`\mu`: :math:`\max_j \rho B + (1-\rho) |g_j|`, and the momentum
      buffer: :math:`m B + |\eta| S` (:math:`m B + S` with the learning rate
      outside), :math:`S` the static bound on :math:`|s|` of a full second
      moment, where it is small enough to be useful. A signed average does
      not stall to nearest under such bounds (measured), so both roundings
      use them.

    A field missing from the result (complex gradients; a buffer with no
    static bound; a centered mean cut into other blocks) takes its scales
    from its new values."""
    if jnp.iscomplexobj(g):
        return {}
    nu, mu_stored, trace = stored
    # Through a barrier with this leaf's state: the numbers, and a 1 that
    # multiplies the reductions' constants, are then this leaf's own (see
    # _blockwise.decode_for_reduction).
    n, nu, mu_stored, one = jax.lax.optimization_barrier((n, nu, mu_stored, jnp.float32(1)))
    f32 = jnp.float32
    decay = f32(0) if n.decay is None else to_dtype(n.decay, f32)
    out: dict[str, Array] = {}
    if _quantized.is_quantized(nu):
        block = opts.nu_dtype.block_size
        view = lambda x: _quantized.blocks_to_reduce(x, nu, block)
        gb, old = view(g), _quantized.scales_of(nu)
        mu_old = None  # the old mean in nu's blocks, where centered
        if opts.centered and _quantized.is_quantized(mu_stored):
            if opts.mu_dtype.block_size == block:
                codes, scales = _quantized.codes_of(mu_stored), _quantized.scales_of(mu_stored)
                decoded = _blockwise.decode_for_reduction(view(codes), "signed", one)
                mu_old = jax.lax.mul(decoded, scales[..., None])
        elif opts.centered and mu is not None:
            mu_old = view(mu)
        if opts.centered and mu_old is None:
            pass  # a mean cut into other blocks: nu's scales come from its new values
        elif nearest:
            decoded = _blockwise.decode_for_reduction(view(_quantized.codes_of(nu)), "nu", one)
            nu_old = jax.lax.mul(decoded, old[..., None])
            if mu_old is not None:  # the slot holds the variance (see _variance_kept)
                nu_old = jax.lax.add(nu_old, to_dtype(abs_sq(mu_old), f32))
                mu_old = to_dtype(mu_old, g.dtype)
            new_nu, new_mu, _ = moments(opts, gb, to_dtype(nu_old, real), mu_old, n, None, real)
            if mu_old is not None:
                assert new_mu is not None
                new_nu = _variance_kept(new_nu, new_mu)
            largest = _blockwise.block_max(to_dtype(new_nu, f32))
            out["nu"] = _blockwise.scales_from_absmax(largest, _blockwise.code_map("nu"))
        elif mu_old is None:
            out["nu"] = _blockwise.ema_scales(old, to_dtype(gb, f32), decay, "nu", squared=True)
        else:
            if _quantized.is_quantized(mu_stored):
                m_max = _quantized.scales_of(mu_stored) * f32(_quantized.TOP["signed"])
            else:  # a mean in full precision is finite
                m_max = _blockwise.block_max(jnp.abs(to_dtype(mu_old, f32)))
            top = f32(_quantized.TOP["nu"])
            c = decay * (1 - decay) * f32(_ROUNDING_ROOM) / top
            # max_j (|g_j| + M)^2 is (max_j |g_j| + M)^2: one plain reduction,
            # the rest per block, behind a barrier (as in ema_scales).
            largest_g = _blockwise.block_max(jnp.abs(to_dtype(gb, f32)))
            r = jax.lax.optimization_barrier(largest_g) + m_max
            v = decay * f32(_ROUNDING_ROOM) * old + c * (r * r) + f32(2.0**-126)
            out["nu"] = jnp.minimum(v, _quantized.LARGEST_SCALE["nu"])
    if _quantized.is_quantized(mu_stored):
        gb = _quantized.blocks_to_reduce(g, mu_stored, opts.mu_dtype.block_size)
        out["mu"] = _blockwise.ema_scales(
            _quantized.scales_of(mu_stored),
            to_dtype(gb, f32),
            decay,
            "signed",
            squared=False,
        )
    if _quantized.is_quantized(trace):
        clamp = not (opts.s_bound and full)
        if not clamp and opts.s_bound is not None and opts.s_bound <= _S_LIMIT_FOR_SCALES:
            assert n.momentum is not None and n.lr is not None
            m = to_dtype(n.momentum, f32)
            step = f32(opts.s_bound / _quantized.TOP["signed"])
            if opts.lr_in_momentum:
                step = jnp.abs(to_dtype(n.lr, f32)) * step
            scale = (m * _quantized.scales_of(trace) + step) * f32(_ROUNDING_ROOM)
            out["trace"] = jnp.minimum(scale, _quantized.LARGEST_SCALE["signed"])
    return out


def _variance_kept(nu: Array, mu: Array) -> Array:
    r"""What a centered 8-bit state stores in place of :math:`\nu`: the variance
    :math:`v = \nu - |\mu|^2 \ge 0`, whose moving average obeys
    :math:`v \leftarrow \rho v + \rho(1-\rho)|g - \mu|^2` exactly.

    The step divides by :math:`v`. Stored as :math:`\nu`, 8-bit rounding of
    :math:`\nu` (a few percent) would be amplified by :math:`\nu / v` in the
    difference, and a :math:`\nu` rounded below :math:`|\mu|^2` would make
    :math:`v = 0` and the step :math:`g/\epsilon`; stored as :math:`v`, the
    rounding error is relative to :math:`v` itself, and the subtraction is
    made in float32. Loading adds :math:`|\mu|^2` back."""
    return jax.lax.max(jax.lax.sub(nu, to_dtype(abs_sq(mu), nu.dtype)), jnp.zeros((), nu.dtype))


def _unless_out_of_range(
    ok: Array | None, keep: Callable[[Array], Any], old: Any
) -> Callable[[Array], Any]:
    """``keep``, except that where a number given at run time is out of range
    (``ok`` False) the old state is stored instead, and the step goes on
    with it (the update is zeroed at the end).

    The step then goes on with exactly what is stored (read back where the
    storage is narrower): XLA writes the new state once and the update's loop
    reads it, instead of recomputing it from the old state that the store
    overwrites in place, which needs a copy of the donated state first
    (measured, float32 state on a 2048 x 4096 leaf with a learning-rate
    schedule: 13 ms a step against 3 ms). 8-bit state goes on with its
    unrounded value, as without run-time numbers."""
    if ok is None:
        return keep

    def guarded(x: Array) -> tuple[Any, Any]:
        stored, value = keep(x)
        stored = jax.tree.map(lambda a, b: jnp.where(ok, a, b), stored, old)
        if not _quantized.is_quantized(stored):
            value = jax.tree.map(lambda a, v: to_dtype(a, v.dtype), stored, value)
        return stored, value

    return guarded


def _complex_parts(x: Any, g: Array, split: bool) -> bool:
    """Whether an 8-bit mean or buffer holds a complex value's parts (shape (..., 2))."""
    return x is not None and _quantized.is_quantized(x) and jnp.iscomplexobj(g) and not split


def leaf_step(
    opts: Options, axes: tuple[int, int] | None, *args: Any
) -> tuple[Array, Any, Array | None, Array | None]:
    """One step for one leaf: (update, nu, mu, trace); see :func:`_leaf_step`.

    With an 8-bit momentum buffer, the buffer's new codes are computed by a
    second evaluation of the same step on the same inputs, passed through an
    optimization barrier. The update and the new codes are two loops, and
    both need the normalised gradient :math:`s`; from one evaluation, XLA
    computes :math:`s` (a root per element, which it will not duplicate into
    two loops) once and writes it to memory as a float32 temporary of the
    whole leaf. Two evaluations give each loop its own, with the same numbers
    (measured on a leaf of 8M elements: 25 ms a step with the temporary,
    15.5 ms without; docs/performance.md)."""
    update, new_nu, new_mu, new_trace = _leaf_step(opts, axes, *args)
    trace = args[6]  # args: n, g, p, mask, nu, mu, trace, key (as _leaf_step's)
    if new_trace is not None and _quantized.is_quantized(trace):
        *_, new_trace = _leaf_step(opts, axes, *jax.lax.optimization_barrier(args))
    return update, new_nu, new_mu, new_trace


def _leaf_step(
    opts: Options,
    axes: tuple[int, int] | None,
    n: Numbers,
    g: Array,
    p: Array | None,
    mask: Array | None,
    nu: Any,
    mu: Array | None,
    trace: Array | None,
    key: Array | None,
) -> tuple[Array, Any, Array | None, Array | None]:
    """One step for one leaf: (update, nu, mu, trace).

    ``axes`` are the factored axes of ``nu`` (None for a full second moment);
    ``p`` is the parameter where this leaf decays (else None) and ``mask`` its
    per-element weight-decay mask (None: every element); ``key`` is None
    unless the state is rounded stochastically.

    With 8-bit state, the new blocks' scales come from reductions over the
    inputs (:func:`_scales`). A block where a new value is not finite (a
    square beyond float32's range) gets the largest scale: telling such
    blocks apart at run time would need a ``lax.cond`` on a predicate over the
    whole leaf, an all-reduce under sharding; see docs/low_precision.md."""
    out_dtype = jnp.result_type(g)
    split = opts.split_complex and jnp.iscomplexobj(g)
    if split:  # the gradient, the parameter and its mask, split alike (a 0-d mask broadcasts)
        g = _dtypes.split_complex(g)
        p = None if p is None else _dtypes.split_complex(jnp.asarray(p))
        mask = mask if mask is None or jnp.ndim(mask) == 0 else _dtypes.split_complex(mask)
    # 8-bit state is computed with in float32 and stored again at the end.
    stored_in = (nu, mu, trace)
    cplx = _dtypes.complex_of(jnp.dtype(jnp.float32))
    mu_parts, trace_parts = (_complex_parts(x, g, split) for x in (mu, trace))
    nu = _load(nu, opts.nu_dtype, "nu", None)
    mu = _load(mu, opts.mu_dtype, "signed", cplx if mu_parts else None)
    trace = _load(trace, opts.mu_dtype, "signed", cplx if trace_parts else None)
    # Centered, an 8-bit nu holds the variance nu - |mu|^2 (see _variance_kept).
    variance_kept = opts.centered and _quantized.is_quantized(stored_in[0])
    if variance_kept:
        assert mu is not None
        nu = jax.lax.add(nu, to_dtype(abs_sq(mu), nu.dtype))
    real, work = dtypes(opts, g, nu, mu, trace)

    keys: list[Array | None] = [None, None, None]
    if key is not None:
        keys = [_storage.mix(key, i) for i in range(3)]

    p = None if p is None else jnp.asarray(p)
    g = effective_gradient(opts, to_dtype(g, work), p, mask, n.wd)
    bounds: dict[str, Array] = {}
    if any(_quantized.is_quantized(x) for x in stored_in):
        mu_values = None if _quantized.is_quantized(stored_in[1]) else mu
        bounds = _scales(opts, n, g, stored_in, mu_values, axes is None, key is None, real)
    new_nu, new_mu, finite = moments(opts, g, nu, mu, n, axes, real)
    ok = n.ok  # False where a number given at run time is out of range
    if _quantized.is_quantized(stored_in[0]):
        keep_nu = _quantizer(stored_in[0], opts.nu_dtype, "nu", keys[0], False, bounds.get("nu"))
        keep_nu = _unless_out_of_range(ok, keep_nu, stored_in[0])
        if variance_kept:
            assert new_mu is not None
            stored_nu, _ = keep_nu(_variance_kept(new_nu, new_mu))
        else:
            stored_nu, new_nu = keep_nu(new_nu)
    else:
        keep_full = lambda x: _keep_nu(x, nu, keys[0])
        stored_nu, new_nu = _unless_out_of_range(ok, keep_full, stored_in[0])(new_nu)
    stored_mu = None
    if new_mu is not None and mu is not None:
        if _quantized.is_quantized(stored_in[1]):
            keep_mu = _quantizer(
                stored_in[1], opts.mu_dtype, "signed", keys[1], mu_parts, bounds.get("mu")
            )
        else:
            keep_mu = _keeper(mu.dtype, keys[1], saturated=True)
        stored_mu, new_mu = _unless_out_of_range(ok, keep_mu, stored_in[1])(new_mu)
    nu_hat, mu_hat = debias(new_nu, new_mu, n, axes, real)
    # |s| needs a clamp unless a full second moment bounds it, or eps does
    # (_config._facts); one stored in float16 can underflow to 0, which only the
    # bound from eps allows.
    full = axes is None and (opts.centered or jnp.dtype(nu.dtype) != jnp.float16)
    s_bound = opts.s_bound if opts.s_bound is not None and full else opts.eps_s_bound
    s = normalise(opts, g, nu_hat, mu_hat, finite, n, clamp=s_bound is None)

    stored_trace = None
    if opts.scale_only:
        update = s
    else:
        keep = None
        if _quantized.is_quantized(stored_in[2]):
            keep = _quantizer(
                stored_in[2], opts.mu_dtype, "signed", keys[2], trace_parts, bounds.get("trace")
            )
        elif trace is not None:
            # Saturated unless the static bounds keep it within its dtype (_config._facts).
            gain, largest = opts.buffer_gain, float(jnp.finfo(trace.dtype).max)
            within = s_bound is not None and gain is not None and 2 * gain * s_bound <= largest
            keep = _keeper(trace.dtype, keys[2], saturated=not within)
        keep = None if keep is None else _unless_out_of_range(ok, keep, stored_in[2])
        update, stored_trace = momentum_step(opts, s, trace, n, keep)
    decoupled = p is not None and opts.weight_decay_mode == "decoupled"
    if decoupled:
        assert p is not None and n.lr is not None and n.wd is not None
        update = _weight_decay.decoupled(update, p, mask, n.lr, n.wd, real)

    # A step beyond the range of the gradient's dtype (float16 tops out at
    # 65504) saturates at its largest finite value instead of becoming Inf.
    # In the computation's own dtype the bounds of _config already hold,
    # unless a decay term or a momentum known only at run time is added.
    narrower = jnp.finfo(out_dtype).bits < jnp.finfo(work).bits
    if narrower or decoupled or opts.momentum_unbounded:
        update = _storage.saturate(update, out_dtype if not split else real)
    if ok is not None:  # a run-time number out of range: no step (the state was kept above)
        update = jnp.where(ok, update, jnp.zeros((), update.dtype))
    if split:
        update = _dtypes.merge_complex(update, out_dtype)
    return to_dtype(update, out_dtype), stored_nu, stored_mu, stored_trace
