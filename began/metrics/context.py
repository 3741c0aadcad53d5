"""What an evaluation needs (EvalInputs) and what its metrics share (EvalContext).

Samples are generated once, as many as the largest request needs, and every
metric reads a prefix of them; Inception features of the samples are extracted
once and shared by FID, KID, precision, recall, density and coverage; the real
statistics are loaded (or computed) once per evaluation; a result several metrics
read (the four k-NN figures come from one pass over one distance matrix) is
computed once per evaluation too (`EvalContext.shared`).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from began.metrics import inception
from began.metrics.batching import eval_batch_size
from began.metrics.real_stats import MAX_REFERENCE, RealStats, real_statistics, reference_indices

T = TypeVar("T")


@dataclass
class EvalInputs:
    # n -> (n, 3, S, S) float in [-1, 1] on `device`; the caller wraps G in no_grad/eval.
    generate: Callable[[int], torch.Tensor]
    # x (B, 3, S, S) in [-1, 1] -> D(x), same shape.
    reconstruct: Callable[[torch.Tensor], torch.Tensor]
    real_images: torch.Tensor  # uint8 (N, 3, S, S): the whole dataset, the reference set
    heldout_images: torch.Tensor  # uint8 (M, 3, S, S): real images D never trained on
    dataset_fingerprint: str  # identifies real_images for the statistics cache
    device: torch.device
    cache_dir: Path | None = None  # None: $BEGAN_CACHE_DIR, $XDG_CACHE_HOME/began, ~/.cache/began
    feature_network: str | None = None  # TorchScript file; None: $BEGAN_FEATURE_NETWORK or bundled
    # Images per generate / feature-extraction / SSIM batch; None: sized to the device
    # (`batching.eval_batch_size`). The figures do not depend on it beyond float rounding.
    batch_size: int | None = None
    max_reference: int = MAX_REFERENCE  # real images in the reference features, at most


class EvalContext:
    """Lazily generated samples and features, shared by the metrics of one evaluation."""

    def __init__(self, inputs: EvalInputs) -> None:
        self.inputs = inputs
        self.device = torch.device(inputs.device)
        self.batch_size = inputs.batch_size or eval_batch_size(self.device)
        self._samples: list[torch.Tensor] = []  # uint8 chunks (B, 3, S, S) on the device
        self._num_samples = 0
        self._features: list[np.ndarray] = []  # (B, D) float32 chunks, for samples[:n]
        self._num_features = 0
        self._real_stats: RealStats | None = None
        self._shared: dict[Hashable, Any] = {}

    @torch.no_grad()
    def samples(self, n: int) -> torch.Tensor:
        """The first n generated samples, uint8 (n, 3, S, S) on the device."""
        expected = tuple(self.inputs.real_images.shape[1:])
        while self._num_samples < n:
            count = min(self.batch_size, n - self._num_samples)
            images = self.inputs.generate(count)  # (count, 3, S, S) in [-1, 1]
            if images.shape != (count, *expected):
                raise ValueError(
                    f"generate({count}) returned {tuple(images.shape)}, "
                    f"expected {(count, *expected)} like real_images"
                )
            # Quantised as a saved PNG would be: every metric sees the same 8-bit images.
            self._samples.append(inception.to_uint8(images.to(self.device)))
            self._num_samples += count
        if len(self._samples) > 1:
            self._samples = [torch.cat(self._samples)]  # (N, 3, S, S)
        return self._samples[0][:n]

    def sample_features(self, n: int) -> np.ndarray:
        """Inception features (n, D) float32 of the first n samples, each extracted once."""
        if self._num_features < n:
            new = self.samples(n)[self._num_features : n]  # (n - done, 3, S, S)
            self._features.append(
                inception.extract_features(
                    new, self.device, self.inputs.feature_network, self.batch_size
                )
            )
            self._num_features = n
        if len(self._features) > 1:
            self._features = [np.concatenate(self._features)]
        return self._features[0][:n]

    def real_stats(self) -> RealStats:
        """Reference statistics of the real images, from the disk cache when possible."""
        if self._real_stats is None:
            self._real_stats = real_statistics(
                self.inputs.real_images,
                self.inputs.dataset_fingerprint,
                self.device,
                self.inputs.cache_dir,
                self.inputs.feature_network,
                self.batch_size,
                self.inputs.max_reference,
            )
        return self._real_stats

    def real_subset(self, n: int) -> torch.Tensor:
        """A fixed random subset of up to n real images, uint8 (n, 3, S, S)."""
        real = self.inputs.real_images
        return real[reference_indices(real.shape[0], min(n, real.shape[0]))]

    def shared(self, key: Hashable, compute: Callable[[], T]) -> T:
        """`compute()`'s result, once per evaluation and `key`: what several metrics read,
        such as the one k-NN pass behind precision, recall, density and coverage."""
        if key not in self._shared:
            self._shared[key] = compute()
        return self._shared[key]
