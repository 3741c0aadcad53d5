"""`StudySpec`: everything a study's workers need, built once by the parent process.

It is frozen and picklable: the parent hands the same spec to every worker process,
and a worker never reads the command line.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from optuna.distributions import BaseDistribution

from began.config import TrainConfig
from studies.objectives import Objective
from studies.pruning import HealthRule
from studies.space import describe_grid, describe_space

GRID, SEARCH = "grid", "search"
# Config fields a rerun of a study may change: where and how fast it runs, and the name of
# the preset its values came from (the values themselves are compared), not what it
# computes. They are also left out of the default study name.
RERUN_MAY_CHANGE = frozenset({"device", "precision", "tf32", "compile", "channels_last", "preset"})
DEFAULT_STORAGE = "sqlite:///optuna.db"
DEFAULT_HEARTBEAT_S = 30  # between a trial's beats; when one is stale: fleet.queue.stale_after_s


@dataclass(frozen=True)
class ReseedOf:
    """What a reseed study (`studies.reseed`) retrains: the best settings of another study."""

    study: str  # the study whose settings are retrained
    parent_run_id: str | None  # that study's MLflow run: this study's run nests under it
    ranked_by: str  # the objective (logged name) that ranked the settings
    # Per setting, best first: {"params": {...}, "trial": n, "seed": s, "values": {name: v}},
    # the trial that made it "best" and the values it had.
    settings: tuple[dict[str, Any], ...]

    def to_dict(self) -> dict[str, Any]:
        return {"study": self.study, "parent_run_id": self.parent_run_id,
                "ranked_by": self.ranked_by, "settings": list(self.settings)}  # fmt: skip


@dataclass(frozen=True)
class StudySpec:
    kind: str  # GRID (gamma x seeds, queued up front) or SEARCH (sampled as it goes)
    study_name: str
    storage: str  # an SQLAlchemy URL: sqlite:///optuna.db, postgresql://...
    tracking_uri: str
    experiment: str
    base_config: TrainConfig  # every trial: this, with its params replaced
    space: dict[str, BaseDistribution]  # the params each trial suggests
    objectives: tuple[Objective, ...]
    sampler: str = "tpe"
    sampler_seed: int = 0  # worker i samples with sampler_seed + i
    pruner: str = "none"
    health: HealthRule = field(default_factory=HealthRule)
    grid: tuple[dict[str, Any], ...] = ()  # GRID: the points, in order
    n_trials: int | None = None  # SEARCH: trials in all, over every worker and rerun
    timeout_s: float | None = None  # SEARCH: no new trial starts after this long
    heartbeat_s: int = DEFAULT_HEARTBEAT_S
    max_retries: int = 3  # retries of a trial whose attempts die from one checkpoint
    pack: int = 1  # trials a worker trains at once, as one model when they share a shape
    cache_dir: str | None = None
    register_best: str | None = None  # the registered model the best generator goes to
    system_metrics: bool = True  # each trial's run samples the machine (MLflow system metrics)
    reseed_of: ReseedOf | None = None  # a reseed study: the study and settings it retrains

    @property
    def directions(self) -> list[str]:
        return [o.direction for o in self.objectives]

    @property
    def varied(self) -> set[str]:
        return varied_fields(self.space, self.grid)

    @property
    def named(self) -> list[str]:
        """What a trial's name shows (studies.naming): the searched params, or the grid's
        fields whose values differ between points (gamma, and the seed when several)."""
        if self.kind != GRID:
            return list(self.space)
        values: dict[str, set] = {}
        for point in self.grid:
            for name, value in point.items():
                values.setdefault(name, set()).add(value)
        return [n for n, vs in values.items() if len(vs) > 1 or n in self.space]

    @property
    def described(self) -> str:
        """What the study varies as the user gave it: the grid's values or the ranges."""
        return describe_grid(self.grid) if self.kind == GRID else describe_space(self.space)

    @property
    def total_trials(self) -> int | None:
        return len(self.grid) if self.kind == GRID else self.n_trials


def varied_fields(space: dict[str, BaseDistribution], grid: tuple[dict, ...] = ()) -> set[str]:
    """The config fields that differ between a study's trials: the space's and the grid's."""
    return set(space) | {name for point in grid for name in point}


def config_fingerprint(cfg: TrainConfig, varied: set[str]) -> str:
    """A short hash of the training options a study holds fixed (not the varied params,
    nor how fast or where it runs): the default study name depends on it."""
    ignored = varied | RERUN_MAY_CHANGE
    fixed = {k: v for k, v in cfg.to_dict().items() if k not in ignored}
    return hashlib.sha256(json.dumps(fixed, sort_keys=True).encode()).hexdigest()[:8]
