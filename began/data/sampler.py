"""Hold-out split and training batches.

Both are functions of fixed seeds only, never of hidden state, so a study's trials
hold back the same images and a resumed run sees exactly the batches it would
have seen had it never stopped.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from began.data.imageset import DataError

HOLDOUT_SEED = 0x9E3779B97F4A7C15  # constant: independent of the run seed on purpose


def _splitmix64(values: np.ndarray, seed: int) -> np.ndarray:
    """A fixed integer hash (SplitMix64). Unlike a numpy Generator stream, whose
    algorithm numpy may change between versions, it gives the same order everywhere."""
    with np.errstate(over="ignore"):
        z = values.astype(np.uint64) + np.uint64(seed)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


AUTO_HOLDOUT = -1  # TrainConfig.holdout's default: a share of the dataset, see holdout_count
AUTO_HOLDOUT_MAX = 256
AUTO_HOLDOUT_SHARE = 10  # one image in ten, for datasets under 2,560 images


def holdout_count(requested: int, count: int) -> int:
    """The hold-out size for `count` images: `requested`, or with AUTO_HOLDOUT
    min(256, count // 10), so that a folder of 48 images still trains (on 44)."""
    if requested == AUTO_HOLDOUT:
        return min(AUTO_HOLDOUT_MAX, count // AUTO_HOLDOUT_SHARE)
    return requested


def split_holdout(images: np.ndarray, holdout: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, held_out): ``holdout`` images chosen by a constant hash of their index
    (AUTO_HOLDOUT: see holdout_count).

    Deterministic and the same for every trial of a study; a smaller hold-out is a
    subset of a larger one. Both parts keep the original image order.
    """
    count = len(images)
    holdout = holdout_count(holdout, count)
    if holdout < 0 or holdout >= count - 1:
        raise DataError(
            f"holdout: must be in [0, {count - 2}] for {count} images "
            f"(at least 2 left to train on), got {holdout}"
        )
    order = np.argsort(_splitmix64(np.arange(count), HOLDOUT_SEED), kind="stable")
    held = np.sort(order[:holdout])
    train = np.sort(order[holdout:])
    return images[train], images[held]


def _epoch_seed(seed: int, epoch: int) -> int:
    # Hash (seed, epoch) so that no two pairs share a generator seed.
    digest = hashlib.blake2b(f"began-batches:{seed}:{epoch}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1  # manual_seed wants a non-negative int64


class BatchSampler:
    """Training batches from a uint8 (N, 3, H, W) tensor, on whatever device it lives.

    Epochs of N // batch_size steps (the last partial batch is dropped); epoch e is
    a permutation from a torch.Generator seeded by (seed, e). ``batch(step)``
    therefore depends only on (seed, step); only the current epoch's permutation is
    cached, which is an optimisation, not state.
    """

    def __init__(self, images: torch.Tensor, batch_size: int, seed: int) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise DataError(
                f"images: expected a uint8 (N, C, H, W) tensor, got {images.dtype} "
                f"{tuple(images.shape)}"
            )
        count = images.shape[0]
        if batch_size < 1 or count < batch_size:
            raise DataError(
                f"batch_size: must be in [1, {count}] (the image count), got {batch_size}"
            )
        self.images = images
        self.batch_size = batch_size
        self.seed = seed
        self.steps_per_epoch = count // batch_size
        self._epoch = -1
        self._order: torch.Tensor | None = None

    def permutation(self, epoch: int) -> torch.Tensor:
        """The image order of one epoch (on the CPU, where torch's RNG is device-independent)."""
        generator = torch.Generator().manual_seed(_epoch_seed(self.seed, epoch))
        return torch.randperm(self.images.shape[0], generator=generator)

    def indices(self, step: int) -> torch.Tensor:
        """The (B,) image indices of step `step`'s batch, on the images' device."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        epoch, position = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch or self._order is None:
            self._order = self.permutation(epoch).to(self.images.device)
            self._epoch = epoch
        start = position * self.batch_size
        return self._order[start : start + self.batch_size]

    def batch(self, step: int) -> torch.Tensor:
        """Float (B, 3, H, W) in [-1, 1] on the images' device."""
        # Index and convert on the device: only uint8 ever crosses the bus, once.
        return self.to_float(self.images.index_select(0, self.indices(step)))

    @staticmethod
    def to_float(images: torch.Tensor) -> torch.Tensor:
        """uint8 images as floats in [-1, 1]: x = u8 / 127.5 - 1."""
        return images.float().div_(127.5).sub_(1.0)
