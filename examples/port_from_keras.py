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

import os
import pathlib
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")  # before Keras is imported
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))  # for _port_common

import _port_common as common
import jax
import jax.numpy as jnp
import keras
import numpy as np
import optax
from flax import nnx
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

    return {
        "keras_losses": keras_losses,
        "jax_losses": jax_losses,
        **common.relative_difference(jax_losses, keras_losses),
        # Of the len(batches) * variables gradients, how many clipnorm shortened.
        "clipped_fraction": clipped / (len(batches) * variables),
        "keras_s": keras_s,
        "jax_s": jax_s,
    }


def plot(results: dict, path: pathlib.Path) -> None:
    title = "keras.optimizers.RMSprop vs presets.keras"
    common.plot_comparison(results, path, key="keras", label="Keras", title=title)


def main(argv: list[str] | None = None) -> dict:
    parser = common.parser(__doc__.splitlines()[0], NETWORKS, "Keras")
    args = parser.parse_args(argv)
    if keras.backend.backend() != "jax":
        parser.error(f"needs Keras' JAX backend (KERAS_BACKEND=jax), not {keras.backend.backend()}")

    x, y = common.load_data(np.int32)
    batches = common.batch_indices(len(x), args.batch_size, args.steps, args.seed)
    print(f"{len(x)} digits, {args.steps} batches of {args.batch_size}.")
    print(f"keras.optimizers.RMSprop({', '.join(f'{k}={v}' for k, v in HYPERPARAMETERS.items())})")
    print(f"  with ExponentialDecay({LEARNING_RATE}, decay_steps={HALF_LIFE}, decay_rate=0.5);")
    print("rmsprop_jax.presets.keras with the same arguments and the schedule as a function.")

    results = common.run_all(
        args, lambda name, dtype: compare(name, dtype, x, y, batches, args.seed)
    )

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
    draw = None if args.no_plot else lambda path: plot(results, path)
    common.write(args.out, "port_from_keras", summary, draw)
    return results


if __name__ == "__main__":
    main()
