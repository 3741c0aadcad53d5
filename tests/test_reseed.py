"""`studies.reseed`: the best settings of a study trained again with new seeds, as a study
nested under the first; the ranking, the seeds and the report's comparison by hand."""

import json
import math

import mlflow
import numpy as np
import optuna
import pytest
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from analysis.verdicts import against_reseeds
from began.cli import run_cli
from studies import gamma_sweep, reseed
from tests import test_studies

T_2 = 4.302652730  # two-sided 95% t quantile, 2 degrees of freedom (tables)
GAMMA = FloatDistribution(1e-6, 1.0)
TINY = [*test_studies.TINY, *test_studies.SHORT, "--system-metrics", "off"]
STORAGE = "sqlite:///optuna.db"  # in tmp_path, where each test runs
QUIET = ["--workers", "1", "--system-metrics", "off", "--quiet"]


def trial(number, value, state=TrialState.COMPLETE, seed=None, **params):
    distributions = {k: IntDistribution(1, 3) if k == "repeat" else GAMMA for k in params}
    made = create_trial(
        state=state, values=[value] if state == TrialState.COMPLETE else None,
        params=params, distributions=distributions,
        user_attrs={"seed": seed} if seed is not None else {},
    )  # fmt: skip
    made.number = number
    return made


def test_settings_rank_by_their_best_complete_trial():
    trials = [
        trial(0, 0.50, gamma=0.3, seed=0), trial(1, 0.20, gamma=0.5, seed=0),
        trial(2, 0.40, gamma=0.7, seed=0), trial(3, 0.10, gamma=0.3, seed=1),
        trial(4, 0.05, TrialState.PRUNED, gamma=0.9, seed=0),  # never complete: not a setting
    ]  # fmt: skip
    ranked = reseed.ranked_settings(trials, 0, "minimize", base_seed=0)
    # gamma 0.3 ranks by its best seed (t3, 0.10), not its mean (0.30).
    assert [(s["params"], s["trial"], s["seed"]) for s in ranked] == [
        ({"gamma": 0.3}, 3, 1), ({"gamma": 0.5}, 1, 0), ({"gamma": 0.7}, 2, 0),
    ]  # fmt: skip
    assert ranked[0]["values"] == [0.10]
    maximised = reseed.ranked_settings(trials, 0, "maximize", base_seed=0)
    assert [s["trial"] for s in maximised] == [0, 2, 1]


def test_a_searched_seed_is_no_part_of_a_setting_and_ties_go_to_the_first_trial():
    trials = [trial(0, 1.0, gamma=0.5, repeat=2, seed=None), trial(1, 1.0, gamma=0.4, repeat=1)]
    trials.append(create_trial(value=1.0, params={"gamma": 0.5, "repeat": 2, "seed": 7},
                  distributions={"gamma": GAMMA, "repeat": IntDistribution(1, 3),
                                 "seed": IntDistribution(0, 9)}))  # fmt: skip
    trials[-1].number = 2
    ranked = reseed.ranked_settings(trials, 0, "minimize", base_seed=3)
    assert [s["params"] for s in ranked] == [
        {"gamma": 0.5, "repeat": 2}, {"gamma": 0.4, "repeat": 1}
    ]  # fmt: skip
    assert ranked[0]["trial"] == 0 and ranked[0]["seed"] == 3  # the base config's seed
    # New seeds start after every seed used: the base's 3, the searched 7.
    assert reseed.unused_seeds(trials, 3, 2) == [8, 9]


def test_the_best_value_against_its_reseeds_by_hand():
    stats = against_reseeds(1.0, np.array([2.0, 3.0, 4.0]), "minimize")
    # mean 3, sd 1, half width t(2) / sqrt(3); none of the three as good as 1.0
    assert stats["n_seeds"] == 3 and stats["mean"] == 3 and stats["sd"] == pytest.approx(1)
    assert stats["ci_low"] == pytest.approx(3 - T_2 / math.sqrt(3))
    assert stats["ci_high"] == pytest.approx(3 + T_2 / math.sqrt(3))
    assert (stats["min"], stats["max"], stats["as_good"], stats["lead"]) == (2, 4, 0, 2)
    # Maximised, the same 1.0 is worse than every reseed: a negative lead, all as good.
    up = against_reseeds(1.0, np.array([2.0, 3.0, 4.0, math.nan]), "maximize")
    assert (up["n_seeds"], up["as_good"], up["lead"]) == (3, 3, -2)
    assert against_reseeds(3.0, np.array([2.0, 3.0, 4.0]), "minimize")["as_good"] == 2


@pytest.fixture
def swept(mlflow_db, tmp_path):
    """A finished sweep of three gammas, one seed each (the test runs in tmp_path; MLflow
    is read through the store's absolute URI, `mlflow_db`: a relative one would reach the
    store an earlier test cached)."""
    assert gamma_sweep.main([*TINY, "--gammas", "0.4,0.7,0.9", "--workers", "1",
                             "--study-name", "src"]) == 0  # fmt: skip
    return optuna.load_study(study_name="src", storage=STORAGE)


def test_reseed_trains_the_top_settings_with_new_seeds_nested_under_the_study(
    swept, mlflow_db, tmp_path, capsys
):
    from analysis import report

    assert reseed.main(["--study", "src", "--top", "2", "--seeds", "2", *QUIET]) == 0
    ranked = sorted(swept.get_trials(), key=lambda t: (t.values[0], t.number))[:2]
    top = sorted(t.params["gamma"] for t in ranked)
    out = capsys.readouterr().out
    assert "reseed of study src: the 2 best setting(s) by diversity_gap" in out
    study = optuna.load_study(study_name="src-reseed", storage=STORAGE)
    done = study.get_trials()
    assert [t.state for t in done] == [TrialState.COMPLETE] * 4
    assert sorted((t.params["gamma"], t.user_attrs["seed"]) for t in done) == sorted(
        (g, s) for g in top for s in (1, 2)
    )
    attrs = study.user_attrs["reseed_of"]
    assert attrs["study"] == "src" and attrs["ranked_by"] == "diversity_gap"
    assert [s["trial"] for s in attrs["settings"]] == [t.number for t in ranked]
    assert attrs["settings"][0]["values"]["diversity_gap"] == ranked[0].values[0]
    # MLflow: the reseed's run is a child of the study's run, in its experiment, and each
    # reseed trial's run a child of the reseed's.
    client = mlflow.MlflowClient(mlflow_db)
    experiment = client.get_experiment_by_name("src").experiment_id
    runs = client.search_runs([experiment])
    [parent] = [r for r in runs if r.data.tags.get("study_kind") and
                r.data.tags["study_name"] == "src-reseed"]  # fmt: skip
    assert parent.data.tags["mlflow.parentRunId"] == swept.user_attrs["mlflow_parent_run_id"]
    assert parent.data.tags["reseed_of"] == "src" and parent.data.params["reseed_of"] == "src"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.info.run_id for r in children) == sorted(
        t.user_attrs["mlflow_run_id"] for t in done
    )
    # Every training option is the study's: the configs differ in gamma and seed alone.
    source_config = client.get_run(swept.trials[0].user_attrs["mlflow_run_id"]).data.params
    reseed_config = children[0].data.params
    differ = {k for k in source_config if source_config[k] != reseed_config.get(k)}
    assert differ <= {"gamma", "seed"}
    # Again with more seeds: only the new points run.
    assert reseed.main(["--study", "src", "--top", "2", "--seeds", "3", *QUIET]) == 0
    again = study.get_trials()
    assert len(again) == 6 and sorted({t.user_attrs["seed"] for t in again}) == [1, 2, 3]

    # The report: each setting's new seeds against the value that made it best.
    folder = tmp_path / "report"
    where = ["--tracking-uri", mlflow_db, "--format", "md,json"]
    assert report.main(["--study", "src-reseed", "--out", str(folder), *where]) == 0
    document = json.loads((folder / "report.json").read_text())
    first = document["reseeded"][0]
    assert [row["best_trial"] for row in document["reseeded"]] == [t.number for t in ranked]
    assert first["metric"] == "diversity_gap" and first["n_seeds"] == 3
    assert first["best_value"] == pytest.approx(ranked[0].values[0])
    mine = [t.values[0] for t in again if t.params["gamma"] == ranked[0].params["gamma"]]
    assert sorted(first["values"]) == pytest.approx(sorted(mine))
    assert first["mean"] == pytest.approx(np.mean(mine))
    text = (folder / "report.md").read_text()
    assert "## The best, reseeded" in text and "reseed of: study src" in text
    assert (folder / "reseeded.png").is_file()
    # The first study's report has no such section, and its report.json an empty list.
    plain = tmp_path / "plain"
    assert report.main(["--study", "src", "--out", str(plain), *where]) == 0
    assert "The best, reseeded" not in (plain / "report.md").read_text()
    assert json.loads((plain / "report.json").read_text())["reseeded"] == []


@pytest.fixture
def built_source(mlflow_db):
    """A study as a sweep leaves it (three gammas complete, its MLflow run), built without
    training: what the option checks read."""
    from began.config import DEMO, config_from_options

    cfg = config_from_options({"preset": DEMO})
    study = optuna.create_study(study_name="src", storage=STORAGE)
    for gamma, value in ((0.4, 0.3), (0.7, 0.2), (0.9, 0.5)):
        made = create_trial(value=value, params={"gamma": gamma}, distributions={"gamma": GAMMA},
                            user_attrs={"seed": 0})  # fmt: skip
        study.add_trial(made)
    client = mlflow.MlflowClient(mlflow_db)
    run = client.create_run(client.create_experiment("src"))
    for name, value in {"base_config": cfg.to_dict(), "objectives": ["diversity_gap"],
                        "mlflow_experiment": "src", "kind": "grid",
                        "mlflow_parent_run_id": run.info.run_id}.items():  # fmt: skip
        study.set_user_attr(name, value)
    return study


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--top", "4"], "--top 4: study src has 3 setting(s) with a complete trial"),
        (["--top", "0"], "--top: must be >= 1"),
        (["--seeds", "0"], "--seeds: must be >= 1"),
        (["--objective", "fid"], "--objective fid: the study's objectives are diversity_gap"),
        (["--study-name", "src"], "--study-name src: the reseed needs a study of its own"),
        (["--tracking-uri", "sqlite:///other.db"], "is not there; give the tracking URI"),
        (["--study", "nope"], "--study nope: no such study"),
    ],
)
def test_bad_options_fail_in_one_line_before_anything_is_created(
    built_source, tmp_path, capsys, extra, message
):
    with pytest.raises(SystemExit) as stopped:
        run_cli(reseed.main, ["--study", "src", *QUIET, *extra])
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert optuna.get_all_study_names(STORAGE) == ["src"]
    assert not (tmp_path / "other.db").exists()


def test_a_valid_reseed_of_the_built_study_would_train_its_best_setting(built_source):
    # The same checks pass on good options: the spec the workers would get.
    args = reseed.parser().parse_args(["--study", "src", "--top", "2", "--seeds", "3", *QUIET])
    spec, seeds, unfinished = reseed.reseed_spec(args)
    assert seeds == [1, 2, 3] and unfinished == 0
    assert spec.grid == tuple({"gamma": g, "seed": s} for s in (1, 2, 3) for g in (0.7, 0.4))
    assert spec.reseed_of.parent_run_id == built_source.user_attrs["mlflow_parent_run_id"]
    assert spec.experiment == "src" and spec.study_name == "src-reseed"
    assert [o.logged for o in spec.objectives] == ["diversity_gap"] and spec.pruner == "none"
