"""Data-parallel training across processes with jax.distributed and rmsprop_jax.

Each process holds a slice of every global batch; parameters are replicated;
the optimizer state is split across processes (ZeRO stage 1, via
`rmsprop_jax.shard_state`). JAX does the communication: the gradient mean is
an all-reduce that XLA inserts, through gloo on CPU.

One process of a real multi-host job (coordinator, count and id from flags or
JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID):

    python examples/distributed_data_parallel.py --coordinator 10.0.0.1:1234 \\
        --num-processes 4 --process-id 0

N processes on this machine (127.0.0.1), started and watched by this script:

    python examples/distributed_data_parallel.py --local 2 [--steps 100]

One process, no jax.distributed, the same global batches (a reference):

    python examples/distributed_data_parallel.py --single

Every wait is bounded: jax.distributed has initialization and heartbeat
timeouts, and --local stops all processes with a clear error as soon as one
fails or is killed, or when --timeout runs out.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time

import numpy as np


def parse(argv):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--steps", type=int, default=100, help="training steps (default: %(default)s)"
    )
    parser.add_argument(
        "--global-batch",
        type=int,
        default=64,
        help="images per step over all processes; each process feeds an equal slice, so it "
        "must be a multiple of the number of processes (default: %(default)s)",
    )
    parser.add_argument(
        "--learning-rate",
        type=float,
        default=3e-3,
        help="RMSprop's learning rate (momentum 0.9) (default: %(default)s)",
    )
    parser.add_argument(
        "--out",
        default=None,
        help="write the final parameters to this .npz file (with --local, one file per "
        "process: OUT.<id>.npz)",
    )
    parser.add_argument(
        "--local",
        type=int,
        default=0,
        metavar="N",
        help="start N processes on 127.0.0.1 and wait for them",
    )
    parser.add_argument(
        "--single", action="store_true", help="train in this process alone, no jax.distributed"
    )
    parser.add_argument(
        "--coordinator",
        default=os.environ.get("JAX_COORDINATOR_ADDRESS"),
        metavar="HOST:PORT",
        help="address of process 0, which coordinates the job (default: $JAX_COORDINATOR_ADDRESS)",
    )
    parser.add_argument(
        "--num-processes",
        type=int,
        default=int(os.environ.get("JAX_NUM_PROCESSES", "0")) or None,
        help="number of processes in the job (default: $JAX_NUM_PROCESSES)",
    )
    parser.add_argument(
        "--process-id",
        type=int,
        default=int(os.environ["JAX_PROCESS_ID"]) if "JAX_PROCESS_ID" in os.environ else None,
        help="this process's index, 0 to num-processes - 1 (default: $JAX_PROCESS_ID)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        help="with --local: seconds to wait for all processes before stopping them "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--heartbeat-timeout",
        type=int,
        default=20,
        help="seconds without a heartbeat after which jax.distributed declares a process "
        "dead (default: %(default)s)",
    )
    # For the failure test: this process exits abruptly at that step.
    parser.add_argument("--crash-process", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--crash-step", type=int, default=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    if args.local < 0:
        parser.error("--local must be a number of processes, at least 1")
    return args


# --------------------------------------------------------------------------
# The launcher for --local N.


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_local(args, argv) -> int:
    n = args.local
    address = f"127.0.0.1:{free_port()}"
    passthrough = [a for a in argv if not a.startswith("--local")]
    if "--local" in argv:  # "--local N" as two words
        i = argv.index("--local")
        passthrough = argv[:i] + argv[i + 2 :]
    procs = []
    for pid in range(n):
        cmd = [
            sys.executable,
            os.path.abspath(__file__),
            *passthrough,
            "--coordinator",
            address,
            "--num-processes",
            str(n),
            "--process-id",
            str(pid),
        ]
        if args.out:
            cmd += ["--out", f"{args.out}.{pid}.npz"]
        procs.append(subprocess.Popen(cmd))
    print(f"started {n} processes, coordinator {address}", flush=True)
    deadline = time.monotonic() + args.timeout
    try:
        while True:
            codes = [p.poll() for p in procs]
            failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
            if failed:
                i, code = failed[0]
                why = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
                print(
                    f"error: process {i} {why}; stopping the other processes.",
                    file=sys.stderr,
                    flush=True,
                )
                return 1
            if all(c == 0 for c in codes):
                print(f"all {n} processes finished", flush=True)
                return 0
            if time.monotonic() > deadline:
                print(
                    f"error: the processes did not finish within {args.timeout:.0f} s; "
                    "stopping them.",
                    file=sys.stderr,
                    flush=True,
                )
                return 1
            time.sleep(0.1)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


# --------------------------------------------------------------------------
# One process of the job.


def train(args) -> dict:
    import jax

    distributed = not args.single
    if distributed:
        if args.coordinator is None or args.num_processes is None or args.process_id is None:
            raise SystemExit(
                "error: give --coordinator, --num-processes and --process-id "
                "(or --local N, or --single)"
            )
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=args.coordinator,
            num_processes=args.num_processes,
            process_id=args.process_id,
            initialization_timeout=60,
            heartbeat_timeout_seconds=args.heartbeat_timeout,
        )

    import flax.linen as nn
    import jax.numpy as jnp
    import optax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P
    from sklearn.datasets import load_digits

    import rmsprop_jax

    n_proc, pid = jax.process_count(), jax.process_index()
    if args.global_batch % n_proc or args.global_batch < n_proc:
        raise SystemExit(
            f"error: --global-batch ({args.global_batch}) must be a positive multiple of the "
            f"number of processes ({n_proc})"
        )
    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    replicated = NamedSharding(mesh, P())
    batch_sharding = NamedSharding(mesh, P("data"))

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(10)(nn.relu(nn.Dense(64)(x)))

    x_all, y_all = load_digits(return_X_y=True)
    x_all = (x_all / 16.0).astype(np.float32)
    y_all = y_all.astype(np.int32)
    model = MLP()
    opt = rmsprop_jax.rmsprop(args.learning_rate, momentum=0.9)

    params = jax.jit(model.init, out_shardings=replicated)(
        jax.random.PRNGKey(0), jnp.zeros((1, 64))
    )
    zero1 = rmsprop_jax.shard_state(jax.eval_shape(opt.init, params), mesh, "data")
    state = jax.jit(opt.init, out_shardings=zero1)(params)

    def step(params, state, x, y):
        def loss_fn(p):
            logits = model.apply(p, x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    step = jax.jit(step, out_shardings=(replicated, zero1, replicated))
    rng = np.random.default_rng(0)  # every process draws the same global batches
    per_process = args.global_batch // n_proc
    losses = []
    for t in range(args.steps):
        idx = rng.choice(len(x_all), args.global_batch, replace=False)
        mine = idx[pid * per_process : (pid + 1) * per_process]
        x = jax.make_array_from_process_local_data(batch_sharding, x_all[mine])
        y = jax.make_array_from_process_local_data(batch_sharding, y_all[mine])
        if args.crash_process == pid and t == args.crash_step:
            print(f"process {pid}: simulated crash at step {t}", flush=True)
            os._exit(3)
        params, state, loss = step(params, state, x, y)
        losses.append(float(loss))
        if pid == 0 and (t % max(1, args.steps // 5) == 0 or t == args.steps - 1):
            print(f"step {t + 1:4d}  loss {losses[-1]:.4f}", flush=True)

    nu_leaf = jax.tree.leaves(state.nu)[0]
    local_state = sum(s.data.nbytes for x in jax.tree.leaves(state) for s in x.addressable_shards)
    total_state = sum(x.nbytes for x in jax.tree.leaves(state))
    print(
        f"process {pid}/{n_proc}: final loss {losses[-1]:.4f}; optimizer state here "
        f"{local_state} of {total_state} bytes (nu sharded as {nu_leaf.sharding.spec})",
        flush=True,
    )
    flat = {
        jax.tree_util.keystr(k): np.asarray(v)
        for k, v in jax.tree_util.tree_flatten_with_path(params)[0]
    }
    if args.out:
        np.savez(args.out, **flat)
    if distributed:
        jax.distributed.shutdown()
    return {"params": flat, "losses": losses}


def main(argv: list[str] | None = None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    if args.local:
        return launch_local(args, argv)
    return train(args)


if __name__ == "__main__":
    result = main()
    sys.exit(result if isinstance(result, int) else 0)
