"""Bad input, every command: one line on stderr naming the option as typed, exit code 2,
and nothing started (no run, no study, no database file). Then the data-folder kinds
a user's folder really holds: training uses the good images and reports the rest."""

import numpy as np
import pytest
from PIL import Image

from analysis import export, report
from began import evaluate, sample
from began import train as train_cli
from began.cli import run_cli
from began.tracking.memory_tracker import MemoryTracker
from began.training.loop import train
from studies import gamma_sweep, search
from tests.test_train import tiny

UNREACHABLE = "http://127.0.0.1:9"  # the discard port: nothing listens there

CASES = [
    # began.train
    (train_cli.main, ["--image-size", "48"], "--image-size: "),
    (train_cli.main, ["--image-size", "0"], "--image-size: "),
    (train_cli.main, ["--image-size", "x"], "argument --image-size: invalid int value"),
    (train_cli.main, ["--batch-size", "0"], "--batch-size: "),
    (train_cli.main, ["--batch-size", "-4"], "--batch-size: "),
    (train_cli.main, ["--steps", "0"], "--steps: "),
    (train_cli.main, ["--filters", "0"], "--filters: "),
    (train_cli.main, ["--hidden", "-1"], "--hidden: "),
    (train_cli.main, ["--repeat", "0"], "--repeat: "),
    (train_cli.main, ["--holdout", "-2"], "--holdout: "),
    (train_cli.main, ["--log-every", "0"], "--log-every: "),
    (train_cli.main, ["--eval-every", "-1"], "--eval-every: "),
    (train_cli.main, ["--gamma", "0"], "--gamma: "),
    (train_cli.main, ["--gamma", "1.5"], "--gamma: "),
    (train_cli.main, ["--lambda-k", "0"], "--lambda-k: "),
    (train_cli.main, ["--lambda-k", "-0.001"], "--lambda-k: "),
    (train_cli.main, ["--lr", "0"], "--lr: "),
    (train_cli.main, ["--metrics", "fid,nonsense"], "--metrics: "),
    (train_cli.main, ["--metrics", "fid_0"], "--metrics: "),
    (train_cli.main, ["--crop", "banana"], "--crop: "),
    (train_cli.main, ["--device", "tpu"], "--device: "),
    (train_cli.main, ["--device", "cuda:7"], "--device: "),
    (train_cli.main, ["--data", "/no/such/folder"], "--data: /no/such/folder"),
    (train_cli.main, ["--experiment", "../elsewhere"], "--experiment: "),
    (train_cli.main, ["--experiment", "x;rm -rf ~"], "--experiment: "),
    (train_cli.main, ["--run-name", "a/b"], "--run-name: "),
    (train_cli.main, ["--tracking-uri", UNREACHABLE], "--tracking-uri http://127.0.0.1:9: "),
    (train_cli.main, ["--resume", "0123456789abcdef"], "--resume 0123456789abcdef: "),
    (train_cli.main, ["--preset", "huge"], "argument --preset: invalid choice: 'huge'"),
    (train_cli.main, ["--tf32", "yes"], "--tf32: must be on or off, got 'yes'"),
    (train_cli.main, ["--system-metrics", "no"], "argument --system-metrics: invalid choice"),
    # began.sample
    (sample.main, ["--run", "abc", "--num", "0"], "--num: "),
    (sample.main, ["--run", "abc", "--walk-length", "1"], "--walk-length: "),
    (sample.main, ["--run", "abc", "--device", "tpu"], "--device: "),
    (sample.main, ["--checkpoint", "/no/last.pt"], "/no/last.pt: checkpoint file not found"),
    (sample.main, ["--run", "abc", "--tracking-uri", UNREACHABLE], "--tracking-uri "),
    (sample.main, ["--num", "4"], "one of the arguments --run --checkpoint --model is required"),
    # began.evaluate
    (evaluate.main, ["--run", "abc", "--metrics", "nonsense"], "--metrics: "),
    (evaluate.main, ["--run", "abc", "--num-samples", "1"], "--num-samples: "),
    (evaluate.main, ["--run", "abc", "--device", "cuda:3"], "--device: "),
    (evaluate.main, ["--run", "abc", "--tracking-uri", UNREACHABLE], "--tracking-uri "),
    # the studies (more in test_study_parts.py)
    (gamma_sweep.main, ["--gammas", "0,0.5"], "--gammas: "),
    (gamma_sweep.main, ["--image-size", "24"], "--image-size: "),
    (gamma_sweep.main, ["--workers-per-device", "0"], "--workers-per-device: "),
    (gamma_sweep.main, ["--heartbeat", "0"], "--heartbeat: "),
    (gamma_sweep.main, ["--collapse-ssim", "2"], "--collapse-ssim: "),
    (gamma_sweep.main, ["--tracking-uri", UNREACHABLE], "--tracking-uri "),
    (gamma_sweep.main, ["--storage", "postgresql://u:pw@127.0.0.1:9/optuna"], "--storage: "),
    (gamma_sweep.main, ["--study-name", "a b"], "--study-name: "),
    (gamma_sweep.main, ["--preset", "paper-ish"], "argument --preset: invalid choice"),
    (gamma_sweep.main, ["--tf32", "1"], "--tf32: must be on or off"),
    (search.main, ["--system-metrics", "maybe"], "argument --system-metrics: invalid choice"),
    (search.main, ["--space", "gamma=0.2:"], "--space: "),
    (search.main, ["--space", "repeat=1:3:log:x"], "--space: "),
    (search.main, ["--objectives", "m_global,nope"], "--objectives: "),
    (search.main, ["--sampler", "magic"], "argument --sampler: invalid choice"),
    (search.main, ["--timeout", "-5"], "--timeout: "),
    # the reports
    (report.main, ["--study", "x"], "--storage sqlite:///optuna.db: no such database file"),
    (report.main, ["--runs", "abc", "--tracking-uri", UNREACHABLE], "--tracking-uri "),
    (report.main, [], "one of the arguments --study --experiment --runs is required"),
    (export.main, ["--study", "x", "--out", "runs.csv"], "--storage sqlite:///optuna.db: "),
]


@pytest.mark.parametrize(
    ("main", "args", "message"), CASES, ids=[f"{m.__module__}:{' '.join(a)}" for m, a, _ in CASES]
)
def test_bad_input_is_one_line_exit_2_and_starts_nothing(tmp_path, monkeypatch, capsys, main,
                                                         args, message):  # fmt: skip
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, args)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0] == lines[-1], lines  # one line, the last one
    assert errors[0].startswith(f"error: {message}") or f": {message}" in errors[0], errors[0]
    assert "Traceback" not in "\n".join(lines) and "pw@" not in errors[0]
    assert not (tmp_path / "optuna.db").exists() and not (tmp_path / "mlruns").exists()


def write_folder(root):
    """Good faces among everything a scraped folder holds."""
    rng = np.random.default_rng(0)
    root.mkdir()
    colour = lambda: Image.fromarray(rng.integers(0, 255, (40, 40, 3), np.uint8))  # noqa: E731
    for i in range(24):
        colour().save(root / f"good{i}.jpg")
    colour().save(root / "rgba.png")  # alpha: composited, kept
    Image.fromarray(rng.integers(0, 65535, (40, 40), np.uint16)).save(root / "deep.png")  # 16-bit
    colour().convert("CMYK").save(root / "cmyk.jpg")  # CMYK: converted, kept
    Image.fromarray(rng.integers(0, 255, (40, 40), np.uint8)).save(root / "gray.jpg")
    (root / "empty.jpg").write_bytes(b"")
    (root / "notes.jpg").write_text("not an image at all")
    data = (root / "good0.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (root / "corrupt.jpg").write_bytes(data[:200] + bytes(500) + data[700:])
    Image.fromarray(rng.integers(0, 255, (2, 2, 3), np.uint8)).save(root / "tiny.png")
    (root / "readme.txt").write_text("ignored: not an image extension")
    return root


def test_a_messy_folder_trains_on_the_good_images_and_reports_the_rest(tmp_path, caplog):
    folder = write_folder(tmp_path / "faces")
    tracker = MemoryTracker(tmp_path, run_id="messy")
    result = train(tiny(data=str(folder), holdout=-1, steps=2, keep_grayscale=False), tracker)
    assert result.step == 2
    kept = int(tracker.tags["dataset_images"])
    skipped = int(tracker.tags["dataset_skipped_unreadable"])
    assert int(tracker.tags["dataset_skipped_grayscale"]) >= 1  # gray.jpg (and 16-bit gray)
    assert kept >= 24 + 2  # the good ones, plus RGBA and CMYK converted
    assert skipped >= 3  # empty, not an image, truncated (corrupt may decode partly)
    named = caplog.text
    for bad in ("empty.jpg", "notes.jpg"):
        assert bad in named, bad
