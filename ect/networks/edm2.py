"""EDM2's magnitude-preserving U-Net (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of
Diffusion Models"), as the official ECT ImageNet 64×64 code uses it.

Module, parameter and buffer names and shapes follow EDM2's ``training/networks_edm2.py`` so that the
official post-hoc-EMA pickles load with ``strict=True`` (through :mod:`ect.importer`). Two ECT changes:

* ``Precond`` has no log-variance head (``logvar_fourier``/``logvar_linear``): ECT found EDM2's learned
  uncertainty weighting to hurt multi-stage tuning, and the importer drops those keys.
* Every ``MPConv`` has a ``force_wn`` switch. Forced weight normalisation rewrites the stored weights in
  place on every training-mode call; ECT turns it off for the stop-gradient target pass
  (:meth:`Precond.target_pass`) so that pass cannot perturb the weights the online pass just used.

ECT also applies dropout only in blocks at feature resolution ≤ ``dropout_res`` (16 for ImageNet 64).
Equation numbers refer to the EDM2 paper.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from ect.networks.dropout import replay_masks, shared_dropout
from ect.networks.precond import Preconditioner

__all__ = [
    "EDM2_PRESETS",
    "Block",
    "MPConv",
    "MPFourier",
    "Precond",
    "UNet",
    "build_edm2",
    "logvar_head_parameters",
    "mp_cat",
    "mp_silu",
    "mp_sum",
    "normalize",
    "resample",
]


def normalize(x: torch.Tensor, dim: Sequence[int] | int | None = None, eps: float = 1e-4) -> torch.Tensor:
    """Scale ``x`` to unit RMS over ``dim`` (default: all but the first dimension)."""
    if dim is None:
        dim = list(range(1, x.ndim))
    norm = torch.linalg.vector_norm(x, dim=dim, keepdim=True, dtype=torch.float32)
    # L2 norm -> RMS (scale by sqrt(#norms / #elements)); eps keeps all-zero slices finite. torch.add with alpha
    # rounds like EDM2 (not the same as norm * s + eps), so forced weight normalisation matches it bit for bit.
    norm = torch.add(eps, norm, alpha=math.sqrt(norm.numel() / x.numel()))
    return x / norm.to(x.dtype)


def resample(x: torch.Tensor, f: Sequence[float] = (1, 1), mode: str = "keep") -> torch.Tensor:
    """2× down- or upsample each channel with the separable filter ``f`` (``mode``: keep, down, up)."""
    if mode == "keep":
        return x
    if len(f) % 2 != 0:
        raise ValueError(f"resample filter must have even length, got {list(f)}")
    taps = torch.as_tensor(f, dtype=torch.float32)
    taps = taps / taps.sum()
    kernel = torch.outer(taps, taps).to(device=x.device, dtype=x.dtype)
    c = x.shape[1]
    pad = (len(f) - 1) // 2
    if mode == "down":
        return torch.nn.functional.conv2d(x, kernel.expand(c, 1, -1, -1), groups=c, stride=2, padding=pad)
    if mode == "up":
        # ×4 so that a constant image keeps its value after zero insertion.
        weight = (kernel * 4).expand(c, 1, -1, -1)
        return torch.nn.functional.conv_transpose2d(x, weight, groups=c, stride=2, padding=pad)
    raise ValueError(f"invalid resample mode {mode!r}")


def mp_silu(x: torch.Tensor) -> torch.Tensor:
    """SiLU scaled back to unit magnitude for unit-normal input (Equation 81)."""
    return torch.nn.functional.silu(x) / 0.596


def mp_sum(a: torch.Tensor, b: torch.Tensor, t: float = 0.5) -> torch.Tensor:
    """Interpolate ``a`` → ``b`` by ``t`` and rescale so unit-magnitude inputs give a unit-magnitude sum (Eq. 88)."""
    return a.lerp(b, t) / math.sqrt((1 - t) ** 2 + t**2)


def mp_cat(a: torch.Tensor, b: torch.Tensor, dim: int = 1, t: float = 0.5) -> torch.Tensor:
    """Concatenate with weights that keep the overall magnitude and give ``b`` the share ``t`` (Eq. 103)."""
    na, nb = a.shape[dim], b.shape[dim]
    scale = math.sqrt((na + nb) / ((1 - t) ** 2 + t**2))
    # Same float64 operation order as EDM2, so outputs match the official network bit for bit.
    wa = scale / math.sqrt(na) * (1 - t)
    wb = scale / math.sqrt(nb) * t
    return torch.cat([wa * a, wb * b], dim=dim)


class MPFourier(torch.nn.Module):
    """Magnitude-preserving random Fourier features of a scalar (Equation 75)."""

    def __init__(self, num_channels: int, bandwidth: float = 1) -> None:
        super().__init__()
        self.register_buffer("freqs", 2 * math.pi * torch.randn(num_channels) * bandwidth)
        self.register_buffer("phases", 2 * math.pi * torch.rand(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.outer(x.to(torch.float32), self.freqs.to(torch.float32)) + self.phases.to(torch.float32)
        return (y.cos() * math.sqrt(2)).to(x.dtype)


class MPConv(torch.nn.Module):
    """Magnitude-preserving convolution (``kernel`` [k, k]) or linear layer (``kernel`` []) (Equation 47)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: Sequence[int]) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.weight = torch.nn.Parameter(torch.randn(out_channels, in_channels, *kernel))
        self.force_wn = True  # ECT switches this off for the stop-gradient target pass

    def forward(self, x: torch.Tensor, gain: float | torch.Tensor = 1) -> torch.Tensor:
        w = self.weight.to(torch.float32)
        if self.training and self.force_wn:
            # Forced weight normalisation (Equation 66): keep the stored weights on the unit sphere, so the
            # effective learning rate does not decay as their norm grows.
            with torch.no_grad():
                self.weight.copy_(normalize(w))
        w = normalize(w)  # the gradient still sees the normalisation (it is ∂ of the unit-norm weight)
        w = w * (gain / math.sqrt(w[0].numel()))  # unit-variance output for unit-variance input
        w = w.to(x.dtype)
        if w.ndim == 2:
            return x @ w.t()
        return torch.nn.functional.conv2d(x, w, padding=w.shape[-1] // 2)


class Block(torch.nn.Module):
    """Encoder or decoder block with optional self-attention (EDM2 Figure 21)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_channels: int,
        flavor: str = "enc",  # 'enc': skip conv + pixel norm on the main path first; 'dec': skip conv last
        resample_mode: str = "keep",  # 'keep', 'up' or 'down'
        resample_filter: Sequence[float] = (1, 1),
        attention: bool = False,
        channels_per_head: int = 64,
        dropout: float = 0.0,
        res_balance: float = 0.3,  # share of the residual branch in the mp_sum
        attn_balance: float = 0.3,  # share of self-attention in the mp_sum
        clip_act: float | None = 256,  # clamp outputs (guards fp16); None disables
    ) -> None:
        super().__init__()
        if flavor not in ("enc", "dec"):
            raise ValueError(f"invalid block flavor {flavor!r}")
        self.out_channels = out_channels
        self.flavor = flavor
        self.resample_filter = list(resample_filter)
        self.resample_mode = resample_mode
        self.num_heads = out_channels // channels_per_head if attention else 0
        self.dropout = dropout
        self.res_balance = res_balance
        self.attn_balance = attn_balance
        self.clip_act = clip_act
        # Registration order matches EDM2 so that state-dict key order matches too.
        self.emb_gain = torch.nn.Parameter(torch.zeros([]))
        self.conv_res0 = MPConv(out_channels if flavor == "enc" else in_channels, out_channels, kernel=[3, 3])
        self.emb_linear = MPConv(emb_channels, out_channels, kernel=[])
        self.conv_res1 = MPConv(out_channels, out_channels, kernel=[3, 3])
        self.conv_skip = MPConv(in_channels, out_channels, kernel=[1, 1]) if in_channels != out_channels else None
        self.attn_qkv = MPConv(out_channels, out_channels * 3, kernel=[1, 1]) if self.num_heads else None
        self.attn_proj = MPConv(out_channels, out_channels, kernel=[1, 1]) if self.num_heads else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        # Main branch.
        x = resample(x, f=self.resample_filter, mode=self.resample_mode)
        if self.flavor == "enc":
            if self.conv_skip is not None:
                x = self.conv_skip(x)
            x = normalize(x, dim=1)  # pixel norm keeps activations at unit magnitude

        # Residual branch, modulated by the embedding (emb_gain starts at 0, i.e. no modulation).
        y = self.conv_res0(mp_silu(x))
        c = self.emb_linear(emb, gain=self.emb_gain) + 1
        y = mp_silu(y * c[:, :, None, None].to(y.dtype))
        y = shared_dropout(self, y, self.dropout)
        y = self.conv_res1(y)

        if self.flavor == "dec" and self.conv_skip is not None:
            x = self.conv_skip(x)
        x = mp_sum(x, y, t=self.res_balance)

        if self.num_heads:
            x = mp_sum(x, self._attention(x), t=self.attn_balance)

        if self.clip_act is not None:
            x = x.clamp(-self.clip_act, self.clip_act)
        return x

    def _attention(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        qkv = self.attn_qkv(x).reshape(n, self.num_heads, -1, 3, h * w)
        q, k, v = normalize(qkv, dim=2).unbind(3)  # cosine attention: unit-norm q and k per head
        # Fused attention (flash / memory-efficient kernels on GPU) on [n, heads, tokens, channels] views.
        y = torch.nn.functional.scaled_dot_product_attention(q.transpose(2, 3), k.transpose(2, 3), v.transpose(2, 3))
        return self.attn_proj(y.transpose(2, 3).reshape(n, c, h, w))


class UNet(torch.nn.Module):
    """EDM2 U-Net (Figure 21): ``forward(x, noise_labels, class_labels)`` returns F(x) with EDM2's names."""

    def __init__(
        self,
        img_resolution: int,
        img_channels: int,
        label_dim: int,
        model_channels: int = 192,
        channel_mult: Sequence[int] = (1, 2, 3, 4),
        channel_mult_noise: int | None = None,  # None: model_channels * channel_mult[0]
        channel_mult_emb: int | None = None,  # None: model_channels * max(channel_mult)
        num_blocks: int = 3,
        attn_resolutions: Sequence[int] = (16, 8),
        label_balance: float = 0.5,  # share of the class embedding in the embedding mp_sum
        concat_balance: float = 0.5,  # share of the main path in the decoder mp_cat with skips
        dropout: float = 0.0,
        dropout_res: int | None = None,  # ECT: dropout only in blocks at resolution <= this; None: all blocks
        **block_kwargs: Any,
    ) -> None:
        super().__init__()
        cblock = [model_channels * m for m in channel_mult]
        cnoise = model_channels * channel_mult_noise if channel_mult_noise is not None else cblock[0]
        cemb = model_channels * channel_mult_emb if channel_mult_emb is not None else max(cblock)
        self.label_balance = label_balance
        self.concat_balance = concat_balance
        self.out_gain = torch.nn.Parameter(torch.zeros([]))  # output starts at 0: F = 0, D(x) = c_skip·x

        def level_kwargs(res: int) -> dict[str, Any]:
            drop = dropout if dropout_res is None or res <= dropout_res else 0.0
            return {**block_kwargs, "dropout": drop}

        # Embedding.
        self.emb_fourier = MPFourier(cnoise)
        self.emb_noise = MPConv(cnoise, cemb, kernel=[])
        self.emb_label = MPConv(label_dim, cemb, kernel=[]) if label_dim != 0 else None

        # Encoder. The extra constant-one input channel lets the first conv learn a bias-like offset.
        self.enc = torch.nn.ModuleDict()
        cout = img_channels + 1
        for level, channels in enumerate(cblock):
            res = img_resolution >> level
            kw = level_kwargs(res)
            if level == 0:
                cin, cout = cout, channels
                self.enc[f"{res}x{res}_conv"] = MPConv(cin, cout, kernel=[3, 3])
            else:
                self.enc[f"{res}x{res}_down"] = Block(cout, cout, cemb, flavor="enc", resample_mode="down", **kw)
            for idx in range(num_blocks):
                cin, cout = cout, channels
                attn = res in attn_resolutions
                self.enc[f"{res}x{res}_block{idx}"] = Block(cin, cout, cemb, flavor="enc", attention=attn, **kw)

        # Decoder.
        self.dec = torch.nn.ModuleDict()
        skips = [block.out_channels for block in self.enc.values()]
        for level, channels in reversed(list(enumerate(cblock))):
            res = img_resolution >> level
            kw = level_kwargs(res)
            if level == len(cblock) - 1:
                self.dec[f"{res}x{res}_in0"] = Block(cout, cout, cemb, flavor="dec", attention=True, **kw)
                self.dec[f"{res}x{res}_in1"] = Block(cout, cout, cemb, flavor="dec", **kw)
            else:
                self.dec[f"{res}x{res}_up"] = Block(cout, cout, cemb, flavor="dec", resample_mode="up", **kw)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), channels
                attn = res in attn_resolutions
                self.dec[f"{res}x{res}_block{idx}"] = Block(cin, cout, cemb, flavor="dec", attention=attn, **kw)
        self.out_conv = MPConv(cout, img_channels, kernel=[3, 3])

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor, class_labels: torch.Tensor | None) -> torch.Tensor:
        emb = self.emb_noise(self.emb_fourier(noise_labels))
        if self.emb_label is not None:
            # ×sqrt(label_dim) makes a one-hot vector unit-magnitude per element.
            label_emb = self.emb_label(class_labels * math.sqrt(class_labels.shape[1]))
            emb = mp_sum(emb, label_emb, t=self.label_balance)
        emb = mp_silu(emb)

        x = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
        skips = []
        for name, block in self.enc.items():
            x = block(x) if "conv" in name else block(x, emb)
            skips.append(x)

        for name, block in self.dec.items():
            if "block" in name:
                x = mp_cat(x, skips.pop(), t=self.concat_balance)
            x = block(x, emb)
        return self.out_conv(x, gain=self.out_gain)


class Precond(Preconditioner):
    """ECT's ImageNet wrapper of the EDM2 U-Net (``self.unet``; no log-variance head, no σ_min shift).

    D(x, σ) = c_skip(σ)·x + c_out(σ)·F(c_in(σ)·x, ln(σ)/4) with σ_data = 0.5; ``boundary`` has no effect.
    """

    def __init__(
        self,
        img_resolution: int,
        img_channels: int,
        label_dim: int,
        use_fp16: bool = False,  # run the U-Net in fp16 on CUDA (ECT trains in fp32, its eval script uses fp16)
        sigma_data: float = 0.5,
        **unet_kwargs: Any,
    ) -> None:
        super().__init__()
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.label_dim = label_dim
        self.use_fp16 = use_fp16
        self.sigma_data = sigma_data
        self.unet = UNet(img_resolution=img_resolution, img_channels=img_channels, label_dim=label_dim, **unet_kwargs)

    def backbone(self, x: torch.Tensor, c_noise: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        dtype = torch.float16 if self.use_fp16 and x.device.type == "cuda" else torch.float32
        return self.unet(x.to(dtype), c_noise, labels.to(dtype) if labels is not None else None)

    @contextlib.contextmanager
    def target_pass(self) -> Iterator[None]:
        """Replay the dropout masks and turn forced weight normalisation off in every MPConv (ECT's target pass).

        The stop-gradient target is evaluated with the same weights as the online pass; re-normalising them
        in place again would add small numerical changes between the two passes.
        """
        convs = [m for m in self.modules() if isinstance(m, MPConv)]
        previous = [m.force_wn for m in convs]
        for m in convs:
            m.force_wn = False
        try:
            with replay_masks():
                yield
        finally:
            for m, flag in zip(convs, previous, strict=True):
                m.force_wn = flag


def logvar_head_parameters(logvar_channels: int = 128) -> int:
    """Parameters of EDM2's log-variance head, which ECT leaves out.

    ``logvar_fourier = MPFourier(logvar_channels)`` holds only buffers; ``logvar_linear =
    MPConv(logvar_channels, 1, kernel=[])`` has a ``[1, logvar_channels]`` weight.
    """
    return logvar_channels


_IMG64: dict[str, Any] = {
    "img_resolution": 64,
    "img_channels": 3,
    "label_dim": 1000,
    "channel_mult": [1, 2, 3, 4],
    "num_blocks": 3,
    "attn_resolutions": [16, 8],
    "dropout_res": 16,  # ECT: dropout only at feature resolution <= 16
}

EDM2_PRESETS: dict[str, dict[str, Any]] = {
    # Widths are EDM2's ImageNet-64 S/M/L/XL; dropout values are ECT's (ct_train.py presets).
    "edm2-img64-s": {**_IMG64, "model_channels": 192, "dropout": 0.40},
    "edm2-img64-m": {**_IMG64, "model_channels": 256, "dropout": 0.50},
    "edm2-img64-l": {**_IMG64, "model_channels": 320, "dropout": 0.50},
    "edm2-img64-xl": {**_IMG64, "model_channels": 384, "dropout": 0.50},
    # CPU-test size: two levels (16×16, 8×8), attention with 8-channel heads so it is actually exercised.
    "edm2-tiny": {
        "img_resolution": 16,
        "img_channels": 3,
        "label_dim": 10,
        "model_channels": 16,
        "channel_mult": [1, 2],
        "num_blocks": 1,
        "attn_resolutions": [8],
        "channels_per_head": 8,
        "dropout": 0.10,
        "dropout_res": 8,
    },
}


def build_edm2(preset: str, **overrides: Any) -> Precond:
    """Build the EDM2 ``Precond`` for ``preset``; ``overrides`` replace preset values.

    Construction only draws random tensors, so it works under ``with torch.device("meta"):``.
    """
    if preset not in EDM2_PRESETS:
        raise ValueError(f"unknown EDM2 preset {preset!r}; known: {', '.join(EDM2_PRESETS)}")
    return Precond(**{**EDM2_PRESETS[preset], **overrides})


if __name__ == "__main__":
    with torch.device("meta"):
        for _name in EDM2_PRESETS:
            _count = sum(p.numel() for p in build_edm2(_name).parameters())
            print(f"{_name:16s} {_count:>14,d}  (+ logvar head {_count + logvar_head_parameters():,d})")
