"""Answers that hold up to a reseed: settings compared with their seed variation, and what
a larger search would still gain.

GAN results move with the training seed as much as with many hyperparameters (Lucic et
al. 2018, "Are GANs Created Equal?"), so "gamma 0.5 beat gamma 0.7" means something only
if the difference is larger than what a reseed moves:

- `setting_means`: each setting's mean over its seeds, with a t interval;
- `compare_settings`: every pair of settings, the difference of their means with Welch's
  t interval, "a better than b" only where the interval excludes 0, otherwise
  inconclusive at n seeds, with the seeds per setting that would settle it if the
  difference and the spread hold;
- `against_reseeds`: the value that made a setting "best" against the same setting
  retrained with new seeds (`studies.reseed`): how much of its lead was the seed;
- `budget_curve`: the expected best objective of a search of k trials, k = 1..n, drawn
  from the n completed ones (Dodge et al. 2019, "Show Your Work"), with a band.

Plain functions of pandas frames: the report and notebooks call them alike.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

CONFIDENCE = 0.95  # of every interval here
MAX_SEEDS_TO_SETTLE = 1000  # beyond this a difference is, for practical purposes, zero


def seed_variation_measured(frame: pd.DataFrame, setting: list[str]) -> bool:
    """Whether any setting was trained with two seeds or more."""
    return bool(len(frame)) and int(frame.groupby(setting).size().max()) >= 2


def setting_label(setting: list[str], values: tuple) -> str:
    """`gamma=0.5` or `gamma=0.5 lambda_k=0.001`: a setting as the report names it."""
    return " ".join(f"{name}={value:g}" if isinstance(value, float) else f"{name}={value}"
                    for name, value in zip(setting, values, strict=True))  # fmt: skip


def setting_means(frame: pd.DataFrame, setting: list[str], metric: str) -> pd.DataFrame:
    """One row per setting: its label, n seeds, the mean of `metric`, its standard
    deviation and the t interval of the mean (NaN with one seed)."""
    rows = []
    for values, group in frame.dropna(subset=[metric]).groupby(setting, sort=True):
        values = values if isinstance(values, tuple) else (values,)
        x = group[metric].to_numpy(dtype=float)
        mean, sd = float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else math.nan
        half = _t(len(x) - 1) * sd / math.sqrt(len(x)) if len(x) > 1 else math.nan
        rows.append([setting_label(setting, values), len(x), mean, sd, mean - half, mean + half])
    return pd.DataFrame(rows, columns=["setting", "n", "mean", "sd", "ci_low", "ci_high"])


@dataclass(frozen=True)
class Verdict:
    """Setting a against setting b on one metric: difference = mean(a) - mean(b)."""

    metric: str
    a: str
    b: str
    difference: float
    ci_low: float
    ci_high: float
    n_seeds: int  # the fewer seeds of the two settings
    conclusive: bool  # the interval excludes 0
    better: str | None  # the setting that is better, where conclusive
    seeds_to_settle: int | None  # per setting, where inconclusive and estimable

    def to_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        """The verdict in words."""
        interval = f"{self.difference:+.4g} [{self.ci_low:+.4g}, {self.ci_high:+.4g}]"
        if self.ci_low == self.ci_high == self.difference == 0.0:
            return f"{self.a} vs {self.b} on {self.metric}: the same value at every seed"
        if self.conclusive:
            worse = self.b if self.better == self.a else self.a
            return (f"{self.better} better than {worse} on {self.metric}: mean difference "
                    f"{interval} ({CONFIDENCE:.0%} interval, {self.n_seeds} seeds)")  # fmt: skip
        settle = (
            f"; about {self.seeds_to_settle} seeds per setting would settle it if the "
            "difference and the spread hold"
            if self.seeds_to_settle is not None
            else ""
        )
        return (f"{self.a} vs {self.b} on {self.metric}: inconclusive at {self.n_seeds} seeds "
                f"(mean difference {interval}){settle}")  # fmt: skip


def compare_settings(
    frame: pd.DataFrame, setting: list[str], metric: str, direction: str, name: str = ""
) -> list[Verdict]:
    """Every pair of settings with two seeds or more each, best mean first in each pair, on
    the column `metric` (called `name` in the verdicts, default the column's name).
    `direction`: "minimize" or "maximize" (which sign of the difference is better)."""
    if direction not in ("minimize", "maximize"):
        raise ValueError(f"direction: minimize or maximize, got {direction!r}")
    data = frame.dropna(subset=[metric])
    samples = {}
    for values, group in data.groupby(setting, sort=True):
        values = values if isinstance(values, tuple) else (values,)
        if len(group) >= 2:
            samples[setting_label(setting, values)] = group[metric].to_numpy(dtype=float)
    sign = 1.0 if direction == "minimize" else -1.0
    ranked = sorted(samples, key=lambda label: sign * samples[label].mean())
    pairs = combinations(ranked, 2)
    return [_welch(name or metric, a, b, samples[a], samples[b], sign) for a, b in pairs]


def _welch(
    metric: str, a: str, b: str, x: np.ndarray, y: np.ndarray, sign: float
) -> Verdict:  # fmt: skip
    difference = float(x.mean() - y.mean())
    va, vb = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    se = math.sqrt(va + vb)
    if se == 0.0:  # every seed gave the same value: no spread to weigh the difference by
        low = high = difference
    else:
        df = (va + vb) ** 2 / (va**2 / (len(x) - 1) + vb**2 / (len(y) - 1))
        half = _t(df) * se
        low, high = difference - half, difference + half
    conclusive = low > 0 or high < 0
    better = None
    if conclusive:
        better = a if sign * difference < 0 else b
    settle = None
    if not conclusive:
        settle = _seeds_to_settle(difference, float(x.var(ddof=1)), float(y.var(ddof=1)))
    return Verdict(metric, a, b, difference, low, high, min(len(x), len(y)), conclusive,
                   better, settle)  # fmt: skip


def _seeds_to_settle(difference: float, var_a: float, var_b: float) -> int | None:
    """The smallest n seeds per setting whose t interval of the difference excludes 0,
    if the observed difference and variances held (None: no difference to find)."""
    if difference == 0.0 or not math.isfinite(difference):
        return None
    for n in range(2, MAX_SEEDS_TO_SETTLE + 1):
        if _t(2 * n - 2) * math.sqrt((var_a + var_b) / n) < abs(difference):
            return n
    return None


def _t(df: float) -> float:
    """The two-sided t quantile of CONFIDENCE."""
    return float(stats.t.ppf(0.5 + CONFIDENCE / 2, df))


def against_reseeds(best: float, reseeds: np.ndarray, direction: str) -> dict[str, float]:
    """A setting's best value (the one trial that ranked it) against its values over new
    seeds: their n, mean, sd, t interval of the mean, range, how many were at least as
    good as `best`, and `lead`, how much better `best` was than their mean (positive:
    better; in the metric's units)."""
    if direction not in ("minimize", "maximize"):
        raise ValueError(f"direction: minimize or maximize, got {direction!r}")
    x = np.asarray(reseeds, dtype=float)
    x = x[np.isfinite(x)]
    sign = 1.0 if direction == "minimize" else -1.0
    n = len(x)
    mean = float(x.mean()) if n else math.nan
    sd = float(x.std(ddof=1)) if n > 1 else math.nan
    half = _t(n - 1) * sd / math.sqrt(n) if n > 1 else math.nan
    return {
        "n_seeds": n, "mean": mean, "sd": sd, "ci_low": mean - half, "ci_high": mean + half,
        "min": float(x.min()) if n else math.nan, "max": float(x.max()) if n else math.nan,
        "as_good": int(np.sum(sign * x <= sign * best)), "lead": sign * (mean - best),
    }  # fmt: skip


def budget_curve(values: pd.Series | np.ndarray, direction: str) -> pd.DataFrame:
    """The best objective of a search of k trials drawn without replacement from the n
    completed ones, k = 1..n: its expected value and a band (the 5th and 95th percentile
    of that best). Exact, not resampled: with the values sorted from worst to best, the
    best of k is the i-th value with probability C(i-1, k-1) / C(n, k)."""
    if direction not in ("minimize", "maximize"):
        raise ValueError(f"direction: minimize or maximize, got {direction!r}")
    x = np.asarray(values, dtype=float)
    x = np.sort(x[np.isfinite(x)])
    if direction == "minimize":
        x = x[::-1]  # worst (largest) first
    n = len(x)
    rows = []
    for k in range(1, n + 1):
        chance = np.array([math.comb(i - 1, k - 1) for i in range(1, n + 1)], dtype=float)
        chance /= math.comb(n, k)
        cumulative = np.cumsum(chance)
        low = x[min(int(np.searchsorted(cumulative, 0.05)), n - 1)]
        high = x[min(int(np.searchsorted(cumulative, 0.95)), n - 1)]
        if direction == "minimize":
            low, high = high, low  # the band in the metric's own order
        rows.append([k, float(chance @ x), float(low), float(high)])
    return pd.DataFrame(rows, columns=["n_trials", "expected_best", "low", "high"])


def load_verdicts(report: str | Path) -> pd.DataFrame:
    """The verdicts of a report written with `--format json`: one row per pair of settings
    and objective. `report`: report.json or the folder that holds it."""
    path = Path(report)
    if path.is_dir():
        path = path / "report.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no report.json (write one with --format json)")
    columns = [f.name for f in Verdict.__dataclass_fields__.values()]
    return pd.DataFrame(json.loads(path.read_text())["verdicts"], columns=columns)
