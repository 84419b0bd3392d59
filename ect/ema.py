"""Exponential moving averages of the network weights.

``beta``: fixed decay per iteration (official ECT CIFAR-10: 0.9999; 1-hour recipe: 0.9993).
``halflife``: EDM's half-life in training images with optional ramp-up (half-life ≤ ratio × images seen).
``power``: EDM2's power-function EMA with relative standard deviation σ_rel (ECT ImageNet), whose
profile scales with training length, so it suits any budget.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from ect.config import EMAConfig


def power_function_exponent(std: float) -> float:
    """EDM2: the exponent γ of the power-function EMA profile with relative standard deviation ``std``."""
    tmp = std**-2
    return float(np.roots([1, 7, 16 - tmp, 12 - tmp]).real.max())


class EMA:
    """Holds the averaged copy of a network (always in eval mode, no gradients)."""

    def __init__(self, net: torch.nn.Module, cfg: EMAConfig) -> None:
        self.cfg = cfg
        self.net = copy.deepcopy(net).eval().requires_grad_(False)
        self._gamma = power_function_exponent(cfg.power_std) if cfg.kind == "power" else None

    def beta(self, images_before: int, batch_size: int) -> float:
        """Decay for the update after an iteration that started with ``images_before`` images seen."""
        c = self.cfg
        if c.kind == "beta":
            return c.beta
        if c.kind == "halflife":
            halflife = c.halflife_images
            if c.rampup_ratio is not None:
                halflife = min(halflife, images_before * c.rampup_ratio)
            return 0.5 ** (batch_size / max(halflife, 1e-8))
        return (1 - batch_size / (images_before + batch_size)) ** (self._gamma + 1)

    @torch.no_grad()
    def update(self, net: torch.nn.Module, images_before: int, batch_size: int) -> None:
        beta = self.beta(images_before, batch_size)
        # One fused call over all tensors instead of a Python loop per parameter.
        torch._foreach_lerp_(list(self.net.parameters()), [p.detach() for p in net.parameters()], 1 - beta)
