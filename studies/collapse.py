"""Near collapse: samples that are variations of a few faces, short of the identical
images the health rule prunes (diversity SSIM >= --collapse-ssim, 0.9).

Pairwise SSIM of samples means little alone: it is read against the real images' own
figure, as the share of the way from their variety to identical images,

    share = (ssim - real) / (1 - real)      0: as varied as the real images, 1: identical.

A trial is near collapse when share >= NEAR_COLLAPSE_SHARE: the demo's gamma 0.3 trial
(0.858 against 0.241 for real faces: 0.81) is, its gamma 0.5 trial (0.610: 0.49) is not.

Where the k-NN metrics were computed, a trial is near collapse too when coverage or
recall is below LOW_REACH while precision or density (at the same count) is at least
ON_MANIFOLD: real-looking samples that reach few of the real images. When precision and
density are low as well, the samples are off the real images altogether: a fidelity
failure (FID and precision show it), not collapse, and it is not flagged here.
"""

from __future__ import annotations

import math

from began.metrics.registry import find_logged
from studies.pruning import HealthRule

NEAR_COLLAPSE_SHARE = 0.75
LOW_REACH = 0.1  # coverage or recall below this: the samples reach < 10% of the real images
ON_MANIFOLD = 0.5  # precision or density at least this: the samples look like real ones
MEANING = (
    "the generator repeats a few faces (near mode collapse): its samples are far less "
    "varied than the real ones"
)
_REACH = ("coverage", "recall")
_FIDELITY = ("precision", "density")


def ssim_share(final: dict[str, float]) -> float | None:
    """How far the samples' pairwise SSIM is from the real images' towards 1 (identical);
    None without both figures or when the real images already score 1."""
    ssim, real = final.get("diversity_ssim"), final.get("diversity_ssim_real")
    if ssim is None or real is None or not math.isfinite(ssim) or not real < 1.0:
        return None
    return (ssim - real) / (1.0 - real)


def _low_reach(final: dict[str, float]) -> list[str]:
    """'coverage_1k 0.04 with precision_1k 0.82' for each reach figure below LOW_REACH
    whose fidelity figure at the same count says the samples look real."""
    found = []
    for name, value in final.items():
        metric = find_logged(name)
        if metric is None or metric[0].name not in _REACH or not value < LOW_REACH:
            continue
        count = name.removeprefix(f"{metric[0].name}_")
        fidelity = [(f"{m}_{count}", final.get(f"{m}_{count}", math.nan)) for m in _FIDELITY]
        real_looking = [(n, v) for n, v in fidelity if v >= ON_MANIFOLD]
        if real_looking:
            found.append(f"{name} {value:.3f} with {real_looking[0][0]} {real_looking[0][1]:.3f}")
    return found


def near_collapse_signs(final: dict[str, float]) -> list[str]:
    """The signs of near collapse in a trial's final metrics, in words; [] when none."""
    signs = []
    share = ssim_share(final)
    if share is not None and share >= NEAR_COLLAPSE_SHARE:
        signs.append(
            f"diversity SSIM {final['diversity_ssim']:.3f} vs {final['diversity_ssim_real']:.3f}"
            f" for real images, {share:.0%} of the way to identical samples"
        )
    return signs + _low_reach(final)


def is_collapsed(final: dict[str, float], collapse_ssim: float) -> bool:
    """The health rule's collapse: diversity SSIM at or above --collapse-ssim."""
    ssim = final.get("diversity_ssim")
    return ssim is not None and ssim >= collapse_ssim


def collapse_flag(
    final: dict[str, float], collapse_ssim: float = HealthRule.collapse_ssim
) -> str | None:
    """The warning in a few words, for a trial attribute and a table cell:
    "near collapse: diversity SSIM 0.858, 81% of the way to identical"; None when none."""
    if is_collapsed(final, collapse_ssim):
        return f"collapsed: diversity SSIM {final['diversity_ssim']:.3f} >= {collapse_ssim:g}"
    share = ssim_share(final)
    if share is not None and share >= NEAR_COLLAPSE_SHARE:
        ssim = final["diversity_ssim"]
        return f"near collapse: diversity SSIM {ssim:.3f}, {share:.0%} of the way to identical"
    reach = _low_reach(final)
    return f"near collapse: {reach[0]}" if reach else None


def collapse_warning(
    final: dict[str, float], collapse_ssim: float = HealthRule.collapse_ssim
) -> str | None:
    """The value of a trial's `collapse_warning` tag (studies.schema), or None when its
    final metrics show neither collapse nor near collapse."""
    if is_collapsed(final, collapse_ssim):
        real = final.get("diversity_ssim_real", math.nan)
        return (
            f"collapsed: diversity SSIM {final['diversity_ssim']:.3f} >= {collapse_ssim:g} "
            f"(real images {real:.3f}): the samples look alike"
        )
    signs = near_collapse_signs(final)
    return f"near collapse: {'; '.join(signs)}: {MEANING}" if signs else None
