"""One row per trial (or run) to a file: `python -m analysis.export --study NAME --out runs.csv`.

The same frame as `analysis.load_runs`; `.parquet` keeps the dtypes, `.csv` is for
spreadsheets.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from analysis.report import add_source_options, load_source
from analysis.sources import AnalysisError
from began.cli import HelpFormatter, Parser, run_cli


def main(argv: Sequence[str] | None = None) -> int:
    parser = Parser(
        prog="python -m analysis.export", description=__doc__.split("\n\n")[0],
        formatter_class=HelpFormatter,
    )  # fmt: skip
    add_source_options(parser)
    parser.add_argument("--out", type=Path, required=True, help="a .csv or .parquet file")
    args = parser.parse_args(argv)
    if args.out.suffix not in (".csv", ".parquet"):
        raise AnalysisError(f"--out {args.out}: use a .csv or .parquet file name")
    runs = load_source(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.out.suffix == ".csv":
        runs.to_csv(args.out, index=False)
    else:
        runs.attrs = {}  # parquet would try to store them as JSON metadata
        runs.to_parquet(args.out, index=False)
    print(f"{args.out}: {len(runs)} rows, {len(runs.columns)} columns")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
