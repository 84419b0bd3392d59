"""Dropout whose mask can be replayed: ECT's two passes must see one mask (the method depends on it).

The training pass draws a mask and keeps it; inside :func:`replay_masks` (the stop-gradient target pass)
every :class:`SharedDropout` reuses its kept mask instead of drawing. Unlike restoring the RNG state
between the passes (the official code's way), this holds under ``torch.compile``, whose generated
kernels draw random numbers in their own order, and it draws each mask once instead of twice.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


class SharedDropout(torch.nn.Module):
    """Dropout with a replayable mask and no parameters.

    ``rescale``: inverted dropout (kept units × 1/(1−p)), as ``torch.nn.functional.dropout``; off for label
    dropout, which zeroes whole label vectors (``forward(labels, shape=[N, 1])``).
    """

    def __init__(self, p: float, rescale: bool = True) -> None:
        super().__init__()
        self.p = float(p)
        self.rescale = rescale
        self.replay = False
        self.mask: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, shape: list[int] | None = None) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        shape = list(x.shape) if shape is None else shape
        if not self.replay or self.mask is None or list(self.mask.shape) != shape:
            keep = torch.rand(shape, device=x.device) >= self.p
            self.mask = keep.to(x.dtype) * (1 / (1 - self.p)) if self.rescale and self.p < 1 else keep.to(x.dtype)
        return x * self.mask.to(x.dtype)


@contextlib.contextmanager
def replay_masks(net: torch.nn.Module) -> Iterator[None]:
    """Every :class:`SharedDropout` in ``net`` reuses the mask of its previous forward pass for the duration."""
    drops = [m for m in net.modules() if isinstance(m, SharedDropout)]
    for m in drops:
        m.replay = True
    try:
        yield
    finally:
        for m in drops:
            m.replay = False
