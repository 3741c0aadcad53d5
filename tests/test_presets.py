"""`--preset demo|paper`: which defaults a command line starts from, said out loud.

The default follows --data; an explicit preset overrides it; the user's options go over
the preset; the command's first line names it; the run records it and keeps it on resume.
"""

from dataclasses import replace

import mlflow
import pytest

from began import train as train_cli
from began.checkpoint import load_checkpoint
from began.cli import run_cli
from began.config import DEMO, PAPER, PRESETS, ConfigError, TrainConfig, config_from_options
from began.training.learner import check_resumable
from studies import gamma_sweep, search
from studies.cli import study_spec
from studies.space import grid_space
from studies.spec import GRID, config_fingerprint

TINY_ARGS = [
    "--preset", "demo", "--image-size", "16", "--filters", "4", "--hidden", "8",
    "--batch-size", "4", "--holdout", "8", "--num-grid", "8", "--device", "cpu",
    "--log-every", "1", "--sample-every", "2", "--checkpoint-every", "2", "--metrics", "",
    "--quiet",
]  # fmt: skip


def test_the_default_preset_follows_data():
    demo = config_from_options({})
    assert demo.preset == DEMO and demo.image_size == 32 and demo.filters == 16
    assert demo.eval_every == demo.steps // PRESETS[DEMO].evaluations
    paper = config_from_options({"data": "/faces"})
    assert paper.preset == PAPER and paper == replace(
        TrainConfig(), preset=PAPER, data="/faces", eval_every=200_000 // 10
    )


def test_an_explicit_preset_overrides_the_default():
    small_on_real_data = config_from_options({"preset": DEMO, "data": "/faces"})
    assert small_on_real_data.preset == DEMO and small_on_real_data.data == "/faces"
    assert small_on_real_data.image_size == 32 and small_on_real_data.steps == 1500
    paper_on_builtin_faces = config_from_options({"preset": PAPER})
    assert paper_on_builtin_faces.data == "" and paper_on_builtin_faces.image_size == 64
    with pytest.raises(ConfigError, match="^preset: must be one of demo, paper"):
        config_from_options({"preset": "huge"})


def test_the_user_s_options_beat_the_preset():
    cfg = config_from_options({"preset": DEMO, "image_size": 64, "steps": 30})
    assert cfg.preset == DEMO and cfg.image_size == 64 and cfg.filters == 16
    assert cfg.eval_every == 10  # the demo's 3 evaluations, over the user's steps
    assert config_from_options({"preset": PAPER, "eval_every": 7}).eval_every == 7


def test_the_preset_is_a_label_old_records_and_study_names_do_without():
    old = {k: v for k, v in config_from_options({}).to_dict().items() if k != "preset"}
    restored = TrainConfig.from_dict(old)  # a checkpoint written before presets existed
    assert restored.preset == ""
    labelled = replace(restored, preset=DEMO)
    check_resumable(restored, labelled)  # no "differ from the checkpoint's config"
    assert config_fingerprint(restored, set()) == config_fingerprint(labelled, set())
    with pytest.raises(ConfigError, match="^preset: "):
        TrainConfig(preset="huge")


@pytest.mark.parametrize("parser", [train_cli.build_parser, gamma_sweep.parser, search.parser])
def test_help_lists_each_preset_s_values(parser):
    flat = " ".join(parser().format_help().split())
    assert "--preset {demo,paper}" in flat
    assert "(default: paper with --data, demo without)" in flat
    assert "demo: a small model that trains on a CPU in minutes, image_size=32," in flat
    assert "paper: the paper's values, 10 evaluations" in flat
    assert "(default: demo 16, paper 64)" in flat  # --filters: which preset each value is
    assert "k_0, the initial value of k (default: 0.0)" in flat  # the same in both


@pytest.mark.parametrize("main", [train_cli.main, gamma_sweep.main])
def test_a_bad_preset_is_one_line_and_exit_2(main, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, ["--preset", "huge"])
    assert exit_info.value.code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: argument --preset: invalid choice: 'huge'"), line


def test_a_study_s_header_and_default_objective_follow_the_preset(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)

    def spec_for(*argv):
        args = gamma_sweep.parser().parse_args(list(argv))
        spec = study_spec(args, GRID, "gamma-sweep", grid_space(), grid=())
        return spec, capsys.readouterr().out.splitlines()[0]

    spec, header = spec_for()
    assert spec.base_config.preset == DEMO and [o.name for o in spec.objectives] == ["diversity"]
    assert header.startswith("preset demo (the default without --data; --preset paper for ")
    assert "image_size=32 " in header
    spec, header = spec_for("--data", str(tmp_path))
    assert spec.base_config.preset == PAPER and [o.name for o in spec.objectives] == ["fid"]
    assert header.startswith("preset paper (the default with --data; --preset demo for ")
    spec, header = spec_for("--data", str(tmp_path), "--preset", "demo", "--filters", "8")
    assert spec.base_config.preset == DEMO and [o.name for o in spec.objectives] == ["diversity"]
    assert header.startswith("preset demo (--preset): ") and "filters=" not in header


def test_a_run_logs_its_preset_and_keeps_it_on_resume(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # MLflow's default sqlite:///mlflow.db and ./mlruns here
    result = train_cli.main([*TINY_ARGS, "--steps", "2"])
    first_line = capsys.readouterr().out.splitlines()[0]
    assert first_line.startswith("preset demo (--preset): crop=none keep_grayscale=True ")
    client = mlflow.MlflowClient()
    assert client.get_run(result.run_id).data.params["preset"] == DEMO

    again = train_cli.main(["--resume", result.run_id, "--steps", "4", "--quiet"])
    assert again.step == 4
    first_line = capsys.readouterr().out.splitlines()[0]
    assert first_line.startswith(f"preset demo (run {result.run_id}'s own): ")
    [checkpoint] = list(tmp_path.glob(f"mlruns/*/{result.run_id}/artifacts/checkpoints/last.pt"))
    assert load_checkpoint(checkpoint).config.preset == DEMO

    with pytest.raises(SystemExit) as exit_info:
        run_cli(train_cli.main, ["--resume", result.run_id, "--preset", "paper"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"error: --preset: run {result.run_id} started from preset demo")
