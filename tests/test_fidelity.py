"""Near collapse (studies.collapse, the study's lines) and the report's 'fidelity against
diversity' section, on hand-built trials whose figures are computed by hand."""

from __future__ import annotations

import io
import math
from types import SimpleNamespace

import optuna
import pandas as pd
import pytest

from analysis import fidelity, sections
from analysis.sections import ReportInputs
from studies.collapse import collapse_flag, collapse_warning, near_collapse_signs, ssim_share
from studies.objectives import Objective
from studies.progress import diversity_verdict, trial_line
from studies.pruning import HealthRule
from studies.schema import FINAL_ATTR, FINAL_PREFIX, final_metrics

DEMO_03 = {"diversity_ssim": 0.858, "diversity_ssim_real": 0.241}  # the demo's gamma 0.3 trial
DEMO_05 = {"diversity_ssim": 0.610, "diversity_ssim_real": 0.241}  # ... and gamma 0.5


def test_near_collapse_is_judged_against_the_real_images_figure() -> None:
    assert ssim_share(DEMO_03) == pytest.approx((0.858 - 0.241) / (1 - 0.241))  # 0.81
    assert collapse_warning(DEMO_03).startswith(
        "near collapse: diversity SSIM 0.858 vs 0.241 for real images, 81% of the way to "
        "identical samples: the generator repeats a few faces"
    )
    assert ssim_share(DEMO_05) == pytest.approx(0.4862, abs=1e-4)
    assert collapse_warning(DEMO_05) is None
    collapsed = collapse_warning({"diversity_ssim": 0.95, "diversity_ssim_real": 0.241})
    assert collapsed.startswith("collapsed: diversity SSIM 0.950 >= 0.9")
    assert collapse_warning({"diversity_ssim": 0.95}, collapse_ssim=0.97) is None  # no real


def test_the_collapse_flag_says_the_same_in_a_few_words() -> None:
    assert collapse_flag(DEMO_03) == (
        "near collapse: diversity SSIM 0.858, 81% of the way to identical"
    )
    assert collapse_flag(DEMO_05) is None
    assert collapse_flag({"diversity_ssim": 0.95, "diversity_ssim_real": 0.2}) == (
        "collapsed: diversity SSIM 0.950 >= 0.9"
    )
    low_reach = {"coverage_1k": 0.04, "precision_1k": 0.8}
    assert collapse_flag(low_reach) == "near collapse: coverage_1k 0.040 with precision_1k 0.800"


def test_low_coverage_or_recall_flags_only_real_looking_samples() -> None:
    real_looking = {"coverage_1k": 0.04, "recall_1k": 0.2, "precision_1k": 0.8, "step": 9}
    assert near_collapse_signs(real_looking) == ["coverage_1k 0.040 with precision_1k 0.800"]
    by_density = {"recall_5k": 0.05, "density_5k": 1.3}
    assert near_collapse_signs(by_density) == ["recall_5k 0.050 with density_5k 1.300"]
    off_the_data = {"coverage_1k": 0.04, "precision_1k": 0.1}  # fidelity failure, not collapse
    assert near_collapse_signs(off_the_data) == []
    assert near_collapse_signs({"coverage_1k": 0.04}) == []  # nothing says they look real


def finished_trial(final: dict[str, float], value: float) -> optuna.trial.FrozenTrial:
    """A trial outside a study (numbered -1), finished with `final` metrics."""
    gamma = optuna.distributions.FloatDistribution(0, 1)
    return optuna.trial.create_trial(
        params={"gamma": 0.3}, distributions={"gamma": gamma}, value=value,
        user_attrs={FINAL_PREFIX + name: value for name, value in final.items()},
    )  # fmt: skip


def test_final_metrics_read_the_same_from_attributes_or_an_older_studys_dict() -> None:
    per_value = finished_trial(DEMO_03, 0.6174).user_attrs
    assert final_metrics(per_value) == DEMO_03
    assert final_metrics({FINAL_ATTR: DEMO_03}) == DEMO_03  # a study written before
    assert final_metrics({}) == {}


def test_the_trial_line_and_the_verdict_say_near_collapse_and_what_it_means() -> None:
    spec = SimpleNamespace(objectives=[Objective("diversity", "diversity_gap", "minimize")],
                           health=HealthRule(), named=["gamma"])  # fmt: skip
    line = trial_line(spec, finished_trial(DEMO_03, 0.6174))
    first, flag, meaning = line.splitlines()
    assert first.startswith("t-1 gamma=0.3 COMPLETE | diversity_gap=0.6174 | diversity SSIM")
    assert flag == "  ! NEAR COLLAPSE: diversity SSIM 0.858 vs 0.241 for real images, 81% of the " \
                   "way to identical samples"  # fmt: skip
    assert meaning.strip().startswith("the generator repeats a few faces (near mode collapse)")
    assert "\n" not in trial_line(spec, finished_trial(DEMO_05, 0.3694))
    assert diversity_verdict(DEMO_03, 0.9).endswith(
        "NEAR COLLAPSE, 81% of the way to identical samples"
    )
    assert diversity_verdict(DEMO_05, 0.9).endswith("less varied than the real faces")


# --- the report -------------------------------------------------------------------------------


def inputs(runs: pd.DataFrame) -> ReportInputs:
    empty = pd.DataFrame(columns=["run_id", "key", "step", "value"])
    return ReportInputs(runs, empty, study=None, tracking_uri="", window_steps=2)


def trials(**final: list[float]) -> pd.DataFrame:
    """Four complete trials at gamma 0.3, 0.5, 0.7, 0.9, and a pruned one (never counted)."""
    n = len(next(iter(final.values())))
    gammas = [0.3, 0.5, 0.7, 0.9, 0.9][:n]
    states = (["COMPLETE"] * 4 + ["PRUNED"])[:n]
    frame = pd.DataFrame({"run_id": list("abcde")[:n], "trial": range(n), "gamma": gammas,
                          "state": states, "current": True})  # fmt: skip
    for name, values in final.items():
        frame[f"final_{name}"] = values
    return frame


# Ranks against gamma 1..4 (rho = 1 - 6 sum d^2 / (n (n^2 - 1)), n = 4, n(n^2-1) = 60):
# precision 4 2 3 1: sum d^2 = 18, rho = -0.8;  recall 1 3 2 4: 2, rho = +0.8;
# density 2 3 1 4: 6, rho = +0.4 (no clear trend);  coverage 1 2 3 4: rho = +1.
KNN = {
    "precision_1k": [0.9, 0.7, 0.8, 0.5, 0.0],
    "recall_1k": [0.1, 0.3, 0.2, 0.6, 1.0],
    "density_1k": [1.0, 1.1, 0.9, 1.2, 9.0],
    "coverage_1k": [0.2, 0.4, 0.5, 0.9, 0.0],
}


def test_fidelity_section_gives_rho_of_gamma_and_the_verdict_in_words() -> None:
    runs = trials(**KNN, diversity_ssim=[0.858, 0.5, 0.4, 0.3, 0.99],
                  diversity_ssim_real=[0.241] * 5)  # fmt: skip
    section = fidelity.fidelity_vs_diversity(inputs(runs))
    table = section.table.set_index("metric")
    assert list(table["n"]) == [4, 4, 4, 4] and list(table["gammas"]) == [4, 4, 4, 4]
    expected = {"precision_1k": -0.8, "recall_1k": 0.8, "density_1k": 0.4, "coverage_1k": 1.0}
    for metric, rho in expected.items():
        assert table.loc[metric, "spearman_rho"] == pytest.approx(rho), metric
    assert list(table["kind"]) == ["fidelity", "diversity", "fidelity", "diversity"]
    assert section.notes[0] == (
        "higher gamma gave more recall/coverage and less precision; no clear trend in "
        "density: rho precision_1k -0.80, recall_1k +0.80, density_1k +0.40, "
        "coverage_1k +1.00, n 4"
    )
    # One seed per gamma: the trend is stated with what it cannot tell apart from a reseed.
    assert "no seed variation was measured" in section.notes[1]
    assert section.notes[2].startswith("trial 0: near collapse: diversity SSIM 0.858")
    assert section.notes[3].startswith("trial 4: collapsed (diversity SSIM 0.990)")
    assert section.notes[4].startswith("near collapse: the generator repeats a few faces")
    section.figure.savefig(io.BytesIO(), format="png")  # draws
    labels = sections.collapse_labels(runs)
    assert list(labels) == ["near collapse", "", "", "", "collapsed"]


@pytest.mark.parametrize(
    ("runs", "expected"),
    [
        (trials(precision_1k=[0.9, 0.7]), "cannot say: needs >= 3 complete trials with the "
         "metrics, has 2"),
        (trials(precision_1k=[0.9, 0.7, 0.8, 0.5]).assign(gamma=0.5),
         "cannot say: the complete trials with these metrics all have one gamma"),
        (trials(fid_1k=[1.0, 2.0, 3.0, 4.0]), "cannot say: no complete trial logged precision"),
        (trials(recall_1k=[0.2, 0.2, 0.3, 0.3]), "higher gamma gave more recall: rho "
         "recall_1k +0.89, n 4"),
        # The LFW study's case: no sample manifold reached a real image at any gamma.
        (trials(precision_1k=[0.13, 0.04, 0.012, 0.006], recall_1k=[0.0] * 4),
         "higher gamma gave less precision; recall did not vary between trials: rho "
         "precision_1k -1.00, n 4"),
    ],
)  # fmt: skip
def test_fidelity_verdict_says_why_it_cannot_say(runs, expected) -> None:
    section = fidelity.fidelity_vs_diversity(inputs(runs))
    assert section.notes[0].startswith(expected)


def test_m_global_section_gives_rho_against_the_knn_metrics_too() -> None:
    # M_global ranks 1..4; FID ranks 1 3 2 4 (rho +0.8); precision ranks 4 2 3 1 (rho -0.8).
    runs = trials(m_global_mean=[1.0, 2.0, 3.0, 4.0], fid_1k=[10.0, 30.0, 20.0, 40.0],
                  precision_1k=KNN["precision_1k"][:4], recall_1k=KNN["recall_1k"][:4])  # fmt: skip
    table = sections.mglobal_vs_quality(inputs(runs)).table
    first = table.iloc[0]
    assert (first["metric"], first["group"], first["better"]) == ("fid_1k", "all", "lower")
    assert first["spearman_rho"] == pytest.approx(0.8)
    overall = table[table["group"] == "all"].set_index("metric")
    assert list(overall.index) == ["fid_1k", "precision_1k", "recall_1k"]
    assert overall.loc["precision_1k", "spearman_rho"] == pytest.approx(-0.8)
    assert overall.loc["recall_1k", "spearman_rho"] == pytest.approx(0.8)
    assert overall.loc["precision_1k", "better"] == "higher"
    within = table[(table["metric"] == "precision_1k") & (table["group"] == "gamma=0.3")]
    assert within["n"].item() == 1 and math.isnan(within["spearman_rho"].item())
