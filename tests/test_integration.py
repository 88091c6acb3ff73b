"""Flax and Optax integration, checkpoints, and the examples (issue: ecosystem)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import load_example, train

import rmsprop_jax

# Flax, Keras-free examples and optax schedules are not ours: they run with
# standard promotion, as users run them.
pytestmark = pytest.mark.usefixtures("standard_promotion")


@pytest.fixture
def standard_promotion():
    with jax.numpy_dtype_promotion("standard"):
        yield


def _spec_fields(state):
    get = optax.tree_utils.tree_get
    inner = get(state, "nu")
    assert inner is not None
    return {name: get(state, name) for name in ("count", "nu", "mu", "trace")}


# --------------------------------------------------------------------------
# Examples, run briefly.


def test_linen_trainstate_example():
    result = load_example("flax_linen_trainstate").main(["--steps", "60"])
    assert np.mean(result["losses"][-10:]) < 0.5 * result["losses"][0]
    fields = _spec_fields(result["state"].opt_state)
    assert isinstance(result["state"].opt_state, rmsprop_jax.RMSpropState)
    assert int(fields["count"]) == 60 and fields["trace"] is not None and fields["mu"] is None


def test_nnx_optimizer_state_is_the_spec_state():
    from flax import nnx

    module = load_example("flax_nnx_classifier")
    model = module.MLP(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, rmsprop_jax.rmsprop(1e-3, momentum=0.9), wrt=nnx.Param)
    x = jnp.ones((4, 64))
    y = jnp.zeros(4, jnp.int32)
    module.train_step(model, optimizer, x, y)
    state = nnx.to_pure_dict(nnx.state(optimizer, nnx.optimizer.OptState))
    flat = jax.tree_util.tree_flatten_with_path(state)[0]
    names = {str(getattr(k, "key", getattr(k, "name", k))) for path, _ in flat for k in path}
    assert {"count", "nu", "trace"} <= names and "mu" not in names
    counts = [leaf for path, leaf in flat if "count" in str(path[-1])]
    assert [int(c) for c in counts] == [1]


def test_optax_composition_example_skips_non_finite_batches():
    result = load_example("optax_composition").main(["--steps", "60", "--inject-nan"])
    assert result["skipped"] == 20
    assert int(result["state"].total_notfinite) == 20
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(result["params"]))
    finite = [v for v in result["losses"] if np.isfinite(v)]
    assert np.mean(finite[-5:]) < np.mean(finite[:5])


def test_hyperparameter_sweep_is_one_program():
    result = load_example("hyperparameter_sweep").main(["--steps", "40"])
    assert result["final_loss"].shape == (8,)
    assert np.all(np.isfinite(result["final_loss"]))
    # The smallest learning rate has barely moved; a mid one has learned.
    assert result["final_loss"].min() < 0.8 * result["final_loss"][0]
    assert result["step_fn"]._cache_size() == 1  # one compilation for the population


def test_meta_learning_gradient_matches_finite_differences():
    module = load_example("meta_learning")
    task = module.make_task()
    for lr in (0.003, 0.02, 0.1):
        with jax.enable_x64(True):
            task64 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), task)
            _, grad = jax.value_and_grad(module.validation_loss)(
                jnp.asarray(lr, jnp.float64), task64
            )
            h = 1e-6 * lr
            fd = (
                module.validation_loss(lr + h, task64) - module.validation_loss(lr - h, task64)
            ) / (2 * h)
        np.testing.assert_allclose(grad, fd, rtol=1e-5)
    result = module.main(["--steps", "15"])
    assert result["history"][-1, 1] < result["history"][0, 1]


def test_demo_runs_briefly_and_writes_its_figure(tmp_path):
    result = load_example("demo").main(
        ["--steps", "40", "--drift-steps", "600", "--out", str(tmp_path)]
    )
    assert (tmp_path / "demo.png").stat().st_size > 10_000
    assert (tmp_path / "results.json").exists()
    assert set(result["classifier"]) == set(load_example("demo").OPTIMIZERS)
    for r in result["classifier"].values():
        assert r["losses"][-1] < r["losses"][0]


# --------------------------------------------------------------------------
# Optax integration pins.


def test_injected_hyperparameter_change_does_not_recompile():
    opt = optax.inject_hyperparams(rmsprop_jax.rmsprop)(learning_rate=0.1, decay=0.9, momentum=0.9)
    params = {"w": jnp.ones(3)}
    state = opt.init(params)
    step = jax.jit(lambda g, s, p: opt.update(g, s, p))
    for lr, decay in ((0.1, 0.9), (0.01, 0.99), (0.5, 0.5)):
        state.hyperparams["learning_rate"] = jnp.asarray(lr)
        state.hyperparams["decay"] = jnp.asarray(decay)
        _, state = step({"w": jnp.ones(3)}, state, params)
    assert step._cache_size() == 1


def test_multisteps_gives_zero_updates_between_real_steps():
    k = 3
    opt = optax.MultiSteps(rmsprop_jax.rmsprop(0.1, momentum=0.9), every_k_schedule=k)
    plain = rmsprop_jax.rmsprop(0.1, momentum=0.9)
    params = {"w": jnp.ones(4), "b": jnp.zeros(2)}
    state, plain_state = opt.init(params), plain.init(params)
    rng = np.random.default_rng(0)
    for i in range(2 * k):
        grads = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), params)
        updates, state = opt.update(grads, state, params)
        if (i + 1) % k:
            assert all(np.all(np.asarray(u) == 0) for u in jax.tree.leaves(updates))
        else:
            assert all(np.any(np.asarray(u) != 0) for u in jax.tree.leaves(updates))
    assert int(state.inner_opt_state.count) == 2
    del plain_state


def test_masked_and_multi_transform_keep_structure():
    params = {"enc": {"w": jnp.ones((2, 3)), "b": jnp.zeros(3)}, "head": jnp.ones(3)}
    labels = {"enc": {"w": "rms", "b": "rms"}, "head": "sgd"}
    opt = optax.multi_transform(
        {
            "rms": optax.masked(
                rmsprop_jax.rmsprop(0.1), lambda p: jax.tree.map(lambda x: x.ndim > 1, p)
            ),
            "sgd": optax.sgd(0.1),
        },
        labels,
    )
    state = opt.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, state = jax.jit(opt.update)(grads, state, params)
    assert jax.tree.structure(updates) == jax.tree.structure(params)
    np.testing.assert_allclose(updates["enc"]["w"], -0.1 / np.sqrt(0.1), rtol=1e-6)
    np.testing.assert_array_equal(updates["enc"]["b"], 1.0)  # masked out: passed through
    np.testing.assert_allclose(updates["head"], -0.1)


# --------------------------------------------------------------------------
# Checkpoints: resuming changes nothing, and a mismatched checkpoint is refused.


def _grads(n):
    rng = np.random.default_rng(0)
    return [
        {
            "w": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32),
            "b": jnp.asarray(rng.normal(size=3), jnp.float32),
        }
        for _ in range(n)
    ]


OPTIONS = dict(
    learning_rate=optax.cosine_decay_schedule(0.1, 20),
    momentum=0.9,
    centered=True,
    weight_decay=1e-3,
)


def _assert_bitwise_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("backend", ["flax", "orbax"])
def test_resume_from_checkpoint_is_bitwise_identical(backend, tmp_path):
    opt = rmsprop_jax.rmsprop(**OPTIONS)
    params0 = {"w": jnp.ones((4, 3)), "b": jnp.zeros(3)}
    grads = _grads(12)
    straight = train(opt, params0, grads)

    first = train(opt, params0, grads[:5])
    params, state = first.params[-1], first.state
    if backend == "flax":
        import flax.serialization

        blob = flax.serialization.to_bytes({"params": params, "opt_state": state})
        template = {"params": params0, "opt_state": opt.init(params0)}  # a fresh state object
        restored = flax.serialization.from_bytes(template, blob)
    else:
        import orbax.checkpoint as ocp

        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(tmp_path / "ckpt", {"params": params, "opt_state": state})
        checkpointer.wait_until_finished()
        template = {"params": params0, "opt_state": opt.init(params0)}
        restored = checkpointer.restore(tmp_path / "ckpt", template)
    rmsprop_jax.validate_state(restored["opt_state"], opt.init(params0))
    resumed = train(opt, restored["params"], grads[5:], state=restored["opt_state"])
    _assert_bitwise_equal(
        (resumed.params[-1], resumed.state), (straight.params[-1], straight.state)
    )


@pytest.mark.parametrize(
    ("saved_with", "restored_into", "mentions"),
    [
        (dict(), dict(centered=True), "mu"),
        (dict(centered=True, momentum=0.9), dict(), "mu"),
        (dict(), dict(nu_dtype=jnp.bfloat16), "bfloat16"),
        (dict(split_complex=True), dict(), "nu/z"),
    ],
)
def test_checkpoint_from_other_options_is_refused(saved_with, restored_into, mentions, tmp_path):
    import flax.serialization
    import orbax.checkpoint as ocp

    params = {"w": jnp.ones(3), "z": jnp.ones(2, jnp.complex64)}
    saved = rmsprop_jax.rmsprop(0.1, **saved_with).init(params)
    template = rmsprop_jax.rmsprop(0.1, **restored_into).init(params)
    # Straight from the bytes or the on-disk metadata, before restoring anything.
    with pytest.raises(ValueError, match=mentions):
        rmsprop_jax.validate_state(saved, template)
    blob = flax.serialization.to_bytes(saved)
    try:
        restored = flax.serialization.from_bytes(template, blob)
    except Exception:  # flax itself refuses some mismatches, obscurely
        restored = flax.serialization.msgpack_restore(blob)
    with pytest.raises(ValueError, match="different options"):
        rmsprop_jax.validate_state(restored, template)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "ckpt", saved)
    checkpointer.wait_until_finished()
    with pytest.raises(ValueError, match=mentions):
        rmsprop_jax.validate_state(checkpointer.metadata(tmp_path / "ckpt"), template)
