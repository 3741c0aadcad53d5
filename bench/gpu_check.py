"""The GPU check: one table of correctness and speed on the device at hand, sized to end
within five minutes on an H100 (optional rows start only if they can end by 290 s) and
stopped at 350 s by its own watchdog, table printed.

    bash bench/gpu_check.sh            # on a GPU machine
    bash bench/gpu_check.sh --quick    # the same code at tiny sizes, on a CPU too

It needs the project's tree, torch, torchvision and the training code's light
dependencies; nothing is installed and nothing is downloaded. Each row imports what it
needs when it runs: one whose package is missing (MLflow, Optuna, the Inception wheel)
says "skipped" or falls back, and the rest run. Rows, most valuable first, each with its
deadline (bench/gpu_plan.py):
1. correctness (exit status 1 if one fails): the project's step against the baseline in
   strict fp32, bf16 against fp32, a pack of 4 against the same 4 trials alone;
2. speed: {32x32 n=16, 64x64 n=64} x {fp32, bf16} x {1 process, N processes, a pack
   of N}, N = 16 at 32x32 and 8 at 64x64, batch 16: per-trial and aggregate images/s,
   peak GPU memory;
3. optional, while time remains: compile and CUDA graphs, Inception images/s, the k-NN
   metrics, a short real study (packed).
With OUT set, the table also goes to $OUT/gpu_check.txt and as JSON to
$OUT/gpu_check.json. See docs/performance.md, "The GPU check".
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from bench.check_runner import CORRECTNESS, MIN_ROW_S, OPTIONAL, SPEED, Check, Outcome, Row
from bench.gpu_plan import FULL, PACK_CORRECTNESS_TRIALS, QUICK, Plan


def later(module: str, function: str, *args: object) -> Callable[[], Outcome]:
    """A row's measurement, `module.function(*args)`, its module imported when the row
    runs: a package missing on the machine costs the rows that need it, not the check."""

    def measure() -> Outcome:
        return getattr(importlib.import_module(module), function)(*args)

    return measure


def rows(plan: Plan, device: torch.device, quick: bool) -> list[Row]:
    """Every row of the check, in the order they run: most valuable first."""
    d = plan.deadlines
    shape, packed = plan.correctness_shape, plan.shapes[0]
    fp32, pack_fp32 = shape.config(device, "fp32"), packed.config(device, "fp32")
    correct = "bench.gpu_correctness"
    table = [
        Row(f"correctness: project vs baseline, {shape.label()} fp32", CORRECTNESS, d.baseline,
            later(correct, "project_vs_baseline", fp32, device, plan.correctness_steps)),
        Row(f"correctness: bf16 vs fp32, {shape.label()}", CORRECTNESS, d.bf16,
            later(correct, "bf16_vs_fp32", fp32, device, plan.correctness_steps)),
        Row(f"correctness: pack of {PACK_CORRECTNESS_TRIALS} vs alone, {packed.label()} fp32",
            CORRECTNESS, d.pack_vs_alone,
            later(correct, "pack_vs_alone", pack_fp32, PACK_CORRECTNESS_TRIALS, device,
                  plan.pack_steps)),
    ]  # fmt: skip
    for shape in plan.shapes:
        for precision in ("fp32", "bf16"):
            cfg, n, timing = shape.config(device, precision), shape.trials, plan.timing
            what = f"speed {shape.label()} {precision}"
            table += [
                Row(f"{what}, 1 process", SPEED, d.one_process,
                    later("bench.gpu_speed", "one_process", cfg, device, timing)),
                Row(f"{what}, {n} processes", SPEED, d.processes,
                    later("bench.gpu_speed", "processes", cfg, n, device, timing)),
                Row(f"{what}, pack of {n}", SPEED, d.pack,
                    later("bench.gpu_speed", "pack", cfg, n, device, timing)),
            ]  # fmt: skip
    largest = plan.shapes[-1]
    bf16, extras = largest.config(device, "bf16"), "bench.gpu_extras"
    table += [
        Row(f"compile default, {largest.label()} bf16, 1 process", OPTIONAL, d.compile,
            later(extras, "compiled", bf16, "default", device, plan.timing)),
        Row(f"CUDA graphs (reduce-overhead), {largest.label()} bf16", OPTIONAL, d.compile,
            later(extras, "compiled", bf16, "reduce-overhead", device, plan.timing)),
        Row("Inception feature extraction", OPTIONAL, d.inception,
            later(extras, "inception", device, plan.inception_batch)),
        Row("k-NN metrics (precision/recall/density/coverage)", OPTIONAL, d.knn,
            later(extras, "knn", device, plan.knn_samples)),
        Row("real study, packed (MLflow + Optuna)", OPTIONAL, d.study,
            later(extras, "study", device, quick)),
    ]  # fmt: skip
    return table


def title(device: torch.device, plan: Plan, quick: bool) -> str:
    if device.type == "cuda":
        name = f"{torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}"
    else:
        name = f"cpu ({torch.get_num_threads()} threads)"
    mode = "--quick" if quick else "full"
    return (f"GPU check ({mode}) on {name}, torch {torch.__version__}; "
            f"budget {plan.budget_s:.0f} s, optional rows by {plan.target_s:.0f} s")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.gpu_check",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a dry run, CPU too")
    args = parser.parse_args(argv)
    # The index spelled out: torch.cuda.set_device in the training processes needs one.
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    plan = QUICK if args.quick else FULL
    if args.quick and device.type == "cpu":
        # Tiny models on a CPU: two threads that wait on each other are slower than one,
        # and far slower when the machine is busy with something else.
        torch.set_num_threads(1)
    out = Path(os.environ["OUT"]) if os.environ.get("OUT") else None
    check = Check(title(device, plan, args.quick), plan.budget_s, plan.target_s, out)
    try:
        table = rows(plan, device, args.quick)
    except ImportError as missing:  # a config needs the training code's own packages
        table = [Row("the project's training code", CORRECTNESS, MIN_ROW_S, reraise(missing))]
    return check.run(table)


def reraise(error: Exception) -> Callable[[], Outcome]:
    def measure() -> Outcome:
        raise error

    return measure


if __name__ == "__main__":
    sys.exit(main())
