"""Properties that hold for every input: hypothesis draws the trees, gradients and options."""

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import rmsprop_jax

DTYPES = [np.float32, jnp.bfloat16, np.float16]


@st.composite
def trees(draw, dtype=None):
    """Nested dicts and lists of arrays (scalars and zero-size shapes included)."""
    dtype = dtype or draw(st.sampled_from(DTYPES))
    shapes = st.lists(
        hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4), min_size=1, max_size=4
    )
    leaves = [
        draw(hnp.arrays(np.float32, s, elements=st.floats(-10, 10, width=32))).astype(dtype)
        for s in draw(shapes)
    ]
    return {"a": leaves[0], "rest": leaves[1:]}


options = st.fixed_dictionaries(
    {},
    optional={
        "decay": st.sampled_from([0.0, 0.5, 0.9, 0.999]),
        "eps": st.sampled_from([0.0, 1e-8, 1e-3]),
        "eps_in_sqrt": st.booleans(),
        "centered": st.booleans(),
        "momentum": st.sampled_from([None, 0.0, 0.9]),
        "bias_correction": st.booleans(),
        "lr_in_momentum": st.booleans(),
        "weight_decay": st.sampled_from([0.0, 0.1]),
        "weight_decay_mode": st.sampled_from(["decoupled", "coupled"]),
        "maximize": st.booleans(),
    },
)


def _gradient_like(tree, scale):
    return jax.tree.map(
        lambda x: (np.sin(np.arange(x.size, dtype=np.float32) + 1).reshape(x.shape) * scale).astype(
            x.dtype
        ),
        tree,
    )


@given(params=trees(), kw=options, scale=st.sampled_from([0.0, 1e-3, 1.0, 100.0]))
def test_structure_dtype_and_finiteness(params, kw, scale):
    params = jax.tree.map(jnp.asarray, params)
    opt = rmsprop_jax.rmsprop(0.01, **kw)
    state = opt.init(params)
    grads = jax.tree.map(jnp.asarray, _gradient_like(params, scale))
    for _ in range(3):
        updates, state = opt.update(grads, state, params)
        assert jax.tree.structure(updates) == jax.tree.structure(params)
        for u, p in zip(jax.tree.leaves(updates), jax.tree.leaves(params)):
            assert u.dtype == p.dtype and u.shape == p.shape
            assert bool(jnp.all(jnp.isfinite(u)))
        assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(state))


@given(
    g=hnp.arrays(np.float32, 8, elements=st.floats(-100, 100, width=32)),
    centered=st.booleans(),
    eps_in_sqrt=st.booleans(),
    maximize=st.booleans(),
)
def test_step_opposes_the_gradient_without_momentum(g, centered, eps_in_sqrt, maximize):
    opt = rmsprop_jax.rmsprop(0.1, centered=centered, eps_in_sqrt=eps_in_sqrt, maximize=maximize)
    params = {"w": jnp.zeros(8)}
    state = opt.init(params)
    for k in range(3):
        grad = jnp.asarray(g * (k + 1))
        updates, state = opt.update({"w": grad}, state, params)
        want = np.sign(np.asarray(grad)) * (1 if maximize else -1)
        got = np.sign(updates["w"])
        # Never along the gradient; exactly against it for normal-range values
        # (XLA flushes float32 subnormals such as 3e-41 to zero: a zero step).
        assert np.all((got == want) | (got == 0))
        normal = np.abs(np.asarray(grad)) >= np.finfo(np.float32).tiny
        np.testing.assert_array_equal(got[normal], want[normal])


@given(
    # Squares must stay in the normal range: XLA flushes subnormals to zero.
    g=hnp.arrays(
        np.float64,
        6,
        elements=st.one_of(st.just(0.0), st.floats(1e-150, 1e3), st.floats(-1e3, -1e-150)),
    ),
    decay=st.floats(0.0, 0.999),
    eps=st.floats(0.0, 1.0),
    initial_scale=st.floats(0.0, 2.0),
    eps_in_sqrt=st.booleans(),
    lr=st.floats(0.0, 1.0),
)
def test_first_step_closed_form(g, decay, eps, initial_scale, eps_in_sqrt, lr):
    with jax.enable_x64(True):
        opt = rmsprop_jax.rmsprop(
            lr, decay=decay, eps=eps, initial_scale=initial_scale, eps_in_sqrt=eps_in_sqrt
        )
        params = {"w": jnp.zeros(6, jnp.float64)}
        updates, _ = opt.update({"w": jnp.asarray(g)}, opt.init(params), params)
    # XLA flushes a subnormal product to zero, so does the reference: the
    # decayed initial scale is subnormal for an initial scale near the
    # smallest normal number (found by `make fuzz`: 0.5 * 2.2e-308).
    decayed = decay * initial_scale
    decayed = decayed if decayed >= np.finfo(np.float64).tiny else 0.0
    v = decayed + (1 - decay) * g**2
    d = np.sqrt(v + eps) if eps_in_sqrt else np.sqrt(v) + eps
    want = -lr * np.where(d > 0, g / np.where(d > 0, d, 1), 0)
    np.testing.assert_allclose(updates["w"], want, rtol=1e-12, atol=1e-300)


@given(
    scale=st.floats(1e-3, 1e3),
    centered=st.booleans(),
    momentum=st.sampled_from([None, 0.9]),
    seed=st.integers(0, 2**16),
)
def test_invariant_to_gradient_scale_when_eps_is_zero(scale, centered, momentum, seed):
    rng = np.random.default_rng(seed)
    gs = rng.normal(size=(5, 7)).astype(np.float32)
    opt = rmsprop_jax.rmsprop(0.1, eps=0.0, centered=centered, momentum=momentum)

    def run(factor):
        params = {"w": jnp.zeros(7)}
        state = opt.init(params)
        out = []
        for g in gs:
            updates, state = opt.update({"w": jnp.asarray(g * np.float32(factor))}, state, params)
            out.append(np.asarray(updates["w"]))
        return np.stack(out)

    np.testing.assert_allclose(run(scale), run(1.0), rtol=2e-4 if centered else 1e-5, atol=1e-6)
