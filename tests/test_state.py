"""State layout, dtype policy, jit and vmap behaviour, and integration with optax."""

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from configs import CONFIGS
from helpers import gradient_sequence, make_tree, to_jax

import rmsprop_jax


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_state_is_arrays_with_named_fields(name):
    kw = CONFIGS[name]
    params = to_jax(make_tree(), jnp.float32)
    state = rmsprop_jax.rmsprop(**kw).init(params)
    assert isinstance(state, rmsprop_jax.RMSpropState)
    assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(state))
    assert state.count.dtype == jnp.int32 and state.count.shape == ()
    get = optax.tree_utils.tree_get
    is_factored = lambda x: isinstance(x, rmsprop_jax.FactoredNu)
    nu_def = jax.tree.structure(get(state, "nu"), is_leaf=is_factored)
    assert nu_def == jax.tree.structure(params)
    has_mu = kw.get("centered", False)
    has_trace = kw.get("momentum") is not None
    assert (get(state, "mu") is not None) == has_mu
    assert (get(state, "trace") is not None) == has_trace


def test_state_round_trips_through_flax_serialization():
    params = to_jax(make_tree(), jnp.float32)
    opt = rmsprop_jax.rmsprop(0.1, centered=True, momentum=0.9)
    state = opt.init(params)
    for g in gradient_sequence(make_tree(), 3):
        _, state = opt.update(to_jax(g, jnp.float32), state, params)
    blob = flax.serialization.to_bytes(state)
    restored = flax.serialization.from_bytes(opt.init(params), blob)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    ("param_dtype", "nu_dtype", "mu_dtype", "want_nu", "want_mu"),
    [
        (jnp.float32, None, None, jnp.float32, jnp.float32),
        (jnp.bfloat16, None, None, jnp.float32, jnp.float32),
        (jnp.float16, None, None, jnp.float32, jnp.float32),
        (jnp.complex64, None, None, jnp.float32, jnp.complex64),
        (jnp.float32, jnp.bfloat16, jnp.bfloat16, jnp.bfloat16, jnp.bfloat16),
        (jnp.bfloat16, jnp.bfloat16, None, jnp.bfloat16, jnp.float32),
    ],
)
def test_dtype_policy(param_dtype, nu_dtype, mu_dtype, want_nu, want_mu):
    params = {"w": jnp.ones((3, 2), param_dtype)}
    opt = rmsprop_jax.rmsprop(
        0.1, centered=True, momentum=0.9, nu_dtype=nu_dtype, mu_dtype=mu_dtype
    )
    state = opt.init(params)
    assert state.nu["w"].dtype == want_nu
    assert state.mu["w"].dtype == want_mu
    assert state.trace["w"].dtype == want_mu
    grads = {"w": jnp.full((3, 2), 0.5, param_dtype)}
    updates, state = jax.jit(opt.update)(grads, state, params)
    assert updates["w"].dtype == param_dtype  # updates come out in the gradient's dtype
    assert state.nu["w"].dtype == want_nu and state.mu["w"].dtype == want_mu


def test_float64_stays_float64(x64):
    params = {"w": jnp.ones(3, jnp.float64)}
    opt = rmsprop_jax.rmsprop(
        optax.linear_schedule(0.1, 0.01, 10),
        centered=True,
        momentum=0.9,
        bias_correction=True,
        weight_decay=0.1,
    )
    state = opt.init(params)
    updates, state = jax.jit(opt.update)({"w": jnp.ones(3, jnp.float64)}, state, params)
    assert {x.dtype for x in jax.tree.leaves((updates, state.nu, state.mu, state.trace))} == {
        jnp.dtype(jnp.float64)
    }


def test_no_recompilation_across_steps():
    traces = []
    opt = rmsprop_jax.rmsprop(
        optax.cosine_decay_schedule(0.1, 100),
        momentum=0.9,
        weight_decay=optax.constant_schedule(1e-4),
    )

    @jax.jit
    def step(params, state, grads):
        traces.append(1)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    params = to_jax(make_tree(), jnp.float32)
    state = opt.init(params)
    # optax's cosine schedule mixes int and float: it needs standard promotion.
    with jax.numpy_dtype_promotion("standard"):
        for g in gradient_sequence(make_tree(), 6):
            params, state = step(params, state, to_jax(g, jnp.float32))
    assert len(traces) == 1


def test_inject_hyperparams_under_jit_and_vmap():
    opt = optax.inject_hyperparams(rmsprop_jax.rmsprop)(learning_rate=0.1, decay=0.9, momentum=0.5)
    params = {"w": jnp.ones(3)}
    grads = {"w": jnp.array([1.0, -2.0, 0.5])}
    state = opt.init(params)
    traces = []

    @jax.jit
    def step(state, lr):
        traces.append(1)
        state.hyperparams["learning_rate"] = lr
        return opt.update(grads, state, params)

    for lr in (0.1, 0.01, 0.001):
        updates, _ = step(state, jnp.asarray(lr))
        np.testing.assert_allclose(
            updates["w"], -lr * np.sign([1, -2, 0.5]) / np.sqrt(0.1), rtol=1e-5
        )
    assert len(traces) == 1  # a new value of an injected hyperparameter does not recompile

    # vmap over a population of learning rates.
    def one(lr):
        o = optax.inject_hyperparams(rmsprop_jax.rmsprop)(learning_rate=lr, decay=0.9)
        return o.update(grads, o.init(params), params)[0]["w"]

    lrs = jnp.array([0.1, 0.2, 0.4])
    out = jax.jit(jax.vmap(one))(lrs)
    np.testing.assert_allclose(out, -lrs[:, None] * np.sign([1, -2, 0.5]) / np.sqrt(0.1), rtol=1e-5)


def test_apply_if_finite_leaves_state_unchanged():
    opt = optax.apply_if_finite(rmsprop_jax.rmsprop(0.1, momentum=0.9, centered=True), 3)
    params = {"w": jnp.ones(3)}
    state = opt.init(params)
    _, state = opt.update({"w": jnp.ones(3)}, state, params)
    before = state.inner_state
    updates, state = opt.update({"w": jnp.array([1.0, jnp.nan, jnp.inf])}, state, params)
    assert np.all(np.asarray(updates["w"]) == 0)
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(state.inner_state)):
        np.testing.assert_array_equal(a, b)
    updates, state = opt.update({"w": jnp.ones(3)}, state, params)
    assert np.all(np.isfinite(updates["w"])) and np.all(np.asarray(updates["w"]) < 0)


def test_chains_with_optax_transforms():
    opt = optax.chain(optax.clip_by_global_norm(1.0), rmsprop_jax.rmsprop(0.1))
    params = {"w": jnp.ones(3)}
    updates, _ = opt.update({"w": jnp.full(3, 100.0)}, opt.init(params), params)
    np.testing.assert_allclose(updates["w"], -0.1 / np.sqrt(0.1), rtol=1e-5)


def test_masked_and_none_leaves_keep_structure():
    params = {"a": jnp.ones(2), "b": None, "c": [jnp.ones(()), jnp.zeros((0, 3))]}
    opt = optax.masked(rmsprop_jax.rmsprop(0.1), {"a": True, "b": None, "c": [False, True]})
    state = opt.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = opt.update(grads, state, params)
    assert jax.tree.structure(updates) == jax.tree.structure(params)
    assert updates["c"][1].shape == (0, 3)


def test_empty_tree():
    opt = rmsprop_jax.rmsprop(0.1, momentum=0.9, weight_decay=0.1)
    state = opt.init({})
    updates, state = opt.update({}, state, {})
    assert updates == {} and int(state.count) == 1
