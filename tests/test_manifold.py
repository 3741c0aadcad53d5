"""Precision, recall, density and coverage: the math against the authors' `prdc` package
and known cases, the radii cache, the registry and studies, evaluate() end to end, the
reference-set size option and the progress line of the real features."""

from __future__ import annotations

import io
import math
import re

import numpy as np
import pytest
import torch

import began.metrics.builtin as builtin
from began.config import ConfigError, TrainConfig
from began.core.models import Generator, sample_z
from began.data import ImageSet
from began.evaluate import main as evaluate_main
from began.metrics import EvalInputs, evaluate, logged_names, metric_direction, parse_metrics
from began.metrics import manifold as mf
from began.metrics.progress import CountProgress
from began.metrics.real_stats import RealStats
from began.metrics.registry import get_metric
from began.metrics.scoring import score
from studies.objectives import resolve_objectives

prdc = pytest.importorskip("prdc")  # test-only dependency (the `dev` extra)

CPU = torch.device("cpu")
METRICS = ("precision", "recall", "density", "coverage")


def features(n: int, d: int = 64, seed: int = 0, shift: float = 0.0, scale: float = 1.0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, d)) * scale + shift).astype(np.float32)


def ours(real: np.ndarray, fake: np.ndarray, chunk: int = mf.DISTANCE_CHUNK) -> dict:
    manifold = mf.real_manifold(mf.as_tensor(real, CPU), chunk)
    return mf.manifold_metrics(manifold, mf.as_tensor(fake, CPU), chunk)


def reference(real: np.ndarray, fake: np.ndarray) -> dict:
    """prdc 0.2 (Naeem et al.'s code): k = 3 for precision/recall, 5 for density/coverage."""
    pr = prdc.compute_prdc(real, fake, nearest_k=mf.PR_NEIGHBOURS)
    dc = prdc.compute_prdc(real, fake, nearest_k=mf.DC_NEIGHBOURS)
    return {"precision": pr["precision"], "recall": pr["recall"],
            "density": dc["density"], "coverage": dc["coverage"]}  # fmt: skip


@pytest.mark.parametrize(
    ("seed", "n_fake", "shift", "scale"),
    [(0, 300, 0.0, 1.0), (1, 300, 0.15, 1.0), (2, 300, 0.0, 1.3), (3, 250, 0.1, 0.7)],
)
def test_matches_the_prdc_package(seed, n_fake, shift, scale) -> None:
    real = features(300, seed=seed)
    fake = features(n_fake, seed=seed + 100, shift=shift, scale=scale)
    got, expected = ours(real, fake), reference(real, fake)
    for name in METRICS:
        assert got[name] == pytest.approx(float(expected[name]), abs=1e-9), name
    # Not all 0 or 1, which any two implementations would agree on.
    assert any(0.0 < got[name] < 1.0 for name in ("precision", "recall", "coverage")), got


def test_identical_sets_and_one_repeated_point() -> None:
    real = features(200, d=16, seed=4)
    same = ours(real, real.copy())
    assert same["precision"] == same["recall"] == same["coverage"] == 1.0
    assert 0.5 < same["density"] < 2.0
    one = ours(real, np.repeat(real[:1], 200, axis=0))  # G collapsed onto one real image
    assert one["precision"] == 1.0  # every sample is real-looking ...
    assert one["recall"] <= 1 / 200 and one["coverage"] <= 10 / 200  # ... and it is one image


def test_chunks_smaller_than_the_set_give_the_same_numbers() -> None:
    real, fake = features(230, seed=5), features(190, seed=6, shift=0.1)
    assert ours(real, fake, chunk=17) == ours(real, fake)
    radii = mf.knn_radii(mf.as_tensor(real, CPU), 3, chunk=29)
    torch.testing.assert_close(radii, mf.knn_radii(mf.as_tensor(real, CPU), 3))
    with pytest.raises(ValueError, match="more than k"):
        mf.knn_radii(mf.as_tensor(real[:3], CPU), 3)


def test_distances_are_float64_on_cpu() -> None:
    assert mf.as_tensor(features(4), CPU).dtype == torch.float64
    assert mf.distance_dtype("cuda:0") == torch.float32


# --- the real side's radii, cached beside the statistics ------------------------------------


def stats_in(tmp_path, n: int = 120, seed: int = 7) -> RealStats:
    feats = features(n, d=8, seed=seed)
    return RealStats(feats.mean(0), np.cov(feats.T), feats, tmp_path / "stats" / "abc.npz")


def test_real_radii_are_cached_per_count_and_rebuilt_when_stale(tmp_path, monkeypatch) -> None:
    stats = stats_in(tmp_path)
    first = mf.cached_real_manifold(stats, 50, CPU)
    assert first.features.shape == (50, 8)  # a subset as large as the generated set
    path = tmp_path / "stats" / "abc.knn-50-float64.npz"
    assert path.exists() and not list(path.parent.glob("*.tmp"))

    def refuse(*args, **kwargs):
        raise AssertionError("radii recomputed although the cache holds them")

    monkeypatch.setattr(mf, "real_manifold", refuse)
    again = mf.cached_real_manifold(stats, 50, CPU)
    torch.testing.assert_close(again.radii_dc, first.radii_dc)
    torch.testing.assert_close(again.features, first.features)
    monkeypatch.undo()
    everything = mf.cached_real_manifold(stats, 500, CPU)  # more than the reference set: all
    assert everything.features.shape == (120, 8)
    assert (tmp_path / "stats" / "abc.knn-120-float64.npz").exists()
    other = stats_in(tmp_path, seed=8)  # same file name, other features: never reused
    with pytest.warns(UserWarning, match="rebuilding"):
        rebuilt = mf.cached_real_manifold(other, 50, CPU)
    assert not torch.equal(rebuilt.radii_pr, first.radii_pr)


# --- registry, studies, evaluate --------------------------------------------------------------


def test_registered_with_counts_and_directions() -> None:
    requests = parse_metrics("precision,recall_5k,density_64,coverage_1k")
    names = logged_names(requests)
    assert names == ["precision_1k", "recall_5k", "density_64", "coverage_1k"]
    assert all(metric_direction(name) == "maximize" for name in names)
    assert all(get_metric(m).uses_feature_network for m in METRICS)
    with pytest.raises(ValueError, match="at least 6 samples"):
        parse_metrics("precision_5")


@pytest.mark.parametrize(("name", "logged"), [("precision", "precision_1k"),
                                              ("coverage", "coverage_5k"),
                                              ("recall_2k", "recall_2k")])  # fmt: skip
def test_each_is_a_study_objective(name, logged) -> None:
    [objective], metrics = resolve_objectives(name, "fid,coverage_5k")
    assert (objective.logged, objective.direction) == (logged, "maximize")
    assert logged in logged_names(parse_metrics(metrics))


def tiny_inputs(tmp_path, network, num_real: int = 80) -> EvalInputs:
    torch.manual_seed(0)
    G = Generator(16, 4, 8, 1).eval()
    z = torch.Generator().manual_seed(1)
    real = torch.randint(0, 256, (num_real, 3, 16, 16), generator=torch.Generator().manual_seed(2))
    return EvalInputs(
        generate=torch.no_grad()(lambda n: G(sample_z(n, 8, z)).clamp(-1, 1)),
        reconstruct=lambda x: x, real_images=real.to(torch.uint8),
        heldout_images=real[:0].to(torch.uint8), dataset_fingerprint="noise", device=CPU,
        cache_dir=tmp_path, feature_network=str(network), batch_size=32,
    )  # fmt: skip


def test_evaluate_computes_the_four_in_one_pass(tmp_path, monkeypatch, tiny_network) -> None:
    calls = []
    original = builtin.manifold_metrics

    def counted(real, fake, *args, **kwargs):
        calls.append((real.features.shape[0], fake.shape[0]))
        return original(real, fake, *args, **kwargs)

    monkeypatch.setattr(builtin, "manifold_metrics", counted)
    spec = "fid_64,precision_64,recall_64,density_64,coverage_64,coverage_32"
    values = evaluate(parse_metrics(spec), tiny_inputs(tmp_path, tiny_network))
    assert list(values) == logged_names(parse_metrics(spec))
    assert calls == [(64, 64), (32, 32)]  # once per count; equal-sized sets
    assert all(0.0 <= values[f"{m}_64"] <= 1.0 for m in ("precision", "recall", "coverage"))
    assert math.isfinite(values["density_64"]) and values["density_64"] >= 0.0
    assert len(list((tmp_path / "stats").glob("*.knn-64-float64.npz"))) == 1


def test_reference_size_is_an_option_passed_to_the_evaluation(monkeypatch) -> None:
    with pytest.raises(ConfigError, match="reference_size: must be >= 2"):
        TrainConfig(reference_size=1)
    seen = []
    monkeypatch.setattr("began.metrics.scoring.evaluate", lambda r, inputs: seen.append(inputs))
    images = np.zeros((4, 3, 16, 16), np.uint8)
    dataset = ImageSet(images, "x", "fp", 4, 4, 0, 0, False)
    cfg = TrainConfig(image_size=16, filters=4, hidden=8, repeat=1, reference_size=3)
    G = Generator(16, 4, 8, 1)
    score(G, G, cfg, parse_metrics("fid_8"), dataset, images[:1], CPU)
    assert seen[0].max_reference == 3


def test_evaluate_command_checks_reference_size_first(capsys) -> None:
    from began.cli import run_cli

    with pytest.raises(SystemExit) as exit_info:
        run_cli(evaluate_main, ["--run", "0" * 32, "--reference-size", "1"])
    assert exit_info.value.code == 2
    assert "--reference-size: must be >= 2, got 1" in capsys.readouterr().err


def test_progress_in_a_log_file_is_plain_lines_with_count_rate_and_eta() -> None:
    stream = io.StringIO()  # not a terminal, as a log file
    shown = CountProgress(1000, "real-image features", stream=stream)
    for _ in range(40):
        shown.update(25)
    shown.close()
    lines = stream.getvalue().splitlines()
    assert lines[0] == "real-image features: 1,000 images to go"
    assert len(lines) == 11  # the start, every 10% to 90%, the end
    assert re.fullmatch(r"real-image features: 500/1,000 images \(50%\), [0-9.]+ images/s, "
                        r"ETA [0-9]+ s", lines[5])  # fmt: skip
    assert lines[-1].startswith("real-image features: 1,000 images in ")
