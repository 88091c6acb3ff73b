"""examples/resume_run.py, briefly: a PyTorch and a Keras run moved to JAX
mid-way continue as the originals do, and the same move without the
optimizer state does not (its loss jumps)."""

import json

import jax
import numpy as np
import pytest
from helpers import TORCH_MISSING, load_example

nnx = pytest.importorskip("flax.nnx")
pytest.importorskip("sklearn")
pytest.importorskip("torch", reason=TORCH_MISSING)
keras = pytest.importorskip("keras")
if keras.backend.backend() != "jax":
    pytest.skip("needs KERAS_BACKEND=jax", allow_module_level=True)
if not hasattr(nnx.Variable, "set_value"):
    pytest.skip(
        "the example calls nnx.Variable.set_value (flax >= 0.12.1)", allow_module_level=True
    )

BEFORE, AFTER = 100, 30
TOL = {"float64": 1e-12, "float32": 1e-4}


def test_resume_run_continues_the_originals_and_a_fresh_state_does_not(tmp_path):
    argv = ["--before", str(BEFORE), "--steps", str(AFTER), "--out", str(tmp_path)]
    with jax.numpy_dtype_promotion("standard"):  # Keras' and flax's code mix dtypes
        results = load_example("resume_run").main(argv)
    assert set(results) == {"PyTorch", "Keras"}
    for name, by_dtype in results.items():
        for dtype, r in by_dtype.items():
            assert len(r["before"]) == BEFORE and len(r["moved"]) == len(r["original"]) == AFTER
            assert np.all(np.isfinite(r["moved"])) and np.all(np.isfinite(r["fresh"]))
            assert r["relative_difference"].max() < TOL[dtype], (name, dtype)
            # Without the state the run is another run, worse on the same batches.
            fresh_diff = np.abs(r["fresh"] - r["original"]) / r["original"]
            assert fresh_diff.max() > 1e-2, (name, dtype)
            assert r["fresh_over_moved"]["max"] > 1.1, (name, dtype)
    # PyTorch's alpha=0.99 restarts at a tenth of the run's denominator: a clear spike.
    torch_run = results["PyTorch"]["float64"]
    assert torch_run["fresh_over_moved"]["mean"] > 1.5
    assert torch_run["peak_ratio"]["fresh"] > 2 * torch_run["peak_ratio"]["moved"]

    summary = json.loads((tmp_path / "resume_run.json").read_text())
    assert (tmp_path / "resume_run.png").stat().st_size > 0
    run = summary["runs"]["Keras"]["float64"]
    assert run["moved"] == results["Keras"]["float64"]["moved"].tolist()
    assert run["fresh_over_moved"] == results["Keras"]["float64"]["fresh_over_moved"]
