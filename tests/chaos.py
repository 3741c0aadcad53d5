"""A seeded chaos driver for a study: start a real sweep, SIGKILL something at a random
moment (the whole process group, one worker, or only the parent), start it again, and
so on; then run it to the end and collect what the checks need.

At each kill the whole group is first stopped (SIGSTOP), so that the record of which run
each process was training is read at one frozen instant: the runs that kill hits are
then known exactly (a run is hit when the process that last started it dies). The
victims get SIGKILL, the rest SIGCONT. A killed parent's workers stop on their own a
moment later: the runs they leave unfinished are the ones hit. A hang is a failure:
every start of the sweep must end within `EPISODE_S`.

Kill moments are drawn against the sweep's observed progress, not the clock: most kills
wait for a random number of checkpoint writes of the current start (so they land in
training, whatever the machine's speed), the rest land at a random moment of a
restart's start-up. A sweep of a few hundred steps per trial then gets all its kills.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy

from began.training.provenance import PROCESS_TAG

TINY_SWEEP = [
    "--image-size", "16", "--filters", "4", "--hidden", "8", "--repeat", "1",
    "--batch-size", "4", "--holdout", "8", "--num-grid", "8", "--log-every", "2",
    "--metrics", "diversity_16", "--quiet", "--steps", "300", "--eval-every", "150",
    "--sample-every", "300", "--checkpoint-every", "20", "--gammas", "0.3,0.5,0.7",
    "--seeds", "2", "--workers", "2", "--heartbeat", "1",
]  # fmt: skip
EPISODE_S = 300  # a start of the sweep, killed or not, ends within this: else it hangs
CHECKPOINTS = "mlruns/*/*/artifacts/checkpoints/last.pt"
MOST_WRITES = 8  # a kill in training waits for 1..8 checkpoint writes (20 steps each)
IN_START_UP = 0.2  # the share of kills at a random moment of a restart's start-up instead
START_UP_S = 6.0  # (imports, data, stores: a few seconds); the first start is spared, as a
# kill mid-migration is MLflow's and Optuna's own schema problem, not the study's
KINDS = ("group", "worker", "parent")


@dataclass
class Chaos:
    folder: Path
    storage: str
    tracking_uri: str
    name: str = "chaos"
    pack: int = 1  # trials each worker trains at once
    sweep: list[str] = field(default_factory=lambda: list(TINY_SWEEP))
    env: dict[str, str] = field(default_factory=dict)  # added to the sweep's environment
    hits: Counter = field(default_factory=Counter)  # run id -> kills that hit it
    kills: list[str] = field(default_factory=list)  # the kind of each kill done
    pgids: list[int] = field(default_factory=list)

    def command(self) -> list[str]:
        return [sys.executable, "-m", "studies.gamma_sweep", *self.sweep,
                "--study-name", self.name, "--storage", self.storage,
                "--tracking-uri", self.tracking_uri, "--pack", str(self.pack)]  # fmt: skip

    def start(self) -> subprocess.Popen:
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), **self.env}
        log = open(self.folder / "sweep.log", "a")  # noqa: SIM115 (the child writes it)
        process = subprocess.Popen(self.command(), cwd=self.folder, env=env, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        log.close()
        self.pgids.append(process.pid)
        return process

    def next_kill(self, process: subprocess.Popen, rng: random.Random) -> bool:
        """Wait a random while, then kill something of the running sweep; False when the
        sweep ended first."""
        kind = rng.choice(KINDS)
        if self.kills and rng.random() < IN_START_UP:
            deadline = time.monotonic() + rng.uniform(0.5, START_UP_S)
            while time.monotonic() < deadline and group_pids(process.pid):
                time.sleep(0.05)
        else:
            self.wait_for_writes(process, rng.randint(1, MOST_WRITES))
        if not group_pids(process.pid):
            process.wait()
            return False
        stopped, hit = self.kill(process, kind, rng)
        if kind != "worker":  # the parent goes on with its other worker after a worker kill
            wait_for_group(process, EPISODE_S)
        if kind == "parent":
            # The workers stop on their own once they see their parent gone, and may first
            # finish a run or start one: what they left unfinished is what was hit.
            hit = {(run_id, pid) for run_id, (status, pid) in self.runs_by_process().items()
                   if pid in stopped and status != "FINISHED"}  # fmt: skip
        for run_id, _ in hit:
            self.hits[run_id] += 1
        return True

    def wait_for_writes(self, process: subprocess.Popen, writes: int) -> None:
        """Until this start of the sweep has written `writes` checkpoints (or has ended)."""
        seen = self.checkpoint_times()
        written = 0
        while written < writes and group_pids(process.pid):
            time.sleep(0.02)  # a worker writes one every 20 steps: a few tenths of a second
            now = self.checkpoint_times()
            written += sum(1 for path, mtime in now.items() if seen.get(path) != mtime)
            seen = now

    def checkpoint_times(self) -> dict[Path, int]:
        times = {}
        for path in self.folder.glob(CHECKPOINTS):
            with contextlib.suppress(OSError):  # replaced while we look
                times[path] = path.stat().st_mtime_ns
        return times

    def kill(
        self, process: subprocess.Popen, kind: str, rng: random.Random
    ) -> tuple[set[int], set[tuple[str, int]]]:
        """Freeze the group, see who trains what, kill; (pids stopped, runs hit by them)."""
        pids = group_pids(process.pid)
        workers = [pid for pid in pids if pid != process.pid and is_worker(pid)]
        if kind == "worker" and not workers:
            kind = "group"
        for pid in pids:
            signal_quietly(pid, signal.SIGSTOP)
        try:
            trained_by = self.runs_by_process()  # one frozen instant
        finally:
            if kind == "group":
                victims, stopped = pids, pids
            elif kind == "parent":
                victims, stopped = [process.pid], workers  # they stop on their own
            else:
                victims = [rng.choice(workers)]
                stopped = victims
            for pid in victims:
                signal_quietly(pid, signal.SIGKILL)
            for pid in pids:
                signal_quietly(pid, signal.SIGCONT)
        self.kills.append(kind)
        hit = {(run_id, pid) for run_id, (status, pid) in trained_by.items()
               if status == "RUNNING" and pid in stopped}  # fmt: skip
        return set(stopped), hit

    def runs_by_process(self) -> dict[str, tuple[str, int | None]]:
        """run id -> (status, pid of the process that last started it), from the store."""
        engine = sqlalchemy.create_engine(self.tracking_uri, **_quick(self.tracking_uri))
        query = sqlalchemy.text(
            "SELECT r.run_uuid, r.status, t.value FROM runs r LEFT JOIN tags t "
            "ON t.run_uuid = r.run_uuid AND t.key = :key"
        )
        for attempt in range(20):  # a frozen writer may hold SQLite's lock: let it finish
            try:
                with engine.connect() as connection:
                    rows = connection.execute(query, {"key": PROCESS_TAG}).all()
                break
            except sqlalchemy.exc.OperationalError as error:
                if "no such table" in str(error):  # killed before MLflow made its tables:
                    return {}  # no run exists yet, so none is hit
                if attempt == 19:
                    raise
                for pid in group_pids(self.pgids[-1]):
                    signal_quietly(pid, signal.SIGCONT)
                time.sleep(0.01)
                for pid in group_pids(self.pgids[-1]):
                    signal_quietly(pid, signal.SIGSTOP)
            finally:
                engine.dispose()
        return {run: (status, int(tag.rsplit(":", 1)[1]) if tag else None)
                for run, status, tag in rows}  # fmt: skip

    def run_to_the_end(self) -> subprocess.CompletedProcess:
        process = self.start()
        wait_for_group(process, EPISODE_S)
        return subprocess.CompletedProcess(process.args, process.returncode)


def _quick(url: str) -> dict:
    return {"connect_args": {"timeout": 0.5}} if url.startswith("sqlite") else {}


def signal_quietly(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def group_pids(pgid: int) -> list[int]:
    """The live (not zombie) processes of a process group."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None and fields[0] != "Z" and int(fields[2]) == pgid:
                found.append(int(entry.name))
    return found


def is_worker(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    return "spawn_main" in cmdline and "resource_tracker" not in cmdline


def wait_for_group(process: subprocess.Popen, seconds: float) -> None:
    """Until the parent and every process of its group are gone; TimeoutError if not."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        process.poll()
        if process.returncode is not None and not group_pids(process.pid):
            return
        time.sleep(0.1)
    raise TimeoutError(f"the sweep (process group {process.pid}) still runs after {seconds} s")


def chaos(
    folder: Path, storage: str, tracking_uri: str, seed: int, kills: int, pack: int = 1
) -> Chaos:
    """`kills` kills at seeded random moments, the sweep started again after each one that
    stopped it, then run to the end."""
    run = Chaos(folder, storage, tracking_uri, pack=pack)
    rng = random.Random(seed)
    process = run.start()
    while len(run.kills) < kills:
        if not group_pids(process.pid):
            process.wait()
            if process.returncode == 0:
                break  # the study is complete: nothing is left to kill
            process = run.start()
        if not run.next_kill(process, rng) and process.returncode == 0:
            break
    wait_for_group(process, EPISODE_S)
    final = run.run_to_the_end()
    assert final.returncode == 0, (folder / "sweep.log").read_text()[-4000:]
    return run
