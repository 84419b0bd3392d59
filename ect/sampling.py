"""Samplers: ECT's few-step consistency sampler and EDM's Heun sampler, with per-sample seeds.

Sample i depends only on its seed, never on the batch it is drawn in or on the number of processes:
each seed has its own ``torch.Generator`` (EDM's StackedRandomGenerator idea), drawn in a fixed order
(latent, then label, then the noise of each later step).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ect.errors import UserError
from ect.kinds import SAMPLERS_BY_KIND

T_MAX = 80.0
T_MID = {"cifar10": 0.821, "imagenet64": 1.526}  # official ECT 2-step intermediate times


class SeededNoise:
    """One generator per seed; ``randn`` stacks one draw from each."""

    def __init__(self, seeds: Sequence[int], device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.generators = [torch.Generator(self.device).manual_seed(int(s) % (1 << 63)) for s in seeds]

    def randn(self, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.stack(
            [torch.randn(list(shape), generator=g, device=self.device, dtype=dtype) for g in self.generators]
        )

    def randint(self, high: int) -> torch.Tensor:
        return torch.stack([torch.randint(high, [], generator=g, device=self.device) for g in self.generators])


@torch.no_grad()
def consistency_sample(
    net: torch.nn.Module,
    latents: torch.Tensor,
    noise: SeededNoise,
    class_labels: torch.Tensor | None = None,
    t_max: float = T_MAX,
    t_mids: Sequence[float] = (),
) -> torch.Tensor:
    """Multi-step consistency sampling as the official ECT ``generator_fn``, in float64.

    x ← t_max·z; then for each t_next in (t_mids…, 0): x̂ = f(x, t_cur); x ← x̂ + t_next·ε, with a fresh
    ε from ``noise``. ``latents`` are the standard-normal z.
    """
    shape = latents.shape[1:]
    t_steps = torch.tensor([t_max, *t_mids, 0.0], dtype=torch.float64, device=latents.device)
    x = latents.to(torch.float64) * t_steps[0]
    for t_cur, t_next in itertools.pairwise(t_steps):
        x = net(x, t_cur, class_labels, boundary=True).to(torch.float64)
        if t_next > 0:
            x = x + t_next * noise.randn(shape, torch.float64)
    return x


@torch.no_grad()
def heun_sample(
    net: torch.nn.Module,
    latents: torch.Tensor,
    class_labels: torch.Tensor | None = None,
    num_steps: int = 18,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
) -> torch.Tensor:
    """EDM's deterministic 2nd-order Heun sampler (18 steps = 35 network evaluations), in float64."""
    i = torch.arange(num_steps, dtype=torch.float64, device=latents.device)
    t_steps = (sigma_max ** (1 / rho) + i / (num_steps - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    t_steps = torch.cat([t_steps, torch.zeros_like(t_steps[:1])])

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return net(x, t, class_labels, boundary=False).to(torch.float64)

    x = latents.to(torch.float64) * t_steps[0]
    for n, (t_cur, t_next) in enumerate(itertools.pairwise(t_steps)):
        # second-order correction except on the last step (t_next = 0)
        x = pf_ode_step(denoise, x, t_cur, t_next, second_order=n < num_steps - 1)
    return x


def pf_ode_step(denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor,
                t_cur: torch.Tensor, t_next: torch.Tensor, second_order: bool = True) -> torch.Tensor:
    """One step of EDM's probability-flow ODE dx/dσ = (x − D(x, σ))/σ from σ = t_cur to t_next: Euler, with Heun's
    second-order correction when ``second_order`` (which needs t_next > 0). ``denoise`` is D (the diffusion model);
    t_cur and t_next are scalars or broadcast per sample. The step of :func:`heun_sample` and of consistency
    distillation's target point."""
    d_cur = (x - denoise(x, t_cur)) / t_cur
    x_next = x + (t_next - t_cur) * d_cur
    if second_order:
        d_next = (x_next - denoise(x_next, t_next)) / t_next
        x_next = x + (t_next - t_cur) * (0.5 * d_cur + 0.5 * d_next)
    return x_next


@dataclass(frozen=True)
class SamplerSpec:
    """A named sampler setting; ``nfe`` is the number of network evaluations per sample."""

    name: str  # "1step", "2step" or "heun"
    t_mids: tuple[float, ...] = ()
    heun_steps: int = 18
    t_max: float = T_MAX

    @property
    def nfe(self) -> int:
        return 2 * self.heun_steps - 1 if self.name == "heun" else 1 + len(self.t_mids)

    def as_dict(self) -> dict:
        d = {"sampler": self.name, "nfe": self.nfe, "t_max": self.t_max}
        if self.name == "heun":
            d["heun_steps"] = self.heun_steps
        else:
            d["t_mids"] = list(self.t_mids)
        return d


def sampler_spec(name: str, t_mid: float | Sequence[float] | None = None, heun_steps: int = 18,
                 t_max: float = T_MAX) -> SamplerSpec:
    """Build a sampler setting; the 2-step sampler needs ``t_mid`` (0.821 CIFAR-10, 1.526 ImageNet 64).
    ``t_max`` is where the 1- and 2-step samplers start (Heun keeps EDM's σ_max = 80)."""
    if name == "1step":
        return SamplerSpec("1step", t_max=float(t_max))
    if name == "2step":
        if t_mid is None:
            raise ValueError("the 2-step sampler needs t_mid (e.g. 0.821 for CIFAR-10)")
        mids = (float(t_mid),) if isinstance(t_mid, int | float) else tuple(float(t) for t in t_mid)
        return SamplerSpec("2step", t_mids=mids, t_max=float(t_max))
    if name == "heun":
        return SamplerSpec("heun", heun_steps=heun_steps)
    raise ValueError(f"unknown sampler {name!r}; choose 1step, 2step or heun")


class SamplerError(UserError):
    """A sampler that does not fit the checkpoint, or a 2-step sampler without a known intermediate time."""


def resolve_sampler(name: str, kind: str, config: dict[str, Any],
                    t_mid: float | Sequence[float] | None = None, t_max: float | None = None) -> SamplerSpec:
    """The sampler ``name`` for a checkpoint of ``kind`` whose run config is ``config``: one rule for
    ``ect sample``, ``ect evaluate`` and the training sample grids.

    The sampler must fit the kind (:data:`ect.kinds.SAMPLERS_BY_KIND`). The 2-step intermediate time is
    ``t_mid`` (--t-mid), else the checkpoint's ``sampling.t_mid``, else the official value for its dataset
    (:data:`T_MID`); other samplers take none. The 1- and 2-step samplers start from ``t_max`` (--t-max), else
    the checkpoint's ``sampling.t_max``, else the official :data:`T_MAX`; Heun takes none.
    """
    if name not in SAMPLERS_BY_KIND[kind]:
        raise SamplerError(f"--sampler {name} does not apply to a {kind} checkpoint; "
                           f"use {' or '.join(SAMPLERS_BY_KIND[kind])}")
    if name == "heun":
        if t_mid is not None or t_max is not None:
            raise SamplerError("--t-mid and --t-max apply to the 1- and 2-step samplers, not to heun "
                               "(EDM's schedule from σ_max = 80)")
        return sampler_spec(name)
    if t_max is None:
        t_max = (config.get("sampling") or {}).get("t_max", T_MAX)
    if not (math.isfinite(t_max) and t_max > 0):
        raise SamplerError(f"t_max {t_max} must be a positive finite time")
    if name != "2step":
        if t_mid is not None:
            raise SamplerError(f"--t-mid applies to the 2-step sampler only, not to {name}")
        return sampler_spec(name, t_max=t_max)
    if t_mid is None:
        t_mid = (config.get("sampling") or {}).get("t_mid")
    if t_mid is None:
        dataset = (config.get("data") or {}).get("name")
        if dataset not in T_MID:
            raise SamplerError(f"no 2-step t_mid known for dataset {dataset!r} (none in the checkpoint config); "
                               "pass --t-mid")
        t_mid = T_MID[dataset]
    mids = [t_mid] if isinstance(t_mid, int | float) else list(t_mid)
    if not mids or not all(math.isfinite(t) and 0 < t < t_max for t in mids):
        raise SamplerError(f"t_mid {t_mid} must be finite times between 0 and t_max = {t_max:g}")
    return sampler_spec(name, t_mid, t_max=t_max)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[−1, 1] float images → uint8 [N, C, H, W], rounded as EDM does."""
    return (x * 127.5 + 128).clip(0, 255).to(torch.uint8).cpu().numpy()


def generate_images(
    net: torch.nn.Module,
    spec: SamplerSpec,
    seeds: Sequence[int],
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Sample one image per seed; returns uint8 images and (for conditional nets) their class indices.

    Labels are drawn like EDM2's generate_images: uniformly per seed, from that seed's generator.
    """
    images, classes = [], []
    batches = [seeds[i : i + batch_size] for i in range(0, len(seeds), batch_size)]
    for batch in tqdm(batches, desc=f"sampling ({spec.name})", unit="batch", disable=not progress):
        noise = SeededNoise(batch, device)
        # Each seed's stream gives its latent, then its label (EDM2 order), then later-step noise.
        latents = noise.randn((net.img_channels, net.img_resolution, net.img_resolution), torch.float64)
        labels = None
        if net.label_dim:
            idx = noise.randint(net.label_dim)
            classes.append(idx.cpu().numpy())
            labels = torch.nn.functional.one_hot(idx, net.label_dim).to(torch.float32)
        if spec.name == "heun":
            x = heun_sample(net, latents, labels, num_steps=spec.heun_steps)
        else:
            x = consistency_sample(net, latents, noise, labels, t_max=spec.t_max, t_mids=spec.t_mids)
        images.append(to_uint8(x))
    return np.concatenate(images), (np.concatenate(classes) if classes else None)

