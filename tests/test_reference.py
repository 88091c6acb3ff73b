"""rmsprop_jax.rmsprop against the float64 NumPy reference of docs/algorithm.md."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from configs import CONFIGS
from helpers import (
    ReferenceTransform,
    gradient_sequence,
    lockstep,
    make_tree,
    relative_error,
    to_jax,
    train,
)
from reference import Reference

import rmsprop_jax

STEPS = 30


def reference_trajectory(kw, tree, grads_seq):
    """The reference's own float64 trajectory from ``tree`` (run under x64)."""
    return train(ReferenceTransform(Reference(**kw)), tree, grads_seq, jit=False).params


def lockstep_errors(kw, tree, grads_seq, dtype):
    """Runs the library and the reference side by side, the reference fed the
    library's own parameters each step (so parameter-storage rounding does not
    count); returns, per step, max |u - u_ref| / max |u_ref| over the tree."""
    params = to_jax(tree, dtype)
    errors = []

    def check(step, got, want):
        got, want = jax.tree.leaves(got), jax.tree.leaves(want)
        assert all(a.dtype == p.dtype for a, p in zip(got, jax.tree.leaves(params)))
        err = max(float(np.max(np.abs(np.asarray(a) - b), initial=0)) for a, b in zip(got, want))
        scale = max(float(np.max(np.abs(b), initial=0)) for b in want)
        errors.append(err / scale if scale else (0.0 if err == 0 else float("inf")))

    opt = rmsprop_jax.rmsprop(**kw)
    lockstep(
        opt,
        ReferenceTransform(Reference(**kw)),
        params,
        grads_seq,
        check,
        theirs_promotion="strict",
    )
    return errors


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_float64_matches_reference(name, x64):
    tree = make_tree()
    errors = lockstep_errors(CONFIGS[name], tree, gradient_sequence(tree, STEPS), jnp.float64)
    assert max(errors) < 1e-12, errors


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_float32_matches_reference(name):
    tree = make_tree()
    errors = lockstep_errors(CONFIGS[name], tree, gradient_sequence(tree, STEPS), jnp.float32)
    assert max(errors) < 5e-6, errors


@pytest.mark.parametrize("name", ["momentum", "centered", "coupled_wd", "decoupled_wd"])
def test_float64_trajectory_matches_reference(name, x64):
    """Free-running: the library's float64 parameters against the reference's."""
    kw = CONFIGS[name]
    tree = make_tree()
    grads = gradient_sequence(tree, STEPS)
    start = to_jax(tree, jnp.float64)
    got, _, _ = train(rmsprop_jax.rmsprop(**kw), start, grads)
    for a, b in zip(got, reference_trajectory(kw, tree, grads)):
        assert relative_error(a, start, b, tree) < 1e-12


@pytest.mark.parametrize("split_complex", [False, True])
@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"centered": True, "momentum": 0.9},
        {"weight_decay": 0.1, "weight_decay_mode": "coupled"},
    ],
)
def test_complex_parameters(split_complex, extra, x64):
    kw = dict(learning_rate=0.01, split_complex=split_complex, **extra)
    tree = make_tree(complex_leaf=True)
    grads = gradient_sequence(tree, STEPS)
    start = to_jax(tree, jnp.float64)
    got, _, state = train(rmsprop_jax.rmsprop(**kw), start, grads)
    want = reference_trajectory(kw, tree, grads)
    assert got[-1]["z"].dtype == jnp.complex128
    assert state.nu["z"].dtype == jnp.float64
    assert state.nu["z"].shape == ((4, 2) if split_complex else (4,))
    for a, b in zip(got, want):
        assert relative_error(a, start, b, tree) < 1e-12


def test_split_complex_differs_from_shared():
    """The two complex conventions are different algorithms, not a relabelling."""
    tree = make_tree(complex_leaf=True)
    grads = gradient_sequence(tree, 5)
    params = to_jax(tree, jnp.float32)
    a, _, _ = train(rmsprop_jax.rmsprop(0.01, split_complex=False), params, grads)
    b, _, _ = train(rmsprop_jax.rmsprop(0.01, split_complex=True), params, grads)
    assert not np.allclose(a[-1]["z"], b[-1]["z"], rtol=1e-4)
    np.testing.assert_array_equal(a[-1]["dense"]["w"], b[-1]["dense"]["w"])


@pytest.mark.parametrize("mode", ["decoupled", "coupled"])
@pytest.mark.parametrize("as_function", [False, True])
def test_weight_decay_mask(mode, as_function, x64):
    tree = make_tree()
    mask = jax.tree.map(lambda x: np.ndim(x) > 1, tree)  # decay matrices only
    grads = gradient_sequence(tree, STEPS)
    kw = dict(learning_rate=0.01, weight_decay=0.2, weight_decay_mode=mode, momentum=0.5)
    opt = rmsprop_jax.rmsprop(**kw, weight_decay_mask=(lambda p: mask) if as_function else mask)
    start = to_jax(tree, jnp.float64)
    got, _, _ = train(opt, start, grads)
    ref_kw = dict(kw, weight_decay_mask=jax.tree.leaves(mask))
    want = reference_trajectory(ref_kw, tree, grads)
    assert relative_error(got[-1], start, want[-1], tree) < 1e-12
    unmasked = reference_trajectory(kw, tree, grads)
    assert relative_error(got[-1], start, unmasked[-1], tree) > 1e-6  # the mask mattered


def test_array_valued_mask_matches_bool_mask(x64):
    tree = make_tree()
    grads = gradient_sequence(tree, 10)
    mask = jax.tree.map(lambda x: np.ndim(x) > 1, tree)
    array_mask = jax.tree.map(jnp.asarray, mask)
    kw = dict(learning_rate=0.01, weight_decay=0.2)
    a, _, _ = train(
        rmsprop_jax.rmsprop(**kw, weight_decay_mask=mask), to_jax(tree, jnp.float64), grads
    )
    b, _, _ = train(
        rmsprop_jax.rmsprop(**kw, weight_decay_mask=array_mask), to_jax(tree, jnp.float64), grads
    )
    for x, y in zip(jax.tree.leaves(a[-1]), jax.tree.leaves(b[-1])):
        np.testing.assert_array_equal(x, y)


def test_schedule_sees_count_before_increment():
    seen = []
    lr = lambda count: (seen.append(count), 0.1 * (count + 1).astype(jnp.float32))[1]
    opt = rmsprop_jax.rmsprop(lr, eps=0.0)
    params = {"w": jnp.ones(2)}
    state = opt.init(params)
    u1, state = opt.update({"w": jnp.ones(2)}, state, params)
    u2, state = opt.update({"w": jnp.ones(2)}, state, params)
    assert [int(c) for c in seen] == [0, 1]
    # step 1: -0.1 * 1/sqrt(0.1); step 2: -0.2 * 1/sqrt(0.19)
    np.testing.assert_allclose(u1["w"], -0.1 / np.sqrt(0.1), rtol=1e-6)
    np.testing.assert_allclose(u2["w"], -0.2 / np.sqrt(0.19), rtol=1e-6)


def test_lr_in_momentum_differs_under_schedule_only():
    tree = make_tree()
    grads = gradient_sequence(tree, 10)
    params = to_jax(tree, jnp.float32)
    for lr, should_differ in ((0.01, False), (optax.linear_schedule(0.1, 0.0, 10), True)):
        a, _, _ = train(rmsprop_jax.rmsprop(lr, momentum=0.9, lr_in_momentum=True), params, grads)
        b, _, _ = train(rmsprop_jax.rmsprop(lr, momentum=0.9, lr_in_momentum=False), params, grads)
        close = np.allclose(a[-1]["dense"]["w"], b[-1]["dense"]["w"], rtol=1e-5, atol=1e-7)
        assert close != should_differ
