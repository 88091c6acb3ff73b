"""``reset_state``: the state of the masked parameters made new, everything else
kept bit for bit, through the optax wrappers an rmsprop_jax transform sits in.

Which state leaf belongs to which parameter is read here from the leaf's path
(every per-parameter leaf has the parameter's key in its path; counts and
hyperparameters have none), independently of how ``reset_state`` finds it.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import standard_promotion

import rmsprop_jax

PARAMS = {
    "body": {"w": jnp.full((130, 140), 0.5), "b": jnp.full((140,), 0.25)},
    "head": jnp.full((140, 3), -0.5),
}


def grads(t):
    return jax.tree.map(lambda p: jnp.cos(p * (t + 1)) + 0.1 * t, PARAMS)


OPTIMIZERS = {
    "centered_momentum": lambda: rmsprop_jax.rmsprop(0.1, centered=True, momentum=0.9),
    "factored": lambda: rmsprop_jax.rmsprop(
        0.1, momentum=0.9, factored=True, min_dim_size_to_factor=128
    ),
    "chain": lambda: optax.chain(
        optax.clip_by_global_norm(1.0),
        rmsprop_jax.scale_by_rms(centered=True),
        optax.trace(0.9),
        optax.scale_by_learning_rate(0.1),
    ),
    "inject_hyperparams": lambda: optax.inject_hyperparams(rmsprop_jax.rmsprop)(
        learning_rate=0.1, momentum=0.9
    ),
    "multi_steps": lambda: optax.MultiSteps(rmsprop_jax.rmsprop(0.1, momentum=0.9), 3),
    "masked": lambda: optax.masked(
        rmsprop_jax.rmsprop(0.1, momentum=0.9), lambda p: jax.tree.map(lambda x: x.ndim == 2, p)
    ),
    "presets_keras_clipped": lambda: rmsprop_jax.presets.keras(momentum=0.9, clipnorm=1.0),
}


def trained(opt, steps=4):
    state = opt.init(PARAMS)
    update = jax.jit(opt.update)
    with standard_promotion():  # optax's MultiSteps mixes dtypes
        for t in range(steps):  # 4 steps: MultiSteps has taken one, and accumulates another
            _, state = update(grads(t), state, PARAMS)
    return state


def by_path(tree):
    return {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def same_bits(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def check_reset(opt, state, new, reset_keys):
    """Leaves under a reset key are init's; every other leaf is the old one, bit for bit."""
    old, now, fresh = by_path(state), by_path(new), by_path(opt.init(PARAMS))
    assert jax.tree.structure(new) == jax.tree.structure(state)
    assert now.keys() == old.keys()
    changed = 0
    for path, x in now.items():
        if any(f"['{key}']" in path for key in reset_keys):
            assert same_bits(x, fresh[path]), f"{path} is not init's"
            changed += not same_bits(old[path], fresh[path])
        else:
            assert same_bits(x, old[path]), f"{path} changed"
    return changed


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize(
    "mask",
    [
        {"body": {"w": False, "b": False}, "head": True},  # a bool per leaf
        {"body": False, "head": True},  # a prefix
        lambda p: {"body": False, "head": True},  # a function of the parameters
    ],
    ids=["per_leaf", "prefix", "callable"],
)
def test_reset_state_resets_exactly_the_masked_parameters(name, mask):
    opt = OPTIMIZERS[name]()
    state = trained(opt)
    new = rmsprop_jax.reset_state(opt, state, PARAMS, mask)
    changed = check_reset(opt, state, new, ["head"])
    assert changed > 0, "nothing of head's state had moved: the test would see nothing"
    for path, x in by_path(new).items():  # the step counts go on
        if "count" in path or "step" in path:
            assert same_bits(x, by_path(state)[path])


def test_reset_state_all_none_and_by_leaf_property():
    opt = OPTIMIZERS["centered_momentum"]()
    state = trained(opt)
    assert rmsprop_jax.reset_state(opt, state, PARAMS, False) is state
    everything = rmsprop_jax.reset_state(opt, state, PARAMS, True)
    check_reset(opt, state, everything, ["body", "head", "w", "b"])
    assert int(everything.count) == 4
    # The biases (one-dimensional leaves) only, chosen from the parameters.
    biases = rmsprop_jax.reset_state(
        opt, state, PARAMS, lambda p: jax.tree.map(lambda x: x.ndim == 1, p)
    )
    assert check_reset(opt, state, biases, ["b"]) > 0


def test_reset_state_under_jit_and_then_training_goes_on():
    opt = OPTIMIZERS["factored"]()
    state = trained(opt)
    mask = {"body": False, "head": True}
    eager = rmsprop_jax.reset_state(opt, state, PARAMS, mask)
    jitted = jax.jit(lambda s: rmsprop_jax.reset_state(opt, s, PARAMS, mask))(state)
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted), strict=True):
        assert same_bits(a, b)
    updates, after = opt.update(grads(5), eager, PARAMS)
    assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))
    assert int(after.count) == 5


def test_reset_state_errors():
    opt = OPTIMIZERS["centered_momentum"]()
    state = trained(opt, steps=1)
    with pytest.raises(ValueError, match=r"`mask` at \['head'\] must be a bool.*got 1"):
        rmsprop_jax.reset_state(opt, state, PARAMS, {"body": False, "head": 1})
    with pytest.raises(ValueError, match=r"structure is a prefix of `params`"):
        rmsprop_jax.reset_state(opt, state, PARAMS, {"body": False})
    other = rmsprop_jax.rmsprop(0.1)  # no mu, no trace: another structure
    with pytest.raises(ValueError, match=r"does not have the structure of `optimizer.init"):
        rmsprop_jax.reset_state(other, state, PARAMS, True)
