"""User networks for ``model.target=tests.helpers.external_nets:<callable>`` (tests/test_external_models.py).

None of them normalises or knows the project: they take whatever the wrapper gives them (normalised images) and
return raw logits, as a network from another code base would.
"""

from __future__ import annotations

from torch import Tensor, nn


class TinyNet(nn.Module):
    """Two 3x3 convolutions; ``stride=2`` predicts at half resolution (the wrapper resizes the logits), ``out``
    wraps the logits like other libraries do (``"dict"``: torchvision's ``{"out": ...}``, ``"tuple"``: an auxiliary
    head after the logits)."""

    def __init__(self, in_channels: int = 3, num_classes: int = 2, width: int = 4, stride: int = 1,
                 out: str = "tensor") -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_channels, width, 3, stride=stride, padding=1), nn.ReLU(),
                                  nn.Conv2d(width, num_classes, 3, padding=1))
        self.out = out

    def forward(self, x: Tensor) -> Tensor | dict[str, Tensor] | tuple[Tensor, Tensor]:
        z = self.body(x)
        if self.out == "dict":
            return {"out": z}
        if self.out == "tuple":
            return z, z.mean(dim=(2, 3))
        return z


class ValidNet(nn.Module):
    """Unpadded convolutions (a centred sub-window, 4 pixels less per side); ``output_size`` says so, like the
    built-in U-Net with padding=valid, so the logits are kept and the labels cropped."""

    def __init__(self, num_classes: int = 2) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 5), nn.ReLU(), nn.Conv2d(4, num_classes, 5))

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        return height - 8, width - 8


def make_tiny(classes: int = 2, width: int = 4) -> nn.Module:
    """A factory function (not a class), taking smp's name for the number of classes."""
    return TinyNet(num_classes=classes, width=width)


NOT_CALLABLE = 3


def not_a_module() -> str:
    return "a string"
