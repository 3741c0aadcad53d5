"""What MLflow tracking costs the training loop: logging on against logging off.

    python -m bench.tracking_overhead [--steps 600] [--repeats 3] [--json]

Runs the real `began.train.train` loop at the demo size twice per repeat: once
with an in-memory tracker (logging off: a list append) and once with the MLflow
tracker writing to a fresh SQLite store, interleaved. The loop itself measures
images/s between log points; the figure is the median over log points of all
repeats, the first ones (warm-up) left out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from dataclasses import replace
from pathlib import Path

from began.config import DEMO, PRESETS, TrainConfig
from began.tracking import MlflowTracker
from began.tracking.memory_tracker import MemoryTracker
from began.training.loop import train

WARMUP_POINTS = 5  # log points left out at the start of each run


def loop_rate(cfg: TrainConfig, tracker) -> list[float]:
    train(cfg, tracker, quiet=True)
    if isinstance(tracker, MemoryTracker):
        rates = [value for _, value in tracker.history("images_per_s")]
    else:
        history = tracker.client.get_metric_history(tracker.run_id, "images_per_s")
        rates = [m.value for m in sorted(history, key=lambda m: m.step)]
    return rates[WARMUP_POINTS:]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.tracking_overhead")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    cfg = replace(
        PRESETS[DEMO].config(),
        steps=args.steps,
        log_every=args.log_every,
        sample_every=10**9,  # grids and checkpoints only at the end, outside the timed steps
        checkpoint_every=10**9,
        metrics="",
        device="cpu",
    )
    folder = Path(tempfile.mkdtemp(prefix="began-tracking-bench-"))
    os.chdir(folder)  # MLflow puts artifacts in ./mlruns
    rates: dict[str, list[float]] = {"off": [], "mlflow": []}
    for repeat in range(args.repeats):
        rates["off"] += loop_rate(cfg, MemoryTracker(folder / "memory", run_id=f"r{repeat}"))
        mlflow_tracker = MlflowTracker(f"sqlite:///{folder}/mlflow.db", experiment="bench")
        rates["mlflow"] += loop_rate(cfg, mlflow_tracker)
    off, on = statistics.median(rates["off"]), statistics.median(rates["mlflow"])
    result = {
        "images_per_s_logging_off": off,
        "images_per_s_mlflow": on,
        "overhead_percent": 100 * (1 - on / off),
        "log_every": args.log_every,
        "steps": args.steps,
        "repeats": args.repeats,
    }
    print(f"logging off: {off:.1f} images/s; MLflow (SQLite): {on:.1f} images/s")
    print(f"tracking overhead: {result['overhead_percent']:.1f}% of step time")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
