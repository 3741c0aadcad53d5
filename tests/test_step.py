"""train_step: which batch enters which loss, which network each loss updates, and k."""

import copy

import pytest
import torch

from began.config import TrainConfig
from began.core.equilibrium import reconstruction_loss
from began.core.models import Discriminator, Generator, sample_z
from began.core.step import STEP_METRICS, TrainState, train_step

SIZE, FILTERS, HIDDEN, BATCH = 16, 4, 8, 4


def make(seed: int = 0, **overrides):
    torch.manual_seed(seed)
    cfg = TrainConfig(
        image_size=SIZE, filters=FILTERS, hidden=HIDDEN, batch_size=BATCH, **overrides
    )
    G = Generator(SIZE, FILTERS, HIDDEN, 1).double()
    D = Discriminator(SIZE, FILTERS, HIDDEN, 1).double()
    rng = torch.Generator().manual_seed(seed)
    x = torch.rand(BATCH, 3, SIZE, SIZE, generator=rng, dtype=torch.float64) * 2 - 1
    z_D = sample_z(BATCH, HIDDEN, rng).double()
    z_G = sample_z(BATCH, HIDDEN, rng).double()
    return cfg, G, D, x, z_D, z_G


def sgd_step(G, D, x, z_D, z_G, k, cfg):
    """One train_step with plain SGD (lr 1): the update is exactly minus the gradient."""
    opt_G = torch.optim.SGD(G.parameters(), lr=1.0)
    opt_D = torch.optim.SGD(D.parameters(), lr=1.0)
    state = TrainState(k=torch.tensor(k, dtype=torch.float64))
    return train_step(G, D, opt_G, opt_D, x, z_D, z_G, state, cfg)


def gradients(loss, params):
    return torch.autograd.grad(loss, list(params), allow_unused=True)


def expected_updates(G, D, x, z_D, z_G, k, shared=False):
    """The paper's gradients, written out by hand on copies of the networks."""
    G, D = copy.deepcopy(G), copy.deepcopy(D)
    fake_D = G(z_G if shared else z_D).detach()
    fake_G = G(z_G)
    loss_D = reconstruction_loss(x, D(x)) - k * reconstruction_loss(fake_D, D(fake_D))
    grad_D = gradients(loss_D, D.parameters())
    loss_G = reconstruction_loss(fake_G, D(fake_G))
    grad_G = gradients(loss_G, G.parameters())
    return grad_D, grad_G


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("k", [0.0, 0.3])
def test_each_network_moves_by_its_own_loss_gradient(shared, k):
    cfg, G, D, x, z_D, z_G = make(shared_fake=shared)
    grad_D, grad_G = expected_updates(G, D, x, z_D, z_G, k, shared)
    before_D = [p.detach().clone() for p in D.parameters()]
    before_G = [p.detach().clone() for p in G.parameters()]
    sgd_step(G, D, x, z_D, z_G, k, cfg)
    for p, p0, g in zip(D.parameters(), before_D, grad_D, strict=True):
        torch.testing.assert_close(p0 - p.detach(), g, rtol=1e-6, atol=1e-9)
    for p, p0, g in zip(G.parameters(), before_G, grad_G, strict=True):
        torch.testing.assert_close(p0 - p.detach(), g, rtol=1e-6, atol=1e-9)


def test_loss_fake_is_the_generator_batch_and_k_uses_it():
    cfg, G, D, x, z_D, z_G = make(gamma=0.5, lambda_k=0.1)
    with torch.no_grad():
        loss_real = reconstruction_loss(x, D(x)).item()
        fake_G, fake_D = G(z_G), G(z_D)
        loss_fake_G = reconstruction_loss(fake_G, D(fake_G)).item()
        loss_fake_D = reconstruction_loss(fake_D, D(fake_D)).item()
    assert abs(loss_fake_G - loss_fake_D) > 1e-6  # the two batches are told apart
    k = 0.4
    state, metrics = sgd_step(G, D, x, z_D, z_G, k, cfg)
    assert metrics["loss_fake"].item() == pytest.approx(loss_fake_G, rel=1e-9)
    assert metrics["loss_real"].item() == pytest.approx(loss_real, rel=1e-9)
    assert metrics["loss_g"].item() == pytest.approx(loss_fake_G, rel=1e-9)
    assert metrics["loss_d"].item() == pytest.approx(loss_real - k * loss_fake_D, rel=1e-9)
    assert metrics["k"].item() == k  # the k this step used
    expected_k = min(max(k + 0.1 * (0.5 * loss_real - loss_fake_G), 0.0), 1.0)
    assert state.k.item() == pytest.approx(expected_k, rel=1e-9)
    assert metrics["m_global"].item() == pytest.approx(
        loss_real + abs(0.5 * loss_real - loss_fake_G), rel=1e-9
    )
    assert metrics["balance"].item() == pytest.approx(0.5 * loss_real - loss_fake_G, rel=1e-9)
    assert state.step == 1
    assert set(metrics) == set(STEP_METRICS)


def test_k_is_clipped_inside_the_step():
    cfg, G, D, x, z_D, z_G = make(lambda_k=100.0)
    state, _ = sgd_step(G, D, x, z_D, z_G, 0.5, cfg)
    assert state.k.item() in (0.0, 1.0)


def test_step_keeps_values_on_the_device_as_tensors():
    cfg, G, D, x, z_D, z_G = make()
    state, metrics = sgd_step(G, D, x, z_D, z_G, 0.0, cfg)
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in metrics.values())
    assert isinstance(state.k, torch.Tensor)
    assert all(p.requires_grad for p in D.parameters())  # D unfrozen after the G forward


def test_bf16_autocast_stays_close_to_fp32():
    cfg, G, D, x, z_D, z_G = make()
    G, D, x, z_D, z_G = G.float(), D.float(), x.float(), z_D.float(), z_G.float()
    G2, D2 = copy.deepcopy(G), copy.deepcopy(D)
    _, fp32 = sgd_step(G, D, x, z_D, z_G, 0.0, cfg)
    _, bf16 = sgd_step(
        G2, D2, x, z_D, z_G, 0.0, TrainConfig(**{**cfg.to_dict(), "precision": "bf16"})
    )
    for name in ("loss_real", "loss_fake", "m_global"):
        assert bf16[name].item() == pytest.approx(fp32[name].item(), rel=0.05)


def test_channels_last_matches_contiguous():
    cfg, G, D, x, z_D, z_G = make()
    G2 = copy.deepcopy(G).to(memory_format=torch.channels_last)
    D2 = copy.deepcopy(D).to(memory_format=torch.channels_last)
    _, plain = sgd_step(G, D, x, z_D, z_G, 0.2, cfg)
    x2 = x.contiguous(memory_format=torch.channels_last)
    _, fast = sgd_step(G2, D2, x2, z_D, z_G, 0.2, cfg)
    for name in STEP_METRICS:
        assert fast[name].item() == pytest.approx(plain[name].item(), rel=1e-9, abs=1e-12)
    for p, q in zip(D.parameters(), D2.parameters(), strict=True):
        torch.testing.assert_close(p, q)
