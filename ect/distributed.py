"""Data-parallel setup: join the process group that ``torchrun`` describes, or run as one process."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ect.config import DEVICE_PATTERN, ConfigError


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def resolve_device(device: str, key: str = "--device") -> str:
    """``auto`` → ``cuda`` if a GPU is visible, else ``cpu``; cpu, cuda and cuda:N as given, if this machine has
    them (else a :class:`ConfigError` naming ``key``)."""
    if not DEVICE_PATTERN.fullmatch(device):
        raise ConfigError(f"{key}: {device!r} is not auto, cpu, cuda or cuda:N")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"{key}: {device}, but torch finds no CUDA device on this machine")
        index = torch.device(device).index
        if index is not None and index >= torch.cuda.device_count():
            raise ConfigError(f"{key}: {device}, but this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def setup_distributed(device: str) -> Dist:
    """Join the process group that ``torchrun`` describes (gloo on CPU, nccl on CUDA); 1 process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device(resolve_device(device, "training.device"))
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank, world, dev)
