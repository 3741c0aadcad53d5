"""Fault paths of a study, each the reproduction of a way a trial was lost, run twice or
left hanging: a kill between a claim and its first heartbeat, a claim that fails after it
committed, two workers failing one stale trial, hosts with different heartbeats, a trial
taken over by a retry, preemptions, a second signal, a parent killed alone."""

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import mlflow
import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

import began.training.loop as loop_module
import studies.fleet.queue as queue_module
import studies.fleet.worker as worker_module
import studies.trial as trial_module
from began.tracking import FAILED, FINISHED, MlflowTracker
from studies.fleet.optuna_private import pop_waiting_trial_id, storage_of
from studies.fleet.queue import failed_for_good
from studies.fleet.storage import load_study, prepare_study
from studies.progress import summary
from studies.schema import RUN_ID_ATTR, START_STEP_ATTR
from studies.space import parse_space
from studies.spec import SEARCH
from tests.test_studies import TINY, child_runs, run_worker_here, tiny_spec, trials, worker_pids

BEAT_S = 1  # the tests' heartbeat
GRACE_S = queue_module.stale_after_s(BEAT_S)


@pytest.fixture(autouse=True)
def _migrated_store(mlflow_db):
    """Each test's tmp_path/mlflow.db starts migrated (tests/conftest.py)."""


def beating_spec(folder, name, gammas, **kwargs):
    return replace(tiny_spec(folder, name, gammas, **kwargs), heartbeat_s=BEAT_S)


def backdate(spec, seconds: float) -> None:
    """Move the study's claims and heartbeats `seconds` into the past: what a worker that
    died that long ago leaves behind, without sleeping through the grace."""
    if spec.storage.startswith("sqlite"):
        moved = "datetime({column}, '-{seconds} seconds')"
    else:  # PostgreSQL
        moved = "{column} - make_interval(secs => {seconds})"
    trials = ("SELECT trial_id FROM trials WHERE study_id = "
              "(SELECT study_id FROM studies WHERE study_name = :name)")  # fmt: skip
    engine = sqlalchemy.create_engine(spec.storage)
    with engine.begin() as db:
        for table, column in (("trial_heartbeats", "heartbeat"), ("trials", "datetime_start")):
            to = moved.format(column=column, seconds=seconds)
            update = f"UPDATE {table} SET {column} = {to} WHERE trial_id IN ({trials})"
            db.execute(sqlalchemy.text(update), {"name": spec.study_name})
    engine.dispose()


@contextlib.contextmanager
def time_limit(seconds):
    """A hang becomes a failure: SIGALRM raises inside whatever is waiting."""

    def on_alarm(signum, frame):
        raise TimeoutError(f"still waiting after {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_a_trial_claimed_before_its_first_heartbeat_is_retried_after_the_grace(tmp_path):
    spec = beating_spec(tmp_path, "claimed", [0.5])
    study = prepare_study(spec)
    pop_waiting_trial_id(study)  # a worker took it, then was killed before its first beat
    backdate(spec, GRACE_S + 1)
    taken = worker_module.next_trial(load_study(spec), spec, time.monotonic())
    assert isinstance(taken, optuna.Trial), "the worker waits for a trial nobody runs"
    first, retry = trials(tmp_path, "claimed")
    assert first.state == TrialState.FAIL and retry.system_attrs["failed_trial"] == 0


def test_a_claim_that_fails_after_it_committed_is_never_claimed_again(tmp_path, monkeypatch):
    spec = beating_spec(tmp_path, "claim", [0.3, 0.5])
    real_pop = queue_module.pop_waiting_trial_id
    broken = []

    def pop_then_lose_the_connection(study):
        trial_id = real_pop(study)
        if not broken:  # the claim committed; its answer never arrived
            broken.append(trial_id)
            raise sqlalchemy.exc.OperationalError("UPDATE trials", {}, ConnectionResetError())
        return trial_id

    monkeypatch.setattr(queue_module, "pop_waiting_trial_id", pop_then_lose_the_connection)
    with time_limit(120):
        assert run_worker_here(spec) == 0
    done = trials(tmp_path, "claim")
    complete = sorted(t.params["gamma"] for t in done if t.state == TrialState.COMPLETE)
    assert complete == [0.3, 0.5]  # each point once, the orphaned claim continued by a retry
    assert not [t for t in done if t.state == TrialState.RUNNING]


def test_two_workers_retrying_one_stale_trial_take_turns(tmp_path, monkeypatch):
    assert_one_retry_of_a_stale_trial(beating_spec(tmp_path, "stale", [0.5]), monkeypatch)


def assert_one_retry_of_a_stale_trial(spec, monkeypatch):
    """Two workers find one trial stale at once, on a slow database: they take turns
    (their writes never overlap) and queue one retry between them, not two."""
    study = prepare_study(spec)
    trial_id = pop_waiting_trial_id(study)
    storage_of(study).record_heartbeat(trial_id)
    backdate(spec, GRACE_S + 1)  # its worker died that long ago
    workers = [load_study(spec) for _ in range(2)]
    writes = []
    for worker_study in workers:
        storage = storage_of(worker_study)

        def slow_write(trial_id, state, values=None, real=storage.set_trial_state_values):
            began = time.monotonic()
            time.sleep(0.5)  # a slow database: the window in which two writers overlap
            try:
                return real(trial_id, state, values)
            finally:
                writes.append((began, time.monotonic()))

        monkeypatch.setattr(storage, "set_trial_state_values", slow_write)
    threads = [
        threading.Thread(target=worker_module.next_trial, args=(s, spec, time.monotonic()))
        for s in workers
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    writes.sort()
    assert all(end <= start for (_, end), (start, _) in zip(writes, writes[1:], strict=False))
    done = optuna.load_study(study_name=spec.study_name, storage=spec.storage).get_trials()
    retries = [t for t in done if t.system_attrs.get("failed_trial") == 0]
    assert len(retries) == 1


def test_the_grace_period_is_the_study_s_not_each_host_s(tmp_path):
    spec = replace(tiny_spec(tmp_path, "beat", [0.5]), heartbeat_s=2)
    study = prepare_study(spec)  # the study beats every 2 s
    trial_id = pop_waiting_trial_id(study)
    storage_of(study).record_heartbeat(trial_id)
    backdate(spec, 4)  # one beat lost and a little more: alive with the study's margin
    host = replace(spec, heartbeat_s=1)  # another host started with --heartbeat 1
    prepare_study(host)
    assert worker_module.next_trial(load_study(host), host, time.monotonic()) is worker_module.WAIT
    [trial] = trials(tmp_path, "beat")
    assert trial.state == TrialState.RUNNING


def test_a_trial_taken_over_by_its_retry_stops_without_failing_the_shared_run(
    tmp_path, monkeypatch
):
    spec = beating_spec(tmp_path, "taken", [0.5], steps=400,
                        extra=["--checkpoint-every", "20", "--eval-every", "200"])  # fmt: skip
    real_step = loop_module.train_step
    taken_over = []

    def step(*args):
        state, metrics = real_step(*args)
        if state.step == 30 and not taken_over:
            # Another worker stopped seeing this trial's beats: it fails the trial and
            # queues its retry, which will continue the same MLflow run.
            study = optuna.load_study(study_name="taken", storage=spec.storage)
            [running] = [t for t in study.get_trials() if t.state == TrialState.RUNNING]
            queue_module.continue_later(study, running, crashed=True)
            storage_of(study).set_trial_state_values(running._trial_id, TrialState.FAIL)
            taken_over.append(time.monotonic())
        return state, metrics

    ended = []
    real_finish = MlflowTracker.finish

    def finish(self, status, error=None):
        ended.append(status)
        return real_finish(self, status, error)

    monkeypatch.setattr(loop_module, "train_step", step)
    monkeypatch.setattr(MlflowTracker, "finish", finish)
    with time_limit(300):
        assert run_worker_here(spec) == 0
    assert FAILED not in ended  # the shared run was never marked FAILED
    first, retry = trials(tmp_path, "taken")
    assert first.state == TrialState.FAIL and retry.state == TrialState.COMPLETE
    _, _, [run] = child_runs(tmp_path, "taken")
    assert run.info.status == FINISHED and run.data.tags["resume_count"] == "1"


def test_a_trial_that_raises_outside_training_ends_its_run_failed(tmp_path, monkeypatch):
    spec = tiny_spec(tmp_path, "raises", [0.5])

    def broken_monitor(*args):
        raise RuntimeError("lost the storage while setting up the trial")

    monkeypatch.setattr(trial_module, "TrialMonitor", broken_monitor)  # after its run exists
    assert run_worker_here(spec) == 0
    [trial] = trials(tmp_path, "raises")
    assert trial.state == TrialState.FAIL
    client, _, [run] = child_runs(tmp_path, "raises")
    assert run.info.status == FAILED
    assert "error.txt" in {a.path for a in client.list_artifacts(run.info.run_id)}


def preempt(study, spec):
    """A worker takes the next queued trial and is stopped by Ctrl-C (after its
    checkpoint: what the worker does then)."""
    trial = optuna.Trial(study, pop_waiting_trial_id(study))
    worker_module.stop_trial(study, trial)


def test_preemptions_do_not_use_up_the_retries_of_a_crash(tmp_path):
    spec = beating_spec(tmp_path, "preempt", [0.5])
    study = prepare_study(spec)
    for _ in range(spec.max_retries + 1):  # more Ctrl-Cs than a crash may be retried
        preempt(study, spec)
    trial_id = pop_waiting_trial_id(study)  # then a kill -9 mid-trial
    storage_of(study).record_heartbeat(trial_id)
    backdate(spec, GRACE_S + 1)
    taken = worker_module.next_trial(load_study(spec), spec, time.monotonic())
    assert isinstance(taken, optuna.Trial), "the crash was not retried: the point restarts at 0"


def test_kills_that_advance_the_run_are_retried_for_ever_and_kills_that_do_not_give_up(
    tmp_path, capsys
):
    spec = beating_spec(tmp_path, "progress", [0.5])
    study = prepare_study(spec)
    run = MlflowTracker(spec.tracking_uri, spec.experiment, "trial-0")
    run.create()
    storage = storage_of(study)

    def killed(trial, start_step):
        """The attempt opened the run at `start_step`, then its machine was killed."""
        storage.set_trial_user_attr(trial._trial_id, RUN_ID_ATTR, run.run_id)
        storage.set_trial_user_attr(trial._trial_id, START_STEP_ATTR, start_step)
        storage.record_heartbeat(trial._trial_id)
        backdate(spec, GRACE_S + 1)
        return worker_module.next_trial(load_study(spec), spec, time.monotonic())

    trial = worker_module.next_trial(study, spec, time.monotonic())
    for step in (0, 20, 40, 60, 80, 100):  # six kills, each after a newer checkpoint
        trial = killed(trial, step)
        assert isinstance(trial, optuna.Trial), f"given up at step {step} though it advanced"
    for _ in range(spec.max_retries - 1):  # the retries left from step 100
        trial = killed(trial, 100)
        assert isinstance(trial, optuna.Trial)
    assert killed(trial, 100) is None  # the 4th attempt dead at step 100: given up
    trials = load_study(spec).get_trials()
    last = trials[-1]
    assert last.state == TrialState.FAIL and last.user_attrs["given_up"] is True
    reason = "given up: 4 attempts died from the checkpoint at step 100"
    assert last.user_attrs["reason"] == reason
    assert reason in capsys.readouterr().err
    ended = mlflow.MlflowClient(spec.tracking_uri).get_run(run.run_id)
    assert ended.info.status == FAILED and ended.data.tags["given_up"] == reason
    assert failed_for_good(trials) == [last]
    closing = summary(spec, load_study(spec), 1.0)
    assert f"! t{last.number} gamma=0.5 FAILED: {reason}" in closing
    assert "1 failed, 8 attempts interrupted and continued" in closing
    # The same command again: the point continues its one run, with fresh retries.
    again = prepare_study(spec)
    [queued] = [t for t in again.get_trials() if t.state == TrialState.WAITING]
    assert queued.user_attrs["mlflow_run_id"] == run.run_id and "reason" not in queued.user_attrs
    assert queued.system_attrs["retry_history"] == [] and failed_for_good(again.trials) == []


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_two_hosts_searching_one_study_draw_distinct_points(tmp_path, sampler):
    """Two hosts join one search, one worker each (worker 0 on both): every new trial
    draws from a stream of its own, and the study is reproducible from --sampler-seed."""
    spec = replace(tiny_spec(tmp_path, "hosts", [0.5]), kind=SEARCH, grid=(), n_trials=8,
                   space=parse_space("gamma=0.1:0.9"), sampler=sampler, sampler_seed=7)  # fmt: skip
    prepare_study(spec)
    hosts = [load_study(spec), load_study(spec)]
    for n in range(8):
        trial = worker_module.next_trial(hosts[n % 2], spec, time.monotonic())
        trial.suggest_float("gamma", 0.1, 0.9)
    gammas = [t.params["gamma"] for t in load_study(spec).get_trials()]
    assert len(set(gammas)) == 8, gammas
    again = replace(spec, study_name="hosts-again")
    prepare_study(again)
    host = load_study(again)
    for _ in range(8):
        trial = worker_module.next_trial(host, again, time.monotonic())
        trial.suggest_float("gamma", 0.1, 0.9)
    assert [t.params["gamma"] for t in load_study(again).get_trials()] == gammas


@pytest.mark.parametrize("lands_in", ["continue_later", "_tell"])
def test_a_second_signal_while_stopping_never_loses_or_doubles_the_trial(
    tmp_path, monkeypatch, lands_in
):
    spec = beating_spec(tmp_path, "second", [0.5])
    study = prepare_study(spec)
    real = getattr(worker_module, lands_in)

    def then_a_second_signal(*args, **kwargs):
        if lands_in == "_tell":
            real(*args, **kwargs)  # ... or after the trial was told FAIL
        raise KeyboardInterrupt  # the second Ctrl-C lands before the stop is recorded ...

    monkeypatch.setattr(worker_module, lands_in, then_a_second_signal)
    with pytest.raises(KeyboardInterrupt):
        preempt(study, spec)
    monkeypatch.setattr(worker_module, lands_in, real)
    backdate(spec, GRACE_S + 1)
    taken = worker_module.next_trial(load_study(spec), spec, time.monotonic())
    assert isinstance(taken, optuna.Trial), "the stopped trial was lost"
    waiting = [t for t in trials(tmp_path, "second") if t.state == TrialState.WAITING]
    assert waiting == [], "the stopped trial was queued twice"


CHECKPOINTS = "mlruns/*/*/artifacts/checkpoints/last.pt"


def running(pid: int) -> bool:
    """Alive and not a zombie (an exited orphan waits for init to reap it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_workers_stop_when_their_parent_is_killed_alone(tmp_path):
    args = [sys.executable, "-m", "studies.gamma_sweep", *TINY, "--steps", "200",
            "--eval-every", "100", "--sample-every", "200", "--checkpoint-every", "20",
            "--gammas", "0.5", "--workers", "1", "--study-name", "orphan",
            "--heartbeat", str(BEAT_S)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    parent = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(tmp_path.glob(CHECKPOINTS)):
        time.sleep(0.2)  # until the trial has trained a while
    [worker] = worker_pids(parent.pid)
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and running(worker):
        time.sleep(0.2)
    assert not running(worker), "the worker trains on, an orphan"
    # It stopped as on Ctrl-C: a checkpoint, its run KILLED, the trial queued to continue.
    _, [parent_run], [run] = child_runs(tmp_path, "orphan")
    assert run.info.status == "KILLED"
    assert [t.state for t in trials(tmp_path, "orphan")] == [TrialState.FAIL, TrialState.WAITING]
    rerun = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=600)  # fmt: skip
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    _, _, [run] = child_runs(tmp_path, "orphan")
    assert run.info.status == "FINISHED" and run.data.tags["resume_count"] == "1"
