"""The 8-bit accuracy study (benchmarks/eight_bit_accuracy.py) in its --quick mode.

One run of every task (digits, DQN, the character-level model) with two seeds
and a few hundred steps, shared by the tests below. They check that the study
measures what it says: the 8-bit runs really hold 8-bit state, their loss
falls, and it ends within a stated factor of the float32 run's. The factors
are loose on purpose: the quick runs are too short to judge accuracy (the
full run, `make accuracy-8bit`, does that); they catch an 8-bit step that
diverges, stalls or is not taken.
"""

import importlib.util
import pathlib
import sys

import numpy as np
import pytest
from helpers import TORCH_MISSING

try:
    import torch  # noqa: F401
except ImportError:
    pytest.skip(TORCH_MISSING, allow_module_level=True)
pytest.importorskip("sklearn")
pytest.importorskip("gymnax")
pytest.importorskip("matplotlib")
nnx = pytest.importorskip("flax.nnx")
if not hasattr(nnx.Variable, "set_value"):  # the port example needs flax >= 0.12.1
    pytest.skip("examples/port_from_pytorch.py needs flax >= 0.12.1", allow_module_level=True)

SCRIPT = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "eight_bit_accuracy.py"
# 8-bit final loss / float32 final loss (means over the seeds), at most:
SUPERVISED_FACTOR = 1.1  # digits and the char-LM: 0.99-1.00 measured in --quick
DQN_FACTOR = 2.0  # the TD loss of a 4000-step agent varies by half between seeds
# The loss must fall: the last 10 batch losses' mean below this fraction of the first 10's.
FALLS_TO = 0.7


def load():
    spec = importlib.util.spec_from_file_location("eight_bit_accuracy", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("eight_bit_accuracy")
    module = load()
    argv = ["--quick", "--out-md", str(out / "results.md"), "--figure", str(out / "fig.png")]
    return module, module.main(argv), out


def supervised(results):
    for name in ("digits", "lm"):
        for setting, arms in results[name]["settings"].items():
            yield name, setting, arms


def test_eight_bit_state_is_used(study):
    _, run, _ = study
    results = run["results"]
    for name in ("digits", "lm"):
        assert results[name]["eight_bit_elements"] > 0.9 * results[name]["parameters"], name
    assert results["dqn"]["eight_bit_elements"] == 64 * 64  # the middle layer


@pytest.mark.parametrize("arm", ["JAX 8-bit", "JAX 8-bit, stochastic"])
def test_eight_bit_loss_falls_and_tracks_float32(study, arm):
    module, run, _ = study
    results = run["results"]
    for name, setting, arms in supervised(results):
        losses = arms[arm]["losses"]  # (seeds, steps)
        assert np.all(np.isfinite(losses)), (name, setting)
        first, last = losses[:, :10].mean(axis=1), losses[:, -10:].mean(axis=1)
        assert np.all(last < FALLS_TO * first), (name, setting, first, last)
        ratio = arms[arm]["final"].mean() / arms[module.JAX_F32]["final"].mean()
        assert ratio < SUPERVISED_FACTOR, (name, setting, ratio)
    dqn = results["dqn"]
    start = dqn["settings"]["learning_starts"]
    assert np.all(np.isfinite(dqn["arms"][arm]["td_loss"][:, start:]))
    ratio = dqn["arms"][arm]["final"].mean() / dqn["arms"][module.JAX_F32]["final"].mean()
    assert ratio < DQN_FACTOR, ratio


def test_against_bitsandbytes(study):
    pytest.importorskip(
        "bitsandbytes",
        reason="bitsandbytes is not installed (`make accuracy-8bit` installs it): "
        "the comparison with RMSprop8bit is skipped",
    )
    module, run, _ = study
    for name, setting, arms in supervised(run["results"]):
        if setting != "no momentum":
            # bitsandbytes' RMSprop ignores momentum: not run there
            assert module.BNB_8BIT not in arms, (name, setting)
            continue
        bnb = arms[module.BNB_8BIT]
        assert np.all(np.isfinite(bnb["losses"]))
        # the same weights and batches as torch's float32 run: the same start
        np.testing.assert_allclose(
            bnb["losses"][:, 0], arms[module.TORCH_F32]["losses"][:, 0], rtol=1e-6
        )
        ratio = arms[module.JAX_8BIT]["final"].mean() / bnb["final"].mean()
        assert ratio < SUPERVISED_FACTOR, (name, ratio)


def test_report_and_figure(study):
    _, run, out = study
    text = (out / "results.md").read_text()
    assert "--quick" in text and "## Verdict" in text
    for title in ("(a) digits", "(b) DQN", "(c) char-LM"):
        assert title in text
    assert (out / "fig.png").stat().st_size > 10_000
    assert {row["task"] for row in run["verdicts"]} == {"digits", "dqn", "lm"}
