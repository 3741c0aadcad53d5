"""Handing a study's workers to the cluster's scheduler: a Slurm job array, or a Kubernetes
Indexed Job printed for `kubectl apply`.

The launching command checks every input and creates the study and its MLflow run, as a
local study does; then, instead of starting worker processes itself, it writes a job
whose every task runs the same study command on its node. That command joins the study
(`docs/distributed.md`: every host runs the same command against one PostgreSQL and one
MLflow server), takes trials from the shared queue, and stops its trials with a
checkpoint on SIGTERM. So preemption, `scancel` and a time limit are what a Ctrl-C is to
a local study: the trials are queued again and continue on another task.

Slurm's signals, as the job script asks for them:
- `--requeue`: a preempted task goes back to the queue and joins the study again;
- `--signal=B:USR1@SECONDS`: before the time limit the task's study command gets USR1,
  stops its trials with a checkpoint and requeues its own task (`scontrol requeue`);
- `scancel` sends SIGTERM: the trials stop with a checkpoint and the task is not requeued.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence, Set
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from began.tracking import mask_url
from studies.fleet.connection import setup_lock
from studies.fleet.storage import load_study, prepare_study
from studies.progress import DONE_STATES
from studies.records import open_parent_run
from studies.schema import SLURM_JOB_TAG, SLURM_JOBS_ATTR
from studies.spec import StudySpec
from studies.status import job_tasks, status_lines

LAUNCHES = ("local", "slurm", "print", "k8s-print")
PRINTED = ("print", "k8s-print")  # launches that only print the job
DEFAULT_WARNING_S = 120  # seconds before the time limit that a task is told to stop
FOLLOW_POLL_S = 10.0  # --follow: seconds between looks at the study and the queue
# The options of this module: they say how to launch, so a task's own command drops them.
LAUNCH_VALUE_OPTIONS = frozenset(
    {"--launch", "--tasks", "--gres", "--slurm-arg", "--stop-before", "--launch-dir", "--image",
     "--secret"}
)  # fmt: skip
LAUNCH_FLAGS = frozenset({"--follow"})
GRES_PATTERN = re.compile(r"[a-z][a-z0-9_]*(:[A-Za-z0-9_.-]+)*(:\d+)?")


class LaunchError(ValueError):
    """A launch that cannot work as asked; the message names the option."""


@dataclass(frozen=True)
class Launch:
    how: str  # one of LAUNCHES
    tasks: int = 1  # array tasks (Slurm) or completions (Kubernetes), one study command each
    gres: str | None = None  # Slurm's --gres per task, e.g. gpu:1
    slurm_args: tuple[str, ...] = ()  # more #SBATCH lines, as given: --time=4:00:00, ...
    stop_before_s: int = DEFAULT_WARNING_S  # USR1 this long before the time limit
    follow: bool = False  # the launching command follows the study until the job ends
    folder: Path = Path("launch")  # where job scripts and task logs are kept, per study
    image: str = "began-toolkit:latest"  # Kubernetes: the container image
    secret: str = "began-stores"  # Kubernetes: the Secret with STORAGE_URL and TRACKING_URI

    @property
    def remote(self) -> bool:
        return self.how != "local"


def add_launch_options(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--launch", default="local", choices=LAUNCHES,
                       help="local: workers here; slurm: submit a job array whose tasks join "
                       "the study; print: print that job script; k8s-print: print a "
                       "Kubernetes Indexed Job")  # fmt: skip
    group.add_argument("--tasks", type=int, default=2,
                       help="--launch slurm/print/k8s-print: tasks (hosts) that join the "
                       "study")  # fmt: skip
    group.add_argument("--gres", default=None,
                       help="Slurm generic resources per task, e.g. gpu:1 (Kubernetes: "
                       "gpu:N becomes nvidia.com/gpu: N)")  # fmt: skip
    group.add_argument("--slurm-arg", action="append", default=[], metavar="ARG",
                       help="one more #SBATCH line, e.g. --slurm-arg=--time=4:00:00 "
                       "(repeatable)")  # fmt: skip
    group.add_argument("--stop-before", type=int, default=DEFAULT_WARNING_S, metavar="SECONDS",
                       help="Slurm: seconds before the time limit that a task checkpoints its "
                       "trials and requeues itself")  # fmt: skip
    group.add_argument("--follow", action="store_true",
                       help="--launch slurm: follow the study here until the job ends")  # fmt: skip
    group.add_argument("--launch-dir", default="launch",
                       help="folder for job scripts and task logs (a subfolder per "
                       "study)")  # fmt: skip
    group.add_argument("--image", default=Launch.image, help="k8s-print: the container image")
    group.add_argument("--secret", default=Launch.secret,
                       help="k8s-print: the Secret holding STORAGE_URL and "
                       "TRACKING_URI")  # fmt: skip


def launch_of(args: argparse.Namespace) -> Launch:
    """The launch options, checked (only where they matter: a local study ignores them)."""
    launch = Launch(
        how=args.launch, tasks=args.tasks, gres=args.gres, slurm_args=tuple(args.slurm_arg),
        stop_before_s=args.stop_before, follow=args.follow, folder=Path(args.launch_dir),
        image=args.image, secret=args.secret,
    )  # fmt: skip
    if not launch.remote:
        return launch
    if launch.tasks < 1:
        raise LaunchError(f"--tasks: must be >= 1, got {launch.tasks}")
    if launch.gres is not None and not GRES_PATTERN.fullmatch(launch.gres):
        raise LaunchError(f"--gres: {launch.gres!r} is not NAME[:TYPE][:COUNT], e.g. gpu:1")
    if launch.stop_before_s < 10:
        raise LaunchError(f"--stop-before: must be >= 10 seconds, got {launch.stop_before_s}")
    for arg in launch.slurm_args:
        if not arg.startswith("-") or "\n" in arg:
            raise LaunchError(f"--slurm-arg: {arg!r} is not one sbatch option, e.g. --time=4:00")
    if launch.follow and launch.how != "slurm":
        raise LaunchError("--follow: only with --launch slurm")
    return launch


def check_reachable(storage: str, tracking_uri: str) -> None:
    """Tasks on other hosts must reach the study's stores, and their URLs go into a job
    script (a file, and an artifact of the study's run), so no password may be in them."""
    if storage.startswith("sqlite"):
        raise LaunchError(f"--storage {storage}: a SQLite file is not reachable from "
                          "other hosts; give postgresql://user@host/db "
                          "(docs/distributed.md)")  # fmt: skip
    if not tracking_uri.startswith(("http://", "https://")):
        raise LaunchError(f"--tracking-uri {mask_url(tracking_uri)}: a local MLflow store is "
                          "not reachable from other hosts; give the http:// URL of an mlflow "
                          "server (docs/distributed.md)")  # fmt: skip
    for option, url in (("--storage", storage), ("--tracking-uri", tracking_uri)):
        if urlsplit(url).password is not None:
            raise LaunchError(f"{option} {mask_url(url)}: the password would be written into "
                              "the job script; put it in PGPASSWORD or ~/.pgpass (MLflow: "
                              "MLFLOW_TRACKING_PASSWORD) in the environment instead")  # fmt: skip


def task_argv(argv: Sequence[str], study_name: str) -> list[str]:
    """The study command each task runs: the launching command's own options without the
    launch options, with the study's name made explicit and one line per trial."""
    out = _without(argv, LAUNCH_VALUE_OPTIONS, LAUNCH_FLAGS)
    if not any(t == "--study-name" or t.startswith("--study-name=") for t in out):
        out += ["--study-name", study_name]
    if "--quiet" not in out:
        out.append("--quiet")  # a log file, not a terminal: no progress bar
    return out


def slurm_script(spec: StudySpec, launch: Launch, module: str, argv: Sequence[str]) -> str:
    """The batch script of the job array: each task runs the study command here, by the
    same Python, in the same folder (a cluster's shared file system)."""
    folder = (launch.folder / spec.study_name).resolve()
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name={spec.study_name}",
        f"#SBATCH --array=0-{launch.tasks - 1}",
        "#SBATCH --requeue",
        f"#SBATCH --signal=B:USR1@{launch.stop_before_s}",
        f"#SBATCH --output={folder}/slurm-%A_%a.out",
        "#SBATCH --open-mode=append",  # a requeued task adds to its log
        "#SBATCH --export=ALL",  # PGPASSWORD and the like, from the submitting shell
    ]
    if launch.gres:
        lines.append(f"#SBATCH --gres={launch.gres}")
    lines += [f"#SBATCH {arg}" for arg in launch.slurm_args]
    command = [sys.executable, "-m", module, *task_argv(argv, spec.study_name)]
    lines += [
        f"# Study {spec.study_name}, from python -m {module} --launch slurm: each task",
        "# joins the study and takes trials from its queue until none is left.",
        f"cd {shlex.quote(str(Path.cwd()))}",
        # exec: the study command is the batch shell, so that Slurm's USR1 and TERM reach it.
        "exec " + shlex.join(command),
        "",
    ]
    return "\n".join(lines)


def k8s_manifest(spec: StudySpec, launch: Launch, module: str, argv: Sequence[str]) -> str:
    """An Indexed Job: `tasks` pods, each running the study command; the stores' URLs come
    from a Secret (keys STORAGE_URL and TRACKING_URI), never inline."""
    args = _without(task_argv(argv, spec.study_name), {"--storage", "--tracking-uri"})
    args += ["--storage", "$(STORAGE_URL)", "--tracking-uri", "$(TRACKING_URI)"]
    name = re.sub(r"[^a-z0-9-]", "-", spec.study_name.lower()).strip("-")[:52] or "study"
    gpus = _gpu_count(launch.gres)
    resources = (
        f"          resources:\n            limits:\n              nvidia.com/gpu: {gpus}\n"
        if gpus
        else ""
    )
    command = "\n".join(f"            - {_yaml_string(a)}" for a in ["python", "-m", module, *args])
    return f"""apiVersion: batch/v1
kind: Job
metadata:
  name: {name}
  labels:
    app.kubernetes.io/name: began-study
    began/study: {_yaml_string(spec.study_name)}
spec:
  completionMode: Indexed
  completions: {launch.tasks}
  parallelism: {launch.tasks}
  backoffLimit: {4 * launch.tasks}
  template:
    metadata:
      labels:
        began/study: {_yaml_string(spec.study_name)}
    spec:
      restartPolicy: OnFailure
      # SIGTERM on eviction: the trials stop with a checkpoint within this grace.
      terminationGracePeriodSeconds: {launch.stop_before_s}
      containers:
        - name: worker
          image: {_yaml_string(launch.image)}
          env:
            - name: STORAGE_URL
              valueFrom:
                secretKeyRef:
                  name: {_yaml_string(launch.secret)}
                  key: STORAGE_URL
            - name: TRACKING_URI
              valueFrom:
                secretKeyRef:
                  name: {_yaml_string(launch.secret)}
                  key: TRACKING_URI
          command:
{command}
{resources}"""


def _without(argv: Sequence[str], options: Set[str], flags: Set[str] = frozenset()) -> list[str]:
    """`argv` without `options` (and their values, `--x v` or `--x=v`) and `flags`."""
    out: list[str] = []
    skip = False
    for token in argv:
        if skip:
            skip = False
            continue
        name = token.split("=", 1)[0]
        if name in options:
            skip = "=" not in token
            continue
        if name not in flags:
            out.append(token)
    return out


def _gpu_count(gres: str | None) -> int:
    if not gres or not gres.startswith("gpu"):
        return 0
    last = gres.split(":")[-1]
    return int(last) if last.isdigit() else 1


def _yaml_string(value: str) -> str:
    """A YAML double-quoted scalar (JSON's string syntax is valid YAML)."""
    return json.dumps(value)


def submit_study(spec: StudySpec, launch: Launch, module: str, argv: Sequence[str]) -> int:
    """--launch print / k8s-print: print the job, nothing created. --launch slurm: check
    the script with `sbatch --test-only`, create the study and its MLflow run, submit the
    array, keep the script beside the study's records (and in its run) and, with
    --follow, follow the study until the job has left the queue."""
    check_reachable(spec.storage, spec.tracking_uri)
    if launch.how == "print":
        print(slurm_script(spec, launch, module, argv), end="")
        return 0
    if launch.how == "k8s-print":
        print(k8s_manifest(spec, launch, module, argv), end="")
        return 0
    script_text = slurm_script(spec, launch, module, argv)
    folder = (launch.folder / spec.study_name).resolve()
    with tempfile.TemporaryDirectory() as scratch:  # sbatch checks the script, creates nothing
        trial_script = Path(scratch) / "job.sh"
        trial_script.write_text(script_text)
        _sbatch(["--test-only", str(trial_script)])
    with setup_lock(spec):
        study = prepare_study(spec)
        parent = open_parent_run(spec, study)
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / f"job-{time.strftime('%Y%m%d-%H%M%S')}.sh"
    script.write_text(script_text)
    job = _sbatch(["--parsable", str(script)]).strip().split(";")[0]
    jobs = [*study.user_attrs.get(SLURM_JOBS_ATTR, []), job]
    study.set_user_attr(SLURM_JOBS_ATTR, jobs)
    parent.set_tags({SLURM_JOB_TAG: ",".join(jobs)})
    parent.log_text(script_text, f"launch/slurm-{job}.sh")
    parent.close()
    print(f"study {spec.study_name}: Slurm job {job}, {launch.tasks} task(s); script {script}; "
          f"task logs {folder}/slurm-{job}_N.out", flush=True)  # fmt: skip
    status = f"python -m studies.status --study {spec.study_name} --storage {spec.storage}"
    if not launch.follow:
        print(f"where it stands: {status}")
        return 0
    return follow(spec, job)


def _sbatch(args: list[str]) -> str:
    """Run sbatch; what it printed on stdout (with --parsable, the job id first), or a
    LaunchError with sbatch's own last words. Its warnings on stderr stay out of it."""
    if shutil.which("sbatch") is None:
        raise LaunchError("--launch slurm: sbatch is not on PATH (run on a Slurm login node, "
                          "or --launch print to see the script)")  # fmt: skip
    done = subprocess.run(["sbatch", *args], capture_output=True, text=True)
    if done.returncode != 0:
        words = (done.stderr or done.stdout).strip().splitlines()
        reason = words[-1] if words else f"exit {done.returncode}"
        raise LaunchError(f"--launch slurm: sbatch refused the job script: {reason}")
    return done.stdout


def follow(spec: StudySpec, job: str, poll_s: float = FOLLOW_POLL_S) -> int:
    """Print where the study stands whenever it changes, until no task of `job` is left
    in Slurm's queue; 0 when every trial finished, 1 otherwise."""
    last = ""
    study = load_study(spec)
    while True:
        tasks = job_tasks(job)
        text = "\n".join(status_lines(study, {job: tasks}))
        if text != last:
            print(f"[{time.strftime('%H:%M:%S')}]\n{text}", flush=True)
            last = text
        if not tasks:
            break
        time.sleep(poll_s)
    unfinished = [t for t in study.get_trials(deepcopy=False) if t.state not in DONE_STATES]
    if unfinished:
        print(f"Slurm job {job} left the queue with {len(unfinished)} trial(s) not finished; "
              "the same command again submits tasks to continue them")  # fmt: skip
        return 1
    print(f"study {spec.study_name}: every trial finished")
    return 0
