"""Fidelity and diversity measured apart, on feature vectors: precision and recall
(Kynkaanniemi et al. 2019) and density and coverage (Naeem et al. 2020).

Each set of features stands for a manifold: the union of balls around its points, each
ball reaching to the point's k-th nearest neighbour in its own set (`knn_radii`).

    precision = share of generated points inside the real manifold        (fidelity)
    recall    = share of real points inside the generated manifold        (diversity)
    density   = mean number of real balls around a generated point, / k   (fidelity;
                ~1 when the two sets match, above 1 when G crowds where the data is dense)
    coverage  = share of real points whose own ball holds a generated one (diversity)

k = 3 for precision and recall, 5 for density and coverage, as the papers chose them.
"Inside" is a strict `<`, as the authors' reference code (the `prdc` package) has it.
Density and coverage use only the real balls, so one outlier among the generated points
cannot inflate them the way it inflates the generated manifold of recall.

Distances are computed on the run's device in row chunks (a 10,000 x 10,000 evaluation
never holds more than `chunk` rows of distances at once) by matmul, so a GPU computes
them at matmul speed; float64 on a CPU, float32 on a GPU. The real side's k-NN radii
depend only on the reference features and the set size: they are cached on disk beside
the real statistics (`cached_real_manifold`).
"""

from __future__ import annotations

import hashlib
import json
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from began.metrics.real_stats import RealStats, reference_indices, save_npz_atomic

PR_NEIGHBOURS = 3  # k of precision and recall (Kynkaanniemi et al.)
DC_NEIGHBOURS = 5  # k of density and coverage (Naeem et al.)
DISTANCE_CHUNK = 1024  # rows of a distance matrix held at once: 80 MB at 10k float64 columns
METRICS = ("precision", "recall", "density", "coverage")
_CACHE_VERSION = "knn-v1"  # bump when the radii of the same features would change


def _distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean distances (A, B) between the rows of a (A, D) and b (B, D), by matmul:
    |a|^2 + |b|^2 - 2 a.b, the form that runs at GPU speed (sklearn, which the authors'
    code calls, computes it so too)."""
    return torch.cdist(a, b, compute_mode="use_mm_for_euclid_dist")


def distance_dtype(device: torch.device | str) -> torch.dtype:
    """float64 on a CPU (affordable there; it gives the reference code's figures exactly on
    tests/test_manifold.py's features), float32 on a GPU (where float64 runs at a fraction
    of the speed; a distance that close to a radius may then fall on the other side)."""
    return torch.float64 if torch.device(device).type == "cpu" else torch.float32


def as_tensor(features: np.ndarray | torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """Features (N, D) on `device`, in `distance_dtype(device)`."""
    if not isinstance(features, torch.Tensor):
        features = torch.from_numpy(np.ascontiguousarray(features))
    return features.to(device=device, dtype=distance_dtype(device))


def knn_radii(features: torch.Tensor, k: int, chunk: int = DISTANCE_CHUNK) -> torch.Tensor:
    """Distance of each row (N, D) to its k-th nearest other row: (N,)."""
    return _radii(features, (k,), chunk)[0]


def _radii(features: torch.Tensor, ks: tuple[int, ...], chunk: int) -> list[torch.Tensor]:
    """`knn_radii` for several k from one pass over the distances."""
    n, top = features.shape[0], max(ks)
    if n <= top:
        raise ValueError(f"need more than k = {top} feature rows for k-NN radii, got {n}")
    nearest = []
    for start in range(0, n, chunk):
        rows = _distances(features[start : start + chunk], features)  # (c, N)
        nearest.append(rows.topk(top + 1, dim=1, largest=False).values)  # (c, top + 1) sorted
    # Column k, the (k+1)-th smallest: the smallest is the row's distance to itself (~0), as
    # in the reference code, which takes the (k+1)-th value of the same matrix.
    ordered = torch.cat(nearest)  # (N, top + 1)
    return [ordered[:, k] for k in ks]


@dataclass(frozen=True)
class RealManifold:
    """The real side, computed once per reference set: features and their k-NN radii."""

    features: torch.Tensor  # (N, D)
    radii_pr: torch.Tensor  # (N,) k = PR_NEIGHBOURS
    radii_dc: torch.Tensor  # (N,) k = DC_NEIGHBOURS


def real_manifold(features: torch.Tensor, chunk: int = DISTANCE_CHUNK) -> RealManifold:
    """The k-NN radii of the real features (N, D), for both k."""
    pr, dc = _radii(features, (PR_NEIGHBOURS, DC_NEIGHBOURS), chunk)
    return RealManifold(features, pr, dc)


def manifold_metrics(
    real: RealManifold, fake: torch.Tensor, chunk: int = DISTANCE_CHUNK
) -> dict[str, float]:
    """precision, recall, density and coverage of generated features `fake` (M, D).

    One pass over the generated-to-real distances, `chunk` generated rows at a time: the
    fidelity figures reduce each row, the diversity figures accumulate per real column.
    """
    if fake.shape[1:] != real.features.shape[1:]:
        raise ValueError(f"features of {fake.shape[1:]} vs real {real.features.shape[1:]}")
    fake = fake.to(real.features)
    fake_radii = knn_radii(fake, PR_NEIGHBOURS, chunk)  # (M,)
    n_real, device = real.features.shape[0], real.features.device
    inside = torch.zeros((), dtype=torch.int64, device=device)  # fakes in some real k=3 ball
    hits = torch.zeros((), dtype=torch.int64, device=device)  # (fake, real k=5 ball) pairs
    recalled = torch.zeros(n_real, dtype=torch.bool, device=device)  # reals in a fake ball
    nearest = torch.full((n_real,), torch.inf, dtype=fake.dtype, device=device)  # (N,)
    for start in range(0, fake.shape[0], chunk):
        d = _distances(fake[start : start + chunk], real.features)  # (c, N)
        inside += (d < real.radii_pr).any(dim=1).sum()
        hits += (d < real.radii_dc).sum()
        recalled |= (d < fake_radii[start : start + chunk, None]).any(dim=0)
        nearest = torch.minimum(nearest, d.min(dim=0).values)
    covered = (nearest < real.radii_dc).sum()  # reals whose own k=5 ball holds a fake
    n_fake = fake.shape[0]
    return {
        "precision": inside.item() / n_fake,
        "recall": recalled.sum().item() / n_real,
        "density": hits.item() / (DC_NEIGHBOURS * n_fake),
        "coverage": covered.item() / n_real,
    }


# --- the real side, cached beside the real statistics ---------------------------------------


def real_subset(features: np.ndarray, n: int) -> np.ndarray:
    """A fixed random subset of n reference features (all of them when there are fewer):
    the papers compare equal-sized sets, and the radii shrink as a set grows."""
    return features[reference_indices(features.shape[0], min(n, features.shape[0])).numpy()]


def _radii_path(stats: RealStats, n: int, dtype: torch.dtype) -> Path:
    # The statistics' file name is the hash of dataset, reference size, image size and
    # network, so the radii's name repeats it; the count and dtype make one file each.
    kind = str(dtype).removeprefix("torch.")
    return stats.path.with_name(f"{stats.path.stem}.knn-{n}-{kind}.npz")


def _radii_meta(features: np.ndarray, dtype: torch.dtype) -> str:
    digest = hashlib.sha256(np.ascontiguousarray(features).tobytes()).hexdigest()[:24]
    return json.dumps({"features_sha256": digest, "rows": features.shape[0],
                       "k": [PR_NEIGHBOURS, DC_NEIGHBOURS], "dtype": str(dtype),
                       "version": _CACHE_VERSION}, sort_keys=True)  # fmt: skip


def _load_radii(path: Path, meta: str, n: int) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as data:
            stored, pr, dc = str(data["meta"]), data["radii_pr"], data["radii_dc"]
        if stored != meta or pr.shape != (n,) or dc.shape != (n,):
            raise ValueError("contents do not match the cache key")
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as error:
        warnings.warn(f"k-NN radii cache {path} is unreadable ({error}); rebuilding it",
                      stacklevel=3)  # fmt: skip
        return None
    return pr, dc


def cached_real_manifold(
    stats: RealStats, n: int, device: torch.device | str, chunk: int = DISTANCE_CHUNK
) -> RealManifold:
    """The real manifold of n reference features (a fixed subset), its radii from
    `<stats file>.knn-<n>-<dtype>.npz` when present, computed and stored otherwise."""
    features = real_subset(stats.features, n)  # (n, D) float32
    dtype = distance_dtype(device)
    path, meta = _radii_path(stats, features.shape[0], dtype), _radii_meta(features, dtype)
    tensor = as_tensor(features, device)  # (n, D)
    found = _load_radii(path, meta, features.shape[0]) if path.exists() else None
    if found is not None:
        pr, dc = (torch.from_numpy(r).to(device=device, dtype=dtype) for r in found)
        return RealManifold(tensor, pr, dc)
    manifold = real_manifold(tensor, chunk)
    arrays = {"radii_pr": manifold.radii_pr.cpu().numpy(),
              "radii_dc": manifold.radii_dc.cpu().numpy()}  # fmt: skip
    save_npz_atomic(path, meta, arrays)
    return manifold
