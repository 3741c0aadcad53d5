"""A throwaway single-node Slurm cluster for integration tests.

`slurm_cluster()` starts its own `munged`, `slurmctld` and `slurmd` with every file they
touch (key, sockets, state, spool, logs, pid files) in one temp folder, talking over
loopback ports picked at random, so it neither needs nor disturbs a Slurm or MUNGE that
the machine may run already. Everything is stopped and removed when the context ends,
also when starting fails half-way.

Why root: slurmd starts each job as the user who submitted it, which only root can do,
and MUNGE ties credentials to the uid of the process that asks, so the cluster runs as
root with `SlurmUser=root`. Why no cgroups (proctrack/linuxproc, task/none): they need
systemd or a writable cgroup tree, which containers and CI runners often lack. Why no
accounting (no slurmdbd, no database): a finished job is then only known to slurmctld,
which keeps it for `MinJobAge` seconds, and `job_states()` reads it from there.

Debian packages: `slurmctld slurmd slurm-client munge`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from tests.servers import free_port

NODE = "began-node"
PARTITION = "debug"

# Daemons live in sbin, which a non-login PATH (CI runners, sudo) may lack.
_SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")
_DAEMONS = ("munged", "slurmctld", "slurmd")
_COMMANDS = ("sbatch", "squeue", "scancel", "scontrol", "sinfo")

# Job states after which a job (or array task) will not run again by itself.
TERMINAL_STATES = frozenset({"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED",
                             "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "TIMEOUT"})  # fmt: skip

# AuthInfo's cred_expire is also how long a requeued job waits before it may start again
# (measured: cred_expire + 1 s); the default, 120 s, would make each requeue test wait two
# minutes. It is also the lifetime of a job launch credential, so not much less than this.
CRED_EXPIRE_S = 10


class SlurmCommandError(subprocess.CalledProcessError):
    """A Slurm command that failed, with what it said (CalledProcessError hides stderr)."""

    def __str__(self) -> str:
        return f"{super().__str__()}\n{self.stderr}"


def _which(program: str) -> str | None:
    return shutil.which(program, path=os.pathsep.join([os.environ.get("PATH", ""), *_SBIN]))


def slurm_available() -> str | None:
    """None when `slurm_cluster()` can run here, else why not (for `pytest.skip`)."""
    if not os.path.isdir("/proc"):
        return "no /proc (not Linux)"
    for program in (*_DAEMONS, *_COMMANDS):
        if not _which(program):
            return f"{program} not installed"
    if os.geteuid() != 0:
        return "not root (slurmd must run as root to start jobs)"
    return None


def _memory_mb() -> int:
    """MemTotal in MiB, as slurmd reads it."""
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    raise RuntimeError("no MemTotal in /proc/meminfo")


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"--- {path.name}: (none)"
    return "\n".join([f"--- {path.name}:", *text[-lines:]])


def processes_of(folder: Path) -> list[int]:
    """Live processes that belong to the cluster in `folder`: those whose command line or
    environment names it. That covers the daemons, slurmd's job steps (slurmstepd, which
    detaches from slurmd) and the jobs' processes (SLURM_CONF is passed on to them)."""
    needle = str(folder).encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            stat = (entry / "stat").read_text()
            found = (
                needle in (entry / "cmdline").read_bytes()
                or needle in (entry / "environ").read_bytes()
            )
        except OSError:  # gone meanwhile, or a kernel thread
            continue
        if found and stat.rsplit(")", 1)[-1].split()[0] != "Z":
            pids.append(int(entry.name))
    return pids


def _expand_task_ids(spec: str) -> list[str]:
    """scontrol's ArrayTaskId ("3", "0-4", "1,3-5%2") as task ids."""
    ids: list[str] = []
    for part in spec.split("%")[0].split(","):
        if "-" in part:
            low, high = part.split("-")[:2]
            step = int(part.split(":")[1]) if ":" in part else 1
            ids += [str(i) for i in range(int(low), int(high.split(":")[0]) + 1, step)]
        elif part:
            ids.append(part)
    return ids


@dataclasses.dataclass
class SlurmCluster:
    """A running cluster. Pass `env` to every Slurm command (it sets SLURM_CONF)."""

    folder: Path
    conf: Path
    env: dict[str, str]
    node: str = NODE
    partition: str = PARTITION
    cpus: int = 1
    memory_mb: int = 0
    pids: dict[str, int] = dataclasses.field(default_factory=dict)

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run a Slurm command (`run("sbatch", ...)`) against this cluster; its output.

        With `check`, a failure raises SlurmCommandError (a CalledProcessError)."""
        program = _which(args[0]) or args[0]
        command = [program, *args[1:]]
        done = subprocess.run(command, env=self.env, text=True, capture_output=True, timeout=60)
        if check and done.returncode:
            raise SlurmCommandError(done.returncode, command, done.stdout, done.stderr)
        return done

    def submit(self, *args: str) -> int:
        """`sbatch --parsable ARGS`; the job id (for an array, the array's job id)."""
        return int(self.run("sbatch", "--parsable", *args).stdout.strip().split(";")[0])

    def job_states(self, job_id: int | str) -> dict[str, str]:
        """{array task id: state} for a job ({"": state} when it is not an array).

        A job that finished is still listed for `MinJobAge` seconds; after that, or for an
        unknown id, the answer is {}.
        """
        states: dict[str, str] = {}
        # -r lists each pending array task on a line of its own; --states=all keeps
        # finished ones, which (without accounting) only slurmctld still knows.
        listed = self.run(
            "squeue", "-h", "-r", "--states=all", "-j", str(job_id), "-o", "%K|%T", check=False
        )
        if listed.returncode == 0:
            for line in listed.stdout.splitlines():
                task, _, state = line.strip().partition("|")
                if state:
                    states["" if task == "N/A" else task] = state
        shown = self.run("scontrol", "-o", "show", "job", str(job_id), check=False)
        if shown.returncode == 0:
            for line in shown.stdout.splitlines():
                fields = dict(re.findall(r"(\w+)=(\S*)", line))
                state = fields.get("JobState", "")
                tasks = _expand_task_ids(fields["ArrayTaskId"]) if "ArrayTaskId" in fields else [""]
                for task in tasks:
                    states.setdefault(task, state)
        return states

    def wait_until_done(self, job_id: int | str, timeout: float = 60) -> dict[str, str]:
        """Wait until every task of the job is in a terminal state; its `job_states()`."""
        deadline = time.monotonic() + timeout
        while True:
            states = self.job_states(job_id)
            if states and set(states.values()) <= TERMINAL_STATES:
                return states
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} not done after {timeout} s: {states}")
            time.sleep(0.5)

    def logs(self) -> str:
        """The tails of the daemons' logs, for error messages."""
        names = ["munged.out", "slurmctld.out", "slurmctld.log", "slurmd.out", "slurmd.log"]
        return "\n".join(_tail(self.folder / name) for name in names)


def _slurm_conf(folder: Path, cpus: int, memory_mb: int, kill_wait_s: int) -> str:
    # SlurmctldHost must name this machine, or slurmctld exits ("This host not a valid
    # controller"); the address in brackets keeps the traffic on loopback whatever the
    # name resolves to.
    host = socket.gethostname()
    settings = {
        "ClusterName": "began-test",
        "SlurmctldHost": f"{host}(127.0.0.1)",
        "SlurmctldPort": free_port(),
        "SlurmdPort": free_port(),
        "SlurmUser": "root",
        "SlurmdUser": "root",
        "AuthType": "auth/munge",
        "CredType": "cred/munge",
        "AuthInfo": f"socket={folder / 'munge.socket'},cred_expire={CRED_EXPIRE_S}",
        "StateSaveLocation": folder / "state",
        "SlurmdSpoolDir": folder / "spool",
        "SlurmctldPidFile": folder / "slurmctld.pid",
        "SlurmdPidFile": folder / "slurmd.pid",
        "SlurmctldLogFile": folder / "slurmctld.log",
        "SlurmdLogFile": folder / "slurmd.log",
        "SlurmctldDebug": "info",
        "SlurmdDebug": "info",
        # No cgroups (see the module doc): linuxproc tracks a job's processes by parentage.
        "ProctrackType": "proctrack/linuxproc",
        "TaskPlugin": "task/none",
        "JobAcctGatherType": "jobacct_gather/none",
        "AccountingStorageType": "accounting_storage/none",
        "JobCompType": "jobcomp/none",
        "MpiDefault": "none",
        "SwitchType": "switch/none",
        "SchedulerType": "sched/backfill",
        # Without these, a job whose start depends on time (a requeued one) waits for the
        # next backfill pass (every 30 s) or main pass (60 s): a requeue then took 27 s.
        "SchedulerParameters": "bf_interval=1,sched_interval=2",
        "SelectType": "select/cons_tres",
        # Logical CPUs, not cores, are the unit: on a machine with two threads a core,
        # CR_Core gives each 1-CPU job a whole core and halves how many run at once.
        "SelectTypeParameters": "CR_CPU_Memory",
        # A node configured with more CPUs or memory than slurmd finds is kept, not drained
        # (INVAL) with jobs that never start: `cpus` may exceed the machine's.
        "SlurmdParameters": "config_overrides",
        "ReturnToService": 2,
        "JobRequeue": 1,
        "KillWait": kill_wait_s,  # seconds from SIGTERM to SIGKILL when a job is cancelled
        "MinJobAge": 300,  # how long finished jobs stay visible (there is no accounting)
        "MaxArraySize": 1001,
        "InactiveLimit": 0,
        "MailProg": "/bin/true",  # test machines have no mail; --mail-type stays harmless
    }
    lines = [f"{key}={value}" for key, value in settings.items()]
    lines.append(
        f"NodeName={NODE} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN"
    )
    # DefMemPerCPU: a job that gives no --mem gets its share of the node, not all of it.
    lines.append(
        f"PartitionName={PARTITION} Nodes={NODE} Default=YES MaxTime=INFINITE "
        f"DefMemPerCPU={max(memory_mb // cpus, 1)} State=UP"
    )
    return "\n".join(["# Written by tests/slurm_cluster.py for one test run.", *lines, ""])


def _start(name: str, command: list[str], folder: Path, env: dict[str, str]) -> subprocess.Popen:
    out = open(folder / f"{name}.out", "wb")  # noqa: SIM115
    try:
        # A session of its own: a Ctrl-C in the terminal reaches pytest, not the daemons,
        # which the context stops in order (jobs first, munged last).
        return subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=folder,
            start_new_session=True,
        )
    finally:
        out.close()


def _stop(process: subprocess.Popen, timeout: float = 15) -> None:
    """SIGTERM to the daemon's process group, then SIGKILL if it lingers."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=timeout)
            return
        except subprocess.TimeoutExpired:
            continue


def _kill_leftovers(folder: Path) -> None:
    """SIGKILL what is left of the cluster once the daemons are stopped: job steps of jobs
    that did not end when cancelled, and job processes that linuxproc lost track of
    (orphans reparented to init)."""
    for pid in processes_of(folder):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _wait_for(
    ready: Callable[[], bool],
    what: str,
    cluster: SlurmCluster,
    processes: dict[str, subprocess.Popen],
    timeout: float,
) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        dead = [
            f"{name} exited with {p.returncode}"
            for name, p in processes.items()
            if p.poll() is not None
        ]
        if dead or time.monotonic() > deadline:
            why = ", ".join(dead) or f"timed out after {timeout} s"
            raise RuntimeError(f"Slurm test cluster: {what} ({why})\n{cluster.logs()}")
        time.sleep(0.3)


def _cancel_all(cluster: SlurmCluster, processes: dict[str, subprocess.Popen]) -> None:
    """Cancel every job and wait (20 s at most) until slurmctld has none left."""
    if any(processes[name].poll() is not None for name in ("slurmctld", "munged")):
        return
    queued = cluster.run("squeue", "-h", "-o", "%F", check=False)
    job_ids = sorted(set(queued.stdout.split())) if queued.returncode == 0 else []
    if job_ids:
        cluster.run("scancel", *job_ids, check=False)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        # Jobs still COMPLETING have processes that slurmd must see end.
        queued = cluster.run("squeue", "-h", "-o", "%i", check=False)
        if queued.returncode != 0 or not queued.stdout.strip():
            return
        time.sleep(0.5)


@contextlib.contextmanager
def slurm_cluster(
    cpus: int | None = None, timeout_s: float = 60, kill_wait_s: int = 2
) -> Iterator[SlurmCluster]:
    """A fresh one-node cluster (partition `debug`), ready to run jobs; see the module doc.

    `cpus` defaults to the machine's CPU count; more is allowed (jobs then share CPUs).
    `kill_wait_s`: Slurm's KillWait, from a cancel's SIGTERM to its SIGKILL (Slurm's own
    default is 30; 2 keeps the clean-up of a job that ignores SIGTERM short).
    `timeout_s` bounds each wait for a daemon to be ready. On leaving, every job is
    cancelled, the daemons are stopped and the folder is removed.
    """
    reason = slurm_available()
    if reason:
        raise RuntimeError(f"cannot start a Slurm test cluster: {reason}")
    cpus = cpus or os.cpu_count() or 1
    # Some room for the OS, as on a real node: jobs that asked for all of RealMemory then
    # still fit in the machine.
    memory_mb = int(_memory_mb() * 0.9)
    with contextlib.ExitStack() as cleanup:
        folder = Path(tempfile.mkdtemp(prefix="began-slurm-"))
        # munged refuses a socket folder that others can write or cannot enter (clients of
        # every user connect to it); mkdtemp's 0700 is the second.
        folder.chmod(0o755)
        cleanup.callback(shutil.rmtree, folder, ignore_errors=True)
        cleanup.callback(_kill_leftovers, folder)  # runs before the removal, after the stops
        for sub in ("state", "spool"):
            (folder / sub).mkdir(mode=0o700)
        conf = folder / "slurm.conf"
        conf.write_text(_slurm_conf(folder, cpus, memory_mb, kill_wait_s))
        env = {**os.environ, "SLURM_CONF": str(conf)}
        # Slurm variables inherited from an outer job would steer sbatch and squeue there.
        for key in [k for k in env if k.startswith(("SLURM_", "SBATCH_", "SQUEUE_"))]:
            if key != "SLURM_CONF":
                del env[key]
        cluster = SlurmCluster(folder, conf, env, cpus=cpus, memory_mb=memory_mb)
        processes: dict[str, subprocess.Popen] = {}

        key = folder / "munge.key"
        if _which("mungekey"):
            subprocess.run(
                [_which("mungekey"), "--create", f"--keyfile={key}"],
                check=True,
                capture_output=True,
            )
        else:
            key.write_bytes(os.urandom(1024))
        key.chmod(0o400)  # munged refuses a key that others may read
        socket_path = folder / "munge.socket"
        # In the foreground munged logs to stderr (munged.out); --log-file and the other
        # paths keep it off /var/log, /run and /var/lib, which the system's munged may use.
        munged = [
            _which("munged"),
            "--foreground",
            f"--key-file={key}",
            f"--socket={socket_path}",
            f"--pid-file={folder / 'munged.pid'}",
            f"--log-file={folder / 'munged.log'}",
            f"--seed-file={folder / 'munged.seed'}",
        ]
        processes["munged"] = _start("munged", munged, folder, env)
        cleanup.callback(_stop, processes["munged"])
        _wait_for(
            socket_path.exists, "munged did not open its socket", cluster, processes, timeout_s
        )

        slurmctld = [_which("slurmctld"), "-D", "-f", str(conf)]
        processes["slurmctld"] = _start("slurmctld", slurmctld, folder, env)
        cleanup.callback(_stop, processes["slurmctld"])
        slurmd = [_which("slurmd"), "-D", "-f", str(conf), "-N", NODE]
        processes["slurmd"] = _start("slurmd", slurmd, folder, env)
        # Stopped after the jobs are cancelled (the callback below runs first), so that the
        # job steps it started end and are reaped while it still runs.
        cleanup.callback(_stop, processes["slurmd"])
        cleanup.callback(_cancel_all, cluster, processes)
        cluster.pids = {name: p.pid for name, p in processes.items()}

        def node_idle() -> bool:
            shown = cluster.run("sinfo", "-h", "-N", "-n", NODE, "-o", "%T", check=False)
            return shown.returncode == 0 and shown.stdout.strip() == "idle"

        _wait_for(node_idle, f"node {NODE} did not become idle", cluster, processes, timeout_s)
        yield cluster
