"""The paper's equilibrium rule as small pure functions (docs/began.md, section 1).

    L(v)     = mean |v - D(v)|
    L_D      = L(x) - k_t * L(G(z_D))
    L_G      = L(G(z_G))
    k_t+1    = clip(k_t + lambda_k * (gamma * L(x) - L(G(z_G))), 0, 1)
    M_global = L(x) + |gamma * L(x) - L(G(z_G))|

All inputs and outputs are tensors so that nothing here forces a host sync. Each works
elementwise, so the same functions serve one run (scalars) and a pack of N trials
trained as one model (N-vectors of losses, k, gamma and lambda_k).
"""

from __future__ import annotations

import torch


def reconstruction_loss(v: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
    """L(v): mean absolute (L1) pixel error of the autoencoder D."""
    return (v - reconstruction).abs().mean()


def per_image_reconstruction_loss(v: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
    """L for each image of a batch: (B,) for (B, 3, S, S), (N, B) for a pack of N trials'
    batches (N, B, 3, S, S); its mean over part of a batch is L of that part."""
    return (v - reconstruction).abs().mean(dim=(-3, -2, -1))


def discriminator_loss(
    loss_real: torch.Tensor, loss_fake: torch.Tensor, k: torch.Tensor
) -> torch.Tensor:
    """L_D = L(x) - k_t L(G(z_D)); k is a constant here (it has no gradient)."""
    return loss_real - k * loss_fake


def generator_loss(loss_fake: torch.Tensor) -> torch.Tensor:
    """L_G = L(G(z_G))."""
    return loss_fake


def balance(
    loss_real: torch.Tensor, loss_fake: torch.Tensor, gamma: float | torch.Tensor
) -> torch.Tensor:
    """gamma L(x) - L(G(z)): positive when D reconstructs fakes too well; ~0 at equilibrium."""
    return gamma * loss_real - loss_fake


def update_k(
    k: torch.Tensor,
    loss_real: torch.Tensor,
    loss_fake: torch.Tensor,
    gamma: float | torch.Tensor,
    lambda_k: float | torch.Tensor,
) -> torch.Tensor:
    """k_t+1 = clip(k_t + lambda_k (gamma L(x) - L(G(z_G))), 0, 1)."""
    return (k + lambda_k * balance(loss_real, loss_fake, gamma)).clamp(0.0, 1.0)


def m_global(
    loss_real: torch.Tensor, loss_fake: torch.Tensor, gamma: float | torch.Tensor
) -> torch.Tensor:
    """M_global = L(x) + |gamma L(x) - L(G(z_G))|, the paper's convergence measure."""
    return loss_real + balance(loss_real, loss_fake, gamma).abs()
