"""Stopping trials early: Optuna's pruners, and the project's own health rule.

Optuna's pruners compare a trial's reported value with other trials' values at
the same step. That is meaningful for an image-quality objective (FID, KID,
diversity) but not for M_global across different gammas: M_global contains
gamma * L(x), so a median pruner on M_global in a gamma sweep prunes the high
gammas, not the bad runs. And Optuna cannot prune multi-objective studies at all.

The health rule needs no other trial. It stops a trial (PRUNED, with the reason) when
- M_global is NaN or infinite;
- its M_global has stayed above `divergence_factor` x its own best for `patience`
  evaluations in a row (comparing a trial only with itself is fair across gammas);
- its samples have collapsed: diversity SSIM >= `collapse_ssim` for `patience`
  evaluations in a row.
It applies to every study, single- or multi-objective.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import optuna

from began.retry import retrying
from began.training.interrupts import RunAbandoned
from began.training.loop import EvalReport
from studies.objectives import M_GLOBAL, Objective
from studies.schema import LAST_EVALUATION_ATTR, rounded

PRUNERS = ("none", "median", "hyperband")
T = TypeVar("T")


def retrying_unless_finished(action: Callable[[], T]) -> T:
    """A request about a trial (this monitor's reports, its worker's attributes and
    outcome) under the retry policy of `began.retry`. A trial that another worker
    finished meanwhile (failed as stale) is no hiccup: that error is raised at once."""
    return retrying(action, give_up_on=(optuna.exceptions.UpdateFinishedTrialError,))


class PrunerError(ValueError):
    """An unknown pruner, or one that cannot work with these objectives."""


def make_pruner(name: str, n_objectives: int) -> optuna.pruners.BasePruner:
    if name not in PRUNERS:
        raise PrunerError(f"--pruner: unknown pruner {name!r}; choose from {', '.join(PRUNERS)}")
    if name != "none" and n_objectives > 1:
        raise PrunerError(
            f"--pruner: {name} compares one reported value and cannot prune a multi-objective "
            "study; use --pruner none (the health rule still stops diverged or collapsed trials)"
        )
    if name == "median":
        # Two trials' worth of history before comparing; never in the first evaluation.
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner()
    return optuna.pruners.NopPruner()


def pruner_warning(pruner: str, objectives: list[Objective], gamma_varies: bool) -> str | None:
    """The one pairing that prunes on gamma instead of quality, said in words."""
    if pruner != "none" and gamma_varies and objectives[0].logged == M_GLOBAL:
        return (
            f"--pruner {pruner} with objective m_global while gamma varies compares M_global "
            "across gammas; M_global grows with gamma, so it will prune high gammas, not bad "
            "runs. Prefer a quality objective (fid, kid, diversity) or --pruner none."
        )
    return None


@dataclass(frozen=True)
class HealthRule:
    divergence_factor: float = 2.0  # M_global above this multiple of its own best ...
    collapse_ssim: float = 0.9  # ... or diversity SSIM at or above this ...
    patience: int = 3  # ... for this many evaluations in a row

    def __post_init__(self) -> None:
        if not self.divergence_factor > 1.0:
            raise PrunerError(f"--divergence-factor: must be > 1, got {self.divergence_factor}")
        if not 0.0 < self.collapse_ssim <= 1.0:
            raise PrunerError(f"--collapse-ssim: must be in (0, 1], got {self.collapse_ssim}")
        if self.patience < 1:
            raise PrunerError(f"--prune-patience: must be >= 1, got {self.patience}")


@dataclass
class HealthState:
    """One trial's record under the health rule."""

    rule: HealthRule
    best_m_global: float = math.inf
    rising: int = 0  # evaluations in a row above divergence_factor x best
    collapsed: int = 0  # evaluations in a row at or above collapse_ssim

    def state_dict(self) -> dict[str, float]:
        """The counters: kept in the trial's checkpoint, so that a retry continues them."""
        return {"best_m_global": self.best_m_global, "rising": self.rising,
                "collapsed": self.collapsed}  # fmt: skip

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.best_m_global = float(state["best_m_global"])
        self.rising, self.collapsed = int(state["rising"]), int(state["collapsed"])

    def check(self, report: EvalReport) -> str | None:
        """The reason to stop after this evaluation, or None."""
        rule, m_global = self.rule, report.m_global
        if not math.isfinite(m_global):
            return f"diverged: M_global is {m_global} at step {report.step}"
        self.best_m_global = min(self.best_m_global, m_global)
        above = m_global > rule.divergence_factor * self.best_m_global
        self.rising = self.rising + 1 if above else 0
        if self.rising >= rule.patience:
            return (
                f"diverging: M_global {m_global:.4g} above {rule.divergence_factor:g}x its best "
                f"{self.best_m_global:.4g} for {self.rising} evaluations (step {report.step})"
            )
        ssim = report.metrics.get("diversity_ssim")
        self.collapsed = (
            self.collapsed + 1 if ssim is not None and ssim >= rule.collapse_ssim else 0
        )
        if self.collapsed >= rule.patience:
            real = report.metrics.get("diversity_ssim_real", math.nan)
            return (
                f"collapsed: diversity SSIM {ssim:.3f} >= {rule.collapse_ssim:g} for "
                f"{self.collapsed} evaluations (real images: {real:.3f}; step {report.step})"
            )
        return None


class TrialMonitor:
    """The `should_stop` of a trial's training run: reports, then decides.

    Each evaluation is stored on the trial (user attribute `last_evaluation`, shown by
    optuna-dashboard); single-objective studies also `trial.report` the objective,
    for the Optuna pruner.
    """

    def __init__(self, trial: optuna.Trial, objectives: list[Objective], rule: HealthRule):
        self.trial = trial
        self.objectives = objectives
        self.health = HealthState(rule)

    def state_dict(self) -> dict[str, float]:
        return self.health.state_dict()

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.health.load_state_dict(state)

    def __call__(self, report: EvalReport) -> str | None:
        try:
            return self._decide(report)
        except optuna.exceptions.UpdateFinishedTrialError:
            # Another worker failed this trial as stale: its retry owns the run now.
            raise RunAbandoned(f"trial {self.trial.number} was finished elsewhere") from None

    def _decide(self, report: EvalReport) -> str | None:
        values = {o.logged: o.value(report.m_global, report.metrics) for o in self.objectives}
        shown = {"step": report.step, **{k: rounded(v) for k, v in values.items()
                                         if math.isfinite(v)}}  # fmt: skip
        retrying_unless_finished(lambda: self.trial.set_user_attr(LAST_EVALUATION_ATTR, shown))
        reason = self.health.check(report)
        if reason is not None:
            return reason
        if len(self.objectives) == 1:
            [(name, value)] = values.items()
            if math.isfinite(value):
                retrying_unless_finished(lambda: self.trial.report(value, report.step))
                if retrying_unless_finished(self.trial.should_prune):
                    return f"pruner: {name} = {value:.4g} at step {report.step}"
        return None
