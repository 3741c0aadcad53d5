"""MLflow's system metrics in a training run, on a real SQLite store: sampled while the run
trains, under the node id of the process that trains it, stopped however the run ends
(never a monitor thread left behind), and none with --system-metrics off."""

import threading
import time

import mlflow
import pytest

import began.training.loop as loop_module
from began.tracking import FAILED, FINISHED, RUNNING, MlflowTracker
from began.train import main
from began.training.interrupts import RunAbandoned
from began.training.loop import end_run, open_run, step_once
from tests.test_train import tiny

TINY_ARGS = [
    "--image-size", "16", "--filters", "4", "--hidden", "8", "--repeat", "1",
    "--batch-size", "4", "--holdout", "8", "--num-grid", "8", "--device", "cpu",
    "--steps", "8", "--log-every", "2", "--sample-every", "8", "--checkpoint-every", "8",
    "--metrics", "sharpness_8", "--quiet", "--experiment", "sysmetrics",
]  # fmt: skip
MONITOR_THREAD = "SystemMetricsMonitor"  # MLflow's name for its thread


@pytest.fixture
def sampled_often(monkeypatch):
    """Samples every 0.1 s, and steps slow enough for several of them in a tiny run."""
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.1")
    EARLIER.clear()
    EARLIER.update(monitor_threads())
    real_step = loop_module.step_once

    def slow_step(*args):
        # MLflow's monitor logs nothing before its first sample window closes, which takes
        # its own start-up (psutil, NVML) plus 0.1 s: on a loaded machine more than a
        # second, so the run lasts a few.
        time.sleep(0.3)
        return real_step(*args)

    monkeypatch.setattr(loop_module, "step_once", slow_step)


def monitor_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == MONITOR_THREAD and t.is_alive()}


EARLIER: set[threading.Thread] = set()  # monitors of runs outside these tests


def monitors_running() -> set[threading.Thread]:
    """The monitor threads started during this test and still running."""
    return monitor_threads() - EARLIER


def the_run(uri: str):
    client = mlflow.MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("sysmetrics").experiment_id])
    return run


def test_a_run_logs_system_metrics_under_its_process(mlflow_db, sampled_often):
    main(TINY_ARGS)
    run = the_run(mlflow_db)
    node = run.data.tags["process"]  # host:pid, this process
    assert run.info.status == FINISHED
    for name in ("cpu_utilization_percentage", "system_memory_usage_megabytes"):
        assert f"system/{node}/{name}" in run.data.metrics, sorted(run.data.metrics)
    assert not monitors_running()


def test_system_metrics_off_logs_none(mlflow_db, sampled_often):
    main([*TINY_ARGS, "--system-metrics", "off"])
    run = the_run(mlflow_db)
    assert run.info.status == FINISHED
    assert not [name for name in run.data.metrics if name.startswith("system/")]
    assert "m_global" in run.data.metrics  # the training metrics are there


def test_a_failed_run_stops_its_monitor(mlflow_db, sampled_often, monkeypatch):
    real_step = loop_module.step_once
    steps = []

    def breaks_at_step_5(*args):
        steps.append(1)
        if len(steps) == 5:
            raise RuntimeError("the GPU fell off the bus")
        return real_step(*args)

    monkeypatch.setattr(loop_module, "step_once", breaks_at_step_5)
    with pytest.raises(RuntimeError, match="fell off"):
        main(TINY_ARGS)
    run = the_run(mlflow_db)
    assert run.info.status == FAILED
    assert any(name.startswith("system/") for name in run.data.metrics)
    assert not monitors_running()


def test_a_run_let_go_stops_its_monitor_and_stays_running(mlflow_db, sampled_often):
    """Another worker took the run over: this process stops sampling into it, and leaves
    its status to the new owner."""
    tracker = MlflowTracker(mlflow_db, "sysmetrics")
    run = open_run(tiny(steps=8), tracker)
    assert monitors_running()
    for _ in range(3):
        step_once(run.learner, run.sampler)
    end_run(run, RunAbandoned("another worker failed it as stale"))
    assert not monitors_running()
    assert tracker.status == RUNNING
