"""Chaos: a real 6-point sweep with 2 workers and a 1-s heartbeat, SIGKILLed many times at
seeded random moments (the whole process group, one worker, or only the parent) and
restarted after each kill, then run to the end. Whatever was killed when, every point
must end COMPLETE exactly once, in one FINISHED MLflow run whose resume_count is the
number of kills that hit it, with the objective of an unbroken run; nothing may hang,
stay RUNNING or be left running.

`CHAOS_SEEDS=0,1,2,...` (default 0) replays or widens the seeds; `CHAOS_KILLS` (8) sets
the kills per seed. Marked `chaos` (and `integration` for PostgreSQL): `scripts/test -m
chaos` runs them; .ci/run does.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import mlflow
import optuna
import pytest
from optuna.trial import TrialState

from tests.chaos import (
    EPISODE_S,
    TINY_SWEEP,
    Chaos,
    chaos,
    group_pids,
    wait_for_group,
)
from tests.servers import postgres_available, postgres_cluster

SEEDS = [int(s) for s in os.environ.get("CHAOS_SEEDS", "0").split(",")]
KILLS = int(os.environ.get("CHAOS_KILLS", "8"))
POINTS = {(gamma, seed) for gamma in (0.3, 0.5, 0.7) for seed in (0, 1)}


@pytest.fixture(scope="module")
def unbroken(tmp_path_factory) -> dict[tuple[float, int], float]:
    """The sweep's objectives, run once without a kill."""
    folder = tmp_path_factory.mktemp("unbroken")
    run = Chaos(folder, f"sqlite:///{folder}/optuna.db", f"sqlite:///{folder}/mlflow.db")
    assert run.run_to_the_end().returncode == 0, (folder / "sweep.log").read_text()[-3000:]
    study = optuna.load_study(study_name=run.name, storage=run.storage)
    return {(t.params["gamma"], t.user_attrs["seed"]): t.values[0] for t in study.trials}


def check(
    run: Chaos, unbroken: dict[tuple[float, int], float], started: float, rel: float = 1e-6
) -> None:
    trials = optuna.load_study(study_name=run.name, storage=run.storage).get_trials()
    left = [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert not left, (left, run.kills, log_tail(run))
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    points = sorted((t.params["gamma"], t.user_attrs["seed"]) for t in complete)
    assert points == sorted(POINTS), ("every point COMPLETE exactly once", log_tail(run))
    client = mlflow.MlflowClient(run.tracking_uri)
    experiment = client.get_experiment_by_name(run.name).experiment_id
    runs = client.search_runs([experiment])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == len(POINTS), "one MLflow run per point"
    assert all(r.info.status == "FINISHED" for r in runs), [r.info.status for r in runs]
    by_run = {t.user_attrs["mlflow_run_id"]: t for t in complete}
    assert set(by_run) == {r.info.run_id for r in children}
    for child in children:
        resumed = int(child.data.tags.get("resume_count", "0"))
        assert resumed == run.hits[child.info.run_id], (child.info.run_id, run.kills, log_tail(run))
        trial = by_run[child.info.run_id]
        expected = unbroken[(trial.params["gamma"], trial.user_attrs["seed"])]
        assert trial.values[0] == pytest.approx(expected, rel=rel), "differs from unbroken"
    for pgid in run.pgids:
        assert group_pids(pgid) == [], f"process group {pgid} left processes behind"
    print(f"chaos: {len(run.kills)} kills ({', '.join(run.kills)}), "
          f"{sum(run.hits.values())} hit a training run, "
          f"{sum(1 for n in run.hits.values() if n >= 4)} point(s) hit 4+ times "
          f"(most: {max(run.hits.values(), default=0)}), {len(children)} runs, "
          f"{len(trials)} trials, {time.monotonic() - started:.0f} s")  # fmt: skip


def log_tail(run: Chaos, characters: int = 3000) -> str:
    """The end of the sweeps' output: what a failure on a CI machine leaves to read."""
    return (run.folder / "sweep.log").read_text(errors="replace")[-characters:]


@pytest.mark.chaos
@pytest.mark.parametrize("seed", SEEDS)
def test_a_sweep_killed_at_random_ends_complete_once(tmp_path, unbroken, seed):
    started = time.monotonic()
    run = chaos(tmp_path, f"sqlite:///{tmp_path}/optuna.db", f"sqlite:///{tmp_path}/mlflow.db",
                seed, KILLS)  # fmt: skip
    check(run, unbroken, started)


@pytest.mark.chaos
@pytest.mark.parametrize("seed", SEEDS)
def test_a_packed_sweep_killed_at_random_ends_complete_once(tmp_path, unbroken, seed):
    """Two trials per worker, trained as one model: a kill ends every trial of a pack, and
    a retry may train alone or beside another. A packed step differs from a lone one in
    float rounding only (within 1e-5 over 100 steps, tests/test_pack.py), but a GAN
    amplifies rounding over a run: seen 0.3% apart on diversity_gap after 2,000 steps, hence 2%."""
    started = time.monotonic()
    run = chaos(tmp_path, f"sqlite:///{tmp_path}/optuna.db", f"sqlite:///{tmp_path}/mlflow.db",
                seed, KILLS, pack=2)  # fmt: skip
    check(run, unbroken, started, rel=0.02)


@pytest.mark.chaos
@pytest.mark.integration
@pytest.mark.skipif(not postgres_available(), reason="PostgreSQL (initdb, pg_ctl) not installed")
@pytest.mark.parametrize("seed", SEEDS)
def test_a_sweep_on_postgresql_killed_at_random_ends_complete_once(tmp_path, unbroken, seed):
    started = time.monotonic()
    with postgres_cluster() as cluster:
        run = chaos(Path(tmp_path), cluster["url"]["optuna"], cluster["url"]["mlflow"],
                    seed, KILLS)  # fmt: skip
        check(run, unbroken, started)


# The options given twice take their later value: one point, one worker, six kills' worth.
ONE_POINT = [*TINY_SWEEP, "--gammas", "0.5", "--seeds", "1", "--workers", "1", "--steps", "600"]


@pytest.mark.chaos
def test_a_point_killed_again_and_again_completes_in_its_one_run(tmp_path):
    """A preempted spot machine, six times over: the whole group SIGKILLed each time the
    trial has written two more checkpoints. Every attempt advanced the run, so none uses
    up a retry: the point completes, from its checkpoints, in its one MLflow run."""
    run = Chaos(tmp_path, f"sqlite:///{tmp_path}/optuna.db", f"sqlite:///{tmp_path}/mlflow.db",
                sweep=ONE_POINT)  # fmt: skip
    rng = random.Random(0)
    process = run.start()
    for _ in range(6):
        run.wait_for_writes(process, 2)
        assert group_pids(process.pid), ("the sweep ended before its kill", log_tail(run))
        stopped, hit = run.kill(process, "group", rng)
        for run_id, _ in hit:
            run.hits[run_id] += 1
        wait_for_group(process, EPISODE_S)
        process = run.start()
    wait_for_group(process, EPISODE_S)
    assert process.returncode == 0, log_tail(run)
    [trial] = [t for t in study_of(run).get_trials() if t.state == TrialState.COMPLETE]
    child = only_child_run(run)
    assert (
        child.info.status == "FINISHED" and trial.user_attrs["mlflow_run_id"] == child.info.run_id
    )
    assert run.hits[child.info.run_id] >= 5, (run.hits, log_tail(run))
    assert int(child.data.tags["resume_count"]) == run.hits[child.info.run_id]
    assert [t.state for t in study_of(run).get_trials()].count(TrialState.RUNNING) == 0
    assert all(group_pids(pgid) == [] for pgid in run.pgids)


@pytest.mark.chaos
def test_a_trial_that_dies_at_the_same_step_every_time_is_given_up(tmp_path):
    """A poison trial: every attempt SIGKILLs its worker at step 30, ten steps after the
    checkpoint at 20 (tests/hooks/die_at_step). The command is run again after each death
    until one gives the trial up: after 4 attempts from step 20, its run FAILED, named in
    the closing lines, exit status 1; nothing RUNNING, no process left."""
    hooks = Path(__file__).parent / "hooks" / "die_at_step"
    run = Chaos(tmp_path, f"sqlite:///{tmp_path}/optuna.db", f"sqlite:///{tmp_path}/mlflow.db",
                sweep=ONE_POINT, env={"DIE_AT_STEP": "30", "DIE_GAMMA": "0.5"})  # fmt: skip
    run.env["PYTHONPATH"] = f"{hooks}:{Path(__file__).parents[1]}"
    reason = "given up: 4 attempts died from the checkpoint at step 20"
    for _ in range(8):
        ended = run.run_to_the_end()
        assert ended.returncode == 1, log_tail(run)  # a worker died, or the trial given up
        if reason in log_tail(run, 1500):
            break
    closing = log_tail(run, 1500)
    assert f"gamma=0.5 FAILED: {reason}" in closing, closing  # "! t<N> gamma=0.5 FAILED: ..."
    assert "1 trial(s) failed (listed above); exit status 1" in closing
    trials = study_of(run).get_trials()
    assert [t.state for t in trials].count(TrialState.RUNNING) == 0
    assert trials[-1].user_attrs["reason"] == reason
    child = only_child_run(run)
    assert child.info.status == "FAILED" and child.data.tags["given_up"] == reason
    assert all(group_pids(pgid) == [] for pgid in run.pgids)


def only_child_run(run: Chaos):
    """The study's one trial run (a one-point sweep)."""
    client = mlflow.MlflowClient(run.tracking_uri)
    experiment = client.get_experiment_by_name(run.name).experiment_id
    [child] = [r for r in client.search_runs([experiment]) if "mlflow.parentRunId" in r.data.tags]
    return child


def study_of(run: Chaos) -> optuna.Study:
    return optuna.load_study(study_name=run.name, storage=run.storage)
