"""8-bit block-wise state (``blockwise_8bit``): layout, accuracy against float32
state in every combination of options, extremes, and the usage paths."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rmsprop_jax
from rmsprop_jax import _quantized, presets

EIGHT = rmsprop_jax.blockwise_8bit()
SMALL_BLOCKS = rmsprop_jax.blockwise_8bit(block_size=16, min_size=0)


def _params(seed=0, complex_leaf=False):
    rng = np.random.default_rng(seed)
    tree = {
        "w": jnp.asarray(rng.normal(size=(64, 96)), jnp.float32),  # 6144 >= min_size
        "conv": jnp.asarray(rng.normal(size=(3, 3, 32, 32)), jnp.float32),
        "b": jnp.asarray(rng.normal(size=(96,)), jnp.float32),  # small: float32 state
    }
    if complex_leaf:
        tree["z"] = jnp.asarray(rng.normal(size=(80, 64)) + 1j * rng.normal(size=(80, 64)))
        tree["z"] = tree["z"].astype(jnp.complex64)
    return tree


def _grads(params, steps, seed=1):
    """Gradients whose scale varies by coordinate (orders of magnitude within a
    block) and by step."""
    rng = np.random.default_rng(seed)
    out = []
    per_coord = jax.tree.map(lambda p: 10.0 ** rng.uniform(-3, 1, size=p.shape), params)
    for _t in range(steps):
        scale = 10.0 ** rng.uniform(-0.5, 0.5)

        def draw(p, c):
            g = rng.normal(size=p.shape) * c * scale
            if jnp.iscomplexobj(p):
                g = g + 1j * rng.normal(size=p.shape) * c * scale
            return jnp.asarray(g, p.dtype)

        out.append(jax.tree.map(draw, params, per_coord))
    return out


def _run(opt, params, grads):
    state = opt.init(params)
    step = jax.jit(opt.update)
    for g in grads:
        u, state = step(g, state, params)
        params = optax.apply_updates(params, u)
    return params, state


# --------------------------------------------------------------------------
# The format.


def test_arguments_are_checked():
    for bad in (0, -1, 2.5, True, "256", None):
        with pytest.raises(ValueError, match="`block_size` must be an int >= 1"):
            rmsprop_jax.blockwise_8bit(block_size=bad)
    with pytest.raises(ValueError, match="`min_size` must be an int >= 0"):
        rmsprop_jax.blockwise_8bit(min_size=-1)
    assert rmsprop_jax.blockwise_8bit() == rmsprop_jax.blockwise_8bit(256, 4096)
    assert hash(rmsprop_jax.blockwise_8bit(128)) == hash(rmsprop_jax.blockwise_8bit(128))
    with pytest.raises(ValueError, match=r"`nu_dtype` must be one of .*blockwise_8bit"):
        rmsprop_jax.rmsprop(0.1, nu_dtype=jnp.int8)


@pytest.mark.parametrize(
    "shape, k, blocks",
    [
        ((3, 3, 64, 64), 2, 16),  # the fewest trailing axes that hold whole blocks
        ((768, 3072), 1, 12),
        ((50257, 768), 1, 3),
        ((1000, 300), 0, 1172),  # no axis suffix divides: one padded row
        ((4096,), 0, 16),
    ],
)
def test_layout_unsharded(shape, k, blocks):
    assert _quantized.layout(shape, 256) == (k, blocks)
    state = rmsprop_jax.rmsprop(0.1, nu_dtype=EIGHT).init({"p": jnp.zeros(shape)})
    q = state.nu["p"]
    assert q.codes.shape == shape and q.codes.dtype == jnp.uint8
    assert q.scales.shape == (*shape[:k], blocks) and q.scales.dtype == jnp.float32
    size = math.prod(shape)
    assert (q.codes.nbytes + q.scales.nbytes) / size <= 1 + 4 / 256 + 4 * 2 / size


def test_small_leaves_keep_full_precision():
    params = {"small": jnp.zeros(4095), "big": jnp.zeros(4096), "h": jnp.zeros(5000, jnp.bfloat16)}
    state = rmsprop_jax.rmsprop(0.1, nu_dtype=EIGHT, mu_dtype=EIGHT, momentum=0.9).init(params)
    assert state.nu["small"].dtype == jnp.float32 and state.trace["small"].dtype == jnp.float32
    assert isinstance(state.nu["big"], rmsprop_jax.QuantizedArray)
    assert isinstance(state.trace["h"], rmsprop_jax.QuantizedArray)
    with jax.enable_x64(True):
        state = rmsprop_jax.rmsprop(0.1, nu_dtype=EIGHT).init({"d": jnp.zeros(10, jnp.float64)})
        assert state.nu["d"].dtype == jnp.float64


def test_initial_scale_is_stored_exactly():
    opt = presets.tensorflow_v1(0.1, nu_dtype=EIGHT)  # nu starts at one
    q = opt.init({"w": jnp.zeros((64, 64))}).nu["w"]
    values = _quantized.load(q, "nu", 256)
    np.testing.assert_array_equal(np.asarray(values), 1.0)


# --------------------------------------------------------------------------
# Accuracy against float32 state, option by option and in pairs.

CONFIGS = {
    "plain": dict(),
    "centered": dict(centered=True),
    "momentum": dict(momentum=0.9),
    "nesterov": dict(momentum=0.9, nesterov=True),
    "centered_momentum": dict(centered=True, momentum=0.9),
    "bias_correction": dict(bias_correction=True, momentum=0.5),
    "coupled_wd": dict(weight_decay=0.1, weight_decay_mode="coupled"),
    "decoupled_wd_mask": dict(
        weight_decay=0.1, weight_decay_mask={"w": True, "conv": False, "b": True}
    ),
    "eps_outside": dict(eps_in_sqrt=False, eps=1e-8, lr_in_momentum=False, momentum=0.9),
    "factored": dict(factored=True, momentum=0.9),
    "sr": dict(stochastic_rounding=True, seed=3, momentum=0.9, centered=True),
    "slow_decay": dict(decay=0.999, momentum=0.9),
}


def _relative_gap(a, b, start):
    """|a - b| over the distance travelled, worst leaf."""
    out = []
    for x, y, s in zip(jax.tree.leaves(a), jax.tree.leaves(b), jax.tree.leaves(start), strict=True):
        travelled = float(jnp.linalg.norm((y - s).ravel()))
        out.append(float(jnp.linalg.norm((x - y).ravel())) / max(travelled, 1e-30))
    return max(out)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_eight_bit_state_tracks_float32_state(name):
    kw = CONFIGS[name]
    params = _params()
    grads = _grads(params, 60)
    wd_mask = kw.get("weight_decay_mask")
    eight = rmsprop_jax.rmsprop(1e-3, nu_dtype=EIGHT, mu_dtype=EIGHT, **kw)
    full = rmsprop_jax.rmsprop(1e-3, **kw)
    p8, s8 = _run(eight, params, grads)
    p32, _ = _run(full, params, grads)
    for leaf in jax.tree.leaves(p8):
        assert np.all(np.isfinite(np.asarray(leaf)))
    gap = _relative_gap(p8, p32, params)
    assert gap < 0.1, gap
    # the gap is not zero: the state really is 8-bit
    assert gap > 0
    large = [x for x in jax.tree.leaves(s8.nu, is_leaf=_quantized.is_quantized)]
    assert any(isinstance(x, rmsprop_jax.QuantizedArray) for x in large) or kw.get("factored")
    del wd_mask


def test_split_complex_and_complex_means():
    params = _params(complex_leaf=True)
    grads = _grads(params, 40)
    for kw in (dict(split_complex=True, centered=True, momentum=0.9), dict(centered=True)):
        p8, s8 = _run(
            rmsprop_jax.rmsprop(1e-3, nu_dtype=EIGHT, mu_dtype=EIGHT, **kw), params, grads
        )
        p32, _ = _run(rmsprop_jax.rmsprop(1e-3, **kw), params, grads)
        shape = (80, 64, 2)  # real and imaginary parts side by side, in either mode
        assert s8.mu["z"].codes.shape == shape
        assert _relative_gap(p8, p32, params) < 0.1


def test_factored_leaves_keep_their_factors():
    params = _params()
    opt = rmsprop_jax.rmsprop(1e-3, factored=True, min_dim_size_to_factor=64, nu_dtype=EIGHT)
    state = opt.init(params)
    assert isinstance(state.nu["w"], rmsprop_jax.FactoredNu)  # 64 x 96: factored
    assert state.nu["w"].row.dtype == jnp.float32
    assert isinstance(state.nu["conv"], rmsprop_jax.QuantizedArray)  # 32 x 32 < 64: 8-bit


def test_presets_take_eight_bit_state():
    params = _params()
    grads = _grads(params, 30)
    for make in (
        lambda **kw: presets.pytorch(lr=1e-3, momentum=0.9, centered=True, **kw),
        lambda **kw: presets.keras(learning_rate=1e-3, momentum=0.5, **kw),
        lambda **kw: presets.tensorflow_v1(1e-3, momentum=0.9, **kw),
    ):
        p8, _ = _run(make(nu_dtype=EIGHT, mu_dtype=EIGHT), params, grads)
        p32, _ = _run(make(), params, grads)
        assert 0 < _relative_gap(p8, p32, params) < 0.1


# --------------------------------------------------------------------------
# Stochastic rounding of the codes.


def _slow_average(stochastic_rounding, steps=3000):
    """nu tracks E[g^2] with decay 0.999 from 0.5: to 4 for the first coordinate
    of each block of 16 (the block's largest), to 1 for the others. Per step a
    coordinate moves by about 0.1% of its value, far below half a code (1/16),
    so round-to-nearest cannot follow it."""
    opt = rmsprop_jax.scale_by_rms(
        decay=0.999,
        initial_scale=0.5,
        nu_dtype=SMALL_BLOCKS,
        stochastic_rounding=stochastic_rounding,
        seed=7,
    )
    params = jnp.zeros(4096)
    g = jnp.ones(4096).at[::16].set(2.0)

    def body(state, _):
        _, state = opt.update(g, state)
        return state, None

    state, _ = jax.jit(lambda s: jax.lax.scan(body, s, None, length=steps))(opt.init(params))
    values = np.asarray(_quantized.load(state.nu, "nu", 16), np.float64)
    return values[::16], np.delete(values, np.arange(0, 4096, 16))


def test_stochastic_rounding_keeps_a_slow_average_moving():
    top, rest = 4 - 3.5 * 0.999**3000, 1 - 0.5 * 0.999**3000
    sr_top, sr_rest = _slow_average(True)
    assert abs(sr_top.mean() / top - 1) < 0.01, sr_top.mean()  # the blocks' largest
    assert abs(sr_rest.mean() / rest - 1) < 0.01, sr_rest.mean()
    # Round-to-nearest: the others, within half a code of the largest at the
    # start, are rounded to it at every step and follow it up to about 4.
    _, nearest_rest = _slow_average(False)
    assert abs(nearest_rest.mean() / rest - 1) > 1.0, nearest_rest.mean()


# --------------------------------------------------------------------------
# Extremes: never NaN or Inf from finite input.


@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(eps=0.0),
        dict(decay=0.0, momentum=0.9, centered=True),
        dict(decay=0.999999, momentum=0.999999, stochastic_rounding=True),
    ],
)
def test_extreme_gradients_give_finite_steps(kw):
    big = float(jnp.finfo(jnp.float32).max) ** 0.5 * 4  # its square overflows
    g = np.zeros((2, 4096), np.float32)
    g[0, :8] = [big, -big, 1e-38, 1e-45, 0, 3e38, -3e38, 1.0]
    g[1] = np.random.default_rng(0).normal(size=4096) * 1e-20
    params = {"w": jnp.zeros((2, 4096))}
    opt = rmsprop_jax.rmsprop(0.1, nu_dtype=EIGHT, mu_dtype=EIGHT, **kw)
    state = opt.init(params)
    step = jax.jit(opt.update)
    for t in range(5):
        grads = {"w": jnp.asarray(g if t % 2 == 0 else np.zeros_like(g))}
        u, state = step(grads, state, params)
        assert np.all(np.isfinite(np.asarray(u["w"]))), (t, kw)
        for leaf in jax.tree.leaves(state):
            assert np.all(np.isfinite(np.asarray(leaf, np.float64))), (t, kw)


def test_an_overflowed_square_gives_no_step_there():
    big = float(jnp.finfo(jnp.float32).max) ** 0.5 * 4
    g = jnp.zeros((4096,)).at[0].set(big).at[1].set(1.0)
    opt = rmsprop_jax.rmsprop(0.1, nu_dtype=EIGHT)
    u, _ = opt.update({"w": g}, opt.init({"w": jnp.zeros(4096)}))
    assert float(u["w"][0]) == 0.0 and float(u["w"][1]) < 0


# --------------------------------------------------------------------------
# Usage paths.


def _opt(**kw):
    return rmsprop_jax.rmsprop(0.01, nu_dtype=EIGHT, mu_dtype=EIGHT, momentum=0.9, **kw)


def test_abstract_and_jitted_init_give_the_eager_layout():
    params = _params()
    opt = _opt(centered=True)
    eager = opt.init(params)
    shapes = lambda t: jax.tree.map(lambda x: (x.shape, jnp.dtype(x.dtype)), t)
    structs = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), params)
    assert shapes(opt.init(structs)) == shapes(eager)
    assert shapes(jax.eval_shape(opt.init, params)) == shapes(eager)
    jitted = jax.jit(opt.init)(params)
    assert shapes(jitted) == shapes(eager)
    for a, b in zip(jax.tree.leaves(jitted), jax.tree.leaves(eager), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_inject_hyperparams_and_scan_and_vmap():
    params = _params()
    grads = _grads(params, 5)
    injected = optax.inject_hyperparams(rmsprop_jax.rmsprop)(
        0.01, momentum=0.9, nu_dtype=EIGHT, mu_dtype=EIGHT
    )
    plain = _opt()
    a, _ = _run(injected, params, grads)
    b, _ = _run(plain, params, grads)
    # Injected numbers are known only at run time, so the buffer's blocks may
    # be scaled from their values rather than from a static bound: other codes
    # for the same numbers, the same run to within 8-bit rounding.
    assert _relative_gap(a, b, params) < 0.02

    # scan over the steps gives the loop's result
    stacked = jax.tree.map(lambda *g: jnp.stack(g), *grads)

    def body(carry, g):
        p, s = carry
        u, s = plain.update(g, s, p)
        return (optax.apply_updates(p, u), s), None

    (c, _), _ = jax.jit(lambda p, s: jax.lax.scan(body, (p, s), stacked))(
        params, plain.init(params)
    )
    for x, y in zip(jax.tree.leaves(c), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7)

    # vmap over a batch of independent runs: each equals its own run
    batch = jax.tree.map(lambda p: jnp.stack([p, 2 * p]), params)
    gbatch = jax.tree.map(lambda g: jnp.stack([g, g]), grads[0])
    states = jax.vmap(plain.init)(batch)
    u, _ = jax.vmap(plain.update)(gbatch, states, batch)
    u0, _ = plain.update(grads[0], plain.init(params), params)
    for x, y in zip(jax.tree.leaves(u), jax.tree.leaves(u0), strict=True):
        np.testing.assert_allclose(np.asarray(x[0]), np.asarray(y), rtol=1e-6, atol=1e-9)


def test_meta_gradient_through_eight_bit_state_is_finite():
    params = {"w": jnp.zeros((64, 64))}
    g = jnp.asarray(np.random.default_rng(0).normal(size=(64, 64)), jnp.float32)
    g = g.at[:3].set(0.0)  # rows that never see a gradient

    def loss(lr):
        opt = rmsprop_jax.rmsprop(lr, nu_dtype=EIGHT, mu_dtype=EIGHT, momentum=0.9)
        p, s = params, opt.init(params)
        for _ in range(3):
            u, s = opt.update({"w": g}, s, p)
            p = optax.apply_updates(p, u)
        return jnp.sum(p["w"] ** 2)

    value, grad = jax.value_and_grad(loss)(0.01)
    assert np.isfinite(float(grad)) and float(grad) > 0, (value, grad)


def test_export_of_the_step():
    params = _params()
    opt = _opt(centered=True, stochastic_rounding=True)
    state = opt.init(params)
    exported = jax.export.export(jax.jit(opt.update))(params, state, params)
    back = jax.export.deserialize(exported.serialize())
    u1, s1 = back.call(params, state, params)
    u2, s2 = jax.jit(opt.update)(params, state, params)
    for x, y in zip(jax.tree.leaves((u1, s1)), jax.tree.leaves((u2, s2)), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_a_state_of_another_format_is_refused():
    params = {"w": jnp.zeros((64, 64))}
    state = rmsprop_jax.rmsprop(0.1, nu_dtype=rmsprop_jax.blockwise_8bit(128)).init(params)
    with pytest.raises(ValueError, match="another `block_size`"):
        rmsprop_jax.rmsprop(0.1, nu_dtype=EIGHT).update(params, state)
    with pytest.raises(ValueError, match="stores that state as"):
        rmsprop_jax.rmsprop(0.1).update(params, state)
    template = rmsprop_jax.rmsprop(0.1, nu_dtype=EIGHT).init(params)
    with pytest.raises(ValueError, match="nu/w/scales"):
        rmsprop_jax.validate_state(state, template)
    f32 = rmsprop_jax.rmsprop(0.1).init(params)
    with pytest.raises(ValueError, match="does not match"):
        rmsprop_jax.validate_state(f32, template)


def test_orbax_round_trip(tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    params = _params()
    opt = _opt(centered=True)
    _, state = _run(opt, params, _grads(params, 3))
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(tmp_path / "s", state)
    with ocp.StandardCheckpointer() as ckpt:
        restored = ckpt.restore(tmp_path / "s", jax.eval_shape(opt.init, params))
    rmsprop_jax.validate_state(restored, opt.init(params))
    for x, y in zip(jax.tree.leaves(restored), jax.tree.leaves(state), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_nnx_optimizer():
    nnx = pytest.importorskip("flax.nnx")

    class Model(nnx.Module):
        def __init__(self, rngs):
            self.a = nnx.Linear(64, 96, rngs=rngs)
            self.b = nnx.Linear(96, 1, rngs=rngs)

        def __call__(self, x):
            return self.b(jax.nn.relu(self.a(x)))

    model = Model(nnx.Rngs(0))
    opt = nnx.Optimizer(model, _opt(centered=True), wrt=nnx.Param)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(32, 64)), jnp.float32)
    y = jnp.sum(x[:, :3], axis=1, keepdims=True)

    @nnx.jit
    def step(model, opt):
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
        opt.update(model, grads)
        return loss

    losses = [float(step(model, opt)) for _ in range(40)]
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("x64", [False, True])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32", "float64", "complex64"])
def test_every_parameter_dtype(dtype, x64):
    if dtype == "float64" and not x64:
        pytest.skip("float64 arrays need x64")
    with jax.enable_x64(x64):
        rng = np.random.default_rng(0)
        shape = (64, 80)
        p = rng.normal(size=shape) + (1j * rng.normal(size=shape) if dtype == "complex64" else 0)
        params = {"w": jnp.asarray(p, dtype)}
        opt = rmsprop_jax.rmsprop(0.01, momentum=0.9, centered=True, nu_dtype=EIGHT, mu_dtype=EIGHT)
        ref = rmsprop_jax.rmsprop(0.01, momentum=0.9, centered=True)
        state, rstate = opt.init(params), ref.init(params)
        assert isinstance(state.nu["w"], rmsprop_jax.QuantizedArray)
        step, rstep = jax.jit(opt.update), jax.jit(ref.update)
        total = rtotal = 0
        for t in range(4):
            g = {"w": jnp.asarray(p * (0.5 + t) * 1e-2, dtype)}
            u, state = step(g, state, params)
            r, rstate = rstep(g, rstate, params)
            assert u["w"].dtype == jnp.dtype(dtype)
            assert np.all(np.isfinite(np.asarray(u["w"], np.complex128)))
            total = total + np.asarray(u["w"], np.complex128)
            rtotal = rtotal + np.asarray(r["w"], np.complex128)
        gap = np.linalg.norm(total - rtotal) / np.linalg.norm(rtotal)
        assert gap < 0.1, gap


def test_reset_state_on_eight_bit_leaves():
    params = _params()
    opt = _opt(centered=True)
    _, state = _run(opt, params, _grads(params, 3))
    fresh = opt.init(params)
    reset = rmsprop_jax.reset_state(opt, state, params, {"w": True, "conv": False, "b": True})
    assert int(reset.count) == 3
    for field in ("nu", "mu", "trace"):
        for name in params:
            got, old, new = (getattr(s, field)[name] for s in (reset, state, fresh))
            want = new if name in ("w", "b") else old
            for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
                np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert isinstance(reset.nu["w"], rmsprop_jax.QuantizedArray)
