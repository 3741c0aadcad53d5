"""The benchmark scripts measure what they say and report what docs/performance.md quotes.

Timings themselves cannot be asserted; what can: with a clock the test controls, every
rate is the images counted over the median of the timed repeats (warm-ups left out), and
the rows printed are the rows kept. The feature network is the tiny stand-in (tests/
conftest.py), chosen as evaluation chooses it: through $BEGAN_FEATURE_NETWORK.
"""

import math
from dataclasses import replace

import pytest
import torch

from began.config import TrainConfig
from began.metrics import inception
from bench import eval_speed, gpu_check, train_speed
from bench.pack_speed import BATCH, pack_rate, trial_configs, write_table
from bench.train_speed import flop_per_image, measure
from studies.packing import PackError, auto_pack, parse_pack

CPU = torch.device("cpu")
TINY = TrainConfig(image_size=16, filters=4, hidden=8, repeat=1, batch_size=4, device="cpu")


class Clock:
    """A `time` module whose perf_counter moves by `tick` at each reading, and by what a
    fake step adds: every timed interval is known in advance."""

    def __init__(self, tick: float = 0.0) -> None:
        self.now, self.tick = 1000.0, tick

    def perf_counter(self) -> float:
        self.now += self.tick
        return self.now

    def steps(self, seconds: list[float]):
        """A step function whose n-th call takes seconds[n]."""
        left = list(seconds)

        def step() -> None:
            self.now += left.pop(0)

        step.left = left
        return step


@pytest.fixture
def rows(monkeypatch):
    """gpu_check's table, empty for each test."""
    table: list[tuple[str, str]] = []
    monkeypatch.setattr(gpu_check, "ROWS", table)
    return table


def test_train_speed_reports_every_field_the_docs_quote():
    result = measure(TINY, CPU, steps=1, repeats=2, warmup=1)
    for key in ("images_per_s", "baseline_images_per_s", "ratio", "gflop_per_image",
                "achieved_gflops", "baseline_gflops", "matmul_gflops", "matmul_share"):  # fmt: skip
        assert math.isfinite(result[key]) and result[key] > 0, key
    assert result["device"] == "cpu" and result["device_name"] == "cpu"
    assert result["steps"] == 1 and result["repeats"] == 2
    assert result["config"]["image_size"] == 16 and result["config"]["batch_size"] == 4
    # achieved = images/s x FLOPs per image, counted by torch's flop counter
    assert result["achieved_gflops"] == pytest.approx(
        result["images_per_s"] * result["gflop_per_image"]
    )


def test_train_speed_rates_are_images_over_the_median_repeat(monkeypatch):
    """Each loop's images/s is steps x batch over its median repeat; the ratio is the
    median of the per-repeat ratios (robust to a drifting machine), not the ratio of the
    rates; warm-up steps are not timed."""
    clock = Clock()
    steps, warmup = 3, 2
    project = clock.steps([9.0] * warmup + [0.5] * 3 + [1.0] * 3 + [0.2] * 3)  # 1.5, 3, 0.6 s
    baseline = clock.steps([9.0] * warmup + [2.0] * 3 + [1.0] * 3 + [1.0] * 3)  # 6, 3, 3 s
    matmul = clock.steps([9.0] * warmup + [0.25] * 9)
    monkeypatch.setattr(train_speed, "time", clock)
    monkeypatch.setattr(train_speed, "project_loop", lambda cfg, device: project)
    monkeypatch.setattr(train_speed, "baseline_loop", lambda cfg, device: baseline)
    monkeypatch.setattr(train_speed, "matmul_loop", lambda device: (matmul, 4e9))
    result = measure(TINY, CPU, steps=steps, repeats=3, warmup=warmup)
    assert project.left == baseline.left == matmul.left == []  # every step run, no more
    images = steps * TINY.batch_size
    assert result["images_per_s"] == pytest.approx(images / 1.5)
    assert result["baseline_images_per_s"] == pytest.approx(images / 3.0)
    assert result["ratio"] == pytest.approx(4.0)  # median of 6/1.5, 3/3, 3/0.6
    assert result["matmul_gflops"] == pytest.approx(4e9 / 0.25 / 1e9)
    flop = flop_per_image(TINY, CPU)
    assert result["gflop_per_image"] == pytest.approx(flop / 1e9)
    assert result["achieved_gflops"] == pytest.approx(images / 1.5 * flop / 1e9)
    assert result["matmul_share"] == pytest.approx(images / 1.5 * flop / 16e9)


def test_flops_are_counted_per_image():
    flop = flop_per_image(TINY, CPU)
    assert math.isfinite(flop) and flop > 0
    assert flop_per_image(replace(TINY, batch_size=8), CPU) == pytest.approx(flop)


def test_gpu_check_times_the_feature_network_with_its_preprocessing(
    monkeypatch, tiny_network, rows, capsys
):
    """The Inception row times evaluation's own feature extraction (uint8 64x64 images
    resized and scaled, then the network evaluation would load), six times: the first
    warms up, the row is batch / the median of the other five."""
    monkeypatch.setenv(inception.FEATURE_NETWORK_ENV, str(tiny_network))
    clock = Clock()
    monkeypatch.setattr(gpu_check, "time", clock)
    seconds = [16.0, 0.5, 1.0, 2.0, 4.0, 8.0]
    calls = []
    extract = inception.extract_features

    def timed(images, device, network_path, batch_size):
        features = extract(images, device, network_path, batch_size=batch_size)
        calls.append((tuple(images.shape), images.dtype, network_path, features.shape))
        assert features.dtype == "float32" and bool((abs(features) <= 1).all())  # tanh
        clock.now += seconds[len(calls) - 1]
        return features

    monkeypatch.setattr(inception, "extract_features", timed)
    gpu_check.inception_row(CPU, batch=8)
    [(what, value)] = rows
    assert what == "Inception images/s, batch 8 (tiny_network.pt, resize included)"
    assert value == "4"  # 8 images / 2 s (not the mean of the five, 3.1 s; no warm-up)
    assert calls == [((8, 3, 64, 64), torch.uint8, tiny_network.resolve(), (8, 8))] * 6
    assert capsys.readouterr().out == f"{what:<58} {value}\n"


def test_gpu_check_times_the_knn_metrics_beside_fid(monkeypatch, rows, capsys):
    clock = Clock(tick=0.25)  # each timed call takes 0.25 s
    monkeypatch.setattr(eval_speed, "time", clock)
    gpu_check.knn_row(CPU, 50)
    [(what, value)] = rows
    assert what == "precision/recall/density/coverage, 50 samples: cached / cold radii"
    # cached: the k-NN pass alone; cold: the real side's radii first, then the pass
    assert value == "0.25 / 0.50 s (FID 0.25 s)"
    assert capsys.readouterr().out == f"{what:<58} {value}\n"


def test_the_metric_timings_are_of_real_work():
    seconds = eval_speed.feature_metric_seconds(50, CPU)
    assert seconds["count"] == 50
    for key in ("fid_s", "knn_warm_s", "knn_cold_s"):
        assert math.isfinite(seconds[key]) and seconds[key] >= 0, key
    assert seconds["knn_cold_s"] >= seconds["knn_warm_s"]


def test_pack_speed_measures_a_pack_and_its_table_feeds_pack_auto(monkeypatch, tmp_path):
    base = replace(TINY, batch_size=BATCH)
    rate = pack_rate(trial_configs(base, 2), CPU, steps=2, repeats=1)
    assert math.isfinite(rate["images_per_s"]) and rate["images_per_s"] > 0
    assert rate["peak_mib"] is None  # no GPU: no peak memory
    monkeypatch.setattr(train_speed, "time", Clock(tick=0.5))  # each timed repeat: 0.5 s
    rate = pack_rate(trial_configs(base, 2), CPU, steps=2, repeats=3)
    assert rate["images_per_s"] == pytest.approx(2 * 2 * BATCH / 0.5)  # trials x steps x batch

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
