"""What the tests share: trees, gradient sequences, and the one trajectory runner.

Every test that trains (ours against a reference, a peer, or itself) goes
through :func:`train` or :func:`lockstep`, so "init, update, apply" is written
once.
"""

from __future__ import annotations

import contextlib
import importlib.util
import pathlib
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

ROOT = pathlib.Path(__file__).resolve().parent.parent

# Why the torch parity tests skip when torch is absent (tools/install_torch.py).
TORCH_MISSING = (
    "torch is not installed: `make test` installs only a CPU build of torch (a local "
    "wheel or PyTorch's CPU index), never PyPI's CUDA build; `make torch` says why none was found"
)


# --------------------------------------------------------------------------
# Trees and gradients.


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


def to_jax(tree: Any, dtype: Any) -> Any:
    """NumPy leaves as jax arrays of ``dtype`` (its complex counterpart for complex leaves)."""

    def cast(x):
        if np.iscomplexobj(x):
            return jnp.asarray(x, jnp.complex128 if dtype == jnp.float64 else jnp.complex64)
        return jnp.asarray(x, dtype)

    return jax.tree.map(cast, tree)


def like(tree: Any, params: Any) -> Any:
    """``tree`` with each leaf cast to its parameter's dtype."""
    return jax.tree.map(lambda x, p: jnp.asarray(x, p.dtype), tree, params)


# --------------------------------------------------------------------------
# The trajectory runner.


@contextlib.contextmanager
def standard_promotion(enabled: bool = True) -> Iterator[None]:
    """Standard dtype promotion, for peers and user code that mix dtypes (optax's
    own schedules and bias correction do); ours runs under the suite's strict one."""
    if enabled:
        with jax.numpy_dtype_promotion("standard"):
            yield
    else:
        yield


class Run(NamedTuple):
    params: list  # the parameters after each step
    updates: list  # each step's updates
    state: Any  # the final state


def train(
    opt: Any,
    params: Any,
    grads_seq: Sequence[Any],
    *,
    jit: bool = True,
    promotion: str = "strict",
    state: Any = None,
) -> Run:
    """``init`` (unless a ``state`` to resume from is given), then ``update`` and
    ``optax.apply_updates`` for each gradient tree."""
    with standard_promotion(promotion == "standard"):
        update = jax.jit(opt.update) if jit else opt.update
        if state is None:
            state = opt.init(params)
        trajectory, updates_seq = [], []
        for g in grads_seq:
            updates, state = update(like(g, params), state, params)
            params = optax.apply_updates(params, updates)
            trajectory.append(params)
            updates_seq.append(updates)
    return Run(trajectory, updates_seq, state)


def lockstep(
    ours: Any,
    theirs: Any,
    params: Any,
    grads_seq: Sequence[Any],
    check: Callable[[int, Any, Any], None],
    *,
    theirs_promotion: str = "standard",
) -> tuple[Any, Any]:
    """Feeds both the same gradients and *our* parameters every step, and calls
    ``check(step, our_updates, their_updates)``; returns both final states.

    ``theirs`` is a peer's transformation (run with standard promotion) or a
    :class:`ReferenceTransform`."""
    with standard_promotion(theirs_promotion == "standard"):
        their_state = theirs.init(params)
    our_state = ours.init(params)
    ours_update = jax.jit(ours.update)
    theirs_update = (
        theirs.update if isinstance(theirs, ReferenceTransform) else jax.jit(theirs.update)
    )
    for step, g in enumerate(grads_seq, start=1):
        g = like(g, params)
        u1, our_state = ours_update(g, our_state, params)
        with standard_promotion(theirs_promotion == "standard"):
            u2, their_state = theirs_update(g, their_state, params)
        check(step, u1, u2)
        params = optax.apply_updates(params, u1)
    return our_state, their_state


class ReferenceTransform:
    """A float64 NumPy reference (``tests/reference.py``) behind ``init``/``update``."""

    def __init__(self, reference: Any):
        self.reference = reference

    def init(self, params: Any) -> None:
        self.reference.init([np.asarray(p) for p in jax.tree.leaves(params)])

    def update(self, grads: Any, state: None, params: Any) -> tuple[Any, None]:
        leaves, treedef = jax.tree.flatten(grads)
        out = self.reference.step(
            [np.asarray(g) for g in leaves], [np.asarray(p) for p in jax.tree.leaves(params)]
        )
        return treedef.unflatten(out), None


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


def finite(tree: Any) -> bool:
    """No NaN or Inf anywhere in ``tree``."""
    return all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(tree))


# --------------------------------------------------------------------------
# Loading the project's scripts.


def load_module(path: pathlib.Path, name: str) -> Any:
    """Imports a script of the project (an example, the benchmark's trees) by path."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses (Flax Linen) look themselves up here
    spec.loader.exec_module(module)
    return module


def load_example(name: str) -> Any:
    return load_module(ROOT / "examples" / f"{name}.py", f"example_{name}")


# Parity runs against the peers: PARITY_STEPS steps on a multi-leaf tree, the
# parameters compared after every step, relative to the distance moved.
PARITY_STEPS = 30
PARITY_TOL = {jnp.float32: 5e-5, jnp.float64: 1e-9}


def run_preset(opt, tree, grads, dtype):
    """The parameters after every step of ``opt`` from ``tree`` in ``dtype``."""
    return train(opt, to_jax(tree, dtype), [to_jax(g, dtype) for g in grads]).params


def assert_trajectories_match(got, want, start_got, start_want, tol):
    for step, (a, b) in enumerate(zip(got, want, strict=True)):
        err = relative_error(a, start_got, b, start_want)
        assert err < tol, f"step {step + 1}: relative error {err:.3g} >= {tol}"


def start_of(tree, dtype):
    """The starting tree rounded to ``dtype``, as float64 NumPy, for the peers."""
    return jax.tree.map(
        lambda x: np.asarray(x).astype(np.result_type(x.dtype, np.float64)), to_jax(tree, dtype)
    )
