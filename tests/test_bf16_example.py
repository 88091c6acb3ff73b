"""examples/bf16_training.py, run briefly at a learning rate of 1e-6: every step
is far below half a unit in the last place of almost every bfloat16 weight."""

import jax
import numpy as np
import pytest
from helpers import load_example

example = load_example("bf16_training")

# The 64-128-10 MLP: two kernels and two biases.
N_PARAMS = 64 * 128 + 128 + 128 * 10 + 10


@pytest.fixture(scope="module")
def tiny_steps(tmp_path_factory):
    argv = ["--steps", "40", "--seeds", "2", "--learning-rate", "1e-6", "--sweep"]
    argv += ["--settings", "bf16-nearest", "bf16-stochastic", "--eval-every", "20"]
    argv += ["--no-plot", "--out", str(tmp_path_factory.mktemp("bf16"))]
    return example.main(argv)


def moves(run):
    """How far each weight went from its start, all seeds and leaves, in float64."""
    return np.concatenate(
        [
            (np.asarray(end, np.float64) - np.asarray(start, np.float64)).ravel()
            for end, start in zip(
                jax.tree.leaves(run["params"]), jax.tree.leaves(run["initial_params"])
            )
        ]
    )


def test_round_to_nearest_stays_put_where_stochastic_rounding_tracks_float32(tiny_steps):
    runs = tiny_steps["runs"][1e-6]
    f32 = moves(runs["float32"])
    nearest = moves(runs["bf16-nearest"])
    stochastic = moves(runs["bf16-stochastic"])
    trained = f32 != 0  # not the weights of always-blank pixels or dead units
    assert trained.mean() > 0.8
    # Round-to-nearest moves only weights within about 0.002 of zero (and the
    # biases, which start at zero): a few percent.
    assert np.mean(nearest[trained] != 0) < 0.1
    # The projection of each bfloat16 run's move on float32's: 1 for a run that
    # goes where float32 goes on average. For stochastic rounding the noise of
    # ~19,000 weights over 40 steps leaves a few hundredths.
    along = lambda m: float(m @ f32 / (f32 @ f32))
    assert abs(along(stochastic) - 1) < 0.15, along(stochastic)
    assert along(nearest) < 0.5, along(nearest)
    # Steps lost to rounding, as the example counts them.
    assert runs["float32"]["lost"].max() < 0.01
    assert runs["bf16-nearest"]["lost"].min() > 0.8


def test_loss_falls_as_in_float32_only_with_stochastic_rounding(tiny_steps):
    runs = tiny_steps["runs"][1e-6]

    def drop(name):
        return runs[name]["losses"][:, 0] - runs[name]["losses"][:, -1]

    assert np.all(drop("float32") > 0)
    np.testing.assert_allclose(drop("bf16-stochastic"), drop("float32"), rtol=0.25)
    assert np.all(drop("bf16-nearest") < 0.5 * drop("float32"))
    table = tiny_steps["summary"]["by_learning_rate"]["1e-06"]
    assert table["bf16-stochastic"]["losses"]["within_noise"]


def test_every_setting_starts_from_the_float32_weights_rounded(tiny_steps):
    runs = tiny_steps["runs"][1e-6]
    start = jax.tree.leaves(runs["float32"]["initial_params"])
    for name, run in runs.items():
        for a, b in zip(jax.tree.leaves(run["initial_params"]), start):
            assert a.dtype == example.SETTINGS[name].param_dtype
            np.testing.assert_array_equal(a, b.astype(a.dtype), err_msg=name)


def test_bytes_per_parameter_counts_params_and_state(tiny_steps):
    # Parameters, the second moment, and an int32 step count per transformation.
    want = {
        "float32": 4 + 4 + 4 / N_PARAMS,
        "bf16-nearest": 2 + 2 + 4 / N_PARAMS,
        "bf16-stochastic": 2 + 2 + 8 / N_PARAMS,
        "bf16-params": 2 + 4 + 4 / N_PARAMS,
        "bf16-params-stochastic": 2 + 4 + 8 / N_PARAMS,
        # a byte per parameter and a float32 scale per block of 256 (32, 1, 5
        # and 1 blocks for the four leaves), two step counts
        "bf16-8bit-stochastic": 2 + 1 + (4 * (32 + 1 + 5 + 1) + 8) / N_PARAMS,
    }
    for name, setting in example.SETTINGS.items():
        params = example.init_params(0, setting.param_dtype)
        state = example.make_optimizer(setting, 1e-3, 0.9, 0).init(params)
        got = example.bytes_per_parameter(params, state)
        assert got == pytest.approx(want[name], rel=1e-12), name
    for name, run in tiny_steps["runs"][1e-6].items():
        assert run["bytes_per_param"] == pytest.approx(want[name], rel=1e-12), name


def test_within_noise():
    a = np.array([1.0, 1.1, 0.9, 1.0])
    diff, se, ok = example.within_noise(a + 0.05, a)
    assert diff == pytest.approx(0.05)
    assert se == pytest.approx(np.sqrt(2 * a.var(ddof=1) / 4))
    assert ok
    assert not example.within_noise(a + 0.2, a)[2]
