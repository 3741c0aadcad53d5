"""Scaling table: images/s and GFLOP/s against image size and filters, project vs baseline.

    python -m bench.scaling [--sizes 16,32,64,128] [--filters 16,64,128] [--seconds 20]

Each cell is `bench.train_speed.measure` (median of repeats, baseline in the same
process), with steps per repeat chosen so that a repeat lasts about --seconds /
repeats. Prints a markdown table for docs/performance.md; big configs take minutes
on a CPU.
"""

from __future__ import annotations

import argparse
import json

import torch

from began.config import TrainConfig
from began.training.learner import resolve_device
from bench.train_speed import flop_per_image, matmul_gflops, measure

ASSUMED_GFLOPS = {"cpu": 60.0, "cuda": 20_000.0}  # only to size the runs, not reported


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.scaling")
    parser.add_argument("--sizes", default="16,32,64,128")
    parser.add_argument("--filters", default="16,64,128")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0, help="rough time per loop")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    print(f"fp32 matmul: {matmul_gflops(device):.0f} GFLOP/s on {device}, "
          f"{torch.get_num_threads()} threads")  # fmt: skip
    print("| size | n | GFLOP/image | project img/s | baseline img/s | ratio | project GFLOP/s "
          "| baseline GFLOP/s | share of matmul | s/step (project) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    results = []
    for size in (int(s) for s in args.sizes.split(",")):
        for filters in (int(f) for f in args.filters.split(",")):
            cfg = TrainConfig(image_size=size, filters=filters, batch_size=args.batch_size,
                              channels_last=args.channels_last)  # fmt: skip
            step_flop = flop_per_image(cfg, device) * args.batch_size
            step_seconds = step_flop / 1e9 / ASSUMED_GFLOPS[device.type]
            steps = max(1, round(args.seconds / args.repeats / step_seconds))
            r = measure(cfg, device, steps=steps, repeats=args.repeats, warmup=max(1, steps // 4))
            results.append(r)
            print(
                f"| {size} | {filters} | {r['gflop_per_image']:.2f} | {r['images_per_s']:.1f} "
                f"| {r['baseline_images_per_s']:.1f} | {r['ratio']:.2f}x "
                f"| {r['achieved_gflops']:.0f} | {r['baseline_gflops']:.0f} "
                f"| {100 * r['matmul_share']:.0f}% "
                f"| {args.batch_size / r['images_per_s']:.3f} |",
                flush=True,
            )
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
