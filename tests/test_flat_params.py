"""Owning the parameters flat (examples/flat_params.py): the same training as per leaf."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import gradient_sequence, load_example, make_tree, to_jax, train
from jax.flatten_util import ravel_pytree

import rmsprop_jax

STEPS = 6


@pytest.mark.parametrize(
    "kw",
    [
        dict(centered=True, momentum=0.9),
        dict(momentum=0.9, nesterov=True, bias_correction=True),
        dict(weight_decay=0.1),
        dict(weight_decay=0.1, weight_decay_mode="coupled", eps_in_sqrt=False),
    ],
    ids=["centered+momentum", "nesterov+bias", "decoupled_wd", "coupled_wd"],
)
def test_flat_run_equals_per_leaf_run(kw):
    tree = to_jax(make_tree(0), jnp.float32)
    grads = [to_jax(g, jnp.float32) for g in gradient_sequence(make_tree(0), STEPS)]
    opt = rmsprop_jax.rmsprop(0.05, **kw)
    per_leaf = train(opt, tree, grads)
    flat0, _ = ravel_pytree(tree)
    flat = train(opt, flat0, [ravel_pytree(g)[0] for g in grads])
    for step, (a, b) in enumerate(zip(per_leaf.params, flat.params, strict=True)):
        np.testing.assert_allclose(
            np.asarray(ravel_pytree(a)[0]),
            np.asarray(b),
            rtol=2e-6,
            atol=1e-7,
            err_msg=f"step {step + 1}",
        )


def test_flat_mask_equals_per_leaf_mask():
    example = load_example("flat_params")
    tree = to_jax(make_tree(0), jnp.float32)
    grads = [to_jax(g, jnp.float32) for g in gradient_sequence(make_tree(0), STEPS)]
    mask = example.decay_mask(tree)
    per_leaf = train(
        rmsprop_jax.rmsprop(0.05, weight_decay=0.5, weight_decay_mask=mask), tree, grads
    )
    flat_opt = rmsprop_jax.rmsprop(
        0.05, weight_decay=0.5, weight_decay_mask=example.flat_mask(tree, mask)
    )
    flat = train(flat_opt, ravel_pytree(tree)[0], [ravel_pytree(g)[0] for g in grads])
    np.testing.assert_allclose(
        np.asarray(ravel_pytree(per_leaf.params[-1])[0]),
        np.asarray(flat.params[-1]),
        rtol=2e-6,
        atol=1e-7,
    )


def test_example_runs_and_matches():
    result = load_example("flat_params").main(
        [
            "--layers",
            "6",
            "--steps",
            "15",
            "--reps",
            "1",
            "--centered",
            "--momentum",
            "0.9",
            "--weight-decay",
            "0.01",
            "--mask-norms",
        ]
    )
    assert result["leaves"] == 6 * 4 + 2
    assert result["max_param_diff"] < 1e-5
    assert result["max_loss_diff"] < 1e-5
    assert np.mean(result["flat_losses"][-3:]) < result["flat_losses"][0]
    assert result["optimizer step"]["median"] > 0
    assert jax.tree.leaves(result)  # numbers, not arrays left on a device
