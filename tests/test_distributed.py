"""A study on the real multi-machine components: Optuna on PostgreSQL and an `mlflow server`
with a PostgreSQL backend and a served artifact root, started here on loopback ports.

Marked `integration`: left out of the quick suite for time (`scripts/test -m integration`
runs them, and `.ci/run` does); skipped where PostgreSQL is not installed.
"""

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import mlflow
import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from tests.servers import (
    PG_PASSWORD,
    mlflow_server,
    postgres_available,
    postgres_cluster,
    restart_postgres,
)
from tests.test_study_faults import assert_one_retry_of_a_stale_trial, beating_spec

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not postgres_available(), reason="PostgreSQL (initdb, pg_ctl) not here"),
]

TINY = [
    "--image-size", "16", "--filters", "4", "--hidden", "8", "--repeat", "1",
    "--batch-size", "4", "--holdout", "8", "--num-grid", "8", "--log-every", "2",
    "--metrics", "diversity_16", "--quiet",
]  # fmt: skip
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    artifacts = tmp_path_factory.mktemp("artifacts")
    with postgres_cluster() as cluster, mlflow_server(cluster["url"]["mlflow"], artifacts) as url:
        yield {"storage": cluster["url"]["optuna"], "tracking": url, "artifacts": artifacts,
               "cluster": cluster}  # fmt: skip


def sweep(servers, folder, *extra):
    command = [sys.executable, "-m", "studies.gamma_sweep", *TINY, "--storage",
               servers["storage"], "--tracking-uri", servers["tracking"], *extra]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(command, cwd=folder, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip


def study_trials(servers, name):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=name, storage=servers["storage"]).get_trials()


def study_runs(servers, name):
    client = mlflow.MlflowClient(servers["tracking"])
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id])
    parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return client, parent, children


def test_two_hosts_share_one_study_on_postgres_and_an_mlflow_server(servers, tmp_path):
    """Two study commands at once (two "hosts", two workers each) on one study: every
    point once, one nested run per trial, artifacts on the server, no password shown."""
    args = ["--steps", "8", "--eval-every", "4", "--checkpoint-every", "4", "--sample-every",
            "8", "--gammas", "0.3,0.5,0.7,0.9", "--seeds", "2", "--workers", "2",
            "--study-name", "shared"]  # fmt: skip
    hosts = [tmp_path / "host-a", tmp_path / "host-b"]
    for host in hosts:
        host.mkdir()
    first = sweep(servers, hosts[0], *args)
    time.sleep(3)  # the second host joins a study that exists
    second = sweep(servers, hosts[1], *args)
    outputs = [first.communicate(timeout=600)[0], second.communicate(timeout=600)[0]]
    assert first.returncode == 0 and second.returncode == 0, "\n".join(outputs)
    trials = study_trials(servers, "shared")
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 8, [
        (t.number, t.state.name, t.user_attrs.get("reason"))
        for t in trials
        if t.state.name != "COMPLETE"
    ]
    assert len({(t.params["gamma"], t.user_attrs["seed"]) for t in trials}) == 8  # each point once
    client, [parent], children = study_runs(servers, "shared")
    assert sorted(r.info.run_id for r in children) == sorted(
        t.user_attrs["mlflow_run_id"] for t in trials
    )
    assert all(r.info.status == "FINISHED" for r in children)
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in children)
    for run in children[:2]:  # checkpoints and grids went to the server's artifact root
        paths = {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")}
        assert "checkpoints/last.pt" in paths
        assert client.list_artifacts(run.info.run_id, "images")
    assert parent.data.params["storage"].count("***") == 1
    for text in [*outputs, str(parent.data.params), str(parent.data.tags)]:
        assert PG_PASSWORD not in text


def test_a_killed_worker_s_trial_continues_from_the_server_s_checkpoint(servers, tmp_path):
    """kill -9 mid-trial with the checkpoint only on the MLflow server: the retry downloads
    it and finishes the same run."""
    args = ["--steps", "400", "--eval-every", "200", "--sample-every", "400",
            "--checkpoint-every", "20", "--gammas", "0.5", "--workers", "1",
            "--heartbeat", "1", "--study-name", "killed"]  # fmt: skip
    parent = sweep(servers, tmp_path, *args)
    deadline = time.monotonic() + 120
    run_id = None
    while time.monotonic() < deadline and run_id is None:
        time.sleep(0.3)
        try:
            [trial] = study_trials(servers, "killed")
            client = mlflow.MlflowClient(servers["tracking"])
            candidate = trial.user_attrs.get("mlflow_run_id")
            if candidate and client.list_artifacts(candidate, "checkpoints"):
                run_id = candidate
        except (KeyError, ValueError):
            pass
    assert run_id is not None, parent.communicate(timeout=60)[0]
    from tests.test_studies import worker_pids

    [worker] = worker_pids(parent.pid)
    os.kill(worker, signal.SIGKILL)
    parent.communicate(timeout=60)
    rerun = sweep(servers, tmp_path, *args)
    output = rerun.communicate(timeout=300)[0]
    assert rerun.returncode == 0, output
    first, retry = study_trials(servers, "killed")
    assert first.state == TrialState.FAIL and retry.state == TrialState.COMPLETE
    assert retry.user_attrs["mlflow_run_id"] == run_id
    _, _, [run] = study_runs(servers, "killed")
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    assert run.data.tags["resume_count"] == "1"  # continued from a checkpoint, not step 0


def test_training_goes_on_while_the_mlflow_server_is_away(tmp_path):
    """The server stops mid-run and comes back 20 s later on the same address: the run
    trains on, and every metric point, grid and checkpoint is delivered."""
    from began.tracking import MlflowTracker
    from began.training.loop import train
    from tests.test_train import tiny

    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    with postgres_cluster(("mlflow",)) as cluster:
        backend = cluster["url"]["mlflow"]
        server = mlflow_server(backend, artifacts)
        url = server.__enter__()
        port = int(url.rsplit(":", 1)[1])
        tracker = MlflowTracker(url, "outage")
        outage = {"done": False}

        def should_stop(report):
            if report.step == 100 and not outage["done"]:  # mid-run: take the server away
                server.__exit__(None, None, None)
                outage["done"] = True
                outage["back"] = None
            return None

        # Long enough (~150 steps/s here) to train through the whole outage.
        cfg = tiny(steps=5000, eval_every=100, log_every=10, checkpoint_every=1000,
                   sample_every=1000, metrics="")  # fmt: skip
        import threading

        def restart_later():
            while not outage["done"]:
                time.sleep(0.2)
            time.sleep(20)
            outage["back"] = mlflow_server(backend, artifacts, port=port)
            outage["back"].__enter__()

        restarter = threading.Thread(target=restart_later)
        restarter.start()
        try:
            result = train(cfg, tracker, should_stop=should_stop)
            restarter.join()
            assert result.step == 5000
            client = mlflow.MlflowClient(url)
            history = client.get_metric_history(tracker.run_id, "m_global")
            assert sorted(m.step for m in history) == list(range(10, 5001, 10))  # none lost
            assert client.get_run(tracker.run_id).info.status == "FINISHED"
            paths = {a.path for a in client.list_artifacts(tracker.run_id, "checkpoints")}
            assert "checkpoints/last.pt" in paths
        finally:
            restarter.join()
            if outage.get("back") is not None:
                outage["back"].__exit__(None, None, None)


def test_two_hosts_retrying_one_stale_trial_queue_one_retry(servers, tmp_path, monkeypatch):
    """On PostgreSQL too, whose row locks do not cover "no retry queued yet, queue one"."""
    spec = replace(beating_spec(tmp_path, "stale-pg", [0.5]), storage=servers["storage"])
    assert_one_retry_of_a_stale_trial(spec, monkeypatch)


def test_a_postgres_restart_mid_study_loses_nothing(servers, tmp_path):
    """The database (Optuna's and the MLflow server's) restarts under two busy workers:
    they carry on, or stop in one line; the same command then completes every point
    once, and no run is left RUNNING."""
    args = ["--steps", "1500", "--eval-every", "500", "--sample-every", "1500",
            "--checkpoint-every", "250", "--gammas", "0.3,0.5,0.7,0.9", "--workers", "2",
            "--heartbeat", "5", "--study-name", "restart"]  # fmt: skip
    first = sweep(servers, tmp_path, *args)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        time.sleep(0.5)
        try:
            if any(t.state == TrialState.RUNNING for t in study_trials(servers, "restart")):
                break
        except KeyError:
            pass
    time.sleep(3)  # into training
    restart_postgres(servers["cluster"], down_s=3)
    output = first.communicate(timeout=600)[0]
    assert "Traceback" not in output, output
    if first.returncode != 0:  # stopped cleanly instead of carrying on: run it again
        rerun = sweep(servers, tmp_path, *args)
        output += rerun.communicate(timeout=600)[0]
        assert rerun.returncode == 0, output
    trials = study_trials(servers, "restart")
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(t.params["gamma"] for t in complete) == [0.3, 0.5, 0.7, 0.9], output
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    _, [parent], children = study_runs(servers, "restart")
    assert {r.info.status for r in children} == {"FINISHED"}, output
    assert len(children) == 4 and parent.info.status == "FINISHED"


LOGGER = """
import sys, time
from began.tracking import MlflowTracker
uri, experiment, index, points = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
tracker = MlflowTracker(uri, experiment, f"logger-{index}")
tracker.create()
for step in range(1, points + 1):
    tracker.log_metrics({"m_global": 1.0 / step, "k": step * 1e-4}, step)
    if step % 100 == 0:
        time.sleep(0.05)  # a training loop's pace, roughly
tracker.finish("FINISHED")
print(tracker.run_id)
"""


def test_load_sixteen_processes_log_to_one_server_and_no_point_is_lost(servers, tmp_path):
    processes, points = 16, 1000
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    started = time.monotonic()
    loggers = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                LOGGER,
                servers["tracking"],
                "logging-load",
                str(i),
                str(points),
            ],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in range(processes)
    ]
    results = [logger.communicate(timeout=600) for logger in loggers]
    seconds = time.monotonic() - started
    assert all(logger.returncode == 0 for logger in loggers), [err for _, err in results]
    client = mlflow.MlflowClient(servers["tracking"])
    for out, _ in results:
        run_id = out.strip().splitlines()[-1]
        for key in ("m_global", "k"):
            steps = sorted(m.step for m in client.get_metric_history(run_id, key))
            assert steps == list(range(1, points + 1)), (run_id, key, len(steps))
        assert client.get_run(run_id).info.status == "FINISHED"
    print(f"\nload: {processes} processes x {2 * points} points to one server in {seconds:.1f} s")


def test_load_eight_workers_on_one_postgres_study(servers, tmp_path):
    args = ["--steps", "4", "--eval-every", "4", "--sample-every", "4", "--checkpoint-every",
            "4", "--gammas", "0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9", "--seeds", "2", "--workers", "8",
            "--study-name", "load"]  # fmt: skip
    started = time.monotonic()
    study = sweep(servers, tmp_path, *args)
    output = study.communicate(timeout=900)[0]
    seconds = time.monotonic() - started
    assert study.returncode == 0, output
    assert "Traceback" not in output, output
    trials = study_trials(servers, "load")
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 16
    assert len({(t.params["gamma"], t.user_attrs["seed"]) for t in trials}) == 16
    _, [parent], children = study_runs(servers, "load")
    assert len(children) == 16 and {r.info.status for r in children} == {"FINISHED"}
    durations = sorted((t.datetime_complete - t.datetime_start).total_seconds() for t in trials)
    median = durations[len(durations) // 2]
    print(
        f"\nload: 8 workers, 16 trials of 4 steps in {seconds:.1f} s; median trial {median:.1f} s"
    )


def recipe_block() -> str:
    text = (REPO / "docs" / "distributed.md").read_text()
    block = text.split("<!-- recipe", 1)[1].split("<!-- /recipe -->", 1)[0]
    return block.split("```bash\n", 1)[1].rsplit("```", 1)[0]


@pytest.mark.skipif(os.geteuid() != 0, reason="the recipe is written for root (runuser)")
def test_the_docs_recipe_runs_as_written():
    from tests.servers import free_port

    # Not under tmp_path: pytest's folders are private to root, and the postgres user must
    # reach $WORK.
    root = Path(tempfile.mkdtemp(prefix="began-recipe-"))
    root.chmod(0o755)
    work = root / "work"
    env = {
        **os.environ, "WORK": str(work), "PGPORT": str(free_port()),
        "MLFLOW_PORT": str(free_port()), "PYTHONPATH": str(REPO),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }  # fmt: skip
    shell = subprocess.Popen(["bash", "-euo", "pipefail", "-c", recipe_block()], cwd=REPO,
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)  # fmt: skip
    try:
        output = shell.communicate(timeout=900)[0]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(shell.pid, signal.SIGTERM)
        subprocess.run(["runuser", "-u", "postgres", "--", "pg_ctl", "-D", str(work / "pg"),
                        "-m", "immediate", "stop"], capture_output=True)  # fmt: skip
    assert shell.returncode == 0, output
    trials = pd.read_csv(work / "trials.csv")
    shutil.rmtree(root, ignore_errors=True)
    assert len(trials) == 4 and set(trials["state"]) == {"COMPLETE"}, trials
    assert sorted(trials["gamma"]) == [0.3, 0.5, 0.7, 0.9]
