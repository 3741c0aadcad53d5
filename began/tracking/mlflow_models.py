"""A run's networks as MLflow 3 LoggedModels, the generator in the Model Registry, and a
registered or logged generator loaded back (`began.sample --model models:/NAME/latest`).

A logged model is named for what it is (`<study>-t<trial>-generator`, or the run's name
and the role for a single run), logged at the step it was saved, with the run's config
as its params and the final evaluation as its metrics, so that its page in `mlflow ui`
says what it is without opening the run.
"""

from __future__ import annotations

import copy
import json
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from began.config import TrainConfig
from began.errors import TrackingError

GENERATOR, DISCRIMINATOR = "generator", "discriminator"
ROLE_TAG = "role"  # on a logged model: GENERATOR or DISCRIMINATOR
MODEL_PREFIX_TAG = "model_prefix"  # on a run: what its logged models' names start with
MODEL_VERSIONS_TAG = "mlflow.modelVersions"  # MLflow's own, on a logged model: its versions


@dataclass(frozen=True)
class ModelRecord:
    """What a logged model carries besides its weights."""

    prefix: str  # "<study>-t3", or a single run's name
    step: int  # the training step it was saved at
    metrics: dict[str, float]  # the final evaluation, linked to the model
    dataset: tuple[str, str] | None = None  # (name, digest) the metrics were computed on


def log_model(
    client: Any, experiment_id: str, run_id: str, model: nn.Module, role: str,
    cfg: TrainConfig, record: ModelRecord,
) -> str:  # fmt: skip
    """Log `model` as the run's logged model `<prefix>-<role>`; returns its model id.

    mlflow.pytorch.log_model reads the tracking URI and experiment from process-wide
    settings (mlflow.set_tracking_uri, set_experiment), so two runs in one process,
    or a caller that set them, could send the model elsewhere. Saving locally and
    uploading through the run's own client cannot be redirected.
    """
    import mlflow.pytorch
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus, Metric

    example = (
        torch.zeros(2, cfg.hidden)
        if role == GENERATOR
        else torch.zeros(2, 3, cfg.image_size, cfg.image_size)
    )
    model = copy.deepcopy(model).cpu().eval()  # a copy: the caller's model stays where it is
    for p in model.parameters():
        # Storage of its own: a packed trial's weights are slices of its pack's tensor.
        p.data = p.data.clone()
    params = {key: str(value) for key, value in cfg.to_dict().items()}
    logged = client.create_logged_model(
        experiment_id, name=f"{record.prefix}-{role}", source_run_id=run_id,
        tags={ROLE_TAG: role}, params=params, model_type="pytorch",
    )  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="began-model-") as folder:
        path = Path(folder) / role
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mlflow.pytorch.save_model(
                model,
                str(path),
                serialization_format="pt2",
                # Explicit requirements: inferring them imports the world and takes seconds.
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
                code_paths=[str(Path(__file__).parents[1])],  # the began package
                input_example=example.numpy(),
            )
        client.log_model_artifacts(logged.model_id, str(path))
    client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
    client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=record.step)])
    if record.metrics:  # linked to the model (its page's Metrics) and to the data
        name, digest = record.dataset or (None, None)
        now = int(time.time() * 1000)
        linked = [Metric(key, float(value), now, record.step, model_id=logged.model_id,
                         dataset_name=name, dataset_digest=digest)
                  for key, value in record.metrics.items()]  # fmt: skip
        client.log_batch(run_id, metrics=linked)
    return logged.model_id


def run_generator(client: Any, run_id: str) -> Any | None:
    """The generator a run logged last (an MLflow LoggedModel), or None. A run logged
    before models carried their role named its generator plainly `generator`."""
    run = client.get_run(run_id)
    outputs = run.outputs.model_outputs if run.outputs else []
    for output in sorted(outputs, key=lambda o: o.step, reverse=True):
        model = client.get_logged_model(output.model_id)
        if model.tags.get(ROLE_TAG) == GENERATOR or model.name == GENERATOR:
            return model
    return None


def register_generator(
    tracking_uri: str, run_id: str, name: str, tags: dict[str, str], description: str
) -> str:
    """Register the run's generator as a new version of the registered model `name`
    (created the first time); returns the version."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    model = run_generator(client, run_id)
    if model is None:
        raise TrackingError(f"run {run_id} has no logged generator to register")
    model_id = model.model_id
    if client.search_registered_models(f"name = '{name}'") == []:
        client.create_registered_model(name, description=description)
    version = client.create_model_version(
        name, source=model.artifact_location, run_id=run_id, tags=tags,
        description=description, model_id=model_id,
    )  # fmt: skip
    # As mlflow.register_model does: the logged model lists its versions (its page and
    # the Logged models table show them).
    listed = json.loads(model.tags.get(MODEL_VERSIONS_TAG, "[]"))
    listed.append({"name": name, "version": str(version.version)})
    client.set_logged_model_tags(model_id, {MODEL_VERSIONS_TAG: json.dumps(listed)})
    return str(version.version)


def model_location(client: Any, uri: str) -> tuple[str, int]:
    """`models:/NAME/latest`, `models:/NAME/VERSION` (registered) or `models:/MODEL_ID`
    (logged) -> where its files are and the z size it takes; TrackingError names what is
    missing."""
    rest = uri.removeprefix("models:/")
    if rest == uri or not rest:
        raise TrackingError(f"--model {uri}: expected models:/NAME/latest, models:/NAME/3 "
                            "or models:/MODEL_ID")  # fmt: skip
    if "/" not in rest:
        try:
            model = client.get_logged_model(rest)
        except Exception:
            raise TrackingError(f"--model {uri}: no logged model {rest}") from None
        return model.artifact_location, int(model.params["hidden"])
    name, version = rest.split("/", 1)
    versions = client.search_model_versions(f"name = '{name}'")
    if not versions:
        raise TrackingError(f"--model {uri}: no registered model named {name!r}")
    if version == "latest":
        chosen = max(versions, key=lambda v: int(v.version))
    else:
        found = [v for v in versions if str(v.version) == version]
        if not found:
            raise TrackingError(f"--model {uri}: {name} has no version {version}")
        chosen = found[0]
    # The z size from the run that trained it (the registry keeps the run, not the params).
    hidden = client.get_run(chosen.run_id).data.params["hidden"]
    return chosen.source, int(hidden)


def load_generator(tracking_uri: str | None, uri: str) -> tuple[nn.Module, int]:
    """A registered or logged generator (see `model_location`) and its z size."""
    import mlflow.artifacts
    import mlflow.pytorch

    location, hidden = model_location(mlflow.MlflowClient(tracking_uri), uri)
    with tempfile.TemporaryDirectory(prefix="began-model-") as folder:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=location, dst_path=folder, tracking_uri=tracking_uri
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            network = mlflow.pytorch.load_model(local, map_location="cpu")
    return network, hidden
