"""Training speed: the project's step against the plain baseline, in one process.

    python -m bench.train_speed --image-size 32 --filters 16 --batch-size 16 --steps 50
    python -m bench.train_speed --image-size 64 --filters 64 --steps 10 --json
    python -m bench.train_speed --concurrent 4 --device cuda   # N runs sharing one device

Both loops run on the same device, the same architecture and batch, interleaved
repeat by repeat (alternating which goes first) so that drift hits both alike;
images/s are medians of the repeats after a warm-up, the ratio is the median of
the per-repeat ratios. The project's loop is what `began.train` runs per step
(batch from the uint8 cache, z draws, train_step, lr schedule), with the config
flags given here. With --json the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from began.config import TrainConfig
from began.core.models import sample_z
from began.core.step import train_step
from began.data import BatchSampler
from began.training.learner import build_learner, resolve_device
from began.training.loop import step_once
from bench.baseline import baseline_step, plain_models


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def project_loop(cfg: TrainConfig, device: torch.device) -> Callable[[], None]:
    learner = build_learner(cfg, device)
    images = torch.randint(0, 256, (512, 3, cfg.image_size, cfg.image_size), dtype=torch.uint8)
    sampler = BatchSampler(images.to(device), cfg.batch_size, cfg.seed)
    return lambda: step_once(learner, sampler)  # the training loop's own step


def baseline_loop(cfg: TrainConfig, device: torch.device) -> Callable[[], None]:
    torch.manual_seed(cfg.seed)
    G, D = plain_models(cfg.image_size, cfg.filters, cfg.hidden, cfg.repeat)
    G, D = G.to(device), D.to(device)
    opt_G = torch.optim.Adam(G.parameters(), lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2))
    opt_D = torch.optim.Adam(D.parameters(), lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2))
    data = torch.rand(512, 3, cfg.image_size, cfg.image_size, device=device) * 2 - 1
    k = [0.0]

    def step() -> None:
        x = data[torch.randint(0, len(data), (cfg.batch_size,), device=device)]
        z_D = sample_z(cfg.batch_size, cfg.hidden, device=device)
        z_G = sample_z(cfg.batch_size, cfg.hidden, device=device)
        k[0], _ = baseline_step(G, D, opt_G, opt_D, x, z_D, z_G, k[0], cfg.gamma, cfg.lambda_k)

    return step


def time_steps(step: Callable[[], None], steps: int, device: torch.device) -> float:
    """Seconds for `steps` steps, device work included."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return time.perf_counter() - start


def flop_per_image(cfg: TrainConfig, device: torch.device) -> float:
    """FLOPs of one project step (forward and backward of G and D) per image."""
    run = build_learner(TrainConfig(**{**cfg.to_dict(), "compile": "off"}), device)
    x = torch.rand(cfg.batch_size, 3, cfg.image_size, cfg.image_size, device=device) * 2 - 1
    z_D, z_G = run.sample_noise()
    with FlopCounterMode(display=False) as counter:
        train_step(run.G, run.D, run.opt_G, run.opt_D, x, z_D, z_G, run.state, cfg)
    return counter.get_total_flops() / cfg.batch_size


def matmul_loop(device: torch.device) -> tuple[Callable[[], None], float]:
    """A large fp32 matmul, the machine's practical ceiling for dense math, and its FLOPs."""
    n = 4096 if device.type == "cuda" else 2048
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    return lambda: a @ b, 2.0 * n**3


def matmul_gflops(device: torch.device, repeats: int = 5) -> float:
    """The matmul's GFLOP/s on its own: median of `repeats` after one warm-up."""
    matmul, flop = matmul_loop(device)
    time_steps(matmul, 1, device)
    return flop / statistics.median(time_steps(matmul, 1, device) for _ in range(repeats)) / 1e9


def measure(cfg: TrainConfig, device: torch.device, steps: int, repeats: int, warmup: int) -> dict:
    loops = {"project": project_loop(cfg, device), "baseline": baseline_loop(cfg, device)}
    matmul, matmul_flop = matmul_loop(device)
    for step in [*loops.values(), matmul]:
        time_steps(step, warmup, device)
    seconds: dict[str, list[float]] = {name: [] for name in [*loops, "matmul"]}
    for repeat in range(repeats):
        # Alternate which loop goes first, so that a drifting machine favours neither,
        # and time the matmul between them, so that the ceiling drifts with them.
        first, second = sorted(loops, reverse=repeat % 2 == 1)
        seconds[first].append(time_steps(loops[first], steps, device))
        seconds["matmul"].append(time_steps(matmul, 3, device) / 3)
        seconds[second].append(time_steps(loops[second], steps, device))
    images = steps * cfg.batch_size
    flop = flop_per_image(cfg, device)
    # Ratios of each repeat's adjacent figures, then the median: robust to drift.
    ratio = [b / p for p, b in zip(seconds["project"], seconds["baseline"], strict=True)]
    share = [
        (images * flop / p) / (matmul_flop / m)
        for p, m in zip(seconds["project"], seconds["matmul"], strict=True)
    ]
    rate = {name: images / statistics.median(seconds[name]) for name in loops}
    return {
        "images_per_s": rate["project"],
        "baseline_images_per_s": rate["baseline"],
        "ratio": statistics.median(ratio),
        "gflop_per_image": flop / 1e9,
        "achieved_gflops": rate["project"] * flop / 1e9,
        "baseline_gflops": rate["baseline"] * flop / 1e9,
        "matmul_gflops": matmul_flop / statistics.median(seconds["matmul"]) / 1e9,
        "matmul_share": statistics.median(share),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "config": {k: getattr(cfg, k) for k in FLAGS},
        "steps": steps,
        "repeats": repeats,
    }


FLAGS = ("image_size", "filters", "hidden", "repeat", "batch_size", "precision", "compile",
         "channels_last", "shared_fake")  # fmt: skip


def concurrent(args: argparse.Namespace, count: int) -> dict:
    """`count` independent training processes on one device: aggregate images/s."""
    command = [
        sys.executable, "-m", "bench.train_speed", "--worker",
        "--image-size", str(args.image_size), "--filters", str(args.filters),
        "--hidden", str(args.hidden), "--repeat", str(args.repeat),
        "--batch-size", str(args.batch_size), "--steps", str(args.steps),
        "--repeats", str(args.repeats), "--warmup", str(args.warmup), "--device", args.device,
        "--precision", args.precision, "--compile", args.compile,
        "--channels-last" if args.channels_last else "--no-channels-last",
        "--shared-fake" if args.shared_fake else "--no-shared-fake",
    ]  # fmt: skip
    threads = args.device_threads
    if threads is None and resolve_device(args.device).type == "cpu":
        threads = max(torch.get_num_threads() // count, 1)  # share the cores, do not fight
    if threads is not None:
        command += ["--device-threads", str(threads)]
    workers = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(count)]
    results = [json.loads(w.communicate()[0].strip().splitlines()[-1]) for w in workers]
    return {
        "concurrent": count,
        "aggregate_images_per_s": sum(r["images_per_s"] for r in results),
        "per_run_images_per_s": [r["images_per_s"] for r in results],
    }


def config_from(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        image_size=args.image_size, filters=args.filters, hidden=args.hidden, repeat=args.repeat,
        batch_size=args.batch_size, precision=args.precision, compile=args.compile,
        channels_last=args.channels_last, shared_fake=args.shared_fake, device=args.device,
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.train_speed",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--filters", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=50, help="steps per timed repeat")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--device-threads", type=int, default=None, help="CPU threads")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--compile", default="off", help="off, default, reduce-overhead, ...")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--shared-fake", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--concurrent", type=str, default=None, help="e.g. 1,2,4")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help="last line: one JSON object")
    return parser


def report(result: dict) -> None:
    print(f"device {result['device_name']} ({result['threads']} threads), {result['config']}")
    print(
        f"project  {result['images_per_s']:9.1f} images/s {result['achieved_gflops']:8.1f} GFLOP/s"
    )
    print(
        f"baseline {result['baseline_images_per_s']:9.1f} images/s "
        f"{result['baseline_gflops']:8.1f} GFLOP/s"
    )
    print(f"ratio    {result['ratio']:9.2f}x ({result['gflop_per_image']:.2f} GFLOP per image)")
    print(
        f"fp32 matmul {result['matmul_gflops']:.1f} GFLOP/s (timed between the loops); "
        f"the project reaches {100 * result['matmul_share']:.0f}% of it"
    )


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.device_threads:
        torch.set_num_threads(args.device_threads)
    cfg = config_from(args)
    device = resolve_device(args.device)
    if args.concurrent:
        results = [concurrent(args, int(n)) for n in args.concurrent.split(",")]
        for r in results:
            print(
                f"{r['concurrent']} runs: {r['aggregate_images_per_s']:.1f} images/s in aggregate"
            )
        if args.json:
            print(json.dumps({"device": str(device), "concurrent": results}))
        return
    if args.worker:  # one of several concurrent runs: the project loop only
        step = project_loop(cfg, device)
        time_steps(step, args.warmup, device)
        seconds = statistics.median(
            time_steps(step, args.steps, device) for _ in range(args.repeats)
        )
        print(json.dumps({"images_per_s": args.steps * cfg.batch_size / seconds}))
        return
    result = measure(cfg, device, args.steps, args.repeats, args.warmup)
    report(result)
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
