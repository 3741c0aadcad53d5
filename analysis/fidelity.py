"""The paper's question: does gamma trade image quality for diversity?

BEGAN's gamma = E[L(G(z))] / E[L(x)] is introduced as a diversity ratio: lower gamma
makes D attend to auto-encoding real images, and the paper reports less varied, sharper
samples. Precision and density measure fidelity, recall and coverage diversity, apart
(began/metrics/manifold.py); this section ranks the complete trials by gamma against
each of them and says in one line what the study shows, or why it cannot say.
"""

from __future__ import annotations

import math

import pandas as pd

from analysis import figures
from analysis.sections import (
    ReportInputs,
    Section,
    final_metrics,
    knn_columns,
    spearman,
)
from analysis.verdicts import seed_variation_measured
from studies.collapse import MEANING, is_collapsed, near_collapse_signs
from studies.pruning import HealthRule

TITLE = "Fidelity against diversity"
MIN_TRIALS = 3  # Spearman's rho of fewer points is no evidence
CLEAR_RHO = 0.5  # |rho| at least this counts as a trend in the verdict
FIDELITY = ("precision", "density")  # the others, recall and coverage, measure diversity


def fidelity_vs_diversity(inputs: ReportInputs) -> Section:
    runs = inputs.current
    done = runs[runs["state"] == "COMPLETE"]
    columns = knn_columns(done) if "gamma" in done else {}
    table = rho_table(done, columns)
    notes = [verdict(table, columns), seed_caveat(done), *collapse_notes(runs)]
    fig = None
    if columns:
        plotted = done.dropna(subset=list(columns.values()), how="all")
        fig = figures.fidelity_diversity(plotted, columns) if len(plotted) else None
    return Section("fidelity", TITLE, _HELP, table, fig, notes)


def seed_caveat(done: pd.DataFrame) -> str:
    """What the trend is worth against the seed: Spearman counts every trial as a point."""
    if "gamma" not in done or not len(done):
        return ""
    if seed_variation_measured(done, ["gamma"]):
        return ("Spearman counts each trial as a point; whether two gammas differ beyond "
                "their seed variation is in 'Settings across seeds'.")  # fmt: skip
    return ("Spearman counts each trial as an independent point, and with one seed per "
            "gamma no seed variation was measured: a trend here may be what a reseed "
            "moves.")  # fmt: skip


def rho_table(done: pd.DataFrame, columns: dict[str, str]) -> pd.DataFrame:
    """One row per metric: n complete trials with it, their gammas, Spearman rho of gamma
    against it and its p-value."""
    rows = []
    for name, column in columns.items():
        data = done[["gamma", column]].dropna()
        rho, p = spearman(data["gamma"], data[column])
        kind = "fidelity" if name in FIDELITY else "diversity"
        metric = column.removeprefix("final_")
        gammas = data["gamma"].nunique()
        rows.append([metric, kind, len(data), gammas, rho, p])
    return pd.DataFrame(rows, columns=["metric", "kind", "n", "gammas", "spearman_rho", "p_value"])


def verdict(table: pd.DataFrame, columns: dict[str, str]) -> str:
    """'higher gamma gave more recall/coverage and less precision: rho ..., n ...', or why
    the study cannot say."""
    if not columns:
        return (
            "cannot say: no complete trial logged precision, recall, density or coverage "
            "(add them to --metrics: precision,recall,density,coverage)"
        )
    usable = table[(table["n"] >= MIN_TRIALS) & (table["gammas"] >= 2)]
    if usable.empty:
        n = int(table["n"].max())
        if n < MIN_TRIALS:
            return f"cannot say: needs >= {MIN_TRIALS} complete trials with the metrics, has {n}"
        return "cannot say: the complete trials with these metrics all have one gamma"
    rhos = dict(zip(usable["metric"], usable["spearman_rho"], strict=True))
    more = [m for m, rho in rhos.items() if rho >= CLEAR_RHO]
    less = [m for m, rho in rhos.items() if rho <= -CLEAR_RHO]
    same = [m for m, rho in rhos.items() if math.isnan(rho)]  # one value in every trial
    flat = [m for m in rhos if m not in more and m not in less and m not in same]
    said = [f"{word} {_names(found)}" for word, found in (("more", more), ("less", less)) if found]
    if said:
        text = f"higher gamma gave {' and '.join(said)}"
        text += f"; no clear trend in {_names(flat)}" if flat else ""
    else:
        text = f"gamma showed no clear trend in {_names(flat)}" if flat else "gamma changed nothing"
    if same:
        text += f"; {_names(same)} did not vary between trials"
    figures_ = ", ".join(f"{m} {rho:+.2f}" for m, rho in rhos.items() if not math.isnan(rho))
    return f"{text}: rho {figures_ or 'undefined'}, n {_counts(usable['n'])}"


def _names(metrics: list[str]) -> str:
    return "/".join(m.rsplit("_", 1)[0] for m in metrics)


def _counts(n: pd.Series) -> str:
    low, high = int(n.min()), int(n.max())
    return str(low) if low == high else f"{low}-{high}"


def collapse_notes(runs: pd.DataFrame) -> list[str]:
    """One note per collapsed or near-collapse trial (studies.collapse), with what it means."""
    notes = []
    for _, row in runs.iterrows():
        final = final_metrics(row)
        if is_collapsed(final, HealthRule.collapse_ssim):
            notes.append(f"trial {row['trial']}: collapsed (diversity SSIM "
                         f"{final['diversity_ssim']:.3f}): the samples look alike")  # fmt: skip
        elif signs := near_collapse_signs(final):
            notes.append(f"trial {row['trial']}: near collapse: {'; '.join(signs)}")
    if any("near collapse" in note for note in notes):
        notes.append(f"near collapse: {MEANING}")
    return notes


_HELP = (
    "The paper introduces gamma as a diversity ratio: lower gamma, D attends more to "
    "auto-encoding real images, and samples are said to be less varied. Here each complete "
    "trial's samples are scored on fidelity (precision: the share of samples inside the "
    "real images' k-NN manifold; density: how many real neighbourhoods hold a sample, ~1 "
    "when the sets match) and diversity (recall: the share of real images inside the "
    "samples' manifold; coverage: the share of real images with a sample in their own "
    "neighbourhood), all on the FID network's features and higher is better. Left: "
    "precision against recall, right: density against coverage, trials coloured by gamma. "
    "The table gives Spearman's rho of gamma against each (n complete trials); the first "
    "note says what the study shows, counting |rho| >= 0.5 as a trend. Near-collapse trials "
    "are listed below it."
)
