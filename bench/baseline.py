"""The training step a user would write straight from the paper: the speed baseline.

Same architecture, batch and math as `began.core.step.train_step` (both updates from
the parameters of step t, L(G(z_G)) in the k update), written plainly: fp32,
a separate D forward per batch, D's gradients computed during G's backward and
thrown away, k as a Python float read back every step. No tricks.
"""

from __future__ import annotations

import torch
from torch import nn

from began.core.models import Discriminator, Generator


def plain_models(
    image_size: int, filters: int, hidden: int, repeat: int
) -> tuple[Generator, Discriminator]:
    """The paper's G and D as a user would write them: out-of-place ELU."""
    G = Generator(image_size, filters, hidden, repeat)
    D = Discriminator(image_size, filters, hidden, repeat)
    for module in [*G.modules(), *D.modules()]:
        if isinstance(module, nn.ELU):
            module.inplace = False
    return G, D


def l1_reconstruction(D: nn.Module, v: torch.Tensor) -> torch.Tensor:
    return torch.mean(torch.abs(v - D(v)))


def baseline_step(
    G: nn.Module,
    D: nn.Module,
    opt_G: torch.optim.Optimizer,
    opt_D: torch.optim.Optimizer,
    x: torch.Tensor,
    z_D: torch.Tensor,
    z_G: torch.Tensor,
    k: float,
    gamma: float,
    lambda_k: float,
) -> tuple[float, dict[str, float]]:
    """One step; returns the next k and the step's losses as Python floats."""
    fake_D = G(z_D).detach()
    loss_real = l1_reconstruction(D, x)
    loss_fake_D = l1_reconstruction(D, fake_D)
    loss_d = loss_real - k * loss_fake_D

    fake_G = G(z_G)
    loss_g = l1_reconstruction(D, fake_G)

    opt_G.zero_grad()
    loss_g.backward()  # also fills D's gradients, which the next lines discard
    opt_D.zero_grad()
    loss_d.backward()
    opt_D.step()
    opt_G.step()

    balance = gamma * loss_real.item() - loss_g.item()
    k = min(max(k + lambda_k * balance, 0.0), 1.0)
    m_global = loss_real.item() + abs(balance)
    losses = {
        "m_global": m_global,
        "loss_real": loss_real.item(),
        "loss_fake": loss_g.item(),
        "loss_d": loss_d.item(),
    }
    return k, losses
