"""EDM-style preconditioning shared by every backbone: f(x, t) = c_skip(t)·x + c_out(t)·F(c_in(t)·x, c_noise(t)).

Training mode uses EDM's coefficients. At evaluation time the official CIFAR-10 ECT code (``ECMPrecond``)
shifts t by σ_min in c_skip/c_out so that f(x, σ_min) = x exactly: the boundary condition of a consistency
model. The shift only makes sense for consistency models; EDM's Heun sampler asks for the plain denoiser
(``boundary=False``) because it evaluates the network below σ_min. ECT's ImageNet wrapper has no shift
(σ_min = 0).
"""

from __future__ import annotations

import contextlib

import torch

from ect.networks.dropout import replay_masks


class Preconditioner(torch.nn.Module):
    """Base of the wrappers: subclasses hold the backbone and implement :meth:`backbone`."""

    img_resolution: int
    img_channels: int
    label_dim: int
    sigma_data: float = 0.5
    sigma_min: float = 0.0  # boundary shift applied when ``boundary`` is true

    def coefficients(self, sigma: torch.Tensor, boundary: bool = False) -> tuple[torch.Tensor, ...]:
        """(c_skip, c_out, c_in, c_noise) for noise level ``sigma`` (any shape)."""
        sd = self.sigma_data
        shifted = sigma - self.sigma_min if boundary else sigma
        c_skip = sd**2 / (shifted**2 + sd**2)
        c_out = shifted * sd / (sigma**2 + sd**2).sqrt()
        c_in = 1 / (sd**2 + sigma**2).sqrt()
        c_noise = sigma.log() / 4
        return c_skip, c_out, c_in, c_noise

    def backbone(self, x: torch.Tensor, c_noise: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def forward(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor | float,
        class_labels: torch.Tensor | None = None,
        *,
        boundary: bool | None = None,
    ) -> torch.Tensor:
        """Denoised estimate of x at noise level sigma; ``boundary`` defaults to ``not self.training``.

        ``class_labels``: one-hot ``[N, label_dim]`` or integer class indices ``[N]``; None means all-zero
        labels for a conditional network. Computed in float32 whatever the input dtype.
        """
        boundary = (not self.training) if boundary is None else boundary
        x = x.to(torch.float32)
        n = x.shape[0]
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1, 1, 1, 1)
        sigma = sigma.expand(n, 1, 1, 1)
        labels = None
        if self.label_dim:
            if class_labels is None:
                labels = torch.zeros([n, self.label_dim], device=x.device)
            elif class_labels.ndim == 1 and not class_labels.is_floating_point():
                labels = torch.nn.functional.one_hot(class_labels.long(), self.label_dim).to(torch.float32)
            else:
                labels = class_labels.to(torch.float32).reshape(-1, self.label_dim)
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma, boundary)
        F_x = self.backbone(c_in * x, c_noise.flatten(), labels)
        return c_skip * x + c_out * F_x.to(torch.float32)

    def target_pass(self) -> contextlib.AbstractContextManager:
        """Context for the stop-gradient target pass of the ECT loss: the dropout masks of the online pass."""
        return replay_masks()


class ECMPrecond(Preconditioner):
    """ECT's CIFAR-10 wrapper of a SongUNet, kept as ``self.model`` so EDM/ECT state-dict keys match."""

    def __init__(
        self,
        model: torch.nn.Module,
        img_resolution: int,
        img_channels: int,
        label_dim: int = 0,
        sigma_data: float = 0.5,
        sigma_min: float = 0.003,  # ECT's ECMPrecond default (EDM's samplers stop at 0.002)
    ) -> None:
        super().__init__()
        self.model = model
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.label_dim = label_dim
        self.sigma_data = sigma_data
        self.sigma_min = sigma_min

    def backbone(self, x: torch.Tensor, c_noise: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        return self.model(x, c_noise, class_labels=labels)
