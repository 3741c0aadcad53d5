"""The training loop with an in-memory tracker: logged invariants, reproducibility,
exact resume, Ctrl-C, failures and the pruning callback."""

import os
import signal

import pytest
import torch

import began.training.loop as train_module
from began.checkpoint import load_checkpoint
from began.config import TrainConfig
from began.tracking import FAILED, FINISHED, KILLED
from began.tracking.memory_tracker import MemoryTracker
from began.training.loop import EvalReport, TrainingDiverged, TrainingInterrupted, train

TINY = TrainConfig(
    data="",  # the built-in faces
    image_size=16,
    crop="none",
    keep_grayscale=True,
    holdout=8,
    filters=4,
    hidden=8,
    repeat=1,
    batch_size=4,
    steps=12,
    lambda_k=0.05,  # large, so that k visibly moves in a few steps
    log_every=1,
    sample_every=6,
    checkpoint_every=6,
    lr_window=3,
    lr_patience=1,
    num_grid=8,
    metrics="",
    device="cpu",
)


def tiny(**overrides) -> TrainConfig:
    return TrainConfig(**{**TINY.to_dict(), **overrides})


def run_memory(tmp_path, cfg=TINY, name="run", **kwargs):
    tracker = MemoryTracker(tmp_path, run_id=name)
    result = train(cfg, tracker, **kwargs)
    return tracker, result


def values(tracker, name):
    return [value for _, value in tracker.history(name)]


def test_logged_metrics_satisfy_the_equations(tmp_path):
    tracker, result = run_memory(tmp_path)
    assert result.status == FINISHED and result.step == TINY.steps
    for name in ("m_global", "k", "loss_d", "loss_g", "loss_real", "loss_fake", "balance", "lr",
                 "images_per_s"):  # fmt: skip
        assert [step for step, _ in tracker.history(name)] == list(range(1, TINY.steps + 1)), name
    real, fake, k = values(tracker, "loss_real"), values(tracker, "loss_fake"), values(tracker, "k")
    gamma, lambda_k = TINY.gamma, TINY.lambda_k
    for t in range(TINY.steps):
        balance = gamma * real[t] - fake[t]
        assert values(tracker, "balance")[t] == pytest.approx(balance, abs=1e-6)
        assert values(tracker, "m_global")[t] == pytest.approx(real[t] + abs(balance), abs=1e-6)
        assert values(tracker, "loss_g")[t] == pytest.approx(fake[t], abs=1e-7)
        if t + 1 < TINY.steps:  # k_{t+1} = clip(k_t + lambda_k * balance_t, 0, 1)
            assert k[t + 1] == pytest.approx(min(max(k[t] + lambda_k * balance, 0), 1), abs=1e-6)
    assert k[0] == 0.0 and max(k) > 0.0
    assert values(tracker, "m_global_mean")[-1] == pytest.approx(
        sum(values(tracker, "m_global")) / TINY.steps, rel=1e-5
    )


def test_grids_checkpoints_and_models_are_recorded(tmp_path):
    tracker, _ = run_memory(tmp_path)
    keys = [(key, step) for key, step, _ in tracker.images]
    assert keys == [
        ("samples", 0),  # what training starts from: `mlflow ui`'s image cards open on it
        ("reconstructions", 0),
        ("samples", 6),
        ("reconstructions", 6),
        ("samples", 12),
        ("reconstructions", 12),
    ]
    samples = tracker.images[0][2]
    assert samples.dtype.name == "uint8" and samples.shape[2] == 3
    assert load_checkpoint(tracker.latest_checkpoint()).step == 12
    assert tracker.models_logged and tracker.status == FINISHED
    assert (
        tracker.params["gamma"] == TINY.gamma and tracker.tags["dataset_grayscale_kept"] == "true"
    )


def test_same_seed_same_run_other_seed_other_run(tmp_path):
    first, _ = run_memory(tmp_path / "a")
    second, _ = run_memory(tmp_path / "b")
    third, _ = run_memory(tmp_path / "c", tiny(seed=1))
    assert values(first, "m_global") == values(second, "m_global")
    assert values(first, "k") == values(second, "k")
    assert values(first, "m_global") != values(third, "m_global")


def assert_same_state(path_a, path_b):
    a, b = load_checkpoint(path_a), load_checkpoint(path_b)
    assert a.step == b.step and a.k == b.k
    assert a.schedule["lr"] == b.schedule["lr"]
    for left, right in ((a.generator, b.generator), (a.discriminator, b.discriminator)):
        for name in left:
            assert torch.equal(left[name], right[name]), name
    assert torch.equal(a.z_rng_state, b.z_rng_state)


def test_resume_continues_exactly(tmp_path):
    # 2N straight against N, then resume for N more. N = 7 is not a multiple of the
    # lr window (3), so the window's partial sum must survive the checkpoint too.
    straight, _ = run_memory(tmp_path / "straight", tiny(steps=14, checkpoint_every=7))
    tracker = MemoryTracker(tmp_path / "split", run_id="split")
    train(tiny(steps=7, checkpoint_every=7), tracker)
    result = train(tiny(steps=14, checkpoint_every=7), tracker)
    assert tracker.starts == [False, True]
    assert result.step == 14
    assert_same_state(straight.latest_checkpoint(), tracker.latest_checkpoint())
    assert values(straight, "lr")[-1] < TINY.lr  # the schedule did act during the run
    # The resumed half logged exactly what the straight run logged for those steps.
    assert tracker.history("m_global")[-7:] == straight.history("m_global")[-7:]


class InterruptingTracker(MemoryTracker):
    """Sends this process a signal when a given step is logged, like Ctrl-C or `kill`."""

    def __init__(self, root, at_step, signum=signal.SIGINT):
        super().__init__(root, run_id="interrupted")
        self.at_step, self.signum = at_step, signum

    def log_metrics(self, metrics, step):
        super().log_metrics(metrics, step)
        if step == self.at_step:
            os.kill(os.getpid(), self.signum)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_checkpoints_marks_killed_and_resumes_exactly(tmp_path, signum):
    tracker = InterruptingTracker(tmp_path, at_step=4, signum=signum)
    with pytest.raises(TrainingInterrupted):
        train(TINY, tracker)
    assert tracker.status == KILLED
    assert load_checkpoint(tracker.latest_checkpoint()).step == 4
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
    tracker.at_step = -1
    train(TINY, tracker)
    straight, _ = run_memory(tmp_path / "straight")
    assert tracker.status == FINISHED
    assert_same_state(straight.latest_checkpoint(), tracker.latest_checkpoint())


class InterruptedTwice(InterruptingTracker):
    """A second Ctrl-C while the run writes the checkpoint of its stop."""

    def checkpoint_saved(self, path):
        super().checkpoint_saved(path)
        if self.at_step == -1:
            os.kill(os.getpid(), signal.SIGINT)

    def log_metrics(self, metrics, step):
        super().log_metrics(metrics, step)
        if step == self.at_step:
            self.at_step = -1  # the first Ctrl-C came


def test_a_second_ctrl_c_while_stopping_marks_the_run_killed_and_is_raised(tmp_path):
    tracker = InterruptedTwice(tmp_path, at_step=2)
    with pytest.raises(KeyboardInterrupt) as raised:
        train(TINY, tracker)
    assert not isinstance(raised.value, TrainingInterrupted)
    assert tracker.status == KILLED and "interrupted twice" in tracker.error
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored


def test_exception_marks_the_run_failed_with_the_error(tmp_path, monkeypatch):
    real_step = train_module.train_step

    def failing_step(*args):
        if args[7].step == 3:
            raise RuntimeError("CUDA error: an illegal memory access")
        return real_step(*args)

    monkeypatch.setattr(train_module, "train_step", failing_step)
    tracker = MemoryTracker(tmp_path)
    with pytest.raises(RuntimeError, match="illegal memory"):
        train(TINY, tracker)
    assert tracker.status == FAILED
    assert "RuntimeError: CUDA error" in tracker.error


def test_nan_m_global_fails_the_run_as_diverged(tmp_path, monkeypatch):
    real_step = train_module.train_step

    def diverging_step(*args):
        state, metrics = real_step(*args)
        if state.step == 5:
            metrics = {**metrics, "m_global": torch.tensor(float("nan"))}
        return state, metrics

    monkeypatch.setattr(train_module, "train_step", diverging_step)
    tracker = MemoryTracker(tmp_path)
    with pytest.raises(TrainingDiverged, match="step 5"):
        train(TINY, tracker)
    assert tracker.status == FAILED and "TrainingDiverged" in tracker.error


def test_should_stop_sees_each_evaluation_and_can_stop_the_run(tmp_path):
    reports: list[EvalReport] = []

    def stop_at_eight(report: EvalReport) -> bool:
        reports.append(report)
        return report.step >= 8

    cfg = tiny(eval_every=4, metrics="diversity_16,recon,sharpness_16")
    tracker, result = run_memory(tmp_path, cfg, should_stop=stop_at_eight)
    assert [r.step for r in reports] == [4, 8]
    assert result.stopped_early and result.step == 8 and tracker.status == FINISHED
    assert set(reports[0].metrics) >= {"diversity_ssim", "recon_psnr", "recon_ssim", "blur_effect"}
    assert all(r.m_global > 0 for r in reports)
    assert [step for step, _ in tracker.history("recon_psnr")] == [4, 8]
    assert load_checkpoint(tracker.latest_checkpoint()).step == 8


def test_fid_and_kid_record_which_feature_network_scored_them(tmp_path, tiny_network):
    cfg = tiny(steps=4, metrics="fid_8,kid_8", feature_network=str(tiny_network))
    tracker, result = run_memory(tmp_path, cfg)
    assert set(result.final.metrics) == {"fid_8", "kid_8", "kid_8_std"}
    name, digest = tracker.tags["feature_network"].split(":sha256=")
    assert name == tiny_network.name and len(digest) == 16
    untagged, _ = run_memory(tmp_path, tiny(steps=2), name="no-fid")
    assert "feature_network" not in untagged.tags  # no FID/KID asked for, no network loaded


def test_runs_in_one_process_do_not_share_random_state(tmp_path):
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    run_memory(tmp_path)
    assert torch.equal(torch.rand(3), before)  # the global RNG was left where it was
