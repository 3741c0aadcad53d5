"""The parent process of a study: set up everything shared once, start workers, watch.

Everything that several workers would otherwise race to create is made here,
before any worker starts: the Optuna tables and study, the grid's queue, the
MLflow experiment and the study's parent run, the decoded-data cache and the
real images' Inception statistics. Then N worker processes share the study, and
this process only draws progress and forwards Ctrl-C.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import time
from dataclasses import dataclass
from types import FrameType

import optuna
from optuna.trial import TrialState

from began.data import load_images
from began.errors import TrackingError
from began.metrics import get_metric, parse_metrics
from began.retry import retrying
from studies.fleet.connection import setup_lock
from studies.fleet.queue import failed_for_good, is_retry
from studies.fleet.slurm import requeue_this_task, slurm_task
from studies.fleet.storage import StudyError, prepare_study
from studies.fleet.worker import INTERRUPTED_EXIT, worker_main
from studies.hints import as_typed_here
from studies.progress import DONE_STATES, StudyProgress, summary
from studies.records import close_parent_run, open_parent_run
from studies.register import register_best, registered_line
from studies.spec import SEARCH, StudySpec

POLL_S = 2.0  # seconds between looks at the study's state (cheap, but not free on 2 cores)


@dataclass(frozen=True)
class WorkerSlot:
    device: str  # "cpu", "cuda:0", ...
    threads: int  # torch threads of this worker


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
    from began.training.device import use_cuda_device
    from began.training.learner import resolve_device

    device = resolve_device(device_name)
    use_cuda_device(device)
    cfg = spec.base_config
    dataset = load_images(cfg.data, cfg.image_size, cfg.crop, cfg.keep_grayscale, spec.cache_dir)
    real_statistics(
        torch.from_numpy(dataset.images),
        dataset.fingerprint,
        device,
        spec.cache_dir,
        cfg.feature_network or None,
        max_reference=cfg.reference_size,
    )


class _ParentSignals:
    """First Ctrl-C/SIGTERM: ask workers to stop cleanly (SIGTERM; a terminal's Ctrl-C has
    reached them already). A second Ctrl-C: stop them now. SIGUSR1, Slurm's warning
    before a task's time limit (`studies.launch`): stop the same way, then requeue the task."""

    def __init__(self, processes: list[multiprocessing.Process]) -> None:
        self.processes = processes
        self.stopping = False
        self.requeue = False
        self.previous: dict[int, object] = {}

    def __enter__(self) -> _ParentSignals:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
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
        self.requeue = self.requeue or signum == signal.SIGUSR1
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


def run_study(spec: StudySpec, slots: list[WorkerSlot], quiet: bool) -> int:
    """Run the study to its end (or Ctrl-C); returns the exit code (0, 1 or 130).

    Nothing is created before every input has been checked: the data loads (and its
    feature statistics are computed) before the study or its MLflow run exist.
    """
    start_time = time.monotonic()
    # The study prints where to look at the end; MLflow's own "View run at" lines, printed
    # by every worker for every run on an http tracking server, would bury the display.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # same, per download
    # "Creating initial MLflow database tables..." is noise here. MLflow sets its loggers'
    # level when it is first imported, from this variable; the workers inherit it.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    prepare_shared_data(spec, slots[0].device)
    with setup_lock(spec):  # other hosts starting this study now wait here
        study = prepare_study(spec)
        if not _has_work(spec, study):
            print(summary(spec, study, None), flush=True)
            return 0
        parent = open_parent_run(spec, study)
    done = {t.number for t in study.get_trials(deepcopy=False) if t.state in DONE_STATES}
    print(
        f"study {spec.study_name}: {len(slots)} worker(s) on "
        f"{', '.join(sorted({s.device for s in slots}))}"
        f"{f', {spec.pack} trials packed per worker' if spec.pack > 1 else ''}; "
        f"storage {as_typed_here(spec.storage)}; "
        f"MLflow experiment {spec.experiment!r}, study run {parent.run_id}",
        flush=True,
    )
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked torch state
    processes = [
        context.Process(
            target=worker_main,
            args=(spec, index, slot.device, slot.threads, parent.run_id),
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
    retrying(lambda: close_parent_run(spec, study, parent, status))
    print(summary(spec, study, time.monotonic() - start_time), flush=True)
    registered = interrupted or _register(spec, study)
    if interrupted:
        print(f"stopped; run the same command again to continue study {spec.study_name}")
        if signals.requeue and _unfinished(study) and requeue_this_task():
            print(f"Slurm task {slurm_task()} requeued: it joins the study again when it starts")
        return INTERRUPTED_EXIT
    if crashed:
        print(f"{len(crashed)} worker(s) died (exit codes {crashed}); rerun to continue")
        return 1
    failed = failed_for_good(study.get_trials(deepcopy=False))
    if failed:
        print(f"{len(failed)} trial(s) failed (listed above); exit status 1")
        return 1
    return 0 if registered else 1


def _register(spec: StudySpec, study: optuna.Study) -> bool:
    """--register-best: the best generator into the Model Registry; False if it failed."""
    if spec.register_best is None:
        return True
    try:
        trial, version = register_best(study, spec.tracking_uri, spec.register_best)
    except TrackingError as error:
        print(f"--register-best {spec.register_best}: nothing registered: {error}", flush=True)
        return False
    print(registered_line(spec.register_best, trial, version), flush=True)
    return True


def _has_work(spec: StudySpec, study: optuna.Study) -> bool:
    """Whether a worker would find anything to do: a queued or running trial (a running
    one may be a dead worker's, to retry), or room for new trials in a search."""
    trials = study.get_trials(deepcopy=False)
    if any(t.state in (TrialState.WAITING, TrialState.RUNNING) for t in trials):
        return True
    if spec.kind == SEARCH:
        new = sum(1 for t in trials if not is_retry(t))
        return spec.n_trials is None or new < spec.n_trials
    return False


def _unfinished(study: optuna.Study) -> bool:
    trials = study.get_trials(deepcopy=False)
    return any(t.state in (TrialState.WAITING, TrialState.RUNNING) for t in trials)
