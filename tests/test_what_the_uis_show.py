"""What `mlflow ui` and optuna-dashboard show of a study, read back through MLflow's and
Optuna's own APIs (the ones the UIs call): run names and descriptions, image cards that
have a grid at the first step, the dataset input, named logged models with their params,
step and metrics, the registered generator and loading it back, and an Optuna study
whose only dimension is what the grid searches."""

import contextlib
import io
import json
import shutil

import mlflow
import numpy as np
import optuna
import pytest
import torch
from optuna.distributions import FloatDistribution

from began import sample
from began.cli import run_cli
from began.tracking.mlflow_models import run_generator
from began.training.images import reconstruction_grid
from studies import gamma_sweep, register
from studies.naming import MAX_DESCRIPTION, short_value, trial_name
from studies.schema import COLLAPSE_ATTR, FINAL_PREFIX, final_metrics
from tests.test_studies import SHORT, TINY, child_runs, trials

NAME = "uis"


@pytest.fixture(scope="module")
def finished(tmp_path_factory, migrated_mlflow_db):
    """One tiny sweep of two gammas, its best generator registered: (folder, output)."""
    folder = tmp_path_factory.mktemp("uis")
    shutil.copyfile(migrated_mlflow_db, folder / "mlflow.db")
    args = [*TINY, *SHORT, "--gammas", "0.4,0.7", "--seeds", "1", "--workers", "1",
            "--study-name", NAME, "--register-best", "uis-best"]  # fmt: skip
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(io.StringIO()) as out:
        patch.chdir(folder)
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        assert gamma_sweep.main(args) == 0
    return folder, out.getvalue()


@pytest.fixture
def study_folder(finished, monkeypatch):
    monkeypatch.chdir(finished[0])
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return finished[0]


def test_runs_models_dataset_and_registry_read_back_as_the_uis_show_them(study_folder, finished):
    client, [parent], children = child_runs(study_folder, NAME)
    done = {t.user_attrs["mlflow_run_id"]: t for t in trials(study_folder, NAME)}
    out = finished[1]
    assert parent.data.params["space"] == "gamma=0.4,0.7 seed=0"  # the grid as given
    for run in children:
        trial = done[run.info.run_id]
        gamma = trial.params["gamma"]
        # The run's name says which gamma it is (one seed: no seed in the name) ...
        assert run.info.run_name == f"t{trial.number} gamma={gamma}"
        assert f"{run.info.run_name} COMPLETE" in out  # ... the same in the output
        # ... and its description is one line about the trial, not the parameter list.
        note = run.data.tags["mlflow.note.content"]
        assert note.startswith(f"t{trial.number} gamma={gamma} of study {NAME}")
        assert "COMPLETE diversity_gap=" in note and "\n" not in note
        assert len(note) <= MAX_DESCRIPTION
        # Image cards open on the first step: a grid is logged at step 0.
        images = client.list_artifacts(run.info.run_id, "images")
        steps = {int(a.path.split("+step+")[1].split("+")[0]) for a in images if "+step+" in a.path}
        assert {0, 8} <= steps
        # The training data is a dataset input, found by its digest.
        [used] = run.inputs.dataset_inputs
        assert used.dataset.digest == run.data.tags["dataset_fingerprint"]
        assert used.dataset.source_type == "builtin"
        assert used.dataset.name == "built-in faces 16x16"
        assert json.loads(used.dataset.profile)["images"] == int(run.data.tags["dataset_images"])
        assert {t.key: t.value for t in used.tags} == {"mlflow.data.context": "training"}
        # Two logged models named for the study, trial and role, at the step they were saved,
        # with the run's config as params and the final evaluation as metrics.
        models = [client.get_logged_model(o.model_id) for o in run.outputs.model_outputs]
        assert sorted(m.name for m in models) == [f"{NAME}-t{trial.number}-discriminator",
                                                  f"{NAME}-t{trial.number}-generator"]  # fmt: skip
        assert {o.step for o in run.outputs.model_outputs} == {8}
        for model in models:
            assert float(model.params["gamma"]) == gamma and model.params["steps"] == "8"
            linked = {m.key: m.value for m in model.metrics}
            assert linked["m_global_mean"] == pytest.approx(run.data.metrics["m_global_mean"])
            assert all(m.dataset_digest == used.dataset.digest for m in model.metrics)
        # Final metrics are attributes of their own, short numbers.
        assert trial.user_attrs[FINAL_PREFIX + "step"] == 8
        assert final_metrics(trial.user_attrs)["m_global"] == pytest.approx(
            run.data.metrics["m_global_mean"], rel=1e-4
        )
        assert max(len(json.dumps(v)) for v in trial.user_attrs.values()) < 80  # was 300+
    # Runs on the same data are found by it.
    digest = children[0].inputs.dataset_inputs[0].dataset.digest
    same = client.search_runs([parent.info.experiment_id], f"dataset.digest = '{digest}'")
    assert len(same) == 2
    # The best generator is registered with its study and trial, and loads by name.
    [version] = client.search_model_versions("name = 'uis-best'")
    best = optuna.load_study(study_name=NAME, storage="sqlite:///optuna.db").best_trial
    assert version.tags["study_name"] == NAME and version.tags["trial_number"] == str(best.number)
    assert float(version.tags["objective_diversity_gap"]) == pytest.approx(best.value)
    assert version.run_id == best.user_attrs["mlflow_run_id"]
    registered = run_generator(client, version.run_id)
    assert json.loads(registered.tags["mlflow.modelVersions"]) == [
        {"name": "uis-best", "version": "1"}
    ]  # what the Logged models table's "Registered models" column shows
    assert "registered the generator of trial" in out and "--model models:/uis-best/latest" in out
    written = sample.main(["--model", "models:/uis-best/latest", "--out", "best.png",
                           "--num", "4", "--width", "0"])  # fmt: skip
    assert written.is_file()


def test_the_study_searches_only_gamma_and_keeps_the_seed_as_an_attribute(study_folder):
    done = trials(study_folder, NAME)
    # optuna-dashboard's importance, contour and rank plots read these distributions.
    assert {name for t in done for name in t.distributions} == {"gamma"}
    assert all(isinstance(t.distributions["gamma"], FloatDistribution) for t in done)
    assert [t.user_attrs["seed"] for t in done] == [0, 0]
    study = optuna.load_study(study_name=NAME, storage="sqlite:///optuna.db")
    assert study.user_attrs["space"] == "gamma=0.4,0.7 seed=0"


def test_registering_again_after_the_fact_adds_a_version(study_folder, capsys):
    assert register.main(["--study", NAME, "--name", "uis-again"]) == 0
    assert register.main(["--study", NAME, "--name", "uis-again", "--trial", "1"]) == 0
    client = mlflow.MlflowClient("sqlite:///mlflow.db")
    versions = client.search_model_versions("name = 'uis-again'")
    assert sorted(int(v.version) for v in versions) == [1, 2]
    assert {v.tags["trial_number"] for v in versions if v.version in (2, "2")} == {"1"}
    assert "as models:/uis-again/2" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--study", "nope", "--name", "x"], "--study nope: no such study"),
        (["--study", NAME, "--name", "x", "--trial", "9"], "--trial 9: no complete trial"),
        (["--study", NAME, "--name", "bad/name"], "--name: 'bad/name' may hold only"),
    ],
)
def test_register_refuses_bad_input_in_one_line(study_folder, capsys, argv, message):
    with pytest.raises(SystemExit) as ended:
        run_cli(register.main, argv)
    assert ended.value.code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and "Traceback" not in "\n".join(err)


def test_sample_refuses_a_model_that_is_not_there(study_folder, capsys):
    with pytest.raises(SystemExit):
        run_cli(sample.main, ["--model", "models:/nope/latest", "--out", "x.png"])
    assert "no registered model named 'nope'" in capsys.readouterr().err


def test_names_show_what_varies_in_short_values():
    assert trial_name(7, {"gamma": 0.41, "lambda_k": 0.0032, "repeat": 2},
                      ["gamma", "lambda_k", "repeat"]) == "t7 gamma=0.41 lk=3.2e-3 d=2"  # fmt: skip
    assert trial_name(1, {"gamma": 0.5, "seed": 3}, ["gamma"]) == "t1 gamma=0.5"
    assert [short_value(v) for v in (0.5, 0.41234, 1e-4, 64, True)] == [
        "0.5", "0.412", "1e-4", "64", "true"
    ]  # fmt: skip


def test_reconstruction_rows_are_labelled_in_a_margin_left_of_the_images():
    real = torch.full((16, 3, 16, 16), 1.0)  # white images: any label pixel is elsewhere
    grid = reconstruction_grid(real, real, columns=8)
    margin = grid[:, : grid.shape[1] - (8 * 18 + 2)]  # 8 columns of 16 px + 2 px padding
    assert margin.shape[1] > 0
    rows = [margin[2 + 18 * r : 18 * (r + 1)] for r in range(4)]  # x, D(x), x, D(x)
    assert all(row.max() > 100 for row in rows)  # each row has its label drawn
    assert not np.array_equal(rows[0], rows[1])  # and the two labels differ
    assert np.array_equal(rows[0], rows[2])


def test_a_collapsed_trial_says_so_in_its_attribute_and_the_trials_table():
    from studies.records import trials_table

    study = optuna.create_study()
    study.add_trial(optuna.trial.create_trial(
        params={"gamma": 0.3}, distributions={"gamma": FloatDistribution(0, 1)}, value=0.6,
        user_attrs={COLLAPSE_ATTR: "near collapse: diversity SSIM 0.858 vs 0.241"},
    ))  # fmt: skip
    [row] = trials_table(study)
    assert row["reason"].startswith("near collapse: diversity SSIM 0.858")
