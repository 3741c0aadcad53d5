"""On-disk cache of a decoded image set: ``<key>.npy`` (N, 3, H, W) uint8 + ``<key>.json``.

The key hashes everything that decides the pixels (see :func:`cache_key`), so a
changed file, option or loader version simply misses. Both files are written to
a temporary name in the cache folder and moved into place with ``os.replace``,
so a crash never leaves a half-written cache under the real name; the JSON is
written last and is the commit marker. The JSON records the array's shape and a
CRC-32 of its bytes, which a load checks (CRC-32 costs ~0.05 s for LFW, a
cryptographic hash ~0.3 s): a damaged cache is reported and rebuilt, never used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from began.errors import one_line

log = logging.getLogger("began.data")

# Bump when the decoding changes what pixels a given file and options produce.
LOADER_VERSION = 1


def default_cache_dir() -> Path:
    """``$BEGAN_CACHE_DIR``, else ``$XDG_CACHE_HOME/began``, else ``~/.cache/began``."""
    explicit = os.environ.get("BEGAN_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "began"


def cache_key(parts: dict[str, Any]) -> str:
    """A 32-hex-character hash of the JSON form of ``parts`` (plus the loader version)."""
    payload = json.dumps({**parts, "loader_version": LOADER_VERSION}, sort_keys=True)
    return hashlib.blake2b(payload.encode(), digest_size=16).hexdigest()


def cache_paths(cache_dir: Path, key: str) -> tuple[Path, Path]:
    return cache_dir / f"{key}.npy", cache_dir / f"{key}.json"


def load_cached(cache_dir: Path, key: str) -> tuple[np.ndarray, dict[str, Any]] | None:
    """The cached images and metadata, or None on a miss or a damaged cache (with a warning)."""
    array_path, meta_path = cache_paths(cache_dir, key)
    if not meta_path.exists():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        images = np.load(array_path, allow_pickle=False)
        _check(images, meta, key)
    except (OSError, ValueError, KeyError, TypeError, EOFError) as exc:
        log.warning("cache %s is damaged (%s); rebuilding it", array_path, one_line(exc))
        return None
    return images, meta


def _check(images: np.ndarray, meta: dict[str, Any], key: str) -> None:
    # ValueError for anything that does not match what was written.
    if meta.get("key") != key or meta.get("loader_version") != LOADER_VERSION:
        raise ValueError("metadata does not belong to this key")
    if images.dtype != np.uint8 or list(images.shape) != meta["shape"]:
        raise ValueError(f"array is {images.dtype} {list(images.shape)}, expected {meta['shape']}")
    if zlib.crc32(np.ascontiguousarray(images).data) != meta["crc32"]:
        raise ValueError("array checksum mismatch")


def save_cached(cache_dir: Path, key: str, images: np.ndarray, meta: dict[str, Any]) -> Path | None:
    """Write the cache atomically; return the array path, or None (with a warning) on failure.

    A cache that cannot be written (read-only home, full disk) costs time, not the
    run, so it is a warning.
    """
    array_path, meta_path = cache_paths(cache_dir, key)
    images = np.ascontiguousarray(images)
    record = {
        **meta,
        "key": key,
        "loader_version": LOADER_VERSION,
        "shape": list(images.shape),
        "crc32": zlib.crc32(images.data),
    }
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        _atomic_write(array_path, lambda handle: np.save(handle, images, allow_pickle=False))
        text = json.dumps(record, indent=1, sort_keys=True)
        _atomic_write(meta_path, lambda handle: handle.write(text.encode()))
    except OSError as exc:
        log.warning(
            "could not write the image cache in %s (%s); continuing without it",
            cache_dir,
            one_line(exc),
        )
        return None
    return array_path


def _atomic_write(path: Path, write: Any) -> None:
    # The temporary file is in the same folder, so os.replace is an atomic rename. No
    # fsync: a file emptied by a power cut fails the CRC check and is rebuilt.
    temporary = ""
    try:
        with tempfile.NamedTemporaryFile(
            dir=path.parent, prefix=f".{path.name}.", delete=False
        ) as handle:
            temporary = handle.name
            write(handle)
        os.replace(temporary, path)
    except BaseException:
        if temporary:
            Path(temporary).unlink(missing_ok=True)
        raise
