"""The registered metrics and `evaluate`, which runs a parsed spec on one G and D.

Logged names (an API: studies pick objectives by them) and default counts:

    fid_{count}                       minimize  count = generated samples (default 1000)
    kid_{count}, kid_{count}_std      minimize  (default 1000; 100 subsets of min(1000, n))
    diversity_ssim[, _real]           minimize  256 images -> 128 disjoint pairs
    diversity_gap                     minimize  |diversity_ssim - diversity_ssim_real|
    recon_psnr, recon_ssim            maximize  held-out images, up to 1000
    blur_effect[, _real]              minimize  256 images
    precision_{count}, recall_{count} maximize  k-NN manifolds, k = 3 (default 1000)
    density_{count}, coverage_{count} maximize  real k-NN balls, k = 5 (default 1000)

The `_real` figures are the same measure on real images: the value a good
generator should approach (lowest is not best for diversity: noise scores ~0).
The last four are scored on the same features as FID, against a fixed random subset
of the reference features as large as the generated set (began/metrics/manifold.py).
"""

from __future__ import annotations

from began.metrics.context import EvalContext, EvalInputs
from began.metrics.frechet import fid_to_features, kernel_inception_distance
from began.metrics.manifold import (
    DC_NEIGHBOURS,
    METRICS,
    as_tensor,
    cached_real_manifold,
    manifold_metrics,
)
from began.metrics.registry import MetricRequest, format_count, get_metric, register_metric
from began.metrics.sharpness import mean_blur_effect
from began.metrics.ssim import diversity_ssim, reconstruction_quality


@register_metric(
    "fid",
    default_count=1000,
    min_count=2,
    logged={"fid_{count}": "minimize"},
    uses_feature_network=True,
)
def fid(ctx: EvalContext, num_samples: int) -> dict[str, float]:
    """FID of num_samples generated images against the cached real statistics."""
    real = ctx.real_stats()
    value = fid_to_features(ctx.sample_features(num_samples), real.mu, real.sigma)
    return {f"fid_{format_count(num_samples)}": value}


@register_metric(
    "kid",
    default_count=1000,
    min_count=2,
    logged={"kid_{count}": "minimize", "kid_{count}_std": "minimize"},
    uses_feature_network=True,
)
def kid(ctx: EvalContext, num_samples: int) -> dict[str, float]:
    """KID (mean and std over subsets) of num_samples generated images against the real features."""
    mean, std = kernel_inception_distance(
        ctx.sample_features(num_samples), ctx.real_stats().features
    )
    name = f"kid_{format_count(num_samples)}"
    return {name: mean, f"{name}_std": std}


@register_metric(
    "diversity",
    default_count=256,
    min_count=2,
    logged={  # the gap first: it is the figure a study optimises
        "diversity_gap": "minimize",
        "diversity_ssim": "minimize",
        "diversity_ssim_real": "minimize",
    },
)
def diversity(ctx: EvalContext, num_samples: int) -> dict[str, float]:
    """Mean SSIM of disjoint sample pairs (-> 1 as G collapses), of real pairs, and the
    distance between the two: the objective, since noise scores lower than real faces."""
    device, batch = ctx.device, ctx.batch_size
    generated = diversity_ssim(ctx.samples(num_samples), device, batch)
    real = diversity_ssim(ctx.real_subset(num_samples), device, batch)
    return {"diversity_gap": abs(generated - real), "diversity_ssim": generated,
            "diversity_ssim_real": real}  # fmt: skip


@register_metric(
    "recon",
    default_count=1000,
    logged={"recon_psnr": "maximize", "recon_ssim": "maximize"},
    uses_samples=False,
)
def recon(ctx: EvalContext, num_samples: int) -> dict[str, float]:
    """PSNR (dB, data range 1, capped at 100) and SSIM of D(x) on up to num_samples held-out x."""
    heldout = ctx.inputs.heldout_images[:num_samples]  # (M, 3, S, S) uint8
    value_psnr, value_ssim = reconstruction_quality(
        heldout, ctx.inputs.reconstruct, ctx.device, ctx.batch_size
    )
    return {"recon_psnr": value_psnr, "recon_ssim": value_ssim}


@register_metric(
    "sharpness",
    default_count=256,
    logged={"blur_effect": "minimize", "blur_effect_real": "minimize"},
)
def sharpness(ctx: EvalContext, num_samples: int) -> dict[str, float]:
    """Mean blur_effect (0 sharp, 1 blurry) of samples, and of real images."""
    return {
        "blur_effect": mean_blur_effect(ctx.samples(num_samples)),
        "blur_effect_real": mean_blur_effect(ctx.real_subset(num_samples)),
    }


def _manifold_scores(ctx: EvalContext, num_samples: int) -> dict[str, float]:
    """All four k-NN figures at one count: one distance pass shared by the four metrics."""

    def compute() -> dict[str, float]:
        real = cached_real_manifold(ctx.real_stats(), num_samples, ctx.device)
        fake = as_tensor(ctx.sample_features(num_samples), ctx.device)  # (n, D)
        return manifold_metrics(real, fake)

    return ctx.shared(("manifold", num_samples), compute)


def _register_manifold_metric(name: str) -> None:
    def metric(ctx: EvalContext, num_samples: int) -> dict[str, float]:
        return {f"{name}_{format_count(num_samples)}": _manifold_scores(ctx, num_samples)[name]}

    metric.__doc__ = f"{name} of num_samples generated images (began/metrics/manifold.py)."
    register_metric(
        name,
        default_count=1000,
        min_count=DC_NEIGHBOURS + 1,  # k-NN radii need more than k points, k = 5 at most
        logged={f"{name}_{{count}}": "maximize"},
        uses_feature_network=True,
    )(metric)


for _name in METRICS:  # registered after the others: reports list FID, KID, ... first
    _register_manifold_metric(_name)


def evaluate(requests: list[MetricRequest], inputs: EvalInputs) -> dict[str, float]:
    """Run the requested metrics on one G and D; returns {logged name: value}.

    Samples are generated once (as many as the largest request needs) and shared;
    features of samples are extracted once and shared by every metric on features.
    """
    if not requests:
        return {}
    if any(r.name == "recon" for r in requests) and inputs.heldout_images.shape[0] == 0:
        raise ValueError("metrics: recon needs held-out images, but heldout_images is empty")
    ctx = EvalContext(inputs)
    needed = [r.num_samples for r in requests if get_metric(r.name).uses_samples]
    if needed:
        ctx.samples(max(needed))  # one generation pass for every metric
    results: dict[str, float] = {}
    for request in requests:
        results.update(get_metric(request.name).fn(ctx, request.num_samples))
    return results
