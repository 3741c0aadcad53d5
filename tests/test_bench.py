"""The benchmark scripts run and report what docs/performance.md quotes (not timings)."""

import torch

from began.config import TrainConfig
from bench import gpu_check
from bench.train_speed import measure

CPU = torch.device("cpu")


def test_train_speed_reports_every_field_the_docs_quote():
    cfg = TrainConfig(image_size=16, filters=4, hidden=8, repeat=1, batch_size=4, device="cpu")
    result = measure(cfg, CPU, steps=1, repeats=2, warmup=1)
    for key in ("images_per_s", "baseline_images_per_s", "ratio", "gflop_per_image",
                "achieved_gflops", "matmul_gflops", "matmul_share"):  # fmt: skip
        assert result[key] > 0, key
    assert result["device"] == "cpu"
    # achieved = images/s x FLOPs per image, counted by torch's flop counter
    assert (
        abs(result["achieved_gflops"] / result["images_per_s"] - result["gflop_per_image"]) < 1e-9
    )


def test_gpu_check_times_the_bundled_inception_with_its_preprocessing():
    gpu_check.ROWS.clear()
    gpu_check.inception_row(CPU, batch=1)
    [(what, value)] = gpu_check.ROWS
    assert "TF 2015-12-05 Inception" in what and float(value) > 0


def test_gpu_check_times_the_knn_metrics_beside_fid():
    gpu_check.ROWS.clear()
    gpu_check.knn_row(CPU, 50)
    [(what, value)] = gpu_check.ROWS
    assert "precision/recall/density/coverage, 50 samples" in what and "FID" in value
