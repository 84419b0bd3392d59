"""Training compute: forward FLOPs of one image, counted by torch's FLOP counter on the meta device."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from ect.networks import build_network


def forward_flops_per_image(preset: str, **overrides: Any) -> float:
    """Forward FLOPs of one image (2 per multiply-add), counted with ``torch.utils.flop_counter``.

    The network is built on the meta device: counting needs shapes only, so this costs no compute
    even for billion-parameter presets.
    """
    with torch.device("meta"):
        net = build_network(preset, **overrides)
        x = torch.zeros([1, net.img_channels, net.img_resolution, net.img_resolution])
        labels = torch.zeros([1, net.label_dim]) if net.label_dim else None
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            net(x, torch.ones([1]), labels)
    return float(counter.get_total_flops())
