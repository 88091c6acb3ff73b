"""Golden files of the compiled ``update``: proof that a refactor changed no program.

XLA compiles the same computation to the same optimized HLO, so comparing that
HLO (source locations stripped, instruction names numbered canonically) before
and after a restructuring shows that nothing changed; a deliberate change of
the step shows up as a diff of exactly what changed.

Regenerate the files (after a change to the step that is meant to change the
program, in the same commit, saying why) with::

    make golden

which runs ``python tests/golden_hlo.py``. The files record the jax and jaxlib
versions and the machine they were made with; ``tests/test_golden_hlo.py``
compares against them only where those match (HLO changes between XLA
releases), and says so when it skips.
"""

from __future__ import annotations

import pathlib
import platform
import re
import sys

import jax
import jax.numpy as jnp
import jaxlib
import optax

import rmsprop_jax
from rmsprop_jax import presets

GOLDEN_DIR = pathlib.Path(__file__).parent / "golden_hlo"


def _schedule(count):
    return 0.05 / (1 + 0.2 * count.astype(jnp.float32))


def _wd_schedule(count):
    return 0.1 * jnp.maximum(1 - count.astype(jnp.float32) / 30, 0)


def _mask(params):
    return jax.tree.map(lambda p: jnp.ndim(p) > 1, params)


def _element_mask(params):
    return jax.tree.map(lambda p: p > 0, params)


R = rmsprop_jax.rmsprop
S = rmsprop_jax.scale_by_rms
F32, BF16, F16, C64 = "float32", "bfloat16", "float16", "complex64"
_EIGHT = rmsprop_jax.blockwise_8bit(block_size=32, min_size=16)

# name -> (factory, keyword arguments, parameter dtype). Every option appears
# at least once; float32, bfloat16, float16 and complex parameters; the
# learning-rate-free scale_by_rms; two presets.
CONFIGS = {
    "plain": (R, dict(learning_rate=0.1), F32),
    "eps_out": (R, dict(learning_rate=0.1, eps_in_sqrt=False), F32),
    "initial_scale": (R, dict(learning_rate=0.1, initial_scale=1.0), F32),
    "centered": (R, dict(learning_rate=0.1, centered=True), F32),
    "momentum": (R, dict(learning_rate=0.1, momentum=0.9), F32),
    "nesterov": (R, dict(learning_rate=0.1, momentum=0.9, nesterov=True), F32),
    "lr_outside_schedule": (
        R,
        dict(learning_rate=_schedule, momentum=0.9, lr_in_momentum=False),
        F32,
    ),
    "nesterov_lr_outside": (
        R,
        dict(learning_rate=0.1, momentum=0.8, nesterov=True, lr_in_momentum=False),
        F32,
    ),
    "bias_correction": (R, dict(learning_rate=0.1, decay=0.99, bias_correction=True), F32),
    "centered_bias_momentum": (
        R,
        dict(learning_rate=_schedule, centered=True, bias_correction=True, momentum=0.9),
        F32,
    ),
    "decoupled_wd_mask": (
        R,
        dict(learning_rate=0.1, weight_decay=0.1, weight_decay_mask=_mask),
        F32,
    ),
    "decoupled_wd_element_mask": (
        R,
        dict(learning_rate=0.1, weight_decay=0.1, weight_decay_mask=_element_mask),
        F32,
    ),
    "coupled_wd": (R, dict(learning_rate=0.1, weight_decay=0.1, weight_decay_mode="coupled"), F32),
    "wd_schedule_momentum": (
        R,
        dict(learning_rate=_schedule, weight_decay=_wd_schedule, momentum=0.9),
        F32,
    ),
    "maximize": (R, dict(learning_rate=0.1, maximize=True, momentum=0.5), F32),
    "eps_zero": (R, dict(learning_rate=0.1, eps=0.0), F32),
    "decay_zero": (R, dict(learning_rate=0.1, decay=0.0), F32),
    "bf16_state": (
        R,
        dict(
            learning_rate=0.1,
            centered=True,
            momentum=0.9,
            nu_dtype=jnp.bfloat16,
            mu_dtype=jnp.bfloat16,
        ),
        F32,
    ),
    "bf16_state_sr": (
        R,
        dict(
            learning_rate=0.1,
            centered=True,
            momentum=0.9,
            nu_dtype=jnp.bfloat16,
            mu_dtype=jnp.bfloat16,
            stochastic_rounding=True,
            seed=3,
        ),
        F32,
    ),
    "factored": (R, dict(learning_rate=0.1, factored=True, min_dim_size_to_factor=4), F32),
    "factored_momentum_bias": (
        R,
        dict(
            learning_rate=0.1,
            factored=True,
            min_dim_size_to_factor=4,
            momentum=0.9,
            bias_correction=True,
        ),
        F32,
    ),
    "bf16_params": (R, dict(learning_rate=0.1), BF16),
    "bf16_params_centered_momentum": (
        R,
        dict(learning_rate=0.1, centered=True, momentum=0.9),
        BF16,
    ),
    "f16_params": (R, dict(learning_rate=0.1, momentum=0.9), F16),
    "complex": (R, dict(learning_rate=0.1, centered=True), C64),
    "complex_split_momentum": (
        R,
        dict(learning_rate=0.1, split_complex=True, centered=True, momentum=0.9),
        C64,
    ),
    "scale_by_rms": (S, dict(), F32),
    "scale_by_stddev_bias": (S, dict(centered=True, bias_correction=True), F32),
    "scale_by_rms_factored_sr": (
        S,
        dict(
            factored=True,
            min_dim_size_to_factor=4,
            nu_dtype=jnp.bfloat16,
            stochastic_rounding=True,
        ),
        F32,
    ),
    "preset_pytorch": (
        presets.pytorch,
        dict(lr=0.01, momentum=0.9, centered=True, weight_decay=1e-4),
        F32,
    ),
    "preset_keras_clipnorm": (presets.keras, dict(learning_rate=1e-3, clipnorm=1.0), F32),
    # 8-bit state (blocks of 32, so that the (16, 8) leaf uses the format).
    "eight_bit": (R, dict(learning_rate=0.1, nu_dtype=_EIGHT), F32),
    "eight_bit_centered_momentum_sr": (
        R,
        dict(
            learning_rate=0.1,
            centered=True,
            momentum=0.9,
            nu_dtype=_EIGHT,
            mu_dtype=_EIGHT,
            stochastic_rounding=True,
        ),
        F32,
    ),
    "eight_bit_factored_momentum": (
        R,
        dict(
            learning_rate=0.1,
            factored=True,
            min_dim_size_to_factor=4,
            momentum=0.9,
            nu_dtype=_EIGHT,
            mu_dtype=_EIGHT,
        ),
        F32,
    ),
    # Every number known only at run time (the run-time rule's checks).
    "injected_momentum_wd": (
        optax.inject_hyperparams(R),
        dict(learning_rate=0.1, momentum=0.9, weight_decay=0.01),
        F32,
    ),
}


def environment() -> str:
    """What the HLO depends on besides the code: XLA's version and the machine."""
    return (
        f"jax {jax.__version__}, jaxlib {jaxlib.__version__}, "
        f"{jax.default_backend()} {platform.machine()}"
    )


def _params(dtype: str) -> dict:
    return {
        "w": jnp.linspace(-1, 1, 16 * 8).reshape(16, 8).astype(dtype),
        "b": jnp.linspace(0, 1, 8).astype(dtype),
        "s": jnp.asarray(0.5, dtype),
    }


def _strip_metadata(text: str) -> str:
    """Removes every ``, metadata={...}`` (quotes respected)."""
    out, i = [], 0
    key = ", metadata={"
    while True:
        j = text.find(key, i)
        if j < 0:
            out.append(text[i:])
            return "".join(out)
        out.append(text[i:j])
        k, depth, quoted = j + len(key), 1, False
        while depth:
            c = text[k]
            if c == "\\" and quoted:
                k += 1
            elif c == '"':
                quoted = not quoted
            elif not quoted:
                depth += {"{": 1, "}": -1}.get(c, 0)
            k += 1
        i = k


_NAME = re.compile(r"%([A-Za-z_][\w\-]*?)(?:\.(\d+))?\b(?![\w.])")
_SIGNATURE = re.compile(r"(?<=[(, ])[A-Za-z_][\w\-.]*(?=: )")


def canonical(hlo: str) -> str:
    """The optimized HLO text without source locations, names numbered in order.

    Drops the module's file/function/location/stack-frame tables and every
    instruction's ``metadata``, then renames ``%base.N`` to ``%base.K`` with K
    counting the distinct names of each base in order of first appearance, so
    that two programs that differ only in how they were written compare equal.
    """
    lines = hlo.splitlines()
    body: list[str] = []
    skipping = False
    for line in lines:
        if line in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
            skipping = True
            continue
        if skipping:
            if line.strip() == "":
                skipping = False
            continue
        body.append(line)
    text = _strip_metadata("\n".join(body))
    text = re.sub(r"^HloModule \S+,", "HloModule update,", text, flags=re.M)
    counters: dict[str, int] = {}
    names: dict[str, str] = {}

    def rename(match: re.Match) -> str:
        full = match.group(0)
        if full not in names:
            base = match.group(1)
            counters[base] = counters.get(base, -1) + 1
            names[full] = f"%{base}.{counters[base]}"
        return names[full]

    def rename_signature(match: re.Match) -> str:
        # A computation's parameters are declared as `name.N: type`, without `%`.
        return _NAME.sub(rename, "%" + match.group(0))[1:]

    out = []
    for line in text.splitlines():
        if line.endswith("{") and " (" in line:
            head, _, params = line.partition(" (")
            params = _SIGNATURE.sub(rename_signature, "(" + params)
            line = _NAME.sub(rename, head) + " " + params
        else:
            line = _NAME.sub(rename, line)
        out.append(line)
    text = "\n".join(out)
    return "\n".join(line.rstrip() for line in text.splitlines() if line.strip()) + "\n"


def compiled_update(name: str) -> str:
    """The canonical optimized HLO of ``jax.jit(update)`` for one configuration."""
    factory, kwargs, dtype = CONFIGS[name]
    opt = factory(**kwargs)
    params = _params(dtype)
    state = opt.init(params)
    grads = jax.tree.map(lambda p: p * 0.5, params)
    with jax.numpy_dtype_promotion("standard"):
        compiled = jax.jit(opt.update).lower(grads, state, params).compile()
    return canonical(compiled.as_text())


def header() -> str:
    return f"# {environment()}\n"


def regenerate() -> None:
    GOLDEN_DIR.mkdir(exist_ok=True)
    for old in GOLDEN_DIR.glob("*.hlo"):
        old.unlink()
    for name in CONFIGS:
        (GOLDEN_DIR / f"{name}.hlo").write_text(header() + compiled_update(name))
        print(f"wrote {GOLDEN_DIR / name}.hlo")


if __name__ == "__main__":
    regenerate()
    sys.exit(0)
