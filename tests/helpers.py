"""Trees and gradient sequences shared by the tests."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def make_tree(seed: int = 0, complex_leaf: bool = False) -> dict:
    """A multi-leaf tree of float64 NumPy arrays: nested dicts, lists, a scalar."""
    rng = np.random.default_rng(seed)
    tree = {
        "dense": {"w": rng.normal(size=(5, 3)), "b": rng.normal(size=(3,))},
        "conv": [rng.normal(size=(2, 2, 3)), rng.normal(size=())],
    }
    if complex_leaf:
        tree["z"] = rng.normal(size=(4,)) + 1j * rng.normal(size=(4,))
    return tree


def gradient_sequence(tree: dict, steps: int, seed: int = 1) -> list[dict]:
    """Gradients that vary in scale and sign from step to step, with exact zeros."""
    rng = np.random.default_rng(seed)
    seq = []
    for t in range(steps):
        scale = 10.0 ** rng.uniform(-2, 1)

        def draw(x):
            g = scale * rng.normal(size=np.shape(x))
            if np.iscomplexobj(x):
                g = g + 1j * scale * rng.normal(size=np.shape(x))
            g = np.where(rng.uniform(size=np.shape(x)) < 0.1, 0, g)  # some exact zeros
            return g if t % 7 else np.zeros_like(g)  # and whole zero steps

        seq.append(jax.tree.map(draw, tree))
    return seq


def to_jax(tree, dtype):
    def cast(x):
        if np.iscomplexobj(x):
            return jnp.asarray(x, jnp.complex128 if dtype == jnp.float64 else jnp.complex64)
        return jnp.asarray(x, dtype)

    return jax.tree.map(cast, tree)


def run(opt, params, grads_seq, jit: bool = True):
    """Runs ``opt``; returns the list of parameter trees after each step."""
    import optax

    update = jax.jit(opt.update) if jit else opt.update
    state = opt.init(params)
    trajectory = []
    for g in grads_seq:
        g = jax.tree.map(lambda x, p: jnp.asarray(x, p.dtype), g, params)
        updates, state = update(g, state, params)
        params = optax.apply_updates(params, updates)
        trajectory.append(params)
    return trajectory, state


def relative_error(got, start_got, want, start_want) -> float:
    """Largest difference between the two displacements from each side's own
    start, divided by the largest distance the reference moved."""
    err = moved = 0.0
    for a, a0, b, b0 in zip(*(jax.tree.leaves(t) for t in (got, start_got, want, start_want))):
        da = np.asarray(a, np.complex128 if np.iscomplexobj(a) else np.float64) - np.asarray(a0)
        db = np.asarray(b) - np.asarray(b0)
        err = max(err, float(np.max(np.abs(da - db), initial=0)))
        moved = max(moved, float(np.max(np.abs(db), initial=0)))
    if moved == 0:
        return 0.0 if err == 0 else float("inf")
    return err / moved
