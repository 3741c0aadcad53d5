"""The parts of a study, without worker processes: spaces, objectives, the health rule,
URL masking and the one-line errors of bad study options."""

import math
import time
from dataclasses import replace

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from began.cli import run_cli
from began.config import TrainConfig
from began.retry import RETRY_WAITS_S
from began.tracking import mask_url
from began.training.loop import EvalReport
from studies import gamma_sweep, search
from studies.fleet.storage import StudyError, load_study, prepare_study
from studies.fleet.worker import _may_start_new
from studies.objectives import ObjectiveError, resolve_objectives
from studies.pruning import (
    HealthRule,
    HealthState,
    PrunerError,
    make_pruner,
    pruner_warning,
    retrying_unless_finished,
)
from studies.space import (
    SpaceError,
    grid_points,
    grid_space,
    parse_gammas,
    parse_seeds,
    parse_space,
)
from studies.spec import GRID, SEARCH, StudySpec


def test_space_parses_ranges_logs_ints_and_choices():
    space = parse_space("gamma=0.2:1.0,lambda_k=1e-4:1e-2:log,repeat=1:3,filters=32,64,128")
    assert space["gamma"] == FloatDistribution(0.2, 1.0)
    assert space["lambda_k"] == FloatDistribution(1e-4, 1e-2, log=True)
    assert space["repeat"] == IntDistribution(1, 3)
    assert space["filters"] == CategoricalDistribution([32, 64, 128])
    assert parse_space("skip=true,false")["skip"] == CategoricalDistribution([True, False])
    assert parse_space("lr=1e-5:1e-4:1e-5")["lr"].step == pytest.approx(1e-5)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("gamma=0.2:1.5", "gamma"),  # a bound that is not a valid config
        ("gamma=0.7:0.2", "low bound"),
        ("lambda_k=0:1e-2:log", "positive"),
        ("repeat=1.5:3", "integer"),
        ("data=a,b", "cannot be searched"),
        ("nonsense=1:2", "cannot be searched"),
        ("32,64", "no NAME="),
        ("gamma=0.3:0.5,gamma=0.4:0.6", "twice"),
        ("skip=maybe", "true or false"),
        ("", "empty"),
    ],
)
def test_malformed_spaces_name_the_option(spec, message):
    with pytest.raises(SpaceError, match="^--space: ") as error:
        parse_space(spec)
    assert message in str(error.value)


def test_gammas_and_seeds():
    assert parse_gammas("0.3, 0.5,0.5,0.7") == [0.3, 0.5, 0.7]
    assert parse_seeds("3") == [0, 1, 2] and parse_seeds("7,0") == [0, 7]
    assert grid_points([0.3, 0.7], [0, 1]) == [
        {"gamma": 0.3, "seed": 0}, {"gamma": 0.7, "seed": 0},
        {"gamma": 0.3, "seed": 1}, {"gamma": 0.7, "seed": 1},
    ]  # fmt: skip
    for bad, option in (("0,1.2", "--gammas"), ("x", "--gammas"), ("-1", "--seeds")):
        with pytest.raises(SpaceError, match=f"^{option}: "):
            (parse_gammas if option == "--gammas" else parse_seeds)(bad)


def test_objectives_resolve_names_directions_and_needed_metrics():
    objectives, metrics = resolve_objectives("fid,m_global", "recon")
    assert [(o.logged, o.direction) for o in objectives] == [
        ("fid_1k", "minimize"), ("m_global", "minimize")
    ]  # fmt: skip
    assert metrics == "recon,fid,diversity"  # fid for the objective, diversity for the rule
    objectives, metrics = resolve_objectives("recon_ssim,fid_5k,diversity", "fid_5k")
    assert [(o.logged, o.direction) for o in objectives] == [
        ("recon_ssim", "maximize"), ("fid_5k", "minimize"), ("diversity_gap", "minimize")
    ]  # fmt: skip
    assert metrics == "fid_5k,recon,diversity"
    objective = resolve_objectives("m_global", "")[0][0]
    assert objective.value(0.07, {"fid_1k": 3.0}) == 0.07  # the evaluation window's mean
    for bad in ("kid_1k_std", "diversity_ssim_real", "nonsense", "fid,fid", ""):
        with pytest.raises(ObjectiveError, match="^--objectives: "):
            resolve_objectives(bad, "")


def report(step, m_global, ssim=0.3):
    return EvalReport(step, m_global, {"diversity_ssim": ssim, "diversity_ssim_real": 0.25})


def test_health_rule_stops_nan_rising_and_collapsed_trials():
    rule = HealthRule(divergence_factor=2.0, collapse_ssim=0.9, patience=2)
    assert "diverged" in HealthState(rule).check(report(5, math.nan))
    rising = HealthState(rule)
    assert rising.check(report(1, 0.10)) is None
    assert rising.check(report(2, 0.25)) is None  # once above 2x best: not yet
    assert rising.check(report(3, 0.15)) is None  # back below: the count restarts
    assert rising.check(report(4, 0.25)) is None
    assert "diverging" in rising.check(report(5, 0.30))
    collapse = HealthState(rule)
    assert collapse.check(report(1, 0.1, ssim=0.95)) is None
    reason = collapse.check(report(2, 0.1, ssim=0.93))
    assert reason.startswith("collapsed") and "0.250" in reason  # names the real figure
    with pytest.raises(PrunerError, match="^--collapse-ssim"):
        HealthRule(collapse_ssim=1.5)


def test_pruners_and_the_pairing_that_prunes_on_gamma():
    assert isinstance(make_pruner("median", 1), optuna.pruners.MedianPruner)
    assert isinstance(make_pruner("hyperband", 1), optuna.pruners.HyperbandPruner)
    assert isinstance(make_pruner("none", 2), optuna.pruners.NopPruner)
    with pytest.raises(PrunerError, match="multi-objective"):
        make_pruner("median", 2)
    with pytest.raises(PrunerError, match="unknown pruner"):
        make_pruner("magic", 1)
    m_global = resolve_objectives("m_global", "")[0]
    fid = resolve_objectives("fid", "")[0]
    assert "prune high gammas" in pruner_warning("median", m_global, gamma_varies=True)
    assert pruner_warning("median", m_global, gamma_varies=False) is None
    assert pruner_warning("median", fid, gamma_varies=True) is None
    assert pruner_warning("none", m_global, gamma_varies=True) is None


def test_passwords_are_masked():
    assert mask_url("postgresql://began:s3cret@db.example:5432/optuna") == (
        "postgresql://began:***@db.example:5432/optuna"
    )
    assert mask_url("sqlite:///optuna.db") == "sqlite:///optuna.db"


@pytest.mark.parametrize(
    ("main", "args", "message"),
    [
        (gamma_sweep.main, ["--gammas", "0.5,1.5"], "--gammas: "),
        (gamma_sweep.main, ["--data", "/nonexistent/faces"], "--data: "),
        (gamma_sweep.main, ["--sampler-seed", "x"], "argument --sampler-seed: "),
        (gamma_sweep.main, ["--seeds", "0"], "--seeds: "),
        (gamma_sweep.main, ["--image-size", "48"], "--image-size: "),
        (gamma_sweep.main, ["--steps", "0"], "--steps: "),
        (gamma_sweep.main, ["--lambda-k", "-1"], "--lambda-k: "),
        (gamma_sweep.main, ["--objectives", "kid_1k_std"], "--objectives: "),
        (gamma_sweep.main, ["--study-name", "a/b"], "--study-name: "),
        (gamma_sweep.main, ["--experiment", "x;rm -rf"], "--experiment: "),
        (gamma_sweep.main, ["--devices", "tpu"], "--devices: "),
        (gamma_sweep.main, ["--devices", "cuda:0"], "--devices: "),
        (gamma_sweep.main, ["--workers", "0"], "--workers: "),
        (gamma_sweep.main, ["--storage", "redis://localhost"], "--storage: "),
        (gamma_sweep.main, ["--metrics", "fid,nonsense"], "--metrics: "),
        (search.main, ["--space", "gamma=0:2"], "--space: "),
        (search.main, ["--lr", "5e-5", "--space", "lr_min=1e-5:1e-4"], "--space: lr_min=0.0001"),
        (search.main, ["--sampler-seed", "-1"], "--sampler-seed: "),
        (search.main, ["--sampler-seed", str(2**40)], "--sampler-seed: "),
        (gamma_sweep.main, ["--lambda-k", "inf"], "--lambda-k: must be a finite number"),
        (gamma_sweep.main, ["--lr", "nan"], "--lr: must be a finite number"),
        (search.main, ["--space", "gamma=0.3:0.6", "--gamma", "0.5"], "--gamma: "),
        (search.main, ["--objectives", "fid,m_global", "--pruner", "median"], "--pruner: "),
        (search.main, ["--n-trials", "0"], "--n-trials: "),
    ],
)
def test_bad_study_options_are_one_line_and_exit_2(tmp_path, monkeypatch, capsys, main, args,
                                                   message):  # fmt: skip
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {message}") and "\n" not in err, err
    assert not (tmp_path / "optuna.db").exists()  # refused before any work started
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()


def test_a_search_stops_asking_at_n_trials_or_its_timeout():
    spec = StudySpec(
        kind=SEARCH, study_name="s", storage="sqlite:///:memory:", tracking_uri="", experiment="s",
        base_config=TrainConfig(),
        space=parse_space("gamma=0.3:0.7"), objectives=(), n_trials=2, timeout_s=60,
    )  # fmt: skip
    now = time.monotonic()
    first = optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL)
    retry = optuna.trial.create_trial(
        state=optuna.trial.TrialState.COMPLETE,
        value=0.5,
        system_attrs={"failed_trial": 0, "retry_history": [0]},
    )
    assert _may_start_new(spec, [first, retry], now)  # a retry is not a second trial
    assert not _may_start_new(spec, [first, retry, first], now)
    assert not _may_start_new(spec, [], now - 61)  # past the timeout: no new trial


def test_a_trial_finished_elsewhere_is_not_retried_a_database_hiccup_is(monkeypatch):
    monkeypatch.setattr("began.retry.RETRY_WAITS_S", (0.0,) * len(RETRY_WAITS_S))
    attempts = []

    def finished_elsewhere():
        attempts.append(1)
        raise optuna.exceptions.UpdateFinishedTrialError("trial 0 is already finished")

    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        retrying_unless_finished(finished_elsewhere)
    assert len(attempts) == 1

    def hiccup_then_ok():
        attempts.append(1)
        if len(attempts) < 4:
            raise ConnectionResetError("server closed the connection")
        return "ok"

    assert retrying_unless_finished(hiccup_then_ok) == "ok" and len(attempts) == 4


@pytest.mark.parametrize(("pruner", "kind"), [("none", "NopPruner"), ("median", "MedianPruner")])
def test_workers_get_the_study_s_pruner_not_optuna_s_default(tmp_path, pruner, kind):
    spec = StudySpec(
        kind=GRID, study_name="p", storage=f"sqlite:///{tmp_path}/optuna.db", tracking_uri="",
        experiment="p", base_config=TrainConfig(), space=grid_space(),
        objectives=tuple(resolve_objectives("diversity", "")[0]), pruner=pruner,
        grid=tuple(grid_points([0.5], [0])),
    )  # fmt: skip
    prepare_study(spec)
    assert type(load_study(spec).pruner).__name__ == kind


def test_rerunning_a_study_with_other_training_options_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    spec = StudySpec(
        kind=GRID, study_name="same", storage=f"sqlite:///{tmp_path}/optuna.db",
        tracking_uri="", experiment="same", base_config=TrainConfig(steps=100),
        space=grid_space(), objectives=tuple(resolve_objectives("diversity", "")[0]),
        grid=tuple(grid_points([0.5], [0])),
    )  # fmt: skip
    prepare_study(spec)
    prepare_study(replace(spec, base_config=TrainConfig(steps=100, device="cpu")))  # where: fine
    with pytest.raises(StudyError, match=r"^--study-name same: .*steps 100 -> 200"):
        prepare_study(replace(spec, base_config=TrainConfig(steps=200)))
    other = tuple(resolve_objectives("m_global", "")[0])
    with pytest.raises(StudyError, match=r"^--objectives: study same optimises"):
        prepare_study(replace(spec, objectives=other))
    # From the command line: one line, exit 2, and the study keeps its one trial.
    with pytest.raises(SystemExit) as exit_info:
        run_cli(gamma_sweep.main, ["--study-name", "same", "--gammas", "0.5", "--steps", "300"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --study-name same: ") and "\n" not in err, err
    study = optuna.load_study(study_name="same", storage=spec.storage)
    assert len(study.get_trials()) == 1
