"""The command line shared by `studies.gamma_sweep` and `studies.search`.

Both take the training options of `began.train` that the study does not vary, plus
the study's own options; both validate everything before any work starts and
report bad input in one line naming the option.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from began.cli import (
    HelpFormatter,
    Parser,
    add_config_options,
    add_system_metrics_option,
    check_name,
    option_flag,
    preset_chosen_by,
    preset_header,
    user_overrides,
)
from began.config import DEMO, PAPER, ConfigError, TrainConfig, config_from_options
from began.machine import usable_cpus
from began.tracking import DEFAULT_TRACKING_URI, check_tracking_uri
from began.training.learner import resolve_device
from studies.fleet.connection import absolute_sqlite, check_storage_url
from studies.fleet.queue import GRACE_BEATS
from studies.fleet.runner import WorkerSlot, run_study
from studies.fleet.storage import SAMPLERS
from studies.fleet.worker import cpu_threads
from studies.launch import PRINTED, add_launch_options, launch_of, submit_study
from studies.objectives import resolve_objectives
from studies.packing import auto_pack, parse_pack
from studies.pruning import PRUNERS, HealthRule, make_pruner, pruner_warning
from studies.space import check_space
from studies.spec import (
    DEFAULT_HEARTBEAT_S,
    DEFAULT_STORAGE,
    StudySpec,
    config_fingerprint,
    varied_fields,
)

MAX_SAMPLER_SEED = 2**31 - 1  # worker i samples with seed + i: well inside 32 bits
# The objective when --objectives is not given: FID measures the paper's model against a
# real dataset; the demo's 1,500 steps on 100 faces are judged by sample diversity.
DEFAULT_OBJECTIVE = {PAPER: "fid", DEMO: "diversity"}


class OptionError(ValueError):
    """A bad study option; the message names it as typed."""


def build_parser(prog: str, description: str, varied: frozenset[str]) -> argparse.ArgumentParser:
    # No abbreviated options: a launched task's command is this one without the launch
    # options, found by their full names (studies.launch.task_argv).
    parser = Parser(prog=prog, description=description, formatter_class=HelpFormatter,
                    allow_abbrev=False)  # fmt: skip
    training = parser.add_argument_group("training options (as began.train; every trial uses them)")
    add_config_options(training, skip=varied | {"seed"})
    study = parser.add_argument_group("study options")
    add_store_options(study)
    add_search_options(study)
    add_fleet_options(study)
    add_launch_options(parser.add_argument_group("launch options (a cluster's scheduler)"))
    return parser


def add_store_options(group: argparse._ArgumentGroup) -> None:
    """The study's name and where its records go: Optuna storage and MLflow."""
    group.add_argument(
        "--study-name",
        default=None,
        help="the study; rerunning with the same name resumes it (default: "
        "the command's name and a hash of the training options)",
    )
    group.add_argument(
        "--storage",
        default=DEFAULT_STORAGE,
        help="Optuna storage: sqlite:///FILE or postgresql://user:pass@host/db; "
        "other machines join the study by pointing here",
    )
    group.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else "
        "sqlite:///mlflow.db here, with artifacts in ./mlruns)",
    )
    add_system_metrics_option(group)


def add_search_options(group: argparse._ArgumentGroup) -> None:
    """What a new study optimises and how it samples (a reseed takes them from the study
    it reseeds)."""
    group.add_argument(
        "--experiment", default=None, help="MLflow experiment (default: the study name)"
    )
    group.add_argument(
        "--register-best", metavar="NAME", default=None,
        help="at the end, register the best trial's generator in MLflow's Model Registry as "
        "NAME (load it with began.sample --model models:/NAME/latest)",
    )  # fmt: skip
    group.add_argument(
        "--objectives",
        default=None,
        help="comma-separated: m_global, fid, kid, diversity, recon, sharpness "
        "or a logged name (fid_5k); several = multi-objective (default: "
        + ", ".join(f"{name} with --preset {preset}" for preset, name in DEFAULT_OBJECTIVE.items())
        + ")",
    )
    group.add_argument(
        "--pruner",
        default="none",
        choices=PRUNERS,
        help="Optuna pruner for single-objective studies (docs/studies.md: which pairs make sense)",
    )
    group.add_argument("--sampler", default="tpe", choices=SAMPLERS, help="Optuna sampler")
    group.add_argument(
        "--sampler-seed", type=int, default=0,
        help="seed of the Optuna sampler (training seeds: --seeds, or seed in --space)",
    )  # fmt: skip


def add_fleet_options(group: argparse._ArgumentGroup) -> None:
    """How the study's trials run: devices, workers, packs, heartbeats, retries and the
    health rule."""
    group.add_argument(
        "--devices",
        default="auto",
        help="comma-separated devices, e.g. cuda:0,cuda:1 (auto: every visible GPU, else cpu)",
    )
    group.add_argument(
        "--workers-per-device",
        type=int,
        default=None,
        help="worker processes per device (default: 1 per GPU; on cpu, 2 when "
        "there are 2 or more cores)",
    )
    group.add_argument(
        "--pack",
        default="1",
        help="trials each worker trains at once, as one model where they share a shape "
        "(N, or auto: the size bench.pack_speed measured fastest on the device)",
    )
    group.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes in all, spread over --devices (default: devices x "
        "workers per device)",
    )
    group.add_argument(
        "--heartbeat",
        type=int,
        default=DEFAULT_HEARTBEAT_S,
        help=f"seconds between a trial's heartbeats; a trial silent for {GRACE_BEATS} times "
        "this is retried from its checkpoint",
    )
    group.add_argument(
        "--max-retries",
        type=int,
        default=StudySpec.max_retries,
        help="a trial whose attempts die this many times more from one checkpoint (no "
        "progress in between) is given up; attempts that advanced the run count nothing",
    )
    group.add_argument(
        "--collapse-ssim",
        type=float,
        default=HealthRule.collapse_ssim,
        help="prune a trial whose diversity SSIM stays at or above this",
    )
    group.add_argument(
        "--divergence-factor",
        type=float,
        default=HealthRule.divergence_factor,
        help="prune a trial whose M_global stays above this multiple of its best",
    )
    group.add_argument(
        "--prune-patience",
        type=int,
        default=HealthRule.patience,
        help="evaluations in a row the two rules above wait",
    )
    group.add_argument("--cache-dir", default=None, help="dataset and statistics cache folder")
    group.add_argument("--quiet", action="store_true",
                       help="no progress bar: one line per finished trial")  # fmt: skip


def base_config(args: argparse.Namespace) -> TrainConfig:
    """The config every trial derives from: the options given, over the preset's values
    (`began.config.config_from_options`)."""
    overrides = user_overrides(args)
    overrides.pop("seed", None)  # a study's training seeds are its grid's or its space's
    return config_from_options(overrides)


def worker_slots(args: argparse.Namespace) -> list[WorkerSlot]:
    """Which device each worker gets, and its thread count."""
    if args.devices == "auto":
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        devices = [f"cuda:{i}" for i in range(count)] or ["cpu"]
    else:
        devices = [d.strip() for d in args.devices.split(",") if d.strip()]
        if not devices:
            raise OptionError("--devices: give at least one device, e.g. cpu or cuda:0")
        for device in devices:
            if device == "auto":
                raise OptionError("--devices: auto stands alone; list devices, e.g. cuda:0,cuda:1")
            try:
                resolve_device(device)
            except (ConfigError, RuntimeError) as error:
                raise OptionError(f"--devices: {str(error).removeprefix('device: ')}") from None
    per_device = args.workers_per_device
    if per_device is None:
        per_device = 1 if devices != ["cpu"] else min(2, usable_cpus())
    if per_device < 1:
        raise OptionError(f"--workers-per-device: must be >= 1, got {per_device}")
    total = args.workers if args.workers is not None else per_device * len(devices)
    if total < 1:
        raise OptionError(f"--workers: must be >= 1, got {total}")
    assigned = [devices[i % len(devices)] for i in range(total)]
    cpu_workers = assigned.count("cpu")
    threads = cpu_threads(cpu_workers) if cpu_workers else cpu_threads(total)
    return [WorkerSlot(device, threads) for device in assigned]


def study_spec(
    args: argparse.Namespace,
    kind: str,
    command: str,
    space: dict,
    **extra: Any,
) -> StudySpec:
    """Everything the options say, checked: a StudySpec, or an error naming the option."""
    cfg = base_config(args)
    if cfg.data and not Path(cfg.data).exists():  # before anything is created for it
        raise ConfigError(f"data: {cfg.data} does not exist")
    fleet = fleet_fields(args)
    objectives, metrics = resolve_objectives(
        args.objectives or DEFAULT_OBJECTIVE[cfg.preset], cfg.metrics
    )
    cfg = replace(cfg, metrics=metrics)
    check_space(space, cfg)
    if not 0 <= args.sampler_seed <= MAX_SAMPLER_SEED:  # numpy's RandomState takes 32 bits
        raise OptionError(
            f"--sampler-seed: must be in [0, {MAX_SAMPLER_SEED}], got {args.sampler_seed}"
        )
    make_pruner(args.pruner, len(objectives))
    varied = varied_fields(space, extra.get("grid", ()))
    name = args.study_name or f"{command}-{config_fingerprint(cfg, varied)}"
    check_name("--study-name", name)
    if args.register_best is not None:
        check_name("--register-best", args.register_best)
    experiment = check_name("--experiment", args.experiment or name)
    # A printed job (--launch print > job.sh) keeps stdout to itself.
    shown = sys.stderr if getattr(args, "launch", "local") in PRINTED else sys.stdout
    print(preset_header(cfg, preset_chosen_by(user_overrides(args))), file=shown, flush=True)
    warning = pruner_warning(args.pruner, objectives, gamma_varies="gamma" in space)
    if warning:
        print(f"warning: {warning}")
    return StudySpec(
        kind=kind,
        study_name=name,
        experiment=experiment,
        base_config=cfg,
        space=space,
        objectives=tuple(objectives),
        sampler=args.sampler,
        sampler_seed=args.sampler_seed,
        pruner=args.pruner,
        register_best=args.register_best,
        **fleet,
        **extra,
    )


def fleet_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The StudySpec fields of `add_store_options` and `add_fleet_options`, checked."""
    check_storage_url(args.storage)
    parse_pack(args.pack)  # a bad --pack fails here, before anything exists
    if args.heartbeat < 1:
        raise OptionError(f"--heartbeat: must be >= 1 second, got {args.heartbeat}")
    if args.max_retries < 0:
        raise OptionError(f"--max-retries: must be >= 0, got {args.max_retries}")
    tracking_uri = (
        args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    )
    if getattr(args, "launch", "local") not in PRINTED:  # printing a job reaches nothing
        check_tracking_uri(tracking_uri)
    return {
        "storage": absolute_sqlite(args.storage),
        "tracking_uri": absolute_sqlite(tracking_uri),
        "health": HealthRule(args.divergence_factor, args.collapse_ssim, args.prune_patience),
        "heartbeat_s": args.heartbeat,
        "max_retries": args.max_retries,
        "cache_dir": args.cache_dir,
        "system_metrics": args.system_metrics == "on",
    }


def refuse_varied_options(args: argparse.Namespace, space: dict) -> None:
    """A training option the study varies cannot also be fixed on the command line."""
    for name in space:
        if getattr(args, name, None) is not None:
            raise OptionError(f"{option_flag(name)}: the study varies {name}; drop the option")


def launch(spec: StudySpec, args: argparse.Namespace, module: str, argv: Sequence[str]) -> int:
    """Run the study here (`--launch local`), or hand its workers to a scheduler
    (`studies.launch`): `module` and `argv` are the command each task runs again."""
    how = launch_of(args)
    if how.remote:
        return submit_study(spec, how, module, argv)
    slots = worker_slots(args)
    pack = parse_pack(args.pack)
    if pack is None:
        pack, why = auto_pack(slots[0].device, spec.base_config.image_size)
        print(f"--pack auto: {pack} ({why})")
    return run_study(replace(spec, pack=pack), slots, args.quiet)
