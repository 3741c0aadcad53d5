"""Packed trials against separate processes: aggregate training images/s on one device.

    python -m bench.pack_speed                      # 32x32 n=16 and 64x64 n=64, packs 1..16
    python -m bench.pack_speed --quick              # a short CPU run of the same code
    python -m bench.pack_speed --write-table        # ... and record it for --pack auto
    python -m bench.pack_speed --sizes 32 --packs 1,2,4   # one size (64x64 is GPU work)
    python -m bench.pack_speed --ops                # what a GPU would pay on the host

For each size and precision, in one run: a pack of N trials (different gamma, lambda_k,
lr and seed, one architecture) stepped as one model in one process (`began.training.pack`),
against the same N trials as N separate training processes on the device (what
`--workers-per-device N` does), each process's loop being the single run's. Aggregate
images/s = N x batch / seconds per step, the median of timed repeats after a warm-up;
on a GPU also the peak memory of the pack. With --write-table the rows go to
studies/pack_table.json, which `--pack auto` reads. With --json the last line is one
JSON object.

--ops measures, on the CPU, what decides a pack's speed on a GPU where one small trial
cannot fill the card: the host's work per step. For packs of 1, 4 and 16 at 32x32 n=16
(batch 16) it counts the ATen operations one training step dispatches (forward, backward,
optimizer, data and noise; each one a kernel launch or a view on a GPU) and times the
step's host milliseconds on networks shrunk until their arithmetic is negligible (n=1,
h=2, batch 1: the same operations), per pack and per trial; and it checks that the
packed step's forward compiles as one graph (torch.compile fullgraph=True). The last line
is JSON: {"ops_per_step": {...}, "ops_per_trial": {...}, "host_ms_per_step": {...},
"host_ms_per_trial": {...}, "fullgraph": true}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from began.config import TrainConfig
from began.data import BatchSampler
from began.training.learner import build_learner, resolve_device
from began.training.loop import step_once
from began.training.pack import TrainingPack
from bench.train_speed import build_parser as train_speed_parser
from bench.train_speed import concurrent, synchronize, time_steps
from studies.packing import PACK_TABLE, device_label

# (image size, n, hidden, repeat): the two sizes; the demo's shape at 32x32.
SIZES = {32: (16, 32, 1), 64: (64, 64, 2)}
QUICK_SIZES = {16: (8, 16, 1)}
BATCH = 16


def trial_configs(base: TrainConfig, count: int) -> list[TrainConfig]:
    """`count` trials of one architecture that differ as a sweep's do."""
    return [
        replace(base, gamma=0.3 + 0.6 * i / max(count - 1, 1), seed=i,
                lambda_k=0.001 * (1 + i % 3), lr=1e-4 * (1 + i % 2))
        for i in range(count)
    ]  # fmt: skip


def pack_loop(cfgs: list[TrainConfig], device: torch.device):
    learners = [build_learner(c, device) for c in cfgs]
    size = cfgs[0].image_size
    images = torch.randint(0, 256, (512, 3, size, size), dtype=torch.uint8).to(device)
    samplers = [BatchSampler(images, c.batch_size, c.seed) for c in cfgs]
    if len(learners) == 1:
        return lambda: step_once(learners[0], samplers[0])
    pack = TrainingPack(learners)
    return lambda: pack.step(samplers)


def pack_rate(cfgs: list[TrainConfig], device: torch.device, steps: int, repeats: int) -> dict:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step = pack_loop(cfgs, device)
    time_steps(step, max(steps // 2, 3), device)  # warm-up: kernels chosen, memory allocated
    seconds = statistics.median(time_steps(step, steps, device) for _ in range(repeats))
    synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {"images_per_s": len(cfgs) * steps * BATCH / seconds, "peak_mib": peak}


def separate_rate(cfg: TrainConfig, count: int, device: str, steps: int, repeats: int) -> float:
    """Aggregate images/s of `count` training processes on the device, one trial each."""
    args = train_speed_parser().parse_args([
        "--image-size", str(cfg.image_size), "--filters", str(cfg.filters),
        "--hidden", str(cfg.hidden), "--repeat", str(cfg.repeat), "--batch-size", str(BATCH),
        "--steps", str(steps), "--repeats", str(repeats), "--warmup", str(max(steps // 2, 3)),
        "--device", device, "--precision", cfg.precision,
        "--channels-last" if cfg.channels_last else "--no-channels-last",
    ])  # fmt: skip
    return concurrent(args, count)["aggregate_images_per_s"]


def rows_for(args: argparse.Namespace, device: torch.device) -> list[dict]:
    rows = []
    sizes = QUICK_SIZES if args.quick else SIZES
    if args.sizes:
        sizes = {int(size): SIZES[int(size)] for size in args.sizes.split(",")}
    packs = [int(n) for n in args.packs.split(",")]
    for size, (filters, hidden, repeat) in sizes.items():
        for precision in args.precisions.split(","):
            base = TrainConfig(
                image_size=size, filters=filters, hidden=hidden, repeat=repeat,
                batch_size=BATCH, precision=precision, device=str(device),
            )  # fmt: skip
            for count in packs:
                packed = pack_rate(trial_configs(base, count), device, args.steps, args.repeats)
                separate = separate_rate(base, count, str(device), args.steps, args.repeats)
                row = {
                    "device": device_label(str(device)), "image_size": size, "filters": filters,
                    "precision": precision, "pack": count, **packed,
                    "separate_images_per_s": separate, "ratio": packed["images_per_s"] / separate,
                }  # fmt: skip
                rows.append(row)
                peak = f"{row['peak_mib']:.0f} MiB" if row["peak_mib"] is not None else "-"
                print(
                    f"{size}x{size} n={filters} {precision} x{count}: packed "
                    f"{row['images_per_s']:8.1f} images/s, {count} processes "
                    f"{separate:8.1f} ({row['ratio']:.2f}x), peak {peak}",
                    flush=True,
                )
    return rows


class OperationCounter(TorchDispatchMode):
    """Counts the ATen operations dispatched while it is active (backward's included)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        self.count += 1
        return func(*args, **(kwargs or {}))


OPS_PACKS = (1, 4, 16)


def operations_per_step(step: Callable[[], object], steps: int = 5) -> int:
    step()  # first step: lazy state (Adam's moments) created
    counts = []
    for _ in range(steps):
        with OperationCounter() as counter:
            step()
        counts.append(counter.count)
    return int(statistics.median(counts))


def host_ms_per_step(step: Callable[[], object], steps: int = 20, repeats: int = 5) -> float:
    for _ in range(3):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        times.append((time.perf_counter() - start) / steps * 1e3)
    return statistics.median(times)


def compiles_as_one_graph(base: TrainConfig) -> bool:
    """Whether a pack's step forward compiles with fullgraph=True (TorchDynamo's capture,
    run by its eager backend: no code generation, so it answers in seconds on a CPU)."""
    from began.core import step as step_module

    compiled = torch.compile(step_module.stacked_losses, fullgraph=True, backend="eager")
    pack = TrainingPack([build_learner(c, torch.device("cpu")) for c in trial_configs(base, 4)])
    pack._losses = compiled  # the pack's own forward, compiled
    images = torch.randint(0, 256, (64, 3, base.image_size, base.image_size), dtype=torch.uint8)
    samplers = [BatchSampler(images, base.batch_size, i) for i in range(4)]
    try:
        pack.step(samplers)
    except Exception as error:  # a graph break raises under fullgraph=True
        print(f"fullgraph: {type(error).__name__}: {str(error).splitlines()[0]}")
        return False
    return True


def operation_rows(shared_fake: bool) -> dict:
    """The --ops measurements (CPU), printed as a table and returned for the JSON line."""
    torch.set_num_threads(1)
    full = TrainConfig(image_size=32, filters=16, hidden=32, repeat=1, batch_size=BATCH,
                       device="cpu", shared_fake=shared_fake)  # fmt: skip
    tiny = replace(full, filters=1, hidden=2, batch_size=1)
    result: dict = {key: {} for key in ("ops_per_step", "ops_per_trial", "host_ms_per_step",
                                        "host_ms_per_trial")}  # fmt: skip
    print(f"{'pack':>4} {'ops/step':>9} {'ops/trial':>10} {'host ms/step':>13} "
          f"{'host ms/trial':>14}")  # fmt: skip
    for count in OPS_PACKS:
        ops = operations_per_step(pack_loop(trial_configs(full, count), torch.device("cpu")))
        host = host_ms_per_step(pack_loop(trial_configs(tiny, count), torch.device("cpu")))
        key = str(count)
        result["ops_per_step"][key], result["ops_per_trial"][key] = ops, round(ops / count, 1)
        result["host_ms_per_step"][key] = round(host, 3)
        result["host_ms_per_trial"][key] = round(host / count, 3)
        print(f"{count:>4} {ops:>9} {ops / count:>10.1f} {host:>13.2f} {host / count:>14.3f}")
    single, largest = result["ops_per_step"]["1"], result["ops_per_step"][str(OPS_PACKS[-1])]
    host = result["host_ms_per_trial"]
    fall = host["1"] / host[str(OPS_PACKS[-1])]
    print(f"a pack of {OPS_PACKS[-1]} dispatches {largest / single:.2f}x the operations of one "
          f"trial's step; host time per trial falls {fall:.1f}x")  # fmt: skip
    result["fullgraph"] = compiles_as_one_graph(tiny)
    print(f"packed step forward compiles with fullgraph=True: {result['fullgraph']}")
    return result


def write_table(rows: list[dict], path: Path = PACK_TABLE) -> None:
    """Keep other devices' rows; replace this device's."""
    kept = json.loads(path.read_text())["rows"] if path.is_file() else []
    devices = {row["device"] for row in rows}
    kept = [row for row in kept if row["device"] not in devices]
    fields = ("device", "image_size", "filters", "precision", "pack", "images_per_s")
    new = [{k: row[k] for k in fields} for row in rows]
    path.write_text(json.dumps({"rows": kept + new}, indent=1) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.pack_speed",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--packs", default="1,2,4,8,16", help="pack sizes to measure")
    parser.add_argument("--sizes", default=None, choices=("32", "64", "32,64"),
                        help="image sizes (default both: 32x32 n=16, 64x64 n=64)")  # fmt: skip
    parser.add_argument("--precisions", default=None, help="default: fp32,bf16 on a GPU, "
                        "fp32 on a CPU")  # fmt: skip
    parser.add_argument("--steps", type=int, default=30, help="steps per timed repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="16x16, packs 1,2,4: a CPU run")
    parser.add_argument("--write-table", action="store_true", help="record for --pack auto")
    parser.add_argument("--json", action="store_true", help="last line: one JSON object")
    parser.add_argument("--ops", action="store_true", help="operations and host ms per step "
                        "(CPU): what the packed step costs the host")  # fmt: skip
    parser.add_argument("--shared-fake", action="store_true", help="--ops: the shared-fake step")
    args = parser.parse_args(argv)
    if args.ops:
        print(json.dumps(operation_rows(args.shared_fake)))
        return
    device = resolve_device(args.device)
    if args.precisions is None:
        args.precisions = "fp32,bf16" if device.type == "cuda" else "fp32"
    if args.quick:
        args.packs, args.steps, args.repeats = "1,2,4", min(args.steps, 10), min(args.repeats, 3)
    rows = rows_for(args, device)
    if args.write_table:
        write_table(rows)
        print(f"wrote {PACK_TABLE}")
    if args.json:
        print(json.dumps({"rows": rows}))


if __name__ == "__main__":
    main()
