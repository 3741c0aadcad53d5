"""What trials need from the library, each fix with its test: the run id before the data,
stop reasons, resume across devices and at any step, NaN-safe checkpoints, models that
land in their own run, retried store requests, small datasets, readable help and grids."""

import re
import subprocess
import sys
import warnings

import mlflow
import numpy as np
import pytest
import torch
from PIL import Image

import began.training.loop as train_module
from began import evaluate, sample
from began.checkpoint import load_checkpoint, save_checkpoint
from began.cli import as_typed, resume_command, run_cli
from began.data import DataError
from began.data.sampler import holdout_count, split_holdout
from began.metrics import metric_direction, objective_names, parse_metrics
from began.retry import RETRY_WAITS_S
from began.tracking import MlflowTracker, TrackingError, with_retries
from began.tracking.memory_tracker import MemoryTracker
from began.tracking.mlflow_models import run_generator
from began.training.images import image_grid, viewable
from began.training.loop import STOPPED, TrainingDiverged, TrainingInterrupted, train
from tests.test_train import TINY, InterruptingTracker, run_memory, tiny, values


def test_the_run_exists_before_the_data_loads(tmp_path, monkeypatch):
    tracker = MlflowTracker(f"sqlite:///{tmp_path}/mlflow.db", "early")

    def failing_load(*args, **kwargs):
        assert tracker.run_id, "the run must exist before the data loads"
        raise DataError("data: /no/such/folder does not exist")

    monkeypatch.setattr(train_module, "load_images", failing_load)
    with pytest.raises(DataError):
        train(TINY, tracker)
    run = tracker.client.get_run(tracker.run_id)
    assert run.info.status == "FAILED" and "does not exist" in run.data.tags["error"]


def test_a_stop_reason_is_tagged_and_the_models_can_be_skipped(tmp_path):
    cfg = tiny(eval_every=4, metrics="diversity_16")
    tracker, result = run_memory(
        tmp_path, cfg, should_stop=lambda r: "collapsed: test" if r.step == 8 else None,
        log_models_when_stopped=False,
    )  # fmt: skip
    assert result.status == STOPPED and result.stopped_early and result.step == 8
    assert result.stop_reason == "collapsed: test" == tracker.tags["stop_reason"]
    assert tracker.models_logged == 0 and tracker.status == "FINISHED"
    _, kept = run_memory(tmp_path / "b", cfg, should_stop=lambda r: r.step == 4)
    assert kept.stop_reason == "should_stop asked to stop"


def test_a_checkpoint_from_another_device_type_resumes(tmp_path):
    tracker = MemoryTracker(tmp_path, run_id="moved")
    train(tiny(steps=6, checkpoint_every=6), tracker)
    path = tracker.latest_checkpoint()
    checkpoint = load_checkpoint(path)
    assert checkpoint.z_rng_device == "cpu"
    # What a CUDA run writes: a 16-byte Philox state.
    checkpoint.z_rng_state, checkpoint.z_rng_device = torch.zeros(16, dtype=torch.uint8), "cuda"
    save_checkpoint(path, checkpoint)
    with pytest.warns(UserWarning, match="not bit-exact"):
        result = train(tiny(steps=12, checkpoint_every=6), tracker)
    assert result.step == 12 and tracker.starts == [False, True]


def test_a_resumed_run_reports_the_same_evaluation_as_an_unbroken_one(tmp_path):
    # Evaluations every 5 steps, interrupted at 7: the window 6..10 spans the resume.
    cfg = tiny(steps=15, eval_every=5, metrics="")
    straight, _ = run_memory(tmp_path / "straight", cfg)
    tracker = InterruptingTracker(tmp_path / "split", at_step=7)
    with pytest.raises(TrainingInterrupted):
        train(cfg, tracker)
    tracker.at_step = -1
    train(cfg, tracker)
    resumed = [(s, v) for s, v in tracker.history("m_global_mean") if s > 7]
    assert resumed == [(s, v) for s, v in straight.history("m_global_mean") if s > 7]


def test_a_nan_step_never_overwrites_the_last_good_checkpoint(tmp_path, monkeypatch):
    real_step = train_module.train_step

    def diverging_step(*args):
        state, metrics = real_step(*args)
        if state.step == 5:  # between logs (every 10) and before the checkpoint at 6
            metrics = {**metrics, "m_global": metrics["m_global"] * float("nan")}
        return state, metrics

    monkeypatch.setattr(train_module, "train_step", diverging_step)
    tracker = MemoryTracker(tmp_path)
    with pytest.raises(TrainingDiverged, match="last good checkpoint was kept"):
        train(tiny(log_every=10, checkpoint_every=3), tracker)
    assert load_checkpoint(tracker.latest_checkpoint()).step == 3
    assert tracker.status == "FAILED"


def test_models_land_in_their_own_run_whatever_the_process_settings(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the experiments' artifacts go to ./mlruns: not the project's
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/elsewhere.db")
    mlflow.set_experiment("somebody-elses")
    try:
        uri = f"sqlite:///{tmp_path}/mlflow.db"
        first, second = MlflowTracker(uri, "one"), MlflowTracker(uri, "two")
        train(tiny(steps=2), first)
        train(tiny(steps=2), second)
    finally:
        mlflow.set_tracking_uri(None)
    client = mlflow.MlflowClient(uri)
    for tracker in (first, second):
        models = client.search_logged_models([tracker.experiment_id])
        run_name = client.get_run(tracker.run_id).info.run_name  # "<run name>-<role>"
        assert sorted(m.name for m in models) == [f"{run_name}-discriminator",
                                                  f"{run_name}-generator"]  # fmt: skip
        assert {m.source_run_id for m in models} == {tracker.run_id}
    mlflow.set_tracking_uri(uri)
    try:
        model_id = run_generator(client, first.run_id).model_id
        generator = mlflow.pytorch.load_model(f"models:/{model_id}")
    finally:
        mlflow.set_tracking_uri(None)
    assert generator(torch.zeros(2, TINY.hidden)).shape == (2, 3, 16, 16)
    elsewhere = mlflow.MlflowClient(f"sqlite:///{tmp_path}/elsewhere.db")
    assert all(not elsewhere.search_logged_models([e.experiment_id])
               for e in elsewhere.search_experiments())  # fmt: skip


def test_store_requests_are_retried_then_fail_in_one_line(monkeypatch):
    monkeypatch.setattr("began.retry.RETRY_WAITS_S", (0.0,) * len(RETRY_WAITS_S))
    attempts = []

    def flaky():
        attempts.append(1)
        if len(attempts) < 3:
            raise OSError("database is locked")
        return "ok"

    assert with_retries(flaky, "creating the run") == "ok" and len(attempts) == 3

    def down():
        attempts.append(1)
        raise ConnectionError("Connection refused\nmore detail")

    attempts.clear()
    with pytest.raises(TrackingError, match="^tracking store: marking run x FINISHED failed: "
                                            "Connection refused$"):  # fmt: skip
        with_retries(down, "marking run x FINISHED")
    assert len(attempts) == len(RETRY_WAITS_S) + 1  # one attempt, then one after each wait


def test_the_hold_out_adapts_to_small_datasets(tmp_path):
    assert holdout_count(-1, 48) == 4 and holdout_count(-1, 13_194) == 256
    assert holdout_count(10, 48) == 10
    assert len(split_holdout(np.zeros((48, 3, 4, 4), np.uint8), -1)[1]) == 4
    folder = tmp_path / "faces"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(48):
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), np.uint8)).save(folder / f"{i}.png")
    tracker, result = run_memory(tmp_path, tiny(data=str(folder), holdout=-1, steps=2))
    assert result.step == 2 and tracker.tags["holdout_images"] == "4"


def test_m_global_mean_has_a_direction_and_kid_std_is_no_objective():
    assert metric_direction("m_global_mean") == "minimize"
    assert objective_names(parse_metrics("kid_1k,diversity")) == ["kid_1k", "diversity_gap",
                                                                  "diversity_ssim"]  # fmt: skip


def test_help_shows_each_default_once():
    out = subprocess.run(
        [sys.executable, "-m", "began.train", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "(default: None)" not in out
    flat = " ".join(out.split())
    assert "(default: demo 32, paper 64)" in flat  # each preset's value, named
    options = re.split(r"\n  (?=-)", out.split("options:", 1)[1])
    assert len(options) > 30
    for text in options:
        assert text.count("(default:") <= 1, text


def test_logged_grids_are_big_enough_to_judge():
    grid = image_grid(torch.zeros(64, 3, 32, 32))  # 8 x 8 tiles: 274 px
    big = viewable(grid)
    assert big.shape[1] >= 1000 and big.shape[1] % grid.shape[1] == 0
    assert np.array_equal(big[::4, ::4], grid)  # nearest neighbour: no new pixel values


def test_resuming_a_finished_run_changes_nothing(tmp_path, capsys):
    tracker, first = run_memory(tmp_path, tiny(eval_every=6, metrics="diversity_16"))
    logged = {name: list(points) for name, points in tracker.metrics.items()}
    again = train(tiny(eval_every=6, metrics="diversity_16"), tracker)
    assert again.already_complete and again.step == first.step
    assert again.final == first.final  # the real last evaluation, not m_global_mean = 0
    assert tracker.metrics == logged and tracker.models_logged == 1


def test_unknown_run_ids_blame_the_option_given(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for main in (sample.main, evaluate.main):
        with pytest.raises(SystemExit):
            run_cli(main, ["--run", "0123456789abcdef"])
        last_line = capsys.readouterr().err.strip().splitlines()[-1]  # after MLflow's set-up log
        assert last_line.startswith("error: --run 0123456789abcdef: no such run"), last_line


def test_messages_name_options_as_typed_and_resume_is_a_whole_command():
    assert as_typed("image_size: must be one of") == "--image-size: must be one of"
    assert as_typed("gamma, lambda_k: differ") == "--gamma, --lambda-k: differ"
    assert as_typed("data: /x is missing") == "--data: /x is missing"
    assert as_typed("/some/file: unreadable") == "/some/file: unreadable"
    assert resume_command("began.train", "abc", None) == "python -m began.train --resume abc"
    assert resume_command("began.train", "abc", "http://h:5000").endswith(
        "--tracking-uri http://h:5000"
    )


def test_progress_bar_shows_this_step(tmp_path, monkeypatch):
    """The postfix is set before the bar redraws: it shows the logged step's values."""
    shown = []
    real_update = train_module.tqdm.update

    def update(self, n=1):
        shown.append(dict(self.postfix and [p.split("=") for p in self.postfix.split(", ")]))
        return real_update(self, n)

    monkeypatch.setattr(train_module.tqdm, "update", update)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tracker, _ = run_memory(tmp_path, tiny(steps=4), quiet=False)
    logged = [f"{v:.4f}" for v in values(tracker, "m_global")]
    assert [s["m_global"] for s in shown] == logged
