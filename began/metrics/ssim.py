"""SSIM in torch, batched on the device; diversity and reconstruction quality built on it.

SSIM (Wang et al. 2004) with the standard settings: 11x11 Gaussian window,
sigma 1.5, K1 = 0.01, K2 = 0.03, images in [0, 1] (data range 1), population
(not sample) covariances, computed per RGB channel and averaged over channels
and over the "valid" window positions (no padding). This equals scikit-image's
`structural_similarity(..., gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=1, channel_axis=0)`.
Single-scale on purpose: MS-SSIM needs images of ~161 px or more, ours are 16-128 px.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.nn import functional as F

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
PSNR_MAX = 100.0  # dB reported for a perfect reconstruction (MSE 0 would give inf)


def _gaussian_window(device: torch.device) -> torch.Tensor:
    offsets = torch.arange(SSIM_WINDOW, dtype=torch.float32, device=device) - SSIM_WINDOW // 2
    window = torch.exp(-(offsets**2) / (2.0 * SSIM_SIGMA**2))
    return window / window.sum()  # (11,)


def _blur(x: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter, valid positions only: (B, C, H, W) -> (B, C, H-10, W-10)."""
    channels = x.shape[1]
    window = _gaussian_window(x.device)
    horizontal = window.view(1, 1, 1, -1).expand(channels, 1, 1, SSIM_WINDOW)  # (C, 1, 1, 11)
    vertical = window.view(1, 1, -1, 1).expand(channels, 1, SSIM_WINDOW, 1)  # (C, 1, 11, 1)
    x = F.conv2d(x, horizontal, groups=channels)  # (B, C, H, W-10)
    return F.conv2d(x, vertical, groups=channels)  # (B, C, H-10, W-10)


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM (B,) of float images x, y (B, C, H, W) in [0, 1]; H, W >= 11."""
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f"ssim needs two (B, C, H, W) of one shape, got {x.shape}, {y.shape}")
    if min(x.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"ssim needs images of at least {SSIM_WINDOW} px, got {tuple(x.shape)}")
    x, y = x.float(), y.float()
    batch = x.shape[0]
    # One filter pass over the five maps SSIM needs.
    moments = _blur(torch.cat([x, y, x * x, y * y, x * y]))  # (5B, C, H', W')
    mu_x, mu_y, xx, yy, xy = moments.split(batch)
    var_x = xx - mu_x * mu_x  # (B, C, H', W')
    var_y = yy - mu_y * mu_y
    cov_xy = xy - mu_x * mu_y
    c1, c2 = SSIM_K1**2, SSIM_K2**2  # (K L)^2 with data range L = 1
    numerator = (2.0 * mu_x * mu_y + c1) * (2.0 * cov_xy + c2)
    denominator = (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    return (numerator / denominator).mean(dim=(1, 2, 3))  # (B,)


def uint8_to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, S, S) -> float32 in [0, 1]."""
    return images.float() / 255.0


def diversity_ssim(
    images: torch.Tensor,
    device: torch.device,
    batch_size: int = 64,
    seed: int = 0,
) -> float:
    """Mean SSIM over N // 2 random disjoint pairs of uint8 images (N, 3, S, S).

    1 for identical images (a collapsed generator), ~0 for independent noise.
    """
    num_pairs = images.shape[0] // 2
    if num_pairs < 1:
        raise ValueError("diversity needs at least 2 images")
    order = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed))
    first, second = order[:num_pairs], order[num_pairs : 2 * num_pairs]
    total = torch.zeros((), device=device)
    for start in range(0, num_pairs, batch_size):
        a = uint8_to_unit(images[first[start : start + batch_size]].to(device))  # (B, 3, S, S)
        b = uint8_to_unit(images[second[start : start + batch_size]].to(device))  # (B, 3, S, S)
        total += ssim(a, b).sum()
    return total.item() / num_pairs


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (B,) in dB of images in [0, 1] (data range 1), capped at PSNR_MAX."""
    mse = (x.float() - y.float()).pow(2).flatten(1).mean(dim=1)  # (B,)
    floor = 10.0 ** (-PSNR_MAX / 10.0)  # the MSE that gives PSNR_MAX
    return -10.0 * torch.log10(mse.clamp_min(floor))


@torch.no_grad()
def reconstruction_quality(
    images: torch.Tensor,
    reconstruct: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device,
    batch_size: int = 64,
) -> tuple[float, float]:
    """(mean PSNR, mean SSIM) of D(x) against x over uint8 images (M, 3, S, S).

    x is fed to D in [-1, 1]; both x and D(x) are compared in [0, 1]. D(x) is
    clamped to [0, 1] but not quantised (that would put a ~59 dB ceiling on PSNR).
    """
    if images.shape[0] < 1:
        raise ValueError("recon needs held-out images (holdout > 0)")
    psnr_sum = torch.zeros((), device=device)
    ssim_sum = torch.zeros((), device=device)
    for start in range(0, images.shape[0], batch_size):
        x = uint8_to_unit(images[start : start + batch_size].to(device))  # (B, 3, S, S) in [0, 1]
        reconstruction = reconstruct(x * 2.0 - 1.0)  # (B, 3, S, S) in ~[-1, 1]
        reconstruction = ((reconstruction.float() + 1.0) / 2.0).clamp(0.0, 1.0)
        psnr_sum += psnr(x, reconstruction).sum()
        ssim_sum += ssim(x, reconstruction).sum()
    count = images.shape[0]
    return psnr_sum.item() / count, ssim_sum.item() / count
