"""Network presets: one name per configuration, built by :func:`build_network`.

Each preset names a backbone family and its keyword arguments; ``build_network`` wraps the backbone in
the preconditioning the official ECT code uses for that family. Overrides (e.g. ``dropout`` or the
dataset's ``img_resolution``/``img_channels``/``label_dim``) are stored in checkpoints so a network can
be rebuilt exactly.
"""

from __future__ import annotations

from typing import Any

import torch

from ect.networks.precond import ECMPrecond
from ect.networks.songunet import SONGUNET_PRESETS, SongUNet

# Keys of a SongUNet preset that belong to the wrapper rather than the backbone.
_WRAPPER_KEYS = ("img_resolution", "img_channels", "label_dim", "sigma_data", "sigma_min")


def _edm2_presets() -> dict[str, dict[str, Any]]:
    try:
        from ect.networks.edm2 import EDM2_PRESETS
    except ImportError:  # EDM2 networks are optional for the embedded default
        return {}
    return EDM2_PRESETS


def preset_names() -> list[str]:
    return sorted([*SONGUNET_PRESETS, *_edm2_presets()])


def build_network(preset: str, **overrides: Any) -> torch.nn.Module:
    """Build the preconditioned network named ``preset``; ``overrides`` replace preset values."""
    if preset in SONGUNET_PRESETS:
        kwargs = {**SONGUNET_PRESETS[preset], **overrides}
        wrapper = {k: kwargs.pop(k) for k in _WRAPPER_KEYS if k in kwargs}
        img_channels = wrapper["img_channels"]
        model = SongUNet(
            img_resolution=wrapper["img_resolution"],
            in_channels=img_channels,
            out_channels=img_channels,
            label_dim=wrapper.get("label_dim", 0),
            **kwargs,
        )
        return ECMPrecond(model, **wrapper)
    edm2 = _edm2_presets()
    if preset in edm2:
        from ect.networks.edm2 import build_edm2

        return build_edm2(preset, **overrides)
    raise ValueError(f"unknown network preset {preset!r}; known presets: {', '.join(preset_names())}")


def count_parameters(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
