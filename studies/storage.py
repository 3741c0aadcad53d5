"""The Optuna side of a study: storage with heartbeats, the study, its queue of trials.

Heartbeats: every running trial's worker writes a heartbeat; a trial silent for two
intervals (its worker was killed, its machine lost power) is failed by the next
worker that looks, and `RetryHeartbeatStaleTrialCallback` queues a copy of it with
the same params and user attributes, `mlflow_run_id` among them, so the retry
continues the same MLflow run from its last checkpoint.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from began.errors import first_line
from began.tracking import mask_url
from studies.optuna_private import pop_waiting_trial_id, storage_of, trial_id_of
from studies.pruning import make_pruner
from studies.spec import GRID, StudySpec

SAMPLERS = ("tpe", "random", "cmaes", "nsga2", "qmc")
# How long a MySQL study set-up waits for another host's set-up to finish, in seconds.
MYSQL_LOCK_WAIT_S = 600

# Attributes the study keeps about itself (seen in optuna-dashboard too).
OBJECTIVES_ATTR = "objectives"
BASE_CONFIG_ATTR = "base_config"
PARENT_RUN_ATTR = "mlflow_parent_run_id"
EXPERIMENT_ATTR = "mlflow_experiment"
# Attributes of a trial.
RUN_ID_ATTR = "mlflow_run_id"
REASON_ATTR = "reason"  # why it was pruned or failed
FINAL_ATTR = "final_metrics"  # the final evaluation's values


class StorageError(ValueError):
    """The storage URL cannot be used; the message names --storage (password masked)."""


def check_storage_url(spec: StudySpec) -> None:
    url = spec.storage
    if url.split(":", 1)[0].split("+")[0] not in ("sqlite", "postgresql", "mysql"):
        raise StorageError(
            f"--storage: {mask_url(url)} is not a database URL; use sqlite:///optuna.db, "
            "postgresql://user:password@host/db or mysql://..."
        )


def open_storage(spec: StudySpec) -> RDBStorage:
    """Connect (creating the tables on first use: the parent does it once, before workers)."""
    check_storage_url(spec)
    url = spec.storage
    engine_kwargs = _engine_kwargs(url)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=spec.heartbeat_s,
                grace_period=2 * spec.heartbeat_s,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                    max_retry=spec.max_retries
                ),
            )
    except Exception as error:
        raise StorageError(f"--storage: cannot open {mask_url(url)}: {first_line(error)}") from None


@contextlib.contextmanager
def setup_lock(spec: StudySpec) -> Iterator[None]:
    """Held by a study's parent while it creates or updates what the study's hosts share
    (Optuna's tables, the study, the grid's queue, the MLflow parent run).

    Two hosts started at the same moment on fresh storage would otherwise both create
    the tables (PostgreSQL: "duplicate key ... pg_type_typname_nsp_index"), both queue
    the grid (every point twice) and both create a parent run. A PostgreSQL advisory lock
    or MySQL's GET_LOCK serialises them on the database; SQLite, a file on one machine, a
    file lock beside it.
    """
    url = spec.storage
    key = int.from_bytes(hashlib.blake2b(spec.study_name.encode(), digest_size=8).digest(),
                         "little", signed=True)  # fmt: skip
    if url.startswith("sqlite:///"):
        with _sqlite_file_lock(url, ".setup-lock"):
            yield
        return
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, **_engine_kwargs(url))
    try:
        with engine.connect() as connection:
            if url.startswith("postgresql"):
                connection.execute(sqlalchemy.text(f"SELECT pg_advisory_lock({key})"))
                unlock = f"SELECT pg_advisory_unlock({key})"
            else:
                connection.execute(
                    sqlalchemy.text(f"SELECT GET_LOCK('began-{key}', {MYSQL_LOCK_WAIT_S})")
                )
                unlock = f"SELECT RELEASE_LOCK('began-{key}')"
            try:
                yield
            finally:
                connection.execute(sqlalchemy.text(unlock))
    except sqlalchemy.exc.OperationalError as error:
        raise StorageError(f"--storage: cannot open {mask_url(url)}: {first_line(error)}") from None
    finally:
        engine.dispose()


def _engine_kwargs(url: str) -> dict[str, Any]:
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        # Several worker processes share the file: wait for the lock instead of failing.
        engine_kwargs["connect_args"] = {"timeout": 60}
    else:
        engine_kwargs["pool_pre_ping"] = True  # a restarted server: reconnect, not fail
        if url.startswith("postgresql"):
            engine_kwargs["connect_args"] = {"connect_timeout": 10}  # unreachable: fail fast
    return engine_kwargs


def make_sampler(spec: StudySpec, worker_index: int) -> optuna.samplers.BaseSampler:
    """The sampler by name; each worker gets its own seed so they do not draw alike."""
    seed = spec.seed + worker_index
    if spec.kind == GRID:
        return optuna.samplers.RandomSampler(seed)  # never samples: every point is queued
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if spec.sampler == "tpe":
            return optuna.samplers.TPESampler(seed=seed, multivariate=True)
        if spec.sampler == "random":
            return optuna.samplers.RandomSampler(seed)
        if spec.sampler == "cmaes":
            return optuna.samplers.CmaEsSampler(seed=seed)
        if spec.sampler == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed)
        if spec.sampler == "qmc":
            return optuna.samplers.QMCSampler(seed=seed)
    raise ValueError(f"--sampler: unknown sampler {spec.sampler!r}; choose from {SAMPLERS}")


def load_study(spec: StudySpec, worker_index: int = 0) -> optuna.Study:
    """The study as a worker sees it: its sampler and, explicitly, its pruner (Optuna's
    default would be a median pruner, which `--pruner none` must not get)."""
    return optuna.load_study(
        study_name=spec.study_name,
        storage=open_storage(spec),
        sampler=make_sampler(spec, worker_index),
        pruner=make_pruner(spec.pruner, len(spec.objectives)),
    )


def is_retry(trial: FrozenTrial) -> bool:
    """A queued copy of an earlier trial (its worker died, or Ctrl-C stopped it)."""
    return "failed_trial" in trial.system_attrs


def requeue(study: optuna.Study, trial: FrozenTrial) -> None:
    """Queue a copy of `trial` to run again, continuing its MLflow run from its checkpoint.

    The same bookkeeping as RetryHeartbeatStaleTrialCallback, so a Ctrl-C'd trial and a
    killed one look alike: `failed_trial` is the first trial of the chain.
    """
    history = [*trial.system_attrs.get("retry_history", []), trial.number]
    system_attrs = {**trial.system_attrs, "failed_trial": history[0], "retry_history": history}
    study.add_trial(
        optuna.create_trial(
            state=TrialState.WAITING,
            params=trial.params,
            distributions=trial.distributions,
            user_attrs=trial.user_attrs,
            system_attrs=system_attrs,
        )
    )


@contextlib.contextmanager
def heartbeat(study: optuna.Study, trial: optuna.Trial, interval_s: float) -> Iterator[None]:
    """Beat for `trial` while the block runs, as Study.optimize does for its trials.

    Unlike Optuna's own thread, a failed beat (the database restarting) does not end the
    thread: it beats again at the next interval, so a short outage does not make a
    healthy trial look dead to the other workers.
    """
    storage = storage_of(study)
    stop = threading.Event()

    def beat() -> None:
        while True:
            with contextlib.suppress(Exception):
                storage.record_heartbeat(trial_id_of(trial))
            if stop.wait(interval_s):
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@contextlib.contextmanager
def claim_lock(spec: StudySpec) -> Iterator[None]:
    """Serialises taking trials from the queue where the database cannot.

    Optuna marks a queued trial RUNNING after reading it WAITING under SELECT ... FOR
    UPDATE. PostgreSQL and MySQL lock the row; SQLite ignores FOR UPDATE, and two workers
    that read the row before either writes both take the trial (seen in tests: one grid
    point run twice). On SQLite, a file lock beside the database (one machine) closes that.
    """
    if not spec.storage.startswith("sqlite:///"):
        yield
        return
    with _sqlite_file_lock(spec.storage, ".claim-lock"):
        yield


@contextlib.contextmanager
def _sqlite_file_lock(url: str, suffix: str) -> Iterator[None]:
    """An exclusive lock on a file beside the SQLite database (one machine, many processes)."""
    path = Path(url.removeprefix("sqlite:///") + suffix)
    try:
        handle = open(path, "a")  # noqa: SIM115  (closed below, after the lock)
    except OSError as error:
        raise StorageError(f"--storage: cannot open {url}: {error.strerror}") from None
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def claim_queued_trial(study: optuna.Study, spec: StudySpec) -> optuna.Trial | None:
    """Take a WAITING trial (a grid point or a retry) and mark it RUNNING, or None.

    Study.ask would sample a brand-new trial when the queue is empty; a grid sweep
    must never do that (two workers could then run one point twice), so the queue
    is read directly, under `claim_lock`: two workers never claim the same trial.
    """
    with claim_lock(spec):
        trial_id = pop_waiting_trial_id(study)
    return None if trial_id is None else optuna.Trial(study, trial_id)


def new_trial(study: optuna.Study, spec: StudySpec) -> optuna.Trial:
    """A fresh trial for the sampler to fill (search studies)."""
    with claim_lock(spec), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "heartbeat is supposed to be used with optimize"
        return study.ask()
