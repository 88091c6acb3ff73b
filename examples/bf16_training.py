"""Training in bfloat16 end to end: stochastic rounding against round-to-nearest.

The demo's digits classifier (a 64-128-10 MLP on scikit-learn's bundled
handwritten digits, the same 80/20 split) is trained with RMSprop in five
settings (`--settings`), from the same initial weights and on the same batches
for each seed:

  float32           float32 parameters and optimizer state: the reference.
  bf16-nearest      bfloat16 parameters and state, both rounded to nearest
                    (everything simply cast to bfloat16).
  bf16-stochastic   bfloat16 parameters and state, both rounded stochastically:
                    rmsprop(..., nu_dtype=bf16, stochastic_rounding=True) for the
                    state, stochastic_param_rounding() for the parameters.
  bf16-params       bfloat16 parameters rounded to nearest, float32 state (what
                    rmsprop gives bfloat16 parameters by default).
  bf16-params-stochastic
                    bfloat16 parameters rounded stochastically, float32 state.

In the bfloat16 settings the forward and backward passes run in bfloat16 too;
only the loss is computed in float32.

Why a small learning rate. RMSprop's step is about the learning rate in size
(it divides the gradient by its own root mean square). A bfloat16 weight of
magnitude 0.1 has a unit in the last place of 2**-11 ~ 0.0005, so with
round-to-nearest every step under 0.00025 leaves it exactly where it was. The
default, 3e-4 (a tenth of the demo's), is in that regime; the column "steps
lost" counts the nonzero updates that changed nothing. `--sweep` trains every
setting at 1e-4, 1e-3 and 3e-3 as well, so that the dependence on the
learning rate is shown rather than chosen. With `--decay 0.999` the second
moment is a slow average, which bfloat16 state rounded to nearest cannot
follow either.

Printed for each setting: bytes per parameter of the parameters and the
optimizer state together (counted from the actual pytrees), final training
loss (whole training set) and test accuracy as mean ± standard deviation over
the seeds, and the difference from float32 with its standard error: "within
noise" when at most two standard errors. The figure (OUT/bf16_training.png)
shows the loss curves, and each setting's loss divided by float32's from the
same seed, during training and at the end for every learning rate (lines:
the mean over seeds; bands and bars: lowest to highest). OUT/results.json has
the numbers.

Run:  python examples/bf16_training.py [--steps 3000] [--seeds 8] [--out bf16_output]
"""

from __future__ import annotations

import argparse
import functools
import json
import pathlib
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from tqdm import tqdm

import rmsprop_jax

# --------------------------------------------------------------------------
# Data and model: the demo's.


def load_data(seed: int = 0):
    """Digits scaled to [0, 1], split 80/20 into train and test (as in demo.py)."""
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    return train_test_split(x, y.astype(np.int32), test_size=0.2, random_state=seed, stratify=y)


class MLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs, hidden: int = 128):
        self.hidden = nnx.Linear(64, hidden, rngs=rngs)
        self.out = nnx.Linear(hidden, 10, rngs=rngs)

    def __call__(self, x):
        return self.out(nnx.relu(self.hidden(x)))


# The model's structure; its weights travel separately, as a pytree, so that
# plain optax drives them and jax.vmap trains all seeds at once.
GRAPHDEF, _ = nnx.split(MLP(nnx.Rngs(0)), nnx.Param)


def init_params(seed: int, dtype: Any) -> Any:
    """The float32 initialization of ``seed``, cast to ``dtype``: every setting
    starts from the same weights (rounded to nearest for bfloat16)."""
    _, params = nnx.split(MLP(nnx.Rngs(seed)), nnx.Param)
    return jax.tree.map(lambda p: p.astype(dtype), params)


def loss_fn(params: Any, x: jax.Array, y: jax.Array) -> jax.Array:
    """Mean cross-entropy; the model runs in its parameters' dtype, the loss in float32."""
    dtype = jax.tree.leaves(params)[0].dtype
    logits = nnx.merge(GRAPHDEF, params)(x.astype(dtype))
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), y).mean()


@jax.jit
@functools.partial(jax.vmap, in_axes=(0, None, None, None, None))
def evaluate(params: Any, x_train, y_train, x_test, y_test) -> tuple[jax.Array, jax.Array]:
    """Each seed's loss on the whole training set and accuracy on the test set."""
    dtype = jax.tree.leaves(params)[0].dtype
    logits = nnx.merge(GRAPHDEF, params)(x_test.astype(dtype))
    return loss_fn(params, x_train, y_train), jnp.mean(jnp.argmax(logits, axis=-1) == y_test)


# --------------------------------------------------------------------------
# The settings and their optimizers.


class Setting(NamedTuple):
    label: str
    param_dtype: Any
    state_dtype: Any  # None: the library's default, float32 for bf16 parameters
    round_state: bool  # stochastic rounding of the (bf16) optimizer state
    round_params: bool  # stochastic rounding of the (bf16) parameters


SETTINGS = {
    "float32": Setting("float32 params and state", jnp.float32, None, False, False),
    "bf16-nearest": Setting(
        "bf16 params and state, nearest", jnp.bfloat16, jnp.bfloat16, False, False
    ),
    "bf16-stochastic": Setting(
        "bf16 params and state, stochastic", jnp.bfloat16, jnp.bfloat16, True, True
    ),
    "bf16-params": Setting("bf16 params (nearest), f32 state", jnp.bfloat16, None, False, False),
    "bf16-params-stochastic": Setting(
        "bf16 params (stochastic), f32 state", jnp.bfloat16, None, False, True
    ),
    # About 3 bytes per parameter for parameters and state together: every
    # leaf's state in the 8-bit format (min_size=0), rounded stochastically.
    "bf16-8bit-stochastic": Setting(
        "bf16 params, 8-bit state, stochastic",
        jnp.bfloat16,
        rmsprop_jax.blockwise_8bit(min_size=0),
        True,
        True,
    ),
}


def make_optimizer(setting: Setting, learning_rate, decay, seed) -> optax.GradientTransformation:
    """RMSprop with its state stored as the setting says; stochastic_param_rounding
    last in the chain, right before optax.apply_updates."""
    tx = rmsprop_jax.rmsprop(
        learning_rate,
        decay=decay,
        nu_dtype=setting.state_dtype,
        mu_dtype=setting.state_dtype,
        stochastic_rounding=setting.round_state,
        seed=seed,
    )
    if setting.round_params:
        tx = optax.chain(tx, rmsprop_jax.stochastic_param_rounding(seed=seed))
    return tx


def bytes_per_parameter(params: Any, opt_state: Any) -> float:
    """Bytes of the parameters and the optimizer state together (step counters
    included), per parameter."""
    n = sum(p.size for p in jax.tree.leaves(params))
    nbytes = sum(x.nbytes for x in jax.tree.leaves((params, opt_state)))
    return nbytes / n


# --------------------------------------------------------------------------
# Training: a jitted chunk of steps (a scan), vmapped over seeds. The learning
# rate, decay and rounding seed are traced arguments, so one compilation per
# setting serves every learning rate and seed.


def lost_share(params: Any, updates: Any, new_params: Any) -> jax.Array:
    """The share of nonzero updates that left their parameter exactly unchanged:
    with round-to-nearest, the steps lost to rounding. (Not meaningful after
    stochastic_param_rounding, which itself returns a zero update for each
    step it rounds back to p, and a whole unit in the last place for others.)"""
    nonzero = lost = jnp.zeros([], jnp.int32)
    for p, u, new in zip(*(jax.tree.leaves(t) for t in (params, updates, new_params))):
        nonzero += jnp.sum(u != 0, dtype=jnp.int32)
        lost += jnp.sum((u != 0) & (new == p), dtype=jnp.int32)
    return lost.astype(jnp.float32) / jnp.maximum(nonzero, 1).astype(jnp.float32)


@functools.partial(jax.jit, static_argnums=0, donate_argnums=(1, 2))
def train_chunk(setting, params, opt_state, xs, ys, learning_rate, decay, seeds):
    """``xs[s, t]`` is seed ``s``'s batch at step ``t`` of the chunk. Returns the
    new parameters and state, and each seed's mean share of lost updates."""

    def one_seed(params, opt_state, xs, ys, seed):
        tx = make_optimizer(setting, learning_rate, decay, seed)

        def train_step(carry, batch):
            params, opt_state = carry
            grads = jax.grad(loss_fn)(params, *batch)
            updates, opt_state = tx.update(grads, opt_state, params)
            new_params = optax.apply_updates(params, updates)
            return (new_params, opt_state), lost_share(params, updates, new_params)

        (params, opt_state), lost = jax.lax.scan(train_step, (params, opt_state), (xs, ys))
        return params, opt_state, lost.mean()

    return jax.vmap(one_seed)(params, opt_state, xs, ys, seeds)


def train(name, learning_rate, decay, data, batches, eval_every):
    """Trains one setting from every seed in ``batches`` (seed -> steps x batch
    indices), evaluating every ``eval_every`` steps."""
    setting = SETTINGS[name]
    x_np, y_np = data[0], data[2]  # batches are gathered in NumPy
    x_train, x_test, y_train, y_test = (jnp.asarray(a) for a in data)
    seeds = list(batches)
    params = [init_params(s, setting.param_dtype) for s in seeds]
    opt_state = [
        make_optimizer(setting, learning_rate, decay, s).init(p) for p, s in zip(params, seeds)
    ]
    bpp = bytes_per_parameter(params[0], opt_state[0])
    params, opt_state = (jax.tree.map(lambda *xs: jnp.stack(xs), *t) for t in (params, opt_state))
    initial = jax.tree.map(jnp.copy, params)  # the run donates its buffers
    index = np.stack([batches[s] for s in seeds])  # (seed, step, example)
    steps = index.shape[1]
    traced = (jnp.float32(learning_rate), jnp.float32(decay), jnp.asarray(seeds, jnp.uint32))

    evaluated_at, losses, accuracies, lost = [], [], [], []

    def record(step, params):
        loss, acc = evaluate(params, x_train, y_train, x_test, y_test)
        evaluated_at.append(step)
        losses.append(np.asarray(loss))
        accuracies.append(np.asarray(acc))

    record(0, params)
    with tqdm(total=steps, desc=f"lr {learning_rate:<7g}{setting.label:<36}", ncols=100) as bar:
        for start in range(0, steps, eval_every):
            i = index[:, start : start + eval_every]
            params, opt_state, chunk_lost = train_chunk(
                setting, params, opt_state, x_np[i], y_np[i], *traced
            )
            lost.append(np.asarray(chunk_lost))
            record(start + i.shape[1], params)
            bar.update(i.shape[1])
            bar.set_postfix(loss=f"{losses[-1].mean():.4f}")
    return {
        "steps": np.asarray(evaluated_at),
        "losses": np.stack(losses, axis=1),  # (seed, evaluation)
        "accuracies": np.stack(accuracies, axis=1),
        "lost": np.stack(lost, axis=1),  # (seed, chunk)
        "bytes_per_param": bpp,
        "initial_params": initial,
        "params": params,
    }


# --------------------------------------------------------------------------
# Summaries.


def within_noise(a: np.ndarray, b: np.ndarray) -> tuple[float, float, bool]:
    """(difference of the means of ``a`` and ``b``, its standard error from their
    spreads, whether the difference is at most two standard errors)."""
    diff = float(np.mean(a) - np.mean(b))
    se = float(np.sqrt(np.var(a, ddof=1) / len(a) + np.var(b, ddof=1) / len(b)))
    return diff, se, abs(diff) <= 2 * se


def mean_std(x: np.ndarray, digits: int = 3) -> str:
    return f"{np.mean(x):.{digits}g} ± {np.std(x, ddof=1):.2g}"


def summarize(runs: dict) -> dict:
    """Final loss and accuracy of each setting, and how far from float32."""
    ref = runs["float32"]
    table = {}
    for name, r in runs.items():
        row = {
            "bytes_per_param": r["bytes_per_param"],
            # None where stochastic_param_rounding decides which steps are taken.
            "lost_first_chunk": None
            if SETTINGS[name].round_params
            else float(r["lost"][:, 0].mean()),
            "lost_last_chunk": None
            if SETTINGS[name].round_params
            else float(r["lost"][:, -1].mean()),
        }
        for key in ("losses", "accuracies"):
            final, ref_final = r[key][:, -1], ref[key][:, -1]
            diff, se, ok = within_noise(final, ref_final)
            row[key] = {
                "mean": float(final.mean()),
                "std": float(final.std(ddof=1)),
                "minus_float32": diff,
                "standard_error": se,
                "within_noise": ok,
            }
        table[name] = row
    return table


def plot(sweep: dict, main_lr: float, out: pathlib.Path) -> None:
    """Loss curves at the main learning rate; each setting's loss divided by
    float32's from the same seed, over training and at the end against the
    learning rate. Lines: mean over seeds; bands and bars: lowest to highest."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter

    styles = {
        "float32": dict(color="k", lw=3, alpha=0.5),
        "bf16-nearest": dict(color="tab:red"),
        "bf16-stochastic": dict(color="tab:blue"),
        "bf16-params": dict(color="tab:orange", ls="--"),
        "bf16-params-stochastic": dict(color="tab:cyan", ls="--"),
        "bf16-8bit-stochastic": dict(color="tab:green", ls=":"),
    }
    runs = sweep[main_lr]
    n_seeds = len(runs["float32"]["losses"])
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(18, 4.8))
    for name, r in runs.items():
        style = styles[name]
        for ax, c in ((ax1, r["losses"]), (ax2, r["losses"] / runs["float32"]["losses"])):
            ax.plot(r["steps"], c.mean(0), label=SETTINGS[name].label, **style)
            ax.fill_between(r["steps"], c.min(0), c.max(0), color=style["color"], alpha=0.15, lw=0)
    ax1.set_yscale("log")
    ax1.set_ylabel("training loss (whole training set)")
    ax1.set_title(f"Digits MLP, RMSprop lr {main_lr:g}, {n_seeds} seeds")
    ax1.legend()
    ax2.set_ylabel("training loss / float32's (same seed)")
    ax2.set_title(f"Relative to float32, lr {main_lr:g}")
    for ax in (ax1, ax2):
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)

    lrs = sorted(sweep)
    for name in runs:
        ratios = [
            sweep[lr][name]["losses"][:, -1] / sweep[lr]["float32"]["losses"][:, -1] for lr in lrs
        ]
        mean = np.array([x.mean() for x in ratios])
        spread = [mean - [x.min() for x in ratios], [x.max() for x in ratios] - mean]
        ax3.errorbar(lrs, mean, yerr=spread, marker="o", capsize=3, **styles[name])
    ax3.set_xscale("log")
    ax3.set_yscale("log")
    ax3.set_xlabel("learning rate")
    ax3.set_ylabel("final training loss / float32's (same seed)")
    ax3.set_title("At the end of training, by learning rate")
    ax3.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax3.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
    ax3.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--steps", type=int, default=3000, help="training steps per run")
    parser.add_argument(
        "--seeds",
        type=int,
        default=8,
        help="runs 0..N-1 of each setting (at least 2); a seed sets the initial weights, "
        "the batches and the rounding",
    )
    parser.add_argument(
        "--learning-rate",
        type=float,
        default=3e-4,
        help="RMSprop learning rate of the main table and the loss curves",
    )
    parser.add_argument(
        "--sweep",
        type=float,
        nargs="*",
        metavar="LR",
        default=[1e-4, 1e-3, 3e-3],
        help="further learning rates, for the by-learning-rate tables and the right-hand "
        "panel; give none to skip",
    )
    parser.add_argument(
        "--decay",
        type=float,
        default=0.9,
        help="RMSprop decay: 0.9 is the demo's; 0.999 makes the second moment a slow average",
    )
    parser.add_argument("--batch-size", type=int, default=64, help="examples per step")
    parser.add_argument(
        "--settings",
        nargs="+",
        metavar="NAME",
        choices=list(SETTINGS),
        default=list(SETTINGS),
        help="which settings to train; float32, the reference, is always trained. "
        + "; ".join(f"{name}: {s.label}" for name, s in SETTINGS.items()),
    )
    parser.add_argument(
        "--eval-every",
        type=int,
        default=50,
        help="steps between points of the loss curves; also the window of 'steps lost'",
    )
    parser.add_argument("--out", default="bf16_output", help="folder for the figure and results")
    parser.add_argument("--no-plot", action="store_true", help="skip the figure")
    args = parser.parse_args(argv)
    if args.seeds < 2:
        parser.error("`--seeds` must be at least 2: the spread over seeds is the noise.")
    names = ["float32"] + [n for n in args.settings if n != "float32"]
    lrs = [args.learning_rate] + [lr for lr in args.sweep if lr != args.learning_rate]
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    data = load_data()
    # Each seed's batches, the same for every setting and learning rate.
    batches = {}
    for s in range(args.seeds):
        rng = np.random.default_rng(s)
        batches[s] = np.stack(
            [rng.choice(len(data[0]), args.batch_size, replace=False) for _ in range(args.steps)]
        )
    print(
        f"Digits: {len(data[0])} training and {len(data[1])} test images. RMSprop, decay "
        f"{args.decay:g}, {args.steps} steps of {args.batch_size}, seeds 0..{args.seeds - 1}."
    )

    start = time.perf_counter()
    sweep = {
        lr: {name: train(name, lr, args.decay, data, batches, args.eval_every) for name in names}
        for lr in lrs
    }
    wall = time.perf_counter() - start

    tables = {lr: summarize(runs) for lr, runs in sweep.items()}
    table = tables[args.learning_rate]
    print(
        f"\nLearning rate {args.learning_rate:g}: mean ± standard deviation over {args.seeds} "
        f"seeds after {args.steps} steps.\n"
        f"{'setting':<38}{'bytes/param':>12}{'train loss':>20}{'test accuracy':>20}"
        f"{f'steps lost, first/last {args.eval_every}':>28}"
    )
    for name, row in table.items():
        r = sweep[args.learning_rate][name]
        lost = (
            "-"
            if row["lost_first_chunk"] is None
            else f"{row['lost_first_chunk']:.0%} / {row['lost_last_chunk']:.0%}"
        )
        print(
            f"{SETTINGS[name].label:<38}{row['bytes_per_param']:>12.3f}"
            f"{mean_std(r['losses'][:, -1]):>20}{mean_std(r['accuracies'][:, -1]):>20}"
            f"{lost:>28}"
        )
    print(
        "\nAgainst float32 (difference of means ± its standard error; within noise when at "
        "most two standard errors):"
    )
    for name, row in table.items():
        if name == "float32":
            continue
        cells = []
        for key, what in (("losses", "loss"), ("accuracies", "accuracy")):
            c = row[key]
            verdict = "within noise" if c["within_noise"] else "OUTSIDE noise"
            cells.append(
                f"{what} {c['minus_float32']:+.2g} ± {c['standard_error']:.2g} ({verdict})"
            )
        print(f"  {SETTINGS[name].label:<38}" + "   ".join(cells))

    if len(sweep) > 1:
        print(
            f"\nBy learning rate, mean ± standard deviation over {args.seeds} seeds "
            "(*: outside noise of float32):"
        )
        for key, what in (("losses", "final train loss"), ("accuracies", "test accuracy")):
            print(f"{what:<38}" + "".join(f"{f'lr {lr:g}':>20}" for lr in sorted(sweep)))
            for name in names:
                cells = [
                    mean_std(sweep[lr][name][key][:, -1])
                    + ("*" if not tables[lr][name][key]["within_noise"] else " ")
                    for lr in sorted(sweep)
                ]
                print(f"  {SETTINGS[name].label:<36}" + "".join(f"{c:>20}" for c in cells))
        print(f"{f'steps lost, last {args.eval_every}':<38}")
        for name in names:
            if SETTINGS[name].round_params:
                continue
            cells = [f"{tables[lr][name]['lost_last_chunk']:.0%} " for lr in sorted(sweep)]
            print(f"  {SETTINGS[name].label:<36}" + "".join(f"{c:>20}" for c in cells))

    print(f"\nTraining took {wall:.0f} s.")
    results = {
        "args": vars(args),
        "wall_s": wall,
        "by_learning_rate": {f"{lr:g}": tables[lr] for lr in sorted(sweep)},
    }
    (out / "results.json").write_text(json.dumps(results, indent=2))
    if not args.no_plot:
        figure = out / "bf16_training.png"
        plot(sweep, args.learning_rate, figure)
        print(f"Figure: {figure}   numbers: {out / 'results.json'}")
    return {"runs": sweep, "summary": results}


if __name__ == "__main__":
    main()
