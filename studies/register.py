"""The best trial's generator in MLflow's Model Registry, so that it can be loaded by name:

    python -m studies.register --study NAME --name faces-best
    python -m began.sample --model models:/faces-best/latest --out best.png

A study command does the same at its end with `--register-best NAME`. Each registration
adds a version to the registered model, tagged with the study, the trial and its
objective values; a multi-objective study has no single best, so `--trial N` picks one
of its Pareto front.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from began.cli import Parser, check_name, run_cli
from began.errors import TrackingError
from began.tracking import (
    DEFAULT_TRACKING_URI,
    check_tracking_uri,
    register_generator,
    with_retries,
)
from studies.fleet.connection import absolute_sqlite
from studies.fleet.storage import open_existing_study
from studies.naming import objective_values, point_of_trial, trial_name
from studies.records import best_trials
from studies.schema import (
    OBJECTIVE_PREFIX,
    OBJECTIVES_ATTR,
    RUN_ID_ATTR,
    SPACE_ATTR,
    STUDY_NAME_TAG,
    TRIAL_NUMBER_TAG,
)
from studies.spec import DEFAULT_STORAGE


def chosen_trial(study: optuna.Study, trial_number: int | None) -> FrozenTrial:
    """The study's best trial, or trial `trial_number`; a complete one with a run."""
    if trial_number is not None:
        found = [t for t in study.get_trials(deepcopy=False) if t.number == trial_number]
        if not found or found[0].state != TrialState.COMPLETE:
            raise TrackingError(f"--trial {trial_number}: no complete trial of that number "
                                f"in study {study.study_name}")  # fmt: skip
        trial = found[0]
    else:
        best = best_trials(study)
        if not best:
            raise TrackingError(f"study {study.study_name} has no complete trial to register")
        if len(best) > 1:
            front = ", ".join(str(t.number) for t in best)
            raise TrackingError(f"study {study.study_name} has several objectives and no "
                                f"single best; choose one of its Pareto front with --trial "
                                f"({front})")  # fmt: skip
        trial = best[0]
    if not trial.user_attrs.get(RUN_ID_ATTR):
        raise TrackingError(f"trial {trial.number} has no MLflow run")
    return trial


def register_best(
    study: optuna.Study, tracking_uri: str, name: str, trial_number: int | None = None
) -> tuple[FrozenTrial, str]:
    """Register the generator of the study's best trial (or `trial_number`) as a new
    version of `name`; returns the trial and the version."""
    trial = chosen_trial(study, trial_number)
    objectives = [str(n) for n in study.user_attrs.get(OBJECTIVES_ATTR, [])]
    values = objective_values(objectives, trial.values)
    label = trial_name(trial.number, point_of_trial(trial), list(point_of_trial(trial)))
    scores = {f"{OBJECTIVE_PREFIX}{n}": str(v)
              for n, v in zip(objectives, trial.values, strict=True)}  # fmt: skip
    tags = {STUDY_NAME_TAG: study.study_name, TRIAL_NUMBER_TAG: str(trial.number), **scores,
            "space": str(study.user_attrs.get(SPACE_ATTR, ""))}  # fmt: skip
    about = f"{label} of study {study.study_name}: {values}"
    run_id = trial.user_attrs[RUN_ID_ATTR]
    version = with_retries(
        lambda: register_generator(tracking_uri, run_id, name, tags, about),
        f"registering the generator of trial {trial.number} as {name}",
    )
    return trial, version


def registered_line(name: str, trial: FrozenTrial, version: str) -> str:
    return f"registered the generator of trial {trial.number} as models:/{name}/{version}"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="python -m studies.register",
        description="Register the best trial's generator of a study in MLflow's Model "
        "Registry, to load it as models:/NAME/latest (python -m began.sample --model ...).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--study", required=True, help="the study's name")
    parser.add_argument("--name", required=True, help="the registered model's name")
    parser.add_argument("--trial", type=int, default=None,
                        help="register this trial instead of the best (needed where several "
                        "objectives leave a Pareto front)")  # fmt: skip
    parser.add_argument("--storage", default=DEFAULT_STORAGE, help="the study's Optuna storage")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else "
                        "sqlite:///mlflow.db here)")  # fmt: skip
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_name("--name", args.name)
    tracking_uri = absolute_sqlite(
        args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    )  # absolute, as the study commands make it: MLflow caches a store by its URI
    check_tracking_uri(tracking_uri)
    study = open_existing_study(args.study, args.storage)
    trial, version = register_best(study, tracking_uri, args.name, args.trial)
    print(registered_line(args.name, trial, version))
    print(f"  python -m began.sample --model models:/{args.name}/latest --out best.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
