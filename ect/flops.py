"""Training compute: forward FLOPs of one image, counted by torch's FLOP counter on the meta device.

Counting imports torch and builds the network (seconds), so the workflow's planning, which needs each model's FLOPs on
every ``snakemake`` call (and every cluster job), reads them from a small cache instead
(:func:`cached_forward_flops_per_image`). This module imports torch only when it counts.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
from pathlib import Path
from typing import Any

from ect import files

NETWORK_CODE = Path(__file__).resolve().parent / "networks"


def forward_flops_per_image(preset: str, **overrides: Any) -> float:
    """Forward FLOPs of one image (2 per multiply-add), counted with ``torch.utils.flop_counter``.

    The network is built on the meta device: counting needs shapes only, so this costs no compute
    even for billion-parameter presets.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from ect.networks import build_network

    with torch.device("meta"):
        net = build_network(preset, **overrides)
        x = torch.zeros([1, net.img_channels, net.img_resolution, net.img_resolution])
        labels = torch.zeros([1, net.label_dim]) if net.label_dim else None
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            net(x, torch.ones([1]), labels)
    return float(counter.get_total_flops())


def flops_cache_key(preset: str) -> str:
    """What a cached count depends on: the preset, the network code (a digest of ect/networks) and torch's version."""
    digest = hashlib.sha256()
    for source in sorted(NETWORK_CODE.glob("*.py")):
        digest.update(source.name.encode() + b"\0" + source.read_bytes())
    return f"{preset} {digest.hexdigest()[:16]} torch-{importlib.metadata.version('torch')}"


def cached_forward_flops_per_image(preset: str, cache: str | Path | None = None) -> float:
    """:func:`forward_flops_per_image` of a preset, remembered in ``flops.json`` of the cache directory (``cache``,
    else ``$ECT_CACHE``, else ``~/.cache/ect``). A damaged or unwritable cache only costs the count."""
    path = files.cache_dir(cache) / "flops.json"
    try:
        table = json.loads(path.read_text())
    except (OSError, ValueError):
        table = {}
    table = table if isinstance(table, dict) else {}
    key = flops_cache_key(preset)
    if not isinstance(table.get(key), float):
        table[key] = forward_flops_per_image(preset)
        with contextlib.suppress(OSError):  # a read-only home: count again next time
            files.atomic_write_bytes(path, lambda f: f.write(json.dumps(table, indent=1, sort_keys=True).encode()))
    return table[key]
