"""``python -m began.data prepare PATH``: decode a dataset into the cache and report counts.

Exit codes: 0 done, 2 bad input (one "error: ..." line on stderr, no traceback).
Warnings about skipped or converted files go to stderr, one line each, at most 20
naming files and then a count; ``-v`` also names the grayscale images skipped.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from began.cli import Parser
from began.data.crop import parse_crop
from began.data.imageset import DataError


def _parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m began.data", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    prepare = commands.add_parser("prepare", help="decode a folder or archive into the cache")
    prepare.add_argument("path", help="image folder or .tgz/.tar.gz/.tar/.zip archive")
    prepare.add_argument("--image-size", type=int, default=64, help="side in pixels (default 64)")
    prepare.add_argument("--crop", default="0.56", help='fraction, pixels, "x0,y0,x1,y1" or "none"')
    prepare.add_argument("--keep-grayscale", action="store_true", help="keep R == G == B images")
    prepare.add_argument(
        "--cache-dir", default=None, help="default: $BEGAN_CACHE_DIR or ~/.cache/began"
    )
    prepare.add_argument(
        "--workers", type=int, default=None, help="decode processes (default: all CPUs)"
    )
    prepare.add_argument(
        "--json", action="store_true", help="print one JSON object instead of text"
    )
    prepare.add_argument(
        "-v", "--verbose", action="store_true", help="also name skipped grayscale files"
    )
    return parser


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prefix = "warning: " if record.levelno >= logging.WARNING else ""
        return prefix + record.getMessage()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logger = logging.getLogger("began.data")
    saved = (logger.level, logger.propagate)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if args.verbose else logging.WARNING)
    logger.propagate = False  # our handler prints; no second copy through the root logger
    try:
        return _prepare(args)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    finally:  # main() is also called in-process (tests): leave logging as it was
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def _prepare(args: argparse.Namespace) -> int:
    from began.data.load import load_with_info  # numpy/PIL only once the arguments are fine

    try:
        parse_crop(args.crop)
    except ValueError as exc:
        raise DataError(str(exc)) from None
    image_set, info = load_with_info(
        args.path,
        args.image_size,
        crop=args.crop,
        keep_grayscale=args.keep_grayscale,
        cache_dir=args.cache_dir,
        workers=args.workers,
        progress=not args.json and sys.stderr.isatty(),
    )
    record = {
        **image_set.summary(),
        "fingerprint": image_set.fingerprint,
        "seconds": round(info.seconds, 3),
        "cache_hit": info.cache_hit,
        "cache_path": info.cache_path,
        "source": image_set.source,
        "shape": list(image_set.images.shape),
    }
    if args.json:
        print(json.dumps(record))
        return 0
    how = "read from cache" if info.cache_hit else "decoded"
    print(f"source       {image_set.source}")
    print(f"found        {image_set.found}")
    print(f"kept         {image_set.kept}  ({args.image_size}x{args.image_size}, crop {args.crop})")
    print(
        f"skipped      {image_set.skipped_grayscale} grayscale, "
        f"{image_set.skipped_unreadable} unreadable"
    )
    print(f"fingerprint  {image_set.fingerprint}")
    print(f"cache        {info.cache_path or '(not written)'}")
    print(f"time         {info.seconds:.2f} s ({how})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
