"""End to end into a SQLite MLflow store under tmp_path: the CLI, resume, sample, evaluate."""

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
from PIL import Image

import began.training.loop as train_module
from began import evaluate, sample
from began.cli import run_cli
from began.tracking.mlflow_models import run_generator
from began.train import main

EXPERIMENT = "began"
TINY_ARGS = [
    "--image-size", "16", "--filters", "4", "--hidden", "8", "--repeat", "1",
    "--batch-size", "4", "--holdout", "8", "--num-grid", "8", "--device", "cpu",
    "--log-every", "2", "--sample-every", "4", "--checkpoint-every", "4",
    "--metrics", "diversity_16,recon,sharpness_16", "--quiet",
]  # fmt: skip


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A project folder: MLflow's default sqlite:///mlflow.db and ./mlruns live here.

    One store for the module (creating its tables takes seconds); each test
    writes to an experiment of its own.
    """
    folder = tmp_path_factory.mktemp("project")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        yield folder


@pytest.fixture
def store(project, request, monkeypatch):
    monkeypatch.chdir(project)
    global EXPERIMENT
    EXPERIMENT = request.node.name
    return mlflow.MlflowClient()  # the default URI, as a plain `mlflow ui` here would use


def tiny_args(*extra):
    return [*TINY_ARGS, "--experiment", EXPERIMENT, *extra]


def only_run(client):
    experiment = client.get_experiment_by_name(EXPERIMENT)
    [run] = client.search_runs([experiment.experiment_id])
    return run


def test_train_records_a_complete_run(store, project):
    main(tiny_args("--steps", "8", "--run-name", "tiny"))
    run = only_run(store)
    assert run.info.status == "FINISHED" and run.info.run_name == "tiny"
    assert (project / "mlflow.db").is_file() and (project / "mlruns").is_dir()
    params = run.data.params
    for name in ("gamma", "lambda_k", "image_size", "filters", "hidden", "repeat", "batch_size",
                 "lr", "seed"):  # fmt: skip
        assert name in params
    assert params["image_size"] == "16" and params["gamma"] == "0.5"
    tags = run.data.tags
    for name in ("git_commit", "packages", "device_name", "dataset_path", "dataset_images",
                 "dataset_fingerprint"):  # fmt: skip
        assert tags[name], name
    assert "built-in demo" in tags["dataset_note"]
    history = store.get_metric_history(run.info.run_id, "m_global")
    assert [m.step for m in history] == [2, 4, 6, 8]
    for name in ("k", "loss_d", "loss_g", "loss_real", "loss_fake", "balance", "lr", "images_per_s",
                 "m_global_mean", "recon_psnr", "diversity_ssim", "blur_effect"):  # fmt: skip
        assert name in run.data.metrics, name
    artifacts = {a.path for a in store.list_artifacts(run.info.run_id)}
    assert {"config.json", "checkpoints", "images"} <= artifacts
    config = json.loads(mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/config.json"))
    assert config["filters"] == 4
    images = [a.path for a in store.list_artifacts(run.info.run_id, "images")]
    assert any("samples+step+4" in p for p in images) and any(
        "reconstructions+step+8" in p for p in images
    )
    model_id = run_generator(store, run.info.run_id).model_id  # the run's logged generator
    generator = mlflow.pytorch.load_model(f"models:/{model_id}")
    import torch

    assert generator(torch.zeros(3, 8)).shape == (3, 3, 16, 16)


def test_resume_continues_the_same_run(store):
    main(tiny_args("--steps", "4"))
    run_id = only_run(store).info.run_id
    main(["--resume", run_id, "--steps", "8", "--quiet"])
    run = only_run(store)  # still one run
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    assert run.data.tags["resume_count"] == "1"
    assert [m.step for m in store.get_metric_history(run_id, "k")] == [2, 4, 6, 8]


def test_failure_marks_the_mlflow_run_failed(store, monkeypatch):
    def broken_step(*args):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(train_module, "train_step", broken_step)
    with pytest.raises(RuntimeError):
        main(tiny_args("--steps", "4"))
    run = only_run(store)
    assert run.info.status == "FAILED"
    assert "RuntimeError: out of memory" in run.data.tags["error"]


def test_sample_writes_grids_and_walks(store, tmp_path):
    main(tiny_args("--steps", "4"))
    run_id = only_run(store).info.run_id
    out = sample.main(["--run", run_id, "--num", "9", "--out", str(tmp_path / "grid.png")])
    # 3x3 tiles of 16 px + 2 px padding, upscaled x18 to ~1,000 px as the logged grids are
    assert Image.open(out).size == (18 * (3 * 18 + 2), 18 * (3 * 18 + 2))
    native = sample.main(["--run", run_id, "--num", "9", "--width", "0",
                          "--out", str(tmp_path / "native.png")])  # fmt: skip
    assert Image.open(native).size == (3 * 18 + 2, 3 * 18 + 2)
    walk = sample.main(["--run", run_id, "--num", "12", "--interpolate", "slerp", "--width", "0",
                        "--walk-length", "6", "--out", str(tmp_path / "walk.png")])  # fmt: skip
    pixels = np.asarray(Image.open(walk))
    assert pixels.shape == (2 * 18 + 2, 6 * 18 + 2, 3)
    [path] = list(Path("mlruns").glob(f"*/{run_id}/artifacts/checkpoints/last.pt"))
    assert sample.main(["--checkpoint", str(path), "--out", str(tmp_path / "c.png")]).is_file()


def test_evaluate_logs_into_the_finished_run(store):
    main(tiny_args("--steps", "4", "--metrics", ""))
    run_id = only_run(store).info.run_id
    values = evaluate.main(["--run", run_id, "--metrics", "diversity,recon,sharpness",
                            "--num-samples", "16"])  # fmt: skip
    run = only_run(store)
    assert run.info.status == "FINISHED"  # evaluating did not reopen or fail the run
    assert run.data.metrics["recon_psnr"] == pytest.approx(values["recon_psnr"])
    assert [m.step for m in store.get_metric_history(run_id, "diversity_ssim")] == [4]
    assert [m.step for m in store.get_metric_history(run_id, "m_global")] == [2, 4]


def test_evaluate_with_another_feature_network(store, tiny_network):
    main(tiny_args("--steps", "4", "--metrics", ""))
    run_id = only_run(store).info.run_id
    values = evaluate.main(["--run", run_id, "--metrics", "fid_8,kid_8",
                            "--feature-network", str(tiny_network)])  # fmt: skip
    assert set(values) == {"fid_8", "kid_8", "kid_8_std"} and values["fid_8"] > 0
    assert [m.step for m in store.get_metric_history(run_id, "fid_8")] == [4]
    with pytest.raises(SystemExit):
        run_cli(evaluate.main, ["--run", run_id, "--feature-network", "/no/such/net.pt"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--image-size", "48"], "error: --image-size: "),
        (["--gamma", "1.5"], "error: --gamma: "),
        (["--data", "/no/such/folder"], "/no/such/folder"),
        (["--device", "cuda:3"], "error: --device: "),
        (["--metrics", "fid,nonsense"], "error: --metrics: "),
        (["--crop", "banana"], "error: --crop: "),
        (["--feature-network", "/no/such/net.pt"], "/no/such/net.pt"),
        (["--resume", "0123456789abcdef"], "0123456789abcdef"),
    ],
)
def test_bad_input_is_one_line_naming_the_option(store, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, tiny_args(*args, "--steps", "2"))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert "Traceback" not in err


def test_help_lists_every_option():
    out = subprocess.run(
        [sys.executable, "-m", "began.train", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for option in ("--data", "--image-size", "--crop", "--filters", "--hidden", "--repeat",
                   "--skip", "--gamma", "--lambda-k", "--lr", "--lr-min", "--batch-size",
                   "--steps", "--log-every", "--sample-every", "--checkpoint-every", "--seed",
                   "--device", "--experiment", "--run-name", "--tracking-uri", "--resume",
                   "--quiet"):  # fmt: skip
        assert option in out, option
