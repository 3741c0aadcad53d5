"""What a trial is called wherever a person reads it: `t7 gamma=0.41 lk=3.2e-3 d=2`.

The same name is the trial's MLflow run name (so chart legends and image cards say which
gamma they show), the first word of its lines in the command's output, and the start of
its run's one-line description. Only what the study varies is in it: a grid of four
gammas with one seed names gamma alone.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from optuna.trial import FrozenTrial

from studies.schema import SEED_ATTR

# Short names of the fields a study may vary, where the full name would crowd a legend.
SHORT_NAMES = {
    "lambda_k": "lk",
    "repeat": "d",  # convolutions per scale: the conv depth
    "filters": "f",
    "hidden": "h",
    "batch_size": "bs",
    "adam_beta1": "b1",
    "adam_beta2": "b2",
    "k_init": "k0",
    "shared_fake": "sf",
    "lr_min": "lr_min",
}
MAX_DESCRIPTION = 300  # characters: a description is a line, not the parameter list


def short_value(value: Any) -> str:
    """0.5 -> "0.5", 0.41234 -> "0.412", 0.0032 -> "3.2e-3", 64 -> "64", True -> "true"."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if value != 0 and abs(value) < 0.01:
            mantissa, exponent = f"{value:.1e}".split("e")
            return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
        return f"{value:.3g}"
    return str(value)


def trial_name(number: int, point: dict[str, Any], varied: Iterable[str]) -> str:
    """`t3 gamma=0.5 seed=1`: the trial's number and its values of what the study varies."""
    shown = [f"{SHORT_NAMES.get(n, n)}={short_value(point[n])}" for n in varied if n in point]
    return " ".join([f"t{number}", *shown])


def objective_values(names: list[str], values: list[float] | None) -> str:
    """`diversity_gap=0.0412`: a trial's objective values as the output and runs show them."""
    if values is None:
        return ""
    return " ".join(f"{n}={v:.4g}" for n, v in zip(names, values, strict=True))


def point_of_trial(trial: FrozenTrial) -> dict[str, Any]:
    """A trial's values of what a study varies: its params and, in a sweep, its seed."""
    seed = trial.user_attrs.get(SEED_ATTR)
    return {**trial.params, **({SEED_ATTR: seed} if seed is not None else {})}


def description(
    name: str, study: str, objectives: str, outcome: str = "", warning: str | None = None
) -> str:
    """The run's one-line description (MLflow's `mlflow.note.content`): which trial of
    which study, what it optimises and, once it ended, how, with a collapse flag first."""
    parts = [f"{name} of study {study}", f"objective {objectives}"]
    if outcome:
        parts.append(outcome)
    line = "; ".join(parts)
    if warning:
        flag = warning.split(":")[0].upper()  # "COLLAPSED" or "NEAR COLLAPSE"
        line = f"{flag}. {line}"
    return line[:MAX_DESCRIPTION]
