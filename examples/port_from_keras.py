"""Porting a Keras training run to JAX: the same loss curve, step for step.

A Keras 3 model compiled with ``keras.optimizers.RMSprop`` (momentum, per-variable
``clipnorm``, weight decay, and an ``ExponentialDecay`` schedule) and trained
with ``model.train_on_batch`` is rebuilt in Flax NNX from the same initial
weights and trained on the same batches with

    rmsprop_jax.presets.keras(learning_rate=schedule, rho=..., momentum=...,
                              epsilon=..., weight_decay=..., clipnorm=...)

which takes Keras' arguments unchanged. Two networks are ported, an MLP and a
small CNN, each in float64 and in float32, on scikit-learn's bundled
handwritten digits (1797 images of 8x8 pixels, no download). Keras runs on
its JAX backend here, so both sides are compiled by XLA.

What to expect. In float64 the two loss curves agree to far better than 1e-9
relative over the default 1000 steps. In float32 they agree to about 1e-7 at
first: the two sides are different XLA programs, which write the
cross-entropy, the clipping and the update with the operations in different
orders, so they round differently in the last bit. Now and then the
difference jumps by orders of magnitude: when an example's input to a ReLU
is nearer zero than the two runs' rounding difference, that unit is active
for it in one run and not in the other, the two gradients differ by the
example's whole contribution, and RMSprop, which divides each gradient by
its running RMS, turns even a small contribution to a nearly silent unit
into a full-size step. After a few such events the two are separate runs of
the same training: the batch losses no longer agree digit for digit, but the
curves keep the same shape and level.

Three things in Keras' optimizer are easy to get wrong in a port, and the
preset does them as Keras does:

* ``clipnorm`` clips each variable's gradient to that norm on its own (optax's
  ``clip_by_global_norm`` is Keras' ``global_clipnorm``, a different thing);
* weight decay is decoupled and happens before the RMSprop step, as
  ``p <- p - learning_rate * weight_decay * p``, on every variable, biases too;
* the learning rate multiplies the gradient inside the momentum buffer, and
  ``epsilon`` is added under the square root.

Porting the model itself is easy: Keras and Flax both store a dense kernel as
(in, out) and a convolution kernel as (h, w, in, out), both work on NHWC
images, and both pad ``"same"`` by TensorFlow's rule (an 8-pixel side at
stride 2 gets (0, 1)), so the weights copy across unchanged.

Run:  python examples/port_from_keras.py [--steps 1000] [--out port_output]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import time

os.environ.setdefault("KERAS_BACKEND", "jax")  # before Keras is imported

import jax
import jax.numpy as jnp
import keras
import numpy as np
import optax
from flax import nnx
from sklearn.datasets import load_digits
from tqdm import tqdm

from rmsprop_jax import presets

# --------------------------------------------------------------------------
# The optimizer, written once as Keras' keyword arguments, and its schedule.

HYPERPARAMETERS = dict(rho=0.9, momentum=0.9, epsilon=1e-7, weight_decay=0.01, clipnorm=0.5)
LEARNING_RATE = 1e-3
HALF_LIFE = 500  # steps in which the learning rate halves


def keras_schedule() -> keras.optimizers.schedules.LearningRateSchedule:
    return keras.optimizers.schedules.ExponentialDecay(
        LEARNING_RATE, decay_steps=HALF_LIFE, decay_rate=0.5
    )


def jax_schedule(count: jax.Array) -> jax.Array:
    """The same rate as a function of the preset's step count, which Keras too
    evaluates before it increments it.

    Keras computes ``initial * decay_rate ** (step / decay_steps)`` in its
    float type; this is the same arithmetic. (``optax.exponential_decay``
    would do, but it computes in float32 from an int32 count even with
    float64 on, and in float64 that shows.)
    """
    t = jnp.asarray(count, float)  # float64 when float64 is on, else float32
    return LEARNING_RATE * jnp.power(0.5, t / HALF_LIFE)


# --------------------------------------------------------------------------
# Data: the digits scaled to [0, 1], and one fixed sequence of batches.


def load_data() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_digits(return_X_y=True)
    return x / 16.0, y.astype(np.int32)


def batch_indices(n: int, batch_size: int, steps: int, seed: int) -> np.ndarray:
    """The examples of each of ``steps`` batches, shape (steps, batch_size):
    shuffled epochs without their last partial batch."""
    rng = np.random.default_rng(seed)
    per_epoch = n // batch_size
    epochs = -(-steps // per_epoch)
    order = np.concatenate([rng.permutation(n)[: per_epoch * batch_size] for _ in range(epochs)])
    return order[: steps * batch_size].reshape(steps, batch_size)


# --------------------------------------------------------------------------
# The networks in Keras ...


def keras_mlp() -> keras.Model:
    return keras.Sequential(
        [keras.Input((64,)), keras.layers.Dense(64, activation="relu"), keras.layers.Dense(10)]
    )


def keras_cnn() -> keras.Model:
    # (N, 64) -> (N, 8, 8, 1) -> (N, 8, 8, 8) -> (N, 4, 4, 16) -> (N, 256) -> (N, 10)
    return keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Reshape((8, 8, 1)),
            keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
            keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(10),
        ]
    )


# ... and in Flax NNX, with a method that copies Keras' weights in.


def copy_layer(layer: nnx.Linear | nnx.Conv, keras_layer: keras.layers.Layer) -> None:
    """Kernel and bias, which have the same layout in Keras and in Flax."""
    for param, value in zip([layer.kernel, layer.bias], keras_layer.get_weights(), strict=True):
        assert param.shape == value.shape, f"shape {value.shape} for a parameter of {param.shape}"
        param.set_value(jax.device_put(np.asarray(value, param.dtype)))


class MLP(nnx.Module):
    def __init__(self, dtype: jnp.dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=dtype, rngs=rngs)
        self.hidden = nnx.Linear(64, 64, **kw)
        self.out = nnx.Linear(64, 10, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.out(nnx.relu(self.hidden(x)))

    def copy_from(self, model: keras.Model) -> None:
        copy_layer(self.hidden, model.layers[0])
        copy_layer(self.out, model.layers[1])


class CNN(nnx.Module):
    def __init__(self, dtype: jnp.dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=dtype, rngs=rngs)
        self.conv1 = nnx.Conv(1, 8, (3, 3), padding="SAME", **kw)
        self.conv2 = nnx.Conv(8, 16, (3, 3), strides=(2, 2), padding="SAME", **kw)
        self.out = nnx.Linear(256, 10, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.reshape(-1, 8, 8, 1)
        x = nnx.relu(self.conv2(nnx.relu(self.conv1(x))))
        return self.out(x.reshape(x.shape[0], -1))

    def copy_from(self, model: keras.Model) -> None:
        copy_layer(self.conv1, model.layers[1])
        copy_layer(self.conv2, model.layers[2])
        copy_layer(self.out, model.layers[4])


NETWORKS = {"MLP": (keras_mlp, MLP), "CNN": (keras_cnn, CNN)}


# --------------------------------------------------------------------------
# Training: the Keras loop as it was, ...


def train_keras(model, x, y, batches, desc) -> np.ndarray:
    model.compile(
        optimizer=keras.optimizers.RMSprop(learning_rate=keras_schedule(), **HYPERPARAMETERS),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    losses = []
    for idx in tqdm(batches, desc=desc, ncols=80, leave=False):
        losses.append(model.train_on_batch(x[idx], y[idx]))
    return np.array(losses)


# ... and its port: the model split into a definition and a parameter pytree,
# and one jitted step that takes and returns the optimizer state. The step
# also counts the variables whose gradient norm exceeds ``clipnorm``, to show
# that clipping takes part.


def train_jax(model, x, y, batches, dtype, desc) -> tuple[np.ndarray, int]:
    graphdef, params = nnx.split(model)
    tx = presets.keras(learning_rate=jax_schedule, **HYPERPARAMETERS)
    opt_state = tx.init(params)

    @jax.jit
    def train_step(params, opt_state, x, y):
        def loss_fn(params):
            logits = nnx.merge(graphdef, params)(x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        clipped = sum(
            jnp.linalg.norm(g.ravel()) > HYPERPARAMETERS["clipnorm"] for g in jax.tree.leaves(grads)
        )
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, clipped

    x = np.asarray(x, dtype)
    y = np.asarray(y, np.int32)
    losses, clipped = [], []
    for idx in tqdm(batches, desc=desc, ncols=80, leave=False):
        params, opt_state, loss, n = train_step(params, opt_state, x[idx], y[idx])
        losses.append(loss)
        clipped.append(n)
    return np.array([float(loss) for loss in losses]), int(sum(int(n) for n in clipped))


# --------------------------------------------------------------------------
# One comparison: a network in one dtype, trained by both from the same start.


def compare(name: str, dtype: str, x, y, batches, seed: int) -> dict:
    make_keras, make_flax = NETWORKS[name]
    # Keras' layers take their dtype from the global policy, its optimizer from floatx.
    floatx, policy = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx(dtype)
    keras.config.set_dtype_policy(dtype)
    try:
        keras.utils.set_random_seed(seed)
        keras_model = make_keras()
        # The Flax model is only shaped (no random weights drawn): Keras' are copied in.
        model = nnx.eval_shape(lambda: make_flax(jnp.dtype(dtype), nnx.Rngs(seed)))
        model.copy_from(keras_model)
        variables = len(keras_model.trainable_variables)

        start = time.perf_counter()
        keras_losses = train_keras(
            keras_model, x.astype(dtype), y, batches, f"{name} {dtype} keras"
        )
        keras_s = time.perf_counter() - start
    finally:
        keras.config.set_floatx(floatx)
        keras.config.set_dtype_policy(policy)
    start = time.perf_counter()
    jax_losses, clipped = train_jax(model, x, y, batches, jnp.dtype(dtype), f"{name} {dtype} jax")
    jax_s = time.perf_counter() - start

    relative = np.abs(jax_losses - keras_losses) / np.abs(keras_losses)
    above = np.flatnonzero(relative > 1e-3)
    return {
        "keras_losses": keras_losses,
        "jax_losses": jax_losses,
        "relative_difference": relative,
        # Steps before the first relative difference above 1e-3 (all of them if none).
        "steps_within_1e-3": int(above[0]) if len(above) else len(relative),
        # Of the len(batches) * variables gradients, how many clipnorm shortened.
        "clipped_fraction": clipped / (len(batches) * variables),
        "keras_s": keras_s,
        "jax_s": jax_s,
    }


def plot(results: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 2, figsize=(12, 4.2 * len(results)), squeeze=False)
    for (ax_loss, ax_diff), (name, by_dtype) in zip(axes, results.items()):
        for dtype, r in by_dtype.items():
            steps = np.arange(1, len(r["keras_losses"]) + 1)
            ax_loss.plot(steps, r["keras_losses"], lw=2.5, alpha=0.5, label=f"Keras, {dtype}")
            ax_loss.plot(steps, r["jax_losses"], lw=0.8, label=f"rmsprop_jax, {dtype}")
            # A log scale cannot show 0 (exact agreement): it is drawn at 1e-18.
            relative = np.maximum(r["relative_difference"], 1e-18)
            ax_diff.semilogy(steps, relative, lw=0.8, label=dtype)
        ax_loss.set_yscale("log")
        ax_loss.set_xlabel("step")
        ax_loss.set_ylabel("training loss of the batch")
        ax_loss.set_title(f"{name}: keras.optimizers.RMSprop vs presets.keras")
        ax_loss.legend()
        ax_loss.grid(alpha=0.3)
        ax_diff.axhline(1e-9, color="gray", ls=":", lw=1, label="1e-9")
        ax_diff.set_xlabel("step")
        ax_diff.set_ylabel("|loss_jax - loss_keras| / loss_keras")
        ax_diff.set_title(f"{name}: relative difference (0 drawn at 1e-18)")
        ax_diff.legend()
        ax_diff.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--steps", type=int, default=1000, help="training steps of every run (default: %(default)s)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=64, help="examples per batch (default: %(default)s)"
    )
    parser.add_argument(
        "--networks",
        nargs="+",
        choices=list(NETWORKS),
        default=list(NETWORKS),
        help="the networks to port (default: both)",
    )
    parser.add_argument(
        "--dtypes",
        nargs="+",
        choices=["float64", "float32"],
        default=["float64", "float32"],
        help="the precisions to run each network in (default: both)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seeds Keras' initial weights and the batch order (default: %(default)s)",
    )
    parser.add_argument(
        "--out",
        default="port_output",
        help="folder for the PNG and the JSON (default: %(default)s)",
    )
    parser.add_argument("--no-plot", action="store_true", help="write the JSON but no PNG")
    args = parser.parse_args(argv)
    if keras.backend.backend() != "jax":
        parser.error(f"needs Keras' JAX backend (KERAS_BACKEND=jax), not {keras.backend.backend()}")

    x, y = load_data()
    batches = batch_indices(len(x), args.batch_size, args.steps, args.seed)
    print(f"{len(x)} digits, {args.steps} batches of {args.batch_size}.")
    print(f"keras.optimizers.RMSprop({', '.join(f'{k}={v}' for k, v in HYPERPARAMETERS.items())})")
    print(f"  with ExponentialDecay({LEARNING_RATE}, decay_steps={HALF_LIFE}, decay_rate=0.5);")
    print("rmsprop_jax.presets.keras with the same arguments and the schedule as a function.")

    results: dict[str, dict[str, dict]] = {}
    for name in args.networks:
        for dtype in args.dtypes:
            # JAX computes in float32 unless float64 is switched on.
            with jax.enable_x64(dtype == "float64"):
                results.setdefault(name, {})[dtype] = compare(name, dtype, x, y, batches, args.seed)

    print(
        f"\n{'network':<9}{'dtype':<9}{'final loss Keras':>18}{'final loss jax':>18}"
        f"{'max rel. diff':>15}{'steps within 1e-3':>19}{'clipped':>9}{'Keras s':>9}{'jax s':>7}"
    )
    for name, by_dtype in results.items():
        for dtype, r in by_dtype.items():
            print(
                f"{name:<9}{dtype:<9}{r['keras_losses'][-1]:>18.10f}{r['jax_losses'][-1]:>18.10f}"
                f"{r['relative_difference'].max():>15.2e}{r['steps_within_1e-3']:>19d}"
                f"{r['clipped_fraction']:>9.1%}{r['keras_s']:>9.1f}{r['jax_s']:>7.1f}"
            )
    print("(clipped: the share of the variables' gradients that clipnorm shortened)")

    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {
        "steps": args.steps,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "hyperparameters": dict(HYPERPARAMETERS, learning_rate=LEARNING_RATE),
        "schedule": {"exponential_decay_half_life": HALF_LIFE},
        "runs": {
            name: {
                dtype: {
                    "final_loss_keras": float(r["keras_losses"][-1]),
                    "final_loss_jax": float(r["jax_losses"][-1]),
                    "max_relative_difference": float(r["relative_difference"].max()),
                    "steps_within_1e-3": r["steps_within_1e-3"],
                    "clipped_fraction": r["clipped_fraction"],
                    "keras_losses": r["keras_losses"].tolist(),
                    "jax_losses": r["jax_losses"].tolist(),
                }
                for dtype, r in by_dtype.items()
            }
            for name, by_dtype in results.items()
        },
    }
    written = [out / "port_from_keras.json"]
    written[0].write_text(json.dumps(summary, indent=1))
    if not args.no_plot:
        plot(results, out / "port_from_keras.png")
        written.append(out / "port_from_keras.png")
    print("\nWrote " + " and ".join(map(str, written)))
    return results


if __name__ == "__main__":
    main()
