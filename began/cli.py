"""Command-line plumbing shared by the entry points: config options and one-line errors."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TypeVar

from began.config import TrainConfig

T = TypeVar("T")


def fail(message: str, code: int = 2) -> NoReturn:
    """Print one line on stderr and exit: bad input never ends in a traceback."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


def add_config_options(parser: argparse.ArgumentParser, shown_defaults: dict[str, Any]) -> None:
    """One `--field-name` option per TrainConfig field, with the field's help.

    Options default to None so that the caller can tell what the user set.
    """
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = shown_defaults.get(f.name, f.default)
        help_text = f"{f.metadata.get('help', '')} (default: {default!r})"
        if f.type in ("bool", bool):
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        else:
            kind = {"int": int, "float": float, "str": str}.get(str(f.type), str)
            parser.add_argument(
                flag, type=kind, default=None, metavar=f.name.upper(), help=help_text
            )


def user_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The config fields the user set on the command line."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return {
        name: value for name, value in vars(args).items() if name in names and value is not None
    }


def run_cli(main: Callable[[Sequence[str] | None], T], argv: Sequence[str] | None = None) -> T:
    """Run `main`, turning the project's known input errors into one-line messages."""
    from began.checkpoint import CheckpointError
    from began.config import ConfigError
    from began.tracking import TrackingError

    try:
        return main(argv)
    except (ConfigError, CheckpointError, TrackingError, FileNotFoundError) as error:
        fail(str(error))
    except ValueError as error:  # DataError and the metrics spec errors are ValueErrors
        if type(error).__module__.startswith("began"):
            fail(str(error))
        raise
