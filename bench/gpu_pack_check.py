"""The GPU check's rows for packed trials (`bench.gpu_check` calls these).

- packs against separate processes: 32x32 n=16 (a pack of 16 against 16 processes; the
  target is >= 8x) and 64x64 n=64 (a pack of 8 against the best of 1, 2 and 4
  processes per device; the target is >= 3x), with the pack's peak memory;
- for comparison, N separate models stepped on N CUDA streams, their forwards compiled
  with CUDA graphs (`compile=reduce-overhead`);
- a short real study on the device: a packed and an unpacked sweep on generated images,
  two workers on the device, MLflow and Optuna on SQLite, and whether every trial ended
  COMPLETE with a FINISHED run, its sample grids and its models.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from began.config import TrainConfig
from began.data import BatchSampler
from began.errors import first_line
from began.training.learner import build_learner
from began.training.loop import step_once
from bench.pack_speed import BATCH, pack_rate, separate_rate, trial_configs
from bench.train_speed import time_steps

Row = Callable[[str, str], None]


def pack_rows(row: Row, device: torch.device, quick: bool) -> None:
    cases = [(16, 8, 8, 1, [1, 4], [4])] if quick else [
        (32, 16, 32, 1, [1, 16], [16]),  # image size, n, h, repeat, packs, processes
        (64, 64, 64, 2, [1, 8], [1, 2, 4]),
    ]  # fmt: skip
    steps, repeats = (5, 2) if quick else (30, 3)
    for size, filters, hidden, repeat, packs, processes in cases:
        base = TrainConfig(image_size=size, filters=filters, hidden=hidden, repeat=repeat,
                           batch_size=BATCH, device=str(device),
                           precision="bf16" if device.type == "cuda" else "fp32")  # fmt: skip
        what = f"{size}x{size} n={filters} {base.precision}"
        try:
            best = max(separate_rate(base, n, str(device), steps, repeats) for n in processes)
            row(f"{what}: best of {processes} processes, aggregate images/s", f"{best:.0f}")
            for count in packs:
                packed = pack_rate(trial_configs(base, count), device, steps, repeats)
                peak = f", peak {packed['peak_mib']:.0f} MiB" if packed["peak_mib"] else ""
                rate = packed["images_per_s"]
                row(f"{what}: pack of {count}, aggregate images/s",
                    f"{rate:.0f} ({rate / best:.2f}x{peak})")  # fmt: skip
            if device.type == "cuda":
                streams_row(row, base, max(packs), steps)
        except Exception as error:  # one failing case must not cost the rest of the table
            row(f"{what}: packs", f"failed: {type(error).__name__}: {first_line(error)[:80]}")


def streams_row(row: Row, base: TrainConfig, count: int, steps: int) -> None:
    """N learners, each on its own CUDA stream, forwards as CUDA graphs."""
    device = torch.device(base.device)
    cfgs = [replace(c, compile="reduce-overhead") for c in trial_configs(base, count)]
    learners = [build_learner(c, device) for c in cfgs]
    images = torch.randint(0, 256, (512, 3, base.image_size, base.image_size),
                           dtype=torch.uint8).to(device)  # fmt: skip
    samplers = [BatchSampler(images, BATCH, c.seed) for c in cfgs]
    streams = [torch.cuda.Stream(device) for _ in learners]

    def step() -> None:
        for learner, sampler, stream in zip(learners, samplers, streams, strict=True):
            with torch.cuda.stream(stream):
                step_once(learner, sampler)

    time_steps(step, steps, device)  # compiles and captures
    seconds = time_steps(step, steps, device)
    row(f"{base.image_size}x{base.image_size}: {count} models on {count} streams, CUDA graphs",
        f"{count * steps * BATCH / seconds:.0f} images/s")  # fmt: skip


def study_rows(row: Row, device: torch.device, quick: bool) -> None:
    """A packed and an unpacked sweep on generated images, end to end on the device."""
    try:
        import mlflow  # noqa: F401  (the study needs the project's dependencies)
        import optuna
    except ImportError as error:
        row("real study on the device", f"skipped: {error}")
        return
    folder = Path(tempfile.mkdtemp(prefix="began-gpu-study-"))
    _generated_faces(folder / "faces", 64)
    for pack in (1, 4):
        started = time.monotonic()
        command = [
            sys.executable, "-m", "studies.gamma_sweep", "--data", str(folder / "faces"),
            "--image-size", "32", "--filters", "16", "--hidden", "32", "--repeat", "1",
            "--crop", "none", "--holdout", "8", "--metrics", "diversity_64", "--objectives",
            "diversity", "--steps", "60" if quick else "400", "--checkpoint-every", "100",
            "--gammas", "0.3,0.5,0.7,0.9", "--devices", str(device),
            "--workers-per-device", "2", "--pack", str(pack), "--study-name", f"pack{pack}",
            "--quiet",
        ]  # fmt: skip
        done = subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=240)
        seconds = time.monotonic() - started
        what = f"real study, 4 trials, 2 workers on {device}, pack {pack}"
        if done.returncode != 0:
            row(what, f"failed (exit {done.returncode}): {done.stdout[-200:]} {done.stderr[-200:]}")
            continue
        study = optuna.load_study(study_name=f"pack{pack}", storage=f"sqlite:///{folder}/optuna.db")
        row(what, _verdict(folder, study, seconds))


def _verdict(folder: Path, study: object, seconds: float) -> str:
    import mlflow

    trials = study.get_trials()  # type: ignore[attr-defined]
    complete = sum(t.state.name == "COMPLETE" for t in trials)
    client = mlflow.MlflowClient(f"sqlite:///{folder}/mlflow.db")
    runs = [client.get_run(t.user_attrs["mlflow_run_id"]) for t in trials
            if "mlflow_run_id" in t.user_attrs]  # fmt: skip
    finished = sum(r.info.status == "FINISHED" for r in runs)
    grids = sum(bool(client.list_artifacts(r.info.run_id, "images")) for r in runs)
    models = sum(r.data.tags.get("models_logged") == "true" for r in runs)
    ok = complete == finished == grids == models == 4
    return (f"{'OK' if ok else 'INCOMPLETE'}: {complete}/4 complete, {finished} runs "
            f"FINISHED, {grids} with grids, {models} with models, {seconds:.0f} s")  # fmt: skip


def _generated_faces(folder: Path, count: int) -> None:
    """Smooth random colour images, saved as PNGs (a dataset folder without a download)."""
    from PIL import Image

    folder.mkdir(parents=True)
    generator = torch.Generator().manual_seed(0)
    coarse = torch.rand(count, 3, 4, 4, generator=generator)
    images = torch.nn.functional.interpolate(coarse, size=(40, 40), mode="bicubic")
    pixels = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for i, picture in enumerate(pixels):
        Image.fromarray(picture).save(folder / f"{i:03d}.png")
