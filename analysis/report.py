"""What a study found, as tables and pictures: `python -m analysis.report --study NAME`.

Loads the trials and their runs once (histories in parallel, cached on disk), builds
every section of `analysis.sections` / `analysis.gallery`, writes report.html (self-
contained), report.md with its PNGs, one CSV per table, and logs the folder under
`report/` in the study's parent run so that `mlflow ui` shows it.
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from analysis import fidelity, gallery, sections, seeds
from analysis.data import load_runs, open_study
from analysis.history import load_history
from analysis.render import FORMATS, write_report
from analysis.sections import CURVES, ReportInputs, Section
from analysis.sources import DEFAULT_STORAGE, AnalysisError, default_tracking_uri
from began.cli import HelpFormatter, Parser, run_cli
from began.tracking import MlflowTracker
from studies.records import best_trials
from studies.schema import REPORT_FOLDER, RUN_ID_ATTR

SECTIONS = (
    sections.summary, seeds.reseeded, seeds.across_seeds, sections.curves, sections.equilibrium,
    sections.quality_by_gamma, fidelity.fidelity_vs_diversity, sections.pareto, seeds.budget,
    sections.mglobal_vs_quality, gallery.samples, gallery.samples_over_training,
    sections.importance,
)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="python -m analysis.report", description=__doc__.split("\n\n")[0],
        formatter_class=HelpFormatter,
    )  # fmt: skip
    add_source_options(parser)
    parser.add_argument("--format", default="html,md", help="any of html, md, json (the "
                        "verdicts and budget curves; PNGs and CSVs always)")  # fmt: skip
    parser.add_argument("--compare", metavar="STUDY", help="another study (same --storage and "
                        "--tracking-uri) whose search budget curves are drawn beside")  # fmt: skip
    parser.add_argument("--out", type=Path, help="folder (default: reports/NAME)")
    parser.add_argument("--run", help="the run whose grids over training are shown "
                        "(default: the best trial's)")  # fmt: skip
    parser.add_argument("--window", type=int, default=1000, help="rolling mean, in steps")
    parser.add_argument("--no-log", action="store_true",
                        help="do not log the report into the study's parent run")  # fmt: skip
    return parser


def add_source_options(parser: argparse.ArgumentParser) -> None:
    """--study / --experiment / --runs and where they live (the studies' defaults)."""
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--study", help="an Optuna study")
    which.add_argument("--experiment", help="an MLflow experiment (every run but a study's)")
    which.add_argument("--runs", help="MLflow run ids, comma-separated")
    parser.add_argument("--storage", default=DEFAULT_STORAGE, help="Optuna storage URL")
    parser.add_argument("--tracking-uri", default=None,
                        help="default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")  # fmt: skip


def load_source(args: argparse.Namespace) -> pd.DataFrame:
    run_ids = [r.strip() for r in args.runs.split(",") if r.strip()] if args.runs else None
    return load_runs(study=args.study, experiment=args.experiment, run_ids=run_ids,
                     storage=args.storage, tracking_uri=args.tracking_uri)  # fmt: skip


def build_sections(
    runs: pd.DataFrame, window_steps: int = 1000, chosen_run: str | None = None,
    storage: str = DEFAULT_STORAGE, cache_dir: Path | None = None,
    compared: pd.DataFrame | None = None,
) -> list[Section]:  # fmt: skip
    """Every section of the report over `runs` (a `load_runs` frame; `compared`: another
    study's, drawn beside it where a section compares studies)."""
    uri = runs.attrs.get("tracking_uri") or default_tracking_uri()
    run_ids = runs.loc[runs["current"], "run_id"].dropna()
    history = load_history(run_ids, [*CURVES, "images_per_s"], uri, cache_dir)
    study = open_study(runs.attrs["study"], storage) if runs.attrs.get("study") else None
    if chosen_run is not None and chosen_run not in set(runs["run_id"].dropna()):
        raise AnalysisError(f"--run {chosen_run}: not one of this report's runs")
    best = best_trials(study) if study is not None else []
    inputs = ReportInputs(runs, history, study, uri, window_steps,
                          chosen_run or _default_run(runs, best), cache_dir, compared)  # fmt: skip
    out = []
    for make in SECTIONS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # optuna's experimental and scipy's constant-input
            section = make(inputs)
        if section is not None:  # None: a section for another kind of study
            out.append(section)
    return out


def _default_run(runs: pd.DataFrame, best: list) -> str | None:
    """The run shown over training: the best trial's, else the last complete run's."""
    if best and best[0].user_attrs.get(RUN_ID_ATTR):
        return str(best[0].user_attrs[RUN_ID_ATTR])
    done = runs[(runs["state"] == "COMPLETE") & runs["run_id"].notna()]
    ids = (done if len(done) else runs)["run_id"].dropna()
    return str(ids.iloc[-1]) if len(ids) else None


def header(runs: pd.DataFrame, label: str) -> dict[str, str]:
    attrs = runs.attrs
    facts = {"title": label}
    if attrs.get("study"):
        objectives = ", ".join(
            f"{n} ({d})" for n, d in zip(attrs["objectives"], attrs["directions"], strict=False)
        )
        facts |= {"kind": attrs.get("kind", ""), "objectives": objectives,
                  "searched": attrs.get("space") or ", ".join(attrs.get("params", []))}  # fmt: skip
        if reseed := attrs.get("reseed_of"):
            facts["reseed of"] = (f"study {reseed['study']}, its {len(reseed['settings'])} best "
                                  f"setting(s) by {reseed['ranked_by']}")  # fmt: skip
    counts = runs["state"].value_counts()
    facts["counts"] = ", ".join(f"{n} {s.lower()}" for s, n in counts.items() if n)
    facts["generated"] = pd.Timestamp.now().strftime("%Y-%m-%d %H:%M")
    return facts


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    if unknown := [f for f in formats if f not in FORMATS]:
        raise AnalysisError(f"--format {','.join(unknown)}: choose from {', '.join(FORMATS)}")
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    started = time.perf_counter()
    if args.compare and not args.study:
        raise AnalysisError("--compare: compares two studies; give the first with --study")
    runs = load_source(args)
    compared = None
    if args.compare:
        compared = load_runs(study=args.compare, storage=args.storage,
                             tracking_uri=args.tracking_uri)  # fmt: skip
    label = args.study or args.experiment or f"{len(runs)} runs"
    out = args.out or Path("reports") / label.replace("/", "_").replace(" ", "_")
    built = build_sections(runs, args.window, args.run, args.storage, compared=compared)
    title = f"Study {label}" if args.study else f"Runs: {label}"
    write_report(built, header(runs, title), out, formats)
    parent = runs.attrs.get("parent_run_id")
    if parent and not args.no_log:
        tracker = MlflowTracker(runs.attrs["tracking_uri"], run_id=parent, run_option="--study")
        tracker.log_artifacts(out, REPORT_FOLDER)
    seconds = time.perf_counter() - started
    logged = f"; logged to run {parent} under {REPORT_FOLDER}/"
    where = logged if parent and not args.no_log else ""
    document = next(f"report.{f}" for f in ("html", "md", "json") if f in formats)
    print(f"report: {out / document} "
          f"({len(runs)} trials, {seconds:.1f} s{where})")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
