"""How much a quality evaluation costs, next to training.

    python -m bench.eval_speed [--device cpu] [--num 64] [--steps 1000] [--json]
    python -m bench.eval_speed --feature-metrics-only [--counts 1000,10000]

Measures, at the demo size (image size 32, filters 16, hidden 32, repeat 2,
random weights):
- Inception throughput: images/s of feature extraction (batch 32), the median
  of a few timed repeats after a warm-up;
- the wall time of one evaluation of "fid_1k,kid_1k,diversity,recon,sharpness"
  against a synthetic real set, with the real-statistics cache cold, then warm;
- the time of `--steps` BEGAN training steps (`began.core.step.train_step`, batch 16,
  Adam lr 1e-4, betas (0.9, 0.999)), reported per 1,000 steps,
and the ratio "one evaluation / 1,000 training steps"; and
- the cost of the metrics on features at `--counts` samples (1k and 10k): FID against
  precision, recall, density and coverage (one k-NN pass serves all four), on the same
  synthetic 2048-d features (features are extracted once per evaluation and shared, so
  their cost is the Inception rate above, not a metric's): the k-NN pass with the real
  side's radii computed (a study's first evaluation at that count) and cached (later ones).
With --json the last line is one JSON object with those numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from began.config import DEMO, PRESETS, TrainConfig
from began.core.models import Discriminator, Generator, sample_z
from began.core.step import TrainState, train_step
from began.metrics import EvalInputs, evaluate, inception, parse_metrics
from began.metrics.frechet import feature_statistics, fid_to_features
from began.metrics.manifold import as_tensor, distance_dtype, manifold_metrics, real_manifold

EVAL_SPEC = "fid_1k,kid_1k,diversity,recon,sharpness"
INCEPTION_BATCH = 32
FEATURE_DIM = 2048  # Inception pool3


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic_images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """n smooth random colour images with some fine noise, uint8 (n, 3, size, size)."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=generator)  # (n, 3, 4, 4)
    smooth = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    fine = 0.05 * torch.randn(n, 3, size, size, generator=generator)
    return (smooth + fine).clamp(0, 1).mul(255).round().to(torch.uint8)


def inception_throughput(device: torch.device, num: int, repeats: int) -> float:
    """Median images/s of Inception feature extraction (resize to 299 included)."""
    images = synthetic_images(num, 32, seed=1).to(device)
    inception.extract_features(images[:INCEPTION_BATCH], device, batch_size=INCEPTION_BATCH)
    rates = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        inception.extract_features(images, device, batch_size=INCEPTION_BATCH)  # ends on host
        rates.append(num / (time.perf_counter() - start))
    return statistics.median(rates)


def demo_models(cfg: TrainConfig, device: torch.device) -> tuple[Generator, Discriminator]:
    torch.manual_seed(cfg.seed)
    args = (cfg.image_size, cfg.filters, cfg.hidden, cfg.repeat, cfg.skip)
    return Generator(*args).to(device), Discriminator(*args).to(device)


def evaluation_seconds(
    cfg: TrainConfig, device: torch.device, num_real: int, cache_dir: Path, spec: str
) -> float:
    """Wall time of one evaluate(spec) with random G and D."""
    G, D = demo_models(cfg, device)
    G.eval()
    D.eval()
    z_generator = torch.Generator(device=device).manual_seed(0)

    @torch.no_grad()
    def generate(n: int) -> torch.Tensor:
        z = sample_z(n, cfg.hidden, z_generator, device)  # (n, h)
        return G(z).clamp(-1.0, 1.0)  # (n, 3, S, S)

    real = synthetic_images(num_real, cfg.image_size)  # (N, 3, S, S) uint8
    inputs = EvalInputs(
        generate=generate,
        reconstruct=torch.no_grad()(D),
        real_images=real,
        heldout_images=synthetic_images(cfg.holdout, cfg.image_size, seed=2),
        dataset_fingerprint=f"bench-synthetic-{num_real}",
        device=device,
        cache_dir=cache_dir,
        batch_size=64,
    )
    _sync(device)
    start = time.perf_counter()
    evaluate(parse_metrics(spec), inputs)
    _sync(device)
    return time.perf_counter() - start


def training_seconds(cfg: TrainConfig, device: torch.device, steps: int) -> float:
    """Wall time of `steps` train_step calls on random data, after 5 warm-up steps."""
    G, D = demo_models(cfg, device)
    betas = (cfg.adam_beta1, cfg.adam_beta2)
    opt_G = torch.optim.Adam(G.parameters(), lr=cfg.lr, betas=betas)
    opt_D = torch.optim.Adam(D.parameters(), lr=cfg.lr, betas=betas)
    real = synthetic_images(1024, cfg.image_size).to(device).float().div(127.5).sub(1.0)
    state = TrainState(k=torch.zeros((), device=device))
    generator = torch.Generator(device=device).manual_seed(0)
    b = cfg.batch_size

    def step(state: TrainState) -> TrainState:
        index = torch.randint(0, real.shape[0], (b,), generator=generator, device=device)
        z_D = sample_z(b, cfg.hidden, generator, device)  # (B, h)
        z_G = sample_z(b, cfg.hidden, generator, device)  # (B, h)
        state, _ = train_step(G, D, opt_G, opt_D, real[index], z_D, z_G, state, cfg)
        return state

    for _ in range(5):
        state = step(state)
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        state = step(state)
    state.k.item()  # waits for the last step
    return time.perf_counter() - start


def _timed(device: torch.device, fn: object) -> tuple[float, object]:
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - start, out


def feature_metric_seconds(count: int, device: torch.device) -> dict[str, float | int]:
    """Seconds of FID and of the k-NN pass (precision, recall, density, coverage) on
    `count` random generated and `count` real 2048-d features."""
    generator = torch.Generator().manual_seed(count)
    real = torch.randn(count, FEATURE_DIM, generator=generator).numpy()  # (n, 2048)
    fake = (torch.randn(count, FEATURE_DIM, generator=generator) * 1.1 + 0.05).numpy()
    mu, sigma = feature_statistics(real)  # part of the cached real statistics: not timed
    fid_s, _ = _timed(device, lambda: fid_to_features(fake, mu, sigma))
    real_t = as_tensor(real, device)
    radii_s, manifold = _timed(device, lambda: real_manifold(real_t))
    knn_s, _ = _timed(device, lambda: manifold_metrics(manifold, as_tensor(fake, device)))
    return {
        "count": count,
        "fid_s": round(fid_s, 3),
        "knn_warm_s": round(knn_s, 3),  # the real side's radii from the cache
        "knn_cold_s": round(knn_s + radii_s, 3),  # ... and computed first
    }


def print_feature_metrics(rows: list[dict[str, float | int]], device: torch.device) -> None:
    dtype = str(distance_dtype(device)).removeprefix("torch.")
    print(f"metrics on the same {FEATURE_DIM}-d features, {device} ({dtype} distances), s:")
    print("  samples     fid   precision, recall, density, coverage (one pass for all four)")
    print("                    real radii cached / computed")
    for row in rows:
        knn = f"{row['knn_warm_s']:.2f} / {row['knn_cold_s']:.2f}"
        print(f"  {row['count']:>7,} {row['fid_s']:>7.2f}   {knn}")


def main(argv: list[str] | None = None) -> dict[str, float | int | str]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--num", type=int, default=64, help="images per throughput repeat")
    parser.add_argument("--repeats", type=int, default=3, help="timed throughput repeats")
    parser.add_argument("--real", type=int, default=1000, help="synthetic real images")
    parser.add_argument("--steps", type=int, default=1000, help="training steps to time")
    parser.add_argument("--spec", default=EVAL_SPEC, help="metrics of the timed evaluation")
    parser.add_argument(
        "--counts", default="1000,10000", help="samples at which to time the metrics on features"
    )
    parser.add_argument(
        "--feature-metrics-only", action="store_true", help="only those: no Inception, no training"
    )
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    counts = [int(c) for c in args.counts.split(",") if c.strip()]
    rows = [feature_metric_seconds(count, device) for count in counts]
    print_feature_metrics(rows, device)
    if args.feature_metrics_only:
        result = {"device": str(device), "feature_metrics": rows}
        if args.json:
            print(json.dumps(result))
        return result
    cfg = dataclasses.replace(PRESETS[DEMO].config(), batch_size=16, lr=1e-4)

    rate = inception_throughput(device, args.num, args.repeats)
    print(f"inception: {rate:.1f} images/s (batch {INCEPTION_BATCH}, median of {args.repeats})")
    with tempfile.TemporaryDirectory() as cache:
        cold = evaluation_seconds(cfg, device, args.real, Path(cache), args.spec)
        warm = evaluation_seconds(cfg, device, args.real, Path(cache), args.spec)
    print(f"evaluate({args.spec!r}), {args.real} real: cold cache {cold:.1f} s, warm {warm:.1f} s")
    train = training_seconds(cfg, device, args.steps)
    per_1k = train * 1000 / args.steps
    print(f"training: {args.steps} steps in {train:.1f} s ({per_1k:.1f} s per 1,000 steps)")
    print(f"one evaluation / 1,000 steps: {warm / per_1k:.2f} warm, {cold / per_1k:.2f} cold")
    result = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "inception_images_per_s": round(rate, 2),
        "eval_spec": args.spec,
        "num_real": args.real,
        "eval_cold_s": round(cold, 2),
        "eval_warm_s": round(warm, 2),
        "train_steps": args.steps,
        "train_s": round(train, 2),
        "train_s_per_1k_steps": round(per_1k, 2),
        "eval_warm_over_1k_steps": round(warm / per_1k, 3),
        "eval_cold_over_1k_steps": round(cold / per_1k, 3),
        "feature_metrics": rows,
    }
    if args.json:
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
