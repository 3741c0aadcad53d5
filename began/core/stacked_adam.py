"""Adam for the flat weights of N trials (`began.core.stacked`): one update of the whole
pack that is each trial's own `torch.optim.Adam` (no weight decay, no amsgrad), with its
own lr, betas and step count. No I/O here.

The per-trial scalars live on the device as N-vectors and reach the elements through
`trial_index` (the trial of each element), so a step reads nothing back to the host and
dispatches the same dozen operations for 1 trial or 16.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class StackedAdam:
    """Adam's state for N trials' flat weights. The N-vectors may change between steps
    (`lr` when a trial's schedule halves it); the per-element tensors are derived from
    them when the pack is formed."""

    trial_index: torch.Tensor  # (P,) long: the trial of each element
    lr: torch.Tensor  # (N,) float64
    beta1: torch.Tensor  # (N,) float64
    beta2: torch.Tensor  # (N,) float64
    eps: float
    steps: torch.Tensor  # (N,) float32: Adam steps taken, as torch.optim.Adam's state['step']
    exp_avg: torch.Tensor  # (P,)
    exp_avg_sq: torch.Tensor  # (P,)

    def __post_init__(self) -> None:
        dtype = self.exp_avg.dtype
        self.one_minus_beta1 = (1 - self.beta1).to(dtype)[self.trial_index]
        self.beta2_e = self.beta2.to(dtype)[self.trial_index]
        self.one_minus_beta2 = (1 - self.beta2).to(dtype)[self.trial_index]

    @torch.no_grad()
    def step(self, weights: torch.Tensor, grad: torch.Tensor) -> None:
        """Update the flat `weights` in place with their gradient `grad`."""
        self.steps.add_(1)
        steps = self.steps.double()
        step_size = self.lr / (1 - self.beta1**steps)  # lr / bias_correction1
        bias_correction2_sqrt = (1 - self.beta2**steps).sqrt()
        dtype = weights.dtype
        self.exp_avg.lerp_(grad, self.one_minus_beta1)
        self.exp_avg_sq.mul_(self.beta2_e).addcmul_(grad, grad * self.one_minus_beta2)
        denom = self.exp_avg_sq.sqrt().div_(bias_correction2_sqrt.to(dtype)[self.trial_index])
        denom.add_(self.eps)
        weights.sub_(self.exp_avg * step_size.to(dtype)[self.trial_index] / denom)
