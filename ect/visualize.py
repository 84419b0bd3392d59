"""Image grids of uint8 samples (PNG), for sample snapshots and figures."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import PIL.Image

from ect.files import atomic_write_bytes


def image_grid(images: np.ndarray, columns: int | None = None, pad: int = 1) -> np.ndarray:
    """Tile uint8 images [N, C, H, W] into one [rows·(H+pad), cols·(W+pad), C] array (white padding)."""
    n, c, h, w = images.shape
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    grid = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i, img in enumerate(images):
        y, x = divmod(i, columns)
        grid[pad + y * (h + pad): pad + y * (h + pad) + h, pad + x * (w + pad): pad + x * (w + pad) + w] = \
            img.transpose(1, 2, 0)
    return grid


def save_image_grid(images: np.ndarray, path: str | Path, columns: int | None = None, scale: int | None = None) -> None:
    """Save a grid PNG; small images (e.g. 8×8 digits) are upscaled so a person can see them."""
    grid = image_grid(images, columns)
    scale = scale or max(1, 256 // (images.shape[2] * math.ceil(math.sqrt(len(images)))))
    pil = PIL.Image.fromarray(grid[..., 0] if grid.shape[2] == 1 else grid)
    if scale > 1:
        pil = pil.resize((pil.width * scale, pil.height * scale), PIL.Image.NEAREST)
    path = Path(path)

    def write(f) -> None:
        pil.save(f, format="PNG")

    atomic_write_bytes(path, write)
