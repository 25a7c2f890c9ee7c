from __future__ import annotations

import pytest
import torch

from lightning_seg.models import MODELS, build_model
from lightning_seg.registry import UnknownNameError


def test_same_padding_keeps_size_and_valid_padding_matches_output_size():
    net = build_model("unet", width=4, depth=2, num_classes=3)
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, 3, 32, 32)
    valid = build_model("unet", width=4, depth=2, padding="valid")
    out = valid(torch.rand(1, 3, 92, 92))
    assert out.shape[-2:] == valid.output_size(92, 92) and out.shape[-1] < 92


def test_normalisation_lives_inside_the_model():
    net = build_model("unet", width=4, depth=1, mean=[0.2, 0.3, 0.4], std=[0.5, 0.5, 0.5])
    x = torch.rand(1, 3, 8, 8)
    torch.testing.assert_close(net.normalize(x), (x - torch.tensor([0.2, 0.3, 0.4]).view(1, 3, 1, 1)) / 0.5)


def test_input_gradient_flows():
    net = build_model("unet", width=4, depth=2).eval()
    x = torch.rand(1, 3, 16, 16, requires_grad=True)
    (grad,) = torch.autograd.grad(net(x).sum(), x)
    assert grad.abs().sum() > 0


def test_unknown_model_name_suggests_the_closest():
    with pytest.raises(UnknownNameError, match="Did you mean: 'unet'"):
        build_model("unte")
    assert "unet" in MODELS


def test_same_padding_rejects_indivisible_sizes_with_a_fix():
    with pytest.raises(ValueError, match="divisible by 4"):
        build_model("unet", width=4, depth=2)(torch.rand(1, 3, 30, 30))
