"""The port examples: a run moved from PyTorch or Keras to rmsprop_jax follows
the same loss curve.

Each example runs briefly. In float64 the loss curves must agree to 1e-9
relative at every step, and the loss must have fallen. Each example also gets
a negative control: one known porting mistake put into the JAX side, which the
comparison must notice, so that agreement is not vacuous.
"""

import importlib.util
import json
import pathlib
import sys

import jax
import numpy as np
import pytest
from helpers import TORCH_MISSING

nnx = pytest.importorskip("flax.nnx")
pytest.importorskip("sklearn")
if not hasattr(nnx.Variable, "set_value"):  # flax 0.12.0, the newest for jax 0.8.0
    pytest.skip(
        "the port examples call nnx.Variable.set_value, new in flax 0.12.1 (which needs "
        "jax >= 0.8.1): `pip install 'flax>=0.12.1'`",
        allow_module_level=True,
    )

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"
STEPS = 60
FLOAT64_TOL = 1e-9
# Short float32 runs agree to about 1e-6 here; a ReLU kink crossed in one run
# and not the other (see the examples' docstrings) can take them far apart,
# but rarely this early.
FLOAT32_TOL = 1e-4


def load(name):
    spec = importlib.util.spec_from_file_location(f"port_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def args(tmp_path, network, *dtypes, plot=False):
    argv = ["--steps", str(STEPS), "--networks", network, "--out", str(tmp_path)]
    argv += ["--dtypes", *dtypes]
    return argv if plot else [*argv, "--no-plot"]


def assert_trained(losses):
    assert np.all(np.isfinite(losses))
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:5]), "the loss did not fall"


# --------------------------------------------------------------------------
# PyTorch.


@pytest.fixture(scope="module")
def port_from_pytorch():
    pytest.importorskip("torch", reason=TORCH_MISSING)
    return load("port_from_pytorch")


@pytest.mark.parametrize("network", ["MLP", "CNN"])
def test_pytorch_port_follows_the_same_curve_in_float64(port_from_pytorch, network, tmp_path):
    r = port_from_pytorch.main(args(tmp_path, network, "float64"))[network]["float64"]
    assert len(r["torch_losses"]) == len(r["jax_losses"]) == STEPS
    assert r["relative_difference"].max() < FLOAT64_TOL
    assert_trained(r["torch_losses"])
    assert_trained(r["jax_losses"])


def test_pytorch_port_in_float32_and_its_summary(port_from_pytorch, tmp_path):
    results = port_from_pytorch.main(args(tmp_path, "MLP", "float32", plot=True))
    r = results["MLP"]["float32"]
    assert r["relative_difference"].max() < FLOAT32_TOL
    assert_trained(r["jax_losses"])
    summary = json.loads((tmp_path / "port_from_pytorch.json").read_text())
    assert (tmp_path / "port_from_pytorch.png").stat().st_size > 0
    assert summary["steps"] == STEPS
    run = summary["runs"]["MLP"]["float32"]
    assert run["jax_losses"] == r["jax_losses"].tolist()
    assert run["max_relative_difference"] == r["relative_difference"].max()
    assert run["final_loss_torch"] == r["torch_losses"][-1]


def test_pytorch_port_notices_a_schedule_off_by_one(port_from_pytorch, monkeypatch, tmp_path):
    """Reading LambdaLR's rate one step late is a real porting mistake."""
    schedule = port_from_pytorch.lr_schedule
    monkeypatch.setattr(port_from_pytorch, "lr_schedule", lambda count: schedule(count + 1))
    r = port_from_pytorch.main(args(tmp_path, "MLP", "float64"))["MLP"]["float64"]
    assert r["relative_difference"][0] < FLOAT64_TOL  # the same start ...
    assert r["relative_difference"].max() > 1e3 * FLOAT64_TOL  # ... and a visible departure


# --------------------------------------------------------------------------
# Keras 3 on the JAX backend. Keras' own code mixes dtypes, so these tests
# run it under standard dtype promotion.


@pytest.fixture(scope="module")
def port_from_keras():
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "jax":
        pytest.skip("needs KERAS_BACKEND=jax")
    return load("port_from_keras")


@pytest.mark.parametrize("network", ["MLP", "CNN"])
def test_keras_port_follows_the_same_curve_in_float64(port_from_keras, network, tmp_path):
    with jax.numpy_dtype_promotion("standard"):
        r = port_from_keras.main(args(tmp_path, network, "float64"))[network]["float64"]
    assert len(r["keras_losses"]) == len(r["jax_losses"]) == STEPS
    assert r["relative_difference"].max() < FLOAT64_TOL
    assert r["clipped_fraction"] > 0, "clipnorm never clipped: the test would not see it"
    assert_trained(r["keras_losses"])
    assert_trained(r["jax_losses"])


def test_keras_port_in_float32_and_its_summary(port_from_keras, tmp_path):
    with jax.numpy_dtype_promotion("standard"):
        results = port_from_keras.main(args(tmp_path, "MLP", "float32", plot=True))
    r = results["MLP"]["float32"]
    assert r["relative_difference"].max() < FLOAT32_TOL
    assert_trained(r["jax_losses"])
    summary = json.loads((tmp_path / "port_from_keras.json").read_text())
    assert (tmp_path / "port_from_keras.png").stat().st_size > 0
    assert summary["steps"] == STEPS
    run = summary["runs"]["MLP"]["float32"]
    assert run["jax_losses"] == r["jax_losses"].tolist()
    assert run["max_relative_difference"] == r["relative_difference"].max()
    assert run["final_loss_keras"] == r["keras_losses"][-1]


def test_keras_port_notices_global_instead_of_per_variable_clipping(
    port_from_keras, monkeypatch, tmp_path
):
    """Keras' clipnorm clips each variable; clipping the whole tree is a different optimizer."""
    presets = port_from_keras.presets

    class GlobalClipping:
        @staticmethod
        def keras(clipnorm, **kw):
            return presets.keras(global_clipnorm=clipnorm, **kw)

    monkeypatch.setattr(port_from_keras, "presets", GlobalClipping)
    with jax.numpy_dtype_promotion("standard"):
        r = port_from_keras.main(args(tmp_path, "MLP", "float64"))["MLP"]["float64"]
    assert r["relative_difference"][0] < FLOAT64_TOL
    assert r["relative_difference"].max() > 1e3 * FLOAT64_TOL
