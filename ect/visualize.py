"""Image grids of uint8 samples (PNG), for sample snapshots and figures."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from torchvision.utils import make_grid

from ect.files import atomic_write_bytes


def image_grid(images: np.ndarray, columns: int | None = None, pad: int = 1) -> np.ndarray:
    """Tile uint8 images [N, C, H, W] into one [rows·(H+pad)+pad, cols·(W+pad)+pad, C] array (white padding)."""
    columns = columns or math.ceil(math.sqrt(len(images)))
    grid = make_grid(torch.from_numpy(np.ascontiguousarray(images)), nrow=columns, padding=pad, pad_value=255)
    grid = grid[: images.shape[1]]  # make_grid repeats one channel to three
    return grid.permute(1, 2, 0).numpy()


def save_image_grid(images: np.ndarray, path: str | Path, columns: int | None = None, scale: int | None = None) -> None:
    """Save a grid PNG; small images (e.g. 8×8 digits) are upscaled so a person can see them."""
    grid = image_grid(images, columns)
    scale = scale or max(1, 256 // (images.shape[2] * math.ceil(math.sqrt(len(images)))))
    pil = PIL.Image.fromarray(grid[..., 0] if grid.shape[2] == 1 else grid)
    if scale > 1:
        pil = pil.resize((pil.width * scale, pil.height * scale), PIL.Image.NEAREST)
    atomic_write_bytes(path, lambda f: pil.save(f, format="PNG"))


def save_image_files(images: np.ndarray, seeds: list[int], outdir: str | Path) -> list[Path]:
    """One PNG per image, named by its seed as EDM's ``generate.py`` names them (``000042.png``); returns the paths."""
    paths = []
    for image, seed in zip(images, seeds, strict=True):
        pil = PIL.Image.fromarray(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0))
        paths.append(Path(outdir) / f"{seed:06d}.png")
        atomic_write_bytes(paths[-1], lambda f, pil=pil: pil.save(f, format="PNG"))
    return paths
