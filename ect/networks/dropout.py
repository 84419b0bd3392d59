"""Dropout whose masks can be replayed: ECT's two passes must see one mask (the method depends on it).

The online (training) pass draws each mask and keeps it on the module that applied it; inside
:func:`replay_masks` (the stop-gradient target pass) every :func:`shared_dropout` call reuses the kept mask
instead of drawing. Unlike restoring the RNG state between the passes (the official code's way), this holds
under ``torch.compile``, whose generated kernels draw random numbers in their own order, and each mask is
drawn once instead of twice. The masks are plain attributes, not submodules or buffers, so state dicts and
the module tree stay those of EDM.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

_replay = False


def shared_dropout(owner: torch.nn.Module, x: torch.Tensor, p: float, name: str = "dropout",
                   shape: list[int] | None = None, rescale: bool = True) -> torch.Tensor:
    """Dropout of ``x`` with rate ``p`` in ``owner``'s training mode, its mask kept as ``owner._mask_<name>``.

    ``rescale``: inverted dropout (kept units × 1/(1−p)) as ``torch.nn.functional.dropout``; label dropout
    (``rescale=False``, ``shape=[N, 1]``) zeroes whole label vectors instead.
    """
    if not owner.training or p == 0:
        return x
    shape = list(x.shape) if shape is None else shape
    attr = f"_mask_{name}"
    mask = getattr(owner, attr, None)
    if not _replay or mask is None or list(mask.shape) != shape:
        keep = torch.rand(shape, device=x.device) >= p
        mask = keep.to(x.dtype) * (1 / (1 - p)) if rescale and p < 1 else keep.to(x.dtype)
        setattr(owner, attr, mask)
    return x * mask.to(x.dtype)


@contextlib.contextmanager
def replay_masks() -> Iterator[None]:
    """Every :func:`shared_dropout` reuses the mask of its previous call for the duration (ECT's target pass)."""
    global _replay
    previous, _replay = _replay, True
    try:
        yield
    finally:
        _replay = previous
