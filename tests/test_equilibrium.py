"""The paper's equations against hand-computed values (docs/began.md, section 1)."""

import pytest
import torch

from began.core.equilibrium import (
    balance,
    discriminator_loss,
    generator_loss,
    m_global,
    per_image_reconstruction_loss,
    reconstruction_loss,
    update_k,
)


def t(value: float) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float64)


def test_reconstruction_loss_is_mean_absolute_error():
    v = torch.tensor([[1.0, -1.0], [0.5, 0.0]])
    reconstruction = torch.tensor([[0.5, -1.0], [0.0, 1.0]])
    # |0.5| + 0 + |0.5| + |-1| = 2.0 over 4 pixels
    assert reconstruction_loss(v, reconstruction).item() == pytest.approx(0.5)


def test_per_image_loss_means_to_the_batch_loss():
    v, reconstruction = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    per_image = per_image_reconstruction_loss(v, reconstruction)
    assert per_image.shape == (4,)
    assert per_image.mean().item() == pytest.approx(reconstruction_loss(v, reconstruction).item())


def test_discriminator_loss_subtracts_k_times_fake_loss():
    # L_D = L(x) - k L(G(z_D)) = 0.10 - 0.25 * 0.08
    assert discriminator_loss(t(0.10), t(0.08), t(0.25)).item() == pytest.approx(0.08)


def test_generator_loss_is_the_fake_reconstruction_loss():
    assert generator_loss(t(0.07)).item() == pytest.approx(0.07)


def test_balance_sign():
    # gamma L(x) - L(G(z)): 0.5 * 0.10 - 0.02 = +0.03
    assert balance(t(0.10), t(0.02), 0.5).item() == pytest.approx(0.03)
    assert balance(t(0.10), t(0.08), 0.5).item() == pytest.approx(-0.03)


def test_k_update_moves_by_lambda_times_balance():
    # k_1 = 0.2 + 0.001 * (0.5 * 0.10 - 0.02) = 0.20003
    assert update_k(t(0.2), t(0.10), t(0.02), 0.5, 0.001).item() == pytest.approx(0.20003)
    # negative balance lowers k: 0.2 + 0.001 * (0.05 - 0.08) = 0.19997
    assert update_k(t(0.2), t(0.10), t(0.08), 0.5, 0.001).item() == pytest.approx(0.19997)


def test_k_update_is_clipped_to_unit_interval():
    assert update_k(t(0.0), t(0.1), t(0.9), 0.5, 0.1).item() == 0.0  # would be -0.085
    assert update_k(t(0.99), t(1.0), t(0.0), 1.0, 0.5).item() == 1.0  # would be 1.49
    assert update_k(t(0.0), t(0.1), t(0.1), 0.5, 0.001).item() == 0.0  # k_0 = 0 stays


def test_m_global_uses_absolute_balance():
    # M = L(x) + |gamma L(x) - L(G(z))|; both signs of the balance add.
    assert m_global(t(0.10), t(0.02), 0.5).item() == pytest.approx(0.13)
    assert m_global(t(0.10), t(0.08), 0.5).item() == pytest.approx(0.13)
    assert m_global(t(0.10), t(0.05), 0.5).item() == pytest.approx(0.10)
