"""Learning-rate decay: halve the lr when M_global stalls, never below a floor.

M_global of a single step is noisy, so the schedule averages it over windows of
`window` steps and halves the lr after `patience` windows without a new best
mean. The floor matters: runs whose lr decayed too far collapsed (docs/began.md, section 4).
The running sum stays on the training device; it is read once per window.
"""

from __future__ import annotations

import math
from typing import Any

import torch


class PlateauHalving:
    def __init__(
        self, lr: float, lr_min: float, window: int, patience: int, device: torch.device
    ) -> None:
        self.lr = lr
        self.lr_min = lr_min
        self.window = window
        self.patience = patience
        self.best = math.inf  # best window mean of M_global so far
        self.bad_windows = 0  # windows since the last new best
        self.window_sum = torch.zeros((), device=device)
        self.window_count = 0

    def observe(self, m_global: torch.Tensor) -> bool:
        """Add one step's M_global; returns True when the lr has just been halved."""
        self.window_sum += m_global.detach().float()
        return self.count_step()

    def count_step(self) -> bool:
        """One more step, whose M_global `window_sum` holds already (a pack of trials adds
        all of theirs in one operation); returns True when the lr has just been halved."""
        self.window_count += 1
        if self.window_count < self.window:
            return False
        mean = self.window_sum.item() / self.window_count  # one host sync per window
        self.window_sum.zero_()
        self.window_count = 0
        if mean < self.best:
            self.best, self.bad_windows = mean, 0
            return False
        self.bad_windows += 1
        if self.bad_windows < self.patience or self.lr <= self.lr_min:
            return False
        self.lr = max(self.lr / 2.0, self.lr_min)
        self.bad_windows = 0
        return True

    def apply(self, *optimizers: torch.optim.Optimizer) -> None:
        for optimizer in optimizers:
            for group in optimizer.param_groups:
                group["lr"] = self.lr

    def state_dict(self) -> dict[str, Any]:
        return {
            "lr": self.lr,
            "best": self.best,
            "bad_windows": self.bad_windows,
            "window_sum": self.window_sum.detach().cpu(),
            "window_count": self.window_count,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lr = float(state["lr"])
        self.best = float(state["best"])
        self.bad_windows = int(state["bad_windows"])
        self.window_sum = state["window_sum"].to(self.window_sum.device).clone()
        self.window_count = int(state["window_count"])
