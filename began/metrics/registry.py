"""Metric registry, in the style of stylegan2-ada's ``metric_main`` (the built-ins: builtin.py).

A metric family registers itself by name with ``@register_metric``; the same
registry validates a ``--metrics`` spec at config time, runs the metrics during
training and scores checkpoints afterwards. A spec is comma-separated items,
each ``NAME`` or ``NAME_COUNT`` with COUNT like ``500``, ``1k`` or ``5k``:
``"fid_1k,kid_1k,diversity,recon,sharpness"``.

Logged names are an API (Optuna studies choose objectives by them), and the
registry knows each one's direction: ``metric_direction("fid_5k") == "minimize"``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from began.metrics.context import EvalContext

MetricFn = Callable[["EvalContext", int], dict[str, float]]

DIRECTIONS = ("minimize", "maximize")

# Logged names that are not quality metrics but that studies optimise too:
# m_global per step, m_global_mean per evaluation window.
_EXTRA_DIRECTIONS = {"m_global": "minimize", "m_global_mean": "minimize"}

# Logged figures that describe a metric but are not a goal: the spread of KID over
# subsets, and the same measure on real images (a reference, not something G controls).
_NOT_OBJECTIVES = ("_std", "_real")

_COUNT_RE = re.compile(r"^([1-9][0-9]*)(k?)$")


@dataclass(frozen=True)
class MetricRequest:
    """One metric to compute on `num_samples` images (generated or real, see the metric)."""

    name: str
    num_samples: int


@dataclass(frozen=True)
class MetricSpec:
    name: str
    fn: MetricFn
    default_count: int
    min_count: int
    # Logged-name templates ("fid_{count}") -> "minimize" | "maximize".
    logged: dict[str, str]
    uses_samples: bool  # draws generated samples (recon uses held-out real images only)
    uses_feature_network: bool  # scored on Inception (or --feature-network) features

    def logged_names(self, num_samples: int) -> list[str]:
        return [t.format(count=format_count(num_samples)) for t in self.logged]


_REGISTRY: dict[str, MetricSpec] = {}


def register_metric(
    name: str,
    *,
    default_count: int,
    logged: dict[str, str],
    min_count: int = 1,
    uses_samples: bool = True,
    uses_feature_network: bool = False,
) -> Callable[[MetricFn], MetricFn]:
    """Decorator: register `fn(ctx, num_samples) -> {logged name: value}` under `name`."""
    if "_" in name:
        raise ValueError(f"metric name {name!r} must not contain '_' (it separates the count)")
    for template, direction in logged.items():
        if direction not in DIRECTIONS:
            raise ValueError(f"{template}: direction must be one of {DIRECTIONS}")

    def decorator(fn: MetricFn) -> MetricFn:
        _REGISTRY[name] = MetricSpec(
            name, fn, default_count, min_count, dict(logged), uses_samples, uses_feature_network
        )
        return fn

    return decorator


def get_metric(name: str) -> MetricSpec:
    return _REGISTRY[name]


def known_metrics() -> list[str]:
    return sorted(_REGISTRY)


def format_count(count: int) -> str:
    """1000 -> "1k", 5000 -> "5k", 500 -> "500", 1500 -> "1500"."""
    return f"{count // 1000}k" if count >= 1000 and count % 1000 == 0 else str(count)


def parse_count(text: str) -> int:
    """ "1k" -> 1000, "500" -> 500; ValueError on anything else."""
    match = _COUNT_RE.match(text)
    if match is None:
        raise ValueError(f"bad count {text!r}")
    return int(match.group(1)) * (1000 if match.group(2) else 1)


def _spec_error(message: str) -> ValueError:
    known = ", ".join(known_metrics())
    return ValueError(
        f"metrics: {message}; known metrics: {known} (optionally NAME_COUNT, e.g. fid_5k, kid_1k)"
    )


def _parse_item(item: str) -> MetricRequest:
    if item in _REGISTRY:
        return MetricRequest(item, _REGISTRY[item].default_count)
    name, _, count_text = item.rpartition("_")
    if name not in _REGISTRY:
        raise _spec_error(f"unknown metric {item!r}")
    try:
        count = parse_count(count_text)
    except ValueError:
        raise _spec_error(f"bad sample count {count_text!r} in {item!r}") from None
    spec = _REGISTRY[name]
    if count < spec.min_count:
        raise _spec_error(f"{item!r} needs at least {spec.min_count} samples")
    return MetricRequest(name, count)


def parse_metrics(spec: str) -> list[MetricRequest]:
    """Parse "fid_1k,kid_1k,diversity" into requests, in order, without duplicates.

    Raises ValueError (one line naming `metrics` and listing the known names)
    on unknown names, bad counts, or two requests that would log the same name.
    """
    requests: list[MetricRequest] = []
    owners: dict[str, MetricRequest] = {}
    for raw in spec.split(","):
        item = raw.strip()
        if not item:
            continue  # "" and trailing commas mean nothing
        request = _parse_item(item)
        if request in requests:
            continue
        for logged in _REGISTRY[request.name].logged_names(request.num_samples):
            if logged in owners:
                raise _spec_error(f"{item!r} and an earlier item both log {logged!r}")
            owners[logged] = request
        requests.append(request)
    return requests


def logged_names(requests: list[MetricRequest]) -> list[str]:
    """The names `evaluate(requests, ...)` returns, in order."""
    return [n for r in requests for n in _REGISTRY[r.name].logged_names(r.num_samples)]


def objective_names(requests: list[MetricRequest]) -> list[str]:
    """The logged names of `requests` that a study may optimise (no _std, no _real)."""
    return [name for name in logged_names(requests) if is_objective_name(name)]


def is_objective_name(logged_name: str) -> bool:
    """False for the figures that describe a metric but are no goal (_std, _real)."""
    return not logged_name.endswith(_NOT_OBJECTIVES)


def quality_name_prefixes() -> list[str]:
    """The start of every logged quality-metric name, in registration order (FID first):
    what a report looks for among a run's final metrics."""
    prefixes = [template.split("{")[0] for spec in _REGISTRY.values() for template in spec.logged]
    return list(dict.fromkeys(prefixes))


def find_logged(logged_name: str) -> tuple[MetricSpec, str] | None:
    """The metric that logs `logged_name` and the template it matches ("fid_5k" ->
    fid, "fid_{count}"), or None."""
    count_pattern = r"[1-9][0-9]*k?"
    for spec in _REGISTRY.values():
        for template in spec.logged:
            pattern = re.escape(template).replace(re.escape("{count}"), count_pattern)
            if re.fullmatch(pattern, logged_name):
                return spec, template
    return None


def metric_direction(logged_name: str) -> str:
    """ "minimize" or "maximize" for a logged name ("fid_5k", "recon_psnr", "m_global", ...)."""
    if logged_name in _EXTRA_DIRECTIONS:
        return _EXTRA_DIRECTIONS[logged_name]
    found = find_logged(logged_name)
    if found is None:
        raise ValueError(f"metric_direction: unknown logged metric name {logged_name!r}")
    spec, template = found
    return spec.logged[template]
