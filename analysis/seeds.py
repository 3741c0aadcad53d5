"""The report's answers with error bars: the best settings reseeded, settings compared
across their seeds, and what a larger search would still gain (the statistics:
`analysis.verdicts`).

The sections also fill `Section.data`, which `--format json` writes as report.json:
`reseeded` (one per reseeded setting and objective), `verdicts` (one per pair of
settings and objective) and `budget_curves` (one per objective).
"""

from __future__ import annotations

import pandas as pd

from analysis import figures
from analysis.sections import ReportInputs, Section, param_columns
from analysis.verdicts import (
    against_reseeds,
    budget_curve,
    compare_settings,
    seed_variation_measured,
    setting_label,
    setting_means,
)
from studies.fleet.storage import GRID_TOLERANCE
from studies.schema import OBJECTIVE_PREFIX, SEED_ATTR

MAX_VERDICT_LINES = 12  # the rest are in report.json and the CSV


def _objectives(runs: pd.DataFrame) -> list[tuple[str, str, str]]:
    """(name, direction, column) of each objective the frame holds."""
    names, directions = runs.attrs.get("objectives", []), runs.attrs.get("directions", [])
    return [(n, d, OBJECTIVE_PREFIX + n) for n, d in zip(names, directions, strict=False)
            if OBJECTIVE_PREFIX + n in runs]  # fmt: skip


def across_seeds(inputs: ReportInputs) -> Section:
    runs = inputs.current
    done = runs[runs["state"] == "COMPLETE"]
    setting = [p for p in param_columns(inputs.runs) if p != SEED_ATTR]
    objectives = _objectives(inputs.runs)
    if not setting or not objectives or not len(done):
        return Section("seeds", TITLE, _HELP, pd.DataFrame(), None,
                       ["no complete trial with an objective yet"])  # fmt: skip
    if not seed_variation_measured(done, setting):
        note = (
            "One seed per setting: no seed variation was measured, so no difference between "
            "settings here can be told apart from what a reseed would move. The trends in "
            "other sections count each trial as an independent point. Train each setting "
            "with --seeds 3 or more to measure it."
        )
        return Section("seeds", TITLE, _HELP, pd.DataFrame(), None, [note])
    tables, verdicts = [], []
    for name, direction, column in objectives:
        table = setting_means(done, setting, column)
        table.insert(0, "objective", name)
        tables.append(table)
        verdicts += compare_settings(done, setting, column, direction, name)
    table = pd.concat(tables, ignore_index=True)
    conclusive = [v for v in verdicts if v.conclusive]
    notes = [
        f"{len(conclusive)} of {len(verdicts)} pairs of settings differ beyond the seed "
        "variation (95% Welch interval of the difference of means excludes 0)."
    ]
    shown = (conclusive + [v for v in verdicts if not v.conclusive])[:MAX_VERDICT_LINES]
    notes += [v.line() for v in shown]
    if len(verdicts) > len(shown):
        notes.append(f"{len(verdicts) - len(shown)} more pairs in report.json")
    return Section("seeds", TITLE, _HELP, table, figures.setting_means(table), notes,
                   data={"verdicts": [v.to_dict() for v in verdicts]})  # fmt: skip


def reseeded(inputs: ReportInputs) -> Section | None:
    """A reseed study's settings against the value that made each "best"; None for any
    other study."""
    reseed = inputs.runs.attrs.get("reseed_of")
    if not reseed:
        return None
    runs = inputs.current
    rows, data = [], []
    for name, direction, column in _objectives(inputs.runs):
        for setting in reseed["settings"]:
            params, best = setting["params"], setting["values"].get(name)
            if best is None:
                continue
            mine = _rows_of(runs, params)
            values = mine.loc[mine["state"] == "COMPLETE", column].dropna()
            stats = against_reseeds(best, values.to_numpy(dtype=float), direction)
            label = setting_label(list(params), tuple(params.values()))
            row = {"objective": name, "setting": label, "best_trial": setting["trial"],
                   "best_seed": setting["seed"], "best_value": best, **stats,
                   "not_complete": int(len(mine) - len(values))}  # fmt: skip
            rows.append(row)
            data.append({"metric": name, **{k: v for k, v in row.items() if k != "objective"},
                         "values": values.tolist()})  # fmt: skip
    table = pd.DataFrame(rows)
    notes = [f"Study {reseed['study']}'s {len(reseed['settings'])} best setting(s) by "
             f"{reseed['ranked_by']}, each trained again with new seeds."]  # fmt: skip
    notes += [_reseed_line(row) for row in rows if row["objective"] == reseed["ranked_by"]]
    figure = figures.reseeded(table, data) if len(table) else None
    return Section("reseeded", "The best, reseeded", _RESEED_HELP, table, figure, notes,
                   data={"reseeded": data})  # fmt: skip


def _rows_of(runs: pd.DataFrame, params: dict) -> pd.DataFrame:
    """The rows of `runs` trained with `params` (floats compared as a grid's points are)."""
    mask = pd.Series(True, index=runs.index)
    for name, value in params.items():
        if name not in runs:
            return runs.iloc[0:0]
        column = runs[name]
        if isinstance(value, bool) or not isinstance(value, int | float):
            mask &= column == value
        else:
            mask &= (pd.to_numeric(column, errors="coerce") - value).abs() < GRID_TOLERANCE
    return runs[mask]


def _reseed_line(row: dict) -> str:
    """One setting's best value against its reseeds, in words."""
    head = (f"{row['setting']} (t{row['best_trial']}, seed {row['best_seed']}): "
            f"{row['objective']} {row['best_value']:.4g} made it best")  # fmt: skip
    if not row["n_seeds"]:
        return f"{head}; no reseed complete yet"
    spread = (f"over {row['n_seeds']} new seeds mean {row['mean']:.4g} "
              f"[{row['ci_low']:.4g}, {row['ci_high']:.4g}], range {row['min']:.4g} to "
              f"{row['max']:.4g}; {row['as_good']} of {row['n_seeds']} as good")  # fmt: skip
    outside = row["n_seeds"] > 1 and not row["ci_low"] <= row["best_value"] <= row["ci_high"]
    if outside and row["lead"] > 0:
        verdict = (f"Beyond the interval on the good side: {row['lead']:.3g} of its lead "
                   "was the seed")  # fmt: skip
    elif outside:
        verdict = "The new seeds did better than the value that ranked it"
    else:
        verdict = "Its value is within the interval of the new seeds' mean"
    return f"{head}; {spread}. {verdict}."


_RESEED_HELP = (
    "Each setting that ranked among the best of the study reseeded, trained again with seeds "
    "none of its trials used. The star is the single value that made the setting best; the "
    "dots are the new seeds, with their mean and its 95% t interval. A star beyond the "
    "interval on the good side was a lucky seed: the setting's expected value is the mean, "
    "and 'as good' counts the new seeds that matched the star."
)


TITLE = "Settings across seeds"
_HELP = (
    "Each setting's objective as the mean over its seeds, with the 95% t interval of that "
    "mean. A verdict says 'A better than B' only where the 95% Welch interval of the "
    "difference of the two means excludes 0; otherwise it is inconclusive at that number of "
    "seeds, and says how many seeds per setting would settle it if the observed difference "
    "and spread held. GAN results move with the seed as much as with many hyperparameters, "
    "so a single run per setting ranks settings by luck as much as by merit."
)


def budget(inputs: ReportInputs) -> Section:
    studies = [inputs.runs] + ([inputs.compared] if inputs.compared is not None else [])
    rows, curves = [], []
    for name, direction, column in _objectives(inputs.runs):
        for runs in studies:
            done = runs[(runs["state"] == "COMPLETE") & runs["current"]]
            values = done[column].dropna() if column in done else pd.Series(dtype=float)
            if len(values) < 2:
                continue
            curve = budget_curve(values, direction)
            study = runs.attrs.get("study", "")
            curves.append({"metric": name, "study": study,
                           **{k: curve[k].tolist() for k in curve.columns}})  # fmt: skip
            rows.append(curve.assign(objective=name, study=study))
    if not rows:
        return Section("budget", "Search budget", _BUDGET_HELP, pd.DataFrame(), None,
                       ["fewer than two complete trials"])  # fmt: skip
    table = pd.concat(rows, ignore_index=True)
    notes = []
    for curve in curves:
        best, half = curve["expected_best"], len(curve["expected_best"]) // 2
        if half:
            notes.append(
                f"{curve['study'] + ': ' if len(studies) > 1 else ''}{curve['metric']}: "
                f"expected best {best[-1]:.4g} with all {len(best)} trials, "
                f"{best[half - 1]:.4g} with {half}"
            )  # fmt: skip
    columns = ["study", "objective", "n_trials", "expected_best", "low", "high"]
    return Section("budget", "Search budget", _BUDGET_HELP, table[columns],
                   figures.budget_curves(table), notes, data={"budget_curves": curves})  # fmt: skip


_BUDGET_HELP = (
    "The best objective a search of k trials would expect, drawing k of the completed "
    "trials at random (exactly, over every subset), with the 5-95% band of that best. A "
    "curve still falling at the right end says a larger search would still gain; a flat one "
    "that the budget was enough for this space. With --compare, a second study's curves on "
    "the same axes (two search spaces, or packed against not)."
)
