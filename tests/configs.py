"""The one list of optimizer configurations that the tests are parameterized over."""

import jax.numpy as jnp
import optax


# Schedules written to compute in the ambient precision (float64 under x64).
# optax's own schedules return float32 for an int32 count, and their value can
# differ by one float32 ulp between eager and jitted evaluation, which would
# hide real float64 differences; OPTAX_SCHEDULE is used where that is the point.
def SCHEDULE(count):
    return 0.05 / (1 + 0.2 * jnp.asarray(count, float))


def WD_SCHEDULE(count):
    return 0.1 * jnp.maximum(1 - jnp.asarray(count, float) / 30, 0)


OPTAX_SCHEDULE = optax.linear_schedule(0.05, 0.005, transition_steps=20)

# Keyword arguments of rmsprop_jax.rmsprop (learning_rate included).
CONFIGS = {
    "default": dict(learning_rate=0.01),
    "eps_out": dict(learning_rate=0.01, eps_in_sqrt=False),
    "big_eps_in": dict(learning_rate=0.01, eps=1.0),
    "big_eps_out": dict(learning_rate=0.01, eps=1e-3, eps_in_sqrt=False),
    "initial_scale_1": dict(learning_rate=0.01, initial_scale=1.0),
    "centered": dict(learning_rate=0.01, centered=True),
    "centered_eps_out": dict(learning_rate=0.01, centered=True, eps_in_sqrt=False),
    "momentum": dict(learning_rate=0.01, momentum=0.9),
    "momentum_schedule": dict(learning_rate=SCHEDULE, momentum=0.9),
    "momentum_lr_outside": dict(learning_rate=SCHEDULE, momentum=0.9, lr_in_momentum=False),
    "nesterov": dict(learning_rate=SCHEDULE, momentum=0.8, nesterov=True),
    "nesterov_lr_outside": dict(
        learning_rate=SCHEDULE, momentum=0.8, nesterov=True, lr_in_momentum=False
    ),
    "bias_correction": dict(learning_rate=0.01, bias_correction=True, decay=0.99),
    "centered_bias_momentum": dict(
        learning_rate=SCHEDULE, centered=True, bias_correction=True, momentum=0.9
    ),
    "decoupled_wd": dict(learning_rate=0.01, weight_decay=0.1),
    "coupled_wd": dict(learning_rate=0.01, weight_decay=0.1, weight_decay_mode="coupled"),
    "wd_schedule_momentum": dict(
        learning_rate=SCHEDULE, weight_decay=WD_SCHEDULE, momentum=0.9, lr_in_momentum=False
    ),
    "coupled_wd_centered_momentum": dict(
        learning_rate=0.01,
        weight_decay=0.05,
        weight_decay_mode="coupled",
        centered=True,
        momentum=0.5,
    ),
    "maximize": dict(learning_rate=0.01, maximize=True, momentum=0.5),
    "maximize_coupled": dict(
        learning_rate=0.01, maximize=True, weight_decay=0.1, weight_decay_mode="coupled"
    ),
    "eps_zero": dict(learning_rate=0.01, eps=0.0),
    # min_dim 2 factors the test tree's matrices and its (2, 2, 3) kernel.
    "factored": dict(learning_rate=0.01, factored=True, min_dim_size_to_factor=2),
    # (factored with centered is refused: see test_errors.py)
    "factored_momentum_bias": dict(
        learning_rate=SCHEDULE,
        factored=True,
        min_dim_size_to_factor=2,
        momentum=0.9,
        nesterov=True,
        bias_correction=True,
        decay=0.99,
    ),
    "factored_initial_scale_coupled": dict(
        learning_rate=0.01,
        factored=True,
        min_dim_size_to_factor=3,
        initial_scale=1.0,
        weight_decay=0.1,
        weight_decay_mode="coupled",
    ),
    "decay_zero": dict(learning_rate=0.01, decay=0.0),
}

# The subset of CONFIGS whose arguments optax.rmsprop also takes.
OPTAX_ARGS = (
    "learning_rate",
    "decay",
    "eps",
    "initial_scale",
    "eps_in_sqrt",
    "centered",
    "momentum",
    "nesterov",
    "bias_correction",
)
OPTAX_CONFIGS = {
    name: kw
    for name, kw in CONFIGS.items()
    if set(kw) <= set(OPTAX_ARGS) and kw.get("lr_in_momentum", True)
}
