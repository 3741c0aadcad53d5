"""The parent process of a study: set up everything shared once, start workers, watch.

Everything that several workers would otherwise race to create is made here,
before any worker starts: the Optuna tables and study, the grid's queue, the
MLflow experiment and the study's parent run, the decoded-data cache and the
real images' Inception statistics. Then N worker processes share the study, and
this process only draws progress and forwards Ctrl-C.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import time
from dataclasses import dataclass
from types import FrameType

import optuna
from optuna.trial import TrialState

from began.config import TrainConfig
from began.data import load_images
from began.metrics import get_metric, parse_metrics
from studies.progress import DONE_STATES, StudyProgress, as_typed_here, summary
from studies.records import close_parent_run, open_parent_run
from studies.retry import retrying
from studies.spec import GRID, StudySpec
from studies.storage import (
    BASE_CONFIG_ATTR,
    EXPERIMENT_ATTR,
    OBJECTIVES_ATTR,
    check_storage_url,
    open_storage,
    setup_lock,
)
from studies.worker import INTERRUPTED_EXIT, worker_main

POLL_S = 2.0  # seconds between looks at the study's state (cheap, but not free on 2 cores)

# Config fields a rerun of a study may change: where and how fast it runs.
RERUN_MAY_CHANGE = frozenset({"device", "precision", "compile", "channels_last"})


class StudyError(ValueError):
    """The study cannot be (re)started as asked; the message names the option."""


@dataclass(frozen=True)
class WorkerSlot:
    device: str  # "cpu", "cuda:0", ...
    threads: int  # torch threads of this worker


def prepare_study(spec: StudySpec) -> optuna.Study:
    """Create the study (or check a rerun matches it) and queue the grid's missing points."""
    storage = open_storage(spec)  # creates Optuna's tables, once, here
    study = optuna.create_study(
        study_name=spec.study_name,
        storage=storage,
        directions=spec.directions,
        load_if_exists=True,
    )
    _check_rerun(spec, study)
    study.set_user_attr(OBJECTIVES_ATTR, [o.logged for o in spec.objectives])
    study.set_user_attr(BASE_CONFIG_ATTR, spec.base_config.to_dict())
    study.set_user_attr(EXPERIMENT_ATTR, spec.experiment)
    study.set_user_attr("kind", spec.kind)
    if spec.kind == GRID:
        queue_grid(spec, study)
    return study


def _check_rerun(spec: StudySpec, study: optuna.Study) -> None:
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
    varied = set(spec.space)
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
    A point whose trial failed with an error is queued again; complete, pruned,
    running and queued points are not.
    """
    covered = []
    for trial in study.get_trials(deepcopy=False):
        if trial.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING,
                           TrialState.WAITING):  # fmt: skip
            covered.append(trial.system_attrs.get("fixed_params", trial.params))
    queued = 0
    for point in spec.grid:
        if not any(_same_point(point, params) for params in covered):
            study.enqueue_trial(point)
            queued += 1
    return queued


def _same_point(point: dict, params: dict) -> bool:
    return all(k in params and abs(float(params[k]) - float(v)) < 1e-12 for k, v in point.items())


def prepare_shared_data(spec: StudySpec, first_device: str) -> None:
    """Decode the data into its cache, and compute the real images' Inception statistics
    (in a child process, so that this one holds no GPU memory while the study runs)."""
    cfg = spec.base_config
    load_images(cfg.data, cfg.image_size, cfg.crop, cfg.keep_grayscale, spec.cache_dir)
    if any(get_metric(r.name).uses_feature_network for r in parse_metrics(cfg.metrics)):
        context = multiprocessing.get_context("spawn")
        process = context.Process(target=_real_statistics, args=(spec, first_device))
        process.start()
        process.join()
        if process.exitcode != 0:
            raise StudyError(
                "--metrics: computing the real images' feature statistics failed "
                f"(exit code {process.exitcode}); see the message above"
            )


def _real_statistics(spec: StudySpec, device_name: str) -> None:
    import torch

    from began.metrics.real_stats import real_statistics
    from began.run import resolve_device

    cfg = spec.base_config
    dataset = load_images(cfg.data, cfg.image_size, cfg.crop, cfg.keep_grayscale, spec.cache_dir)
    real_statistics(
        torch.from_numpy(dataset.images),
        dataset.fingerprint,
        resolve_device(device_name),
        spec.cache_dir,
        cfg.feature_network or None,
    )


class _ParentSignals:
    """First Ctrl-C/SIGTERM: ask workers to stop cleanly (SIGTERM; a terminal's Ctrl-C has
    reached them already). A second Ctrl-C: stop them now."""

    def __init__(self, processes: list[multiprocessing.Process]) -> None:
        self.processes = processes
        self.stopping = False
        self.previous: dict[int, object] = {}

    def __enter__(self) -> _ParentSignals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.stopping and signum == signal.SIGINT:
            for process in self.processes:
                if process.is_alive():
                    process.kill()
            return
        if not self.stopping:
            print(
                "\nstopping: each worker checkpoints its trial and queues it to continue; "
                "Ctrl-C again to stop at once",
                flush=True,
            )
        self.stopping = True
        for process in self.processes:
            if process.is_alive() and process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGTERM)


def run_study(spec: StudySpec, slots: list[WorkerSlot], quiet: bool, tracking_hint: str) -> int:
    """Run the study to its end (or Ctrl-C); returns the exit code (0, 1 or 130)."""
    started = time.monotonic()
    # The study prints where to look at the end; MLflow's own "View run at" lines, printed
    # by every worker for every run on an http tracking server, would bury the display.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # same, per download
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # "creating tables ..." is noise here
    check_storage_url(spec)
    with setup_lock(spec):  # other hosts starting this study now wait here
        study = prepare_study(spec)
        parent_run_id = open_parent_run(spec, study)
    prepare_shared_data(spec, slots[0].device)
    done = {t.number for t in study.get_trials(deepcopy=False) if t.state in DONE_STATES}
    print(
        f"study {spec.study_name}: {len(slots)} worker(s) on "
        f"{', '.join(sorted({s.device for s in slots}))}; storage {as_typed_here(spec.storage)}; "
        f"MLflow experiment {spec.experiment!r}, study run {parent_run_id}",
        flush=True,
    )
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked torch state
    processes = [
        context.Process(
            target=worker_main,
            args=(spec, index, slot.device, slot.threads, parent_run_id),
            name=f"study-worker-{index}",
        )
        for index, slot in enumerate(slots)
    ]
    progress = StudyProgress(spec, quiet, done)
    with _ParentSignals(processes) as signals:
        for process in processes:
            process.start()
        while any(p.is_alive() for p in processes):
            progress.update_quietly(study)
            for process in processes:  # about one poll of the storage every 2 s
                process.join(timeout=POLL_S / len(processes))
        retrying(lambda: progress.update(study))
        progress.close()
    codes = [p.exitcode for p in processes]
    interrupted = signals.stopping or INTERRUPTED_EXIT in codes
    crashed = [c for c in codes if c not in (0, INTERRUPTED_EXIT)]
    status = "FINISHED"
    if interrupted:
        status = "KILLED"
    elif crashed and _unfinished(study):
        status = "FAILED"
    retrying(lambda: close_parent_run(spec, study, parent_run_id, status))
    print(summary(spec, study, time.monotonic() - started, tracking_hint), flush=True)
    if interrupted:
        print(f"stopped; run the same command again to continue study {spec.study_name}")
        return INTERRUPTED_EXIT
    if crashed:
        print(f"{len(crashed)} worker(s) died (exit codes {crashed}); rerun to continue")
        return 1
    return 0


def _unfinished(study: optuna.Study) -> bool:
    trials = study.get_trials(deepcopy=False)
    return any(t.state in (TrialState.WAITING, TrialState.RUNNING) for t in trials)
