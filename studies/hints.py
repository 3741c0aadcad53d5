"""The "next:" lines a study prints at its end: commands that work as pasted.

A user who ran `scripts/demo` has the project's tools in `.venv/bin`, which is not on
their PATH: a bare `mlflow ui` would say "command not found" (or start another Python's
mlflow). So each command is spelled with the interpreter's own folder when that folder
is not where the shell would look, relative to the current folder when it is inside it.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from began.tracking import DEFAULT_TRACKING_URI, mask_url
from studies.fleet.connection import SQLITE_PREFIX, absolute_sqlite
from studies.spec import DEFAULT_STORAGE, StudySpec


def tool(name: str) -> str:
    """How to call a tool installed beside this interpreter (mlflow, optuna-dashboard)."""
    folder = Path(sys.executable).parent
    found = shutil.which(name)
    if found is not None and Path(found).parent.resolve() == folder.resolve():
        return name  # the shell finds this one: the venv is active
    return str(_shown(folder / name))


def python() -> str:
    """How to call this interpreter: `python` when it is the one on PATH."""
    found = shutil.which("python")
    if found is not None and Path(found).resolve() == Path(sys.executable).resolve():
        return "python"
    return str(_shown(Path(sys.executable)))


def _shown(path: Path) -> Path:
    """Relative to the current folder when inside it (.venv/bin/mlflow), else absolute."""
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path


def as_typed_here(url: str) -> str:
    """A storage URL as one would type it in this folder, password masked."""
    if url.startswith(SQLITE_PREFIX + "/"):
        path = Path(url[len(SQLITE_PREFIX) :])
        if path.parent == Path.cwd():
            return SQLITE_PREFIX + path.name
    return mask_url(url)


def tracking_hint(spec: StudySpec) -> str:
    """Where to look at the study's runs: `mlflow ui` on its store, or the server's page."""
    where = f" -> experiment {spec.experiment!r} -> Training runs -> {spec.study_name!r}"
    if spec.reseed_of is not None:  # its run is a child of the reseeded study's
        where = where.replace(" -> Training runs ->",
                              f" -> Training runs -> {spec.reseed_of.study!r} ->")  # fmt: skip
    where += " (+ opens one run per trial)"
    if spec.tracking_uri.startswith(("http://", "https://")):
        return f"open {mask_url(spec.tracking_uri)}" + where
    command = f"{tool('mlflow')} ui"
    if spec.tracking_uri != absolute_sqlite(DEFAULT_TRACKING_URI):
        command += f" --backend-store-uri {as_typed_here(spec.tracking_uri)}"
    return f"{command}   # then open http://127.0.0.1:5000" + where


def next_steps(spec: StudySpec, best_run_id: str | None) -> list[str]:
    """The commands to run next, one per line, each working as pasted from this folder."""
    storage = as_typed_here(spec.storage)
    stores = f" --storage {storage}" if storage != DEFAULT_STORAGE else ""
    tracking = ""
    if spec.tracking_uri != absolute_sqlite(DEFAULT_TRACKING_URI):
        tracking = f" --tracking-uri {as_typed_here(spec.tracking_uri)}"
    report = f"{python()} -m analysis.report --study {spec.study_name}{stores}{tracking}"
    lines = [
        tracking_hint(spec),
        f"{tool('optuna-dashboard')} {storage}   # the study live, http://127.0.0.1:8080",
        report + "   # the report: curves, equilibrium, quality, samples",
    ]
    if best_run_id:
        source = (f"--model models:/{spec.register_best}/latest" if spec.register_best
                  else f"--run {best_run_id}")  # fmt: skip
        sample = f"{python()} -m began.sample {source} --out best.png{tracking}"
        lines.append(sample + "   # 64 new faces")
        if spec.reseed_of is None:
            reseed = f"{python()} -m studies.reseed --study {spec.study_name} --seeds 3"
            lines.append(f"{reseed}{stores}{tracking}   # the best setting with 3 new seeds: "
                         "how much was luck")  # fmt: skip
    return lines
