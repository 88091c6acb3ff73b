"""Weight-decay masks of every form and shape, against the float64 reference.

A mask entry is a bool for a whole leaf (Python, NumPy or a 0-d array) or a
boolean array of its parameter's shape; a complex parameter trained with
``split_complex=True`` has its mask split with it, so that an entry covers the
real and the imaginary part of its element. Any other shape is refused, naming
the leaf: no mask may change the shape of an update.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import ReferenceTransform, lockstep
from reference import Reference

import rmsprop_jax

SHAPES = [(), (2,), (3,), (4, 2), (2, 3, 2)]


def _params(dtype, complex_leaves):
    rng = np.random.default_rng(0)
    tree = {}
    for i, shape in enumerate(SHAPES):
        x = rng.normal(size=shape)
        if complex_leaves:
            x = x + 1j * rng.normal(size=shape)
        tree[f"p{i}"] = jnp.asarray(x, jnp.complex128 if dtype == jnp.float64 else jnp.complex64)
        if not complex_leaves:
            tree[f"p{i}"] = jnp.asarray(x, dtype)
    return tree


def _grads(params, steps):
    rng = np.random.default_rng(1)
    out = []
    for _ in range(steps):

        def draw(p):
            g = rng.normal(size=p.shape)
            if jnp.iscomplexobj(p):
                g = g + 1j * rng.normal(size=p.shape)
            return jnp.asarray(g, p.dtype)

        out.append(jax.tree.map(draw, params))
    return out


def _array_masks(params):
    rng = np.random.default_rng(2)
    return {k: jnp.asarray(rng.uniform(size=p.shape) < 0.5) for k, p in params.items()}


MASKS = {
    "python bools": lambda params: {k: i % 2 == 0 for i, k in enumerate(params)},
    "numpy bools": lambda params: {k: np.bool_(i % 2) for i, k in enumerate(params)},
    "0-d arrays": lambda params: {k: jnp.asarray(i % 2 == 1) for i, k in enumerate(params)},
    "arrays": _array_masks,
    "arrays from a function": lambda params: _array_masks,
}


def _entries(mask, params):
    """The reference's mask: one entry per leaf, in leaf order."""
    mask = mask(params) if callable(mask) else mask
    return [np.asarray(m) for m in jax.tree.leaves(mask)]


@pytest.mark.parametrize("mode", ["coupled", "decoupled"])
@pytest.mark.parametrize("form", sorted(MASKS))
@pytest.mark.parametrize("complex_leaves", [False, True], ids=["real", "complex"])
@pytest.mark.parametrize("split", [False, True], ids=["joint", "split"])
def test_mask_matches_reference(mode, form, complex_leaves, split, x64):
    params = _params(jnp.float64, complex_leaves)
    mask = MASKS[form](params)
    kw = dict(
        learning_rate=0.05,
        momentum=0.5,
        weight_decay=0.3,
        weight_decay_mode=mode,
        split_complex=split,
    )
    opt = rmsprop_jax.rmsprop(**kw, weight_decay_mask=mask)
    reference = ReferenceTransform(Reference(**kw, weight_decay_mask=_entries(mask, params)))

    def check(step, got, want):
        for a, b, p in zip(jax.tree.leaves(got), jax.tree.leaves(want), jax.tree.leaves(params)):
            assert a.shape == p.shape and a.dtype == p.dtype
            np.testing.assert_allclose(np.asarray(a), b, rtol=1e-12, atol=1e-14)

    lockstep(opt, reference, params, _grads(params, 5), check, theirs_promotion="strict")


def test_a_masked_element_of_a_split_complex_parameter_keeps_both_parts():
    """The example of the defect: element 0 decays (real and imaginary part),
    element 1 does not, in both modes; zero gradients isolate the decay term."""
    for mode in ("coupled", "decoupled"):
        opt = rmsprop_jax.rmsprop(
            0.1,
            split_complex=True,
            weight_decay=0.5,
            weight_decay_mode=mode,
            weight_decay_mask={"c": jnp.array([True, False])},
        )
        params = {"c": jnp.array([1 + 1j, 1 + 1j], jnp.complex64)}
        updates, _ = opt.update({"c": jnp.zeros(2, jnp.complex64)}, opt.init(params), params)
        u = np.asarray(updates["c"])
        assert u[0].real < 0 and u[0].imag < 0, (mode, u)
        assert u[1] == 0, (mode, u)


@pytest.mark.parametrize(
    "param_shape, mask_shape",
    [((3,), (3, 1)), ((3,), (1,)), ((3,), (1, 3)), ((4, 2), (2,)), ((4, 2), (4, 1)), ((), (1,))],
)
@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("kind", ["real", "complex"])
def test_mask_of_another_shape_is_refused_naming_the_leaf(param_shape, mask_shape, split, kind):
    dtype = jnp.complex64 if kind == "complex" else jnp.float32
    params = {"a": {"w": jnp.ones(param_shape, dtype)}}
    mask = {"a": {"w": jnp.ones(mask_shape, bool)}}
    opt = rmsprop_jax.rmsprop(0.1, weight_decay=0.1, weight_decay_mask=mask, split_complex=split)
    with pytest.raises(ValueError, match=r"`weight_decay_mask` at \['a'\]\['w'\] has shape"):
        opt.update(params, opt.init(params), params)


def test_split_mask_of_the_split_shape_is_refused():
    """The mask has its parameter's shape; the split shape (..., 2) is internal."""
    params = {"c": jnp.ones(2, jnp.complex64)}
    opt = rmsprop_jax.rmsprop(
        0.1, weight_decay=0.1, split_complex=True, weight_decay_mask={"c": jnp.ones((2, 2), bool)}
    )
    with pytest.raises(ValueError, match="has shape"):
        opt.update(params, opt.init(params), params)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("jit", [False, True])
def test_no_mask_changes_the_shape_of_an_update(shape, jit):
    params = {"w": jnp.ones(shape), "z": jnp.ones(shape, jnp.complex64)}
    for mask in (
        {"w": True, "z": False},
        {"w": jnp.asarray(True), "z": jnp.asarray(False)},
        jax.tree.map(lambda p: jnp.ones(p.shape, bool), params),
    ):
        for split in (False, True):
            opt = rmsprop_jax.rmsprop(
                0.1, weight_decay=0.1, weight_decay_mask=mask, split_complex=split
            )
            update = jax.jit(opt.update) if jit else opt.update
            updates, _ = update(params, opt.init(params), params)
            new = optax.apply_updates(params, updates)
            assert jax.tree.map(jnp.shape, new) == jax.tree.map(jnp.shape, params)


def test_prefix_mask_covers_a_subtree():
    params = {"body": {"w": jnp.ones(3), "b": jnp.ones(2)}, "head": jnp.ones(4)}
    opt = rmsprop_jax.rmsprop(
        0.1, weight_decay=0.5, weight_decay_mask={"body": False, "head": True}
    )
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = opt.update(zeros, opt.init(params), params)
    assert not np.any(np.asarray(updates["body"]["w"])) and not np.any(updates["body"]["b"])
    np.testing.assert_allclose(updates["head"], -0.1 * 0.5 * np.ones(4), rtol=1e-6)


def test_mask_under_jit_and_vmap():
    """An array mask inside a vmapped, jitted step masks each member alike."""
    params = {"w": jnp.ones((2, 3))}
    mask = {"w": jnp.array([[True, False, True], [False, False, True]])}
    opt = rmsprop_jax.rmsprop(0.1, weight_decay=0.5, weight_decay_mask=mask)
    state = opt.init(params)
    zeros = {"w": jnp.zeros((2, 3))}
    want, _ = opt.update(zeros, state, params)
    batched = jax.tree.map(lambda x: jnp.stack([x, x]), (zeros, state, params))
    got, _ = jax.jit(jax.vmap(opt.update))(*batched)
    np.testing.assert_array_equal(got["w"][0], want["w"])
    np.testing.assert_array_equal(got["w"][1], want["w"])
    assert np.count_nonzero(np.asarray(want["w"])) == 3
