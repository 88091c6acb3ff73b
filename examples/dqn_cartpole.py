"""DQN on CartPole-v1 with the DQN Zoo optimizer, written as one compiled program.

The agent is the DQN of Mnih et al. (Nature, 2015): an epsilon-greedy policy
on a Q-network, a replay buffer, a target network copied every few thousand
steps, and a one-step Q-learning loss whose gradient is clipped. The
environment is gymnax's CartPole-v1, which is JAX code, so acting, storing,
sampling and learning all run inside `jax.lax.scan`, and `jax.vmap` runs
several seeds side by side in the same program.

The optimizer is the point. DQN Zoo (google-deepmind/dqn_zoo,
`dqn_zoo/dqn/run_atari.py`) trains DQN with centered RMSprop: learning rate
2.5e-4, decay 0.95, and epsilon 0.01 / 32**2 inside the square root. The
Nature code summed the loss over a batch of 32 and used 0.01; DQN Zoo takes
the mean, which scales every gradient by 1/32 and every squared gradient by
1/32**2, hence the epsilon. In rmsprop_jax that is the `dqn_nature_2015`
preset with `min_squared_gradient=0.01 / 32**2`. The same agent is also
trained with non-centered RMSprop and with Adam at the same learning rate,
second-moment decay and epsilon inside the root.

The error clipping follows DQN Zoo's `dqn_zoo/dqn/agent.py`: the loss is
mean(0.5 * td**2) over the batch, and the gradient flowing back into each TD
error is clipped to [-1/32, 1/32]. With a batch of 32 that is the gradient of
the mean Huber loss with delta 1 (rlax's `clip_gradient` docstring notes the
equivalence), i.e. the Nature paper's clipping of the error to [-1, 1].

With the default settings (see `Settings`) every optimizer learns to balance
the pole for hundreds of steps, but none keeps CartPole-v1 solved (a mean of
475 over the last 100 episodes) to the end of a few-minute run: the Q-network
learns, forgets and relearns, as DQN does on CartPole. The README has the
numbers.

Run:  python examples/dqn_cartpole.py [--steps 100000] [--seeds 5] [--out dqn_output]
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import pathlib
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

import rmsprop_jax

# gymnax 1.0.1 is not written for strict dtype promotion (it adds Python
# floats to booleans and integer actions); its import and every call into it
# use standard promotion, scoped to those lines.
with jax.numpy_dtype_promotion("standard"):
    import gymnax

# --------------------------------------------------------------------------
# The optimizers. DQN Zoo's values (dqn_zoo/dqn/run_atari.py): learning rate
# 0.00025, decay 0.95, optimizer_epsilon 0.01 / 32**2, centered; the batch of
# 32 and grad_error_bound 1/32 go with them (dqn_zoo/dqn/agent.py).

BATCH_SIZE = 32
LEARNING_RATE = 2.5e-4
DECAY = 0.95
EPSILON = 0.01 / BATCH_SIZE**2
GRAD_ERROR_BOUND = 1.0 / BATCH_SIZE


def _standard_promotion(tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """`tx` with its update traced under standard dtype promotion. optax.adam's
    bias correction raises a float to an int32 count, which strict promotion
    (as this project's tests run) rejects; rmsprop_jax needs no such wrapper."""

    def update(updates, state, params=None):
        with jax.numpy_dtype_promotion("standard"):
            return tx.update(updates, state, params)

    return optax.GradientTransformation(tx.init, update)


OPTIMIZERS = {
    # Centered, eps inside the root: the DQN Zoo / Nature configuration.
    "centered-rmsprop": lambda: rmsprop_jax.presets.dqn_nature_2015(
        learning_rate=LEARNING_RATE, decay=DECAY, min_squared_gradient=EPSILON
    ),
    # The same without centering: divides by sqrt(nu + eps), not sqrt(nu - mu**2 + eps).
    "rmsprop": lambda: rmsprop_jax.rmsprop(
        LEARNING_RATE, decay=DECAY, eps=EPSILON, eps_in_sqrt=True, centered=False
    ),
    # Adam with the same rate, second-moment decay and epsilon inside the root;
    # what it adds is momentum (b1 = 0.9) and bias correction.
    "adam": lambda: _standard_promotion(
        optax.adam(LEARNING_RATE, b1=0.9, b2=DECAY, eps=0.0, eps_root=EPSILON)
    ),
}


class Settings(NamedTuple):
    """The agent's settings other than the optimizer (see `--help`).

    The defaults were chosen for CartPole-v1 on a 2-core CPU, from short
    sweeps of 3 seeds x 100k-400k steps with the centered optimizer:

    - two hidden layers of 64: ample for 4 inputs; 128 cost twice as much and
      did no better;
    - one gradient step per environment step: at a learning rate of 2.5e-4
      the network needs many steps, and one per 4 (DQN Zoo's ratio) learned
      less in the same number of environment steps;
    - a target copy every 5,000 steps: copies every 300-2,500 steps learned
      faster but then collapsed; every 10,000 was stable but slow;
    - replay of 50,000 (half of the default run): keeping all 100k-200k
      transitions changed nothing measurable;
    - epsilon 1 for the first 1,000 steps, then down to 0.01 over 10% of the
      run; gamma 0.99, the usual value (0.95-0.98 did not help).
    """

    steps: int
    hidden: int
    gamma: float
    replay_size: int
    learning_starts: int
    train_every: int
    target_period: int
    explore_steps: int
    final_epsilon: float


# --------------------------------------------------------------------------
# The environment. gymnax resets an episode by itself when it ends, and tells
# termination (the pole fell: no bootstrap) from truncation (500 steps: the
# episode was cut, so bootstrap from the last observation).

ENV, ENV_PARAMS = gymnax.make("CartPole-v1")
NUM_ACTIONS = ENV.num_actions
OBS_SIZE = ENV.observation_space(ENV_PARAMS).shape[0]


def env_reset(key):
    with jax.numpy_dtype_promotion("standard"):
        return ENV.reset(key, ENV_PARAMS)


def env_step(key, env_state, action):
    with jax.numpy_dtype_promotion("standard"):
        obs, env_state, reward, terminated, truncated, info = ENV.step(
            key, env_state, action, ENV_PARAMS
        )
    return obs, env_state, reward, terminated, truncated, info["final_observation"]


# --------------------------------------------------------------------------
# The Q-network: a two-hidden-layer ReLU MLP, parameters in a plain dict.


def init_network(key, hidden: int) -> dict:
    sizes = [OBS_SIZE, hidden, hidden, NUM_ACTIONS]
    params = {}
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        key, sub = jax.random.split(key)
        scale = jnp.sqrt(jnp.float32(1.0 / fan_in))  # LeCun-normal weights, zero biases
        params[f"w{i}"] = scale * jax.random.normal(sub, (fan_in, fan_out), jnp.float32)
        params[f"b{i}"] = jnp.zeros(fan_out, jnp.float32)
    return params


# CartPole's observation is (cart position, cart velocity, pole angle, pole
# angular velocity). The angle matters most but is tiny (it ends the episode
# at 0.21 rad), and an adaptive optimizer moves every weight by about the same
# amount whatever its input's scale; so cart position and pole angle are
# divided by the limits that end an episode (+-1 means "about to fail"). The
# velocities are left as they are (they stay within a few units).
OBS_SCALE = jnp.array(
    [ENV_PARAMS.x_threshold, 1.0, ENV_PARAMS.theta_threshold_radians, 1.0], jnp.float32
)


def q_values(params: dict, obs: jax.Array) -> jax.Array:
    x = obs / OBS_SCALE
    for i in range(3):
        x = x @ params[f"w{i}"] + params[f"b{i}"]
        if i < 2:
            x = jax.nn.relu(x)
    return x


# --------------------------------------------------------------------------
# The loss. `clip_gradient` is the identity going forward; going back it
# clips the incoming gradient, as DQN Zoo does through rlax.


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def clip_gradient(x: jax.Array, bound: float) -> jax.Array:
    return x


def _clip_gradient_fwd(x, bound):
    return x, None


def _clip_gradient_bwd(bound, _, g):
    return (jnp.clip(g, -bound, bound),)


clip_gradient.defvjp(_clip_gradient_fwd, _clip_gradient_bwd)


class Transition(NamedTuple):
    obs: jax.Array
    action: jax.Array
    reward: jax.Array
    discount: jax.Array  # 0 where the episode terminated, else 1
    next_obs: jax.Array


def td_loss(params: dict, target_params: dict, batch: Transition, gamma: float) -> jax.Array:
    """mean(0.5 * td**2), the gradient into each td clipped to +-GRAD_ERROR_BOUND."""
    q = q_values(params, batch.obs)
    q_taken = jnp.take_along_axis(q, batch.action[:, None], axis=-1)[:, 0]
    q_next = jnp.max(q_values(target_params, batch.next_obs), axis=-1)
    target = jax.lax.stop_gradient(batch.reward + gamma * batch.discount * q_next)
    td = clip_gradient(target - q_taken, GRAD_ERROR_BOUND)
    return jnp.mean(0.5 * td**2)


# --------------------------------------------------------------------------
# The replay buffer: fixed-size arrays written round-robin, sampled uniformly.


class Replay(NamedTuple):
    data: Transition  # each field has a leading axis of `replay_size`
    position: jax.Array  # the slot the next transition goes to
    size: jax.Array  # how many slots are filled


def replay_init(capacity: int) -> Replay:
    data = Transition(
        obs=jnp.zeros((capacity, OBS_SIZE), jnp.float32),
        action=jnp.zeros(capacity, jnp.int32),
        reward=jnp.zeros(capacity, jnp.float32),
        discount=jnp.zeros(capacity, jnp.float32),
        next_obs=jnp.zeros((capacity, OBS_SIZE), jnp.float32),
    )
    return Replay(data, jnp.int32(0), jnp.int32(0))


def replay_add(replay: Replay, t: Transition) -> Replay:
    capacity = replay.data.action.shape[0]
    data = jax.tree.map(lambda buf, x: buf.at[replay.position].set(x), replay.data, t)
    return Replay(data, (replay.position + 1) % capacity, jnp.minimum(replay.size + 1, capacity))


def replay_sample(replay: Replay, key) -> Transition:
    idx = jax.random.randint(key, (BATCH_SIZE,), 0, replay.size)
    return jax.tree.map(lambda buf: buf[idx], replay.data)


# --------------------------------------------------------------------------
# One agent (one seed): everything it carries from step to step.


class Agent(NamedTuple):
    params: dict
    target_params: dict
    opt_state: Any
    replay: Replay
    env_state: Any
    obs: jax.Array
    episode_return: jax.Array  # of the episode under way
    key: jax.Array


def agent_init(key, settings: Settings, optimizer) -> Agent:
    k_net, k_env, key = jax.random.split(key, 3)
    params = init_network(k_net, settings.hidden)
    obs, env_state = env_reset(k_env)
    return Agent(
        params=params,
        target_params=params,
        opt_state=optimizer.init(params),
        replay=replay_init(settings.replay_size),
        env_state=env_state,
        obs=obs,
        episode_return=jnp.float32(0.0),
        key=key,
    )


def epsilon_at(t: jax.Array, settings: Settings) -> jax.Array:
    """1 until learning starts, then linear to `final_epsilon` over `explore_steps`."""
    progress = (t - settings.learning_starts).astype(jnp.float32) / max(settings.explore_steps, 1)
    progress = jnp.clip(progress, 0.0, 1.0)
    return 1.0 + progress * (settings.final_epsilon - 1.0)


def act(agent: Agent, t: jax.Array, settings: Settings):
    """One environment step: epsilon-greedy action, store the transition."""
    key, k_explore, k_random, k_env = jax.random.split(agent.key, 4)
    greedy = jnp.argmax(q_values(agent.params, agent.obs)).astype(jnp.int32)
    random_action = jax.random.randint(k_random, (), 0, NUM_ACTIONS)
    explore = jax.random.uniform(k_explore) < epsilon_at(t, settings)
    action = jnp.where(explore, random_action, greedy)

    obs, env_state, reward, terminated, truncated, last_obs = env_step(
        k_env, agent.env_state, action
    )
    reward = reward.astype(jnp.float32)
    transition = Transition(
        obs=agent.obs,
        action=action,
        reward=reward,
        discount=1.0 - terminated.astype(jnp.float32),
        next_obs=last_obs,
    )
    done = jnp.logical_or(terminated, truncated)
    episode_return = agent.episode_return + reward
    agent = agent._replace(
        replay=replay_add(agent.replay, transition),
        env_state=env_state,
        obs=obs,
        episode_return=jnp.where(done, 0.0, episode_return),
        key=key,
    )
    # Logged per step: whether an episode ended here, and its return if so.
    return agent, (done, jnp.where(done, episode_return, 0.0))


def learn(params, target_params, opt_state, batch: Transition, settings: Settings, optimizer):
    """One gradient step on a batch."""
    loss, grads = jax.value_and_grad(td_loss)(params, target_params, batch, settings.gamma)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


def iteration(agent: Agent, t: jax.Array, settings: Settings, optimizer):
    """`train_every` environment steps, then (once learning has started) one
    gradient step on a uniformly sampled batch, then the target copy when its
    period comes round.

    `t`, the environment step at the start, is shared by every seed (it is not
    vmapped), so the two `lax.cond`s below stay real branches under `vmap`.
    They take only the networks and optimizer state: a branch's operands may
    be copied, and the replay buffer is large.
    """
    steps = t + jnp.arange(settings.train_every, dtype=jnp.int32)
    agent, (done, returns) = jax.lax.scan(lambda a, s: act(a, s, settings), agent, steps)
    t_next = t + settings.train_every

    key, k_sample = jax.random.split(agent.key)
    batch = replay_sample(agent.replay, k_sample)
    params, opt_state, loss = jax.lax.cond(
        t_next > settings.learning_starts,
        lambda p, s: learn(p, agent.target_params, s, batch, settings, optimizer),
        lambda p, s: (p, s, jnp.float32(jnp.nan)),  # NaN marks "no update yet"
        agent.params,
        agent.opt_state,
    )
    target_params = jax.lax.cond(
        t_next % settings.target_period < settings.train_every,
        lambda: params,
        lambda: agent.target_params,
    )
    agent = agent._replace(params=params, target_params=target_params, opt_state=opt_state, key=key)
    return agent, (done, returns, loss)


def make_programs(settings: Settings, optimizer, iterations_per_chunk: int):
    """The two compiled programs: `init` (all seeds) and `run_chunk`, which
    advances every seed by `iterations_per_chunk` iterations."""
    init = jax.jit(jax.vmap(lambda k: agent_init(k, settings, optimizer)))

    def run_chunk(agents: Agent, t: jax.Array):
        def body(carry, _):
            agents, t = carry
            agents, logs = jax.vmap(iteration, in_axes=(0, None, None, None))(
                agents, t, settings, optimizer
            )
            return (agents, t + settings.train_every), logs

        (agents, t), logs = jax.lax.scan(body, (agents, t), None, iterations_per_chunk)
        return agents, t, logs

    return init, jax.jit(run_chunk, donate_argnums=0)


# --------------------------------------------------------------------------
# Training one optimizer on all seeds, and what the logs say.


def train(name: str, settings: Settings, seeds: int, chunks: int, seed: int) -> dict:
    optimizer = OPTIMIZERS[name]()
    iterations = settings.steps // settings.train_every
    per_chunk = iterations // chunks  # `chunks` divides `iterations` (see main)
    init, run_chunk = make_programs(settings, optimizer, per_chunk)

    start = time.perf_counter()
    agents = init(jax.random.split(jax.random.key(seed), seeds))
    t = jnp.int32(0)
    done, returns, losses = [], [], []
    for _ in tqdm(range(chunks), desc=name, ncols=80, leave=False):
        agents, t, (d, r, loss) = run_chunk(agents, t)
        # logs are (iterations, seeds, train_every) for d and r, (iterations, seeds) for loss
        done.append(np.asarray(d).transpose(1, 0, 2).reshape(seeds, -1))
        returns.append(np.asarray(r).transpose(1, 0, 2).reshape(seeds, -1))
        losses.append(np.asarray(loss).T)
    wall = time.perf_counter() - start

    done = np.concatenate(done, axis=1)
    returns = np.concatenate(returns, axis=1)
    losses = np.concatenate(losses, axis=1)
    episodes = [returns[s][done[s]] for s in range(seeds)]
    ends = [np.nonzero(done[s])[0] + 1 for s in range(seeds)]  # env steps when each ended
    return {
        "episode_returns": episodes,
        "episode_end_steps": ends,
        "td_loss": losses,
        "params": jax.device_get(agents.params),
        "wall_seconds": wall,
        "steps": settings.steps,
    }


def last_mean(episode_returns: np.ndarray, window: int = 100) -> tuple[float, int]:
    """Mean return over the last `window` episodes (or all of them, if fewer)."""
    tail = episode_returns[-window:]
    return (float(np.mean(tail)) if len(tail) else float("nan")), len(tail)


def best_mean(episode_returns: np.ndarray, window: int = 100) -> float:
    """The best mean return over any `window` consecutive episodes (or all, if fewer)."""
    if len(episode_returns) <= window:
        return float(np.mean(episode_returns)) if len(episode_returns) else float("nan")
    return float(np.max(np.convolve(episode_returns, np.ones(window) / window, mode="valid")))


def learning_curve(result: dict, grid: np.ndarray, window: int = 20) -> np.ndarray:
    """(seeds, len(grid)): at each step, the mean return of the last `window`
    episodes finished by then (NaN before the first)."""
    curves = []
    for returns, ends in zip(result["episode_returns"], result["episode_end_steps"]):
        cum = np.concatenate([[0.0], np.cumsum(returns)])
        n = np.searchsorted(ends, grid, side="right")  # episodes finished by each grid step
        lo = np.maximum(n - window, 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            curves.append(np.where(n > 0, (cum[n] - cum[lo]) / (n - lo), np.nan))
    return np.asarray(curves)


def plot(results: dict, out: pathlib.Path, settings: Settings) -> pathlib.Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, result in results.items():
        grid = np.linspace(1, result["steps"], 300)
        curves = learning_curve(result, grid)
        seen = ~np.all(np.isnan(curves), axis=0)
        mean = np.nanmean(curves[:, seen], axis=0)
        ax.plot(grid[seen], mean, label=name)
        ax.fill_between(
            grid[seen],
            np.nanmin(curves[:, seen], axis=0),
            np.nanmax(curves[:, seen], axis=0),
            alpha=0.2,
        )
    ax.axhline(475, color="gray", lw=0.8, ls="--")
    ax.set_xlabel("environment steps (per seed)")
    ax.set_ylabel("episode return (mean of last 20)")
    seeds = len(next(iter(results.values()))["episode_returns"])
    ax.set_title(f"DQN on CartPole-v1: mean over {seeds} seeds, band = min..max")
    ax.set_ylim(0, 520)
    ax.legend(loc="upper left")
    fig.tight_layout()
    path = out / "dqn_cartpole.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    arg = parser.add_argument
    arg("--steps", type=int, default=100_000, help="environment steps per seed")
    arg("--seeds", type=int, default=5, help="independent runs per optimizer, vmapped")
    arg("--seed", type=int, default=0, help="base random seed (the seeds are split from it)")
    arg(
        "--optimizers",
        nargs="+",
        choices=list(OPTIMIZERS),
        default=list(OPTIMIZERS),
        help="which optimizers to train with: centered-rmsprop is DQN Zoo's (the "
        "dqn_nature_2015 preset), rmsprop the same without centering, adam optax.adam "
        "with the same learning rate, second-moment decay and epsilon",
    )
    arg("--out", default="dqn_output", help="directory for dqn_cartpole.png and results.json")
    arg("--hidden", type=int, default=64, help="units in each of the Q-network's two hidden layers")
    arg("--gamma", type=float, default=0.99, help="discount factor")
    arg("--replay-size", type=int, default=50_000, help="replay buffer capacity (transitions)")
    arg(
        "--learning-starts",
        type=int,
        default=1_000,
        help="environment steps of random actions before the first gradient step",
    )
    arg(
        "--train-every",
        type=int,
        default=1,
        help="environment steps per gradient step (--steps must be a multiple of it)",
    )
    arg(
        "--target-period",
        type=int,
        default=5_000,
        help="environment steps between copies of the online network into the target network",
    )
    arg(
        "--explore-fraction",
        type=float,
        default=0.1,
        help="fraction of --steps over which epsilon falls linearly from 1 to "
        "--final-epsilon, starting at --learning-starts",
    )
    arg("--final-epsilon", type=float, default=0.01, help="exploration rate after the decay")
    arg(
        "--chunks",
        type=int,
        default=20,
        help="the run is compiled once and called in this many equal chunks, with a progress "
        "update after each (lowered to a divisor of the number of gradient steps)",
    )
    arg("--no-plot", action="store_true", help="skip the PNG (results.json is still written)")
    args = parser.parse_args(argv)

    if args.train_every < 1 or args.steps < args.train_every or args.steps % args.train_every:
        parser.error("--steps must be a positive multiple of --train-every")
    settings = Settings(
        steps=args.steps,
        hidden=args.hidden,
        gamma=args.gamma,
        replay_size=args.replay_size,
        learning_starts=args.learning_starts,
        train_every=args.train_every,
        target_period=args.target_period,
        explore_steps=int(args.explore_fraction * args.steps),
        final_epsilon=args.final_epsilon,
    )
    # The largest number of equal chunks, at most --chunks, that the run divides into.
    iterations = args.steps // args.train_every
    chunks = max(d for d in range(1, max(1, args.chunks) + 1) if iterations % d == 0)

    results = {}
    for name in args.optimizers:
        results[name] = train(name, settings, args.seeds, chunks, args.seed)
        summary = [last_mean(r) for r in results[name]["episode_returns"]]
        results[name]["last_mean"] = [m for m, _ in summary]
        results[name]["last_count"] = [n for _, n in summary]
        results[name]["best_mean"] = [best_mean(r) for r in results[name]["episode_returns"]]
        print(
            f"{name}: {results[name]['wall_seconds']:.1f} s, "
            f"episodes per seed {[len(r) for r in results[name]['episode_returns']]}"
        )

    # The table: per seed, the mean over its last 100 episodes (or all, if fewer).
    counts = {n for r in results.values() for n in r["last_count"]}
    if counts == {100}:
        what = "last 100 episodes"
    elif max(counts) < 100:
        what = f"all episodes ({min(counts)}-{max(counts)} per seed; fewer than 100 finished)"
    else:
        what = f"last min(100, finished) episodes ({min(counts)}-{max(counts)} per seed)"
    print(f"\nMean training return over the {what}, {args.steps} env steps per seed:")
    header = f"{'optimizer':<18}" + "".join(f"{'seed ' + str(s):>9}" for s in range(args.seeds))
    print(header + f"{'mean':>9}{'solved':>8}{'best':>8}{'reached':>9}{'wall s':>8}")
    for name, r in results.items():
        per_seed, best = r["last_mean"], r["best_mean"]
        solved = f"{sum(m >= 475 for m in per_seed)}/{args.seeds}"
        reached = f"{sum(m >= 475 for m in best)}/{args.seeds}"
        print(
            f"{name:<18}"
            + "".join(f"{m:9.1f}" for m in per_seed)
            + f"{np.mean(per_seed):9.1f}{solved:>8}{np.mean(best):8.1f}{reached:>9}"
            + f"{r['wall_seconds']:8.1f}"
        )
    print(
        "solved: seeds whose final mean is >= 475. best: the mean over seeds of each\n"
        "seed's best 100 consecutive episodes; reached: seeds whose best was >= 475.\n"
        "wall s: compile and run, all seeds together."
    )

    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "settings": {**settings._asdict(), "seeds": args.seeds, "seed": args.seed},
        "optimizer": {
            "learning_rate": LEARNING_RATE,
            "decay": DECAY,
            "eps": EPSILON,
            "batch_size": BATCH_SIZE,
            "grad_error_bound": GRAD_ERROR_BOUND,
        },
        "results": {
            name: {
                "last_mean": r["last_mean"],
                "last_count": r["last_count"],
                "best_mean": r["best_mean"],
                "mean_over_seeds": float(np.mean(r["last_mean"])),
                "wall_seconds": r["wall_seconds"],
                "episode_returns": [x.tolist() for x in r["episode_returns"]],
                "episode_end_steps": [x.tolist() for x in r["episode_end_steps"]],
            }
            for name, r in results.items()
        },
    }
    (out / "results.json").write_text(json.dumps(record))
    if not args.no_plot:
        print(f"wrote {plot(results, out, settings)} and {out / 'results.json'}")
    return {"settings": settings, "results": results}


if __name__ == "__main__":
    main()
