"""The GPU check's speed rows: training images/s of N trials of one architecture run three
ways on one device.

- one process: a single trial, the training loop's own step (`step_once`);
- N processes: N trials as N training processes, as `--workers-per-device N` runs them.
  Each child builds its model and warms up, then waits on a barrier (a line on its
  stdin); the parent releases all of them at once. The aggregate is every child's images
  over (last end - first start), not a sum of per-process rates, so that a child that
  ran alone while the others were still starting cannot inflate it;
- a pack of N: the N trials stepped as one model in one process (`began.training.pack`).

Each measures a timed window: warm-up steps first (kernel choice, allocation, compile),
then steps until the window's seconds have passed, with the device synchronized only
at the window's start and end. Peak memory is `torch.cuda.max_memory_allocated` of the
process (for N processes, the largest child's).

    python -m bench.gpu_speed --child SPEC   # one of the N processes (the parent starts it)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from began.config import TrainConfig
from began.data import BatchSampler
from began.training.device import configure_device
from began.training.learner import build_learner
from began.training.loop import step_once
from began.training.pack import TrainingPack
from bench.check_runner import Outcome, child_processes, track
from bench.gpu_plan import BATCH, Timing
from bench.pack_speed import trial_configs
from bench.train_speed import synchronize

REPOSITORY = Path(__file__).resolve().parents[1]
DATA_IMAGES = 512  # random uint8 images on the device, as the training cache holds them


@dataclass(frozen=True)
class Window:
    steps: int
    start: float  # time.monotonic(): one clock for every process of the machine (Linux)
    end: float


def settings_of_a_run(cfg: TrainConfig, device: torch.device) -> None:
    """The process-wide settings a training run makes on its device (its CUDA device
    current, cuDNN autotuning), then TF32 off in matmuls and convolutions whatever the
    config says: fp32 rows are strict fp32 (tf32=off), as the correctness rows need."""
    configure_device(replace(cfg, tf32="off"), device)


def child_environment() -> dict[str, str]:
    """This environment with the repository importable, from whatever folder."""
    path = [str(REPOSITORY), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path)}


def random_images(size: int, device: torch.device) -> torch.Tensor:
    generator = torch.Generator().manual_seed(size)
    images = torch.randint(0, 256, (DATA_IMAGES, 3, size, size), generator=generator)
    return images.to(torch.uint8).to(device)


def timed_window(step: Callable[[], object], timing: Timing, device: torch.device) -> Window:
    """Warm up, then step for the window; no synchronization between its steps."""
    for _ in range(timing.warmup_steps):
        step()
    synchronize(device)
    start = time.monotonic()
    steps = 0
    while steps < timing.min_steps or time.monotonic() - start < timing.window_s:
        step()
        steps += 1
    synchronize(device)
    return Window(steps, start, time.monotonic())


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def speed_outcome(
    trials: int, images: int, windows: list[Window], peaks: list[float | None], **extra: object
) -> Outcome:
    """Per-trial and aggregate images/s: `images` trained by `trials` trials over the
    span of `windows` (one per process)."""
    seconds = max(w.end for w in windows) - min(w.start for w in windows)
    aggregate = images / seconds
    known = [p for p in peaks if p is not None]
    peak = max(known) if known else None
    shown = f"{peak:,.0f}" if peak is not None else "-"
    steps = statistics.median(w.steps for w in windows)
    text = (f"{aggregate / trials:>8,.0f} per trial {aggregate:>9,.0f} total  "
            f"peak {shown:>6} MiB  {steps:.0f} steps in {seconds:.2f} s")  # fmt: skip
    values = {
        "trials": trials,
        "per_trial_images_per_s": aggregate / trials,
        "aggregate_images_per_s": aggregate,
        "peak_mib": peak,
        "window_s": seconds,
        "steps": steps,
        **extra,
    }
    return Outcome(text, values)


def one_process(cfg: TrainConfig, device: torch.device, timing: Timing) -> Outcome:
    """One trial, the training loop's own step, in this process."""
    settings_of_a_run(cfg, device)
    reset_peak_memory(device)
    learner = build_learner(cfg, device)
    sampler = BatchSampler(random_images(cfg.image_size, device), BATCH, cfg.seed)
    started = time.monotonic()
    window = timed_window(lambda: step_once(learner, sampler), timing, device)
    warmup_s = window.start - started  # with compile on: the compilation
    images = window.steps * BATCH
    return speed_outcome(1, images, [window], [peak_mib(device)], warmup_s=warmup_s)


def pack(base: TrainConfig, count: int, device: torch.device, timing: Timing) -> Outcome:
    """`count` trials as one packed model in this process."""
    settings_of_a_run(base, device)
    reset_peak_memory(device)
    cfgs = trial_configs(base, count)
    learners = [build_learner(cfg, device) for cfg in cfgs]
    images = random_images(base.image_size, device)
    samplers = [BatchSampler(images, BATCH, cfg.seed) for cfg in cfgs]
    training_pack = TrainingPack(learners)
    window = timed_window(lambda: training_pack.step(samplers), timing, device)
    return speed_outcome(count, count * window.steps * BATCH, [window], [peak_mib(device)])


def processes(base: TrainConfig, count: int, device: torch.device, timing: Timing) -> Outcome:
    """`count` trials as `count` training processes released together from a barrier."""
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the children get the memory earlier rows left cached
    with child_processes() as children, tempfile.TemporaryDirectory() as logs:
        for i, cfg in enumerate(trial_configs(base, count)):
            spec = json.dumps({"config": cfg.to_dict(), "device": str(device),
                               "timing": asdict(timing)})  # fmt: skip
            # stderr to a file: a pipe nobody reads would block a child that warns a lot
            with open(Path(logs) / f"{i}.err", "w") as stderr:
                child = subprocess.Popen(
                    [sys.executable, "-m", "bench.gpu_speed", "--child", spec],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                    text=True, cwd=REPOSITORY, env=child_environment(),
                )  # fmt: skip
            children.append(track(child))
        for i, child in enumerate(children):
            _read_line(child, Path(logs) / f"{i}.err", lambda line: line == "ready")
        for child in children:  # the barrier: every child has warmed up; go
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        reports = [json.loads(_read_line(c, Path(logs) / f"{i}.err", _is_report))
                   for i, c in enumerate(children)]  # fmt: skip
    windows = [Window(r["steps"], r["start"], r["end"]) for r in reports]
    rates = [w.steps * BATCH / (w.end - w.start) for w in windows]
    images = sum(w.steps for w in windows) * BATCH
    starts = [w.start for w in windows]
    return speed_outcome(count, images, windows, [r["peak_mib"] for r in reports],
                         per_process_images_per_s=rates,
                         per_process_peak_mib=[r["peak_mib"] for r in reports],
                         start_spread_s=max(starts) - min(starts))  # fmt: skip


def _read_line(child: subprocess.Popen, stderr: Path, wanted: Callable[[str], bool]) -> str:
    """The child's next line on stdout that is `wanted` (a library may print others); an
    error naming the child's last words on stderr if it exits first."""
    assert child.stdout is not None
    for line in child.stdout:
        if wanted(line.strip()):
            return line.strip()
    child.wait()
    said = [s for s in stderr.read_text().splitlines() if s.strip()]
    last = said[-1] if said else "nothing on stderr"
    raise RuntimeError(f"a training process exited ({child.returncode}): {last}")


def _is_report(line: str) -> bool:
    return line.startswith("{")


def child(spec: dict) -> None:
    """One of the N processes: build, warm up, say "ready", wait for "go", time, report."""
    # A child's host work is launching kernels: one thread each keeps N children from
    # fighting over a few cores.
    torch.set_num_threads(1)
    cfg = TrainConfig.from_dict(spec["config"])
    device = torch.device(spec["device"])
    if device.type == "cuda":
        torch.cuda.set_device(device)  # before any CUDA work, so nothing lands on GPU 0
    settings_of_a_run(cfg, device)
    timing = Timing(**spec["timing"])
    learner = build_learner(cfg, device)
    sampler = BatchSampler(random_images(cfg.image_size, device), BATCH, cfg.seed)
    for _ in range(timing.warmup_steps):
        step_once(learner, sampler)
    synchronize(device)
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return  # the parent gave up on this row
    window = timed_window(lambda: step_once(learner, sampler), replace(timing, warmup_steps=0),
                          device)  # fmt: skip
    report = {**asdict(window), "peak_mib": peak_mib(device)}
    print(json.dumps(report), flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_speed", description=__doc__)
    parser.add_argument("--child", required=True, help="JSON: config, device, timing")
    args = parser.parse_args(argv)
    child(json.loads(args.child))


if __name__ == "__main__":
    main()
