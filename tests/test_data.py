"""Tests of began.data on small generated images (fast) and on LFW (marked slow)."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import began.data
from began.data import load as load_module
from began.data.__main__ import main
from began.data.cache import cache_paths, default_cache_dir
from began.data.crop import CropSpec, crop_box, parse_crop
from began.data.decode import to_rgb
from began.data.imageset import BUILTIN_SOURCE, DataError
from began.data.load import builtin_faces, load_images, load_with_info
from began.data.sampler import BatchSampler, split_holdout

REPO = Path(__file__).resolve().parents[1]
LFW = REPO / "../shared/data/lfw-deepfunneled"


def colour_image(seed: int, size: tuple[int, int] = (40, 40)) -> Image.Image:
    """Smooth random colours: JPEG keeps them colourful (R, G, B differ)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return Image.fromarray(small).resize(size, Image.Resampling.BILINEAR)


def jpeg_bytes(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90, **kwargs)
    return buffer.getvalue()


def write(path: Path, content: bytes | Image.Image) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        content.save(path)
    return path


def good_folder(root: Path, count: int = 4) -> Path:
    """`count` colour JPEGs and PNGs in one folder per "person", like LFW."""
    for index in range(count):
        person = root / f"person_{index % 2}"
        if index % 2:
            write(person / f"img_{index}.png", colour_image(index))
        else:
            write(person / f"img_{index}.jpg", jpeg_bytes(colour_image(index)))
    return root


def mixed_folder(root: Path) -> Path:
    """3 good images plus one of each kind of problem file."""
    good_folder(root, 3)
    bad = root / "bad"
    write(bad / "corrupt.jpg", b"\xff\xd8\xff\xe0 this is not really a jpeg" * 10)
    write(bad / "truncated.jpg", jpeg_bytes(colour_image(7, (80, 80)))[:600])
    write(bad / "notes.txt", b"not an image\n")
    write(bad / "tiny.png", colour_image(8, (4, 4)))
    write(bad / "cmyk.jpg", colour_image(9).convert("CMYK"))
    rgba = colour_image(10).convert("RGBA")
    rgba.putalpha(128)
    write(bad / "rgba.png", rgba)
    deep = (np.arange(40 * 40).reshape(40, 40) * 40).astype(np.uint16)
    write(bad / "deep16.png", Image.fromarray(deep))
    write(bad / "gray_rgb.png", colour_image(11).convert("L").convert("RGB"))
    write(bad / "gray_l.png", colour_image(12).convert("L"))
    return root


def counts(image_set) -> tuple[int, int, int, int]:
    """(found, kept, skipped_grayscale, skipped_unreadable)."""
    return tuple(image_set.summary().values())


def load(source: Path | str, tmp_path: Path, **kwargs):
    kwargs.setdefault("workers", 1)
    kwargs.setdefault("cache_dir", tmp_path / "cache")
    return load_images(str(source), kwargs.pop("image_size", 16), **kwargs)


def test_public_api_is_importable_from_the_package() -> None:
    for name in began.data.__all__:
        assert getattr(began.data, name) is not None
    assert began.data.load_images is load_images and began.data.BatchSampler is BatchSampler


def test_parse_crop() -> None:
    assert parse_crop("0.56") == CropSpec("fraction", fraction=0.56)
    assert parse_crop(" 1 ") == CropSpec("fraction", fraction=1.0)
    assert parse_crop("140") == CropSpec("pixels", pixels=140)
    assert parse_crop("10, 20,110,120") == CropSpec("box", box=(10, 20, 110, 120))
    assert parse_crop("None") == CropSpec("none")


@pytest.mark.parametrize(
    "bad", ["0", "-0.5", "abc", "", "140.5", "nan", "1,2,3", "5,5,2,2", "a,b,c,d"]
)
def test_parse_crop_rejects_with_one_line_naming_crop(bad: str) -> None:
    with pytest.raises(ValueError, match=r"^crop: ") as info:
        parse_crop(bad)
    assert repr(bad) in str(info.value) and "\n" not in str(info.value)


def test_crop_box() -> None:
    assert crop_box(parse_crop("0.56"), 250, 250) == (55, 55, 195, 195)
    assert crop_box(parse_crop("none"), 250, 250) == (0, 0, 250, 250)
    assert crop_box(parse_crop("none"), 300, 200) == (50, 0, 250, 200)  # no distortion
    assert crop_box(parse_crop("0.5"), 300, 200) == (100, 50, 200, 150)
    assert crop_box(parse_crop("140"), 250, 250) == (55, 55, 195, 195)
    assert crop_box(parse_crop("400"), 250, 100) == (75, 0, 175, 100)  # clamped
    assert crop_box(parse_crop("10,20,300,90"), 250, 250) == (10, 20, 250, 90)
    with pytest.raises(ValueError, match="outside"):
        crop_box(parse_crop("300,300,400,400"), 250, 250)


def test_counts_and_a_warning_naming_each_bad_file(tmp_path: Path, caplog) -> None:
    root = mixed_folder(tmp_path / "images")
    with caplog.at_level(logging.INFO, logger="began.data"):
        images = load(root, tmp_path)
    # kept: 3 good + CMYK and RGBA converted; grayscale: gray RGB, mode L, 16-bit gray;
    # unreadable: corrupt, truncated, .txt, tiny.
    assert counts(images) == (12, 5, 3, 4)
    assert images.images.shape == (5, 3, 16, 16) and images.images.dtype == np.uint8
    assert not images.grayscale_kept
    lines = {r.getMessage() for r in caplog.records}
    for name, level, words in [
        ("corrupt.jpg", logging.WARNING, "skipped"),
        ("truncated.jpg", logging.WARNING, "truncated"),
        ("notes.txt", logging.WARNING, "not an image"),
        ("tiny.png", logging.WARNING, "too small"),
        ("cmyk.jpg", logging.WARNING, "CMYK"),
        ("rgba.png", logging.WARNING, "onto black"),
        ("gray_rgb.png", logging.INFO, "grayscale"),
        ("gray_l.png", logging.INFO, "grayscale"),
        ("deep16.png", logging.INFO, "grayscale"),
    ]:
        matches = [r for r in caplog.records if name in r.getMessage()]
        assert len(matches) == 1, (name, lines)
        assert matches[0].levelno == level and words in matches[0].getMessage()
        assert "\n" not in matches[0].getMessage()


def test_keep_grayscale_keeps_and_converts(tmp_path: Path, caplog) -> None:
    root = mixed_folder(tmp_path / "images")
    with caplog.at_level(logging.WARNING, logger="began.data"):
        images = load(root, tmp_path, keep_grayscale=True)
    assert images.summary()["kept"] == 8 and images.skipped_grayscale == 0
    assert images.grayscale_kept
    deep = [r.getMessage() for r in caplog.records if "deep16.png" in r.getMessage()]
    assert deep and "I;16" in deep[0] and "8-bit RGB" in deep[0]


def test_rgba_is_composited_onto_black_and_16_bit_is_scaled() -> None:
    rgba = Image.new("RGBA", (2, 1))
    rgba.putpixel((0, 0), (200, 100, 50, 0))
    rgba.putpixel((1, 0), (200, 100, 50, 255))
    rgb, note = to_rgb(rgba)
    assert np.asarray(rgb).tolist() == [[[0, 0, 0], [200, 100, 50]]] and "black" in note
    deep = Image.fromarray(np.array([[0, 65535, 32896]], dtype=np.uint16))
    assert np.asarray(to_rgb(deep)[0])[0, :, 0].tolist() == [0, 255, 128]


def test_large_jpeg_in_draft_mode_matches_a_full_decode(tmp_path: Path) -> None:
    # 512 px, crop none, size 64: decoded at 1/8 scale (64 px) then resized.
    big = colour_image(3, (512, 512))
    write(tmp_path / "colour" / "big.jpg", jpeg_bytes(big))
    draft = load(tmp_path / "colour", tmp_path, image_size=64, crop="none").images[0]
    full = np.asarray(Image.open(tmp_path / "colour" / "big.jpg").convert("RGB").resize((64, 64)))
    assert np.abs(draft.transpose(1, 2, 0).astype(int) - full.astype(int)).mean() < 3
    # A grayscale image stored as RGB JPEG is still found grayscale through the draft.
    write(tmp_path / "gray" / "big.jpg", jpeg_bytes(big.convert("L").convert("RGB")))
    write(tmp_path / "gray" / "ok.jpg", jpeg_bytes(big))
    assert load(tmp_path / "gray", tmp_path, image_size=64).skipped_grayscale == 1


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    image = Image.new("RGB", (64, 32), (255, 0, 0))
    image.paste((0, 0, 255), (32, 0, 64, 32))  # left red, right blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to view": left half ends up on top
    write(tmp_path / "rot" / "a.jpg", jpeg_bytes(image, exif=exif))
    pixels = load(tmp_path / "rot", tmp_path, crop="none").images[0]
    assert pixels[0, 1, 8] > 200 and pixels[2, 1, 8] < 60  # top row red
    assert pixels[2, 14, 8] > 200 and pixels[0, 14, 8] < 60  # bottom row blue


def one_line_error(tmp_path: Path, source: Path | str, match: str, **kwargs) -> None:
    with pytest.raises(DataError, match=match) as info:
        load(source, tmp_path, **kwargs)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, ValueError)


def test_bad_sources_raise_one_line_naming_the_path(tmp_path: Path) -> None:
    one_line_error(tmp_path, tmp_path / "missing", "missing does not exist")
    (tmp_path / "empty" / ".hidden").mkdir(parents=True)
    one_line_error(tmp_path, tmp_path / "empty", "empty is an empty folder")
    write(tmp_path / "bad" / "a.txt", b"text")
    write(tmp_path / "bad" / "b.jpg", b"garbage")
    one_line_error(tmp_path, tmp_path / "bad", r"bad has no usable image: of 2 files, 2 are")
    write(tmp_path / "gray" / "a.png", colour_image(1).convert("L"))
    one_line_error(tmp_path, tmp_path / "gray", "keep_grayscale=True")
    single = write(tmp_path / "one.jpg", jpeg_bytes(colour_image(1)))
    one_line_error(tmp_path, single, "one.jpg is a file, not a folder")
    fake = write(tmp_path / "fake.tgz", b"not a tar")
    one_line_error(tmp_path, fake, "fake.tgz is not a readable tar")
    one_line_error(tmp_path, good_folder(tmp_path / "ok"), "^crop: ", crop="zero")
    one_line_error(tmp_path, tmp_path / "ok", "^workers: ", workers=0)


def make_archives(root: Path, folder: Path) -> dict[str, Path]:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    archives = {"zip": root / "set.zip", "tgz": root / "set.tgz", "tar": root / "set.tar"}
    with zipfile.ZipFile(archives["zip"], "w") as archive:
        for path in reversed(files):  # member order must not matter
            archive.write(path, f"faces/{path.relative_to(folder).as_posix()}")
    with tarfile.open(archives["tgz"], "w:gz") as archive:
        for path in reversed(files):
            archive.add(path, f"./{path.relative_to(folder).as_posix()}")
        archive.addfile(tarfile.TarInfo("./._resource_fork.jpg"), io.BytesIO(b""))
    with tarfile.open(archives["tar"], "w") as archive:
        archive.add(folder, "faces")
    return archives


def test_archives_give_the_same_pixels_as_the_folder(tmp_path: Path) -> None:
    folder = mixed_folder(tmp_path / "images")
    expected = load(folder, tmp_path)
    for kind, archive in make_archives(tmp_path, folder).items():
        got = load(archive, tmp_path)
        assert got.summary() == expected.summary(), kind
        assert np.array_equal(got.images, expected.images), kind
        assert got.fingerprint == expected.fingerprint, kind


def test_process_pool_gives_the_same_result(tmp_path: Path) -> None:
    folder = good_folder(tmp_path / "images", 6)
    archive = make_archives(tmp_path, folder)["tgz"]
    serial = load(archive, tmp_path, workers=1, cache_dir=tmp_path / "c1")
    pooled = load(archive, tmp_path, workers=2, cache_dir=tmp_path / "c2")
    assert np.array_equal(serial.images, pooled.images)


def test_second_load_comes_from_the_cache(tmp_path: Path, monkeypatch) -> None:
    folder = good_folder(tmp_path / "images")
    first, info = load_with_info(str(folder), 16, cache_dir=tmp_path / "cache", workers=1)
    assert not info.cache_hit and info.cache_path and Path(info.cache_path).exists()

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again instead of using the cache")

    monkeypatch.setattr(load_module, "decode_all", no_decoding)
    second, info = load_with_info(str(folder), 16, cache_dir=tmp_path / "cache", workers=1)
    assert info.cache_hit
    assert np.array_equal(first.images, second.images)
    assert first.summary() == second.summary() and first.fingerprint == second.fingerprint
    monkeypatch.undo()
    write(folder / "person_9" / "new.jpg", jpeg_bytes(colour_image(99)))  # a changed folder
    assert load(folder, tmp_path).found == 5


@pytest.mark.parametrize("damage", ["garbage", "truncate", "flip", "no_array"])
def test_a_damaged_cache_is_rebuilt(tmp_path: Path, caplog, damage: str) -> None:
    folder = good_folder(tmp_path / "images")
    first, info = load_with_info(str(folder), 16, cache_dir=tmp_path / "cache", workers=1)
    array = Path(info.cache_path)
    data = array.read_bytes()
    damaged = {"garbage": b"nonsense", "truncate": data[:-100], "no_array": None}
    damaged["flip"] = data[:-1] + bytes([data[-1] ^ 0xFF])  # caught by the CRC only
    array.unlink()
    if damaged[damage] is not None:
        array.write_bytes(damaged[damage])
    with caplog.at_level(logging.WARNING, logger="began.data"):
        again, info = load_with_info(str(folder), 16, cache_dir=tmp_path / "cache", workers=1)
    assert not info.cache_hit and np.array_equal(first.images, again.images)
    assert any("damaged" in r.getMessage() for r in caplog.records)
    assert load_with_info(str(folder), 16, cache_dir=tmp_path / "cache", workers=1)[1].cache_hit


def test_fingerprint_is_stable_and_follows_the_options(tmp_path: Path) -> None:
    folder = good_folder(tmp_path / "images")
    base = load(folder, tmp_path, cache_dir=tmp_path / "a").fingerprint
    assert len(base) == 16
    assert load(folder, tmp_path, cache_dir=tmp_path / "b").fingerprint == base
    assert load(folder, tmp_path, crop="0.8").fingerprint != base
    assert load(folder, tmp_path, image_size=32).fingerprint != base


def test_an_unwritable_cache_only_warns(tmp_path: Path, caplog) -> None:
    folder = good_folder(tmp_path / "images")
    blocked = write(tmp_path / "a_file", b"")  # a file where the cache folder should be
    with caplog.at_level(logging.WARNING, logger="began.data"):
        images, info = load_with_info(str(folder), 16, cache_dir=blocked / "cache", workers=1)
    assert images.kept == 4 and info.cache_path is None
    assert any("could not write the image cache" in r.getMessage() for r in caplog.records)


def test_default_cache_dir(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BEGAN_CACHE_DIR", str(tmp_path / "explicit"))
    assert default_cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("BEGAN_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "began"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == Path.home() / ".cache" / "began"


def test_cache_files_are_npy_and_json(tmp_path: Path) -> None:
    images, info = load_with_info(
        str(good_folder(tmp_path / "i")), 16, cache_dir=tmp_path, workers=1
    )
    array_path = Path(info.cache_path)
    meta = json.loads(cache_paths(array_path.parent, array_path.stem)[1].read_text())
    assert meta["kept"] == 4 and meta["fingerprint"] == images.fingerprint
    assert np.load(array_path).shape == (4, 3, 16, 16)
    assert [p.name for p in array_path.parent.iterdir() if p.name.startswith(".")] == []


def test_builtin_faces() -> None:
    faces = builtin_faces(32)
    assert faces.images.shape == (100, 3, 32, 32) and faces.images.dtype == np.uint8
    assert faces.source == BUILTIN_SOURCE and faces.grayscale_kept
    assert counts(faces) == (100, 100, 0, 0)
    assert faces.images.min() < 40 and faces.images.max() > 200  # the full range is used
    assert np.array_equal(faces.images[:, 0], faces.images[:, 2])
    assert load_images("", 32).fingerprint == faces.fingerprint


def test_split_holdout() -> None:
    images = np.arange(50)
    train, held = split_holdout(images, 10)
    assert len(train) == 40 and len(held) == 10
    assert set(train) | set(held) == set(range(50)) and not set(train) & set(held)
    again_train, again_held = split_holdout(images, 10)
    assert np.array_equal(held, again_held) and np.array_equal(train, again_train)
    assert set(split_holdout(images, 5)[1]) <= set(held)  # nested
    assert len(split_holdout(images, 0)[1]) == 0
    with pytest.raises(DataError, match="^holdout: "):
        split_holdout(images, 49)


def numbered_images(count: int) -> torch.Tensor:
    """Image i is filled with the value i, so a batch tells which images it holds."""
    return torch.arange(count, dtype=torch.uint8).view(count, 1, 1, 1).expand(count, 3, 4, 4)


def ids(batch: torch.Tensor) -> list[int]:
    return [round(v) for v in ((batch[:, 0, 0, 0] + 1) * 127.5).tolist()]


def test_batch_sampler_values_and_determinism() -> None:
    images = torch.zeros(20, 3, 4, 4, dtype=torch.uint8)
    images[1] = 255
    sampler = BatchSampler(images, batch_size=20, seed=0)
    batch = sampler.batch(0)
    assert batch.dtype == torch.float32 and batch.shape == (20, 3, 4, 4)
    assert batch.min().item() == -1.0 and batch.max().item() == 1.0
    numbered = numbered_images(30)
    first = BatchSampler(numbered, 4, seed=7)
    assert ids(first.batch(3)) == ids(BatchSampler(numbered, 4, seed=7).batch(3))
    assert ids(first.batch(3)) != ids(BatchSampler(numbered, 4, seed=8).batch(3))


def test_batch_sampler_epochs_cover_each_image_once() -> None:
    sampler = BatchSampler(numbered_images(12), batch_size=4, seed=1)
    assert sampler.steps_per_epoch == 3
    for epoch in range(3):
        seen = [i for step in range(3 * epoch, 3 * epoch + 3) for i in ids(sampler.batch(step))]
        assert sorted(seen) == list(range(12))
    assert sampler.permutation(0).tolist() != sampler.permutation(1).tolist()


def test_a_resumed_sampler_sees_the_same_batches() -> None:
    images = numbered_images(10)  # 2 steps per epoch, 2 images dropped each epoch
    original = BatchSampler(images, batch_size=4, seed=3)
    history = [ids(original.batch(step)) for step in range(9)]
    resumed = BatchSampler(images, batch_size=4, seed=3)
    assert [ids(resumed.batch(step)) for step in range(5, 9)] == history[5:]
    assert ids(resumed.batch(1)) == history[1]  # going back is fine too

    with pytest.raises(DataError, match="^batch_size: "):
        BatchSampler(numbered_images(3), batch_size=4, seed=0)


def test_cli_json(tmp_path: Path, capsys) -> None:
    folder = mixed_folder(tmp_path / "images")
    args = ["prepare", str(folder), "--image-size", "16", "--json", "--workers", "1"]
    assert main([*args, "--cache-dir", str(tmp_path / "cache")]) == 0
    out, err = capsys.readouterr()
    record = json.loads(out.strip().splitlines()[-1])
    assert {"found", "kept", "skipped_grayscale", "skipped_unreadable"} <= set(record)
    assert (record["found"], record["kept"]) == (12, 5) and not record["cache_hit"]
    assert "corrupt.jpg" in err and all(line.startswith("warning: ") for line in err.splitlines())
    assert main([*args, "--cache-dir", str(tmp_path / "cache")]) == 0
    assert json.loads(capsys.readouterr()[0])["cache_hit"]

    assert main(args[:2] + ["--cache-dir", str(tmp_path / "cache")]) == 0  # text output
    assert "found        12" in capsys.readouterr()[0]


def test_cli_caps_warning_lines(tmp_path: Path, capsys) -> None:
    for index in range(25):
        write(tmp_path / "broken" / f"file_{index:02d}.jpg", b"garbage")
    write(tmp_path / "broken" / "ok.jpg", jpeg_bytes(colour_image(0)))
    code = main(["prepare", str(tmp_path / "broken"), "--cache-dir", str(tmp_path / "c"), "--json"])
    err = capsys.readouterr()[1].splitlines()
    assert code == 0 and len(err) == 21
    assert "file_00.jpg" in err[0] and "and 5 more" in err[-1]


@pytest.mark.parametrize(
    "args", ["prepare MISSING", "prepare . --crop big", "prepare . --image-size x"]
)
def test_cli_bad_input_is_one_error_line_and_exit_2(tmp_path: Path, capsys, args: str) -> None:
    args = [str(tmp_path / "missing") if a == "MISSING" else a for a in args.split()]
    try:
        code = main(args)
    except SystemExit as exc:  # argparse errors exit from inside parse_args
        code = exc.code
    err = capsys.readouterr()[1]
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("error: ")


def test_cli_as_a_module_has_no_traceback(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "began.data", "prepare", str(tmp_path / "nope")]
    env = {**os.environ, "BEGAN_CACHE_DIR": str(tmp_path / "cache")}
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env)
    assert result.returncode == 2
    assert result.stderr.startswith("error: data: ") and "Traceback" not in result.stderr
    assert "nope does not exist" in result.stderr


@pytest.mark.slow
@pytest.mark.skipif(not LFW.is_dir(), reason="the LFW folder (lfw-deepfunneled) is not here")
def test_lfw_counts(tmp_path: Path) -> None:
    images = load_images(str(LFW), 64, cache_dir=tmp_path)
    assert images.summary() == dict(
        found=13233, kept=13194, skipped_grayscale=39, skipped_unreadable=0
    )
    assert images.images.shape == (13194, 3, 64, 64)
