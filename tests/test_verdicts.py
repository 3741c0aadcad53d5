"""Seed-aware verdicts and budget curves against values computed by hand."""

import json
import math

import pandas as pd
import pytest

from analysis.verdicts import (
    budget_curve,
    compare_settings,
    seed_variation_measured,
    setting_means,
)

T_4 = 2.776445105  # two-sided 95% t quantile, 4 degrees of freedom (tables)
T_2 = 4.302652730  # 2 degrees of freedom


def sweep(values: dict[float, list[float]]) -> pd.DataFrame:
    rows = [(gamma, seed, v) for gamma, vs in values.items() for seed, v in enumerate(vs)]
    return pd.DataFrame(rows, columns=["gamma", "seed", "fid"])


def test_setting_means_are_the_t_interval_of_each_setting_s_seeds():
    table = setting_means(sweep({0.5: [1, 2, 3], 0.7: [4, 5, 6]}), ["gamma"], "fid")
    assert list(table["setting"]) == ["gamma=0.5", "gamma=0.7"]
    first = table.iloc[0]
    # mean 2, sd 1, half width t(2) * 1 / sqrt(3)
    assert first["n"] == 3 and first["mean"] == 2 and first["sd"] == pytest.approx(1)
    assert first["ci_low"] == pytest.approx(2 - T_2 / math.sqrt(3))
    assert first["ci_high"] == pytest.approx(2 + T_2 / math.sqrt(3))


def test_means_apart_beyond_the_seed_spread_are_a_verdict():
    # means 2 and 5, variances 1 and 1: se = sqrt(1/3 + 1/3), Welch df = 4
    [verdict] = compare_settings(sweep({0.5: [1, 2, 3], 0.7: [4, 5, 6]}), ["gamma"], "fid",
                                 "minimize")  # fmt: skip
    half = T_4 * math.sqrt(2 / 3)
    assert verdict.difference == pytest.approx(-3)
    assert (verdict.ci_low, verdict.ci_high) == pytest.approx((-3 - half, -3 + half))
    assert verdict.conclusive and verdict.better == "gamma=0.5" and verdict.n_seeds == 3
    assert verdict.seeds_to_settle is None
    assert verdict.line().startswith("gamma=0.5 better than gamma=0.7 on fid")


def test_means_that_differ_within_the_seed_spread_are_inconclusive():
    # means 3 and 4, variances 4 and 4: se = sqrt(8/3), df = 4, interval -1 +- 4.53
    [verdict] = compare_settings(sweep({0.5: [1, 3, 5], 0.7: [2, 4, 6]}), ["gamma"], "fid",
                                 "minimize")  # fmt: skip
    half = T_4 * math.sqrt(8 / 3)
    assert (verdict.ci_low, verdict.ci_high) == pytest.approx((-1 - half, -1 + half))
    assert not verdict.conclusive and verdict.better is None
    # The smallest n with t(2n - 2) * sqrt(8 / n) < 1: t(62) = 1.9990 at n = 32 gives
    # 0.9995 (settled), t(60) = 2.0003 at n = 31 gives 1.0161 (not yet).
    assert verdict.seeds_to_settle == 32
    assert "inconclusive at 3 seeds" in verdict.line() and "about 32 seeds" in verdict.line()


def test_the_better_setting_follows_the_objective_s_direction():
    data = sweep({0.5: [1, 2, 3], 0.7: [4, 5, 6]})
    [verdict] = compare_settings(data, ["gamma"], "fid", "maximize")
    assert verdict.a == "gamma=0.7" and verdict.better == "gamma=0.7"
    assert verdict.difference == pytest.approx(3)


def test_one_seed_per_setting_measures_no_seed_variation():
    data = sweep({0.5: [1], 0.7: [2]})
    assert not seed_variation_measured(data, ["gamma"])
    assert compare_settings(data, ["gamma"], "fid", "minimize") == []
    assert seed_variation_measured(sweep({0.5: [1, 2], 0.7: [3]}), ["gamma"])


def test_the_budget_curve_is_the_expected_best_of_k_trials():
    # Best of 2 of [1, 2, 3, 4] (maximize): the six pairs' maxima 2, 3, 4, 3, 4, 4.
    curve = budget_curve([3, 1, 4, 2], "maximize")
    assert list(curve["n_trials"]) == [1, 2, 3, 4]
    assert curve["expected_best"].tolist() == pytest.approx([2.5, 20 / 6, 3.75, 4])
    assert curve.iloc[1][["low", "high"]].tolist() == [2, 4]
    assert curve.iloc[3][["low", "high"]].tolist() == [4, 4]
    # Minimize: the same search of the negated values, its band in the metric's order.
    mirrored = budget_curve([-3, -1, -4, -2], "minimize")
    assert mirrored["expected_best"].tolist() == pytest.approx([-2.5, -20 / 6, -3.75, -4])
    assert mirrored.iloc[1][["low", "high"]].tolist() == [-4, -2]


def built_study(values: dict[float, list[float]]) -> pd.DataFrame:
    """A load_runs-like frame of a sweep: one complete trial per (gamma, seed)."""
    runs = sweep(values).rename(columns={"fid": "objective_fid"})
    runs["trial"] = range(len(runs))
    runs["state"], runs["current"] = "COMPLETE", True
    runs["run_id"] = [f"r{i}" for i in range(len(runs))]
    runs.attrs.update(objectives=["fid"], directions=["minimize"], params=["gamma"],
                      study="built")  # fmt: skip
    return runs


def inputs_of(runs: pd.DataFrame):
    from analysis.sections import ReportInputs

    return ReportInputs(runs, pd.DataFrame(), None, "")


def test_the_report_states_the_verdicts_and_report_json_holds_them(tmp_path):
    from analysis import load_verdicts, seeds
    from analysis.render import write_report

    runs = built_study({0.5: [1, 2, 3], 0.7: [4, 5, 6], 0.9: [1, 3, 5]})
    section = seeds.across_seeds(inputs_of(runs))
    assert list(section.table["setting"]) == ["gamma=0.5", "gamma=0.7", "gamma=0.9"]
    assert section.notes[0].startswith("1 of 3 pairs of settings differ")
    assert section.notes[1].startswith("gamma=0.5 better than gamma=0.7 on fid")
    curve = seeds.budget(inputs_of(runs))
    write_report([section, curve], {"title": "built"}, tmp_path, ["json"])
    document = json.loads((tmp_path / "report.json").read_text())
    keys = {"metric", "a", "b", "difference", "ci_low", "ci_high", "n_seeds", "conclusive"}
    assert len(document["verdicts"]) == 3 and keys <= set(document["verdicts"][0])
    [budget] = document["budget_curves"]
    assert budget["metric"] == "fid" and budget["n_trials"] == list(range(1, 10))
    assert len(budget["expected_best"]) == len(budget["low"]) == len(budget["high"]) == 9
    assert budget["expected_best"][-1] == 1  # all nine trials: the best of them
    verdicts = load_verdicts(tmp_path)
    assert list(verdicts["conclusive"]) == [v["conclusive"] for v in document["verdicts"]]
    assert verdicts.loc[verdicts["conclusive"], "better"].tolist() == ["gamma=0.5"]


def test_one_seed_per_setting_says_no_seed_variation_was_measured():
    from analysis import seeds

    section = seeds.across_seeds(inputs_of(built_study({0.5: [1], 0.7: [2]})))
    assert "no seed variation was measured" in section.notes[0]
    assert not section.data and not len(section.table)


def test_budget_curves_of_two_studies_share_the_axes():
    from dataclasses import replace

    from analysis import seeds

    first = built_study({0.5: [1, 2, 3]})
    other = built_study({0.5: [4, 5], 0.7: [6, 7]})
    other.attrs["study"] = "other"
    section = seeds.budget(replace(inputs_of(first), compared=other))
    assert [(c["study"], c["n_trials"]) for c in section.data["budget_curves"]] == [
        ("built", [1, 2, 3]),
        ("other", [1, 2, 3, 4]),
    ]
    assert set(section.table["study"]) == {"built", "other"}
    assert section.notes[1].startswith("other: fid: expected best 4 with all 4 trials")
