"""Shapes at every supported size and depth, and the architecture's fixed choices."""

import pytest
import torch
from torch import nn

from began.core.models import (
    Decoder,
    Discriminator,
    Encoder,
    Generator,
    num_scales,
    sample_z,
)


@pytest.mark.parametrize(("size", "scales"), [(16, 2), (32, 3), (64, 4), (128, 5)])
def test_num_scales_ends_at_8x8(size, scales):
    assert num_scales(size) == scales


@pytest.mark.parametrize("size", [8, 24, 100])
def test_unsupported_sizes_are_rejected(size):
    with pytest.raises(ValueError, match="image_size"):
        num_scales(size)


@pytest.mark.parametrize("size", [16, 32, 64, 128])
@pytest.mark.parametrize("repeat", [1, 2, 3])
@pytest.mark.parametrize("skip", [False, True])
def test_shapes(size, repeat, skip):
    filters, hidden, batch = 4, 8, 2
    G = Generator(size, filters, hidden, repeat, skip)
    D = Discriminator(size, filters, hidden, repeat, skip)
    z = sample_z(batch, hidden)
    image = G(z)
    assert image.shape == (batch, 3, size, size)
    assert D(image).shape == (batch, 3, size, size)
    assert D.encoder(image).shape == (batch, hidden)
    # `repeat` convs per scale in the decoder, plus the RGB conv.
    convs = [m for m in G.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == repeat * num_scales(size) + 1


def test_encoder_grows_filters_linearly_and_subsamples_with_stride_2():
    encoder = Encoder(64, filters=8, hidden=16, repeat=2)
    strided = [m for m in encoder.modules() if isinstance(m, nn.Conv2d) and m.stride == (2, 2)]
    assert [m.out_channels for m in strided] == [16, 24, 32]  # n -> 2n -> 3n -> 4n
    assert encoder.out_channels == 32
    assert not any(
        isinstance(m, (nn.MaxPool2d, nn.AvgPool2d, nn.BatchNorm2d)) for m in encoder.modules()
    )


def test_all_convs_are_3x3_with_elu_and_no_transposed_conv():
    D = Discriminator(32, 4, 8, 2, skip=True)
    for module in D.modules():
        assert not isinstance(module, (nn.ConvTranspose2d, nn.BatchNorm2d, nn.Dropout))
        if isinstance(module, nn.Conv2d):
            assert module.kernel_size == (3, 3)
    assert any(isinstance(m, nn.ELU) for m in D.modules())


def test_outputs_are_linear():
    # The generator's last layer is a conv with no activation after it: outputs can leave [-1, 1].
    decoder = Decoder(16, 4, 8, 1)
    assert isinstance(list(decoder.modules())[-1], nn.Conv2d)
    with torch.no_grad():
        decoder.to_rgb.bias.fill_(5.0)
    assert decoder(torch.zeros(1, 8)).min() > 1.0


def test_skip_connections_add_input_channels_after_the_first_scale():
    plain, skip = Decoder(32, 4, 8, 2, skip=False), Decoder(32, 4, 8, 2, skip=True)
    assert plain.blocks[1][0].in_channels == 4
    assert skip.blocks[1][0].in_channels == 8
    assert skip.blocks[0][0].in_channels == 4


def test_parameter_count_matches_the_paper_figure():
    # n = 128, h = 64, repeat 2 at 64x64: the 17.3M parameters (G + D) the paper quotes.
    G, D = Generator(64, 128, 64, 2), Discriminator(64, 128, 64, 2)
    parameters = sum(p.numel() for model in (G, D) for p in model.parameters())
    assert parameters / 1e6 == pytest.approx(17.33, abs=0.01)


def test_sample_z_is_uniform_in_minus_one_one_and_seeded():
    a = sample_z(1000, 64, torch.Generator().manual_seed(1))
    b = sample_z(1000, 64, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert a.min() >= -1.0 and a.max() <= 1.0
    assert a.mean().abs() < 0.01 and a.min() < -0.99 and a.max() > 0.99
