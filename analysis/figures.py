"""Matplotlib drawings of the report's frames; no loading and no file I/O here.

Runs are coloured by gamma everywhere (one colour scale per report), so a reader can
follow one gamma from the curves to the equilibrium plot to the quality panels.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # reports are written to files, also on machines without a display

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib import cm, colors  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from PIL import Image  # noqa: E402

from studies.schema import OBJECTIVE_PREFIX  # noqa: E402

STATE_COLOURS = {"COMPLETE": "#2b8a3e", "PRUNED": "#e8590c", "FAIL": "#c92a2a",
                 "RUNNING": "#1971c2", "WAITING": "#868e96"}  # fmt: skip
TITLES = {"m_global": "M_global", "k": "k", "loss_d": "loss_d  (L_D)",
          "loss_g": "loss_g  (L_G)", "loss_real": "loss_real  L(x)",
          "loss_fake": "loss_fake  L(G(z))"}  # fmt: skip


def gamma_colours(gammas: pd.Series) -> dict[float, tuple]:
    values = sorted(float(g) for g in gammas.dropna().unique())
    if not values:
        return {}
    low, high = values[0], values[-1]
    norm = colors.Normalize(low - 0.05, high + 0.05) if low == high else colors.Normalize(low, high)
    return {g: cm.viridis(0.9 * norm(g)) for g in values}  # the top of viridis is too pale


def _colour_bar(fig: Figure, palette: dict[float, tuple], axes: object) -> None:
    if len(palette) < 2:
        return
    low, high = min(palette), max(palette)
    mappable = cm.ScalarMappable(colors.Normalize(low, high), colors.ListedColormap(
        [cm.viridis(0.9 * x) for x in np.linspace(0, 1, 256)]))  # fmt: skip
    fig.colorbar(mappable, ax=axes, label="gamma", fraction=0.025, pad=0.02)


def summary_bars(runs: pd.DataFrame, metric: str | None, params: list[str]) -> Figure:
    """One bar per trial: the objective, coloured by state; empty bars say why."""
    ordered = runs.sort_values("trial")
    height = max(2.2, 0.42 * len(ordered) + 1.0)
    fig = Figure(figsize=(9, height), layout="constrained")
    ax = fig.add_subplot()
    labels = [
        f"trial {r.trial}  " + "  ".join(f"{p}={_fmt(getattr(r, p, None))}" for p in params)
        for r in ordered.itertuples()
    ]
    values = ordered[metric] if metric else pd.Series(np.nan, index=ordered.index)
    y = np.arange(len(ordered))
    finite = values.dropna()
    span = float(finite.max()) if len(finite) else 1.0
    for yi, value, state, reason in zip(
        y, values, ordered["state"].astype(str), ordered["reason"].fillna(""), strict=True
    ):
        colour = STATE_COLOURS.get(state, "grey")
        if pd.notna(value):
            ax.barh(yi, value, color=colour, alpha=0.85)
            ax.text(value, yi, f" {value:.4g}", va="center", fontsize=8)
        else:
            text = f"{state}" + (f": {reason[:70]}" if reason else "")
            ax.text(0.01 * span, yi, text, va="center", fontsize=8, color=colour)
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    label = metric.removeprefix(OBJECTIVE_PREFIX).removeprefix("final_") if metric else ""
    direction = dict(zip(runs.attrs.get("objectives", []), runs.attrs.get("directions", []),
                         strict=False)).get(label)  # fmt: skip
    ax.set_xlabel(f"{label} ({direction})" if direction else label or "(no objective)")
    ax.set_xlim(0, span * 1.25 if span > 0 else 1)
    handles = [matplotlib.patches.Patch(color=c, label=s) for s, c in STATE_COLOURS.items()
               if s in set(ordered["state"].astype(str))]  # fmt: skip
    ax.legend(handles=handles, fontsize=8, loc="lower right")
    return fig


def _fmt(value: object) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "-"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def curves(data: pd.DataFrame, runs: pd.DataFrame, keys: list[str]) -> Figure:
    palette = gamma_colours(runs["gamma"]) if "gamma" in runs else {}
    gamma_of = dict(zip(runs["run_id"], runs.get("gamma", pd.Series()), strict=False))
    fig = Figure(figsize=(13, 7), layout="constrained")
    axes = fig.subplots(2, 3, sharex=True).ravel()
    for ax, key in zip(axes, keys, strict=True):
        for run_id, group in data[data["key"] == key].groupby("run_id", sort=False):
            colour = palette.get(gamma_of.get(run_id), "grey")
            ax.plot(group["step"], group["value"], color=colour, alpha=0.12, lw=0.6)
            ax.plot(group["step"], group["smooth"], color=colour, lw=1.4)
        ax.set_title(TITLES.get(key, key), fontsize=10)
        ax.grid(alpha=0.3)
    for ax in axes[3:]:
        ax.set_xlabel("step")
    _colour_bar(fig, palette, axes.tolist())
    return fig


def equilibrium(data: pd.DataFrame, runs: pd.DataFrame, table: pd.DataFrame) -> Figure:
    palette = gamma_colours(runs["gamma"])
    fig = Figure(figsize=(13, 4.8), layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=[1.6, 1])
    for _, run in runs.iterrows():
        mine = data[data["run_id"] == run["run_id"]]
        colour = palette.get(run["gamma"], "grey")
        fake = mine[mine["key"] == "loss_fake"]
        real = mine[mine["key"] == "loss_real"]
        left.plot(fake["step"], fake["smooth"], color=colour, lw=1.4)
        left.plot(real["step"], run["gamma"] * real["smooth"], color=colour, lw=1.2, ls="--")
    left.set(xlabel="step", ylabel="loss", title="loss_fake (solid) vs gamma x loss_real (dashed)")
    left.grid(alpha=0.3)
    ok = table.dropna(subset=["fake_over_real"])
    for _, row in ok.iterrows():
        marker = "o" if row["state"] == "COMPLETE" else "x"
        right.scatter(row["gamma"], row["fake_over_real"], color=palette.get(row["gamma"]),
                      marker=marker, s=50, zorder=3)  # fmt: skip
    both = pd.concat([ok["gamma"], ok["fake_over_real"]]) if len(ok) else pd.Series([0.0, 1.0])
    lo, hi = min(0.0, float(both.min())), float(both.max()) * 1.1 + 0.05
    right.plot([lo, hi], [lo, hi], color="black", lw=0.8, ls=":", label="equilibrium")
    right.set(xlim=(lo, hi), ylim=(lo, hi), xlabel="gamma", ylabel="final loss_fake / loss_real",
              title="final ratio against gamma")  # fmt: skip
    right.legend(fontsize=8)
    right.grid(alpha=0.3)
    _colour_bar(fig, palette, [left, right])
    return fig


def quality_by_gamma(long: pd.DataFrame) -> Figure:
    metrics = list(dict.fromkeys(long["metric"]))
    columns = min(3, len(metrics))
    rows = -(-len(metrics) // columns)
    fig = Figure(figsize=(4.4 * columns, 3.3 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, columns)).ravel()
    for ax, metric in zip(axes, metrics, strict=False):
        mine = long[long["metric"] == metric]
        stats = mine.groupby("gamma")["value"].agg(["mean", "min", "max"]).reset_index()
        ax.fill_between(stats["gamma"], stats["min"], stats["max"], color="C0", alpha=0.15)
        ax.plot(stats["gamma"], stats["mean"], color="C0", lw=1.5, marker="o", ms=3)
        for state, part in mine.groupby(mine["state"].astype(str)):
            ax.scatter(part["gamma"], part["value"], color=STATE_COLOURS.get(state, "grey"),
                       marker="o" if state == "COMPLETE" else "x", s=22, zorder=3)  # fmt: skip
        ax.set(title=metric, xlabel="gamma")
        ax.grid(alpha=0.3)
    for ax in axes[len(metrics) :]:
        ax.set_visible(False)
    return fig


def pareto(done: pd.DataFrame, names: list[str], directions: list[str], best: list) -> Figure:
    fig = Figure(figsize=(7, 4.6), layout="constrained")
    ax = fig.add_subplot()
    cols = [OBJECTIVE_PREFIX + n for n in names]
    is_best = done["trial"].isin(best)
    if len(names) == 1:
        ordered = done.sort_values("trial")
        ax.plot(ordered["trial"], ordered[cols[0]], marker="o", color="C0", lw=0.8)
        ax.set(xlabel="trial", ylabel=f"{names[0]} ({directions[0]})")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # trials are whole numbers
        x, y = done.loc[is_best, "trial"], done.loc[is_best, cols[0]]
    else:
        ax.scatter(done[cols[0]], done[cols[1]], color="C0", s=30)
        front = done[is_best].sort_values(cols[0])
        ax.plot(front[cols[0]], front[cols[1]], color="C3", lw=1, ls="--")
        ax.set(xlabel=f"{names[0]} ({directions[0]})", ylabel=f"{names[1]} ({directions[1]})")
        x, y = front[cols[0]], front[cols[1]]
    ax.scatter(x, y, s=160, facecolors="none", edgecolors="C3", lw=1.5, label="best", zorder=3)
    for _, row in done.iterrows():
        xy = (row["trial"], row[cols[0]]) if len(names) == 1 else (row[cols[0]], row[cols[1]])
        ax.annotate(f"{row['trial']}", xy, fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def mglobal_scatter(data: pd.DataFrame, metric: str, table: pd.DataFrame) -> Figure:
    palette = gamma_colours(data["gamma"])
    fig = Figure(figsize=(7, 4.6), layout="constrained")
    ax = fig.add_subplot()
    for gamma, group in data.groupby("gamma"):
        ax.scatter(group["final_m_global_mean"], group[metric], color=palette[gamma], s=40,
                   label=f"gamma={gamma:g} (n={len(group)})")  # fmt: skip
    overall = table.iloc[0]
    rho = "n/a" if pd.isna(overall["spearman_rho"]) else f"{overall['spearman_rho']:+.2f}"
    ax.set(xlabel="final M_global (mean over last evaluation window)",
           ylabel=metric.removeprefix("final_"),
           title=f"all trials: Spearman rho = {rho} (n = {overall['n']})")  # fmt: skip
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def fidelity_diversity(done: pd.DataFrame, columns: dict[str, str]) -> Figure:
    """Precision against recall and density against coverage, one point per trial coloured
    by gamma; a pair with one metric logged shows it against gamma instead."""
    palette = gamma_colours(done["gamma"])
    pairs = [(columns.get(x), columns.get(y)) for x, y in _KNN_PAIRS]
    pairs = [(x, y) for x, y in pairs if x or y]
    fig = Figure(figsize=(5.2 * len(pairs) + 1, 4.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(pairs))).ravel()
    for ax, (x, y) in zip(axes, pairs, strict=True):
        x = x or "gamma"  # one metric of the pair: against gamma
        y = y or "gamma"
        data = done.dropna(subset=[x, y])
        colours = [palette.get(g, "grey") for g in data["gamma"]]
        ax.scatter(data[x], data[y], c=colours, s=45, zorder=3)
        for _, row in data.iterrows():
            ax.annotate(f"{row['trial']}", (row[x], row[y]), fontsize=7, xytext=(4, 4),
                        textcoords="offset points")  # fmt: skip
        xlabel, ylabel = x.removeprefix("final_"), y.removeprefix("final_")
        ax.set(xlabel=f"{xlabel} (diversity)" if x != "gamma" else "gamma",
               ylabel=f"{ylabel} (fidelity)" if y != "gamma" else "gamma",
               title=f"{ylabel} against {xlabel}")  # fmt: skip
        ax.grid(alpha=0.3)
    _colour_bar(fig, palette, axes.tolist())
    return fig


_KNN_PAIRS = (("recall", "precision"), ("coverage", "density"))  # (x: diversity, y: fidelity)


def importance(table: pd.DataFrame) -> Figure:
    objectives = list(dict.fromkeys(table["objective"]))
    fig = Figure(figsize=(5 * len(objectives), 0.5 * table["param"].nunique() + 1.6),
                 layout="constrained")  # fmt: skip
    axes = np.atleast_1d(fig.subplots(1, len(objectives))).ravel()
    for ax, name in zip(axes, objectives, strict=True):
        mine = table[table["objective"] == name].sort_values("importance")
        ax.barh(mine["param"], mine["importance"], color="C0")
        ax.set(title=name, xlabel="importance", xlim=(0, 1))
    return fig


def montage(tiles: list[tuple[Image.Image, str]], columns: int, title: str = "") -> Figure:
    rows = -(-len(tiles) // columns)
    height = 3.7 * rows + (0.4 if title else 0)
    fig = Figure(figsize=(3.3 * columns, height))
    # Constrained layout clips titles over axis-less images: fixed margins instead.
    fig.subplots_adjust(0.01, 0.01, 0.99, 1 - (0.5 + (0.4 if title else 0)) / height,
                        wspace=0.05, hspace=0.5 / 3.2)  # fmt: skip
    axes = np.atleast_1d(fig.subplots(rows, columns)).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, (image, label) in zip(axes, tiles, strict=False):
        ax.imshow(np.asarray(image))
        ax.set_title(label, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=11, y=1 - 0.1 / height)
    return fig


def _panel_per_objective(count: int) -> tuple[Figure, np.ndarray]:
    """A row of `count` panels, one per objective."""
    fig = Figure(figsize=(4.6 * count, 3.4), layout="constrained")
    return fig, np.atleast_1d(fig.subplots(1, count)).ravel()


def setting_means(table: pd.DataFrame) -> Figure:
    """Each setting's mean over its seeds with its interval, one panel per objective."""
    objectives = list(dict.fromkeys(table["objective"]))
    fig, axes = _panel_per_objective(len(objectives))
    for ax, objective in zip(axes, objectives, strict=True):
        mine = table[table["objective"] == objective].reset_index(drop=True)
        x = np.arange(len(mine))
        low = (mine["mean"] - mine["ci_low"]).fillna(0)
        high = (mine["ci_high"] - mine["mean"]).fillna(0)
        ax.errorbar(x, mine["mean"], yerr=[low, high], fmt="o", color="C0", capsize=4)
        ax.set_xticks(x, mine["setting"], rotation=30, ha="right", fontsize=8)
        ax.set(title=objective, ylabel="mean over seeds, 95% interval")
        ax.grid(alpha=0.3)
    return fig


def reseeded(table: pd.DataFrame, data: list[dict]) -> Figure:
    """Per setting: its new seeds' values (dots), their mean and 95% interval, and the one
    value that made it best (star); one panel per objective."""
    objectives = list(dict.fromkeys(table["objective"]))
    fig, axes = _panel_per_objective(len(objectives))
    for ax, objective in zip(axes, objectives, strict=True):
        mine = [d for d in data if d["metric"] == objective]
        for x, entry in enumerate(mine):
            jitter = np.linspace(-0.12, 0.12, len(entry["values"])) if entry["values"] else []
            ax.scatter(x + np.asarray(jitter), entry["values"], color="C0", alpha=0.6, s=18,
                       label="new seeds" if x == 0 else None)  # fmt: skip
            if entry["n_seeds"] > 1:
                ax.errorbar(x + 0.3, entry["mean"], yerr=[[entry["mean"] - entry["ci_low"]],
                            [entry["ci_high"] - entry["mean"]]], fmt="o", color="k", capsize=4,
                            label="mean, 95% interval" if x == 0 else None)  # fmt: skip
            ax.scatter([x], [entry["best_value"]], marker="*", s=160, color="C3", zorder=3,
                       label="the value that made it best" if x == 0 else None)  # fmt: skip
        ax.set_xticks(range(len(mine)), [d["setting"] for d in mine], rotation=30, ha="right",
                      fontsize=8)  # fmt: skip
        ax.set_xlim(-0.5, len(mine) - 0.4)  # each setting's dots, star and interval together
        ax.set(title=objective, ylabel=objective)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    return fig


def budget_curves(curves: pd.DataFrame) -> Figure:
    """Expected best objective against the number of trials, with its 5-95% band."""
    objectives = list(dict.fromkeys(curves["objective"]))
    fig, axes = _panel_per_objective(len(objectives))
    for ax, objective in zip(axes, objectives, strict=True):
        for i, (study, mine) in enumerate(curves[curves["objective"] == objective].groupby(
                "study", sort=False)):  # fmt: skip
            colour = f"C{i}"
            ax.fill_between(mine["n_trials"], mine["low"], mine["high"], color=colour, alpha=0.15)
            ax.plot(mine["n_trials"], mine["expected_best"], color=colour, marker="o", ms=3,
                    label=study)  # fmt: skip
        ax.set(title=objective, xlabel="trials in the search", ylabel="expected best")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    return fig
