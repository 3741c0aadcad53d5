"""Where a study's records live: the storage URL, its SQLAlchemy engine and the locks that
serialise what the database itself cannot (a study's set-up, taking trials and retrying
stale ones, across hosts). Heartbeats and retries: `studies.fleet.queue`."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage

from began.errors import first_line
from began.tracking import mask_url
from studies.spec import StudySpec

# How long a MySQL lock waits for another host's set-up or claim to finish, in seconds.
MYSQL_LOCK_WAIT_S = 600
SQLITE_BUSY_WAIT_S = 60  # a worker waits this long for another process's write to the file
POSTGRES_CONNECT_TIMEOUT_S = 10  # an unreachable server: a clear error, soon
SQLITE_PREFIX = "sqlite:///"


class StorageError(ValueError):
    """The storage URL cannot be used; the message names --storage (password masked)."""


def absolute_sqlite(url: str) -> str:
    """sqlite:///optuna.db -> sqlite:////abs/path/optuna.db: every worker, and every store
    cached in this process, then opens the same file whatever its working directory."""
    relative = url.startswith(SQLITE_PREFIX) and not url.startswith(SQLITE_PREFIX + "/")
    if relative and ":memory:" not in url:
        return SQLITE_PREFIX + str(Path(url[len(SQLITE_PREFIX) :]).resolve())
    return url


def missing_sqlite_file(url: str) -> bool:
    """A SQLite URL whose file does not exist: opening it would create an empty database,
    so commands that read a store refuse it instead."""
    return url.startswith(SQLITE_PREFIX) and not Path(url[len(SQLITE_PREFIX) :]).is_file()


def check_storage_url(url: str) -> None:
    if url.split(":", 1)[0].split("+")[0] not in ("sqlite", "postgresql", "mysql"):
        raise StorageError(
            f"--storage: {mask_url(url)} is not a database URL; use sqlite:///optuna.db, "
            "postgresql://user:password@host/db or mysql://..."
        )


def open_storage(spec: StudySpec) -> RDBStorage:
    """Connect (creating the tables on first use: the parent does it once, before workers)."""
    check_storage_url(spec.storage)
    url = spec.storage
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            # Heartbeats are written and judged by studies.fleet.queue (which also fails trials that
            # never beat); the storage's own interval only marks it as one that beats.
            return RDBStorage(url, engine_kwargs=engine_kwargs(url),
                              heartbeat_interval=spec.heartbeat_s)  # fmt: skip
    except Exception as error:
        raise StorageError(f"--storage: cannot open {mask_url(url)}: {first_line(error)}") from None


def engine_kwargs(url: str) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        # Several worker processes share the file: wait for the lock instead of failing.
        kwargs["connect_args"] = {"timeout": SQLITE_BUSY_WAIT_S}
    else:
        kwargs["pool_pre_ping"] = True  # a restarted server: reconnect, not fail
        if url.startswith("postgresql"):
            kwargs["connect_args"] = {"connect_timeout": POSTGRES_CONNECT_TIMEOUT_S}
    return kwargs


def setup_lock(spec: StudySpec) -> contextlib.AbstractContextManager[None]:
    """Held by a study's parent while it creates or updates what the study's hosts share
    (Optuna's tables, the study, the grid's queue, the MLflow parent run).

    Two hosts started at the same moment on fresh storage would otherwise both create
    the tables (PostgreSQL: "duplicate key ... pg_type_typname_nsp_index"), both queue
    the grid (every point twice) and both create a parent run.
    """
    return study_lock(spec, "setup")


def claim_lock(spec: StudySpec) -> contextlib.AbstractContextManager[None]:
    """Held by a worker while it takes a queued trial or retries stale ones.

    Taking a trial: Optuna marks a queued trial RUNNING after reading it WAITING under
    SELECT ... FOR UPDATE, which SQLite ignores (two workers both took one grid point).
    Retrying a stale trial reads "no retry queued yet" and then queues one: two workers
    (or hosts) that both found the trial stale would both queue a retry, and the point
    would run twice (seen on PostgreSQL when a killed machine's study restarted).
    """
    return study_lock(spec, "claim")


@contextlib.contextmanager
def study_lock(spec: StudySpec, purpose: str) -> Iterator[None]:
    """An exclusive lock on one `purpose` of one study, across every process and host of
    the study: PostgreSQL's advisory lock or MySQL's GET_LOCK on the study's database
    (the server drops it when its holder dies), a file lock beside a SQLite file."""
    url = spec.storage
    if url.startswith(SQLITE_PREFIX):
        with sqlite_file_lock(url, f".{purpose}-lock"):
            yield
        return
    import sqlalchemy

    name = f"{purpose}:{spec.study_name}".encode()
    key = int.from_bytes(hashlib.blake2b(name, digest_size=8).digest(), "little", signed=True)
    if url.startswith("postgresql"):
        lock, unlock = f"SELECT pg_advisory_lock({key})", f"SELECT pg_advisory_unlock({key})"
    else:
        lock = f"SELECT GET_LOCK('began-{key}', {MYSQL_LOCK_WAIT_S})"
        unlock = f"SELECT RELEASE_LOCK('began-{key}')"
    try:
        connection = _lock_engine(url).connect()
        connection.execute(sqlalchemy.text(lock))
    except sqlalchemy.exc.OperationalError as error:
        raise StorageError(f"--storage: cannot open {mask_url(url)}: {first_line(error)}") from None
    try:
        yield
    finally:
        try:
            connection.execute(sqlalchemy.text(unlock))
            connection.commit()
        except sqlalchemy.exc.SQLAlchemyError:
            connection.invalidate()  # a pooled connection must not keep the lock
        connection.close()


@functools.cache
def _lock_engine(url: str) -> Any:
    """One engine per storage URL and process for the locks (a lock is taken at every
    claim: a new engine each time would open a new pool each time)."""
    import sqlalchemy

    return sqlalchemy.create_engine(url, **engine_kwargs(url))


@contextlib.contextmanager
def sqlite_file_lock(url: str, suffix: str) -> Iterator[None]:
    """An exclusive lock on a file beside the SQLite database (one machine, many processes)."""
    path = Path(url.removeprefix(SQLITE_PREFIX) + suffix)
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
