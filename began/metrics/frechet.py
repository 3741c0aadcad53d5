"""FID and KID on feature matrices, in numpy float64.

FID (Heusel et al. 2017), the Frechet distance between Gaussians fitted to two
feature sets:

    FID = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr sqrt(S1 S2)

tr sqrt(S1 S2) is computed as the sum of sqrt of the eigenvalues of the
symmetric PSD matrix sqrt(S1) S2 sqrt(S1) (same eigenvalues as S1 S2), with
symmetric eigensolvers: no complex parts, no sqrtm failures on the singular
covariances that fewer samples than feature dimensions give.

KID (Binkowski et al. 2018): the unbiased MMD^2 with the polynomial kernel
k(x, y) = (x.y / d + 1)^3, averaged over random subsets as stylegan2-ada does.
It is unbiased, so it is ~0 (and may be negative) for two samples of one distribution.

`fid_to_features` is the same FID, faster when the generated set is smaller
than the feature dimension (fid_1k on 2048-d features): with S2 = A^T A for
the centred features A (n, D), the non-zero eigenvalues of S1 S2 are those of
the n x n matrix A S1 A^T, so no D x D eigendecomposition is needed.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D), float64, of features (N, D); N >= 2."""
    feats = np.asarray(features, dtype=np.float64)  # (N, D)
    if feats.ndim != 2 or feats.shape[0] < 2:
        raise ValueError(f"need features of shape (N >= 2, D), got {feats.shape}")
    return feats.mean(axis=0), np.cov(feats, rowvar=False)


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    """Symmetric square root of a PSD matrix; round-off negative eigenvalues are set to 0."""
    eigenvalues, eigenvectors = scipy.linalg.eigh(sigma)
    roots = np.sqrt(np.clip(eigenvalues, 0.0, None))
    return (eigenvectors * roots) @ eigenvectors.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr sqrt(S1 S2) for PSD S1, S2, via eigvalsh of sqrt(S1) S2 sqrt(S1)."""
    root1 = _psd_sqrt(np.asarray(sigma1, dtype=np.float64))
    inner = root1 @ np.asarray(sigma2, dtype=np.float64) @ root1
    inner = (inner + inner.T) / 2.0  # symmetric up to round-off; make it exactly so
    eigenvalues = scipy.linalg.eigvalsh(inner)
    return float(np.sqrt(np.clip(eigenvalues, 0.0, None)).sum())


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), float64."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(
            f"shape mismatch: {mu1.shape}/{sigma1.shape} vs {mu2.shape}/{sigma2.shape}"
        )
    diff = mu1 - mu2
    distance = diff @ diff + np.trace(sigma1) + np.trace(sigma2)
    distance -= 2.0 * trace_sqrt_product(sigma1, sigma2)
    # Round-off can leave -1e-10 for identical sets; FID is a distance.
    return max(float(distance), 0.0)


def fid_to_features(features: np.ndarray, mu_ref: np.ndarray, sigma_ref: np.ndarray) -> float:
    """FID between the Gaussian fitted to features (n, D) and N(mu_ref, sigma_ref)."""
    feats = np.asarray(features, dtype=np.float64)  # (n, D)
    n, d = feats.shape
    if n - 1 >= d:  # full-rank sample covariance: the low-rank shortcut saves nothing
        return frechet_distance(*feature_statistics(feats), mu_ref, sigma_ref)
    if n < 2:
        raise ValueError(f"need at least 2 feature rows, got {n}")
    mu = feats.mean(axis=0)  # (D,)
    a = (feats - mu) / np.sqrt(n - 1)  # (n, D): S2 = a^T a, the unbiased covariance
    sigma_ref = np.asarray(sigma_ref, dtype=np.float64)
    inner = a @ sigma_ref @ a.T  # (n, n), PSD
    inner = (inner + inner.T) / 2.0
    trace_sqrt = np.sqrt(np.clip(scipy.linalg.eigvalsh(inner), 0.0, None)).sum()
    diff = mu - np.asarray(mu_ref, dtype=np.float64)
    distance = diff @ diff + np.trace(sigma_ref) + np.sum(a * a) - 2.0 * trace_sqrt
    return max(float(distance), 0.0)


def kid_subsets(
    features1: np.ndarray,
    features2: np.ndarray,
    num_subsets: int = KID_SUBSETS,
    max_subset_size: int = KID_SUBSET_SIZE,
    seed: int = 0,
) -> np.ndarray:
    """Unbiased MMD^2 (cubic polynomial kernel) of random subset pairs, (num_subsets,).

    Each subset holds m = min(max_subset_size, N1, N2) rows drawn without replacement.
    """
    x_all = np.asarray(features1, dtype=np.float64)  # (N1, D)
    y_all = np.asarray(features2, dtype=np.float64)  # (N2, D)
    d = x_all.shape[1]
    m = min(max_subset_size, x_all.shape[0], y_all.shape[0])
    if m < 2:
        raise ValueError("KID needs at least 2 samples in each set")
    rng = np.random.default_rng(seed)
    values = np.empty(num_subsets)
    for i in range(num_subsets):
        x = x_all[rng.choice(x_all.shape[0], m, replace=False)]  # (m, D)
        y = y_all[rng.choice(y_all.shape[0], m, replace=False)]  # (m, D)
        kxx = (x @ x.T / d + 1.0) ** 3  # (m, m)
        kyy = (y @ y.T / d + 1.0) ** 3  # (m, m)
        kxy = (x @ y.T / d + 1.0) ** 3  # (m, m)
        # Unbiased: the within-set sums leave out the diagonal k(x_i, x_i).
        within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        values[i] = within - 2.0 * kxy.mean()
    return values


def kernel_inception_distance(
    features1: np.ndarray,
    features2: np.ndarray,
    num_subsets: int = KID_SUBSETS,
    max_subset_size: int = KID_SUBSET_SIZE,
    seed: int = 0,
) -> tuple[float, float]:
    """KID: (mean, std) over subsets of the unbiased MMD^2."""
    values = kid_subsets(features1, features2, num_subsets, max_subset_size, seed)
    return float(values.mean()), float(values.std())
