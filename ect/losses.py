"""Training objectives: EDM's denoising loss (diffusion pretraining) and the ECT loss.

The math is written as pure functions of tensors (mapping function, weightings, adaptive distance) so
tests and users can check them against the published forms directly. The losses themselves take the
random draws (t, ε) as arguments; the trainer draws them from seeded generators, which keeps runs
reproducible and independent of batch splitting across processes.

Sources: docs/paper-numbers.md §1.2–1.5 (official code, locuslab/ect ``training/loss.py``).
"""

from __future__ import annotations

import torch

MAPPINGS = ("const", "sigmoid")
TIME_WEIGHTS = ("inverse_dt", "snr_plus_one", "uniform")


def stage_at(iteration: int, stage_length: int) -> int:
    """Stage a = ⌊iteration / stage_length⌋ of the mapping-function schedule (0-based)."""
    if stage_length <= 0:
        raise ValueError(f"stage_length must be positive, got {stage_length}")
    return int(iteration) // int(stage_length)


def mapping_r(
    t: torch.Tensor, stage: int, kind: str = "sigmoid", q: float = 2.0, k: float = 8.0, b: float = 1.0
) -> torch.Tensor:
    """The mapping function r(t, stage) of ECT, clamped at 0.

    decay = 1/q^(stage+1);  const: r = t·(1 − decay);  sigmoid: r = t·(1 − decay·(1 + k·σ(−b·t))).
    As stages advance, r → t and the consistency condition tightens. r = 0 means the target is x_0.
    """
    decay = 1.0 / q ** (stage + 1)
    if kind == "const":
        ratio = 1 - decay
    elif kind == "sigmoid":
        ratio = 1 - decay * (1 + k * torch.sigmoid(-b * t))
    else:
        raise ValueError(f"unknown mapping kind {kind!r}; choose from {MAPPINGS}")
    return torch.clamp(t * ratio, min=0)


def adaptive_distance(delta_sq: torch.Tensor, c: float) -> torch.Tensor:
    """Pseudo-Huber distance sqrt(‖Δ‖² + c²) − c of the squared norm ‖Δ‖² (c = 0 gives ‖Δ‖₂).

    Its gradient equals that of ½‖Δ‖² scaled by the adaptive weight w(Δ) = 1/sqrt(‖Δ‖² + c²).
    """
    if c < 0:
        raise ValueError(f"c must be non-negative, got {c}")
    return torch.sqrt(delta_sq + c**2) - c


def time_weight(t: torch.Tensor, r: torch.Tensor, kind: str, sigma_data: float = 0.5) -> torch.Tensor:
    """Weighting w(t, r): ``inverse_dt`` 1/(t − r) (CIFAR-10), ``snr_plus_one`` 1/t² + 1/σ_d² (ImageNet), or 1."""
    if kind == "inverse_dt":
        return 1 / (t - r)
    if kind == "snr_plus_one":
        return 1 / t**2 + 1 / sigma_data**2
    if kind == "uniform":
        return torch.ones_like(t)
    raise ValueError(f"unknown time weighting {kind!r}; choose from {TIME_WEIGHTS}")


def edm_weight(sigma: torch.Tensor, sigma_data: float = 0.5) -> torch.Tensor:
    """EDM's loss weight λ(σ) = (σ² + σ_d²)/(σ·σ_d)²."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def lognormal_t(z: torch.Tensor, P_mean: float, P_std: float) -> torch.Tensor:
    """t = exp(P_mean + P_std·z) for standard-normal z, i.e. ln t ~ N(P_mean, P_std²)."""
    return (z * P_std + P_mean).exp()


def _per_sample_sum(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1).sum(dim=1)


def edm_loss(
    net: torch.nn.Module,
    x0: torch.Tensor,
    labels: torch.Tensor | None,
    sigma: torch.Tensor,
    eps: torch.Tensor,
    sigma_data: float = 0.5,
) -> torch.Tensor:
    """EDM denoising loss per sample: λ(σ)·‖D(x0 + σε, σ) − x0‖² summed over pixels."""
    sigma = sigma.reshape(-1, 1, 1, 1)
    denoised = net(x0 + sigma * eps, sigma, labels)
    return edm_weight(sigma.flatten(), sigma_data) * _per_sample_sum((denoised - x0) ** 2)


def ect_loss(
    net: torch.nn.Module,
    x0: torch.Tensor,
    labels: torch.Tensor | None,
    t: torch.Tensor,
    r: torch.Tensor,
    eps: torch.Tensor,
    c: float = 0.0,
    weighting: str = "inverse_dt",
    sigma_data: float = 0.5,
) -> torch.Tensor:
    """ECT loss per sample, as the official ``ECMLoss`` computes it.

    x_t = x0 + t·ε and x_r = x0 + r·ε share ε. D_t = f(x_t, t) carries the gradient; D_r = f(x_r, r) is a
    stop-gradient target from the same weights and the same dropout mask, replaced by x0 where r = 0.
    loss = w(t, r)·(sqrt(‖D_t − D_r‖² + c²) − c), ‖·‖² summed over all pixels of a sample.
    ``net`` may be DDP-wrapped or compiled; its module's ``target_pass()`` context makes the target pass
    reuse the online pass's dropout masks (:mod:`ect.networks.dropout`; the official code restores the
    CUDA RNG state instead, which ``torch.compile`` does not honour) and, for EDM2, switches off forced
    weight normalisation.
    """
    t = t.reshape(-1, 1, 1, 1)
    r = r.reshape(-1, 1, 1, 1)
    D_t = net(x0 + t * eps, t, labels)
    if bool((r > 0).any()):
        module = getattr(net, "module", net)
        with torch.no_grad(), module.target_pass():
            D_r = torch.nan_to_num(net(x0 + r * eps, r, labels))
        D_r = torch.where(r > 0, D_r, x0)
    else:
        D_r = x0
    distance = adaptive_distance(_per_sample_sum((D_t - D_r) ** 2), c)
    return time_weight(t.flatten(), r.flatten(), weighting, sigma_data) * distance
