"""The benchmark states its own noise: a ratio whose rounds fall on both sides
of its target is reported as not resolved, not as a median."""

from helpers import ROOT, load_module

timing = load_module(ROOT / "benchmarks" / "timing.py", "benchmark_timing")


def test_a_ratio_whose_rounds_straddle_its_target_is_not_resolved():
    r = timing.spread([0.93, 0.97, 1.04])
    assert timing.verdict(r, 1.0) == "not resolved by this run"
    cell = timing.ratio_cell(r, 1.0)
    assert cell.startswith("not resolved by this run") and "0.97" not in cell  # no median


def test_a_ratio_on_one_side_of_its_target_is_reported_with_its_median():
    below, above = timing.spread([0.8, 0.9, 1.0]), timing.spread([1.11, 1.2, 1.3])
    assert timing.verdict(below, 1.0) == "met in every round"
    assert timing.verdict(above, 1.1) == "missed in every round"
    assert timing.ratio_cell(below, 1.0) == "0.90 (0.80-1.00)"
    assert timing.ratio_cell(above, 1.1) == "1.20 (1.11-1.30)"
    assert timing.ratio_cell(timing.spread([0.9, 1.2]), None) == "1.05 (0.90-1.20)"
