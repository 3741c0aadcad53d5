"""The study-level display: one bar for the study, one line per finished trial.

Workers train quietly; only the parent process writes to the terminal, so per-trial
output never scrambles the display. With --quiet there is no bar, only the lines
(one per finished trial, fit for a log file).
"""

from __future__ import annotations

import math
import sys

import optuna
from optuna.trial import FrozenTrial, TrialState
from tqdm import tqdm

from studies.collapse import (
    MEANING,
    NEAR_COLLAPSE_SHARE,
    is_collapsed,
    near_collapse_signs,
    ssim_share,
)
from studies.fleet.queue import continued_numbers, failed_for_good, point_of
from studies.hints import next_steps
from studies.naming import objective_values, point_of_trial, trial_name
from studies.records import best_trials
from studies.schema import REASON_ATTR, RUN_ID_ATTR, final_metrics
from studies.spec import StudySpec

DONE_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def name_of(spec: StudySpec, trial: FrozenTrial) -> str:
    """The trial's name (studies.naming), as its MLflow run is called: `t3 gamma=0.5`."""
    return trial_name(trial.number, {**point_of(trial), **point_of_trial(trial)}, spec.named)


def format_values(spec: StudySpec, values: list[float] | None) -> str:
    return objective_values([o.logged for o in spec.objectives], values)


def collapsed(trial: FrozenTrial, threshold: float) -> bool:
    return is_collapsed(final_metrics(trial.user_attrs), threshold)


def near_collapse(trial: FrozenTrial, threshold: float) -> list[str]:
    """The signs of near collapse (studies.collapse) of a trial not already collapsed."""
    final = final_metrics(trial.user_attrs)
    return [] if is_collapsed(final, threshold) else near_collapse_signs(final)


def trial_line(spec: StudySpec, trial: FrozenTrial, continued: bool = False) -> str:
    """`t3 gamma=0.5 COMPLETE | diversity_gap=0.04 | 58 s` and any warning;
    a failed attempt that a retry continues (`continued`) reads INTERRUPTED, not FAIL."""
    seconds = ""
    if trial.datetime_start and trial.datetime_complete:
        seconds = f" | {(trial.datetime_complete - trial.datetime_start).total_seconds():.0f} s"
    state = "INTERRUPTED" if continued and trial.state == TrialState.FAIL else trial.state.name
    parts = [f"{name_of(spec, trial)} {state}"]
    if trial.values is not None and trial.state == TrialState.COMPLETE:
        parts.append(format_values(spec, trial.values))
    ssim = final_metrics(trial.user_attrs).get("diversity_ssim")
    if ssim is not None:
        parts.append(f"diversity SSIM {ssim:.3f}")
    reason = trial.user_attrs.get(REASON_ATTR)
    if reason:
        parts.append(reason)
    line = " | ".join(parts) + seconds
    if collapsed(trial, spec.health.collapse_ssim):
        final = final_metrics(trial.user_attrs)
        line += (
            f"\n  ! COLLAPSED: diversity SSIM {final['diversity_ssim']:.3f} (real images "
            f"{final.get('diversity_ssim_real', math.nan):.3f}): the samples look alike"
        )
    elif signs := near_collapse(trial, spec.health.collapse_ssim):
        line += f"\n  ! NEAR COLLAPSE: {'; '.join(signs)}\n    {MEANING}"
    return line


class StudyProgress:
    """Polls the study and draws its state; `update` is cheap enough to call every second."""

    def __init__(self, spec: StudySpec, quiet: bool, already_done: set[int]) -> None:
        self.spec = spec
        self.quiet = quiet or not sys.stdout.isatty()  # a log file gets lines, not a bar
        self.reported = set(already_done)
        self.finished_here = 0
        self.best_text: str | None = None
        self.bar = tqdm(
            total=spec.total_trials, disable=self.quiet, unit="trial", dynamic_ncols=True,
            desc=spec.study_name, file=sys.stdout, smoothing=0.0,
            bar_format="{desc}: {n_fmt}/{total_fmt} trials |{bar}| {elapsed}<{remaining} {postfix}",
        )  # fmt: skip
        done = len(already_done)
        self.bar.update(done)
        self.initial_done = done

    def update(self, study: optuna.Study) -> None:
        trials = study.get_trials(deepcopy=False)
        continued = continued_numbers(trials)  # once a poll: the bar redraws every second
        newly_done = False
        for trial in trials:
            if trial.state in DONE_STATES and trial.number not in self.reported:
                self.reported.add(trial.number)
                self.finished_here += 1
                newly_done = True
                self._write(trial_line(self.spec, trial, trial.number in continued))
        counts = {state: 0 for state in TrialState}
        for trial in trials:
            counts[trial.state] += 1
        # Trials that are done for good: complete, pruned, or failed without a retry queued.
        logical_done = counts[TrialState.COMPLETE] + counts[TrialState.PRUNED]
        logical_done += sum(
            1 for t in trials if t.state == TrialState.FAIL and t.number not in continued
        )
        self.bar.n = logical_done
        postfix = (
            f"running {counts[TrialState.RUNNING]} | queued {counts[TrialState.WAITING]} | "
            f"pruned {counts[TrialState.PRUNED]} | failed {len(failed_for_good(trials))}"
        )
        if newly_done or self.best_text is None:  # the best changes only when a trial ends
            best = best_trials(study)
            self.best_text = ""
            if len(best) == 1:
                self.best_text = (
                    f" | best: trial {best[0].number} {format_values(self.spec, best[0].values)}"
                )
            elif best:
                self.best_text = f" | Pareto front: {len(best)} trials"
        self.bar.set_postfix_str(postfix + self.best_text, refresh=False)
        self.bar.refresh()

    def update_quietly(self, study: optuna.Study) -> None:
        """`update`, but a storage that is briefly away (a restart) only shows in the bar."""
        try:
            self.update(study)
        except Exception as error:
            self.bar.set_postfix_str(f"storage unreachable, retrying: {type(error).__name__}")

    def _write(self, line: str) -> None:
        if self.quiet:
            print(line, flush=True)
        else:
            self.bar.write(line)

    def close(self) -> None:
        self.bar.close()


# Pairwise SSIM this far above the real images' own is a visibly less varied set of
# faces (the demo's gamma 0.5 trial: 0.61 against 0.24), short of near collapse.
LESS_VARIED_MARGIN = 0.25


def diversity_verdict(final: dict[str, float], threshold: float) -> str:
    """The final diversity in words: collapsed, near collapse, less varied than real faces,
    or like them."""
    ssim, real = final["diversity_ssim"], final.get("diversity_ssim_real", math.nan)
    share = ssim_share(final)
    if ssim >= threshold:
        verdict = "COLLAPSED: the samples look alike"
    elif share is not None and share >= NEAR_COLLAPSE_SHARE:
        verdict = f"NEAR COLLAPSE, {share:.0%} of the way to identical samples"
    elif ssim - real > LESS_VARIED_MARGIN:
        verdict = "less varied than the real faces"
    else:
        verdict = "about as varied as the real faces"
    return f"diversity SSIM {ssim:.3f} vs {real:.3f} for real images: {verdict}"


def summary(spec: StudySpec, study: optuna.Study, seconds: float | None) -> str:
    """What the study found, and what to open next; `seconds` None: nothing was left to run."""
    trials = study.get_trials(deepcopy=False)
    counts = {s: sum(1 for t in trials if t.state == s) for s in TrialState}
    ran = "nothing left to run" if seconds is None else f"{seconds:.0f} s this run"
    failed = failed_for_good(trials)
    continued = continued_numbers(trials)
    retried = sum(1 for t in trials if t.state == TrialState.FAIL and t.number in continued)
    lines = [
        f"study {spec.study_name}: {len(trials) - retried} trials, "
        f"{counts[TrialState.COMPLETE]} complete, {counts[TrialState.PRUNED]} pruned, "
        f"{len(failed)} failed"
        + (f", {retried} attempts interrupted and continued" if retried else "")
        + f" ({ran})"
    ]
    for trial in failed:
        lines.append(
            f"! {name_of(spec, trial)} FAILED: "
            f"{trial.user_attrs.get(REASON_ATTR, 'no reason recorded')}"
        )
    if failed:
        lines.append("! the same command again tries the failed trials again, each from its "
                     "last checkpoint")  # fmt: skip
    best = best_trials(study)
    threshold = spec.health.collapse_ssim
    for trial in best:
        label = "best" if len(best) == 1 else "Pareto"
        lines.append(
            f"{label}: {name_of(spec, trial)} | "
            f"{format_values(spec, trial.values)} | run {trial.user_attrs.get(RUN_ID_ATTR, '?')}"
        )
        final = final_metrics(trial.user_attrs)
        if "diversity_ssim" in final:
            lines.append(f"  {diversity_verdict(final, threshold)}")
    n_collapsed = sum(1 for t in trials if collapsed(t, threshold))
    if n_collapsed:
        lines.append(f"! {n_collapsed} trial(s) ended collapsed (diversity SSIM >= {threshold:g})")
    near = [t.number for t in trials if near_collapse(t, threshold)]
    if near:
        named = ", ".join(f"t{n}" for n in near)
        lines.append(f"! {len(near)} trial(s) ended near collapse ({named}): {MEANING}")
    if not best:
        lines.append("no trial completed yet")
    lines.append("next (from this folder):")
    best_run = best[0].user_attrs.get(RUN_ID_ATTR) if best else None
    lines += [f"  {line}" for line in next_steps(spec, best_run)]
    return "\n".join(lines)
