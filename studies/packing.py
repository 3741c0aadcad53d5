"""How many trials a worker trains at once: `--pack N`, or `--pack auto` from the table
that `python -m bench.pack_speed --write-table` measures (studies/pack_table.json).

`auto` takes, for the worker's device and the study's image size, the pack size with the
best aggregate images/s that the benchmark measured there. A device the table does not
know gets FALLBACK_PACK on a GPU (a GPU idles on a small model's kernel launches) and 1
on a CPU, and the study says so.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

PACK_TABLE = Path(__file__).with_name("pack_table.json")
MAX_PACK = 64
FALLBACK_PACK = 4
UNNAMED_GPU = "a GPU whose name nvidia-smi did not give"


class PackError(ValueError):
    """A bad --pack; the message names it."""


def parse_pack(text: str) -> int | None:
    """`--pack`: a count, or None for auto."""
    if text == "auto":
        return None
    try:
        count = int(text)
    except ValueError:
        raise PackError(f"--pack: {text!r} is neither a count nor auto") from None
    if not 1 <= count <= MAX_PACK:
        raise PackError(f"--pack: must be in [1, {MAX_PACK}] or auto, got {count}")
    return count


def device_label(device: str) -> str:
    """What the table calls a device: 'cpu', or the GPU's name as its driver gives it
    ("NVIDIA H100 80GB HBM3"), or UNNAMED_GPU when no one can tell.

    The name comes from nvidia-smi, in a process of its own, because the parent of a study
    asks (`--pack auto`) and must never create a CUDA context: it would hold GPU memory
    for the whole study, on a device its workers need. A process already working on the
    GPU (a benchmark) falls back on torch's name for it.
    """
    if not device.startswith("cuda"):
        return "cpu"
    name = _nvidia_smi_name(_driver_gpu_id(device))
    if name:
        return name
    import torch

    if torch.cuda.is_initialized():
        return torch.cuda.get_device_name(torch.device(device))
    return UNNAMED_GPU


def _driver_gpu_id(device: str) -> str | None:
    """The driver's id (index or UUID) of cuda:N, through $CUDA_VISIBLE_DEVICES when set;
    None when N is not visible. (The driver numbers GPUs in PCI order, CUDA fastest
    first: on a machine of one GPU model, the only kind a name tells apart, they agree.)"""
    index = int(device.partition(":")[2] or 0)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return str(index)
    ids = [entry.strip() for entry in visible.split(",") if entry.strip()]
    return ids[index] if index < len(ids) else None


def _nvidia_smi_name(gpu_id: str | None) -> str | None:
    if gpu_id is None:
        return None
    command = ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader", "-i", gpu_id]
    try:
        found = subprocess.run(command, capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):  # no driver, no such GPU, a hung driver
        return None
    lines = found.stdout.strip().splitlines()
    return lines[0].strip() if lines else None


def auto_pack(device: str, image_size: int, table: Path = PACK_TABLE) -> tuple[int, str]:
    """(pack size, where it comes from) for `--pack auto` on `device`."""
    label = device_label(device)
    rows = json.loads(table.read_text())["rows"] if table.is_file() else []
    mine = [r for r in rows if r["device"] == label]
    if not mine:
        count = 1 if label == "cpu" else FALLBACK_PACK
        return count, f"{label} is not in {table.name}: {count} (bench.pack_speed measures it)"
    size = min({r["image_size"] for r in mine}, key=lambda s: abs(s - image_size))
    best = max((r for r in mine if r["image_size"] == size), key=lambda r: r["images_per_s"])
    return int(best["pack"]), (
        f"measured on {label} at {size}x{size}: {best['images_per_s']:.0f} images/s "
        f"with packs of {best['pack']}"
    )
