"""Real-image feature statistics, computed once and cached on disk.

The dataset's feature mean and covariance (and the features themselves, which
KID needs) depend only on the data and the feature extractor, so a study
computes them once, not per trial. The cache key hashes everything that
produced them: dataset fingerprint and size, number of reference images, image
size, feature-network identity (name + content hash) and preprocessing version.
Files are `<cache dir>/stats/<key>.npz`, written atomically (temp file in the
same folder, then os.replace) so concurrent study workers never read half a file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from began.metrics import inception
from began.metrics.frechet import feature_statistics

log = logging.getLogger(__name__)

MAX_REFERENCE = 50_000  # reference images at most, as stylegan's fid50k
_SELECTION_SEED = 0


@dataclass(frozen=True)
class RealStats:
    mu: np.ndarray  # (D,) float64
    sigma: np.ndarray  # (D, D) float64
    features: np.ndarray  # (N_ref, D) float32, for KID
    path: Path  # the cache file


def reference_indices(num_images: int, num_reference: int) -> torch.Tensor:
    """A fixed random subset (sorted) when the dataset is larger than the reference set.

    Random rather than the first images: image folders are often sorted by identity or date.
    """
    if num_reference >= num_images:
        return torch.arange(num_images)
    generator = torch.Generator().manual_seed(_SELECTION_SEED)
    return torch.randperm(num_images, generator=generator)[:num_reference].sort().values


def cache_key(
    dataset_fingerprint: str,
    dataset_size: int,
    num_reference: int,
    image_size: int,
    network_identity: str,
) -> tuple[str, str]:
    """(hex key, the JSON it hashes); the JSON is stored in the file and checked on load."""
    meta = json.dumps(
        {
            "dataset": dataset_fingerprint,
            "dataset_size": dataset_size,
            "num_reference": num_reference,
            "image_size": image_size,
            "network": network_identity,
            "preprocess": inception.PREPROCESS_VERSION,
            "selection_seed": _SELECTION_SEED,
        },
        sort_keys=True,
    )
    return hashlib.sha256(meta.encode()).hexdigest()[:24], meta


def _load(path: Path, meta: str) -> RealStats | None:
    """The cached statistics, or None (with a warning) when the file is unreadable or stale."""
    try:
        with np.load(path, allow_pickle=False) as data:
            stored_meta = str(data["meta"])
            mu, sigma, features = data["mu"], data["sigma"], data["features"]
        d = mu.shape[0]
        if stored_meta != meta or sigma.shape != (d, d) or features.shape[1:] != (d,):
            raise ValueError("contents do not match the cache key")
    except (OSError, EOFError, ValueError, KeyError, IndexError, zipfile.BadZipFile) as error:
        warnings.warn(
            f"real-statistics cache {path} is unreadable ({error}); rebuilding it", stacklevel=3
        )
        return None
    return RealStats(mu, sigma, features, path)


def save_npz_atomic(path: Path, meta: str, arrays: dict[str, np.ndarray]) -> None:
    """`arrays` and their cache key's JSON `meta` into `path`, whole or not at all: a temp
    file in the same folder, then os.replace, so a concurrent reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, meta=np.array(meta), **arrays)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _save_atomic(path: Path, meta: str, stats: RealStats) -> None:
    arrays = {"mu": stats.mu, "sigma": stats.sigma, "features": stats.features}
    save_npz_atomic(path, meta, arrays)


def real_statistics(
    real_images: torch.Tensor,
    dataset_fingerprint: str,
    device: torch.device,
    cache_dir: Path | None = None,
    feature_network: str | None = None,
    batch_size: int | None = None,
    max_reference: int = MAX_REFERENCE,
) -> RealStats:
    """Feature statistics of up to `max_reference` images of `real_images` (N, 3, S, S) uint8.

    Loaded from `<cache_dir>/stats/` when present (cache_dir None: $BEGAN_CACHE_DIR,
    else $XDG_CACHE_HOME/began or ~/.cache/began), computed and stored otherwise.
    A corrupt or mismatching file is rebuilt with a warning.
    """
    num_images, image_size = real_images.shape[0], real_images.shape[-1]
    num_reference = min(num_images, max_reference)
    if num_reference < 2:
        raise ValueError(f"need at least 2 real images for feature statistics, got {num_images}")
    network_path = inception.resolve_network_path(feature_network)
    key, meta = cache_key(
        dataset_fingerprint,
        num_images,
        num_reference,
        image_size,
        inception.network_identity(network_path),
    )
    path = Path(cache_dir if cache_dir is not None else inception.default_cache_dir())
    path = path / "stats" / f"{key}.npz"
    if path.exists():
        cached = _load(path, meta)
        if cached is not None:
            return cached
    log.info("computing feature statistics of %d real images into %s", num_reference, path)
    reference = real_images  # (N, 3, S, S); a copy only when a subset is needed
    if num_reference < num_images:
        reference = real_images[reference_indices(num_images, num_reference)]  # (N_ref, 3, S, S)
    # Minutes to hours on a CPU (LFW: 13,194 images), once per dataset: say so while it runs.
    label = f"real-image features ({network_path.name}, once per dataset, cached)"
    features = inception.extract_features(
        reference, device, network_path, batch_size, progress=label
    )
    mu, sigma = feature_statistics(features)
    stats = RealStats(mu, sigma, features.astype(np.float32), path)
    _save_atomic(path, meta, stats)
    return stats
