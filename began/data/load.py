"""load_images: list a source, decode it in parallel, report skipped files, cache the result."""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL
from PIL import Image

from began.data.cache import cache_key, cache_paths, default_cache_dir, load_cached, save_cached
from began.data.crop import parse_crop
from began.data.decode import GRAYSCALE, OK, UNREADABLE, Decoded, DecodeOptions, decode_image
from began.data.imageset import BUILTIN_SOURCE, DataError, ImageSet
from began.data.sources import Item, Source, iter_items, open_source
from began.machine import usable_cpus

log = logging.getLogger("began.data")

CHUNK = 64  # files per worker task: large enough to amortise pickling, small for balance
SMALL_SET = 2 * CHUNK  # below this a process pool costs more than it saves
MAX_DETAILED = 20  # warning lines naming files; the rest are counted in one line
BUILTIN_FACES = 100  # skimage's lfw_subset: the first 100 images are faces, the rest not


@dataclass(frozen=True)
class LoadInfo:
    """How a load went (for the CLI and logs; not part of the dataset's identity)."""

    seconds: float
    cache_hit: bool
    cache_path: str | None  # the .npy, or None when not cached (built-in set, write failed)


def load_images(
    source: str,
    image_size: int,
    crop: str = "0.56",
    keep_grayscale: bool = False,
    cache_dir: str | Path | None = None,
    workers: int | None = None,
    progress: bool = False,
) -> ImageSet:
    """Load, crop and resize every image of a folder or archive ("" = built-in faces).

    Decoded sets are cached (see began.data.cache); a second load reads one .npy.
    Raises DataError with a one-line message naming the path or option.
    """
    images, _ = load_with_info(
        source, image_size, crop, keep_grayscale, cache_dir, workers, progress
    )
    return images


def load_with_info(
    source: str,
    image_size: int,
    crop: str = "0.56",
    keep_grayscale: bool = False,
    cache_dir: str | Path | None = None,
    workers: int | None = None,
    progress: bool = False,
) -> tuple[ImageSet, LoadInfo]:
    """:func:`load_images`, plus timing and cache details."""
    start = time.perf_counter()
    _check_size(image_size)
    if source == "":
        return builtin_faces(image_size), LoadInfo(time.perf_counter() - start, False, None)
    try:
        spec = parse_crop(crop)
    except ValueError as exc:
        raise DataError(str(exc)) from None
    workers = _check_workers(workers)
    src = open_source(source)
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    key = cache_key(
        {
            "source": str(src.path),
            "kind": src.kind,
            "files": src.signature,
            "image_size": image_size,
            "crop": spec.canonical(),
            "keep_grayscale": keep_grayscale,
            # A different Pillow (libjpeg) may decode slightly different pixels.
            "pillow": PIL.__version__,
        }
    )
    array_path, meta_path = cache_paths(folder, key)
    cached = load_cached(folder, key)
    if cached is not None:
        images, meta = cached
        log.info("loaded %d images of %s from cache %s", len(images), src.path, array_path)
        image_set = _image_set(images, str(src.path), meta)
        return image_set, LoadInfo(time.perf_counter() - start, True, str(array_path))

    results = decode_all(src, DecodeOptions(image_size, spec, keep_grayscale), workers, progress)
    images, meta = _assemble(src, results, image_size, crop, keep_grayscale)
    saved = save_cached(folder, key, images, meta)
    _report(src, results, listed_in=meta_path if saved else None)
    info = LoadInfo(time.perf_counter() - start, False, str(saved) if saved else None)
    return _image_set(images, str(src.path), meta), info


def _assemble(
    src: Source, results: list[Decoded], image_size: int, crop: str, keep_grayscale: bool
) -> tuple[np.ndarray, dict[str, Any]]:
    """The (N, 3, H, W) array of the kept images and the metadata recorded with it."""
    counts = _counts(results)
    if counts["kept"] == 0:
        _report(src, results, listed_in=None)
        raise DataError(_nothing_usable(src, counts))
    images = np.empty((counts["kept"], 3, image_size, image_size), dtype=np.uint8)
    for index, result in enumerate(r for r in results if r.status == OK):
        images[index] = result.pixels.transpose(2, 0, 1)  # HWC -> CHW
    meta = {
        **counts,
        "source": str(src.path),
        "fingerprint": fingerprint(images, image_size, parse_crop(crop).canonical()),
        "options": {"image_size": image_size, "crop": crop, "keep_grayscale": keep_grayscale},
        "pillow": PIL.__version__,
        # The record of what was left out and why, for the warnings' "and N more".
        "skipped": [[r.name, r.status, r.message] for r in results if r.status != OK],
        "converted": [[r.name, r.message] for r in results if r.status == OK and r.message],
    }
    return images, meta


def _check_size(image_size: int) -> None:
    if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 1:
        raise DataError(f"image_size: must be a positive integer, got {image_size!r}")


def _check_workers(workers: int | None) -> int:
    if workers is None:
        return usable_cpus()
    if not isinstance(workers, int) or workers < 1:
        raise DataError(f"workers: must be >= 1, got {workers!r}")
    return workers


def _image_set(images: np.ndarray, source: str, meta: dict) -> ImageSet:
    return ImageSet(
        images=images,
        source=source,
        fingerprint=meta["fingerprint"],
        found=meta["found"],
        kept=meta["kept"],
        skipped_grayscale=meta["skipped_grayscale"],
        skipped_unreadable=meta["skipped_unreadable"],
        grayscale_kept=meta["options"]["keep_grayscale"],
    )


def fingerprint(images: np.ndarray, image_size: int, crop: str) -> str:
    """16 hex characters identifying the pixels and the options that made them."""
    digest = hashlib.blake2b(digest_size=8)
    header = {"shape": list(images.shape), "image_size": image_size, "crop": crop}
    digest.update(json.dumps(header, sort_keys=True).encode())
    digest.update(np.ascontiguousarray(images).data)
    return digest.hexdigest()


def _counts(results: list[Decoded]) -> dict[str, int]:
    statuses = [r.status for r in results]
    return {
        "found": len(results),
        "kept": statuses.count(OK),
        "skipped_grayscale": statuses.count(GRAYSCALE),
        "skipped_unreadable": statuses.count(UNREADABLE),
    }


def _nothing_usable(src: Source, counts: dict[str, int]) -> str:
    hint = "; keep_grayscale=True keeps grayscale images" if counts["skipped_grayscale"] else ""
    return (
        f"data: {src.path} has no usable image: of {counts['found']} files, "
        f"{counts['skipped_unreadable']} are unreadable and "
        f"{counts['skipped_grayscale']} grayscale{hint}"
    )


def _report(src: Source, results: list[Decoded], listed_in: Path | None) -> None:
    """One warning line per skipped or converted file, up to MAX_DETAILED, then a count."""
    problems = [r for r in results if r.status == UNREADABLE or (r.status == OK and r.message)]
    for r in problems[:MAX_DETAILED]:
        prefix = "skipped: " if r.status == UNREADABLE else ""
        log.warning("%s: %s%s", src.display(r.name), prefix, r.message)
    if len(problems) > MAX_DETAILED:
        where = f" (all listed in {listed_in})" if listed_in else ""
        log.warning(
            "... and %d more files skipped or converted%s", len(problems) - MAX_DETAILED, where
        )
    # Dropping grayscale images is the expected default, so it is INFO, not WARNING.
    grays = [r for r in results if r.status == GRAYSCALE]
    for r in grays[:MAX_DETAILED]:
        log.info("%s: skipped: %s", src.display(r.name), r.message)
    if grays:
        log.info("skipped %d grayscale images (keep_grayscale=True keeps them)", len(grays))


def decode_all(
    src: Source, options: DecodeOptions, workers: int, progress: bool = False
) -> list[Decoded]:
    """Decode every file of ``src``, in a process pool when it pays; sorted by name."""
    total = len(src.names) if src.names is not None else None
    bar = _progress_bar(total, progress)
    results: list[Decoded] = []
    chunks = _chunks(iter_items(src), CHUNK)
    try:
        if workers == 1 or (total is not None and total < SMALL_SET):
            for chunk in chunks:
                results.extend(decode_chunk(chunk, options))
                bar.update(len(chunk))
        else:
            for done in _pooled(chunks, options, workers):
                results.extend(done)
                bar.update(len(done))
    finally:
        bar.close()
    # A tar stream arrives in archive order; every source ends up in name order.
    results.sort(key=lambda r: r.name)
    return results


def decode_chunk(chunk: list[Item], options: DecodeOptions) -> list[Decoded]:
    """Worker task: decode a list of files (an item the parent could not read is skipped)."""
    return [
        Decoded(item.name, UNREADABLE, item.error)
        if item.error
        else decode_image(item.name, options, path=item.path, data=item.data)
        for item in chunk
    ]


def _pooled(
    chunks: Iterable[list[Item]], options: DecodeOptions, workers: int
) -> Iterator[list[Decoded]]:
    # "fork" on Linux: workers start in milliseconds and never re-import the user's
    # __main__ (a training script without a main guard). Safe although the parent may
    # have torch loaded: the workers only use PIL and numpy. Elsewhere fork is unsafe
    # (macOS frameworks) or missing, so use spawn.
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    context = multiprocessing.get_context(method)
    with context.Pool(workers) as pool:
        # A bounded window of tasks in flight: archive bytes are read in the parent, and
        # an unbounded queue would hold the whole archive in memory.
        pending: deque = deque()
        for chunk in chunks:
            pending.append(pool.apply_async(decode_chunk, (chunk, options)))
            while len(pending) > 2 * workers + 2:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def _chunks(items: Iterable[Item], size: int) -> Iterator[list[Item]]:
    chunk: list[Item] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class _NoBar:
    def update(self, count: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(total: int | None, enabled: bool) -> Any:  # tqdm, or a stand-in
    if not enabled:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is a dependency, but a progress bar is never worth a crash
        return _NoBar()
    return tqdm(total=total, unit="img", desc="decoding", file=sys.stderr, leave=False)


def builtin_faces(image_size: int) -> ImageSet:
    """skimage's LFW subset: its first 100 images (faces), 25x25 grayscale, upscaled.

    Resized bicubically in float, replicated to three channels; grayscale is kept
    (there is nothing else). No crop: the faces are already tightly cropped.
    """
    _check_size(image_size)
    from skimage.data import lfw_subset  # heavy import, only for the demo set

    faces = lfw_subset()[:BUILTIN_FACES]
    images = np.empty((len(faces), 3, image_size, image_size), dtype=np.uint8)
    for index, face in enumerate(faces):
        resized = Image.fromarray(face.astype(np.float32)).resize(
            (image_size, image_size), Image.Resampling.BICUBIC
        )
        values = np.clip(np.rint(np.asarray(resized) * 255.0), 0, 255)
        images[index] = values.astype(np.uint8)  # broadcast over the 3 channels
    count = len(images)
    return ImageSet(
        images=images,
        source=BUILTIN_SOURCE,
        fingerprint=fingerprint(images, image_size, "builtin"),
        found=count,
        kept=count,
        skipped_grayscale=0,
        skipped_unreadable=0,
        grayscale_kept=True,
    )
