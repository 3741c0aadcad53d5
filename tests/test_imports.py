"""Every module imports on its own, first in a fresh interpreter (no import-order dependency),
without touching the disk (no import-time I/O); the layers import downwards only.

The layer rules read each module's imports with `ast` (module-level and function-level
imports alike; a docstring that says "from studies" is no import), from the files, so they
hold whatever else is broken.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("began", "studies", "analysis", "bench")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


FILES = {module_name(path): path for package in PACKAGES for path in (ROOT / package).rglob("*.py")}
MODULES = sorted(FILES)
PROJECT = [name for name in MODULES if not name.startswith("bench")]  # what the layers cover


def imports_of_source(source: str, name: str, is_package: bool = False) -> set[str]:
    """The modules that the source of module `name` imports anywhere in its code.

    `import a.b as m` gives "a.b"; `from a.b import c` gives "a.b" and "a.b.c" (c may be a
    module: `from studies import fleet` imports studies.fleet); relative imports are
    resolved against `name`'s package.
    """
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = name.split(".")
                package = package if is_package else package[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join(package + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    return found


def imports_of(name: str) -> set[str]:
    path = FILES[name]
    return imports_of_source(path.read_text(), name, path.name == "__init__.py")


def within(module: str, *prefixes: str) -> bool:
    return any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes)


def importers_of(*targets: str, among: list[str] = PROJECT) -> set[str]:
    return {name for name in among if any(within(m, *targets) for m in imports_of(name))}


def test_the_packages_have_modules():
    assert {"began.train", "began.core.models", "began.metrics", "began.data"} <= set(MODULES)
    assert {"studies.fleet", "studies.objectives", "analysis.store", "bench.gpu_check"} <= set(
        MODULES
    )


def test_the_import_reader_reads_imports_not_text():
    source = textwrap.dedent(
        '''
        """Trains what studies.fleet hands it: from studies import fleet, import analysis."""
        import began.training.loop as m
        from began.core import models, step
        # from analysis import report
        text = "import studies.fleet"

        def later():
            from mlflow.entities import Metric
            import optuna
        '''
    )
    assert imports_of_source(source, "studies.trial") == {
        "began.training.loop",
        "began.core",
        "began.core.models",
        "began.core.step",
        "mlflow.entities",
        "mlflow.entities.Metric",
        "optuna",
    }
    assert imports_of_source("from . import queue", "studies.fleet.worker") == {
        "studies.fleet",
        "studies.fleet.queue",
    }
    assert imports_of_source("from ..tracking import x", "began.training", is_package=True) == {
        "began.tracking",
        "began.tracking.x",
    }
    assert within("began.training.loop", "began.training")
    assert not within("began.trainings", "began.training")


# --- Each module first in a fresh interpreter -----------------------------------------
#
# One Python process imports the third-party modules the project imports (by the names it
# imports them by: torch alone takes seconds, scipy.linalg a few tenths), then forks one
# child per project module, two at a time; no project module is loaded before the child
# imports its own. A module that works only after another of the project's was imported
# fails here; so does one that writes a file into the current folder or the home folder
# (both empty temporary folders), or prints. (What the preload cannot catch: a module that
# reaches a third-party submodule it never imports, at import time, that another imports.)

WORKERS = 2  # children at a time: the suite's machine has two cores

FORKED_IMPORTS = textwrap.dedent(
    """
    import importlib, json, os, sys, threading, traceback
    preload, modules, project, out, workers = json.loads(sys.stdin.read())
    for module in preload:
        try:
            importlib.import_module(module)
        except ImportError:
            pass  # a name, not a module, or an optional dependency: whoever imports it says
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in project)
    assert not loaded, f"a third-party import loaded project modules: {loaded}"
    assert threading.active_count() == 1, "a third-party import started a thread: no fork"
    sys.stdout.flush(), sys.stderr.flush()
    running, failed = {}, {}
    def reap():
        pid, status = os.wait()
        name = running.pop(pid)
        with open(os.path.join(out, name + ".out")) as stdout:
            printed = stdout.read().strip()
        with open(os.path.join(out, name + ".err")) as stderr:
            lines = stderr.read().strip().splitlines() or ["(nothing on stderr)"]
        if os.waitstatus_to_exitcode(status) != 0:
            failed[name] = lines[-1]
        elif printed:
            failed[name] = "prints at import: " + printed.splitlines()[0]
    for name in modules:
        while len(running) >= workers:
            reap()
        pid = os.fork()
        if pid == 0:
            for fd, suffix in ((1, ".out"), (2, ".err")):
                path = os.path.join(out, name + suffix)
                os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT, 0o644), fd)
            try:
                importlib.import_module(name)
                sys.stdout.flush(), sys.stderr.flush()
            except BaseException:
                traceback.print_exc()
                sys.stderr.flush()
                os._exit(1)
            os._exit(0)
        running[pid] = name
    while running:
        reap()
    print(json.dumps(failed))
    """
)


def third_party_modules() -> list[str]:
    """What the project imports that is neither the standard library's nor the project's
    own ("a.b.c" of `from a.b import c` too, which may be no module: the preload skips it)."""
    found = {module for name in MODULES for module in imports_of(name)}
    own = set(sys.stdlib_module_names) | set(PACKAGES) | {"__future__", ""}
    return sorted(module for module in found if module.split(".")[0] not in own)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="forks one child per module")
def test_every_module_imports_first_in_a_fresh_interpreter_and_writes_nothing(tmp_path):
    cwd, home, out = tmp_path / "cwd", tmp_path / "home", tmp_path / "out"
    for folder in (cwd, home, out):
        folder.mkdir()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("XDG_", "BEGAN_", "MLFLOW_", "TORCH_", "MPL", "PYTHON"))
    }
    # Matplotlib writes its own config folder and font cache when imported (analysis draws
    # figures): its business, kept apart from the folders checked.
    env.update(HOME=str(home), PYTHONPATH=str(ROOT), MPLCONFIGDIR=str(tmp_path / "matplotlib"))
    job = [third_party_modules(), MODULES, list(PACKAGES), str(out), WORKERS]
    result = subprocess.run(
        [sys.executable, "-c", FORKED_IMPORTS],
        input=json.dumps(job),
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    failed = json.loads(result.stdout.strip().splitlines()[-1])
    problems = [f"{name}: {line}" for name, line in sorted(failed.items())]
    written = sorted(
        str(path.relative_to(tmp_path)) for path in (*cwd.rglob("*"), *home.rglob("*"))
    )
    if written:
        problems.append(f"importing the modules wrote {written}")
    assert not problems, "\n".join(problems)


# --- The layers -------------------------------------------------------------------------


def test_model_code_does_no_io_and_knows_no_tracking():
    source = FILES["began.core.models"].read_text()
    for forbidden in ("print(", "open(", "mlflow", "optuna", "logging"):
        assert forbidden not in source, forbidden


def test_the_core_imports_nothing_of_the_project_but_itself():
    core = [name for name in PROJECT if within(name, "began.core")]
    assert "began.core.step" in core
    offenders = {
        name: sorted(
            m for m in imports_of(name) if within(m, *PACKAGES) and not within(m, "began.core")
        )
        for name in core
    }
    assert not {name: found for name, found in offenders.items() if found}


def test_tracking_never_imports_training():
    tracking = [name for name in PROJECT if within(name, "began.tracking")]
    assert "began.tracking.mlflow_tracker" in tracking
    assert not importers_of("began.training", among=tracking)


def test_began_never_imports_studies_analysis_or_bench():
    assert not importers_of("studies", "analysis", "bench", among=[
        name for name in PROJECT if within(name, "began")
    ])  # fmt: skip


def test_studies_never_import_analysis_or_bench():
    assert not importers_of("analysis", "bench", among=[
        name for name in PROJECT if within(name, "studies")
    ])  # fmt: skip


# What runs a study (its command line, the hints it prints, the records it reads back)
# may use the fleet; what a trial computes (objectives, pruning, the search space, the
# collapse check, the trial itself) never does, so that it runs without a fleet.
# The study's display reads the queue's retry chains (which trials failed for good).
FLEET_USERS = {"studies.cli", "studies.hints", "studies.progress", "studies.records",
               "studies.register", "studies.reseed", "studies.launch",
               "studies.status"}  # fmt: skip


def test_what_a_trial_computes_never_imports_the_fleet():
    outside = [n for n in PROJECT if within(n, "studies") and not within(n, "studies.fleet")]
    assert {"studies.objectives", "studies.pruning", "studies.space", "studies.collapse"} <= set(
        outside
    )
    users = importers_of("studies.fleet", among=outside)
    assert "studies.cli" in users  # the check sees an import of the fleet
    assert users <= FLEET_USERS, sorted(users - FLEET_USERS)


# Writing to MLflow goes through the tracker; the reports read it through one module.
MLFLOW_MODULES = {"began.tracking.mlflow_tracker", "began.tracking.mlflow_models",
                  "analysis.store"}  # fmt: skip


def test_only_the_tracking_module_and_the_report_reader_import_mlflow():
    assert importers_of("mlflow") == MLFLOW_MODULES


def test_the_mlflow_import_check_sees_both_spellings():
    def imports_mlflow(source: str) -> bool:
        return any(within(m, "mlflow") for m in imports_of_source(source, "began.x"))

    assert imports_mlflow("x = 1\nfrom mlflow.entities import Metric\n")
    assert imports_mlflow("def f():\n    import mlflow.pytorch\n")
    assert not imports_mlflow('"""the mlflow store"""\nimport mlflowish\n')
