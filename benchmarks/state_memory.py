"""Optimizer-state bytes per parameter on the benchmark's trees (ResNet-50, GPT-2).

Measured, not computed: every figure is the sum of ``nbytes`` over the leaves
of a real state (``jax.eval_shape`` of ``init``, which has the exact shapes and
dtypes of the arrays ``init`` makes), divided by the number of parameters.
bitsandbytes' figure is measured the same way, on the state that
``bnb.optim.RMSprop8bit`` allocates for torch tensors of the same shapes after
one step (skipped, saying so, where bitsandbytes is not installed).

Run:  python benchmarks/state_memory.py [--out benchmarks/results_state_memory.md]
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import trees

import rmsprop_jax

EIGHT = rmsprop_jax.blockwise_8bit()

VARIANTS = {
    "float32": dict(),
    "bfloat16": dict(nu_dtype=jnp.bfloat16, mu_dtype=jnp.bfloat16),
    "8-bit": dict(nu_dtype=EIGHT, mu_dtype=EIGHT),
    "8-bit, min_size=0": dict(
        nu_dtype=rmsprop_jax.blockwise_8bit(min_size=0),
        mu_dtype=rmsprop_jax.blockwise_8bit(min_size=0),
    ),
    "factored": dict(factored=True),
    "8-bit + factored": dict(nu_dtype=EIGHT, mu_dtype=EIGHT, factored=True),
}


def _bytes(tree) -> int:
    return sum(int(np.prod(x.shape)) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def jax_state(shapes: dict, kw: dict, momentum: bool) -> tuple[float, float]:
    """(nu bytes per parameter, whole-state bytes per parameter)."""
    params = {k: jax.ShapeDtypeStruct(s, jnp.float32) for k, s in shapes.items()}
    opt = rmsprop_jax.rmsprop(1e-3, momentum=0.9 if momentum else None, **kw)
    state = jax.eval_shape(opt.init, params)
    n = trees.count(shapes)
    return _bytes(state.nu) / n, _bytes(state) / n


def bnb_state(shapes: dict, momentum: bool) -> float | None:
    """Bytes per parameter of bitsandbytes' RMSprop8bit state after one step
    (None where bitsandbytes or torch is missing)."""
    try:
        import bitsandbytes as bnb
        import torch
    except ImportError:
        return None
    params = [torch.nn.Parameter(torch.zeros(s)) for s in shapes.values()]
    for p in params:
        p.grad = torch.ones_like(p)
    opt = bnb.optim.RMSprop8bit(params, lr=1e-3, momentum=0.9 if momentum else 0)
    opt.step()
    total = 0
    for p in params:
        for value in opt.state[p].values():
            if torch.is_tensor(value) and value.numel() > 1:  # the per-tensor step is a scalar
                total += value.numel() * value.element_size()
    return total / trees.count(shapes)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="write the markdown table here")
    args = parser.parse_args(argv)
    lines = [
        "| tree | parameters | state | nu B/param | whole state B/param (momentum 0.9) |",
        "|---|---:|---|---:|---:|",
    ]
    for name, shapes in (("ResNet-50", trees.resnet50()), ("GPT-2 small", trees.gpt2_small())):
        n = trees.count(shapes)
        for label, kw in VARIANTS.items():
            nu, _ = jax_state(shapes, kw, momentum=False)
            _, whole = jax_state(shapes, kw, momentum=True)
            lines.append(f"| {name} | {n:,} | rmsprop_jax {label} | {nu:.4f} | {whole:.4f} |")
        bnb_nu, bnb_whole = bnb_state(shapes, False), bnb_state(shapes, True)
        if bnb_nu is None or bnb_whole is None:
            lines.append(f"| {name} | {n:,} | bitsandbytes RMSprop8bit | not installed | |")
        else:
            lines.append(
                f"| {name} | {n:,} | bitsandbytes RMSprop8bit | {bnb_nu:.4f} | {bnb_whole:.4f} |"
            )
    table = "\n".join(lines)
    print(table)
    if args.out:
        pathlib.Path(args.out).write_text(
            "# Optimizer-state memory\n\nWritten by `benchmarks/state_memory.py` (measured "
            "from the arrays' shapes and dtypes; bitsandbytes from its allocated state).\n\n"
            + table
            + "\n"
        )
    return table


if __name__ == "__main__":
    main()
