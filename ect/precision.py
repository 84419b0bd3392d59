"""Numerics of training and evaluation: one name per setting, applied by one function, recorded with each run.

``fp32``  strict float32: TF32 off for CUDA matmuls and cuDNN convolutions. The official CIFAR-10 training and
          evaluation (locuslab/ect main: ``enable_tf32=False`` in ``ct_training_loop.py``, flags cleared in
          ``ct_eval.py``).
``tf32``  float32 tensors, TF32 tensor cores for matmuls and convolutions (the official ImageNet loop, branch
          ``imgnet``, sets both flags).
``bf16``  autocast to bfloat16 (matmuls and convolutions in bf16, reductions in fp32), TF32 for the rest; the
          fast mode (not an official setting).
``fp16``  evaluation only: autocast to float16 with TF32 on, the official ImageNet evaluation's setting
          (``eval_imgnet_ecm.sh --fp16=1``; it casts the whole U-Net to fp16, autocast keeps reductions in fp32).

On CPU the TF32 flags have no effect and ``tf32`` runs as ``fp32``; the record says so.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

TRAINING_PRECISIONS = ("fp32", "tf32", "bf16")
EVALUATION_PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}
# The official evaluation numerics per dataset (``--precision auto``): ImageNet's eval script runs fp16.
OFFICIAL_EVALUATION = {"imagenet64": "fp16"}


def evaluation_precision(name: str, dataset: str | None) -> str:
    """Resolve ``auto`` to the official evaluation numerics of ``dataset`` (fp32 where none is known)."""
    return OFFICIAL_EVALUATION.get(dataset or "", "fp32") if name == "auto" else name


@contextlib.contextmanager
def precision(name: str, device: torch.device | str) -> Iterator[dict[str, Any]]:
    """Set the TF32 flags for ``name`` for the duration (restored on exit); yields what is in effect.

    Autocast is not entered here (it is thread-local and must wrap each forward pass): use
    :func:`autocast` around the forward passes.
    """
    if name not in EVALUATION_PRECISIONS:
        raise ValueError(f"unknown precision {name!r}; choose from {list(EVALUATION_PRECISIONS)}")
    device = torch.device(device)
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = (matmul.allow_tf32, cudnn.allow_tf32, matmul.allow_fp16_reduced_precision_reduction, cudnn.benchmark)
    tf32 = name != "fp32"
    # As the official loop: the reduced-precision fp16 reduction flag follows TF32, cuDNN picks its fastest
    # convolution algorithms (``cudnn_benchmark=True``, its default).
    matmul.allow_tf32, cudnn.allow_tf32, matmul.allow_fp16_reduced_precision_reduction = tf32, tf32, tf32
    cudnn.benchmark = True
    try:
        yield describe(name, device)
    finally:
        matmul.allow_tf32, cudnn.allow_tf32, matmul.allow_fp16_reduced_precision_reduction, cudnn.benchmark = saved


def describe(name: str, device: torch.device) -> dict[str, Any]:
    """The numerics actually in effect for ``name`` on ``device`` (flags read back from torch)."""
    cuda = device.type == "cuda"
    dtype = _AUTOCAST.get(name)
    return {
        "precision": name,
        "device_type": device.type,
        "cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "tf32_in_effect": cuda and torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32,
        "autocast_dtype": str(dtype).removeprefix("torch.") if dtype is not None else None,
    }


def settings(name: str, device: torch.device | str) -> dict[str, Any]:
    """What :func:`precision` puts in effect for ``name`` on ``device`` (for config files and logs)."""
    with precision(name, device) as record:
        return record


def autocast(name: str, device: torch.device | str) -> contextlib.AbstractContextManager:
    """Autocast context of ``name`` (a no-op for fp32 and tf32)."""
    device = torch.device(device)
    dtype = _AUTOCAST.get(name)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype)
