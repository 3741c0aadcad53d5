"""`--launch`: the job a study hands to Slurm or Kubernetes, checked without a cluster (the
real Slurm: tests/test_slurm_launch.py)."""

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from began.cli import run_cli
from studies import gamma_sweep
from studies.launch import Launch, check_reachable, k8s_manifest, slurm_script, task_argv
from studies.spec import GRID, StudySpec
from tests.test_studies import SAMPLE_GRIDS, TINY

STORES = ["--storage", "postgresql://began@db-host:5432/optuna",
          "--tracking-uri", "http://mlflow-host:5000"]  # fmt: skip


def spec(name: str = "lfw-gamma") -> StudySpec:
    from began.config import DEMO, config_from_options

    return StudySpec(kind=GRID, study_name=name, storage=STORES[1], tracking_uri=STORES[3],
                     experiment=name, base_config=config_from_options({"preset": DEMO}),
                     space={}, objectives=())  # fmt: skip


def test_a_task_runs_the_same_command_without_the_launch_options():
    argv = ["--gammas", "0.3,0.5", "--launch", "slurm", "--tasks=8", "--gres", "gpu:1",
            "--slurm-arg=--time=4:00:00", "--slurm-arg", "--partition=gpu", "--follow",
            "--stop-before", "300", "--launch-dir", "jobs", *STORES]  # fmt: skip
    assert task_argv(argv, "lfw-gamma") == [
        "--gammas", "0.3,0.5", *STORES, "--study-name", "lfw-gamma", "--quiet"
    ]  # fmt: skip
    # A name given stays as given, and --quiet is not doubled.
    kept = task_argv(["--study-name=mine", "--quiet", "--launch=print"], "other")
    assert kept == ["--study-name=mine", "--quiet"]


def test_the_slurm_script_asks_for_an_array_requeue_and_the_warning_signal(tmp_path):
    launch = Launch("slurm", tasks=8, gres="gpu:1", slurm_args=("--time=4:00:00",),
                    stop_before_s=300, folder=tmp_path)  # fmt: skip
    text = slurm_script(spec(), launch, "studies.gamma_sweep", ["--gammas", "0.3", *STORES])
    lines = text.splitlines()
    assert lines[0] == "#!/bin/bash"
    for wanted in ("#SBATCH --job-name=lfw-gamma", "#SBATCH --array=0-7", "#SBATCH --requeue",
                   "#SBATCH --signal=B:USR1@300", "#SBATCH --gres=gpu:1",
                   "#SBATCH --time=4:00:00", "#SBATCH --export=ALL",
                   f"#SBATCH --output={tmp_path.resolve()}/lfw-gamma/slurm-%A_%a.out"):  # fmt: skip
        assert wanted in lines, wanted
    # The study command replaces the shell, so that the signals reach it.
    [command] = [line for line in lines if line.startswith("exec ")]
    words = shlex.split(command)[1:]
    assert words[:3] == [sys.executable, "-m", "studies.gamma_sweep"]
    assert words[3:] == ["--gammas", "0.3", *STORES, "--study-name", "lfw-gamma", "--quiet"]


def test_the_kubernetes_job_is_indexed_and_reads_the_stores_from_a_secret():
    launch = Launch("k8s-print", tasks=4, gres="gpu:2", image="registry/began:1", secret="s")
    text = k8s_manifest(spec("LFW_gamma"), launch, "studies.gamma_sweep", ["--gammas", "0.3",
                                                                            *STORES])  # fmt: skip
    job = yaml.safe_load(text)
    assert job["kind"] == "Job" and job["apiVersion"] == "batch/v1"
    assert job["metadata"]["name"] == "lfw-gamma"  # a DNS label
    assert (job["spec"]["completionMode"], job["spec"]["completions"],
            job["spec"]["parallelism"]) == ("Indexed", 4, 4)  # fmt: skip
    [container] = job["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "registry/began:1"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 2
    secrets = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]}
    assert secrets == {"STORAGE_URL": {"name": "s", "key": "STORAGE_URL"},
                       "TRACKING_URI": {"name": "s", "key": "TRACKING_URI"}}  # fmt: skip
    # The URLs are never inline: Kubernetes puts the Secret's values in $(NAME).
    assert "db-host" not in text and "mlflow-host" not in text
    command = container["command"]
    assert command[:3] == ["python", "-m", "studies.gamma_sweep"]
    assert command[command.index("--storage") + 1] == "$(STORAGE_URL)"
    assert command[command.index("--tracking-uri") + 1] == "$(TRACKING_URI)"


def test_the_kubernetes_job_is_valid_against_the_kubernetes_schema():
    validate = pytest.importorskip("kubernetes_validate")
    launch = Launch("k8s-print", tasks=3, gres="gpu:1")
    job = yaml.safe_load(k8s_manifest(spec(), launch, "studies.gamma_sweep", STORES))
    validate.validate(job, "1.30", strict=True)  # raises on any unknown or mistyped field


@pytest.mark.parametrize(
    ("storage", "tracking", "message"),
    [
        ("sqlite:///optuna.db", "http://m:5000", "a SQLite file is not reachable from other hosts"),
        ("postgresql://u@h/db", "sqlite:///mlflow.db", "a local MLflow store is not reachable"),
        ("postgresql://u:pw@h/db", "http://m:5000", "--storage postgresql://u:***@h/db: the "
         "password would be written into the job script"),
    ],
)  # fmt: skip
def test_stores_other_hosts_cannot_reach_are_refused(storage, tracking, message):
    with pytest.raises(ValueError, match=message.replace("*", r"\*")):
        check_reachable(storage, tracking)


def test_launching_with_a_local_store_fails_in_one_line_and_creates_nothing(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stopped:
        run_cli(gamma_sweep.main, ["--launch", "slurm", "--tasks", "2"])
    assert stopped.value.code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "--storage sqlite:///" in line and "not reachable from other hosts" in line
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--tasks", "0"], "--tasks: must be >= 1"),
        (["--gres", "gpu 1"], "--gres: 'gpu 1' is not NAME[:TYPE][:COUNT]"),
        (["--stop-before", "5"], "--stop-before: must be >= 10 seconds"),
        (["--slurm-arg", "time=1"], "--slurm-arg: 'time=1' is not one sbatch option"),
    ],
)
def test_bad_launch_options_are_named(tmp_path, monkeypatch, capsys, extra, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        run_cli(gamma_sweep.main, ["--launch", "print", *extra])
    assert message in capsys.readouterr().err


def test_slurm_s_time_limit_warning_checkpoints_the_trial_and_requeues_the_task(tmp_path):
    """SIGUSR1 (the job script's --signal=B:USR1@S) to the study command of a Slurm task:
    its trial stops with a checkpoint and is queued, and the task asks Slurm to requeue
    itself. `scontrol` here is a stand-in that records what it was asked."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    asked = tmp_path / "scontrol.args"
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {asked}\n')
    (bin_dir / "scontrol").chmod(0o755)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]),
           "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "41",
           "SLURM_ARRAY_JOB_ID": "40", "SLURM_ARRAY_TASK_ID": "1"}  # fmt: skip
    args = [sys.executable, "-m", "studies.gamma_sweep", *TINY, "--steps", "300",
            "--eval-every", "150", "--sample-every", "25", "--checkpoint-every", "1000",
            "--gammas", "0.5", "--workers", "1", "--study-name", "warned"]  # fmt: skip
    parent = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(tmp_path.glob(SAMPLE_GRIDS)):
        time.sleep(0.05)  # training is under way
    os.kill(parent.pid, signal.SIGUSR1)  # Slurm signals the batch shell alone (B:)
    output = parent.communicate(timeout=60)[0]
    assert parent.returncode == 130, output
    assert "Slurm task 40_1 requeued" in output
    assert asked.read_text().split() == ["requeue", "40_1"]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{tmp_path}/optuna.db"
    stopped, queued = optuna.load_study(study_name="warned", storage=storage).trials
    assert stopped.state == TrialState.FAIL and queued.state == TrialState.WAITING
    assert stopped.user_attrs["worker"].endswith(" slurm 40_1")


def test_a_task_given_one_cpu_of_a_bigger_node_runs_one_worker_of_one_thread(monkeypatch):
    """Workers and threads follow the CPUs the scheduler gave the task (its affinity
    mask), not the node's count."""
    from studies.cli import build_parser, worker_slots

    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {5})
    args = build_parser("x", "", frozenset()).parse_args(["--devices", "cpu"])
    assert [(s.device, s.threads) for s in worker_slots(args)] == [("cpu", 1)]
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    assert [s.threads for s in worker_slots(args)] == [4, 4]
