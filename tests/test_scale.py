"""Scale-out tests that need several devices or processes, each in a subprocess
so the rest of the suite keeps its single CPU device."""

import os
import pathlib
import re
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent


def _run(args, env_extra, timeout):
    env = dict(os.environ, **env_extra)
    return subprocess.run(
        [sys.executable, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=HERE.parent,
    )


def test_sharded_state_on_8_simulated_devices():
    result = _run(
        ["-m", "pytest", "-q", "-p", "no:cacheprovider", str(HERE / "multidevice")],
        {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"},
        timeout=600,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    passed = re.search(r"(\d+) passed", out)
    assert passed and int(passed.group(1)) >= 10 and "skipped" not in out, out[-2000:]


EXAMPLE = str(HERE.parent / "examples" / "distributed_data_parallel.py")


def test_two_processes_match_one(tmp_path):
    steps = ["--steps", "30"]
    multi = _run([EXAMPLE, "--local", "2", *steps, "--out", str(tmp_path / "ddp")], {}, 300)
    assert multi.returncode == 0, (multi.stdout + multi.stderr)[-4000:]
    single = _run([EXAMPLE, "--single", *steps, "--out", str(tmp_path / "single.npz")], {}, 300)
    assert single.returncode == 0, (single.stdout + single.stderr)[-4000:]
    import numpy as np

    p0, p1 = (np.load(tmp_path / f"ddp.{i}.npz") for i in range(2))
    ref = np.load(tmp_path / "single.npz")
    assert set(p0.files) == set(ref.files) and len(ref.files) == 4
    for name in ref.files:
        np.testing.assert_array_equal(p0[name], p1[name])  # every process, the same parameters
        # the same as one process on the same global batches, to float32 rounding
        np.testing.assert_allclose(p0[name], ref[name], rtol=2e-5, atol=2e-6)
    assert "19244 of 38484 bytes" in multi.stdout  # ZeRO-1: each process holds half


def test_a_crashed_process_stops_the_job_with_a_clear_error():
    import time

    start = time.monotonic()
    result = _run(
        [EXAMPLE, "--local", "2", "--steps", "30", "--crash-process", "1", "--crash-step", "5"],
        {},
        120,
    )
    elapsed = time.monotonic() - start
    assert result.returncode != 0
    assert "process 1 exited with code 3; stopping the other processes" in result.stderr
    assert elapsed < 60, elapsed
