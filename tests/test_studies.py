"""Studies end to end, with real worker processes, SQLite storages and MLflow stores
under tmp_path: exactly-once grids, nested runs, reruns, kill -9, failures, pruning,
concurrent start-up and a search."""

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import mlflow
import optuna
import pytest
import torch
from optuna.trial import TrialState

import began.training.loop as train_module
import studies.fleet.worker as worker_module
from began.checkpoint import load_checkpoint
from studies import gamma_sweep, search
from studies.cli import base_config, build_parser
from studies.fleet.storage import prepare_study
from studies.objectives import resolve_objectives
from studies.pruning import HealthRule
from studies.records import open_parent_run
from studies.space import grid_points, grid_space
from studies.spec import GRID, StudySpec

TINY = [
    "--image-size", "16", "--filters", "4", "--hidden", "8", "--repeat", "1",
    "--batch-size", "4", "--holdout", "8", "--num-grid", "8", "--log-every", "2",
    "--metrics", "diversity_16", "--quiet",
]  # fmt: skip
SHORT = ["--steps", "8", "--eval-every", "4", "--sample-every", "8", "--checkpoint-every", "4"]


@pytest.fixture(autouse=True)
def _migrated_store(mlflow_db):
    """Each test's tmp_path/mlflow.db starts migrated (tests/conftest.py)."""


def trials(folder, name):
    storage = f"sqlite:///{folder}/optuna.db"
    return optuna.load_study(study_name=name, storage=storage).get_trials()


def child_runs(folder, experiment):
    client = mlflow.MlflowClient(f"sqlite:///{folder}/mlflow.db")
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    runs = client.search_runs([experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return client, parents, children


@pytest.fixture
def in_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default sqlite:///optuna.db and mlflow.db land here
    return tmp_path


def test_grid_with_four_workers_runs_each_point_once_and_a_rerun_skips_them(in_folder, capsys):
    # Four workers start at once on a fresh storage, and each point still runs once.
    args = [*TINY, *SHORT, "--gammas", "0.4,0.7", "--seeds", "2", "--workers", "4",
            "--study-name", "grid"]  # fmt: skip
    assert gamma_sweep.main(args) == 0
    done = trials(in_folder, "grid")
    assert [t.state for t in done] == [TrialState.COMPLETE] * 4
    assert sorted((t.params["gamma"], t.user_attrs["seed"]) for t in done) == [
        (0.4, 0), (0.4, 1), (0.7, 0), (0.7, 1)
    ]  # fmt: skip
    client, [parent], children = child_runs(in_folder, "grid")
    assert parent.info.status == "FINISHED" and parent.data.tags["study_name"] == "grid"
    assert parent.data.params["objectives"] == "diversity_gap"
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {
        "trials.md",
        "trials.csv",
    }
    # One nested run per trial, with the trial's number and params.
    assert sorted(t.user_attrs["mlflow_run_id"] for t in done) == sorted(
        r.info.run_id for r in children
    )
    by_id = {r.info.run_id: r for r in children}
    for trial in done:
        run = by_id[trial.user_attrs["mlflow_run_id"]]
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["trial_number"] == str(trial.number)
        assert float(run.data.params["gamma"]) == trial.params["gamma"]
        assert int(run.data.params["seed"]) == trial.user_attrs["seed"]
        assert run.data.tags["trial_state"] == "COMPLETE" and run.info.status == "FINISHED"
        assert run.data.metrics["objective_diversity_gap"] == pytest.approx(trial.values[0])
        # Named for what varies (two seeds here), the same in MLflow and the output.
        name = f"t{trial.number} gamma={trial.params['gamma']} seed={trial.user_attrs['seed']}"
        assert run.info.run_name == name
    out = capsys.readouterr().out
    assert f"{name} COMPLETE" in out
    assert "best: t" in out and "mlflow ui" in out and "optuna-dashboard" in out
    # The same command again: nothing to rerun.
    assert gamma_sweep.main(args) == 0
    assert len(trials(in_folder, "grid")) == 4
    assert len(child_runs(in_folder, "grid")[2]) == 4
    # A wider grid continues the same study with the new points only.
    wider = [*args[:-8], "--gammas", "0.4,0.7,0.9", "--seeds", "2", "--workers", "1", *args[-2:]]
    assert gamma_sweep.main(wider) == 0
    assert sorted(t.params["gamma"] for t in trials(in_folder, "grid")) == [0.4, 0.4, 0.7, 0.7,
                                                                          0.9, 0.9]  # fmt: skip


def test_search_params_land_in_optuna_and_mlflow(in_folder, tiny_network):
    args = [*TINY, *SHORT, "--space", "gamma=0.3:0.8,lambda_k=1e-4:1e-2:log,adam_beta1=0.5,0.9",
            "--n-trials", "3", "--workers", "1", "--objectives", "fid_8,m_global",
            "--feature-network", str(tiny_network), "--study-name", "s",
            "--sampler-seed", "3"]  # fmt: skip
    assert search.main(args) == 0
    done = trials(in_folder, "s")
    assert len(done) == 3 and all(t.state == TrialState.COMPLETE for t in done)
    assert len({t.params["gamma"] for t in done}) == 3  # sampled, not repeated
    _, [parent], children = child_runs(in_folder, "s")
    assert parent.data.params["objectives"] == "fid_8,m_global"
    assert parent.data.params["directions"] == "minimize,minimize"
    by_id = {r.info.run_id: r for r in children}
    for trial in done:
        run = by_id[trial.user_attrs["mlflow_run_id"]]
        params = run.data.params
        assert float(params["gamma"]) == pytest.approx(trial.params["gamma"])
        assert float(params["lambda_k"]) == pytest.approx(trial.params["lambda_k"])
        assert float(params["adam_beta1"]) == trial.params["adam_beta1"]
        assert run.data.metrics["objective_fid_8"] == pytest.approx(trial.values[0])
    # The real images' feature statistics were computed once, before the workers started.
    [stats] = (Path(os.environ["BEGAN_CACHE_DIR"]) / "stats").glob("*.npz")
    first_start = min(t.datetime_start for t in done).timestamp()
    assert stats.stat().st_mtime < first_start


def tiny_spec(folder, name, gammas, objectives="diversity", steps=8, extra=()):
    """A grid StudySpec over SQLite stores in `folder`, for a worker loop run in-process."""
    args = build_parser("t", "t", frozenset({"gamma"})).parse_args(
        [*TINY, *SHORT, "--steps", str(steps), *extra]
    )
    objective_list, metrics = resolve_objectives(objectives, "diversity_16")
    cfg = base_config(args)
    return StudySpec(
        kind=GRID, study_name=name, storage=f"sqlite:///{folder}/optuna.db",
        tracking_uri=f"sqlite:///{folder}/mlflow.db", experiment=name,
        base_config=cfg.__class__(**{**cfg.to_dict(), "metrics": metrics, "device": "cpu"}),
        space=grid_space(), objectives=tuple(objective_list), health=HealthRule(patience=1),
        grid=tuple(grid_points(gammas, [0])),
    )  # fmt: skip


def run_worker_here(spec):
    """A worker's loop in this process, so that a test can patch what it runs."""
    study = prepare_study(spec)
    parent = open_parent_run(spec, study).run_id
    with pytest.raises(SystemExit) as exit_info:
        worker_module.worker_main(spec, 0, "cpu", 1, parent)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    torch.set_num_threads(1)
    return exit_info.value.code


def test_an_exception_fails_only_that_trial(tmp_path, monkeypatch):
    spec = tiny_spec(tmp_path, "boom", [0.3, 0.5, 0.7])
    real_start_trial = worker_module.start_trial

    def start_trial(trial, *args, **kwargs):
        if trial.params.get("gamma") == 0.5 or trial.number == 1:
            raise RuntimeError("CUDA error: out of memory")
        return real_start_trial(trial, *args, **kwargs)

    monkeypatch.setattr(worker_module, "start_trial", start_trial)
    assert run_worker_here(spec) == 0
    states = {t.number: t.state for t in trials(tmp_path, "boom")}
    assert states == {0: TrialState.COMPLETE, 1: TrialState.FAIL, 2: TrialState.COMPLETE}
    failed = trials(tmp_path, "boom")[1]
    assert "RuntimeError: CUDA error: out of memory" in failed.user_attrs["reason"]


def test_multi_objective_health_rule_prunes_a_diverging_trial(tmp_path, monkeypatch):
    spec = tiny_spec(tmp_path, "nan", [0.3, 0.7], objectives="diversity,m_global", steps=12)
    real_step = train_module.train_step

    def diverging_step(*args):
        state, metrics = real_step(*args)
        if args[8].gamma == 0.7 and state.step >= 5:
            metrics = {**metrics, "m_global": metrics["m_global"] * float("nan")}
        return state, metrics

    monkeypatch.setattr(train_module, "train_step", diverging_step)
    assert run_worker_here(spec) == 0
    by_gamma = {t.params["gamma"]: t for t in trials(tmp_path, "nan")}
    assert by_gamma[0.3].state == TrialState.COMPLETE and len(by_gamma[0.3].values) == 2
    pruned = by_gamma[0.7]
    assert pruned.state == TrialState.PRUNED and "diverged" in pruned.user_attrs["reason"]
    _, _, children = child_runs(tmp_path, "nan")
    [run] = [r for r in children if r.info.run_id == pruned.user_attrs["mlflow_run_id"]]
    assert run.data.tags["trial_state"] == "PRUNED" and "nan" in run.data.tags["prune_reason"]


def test_health_rule_prunes_a_collapsed_trial_and_skips_its_models(tmp_path):
    spec = tiny_spec(tmp_path, "collapse", [0.5], objectives="diversity,m_global")
    # Every sample set "collapses" under a threshold of 0.01: the rule must act at once.
    spec = replace(spec, health=HealthRule(collapse_ssim=0.01, patience=1))
    assert run_worker_here(spec) == 0
    [trial] = trials(tmp_path, "collapse")
    assert trial.state == TrialState.PRUNED and "collapsed" in trial.user_attrs["reason"]
    assert trial.user_attrs["last_evaluation"]["step"] == 4  # stopped at the first evaluation
    client, _, [run] = child_runs(tmp_path, "collapse")
    assert run.data.tags["stop_reason"].startswith("collapsed")
    assert run.data.tags["collapse_warning"].startswith("collapsed: diversity SSIM")
    assert client.search_logged_models([run.info.experiment_id]) == []  # no model upload


def worker_pids(parent_pid):
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent_pid and "spawn_main" in cmdline and "resource_tracker" not in cmdline:
            pids.append(int(entry.name))
    return pids


def test_a_killed_worker_s_trial_finishes_from_its_checkpoint(tmp_path):
    args = [sys.executable, "-m", "studies.gamma_sweep", *TINY, "--steps", "200",
            "--eval-every", "100", "--sample-every", "200", "--checkpoint-every", "20",
            "--gammas", "0.5", "--workers", "1", "--study-name", "kill",
            "--heartbeat", "1"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    parent = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)  # fmt: skip
    checkpoint = None
    deadline = time.monotonic() + 120
    while checkpoint is None and time.monotonic() < deadline:
        time.sleep(0.1)
        found = list(tmp_path.glob("mlruns/*/*/artifacts/checkpoints/last.pt"))
        if found and load_checkpoint_or_none(found[0]) is not None:
            checkpoint = found[0]
    assert checkpoint is not None, parent.communicate()[0]
    [worker] = worker_pids(parent.pid)
    os.kill(worker, signal.SIGKILL)
    output = parent.communicate(timeout=60)[0]
    assert parent.returncode == 1, output  # the study knows a worker died
    killed_at = load_checkpoint(checkpoint).step
    assert 0 < killed_at < 200
    [first] = trials(tmp_path, "kill")
    assert first.state == TrialState.RUNNING  # its worker died without telling anyone
    # Run the same command again: the stale trial is retried and continues its run.
    rerun = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=300)  # fmt: skip
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    first, retry = trials(tmp_path, "kill")
    assert first.state == TrialState.FAIL and retry.state == TrialState.COMPLETE
    assert retry.system_attrs["failed_trial"] == 0
    assert retry.user_attrs["mlflow_run_id"] == first.user_attrs["mlflow_run_id"]
    _, [parent_run], [run] = child_runs(tmp_path, "kill")  # one MLflow run for the trial
    assert run.info.status == "FINISHED" and run.data.tags["resume_count"] == "1"
    assert run.data.tags["trial_number"] == str(retry.number)
    assert run.info.run_name == f"t{retry.number} gamma=0.5 (first t0)"  # as Optuna numbers it
    said = f"t{retry.number} gamma=0.5 continues t0 from step {killed_at}"
    assert f"{said}, run {run.info.run_id}" in rerun.stdout
    assert load_checkpoint(checkpoint).step == 200
    assert parent_run.info.status == "FINISHED"


def load_checkpoint_or_none(path):
    try:
        return load_checkpoint(path)
    except Exception:
        return None


def test_ctrl_c_checkpoints_queues_the_trial_and_a_rerun_continues_it(tmp_path):
    # No periodic checkpoint before the end (--checkpoint-every > --steps): a checkpoint
    # short of 300 steps can only be the one written at the stop.
    args = [sys.executable, "-m", "studies.gamma_sweep", *TINY, "--steps", "300",
            "--eval-every", "150", "--sample-every", "25", "--checkpoint-every", "1000",
            "--gammas", "0.5", "--workers", "1", "--study-name", "stop"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    parent = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True,
                              start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(tmp_path.glob(SAMPLE_GRIDS)):
        time.sleep(0.05)  # until the first sample grid (step 25): training is under way
    os.killpg(parent.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole group
    output = parent.communicate(timeout=60)[0]
    assert parent.returncode == 130, output
    assert "run the same command again" in output
    assert "t0 gamma=0.5 INTERRUPTED | interrupted (stop signal)" in output
    assert "0 failed, 1 attempts interrupted and continued" in output
    [stopped, queued] = trials(tmp_path, "stop")
    assert stopped.state == TrialState.FAIL and "interrupted" in stopped.user_attrs["reason"]
    assert queued.state == TrialState.WAITING
    _, [parent_run], [run] = child_runs(tmp_path, "stop")
    assert run.info.status == "KILLED" and parent_run.info.status == "KILLED"
    [checkpoint] = tmp_path.glob("mlruns/*/*/artifacts/checkpoints/last.pt")
    stopped_at = load_checkpoint(checkpoint).step
    assert 25 <= stopped_at < 300  # written at the stop
    rerun = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=300)  # fmt: skip
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert [t.state for t in trials(tmp_path, "stop")] == [TrialState.FAIL, TrialState.COMPLETE]
    assert f"t1 gamma=0.5 continues t0 from step {stopped_at}" in rerun.stdout
    assert "1 trials, 1 complete, 0 pruned, 0 failed, 1 attempts" in rerun.stdout
    assert "reason" not in trials(tmp_path, "stop")[1].user_attrs  # no stale "interrupted"
    _, [parent_run], [run] = child_runs(tmp_path, "stop")
    assert run.info.status == "FINISHED" and run.data.tags["resume_count"] == "1"
    assert load_checkpoint(checkpoint).step == 300
    assert parent_run.info.status == "FINISHED"


SAMPLE_GRIDS = "mlruns/*/*/artifacts/images/samples+step+25+*"  # the first after step 0


def running_with_run_id(folder, name):
    try:
        return any(
            t.state == TrialState.RUNNING and "mlflow_run_id" in t.user_attrs
            for t in trials(folder, name)
        )
    except Exception:  # the study does not exist yet
        return False


def test_a_packed_sweep_gives_the_trial_values_of_an_unpacked_one(tmp_path, migrated_mlflow_db):
    values = {}
    for pack in (1, 2):
        folder = tmp_path / f"pack{pack}"
        folder.mkdir()
        shutil.copyfile(migrated_mlflow_db, folder / "mlflow.db")
        spec = replace(tiny_spec(folder, "p", [0.3, 0.5, 0.7], steps=24), pack=pack)
        assert run_worker_here(spec) == 0
        done = trials(folder, "p")
        assert [t.state for t in done] == [TrialState.COMPLETE] * 3
        values[pack] = {t.params["gamma"]: t.values[0] for t in done}
        client, [parent], children = child_runs(folder, "p")
        assert parent.data.tags["pack"] == str(pack) and len(children) == 3
        for run in children:  # each packed trial is an ordinary run: its models, its grids
            assert run.info.status == "FINISHED" and run.data.tags["models_logged"] == "true"
            assert client.list_artifacts(run.info.run_id, "images")
    for gamma, value in values[1].items():
        assert values[2][gamma] == pytest.approx(value, rel=1e-3, abs=1e-4), gamma


def test_a_pack_out_of_memory_continues_its_trials_in_smaller_packs(
    tmp_path, migrated_mlflow_db, monkeypatch, capsys
):
    # The first pack's step runs out of device memory: its trials go back to their last
    # checkpoints, without using a retry, and the worker packs half as many from then on.
    from began.training import pack as pack_module
    from studies.schema import RETRY_HISTORY_ATTR

    shutil.copyfile(migrated_mlflow_db, tmp_path / "mlflow.db")
    spec = replace(tiny_spec(tmp_path, "oom", [0.3, 0.5, 0.7], steps=12), pack=2)
    real_step, calls = pack_module.TrainingPack.step, []

    def step(self, samplers):
        calls.append(len(samplers))
        if len(calls) == 5:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_step(self, samplers)

    monkeypatch.setattr(pack_module.TrainingPack, "step", step)
    assert run_worker_here(spec) == 0
    assert "this worker now packs 1" in capsys.readouterr().err
    assert calls[4:] == [2]  # no pack after the failed one: it halved to 1
    done = [t for t in trials(tmp_path, "oom") if t.state == TrialState.COMPLETE]
    assert sorted(t.params["gamma"] for t in done) == [0.3, 0.5, 0.7]
    stopped = [t for t in trials(tmp_path, "oom") if t.state == TrialState.FAIL]
    assert len(stopped) == 2  # the pack's two trials, each continued by a copy
    for trial in stopped:
        assert "out of memory" in trial.user_attrs["reason"]
    for trial in done:  # a continuation, but no crash on the record: no retry used
        assert not trial.system_attrs.get(RETRY_HISTORY_ATTR)
    client, _, children = child_runs(tmp_path, "oom")
    assert sorted(r.info.status for r in children) == ["FINISHED"] * 3  # one run per point
