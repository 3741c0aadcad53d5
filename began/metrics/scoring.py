"""Scoring a trained G and D with the registered metrics: what an evaluation point of the
training loop calls, and what `python -m began.evaluate` calls on a saved checkpoint."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from began.config import TrainConfig
from began.core.models import sample_z
from began.data import ImageSet
from began.metrics.builtin import evaluate
from began.metrics.context import EvalInputs
from began.metrics.registry import MetricRequest

EVAL_Z_SEED_OFFSET = 104_729  # the evaluation z stream is apart from the training and grid z


@torch.no_grad()
def score(
    G: nn.Module,
    D: nn.Module,
    cfg: TrainConfig,
    requests: list[MetricRequest],
    dataset: ImageSet,
    heldout: np.ndarray,
    device: torch.device,
    cache_dir: str | None = None,
) -> dict[str, float]:
    """The requested metrics of G (samples) and D (reconstructions), by logged name.

    The samples come from one z stream drawn from cfg.seed on the CPU, the same at every
    evaluation and on every device, so two evaluations differ only by the networks.
    """
    if not requests:
        return {}
    rng = torch.Generator().manual_seed(cfg.seed + EVAL_Z_SEED_OFFSET)

    def generate(count: int) -> torch.Tensor:
        # evaluate() asks for chunks of at most EvalInputs.batch_size images.
        return G(sample_z(count, cfg.hidden, rng).to(device))

    inputs = EvalInputs(
        generate=generate,
        reconstruct=D,
        real_images=torch.from_numpy(dataset.images),
        heldout_images=torch.from_numpy(heldout),
        dataset_fingerprint=dataset.fingerprint,
        device=device,
        cache_dir=cache_dir,
        feature_network=cfg.feature_network or None,
        max_reference=cfg.reference_size,
    )
    return evaluate(requests, inputs)
