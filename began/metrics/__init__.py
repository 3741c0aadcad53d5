"""Image-quality metrics: FID, KID, diversity (SSIM), reconstruction, sharpness, and
precision, recall, density and coverage (fidelity and diversity apart).

    requests = parse_metrics(cfg.metrics)          # at config time: fails early on typos
    values = evaluate(requests, EvalInputs(...))   # {logged name: float}
    metric_direction("fid_1k")                     # "minimize"

No tracking here: the training loop logs what `evaluate` returns.
"""

from __future__ import annotations

from began.metrics.builtin import evaluate
from began.metrics.context import EvalInputs
from began.metrics.registry import (
    MetricRequest,
    format_count,
    get_metric,
    known_metrics,
    logged_names,
    metric_direction,
    objective_names,
    parse_metrics,
    register_metric,
)

__all__ = [
    "EvalInputs",
    "MetricRequest",
    "evaluate",
    "format_count",
    "get_metric",
    "known_metrics",
    "logged_names",
    "metric_direction",
    "objective_names",
    "parse_metrics",
    "register_metric",
]
