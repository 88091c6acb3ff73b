"""Published RMSprop training setups, rebuilt with rmsprop_jax.

One function per recipe; each returns an Optax transformation (and, where the
original anneals its learning rate, the schedule), with the original's
settings as defaults. Setups that are exactly a preset with its defaults (DQN
as in Nature 2015, Graves 2013) are the preset itself:
``rmsprop_jax.presets.dqn_nature_2015()``, ``rmsprop_jax.presets.graves_2013()``.
``docs/recipes.md`` explains each one and what to watch
for when porting it; ``tests/test_recipes.py`` checks each against the
original's update, step by step.

    import recipes                               # examples/ on sys.path
    optimizer = recipes.dqn_zoo()
    optimizer, schedule = recipes.impala_torchbeast(total_steps=30_000_000)

Run ``python examples/recipes.py`` to print every recipe's settings.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

import rmsprop_jax
from rmsprop_jax import presets

# --------------------------------------------------------------------------
# DQN.


def dqn_zoo(learning_rate: float = 2.5e-4, batch_size: int = 32) -> optax.GradientTransformation:
    """DQN as in DeepMind's DQN Zoo (JAX), whose loss is a mean over the batch.

    Source: ``dqn_zoo/dqn/run_atari.py`` (flags ``learning_rate=0.00025``,
    ``optimizer_epsilon=0.01 / 32**2``, ``optax.rmsprop(decay=0.95,
    centered=True)``) and ``dqn_zoo/dqn/agent.py`` (``loss_fn``: the mean of
    the squared TD errors, their gradient clipped to ``grad_error_bound=1/32``).
    A mean gradient is the Lua code's sum divided by ``batch_size``; dividing
    ``eps`` by ``batch_size**2`` makes the step exactly the Lua code's.
    """
    return presets.dqn_nature_2015(
        learning_rate, decay=0.95, min_squared_gradient=0.01 / batch_size**2
    )


def dopamine_dqn(learning_rate: float = 2.5e-4) -> optax.GradientTransformation:
    """DQN as in Dopamine's TensorFlow agent: TF1 ``RMSPropOptimizer``, centered.

    Source: ``dopamine/agents/dqn/dqn_agent.py`` (``DQNAgent.__init__``'s
    default ``optimizer=tf.compat.v1.train.RMSPropOptimizer(learning_rate=
    0.00025, decay=0.95, momentum=0.0, epsilon=0.00001, centered=True)``;
    ``_build_train_op``: the mean Huber loss) and ``configs/dqn.gin`` (the
    same values). TensorFlow 1 starts the mean square at one.
    """
    return presets.tensorflow_v1(
        learning_rate, decay=0.95, momentum=0.0, epsilon=1e-5, centered=True
    )


# --------------------------------------------------------------------------
# IMPALA.


def impala_torchbeast(
    total_steps: int,
    unroll_length: int = 80,
    batch_size: int = 8,
    learning_rate: float = 0.00048,
    alpha: float = 0.99,
    epsilon: float = 0.01,
    momentum: float = 0.0,
    grad_norm_clipping: float = 40.0,
    loss_reduction: str = "sum",
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """IMPALA as in torchbeast's ``monobeast.py``: PyTorch RMSprop, clipping, linear decay.

    Source: ``torchbeast/monobeast.py`` (flags ``--learning_rate 0.00048``,
    ``--alpha 0.99``, ``--momentum 0``, ``--epsilon 0.01``,
    ``--grad_norm_clipping 40``; ``train``: ``torch.optim.RMSprop``,
    ``lr_lambda(epoch) = 1 - min(epoch * T * B, total_steps) / total_steps``
    through ``LambdaLR``, stepped once per learner step; ``learn``:
    ``clip_grad_norm_`` before ``optimizer.step()``). Its losses are *sums*
    over the ``T * B`` time steps of a batch (``compute_baseline_loss`` and the
    others use ``torch.sum``). With ``loss_reduction="mean"`` the clipping
    norm and ``epsilon`` are divided by ``T * B``, which gives the same steps
    for a loss averaged over the batch instead.

    Returns:
      ``(optimizer, schedule)``; ``schedule(count)`` is the learning rate.
    """
    if loss_reduction not in ("sum", "mean"):
        raise ValueError(f'`loss_reduction` must be "sum" or "mean", got {loss_reduction!r}.')
    frames = unroll_length * batch_size  # environment steps per learner step
    scale = 1.0 if loss_reduction == "sum" else 1.0 / frames
    last = -(-total_steps // frames)  # the first learner step whose rate is 0

    def schedule(count: jax.Array) -> jax.Array:
        steps = jnp.asarray(jnp.minimum(count, last), float) * frames  # no int32 overflow
        return learning_rate * (1 - jnp.minimum(steps, total_steps) / total_steps)

    optimizer = optax.chain(
        optax.clip_by_global_norm(grad_norm_clipping * scale),
        presets.pytorch(lr=schedule, alpha=alpha, eps=epsilon * scale, momentum=momentum),
    )
    return optimizer, schedule


def impala_cleanba(
    num_updates: int,
    num_minibatches: int = 4,
    learning_rate: float = 0.0006,
    max_grad_norm: float = 40.0,
    gradient_accumulation_steps: int = 1,
    anneal_lr: bool = True,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """IMPALA as in cleanba's ``cleanba_impala.py``: PyTorch-style RMSprop in Optax.

    Source: ``cleanba/cleanba_impala.py`` (``Args``: ``learning_rate=0.0006``,
    ``max_grad_norm=40.0``, ``num_minibatches=4``,
    ``gradient_accumulation_steps=1``, ``anneal_lr=True``; ``linear_schedule``:
    ``learning_rate * (1 - (count // num_minibatches) / num_updates)``; the
    optimizer: ``optax.MultiSteps(optax.chain(optax.clip_by_global_norm(...),
    optax.inject_hyperparams(rmsprop_pytorch_style)(..., eps=0.01,
    decay=0.99)), every_k_schedule=gradient_accumulation_steps)``, where
    ``rmsprop_pytorch_style`` is PyTorch's RMSprop: ``eps`` outside the root).
    ``num_updates`` is ``total_timesteps // batch_size`` there. The rate is
    held at 0 after ``num_updates`` iterations, where cleanba's formula (never
    evaluated there, as cleanba stops) would turn negative.

    Returns:
      ``(optimizer, schedule)``. The current rate is
      ``state.inner_opt_state[1].hyperparams["lr"]``.
    """

    def schedule(count: jax.Array) -> jax.Array:
        iteration = jnp.asarray(count // num_minibatches, float)
        return learning_rate * jnp.maximum(1 - iteration / num_updates, 0)

    rmsprop = optax.inject_hyperparams(presets.pytorch)(
        lr=schedule if anneal_lr else learning_rate, alpha=0.99, eps=0.01
    )
    optimizer = optax.MultiSteps(
        optax.chain(optax.clip_by_global_norm(max_grad_norm), rmsprop),
        every_k_schedule=gradient_accumulation_steps,
    )
    return optimizer, schedule


# --------------------------------------------------------------------------
# A3C.


def a3c(
    total_updates: int,
    learning_rate: float = 7e-4,
    decay: float = 0.99,
    eps: float = 0.1,
    max_grad_norm: float | None = 40.0,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """A3C's RMSprop with shared statistics (Mnih et al., 2016), annealed to zero.

    Source: Mnih et al., *Asynchronous Methods for Deep Reinforcement
    Learning*, ICML 2016 (arXiv:1602.01783), the optimisation section and its
    supplement: ``g = alpha g + (1 - alpha) dtheta^2``, ``theta <- theta - eta
    dtheta / sqrt(g + eps)``, with ``g`` shared by all threads. The values
    (``eta = 7e-4``, ``eps = 0.1``, ``alpha = 0.99``, ``eta`` decreased
    linearly to zero) are those Mnih confirmed to the muupan/async-rl
    reimplementation (its wiki, and ``a3c_ale.py``:
    ``RMSpropAsync(lr=7e-4, eps=1e-1, alpha=0.99)`` with
    ``GradientClipping(40)``; the clipping is that reimplementation's, pass
    ``max_grad_norm=None`` to leave it out).

    Returns:
      ``(optimizer, schedule)``: the rate falls linearly from
      ``learning_rate`` to 0 over ``total_updates`` updates.
    """

    def schedule(count: jax.Array) -> jax.Array:
        done = jnp.minimum(jnp.asarray(count, float), total_updates) / total_updates
        return learning_rate * (1 - done)

    rmsprop = rmsprop_jax.rmsprop(schedule, decay=decay, eps=eps)
    if max_grad_norm is None:
        return rmsprop, schedule
    return optax.chain(optax.clip_by_global_norm(max_grad_norm), rmsprop), schedule


# --------------------------------------------------------------------------
# EfficientNet / MobileNet in timm.


def timm_step_lr(
    epoch: int,
    lr: float,
    decay_epochs: float,
    decay_rate: float,
    warmup_epochs: int,
    warmup_lr: float,
) -> float:
    """timm's ``StepLRScheduler`` learning rate for one epoch, in Python floats.

    Source: ``timm/scheduler/step_lr.py`` (``_get_lr``), with
    ``warmup_prefix=False`` as ``train.py`` passes it by default: a linear
    warmup from ``warmup_lr``, then ``lr * decay_rate ** (epoch // decay_epochs)``
    counted from epoch 0.
    """
    if epoch < warmup_epochs:
        return warmup_lr + epoch * (lr - warmup_lr) / warmup_epochs
    return lr * decay_rate ** (epoch // decay_epochs)


def efficientnet_timm(
    steps_per_epoch: int,
    epochs: int = 450,
    lr: float = 0.016,
    decay_epochs: float = 2.4,
    decay_rate: float = 0.97,
    warmup_epochs: int = 5,
    warmup_lr: float = 1e-6,
    weight_decay: float = 1e-5,
    momentum: float = 0.9,
    alpha: float = 0.9,
    eps: float = 1e-3,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """EfficientNet/MobileNet training as in timm: ``RMSpropTF`` with warmup and step decay.

    Source: timm's training examples (``hfdocs/source/training_script.mdx``,
    EfficientNet-B2: ``--opt rmsproptf --opt-eps .001 --lr .016 --sched step
    --decay-epochs 2.4 --decay-rate .97 --warmup-lr 1e-6 --weight-decay 1e-5``;
    MobileNetV3 uses ``--decay-rate .973 --lr .064``), ``train.py`` defaults
    (``--momentum 0.9``, ``--warmup-epochs 5``, the schedule stepped once per
    epoch), ``timm/optim/_optim_factory.py`` (``rmsproptf``: ``alpha=0.9``;
    no weight decay on 1-D parameters, ``filter_bias_and_bn``) and
    ``timm/optim/rmsprop_tf.py`` (``RMSpropTF``: ``eps`` inside the root, the
    square average starting at one, the learning rate inside the momentum
    buffer, weight decay added to the gradient).

    The learning rate of each epoch is computed in Python floats, as timm does,
    and looked up by ``count // steps_per_epoch``: ``epoch // 2.4`` in float32
    differs from Python's at epochs 36, 60, 72, ...

    Returns:
      ``(optimizer, schedule)``.
    """
    table = np.array(
        [
            timm_step_lr(e, lr, decay_epochs, decay_rate, warmup_epochs, warmup_lr)
            for e in range(epochs)
        ]
    )

    def schedule(count: jax.Array) -> jax.Array:
        epoch = jnp.minimum(count // steps_per_epoch, epochs - 1)
        return jnp.asarray(table)[epoch]

    optimizer = rmsprop_jax.rmsprop(
        schedule,
        decay=alpha,
        eps=eps,
        initial_scale=1.0,
        momentum=momentum,
        lr_in_momentum=True,
        weight_decay=weight_decay,
        weight_decay_mode="coupled",
        weight_decay_mask=lambda params: jax.tree.map(lambda p: p.ndim > 1, params),
    )
    return optimizer, schedule


RECIPES: dict[str, Callable[..., object]] = {
    "dqn_zoo": dqn_zoo,
    "dopamine_dqn": dopamine_dqn,
    "impala_torchbeast": impala_torchbeast,
    "impala_cleanba": impala_cleanba,
    "a3c": a3c,
    "efficientnet_timm": efficientnet_timm,
}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description="Build every recipe, take a few steps on a toy problem, and print "
        "each one's source and learning rate (see docs/recipes.md)."
    )
    parser.add_argument(
        "--steps", type=int, default=3, help="optimizer steps per recipe on the toy problem"
    )
    args = parser.parse_args(argv)
    built = {
        "dqn_zoo": (dqn_zoo(), None),
        "dopamine_dqn": (dopamine_dqn(), None),
        "impala_torchbeast": impala_torchbeast(total_steps=30_000_000),
        "impala_cleanba": impala_cleanba(num_updates=19_531),
        "a3c": a3c(total_updates=16_000_000),
        "efficientnet_timm": efficientnet_timm(steps_per_epoch=1251),
    }
    params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}

    def loss(p):
        return sum(jnp.sum(x**2) for x in jax.tree.leaves(p))

    results = {}
    for name, (opt, schedule) in built.items():
        summary = (RECIPES[name].__doc__ or "").splitlines()[0]
        state, p = opt.init(params), params
        update = jax.jit(opt.update)
        for _ in range(args.steps):
            updates, state = update(jax.grad(loss)(p), state, p)
            p = optax.apply_updates(p, updates)
        results[name] = float(loss(p))
        print(f"{name}: {summary}")
        if schedule is not None:
            rates = ", ".join(f"{float(schedule(jnp.asarray(c))):.3g}" for c in (0, 10**4, 10**5))
            print(f"    learning rate at steps 0, 10^4, 10^5: {rates}")
        before = float(loss(params))
        print(f"    toy loss {before:.4f} -> {results[name]:.4f} after {args.steps} steps")
    return results


if __name__ == "__main__":
    main()
