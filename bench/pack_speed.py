"""Packed trials against separate processes: aggregate training images/s on one device.

    python -m bench.pack_speed                      # 32x32 n=16 and 64x64 n=64, packs 1..16
    python -m bench.pack_speed --quick              # a short CPU run of the same code
    python -m bench.pack_speed --write-table        # ... and record it for --pack auto
    python -m bench.pack_speed --sizes 32 --packs 1,2,4   # one size (64x64 is GPU work)

For each size and precision, in one run: a pack of N trials (different gamma, lambda_k,
lr and seed, one architecture) stepped as one model in one process (`began.training.pack`),
against the same N trials as N separate training processes on the device (what
`--workers-per-device N` does), each process's loop being the single run's. Aggregate
images/s = N x batch / seconds per step, the median of timed repeats after a warm-up;
on a GPU also the peak memory of the pack. With --write-table the rows go to
studies/pack_table.json, which `--pack auto` reads. With --json the last line is one
JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import replace
from pathlib import Path

import torch

from began.config import TrainConfig
from began.data import BatchSampler
from began.training.learner import build_learner, resolve_device
from began.training.loop import step_once
from began.training.pack import step_pack
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
    return lambda: step_pack(learners, samplers)


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
    args = parser.parse_args(argv)
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
