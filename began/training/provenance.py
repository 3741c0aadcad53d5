"""Where a run came from: code version, package versions, device, dataset, feature
network. Logged as run tags when a run starts (`run_tags`)."""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from began.config import TrainConfig
from began.data import ImageSet
from began.data.sampler import holdout_count
from began.metrics import get_metric, inception, parse_metrics
from began.tracking import process_identity, slurm_task

PACKAGES = ("began-toolkit", "torch", "torchvision", "mlflow", "optuna", "numpy", "scikit-image")


def git_commit() -> str:
    """The commit of the checkout this code runs from, '+dirty' if it has changes."""
    root = Path(__file__).resolve().parents[2]  # the checkout holding began/
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def package_versions() -> str:
    versions = []
    for name in PACKAGES:
        try:
            versions.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return f"python=={platform.python_version()} " + " ".join(versions)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    processor = platform.processor() or platform.machine()
    return f"cpu ({processor}, {torch.get_num_threads()} threads)"


BUILTIN_NOTE = (
    "built-in demo: the 100 faces of skimage.data.lfw_subset(), 25x25 grayscale, "
    "upscaled and kept despite being grayscale"
)


PROCESS_TAG = "process"  # host:pid of the process that last started (or continued) the run
SLURM_TASK_TAG = "slurm_task"  # JOB_TASK of the Slurm task that did, where one did


def run_tags(cfg: TrainConfig, dataset: ImageSet, device: torch.device) -> dict[str, str]:
    """The tags a run starts with: what it ran on and what it was trained and scored on."""
    tags = {
        PROCESS_TAG: process_identity(),
        "git_commit": git_commit(),
        "packages": package_versions(),
        "device": str(device),
        "device_name": device_name(device),
        "dataset_path": dataset.source,
        "dataset_images": str(dataset.kept),
        "dataset_fingerprint": dataset.fingerprint,
        "dataset_skipped_grayscale": str(dataset.skipped_grayscale),
        "dataset_skipped_unreadable": str(dataset.skipped_unreadable),
        "dataset_grayscale_kept": str(dataset.grayscale_kept).lower(),
        "holdout_images": str(holdout_count(cfg.holdout, dataset.kept)),
    }
    if task := slurm_task():
        tags[SLURM_TASK_TAG] = task
    if any(get_metric(r.name).uses_feature_network for r in parse_metrics(cfg.metrics)):
        # Metrics on features (FID, KID, precision, ...) compare only between runs that used
        # the same feature network ...
        network = inception.resolve_network_path(cfg.feature_network or None)
        tags["feature_network"] = inception.network_identity(network)
        # ... and the same reference set: the real images the features were taken of.
        tags["reference_images"] = str(min(dataset.kept, cfg.reference_size))
    if not cfg.data:
        tags["dataset_note"] = BUILTIN_NOTE
    return tags


def dataset_input(cfg: TrainConfig, dataset: ImageSet) -> dict[str, Any]:
    """The run's training data as `Tracker.log_dataset` records it: a name a person reads
    (the folder, the size and the crop), the fingerprint as digest (runs on the same
    pixels share it), the source, and the counts."""
    builtin = dataset.source.startswith("builtin:")
    folder = "built-in faces" if builtin else Path(dataset.source).name
    crop = "" if builtin else f", crop {cfg.crop}"
    held = holdout_count(cfg.holdout, dataset.kept)
    return {
        "name": f"{folder} {cfg.image_size}x{cfg.image_size}{crop}",
        "digest": dataset.fingerprint,
        "source": dataset.source,
        "profile": {
            "images": dataset.kept,
            "training_images": dataset.kept - held,
            "heldout_images": held,
            "image_size": cfg.image_size,
            "grayscale_kept": dataset.grayscale_kept,
        },  # fmt: skip
    }
