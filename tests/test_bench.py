"""The benchmark scripts measure what they say and report what docs/performance.md quotes.

Timings themselves cannot be asserted; what can: with a clock the test controls, every
rate is the images counted over the median of the timed repeats (warm-ups left out), and
the rows printed are the rows kept. The feature network is the tiny stand-in (tests/
conftest.py), chosen as evaluation chooses it: through $BEGAN_FEATURE_NETWORK.
"""

import json
import math
import os
import subprocess
import sys
import textwrap
import time
from dataclasses import replace

import pytest
import torch

from began.config import TrainConfig
from began.metrics import inception
from bench import eval_speed, gpu_check, gpu_correctness, gpu_extras, gpu_speed, train_speed
from bench.check_runner import (
    CORRECTNESS,
    ERROR,
    FAIL,
    NOT_RUN,
    OK,
    OPTIONAL,
    SKIPPED,
    SPEED,
    TIMED_OUT,
    Check,
    Outcome,
    Row,
    Skipped,
)
from bench.gpu_speed import REPOSITORY, Window
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


def test_gpu_check_times_the_feature_network_with_its_preprocessing(monkeypatch, tiny_network):
    """The Inception row times evaluation's own feature extraction (uint8 64x64 images
    resized and scaled, then the network evaluation would load), six times: the first
    warms up, the row is batch / the median of the other five."""
    monkeypatch.setenv(inception.FEATURE_NETWORK_ENV, str(tiny_network))
    clock = Clock()
    monkeypatch.setattr(gpu_extras, "time", clock)
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
    outcome = gpu_extras.inception(CPU, batch=8)
    # 8 images / 2 s (not the mean of the five, 3.1 s; no warm-up)
    assert outcome.text == "4 images/s, batch 8 (tiny_network.pt, resize included)"
    assert outcome.values["images_per_s"] == pytest.approx(4.0)
    assert calls == [((8, 3, 64, 64), torch.uint8, tiny_network.resolve(), (8, 8))] * 6


def test_gpu_check_times_the_knn_metrics_beside_fid(monkeypatch):
    clock = Clock(tick=0.25)  # each timed call takes 0.25 s
    monkeypatch.setattr(eval_speed, "time", clock)
    outcome = gpu_extras.knn(CPU, 50)
    # cached: the k-NN pass alone; cold: the real side's radii first, then the pass
    assert outcome.text == (
        "50 samples: k-NN 0.25 s with the real radii cached, 0.50 s without; FID 0.25 s"
    )


def test_gpu_check_cuts_a_row_at_its_deadline_and_runs_the_rest(tmp_path, capsys):
    """A row past its deadline is cut, a raising row is an error, a missing package a
    skip, an optional row that cannot end by the target is not started; every other row
    still runs, and a failed correctness row makes the exit status 1."""

    def sleeps() -> Outcome:
        time.sleep(30)
        return Outcome("never")

    def raises() -> Outcome:
        raise ValueError("bad shape\nand a second line")

    def missing() -> Outcome:
        raise Skipped("No module named 'mlflow'")

    def mismatch() -> Outcome:
        return Outcome("MISMATCH gap 1e-02", {"gap": 1e-2}, passed=False)

    def fine() -> Outcome:
        return Outcome("123 images/s", {"images_per_s": 123.0})

    rows = [
        Row("correct", CORRECTNESS, 5, fine),
        Row("wrong", CORRECTNESS, 5, mismatch),
        Row("slow", SPEED, 0.5, sleeps),
        Row("broken", SPEED, 5, raises),
        Row("mlflow", OPTIONAL, 5, missing),
        Row("too long", OPTIONAL, 100, fine),
        Row("last", OPTIONAL, 5, fine),
    ]
    started = time.monotonic()
    check = Check("a title", budget_s=60, target_s=30, out=tmp_path, min_row_s=0.1)
    assert check.run(rows) == 1
    assert time.monotonic() - started < 10  # the sleeping row was cut at 0.5 s
    document = json.loads((tmp_path / "gpu_check.json").read_text())
    statuses = {row["name"]: (row["status"], row["text"]) for row in document["rows"]}
    assert statuses == {
        "correct": (OK, "123 images/s"),
        "wrong": (FAIL, "MISMATCH gap 1e-02"),
        "slow": (TIMED_OUT, "cut at 0.5 s"),
        "broken": (ERROR, "ValueError: bad shape"),
        "mlflow": (SKIPPED, "No module named 'mlflow'"),
        "too long": (NOT_RUN, statuses["too long"][1]),
        "last": (OK, "123 images/s"),
    }
    assert "before the target" in statuses["too long"][1]
    assert document["rows"][0]["values"] == {"images_per_s": 123.0}
    out = capsys.readouterr().out
    assert out == (tmp_path / "gpu_check.txt").read_text()  # the table, as printed
    assert out.splitlines()[0] == "a title"
    assert "skipped: No module named 'mlflow'" in out and "error: ValueError: bad shape" in out
    assert out.splitlines()[-1].endswith("correctness FAILED: wrong")


def test_gpu_check_watchdog_prints_the_table_when_a_row_is_stuck(tmp_path):
    """A row stuck where the alarm cannot reach it (native code) is ended by the budget's
    watchdog, which still prints and writes the table."""
    script = textwrap.dedent(
        """
        import signal, sys, time
        from pathlib import Path
        from bench.check_runner import SPEED, Check, Outcome, Row

        def stuck():
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})  # as native code
            time.sleep(60)

        check = Check("t", budget_s=1.5, target_s=1.5, out=Path(sys.argv[1]), grace_s=0.5,
                      min_row_s=0.1)
        check.run([Row("stuck", SPEED, 30, stuck), Row("after", SPEED, 30, lambda: Outcome(""))])
        """
    )
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True,
                          text=True, timeout=60, cwd=REPOSITORY)  # fmt: skip
    assert time.monotonic() - started < 20
    assert done.returncode == 2, done.stderr  # stopped by the budget
    document = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [(r["name"], r["status"]) for r in document["rows"]] == [
        ("stuck", TIMED_OUT),
        ("after", NOT_RUN),
    ]
    assert "stuck past the check's budget" in done.stdout


def test_gpu_check_counts_all_images_over_the_span_of_the_processes():
    """N processes: every child's images over (last end - first start), not a sum of
    per-process rates (which would count a child running alone as if all were)."""
    windows = [Window(steps=10, start=100.0, end=102.0), Window(steps=30, start=101.0, end=104.0)]
    outcome = gpu_speed.speed_outcome(2, 40 * 16, windows, [100.0, None])
    assert outcome.values["aggregate_images_per_s"] == pytest.approx(40 * 16 / 4.0)
    assert outcome.values["per_trial_images_per_s"] == pytest.approx(40 * 16 / 4.0 / 2)
    assert outcome.values["peak_mib"] == 100.0


def test_gpu_check_rows_pass_at_tiny_sizes_in_this_process():
    """The correctness rows and the in-process speed rows, at the --quick sizes (the
    N-process rows and the whole table: the slow test below)."""
    plan, shape = gpu_check.QUICK, gpu_check.QUICK.shapes[0]
    cfg = shape.config(CPU, "fp32")
    for outcome in (
        gpu_correctness.project_vs_baseline(cfg, CPU, steps=3),
        gpu_correctness.bf16_vs_fp32(cfg, CPU, steps=3),
        gpu_correctness.pack_vs_alone(cfg, 4, CPU, steps=5),
    ):
        assert outcome.passed, outcome.text
    for outcome in (
        gpu_speed.one_process(cfg, CPU, plan.timing),
        gpu_speed.pack(cfg, 2, CPU, plan.timing),
    ):
        assert outcome.values["aggregate_images_per_s"] > 0
        assert outcome.values["steps"] >= plan.timing.min_steps
        assert outcome.values["peak_mib"] is None  # no GPU: no peak memory


def test_gpu_check_releases_its_training_processes_together():
    """N processes: each warms up, then waits on the barrier; released together, they
    start within moments of each other and each reports its own window."""
    plan = gpu_check.QUICK
    cfg = plan.shapes[0].config(CPU, "fp32")
    outcome = gpu_speed.processes(cfg, 2, CPU, plan.timing)
    assert len(outcome.values["per_process_images_per_s"]) == 2
    assert outcome.values["start_spread_s"] < 1.0
    assert outcome.values["aggregate_images_per_s"] > 0


def test_gpu_check_quick_prints_every_row_on_a_cpu(tmp_path):
    """`bash bench/gpu_check.sh --quick`: every row in the table and in the JSON, the
    correctness and speed rows passing, within its 90 s."""
    started = time.monotonic()
    done = subprocess.run(["bash", "bench/gpu_check.sh", "--quick"], cwd=REPOSITORY,
                          env={**os.environ, "OUT": str(tmp_path)}, capture_output=True,
                          text=True, timeout=180)  # fmt: skip
    seconds = time.monotonic() - started
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    document = json.loads((tmp_path / "gpu_check.json").read_text())
    expected = gpu_check.rows(gpu_check.QUICK, CPU, quick=True)
    assert [r["name"] for r in document["rows"]] == [row.name for row in expected]
    for row in document["rows"]:
        if row["kind"] in (CORRECTNESS, SPEED):
            assert row["status"] == OK, row
        if row["kind"] == SPEED:
            assert row["values"]["aggregate_images_per_s"] > 0, row
        assert row["name"] in done.stdout
    processes = [r for r in document["rows"] if r["name"].endswith("2 processes")]
    assert len(processes) == 2
    assert all(len(r["values"]["per_process_images_per_s"]) == 2 for r in processes)
    assert done.stdout.endswith((tmp_path / "gpu_check.txt").read_text())
    assert seconds < 90


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
