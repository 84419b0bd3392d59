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
    digest            blake2b of every tensor in the file, checked on load (bit rot, partial copies)

Every load checks the digest and that the weights are finite, so a damaged or diverged file is refused by
name instead of being sampled, scored or trained on. Training keeps one generation back
(:func:`previous_path`) so a damaged latest checkpoint costs one checkpoint interval, not the run.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import sys
import warnings
from collections.abc import Iterator
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


class DamagedCheckpointError(CheckpointError):
    """A checkpoint file exists but is truncated, altered since it was written, or holds non-finite weights."""


def _tensors(obj: Any, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of every tensor in nested dicts/lists, in a fixed order."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for key in sorted(obj, key=str):
            yield from _tensors(obj[key], f"{prefix}[{key!r}]" if prefix else str(key))
    elif isinstance(obj, list | tuple):
        for i, item in enumerate(obj):
            yield from _tensors(item, f"{prefix}[{i}]")


def tensor_digest(obj: Any) -> str:
    """blake2b of the names, dtypes, shapes and bytes of every tensor in ``obj``."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in _tensors(obj):
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def first_nonfinite(obj: Any) -> str | None:
    """Name of the first floating-point tensor in ``obj`` holding NaN or ±inf, or None."""
    for name, tensor in _tensors(obj):
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name
    return None


def previous_path(path: str | Path) -> Path:
    """Where :func:`save_checkpoint` keeps the previous generation of ``path`` (``checkpoint-previous.pt``)."""
    path = Path(path)
    return path.with_name(f"{path.stem}-previous{path.suffix}")


def save_checkpoint(path: str | Path, data: dict[str, Any], keep_previous: bool = False) -> None:
    """Write a checkpoint atomically (a crash never leaves a half-written file under ``path``).

    With ``keep_previous`` the file being replaced stays as :func:`previous_path` (a hard link renamed into
    place, so ``path`` itself exists at every moment).
    """
    if data.get("kind") not in KINDS:
        raise CheckpointError(f"checkpoint kind must be one of {KINDS}, got {data.get('kind')!r}")
    payload = {"format": FORMAT, "version": VERSION, **data}
    payload["digest"] = tensor_digest(payload)

    def rotate() -> None:
        path_ = Path(path)
        if not path_.is_file():
            return
        link = path_.with_name(f".{previous_path(path_).name}.link")
        link.unlink(missing_ok=True)
        try:
            os.link(path_, link)
        except OSError:  # a file system without hard links: the rename leaves a moment without ``path``
            os.replace(path_, previous_path(path_))
            return
        os.replace(link, previous_path(path_))

    atomic_write_bytes(path, lambda f: torch.save(payload, f), rotate if keep_previous else None)


def load_failure(path: str | Path, exc: Exception) -> str:
    """Why ``torch.load(path, weights_only=True)`` failed, in one line and without torch's own advice to retry with
    ``weights_only=False`` (that would run whatever code the file carries)."""
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        return "it is an empty file"
    if isinstance(exc, pickle.UnpicklingError) or not head.startswith(b"PK\x03\x04"):
        if head[:1] == b"\x80":  # the PROTO opcode: a pickle, e.g. an NVIDIA .pkl or a torch.save from before 1.6
            return ("it is a Python pickle holding more than tensors and plain containers, which is not unpickled "
                    "because unpickling it could run code (official EDM/EDM2 .pkl files: `ect import`)")
        return "it is neither a torch checkpoint (a zip archive) nor a pickle"
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "not in a subdirectory" in first:  # a zip archive torch.save did not write, e.g. an .npz
        return "it is a zip archive but not one written by torch.save (an .npz of images?)"
    return first.split(". ")[0]  # e.g. "PytorchStreamReader failed reading zip archive: failed finding central …"


def load_checkpoint(path: str | Path, kind: str | None = None) -> dict[str, Any]:
    """Read a checkpoint safely (``weights_only=True``), verify its digest and finite weights, check its format
    and, optionally, its kind."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols of files it then refuses anyway
            warnings.simplefilter("ignore")
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, or a pickle with classes in it
        raise DamagedCheckpointError(f"cannot read checkpoint {path}: {load_failure(path, exc)}") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an ect checkpoint (use `ect import` for official EDM/EDM2 .pkl files)")
    if data.get("version") != VERSION:
        raise CheckpointError(f"{path}: unsupported checkpoint version {data.get('version')!r}")
    recorded = data.pop("digest", None)
    if recorded is not None and tensor_digest(data) != recorded:
        raise DamagedCheckpointError(f"{path} is damaged: its tensors differ from the digest recorded when it was "
                                     "written (bit rot or an altered file)")
    bad = first_nonfinite(data)
    if bad is not None:
        raise DamagedCheckpointError(f"{path}: tensor {bad} holds NaN or infinite values (a diverged run or a "
                                     "damaged file); refusing to use it")
    if kind is not None and data.get("kind") != kind:
        raise CheckpointError(f"{path} holds a {data.get('kind')} model, but a {kind} model is needed here")
    return data


def load_resume_checkpoint(path: str | Path, kind: str) -> dict[str, Any] | None:
    """The training state to resume from: ``path``, or its previous generation (with a warning on stderr) when
    ``path`` is damaged; None when neither exists."""
    path, previous = Path(path), previous_path(path)
    if not path.is_file() and not previous.is_file():
        return None
    try:
        return load_checkpoint(path, kind=kind)
    except DamagedCheckpointError as exc:
        if not previous.is_file():
            raise
        problem = str(exc)
    except CheckpointError as exc:
        if path.is_file() or not previous.is_file():
            raise
        problem = str(exc)
    try:
        data = load_checkpoint(previous, kind=kind)
    except CheckpointError as exc:
        raise DamagedCheckpointError(f"{problem}; the previous generation is unusable too: {exc}") from exc
    print(f"warning: {problem}; resuming from {previous} (iteration {data['progress']['iteration']})",
          file=sys.stderr)
    return data


def network_from_checkpoint(data: dict[str, Any], weights: str = "ema") -> torch.nn.Module:
    """Build the network a checkpoint describes and load its weights (``ema`` or ``net``); eval mode, in the
    memory format its run trained in (``training.channels_last``: on a CPU, sampling the tiny nets is ~15% faster)."""
    from ect.networks import build_network

    net = build_network(data["network"]["preset"], **data["network"].get("overrides", {}))
    net.load_state_dict(data[weights], strict=True)
    if ((data.get("config") or {}).get("training") or {}).get("channels_last"):
        net = net.to(memory_format=torch.channels_last)
    return net.eval().requires_grad_(False)
