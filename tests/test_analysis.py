"""Analysis reports over one small real study (complete, pruned, failed, running and
waiting trials), checked against the MLflow and Optuna records they come from."""

import base64
import io
import json
import math
import pickle
import re
import signal
from pathlib import Path

import mlflow
import optuna
import pandas as pd
import pytest
import torch
from PIL import Image

import began.training.loop as train_module
import studies.fleet.worker as worker_module
from analysis import export, load_history, load_runs, report, sections
from analysis.history import list_images
from analysis.sections import ReportInputs
from began.cli import run_cli
from studies.fleet.storage import prepare_study
from studies.records import open_parent_run
from tests.test_studies import tiny_spec

NAME = "report"


def spec_in(folder):
    return tiny_spec(folder, NAME, [0.3, 0.5, 0.7, 0.9], objectives="diversity,m_global",
                     extra=["--sample-every", "4"])  # fmt: skip


def faulty_step(real_step):
    """gamma 0.7 diverges (NaN: pruned), gamma 0.9 raises (failed) after step 5."""

    def step(*args):
        state, metrics = real_step(*args)
        if args[8].gamma == 0.9 and state.step >= 5:
            raise RuntimeError("CUDA error: out of memory")
        if args[8].gamma == 0.7 and state.step >= 5:
            metrics = {**metrics, "m_global": metrics["m_global"] * float("nan")}
        return state, metrics

    return step


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("study")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.setenv("BEGAN_CACHE_DIR", str(folder / "cache"))
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        patch.setattr(train_module, "train_step", faulty_step(train_module.train_step))
        spec = spec_in(folder)
        study = prepare_study(spec)
        parent = open_parent_run(spec, study).run_id
        with pytest.raises(SystemExit):
            worker_module.worker_main(spec, 0, "cpu", 1, parent)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        torch.set_num_threads(1)
        study = optuna.load_study(study_name=NAME, storage=spec.storage)
        study.ask()  # a trial still running (its worker has not reported yet)
        study.enqueue_trial({"gamma": 1.0, "seed": 0})  # and one waiting in the queue
    return folder


@pytest.fixture
def here(folder, monkeypatch):
    monkeypatch.chdir(folder)  # the default sqlite:///optuna.db and mlflow.db
    return folder


def mlflow_runs(folder):
    client = mlflow.MlflowClient(f"sqlite:///{folder}/mlflow.db")
    experiment = client.get_experiment_by_name(NAME).experiment_id
    runs = {r.info.run_id: r for r in client.search_runs([experiment])}
    return client, runs


def test_load_runs_is_one_typed_row_per_trial_matching_the_records(here):
    df = load_runs(study=NAME)
    assert list(df["trial"]) == [0, 1, 2, 3, 4, 5]
    assert list(df["state"].astype(str)) == ["COMPLETE", "COMPLETE", "PRUNED", "FAIL",
                                             "RUNNING", "WAITING"]  # fmt: skip
    assert "diverged" in df.loc[2, "reason"] and "out of memory" in df.loc[3, "reason"]
    assert isinstance(df["state"].dtype, pd.CategoricalDtype)
    assert df["gamma"].dtype == float and df["steps"].dtype.kind == "f"  # NaN: no run
    assert str(df["start_time"].dtype).startswith("datetime64")
    assert df.attrs["objectives"] == ["diversity_gap", "m_global"]
    assert df.attrs["directions"] == ["minimize", "minimize"]
    _, runs = mlflow_runs(here)
    for row in df[df["run_id"].notna()].itertuples():
        run = runs[row.run_id]
        assert float(run.data.params["gamma"]) == row.gamma
        assert run.data.tags["trial_number"] == str(row.trial)
        metrics = run.data.metrics
        if row.state == "COMPLETE":
            assert row.objective_diversity_gap == pytest.approx(metrics["objective_diversity_gap"])
            assert row.final_m_global_mean == pytest.approx(metrics["m_global_mean"])
    assert df["run_id"].iloc[4:].isna().all()  # running and waiting: no run yet


def test_histories_match_mlflow_and_come_from_the_cache_the_second_time(here, monkeypatch):
    df = load_runs(study=NAME)
    ids = df["run_id"].dropna()
    hist = load_history(ids, ["m_global", "k", "no_such_metric"])
    assert set(hist.columns) == {"run_id", "key", "step", "value"}
    client, _ = mlflow_runs(here)
    for run_id in ids:
        points = client.get_metric_history(run_id, "k")
        mine = hist[(hist["run_id"] == run_id) & (hist["key"] == "k")]
        assert list(mine["step"]) == sorted({p.step for p in points})
    assert "no_such_metric" not in set(hist["key"])

    def no_fetch(*args, **kwargs):
        raise AssertionError("fetched again")

    monkeypatch.setattr(mlflow.MlflowClient, "get_metric_history", no_fetch)
    again = load_history(ids, ["m_global", "k"])
    pd.testing.assert_frame_equal(again, hist)


def test_report_renders_every_section_with_its_tables_and_images(here, capsys):
    assert report.main(["--study", NAME, "--out", "out", "--window", "4"]) == 0
    out = here / "out"
    summary = pd.read_csv(out / "summary.csv")
    assert len(summary) == 6 and list(summary["state"])[:4] == ["COMPLETE", "COMPLETE",
                                                                "PRUNED", "FAIL"]  # fmt: skip
    assert summary.loc[3, "steps"] < 8 <= summary.loc[0, "steps"]  # the failed one stopped
    assert {"gamma", "seed", "diversity_gap", "m_global", "wall_s", "reason"} <= set(summary)
    equilibrium = pd.read_csv(out / "equilibrium.csv")
    assert len(equilibrium) == 4  # every trial that has a run
    assert pd.read_csv(out / "samples.csv")["step"].notna().sum() >= 2
    pareto = pd.read_csv(out / "pareto.csv")
    assert set(pareto["trial"]) <= {0, 1} and len(pareto) >= 1
    mglobal = pd.read_csv(out / "mglobal.csv")
    assert mglobal.loc[0, "group"] == "all" and mglobal.loc[0, "n"] == 2
    html = (out / "report.html").read_text()
    embedded = re.findall(r"src='data:image/png;base64,([^']+)'", html)
    assert len(embedded) >= 6
    for data in embedded:
        Image.open(io.BytesIO(base64.b64decode(data))).verify()
    markdown = (out / "report.md").read_text()
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    assert len(linked) == len(embedded)
    for name in linked:
        with Image.open(out / name) as image:
            assert image.format == "PNG"
    for state in ("PRUNED", "FAIL", "RUNNING", "WAITING"):
        assert state in html
    client, runs = mlflow_runs(here)
    [parent] = [r for r in runs.values() if "study_kind" in r.data.tags]
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert "report/report.html" in logged
    assert "report:" in capsys.readouterr().out


def test_report_json_holds_the_budget_curves_and_says_no_seeds_were_compared(here):
    assert report.main(["--study", NAME, "--out", "json", "--format", "json", "--no-log"]) == 0
    document = json.loads((here / "json" / "report.json").read_text())
    assert document["verdicts"] == []  # one seed per gamma: nothing to compare with
    curves = {c["metric"]: c for c in document["budget_curves"]}
    assert set(curves) == {"diversity_gap", "m_global"}
    assert curves["m_global"]["n_trials"] == [1, 2]  # the two complete trials
    best = pd.read_csv(here / "json" / "summary.csv")["m_global"].dropna().min()
    assert curves["m_global"]["expected_best"][-1] == pytest.approx(best)
    assert not (here / "json" / "report.html").exists()


def test_progress_grids_of_a_chosen_run_and_a_runs_report(here):
    df = load_runs(study=NAME)
    chosen = df.loc[1, "run_id"]
    assert report.main(["--study", NAME, "--out", "o2", "--run", chosen, "--no-log",
                        "--format", "md"]) == 0  # fmt: skip
    steps = pd.read_csv(here / "o2" / "progress.csv")["step"]
    assert list(steps) == sorted(list_images([chosen], "samples")["step"])
    assert not (here / "o2" / "report.html").exists()
    ids = ",".join(df["run_id"].dropna()[:2])
    assert report.main(["--runs", ids, "--out", "o3"]) == 0
    assert len(pd.read_csv(here / "o3" / "summary.csv")) == 2


def test_export_writes_csv_and_parquet(here):
    assert export.main(["--study", NAME, "--out", "runs.csv"]) == 0
    assert export.main(["--study", NAME, "--out", "runs.parquet"]) == 0
    assert len(pd.read_csv(here / "runs.csv")) == 6
    back = pd.read_parquet(here / "runs.parquet")
    assert len(back) == 6 and back["gamma"].dtype == float


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--study", "nope"], "error: --study nope: no such study in sqlite:///optuna.db"),
        (["--runs", "0123abc"], "error: --runs 0123abc: no such run"),
        (["--experiment", "nope"], "error: --experiment nope: no MLflow experiment"),
        (["--study", NAME, "--storage", "sqlite:///missing.db"],
         "error: --storage sqlite:///missing.db: no such database file"),
        (["--study", NAME, "--run", "abc", "--no-log"], "error: --run abc: not one of"),
    ],
)  # fmt: skip
def test_unknown_names_are_one_line_errors(here, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(report.main, argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(message) and "\n" not in err
    assert not (here / "missing.db").exists()


def built_inputs(runs: pd.DataFrame, history: pd.DataFrame) -> ReportInputs:
    return ReportInputs(runs, history, study=None, tracking_uri="", window_steps=2)


def test_equilibrium_ratio_and_verdict_match_hand_computed_values():
    steps = list(range(1, 11))
    real = [s / 10 for s in steps]  # 0.1 .. 1.0; the last rolling mean (2 steps) is 0.95
    rows = []
    for run_id, fake in (("a", [0.5 * r for r in real]), ("b", [0.2] * 10)):
        rows += [(run_id, "loss_real", s, r) for s, r in zip(steps, real, strict=True)]
        rows += [(run_id, "loss_fake", s, f) for s, f in zip(steps, fake, strict=True)]
    history = pd.DataFrame(rows, columns=["run_id", "key", "step", "value"])
    runs = pd.DataFrame(
        {
            "run_id": ["a", "b"],
            "trial": [0, 1],
            "state": ["COMPLETE"] * 2,
            "gamma": [0.5, 0.7],
            "log_every": [1, 1],
            "current": [True, True],
        }
    )
    table = sections.equilibrium(built_inputs(runs, history)).table.set_index("trial")
    assert table.loc[0, "loss_real"] == pytest.approx(0.95)
    assert table.loc[0, "fake_over_real"] == pytest.approx(0.5)
    assert table.loc[0, "off_by"] == pytest.approx(0.0, abs=1e-12)
    assert table.loc[0, "at_equilibrium"] == "yes"
    assert table.loc[1, "fake_over_real"] == pytest.approx(0.2 / 0.95)
    assert table.loc[1, "off_by"] == pytest.approx(abs(0.2 / 0.95 - 0.7) / 0.7)
    assert table.loc[1, "at_equilibrium"] == "no"


def test_spearman_rho_of_m_global_against_fid_matches_hand_computed_values():
    # FID ranks 1, 3, 2, 4 against M_global ranks 1..4: rho = 1 - 6 * 2 / (4 * 15) = 0.8;
    # within gamma 0.5 (n = 3): 1 - 6 * 2 / (3 * 8) = 0.5; gamma 0.7 has one trial: no rho.
    runs = pd.DataFrame({
        "run_id": list("abcd"), "trial": [0, 1, 2, 3], "state": ["COMPLETE"] * 4,
        "gamma": [0.5, 0.5, 0.5, 0.7], "current": [True] * 4,
        "final_m_global_mean": [1.0, 2.0, 3.0, 4.0], "final_fid_1k": [10.0, 30.0, 20.0, 40.0],
    })  # fmt: skip
    empty = pd.DataFrame(columns=["run_id", "key", "step", "value"])
    table = sections.mglobal_vs_quality(built_inputs(runs, empty)).table.set_index("group")
    assert table.loc["all", "n"] == 4
    assert table.loc["all", "spearman_rho"] == pytest.approx(0.8)
    assert table.loc["gamma=0.5", "spearman_rho"] == pytest.approx(0.5)
    assert table.loc["gamma=0.7", "n"] == 1 and math.isnan(table.loc["gamma=0.7", "spearman_rho"])


class Planted:
    """A pickle that runs code when loaded: what a writable cache folder could hold."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_the_history_cache_never_unpickles(here, tmp_path):
    runs = load_runs(study=NAME)
    run_id = runs.loc[runs["state"] == "COMPLETE", "run_id"].iloc[0]
    cache = tmp_path / "cache"
    load_history([run_id], ["m_global"], cache_dir=cache)  # fills the cache
    [store] = [p for p in cache.iterdir() if p.is_dir()]
    marker = tmp_path / "code-ran"
    for name in (f"{run_id}.pkl", *[p.name for p in store.glob(f"{run_id}.*")]):
        with open(store / name, "wb") as f:
            pickle.dump(Planted(marker), f)
    again = load_history([run_id], ["m_global"], cache_dir=cache)
    assert not marker.exists(), "the report ran code from its cache folder"
    assert len(again) > 0  # the planted files were treated as damaged and fetched again
