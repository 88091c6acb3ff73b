"""Benchmark (`make bench`): step time against optax, torch and the memory-bandwidth floor.

For each parameter tree (ResNet-50-shaped, GPT-2-small-shaped, 2000 small
leaves) and configuration (plain; centered + momentum) it times one jitted
optimizer step (update + optax.apply_updates, parameters and state donated)
of rmsprop_jax and optax.rmsprop, torch.optim.RMSprop's step with
foreach=False and foreach=True on tensors of the same shapes, and computes
the floor: the bytes the step must move divided by the bandwidth of a large
in-place array update measured in the same run. Contestants are interleaved
and repeated; medians are reported, and ratios, since the machine is shared.

Then: trace+compile time on the 2000-leaf tree, state bytes and step time of
bfloat16 / stochastically rounded / factored state, the error of a slow
bfloat16 average against float32, and the demo classifier's accuracy with the
factored second moment.

Writes benchmarks/results/bench.md, bench.json and docs/bench.png.
Usage: python benchmarks/bench.py [--reps 7] [--quick]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch

import rmsprop_jax

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import trees  # noqa: E402

CONFIGS = {
    "plain": dict(jax=dict(learning_rate=1e-3), torch=dict(lr=1e-3, alpha=0.9), arrays=5),
    "centered+momentum": dict(
        jax=dict(learning_rate=1e-3, centered=True, momentum=0.9),
        torch=dict(lr=1e-3, alpha=0.9, centered=True, momentum=0.9),
        arrays=9,  # read g, p, nu, mu, b; write p, nu, mu, b
    ),
}


def make_params(shapes, seed=0):
    key = jax.random.PRNGKey(seed)
    return {
        name: jax.random.normal(jax.random.fold_in(key, i), shape, jnp.float32)
        for i, (name, shape) in enumerate(shapes.items())
    }


def jax_stepper(opt, params, grads):
    def step(params, state, grads):
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    step = jax.jit(step, donate_argnums=(0, 1))
    box = {"params": jax.tree.map(jnp.copy, params), "state": opt.init(params)}

    def run(n):
        p, s = box["params"], box["state"]
        for _ in range(n):
            p, s = step(p, s, grads)
        jax.block_until_ready((p, s))
        box["params"], box["state"] = p, s

    run(2)  # compile and warm up
    return run


def torch_stepper(kw, shapes, foreach):
    params = [torch.randn(shape) for shape in shapes.values()]
    for p in params:
        p.grad = torch.randn(p.shape) * 0.1
    opt = torch.optim.RMSprop(params, foreach=foreach, **kw)

    def run(n):
        with torch.no_grad():
            for _ in range(n):
                opt.step()

    run(2)
    return run


def bandwidth_stepper(n_floats=64 * 2**20):
    """A large in-place update x <- 0.999 x + y: 3 arrays of traffic."""
    f = jax.jit(lambda x, y: x * 0.999 + y, donate_argnums=0)
    box = {"x": jnp.ones(n_floats), "y": jnp.ones(n_floats)}

    def run(n):
        x = box["x"]
        for _ in range(n):
            x = f(x, box["y"])
        x.block_until_ready()
        box["x"] = x

    run(2)
    return run, 3 * 4 * n_floats


def calibrate(run, target_s=0.05):
    t0 = time.perf_counter()
    run(1)
    once = time.perf_counter() - t0
    return max(1, int(target_s / max(once, 1e-6)))


def interleaved_medians(runners: dict, reps: int) -> dict:
    """Median seconds per step of each runner, measured round-robin."""
    inner = {name: calibrate(run) for name, run in runners.items()}
    times: dict[str, list[float]] = {name: [] for name in runners}
    names = list(runners)
    for r in range(reps):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            t0 = time.perf_counter()
            runners[name](inner[name])
            times[name].append((time.perf_counter() - t0) / inner[name])
    return {name: statistics.median(ts) for name, ts in times.items()}


def compile_time(make_opt, params, trials=3):
    out = []
    for _ in range(trials):
        opt = make_opt()

        def step(params, state, grads, opt=opt):  # a fresh function: no cache hit
            updates, state = opt.update(grads, state, params)
            return optax.apply_updates(params, updates), state

        state = opt.init(params)
        t0 = time.perf_counter()
        jax.jit(step).lower(params, state, params).compile()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def slow_average_error(nu_dtype, stochastic, steps=3000):
    opt = rmsprop_jax.scale_by_rms(decay=0.999, nu_dtype=nu_dtype, stochastic_rounding=stochastic)
    g = jnp.ones(4096)

    def body(state, _):
        return opt.update(g, state)[1], None

    state, _ = jax.jit(lambda s: jax.lax.scan(body, s, None, length=steps))(opt.init(g))
    exact = 1 - 0.999**steps
    return float(np.abs(np.asarray(state.nu, np.float64) - exact).mean())


def state_bytes(state):
    return sum(x.nbytes for x in jax.tree.leaves((state.nu, state.mu, state.trace)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="skip GPT-2 (for a fast check)")
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args(argv)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, len(jax.devices("cpu")) and torch.get_num_threads()))

    tree_list = {"ResNet-50": trees.resnet50(), "2000 small leaves": trees.small_leaves()}
    if not args.quick:
        tree_list["GPT-2 small"] = trees.gpt2_small()
    results = {
        "machine": f"{platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} torch threads, jax {jax.__version__} "
        f"on {jax.devices()[0].platform}",
        "rows": [],
    }
    bw_run, bw_bytes = bandwidth_stepper()

    for tree_name, shapes in tree_list.items():
        n = trees.count(shapes)
        params = make_params(shapes)
        grads = jax.tree.map(lambda p: 0.1 * p, params)
        for cfg_name, cfg in CONFIGS.items():
            runners = {
                "rmsprop_jax": jax_stepper(rmsprop_jax.rmsprop(**cfg["jax"]), params, grads),
                "optax": jax_stepper(optax.rmsprop(**cfg["jax"]), params, grads),
                "torch foreach=False": torch_stepper(cfg["torch"], shapes, foreach=False),
                "torch foreach=True": torch_stepper(cfg["torch"], shapes, foreach=True),
                "bandwidth": bw_run,
            }
            med = interleaved_medians(runners, args.reps)
            bandwidth = bw_bytes / med.pop("bandwidth")
            floor = cfg["arrays"] * 4 * n / bandwidth
            best_torch = min(med["torch foreach=False"], med["torch foreach=True"])
            row = {
                "tree": tree_name,
                "params": n,
                "leaves": len(shapes),
                "config": cfg_name,
                **{f"{k} ms": 1e3 * v for k, v in med.items()},
                "floor ms": 1e3 * floor,
                "bandwidth GB/s": bandwidth / 1e9,
                "vs optax": med["rmsprop_jax"] / med["optax"],
                "torch / ours": best_torch / med["rmsprop_jax"],
                "vs floor": med["rmsprop_jax"] / floor,
            }
            results["rows"].append(row)
            print(
                f"{tree_name:<18}{cfg_name:<19} ours {row['rmsprop_jax ms']:9.3f} ms  "
                f"optax {row['optax ms']:9.3f}  torch {1e3 * best_torch:9.3f}  "
                f"floor {row['floor ms']:9.3f}  | vs optax {row['vs optax']:.2f}  "
                f"torch/ours {row['torch / ours']:.2f}  vs floor {row['vs floor']:.2f}",
                flush=True,
            )
            del runners

    small = make_params(trees.small_leaves())
    ours_c = compile_time(lambda: rmsprop_jax.rmsprop(1e-3, centered=True, momentum=0.9), small)
    optax_c = compile_time(lambda: optax.rmsprop(1e-3, centered=True, momentum=0.9), small)
    results["compile"] = {"rmsprop_jax s": ours_c, "optax s": optax_c, "ratio": ours_c / optax_c}
    print(
        f"trace+compile, 2000 leaves, centered+momentum: ours {ours_c:.2f} s, optax "
        f"{optax_c:.2f} s, ratio {ours_c / optax_c:.2f}",
        flush=True,
    )

    # Lighter state, on the ResNet-50 tree (plain configuration + momentum).
    shapes = trees.resnet50()
    params = make_params(shapes)
    grads = jax.tree.map(lambda p: 0.1 * p, params)
    n = trees.count(shapes)
    variants = {
        "float32 state": dict(),
        "bfloat16 state": dict(nu_dtype=jnp.bfloat16, mu_dtype=jnp.bfloat16),
        "bfloat16 + stochastic rounding": dict(
            nu_dtype=jnp.bfloat16, mu_dtype=jnp.bfloat16, stochastic_rounding=True
        ),
        "factored": dict(factored=True),
        "factored + bfloat16 momentum": dict(factored=True, mu_dtype=jnp.bfloat16),
    }
    runners, light = {}, []
    for name, kw in variants.items():
        opt = rmsprop_jax.rmsprop(1e-3, momentum=0.9, **kw)
        runners[name] = jax_stepper(opt, params, grads)
        light.append({"variant": name, "state bytes / param": state_bytes(opt.init(params)) / n})
    med = interleaved_medians(runners, args.reps)
    for row in light:
        row["step ms"] = 1e3 * med[row["variant"]]
        row["time vs float32"] = med[row["variant"]] / med["float32 state"]
        print(
            f"{row['variant']:<32} state {row['state bytes / param']:.3f} B/param, "
            f"step {row['step ms']:.2f} ms ({row['time vs float32']:.2f}x)",
            flush=True,
        )
    results["light_state"] = light
    results["slow_average_error"] = {
        "float32": slow_average_error(None, False),
        "bfloat16 nearest": slow_average_error(jnp.bfloat16, False),
        "bfloat16 stochastic": slow_average_error(jnp.bfloat16, True),
    }
    print("mean |nu - exact| after 3000 steps of decay 0.999:", results["slow_average_error"])

    # Factored second moment on the demo's classifier.
    sys.path.insert(0, str(HERE.parent / "examples"))
    import demo

    data = demo.load_data()
    acc = {}
    for name, kw in {
        "full": {},
        "factored": dict(factored=True, min_dim_size_to_factor=32),
    }.items():
        r = demo.train_classifier(f"RMSprop {name}", rmsprop_jax.rmsprop(3e-3, **kw), data, 1500)
        acc[name] = r["test_accuracy"]
    results["factored_demo_accuracy"] = acc
    print(
        f"digits classifier test accuracy: full {acc['full']:.4f}, factored {acc['factored']:.4f}"
    )

    write_report(results, out)
    plot(results, HERE.parent / "docs" / "bench.png")
    return results


def write_report(results, out):
    lines = [
        f"Machine: {results['machine']}",
        "",
        "| tree | params | config | rmsprop_jax ms | optax ms | torch foreach=False ms | "
        "torch foreach=True ms | floor ms | ours/optax | best torch/ours | ours/floor |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        lines.append(
            f"| {r['tree']} | {r['params']:,} | {r['config']} | {r['rmsprop_jax ms']:.2f} | "
            f"{r['optax ms']:.2f} | {r['torch foreach=False ms']:.2f} | "
            f"{r['torch foreach=True ms']:.2f} | {r['floor ms']:.2f} | {r['vs optax']:.2f} | "
            f"{r['torch / ours']:.2f} | {r['vs floor']:.2f} |"
        )
    c = results["compile"]
    lines += [
        "",
        f"Trace+compile, 2000 leaves: rmsprop_jax {c['rmsprop_jax s']:.2f} s, optax "
        f"{c['optax s']:.2f} s (ratio {c['ratio']:.2f}).",
        "",
        "| state (ResNet-50, momentum) | bytes / param | step ms | time vs float32 |",
        "|---|---|---|---|",
    ]
    for r in results["light_state"]:
        lines.append(
            f"| {r['variant']} | {r['state bytes / param']:.3f} | {r['step ms']:.2f} | "
            f"{r['time vs float32']:.2f} |"
        )
    e = results["slow_average_error"]
    a = results["factored_demo_accuracy"]
    lines += [
        "",
        "Mean |nu - exact| after 3000 steps of decay 0.999: "
        + ", ".join(f"{k} {v:.4f}" for k, v in e.items())
        + ".",
        f"Digits classifier test accuracy: full {a['full']:.4f}, factored {a['factored']:.4f}.",
    ]
    (out / "bench.md").write_text("\n".join(lines) + "\n")
    (out / "bench.json").write_text(json.dumps(results, indent=2))
    print("\n".join(lines))


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, cfg in zip(axes, CONFIGS):
        rows = sorted((r for r in results["rows"] if r["config"] == cfg), key=lambda r: r["params"])
        x = [r["params"] for r in rows]
        for key, label in [
            ("rmsprop_jax ms", "rmsprop_jax"),
            ("optax ms", "optax.rmsprop"),
            ("torch foreach=False ms", "torch foreach=False"),
            ("torch foreach=True ms", "torch foreach=True"),
            ("floor ms", "bandwidth floor"),
        ]:
            ax.plot(x, [r[key] for r in rows], "o-" if "floor" not in key else "k--", label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("parameters")
        ax.set_title(f"RMSprop step, {cfg}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("median step time (ms)")
    axes[0].legend()
    fig.tight_layout()
    path.parent.mkdir(exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
