"""examples/dqn_cartpole.py: the DQN Zoo loss, the three optimizers, and a brief run."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import load_example


@pytest.fixture(scope="module")
def dqn():
    return load_example("dqn_cartpole")


# Jitted, because op-by-op random number generation compiles slowly.


def _batch(dqn, key, reward_scale):
    """A batch of 32 random transitions, a quarter of them terminal."""

    @jax.jit
    def make(key):
        k_obs, k_next, k_act, k_rew = jax.random.split(key, 4)
        return dqn.Transition(
            obs=jax.random.normal(k_obs, (dqn.BATCH_SIZE, dqn.OBS_SIZE)),
            action=jax.random.randint(k_act, (dqn.BATCH_SIZE,), 0, dqn.NUM_ACTIONS),
            reward=reward_scale * jax.random.normal(k_rew, (dqn.BATCH_SIZE,)),
            discount=jnp.ones(dqn.BATCH_SIZE).at[::4].set(0.0),
            next_obs=jax.random.normal(k_next, (dqn.BATCH_SIZE, dqn.OBS_SIZE)),
        )

    return make(key)


def _network(dqn, seed, hidden):
    return jax.jit(dqn.init_network, static_argnums=1)(jax.random.key(seed), hidden)


def test_clipped_td_gradient_is_the_mean_huber_gradient(dqn):
    # DQN Zoo clips the gradient into each TD error of mean(0.5 * td**2) to
    # +-1/32; with a batch of 32 that is the gradient of mean(huber(td, 1)).
    params = _network(dqn, 0, 16)
    target = _network(dqn, 1, 16)
    batch = _batch(dqn, jax.random.key(2), 1.5)

    def huber(p):
        q = dqn.q_values(p, batch.obs)
        q_taken = jnp.take_along_axis(q, batch.action[:, None], axis=-1)[:, 0]
        q_next = jnp.max(dqn.q_values(target, batch.next_obs), axis=-1)
        td = jax.lax.stop_gradient(batch.reward + 0.99 * batch.discount * q_next) - q_taken
        return jnp.mean(optax.huber_loss(td, delta=1.0)), td

    (_, td), want = jax.jit(jax.value_and_grad(huber, has_aux=True))(params)
    got = jax.jit(jax.grad(dqn.td_loss), static_argnums=3)(params, target, batch, 0.99)
    for name in params:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-7)
    # Both regimes are in the batch: errors inside [-1, 1] and clipped ones.
    assert 0.2 < float(jnp.mean(jnp.abs(td) > 1.0)) < 0.8


def test_each_optimizer_lowers_the_td_loss_on_a_fixed_batch(dqn):
    settings = dqn.Settings(
        steps=1, hidden=32, gamma=0.99, replay_size=1, learning_starts=0, train_every=1,
        target_period=1, explore_steps=1, final_epsilon=0.0,
    )  # fmt: skip
    batch = _batch(dqn, jax.random.key(3), 1.0)
    init = _network(dqn, 4, settings.hidden)
    final = {}
    for name, make in dqn.OPTIMIZERS.items():
        optimizer = make()

        @jax.jit
        def steps(params, opt_state, optimizer=optimizer):
            def body(carry, _):
                params, opt_state, loss = dqn.learn(*carry, batch, settings, optimizer)
                return (params, opt_state), loss

            # A fixed target network: plain regression onto fixed targets.
            return jax.lax.scan(
                lambda c, x: body((c[0], init, c[1]), x), (params, opt_state), None, 300
            )

        (params, _), losses = steps(init, optimizer.init(init))
        losses = np.asarray(losses)
        assert np.all(np.isfinite(losses)), name
        assert losses[-20:].mean() < 0.7 * losses[:20].mean(), (name, losses[:3], losses[-3:])
        final[name] = np.concatenate([np.ravel(x) for x in jax.tree.leaves(params)])
    # Three optimizers, three different results.
    names = list(final)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert np.max(np.abs(final[a] - final[b])) > 1e-4, (a, b)


def test_brief_run_records_real_episodes(dqn, tmp_path):
    steps, seeds = 3000, 2
    out = dqn.main(
        [
            "--steps", str(steps), "--seeds", str(seeds), "--optimizers", "centered-rmsprop",
            "--learning-starts", "500", "--replay-size", "2000", "--target-period", "250",
            "--chunks", "3", "--out", str(tmp_path),
        ]
    )  # fmt: skip
    result = out["results"]["centered-rmsprop"]
    for returns, ends in zip(result["episode_returns"], result["episode_end_steps"]):
        assert len(returns) > 10
        # CartPole pays 1 per step, so each episode's return is its length: the
        # steps between consecutive episode ends, at most 500.
        np.testing.assert_array_equal(returns, np.diff(np.concatenate([[0], ends])))
        assert returns.min() >= 1 and returns.max() <= 500
        assert ends[-1] <= steps
    # NaN marks the iterations before learning starts, then real losses.
    loss = result["td_loss"]
    assert loss.shape == (seeds, steps)
    assert np.all(np.isnan(loss[:, :500])) and np.all(np.isfinite(loss[:, 500:]))
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(result["params"]))
    # The two seeds explored differently.
    assert not np.array_equal(result["episode_returns"][0], result["episode_returns"][1])

    record = json.loads((tmp_path / "results.json").read_text())
    saved = record["results"]["centered-rmsprop"]
    assert saved["last_mean"] == pytest.approx(
        [np.mean(r[-100:]) for r in result["episode_returns"]]
    )
    assert (tmp_path / "dqn_cartpole.png").stat().st_size > 10_000
