"""The factored second moment: which leaves are factored, and the state it saves.
(Its numbers are checked against the float64 reference in test_reference.py.)"""

import jax
import jax.numpy as jnp
import numpy as np
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
