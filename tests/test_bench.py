"""The benchmark scripts run and report what docs/performance.md quotes (not timings)."""

import pytest
import torch

from began.config import TrainConfig
from bench import gpu_check
from bench.pack_speed import pack_rate, trial_configs, write_table
from bench.train_speed import measure
from studies.packing import PackError, auto_pack, parse_pack

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


def test_pack_speed_measures_a_pack_and_its_table_feeds_pack_auto(tmp_path):
    from began.config import TrainConfig

    base = TrainConfig(image_size=16, filters=4, hidden=8, repeat=1, batch_size=16,
                       device="cpu")  # fmt: skip
    rate = pack_rate(trial_configs(base, 2), torch.device("cpu"), steps=2, repeats=1)
    assert rate["images_per_s"] > 0 and rate["peak_mib"] is None  # no GPU: no peak memory
    table = tmp_path / "pack_table.json"
    assert auto_pack("cpu", 32, table)[0] == 1  # nothing measured: one trial at a time
    measured = ((1, 100.0), (2, 150.0), (4, 120.0))
    rows = [{"device": "cpu", "image_size": 32, "filters": 16, "precision": "fp32", "pack": n,
             "images_per_s": speed} for n, speed in measured]  # fmt: skip
    write_table(rows, table)
    pack, why = auto_pack("cpu", 30, table)
    assert pack == 2 and "150 images/s" in why
    assert parse_pack("auto") is None and parse_pack("4") == 4
    with pytest.raises(PackError, match="^--pack: "):
        parse_pack("0")
