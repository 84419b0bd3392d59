"""ECT's preconditioning of an EDM backbone: f(x, t) = c_skip(t)·x + c_out(t)·F(c_in(t)·x, c_noise(t)).

Training mode uses EDM's coefficients. At evaluation time the official ECT code shifts t by σ_min in
c_skip/c_out so that f(x, σ_min) = x exactly: the boundary condition of a consistency model. The
shift is only meaningful for consistency models; EDM's Heun sampler asks for the plain denoiser
(``boundary=False``) because it evaluates the network at σ < σ_min.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch


class ECMPrecond(torch.nn.Module):
    """Wraps a SongUNet (kept as ``self.model`` so EDM/ECT state-dict keys match: ``model.…``)."""

    def __init__(
        self,
        model: torch.nn.Module,
        img_resolution: int,
        img_channels: int,
        label_dim: int = 0,
        sigma_data: float = 0.5,
        sigma_min: float = 0.003,  # ECT's ECMPrecond default (EDM uses 0.002 for sampling only)
    ) -> None:
        super().__init__()
        self.model = model
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.label_dim = label_dim
        self.sigma_data = sigma_data
        self.sigma_min = sigma_min

    def coefficients(self, sigma: torch.Tensor, boundary: bool) -> tuple[torch.Tensor, ...]:
        """(c_skip, c_out, c_in, c_noise) for noise level ``sigma`` (any shape)."""
        sd = self.sigma_data
        shifted = sigma - self.sigma_min if boundary else sigma
        c_skip = sd**2 / (shifted**2 + sd**2)
        c_out = shifted * sd / (sigma**2 + sd**2).sqrt()
        c_in = 1 / (sd**2 + sigma**2).sqrt()
        c_noise = sigma.log() / 4
        return c_skip, c_out, c_in, c_noise

    def forward(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor | float,
        class_labels: torch.Tensor | None = None,
        *,
        boundary: bool | None = None,
    ) -> torch.Tensor:
        """Denoised estimate of x at noise level sigma; ``boundary`` defaults to ``not self.training``."""
        boundary = (not self.training) if boundary is None else boundary
        x = x.to(torch.float32)
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1, 1, 1, 1)
        sigma = sigma.expand(x.shape[0], 1, 1, 1)
        if self.label_dim:
            if class_labels is None:
                class_labels = torch.zeros([x.shape[0], self.label_dim], device=x.device)
            class_labels = class_labels.to(torch.float32).reshape(-1, self.label_dim)
        else:
            class_labels = None
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma, boundary)
        F_x = self.model(c_in * x, c_noise.flatten(), class_labels=class_labels)
        return c_skip * x + c_out * F_x.to(torch.float32)

    def target_pass(self):
        """Context for the stop-gradient target pass of the ECT loss (nothing to change for SongUNet)."""
        return nullcontext()
