"""Reading MLflow for the reports: the one module of `analysis/` that talks to MLflow.

Runs, metric histories and logged images are read here; everything above works on
pandas frames. (Writing, such as logging a report into a study's run, goes through
`began.tracking` like every other write.)
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd

from analysis.sources import AnalysisError, require_sqlite_file
from began.tracking import TrackingError, check_tracking_uri, mask_url
from studies.fleet.connection import absolute_sqlite

_CLIENTS: dict[str, mlflow.MlflowClient] = {}
MAX_RUNS = 50_000  # runs one search returns at most
IMAGES_FOLDER = "images"  # where MlflowClient.log_image puts a run's images
_IMAGE_NAME = re.compile(r"^(?P<key>.+)\+step\+(?P<step>\d+)\+timestamp\+(?P<ts>\d+)\+.*\.png$")


def open_client(tracking_uri: str) -> mlflow.MlflowClient:
    """One client per URI (a SQLite store builds its engine once). A relative SQLite URI
    is made absolute first: MLflow caches stores by URI, so `sqlite:///mlflow.db` read
    again from another folder in the same process would open the first folder's file."""
    typed, tracking_uri = tracking_uri, absolute_sqlite(tracking_uri)
    if tracking_uri not in _CLIENTS:
        require_sqlite_file(typed, "--tracking-uri")
        try:
            check_tracking_uri(tracking_uri)
        except TrackingError as error:
            raise AnalysisError(str(error)) from None
        _CLIENTS[tracking_uri] = mlflow.MlflowClient(tracking_uri)
    return _CLIENTS[tracking_uri]


def search_runs(tracking_uri: str, experiment: str, option: str, tags: dict[str, str]) -> list[Any]:
    """The runs of an experiment whose tags equal `tags`; AnalysisError naming `option`
    when the experiment does not exist."""
    client = open_client(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        where = f"no MLflow experiment {experiment!r} in {mask_url(tracking_uri)}"
        raise AnalysisError(f"{option}: {where}")
    query = " and ".join(f"tags.{key} = '{value}'" for key, value in tags.items())
    return client.search_runs([found.experiment_id], query, max_results=MAX_RUNS)


def get_runs(tracking_uri: str, run_ids: list[str]) -> list[Any]:
    """The runs by id; AnalysisError naming --runs for one that does not exist."""
    client = open_client(tracking_uri)
    runs = []
    for run_id in run_ids:
        try:
            runs.append(client.get_run(run_id))
        except mlflow.exceptions.MlflowException:
            where = mask_url(tracking_uri)
            raise AnalysisError(f"--runs {run_id}: no such run in {where}") from None
    return runs


def run_state(tracking_uri: str, run_id: str) -> tuple[str, int | None, set[str]]:
    """A run's status, its end time and the names of the metrics it logged."""
    run = open_client(tracking_uri).get_run(run_id)
    return run.info.status, run.info.end_time, set(run.data.metrics)


def metric_history(tracking_uri: str, run_id: str, key: str) -> pd.DataFrame:
    """One metric's history as a frame (step, value), the last value of a repeated step."""
    points = open_client(tracking_uri).get_metric_history(run_id, key)
    frame = pd.DataFrame(
        {"step": [p.step for p in points], "value": [p.value for p in points]}
    ).astype({"step": "int64", "value": "float64"})
    # A resumed run may log a step twice (before and after the stop): keep the last.
    return frame.drop_duplicates("step", keep="last").sort_values("step", ignore_index=True)


def logged_images(tracking_uri: str, run_id: str, key: str) -> list[dict[str, Any]]:
    """The images a run logged under `key`: step, timestamp and artifact path of each."""
    try:
        files = open_client(tracking_uri).list_artifacts(run_id, IMAGES_FOLDER)
    except Exception:  # no artifacts folder yet (a run that failed at once)
        return []
    rows = []
    for f in files:
        match = _IMAGE_NAME.match(Path(f.path).name)
        if match and match["key"] == key:
            rows.append({"run_id": run_id, "key": key, "step": int(match["step"]),
                         "timestamp": int(match["ts"]), "path": f.path})  # fmt: skip
    return rows


def download(tracking_uri: str, run_id: str, path: str, folder: Path) -> Path:
    """A local copy of one artifact in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one per image
    return Path(open_client(tracking_uri).download_artifacts(run_id, path, str(folder)))
