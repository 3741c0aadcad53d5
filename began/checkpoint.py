"""Checkpoints: everything a run needs to continue exactly, written atomically.

A checkpoint holds both models, both optimizers, k, the lr-schedule state, the
step, the z generator's state and the config. It is written to a temporary file
beside its destination and renamed over it, so a crash mid-write leaves the
previous checkpoint intact. It is read with ``weights_only=True``: loading never
unpickles arbitrary objects.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from began.config import TrainConfig
from began.errors import first_line

CHECKPOINT_NAME = "last.pt"
PREVIOUS_NAME = "previous.pt"  # the checkpoint before last.pt: the fallback if last.pt is bad
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated or not one of ours; the message names the file."""


@dataclass
class Checkpoint:
    """The contents of a checkpoint file, all plain tensors and numbers."""

    config: TrainConfig
    step: int
    k: float
    generator: dict[str, torch.Tensor]
    discriminator: dict[str, torch.Tensor]
    optimizer_G: dict[str, Any]
    optimizer_D: dict[str, Any]
    schedule: dict[str, Any]
    z_rng_state: torch.Tensor
    dataset_fingerprint: str  # the data it was trained on, checked on resume
    z_rng_device: str = "cpu"  # device type the z generator state belongs to
    # The loop's evaluation window ({"sum", "count"}: M_global over the steps since the
    # last evaluation), so a resumed run reports the same mean as an unbroken one.
    eval_window: dict[str, Any] = field(default_factory=dict)
    # The last evaluation {"step", "m_global", "metrics"}: what a finished run reports.
    last_eval: dict[str, Any] | None = None
    # The state of the run's should_stop rule, when it has one (a study's health rule
    # counts evaluations in a row): a retry continues the count instead of restarting it.
    stop_rule: dict[str, Any] | None = None
    # Why should_stop ended the run early, once it did: a run stopped early is complete.
    stop_reason: str | None = None


def save_checkpoint(path: Path, checkpoint: Checkpoint) -> None:
    """Write `checkpoint` to `path` atomically (temp file + rename), keeping the one it
    replaces as `previous.pt` beside it. A full disk or a read-only folder raises
    CheckpointError naming the file; the checkpoints already there are left intact."""
    payload = {
        "format_version": FORMAT_VERSION,
        "config_json": checkpoint.config.to_json(),
        "step": checkpoint.step,
        "k": checkpoint.k,
        "generator": checkpoint.generator,
        "discriminator": checkpoint.discriminator,
        "optimizer_G": checkpoint.optimizer_G,
        "optimizer_D": checkpoint.optimizer_D,
        "schedule": checkpoint.schedule,
        "z_rng_state": checkpoint.z_rng_state,
        "dataset_fingerprint": checkpoint.dataset_fingerprint,
        "z_rng_device": checkpoint.z_rng_device,
        "eval_window_json": json.dumps(checkpoint.eval_window),
        "last_eval_json": json.dumps(checkpoint.last_eval),
        "stop_rule_json": json.dumps(checkpoint.stop_rule),
        "stop_reason_json": json.dumps(checkpoint.stop_reason),
    }
    tmp_name = ""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_partial_writes(path)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        if path.exists():  # a hard link: at every instant a complete last.pt exists
            previous = path.with_name(PREVIOUS_NAME)
            previous.unlink(missing_ok=True)
            os.link(path, previous)
        os.replace(tmp_name, path)
    except OSError as error:
        if tmp_name:
            Path(tmp_name).unlink(missing_ok=True)
        reason = error.strerror or str(error)
        raise CheckpointError(
            f"{path}: cannot write the checkpoint ({reason}); the previous one is intact"
        ) from error
    except BaseException:
        if tmp_name:
            Path(tmp_name).unlink(missing_ok=True)
        raise


def _remove_partial_writes(path: Path) -> None:
    """Temporary files of writes that a kill interrupted: they would pile up otherwise."""
    for leftover in path.parent.glob(f".{path.name}.*.tmp"):
        leftover.unlink(missing_ok=True)


def load_checkpoint_or_previous(path: Path | str) -> Checkpoint:
    """`load_checkpoint(path)`; if that file is truncated or corrupt and `previous.pt`
    beside it is good, that one, with a warning naming both. Otherwise the first error."""
    path = Path(path)
    try:
        return load_checkpoint(path)
    except CheckpointError as error:
        previous = path.with_name(PREVIOUS_NAME)
        if not previous.is_file() or previous == path:
            raise
        try:
            checkpoint = load_checkpoint(previous)
        except CheckpointError:
            raise error from None
        warnings.warn(
            f"{error}; resuming from the previous checkpoint {previous} (step {checkpoint.step})",
            stacklevel=2,
        )
        return checkpoint


def _rng_device(state: torch.Tensor) -> str:
    # A CUDA (Philox) generator state is 16 bytes; the CPU Mersenne Twister's is 5056.
    return "cuda" if state.numel() == 16 else "cpu"


def _eval_window(payload: dict[str, Any]) -> dict[str, Any]:
    if "eval_window_json" in payload:
        return json.loads(payload["eval_window_json"])
    # Checkpoints written before the window was one record kept its two numbers apart.
    return {"sum": float(payload.get("eval_sum", 0.0)), "count": int(payload.get("eval_count", 0))}


def load_checkpoint(path: Path | str) -> Checkpoint:
    """Read a checkpoint onto the CPU; CheckpointError with the file name if it is unusable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"{path}: not a readable checkpoint ({first_line(error)})") from error
    if not isinstance(payload, dict) or payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: not a BEGAN checkpoint of format {FORMAT_VERSION}")
    return Checkpoint(
        config=TrainConfig.from_dict(json.loads(payload["config_json"])),
        step=int(payload["step"]),
        k=float(payload["k"]),
        generator=payload["generator"],
        discriminator=payload["discriminator"],
        optimizer_G=payload["optimizer_G"],
        optimizer_D=payload["optimizer_D"],
        schedule=payload["schedule"],
        z_rng_state=payload["z_rng_state"],
        dataset_fingerprint=str(payload["dataset_fingerprint"]),
        # Checkpoints written before these fields existed: CPU-era defaults.
        z_rng_device=str(payload.get("z_rng_device", _rng_device(payload["z_rng_state"]))),
        eval_window=_eval_window(payload),
        last_eval=json.loads(payload.get("last_eval_json", "null")),
        stop_rule=json.loads(payload.get("stop_rule_json", "null")),
        stop_reason=json.loads(payload.get("stop_reason_json", "null")),
    )
