"""The README and docs/ show what the commands do: every study name shown is the one its
command creates, every relative link leads somewhere, every `python -m MODULE` runs and
every project path named exists.

A default study name is a hash of the training options (`studies.spec.config_fingerprint`),
so any change to a default changes it; the names here are computed by the commands' own
code (their parser and `study_spec`, up to the point where the study would start), never
by training.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import re
import shlex
from pathlib import Path
from unittest import mock

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]

STUDY_NAME = re.compile(r"(?<![\w-])(gamma-sweep|search)-[0-9a-f]{8}(?![\w-])")
MODULE_OF_PREFIX = {"gamma-sweep": "studies.gamma_sweep", "search": "studies.search"}
# A study command in a shell line: `scripts/demo ARGS` is `python -m studies.gamma_sweep ARGS`.
STUDY_COMMAND = re.compile(
    r"(?:python -m (?P<module>studies\.gamma_sweep|studies\.search)|(?P<demo>scripts/demo))"
    r"(?![\w.])(?P<args>.*)"
)
SHELL_SEPARATORS = {";", "&&", "||", "|", "&", ")"}
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
PYTHON_M = re.compile(r"python -m ([a-z_][\w.]*\w)")  # MODULE, NAME: placeholders
PROJECT_PATH = re.compile(
    r"(?<![\w./~$-])(?:began|studies|analysis|bench|tests|scripts|docs|\.ci)/[\w./-]*"
)


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def blocks(text: str) -> list[tuple[bool, str]]:
    """The file as (is_code, text) blocks: fenced code blocks whole, paragraphs between."""
    out: list[tuple[bool, str]] = []
    lines: list[str] = []
    in_code = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            if lines:
                out.append((in_code, "\n".join(lines)))
            lines, in_code = [], not in_code
        elif not in_code and not line.strip():
            if lines:
                out.append((False, "\n".join(lines)))
            lines = []
        else:
            lines.append(line)
    if lines:
        out.append((in_code, "\n".join(lines)))
    return out


def command_lines(is_code: bool, block: str) -> list[str]:
    """Shell lines of a block: a code block's lines (continuations joined), or the
    inline code spans of a paragraph."""
    if is_code:
        return block.replace("\\\n", " ").splitlines()
    return re.findall(r"`([^`]+)`", block)


def study_commands(is_code: bool, block: str) -> list[tuple[str, list[str]]]:
    """(module, argv) of each study command in the block that names no study and whose
    arguments are all literal (no `...` or `$VAR`): the commands whose default name shows."""
    commands = []
    for line in command_lines(is_code, block):
        match = STUDY_COMMAND.search(line)
        if not match:
            continue
        argv = []
        for token in shlex.split(match["args"], comments=True):
            if token in SHELL_SEPARATORS:
                break
            argv.append(token)
        if "--study-name" in argv or any("..." in t or "$" in t for t in argv):
            continue
        commands.append((match["module"] or "studies.gamma_sweep", argv))
    return commands


def start_study(module: str, argv: list[str]) -> tuple[str, list[str]]:
    """`python -m MODULE ARGV` run in-process up to where it would launch its study: the
    study's name, and the lines the command printed until then."""
    command = importlib.import_module(module)
    specs = []

    def capture(spec, args, module, argv):
        specs.append(spec)
        return 0

    printed = io.StringIO()
    with mock.patch.object(command, "launch", capture), contextlib.redirect_stdout(printed):
        command.main(argv)
    assert len(specs) == 1, f"python -m {module} {shlex.join(argv)} built no study"
    return specs[0].study_name, printed.getvalue().splitlines()


def created_study_name(module: str, argv: list[str]) -> str:
    return start_study(module, argv)[0]


def shown_study_names() -> list[tuple[str, str, list[tuple[str, list[str]]]]]:
    """(where, name, the study commands shown beside it) for every study name in the docs."""
    shown = []
    for path in DOCS:
        for is_code, block in blocks(path.read_text()):
            for match in STUDY_NAME.finditer(block):
                shown.append((rel(path), match[0], study_commands(is_code, block)))
    return shown


def test_the_readme_shows_the_demo_study_by_its_current_name():
    """`scripts/demo` is `python -m studies.gamma_sweep` with its defaults."""
    name = created_study_name("studies.gamma_sweep", [])
    assert name in README.read_text(), f"README.md should show the demo's study as {name}"


def test_the_demo_output_shown_begins_as_the_demo_prints():
    """What the demo prints before its study starts (the preset it runs, any warning) is
    shown in the README's sample output as printed."""
    _, printed = start_study("studies.gamma_sweep", [])
    outputs = [b for is_code, b in blocks(README.read_text()) if is_code and "COMPLETE" in b]
    assert len(outputs) == 1, "README.md should show the demo's output once"
    shown = outputs[0].splitlines()
    for line in printed:
        assert line in shown, f"README.md's demo output should show the line\n{line}"


def test_the_name_follows_the_options():
    """The check above has teeth: another training option is another study."""
    default = created_study_name("studies.gamma_sweep", [])
    assert created_study_name("studies.gamma_sweep", ["--steps", "1499"]) != default
    assert created_study_name("studies.gamma_sweep", ["--device", "cpu"]) == default


@pytest.mark.parametrize(("where", "name", "commands"), shown_study_names())
def test_every_study_name_shown_is_the_one_its_command_creates(where, name, commands):
    module = MODULE_OF_PREFIX[STUDY_NAME.match(name)[1]]
    candidates = [argv for m, argv in commands if m == module] or [[]]  # [] = the defaults
    created = {created_study_name(module, argv) for argv in candidates}
    shown_as = " or ".join(f"python -m {module} {shlex.join(argv)}".strip() for argv in candidates)
    assert name in created, f"{where} shows {name}; {shown_as} creates {', '.join(sorted(created))}"


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    headings = re.findall(r"^#{1,6} (.+)$", path.read_text(), flags=re.MULTILINE)
    return {slug(h) for h in headings}


def relative_links() -> list[tuple[str, str]]:
    links = []
    for path in DOCS:
        for target in LINK.findall(path.read_text()):
            if "://" not in target and not target.startswith("mailto:"):
                links.append((rel(path), target))
    return links


@pytest.mark.parametrize(("where", "target"), relative_links())
def test_every_relative_link_exists(where, target):
    file_part, _, anchor = target.partition("#")
    source = ROOT / where
    linked = (source.parent / file_part).resolve() if file_part else source
    assert linked.exists(), f"{where} links to {target}: no such file"
    if anchor and linked.suffix == ".md":
        assert anchor in anchors(linked), f"{where} links to {target}: no such heading"


def shown_modules() -> list[tuple[str, str]]:
    found = {}
    for path in DOCS:
        for module in PYTHON_M.findall(path.read_text()):
            found.setdefault(module, rel(path))
    return sorted((where, module) for module, where in found.items())


@pytest.mark.parametrize(("where", "module"), shown_modules())
def test_every_python_m_module_shown_runs(where, module):
    """`python -m NAME` needs a module, or a package with a `__main__`."""
    imported = importlib.import_module(module)
    if hasattr(imported, "__path__"):
        importlib.import_module(f"{module}.__main__")


def named_paths() -> list[tuple[str, str]]:
    found = {}
    for path in DOCS:
        for name in PROJECT_PATH.findall(path.read_text()):
            found.setdefault(name.rstrip("."), rel(path))
    return sorted((where, name) for name, where in found.items())


@pytest.mark.parametrize(("where", "name"), named_paths())
def test_every_project_path_named_exists(where, name):
    assert (ROOT / name).exists(), f"{where} names {name}: no such file or folder"


def test_the_checks_find_what_they_check():
    assert any(where == "README.md" for where, _, _ in shown_study_names())
    assert ("README.md", "docs/demo_best_trial_samples.png") in relative_links()
    assert any(module == "studies.gamma_sweep" for _, module in shown_modules())
    code = "python -m studies.search --n-trials 3 \\\n    --steps 10  # a comment"
    assert study_commands(True, code) == [("studies.search", ["--n-trials", "3", "--steps", "10"])]
    assert study_commands(False, "`scripts/demo --gammas 0.5` then") == [
        ("studies.gamma_sweep", ["--gammas", "0.5"])
    ]
    assert study_commands(True, "python -m studies.gamma_sweep --study-name x") == []
    assert slug("Pruning: which pairs make sense") == "pruning-which-pairs-make-sense"
    assert slug("began.data prepare") == "begandata-prepare"
