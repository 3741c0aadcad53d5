"""`--launch slurm` on a real one-node Slurm, PostgreSQL and mlflow server, all throwaway:
a 4-point sweep as an array of 2 tasks, one task cancelled mid-trial, and the study ends
as the same sweep run locally does, each point once, the cancelled trial continued from
its checkpoint by the other task."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import optuna
import pytest
from optuna.trial import TrialState

from tests.servers import PG_PASSWORD, PG_USER, mlflow_server, postgres_available, postgres_cluster
from tests.slurm_cluster import SlurmCluster, slurm_available, slurm_cluster

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not postgres_available(), reason="PostgreSQL (initdb, pg_ctl) not here"),
    pytest.mark.skipif(slurm_available() is not None, reason=f"Slurm: {slurm_available()}"),
]

REPO = Path(__file__).resolve().parents[1]
SWEEP = [
    "--image-size", "16", "--filters", "4", "--hidden", "8", "--repeat", "1",
    "--batch-size", "4", "--holdout", "8", "--num-grid", "8", "--log-every", "10",
    "--metrics", "diversity_16", "--steps", "300", "--eval-every", "150",
    "--sample-every", "300", "--checkpoint-every", "10", "--gammas", "0.3,0.5,0.7,0.9",
    "--workers", "1", "--system-metrics", "off", "--quiet",
]  # fmt: skip


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "studies.gamma_sweep", *SWEEP, *args]


def values_by_gamma(study: optuna.Study) -> dict[float, float]:
    return {t.params["gamma"]: t.values[0] for t in study.get_trials()
            if t.state == TrialState.COMPLETE}  # fmt: skip


@contextlib.contextmanager
def stores_and_slurm(tmp_path: Path) -> Iterator[tuple[str, str, SlurmCluster]]:
    """A throwaway PostgreSQL, mlflow server and Slurm: (storage URL, tracking URI, cluster).
    No password in the storage URL: it would be written into the job script; the tasks
    get PGPASSWORD from the submitting shell (#SBATCH --export=ALL)."""
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    with (
        postgres_cluster() as database,
        mlflow_server(database["url"]["mlflow"], artifacts) as tracking,
        # A cancelled task has this long to checkpoint and queue its trial.
        slurm_cluster(kill_wait_s=60) as slurm,
    ):
        yield f"postgresql://{PG_USER}@127.0.0.1:{database['port']}/optuna", tracking, slurm


def test_a_sweep_launched_as_a_slurm_array_survives_a_cancelled_task(tmp_path, monkeypatch):
    monkeypatch.setenv("PGPASSWORD", PG_PASSWORD)  # libpq's, for this test's reads too
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # The same sweep here, on SQLite: the values the launched one must reproduce.
    local = subprocess.run(command("--study-name", "local"), cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=600)  # fmt: skip
    assert local.returncode == 0, local.stdout + local.stderr
    local_storage = f"sqlite:///{tmp_path}/optuna.db"
    expected = values_by_gamma(optuna.load_study(study_name="local", storage=local_storage))
    assert len(expected) == 4

    with stores_and_slurm(tmp_path) as (storage, tracking, slurm):
        launched = subprocess.Popen(
            command("--study-name", "on-slurm", "--storage", storage, "--tracking-uri", tracking,
                    "--launch", "slurm", "--tasks", "2", "--launch-dir", str(tmp_path / "jobs"),
                    "--slurm-arg=--cpus-per-task=1", "--slurm-arg=--mem=2G", "--follow"),
            cwd=tmp_path, env={**env, **slurm.env}, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        study = wait_for_study(storage, "on-slurm", launched)
        job = study.user_attrs["slurm_jobs"][0]
        # Cancel task 1 once its trial has a checkpoint past step 0 to continue from.
        victim = wait_for_checkpointed_trial(study, f"slurm {job}_1", launched)
        slurm.run("scancel", f"{job}_1")
        output = launched.communicate(timeout=600)[0]
        assert launched.returncode == 0, output + slurm.logs()
        assert f"Slurm job {job}" in output and "every trial finished" in output

        trials = study.get_trials()
        by_state = {s: [t for t in trials if t.state == s] for s in TrialState}
        assert not by_state[TrialState.RUNNING] and not by_state[TrialState.WAITING]
        complete = by_state[TrialState.COMPLETE]
        assert sorted(t.params["gamma"] for t in complete) == [0.3, 0.5, 0.7, 0.9]  # once each
        # The cancelled trial stopped (its checkpoint kept) and task 0 continued its run.
        stopped = study.trials[victim]
        assert stopped.state == TrialState.FAIL
        assert "stop signal" in stopped.user_attrs["reason"]
        [continued] = [t for t in complete if t.params["gamma"] == stopped.params["gamma"]]
        assert continued.user_attrs["mlflow_run_id"] == stopped.user_attrs["mlflow_run_id"]
        assert continued.user_attrs["start_step"] > 0  # from the checkpoint, not step 0
        assert f"slurm {job}_0" in continued.user_attrs["worker"]
        # One FINISHED run per point, nothing left RUNNING, tagged with its Slurm task.
        client = mlflow.MlflowClient(tracking)
        experiment = client.get_experiment_by_name("on-slurm").experiment_id
        runs = client.search_runs([experiment])
        children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
        assert sorted(r.info.run_id for r in children) == sorted(
            t.user_attrs["mlflow_run_id"] for t in complete
        )
        assert {r.info.status for r in runs} == {"FINISHED"}, [r.info.status for r in runs]
        assert {r.data.tags["slurm_task"].split("_")[0] for r in children} == {job}
        [parent] = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
        assert parent.data.tags["slurm_jobs"] == job
        scripts = {a.path for a in client.list_artifacts(parent.info.run_id, "launch")}
        assert scripts == {f"launch/slurm-{job}.sh"}
        # The values are the local sweep's: a cancel and a continuation change nothing.
        assert values_by_gamma(study) == pytest.approx(expected, rel=1e-6)
        # Each task's log is kept beside the job script.
        logs = sorted(p.name for p in (tmp_path / "jobs" / "on-slurm").glob("slurm-*.out"))
        assert logs == [f"slurm-{job}_0.out", f"slurm-{job}_1.out"]
        status = subprocess.run(
            [sys.executable, "-m", "studies.status", "--study", "on-slurm", "--storage", storage],
            env={**env, **slurm.env}, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert status.returncode == 0, status.stderr
        assert "4 complete" in status.stdout and PG_PASSWORD not in status.stdout
        for text in (output, status.stdout):
            assert PG_PASSWORD not in text


def wait_for_study(storage: str, name: str, launched: subprocess.Popen | None) -> optuna.Study:
    """The study once the launching command has recorded its job."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if launched is not None and launched.poll() is not None:
            raise AssertionError(launched.communicate()[0])
        try:
            study = optuna.load_study(study_name=name, storage=storage)
            if study.user_attrs.get("slurm_jobs"):
                return study
        except KeyError:
            pass
        time.sleep(0.5)
    raise AssertionError("the launching command recorded no Slurm job in 120 s")


def wait_for_checkpointed_trial(
    study: optuna.Study, worker: str, launched: subprocess.Popen | None
) -> int:
    """The number of the RUNNING trial that `worker` runs once it has a checkpoint."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if launched is not None and launched.poll() is not None:
            raise AssertionError(launched.communicate()[0])
        for trial in study.get_trials():
            evaluation = trial.user_attrs.get("last_evaluation") or {}
            if (trial.state == TrialState.RUNNING and worker in trial.user_attrs.get("worker", "")
                    and evaluation.get("step", 0) > 0):  # fmt: skip
                return trial.number
        time.sleep(0.3)
    raise AssertionError(f"no trial of {worker} reached a checkpoint in 300 s")


def test_a_task_requeued_mid_trial_joins_again_and_continues_its_trial(tmp_path, monkeypatch):
    """What preemption with requeue does to a task (here by `scontrol requeue`): SIGTERM,
    then the task runs again; its trial continues from the checkpoint in the same run."""
    monkeypatch.setenv("PGPASSWORD", PG_PASSWORD)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with stores_and_slurm(tmp_path) as (storage, tracking, slurm):
        launched = subprocess.run(
            command("--study-name", "requeued", "--storage", storage, "--tracking-uri",
                    tracking, "--launch", "slurm", "--tasks", "1", "--launch-dir",
                    str(tmp_path / "jobs"), "--slurm-arg=--mem=2G"),
            cwd=tmp_path, env={**env, **slurm.env}, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert launched.returncode == 0, launched.stdout + launched.stderr
        study = wait_for_study(storage, "requeued", None)
        [job] = study.user_attrs["slurm_jobs"]
        victim = wait_for_checkpointed_trial(study, f"slurm {job}_0", None)
        slurm.run("scontrol", "requeue", f"{job}_0")
        states = slurm.wait_until_done(job, timeout=600)
        assert set(states.values()) == {"COMPLETED"}, states
        trials = study.get_trials()
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        assert sorted(t.params["gamma"] for t in complete) == [0.3, 0.5, 0.7, 0.9]
        assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
        stopped = study.trials[victim]
        [continued] = [t for t in complete if t.params["gamma"] == stopped.params["gamma"]]
        assert continued.user_attrs["mlflow_run_id"] == stopped.user_attrs["mlflow_run_id"]
        assert continued.user_attrs["start_step"] > 0
        log = (tmp_path / "jobs" / "requeued" / f"slurm-{job}_0.out").read_text()
        assert log.count("study requeued:") >= 2, log  # both runs of the task, one log
