"""Throwaway servers for integration tests: a PostgreSQL cluster and an `mlflow server`.

Both listen on loopback ports only and are stopped by the context managers. PostgreSQL
refuses to run as root, so as root the cluster is run as the `postgres` system user.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

PG_USER = "began"
PG_PASSWORD = "s3cret-pw"  # the tests check it never shows in clear


def postgres_available() -> bool:
    if not shutil.which("initdb") or not shutil.which("pg_ctl"):
        return False
    if os.geteuid() != 0:
        return True
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return False
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_server_user(command: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *command]
    return command


def _owned_by_server_user(path: Path) -> None:
    if os.geteuid() == 0:
        entry = pwd.getpwnam("postgres")
        os.chown(path, entry.pw_uid, entry.pw_gid)


@contextlib.contextmanager
def postgres_cluster(databases: tuple[str, ...] = ("optuna", "mlflow")) -> Iterator[dict]:
    """A fresh cluster on a free loopback port; yields {"port", "url": {db: URL}, "folder"}."""
    folder = Path(tempfile.mkdtemp(prefix="began-pg-"))
    _owned_by_server_user(folder)
    data, password_file = folder / "data", folder / "password"
    password_file.write_text(PG_PASSWORD)
    _owned_by_server_user(password_file)
    port = free_port()
    run = lambda command: subprocess.run(  # noqa: E731
        _as_server_user(command), check=True, capture_output=True, text=True, cwd=folder
    )
    run(["initdb", "-D", str(data), "-U", PG_USER, f"--pwfile={password_file}",
         "-A", "scram-sha-256"])  # fmt: skip
    options = f"-p {port} -h 127.0.0.1 -k {folder} -c max_connections=200"
    run(["pg_ctl", "-D", str(data), "-o", options, "-l", str(folder / "log"), "-w", "start"])
    env_password = {"PGPASSWORD": PG_PASSWORD}
    try:
        for name in databases:
            subprocess.run(
                _as_server_user(["createdb", "-h", "127.0.0.1", "-p", str(port), "-U", PG_USER,
                                 name]),
                check=True, capture_output=True, env={**os.environ, **env_password}, cwd=folder,
            )  # fmt: skip
        urls = {
            name: f"postgresql://{PG_USER}:{PG_PASSWORD}@127.0.0.1:{port}/{name}"
            for name in databases
        }
        yield {"port": port, "url": urls, "folder": folder, "data": data, "options": options}
    finally:
        subprocess.run(
            _as_server_user(["pg_ctl", "-D", str(data), "-m", "immediate", "stop"]),
            capture_output=True, cwd=folder,
        )  # fmt: skip
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def mlflow_server(
    backend_url: str, artifacts: Path, timeout_s: float = 90, port: int | None = None
) -> Iterator[str]:
    """`mlflow server` over `backend_url`, serving artifacts from `artifacts`; yields its URL."""
    port = port or free_port()
    command = [
        sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_url,
        "--artifacts-destination", str(artifacts), "--host", "127.0.0.1", "--port", str(port),
        "--workers", "2",
    ]  # fmt: skip
    log = open(artifacts.parent / f"mlflow-server-{port}.log", "w")  # noqa: SIM115
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not start; see {log.name}")
            time.sleep(0.5)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, 15)
        server.wait(timeout=30)
        log.close()


def restart_postgres(cluster: dict, down_s: float = 0.0) -> None:
    """Stop the cluster (dropping every connection), wait `down_s`, start it again."""
    data, folder = str(cluster["data"]), cluster["folder"]
    stop = ["pg_ctl", "-D", data, "-m", "fast", "-w", "stop"]
    subprocess.run(_as_server_user(stop), check=True, capture_output=True, cwd=folder)
    time.sleep(down_s)
    start = ["pg_ctl", "-D", data, "-o", cluster["options"], "-l", str(folder / "log"), "-w",
             "start"]  # fmt: skip
    subprocess.run(_as_server_user(start), check=True, capture_output=True, cwd=folder)
