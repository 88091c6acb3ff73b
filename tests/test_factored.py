"""The factored second moment: which leaves are factored, and the state it saves.
(Its numbers are checked against the float64 reference in test_reference.py.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import ROOT, load_module

import rmsprop_jax

trees = load_module(ROOT / "benchmarks" / "trees.py", "benchmark_trees")


def _state_bytes(opt, shapes):
    params = {k: jax.ShapeDtypeStruct(s, jnp.float32) for k, s in shapes.items()}
    state = jax.eval_shape(opt.init, params)
    return sum(
        x.size * x.dtype.itemsize for x in jax.tree.leaves((state.nu, state.mu, state.trace))
    )


def test_resnet50_state_is_under_2_5_percent_of_the_parameters():
    shapes = trees.resnet50()
    param_bytes = 4 * trees.count(shapes)
    full = _state_bytes(rmsprop_jax.rmsprop(0.1), shapes)
    factored = _state_bytes(rmsprop_jax.rmsprop(0.1, factored=True), shapes)
    assert full == param_bytes
    assert factored < 0.025 * param_bytes, factored / param_bytes


def test_which_leaves_are_factored():
    params = {
        "big": jnp.ones((128, 256)),
        "small": jnp.ones((64, 256)),
        "vec": jnp.ones(512),
        "conv": jnp.ones((3, 3, 256, 128)),
        "tall": jnp.ones((1000, 2, 130)),
    }
    state = rmsprop_jax.rmsprop(0.1, factored=True).init(params)
    nu = state.nu
    assert isinstance(nu["big"], rmsprop_jax.FactoredNu)
    assert nu["big"].row.shape == (128, 1) and nu["big"].col.shape == (1, 256)
    assert not isinstance(nu["small"], rmsprop_jax.FactoredNu)  # 64 < 128
    assert nu["vec"].shape == (512,)
    assert nu["conv"].row.shape == (3, 3, 256, 1) and nu["conv"].col.shape == (3, 3, 1, 128)
    assert nu["tall"].row.shape == (1000, 2, 1) and nu["tall"].col.shape == (1, 2, 130)


def test_factored_rank_one_second_moment_is_exact():
    """When E[g^2] is an outer product, the factored estimate equals the full one."""
    rng = np.random.default_rng(0)
    r, c = rng.uniform(0.5, 2, size=(130, 1)), rng.uniform(0.5, 2, size=(1, 140))
    g = jnp.asarray(np.sqrt(r * c), jnp.float32)
    full = rmsprop_jax.scale_by_rms(decay=0.9)
    fact = rmsprop_jax.scale_by_rms(decay=0.9, factored=True)
    sf, ss = full.init(g), fact.init(g)
    for _ in range(5):
        uf, sf = full.update(g, sf)
        us, ss = fact.update(g, ss)
    np.testing.assert_allclose(us, uf, rtol=1e-5)


def test_factored_with_narrow_state_and_stochastic_rounding():
    params = {"w": jnp.ones((256, 128))}
    opt = rmsprop_jax.rmsprop(0.1, factored=True, nu_dtype=jnp.bfloat16, stochastic_rounding=True)
    state = opt.init(params)
    assert state.nu["w"].row.dtype == jnp.bfloat16
    updates, state = jax.jit(opt.update)({"w": jnp.full((256, 128), 0.5)}, state, params)
    assert np.all(np.isfinite(np.asarray(updates["w"])))
    assert state.nu["w"].col.dtype == jnp.bfloat16


def test_factored_state_inside_flax_nnx_optimizer():
    """nnx.Optimizer rewraps the state's NamedTuples; the factors must still be found."""
    from flax import nnx

    model = nnx.Linear(256, 128, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, rmsprop_jax.rmsprop(1e-2, factored=True), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, x):
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean(m(x) ** 2))(model)
        optimizer.update(model, grads)
        return loss

    x = jnp.ones((4, 256))
    with jax.numpy_dtype_promotion("standard"):
        losses = [float(step(model, optimizer, x)) for _ in range(5)]
    assert losses[-1] < losses[0]


def test_finite_square_is_the_square_being_finite():
    """|g| < 2**(maxexp / 2) holds exactly where g * g is finite (and not NaN)."""
    from rmsprop_jax import _factored

    edge = np.float32(2.0**64)
    below = np.nextafter(edge, np.float32(0))
    g = jnp.asarray(
        [0.0, 1.0, below, -below, edge, -edge, 3e38, np.inf, -np.inf, np.nan, 1e-45], jnp.float32
    )
    np.testing.assert_array_equal(_factored.finite_square(g), np.asarray(g * g) < np.inf)
    assert bool(_factored.finite_square(g)[2]) and not bool(_factored.finite_square(g)[4])


@pytest.mark.parametrize(
    "fill, nan",
    [
        (1.0, False),  # every square and sum finite: the sums, divided
        (1.0, True),  # a NaN gradient is left out, as an overflowed square is
        (1e30, False),  # these squares overflow and are left out
        (3e18, False),  # each square (9e36) is finite, but the sums over 64 and 48 terms are not
    ],
)
def test_means_leave_out_overflowed_squares_and_never_overflow(fill, nan):
    """Both paths of the means (sums divided where every sum is finite, else
    the masked mean) give the float64 means of the finite squares."""
    from rmsprop_jax import _factored

    rng = np.random.default_rng(0)
    g = rng.uniform(0.5, 1.5, size=(64, 48))
    g[3, :] *= fill
    g[:, 5] *= fill
    if nan:
        g[7, 9] = np.nan
    with np.errstate(over="ignore"):
        g = g.astype(np.float32)  # 1e60 is inf in float32
    row, col = jax.jit(lambda g: _factored.means(g, (0, 1), jnp.float32))(jnp.asarray(g))
    g2 = np.asarray(g, np.float64) ** 2
    g2 = np.where(g2 <= float(jnp.finfo(jnp.float32).max), g2, 0)  # NaN compares False
    np.testing.assert_allclose(row, np.mean(g2, axis=1, keepdims=True), rtol=1e-5)
    np.testing.assert_allclose(col, np.mean(g2, axis=0, keepdims=True), rtol=1e-5)


def test_factored_step_writes_nothing_the_size_of_the_leaf_but_its_outputs():
    """The two means are reductions straight from the gradient: XLA's CPU backend
    writes no leaf-sized square out to read it back (a temporary that took fresh
    memory every step, and most of the factored step's time)."""
    import re

    import optax

    version = tuple(int(re.match(r"\d+", x)[0]) for x in jax.__version__.split(".")[:3])
    if version < (0, 10, 2):
        pytest.skip(
            f"jax {jax.__version__}: its XLA writes one leaf-sized product here (checked "
            "on 0.8.0); the structure is recorded from 0.10.2, as the golden programs are"
        )

    opt = rmsprop_jax.scale_by_rms(factored=True)
    params = {"w": jnp.ones((256, 128))}

    def step(params, state, grads):
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    hlo = jax.jit(step, donate_argnums=(0, 1)).lower(params, opt.init(params), params)
    entry = hlo.compile().as_text().split("\nENTRY ")[1]
    leaf_sized = re.findall(r"^\s*(%\S+) = f32\[256,128\]\S* (\w[\w-]*)\(", entry, re.M)
    kinds = sorted(op for _, op in leaf_sized)
    assert kinds == ["fusion", "parameter", "parameter"], leaf_sized
