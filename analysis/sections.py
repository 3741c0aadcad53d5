"""The report's sections: each turns the loaded frames into a table and a figure.

Frames in, frames out; every drawing is in `analysis.figures`. A section whose input is
missing (no FID, one trial, a run that never logged) says so in its notes instead of
raising: a study with failed, pruned or running trials must still render.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
from matplotlib.figure import Figure
from scipy.stats import spearmanr

from analysis import figures
from began.metrics.manifold import METRICS as KNN_METRICS
from began.metrics.registry import (
    find_logged,
    is_objective_name,
    metric_direction,
    quality_name_prefixes,
)
from studies.collapse import is_collapsed, near_collapse_signs
from studies.pruning import HealthRule
from studies.records import best_trials
from studies.schema import OBJECTIVE_PREFIX, SEED_ATTR

CURVES = ["m_global", "k", "loss_d", "loss_g", "loss_real", "loss_fake"]


@dataclass
class ReportInputs:
    """Everything the sections read: loaded once, shared by all."""

    runs: pd.DataFrame  # analysis.load_runs
    history: pd.DataFrame  # analysis.load_history of CURVES (+ images_per_s)
    study: optuna.Study | None
    tracking_uri: str
    window_steps: int = 1000
    chosen_run: str | None = None
    cache_dir: Path | None = None
    compared: pd.DataFrame | None = None  # another study's load_runs (--compare), or None

    @property
    def current(self) -> pd.DataFrame:
        """The rows whose run is theirs (a retried trial's run belongs to its retry)."""
        return self.runs[self.runs["current"] & self.runs["run_id"].notna()]


@dataclass
class Section:
    key: str  # file stem of its PNG and CSV
    title: str
    how_to_read: str
    table: pd.DataFrame
    figure: Figure | None
    notes: list[str] = field(default_factory=list)
    data: dict = field(default_factory=dict)  # what report.json holds of it (lists by key)


def param_columns(runs: pd.DataFrame) -> list[str]:
    """The columns that tell trials apart: the searched params, and the training seed
    where a sweep has several (queued with each point, not searched)."""
    params = [p for p in runs.attrs.get("params", []) if p in runs]
    params = params or (["gamma"] if "gamma" in runs else [])
    if SEED_ATTR not in params and SEED_ATTR in runs and runs[SEED_ATTR].nunique() > 1:
        params.append(SEED_ATTR)
    return params


def quality_columns(runs: pd.DataFrame) -> list[str]:
    """The final quality metrics present, in the order FID, KID, diversity, recon, sharpness."""
    found = []
    for prefix in quality_name_prefixes():
        for column in runs.columns:
            name = column.removeprefix("final_")
            wanted = column.startswith("final_") and name.startswith(prefix)
            wanted = wanted and is_objective_name(name) and column not in found
            if wanted and runs[column].notna().any():
                found.append(column)
    return found


def knn_columns(runs: pd.DataFrame) -> dict[str, str]:
    """{precision/recall/density/coverage: its final column}, each at the largest count
    logged (the steadiest estimate), for the metrics some trial logged."""
    found: dict[str, tuple[int, str]] = {}
    for column in runs.columns:
        metric = find_logged(column.removeprefix("final_")) if column.startswith("final_") else None
        if metric is None or metric[0].name not in KNN_METRICS or runs[column].isna().all():
            continue
        count = _count_of(column.removeprefix(f"final_{metric[0].name}_"))
        if metric[0].name not in found or count > found[metric[0].name][0]:
            found[metric[0].name] = (count, column)
    return {name: found[name][1] for name in KNN_METRICS if name in found}


def _count_of(text: str) -> int:
    return int(text[:-1]) * 1000 if text.endswith("k") else int(text)


def final_metrics(row: pd.Series) -> dict[str, float]:
    """A frame row's final metrics by logged name, as the study stored them."""
    return {str(k).removeprefix("final_"): float(v) for k, v in row.items()
            if str(k).startswith("final_") and pd.notna(v)}  # fmt: skip


def collapse_labels(runs: pd.DataFrame) -> pd.Series:
    """Per trial: 'collapsed', 'near collapse' (studies.collapse) or ''."""

    def label(row: pd.Series) -> str:
        final = final_metrics(row)
        if is_collapsed(final, HealthRule.collapse_ssim):
            return "collapsed"
        return "near collapse" if near_collapse_signs(final) else ""

    return runs.apply(label, axis=1) if len(runs) else pd.Series(dtype=str)


def window_points(inputs: ReportInputs, run_id: str) -> int:
    """The rolling window in logged points: metrics are logged every `log_every` steps."""
    row = inputs.runs.loc[inputs.runs["run_id"] == run_id]
    every = row["log_every"].iloc[0] if "log_every" in row and len(row) else 1
    every = int(every) if pd.notna(every) and every > 0 else 1
    return max(1, round(inputs.window_steps / every))


def smoothed(inputs: ReportInputs, keys: list[str]) -> pd.DataFrame:
    """History of `keys` with a rolling mean per run and key (`smooth`), in steps."""
    hist = inputs.history[inputs.history["key"].isin(keys)]
    parts = []
    for (run_id, _), group in hist.groupby(["run_id", "key"], sort=False):
        width = min(window_points(inputs, run_id), max(1, len(group) // 5))
        parts.append(group.assign(smooth=group["value"].rolling(width, min_periods=1).mean()))
    return pd.concat(parts, ignore_index=True) if parts else hist.assign(smooth=np.nan)


def summary(inputs: ReportInputs) -> Section:
    runs = inputs.runs
    objectives = [OBJECTIVE_PREFIX + n for n in runs.attrs.get("objectives", [])]
    quality = [q for q in quality_columns(runs) if q.removeprefix("final_") not in
               runs.attrs.get("objectives", [])]  # fmt: skip
    hist = inputs.history
    last_step = hist[hist["key"] == "m_global"].groupby("run_id")["step"].max()
    speed = hist[hist["key"] == "images_per_s"].groupby("run_id")["value"].median()
    params = param_columns(runs)
    params += [SEED_ATTR] if SEED_ATTR in runs and SEED_ATTR not in params else []
    table = runs[["trial", "state", *params, *objectives, *quality[:3]]].copy()
    table["steps"] = runs["run_id"].map(last_step).astype("Int64")
    if "steps" in runs:
        table["of_steps"] = runs["steps"].astype("Int64")
    table["wall_s"] = runs["wall_s"].round(1)
    table["images_per_s"] = runs["run_id"].map(speed).round(1)
    table["collapse"] = collapse_labels(runs)
    table["reason"] = runs["reason"].fillna("").where(runs["current"], "retried: " +
                                                       runs["reason"].fillna(""))  # fmt: skip
    table.columns = [c.removeprefix(OBJECTIVE_PREFIX).removeprefix("final_") for c in table.columns]
    table = table.sort_values("trial", na_position="last").reset_index(drop=True)
    counts = runs["state"].value_counts()
    notes = [", ".join(f"{n} {s.lower()}" for s, n in counts.items() if n)]
    metric = objectives[0] if objectives else (quality[0] if quality else None)
    fig = figures.summary_bars(runs, metric, param_columns(runs)) if len(runs) else None
    return Section("summary", "Trials", _SUMMARY_HELP, table, fig, notes)


_SUMMARY_HELP = (
    "One row per trial: its parameters, objective(s), state and, for pruned or failed trials, "
    "why. `steps` is the last logged step (of `of_steps` planned); `images_per_s` the median "
    "training speed. `collapse`: 'collapsed' (diversity SSIM >= 0.9) or 'near collapse' "
    "(pairwise SSIM 75% or more of the way from the real images' figure to 1, or coverage or "
    "recall < 0.1 with real-looking samples): the generator repeats a few faces. The chart "
    "shows the first objective per trial; lower is better when the study minimises it."
)


def curves(inputs: ReportInputs) -> Section:
    data = smoothed(inputs, CURVES)
    runs = inputs.current
    table = (
        data.sort_values("step").groupby(["run_id", "key"])["smooth"].last().unstack("key")
        if len(data) else pd.DataFrame()
    )  # fmt: skip
    table = runs[["trial", "state", *param_columns(runs), "run_id"]].merge(
        table.reset_index(), on="run_id", how="left"
    ).drop(columns="run_id")  # fmt: skip
    fig = figures.curves(data, runs, CURVES) if len(data) else None
    note = f"rolling mean over {inputs.window_steps:,} steps (capped at 1/5 of a run)"
    return Section("curves", "Training curves", _CURVES_HELP, table, fig, [note])


_CURVES_HELP = (
    "As the reference LFW run (docs/began.md, section 5) was plotted: each series with a "
    "rolling mean, one panel per series, runs coloured by gamma (faint: the raw logged "
    "values). M_global should fall and flatten; k rises while D reconstructs fakes too "
    "well, then settles (stuck at 0: gamma or lr do not suit the data); loss_fake should "
    "settle at gamma x loss_real."
)


def equilibrium(inputs: ReportInputs, tolerance: float = 0.15) -> Section:
    data = smoothed(inputs, ["loss_real", "loss_fake"])
    runs = inputs.current
    rows = []
    for _, run in runs.iterrows():
        mine = data[data["run_id"] == run["run_id"]]
        real = _last_smooth(mine, "loss_real")
        fake = _last_smooth(mine, "loss_fake")
        ratio = fake / real if real and not math.isnan(real) else math.nan
        gamma = run.get("gamma", math.nan)
        off = abs(ratio - gamma) / gamma if gamma and not math.isnan(ratio) else math.nan
        verdict = "" if math.isnan(off) else ("yes" if off <= tolerance else "no")
        rows.append({"trial": run["trial"], "state": run["state"], "gamma": gamma,
                     "loss_real": real, "loss_fake": fake, "fake_over_real": ratio,
                     "off_by": off, "at_equilibrium": verdict})  # fmt: skip
    table = pd.DataFrame(rows)
    fig = figures.equilibrium(data, runs, table) if len(table) and len(data) else None
    note = f"'yes' when the final ratio is within {tolerance:.0%} of gamma"
    return Section("equilibrium", "Equilibrium check", _EQ_HELP, table, fig, [note])


def _last_smooth(frame: pd.DataFrame, key: str) -> float:
    values = frame.loc[frame["key"] == key].sort_values("step")["smooth"]
    return float(values.iloc[-1]) if len(values) else math.nan


_EQ_HELP = (
    "BEGAN's controller k drives L(G(z)) towards gamma L(x). Left: loss_fake (solid) against "
    "gamma x loss_real (dashed) over training, per run; at equilibrium the two lines meet. "
    "Right: each trial's final loss_fake / loss_real against its gamma; points on the "
    "diagonal are at equilibrium, points far from it never got there."
)


def quality_by_gamma(inputs: ReportInputs) -> Section:
    runs = inputs.current
    metrics = quality_columns(runs)
    if not metrics or "gamma" not in runs:
        empty = pd.DataFrame(columns=["gamma", "metric", "n", "mean", "std", "min", "max"])
        return Section("quality", "Quality against gamma", _Q_HELP, empty, None,
                       ["no quality metric was logged"])  # fmt: skip
    long = runs.melt(id_vars=["gamma", "state"], value_vars=metrics, var_name="metric")
    long = long.dropna(subset=["value"]).assign(metric=lambda f: f["metric"].str[6:])
    table = (
        long.groupby(["metric", "gamma"])["value"]
        .agg(n="count", mean="mean", std="std", min="min", max="max").reset_index()
    )  # fmt: skip
    fig = figures.quality_by_gamma(long) if len(long) else None
    return Section("quality", "Quality against gamma", _Q_HELP, table, fig, [])


_Q_HELP = (
    "Each final quality metric against gamma: dots are trials (seeds), the line their mean, "
    "the band min to max over seeds. FID/KID: lower is better; diversity_gap: distance of "
    "the samples' pairwise SSIM from the real images' (lower is better); diversity_ssim: "
    "lower means more varied samples; recon_psnr/ssim: higher is better; blur_effect: "
    "lower is sharper. Pruned trials are drawn as crosses."
)


def pareto(inputs: ReportInputs) -> Section:
    runs = inputs.runs
    names = runs.attrs.get("objectives", [])
    directions = runs.attrs.get("directions", [])
    done = runs[runs["state"] == "COMPLETE"]
    best = [t.number for t in best_trials(inputs.study)] if inputs.study is not None else []
    columns = ["trial", *param_columns(runs), *[OBJECTIVE_PREFIX + n for n in names]]
    table = done[done["trial"].isin(best)][columns].reset_index(drop=True)
    table.columns = [c.removeprefix(OBJECTIVE_PREFIX) for c in table.columns]
    notes = [] if len(done) else ["no complete trial yet"]
    fig = figures.pareto(done, names, directions, best) if len(done) and names else None
    title = "Pareto front" if len(names) > 1 else "Best trial"
    return Section("pareto", title, _PARETO_HELP, table, fig, notes)


_PARETO_HELP = (
    "Several objectives: each complete trial by its objectives, the Pareto front (no trial "
    "is better on every objective) ringed and joined. One objective: the objective per "
    "trial in the order they ran, the best ringed. The table lists the best trial(s)."
)


def mglobal_vs_quality(inputs: ReportInputs) -> Section:
    runs = inputs.current
    metrics = quality_columns(runs)
    fids = [m for m in metrics if m.startswith("final_fid")]
    metric = (fids or metrics or [None])[0]
    if metric is None or "final_m_global_mean" not in runs:
        return Section("mglobal", "Does M_global predict quality?", _MG_HELP, pd.DataFrame(),
                       None, ["needs a final M_global and a quality metric"])  # fmt: skip
    # Only complete trials: a pruned or failed one's last values are from an earlier step.
    done = runs[runs["state"] == "COMPLETE"]
    data = done[["trial", "gamma", "final_m_global_mean", metric]].dropna()
    # FID (else the first metric) first, then fidelity and diversity apart (knn_columns).
    others = [c for c in knn_columns(done).values() if c != metric]
    rows = [row for m in [metric, *others] for row in _spearman_rows(done, m)]
    table = pd.DataFrame(rows)
    fig = figures.mglobal_scatter(data, metric, table) if len(data) else None
    names = ", ".join(m.removeprefix("final_") for m in [metric, *others])
    notes = [f"quality metrics: {names}; complete trials only; rho needs 3 or more"]
    return Section("mglobal", "Does M_global predict quality?", _MG_HELP, table, fig, notes)


def _spearman_rows(done: pd.DataFrame, metric: str) -> list[dict[str, object]]:
    """rho of M_global against `metric` over all complete trials, then within each gamma."""
    data = done[["gamma", "final_m_global_mean", metric]].dropna()
    rows = [_spearman("all", data, metric)]
    rows += [_spearman(f"gamma={g:g}", group, metric) for g, group in data.groupby("gamma")]
    better = "lower" if metric_direction(metric.removeprefix("final_")) == "minimize" else "higher"
    return [{"metric": metric.removeprefix("final_"), **row, "better": better} for row in rows]


def _spearman(group: str, data: pd.DataFrame, metric: str) -> dict[str, object]:
    rho, p = spearman(data["final_m_global_mean"], data[metric])
    return {"group": group, "n": len(data), "spearman_rho": rho, "p_value": p}


def spearman(x: pd.Series, y: pd.Series) -> tuple[float, float]:
    """Spearman's rho and its p-value; NaN for fewer than 3 points or a constant side."""
    if len(x) < 3 or x.nunique() < 2 or y.nunique() < 2:
        return math.nan, math.nan
    result = spearmanr(x, y)
    return float(result.statistic), float(result.pvalue)


_MG_HELP = (
    "The paper proposes M_global as a convergence measure that tracks image quality. Here: "
    "Spearman's rank correlation between each trial's final M_global (mean over the last "
    "evaluation window) and each quality metric (FID, else the first one logged; then "
    "precision, recall, density and coverage where logged), across all trials and within "
    "each gamma. M_global is lower-is-better, so rho near +1 for a lower-is-better metric "
    "(`better`: lower), or near -1 for a higher-is-better one, means M_global ranks runs as "
    "the metric does. M_global contains gamma L(x), so across gammas its level shifts with "
    "gamma: the within-gamma figures are the fair ones."
)


def importance(inputs: ReportInputs, min_trials: int = 5) -> Section:
    study, runs = inputs.study, inputs.runs
    searched = [p for p in runs.attrs.get("params", []) if p in runs and runs[p].nunique() > 1]
    done = int((runs["state"] == "COMPLETE").sum())
    empty = pd.DataFrame(columns=["objective", "param", "importance"])
    if study is None or done < min_trials or len(searched) < 2:
        why = f"needs >= {min_trials} complete trials and >= 2 varied parameters"
        why += f" ({done} complete, {len(searched)} varied)"
        return Section("importance", "Parameter importance", _IMP_HELP, empty, None,
                       [f"not computed: {why}"])  # fmt: skip
    rows = []
    for i, name in enumerate(runs.attrs.get("objectives", [])):
        try:
            found = optuna.importance.get_param_importances(
                study, target=lambda t, i=i: t.values[i], params=searched
            )
        except (RuntimeError, ValueError) as error:  # e.g. a parameter never varied
            return Section("importance", "Parameter importance", _IMP_HELP, empty, None,
                           [f"not computed: {error}"])  # fmt: skip
        rows += [{"objective": name, "param": p, "importance": v} for p, v in found.items()]
    table = pd.DataFrame(rows)
    fig = figures.importance(table) if len(table) else None
    return Section("importance", "Parameter importance", _IMP_HELP, table, fig, [])


_IMP_HELP = (
    "How much of each objective's variation each searched parameter explains (Optuna's "
    "fANOVA importance, summing to 1 per objective). A seed with a large share means the "
    "differences between trials are mostly noise."
)
