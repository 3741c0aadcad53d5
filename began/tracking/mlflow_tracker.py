"""`MlflowTracker`: one MLflow run (a training run, a study's parent run or a trial's
child run) behind the `Tracker` protocol; the only module of `began` that writes to MLflow.

Metrics and images are queued and written by a background thread in batches, so a
training step never waits on the tracking store. Checkpoints go into the run's artifacts
(written in place and atomically when the artifact store is a local folder, uploaded
otherwise). While a training run is started, MLflow's system metrics monitor samples the
machine (CPU, memory, disk, network, and the GPUs where NVML is there) into the run.
"""

from __future__ import annotations

import inspect
import json
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from began.checkpoint import CHECKPOINT_NAME
from began.config import TrainConfig
from began.errors import TrackingError, first_line
from began.retry import retrying
from began.tracking.background_writer import BackgroundWriter
from began.tracking.mlflow_models import (
    DISCRIMINATOR,
    GENERATOR,
    MODEL_PREFIX_TAG,
    ModelRecord,
    log_model,
)
from began.tracking.protocol import (
    DEFAULT_EXPERIMENT,
    ERROR_TAG,
    MAX_METRICS_PER_BATCH,
    MAX_PARAM_LENGTH,
    MAX_PARAMS_PER_BATCH,
    MAX_TAG_LENGTH,
    MODELS_TAG,
    PARENT_RUN_TAG,
    RESUME_COUNT_TAG,
    RUNNING,
    next_resume_count,
    process_identity,
)
from began.tracking.remote_checkpoints import ARTIFACT_DIR as CHECKPOINT_ARTIFACT_DIR
from began.tracking.remote_checkpoints import RemoteCheckpoints
from began.tracking.urls import local_path, mask_url

MAX_DIGEST_LENGTH = 36  # MLflow's datasets table
# MLflow's default: a 1,500-step CPU demo trial (~80 s) gets 8 samples, a GPU run of hours
# thousands, and each sample is one small log_batch. $MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL
# overrides it.
SYSTEM_METRICS_INTERVAL_S = 10.0
DATASET_CONTEXT_TAG = "mlflow.data.context"  # MLflow's own: what the data was used for


class MlflowTracker:
    """One MLflow run: a new one (created by `create`), or an existing one (`run_id`) to
    continue, to add evaluations to, or to end. `tags` are set when the run is created.
    `system_metrics`: sample the machine into the run while this process trains it (from
    `start` until `finish` or `stop_system_metrics`), under the node id host:pid."""

    def __init__(
        self,
        tracking_uri: str | None = None,
        experiment: str = DEFAULT_EXPERIMENT,
        run_name: str | None = None,
        run_id: str | None = None,
        parent_run_id: str | None = None,
        run_option: str = "--resume",
        tags: dict[str, str] | None = None,
        system_metrics: bool = True,
    ) -> None:
        import mlflow
        from mlflow.entities import Metric

        self._metric_type = Metric
        try:
            self.client = mlflow.MlflowClient(tracking_uri)  # a database store connects now
        except Exception as error:
            where = mask_url(tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", ""))
            raise TrackingError(
                f"--tracking-uri {where}: cannot open the tracking store ({first_line(error)})"
            ) from None
        self.tracking_uri = self.client.tracking_uri
        self._experiment, self._run_name = experiment, run_name
        self._tags = dict(tags or {})
        if parent_run_id:
            self._tags[PARENT_RUN_TAG] = parent_run_id
        self.run_id = ""  # a new run is created by create(), before the data loads
        self.experiment_id = ""
        self.artifact_dir: Path | None = None
        self._dataset: tuple[str, str] | None = None  # (name, digest) once logged
        self._system_metrics = system_metrics
        self._monitor: Any = None  # MLflow's SystemMetricsMonitor while the run trains here
        if run_id is not None:
            try:
                self._attach(self.client.get_run(run_id))
            except Exception as error:
                raise TrackingError(
                    f"{run_option} {run_id}: no such run in {mask_url(self.tracking_uri)}"
                ) from error

    def _attach(self, run: Any) -> None:
        self.run_id = run.info.run_id
        self.experiment_id = run.info.experiment_id
        self.artifact_dir = local_path(run.info.artifact_uri)
        self._writer = BackgroundWriter(self._write)
        self._remote = RemoteCheckpoints(self.client, self.run_id, self._enqueue)

    def _enqueue(self, task: Callable[[], None]) -> None:
        self._writer.add_task(task)

    @property
    def status(self) -> str | None:
        if not self.run_id:
            return None
        run = with_retries(lambda: self.client.get_run(self.run_id), f"reading run {self.run_id}")
        return run.info.status

    def create(self) -> str:
        """Create the run now (before the data loads) so that its id can be recorded."""
        if not self.run_id:
            experiment = with_retries(
                lambda: experiment_id(self.client, self._experiment),
                f"--experiment {self._experiment}",
            )
            run = with_retries(
                lambda: self.client.create_run(
                    experiment, run_name=self._run_name, tags=self._tags
                ),  # fmt: skip
                "creating the run",
            )
            self._attach(run)
        return self.run_id

    def reopen(self) -> None:
        """Mark a run that had ended RUNNING again (a study that continues)."""
        with_retries(
            lambda: self.client.update_run(self.run_id, status=RUNNING),
            f"reopening run {self.run_id}",
        )

    def _write(self, metrics: list[Any], tasks: list[Callable[[], None]]) -> None:
        for start in range(0, len(metrics), MAX_METRICS_PER_BATCH):
            self.client.log_batch(
                self.run_id, metrics=metrics[start : start + MAX_METRICS_PER_BATCH]
            )
        while tasks:
            tasks[0]()
            tasks.pop(0)

    def start(self, cfg: TrainConfig, tags: dict[str, str], resumed: bool) -> None:
        """Mark the training run RUNNING with its config (once) and `tags`."""
        self.create()
        run = with_retries(lambda: self.client.get_run(self.run_id), f"reading run {self.run_id}")
        # Counted once here, not in the retried writes below.
        tags = {**tags, RESUME_COUNT_TAG: next_resume_count(run.data.tags, run.data.params)}
        with_retries(lambda: self._start(cfg, tags, run), f"starting run {self.run_id}")
        if self._system_metrics:
            self._start_system_metrics()

    def _start_system_metrics(self) -> None:
        """MLflow's monitor thread for this run, continuing the run's system steps (a
        resumed run adds to them). A machine it cannot sample costs the run its system
        metrics, never the run itself."""
        if self._monitor is not None:
            return
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            if "tracking_uri" not in inspect.signature(SystemMetricsMonitor).parameters:
                # Before MLflow 3.7 the monitor writes to the process's default store,
                # which need not be this run's.
                raise RuntimeError("they need MLflow >= 3.7")
            monitor = SystemMetricsMonitor(
                self.run_id, sampling_interval=SYSTEM_METRICS_INTERVAL_S, resume_logging=True,
                node_id=process_identity(), tracking_uri=self.tracking_uri,
            )  # fmt: skip
            monitor.start()
        except Exception as error:  # psutil missing, a store that refuses the first read
            warnings.warn(f"run {self.run_id}: no system metrics: {first_line(error)}",
                          stacklevel=2)  # fmt: skip
            return
        self._monitor = monitor

    def stop_system_metrics(self) -> None:
        """Stop the monitor thread and write its last samples (nothing when none runs)."""
        monitor, self._monitor = self._monitor, None
        if monitor is not None:
            monitor.finish()

    def _start(self, cfg: TrainConfig, tags: dict[str, str], run: Any) -> None:
        if run.info.status != RUNNING:
            self.client.update_run(self.run_id, status=RUNNING)
        # The tags first, in one write (one transaction): a start counts exactly when its
        # process tag and resume count are stored, whatever moment a kill lands. (MLflow's
        # log_batch commits params and tags in separate transactions, so params could not
        # be that mark.)
        self._set_tags(tags)
        if not run.data.params:
            # The params stay as first logged (MLflow refuses a changed one); what may differ
            # on a restart (the device) is a tag. config.json first: a run with params has it.
            self.client.log_text(self.run_id, cfg.to_json(), "config.json")
            self.client.log_batch(self.run_id, params=_params(cfg.to_dict()))

    def log_params(self, params: dict[str, Any]) -> None:
        """Params, each cut to MLflow's length limit (MLflow refuses changing a logged one)."""
        with_retries(lambda: self._log_params(params), f"logging params of run {self.run_id}")

    def _log_params(self, params: dict[str, Any]) -> None:
        entries = _params(params)
        for start in range(0, len(entries), MAX_PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=entries[start : start + MAX_PARAMS_PER_BATCH])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        entries = [self._metric_type(k, float(v), now, step) for k, v in metrics.items()]
        self._writer.add_metrics(entries)

    def log_image(self, key: str, image: np.ndarray, step: int) -> None:
        self._writer.add_task(
            lambda: self.client.log_image(self.run_id, image, key=key, step=step, synchronous=True)
        )

    def log_text(self, text: str, artifact_file: str) -> None:
        self._writer.add_task(lambda: self.client.log_text(self.run_id, text, artifact_file))

    def log_artifacts(self, folder: Path | str, artifact_path: str) -> None:
        """Upload a folder's files under `artifact_path` (now, not in the background)."""
        self.close()
        with_retries(
            lambda: self.client.log_artifacts(self.run_id, str(folder), artifact_path),
            f"uploading {folder} to run {self.run_id}",
        )

    def close(self) -> None:
        """Write everything queued, leaving the run's status as it is."""
        self._writer.close()
        self._writer = BackgroundWriter(self._write)

    def checkpoint_dir(self) -> Path:
        if self.artifact_dir is not None:
            return self.artifact_dir / CHECKPOINT_ARTIFACT_DIR  # written in place, atomically
        return self._remote.local_dir

    def checkpoint_saved(self, path: Path) -> None:
        if self.artifact_dir is None:  # remote store: upload copies in the background
            self._remote.saved(path)

    def latest_checkpoint(self) -> Path | None:
        if not self.run_id:
            return None  # a run not created yet has no checkpoint
        local = self.checkpoint_dir() / CHECKPOINT_NAME
        if local.is_file():
            return local
        if self.artifact_dir is not None:
            return None
        return self._remote.latest()

    def log_dataset(self, name: str, digest: str, source: str, profile: dict[str, Any]) -> None:
        """The run's training data as an MLflow dataset input: the runs table's Dataset
        column and the run's Datasets panel show it, `search_runs` finds runs by it."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        source_type = "builtin" if source.startswith("builtin:") else "local"
        dataset = Dataset(
            name=name, digest=digest[:MAX_DIGEST_LENGTH], source_type=source_type,
            source=json.dumps({"uri": source}), profile=json.dumps(profile),
        )  # fmt: skip
        used_for = DatasetInput(dataset, [InputTag(DATASET_CONTEXT_TAG, "training")])
        with_retries(
            lambda: self.client.log_inputs(self.run_id, datasets=[used_for]),
            f"logging the dataset of run {self.run_id}",
        )
        self._dataset = (name, dataset.digest)

    def log_models(
        self, G: nn.Module, D: nn.Module, cfg: TrainConfig, step: int, metrics: dict[str, float]
    ) -> None:
        """G and D as logged models named for the run (`mlflow_models`), at `step`, with
        `metrics` (the final evaluation) linked to them."""
        self._writer.close()  # everything queued is written before the slow model upload
        run = with_retries(lambda: self.client.get_run(self.run_id), f"reading run {self.run_id}")
        prefix = run.data.tags.get(MODEL_PREFIX_TAG) or run.info.run_name or self.run_id
        record = ModelRecord(prefix, step, metrics, self._dataset)
        for model, role in ((G, GENERATOR), (D, DISCRIMINATOR)):
            with_retries(
                lambda model=model, role=role: log_model(
                    self.client, self.experiment_id, self.run_id, model, role, cfg, record
                ),
                f"logging the {role} model",
            )
        self._writer = BackgroundWriter(self._write)
        self.set_tags({MODELS_TAG: "true"})

    def has_models(self) -> bool:
        run = with_retries(lambda: self.client.get_run(self.run_id), f"reading run {self.run_id}")
        return run.data.tags.get(MODELS_TAG) == "true"

    def set_tags(self, tags: dict[str, Any]) -> None:
        with_retries(lambda: self._set_tags(tags), "tagging the run")

    def _set_tags(self, tags: dict[str, Any]) -> None:
        self.client.log_batch(self.run_id, tags=_tags(tags))

    def finish(self, status: str, error: str | None = None) -> None:
        """Write what is queued, then end the run with `status` (and why, if it failed)."""
        if not self.run_id:
            return  # never created: nothing to mark
        try:
            self.stop_system_metrics()  # its last samples land while the run is RUNNING
            self._writer.close()
        finally:
            if error is not None:
                self.set_tags({ERROR_TAG: error})
            with_retries(
                lambda: self.client.set_terminated(self.run_id, status=status),
                f"marking run {self.run_id} {status}",
            )
            self._remote.remove()


def _params(params: dict[str, Any]) -> list[Any]:
    """MLflow Param entries, each value cut to the stores' length limit."""
    from mlflow.entities import Param

    return [Param(key, str(value)[:MAX_PARAM_LENGTH]) for key, value in params.items()]


def _tags(tags: dict[str, Any]) -> list[Any]:
    from mlflow.entities import RunTag

    return [RunTag(key, str(value)[:MAX_TAG_LENGTH]) for key, value in tags.items()]


def find_runs(tracking_uri: str, experiment: str, tags: dict[str, str]) -> list[tuple[str, dict]]:
    """(run id, tags) of the experiment's runs whose tags include `tags`, oldest first: how
    a study finds a run that a killed process created but never recorded."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    found = with_retries(lambda: client.get_experiment_by_name(experiment), "reading runs")
    if found is None:
        return []
    query = " and ".join(f"tags.{key} = '{value}'" for key, value in tags.items())
    runs = with_retries(
        lambda: client.search_runs([found.experiment_id], query, order_by=["start_time ASC"]),
        f"searching the runs of {experiment}",
    )
    return [(run.info.run_id, dict(run.data.tags)) for run in runs]


def run_exists(tracking_uri: str, run_id: str) -> bool:
    """Whether the store holds the run `run_id` (a store that cannot be read holds none)."""
    import mlflow

    try:
        mlflow.MlflowClient(tracking_uri).get_run(run_id)
    except Exception:
        return False
    return True


def experiment_id(client: Any, name: str) -> str:
    """The id of the experiment `name`, created the first time; a deleted one is an error."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            raise TrackingError(f"--experiment {name}: experiment is deleted; restore or rename")
        return experiment.experiment_id
    return client.create_experiment(name)


def with_retries(action: Callable[[], Any], what: str) -> Any:
    """Run a store request under the retry policy of `began.retry` (a busy SQLite file, a
    restarting server); after the last attempt, TrackingError says what failed."""
    try:
        return retrying(action, give_up_on=(TrackingError,))
    except TrackingError:
        raise
    except Exception as error:
        raise TrackingError(f"tracking store: {what} failed: {first_line(error)}") from error
