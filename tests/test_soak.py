"""Soak (`make soak`; not part of `make test`): 100,000 steps per configuration.

Two runs per configuration:
- training dynamics (a noisy quadratic whose gradient depends on the
  parameters), in jitted chunks of 10,000 steps: every chunk finite, and the
  process's memory flat from chunk to chunk;
- a fixed stream of gradients fed to the library (float32) and to the float64
  NumPy reference: the state (nu, mu, trace: averages, whose rounding errors
  decay) must still agree to float32 tolerance after 100,000 steps.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from reference import Reference

import rmsprop_jax

pytestmark = pytest.mark.soak

STEPS = int(os.environ.get("SOAK_STEPS", 100_000))
CHUNK = 10_000
DIM = 16

CONFIGS = {
    "default": dict(learning_rate=1e-3),
    "centered_momentum": dict(learning_rate=1e-3, centered=True, momentum=0.9),
    "nesterov_eps_out_bias": dict(
        learning_rate=1e-3,
        momentum=0.9,
        nesterov=True,
        eps_in_sqrt=False,
        bias_correction=True,
        decay=0.99,
    ),
    "coupled_wd_lr_outside": dict(
        learning_rate=1e-3,
        momentum=0.9,
        lr_in_momentum=False,
        weight_decay=1e-2,
        weight_decay_mode="coupled",
    ),
    "bf16_stochastic": dict(
        learning_rate=1e-3,
        momentum=0.9,
        nu_dtype=jnp.bfloat16,
        mu_dtype=jnp.bfloat16,
        stochastic_rounding=True,
    ),
}


def _rss_mib():
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        pytest.skip("needs /proc to read the memory in use")


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_soak_training_stays_finite_with_flat_memory(name):
    opt = rmsprop_jax.rmsprop(**CONFIGS[name])
    target = jnp.linspace(-2, 2, DIM)
    scale = jnp.logspace(-2, 2, DIM)  # an ill-conditioned quadratic

    def body(carry, t):
        params, state = carry
        noise = jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(0), t), (DIM,))
        grads = scale * (params - target) + 0.1 * noise
        updates, state = opt.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        finite = jnp.all(jnp.isfinite(params)) & jnp.all(
            jnp.asarray([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(state)])
        )
        return (params, state), finite

    chunk = jax.jit(lambda carry, start: jax.lax.scan(body, carry, start + jnp.arange(CHUNK)))
    carry = (jnp.zeros(DIM), opt.init(jnp.zeros(DIM)))
    memory = []
    for start in range(0, STEPS, CHUNK):
        carry, finite = chunk(carry, start)
        assert bool(jnp.all(finite)), f"non-finite within steps {start}..{start + CHUNK}"
        memory.append(_rss_mib())
    params, state = carry
    assert int(state.count) == STEPS

    # It trains: the quadratic loss falls by more than 100x (the low-curvature
    # coordinates are dominated by the gradient noise, so they wander).
    def loss(p):
        return float(jnp.sum(scale * (p - target) ** 2))

    assert loss(params) < 0.01 * loss(jnp.zeros(DIM))
    # Memory is flat after the first chunks (compilation, caches): < 20 MiB drift.
    assert max(memory[2:]) - memory[1] < 20, memory


@pytest.mark.parametrize("name", [n for n in sorted(CONFIGS) if n != "bf16_stochastic"])
def test_soak_state_matches_float64_reference(name):
    kw = CONFIGS[name]
    rng = np.random.default_rng(0)
    # Gradient scales drift over the run, so the averages keep moving.
    grads = (
        rng.normal(size=(STEPS, DIM)) * np.exp(np.sin(np.arange(STEPS) / 5000.0))[:, None]
    ).astype(np.float32)
    opt = rmsprop_jax.rmsprop(**kw)

    def body(carry, g):
        params, state = carry
        updates, state = opt.update(g, state, params)
        return (optax.apply_updates(params, updates), state), None

    p0 = np.linspace(-1, 1, DIM).astype(np.float32)
    (params, state), _ = jax.jit(lambda c, gs: jax.lax.scan(body, c, gs))(
        (jnp.asarray(p0), opt.init(jnp.asarray(p0))), jnp.asarray(grads)
    )
    ref = Reference(**kw)
    ref.init([p0.astype(np.float64)])
    p = p0.astype(np.float64)
    for g in grads:
        p = p + ref.step([g.astype(np.float64)], [p])[0]
    st = ref.state[0]
    np.testing.assert_allclose(state.nu, st["nu"], rtol=1e-4)
    if state.mu is not None:
        np.testing.assert_allclose(
            state.mu, st["mu"], rtol=1e-3, atol=1e-4 * np.abs(st["mu"]).max()
        )
    if state.trace is not None:  # stored with the update's sign: -b
        np.testing.assert_allclose(
            -np.asarray(state.trace), st["b"], rtol=1e-3, atol=1e-4 * np.abs(st["b"]).max()
        )
    # Parameters: summed over 100,000 steps, compared with the distance moved.
    moved = np.abs(p - p0).max()
    assert np.abs(np.asarray(params, np.float64) - p).max() < 1e-3 * max(moved, 1.0)
