"""`python -m studies.status`: where a study stands, from any host that reaches its storage.

    python -m studies.status --study NAME --storage postgresql://began@db-host/optuna

Prints the study's trials by state; each running trial with the host, process and Slurm
task that runs it and how long ago it last beat (a trial silent for three heartbeat
intervals is retried by the next worker that looks); and, where `squeue` is on the PATH,
the state of each task of the Slurm jobs `--launch slurm` submitted for it.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
from collections import Counter
from collections.abc import Sequence

import optuna
from optuna.trial import TrialState

from began.cli import HelpFormatter, Parser, run_cli
from studies.fleet.connection import absolute_sqlite
from studies.fleet.optuna_private import heartbeat_ages, trial_id_of
from studies.fleet.storage import open_existing_study
from studies.naming import point_of_trial, trial_name
from studies.schema import (
    HEARTBEAT_ATTR,
    LAST_EVALUATION_ATTR,
    SLURM_JOBS_ATTR,
    STATES,
    WORKER_ATTR,
)
from studies.spec import DEFAULT_STORAGE


def job_tasks(job: str) -> dict[str, str]:
    """{task: "STATE NODE"} of a Slurm job's tasks still in the queue (array tasks one by
    one); {} when none is left or squeue is not here."""
    if shutil.which("squeue") is None:
        return {}
    done = subprocess.run(["squeue", "--noheader", "--array", "--jobs", job,
                           "--format", "%i %T %N"], capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:  # a job Slurm no longer knows
        return {}
    tasks = {}
    for line in done.stdout.splitlines():
        task, _, rest = line.strip().partition(" ")
        if task:
            tasks[task] = rest.strip()
    return tasks


def status_lines(study: optuna.Study, slurm: dict[str, dict[str, str]] | None = None) -> list[str]:
    """The study in lines: counts by state, the running trials with who runs them and
    their last heartbeat, then each Slurm job's tasks (`slurm`: job -> job_tasks)."""
    trials = study.get_trials(deepcopy=False)
    counts = Counter(t.state.name for t in trials)
    shown = ", ".join(f"{counts[s]} {s.lower()}" for s in STATES if counts[s])
    lines = [f"study {study.study_name}: {len(trials)} trial(s): {shown or 'none yet'}"]
    running = [t for t in trials if t.state == TrialState.RUNNING]
    ages = heartbeat_ages(study) if running else {}
    interval = study.user_attrs.get(HEARTBEAT_ATTR)
    names = list(dict.fromkeys(n for t in trials for n in point_of_trial(t)))
    for trial in running:
        age = ages.get(trial_id_of(trial))
        beat = "no heartbeat yet" if age is None else f"last heartbeat {age:.0f} s ago"
        if age is not None and interval and age > 3 * interval:
            beat += " (stale: the next worker that looks retries it)"
        evaluation = trial.user_attrs.get(LAST_EVALUATION_ATTR, {})
        step = f", step {evaluation['step']}" if isinstance(evaluation, dict) and "step" in (
            evaluation) else ""  # fmt: skip
        worker = trial.user_attrs.get(WORKER_ATTR, "worker unknown")
        lines.append(f"  {trial_name(trial.number, point_of_trial(trial), names)}: "
                     f"{worker}{step}, {beat}")  # fmt: skip
    for job, tasks in (slurm or {}).items():
        if not tasks:
            lines.append(f"Slurm job {job}: no task left in the queue")
            continue
        by_state = Counter(state.split(" ")[0] for state in tasks.values())
        lines.append(f"Slurm job {job}: " + ", ".join(f"{n} {s.lower()}" for s, n in
                                                       sorted(by_state.items())))  # fmt: skip
        lines += [f"  task {task}: {state}" for task, state in sorted(tasks.items())]
    return lines


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m studies.status", description=__doc__.split("\n\n")[0],
               formatter_class=HelpFormatter)  # fmt: skip
    p.add_argument("--study", required=True, help="the study")
    p.add_argument("--storage", default=DEFAULT_STORAGE, help="its Optuna storage URL")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    study = open_existing_study(args.study, absolute_sqlite(args.storage))
    jobs = study.user_attrs.get(SLURM_JOBS_ATTR, [])
    slurm = {job: job_tasks(job) for job in jobs} if shutil.which("squeue") else None
    print("\n".join(status_lines(study, slurm)))
    if jobs and slurm is None:
        print(f"Slurm job(s) {', '.join(jobs)}: squeue is not on this host")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
