"""Command-line plumbing shared by the entry points: config options and one-line errors."""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TypeVar

from began.config import DEMO, PAPER, PRESETS, Preset, TrainConfig

T = TypeVar("T")


def fail(message: str, code: int = 2) -> NoReturn:
    """Print one line on stderr and exit: bad input never ends in a traceback."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


class Parser(argparse.ArgumentParser):
    """argparse, with its errors ("argument --steps: invalid int value: 'x'") on one line
    and exit code 2, like every other bad-input error of the project."""

    def error(self, message: str) -> NoReturn:
        fail(f"{message} (see {self.prog} --help)")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each default once: not for options whose help already states it, nor None."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "(default:" in text or action.default is None:
            return text
        return super()._get_help_string(action)


NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def check_name(option: str, name: str) -> str:
    """Experiment, run and study names: no path separators, spaces or shell characters."""
    if not NAME_PATTERN.fullmatch(name):
        from began.config import ConfigError

        raise ConfigError(
            f"{option}: {name!r} may hold only letters, digits, '.', '_' and '-' "
            "(no path separators, spaces or shell characters), at most 100 characters"
        )
    return name


def add_system_metrics_option(parser: argparse.ArgumentParser) -> None:
    """`--system-metrics on|off`: whether each training run samples the machine into MLflow
    (a tracking option, not a config field: it changes nothing a run computes)."""
    parser.add_argument(
        "--system-metrics", choices=("on", "off"), default="on",
        help="log MLflow's system metrics into each training run: CPU, memory, disk, network "
        "and, where NVML is there, every GPU's utilisation and memory, every 10 s, named "
        "system/HOST:PID/... for the process that trains it",
    )  # fmt: skip


def option_flag(field_name: str) -> str:
    """The command-line spelling of a config field: image_size -> --image-size."""
    return "--" + field_name.replace("_", "-")


def resume_command(module: str, run_id: str, tracking_uri: str | None) -> str:
    """The whole command that continues a stopped run (a password in the URL masked:
    `PGPASSWORD` or the server's own credentials supply it)."""
    from began.tracking import mask_url

    command = f"python -m {module} --resume {run_id}"
    return command + (f" --tracking-uri {mask_url(tracking_uri)}" if tracking_uri else "")


def add_config_options(parser: argparse.ArgumentParser, skip: frozenset[str] = frozenset()) -> None:
    """`--preset`, then one `--field-name` option per TrainConfig field (but `skip`), with
    the field's help and its default in each preset where they differ.

    Options default to None so that the caller can tell what the user set.
    """
    parser.add_argument(
        "--preset",
        choices=list(PRESETS),
        default=None,
        help=f"the defaults to start from (default: {PAPER} with --data, {DEMO} without); "
        "the options given go over them. "
        + "; ".join(_describe_preset(preset) for preset in PRESETS.values()),
    )
    for f in dataclasses.fields(TrainConfig):
        if f.name in skip or f.name == "preset":  # set by --preset, not an option of its own
            continue
        flag = option_flag(f.name)
        help_text = f.metadata.get("help", "")
        if "(default" not in help_text:  # a help that states its default says it better
            help_text += f" (default: {_preset_defaults(f.name, f.default)})"
        if f.type in ("bool", bool):
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        else:
            kind = {"int": int, "float": float, "str": str}.get(str(f.type), str)
            parser.add_argument(
                flag, type=kind, default=None, metavar=f.name.upper(), help=help_text
            )


def _describe_preset(preset: Preset) -> str:
    """ "demo: a small model ..., image_size=32, ..., 3 evaluations" for --help."""
    values = [f"{name}={value!r}" for name, value in preset.overrides.items()]
    return f"{preset.name}: {', '.join([preset.about, *values])}, {preset.evaluations} evaluations"


def _preset_defaults(name: str, default: Any) -> str:
    """A field's default, "64", or per preset where they differ: "demo 32, paper 64"."""
    values = {preset.name: preset.overrides.get(name, default) for preset in PRESETS.values()}
    if len(set(map(repr, values.values()))) == 1:
        return repr(default)
    return ", ".join(f"{preset} {value!r}" for preset, value in values.items())


def preset_header(cfg: TrainConfig, chosen_by: str) -> str:
    """The first line a training command prints: the preset its defaults came from and the
    values of that preset still in effect, so that the demo is never taken for the paper.

    `chosen_by` says why this preset: "--preset", "the default without --data", ...
    """
    if cfg.preset not in PRESETS:
        return "preset: not recorded (a run started before presets existed)"
    preset = PRESETS[cfg.preset]
    in_effect = [
        f"{name}={value}"
        for name, value in preset.overrides.items()
        if getattr(cfg, name) == value  # not one the user set otherwise
    ]
    hint = ""
    if chosen_by.startswith("the default"):
        other = DEMO if preset.name == PAPER else PAPER
        hint = f"; --preset {other} for {PRESETS[other].about}"
    values = " ".join(in_effect) if in_effect else preset.about
    return f"preset {preset.name} ({chosen_by}{hint}): {values}"


def preset_chosen_by(options: dict[str, Any]) -> str:
    """Why a command line's preset is the one it is, for `preset_header`."""
    if options.get("preset"):
        return "--preset"
    return "the default with --data" if options.get("data") else "the default without --data"


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

    # MLflow's "Creating initial MLflow database tables..." and download bars are noise on
    # a command line; MLflow reads these when it is first imported (below, in `main`).
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

    try:
        return main(argv)
    except (ConfigError, CheckpointError, TrackingError, FileNotFoundError) as error:
        fail(as_typed(str(error)))
    except ValueError as error:  # DataError and the metrics spec errors are ValueErrors
        if type(error).__module__.startswith(("began", "studies", "analysis")):
            fail(as_typed(str(error)))
        raise


def as_typed(message: str) -> str:
    """ "image_size: must be ..." -> "--image-size: must be ...": name the option as typed."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    head, colon, rest = message.partition(":")
    names_in_head = [name.strip() for name in head.split(",")]
    if colon and all(name in names for name in names_in_head):
        return ", ".join(option_flag(name) for name in names_in_head) + colon + rest
    return message
