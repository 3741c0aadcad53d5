"""The Optuna study itself: created once (or checked against a rerun's options), its grid
queued, and loaded by each worker with its sampler and pruner."""

from __future__ import annotations

import warnings

import numpy as np
import optuna
from optuna.trial import TrialState

from began.config import TrainConfig
from began.errors import first_line
from began.tracking import mask_url
from studies.fleet.connection import missing_sqlite_file, open_storage
from studies.fleet.queue import point_of, try_failed_again
from studies.pruning import make_pruner
from studies.schema import (
    BASE_CONFIG_ATTR,
    EXPERIMENT_ATTR,
    HEARTBEAT_ATTR,
    KIND_ATTR,
    OBJECTIVES_ATTR,
    RESEED_OF_ATTR,
    SPACE_ATTR,
)
from studies.spec import GRID, RERUN_MAY_CHANGE, StudySpec

SAMPLERS = ("tpe", "random", "cmaes", "nsga2", "qmc")
GRID_TOLERANCE = 1e-12  # two grid values this close are one point


class StudyError(ValueError):
    """The study cannot be (re)started as asked; the message names the option."""


def prepare_study(spec: StudySpec) -> optuna.Study:
    """Create the study (or check a rerun matches it) and queue the grid's missing points."""
    storage = open_storage(spec)  # creates Optuna's tables, once, here
    study = optuna.create_study(
        study_name=spec.study_name,
        storage=storage,
        directions=spec.directions,
        load_if_exists=True,
    )
    check_rerun(spec, study)
    study.set_user_attr(OBJECTIVES_ATTR, [o.logged for o in spec.objectives])
    study.set_user_attr(BASE_CONFIG_ATTR, spec.base_config.to_dict())
    study.set_user_attr(EXPERIMENT_ATTR, spec.experiment)
    study.set_user_attr(KIND_ATTR, spec.kind)
    study.set_user_attr(SPACE_ATTR, spec.described)
    if spec.reseed_of is not None:
        study.set_user_attr(RESEED_OF_ATTR, spec.reseed_of.to_dict())
    if HEARTBEAT_ATTR not in study.user_attrs:  # the first command's: every host uses it
        study.set_user_attr(HEARTBEAT_ATTR, spec.heartbeat_s)
    with warnings.catch_warnings():  # set_metric_names is marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # optuna-dashboard then labels the axes by objective, not "Objective 0".
        study.set_metric_names([o.logged for o in spec.objectives])
    try_failed_again(study)  # a new command gives what failed fresh retries
    if spec.kind == GRID:
        queue_grid(spec, study)
    return study


def open_existing_study(name: str, storage: str) -> optuna.Study:
    """A study that exists, for commands that read one (reports, registration): a
    missing SQLite file or study name is a StudyError, never a new empty database."""
    if missing_sqlite_file(storage):
        raise StudyError(f"--storage {storage}: no such database file")
    try:
        names = optuna.get_all_study_names(storage)
    except Exception as error:
        raise StudyError(
            f"--storage {mask_url(storage)}: cannot open: {first_line(error)}"
        ) from None
    if name not in names:
        known = ", ".join(sorted(names)[:8]) or "none"
        raise StudyError(f"--study {name}: no such study in {mask_url(storage)} (studies: {known})")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=name, storage=storage)


def check_rerun(spec: StudySpec, study: optuna.Study) -> None:
    """A rerun may change where and how fast trials run, not what they compute."""
    attrs = study.user_attrs
    if not attrs:
        return  # a new study
    objectives = [o.logged for o in spec.objectives]
    if attrs.get(OBJECTIVES_ATTR) != objectives or study.directions != [
        optuna.study.StudyDirection[d.upper()] for d in spec.directions
    ]:
        raise StudyError(
            f"--objectives: study {spec.study_name} optimises {attrs.get(OBJECTIVES_ATTR)}, "
            f"not {objectives}; keep them or choose another --study-name"
        )
    saved = TrainConfig.from_dict(attrs.get(BASE_CONFIG_ATTR, {})).to_dict()
    varied = spec.varied
    changed = [
        f"{name} {saved[name]!r} -> {value!r}"
        for name, value in spec.base_config.to_dict().items()
        if name not in RERUN_MAY_CHANGE | varied and saved.get(name) != value
    ]
    if changed:
        raise StudyError(
            f"--study-name {spec.study_name}: the study's trials were trained with other "
            f"options ({'; '.join(changed)}); keep them or choose another --study-name"
        )


def queue_grid(spec: StudySpec, study: optuna.Study) -> int:
    """Queue each grid point that no trial covers yet; returns how many were queued.

    Queued once, here, before workers start: each point then runs exactly once even
    with many workers (Optuna's GridSampler could hand one point to two workers).
    Complete, pruned, running and queued points are not queued again; a failed one is
    queued again by `try_failed_again`, before this.
    """
    covered = []
    for trial in study.get_trials(deepcopy=False):
        if trial.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING,
                           TrialState.WAITING):  # fmt: skip
            covered.append(point_of(trial))
    queued = 0
    for point in spec.grid:
        if not any(_same_point(point, params) for params in covered):
            study.enqueue_trial(point)
            queued += 1
    return queued


def _same_point(point: dict, params: dict) -> bool:
    return all(
        k in params and abs(float(params[k]) - float(v)) < GRID_TOLERANCE for k, v in point.items()
    )


def make_sampler(spec: StudySpec, stream: int = 0) -> optuna.samplers.BaseSampler:
    """The sampler by name, seeded for one new trial: `stream` is the trial's place in the
    study (`studies.fleet.queue.new_trial`), so no two trials of a study, on one host or
    many, draw from the same random stream, and `--sampler-seed` still makes a study
    reproducible. TPE assumes a constant liar value for the trials still running, so that
    concurrent workers do not converge on one point."""
    seed = int(np.random.SeedSequence([spec.sampler_seed, stream]).generate_state(1)[0])
    if spec.kind == GRID:
        return optuna.samplers.RandomSampler(seed)  # never samples: every point is queued
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if spec.sampler == "tpe":
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True)
        if spec.sampler == "random":
            return optuna.samplers.RandomSampler(seed)
        if spec.sampler == "cmaes":
            return optuna.samplers.CmaEsSampler(seed=seed)
        if spec.sampler == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed)
        if spec.sampler == "qmc":
            # One scramble for the whole study: Optuna hands each trial its own index into
            # the sequence (kept in the study), which a seed per trial would break.
            return optuna.samplers.QMCSampler(seed=spec.sampler_seed)
    raise ValueError(f"--sampler: unknown sampler {spec.sampler!r}; choose from {SAMPLERS}")


def load_study(spec: StudySpec) -> optuna.Study:
    """The study as a worker sees it: its sampler and, explicitly, its pruner (Optuna's
    default would be a median pruner, which `--pruner none` must not get)."""
    return optuna.load_study(
        study_name=spec.study_name,
        storage=open_storage(spec),
        sampler=make_sampler(spec),  # reseeded for each new trial: make_sampler
        pruner=make_pruner(spec.pruner, len(spec.objectives)),
    )
