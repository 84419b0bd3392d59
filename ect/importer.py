"""Import official NVIDIA EDM / EDM2 network pickles into ect checkpoints without running their code.

The pickle is read by :mod:`ect.safe_pickle` (a restricted unpickler: nothing from the file runs).

Weights are then copied by name into our network (``ect.networks.build_network(preset)``) and loaded with
``strict=True``; only keys ECT itself does not use are dropped, and they are reported:

* EDM (CIFAR-10, ``edm-cifar10-32x32-uncond-vp.pkl``): the ``ema`` network (``VPPrecond`` around a DDPM++
  ``SongUNet``) gives keys ``model.…``. ECT starts from it by copying parameters by name with
  ``require_all=False`` into its own ``ECMPrecond`` (VP preconditioning is not kept: only the U-Net weights
  transfer). EDM trained with augmentation labels (augment_dim 9); ECT uses augment_dim 0, so
  ``model.map_augment.weight`` is dropped.
* EDM2 (ImageNet 64×64 post-hoc-EMA reconstructions): the ``ema`` network (``Precond``) gives keys ``unet.…``;
  ECT has no log-variance head, so ``logvar_fourier.*`` and ``logvar_linear.*`` are dropped. EDM2 stores these
  weights in float16; they are converted to our network's float32.
"""

from __future__ import annotations

import urllib.parse
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from ect.checkpoint import save_checkpoint
from ect.files import DownloadError, cache_path_for, fetch_verified, sha256_file
from ect.official import OFFICIAL_SOURCES, OfficialSource, official_source
from ect.safe_pickle import (
    CheckpointImportError,
    ModuleRecord,
    RefusedPickleError,
    RestrictedUnpickler,
    load_nvidia_pickle,
)

__all__ = [
    "OFFICIAL_SOURCES",
    "CheckpointImportError",
    "ModuleRecord",
    "OfficialSource",
    "RefusedPickleError",
    "RestrictedUnpickler",
    "SourceUnavailableError",
    "cache_path_for",
    "collect_tensors",
    "fetch_source",
    "import_checkpoint",
    "load_nvidia_pickle",
    "map_state_dict",
    "sha256_file",
]


class SourceUnavailableError(CheckpointImportError):
    """A source file is missing locally and could not be downloaded."""


def _is_url(source: str) -> bool:
    return urllib.parse.urlsplit(source).scheme in ("http", "https", "ftp", "file")


def fetch_source(source: str, cache_dir: str | Path | None = None) -> tuple[Path, str, str]:
    """Resolve ``source`` (official name, URL or local path) to ``(local path, url_or_path, sha256)``.

    URLs are downloaded once into the cache. Trust on first use: the sha256 of the first download is written to
    ``<file>.sha256`` and a cached file that no longer matches it is an error. A published checksum in
    :data:`OFFICIAL_SOURCES` is enforced; a third-party one only warns on mismatch.
    """
    official = official_source(source)
    url = official.url if official is not None else source
    if not _is_url(url):
        path = Path(source).expanduser()
        if not path.is_file():
            raise SourceUnavailableError(f"checkpoint file not found: {path.resolve()}")
        sha = sha256_file(path)
        _check_known_hash(sha, official, str(path))
        return path, str(path.resolve()), sha

    try:
        dest = cache_path_for(url, cache_dir)
        sha = fetch_verified(url, dest, official.sha256 if official is not None else None)
    except DownloadError as exc:
        raise SourceUnavailableError(str(exc)) from exc
    _check_known_hash(sha, official, str(dest))
    return dest, url, sha


def _check_known_hash(sha: str, official: OfficialSource | None, where: str) -> None:
    if official is None:
        return
    if official.sha256 is not None and sha != official.sha256:
        raise CheckpointImportError(
            f"{where}: sha256 {sha} does not match the published {official.sha256} for {official.url}"
        )
    if official.reported_sha256 is not None and sha != official.reported_sha256:
        warnings.warn(
            f"{where}: sha256 {sha} differs from the third-party-reported {official.reported_sha256} for "
            f"{official.url} (that value is unverified; continuing)",
            stacklevel=3,
        )


# ---------------------------------------------------------------------------------------------------------
# From records to a state dict.

# Persistent classes that may appear inside the imported network (EDM training/networks.py, EDM2
# training/networks_edm2.py, ECT's ECMPrecond). Other persistent classes (losses, augment pipes, encoders) may sit
# elsewhere in the pickle; they are never looked at.
KNOWN_NETWORK_CLASSES = frozenset(
    {
        # EDM
        "Linear", "Conv2d", "GroupNorm", "UNetBlock", "PositionalEmbedding", "FourierEmbedding", "SongUNet",
        "DhariwalUNet", "VPPrecond", "VEPrecond", "iDDPMPrecond", "EDMPrecond",
        # EDM2
        "MPFourier", "MPConv", "Block", "UNet", "Precond",
        # ECT
        "ECMPrecond",
    }
)  # fmt: skip
_BACKBONE_PREFIX = {"SongUNet": "model.", "DhariwalUNet": "model.", "UNet": "unet."}
# Keys ECT does not use; dropped only when our network has no such key.
DROPPABLE_PREFIXES = ("logvar_fourier.", "logvar_linear.", "model.map_augment.")


def collect_tensors(record: ModuleRecord, prefix: str = "") -> dict[str, torch.Tensor]:
    """Parameters and persistent buffers of ``record`` and its submodules, keyed like ``state_dict()``."""
    out: dict[str, torch.Tensor] = {}

    def visit(rec: Any, pre: str) -> None:
        where = pre.rstrip(".") or "<root>"
        if not isinstance(rec, ModuleRecord):
            raise RefusedPickleError(f"submodule {where} is a {type(rec).__name__}, not a pickled module")
        if rec.persistent and rec.class_name not in KNOWN_NETWORK_CLASSES:
            raise RefusedPickleError(
                f"refused persistent class {rec.class_name!r} at {where} (embedded source sha256 {rec.source_sha256}): "
                "not an EDM/EDM2/ECT network class"
            )
        state = rec.state
        skip = set(state.get("_non_persistent_buffers_set") or ())
        for group in ("_parameters", "_buffers"):
            for name, value in (state.get(group) or {}).items():
                if value is None or (group == "_buffers" and name in skip):
                    continue
                if not isinstance(value, torch.Tensor):
                    raise RefusedPickleError(f"{pre}{name} is a {type(value).__name__}, not a tensor")
                out[pre + name] = value
        for name, sub in (state.get("_modules") or {}).items():
            if sub is not None:
                visit(sub, f"{pre}{name}.")

    visit(record, prefix)
    return out


def _pick_network(payload: Any) -> ModuleRecord:
    """The ``ema`` network of an EDM/EDM2/ECT snapshot dict, or the pickle itself if it is a network."""
    if isinstance(payload, ModuleRecord):
        return payload
    if isinstance(payload, dict):
        ema = payload.get("ema")
        if isinstance(ema, ModuleRecord):
            return ema
        raise CheckpointImportError(f"pickle holds a dict without an 'ema' network (keys: {sorted(map(str, payload))})")
    raise CheckpointImportError(f"pickle holds a {type(payload).__name__}, not a network or snapshot dict")


def map_state_dict(
    source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], droppable: Iterable[str] = DROPPABLE_PREFIXES
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Match ``source`` tensors to ``target`` keys (dtype converted to the target's); returns (mapped, dropped).

    Raises if a target key is missing, a source key is neither in the target nor droppable, or shapes differ.
    """
    droppable = tuple(droppable)
    dropped = sorted(k for k in source if k not in target and k.startswith(droppable))
    unexpected = sorted(k for k in source if k not in target and not k.startswith(droppable))
    missing = sorted(k for k in target if k not in source)
    shapes = [
        f"{k}: {tuple(source[k].shape)} vs ours {tuple(v.shape)}"
        for k, v in target.items()
        if k in source and source[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"missing from the source ({len(missing)}): {', '.join(missing[:10])}")
    if unexpected:
        problems.append(f"not in our network ({len(unexpected)}): {', '.join(unexpected[:10])}")
    if shapes:
        problems.append(f"shape mismatches ({len(shapes)}): {'; '.join(shapes[:10])}")
    if problems:
        raise CheckpointImportError("source weights do not fit the network: " + " | ".join(problems))
    mapped = {k: source[k].detach().to(dtype=v.dtype).contiguous() for k, v in target.items()}
    return mapped, dropped


def _meta_network(preset: str, overrides: dict[str, Any]) -> torch.nn.Module:
    from ect.networks import build_network

    with torch.device("meta"):  # no random init: every tensor is replaced by an imported one
        return build_network(preset, **overrides)


def _infer_preset(tensors: dict[str, torch.Tensor]) -> str:
    """The unique preset whose state-dict names and shapes fit ``tensors`` (up to droppable keys)."""
    from ect.networks import preset_names

    fits = []
    for name in preset_names():
        try:
            target = _meta_network(name, {}).state_dict()
        except Exception:  # a preset that cannot be built without overrides cannot be inferred
            continue
        extra = [k for k in tensors if k not in target and not k.startswith(DROPPABLE_PREFIXES)]
        if not extra and all(k in tensors and tensors[k].shape == v.shape for k, v in target.items()):
            fits.append(name)
    if len(fits) != 1:
        found = f"several presets fit ({', '.join(fits)})" if fits else "no preset fits its weights"
        raise CheckpointImportError(f"cannot infer the network preset: {found}; pass preset= (--preset)")
    return fits[0]


def import_checkpoint(
    source: str,
    out: str | Path,
    preset: str | None = None,
    cache_dir: str | Path | None = None,
    *,
    dataset: str | None = None,
    data_dir: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Convert an official EDM/EDM2 pickle into an ect ``diffusion`` checkpoint at ``out``.

    ``source``: a name from :data:`OFFICIAL_SOURCES`, a URL (downloaded into ``cache_dir``, default
    ``$ECT_CACHE`` or ``~/.cache/ect``) or a local path. ``preset``: our network preset; default: the official
    source's, else the unique preset whose parameter names and shapes fit. ``overrides`` go to
    ``build_network`` and are stored in the checkpoint. ``dataset`` (default: the official source's) and
    ``data_dir`` are recorded as the checkpoint's ``config.data`` so that ``ect evaluate`` finds its reference
    data; a checkpoint imported without a dataset can be tuned but not evaluated. Returns the checkpoint dict as
    written (the ``ema`` and ``net`` entries hold the same imported weights).
    """
    from ect.data import DATASETS

    overrides = dict(overrides or {})
    official = official_source(source)
    if dataset is None and official is not None:
        dataset = official.dataset
    if dataset is not None and dataset not in DATASETS:
        raise CheckpointImportError(f"unknown dataset {dataset!r}; known datasets: {', '.join(sorted(DATASETS))}")
    if data_dir is not None and dataset is None:
        raise CheckpointImportError("a data directory was given without a dataset; pass the dataset too (--dataset)")
    path, url_or_path, sha = fetch_source(source, cache_dir)
    record = _pick_network(load_nvidia_pickle(path))
    tensors = collect_tensors(record, _BACKBONE_PREFIX.get(record.class_name, ""))
    if preset is None:
        preset = official.preset if official is not None else _infer_preset(tensors)

    net = _meta_network(preset, overrides)
    mapped, dropped = map_state_dict(tensors, net.state_dict())
    net.load_state_dict(mapped, strict=True, assign=True)
    state = net.state_dict()
    left = [k for k, v in state.items() if v.is_meta]
    if left:
        raise CheckpointImportError(f"tensors not filled by the import: {', '.join(left[:10])}")
    state = {k: v.detach() for k, v in state.items()}

    data: dict[str, Any] = {
        "kind": "diffusion",
        "network": {"preset": preset, "overrides": overrides},
        "ema": state,
        "net": dict(state),
        "progress": {"iteration": 0, "images": 0, "flops": 0.0},
        "source": {"url_or_path": url_or_path, "sha256": sha, "dropped_keys": dropped},
        "config": {} if dataset is None else {"data": {"name": dataset,
                                                        "data_dir": None if data_dir is None else str(data_dir)}},
    }
    save_checkpoint(out, data)
    return data
