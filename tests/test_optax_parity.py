"""Drop-in agreement with optax and jax.example_libraries.optimizers."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from configs import OPTAX_CONFIGS, OPTAX_SCHEDULE, SCHEDULE
from helpers import (
    gradient_sequence,
    lockstep,
    make_tree,
    standard_promotion,
    to_jax,
    train,
)
from jax.example_libraries import optimizers

import rmsprop_jax

STEPS = 30


def compare_updates(ours, theirs, params, grads_seq, rtol=1e-6, atol=1e-7):
    """Feeds both the same gradients and parameters; compares every step's updates."""

    def check(step, got, want):
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            assert a.dtype == b.dtype
            # Where the peer divides 0 by 0 (eps == 0, zero gradient history),
            # this library gives a zero step instead of its NaN.
            nan = np.isnan(np.asarray(b))
            assert np.all(np.asarray(a)[nan] == 0)
            np.testing.assert_allclose(
                np.where(nan, 0, a),
                np.where(nan, 0, b),
                rtol=rtol,
                atol=atol,
                err_msg=f"step {step}",
            )

    return lockstep(ours, theirs, params, grads_seq, check)


@pytest.mark.parametrize("name", sorted(OPTAX_CONFIGS))
def test_rmsprop_matches_optax(name):
    kw = OPTAX_CONFIGS[name]
    tree = make_tree()
    params = to_jax(tree, jnp.float32)
    s1, s2 = compare_updates(
        rmsprop_jax.rmsprop(**kw), optax.rmsprop(**kw), params, gradient_sequence(tree, STEPS)
    )
    # The second moment, and the momentum buffer (which holds the update's
    # sign, as optax's trace does), are the same arrays as optax's.
    get = optax.tree_utils.tree_get
    for field in ("nu", "trace"):
        ours, theirs = getattr(s1, field), get(s2, field)
        assert (ours is None) == (theirs is None), field
        for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7, err_msg=field)


# The centered cells with decay 0 or eps 0 are left out: decay 0 makes the
# centered variance g^2 - g^2, exactly 0, so both sides return rounding noise
# (optax unclamped, possibly NaN), and with eps 0 a tiny variance is divided
# into g. This library's behaviour there is tested in test_numerics.py.
GRID = [
    (decay, eps, eps_in_sqrt, bias_correction, centered)
    for decay in (0.0, 0.5, 0.9, 0.999)
    for eps in (0.0, 1e-8, 1e-3, 1.0)
    for eps_in_sqrt in (True, False)
    for bias_correction in (False, True)
    for centered in (False, True)
    if not (centered and (decay == 0.0 or eps == 0.0))
]


@pytest.mark.parametrize(("decay", "eps", "eps_in_sqrt", "bias_correction", "centered"), GRID)
def test_scale_by_rms_matches_optax_grid(decay, eps, eps_in_sqrt, bias_correction, centered):
    kw = dict(decay=decay, eps=eps, eps_in_sqrt=eps_in_sqrt, bias_correction=bias_correction)
    peer = optax.scale_by_stddev(**kw) if centered else optax.scale_by_rms(**kw)
    tree = make_tree()
    compare_updates(
        rmsprop_jax.scale_by_rms(**kw, centered=centered),
        peer,
        to_jax(tree, jnp.float32),
        gradient_sequence(tree, 12),
    )


@pytest.mark.parametrize("initial_scale", [0.0, 1.0])
def test_scale_by_rms_initial_scale_matches_optax(initial_scale):
    tree = make_tree()
    compare_updates(
        rmsprop_jax.scale_by_rms(initial_scale=initial_scale),
        optax.scale_by_rms(initial_scale=initial_scale),
        to_jax(tree, jnp.float32),
        gradient_sequence(tree, STEPS),
    )


def test_matches_optax_with_complex_parameters():
    tree = make_tree(complex_leaf=True)
    for kw in (dict(learning_rate=0.01), dict(learning_rate=0.01, centered=True, momentum=0.9)):
        compare_updates(
            rmsprop_jax.rmsprop(**kw),
            optax.rmsprop(**kw),
            to_jax(tree, jnp.float32),
            gradient_sequence(tree, STEPS),
        )


def test_matches_optax_in_float64(x64):
    tree = make_tree()
    kw = dict(learning_rate=SCHEDULE, centered=True, momentum=0.9, bias_correction=True)
    compare_updates(
        rmsprop_jax.rmsprop(**kw),
        optax.rmsprop(**kw),
        to_jax(tree, jnp.float64),
        gradient_sequence(tree, STEPS),
        rtol=1e-13,
        atol=0,
    )


def test_matches_optax_with_an_optax_schedule():
    tree = make_tree()
    kw = dict(learning_rate=OPTAX_SCHEDULE, momentum=0.9, centered=True)
    with standard_promotion():  # optax's schedule mixes int and float
        compare_updates(
            rmsprop_jax.rmsprop(**kw),
            optax.rmsprop(**kw),
            to_jax(tree, jnp.float32),
            gradient_sequence(tree, STEPS),
        )


def _example_libraries_run(opt_triple, params, grads_seq):
    init, update, get_params = opt_triple
    out = []
    with standard_promotion():
        state = init(params)
        for i, g in enumerate(grads_seq):
            state = update(i, g, state)
            out.append(get_params(state))
    return out


@pytest.mark.parametrize("momentum", [None, 0.9])
@pytest.mark.parametrize("schedule", [False, True])
def test_matches_jax_example_libraries(momentum, schedule):
    lr = optimizers.inverse_time_decay(0.05, 5, 0.5) if schedule else 0.01
    if momentum is None:
        theirs = optimizers.rmsprop(lr, gamma=0.9, eps=1e-8)
    else:
        theirs = optimizers.rmsprop_momentum(lr, gamma=0.9, eps=1e-8, momentum=momentum)
    tree = make_tree()
    params = to_jax(tree, jnp.float32)
    grads = [to_jax(g, jnp.float32) for g in gradient_sequence(tree, STEPS)]
    want = _example_libraries_run(theirs, params, grads)
    opt = rmsprop_jax.rmsprop(lr, decay=0.9, eps=1e-8, momentum=momentum)
    # The peer's schedule mixes int and float, so it needs standard promotion.
    got = train(opt, params, grads, jit=False, promotion="standard").params
    for step, (a, b) in enumerate(zip(got, want, strict=True), start=1):
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6, err_msg=f"step {step}")
