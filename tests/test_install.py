"""A clean install prints no warning of the project's own making.

`scripts/setup` installs the project editable (`pip install -e ".[dev]"`). Without
`package-dir = {"" = "."}` in pyproject.toml, setuptools picks its meta-path-finder strategy
and prints a "BuildBackendWarning: Editable installation ... Please be careful with folders in
your working directory" box on every install; with it, setuptools writes a plain `.pth` file
that puts the project root on sys.path, and says nothing alarming. This test calls the build
backend's hooks the way pip does (pip's own vendored pyproject_hooks, in a subprocess, cwd at
the project root) and reads everything they print.
"""

import os
import re
import subprocess
import sys
import warnings
import zipfile
from importlib.metadata import version
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NAME = "began_toolkit"
# A warning line, or the heading of setuptools' "Editable installation" notice.
ALARMING = re.compile(r"warning|editable installation", re.IGNORECASE)


def project_leftovers(root: Path) -> dict[str, int]:
    """What a build could leave in the project root (egg-info, build/), with mtimes: the
    hooks below must neither create nor touch any of it."""
    paths = [*root.glob("*.egg-info"), *root.glob("*.egg-info/*"), root / "build"]
    return {str(p): p.stat().st_mtime_ns for p in paths if p.exists()}


def build_editable(project: Path, tmp: Path) -> tuple[str, Path]:
    """Run prepare_metadata_for_build_editable and build_editable on `project` as pip does;
    returns everything the backend printed or warned and the editable wheel.

    get_requires_for_build_editable is left out: it only runs `egg_info` to list build
    requirements (none here), loads the same configuration, and writes its egg-info into the
    project root, which this test must leave as it found it."""
    hooks_module = pytest.importorskip("pip._vendor.pyproject_hooks")
    printed: list[str] = []

    def runner(cmd: list[str], cwd: str | None = None, extra_environ: dict | None = None):
        # Every warning shown (a PYTHONWARNINGS=ignore would hide them), and setuptools'
        # temporary folders in tmp rather than /tmp.
        env = {**os.environ, **(extra_environ or {}), "PYTHONWARNINGS": "default",
               "TMPDIR": str(tmp)}  # fmt: skip
        done = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=120)  # fmt: skip
        printed.append(done.stdout)
        assert done.returncode == 0, done.stdout

    hooks = hooks_module.BuildBackendHookCaller(
        str(project), "setuptools.build_meta", runner=runner, python_executable=sys.executable
    )
    meta, wheels = tmp / "metadata", tmp / "wheels"
    meta.mkdir()
    wheels.mkdir()
    # pyproject_hooks records the backend's warnings in its subprocess and raises them again
    # here, where pip shows them: they are not in the subprocess's output.
    with warnings.catch_warnings(record=True) as raised:
        warnings.simplefilter("always")
        info = hooks.prepare_metadata_for_build_editable(str(meta))
        wheel = hooks.build_editable(str(wheels), metadata_directory=str(meta / info))
    printed += [f"{w.category.__name__}: {w.message}\n" for w in raised]
    return "".join(printed), wheels / wheel


def alarming_lines(output: str, *paths: Path) -> list[str]:
    """The lines that read as a warning. Paths are blanked first: a --basetemp or checkout
    folder named "...warning..." is not a warning."""
    for path in paths:
        output = output.replace(str(path), "<path>")
    return [line for line in output.splitlines() if ALARMING.search(line)]


def test_an_editable_install_prints_no_warning(tmp_path: Path) -> None:
    found = version("setuptools")
    if int(found.split(".")[0]) < 68:
        pytest.skip(f"setuptools {found} in this environment; pyproject.toml builds with >= 68")
    before = project_leftovers(ROOT)

    output, wheel = build_editable(ROOT, tmp_path)
    print(output)  # shown by pytest on failure: the whole of what pip would have printed

    assert alarming_lines(output, tmp_path, ROOT) == []
    # The plain .pth strategy, not the meta path finder: the wheel adds the project root to
    # sys.path and ships no finder module.
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        assert not [n for n in names if n.endswith("_finder.py")], names
        [pth] = [n for n in names if n.startswith(f"__editable__.{NAME}-") and n.endswith(".pth")]
        assert archive.read(pth).decode().split() == [str(ROOT)]
    assert project_leftovers(ROOT) == before  # nothing created or rewritten in the checkout
