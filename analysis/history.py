"""Metric histories and logged images from MLflow, fetched in parallel and cached.

A 50-run report needs 300 metric histories: fetched one by one they take minutes over
a remote server. Here they are fetched by a thread pool (the calls wait on I/O) and
kept on disk per run, keyed by the run's status and end time: a finished run's history
never changes, so the second report reads Parquet files; a running run is always
refetched. The cache holds data only (Parquet, never pickles): a cache folder someone
else can write to cannot make the report run their code.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd

from analysis import store
from analysis.sources import default_tracking_uri

THREADS = 8
_MEMORY: dict[tuple[str, str, str], pd.DataFrame] = {}  # (uri, run id, key) -> frame


def default_cache_dir() -> Path:
    """$BEGAN_CACHE_DIR/analysis, else $XDG_CACHE_HOME/began/analysis, else ~/.cache/..."""
    explicit = os.environ.get("BEGAN_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser() / "analysis"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "began" / "analysis"


def _store_dir(cache_dir: Path | None, tracking_uri: str) -> Path:
    digest = hashlib.sha256(tracking_uri.encode()).hexdigest()[:12]  # run ids are per store
    return (cache_dir or default_cache_dir()) / digest


def load_history(
    run_ids: Iterable[str],
    keys: Iterable[str],
    tracking_uri: str | None = None,
    cache_dir: Path | None = None,
) -> pd.DataFrame:
    """Long frame of metric histories: run_id, key, step, value (sorted by run, key, step)."""
    uri = tracking_uri or default_tracking_uri()
    store.open_client(uri)  # a bad URI: one clear error here, not one per thread
    ids = [str(r) for r in dict.fromkeys(run_ids) if isinstance(r, str) and r]
    keys = list(dict.fromkeys(keys))
    folder = _store_dir(cache_dir, uri)
    with ThreadPoolExecutor(THREADS) as pool:
        frames = list(pool.map(lambda r: _run_history(uri, r, keys, folder), ids))
    columns = ["run_id", "key", "step", "value"]
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in zip(columns, _DTYPES, strict=True)})
    return pd.concat(frames, ignore_index=True)[columns]


_DTYPES = ["object", "object", "int64", "float64"]


def _run_history(uri: str, run_id: str, keys: list[str], folder: Path) -> pd.DataFrame:
    status, end_time, logged = store.run_state(uri, run_id)
    finished = status in ("FINISHED", "FAILED", "KILLED")
    stamp = f"{status}:{end_time}"
    path = _cache_path(folder, run_id, stamp)
    cached = _read_cache(path) if finished else {}
    wanted = [k for k in keys if k in logged]  # never logged: nothing to fetch
    missing = [k for k in wanted if k not in cached]
    for key in missing:
        memo = _MEMORY.get((uri, run_id, key)) if finished else None
        cached[key] = memo if memo is not None else store.metric_history(uri, run_id, key)
        if finished:
            _MEMORY[(uri, run_id, key)] = cached[key]
    if finished and missing:
        _write_cache(path, cached)
    frames = [cached[k].assign(run_id=run_id, key=k) for k in wanted if len(cached[k])]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _cache_path(folder: Path, run_id: str, stamp: str) -> Path:
    """One file per run and state: a run that ended again (resumed) gets a new name."""
    return folder / f"{run_id}.{hashlib.sha256(stamp.encode()).hexdigest()[:12]}.parquet"


def _read_cache(path: Path) -> dict[str, pd.DataFrame]:
    try:
        stored = pd.read_parquet(path)  # (key, step, value): data, nothing that runs
    except Exception:  # absent, truncated or from another pandas: fetch again
        return {}
    return {
        key: group[["step", "value"]].reset_index(drop=True)
        for key, group in stored.groupby("key", sort=False)
    }


def _write_cache(path: Path, frames: dict[str, pd.DataFrame]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    long = pd.concat(
        [frame.assign(key=key) for key, frame in frames.items()] or [pd.DataFrame()],
        ignore_index=True,
    )
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    long.reindex(columns=["key", "step", "value"]).to_parquet(partial, index=False)
    os.replace(partial, path)  # atomic: a concurrent report never reads half a file
    run_id = path.name.split(".", 1)[0]
    for stale in path.parent.glob(f"{run_id}.*.parquet"):  # the run's earlier states
        if stale != path:
            stale.unlink(missing_ok=True)


def list_images(
    run_ids: Iterable[str], key: str = "samples", tracking_uri: str | None = None
) -> pd.DataFrame:
    """The images logged with `log_image`: run_id, key, step, artifact path."""
    uri = tracking_uri or default_tracking_uri()
    ids = [r for r in dict.fromkeys(run_ids) if isinstance(r, str) and r]
    with ThreadPoolExecutor(THREADS) as pool:
        rows = [row for found in pool.map(lambda r: store.logged_images(uri, r, key), ids)
                for row in found]  # fmt: skip
    frame = pd.DataFrame(rows, columns=["run_id", "key", "step", "timestamp", "path"])
    # A resumed run can log one step twice: the later image is the one that counts.
    frame = frame.sort_values(["run_id", "step", "timestamp"])
    return frame.drop_duplicates(["run_id", "step"], keep="last").reset_index(drop=True)


def fetch_image(
    run_id: str, path: str, tracking_uri: str | None = None, cache_dir: Path | None = None
) -> Path:
    """A local copy of one logged image (names carry a UUID: a cached copy never goes stale)."""
    uri = tracking_uri or default_tracking_uri()
    target = _store_dir(cache_dir, uri) / "images" / run_id
    local = target / Path(path).name
    if not local.is_file():
        fetched = store.download(uri, run_id, path, target)
        if fetched != local:
            os.replace(fetched, local)
    return local
