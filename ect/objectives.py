"""Each method's training objective, assembled from its row of :data:`ect.methods.METHODS`.

The row's switches name entries of three small tables here: :data:`PAIRS` (how σ, or the pair (t, r), is drawn
from the iteration's standard-normal draws z), :data:`TARGETS` (how the target point x_r is made) and
:data:`OBJECTIVES` (which loss). The trainer calls one :class:`Objective` per micro-batch and never branches on a
method's name. The math itself is in :mod:`ect.losses` (pure functions) and :func:`ect.sampling.pf_ode_step`.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from ect.config import RunConfig
from ect.losses import (
    consistency_loss,
    edm_loss,
    grid_index,
    grid_pair,
    ict_index_probs,
    ict_steps,
    karras_sigmas,
    lognormal_t,
    mapping_r,
    pseudo_huber_c,
    stage_at,
    time_weight,
)
from ect.methods import METHODS
from ect.sampling import pf_ode_step

# (config, iteration, z) → (σ or t, r or None), per sample.
PairDraw = Callable[[RunConfig, int, torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]


def _lognormal(cfg: RunConfig, it: int, z: torch.Tensor) -> tuple[torch.Tensor, None]:
    return lognormal_t(z, cfg.diffusion.P_mean, cfg.diffusion.P_std), None


def _mapping(cfg: RunConfig, it: int, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    e = cfg.ect
    t = lognormal_t(z, e.P_mean, e.P_std)
    return t, mapping_r(t, stage_at(it, e.stage_length), e.mapping, e.q, e.k, e.b)


def ict_total_iterations(cfg: RunConfig) -> int:
    """K of iCT's curriculum: ``ict.total_iterations``, else ``training.iterations``."""
    return cfg.ict.total_iterations or cfg.training.iterations


def ict_grid(cfg: RunConfig, it: int) -> torch.Tensor:
    """The Karras boundaries iCT uses at iteration ``it`` (N(it) of them)."""
    g = cfg.ict
    return karras_sigmas(ict_steps(it, ict_total_iterations(cfg), g.s0, g.s1), g.sigma_min, g.sigma_max, g.rho)


def _ict_grid(cfg: RunConfig, it: int, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    sigmas = ict_grid(cfg, it)
    return grid_pair(sigmas, grid_index(z, ict_index_probs(sigmas, cfg.ict.P_mean, cfg.ict.P_std)))


def _cd_grid(cfg: RunConfig, it: int, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    g = cfg.cd
    sigmas = karras_sigmas(g.steps, g.sigma_min, g.sigma_max, g.rho)
    return grid_pair(sigmas, grid_index(z, torch.full([g.steps - 1], 1 / (g.steps - 1), dtype=torch.float64)))


PAIRS: dict[str, PairDraw] = {"lognormal": _lognormal, "mapping": _mapping, "ict_grid": _ict_grid,
                              "cd_grid": _cd_grid}


# What a log line calls the stage, by how the method draws its pairs: ECT's mapping stage, the doublings of iCT's
# curriculum so far, else 0.
STAGES: dict[str, Callable[[RunConfig, int], int]] = {
    "mapping": lambda cfg, it: stage_at(it, cfg.ect.stage_length),
    "ict_grid": lambda cfg, it: int(math.log2((ict_grid(cfg, it).numel() - 1) // cfg.ict.s0)),
}


@dataclass
class Batch:
    """One micro-batch: clean images x0 (with labels), the iteration's normal draws z and noise ε of its rows."""

    x0: torch.Tensor
    labels: torch.Tensor | None
    z: torch.Tensor
    eps: torch.Tensor


@dataclass
class Terms:
    """A micro-batch's per-sample loss, the sum of its mean r/t (0 for EDM) and whether any r > 0 needed a target
    pass."""

    loss: torch.Tensor
    ratio: torch.Tensor
    target_pass: bool


class EMATarget(torch.nn.Module):
    """A target network θ⁻ ← μ·θ⁻ + (1 − μ)·θ, updated after every step (CD's target EMA μ), in training mode like
    the online network; its target pass replays the online network's dropout masks, as the shared-weights target
    does."""

    def __init__(self, online: torch.nn.Module, mu: float) -> None:
        super().__init__()
        self.net = copy.deepcopy(online).requires_grad_(False)
        self._online = [online]  # a reference, not a submodule: the state dict holds the target only
        self.mu = mu

    def forward(self, *args: object, **kwargs: object) -> torch.Tensor:
        return self.net(*args, **kwargs)

    @contextlib.contextmanager
    def target_pass(self) -> Iterator[None]:
        for src, dst in zip(self._online[0].modules(), self.net.modules(), strict=True):
            for name, mask in vars(src).items():
                if name.startswith("_mask_"):
                    setattr(dst, name, mask)
        with self.net.target_pass():
            yield

    @torch.no_grad()
    def update(self) -> None:
        torch._foreach_lerp_(list(self.net.parameters()), [p.detach() for p in self._online[0].parameters()],
                             1 - self.mu)


class Objective:
    """The loss of one method on a micro-batch; ``teacher_evals``: teacher forward passes per training image.

    ``teacher``: the frozen diffusion model (eval mode) of a method whose row has ``teacher``; ``target_net``:
    an EMA target network (``cd.target_ema`` > 0), else the target pass uses the online weights.
    """

    def __init__(self, cfg: RunConfig, method: str, image_dim: int, teacher: torch.nn.Module | None = None,
                 target_net: torch.nn.Module | None = None) -> None:
        self.cfg, self.method, self.row = cfg, method, METHODS[method]
        self.draw = PAIRS[self.row.pairs]
        self.teacher, self.target_net = teacher, target_net
        section = getattr(cfg, self.row.section)
        c = getattr(section, "c", None)
        self.c = pseudo_huber_c(image_dim) if c is None else c
        # ECT's weighting is a setting; iCT's is 1/(t − r); CD's a setting (uniform in the CD paper).
        self.weighting = getattr(section, "weighting", "inverse_dt")
        self.teacher_evals = TEACHER_EVALS[self.row.target](cfg) if self.row.target else 0

    def stage(self, it: int) -> int:
        return STAGES[self.row.pairs](self.cfg, it) if self.row.pairs in STAGES else 0

    def target_point(self, batch: Batch, x_t: torch.Tensor, t: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """The target point x_r for x_t (t and r broadcast per sample), as the method's row says."""
        return TARGETS[self.row.target](self, batch, x_t, t, r)

    def __call__(self, model: torch.nn.Module, it: int, batch: Batch) -> Terms:
        return OBJECTIVES[self.row.objective](self, model, it, batch)


def _edm(obj: Objective, model: torch.nn.Module, it: int, b: Batch) -> Terms:
    sigma, _ = obj.draw(obj.cfg, it, b.z)
    loss = edm_loss(model, b.x0, b.labels, sigma, b.eps)
    return Terms(loss, torch.zeros((), device=loss.device), False)


def _noise_point(obj: Objective, b: Batch, x_t: torch.Tensor, t: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    return b.x0 + r * b.eps


def _teacher_point(obj: Objective, b: Batch, x_t: torch.Tensor, t: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """One step of the teacher's probability-flow ODE from x_t at σ = t to σ = r (Heun, or Euler)."""

    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return obj.teacher(x, sigma, b.labels, boundary=False)

    with torch.no_grad():
        return pf_ode_step(denoise, x_t, t, r, second_order=obj.cfg.cd.solver == "heun")


# How x_r is made, and how many teacher evaluations that costs per image (r ≥ σ_min > 0 on the grid, so Heun's
# second evaluation always happens; the first-order last step of EDM's sampler only exists when stepping to 0).
TARGETS = {"noise": _noise_point, "teacher_ode": _teacher_point}
TEACHER_EVALS: dict[str, Callable[[RunConfig], int]] = {"noise": lambda cfg: 0,
                                                        "teacher_ode": lambda cfg: 2 if cfg.cd.solver == "heun" else 1}


def _consistency(obj: Objective, model: torch.nn.Module, it: int, b: Batch) -> Terms:
    t, r = obj.draw(obj.cfg, it, b.z)
    weight = time_weight(t, r, obj.weighting)
    t4, r4 = t.reshape(-1, 1, 1, 1), r.reshape(-1, 1, 1, 1)
    x_t = b.x0 + t4 * b.eps
    x_r = obj.target_point(b, x_t, t4, r4)
    loss = consistency_loss(model, b.x0, b.labels, x_t, t4, x_r, r4, weight, obj.c, obj.target_net)
    return Terms(loss, (r / t).mean().detach(), bool((r > 0).any()))


OBJECTIVES: dict[str, Callable[[Objective, torch.nn.Module, int, Batch], Terms]] = {
    "edm": _edm, "consistency": _consistency}
