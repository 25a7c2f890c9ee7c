"""Input-transformation defenses (pre-processing in front of a segmenter) as batched torch modules.

Registry ``DEFENSES`` (names: ``none``, ``fr``, ``jpeg``, ``bit_depth``, ``median``, ``gaussian``,
``random_noise``); build with :func:`build_defense`; compose with a model via :class:`DefendedModel`
(gradient ``exact`` / ``bpda`` / ``surrogate`` / ``ste``, EOT for randomised defenses).
"""

from __future__ import annotations

from lightning_seg.defenses.base import (
    DEFENSES,
    ROUNDING_MODES,
    Defense,
    NoDefense,
    build_defense,
    defense_defaults,
    register_defense,
    round_with_mode,
    signature_defaults,
)
from lightning_seg.defenses.bit_depth import BitDepth, bit_depth_reduction
from lightning_seg.defenses.dct import blockwise_quantize, dct_matrix
from lightning_seg.defenses.defended import (
    ATTACKER_KEYS,
    GRADIENT_MODES,
    DefendedModel,
    applicable_modes,
    defend,
    defense_from_config,
    defense_with_gradient,
    eot_input_grad,
)
from lightning_seg.defenses.frequency_refinement import FrequencyRefinement, fr_quant_table, frequency_refinement
from lightning_seg.defenses.jpeg import JPEG, jpeg, jpeg_quant_tables
from lightning_seg.defenses.random_noise import RandomNoise
from lightning_seg.defenses.smoothing import GaussianBlur, MedianFilter, gaussian_blur, median_filter

__all__ = [
    "ATTACKER_KEYS",
    "DEFENSES",
    "GRADIENT_MODES",
    "JPEG",
    "ROUNDING_MODES",
    "BitDepth",
    "DefendedModel",
    "Defense",
    "FrequencyRefinement",
    "GaussianBlur",
    "MedianFilter",
    "NoDefense",
    "RandomNoise",
    "applicable_modes",
    "bit_depth_reduction",
    "blockwise_quantize",
    "build_defense",
    "defense_defaults",
    "register_defense",
    "signature_defaults",
    "dct_matrix",
    "defend",
    "defense_from_config",
    "defense_with_gradient",
    "eot_input_grad",
    "fr_quant_table",
    "frequency_refinement",
    "gaussian_blur",
    "jpeg",
    "jpeg_quant_tables",
    "median_filter",
    "round_with_mode",
]
