"""What the port examples share: the data, the batches, the command line, the
runs over networks and precisions, the summary and the figure.

``port_from_pytorch.py`` and ``port_from_keras.py`` each train the same
networks in their original framework and in JAX, and report the two loss
curves side by side; ``resume_run.py`` uses the data, batches and command
line. The framework-specific parts (models, weight copies, training loops)
stay in each example.
"""

from __future__ import annotations

import argparse
import json
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from sklearn.datasets import load_digits

DTYPES = ["float64", "float32"]


# --------------------------------------------------------------------------
# Data: the digits scaled to [0, 1], and one fixed sequence of batches.


def load_data(label_dtype: Any = np.int64) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1797 handwritten digits (8x8 pixels, bundled, no download)."""
    x, y = load_digits(return_X_y=True)
    return x / 16.0, y.astype(label_dtype)


def batch_indices(n: int, batch_size: int, steps: int, seed: int) -> np.ndarray:
    """The examples of each of ``steps`` batches, shape (steps, batch_size):
    shuffled epochs without their last partial batch, as a
    ``DataLoader(shuffle=True, drop_last=True)`` makes them."""
    rng = np.random.default_rng(seed)
    per_epoch = n // batch_size
    epochs = -(-steps // per_epoch)
    order = np.concatenate([rng.permutation(n)[: per_epoch * batch_size] for _ in range(epochs)])
    return order[: steps * batch_size].reshape(steps, batch_size)


# --------------------------------------------------------------------------
# The command line.


def parser(
    description: str, networks: Sequence[str] | None, original: str, steps: int = 1000
) -> argparse.ArgumentParser:
    """--steps, --batch-size, --networks (unless None), --dtypes, --seed, --out and --no-plot."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument(
        "--steps",
        type=int,
        default=steps,
        help="training steps of every run (default: %(default)s)",
    )
    p.add_argument(
        "--batch-size", type=int, default=64, help="examples per batch (default: %(default)s)"
    )
    if networks is not None:
        p.add_argument(
            "--networks",
            nargs="+",
            choices=list(networks),
            default=list(networks),
            help="the networks to train (default: all)",
        )
    p.add_argument(
        "--dtypes",
        nargs="+",
        choices=DTYPES,
        default=DTYPES,
        help="the precisions to run each network in (default: both)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help=f"seeds {original}'s initial weights and the batch order (default: %(default)s)",
    )
    p.add_argument(
        "--out",
        default="port_output",
        help="folder for the PNG and the JSON (default: %(default)s)",
    )
    p.add_argument("--no-plot", action="store_true", help="write the JSON but no PNG")
    return p


def run_all(
    args: argparse.Namespace, compare: Callable[[str, str], dict], names: Sequence[str] = ()
) -> dict:
    """``compare(name, dtype)`` for every name (by default the networks asked
    for) and precision, each with float64 on in JAX where the run is in
    float64 (JAX computes in float32 unless it is switched on)."""
    results: dict[str, dict[str, dict]] = {}
    for name in names or args.networks:
        for dtype in args.dtypes:
            with jax.enable_x64(dtype == "float64"):
                results.setdefault(name, {})[dtype] = compare(name, dtype)
    return results


# --------------------------------------------------------------------------
# The output: a JSON summary and a figure.


def write(
    out: str,
    stem: str,
    summary: dict,
    draw: Callable[[pathlib.Path], None] | None,
) -> list[pathlib.Path]:
    """``out/stem.json`` and, unless ``draw`` is None, ``out/stem.png`` drawn by it."""
    folder = pathlib.Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    written = [folder / f"{stem}.json"]
    written[0].write_text(json.dumps(summary, indent=1))
    if draw is not None:
        draw(folder / f"{stem}.png")
        written.append(folder / f"{stem}.png")
    print("\nWrote " + " and ".join(map(str, written)))
    return written


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_comparison(results: dict, path: pathlib.Path, key: str, label: str, title: str) -> None:
    """For each network, the loss curves of the original (``{key}_losses``,
    drawn wide) and of rmsprop_jax, and their relative difference."""
    plt = pyplot()
    fig, axes = plt.subplots(len(results), 2, figsize=(12, 4.2 * len(results)), squeeze=False)
    for (ax_loss, ax_diff), (name, by_dtype) in zip(axes, results.items()):
        for dtype, r in by_dtype.items():
            steps = np.arange(1, len(r[f"{key}_losses"]) + 1)
            ax_loss.plot(steps, r[f"{key}_losses"], lw=2.5, alpha=0.5, label=f"{label}, {dtype}")
            ax_loss.plot(steps, r["jax_losses"], lw=0.8, label=f"rmsprop_jax, {dtype}")
            # A log scale cannot show 0 (exact agreement): it is drawn at 1e-18.
            relative = np.maximum(r["relative_difference"], 1e-18)
            ax_diff.semilogy(steps, relative, lw=0.8, label=dtype)
        ax_loss.set_yscale("log")
        ax_loss.set_xlabel("step")
        ax_loss.set_ylabel("training loss of the batch")
        ax_loss.set_title(f"{name}: {title}")
        ax_loss.legend()
        ax_loss.grid(alpha=0.3)
        ax_diff.axhline(1e-9, color="gray", ls=":", lw=1, label="1e-9")
        ax_diff.set_xlabel("step")
        ax_diff.set_ylabel(f"|loss_jax - loss_{key}| / loss_{key}")
        ax_diff.set_title(f"{name}: relative difference (0 drawn at 1e-18)")
        ax_diff.legend()
        ax_diff.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def relative_difference(jax_losses: np.ndarray, losses: np.ndarray) -> dict:
    """|jax - original| / original per step, and the steps before it first passes 1e-3."""
    relative = np.abs(jax_losses - losses) / np.abs(losses)
    above = np.flatnonzero(relative > 1e-3)
    return {
        "relative_difference": relative,
        # Steps before the first relative difference above 1e-3 (all of them if none).
        "steps_within_1e-3": int(above[0]) if len(above) else len(relative),
    }
