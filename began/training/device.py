"""The process-wide torch settings of a run's device, made when the run opens.

cuDNN autotuning, TF32 and the current CUDA device are settings of the process, not of a
model: every run that a process trains on a GPU makes the same ones (the runs of one
process share their device and their `tf32`, as a pack and a study's trials do).
"""

from __future__ import annotations

import torch

from began.config import TrainConfig


def use_cuda_device(device: torch.device) -> None:
    """Make cuda:N this process's current device before any CUDA work, so that nothing
    (a library's default tensor, cuDNN's handle, a CUDA context) lands on GPU 0 instead."""
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)


def configure_device(cfg: TrainConfig, device: torch.device) -> None:
    """The settings a run on `device` trains with; nothing to set on a CPU."""
    if device.type != "cuda":
        return
    use_cuda_device(device)
    # The shapes of a run never change between steps, so cuDNN's one-off search for the
    # fastest convolution algorithm of each shape pays back within the first steps.
    torch.backends.cudnn.benchmark = True
    # PyTorch's own defaults differ (TF32 on for convolutions, off for matmuls): set both.
    tf32 = cfg.tf32 == "on"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
