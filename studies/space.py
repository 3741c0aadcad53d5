"""What a study varies: the gamma x seed grid of a sweep, or a search space from `--space`.

A search space is written on the command line as comma-separated items:

    gamma=0.2:1.0                 float range
    lambda_k=1e-4:1e-2:log        float range, log scale
    lr=1e-5:1e-4:1e-5             float range with a step
    repeat=1:3                    integer range (the field is an int)
    filters=32,64,128             choices (items without '=' continue the previous choice list)
    skip=true,false               choices of a bool field

Every name is a `TrainConfig` field, and every bound must make a valid config: a
range that reaches gamma 1.5 is refused before any trial starts.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from began.config import ConfigError, TrainConfig

# Fields a study may vary: the model, the equilibrium rule and the optimiser. Data,
# sizes of the run and bookkeeping are the same for every trial of a study.
SEARCHABLE = frozenset(
    {"filters", "hidden", "repeat", "skip", "gamma", "lambda_k", "k_init", "shared_fake", "lr",
     "lr_min", "adam_beta1", "adam_beta2", "batch_size", "seed"}
)  # fmt: skip

# The sweep's one searched param as an Optuna distribution. Fixed bounds (not the grid's
# values) keep the study compatible when a later run of the same study adds gammas. The
# seed is no dimension: it is queued with each point and kept as a trial attribute, so
# Optuna's importance, contour and rank plots show gamma alone.
GAMMA_DISTRIBUTION = FloatDistribution(1e-6, 1.0)


class SpaceError(ValueError):
    """A malformed --space, --gammas or --seeds; the message names the option."""


def _field_types() -> dict[str, str]:
    return {f.name: str(f.type) for f in dataclasses.fields(TrainConfig)}


def _number(text: str, kind: str, item: str) -> float | int:
    try:
        return int(text) if kind == "int" else float(text)
    except ValueError:
        what = "an integer" if kind == "int" else "a number"
        raise SpaceError(f"--space: {item}: {text!r} is not {what}") from None


def _choice(text: str, kind: str, item: str) -> Any:
    if kind == "bool":
        if text.lower() not in ("true", "false"):
            raise SpaceError(f"--space: {item}: {text!r} is not true or false")
        return text.lower() == "true"
    return _number(text, kind, item) if kind in ("int", "float") else text


def _range(name: str, kind: str, parts: list[str], item: str) -> BaseDistribution:
    low, high = (_number(p, kind, item) for p in parts[:2])
    if not low < high:
        raise SpaceError(f"--space: {item}: the low bound must be below the high bound")
    option = parts[2] if len(parts) == 3 else None
    if len(parts) > 3:
        raise SpaceError(f"--space: {item}: expected LOW:HIGH, LOW:HIGH:log or LOW:HIGH:STEP")
    if option == "log":
        if low <= 0:
            raise SpaceError(f"--space: {item}: a log range needs a positive low bound")
        return (IntDistribution if kind == "int" else FloatDistribution)(low, high, log=True)
    step = _number(option, kind, item) if option is not None else None
    if kind == "int":
        return IntDistribution(int(low), int(high), step=int(step or 1))
    return FloatDistribution(float(low), float(high), step=step)


def _distribution(name: str, values: list[str], item: str) -> BaseDistribution:
    kind = _field_types()[name]
    if len(values) == 1 and ":" in values[0]:
        if kind not in ("int", "float"):
            raise SpaceError(f"--space: {item}: a range needs a numeric field, {name} is {kind}")
        return _range(name, kind, values[0].split(":"), item)
    return CategoricalDistribution([_choice(v, kind, item) for v in values])


def _check_values(name: str, distribution: BaseDistribution, item: str) -> None:
    """Each bound or choice must make a valid TrainConfig on its own."""
    if isinstance(distribution, CategoricalDistribution):
        values = list(distribution.choices)
    else:
        values = [distribution.low, distribution.high]
    for value in values:
        try:
            TrainConfig(**{name: value})
        except ConfigError as error:
            raise SpaceError(f"--space: {item}: {error}") from None


# Corners of a space checked at most (bounds or choices of every field, combined); past
# this, each field is checked alone against the base config.
MAX_CORNERS = 4096


def check_space(space: dict[str, BaseDistribution], base: TrainConfig) -> None:
    """Every corner of the space (each field at a bound or a choice, all combined) must
    make a valid config with the study's base config: `--lr 5e-5 --space
    lr_min=1e-5:1e-4` would otherwise fail trials at run time (lr_min above lr)."""
    edges = {name: _edges(d) for name, d in space.items()}
    if math.prod(len(values) for values in edges.values()) <= MAX_CORNERS:
        combos = itertools.product(*edges.values())
        corners = [dict(zip(edges, combo, strict=True)) for combo in combos]
    else:
        corners = [{name: value} for name, values in edges.items() for value in values]
    for corner in corners:
        try:
            dataclasses.replace(base, **corner)
        except ConfigError as error:
            shown = ", ".join(f"{name}={value}" for name, value in corner.items())
            raise SpaceError(
                f"--space: {shown} (with the other options) is no valid config: {error}"
            ) from None


def _edges(distribution: BaseDistribution) -> list[Any]:
    if isinstance(distribution, CategoricalDistribution):
        return list(distribution.choices)
    return [distribution.low, distribution.high]


def parse_space(spec: str) -> dict[str, BaseDistribution]:
    """Parse `--space` into {field name: distribution}; SpaceError on anything malformed."""
    groups: list[tuple[str, list[str]]] = []
    for raw in spec.split(","):
        part = raw.strip()
        if not part:
            continue
        if "=" in part:
            name, _, value = part.partition("=")
            groups.append((name.strip(), [value.strip()]))
        elif groups:
            groups[-1][1].append(part)
        else:
            raise SpaceError(f"--space: {part!r} has no NAME= before it")
    if not groups:
        raise SpaceError("--space: empty; give e.g. gamma=0.3:0.7,lambda_k=1e-4:1e-2:log")
    space: dict[str, BaseDistribution] = {}
    for name, values in groups:
        item = f"{name}={','.join(values)}"
        if name not in SEARCHABLE:
            raise SpaceError(
                f"--space: {name!r} cannot be searched; searchable: {', '.join(sorted(SEARCHABLE))}"
            )
        if name in space:
            raise SpaceError(f"--space: {name} is given twice")
        if any(not v for v in values):
            raise SpaceError(f"--space: {item}: empty value")
        space[name] = _distribution(name, values, item)
        _check_values(name, space[name], item)
    return space


def describe_space(space: dict[str, BaseDistribution]) -> str:
    """A one-line description of a space, for the study's parent run and its log."""
    parts = []
    for name, d in space.items():
        if isinstance(d, CategoricalDistribution):
            parts.append(f"{name}={','.join(str(c) for c in d.choices)}")
        else:
            scale = ":log" if d.log else (f":{d.step}" if d.step not in (None, 1) else "")
            parts.append(f"{name}={d.low}:{d.high}{scale}")
    return " ".join(parts)


def parse_gammas(spec: str) -> list[float]:
    """`--gammas 0.3,0.5,0.7` -> [0.3, 0.5, 0.7], each in (0, 1]."""
    gammas: list[float] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        try:
            gamma = float(part)
        except ValueError:
            raise SpaceError(f"--gammas: {part!r} is not a number") from None
        if not 0.0 < gamma <= 1.0:
            raise SpaceError(f"--gammas: {gamma} is outside (0, 1]")
        if gamma not in gammas:
            gammas.append(gamma)
    if not gammas:
        raise SpaceError("--gammas: give at least one value, e.g. 0.3,0.5,0.7")
    return gammas


def parse_seeds(spec: str) -> list[int]:
    """`--seeds 3` -> [0, 1, 2]; `--seeds 0,7` -> [0, 7]."""
    try:
        if "," in spec:
            seeds = sorted({int(p) for p in spec.split(",") if p.strip()})
        else:
            seeds = list(range(int(spec)))
    except ValueError:
        raise SpaceError(f"--seeds: {spec!r} is neither a count nor a list of seeds") from None
    if not seeds or min(seeds) < 0:
        raise SpaceError(f"--seeds: need a count >= 1 or non-negative seeds, got {spec!r}")
    return seeds


def grid_points(gammas: Sequence[float], seeds: Sequence[int]) -> list[dict[str, Any]]:
    """The sweep's points, every gamma of the first seed before the next seed: the first
    trials already span the gammas."""
    return [{"gamma": gamma, "seed": seed} for seed in seeds for gamma in gammas]


def suggest(trial: optuna.Trial, space: dict[str, BaseDistribution]) -> dict[str, Any]:
    """The trial's params: fixed ones (a queued grid point or a retry) or sampled ones."""
    params: dict[str, Any] = {}
    for name, d in space.items():
        if isinstance(d, FloatDistribution):
            params[name] = trial.suggest_float(name, d.low, d.high, log=d.log, step=d.step)
        elif isinstance(d, IntDistribution):
            params[name] = trial.suggest_int(name, d.low, d.high, log=d.log, step=d.step)
        else:
            params[name] = trial.suggest_categorical(name, d.choices)
    return params


def grid_space() -> dict[str, BaseDistribution]:
    """What Optuna is told a sweep searches: gamma (each point's seed is queued with it)."""
    return {"gamma": GAMMA_DISTRIBUTION}


def describe_grid(points: Sequence[dict[str, Any]]) -> str:
    """The grid as the user gave it: `gamma=0.3,0.5,0.7 seed=0,1`."""
    values: dict[str, list[Any]] = {}
    for point in points:
        for name, value in point.items():
            if value not in values.setdefault(name, []):
                values[name].append(value)
    return " ".join(f"{name}={','.join(str(v) for v in vs)}" for name, vs in values.items())
