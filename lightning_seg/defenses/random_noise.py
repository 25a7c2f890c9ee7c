"""Randomised defense: additive Gaussian noise, clamped to [0,1] (a cheap stochastic pre-processing
defense used to exercise EOT; cf. Gao et al. NeurIPS 2022 on stochastic pre-processing).

Randomness comes from a seeded ``torch.Generator`` owned by the module (one per device), so runs
are reproducible and an attack never shifts the global RNG; :meth:`RandomNoise.reseed` restarts the stream.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_seg.defenses.base import Defense, check_images, register_defense


@register_defense("random_noise")
class RandomNoise(Defense):
    """``x + sigma * N(0, I)`` clamped to [0,1]; a fresh sample on every forward call."""

    randomized = True


    def __init__(self, sigma: float = 0.03, seed: int = 0) -> None:
        super().__init__()
        if not sigma >= 0:
            raise ValueError(f"random_noise sigma={sigma!r} must be >= 0 ([0,1] units).")
        self.sigma, self.seed = float(sigma), int(seed)
        self._generators: dict[str, torch.Generator] = {}

    def reseed(self, seed: int | None = None) -> None:
        """Restart the noise stream (optionally with a new seed) on every device."""
        if seed is not None:
            self.seed = int(seed)
        self._generators.clear()

    def _generator(self, device: torch.device) -> torch.Generator:
        key = str(device)
        if key not in self._generators:
            g = torch.Generator(device=device)
            g.manual_seed(self.seed)
            self._generators[key] = g
        return self._generators[key]

    def forward(self, x: Tensor, rounding: str | None = None) -> Tensor:
        check_images(x, "RandomNoise")
        noise = torch.randn(x.shape, generator=self._generator(x.device), device=x.device, dtype=x.dtype)
        return (x + self.sigma * noise).clamp(0.0, 1.0)

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}, seed={self.seed}"
