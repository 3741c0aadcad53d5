"""Checkpoints are atomic, complete and never unpickle arbitrary objects."""

import pickle

import pytest
import torch

from began.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from began.config import TrainConfig
from began.training.learner import build_learner, restore, snapshot

CFG = TrainConfig(image_size=16, filters=4, hidden=8, repeat=1, batch_size=4, lr_window=3)


def test_round_trip_restores_every_part(tmp_path):
    run = build_learner(CFG, torch.device("cpu"))
    run.state.k.fill_(0.25)
    run.state.step = 7
    run.schedule.lr = 3e-5
    run.schedule.window_sum.fill_(1.5)
    run.schedule.window_count = 2
    run.sample_noise()  # advance the z generator
    path = tmp_path / "last.pt"
    save_checkpoint(path, snapshot(run, "fingerprint-1"))

    fresh = build_learner(CFG, torch.device("cpu"))
    checkpoint = load_checkpoint(path)
    assert checkpoint.dataset_fingerprint == "fingerprint-1"
    assert checkpoint.config == CFG
    restore(fresh, checkpoint)
    assert fresh.state.step == 7 and fresh.state.k.item() == 0.25
    assert fresh.schedule.lr == 3e-5 and fresh.schedule.window_count == 2
    assert all(g["lr"] == 3e-5 for g in fresh.opt_G.param_groups + fresh.opt_D.param_groups)
    assert torch.equal(fresh.sample_noise()[0], run.sample_noise()[0])
    for a, b in zip(fresh.G.state_dict().values(), run.G.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    run = build_learner(CFG, torch.device("cpu"))
    path = tmp_path / "last.pt"
    save_checkpoint(path, snapshot(run, "fp"))
    before = path.read_bytes()

    def broken_save(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    run.state.step = 99
    with pytest.raises(CheckpointError, match=f"^{path}: cannot write the checkpoint .disk full"):
        save_checkpoint(path, snapshot(run, "fp"))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left


def test_truncated_checkpoint_is_a_one_line_error(tmp_path):
    run = build_learner(CFG, torch.device("cpu"))
    path = tmp_path / "last.pt"
    save_checkpoint(path, snapshot(run, "fp"))
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="last.pt") as error:
        load_checkpoint(path)
    assert "\n" not in str(error.value)


def test_missing_checkpoint_names_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="nothing.pt"):
        load_checkpoint(tmp_path / "nothing.pt")


class Exploit:
    def __reduce__(self):
        return (print, ("arbitrary code ran",))


def test_loading_never_unpickles_arbitrary_objects(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"format_version": 1, "payload": Exploit()}, path, pickle_module=pickle)
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_checkpoint(path)
    assert "arbitrary code ran" not in capsys.readouterr().out


def test_restoring_a_different_model_is_refused(tmp_path):
    from began.config import ConfigError

    run = build_learner(CFG, torch.device("cpu"))
    path = tmp_path / "last.pt"
    save_checkpoint(path, snapshot(run, "fp"))
    other = build_learner(TrainConfig(**{**CFG.to_dict(), "gamma": 0.7}), torch.device("cpu"))
    with pytest.raises(ConfigError, match="gamma"):
        restore(other, load_checkpoint(path))
