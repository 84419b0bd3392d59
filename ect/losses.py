"""Training objectives: EDM's denoising loss (diffusion pretraining) and the one consistency loss of ECT, iCT and CD.

The math is written as pure functions of tensors (mapping function, Karras grid, curriculum, index distribution,
weightings, adaptive distance) so tests and users can check them against the published forms directly. The losses
themselves take the random draws (t, r, ε) as arguments; the trainer draws them from seeded generators, which keeps
runs reproducible and independent of batch splitting across processes.

Sources: docs/paper-numbers.md §1.2–1.5 (ECT; official code, locuslab/ect ``training/loss.py``) and
docs/training-schemes.md (iCT, arXiv 2310.14189; CD, arXiv 2303.01469).
"""

from __future__ import annotations

import math

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


def karras_sigmas(n: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> torch.Tensor:
    """Karras boundaries σ_1 < … < σ_N in float64: σ_i = (σ_min^{1/ρ} + (i−1)/(N−1)·(σ_max^{1/ρ} − σ_min^{1/ρ}))^ρ."""
    if n < 2:
        raise ValueError(f"a Karras grid needs at least 2 boundaries, got {n}")
    i = torch.arange(n, dtype=torch.float64)
    return (sigma_min ** (1 / rho) + i / (n - 1) * (sigma_max ** (1 / rho) - sigma_min ** (1 / rho))) ** rho


def ict_steps(iteration: int, total_iterations: int, s0: int = 10, s1: int = 1280) -> int:
    """iCT's curriculum: N(k) = min(s0·2^⌊k/K'⌋, s1) + 1 boundaries at iteration k, K' = ⌊K/(log2⌊s1/s0⌋ + 1)⌋.

    K' is at least 1, so that runs shorter than the number of doublings still advance (K < log2⌊s1/s0⌋ + 1).
    """
    k_prime = max(math.floor(total_iterations / (math.log2(s1 // s0) + 1)), 1)
    return min(s0 * 2 ** (int(iteration) // k_prime), s1) + 1


def ict_index_probs(sigmas: torch.Tensor, P_mean: float = -1.1, P_std: float = 2.0) -> torch.Tensor:
    """iCT's distribution of the interval i (0-based: the pair σ_i < σ_{i+1} of ``sigmas``):
    p(i) ∝ erf((ln σ_{i+1} − P_mean)/(√2·P_std)) − erf((ln σ_i − P_mean)/(√2·P_std)), normalised over the N − 1
    intervals: a log-normal ln σ ~ N(P_mean, P_std²) discretised on the grid."""
    cdf = torch.erf((sigmas.double().log() - P_mean) / (math.sqrt(2) * P_std))
    p = cdf[1:] - cdf[:-1]
    return p / p.sum()


def grid_index(z: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """Intervals drawn with probabilities ``probs`` from standard-normal draws z, by the inverse CDF of u = Φ(z)."""
    u = 0.5 * torch.erfc(-z.double() / math.sqrt(2))
    cdf = probs.double().to(z.device).cumsum(0)
    return torch.searchsorted(cdf, u, right=True).clamp(max=len(probs) - 1)


def grid_pair(sigmas: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(t, r) = (σ_{i+1}, σ_i): the adjacent boundaries of interval ``index``, as float32 on its device."""
    sigmas = sigmas.to(device=index.device, dtype=torch.float32)
    return sigmas[index + 1], sigmas[index]


def pseudo_huber_c(dim: int) -> float:
    """iCT's pseudo-Huber constant c = 0.00054·√d for samples of d = pixels × channels values."""
    return 0.00054 * math.sqrt(dim)


def consistency_loss(
    net: torch.nn.Module,
    x0: torch.Tensor,
    labels: torch.Tensor | None,
    x_t: torch.Tensor,
    t: torch.Tensor,
    x_r: torch.Tensor,
    r: torch.Tensor,
    weight: torch.Tensor,
    c: float = 0.0,
    target_net: torch.nn.Module | None = None,
) -> torch.Tensor:
    """The consistency loss per sample: weight·(sqrt(‖f(x_t, t) − f⁻(x_r, r)‖² + c²) − c).

    f(x_t, t) carries the gradient; the target f⁻(x_r, r) is a stop-gradient pass of ``target_net`` (default: the
    same weights) with the online pass's dropout masks, replaced by x0 where r = 0 (the boundary condition).
    ``t`` and ``r`` have shape [N, 1, 1, 1], ``weight`` [N]; ‖·‖² sums over all pixels of a sample. How x_r is made
    (x0 + r·ε, or an ODE step of a teacher) and how (t, r) are drawn is the caller's: :func:`ect_loss` is ECT's.
    ``net`` may be DDP-wrapped or compiled; its module's ``target_pass()`` context makes the target pass reuse the
    online pass's dropout masks (:mod:`ect.networks.dropout`; the official code restores the CUDA RNG state
    instead, which ``torch.compile`` does not honour) and, for EDM2, switches off forced weight normalisation.
    """
    D_t = net(x_t, t, labels)
    if bool((r > 0).any()):
        target = net if target_net is None else target_net
        module = getattr(target, "module", target)
        with torch.no_grad(), module.target_pass():
            D_r = torch.nan_to_num(target(x_r, r, labels))
        D_r = torch.where(r > 0, D_r, x0)
    else:
        D_r = x0
    distance = adaptive_distance(_per_sample_sum((D_t - D_r) ** 2), c)
    return weight * distance


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
    """ECT loss per sample, as the official ``ECMLoss`` computes it: :func:`consistency_loss` with
    x_t = x0 + t·ε and x_r = x0 + r·ε sharing ε, the target from the same weights, and weight w(t, r).

    loss = w(t, r)·(sqrt(‖D_t − D_r‖² + c²) − c), ‖·‖² summed over all pixels of a sample; D_r = x0 where r = 0.
    """
    t = t.reshape(-1, 1, 1, 1)
    r = r.reshape(-1, 1, 1, 1)
    weight = time_weight(t.flatten(), r.flatten(), weighting, sigma_data)
    return consistency_loss(net, x0, labels, x0 + t * eps, t, x0 + r * eps, r, weight, c)
