"""The recipes of ``examples/recipes.py`` (documented in ``docs/recipes.md``).

For each recipe: (a) it builds and runs jitted steps; (b) it makes the
original's update, compared step by step in float64 with the real library
(torch, for the PyTorch-based setups) or with a float64 NumPy implementation
written from the original's source (``tests/reference_originals.py``, or below
where that file has none), schedules included; (c) the features it relies on
behave. Agreement is the largest parameter difference divided by the largest
distance the original moved (``helpers.relative_error``).
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import reference_originals as originals
from helpers import (
    ROOT,
    gradient_sequence,
    load_example,
    make_tree,
    relative_error,
    to_jax,
    train,
)

from rmsprop_jax import presets

recipes = load_example("recipes")

STEPS = 10
TOL = 1e-9  # float64, relative to the distance moved


def _numpy(tree):
    return [np.asarray(x, np.float64) for x in jax.tree.leaves(tree)]


def assert_follows(got, want, start, tol=TOL):
    """``got``: our parameter trees after each step; ``want``: the original's
    parameter lists after each step; both from ``start``. Returns the worst error."""
    assert len(got) == len(want)
    start_leaves = _numpy(start)
    worst = 0.0
    for step, (ours, theirs) in enumerate(zip(got, want), start=1):
        err = relative_error(_numpy(ours), start_leaves, list(theirs), start_leaves)
        assert err < tol, f"step {step}: relative error {err:.3g} >= {tol:g}"
        worst = max(worst, err)
    return worst


def reference_trajectory(reference, start, grads_seq):
    """Steps a ``reference_originals`` object (lists of arrays) through the gradients."""
    reference.init(_numpy(start))
    out = []
    for grads in grads_seq:
        reference.step(_numpy(grads))
        out.append([p.copy() for p in reference.params])
    return out


# --------------------------------------------------------------------------
# (a) Every recipe builds and runs jitted steps.

BUILDERS = {
    "dqn_zoo": lambda: recipes.dqn_zoo(),
    "dopamine_dqn": lambda: recipes.dopamine_dqn(),
    "impala_torchbeast": lambda: recipes.impala_torchbeast(total_steps=10_000)[0],
    "impala_cleanba": lambda: recipes.impala_cleanba(
        num_updates=100, gradient_accumulation_steps=2
    )[0],
    "a3c": lambda: recipes.a3c(total_updates=100)[0],
    "efficientnet_timm": lambda: recipes.efficientnet_timm(steps_per_epoch=2, epochs=10)[0],
}


def test_every_recipe_has_a_builder():
    assert set(BUILDERS) == set(recipes.RECIPES)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_recipe_builds_and_runs_jitted(name):
    small = {"w": np.ones((3, 2)), "b": np.zeros(2)}
    tree = to_jax(small, jnp.float32)
    grads = [to_jax(g, jnp.float32) for g in gradient_sequence(small, 3, seed=1)[1:]]
    # optax.MultiSteps mixes int32 and float32 inside: standard promotion, as users run it.
    promotion = "standard" if name == "impala_cleanba" else "strict"
    run = train(BUILDERS[name](), tree, grads, promotion=promotion)
    final = run.params[-1]
    assert jax.tree.structure(final) == jax.tree.structure(tree)
    for new, old in zip(jax.tree.leaves(final), jax.tree.leaves(tree)):
        assert new.dtype == old.dtype and bool(jnp.all(jnp.isfinite(new)))
    assert any(bool(jnp.any(a != b)) for a, b in zip(jax.tree.leaves(final), jax.tree.leaves(tree)))


def test_the_docs_include_every_recipe_from_the_module():
    """docs/recipes.md includes each recipe function from examples/recipes.py
    (a literalinclude of the function), rather than a copy of it."""
    page = (ROOT / "docs" / "recipes.md").read_text()
    included = set(
        re.findall(
            r"```\{literalinclude\} \.\./examples/recipes\.py\n(?::\w+:.*\n)*?:pyobject: (\w+)",
            page,
        )
    )
    assert set(recipes.RECIPES) <= included
    assert included <= {name for name in dir(recipes) if callable(getattr(recipes, name))}


# --------------------------------------------------------------------------
# DQN: the Lua code sums over the batch, DQN Zoo averages.

BATCH = 32


def _q_batch(rng):
    """A batch of 32 transitions for a linear Q-function of 4 features and 3
    actions: features, actions, and TD targets large enough to be clipped."""
    return rng.normal(size=(BATCH, 4)), rng.integers(0, 3, BATCH), 3.0 * rng.normal(size=BATCH)


def _lua_gradient(params, x, a, y):
    """nql:getQUpdate and qLearnMinibatch: ``delta`` clipped to [-1, 1]
    (``clip_delta=1``), backpropagated for the 32 transitions and summed
    (``network:backward``); returned as a loss gradient (the Lua ``dw`` is the
    ascent direction)."""
    w, b = params
    q = x @ w + b
    delta = np.clip(y - q[np.arange(BATCH), a], -1.0, 1.0)
    onehot = np.eye(3)[a]
    return [-(x.T @ (delta[:, None] * onehot)), -(delta @ onehot)]


@jax.custom_vjp
def _clip_gradient(x, lo, hi):
    return x


_clip_gradient.defvjp(
    lambda x, lo, hi: (x, (lo, hi)),
    lambda res, g: (jnp.clip(g, res[0], res[1]), None, None),
)


def _zoo_loss(params, x, a, y):
    """dqn_zoo/dqn/agent.py, loss_fn: TD errors with their gradient clipped to
    +-grad_error_bound (1/32), then the mean of ``0.5 * td**2``."""
    q = x @ params["w"] + params["b"]
    td = y - q[jnp.arange(BATCH), a]
    td = _clip_gradient(td, -1.0 / BATCH, 1.0 / BATCH)
    return jnp.mean(0.5 * td**2)


def _dqn_runs(opt, steps=STEPS):
    """Our recipe on DQN Zoo's mean loss, and the Lua code on its summed batch."""
    rng = np.random.default_rng(0)
    start = {"w": 0.1 * rng.normal(size=(4, 3)), "b": np.zeros(3)}
    lua = originals.DQN2015(learning_rate=2.5e-4, decay=0.95, min_squared_gradient=0.01)
    lua.init([start["b"], start["w"]])  # the order of jax.tree.leaves
    params = jax.tree.map(jnp.asarray, start)
    state = opt.init(params)
    update = jax.jit(opt.update)
    grad = jax.jit(jax.grad(_zoo_loss))
    ours, theirs = [], []
    for _ in range(steps):
        x, a, y = _q_batch(rng)
        b_lua, w_lua = lua.params
        g_w, g_b = _lua_gradient((w_lua, b_lua), x, a, y)
        lua.step([g_b, g_w])
        theirs.append([p.copy() for p in lua.params])
        updates, state = update(grad(params, x, a, y), state, params)
        params = optax.apply_updates(params, updates)
        ours.append(params)
    return start, ours, theirs


def test_dqn_zoo_mean_loss_makes_the_lua_steps(x64):
    start, ours, theirs = _dqn_runs(recipes.dqn_zoo())
    assert_follows(ours, theirs, start)


def test_dqn_zoo_needs_its_rescaled_eps(x64):
    # The Nature eps on a mean loss: the same code path, visibly different steps.
    start, ours, theirs = _dqn_runs(presets.dqn_nature_2015())
    with pytest.raises(AssertionError, match="relative error"):
        assert_follows(ours, theirs, start, tol=1e-2)


# --------------------------------------------------------------------------
# Dopamine: TensorFlow 1, centered, the mean square starting at one.


def test_dopamine_dqn_matches_tensorflow_v1(x64):
    tree = make_tree(2)
    grads = gradient_sequence(tree, STEPS)
    got = train(recipes.dopamine_dqn(), to_jax(tree, jnp.float64), grads).params
    reference = originals.TensorFlowV1(
        0.00025, decay=0.95, momentum=0.0, epsilon=0.00001, centered=True
    )
    want = reference_trajectory(reference, tree, grads)
    assert_follows(got, want, tree)


def test_dopamine_dqn_starts_the_average_at_one():
    opt = recipes.dopamine_dqn()
    params = {"w": jnp.zeros(3)}
    state = opt.init(params)
    np.testing.assert_array_equal(state.nu["w"], 1.0)
    np.testing.assert_array_equal(state.mu["w"], 0.0)
    # The first step for a gradient of 0.01, from one (TF1) and from zero (optax).
    g = 0.01
    from_one = 0.00025 * g / np.sqrt(0.95 + 0.05 * g**2 - (0.05 * g) ** 2 + 1e-5)
    from_zero = 0.00025 * g / np.sqrt(0.05 * g**2 - (0.05 * g) ** 2 + 1e-5)
    updates, _ = jax.jit(opt.update)({"w": jnp.full(3, g)}, state, params)
    np.testing.assert_allclose(-updates["w"], from_one, rtol=1e-6)
    assert from_zero / from_one > 100


# --------------------------------------------------------------------------
# IMPALA: torchbeast and cleanba, against torch.

torch = pytest.importorskip("torch")


def _big_gradients(tree, steps, seed, scale=30.0):
    """Gradients of a summed loss: large enough that the norm-40 clipping acts
    on some steps and not on others."""
    return [jax.tree.map(lambda g: scale * g, t) for t in gradient_sequence(tree, steps, seed)]


def _torch_run(tree, grads_seq, make, accumulate=1):
    """torch.optim.RMSprop as the originals drive it. ``make(params)`` returns
    (optimizer, scheduler, max_norm); every ``accumulate`` gradients are
    averaged, clipped by ``clip_grad_norm_``, applied, and the scheduler stepped."""
    params = [torch.tensor(x, dtype=torch.float64) for x in _numpy(tree)]
    opt, scheduler, max_norm = make(params)
    out, pending = [], []
    for grads in grads_seq:
        pending.append(_numpy(grads))
        if len(pending) < accumulate:
            continue
        for p, *gs in zip(params, *pending):
            p.grad = torch.tensor(np.mean(gs, axis=0), dtype=torch.float64)
        pending = []
        torch.nn.utils.clip_grad_norm_(params, max_norm)
        opt.step()
        scheduler.step()
        out.append([p.detach().numpy().copy() for p in params])
    return out


T, B, TOTAL = 2, 3, 42  # torchbeast: the rate reaches 0 at learner step 7


def _torchbeast_in_torch(params):
    opt = torch.optim.RMSprop(params, lr=0.00048, momentum=0, eps=0.01, alpha=0.99)

    def lr_lambda(epoch):  # monobeast.py, train()
        return 1 - min(epoch * T * B, TOTAL) / TOTAL

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda), 40.0


def test_impala_torchbeast_matches_torch(x64):
    tree = make_tree(3)
    grads = _big_gradients(tree, STEPS, seed=4)
    want = _torch_run(tree, grads, _torchbeast_in_torch)
    opt, _ = recipes.impala_torchbeast(total_steps=TOTAL, unroll_length=T, batch_size=B)
    got = train(opt, to_jax(tree, jnp.float64), grads).params
    # torch divides by (norm + 1e-6) when it clips, optax by the norm.
    assert_follows(got, want, tree, tol=1e-8)
    # A loss averaged over the T * B steps, with eps and the clipping norm
    # rescaled, takes the same steps; without the rescaling it does not.
    mean_grads = [jax.tree.map(lambda g: g / (T * B), t) for t in grads]
    mean, _ = recipes.impala_torchbeast(
        total_steps=TOTAL, unroll_length=T, batch_size=B, loss_reduction="mean"
    )
    got = train(mean, to_jax(tree, jnp.float64), mean_grads).params
    assert_follows(got, want, tree, tol=1e-8)
    wrong = train(opt, to_jax(tree, jnp.float64), mean_grads).params
    with pytest.raises(AssertionError, match="relative error"):
        assert_follows(wrong, want, tree, tol=1e-2)


def test_impala_torchbeast_schedule_anneals_to_zero():
    _, schedule = recipes.impala_torchbeast(total_steps=TOTAL, unroll_length=T, batch_size=B)
    rates = [float(schedule(jnp.asarray(k))) for k in range(10)]
    np.testing.assert_allclose(rates[:8], [0.00048 * (1 - 6 * k / 42) for k in range(8)], 1e-6)
    assert rates[7] == rates[9] == 0.0
    # No int32 overflow far past the end of training.
    _, schedule = recipes.impala_torchbeast(total_steps=50_000_000)
    assert float(schedule(jnp.asarray(2**30, jnp.int32))) == 0.0


NUM_UPDATES, MINIBATCHES, ACCUMULATE = 4, 2, 2  # cleanba: 8 real steps, 16 micro-batches


def _cleanba_in_torch(params):
    opt = torch.optim.RMSprop(params, lr=0.0006, alpha=0.99, eps=0.01)

    def factor(count):  # cleanba_impala.py, linear_schedule
        return 1 - (count // MINIBATCHES) / NUM_UPDATES

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor), 40.0


def _cleanba():
    opt, schedule = recipes.impala_cleanba(
        num_updates=NUM_UPDATES,
        num_minibatches=MINIBATCHES,
        gradient_accumulation_steps=ACCUMULATE,
    )
    return opt, schedule


def test_impala_cleanba_matches_torch_with_accumulation(x64):
    tree = make_tree(5)
    real_steps = NUM_UPDATES * MINIBATCHES
    grads = _big_gradients(tree, ACCUMULATE * real_steps, seed=6)
    opt, schedule = _cleanba()
    run = train(opt, to_jax(tree, jnp.float64), grads, promotion="standard")
    # MultiSteps: zero updates between real steps, one real step every ACCUMULATE.
    for i, updates in enumerate(run.updates, start=1):
        moved = any(bool(jnp.any(u != 0)) for u in jax.tree.leaves(updates))
        assert moved == (i % ACCUMULATE == 0), f"micro-step {i}"
    got = run.params[ACCUMULATE - 1 :: ACCUMULATE]
    want = _torch_run(tree, grads, _cleanba_in_torch, accumulate=ACCUMULATE)
    # optax.MultiSteps keeps the accumulated gradient in float32 (its default
    # accumulator_dtype, as cleanba runs it): 3e-8 here. Torch's clipping
    # divides by (norm + 1e-6), optax's by the norm.
    assert_follows(got, want, tree, tol=1e-7)
    # The rate injected through inject_hyperparams: the last update used the
    # schedule's last rate, lr / num_updates, and the next one would be 0.
    hyper = run.state.inner_opt_state[1]  # chain(clip, inject_hyperparams(pytorch))
    assert int(run.state.gradient_step) == int(hyper.count) == real_steps
    np.testing.assert_allclose(hyper.hyperparams["lr"], 0.0006 / NUM_UPDATES, rtol=1e-12)
    assert float(schedule(jnp.asarray(real_steps))) == 0.0


# --------------------------------------------------------------------------
# A3C: one set of statistics shared by all workers.


class A3CSharedRMSprop:
    """Mnih et al. 2016 (arXiv:1602.01783), the shared RMSProp of the
    optimisation details: ``g = alpha g + (1 - alpha) dtheta**2``, ``theta <-
    theta - eta dtheta / sqrt(g + eps)``, one ``g`` for all threads, ``eta``
    decreased linearly to zero; gradients first scaled to an L2 norm of at most
    40 as chainer's ``GradientClipping`` does (``rate = threshold / norm``,
    applied when below 1), as in muupan/async-rl's ``a3c_ale.py``."""

    def __init__(self, lr, total, alpha=0.99, eps=0.1, max_norm=40.0):
        self.lr, self.total, self.alpha, self.eps, self.max_norm = lr, total, alpha, eps, max_norm

    def init(self, params):
        self.params = [p.copy() for p in params]
        self.g = [np.zeros_like(p) for p in params]
        self.k = 0

    def step(self, grads):
        norm = np.sqrt(sum(np.sum(d * d) for d in grads))
        rate = self.max_norm / norm if norm > 0 else np.inf
        if rate < 1:
            grads = [d * rate for d in grads]
        eta = self.lr * (1 - min(self.k, self.total) / self.total)
        self.k += 1
        for i, d in enumerate(grads):
            self.g[i] = self.alpha * self.g[i] + (1 - self.alpha) * d * d
            self.params[i] = self.params[i] - eta * d / np.sqrt(self.g[i] + self.eps)


def test_a3c_matches_the_paper_update(x64):
    tree = make_tree(7)
    grads = _big_gradients(tree, STEPS, seed=8)
    opt, _ = recipes.a3c(total_updates=8)  # annealed to zero within the run
    got = train(opt, to_jax(tree, jnp.float64), grads).params
    want = reference_trajectory(A3CSharedRMSprop(7e-4, total=8), tree, grads)
    assert_follows(got, want, tree)


def test_a3c_shared_statistics_are_one_state(x64):
    # Three workers' gradients, applied to the shared parameters in the order
    # they arrive: with shared statistics every one goes through the same g.
    tree = make_tree(9)
    per_worker = [gradient_sequence(tree, 4, seed=s) for s in (10, 11, 12)]
    arrivals = [per_worker[w][k] for k in range(4) for w in (0, 2, 1)]
    opt, _ = recipes.a3c(total_updates=1000)
    shared = train(opt, to_jax(tree, jnp.float64), arrivals).params
    want = reference_trajectory(A3CSharedRMSprop(7e-4, total=1000), tree, arrivals)
    assert_follows(shared, want, tree)
    # "RMSProp without shared statistics": one state per worker, differs.
    params = to_jax(tree, jnp.float64)
    states = [opt.init(params) for _ in range(3)]
    update = jax.jit(opt.update)
    for k in range(4):
        for w in (0, 2, 1):
            updates, states[w] = update(to_jax(per_worker[w][k], jnp.float64), states[w], params)
            params = optax.apply_updates(params, updates)
    err = relative_error(_numpy(params), _numpy(tree), want[-1], _numpy(tree))
    assert err > 0.05


# --------------------------------------------------------------------------
# EfficientNet / MobileNet in timm.


def timm_get_lr(t, base, decay_t, decay_rate, warmup_t, warmup_lr_init):
    """timm/scheduler/step_lr.py, StepLRScheduler._get_lr, warmup_prefix=False."""
    if t < warmup_t:
        return warmup_lr_init + t * ((base - warmup_lr_init) / warmup_t)
    return base * (decay_rate ** (t // decay_t))


def test_efficientnet_schedule_is_timms_at_every_epoch():
    _, schedule = recipes.efficientnet_timm(steps_per_epoch=3)
    want = np.array([timm_get_lr(epoch, 0.016, 2.4, 0.97, 5, 1e-6) for epoch in range(450)])
    for first_or_last in (0, 2):
        got = jax.vmap(schedule)(3 * jnp.arange(450) + first_or_last)
        np.testing.assert_allclose(got, want, rtol=1e-6)
    assert schedule(jnp.asarray(10**6)) == np.float32(want[-1])  # held after the end
    # What the table avoids: epoch // 2.4 in float32 is one short at epoch 36.
    assert np.floor(np.float32(36) / np.float32(2.4)) != 36 // 2.4


def test_efficientnet_timm_matches_rmsproptf_with_parameter_groups(x64):
    tree = make_tree(13)
    steps_per_epoch = 2
    grads = gradient_sequence(tree, 12, seed=14)
    opt, _ = recipes.efficientnet_timm(
        steps_per_epoch=steps_per_epoch, epochs=6, warmup_epochs=2, weight_decay=0.1
    )
    got = train(opt, to_jax(tree, jnp.float64), grads).params

    def lr(t):  # RMSpropTF sees the rate of the epoch that t falls in
        return timm_get_lr(int(t) // steps_per_epoch, 0.016, 2.4, 0.97, 2, 1e-6)

    # timm's two parameter groups: weight decay for >= 2-D parameters only.
    start = _numpy(tree)
    groups = [[i for i, p in enumerate(start) if (p.ndim > 1) == decayed] for decayed in (1, 0)]
    refs = [
        originals.TimmTF(lr=lr, alpha=0.9, eps=1e-3, momentum=0.9, weight_decay=wd)
        for wd in (0.1, 0.0)
    ]
    for ref, idx in zip(refs, groups):
        ref.init([start[i] for i in idx])
    want = []
    for g in grads:
        leaves = _numpy(g)
        merged = [None] * len(start)
        for ref, idx in zip(refs, groups):
            ref.step([leaves[i] for i in idx])
            for j, i in enumerate(idx):
                merged[i] = ref.params[j].copy()
        want.append(merged)
    assert_follows(got, want, tree)


def test_efficientnet_timm_decays_only_matrices():
    tree = to_jax(make_tree(13), jnp.float32)
    zeros = [jax.tree.map(jnp.zeros_like, tree)] * 3
    opt, _ = recipes.efficientnet_timm(steps_per_epoch=1, weight_decay=0.1, warmup_epochs=0)
    final = train(opt, tree, zeros).params[-1]
    for new, old in zip(jax.tree.leaves(final), jax.tree.leaves(tree)):
        moved = bool(jnp.any(new != old))
        assert moved == (old.ndim > 1), old.shape
