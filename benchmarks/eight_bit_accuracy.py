"""Accuracy of 8-bit block-wise optimizer state against float32 state and bitsandbytes.

Three small training tasks, several seeds each, every seed trained once per
optimizer from the same initial weights on the same batches:

(a) digits: scikit-learn's handwritten digits, an MLP 64-256-256-10 (ReLU),
    batches of 64 (the data, batch order and learning-rate schedule of
    ``examples/port_from_pytorch.py``);
(b) DQN on CartPole-v1 (``examples/dqn_cartpole.py``, DQN Zoo's centered
    RMSprop), JAX only: bitsandbytes is a PyTorch library and has no
    counterpart of this compiled JAX agent;
(c) a character-level language model of the Python standard library's own
    source (the ``email`` and ``json`` packages, read from this Python's
    install): an embedding of 48 per character, a window of 16 characters,
    one tanh layer of 256 and a softmax over 96 characters.

The optimizers (``B = rmsprop_jax.blockwise_8bit()``, 256 per block, leaves
under 4096 elements in float32):

  torch float32         torch.optim.RMSprop
  bitsandbytes 8-bit    bnb.optim.RMSprop8bit(..., min_8bit_size=4096)
  JAX float32           rmsprop_jax.presets.pytorch(...)
  JAX 8-bit             presets.pytorch(..., nu_dtype=B, mu_dtype=B)
  JAX 8-bit, stochastic the same with stochastic_rounding=True, seed=seed

(a) and (c) run two optimizer settings: without momentum (all five), and
with momentum 0.9 (without bitsandbytes: its RMSprop accepts ``momentum``
and ignores it, on this CPU backend, 0.50.2, as the run checks). The torch
and JAX runs of a seed start from torch's initial weights copied into JAX.
(b) runs DQN Zoo's centered RMSprop (``presets.dqn_nature_2015``), whose mean
and second moment are the two 8-bit leaves; a seed shares its network,
exploration and environment keys across the three optimizers.

Reported per task and optimizer: the final loss of each seed, mean and
standard deviation over seeds. Final loss: (a) cross-entropy over all 1797
digits after the last step; (b) the TD loss averaged over the last 10% of
gradient steps (and, for what it says about the agent, the mean return of the
last 100 episodes); (c) held-out cross-entropy in nats per character on the
last 10% of the text after the last step.

Usage: python benchmarks/eight_bit_accuracy.py [--quick] [--tasks digits dqn lm]
       [--seeds N] [--out-md PATH] [--figure PATH] [--json PATH]
Default outputs: benchmarks/results_eight_bit_accuracy.md and
docs/eight_bit_accuracy.png (with --quick: under eight_bit_accuracy_quick/).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import pathlib
import platform
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
EXAMPLES = ROOT / "examples"
# The rmsprop_jax of this checkout, even where another one is installed.
sys.path.insert(0, str(ROOT))

import rmsprop_jax  # noqa: E402
from rmsprop_jax import presets  # noqa: E402


def load_example(name: str):
    """An example file imported as a plain module (the examples are not a package)."""
    module_name = f"_eight_bit_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def bitsandbytes():
    """The bitsandbytes module, or None if it is not installed."""
    try:
        import bitsandbytes as bnb
    except ImportError:
        return None
    return bnb


EIGHT_BIT = rmsprop_jax.blockwise_8bit(block_size=256, min_size=4096)
MIN_8BIT_SIZE = 4096

TORCH_F32 = "torch float32"
BNB_8BIT = "bitsandbytes 8-bit"
JAX_F32 = "JAX float32"
JAX_8BIT = "JAX 8-bit"
JAX_8BIT_SR = "JAX 8-bit, stochastic"
ARMS = (TORCH_F32, BNB_8BIT, JAX_F32, JAX_8BIT, JAX_8BIT_SR)
JAX_ARMS = (JAX_F32, JAX_8BIT, JAX_8BIT_SR)


# --------------------------------------------------------------------------
# The optimizers, from one set of torch keyword arguments.


def jax_storage(arm: str, seed: int) -> dict:
    if arm == JAX_F32:
        return {}
    return dict(
        nu_dtype=EIGHT_BIT,
        mu_dtype=EIGHT_BIT,
        stochastic_rounding=arm == JAX_8BIT_SR,
        seed=seed,
    )


def schedule_factor(step):
    """The learning-rate factor of examples/port_from_pytorch.py (linear warm-up,
    then 1 / (1 + t / DECAY)), for torch's LambdaLR (an int) or the preset's
    count (an array)."""
    port = load_example("port_from_pytorch")
    if isinstance(step, int):
        return port.lr_lambda(step)
    t = jnp.asarray(step).astype(jnp.float32)
    return jnp.minimum(1.0, (t + 1.0) / port.WARMUP) / (1.0 + t / port.DECAY)


def torch_optimizer(arm: str, params, hp: dict):
    if arm == TORCH_F32:
        return torch.optim.RMSprop(params, **hp)
    bnb = bitsandbytes()
    return bnb.optim.RMSprop8bit(params, **hp, min_8bit_size=MIN_8BIT_SIZE)


def jax_optimizer(arm: str, hp: dict, seed: int) -> optax.GradientTransformation:
    lr = hp["lr"]
    return presets.pytorch(
        **dict(hp, lr=lambda count: lr * schedule_factor(count)), **jax_storage(arm, seed)
    )


def eight_bit_elements(state: Any) -> int:
    """How many state elements are held as 8-bit codes."""
    leaves = jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, rmsprop_jax.QuantizedArray))
    return sum(int(x.codes.size) for x in leaves if isinstance(x, rmsprop_jax.QuantizedArray))


# --------------------------------------------------------------------------
# A supervised task: a torch network, its JAX twin, the batches.


@dataclasses.dataclass
class Supervised:
    name: str
    title: str
    steps: int
    make_torch: Callable[[], torch.nn.Module]
    to_jax: Callable[[torch.nn.Module], dict]  # torch's weights as a dict of arrays
    apply: Callable[[dict, jax.Array], jax.Array]  # JAX logits
    batches: Callable[[int], tuple[np.ndarray, np.ndarray]]  # seed -> (xs, ys), (steps, B, ...)
    eval_data: tuple[np.ndarray, np.ndarray]
    eval_what: str
    settings: dict[str, dict]  # name -> torch keyword arguments
    param_names: list[str]  # the JAX names of torch's parameters(), in order
    curve_log: bool = False


def copy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().numpy().copy()


def torch_eval_loss(net: torch.nn.Module, data) -> float:
    x, y = data
    with torch.no_grad():
        return float(torch.nn.functional.cross_entropy(net(torch.as_tensor(x)), torch.as_tensor(y)))


def train_torch(task: Supervised, arm: str, net, hp: dict, xs, ys) -> tuple[np.ndarray, float]:
    optimizer = torch_optimizer(arm, net.parameters(), hp)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule_factor)
    xs, ys = torch.as_tensor(xs), torch.as_tensor(ys)
    losses = np.empty(len(xs))
    for i in range(len(xs)):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(xs[i]), ys[i])
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses[i] = loss.item()
    return losses, torch_eval_loss(net, task.eval_data)


_JAX_TRAINERS: dict = {}


def jax_trainer(task: Supervised, arm: str, hp_name: str, seed: int):
    """A jitted function (params, xs, ys) -> (params, batch losses, eval loss),
    all steps in one ``lax.scan``; compiled once per task, optimizer and setting
    (the stochastic-rounding seed is an argument of the optimizer, so it is
    compiled per seed)."""
    key = (task.name, arm, hp_name, seed if arm == JAX_8BIT_SR else None)
    if key in _JAX_TRAINERS:
        return _JAX_TRAINERS[key]
    tx = jax_optimizer(arm, task.settings[hp_name], seed)

    def loss_fn(params, x, y):
        logits = task.apply(params, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def step(carry, batch):
        params, state = carry
        loss, grads = jax.value_and_grad(loss_fn)(params, *batch)
        updates, state = tx.update(grads, state, params)
        return (optax.apply_updates(params, updates), state), loss

    @jax.jit
    def run(params, xs, ys, x_eval, y_eval):
        state = tx.init(params)
        (params, state), losses = jax.lax.scan(step, (params, state), (xs, ys))
        return losses, loss_fn(params, x_eval, y_eval), state

    _JAX_TRAINERS[key] = run
    return run


def run_supervised(task: Supervised, seeds: list[int], log) -> dict:
    """{setting: {arm: {"losses": (seeds, steps), "final": (seeds,)}}} and notes."""
    bnb = bitsandbytes()
    out: dict = {"settings": {}, "eight_bit_elements": None, "parameters": None}
    for hp_name, hp in task.settings.items():
        arms = [a for a in ARMS if not (a == BNB_8BIT and (bnb is None or hp["momentum"]))]
        res = {a: {"losses": [], "final": [], "seconds": 0.0} for a in arms}
        for seed in seeds:
            xs, ys = task.batches(seed)
            torch.manual_seed(seed)
            net0 = task.make_torch()
            for arm in arms:
                start = time.perf_counter()
                if arm in JAX_ARMS:
                    params = task.to_jax(net0)
                    run = jax_trainer(task, arm, hp_name, seed)
                    losses, final, state = run(params, xs, ys, *task.eval_data)
                    losses, final = np.asarray(losses, np.float64), float(final)
                    if arm == JAX_8BIT and out["eight_bit_elements"] is None:
                        out["eight_bit_elements"] = eight_bit_elements(state.nu)
                        out["parameters"] = sum(int(p.size) for p in jax.tree.leaves(params))
                else:
                    net = task.make_torch()
                    net.load_state_dict(net0.state_dict())
                    losses, final = train_torch(task, arm, net, hp, xs, ys)
                res[arm]["seconds"] += time.perf_counter() - start
                res[arm]["losses"].append(losses)
                res[arm]["final"].append(final)
                if not np.all(np.isfinite(losses)):
                    bad = int(np.flatnonzero(~np.isfinite(losses))[0])
                    log(
                        f"  !! {task.name} {hp_name} {arm} seed {seed}: non-finite loss, step {bad}"
                    )
            log(
                f"  {task.name} [{hp_name}] seed {seed}: "
                + ", ".join(f"{a} {res[a]['final'][-1]:.4f}" for a in arms)
            )
        for arm in arms:
            res[arm]["losses"] = np.asarray(res[arm]["losses"])
            res[arm]["final"] = np.asarray(res[arm]["final"])
        out["settings"][hp_name] = res
    return out


def two_settings(base: dict) -> dict:
    """The two optimizer settings: without momentum, and with momentum 0.9 at a
    tenth of the learning rate (the same step size once the buffer is full)."""
    return {
        "no momentum": dict(base, momentum=0.0),
        "momentum 0.9": dict(base, lr=base["lr"] / 10, momentum=0.9),
    }


# --------------------------------------------------------------------------
# (a) digits: an MLP 64-256-256-10 on the port example's data and batches.


def digits_task(steps: int, batch_size: int = 64) -> Supervised:
    port = load_example("port_from_pytorch")
    x, y = port.common.load_data()
    x = x.astype(np.float32)

    def make_torch():
        return torch.nn.Sequential(
            torch.nn.Linear(64, 256),
            torch.nn.ReLU(),
            torch.nn.Linear(256, 256),
            torch.nn.ReLU(),
            torch.nn.Linear(256, 10),
        )

    def to_jax(net):
        layers = [net[0], net[2], net[4]]
        params = {}
        for i, layer in enumerate(layers):
            params[f"w{i}"] = jnp.asarray(copy(layer.weight).T)  # (out, in) -> (in, out)
            params[f"b{i}"] = jnp.asarray(copy(layer.bias))
        return params

    def apply(params, h):
        for i in range(3):
            h = h @ params[f"w{i}"] + params[f"b{i}"]
            if i < 2:
                h = jax.nn.relu(h)
        return h

    def batches(seed):
        idx = port.common.batch_indices(len(x), batch_size, steps, seed)
        return x[idx], y[idx]

    base = dict(lr=1e-3, alpha=0.99, eps=1e-8, weight_decay=1e-4)
    return Supervised(
        name="digits",
        title="(a) digits, MLP 64-256-256-10",
        steps=steps,
        make_torch=make_torch,
        to_jax=to_jax,
        apply=apply,
        batches=batches,
        eval_data=(x, y),
        eval_what="cross-entropy over all 1797 digits after the last step",
        settings=two_settings(base),
        param_names=["w0", "b0", "w1", "b1", "w2", "b2"],
        curve_log=True,
    )


# --------------------------------------------------------------------------
# (c) a character-level language model of the standard library's source.

ALPHABET = "\n" + "".join(chr(c) for c in range(32, 127))  # 96 characters
CONTEXT = 16
EMBED = 48
HIDDEN = 256
TEXT_PACKAGES = ("email", "json")


def stdlib_text(max_chars: int | None = None) -> tuple[str, list[str]]:
    """The .py files of TEXT_PACKAGES in this Python's standard library,
    sorted by path and concatenated; characters outside ALPHABET (tabs,
    non-ASCII) become spaces."""
    import importlib

    files = []
    for name in TEXT_PACKAGES:
        root = pathlib.Path(importlib.import_module(name).__file__).parent
        files += sorted(root.rglob("*.py"))
    text = "".join(f.read_text(encoding="utf-8") for f in files)
    allowed = set(ALPHABET)
    text = "".join(c if c in allowed else " " for c in text)
    if max_chars is not None:
        text = text[:max_chars]
    return text, [str(f) for f in files]


class CharMLP(torch.nn.Module):
    """Embedding of each of the last CONTEXT characters, concatenated, one tanh
    layer, logits over the alphabet (Bengio et al.'s neural language model)."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(len(ALPHABET), EMBED)
        self.hidden = torch.nn.Linear(CONTEXT * EMBED, HIDDEN)
        self.out = torch.nn.Linear(HIDDEN, len(ALPHABET))

    def forward(self, idx):
        e = self.embed(idx).reshape(idx.shape[0], -1)
        return self.out(torch.tanh(self.hidden(e)))


def lm_task(steps: int, batch_size: int = 64, max_chars: int | None = None) -> Supervised:
    text, files = stdlib_text(max_chars)
    lookup = np.zeros(128, np.int64)
    lookup[[ord(c) for c in ALPHABET]] = np.arange(len(ALPHABET))
    codes = lookup[np.frombuffer(text.encode("ascii"), np.uint8)]
    split = int(0.9 * len(codes))
    train, held = codes[:split], codes[split:]
    window = np.arange(CONTEXT)

    def windows(seq, starts):
        return seq[starts[..., None] + window], seq[starts + CONTEXT]

    # Held out: windows starting every 4th character of the last 10%.
    x_eval, y_eval = windows(held, np.arange(0, len(held) - CONTEXT, 4))

    def to_jax(net):
        return {
            "embed": jnp.asarray(copy(net.embed.weight)),
            "w1": jnp.asarray(copy(net.hidden.weight).T),
            "b1": jnp.asarray(copy(net.hidden.bias)),
            "w2": jnp.asarray(copy(net.out.weight).T),
            "b2": jnp.asarray(copy(net.out.bias)),
        }

    def apply(params, idx):
        e = params["embed"][idx].reshape(idx.shape[0], -1)
        return jnp.tanh(e @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]

    def batches(seed):
        rng = np.random.default_rng(seed)
        starts = rng.integers(0, len(train) - CONTEXT, size=(steps, batch_size))
        return windows(train, starts)

    base = dict(lr=1e-3, alpha=0.99, eps=1e-8, weight_decay=0.0)
    task = Supervised(
        name="lm",
        title=f"(c) char-LM, stdlib {' + '.join(TEXT_PACKAGES)} source",
        steps=steps,
        make_torch=CharMLP,
        to_jax=to_jax,
        apply=apply,
        batches=batches,
        eval_data=(x_eval, y_eval),
        eval_what=(
            f"held-out cross-entropy (nats per character) on the last 10% of the text, "
            f"{len(x_eval)} windows"
        ),
        settings=two_settings(base),
        param_names=["embed", "w1", "b1", "w2", "b2"],
    )
    task.text_info = dict(chars=len(text), files=len(files), train=len(train), held_out=len(held))
    return task


# --------------------------------------------------------------------------
# (b) DQN: the example's agent, with the centered preset's state in 8 bits.


def run_dqn(steps: int, seeds: int, quick: bool, log) -> dict:
    """The example's agents, all seeds vmapped under one optimizer per run: with
    stochastic rounding they share its seed, so each agent draws the same random
    bits (hashed from the seed, step, leaf and element) for its own values."""
    dqn = load_example("dqn_cartpole")
    make = lambda **storage: (
        lambda: presets.dqn_nature_2015(
            learning_rate=dqn.LEARNING_RATE,
            decay=dqn.DECAY,
            min_squared_gradient=dqn.EPSILON,
            **storage,
        )
    )
    names = {
        JAX_F32: "eight-bit-study float32",
        JAX_8BIT: "eight-bit-study 8-bit",
        JAX_8BIT_SR: "eight-bit-study 8-bit stochastic",
    }
    for arm, name in names.items():
        dqn.OPTIMIZERS[name] = make(**jax_storage(arm, seed=0))
    settings = dqn.Settings(
        steps=steps,
        hidden=64,  # the middle layer, 64 x 64 = 4096 weights, gets 8-bit state
        gamma=0.99,
        replay_size=min(50_000, steps),
        learning_starts=500 if quick else 1_000,
        train_every=1,
        target_period=1_000 if quick else 5_000,
        explore_steps=int(0.1 * steps),
        final_epsilon=0.01,
    )
    out: dict = {"settings": settings._asdict(), "arms": {}}
    params = dqn.init_network(jax.random.key(0), settings.hidden)
    state = dqn.OPTIMIZERS[names[JAX_8BIT]]().init(params)
    out["eight_bit_elements"] = eight_bit_elements(state.nu)  # parameters with 8-bit state
    out["parameters"] = sum(int(p.size) for p in jax.tree.leaves(params))
    tail = max(1, steps // 10)
    for arm, name in names.items():
        r = dqn.train(name, settings, seeds, chunks=4 if quick else 10, seed=0)
        td = np.asarray(r["td_loss"], np.float64)  # (seeds, steps), NaN before learning starts
        final = np.nanmean(td[:, -tail:], axis=1)
        returns = [dqn.last_mean(x)[0] for x in r["episode_returns"]]
        out["arms"][arm] = {
            "td_loss": td,
            "final": final,
            "returns": np.asarray(returns),
            "result": r,
            "seconds": r["wall_seconds"],
        }
        learned = td[:, settings.learning_starts :]
        if not np.all(np.isfinite(learned)):
            seed, step = np.argwhere(~np.isfinite(learned))[0]
            step += settings.learning_starts
            log(f"  !! dqn {arm}: non-finite TD loss, seed {seed}, step {step}")
        log(
            f"  dqn {arm}: TD loss {np.round(final, 5).tolist()}, "
            f"return {np.round(returns, 1).tolist()} ({r['wall_seconds']:.0f} s)"
        )
    return out


# --------------------------------------------------------------------------
# Where an 8-bit second moment goes: the stored value against the exact
# moving average of the same gradients, one seed of (a).


def _nu_stats(stored: dict, exact: dict, before: dict | None) -> dict:
    """Per leaf: the median of stored / exact over the elements where both are
    positive, and (with ``before``, the stored and exact values some steps
    earlier) the fraction of elements whose stored and exact values fell since."""
    out = {}
    for name, s in stored.items():
        s, e = np.asarray(s, np.float64).ravel(), np.asarray(exact[name], np.float64).ravel()
        both = (s > 0) & (e > 0)
        row = {"median_ratio": float(np.median(s[both] / e[both])) if both.any() else float("nan")}
        if before is not None:
            s0, e0 = (np.asarray(x[name], np.float64).ravel() for x in before)
            row["stored_fell"] = float(np.mean(s < s0))
            row["exact_fell"] = float(np.mean(e < e0))
        out[name] = row
    return out


def diagnose_nu(task: Supervised, setting: str, log, seed: int = 0, window: int = 100) -> dict:
    """Trains seed ``seed`` of ``task`` with the 8-bit optimizers and keeps, next
    to each, the exact float32 moving average of the squared gradients it saw
    (weight decay included); compares the stored second moment with it."""
    from rmsprop_jax import _quantized  # the codes' values, for this diagnosis only

    hp = task.settings[setting]
    alpha, wd = hp["alpha"], hp["weight_decay"]
    xs, ys = task.batches(seed)
    steps = len(xs)
    checks = sorted({steps // 10, steps // 4, steps // 2, steps})
    torch.manual_seed(seed)
    net0 = task.make_torch()
    result: dict = {"setting": setting, "seed": seed, "window": window, "arms": {}}

    def track(arm, step_fn, stored_fn, exact_fn):
        ratios, before, fell = {}, None, None
        for t in range(1, steps + 1):
            step_fn(t - 1)
            if t == steps - window:
                before = (stored_fn(), exact_fn())
            if t in checks:
                stats = _nu_stats(stored_fn(), exact_fn(), before if t == steps else None)
                ratios[t] = {k: v["median_ratio"] for k, v in stats.items()}
                if t == steps:
                    fell = {k: (v["stored_fell"], v["exact_fell"]) for k, v in stats.items()}
        result["arms"][arm] = {"ratios": ratios, "fell": fell}
        last = ratios[steps]
        log(f"  nu diagnosis {arm}: median stored/exact at step {steps} {last}")

    for arm in (JAX_8BIT, JAX_8BIT_SR):
        tx = jax_optimizer(arm, hp, seed)

        def loss_fn(params, x, y):
            logits = task.apply(params, x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        @jax.jit
        def step(params, state, exact, x, y, tx=tx, loss_fn=loss_fn):
            grads = jax.grad(loss_fn)(params, x, y)
            exact = jax.tree.map(
                lambda e, g, p: alpha * e + (1 - alpha) * jnp.square(g + wd * p),
                exact,
                grads,
                params,
            )
            updates, state = tx.update(grads, state, params)
            return optax.apply_updates(params, updates), state, exact

        params = task.to_jax(net0)
        carry = [params, tx.init(params), jax.tree.map(jnp.zeros_like, params)]
        quantized = [k for k, v in carry[1].nu.items() if isinstance(v, rmsprop_jax.QuantizedArray)]

        def jax_step(t, step=step, carry=carry):
            carry[:] = step(*carry, xs[t], ys[t])

        def jax_stored(carry=carry, quantized=quantized):
            nu = carry[1].nu
            return {
                k: np.asarray(_quantized.load(nu[k], "nu", EIGHT_BIT.block_size)) for k in quantized
            }

        def jax_exact(carry=carry, quantized=quantized):
            return {k: np.asarray(carry[2][k]) for k in quantized}

        track(arm, jax_step, jax_stored, jax_exact)

    bnb = bitsandbytes()
    if bnb is not None:
        net = task.make_torch()
        net.load_state_dict(net0.state_dict())
        params = list(net.parameters())
        optimizer = torch_optimizer(BNB_8BIT, params, hp)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule_factor)
        exact = [torch.zeros_like(p) for p in params]
        tx_, ty_ = torch.as_tensor(xs), torch.as_tensor(ys)

        def bnb_step(t):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(net(tx_[t]), ty_[t]).backward()
            with torch.no_grad():
                for e, p in zip(exact, params):
                    g = p.grad + wd * p
                    e.mul_(alpha).addcmul_(g, g, value=1 - alpha)
            optimizer.step()
            scheduler.step()

        def eight_bit_params():
            for name, p in zip(task.param_names, params):
                st = optimizer.state[p]
                if st["state1"].dtype == torch.uint8:
                    yield name, p, st

        def bnb_stored():
            out = {}
            for name, p, st in eight_bit_params():
                values = bnb.functional.dequantize_blockwise(
                    st["state1"], absmax=st["absmax1"], code=st["qmap1"], blocksize=256
                )
                out[name] = copy(values.reshape(p.shape)).T if p.ndim == 2 else copy(values)
            return out

        def bnb_exact():
            by_param = dict(zip(map(id, params), exact))
            return {
                name: copy(by_param[id(p)]).T if p.ndim == 2 else copy(by_param[id(p)])
                for name, p, _ in eight_bit_params()
            }

        track(BNB_8BIT, bnb_step, bnb_stored, bnb_exact)
    return result


def diagnosis_report(d: dict) -> list[str]:
    arms = d["arms"]
    steps = sorted(next(iter(arms.values()))["ratios"])
    lines = [
        "## Where the second moment goes",
        "",
        f"(a) digits, {d['setting']}, seed {d['seed']}, trained again with each 8-bit "
        "optimizer while keeping beside it the exact float32 moving average of the squared "
        "gradients it saw (weight decay included). Median of stored / exact over each 8-bit "
        f"leaf's elements at several steps, and the share of elements whose value fell "
        f"over the last {d['window']} steps (exact: what the float32 average did).",
        "",
        "| optimizer | leaf | "
        + " | ".join(f"step {t}" for t in steps)
        + f" | stored fell, last {d['window']} | exact fell |",
        "|---|---|" + "---|" * len(steps) + "---|---|",
    ]
    for arm, r in arms.items():
        for leaf in r["ratios"][steps[-1]]:
            fell = r["fell"][leaf]
            lines.append(
                f"| {arm} | {leaf} | "
                + " | ".join(f"{r['ratios'][t][leaf]:.2f}" for t in steps)
                + f" | {fell[0]:.1%} | {fell[1]:.1%} |"
            )
    return lines


# --------------------------------------------------------------------------
# Statistics and the verdict.


def mean_std(x) -> tuple[float, float]:
    x = np.asarray(x, np.float64)
    return float(np.mean(x)), float(np.std(x, ddof=1)) if len(x) > 1 else float("nan")


def compare(a, b) -> dict:
    """a against b (final values per seed, same seeds): the difference of means,
    its standard error (unpaired), and the paired differences' mean and std."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    n = len(a)
    diff = float(np.mean(a) - np.mean(b))
    se = math.sqrt((np.var(a, ddof=1) + np.var(b, ddof=1)) / n) if n > 1 else float("nan")
    paired = a - b
    paired_std = float(np.std(paired, ddof=1)) if n > 1 else float("nan")
    paired_se = paired_std / math.sqrt(n)
    return {
        "diff": diff,
        "se": se,
        "relative": diff / float(np.mean(b)),
        # the goal's test: the gap against the seed-to-seed spread of the two runs
        "within_noise": bool(abs(diff) <= 2 * se),
        "paired_mean": float(np.mean(paired)),
        "paired_std": paired_std,
        "higher_in": int(np.sum(paired > 0)),
        "seeds": n,
        # the same seeds: a consistent gap shows here
        "paired_significant": bool(abs(float(np.mean(paired))) > 2 * paired_se),
        "worse_paired": bool(float(np.mean(paired)) > 2 * paired_se),
    }


def verdicts(results: dict) -> list[dict]:
    """One row per (task, setting, 8-bit arm): against float32 state, and
    (where bitsandbytes ran) against bitsandbytes."""
    rows = []
    for task_name, tr in results.items():
        settings = (
            {"centered (DQN Zoo)": tr["arms"]} if task_name == "dqn" else dict(tr["settings"])
        )
        for setting, arms in settings.items():
            f32 = arms[JAX_F32]["final"]
            for arm in (JAX_8BIT, JAX_8BIT_SR):
                row = {
                    "task": task_name,
                    "setting": setting,
                    "arm": arm,
                    "vs_f32": compare(arms[arm]["final"], f32),
                }
                if BNB_8BIT in arms:
                    row["vs_bnb"] = compare(arms[arm]["final"], arms[BNB_8BIT]["final"])
                    row["bnb_vs_torch"] = compare(arms[BNB_8BIT]["final"], arms[TORCH_F32]["final"])
                    # no worse than bitsandbytes: not higher by more than 2 standard
                    # errors of the per-seed (paired) differences
                    row["no_worse_than_bnb"] = not row["vs_bnb"]["worse_paired"]
                rows.append(row)
    return rows


# --------------------------------------------------------------------------
# The figure and the report.


def smooth(x: np.ndarray, window: int) -> np.ndarray:
    """Moving average along the last axis (NaN-aware; NaN where a window is all NaN)."""
    window = max(1, min(window, x.shape[-1]))
    valid = np.isfinite(x)
    cs = np.cumsum(np.where(valid, x, 0.0), axis=-1)
    cn = np.cumsum(valid, axis=-1)
    pad = lambda c: np.concatenate([np.zeros((*c.shape[:-1], 1)), c], axis=-1)
    cs, cn = pad(cs), pad(cn)
    s = cs[..., window:] - cs[..., :-window]
    n = cn[..., window:] - cn[..., :-window]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, s / np.maximum(n, 1), np.nan)


COLORS = {
    TORCH_F32: "tab:gray",
    BNB_8BIT: "tab:red",
    JAX_F32: "tab:blue",
    JAX_8BIT: "tab:green",
    JAX_8BIT_SR: "tab:orange",
}


def band(ax, x, curves, arm, label=None):
    curves = np.asarray(curves, np.float64)
    seen = ~np.all(np.isnan(curves), axis=0)  # DQN: no episode finished yet
    x, curves = np.asarray(x)[seen], curves[:, seen]
    mean = np.nanmean(curves, axis=0)
    ax.plot(x, mean, color=COLORS[arm], lw=1.2, label=label or arm)
    ax.fill_between(
        x, np.nanmin(curves, axis=0), np.nanmax(curves, axis=0), color=COLORS[arm], alpha=0.15
    )


def plot(results: dict, path: pathlib.Path, seeds: int) -> None:
    """Per supervised task and setting: the batch loss (moving mean), and under
    it each run's loss relative to the JAX float32 run of the same seed. DQN:
    TD loss and return. Mean over seeds, band from the lowest to the highest."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []  # each: (kind, [(name, what) per column])
    for name in ("digits", "lm"):
        if name in results:
            cells = [(name, setting) for setting in results[name]["settings"]]
            rows += [("loss", cells), ("ratio", cells)]
    if "dqn" in results:
        rows.append(("dqn", [("dqn", "td"), ("dqn", "return")]))
    heights = [1.3 if kind == "ratio" else 3 for kind, _ in rows]
    fig, axes = plt.subplots(
        len(rows),
        2,
        figsize=(12, 1.25 * sum(heights)),
        squeeze=False,
        gridspec_kw={"height_ratios": heights},
    )
    for (kind, cells), ax_row in zip(rows, axes):
        for ax in ax_row[len(cells) :]:
            ax.set_visible(False)
        for ax, (name, what) in zip(ax_row, cells):
            tr = results[name]
            if kind in ("loss", "ratio"):
                arms = tr["settings"][what]
                steps = next(iter(arms.values()))["losses"].shape[1]
                window = max(1, steps // 25)
                x = np.arange(window, steps + 1)
                reference = smooth(arms[JAX_F32]["losses"], window)
                for arm, r in arms.items():
                    curves = smooth(r["losses"], window)
                    if kind == "loss":
                        band(ax, x, curves, arm)
                    elif arm != JAX_F32:
                        band(ax, x, curves / reference, arm)
                if kind == "loss":
                    ax.set_title(f"{tr['title']}, {what}", fontsize=10)
                    ax.set_ylabel(f"batch loss (mean of {window})")
                    if tr["curve_log"]:
                        ax.set_yscale("log")
                else:
                    ax.axhline(1.0, color=COLORS[JAX_F32], lw=0.8)
                    ax.set_ylabel("/ JAX float32,\nsame seed", fontsize=9)
                    ax.set_xlabel("step")
            elif what == "td":
                for arm, r in tr["arms"].items():
                    td = r["td_loss"]
                    window = max(1, td.shape[1] // 25)
                    band(ax, np.arange(window, td.shape[1] + 1), smooth(td, window), arm)
                ax.set_yscale("log")
                ax.set_title("(b) DQN on CartPole-v1, centered RMSprop: TD loss", fontsize=10)
                ax.set_xlabel("environment step")
                ax.set_ylabel("TD loss (moving mean)")
            else:
                dqn = load_example("dqn_cartpole")
                for arm, r in tr["arms"].items():
                    grid = np.linspace(1, tr["settings"]["steps"], 200)
                    band(ax, grid, dqn.learning_curve(r["result"], grid), arm)
                ax.set_title("(b) DQN: episode return (mean of last 20 episodes)", fontsize=10)
                ax.set_xlabel("environment step")
                ax.set_ylabel("return")
            ax.grid(alpha=0.3, which="both")
            if kind != "ratio":
                ax.legend(fontsize=8)
    fig.suptitle(f"8-bit vs float32 optimizer state: mean over {seeds} seeds, band = min..max")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def fmt(x: float) -> str:
    return f"{x:.4f}" if abs(x) >= 1e-3 or x == 0 else f"{x:.2e}"


def report(results: dict, rows: list[dict], meta: dict) -> str:
    lines = [
        "# 8-bit optimizer state: accuracy against float32 state and bitsandbytes",
        "",
        "Generated by `benchmarks/eight_bit_accuracy.py`"
        + (" with `--quick` (too short to judge accuracy)" if meta["quick"] else "")
        + f" (`make accuracy-8bit`); {meta['wall_seconds']:.0f} s on {meta['machine']}.",
        f"{meta['versions']}.",
        "",
        "Each seed is trained once by every optimizer from the same initial weights "
        "on the same batches. 8-bit: `rmsprop_jax.blockwise_8bit()` (blocks of 256, leaves "
        "under 4096 elements in float32) as `nu_dtype` and `mu_dtype`; bitsandbytes: "
        "`bnb.optim.RMSprop8bit(..., min_8bit_size=4096)`. Final loss: mean ± standard "
        "deviation over seeds, then each seed.",
        "",
    ]
    for name, tr in results.items():
        if name == "dqn":
            s = tr["settings"]
            lines += [
                "## (b) DQN on CartPole-v1 (JAX only)",
                "",
                f"`examples/dqn_cartpole.py`'s agent, {s['steps']} environment steps per seed, "
                f"{len(next(iter(tr['arms'].values()))['final'])} seeds vmapped, DQN Zoo's "
                "centered RMSprop (`presets.dqn_nature_2015`, learning rate 2.5e-4, decay 0.95, "
                "eps 0.01/32² inside the root). "
                f"{tr['eight_bit_elements']} of the {tr['parameters']} parameters (the 64x64 "
                "layer) have their mean and second moment in 8 bits. "
                "bitsandbytes has no JAX agent to compare with (and refuses centered RMSprop). "
                "Final loss: TD loss averaged over the last 10% of gradient steps; return: mean "
                "of each seed's last 100 episodes.",
                "",
                "| optimizer | final TD loss | per seed | return | per seed | wall s |",
                "|---|---|---|---|---|---|",
            ]
            for arm, r in tr["arms"].items():
                m, sd = mean_std(r["final"])
                rm, rsd = mean_std(r["returns"])
                lines.append(
                    f"| {arm} | {fmt(m)} ± {fmt(sd)} | {', '.join(fmt(v) for v in r['final'])} "
                    f"| {rm:.1f} ± {rsd:.1f} | {', '.join(f'{v:.0f}' for v in r['returns'])} "
                    f"| {r['seconds']:.0f} |"
                )
            lines.append("")
            continue
        lines += [f"## {tr['title']}", "", tr["description"], ""]
        for setting, arms in tr["settings"].items():
            hp = tr["hyperparameters"][setting]
            lines += [
                f"### {setting}: `{', '.join(f'{k}={v}' for k, v in hp.items())}`",
                "",
                "| optimizer | final loss | per seed | wall s |",
                "|---|---|---|---|",
            ]
            for arm, r in arms.items():
                m, sd = mean_std(r["final"])
                lines.append(
                    f"| {arm} | {fmt(m)} ± {fmt(sd)} | {', '.join(fmt(v) for v in r['final'])} "
                    f"| {r['seconds']:.1f} |"
                )
            lines.append("")
    lines += [
        "## Verdict",
        "",
        "Δ: the 8-bit run's mean final loss minus the reference's, ± the standard error "
        "of that difference over seeds (unpaired, sqrt((s_a² + s_b²)/n)). *Within seed "
        "noise*: |Δ| ≤ 2 SE. Paired: the mean ± std over seeds of the per-seed "
        "differences, and in how many seeds the 8-bit run ended higher; a seed has the "
        "same weights and batches in every run, so a consistent gap shows here even when "
        "it is smaller than the seed-to-seed spread. *Systematic*: |paired mean| > "
        "2 std/√n. Against "
        "bitsandbytes (same seeds, paired), *no worse* means the JAX 8-bit run is not "
        "higher by more than 2 std/√n.",
        "",
        "| task | setting | 8-bit run | Δ vs JAX float32 | relative | within seed noise "
        "| paired Δ | systematic | paired Δ vs bitsandbytes | no worse than bitsandbytes "
        "| bitsandbytes vs torch float32 (paired) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        v = row["vs_f32"]
        cells = [
            row["task"],
            row["setting"],
            row["arm"],
            f"{v['diff']:+.2e} ± {v['se']:.1e}",
            f"{v['relative']:+.1%}",
            "yes" if v["within_noise"] else "**no**",
            f"{v['paired_mean']:+.2e} ± {v['paired_std']:.1e} "
            f"(higher in {v['higher_in']}/{v['seeds']})",
            "**yes**" if v["paired_significant"] else "no",
        ]
        if "vs_bnb" in row:
            b, t = row["vs_bnb"], row["bnb_vs_torch"]
            cells += [
                f"{b['paired_mean']:+.2e} ± {b['paired_std']:.1e}",
                "yes" if row["no_worse_than_bnb"] else "**no**",
                f"{t['paired_mean']:+.2e} ± {t['paired_std']:.1e} ({t['relative']:+.1%})",
            ]
        else:
            cells += ["", "", ""]
        lines.append("| " + " | ".join(cells) + " |")
    where = lambda rs: "; ".join(f"{r['task']} ({r['setting']}): {r['arm']}" for r in rs)
    outside = [r for r in rows if not r["vs_f32"]["within_noise"]]
    systematic = [
        r
        for r in rows
        if r["vs_f32"]["within_noise"]
        and r["vs_f32"]["paired_significant"]
        and r["vs_f32"]["paired_mean"] > 0
    ]
    worse = [r for r in rows if r.get("no_worse_than_bnb") is False]
    lines += [""]
    lines.append(
        "Every 8-bit run is within seed noise of float32 state."
        if not outside
        else f"Outside seed noise of float32 state (higher loss): {where(outside)}."
    )
    if systematic:
        lines.append(f"Within seed noise but systematically higher (paired): {where(systematic)}.")
    if any("vs_bnb" in r for r in rows):
        lines.append(
            "No 8-bit JAX run is worse than bitsandbytes."
            if not worse
            else f"Worse than bitsandbytes: {where(worse)}."
        )
    if "diagnosis" in meta:
        lines += ["", *diagnosis_report(meta["diagnosis"])]
    lines += ["", "## Notes", ""] + [f"- {n}" for n in meta["notes"]] + [""]
    return "\n".join(lines)


# --------------------------------------------------------------------------


def check_bnb_momentum(log) -> str | None:
    """Whether bitsandbytes' RMSprop8bit uses `momentum`: two runs, momentum 0
    and 0.9, on the same weights and gradients; identical weights mean it does not."""
    bnb = bitsandbytes()
    if bnb is None:
        return None
    out = []
    for momentum in (0.0, 0.9):
        torch.manual_seed(0)
        w = torch.nn.Parameter(torch.randn(64, 64))
        opt = bnb.optim.RMSprop8bit([w], lr=1e-2, momentum=momentum, min_8bit_size=MIN_8BIT_SIZE)
        for i in range(5):
            w.grad = torch.full_like(w, 1.0 + i)
            opt.step()
        out.append(w.detach().clone())
    same = bool(torch.equal(out[0], out[1]))
    note = (
        f"bitsandbytes {bnb.__version__}'s RMSprop8bit gave identical weights with momentum=0 "
        "and momentum=0.9 here (its RMSprop keeps one state, the second moment, and has no "
        "momentum buffer on this backend), so it is compared only in the settings without "
        "momentum."
        if same
        else f"bitsandbytes {bnb.__version__}'s RMSprop8bit uses momentum here; it was still "
        "run only without momentum."
    )
    log("  " + note)
    return note


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run, for a test")
    parser.add_argument(
        "--tasks", nargs="+", choices=["digits", "dqn", "lm"], default=["digits", "dqn", "lm"]
    )
    parser.add_argument(
        "--seeds", type=int, default=None, help="seeds per task (default: 5; 2 with --quick)"
    )
    parser.add_argument("--out-md", default=None, help="the Markdown report")
    parser.add_argument("--figure", default=None, help="the PNG")
    parser.add_argument("--json", default=None, help="also write the final values as JSON")
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)
    quick_dir = pathlib.Path("eight_bit_accuracy_quick")
    out_md = pathlib.Path(
        args.out_md
        or (quick_dir / "results.md" if args.quick else HERE / "results_eight_bit_accuracy.md")
    )
    figure = pathlib.Path(
        args.figure
        or (
            quick_dir / "eight_bit_accuracy.png"
            if args.quick
            else ROOT / "docs/eight_bit_accuracy.png"
        )
    )
    torch.set_num_threads(1)  # networks this small run fastest on one thread
    log = lambda s: print(s, flush=True)
    q = args.quick
    n_seeds = lambda default: args.seeds or (2 if q else default)

    start = time.perf_counter()
    notes = []
    diagnosis = None
    bnb = bitsandbytes()
    if bnb is None:
        notes.append("bitsandbytes is not installed: its runs were skipped.")
    elif {"digits", "lm"} & set(args.tasks):
        notes.append(check_bnb_momentum(log))
    results: dict = {}
    for name in args.tasks:
        log(f"{name} ...")
        if name == "dqn":
            results["dqn"] = run_dqn(
                steps=4_000 if q else 100_000, seeds=n_seeds(5), quick=q, log=log
            )
            continue
        if name == "digits":
            task = digits_task(steps=150 if q else 1000)
            seeds = list(range(n_seeds(5)))
        else:
            task = lm_task(steps=150 if q else 2000, max_chars=60_000 if q else None)
            seeds = list(range(n_seeds(5)))
        r = run_supervised(task, seeds, log)
        if name == "digits":
            diagnosis = diagnose_nu(task, "no momentum", log, window=20 if q else 100)
        r["title"] = task.title
        r["curve_log"] = task.curve_log
        r["hyperparameters"] = task.settings
        desc = (
            f"{task.steps} steps of batches of {len(task.batches(0)[1][0])}, seeds "
            f"{seeds[0]}-{seeds[-1]}. Learning rate 1e-3 (1e-4 with momentum) times the port "
            "example's schedule (linear warm-up over 100 steps, then 1/(1 + t/500)). "
            f"{r['eight_bit_elements']} of the {r['parameters']} parameters have 8-bit state. "
            f"Final loss: {task.eval_what}."
        )
        if name == "lm":
            info = task.text_info
            desc += (
                f" Text: the {info['files']} .py files of the `email` and `json` packages of "
                f"Python {platform.python_version()}, {info['chars']} characters ("
                f"{info['train']} for training, {info['held_out']} held out); a window of "
                f"{CONTEXT} characters, embedding {EMBED}, tanh layer {HIDDEN}, "
                f"{len(ALPHABET)} characters."
            )
        r["description"] = desc
        results[name] = r
    wall = time.perf_counter() - start
    rows = verdicts(results)

    meta = {
        "quick": q,
        "wall_seconds": wall,
        "machine": f"{jax.devices()[0].platform.upper()}, {platform.machine()}",
        "versions": (
            f"Python {platform.python_version()}, jax {jax.__version__}, "
            f"optax {optax.__version__}, torch {torch.__version__}"
            + (f", bitsandbytes {bnb.__version__}" if bnb is not None else "")
        ),
        "notes": [n for n in notes if n],
    }
    if diagnosis is not None:
        meta["diagnosis"] = diagnosis
    if "dqn" in results:
        meta["notes"].append(
            "DQN: bitsandbytes is not compared (no JAX agent; it also refuses centered RMSprop). "
            "The TD loss is a bootstrapped target's error, not a quantity the agent converges on: "
            "read it together with the return."
        )
    text = report(results, rows, meta)
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_md.write_text(text)
    written = [out_md]
    if not args.no_plot:
        plot(results, figure, max(len(r["final"]) for r in _all_arms(results)))
        written.append(figure)
    if args.json:
        summary = {
            name: {
                setting: {arm: r["final"].tolist() for arm, r in arms.items()}
                for setting, arms in _settings(tr).items()
            }
            for name, tr in results.items()
        }
        pathlib.Path(args.json).write_text(
            json.dumps({"final": summary, "verdicts": rows, "wall_seconds": wall}, indent=1)
        )
        written.append(pathlib.Path(args.json))
    print("\n".join(line for line in text.splitlines() if line.startswith("|")))
    print(f"\nwall time {wall:.0f} s; wrote {', '.join(map(str, written))}")
    return {"results": results, "verdicts": rows, "wall_seconds": wall}


def _settings(tr: dict) -> dict:
    return {"centered (DQN Zoo)": tr["arms"]} if "arms" in tr else tr["settings"]


def _all_arms(results: dict):
    for tr in results.values():
        for arms in _settings(tr).values():
            yield from arms.values()


if __name__ == "__main__":
    main()
