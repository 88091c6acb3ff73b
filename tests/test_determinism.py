"""Two runs with the same inputs and seed give bitwise-equal parameters and state."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import gradient_sequence, make_tree, to_jax, train

import rmsprop_jax

CONFIGS = [
    dict(learning_rate=0.01),
    dict(
        learning_rate=optax.cosine_decay_schedule(0.05, 20),
        centered=True,
        momentum=0.9,
        nesterov=True,
        weight_decay=1e-3,
        bias_correction=True,
    ),
    dict(
        learning_rate=0.01,
        momentum=0.9,
        nu_dtype=jnp.bfloat16,
        mu_dtype=jnp.bfloat16,
        stochastic_rounding=True,
        seed=1234,
    ),
]


def _run(kw, jit):
    opt = rmsprop_jax.rmsprop(**kw)
    tree = make_tree(complex_leaf=True)
    grads = [to_jax(g, jnp.float32) for g in gradient_sequence(tree, 15)]
    run = train(opt, to_jax(tree, jnp.float32), grads, jit=jit)
    return run.params[-1], run.state


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


@pytest.mark.parametrize("kw", CONFIGS)
@pytest.mark.parametrize("jit", [False, True])
def test_same_inputs_same_bits(kw, jit):
    with jax.numpy_dtype_promotion("standard"):  # optax's cosine schedule mixes dtypes
        a, b = _run(kw, jit), _run(kw, jit)
    for x, y in zip(_leaves(a), _leaves(b), strict=True):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(x, y)


def test_seed_changes_only_the_stochastic_rounding():
    kw = dict(CONFIGS[2])
    a = _run(kw, True)
    b = _run(dict(kw, seed=kw["seed"] + 1), True)
    assert any(not np.array_equal(x, y) for x, y in zip(_leaves(a[1]), _leaves(b[1])))
    plain = dict(kw, stochastic_rounding=False)
    c, d = _run(plain, True), _run(dict(plain, seed=99), True)
    for x, y in zip(_leaves(c), _leaves(d), strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("seed", [0, 2**31 - 1, 2**31, 2**32 - 1])
@pytest.mark.parametrize("x64", [False, True], ids=["x64 off", "x64 on"])
def test_every_32_bit_seed_in_both_modes(seed, x64):
    """Seeds up to 2**32 - 1 work with JAX's default 32-bit mode too; the same
    seed gives the same bits eagerly, under jit, and in either mode."""
    params = {"w": jnp.linspace(-1, 1, 64, dtype=jnp.bfloat16)}
    grads = {"w": jnp.linspace(0.5, -0.5, 64, dtype=jnp.bfloat16)}
    opt = optax.chain(
        rmsprop_jax.rmsprop(
            0.01,
            nu_dtype=jnp.bfloat16,
            stochastic_rounding=True,
            seed=seed,
            momentum=0.9,
            mu_dtype=jnp.bfloat16,
        ),
        rmsprop_jax.stochastic_param_rounding(seed=seed),
    )
    runs = []
    with jax.enable_x64(x64):
        for update in (opt.update, jax.jit(opt.update)):
            state, p = opt.init(params), params
            for _ in range(3):
                updates, state = update(grads, state, p)
                p = optax.apply_updates(p, updates)
            runs.append((p, state))
    for x, y in zip(_leaves(runs[0]), _leaves(runs[1]), strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(np.asarray(runs[0][0]["w"]), np.asarray(params["w"]))
