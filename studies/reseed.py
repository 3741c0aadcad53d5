"""`python -m studies.reseed`: the best settings of a study, trained again with new seeds.

    python -m studies.reseed --study lfw-search --top 3 --seeds 5

A study's best trial is best partly by luck: GAN results move with the training seed as
much as with many hyperparameters (Lucic et al. 2018, "Are GANs Created Equal?"). This
command takes the K best settings of a study (each setting ranked by its best complete
trial) and trains each again with S seeds that none of the study's trials used, with
the study's own training options, as a grid study of its own (default name
NAME-reseed) whose MLflow run nests under the first study's. Workers, packs, resume and
fault handling are those of every study: the same command again resumes it, and a larger
--seeds or --top adds only the missing points. `python -m analysis.report --study
NAME-reseed` then shows each setting's seed distribution against the single value that
made it best.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from began.cli import HelpFormatter, Parser, check_name, run_cli
from began.config import TrainConfig
from began.tracking import mask_url, run_exists
from studies.cli import OptionError, add_fleet_options, add_store_options, fleet_fields, launch
from studies.fleet.connection import missing_sqlite_file
from studies.fleet.storage import open_existing_study
from studies.launch import add_launch_options
from studies.naming import point_of_trial, trial_name
from studies.objectives import resolve_objectives
from studies.schema import (
    BASE_CONFIG_ATTR,
    EXPERIMENT_ATTR,
    OBJECTIVES_ATTR,
    PARENT_RUN_ATTR,
    SEED_ATTR,
)
from studies.space import check_space
from studies.spec import GRID, ReseedOf, StudySpec


def parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="python -m studies.reseed",
        allow_abbrev=False,  # as the study commands' (studies.launch.task_argv)
        description="Train the best settings of a study again with new seeds, as a study of "
        "its own nested under the first one's MLflow run, to see how much of 'best' was the "
        "seed. Training options come from the study reseeded.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--study", required=True, help="the study whose best settings are reseeded")
    p.add_argument("--top", type=int, default=1, help="how many settings, best first (each "
                   "ranked by its best complete trial)")  # fmt: skip
    p.add_argument("--seeds", type=int, default=5, help="new training seeds per setting, "
                   "after the largest seed the study used")  # fmt: skip
    p.add_argument("--objective", default=None,
                   help="the objective that ranks the settings, by its logged name (default: "
                   "the study's first)")  # fmt: skip
    study = p.add_argument_group("study options (the study's name defaults to STUDY-reseed)")
    add_store_options(study)
    add_fleet_options(study)
    add_launch_options(p.add_argument_group("launch options (a cluster's scheduler)"))
    return p


def setting_of(trial: FrozenTrial) -> dict[str, Any]:
    """What a trial's setting is: its params, without the training seed."""
    return {k: v for k, v in sorted(trial.params.items()) if k != SEED_ATTR}


def ranked_settings(
    trials: Sequence[FrozenTrial], objective: int, direction: str, base_seed: int
) -> list[dict[str, Any]]:
    """Every setting with a complete trial, best first: ranked by the best value of
    objective number `objective` among its trials, ties by trial number. Each entry is
    {"params", "trial", "seed", "values"} of the trial that made the setting's rank."""
    best: dict[tuple, FrozenTrial] = {}
    sign = 1.0 if direction == "minimize" else -1.0
    for trial in trials:
        if trial.state != TrialState.COMPLETE or trial.values is None:
            continue
        key = tuple(setting_of(trial).items())
        held = best.get(key)
        if held is None or sign * trial.values[objective] < sign * held.values[objective]:
            best[key] = trial
    order = sorted(best.values(), key=lambda t: (sign * t.values[objective], t.number))
    return [
        {"params": setting_of(t), "trial": t.number,
         "seed": int(point_of_trial(t).get(SEED_ATTR, base_seed)), "values": list(t.values)}
        for t in order
    ]  # fmt: skip


def unused_seeds(trials: Sequence[FrozenTrial], base_seed: int, count: int) -> list[int]:
    """`count` seeds after the largest any trial trained with (its own, or the base
    config's): the same ones on every rerun, so a rerun with more adds to them."""
    used = [base_seed] + [int(point_of_trial(t).get(SEED_ATTR, base_seed)) for t in trials]
    first = max(used) + 1
    return list(range(first, first + count))


def reseed_spec(args: argparse.Namespace) -> tuple[StudySpec, list[int], int]:
    """Everything the options and the study reseeded say, checked: the reseed's StudySpec,
    its new seeds and how many of the study's trials are still running or queued; or an
    error naming the option."""
    check_name("--study", args.study)
    if args.top < 1:
        raise OptionError(f"--top: must be >= 1, got {args.top}")
    if args.seeds < 1:
        raise OptionError(f"--seeds: must be >= 1, got {args.seeds}")
    fleet = fleet_fields(args)
    source = open_existing_study(args.study, fleet["storage"])
    attrs = source.user_attrs
    if BASE_CONFIG_ATTR not in attrs or OBJECTIVES_ATTR not in attrs:
        raise OptionError(f"--study {args.study}: not a study of this project (no base config)")
    cfg = TrainConfig.from_dict(attrs[BASE_CONFIG_ATTR])
    names = [str(n) for n in attrs[OBJECTIVES_ATTR]]
    ranked_by = args.objective or names[0]
    if ranked_by not in names:
        raise OptionError(f"--objective {ranked_by}: the study's objectives are {', '.join(names)}")
    objectives, metrics = resolve_objectives(",".join(names), cfg.metrics)
    directions = [d.name.lower() for d in source.directions]
    if [o.direction for o in objectives] != directions:
        raise OptionError(f"--study {args.study}: its objectives' directions changed since")
    index = names.index(ranked_by)
    trials = source.get_trials(deepcopy=False)
    ranked = ranked_settings(trials, index, directions[index], cfg.seed)
    if not ranked:
        raise OptionError(f"--study {args.study}: no complete trial to reseed yet")
    if args.top > len(ranked):
        raise OptionError(f"--top {args.top}: study {args.study} has {len(ranked)} setting(s) "
                          "with a complete trial")  # fmt: skip
    chosen = ranked[: args.top]
    seeds = unused_seeds(trials, cfg.seed, args.seeds)
    name = check_name("--study-name", args.study_name or f"{args.study}-reseed")
    if name == args.study:
        raise OptionError(f"--study-name {name}: the reseed needs a study of its own")
    parent_run_id = attrs.get(PARENT_RUN_ATTR)
    _check_run_exists(fleet["tracking_uri"], parent_run_id, args.study)
    numbers = {t.number: t for t in trials}
    space = {k: v for s in chosen for k, v in numbers[s["trial"]].distributions.items()
             if k != SEED_ATTR}  # fmt: skip
    check_space(space, cfg)
    grid = tuple({**s["params"], SEED_ATTR: seed} for seed in seeds for s in chosen)
    settings = tuple({**s, "values": dict(zip(names, s["values"], strict=True))} for s in chosen)
    spec = StudySpec(
        kind=GRID, study_name=name, experiment=attrs.get(EXPERIMENT_ATTR, args.study),
        base_config=TrainConfig.from_dict({**cfg.to_dict(), "metrics": metrics}), space=space,
        objectives=tuple(objectives), grid=grid,
        reseed_of=ReseedOf(args.study, parent_run_id, ranked_by, settings), **fleet,
    )  # fmt: skip
    unfinished = sum(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials)
    return spec, seeds, unfinished


def _check_run_exists(tracking_uri: str, run_id: str | None, study: str) -> None:
    """The study's MLflow run must be in this tracking store: the reseed nests under it."""
    if not run_id:
        return  # a study whose parent run was never recorded: the reseed's run stands alone
    # A missing SQLite file is not opened: opening it would create an empty store.
    if missing_sqlite_file(tracking_uri) or not run_exists(tracking_uri, run_id):
        raise OptionError(
            f"--tracking-uri {mask_url(tracking_uri)}: study {study}'s run {run_id} is not "
            "there; give the tracking URI the study was run with"
        )


def describe(spec: StudySpec, seeds: list[int], unfinished: int) -> list[str]:
    """What the reseed will train, in lines for the terminal."""
    reseed = spec.reseed_of
    assert reseed is not None
    seed_text = f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {seeds[0]}..{seeds[-1]}"
    lines = [f"reseed of study {reseed.study}: the {len(reseed.settings)} best setting(s) by "
             f"{reseed.ranked_by}, {len(seeds)} new seed(s) each ({seed_text})"]  # fmt: skip
    for s in reseed.settings:
        label = trial_name(s["trial"], s["params"], list(s["params"]))
        lines.append(f"  {label} seed={s['seed']}: {reseed.ranked_by}="
                     f"{s['values'][reseed.ranked_by]:.4g}")  # fmt: skip
    if unfinished:
        lines.append(f"warning: study {reseed.study} still has {unfinished} trial(s) running or "
                     "queued; the settings are ranked by the trials complete now")  # fmt: skip
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec, seeds, unfinished = reseed_spec(args)
    print("\n".join(describe(spec, seeds, unfinished)), flush=True)
    return launch(spec, args, "studies.reseed", sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
