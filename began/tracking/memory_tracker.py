"""`MemoryTracker`: a `Tracker` that keeps a run's record in memory, for tests and for
code that trains without MLflow. It behaves as `MlflowTracker` does where the loop can
tell: no run id before `create`, checkpoints under the run's own folder, a status."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from began.checkpoint import CHECKPOINT_NAME
from began.config import TrainConfig
from began.tracking.protocol import (
    ERROR_TAG,
    MODELS_TAG,
    RESUME_COUNT_TAG,
    RUNNING,
    next_resume_count,
)
from began.tracking.remote_checkpoints import ARTIFACT_DIR as CHECKPOINT_ARTIFACT_DIR

_NEW_IDS = itertools.count()


class MemoryTracker:
    """One run's record in memory; its checkpoints and artifacts go under `root/run_id`.

    `run_id` names an existing run to continue (as `MlflowTracker(run_id=...)` does);
    without it, `create` makes a new one.
    """

    def __init__(self, root: Path | str, run_id: str | None = None) -> None:
        self.run_id = run_id or ""
        self.root = Path(root)
        self.params: dict[str, Any] = {}
        self.tags: dict[str, str] = {}
        self.metrics: dict[str, list[tuple[int, float]]] = {}
        self.images: list[tuple[str, int, np.ndarray]] = []
        self.texts: dict[str, str] = {}
        self.models_logged = 0  # how many times log_models was called
        self.model_records: list[tuple[int, dict[str, float]]] = []  # (step, metrics) each time
        self.datasets: list[dict[str, Any]] = []
        self._status: str | None = RUNNING if run_id else None
        self.error: str | None = None
        self.starts: list[bool] = []  # the `resumed` flag of every start

    @property
    def status(self) -> str | None:
        return self._status

    def create(self) -> str:
        if not self.run_id:
            self.run_id = f"memory-run-{next(_NEW_IDS)}"
            self._status = RUNNING
        return self.run_id

    def start(self, cfg: TrainConfig, tags: dict[str, str], resumed: bool) -> None:
        self.create()
        self.tags.update({**tags, RESUME_COUNT_TAG: next_resume_count(self.tags, self.params)})
        if not self.params:
            self.texts["config.json"] = cfg.to_json()  # as MlflowTracker logs it
            self.log_params(cfg.to_dict())
        self.starts.append(resumed)
        self._status = RUNNING

    def log_params(self, params: dict[str, Any]) -> None:
        self.params.update(params)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for name, value in metrics.items():
            self.metrics.setdefault(name, []).append((step, float(value)))

    def log_image(self, key: str, image: np.ndarray, step: int) -> None:
        self.images.append((key, step, image))

    def log_text(self, text: str, artifact_file: str) -> None:
        self.texts[artifact_file] = text

    def log_artifacts(self, folder: Path | str, artifact_path: str) -> None:
        shutil.copytree(folder, self._folder() / artifact_path, dirs_exist_ok=True)

    def _folder(self) -> Path:
        return self.root / self.create()

    def checkpoint_dir(self) -> Path:
        return self._folder() / CHECKPOINT_ARTIFACT_DIR

    def checkpoint_saved(self, path: Path) -> None:
        pass

    def latest_checkpoint(self) -> Path | None:
        if not self.run_id:
            return None  # a run not created yet has no checkpoint
        path = self.checkpoint_dir() / CHECKPOINT_NAME
        return path if path.is_file() else None

    def log_dataset(self, name: str, digest: str, source: str, profile: dict[str, Any]) -> None:
        self.datasets.append({"name": name, "digest": digest, "source": source, **profile})

    def log_models(
        self, G: nn.Module, D: nn.Module, cfg: TrainConfig, step: int, metrics: dict[str, float]
    ) -> None:
        self.models_logged += 1
        self.model_records.append((step, dict(metrics)))
        self.tags[MODELS_TAG] = "true"

    def has_models(self) -> bool:
        return self.tags.get(MODELS_TAG) == "true"

    def set_tags(self, tags: dict[str, Any]) -> None:
        self.tags.update({key: str(value) for key, value in tags.items()})

    def finish(self, status: str, error: str | None = None) -> None:
        if not self.run_id:
            return  # never created: nothing to mark (as MlflowTracker)
        if error is not None:
            self.tags[ERROR_TAG] = error  # the tag MlflowTracker writes
        self._status, self.error = status, error

    def close(self) -> None:
        pass

    def stop_system_metrics(self) -> None:
        pass  # it samples nothing

    def history(self, name: str) -> list[tuple[int, float]]:
        return self.metrics.get(name, [])
