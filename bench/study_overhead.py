"""What the study machinery costs, and what two CPU workers buy.

    python -m bench.study_overhead [--trials 4] [--steps 1000] [--json]

The same trials (the demo sweep's config, gammas spread over (0.3, 0.9)) run three ways,
each as a fresh process in a fresh folder, so that every variant pays its own
interpreter start-up, imports and store creation:
- plain: one process calling `began.train.train` for each trial in turn, with the
  MLflow tracker (2 torch threads: the whole CPU);
- study, 1 worker: `python -m studies.gamma_sweep --workers 1` (the worker gets 2 threads);
- study, 2 workers: `--workers 2` (1 thread each).
Overhead = wall(1-worker study) / wall(plain) - 1; speed-up = aggregate images/s of
2 workers / 1 worker; medians over --repeats rounds, the order rotating each round.
The start-up figure is the time from launch until the first trial starts training in
the 1-worker study.
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
from pathlib import Path

import optuna

REPO = Path(__file__).resolve().parents[1]

PLAIN = """
import sys, torch
from dataclasses import replace
torch.set_num_threads(2)
from began.config import DEMO, PRESETS, TrainConfig
from began.tracking import MlflowTracker
from began.training.loop import train
steps, gammas = int(sys.argv[1]), [float(g) for g in sys.argv[2].split(",")]
base = replace(PRESETS[DEMO].config(), steps=steps, eval_every=500, device="cpu")
for gamma in gammas:
    train(replace(base, gamma=gamma), MlflowTracker("sqlite:///mlflow.db", "plain"))
"""


def gammas(trials: int) -> str:
    return ",".join(f"{0.3 + 0.6 * i / max(trials - 1, 1):.3f}" for i in range(trials))


def timed(command: list[str], folder: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    subprocess.run(command, cwd=folder, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def study_command(args: argparse.Namespace, workers: int) -> list[str]:
    return [
        sys.executable, "-m", "studies.gamma_sweep", "--gammas", gammas(args.trials),
        "--steps", str(args.steps), "--eval-every", "500", "--workers", str(workers),
        "--devices", "cpu", "--quiet", "--study-name", "bench",
    ]  # fmt: skip


def trial_times(folder: Path) -> tuple[float, float]:
    """(first trial's start, last trial's end) as timestamps, from the study's records."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name="bench", storage=f"sqlite:///{folder}/optuna.db")
    trials = study.get_trials(deepcopy=False)
    start = min(t.datetime_start for t in trials if t.datetime_start)
    end = max(t.datetime_complete for t in trials if t.datetime_complete)
    return start.timestamp(), end.timestamp()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.study_overhead")
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--steps", type=int, default=1000, help="steps per trial")
    parser.add_argument("--repeats", type=int, default=2, help="rounds, in rotating order")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="began-study-bench-"))
    variants = {
        "plain": [sys.executable, "-c", PLAIN, str(args.steps), gammas(args.trials)],
        "study_1_worker": study_command(args, 1),
        "study_2_workers": study_command(args, 2),
    }
    walls: dict[str, list[float]] = {name: [] for name in variants}
    spans: dict[str, list[float]] = {"study_1_worker": [], "study_2_workers": []}
    start_ups: list[float] = []
    names = list(variants)
    for repeat in range(args.repeats):
        for name in names[repeat % 3 :] + names[: repeat % 3]:  # drift hits each variant alike
            folder = root / f"{name}-{repeat}"
            folder.mkdir()
            launched = time.time()
            walls[name].append(timed(variants[name], folder))
            if name in spans:
                first_start, last_end = trial_times(folder)
                spans[name].append(last_end - first_start)
                if name == "study_1_worker":
                    start_ups.append(first_start - launched)
    wall = {name: statistics.median(values) for name, values in walls.items()}
    images = args.trials * args.steps * 16  # batch 16
    result = {
        "trials": args.trials,
        "steps_per_trial": args.steps,
        "repeats": args.repeats,
        "wall_s": {k: [round(v, 1) for v in values] for k, values in walls.items()},
        "images_per_s": {k: round(images / v, 1) for k, v in wall.items()},
        "study_overhead": round(wall["study_1_worker"] / wall["plain"] - 1, 4),
        "start_up_s": round(statistics.median(start_ups), 1),
        "two_workers_speedup": round(wall["study_1_worker"] / wall["study_2_workers"], 3),
        # The same ratio over the trials' span (first start to last end): without the
        # fixed start-up, which two workers cannot shorten.
        "two_workers_speedup_trials": round(
            statistics.median(spans["study_1_worker"])
            / statistics.median(spans["study_2_workers"]),
            3,
        ),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{args.trials} trials x {args.steps} steps (demo size, CPU), median of {args.repeats}")
    for name, seconds in wall.items():
        runs = ", ".join(f"{v:.1f}" for v in walls[name])
        print(f"  {name:16s} {seconds:7.1f} s  {images / seconds:7.1f} images/s   ({runs})")
    print(f"study machinery over plain train() calls: {100 * result['study_overhead']:+.1f}%")
    print(f"  of which start-up until the first trial trains: {result['start_up_s']:.1f} s")
    print(
        f"2 workers / 1 worker aggregate images/s: {result['two_workers_speedup']:.2f}x "
        f"(whole command), {result['two_workers_speedup_trials']:.2f}x (over the trials)"
    )


if __name__ == "__main__":
    main()
