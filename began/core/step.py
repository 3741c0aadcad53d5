"""One BEGAN training step, a plain function of models, optimizers, batch and state.

Both updates of step t use the parameters of step t, as the paper's equations do:
L_D and L_G are computed first, then D and G step together, then k moves. The
paper's form draws separate z_D and z_G; ``shared_fake`` uses one fake batch for
both updates, as the TF reference did (cheaper: one G and one D forward fewer).

Nothing here reads a value back to the host: k, the losses and M_global stay on
the device until the trainer logs them.

`stacked_losses` is the same step's forward for a pack of N trials of one architecture
as one stacked model (`began.core.stacked`, `began.training.pack`): the losses, k, gamma
and lambda_k are N-vectors, and each trial's loss reaches only its own weights (the
backward of a sum gives every term the gradient it has alone).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from began.core.equilibrium import (
    balance,
    discriminator_loss,
    generator_loss,
    m_global,
    per_image_reconstruction_loss,
    update_k,
)
from began.core.stacked import StackedLayout, StackedWeights

# What train_step reports each step, in this order; all 0-d tensors on the device.
STEP_METRICS = ("m_global", "k", "loss_d", "loss_g", "loss_real", "loss_fake", "balance")


class StepRule(Protocol):
    """What a step reads of a config (a TrainConfig)."""

    gamma: float
    lambda_k: float
    shared_fake: bool
    precision: str


class Optimizer(Protocol):
    def zero_grad(self, set_to_none: bool = True) -> None: ...
    def step(self) -> object: ...


@dataclass(frozen=True)
class StackedRule:
    """The rule of a pack of N trials: gamma and lambda_k as (N,) vectors on the device."""

    gamma: torch.Tensor
    lambda_k: torch.Tensor
    trial_index: torch.Tensor  # (P,) long: the trial of each element of the flat weights
    shared_fake: bool
    precision: str

    def trial_scale(self, per_trial: torch.Tensor) -> torch.Tensor:
        """An (N,) vector spread over the flat weights: element e gets its trial's value."""
        return per_trial[self.trial_index]


@dataclass
class TrainState:
    """Training state that is not inside a module or optimizer."""

    k: torch.Tensor  # 0-d float tensor on the device: k_t of the next step
    step: int = 0  # steps completed


@contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Forward through `module` without recording gradients for its weights.

    Gradients still flow to the module's input, which is what L_G needs: G is
    trained through D, but L_G must not change D.
    """
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def _autocast(x: torch.Tensor, precision: str) -> torch.autocast:
    return torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def train_step(
    G: nn.Module,
    D: nn.Module,
    opt_G: Optimizer,
    opt_D: Optimizer,
    x: torch.Tensor,
    z_D: torch.Tensor,
    z_G: torch.Tensor,
    state: TrainState,
    cfg: StepRule,
) -> tuple[TrainState, dict[str, torch.Tensor]]:
    """One step on a real batch x (B, 3, S, S) in [-1, 1] and noise z_D, z_G (B, h).

    Returns the next state and the step's metrics (see STEP_METRICS); `k` in
    the metrics is the k_t this step used, the state carries k_t+1.
    """
    opt_D.zero_grad(set_to_none=True)
    opt_G.zero_grad(set_to_none=True)
    batch = x.shape[0]
    with _autocast(x, cfg.precision):
        if cfg.shared_fake:
            fake = G(z_G)  # (B, 3, S, S): one fake batch for both updates
            loss_real = per_image_reconstruction_loss(x, D(x).float()).mean()
            loss_fake = per_image_reconstruction_loss(fake, D(fake).float()).mean()
            loss_fake_D = loss_fake
        else:
            with torch.no_grad():
                fake_D = G(z_D)  # (B, 3, S, S), a constant for the D update
            fake_G = G(z_G)  # (B, 3, S, S)
            # (2B, 3, S, S): one D forward for real and fake
            both = torch.cat([x, fake_D])
            per_image = per_image_reconstruction_loss(both, D(both).float())  # (2B,)
            loss_real = per_image[:batch].mean()
            loss_fake_D = per_image[batch:].mean()
            with frozen(D):
                loss_fake = per_image_reconstruction_loss(fake_G, D(fake_G).float()).mean()

    k = state.k
    loss_d = discriminator_loss(loss_real, loss_fake_D, k)
    loss_g = generator_loss(loss_fake)
    if cfg.shared_fake:
        # One D graph carries both losses: each backward writes only its own network.
        torch.autograd.backward(loss_d, inputs=list(D.parameters()), retain_graph=True)
        torch.autograd.backward(loss_g, inputs=list(G.parameters()))
    else:
        # loss_d reaches only D (fake_D is a constant), loss_g only G (D was frozen).
        (loss_d + loss_g).backward()
    opt_D.step()
    opt_G.step()

    with torch.no_grad():
        metrics, next_k = _metrics_and_next_k(loss_real, loss_fake, loss_d, loss_g, k, cfg)
    return TrainState(k=next_k, step=state.step + 1), metrics


def _metrics_and_next_k(
    loss_real: torch.Tensor,
    loss_fake: torch.Tensor,
    loss_d: torch.Tensor,
    loss_g: torch.Tensor,
    k: torch.Tensor,
    rule: StepRule | StackedRule,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """A step's metrics (STEP_METRICS, detached) and k_t+1, from its losses and k_t:
    scalars for one run, N-vectors for a pack."""
    loss_real, loss_fake = loss_real.detach(), loss_fake.detach()
    metrics = {
        "m_global": m_global(loss_real, loss_fake, rule.gamma),
        "k": k,
        "loss_d": loss_d.detach(),
        "loss_g": loss_g.detach(),
        "loss_real": loss_real,
        "loss_fake": loss_fake,
        "balance": balance(loss_real, loss_fake, rule.gamma),
    }
    return metrics, update_k(k, loss_real, loss_fake, rule.gamma, rule.lambda_k)


def stacked_losses(
    layout: StackedLayout,
    weights: StackedWeights,
    x: torch.Tensor,
    z_D: torch.Tensor,
    z_G: torch.Tensor,
    k: torch.Tensor,
    rule: StackedRule,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`train_step`'s forward for N trials as one stacked model (`began.core.stacked`):
    x is (N, B, 3, S, S), z_D and z_G (N, B, h), k (N,). Returns the loss to differentiate,
    the step's metrics as an (N, len(STEP_METRICS)) tensor, and k_t+1.

    The loss's backward gives each trial's G and D exactly the gradients of its own step:
    into the trainable weights, and with `shared_fake` D's gradient of L(G(z)) apart, into
    the shadow copy, for `combine_gradients` to weigh by -k_t. One backward, no retained
    graph, nothing read back: the function compiles as one graph (fullgraph=True).
    """
    batch = x.shape[1]
    trainable, constant = weights.trainable, weights.constant
    with _autocast(x, rule.precision):
        if rule.shared_fake:
            fake = layout.generator(trainable, z_G)  # one fake batch for both updates
            reconstruction = layout.discriminator(trainable, x).float()
            loss_real = per_image_reconstruction_loss(x, reconstruction).mean(dim=-1)
            # D(fake) with the shadow weights: G gets the gradient of L(fake) through its
            # input (its L_G), D's own share (-k L(fake) in L_D) lands in the shadow.
            reconstruction = layout.discriminator(weights.shadow, fake).float()
            loss_fake = per_image_reconstruction_loss(fake, reconstruction).mean(dim=-1)
            loss_fake_D = loss_fake
            total = (loss_real + loss_fake).sum()
        else:
            fake_D = layout.generator(constant, z_D)  # a constant for the D update
            fake_G = layout.generator(trainable, z_G)
            both = torch.cat([x, fake_D], dim=1)  # (N, 2B, 3, S, S): one D forward
            reconstruction = layout.discriminator(trainable, both).float()
            per_image = per_image_reconstruction_loss(both, reconstruction)  # (N, 2B)
            loss_real = per_image[:, :batch].mean(dim=-1)
            loss_fake_D = per_image[:, batch:].mean(dim=-1)
            # D as a constant: L_G trains G through D but must not change D.
            reconstruction = layout.discriminator(constant, fake_G).float()
            loss_fake = per_image_reconstruction_loss(fake_G, reconstruction).mean(dim=-1)
            total = None
    loss_d = discriminator_loss(loss_real, loss_fake_D, k)
    loss_g = generator_loss(loss_fake)
    if total is None:
        total = (loss_d + loss_g).sum()  # loss_d reaches only D, loss_g only G
    metrics, next_k = _metrics_and_next_k(loss_real, loss_fake, loss_d, loss_g, k, rule)
    return total, torch.stack([metrics[name] for name in STEP_METRICS], dim=1), next_k


@torch.no_grad()
def combine_gradients(
    grad: torch.Tensor, shadow_grad: torch.Tensor | None, k: torch.Tensor, rule: StackedRule
) -> None:
    """With `shared_fake`: add D's share of L_D through the fake batch, -k_t times the
    gradient of L(G(z)) that D's shadow weights received, to the flat gradient `grad`."""
    if shadow_grad is not None:
        grad.sub_(rule.trial_scale(k) * shadow_grad)
