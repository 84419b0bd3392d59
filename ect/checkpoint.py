"""Checkpoint format shared by every stage: plain state dicts and metadata, written atomically (ect.files).

A checkpoint is a dict saved with ``torch.save`` that loads with ``torch.load(weights_only=True)``:
no pickled classes, so reading one never executes code.

    format, version   "ect-checkpoint", 1
    kind              "diffusion" (EDM denoiser) or "consistency" (ECT model): ect.kinds
    network           {"preset": str, "overrides": dict}  -> ect.networks.build_network(preset, **overrides)
    ema               state dict of the preconditioned network used for sampling
    net               raw training weights (state dict)
    progress          {"iteration", "images", "flops"} at the time of saving
    config            the resolved run config that produced it (the run directory's config.yaml, key ``run``)
    optimizer         optimizer state (training-state checkpoints only)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ect.errors import UserError
from ect.files import atomic_write_bytes
from ect.kinds import KINDS

FORMAT = "ect-checkpoint"
VERSION = 1


class CheckpointError(UserError):
    """A checkpoint file is missing, unreadable or of the wrong kind."""


def save_checkpoint(path: str | Path, data: dict[str, Any]) -> None:
    """Write a checkpoint atomically (a crash never leaves a half-written file under ``path``)."""
    if data.get("kind") not in KINDS:
        raise CheckpointError(f"checkpoint kind must be one of {KINDS}, got {data.get('kind')!r}")
    payload = {"format": FORMAT, "version": VERSION, **data}
    atomic_write_bytes(path, lambda f: torch.save(payload, f))


def load_checkpoint(path: str | Path, kind: str | None = None) -> dict[str, Any]:
    """Read a checkpoint safely (``weights_only=True``) and check its format and, optionally, its kind."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, or a pickle with classes in it
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an ect checkpoint (use `ect import` for official EDM/EDM2 .pkl files)")
    if data.get("version") != VERSION:
        raise CheckpointError(f"{path}: unsupported checkpoint version {data.get('version')!r}")
    if kind is not None and data.get("kind") != kind:
        raise CheckpointError(f"{path} holds a {data.get('kind')} model, but a {kind} model is needed here")
    return data


def network_from_checkpoint(data: dict[str, Any], weights: str = "ema") -> torch.nn.Module:
    """Build the network a checkpoint describes and load its weights (``ema`` or ``net``); eval mode."""
    from ect.networks import build_network

    net = build_network(data["network"]["preset"], **data["network"].get("overrides", {}))
    net.load_state_dict(data[weights], strict=True)
    return net.eval().requires_grad_(False)
