"""A study's objectives, chosen by name from M_global and the metric registry.

    m_global                   mean M_global over the last evaluation window   minimize
    fid, kid                   fid_N / kid_N at the count in --metrics          minimize
    diversity                  diversity_gap: |SSIM of samples - of real pairs|  minimize
    recon                      recon_psnr                                        maximize
    sharpness                  blur_effect                                       minimize
    precision, recall          precision_N / recall_N (fidelity / diversity)     maximize
    density, coverage          density_N / coverage_N (fidelity / diversity)     maximize
    a logged name              fid_5k, recon_ssim, diversity_ssim, ...          as the registry says

A metric an objective needs is added to the run's --metrics when missing, and so
is `diversity`, which the collapse rule reads.
"""

from __future__ import annotations

from dataclasses import dataclass

from began.metrics import (
    format_count,
    get_metric,
    known_metrics,
    metric_direction,
    objective_names,
    parse_metrics,
)
from began.metrics.registry import MetricRequest, find_logged, is_objective_name

M_GLOBAL = "m_global"


class ObjectiveError(ValueError):
    """An unknown or unusable objective name; the message names --objectives."""


@dataclass(frozen=True)
class Objective:
    name: str  # as the user wrote it: "fid"
    logged: str  # the logged name it reads: "fid_1k"; "m_global" for the window mean
    direction: str  # "minimize" or "maximize"

    def value(self, m_global: float, metrics: dict[str, float]) -> float:
        """This objective's value in an evaluation (`EvalReport.m_global`, `.metrics`)."""
        if self.logged == M_GLOBAL:
            return m_global
        return metrics[self.logged]


def _request_for(logged: str) -> MetricRequest | None:
    """The metric request that logs `logged`: "fid_5k" -> fid at 5k, "recon_ssim" -> recon."""
    found = find_logged(logged)
    if found is None:
        return None
    spec, template = found
    item = logged if template.endswith("{count}") else spec.name
    return parse_metrics(item)[0]


def _known_objectives() -> str:
    return ", ".join([M_GLOBAL, *known_metrics()]) + " (or a logged name such as fid_5k)"


def resolve_objectives(spec: str, metrics: str) -> tuple[list[Objective], str]:
    """Parse `--objectives` against the run's `--metrics`.

    Returns the objectives and the metrics spec the trials must compute (the given
    one, plus what the objectives and the collapse rule need).
    """
    requests = parse_metrics(metrics)
    names = [part.strip() for part in spec.split(",") if part.strip()]
    if not names:
        raise ObjectiveError(f"--objectives: give at least one of {_known_objectives()}")
    if len(set(names)) != len(names):
        raise ObjectiveError(f"--objectives: {spec!r} names an objective twice")
    objectives = []
    for name in names:
        objective, requests = _resolve(name, requests)
        objectives.append(objective)
    if not any(r.name == "diversity" for r in requests):
        requests = [*requests, *parse_metrics("diversity")]  # the collapse rule reads it
    return objectives, ",".join(_spec_item(r) for r in requests)


def _spec_item(request: MetricRequest) -> str:
    if request.num_samples == get_metric(request.name).default_count:
        return request.name
    return f"{request.name}_{format_count(request.num_samples)}"


def _resolve(name: str, requests: list[MetricRequest]) -> tuple[Objective, list[MetricRequest]]:
    if name in (M_GLOBAL, "m_global_mean"):
        return Objective(name, M_GLOBAL, "minimize"), requests
    if name in known_metrics():  # a metric family: its main figure, at the requested count
        matching = [r for r in requests if r.name == name]
        if not matching:
            matching = parse_metrics(name)
            requests = [*requests, *matching]
        logged = objective_names(matching[:1])[0]
        return Objective(name, logged, metric_direction(logged)), requests
    request = _request_for(name)
    if request is None or not is_objective_name(name):
        raise ObjectiveError(
            f"--objectives: unknown objective {name!r}; known: {_known_objectives()}"
        )
    if not any(name in objective_names([r]) for r in requests):
        requests = [*requests, request]
    return Objective(name, name, metric_direction(name)), requests
