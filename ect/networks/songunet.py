"""EDM's ``SongUNet`` (DDPM++ / NCSN++ of Song et al. 2021), written for this project.

Module tree, attribute names, parameter names/shapes and registered buffers follow EDM's
``training/networks.py`` (NVlabs/edm; ECT ships the same file) so that an official EDM/ECT state dict
loads with ``strict=True`` and computes the same function. Initialisation consumes the random number
generator in EDM's order (weight before bias, layers in construction order), so a fixed seed gives the
same initial weights as EDM.

Everything can be constructed under ``with torch.device("meta"):`` for quick shape/parameter checks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch.nn.functional import silu

from ect.networks.dropout import shared_dropout

InitMode = Literal["xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal"]

__all__ = [
    "SONGUNET_PRESETS",
    "Conv2d",
    "FourierEmbedding",
    "GroupNorm",
    "Linear",
    "PositionalEmbedding",
    "SongUNet",
    "UNetBlock",
    "attention",
    "build_songunet",
    "songunet_kwargs",
    "weight_init",
]


def weight_init(shape: Sequence[int], mode: InitMode, fan_in: int, fan_out: int) -> torch.Tensor:
    """Random tensor with EDM's scaling for ``mode`` (uniform draws use ``2·U(0,1) − 1``)."""
    if mode == "xavier_uniform":
        return math.sqrt(6 / (fan_in + fan_out)) * (torch.rand(*shape) * 2 - 1)
    if mode == "xavier_normal":
        return math.sqrt(2 / (fan_in + fan_out)) * torch.randn(*shape)
    if mode == "kaiming_uniform":
        return math.sqrt(3 / fan_in) * (torch.rand(*shape) * 2 - 1)
    if mode == "kaiming_normal":
        return math.sqrt(1 / fan_in) * torch.randn(*shape)
    raise ValueError(f"invalid init mode {mode!r}")


class Linear(torch.nn.Module):
    """Fully connected layer; ``weight`` has shape ``[out_features, in_features]``."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        init_mode: InitMode = "kaiming_normal",
        init_weight: float = 1,
        init_bias: float = 0,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        fans = {"mode": init_mode, "fan_in": in_features, "fan_out": out_features}
        self.weight = torch.nn.Parameter(weight_init([out_features, in_features], **fans) * init_weight)
        # The bias draw happens even when init_bias == 0 so the RNG stream matches EDM's.
        self.bias = torch.nn.Parameter(weight_init([out_features], **fans) * init_bias) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x @ self.weight.to(x.dtype).t()
        if self.bias is not None:
            y = y.add_(self.bias.to(x.dtype))
        return y


class Conv2d(torch.nn.Module):
    """Square convolution with optional 2× up/down resampling by a separable FIR filter.

    ``kernel=0`` gives a pure resampling layer without weights. The filter ``f ⊗ f / (Σf)²`` is kept as
    buffer ``resample_filter`` (shape ``[1, 1, k, k]``) only when resampling. Downsampling convolves with
    the filter at stride 2; upsampling is a stride-2 transposed convolution with 4× the filter (so
    ``[1, 1]`` gives 2×2 average pooling and nearest-neighbour upsampling). ``fused_resample`` applies the
    weights at the high resolution side in one pass, which changes the padding (EDM's NCSN++ residual
    encoder relies on it).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int,
        bias: bool = True,
        up: bool = False,
        down: bool = False,
        resample_filter: Sequence[float] = (1, 1),
        fused_resample: bool = False,
        init_mode: InitMode = "kaiming_normal",
        init_weight: float = 1,
        init_bias: float = 0,
    ) -> None:
        if up and down:
            raise ValueError("Conv2d cannot both upsample and downsample")
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.up = up
        self.down = down
        self.fused_resample = fused_resample
        fans = {"mode": init_mode, "fan_in": in_channels * kernel * kernel, "fan_out": out_channels * kernel * kernel}
        weight = bias_param = None
        if kernel:
            weight = torch.nn.Parameter(weight_init([out_channels, in_channels, kernel, kernel], **fans) * init_weight)
            if bias:
                bias_param = torch.nn.Parameter(weight_init([out_channels], **fans) * init_bias)
        self.register_parameter("weight", weight)
        self.register_parameter("bias", bias_param)
        filt = None
        if up or down:
            f1 = torch.as_tensor(resample_filter, dtype=torch.float32)
            filt = (torch.outer(f1, f1) / f1.sum().square()).reshape(1, 1, len(f1), len(f1))
        # A None buffer stays out of the state dict, as in EDM.
        self.register_buffer("resample_filter", filt)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        F = torch.nn.functional
        w = self.weight.to(x.dtype) if self.weight is not None else None
        b = self.bias.to(x.dtype) if self.bias is not None else None
        f = self.resample_filter.to(x.dtype) if self.resample_filter is not None else None
        w_pad = w.shape[-1] // 2 if w is not None else 0
        f_pad = (f.shape[-1] - 1) // 2 if f is not None else 0

        if self.fused_resample and self.up and w is not None:
            up_f = (f * 4).repeat(self.in_channels, 1, 1, 1)
            x = F.conv_transpose2d(x, up_f, groups=self.in_channels, stride=2, padding=w_pad + f_pad)
            x = F.conv2d(x, w)
        elif self.fused_resample and self.down and w is not None:
            x = F.conv2d(x, w, padding=w_pad + f_pad)
            x = F.conv2d(x, f.repeat(self.out_channels, 1, 1, 1), groups=self.out_channels, stride=2)
        else:
            if self.up:
                up_f = (f * 4).repeat(self.in_channels, 1, 1, 1)
                x = F.conv_transpose2d(x, up_f, groups=self.in_channels, stride=2, padding=f_pad)
            if self.down:
                down_f = f.repeat(self.in_channels, 1, 1, 1)
                x = F.conv2d(x, down_f, groups=self.in_channels, stride=2, padding=f_pad)
            if w is not None:
                x = F.conv2d(x, w, padding=w_pad)
        if b is not None:
            x = x.add_(b.reshape(1, -1, 1, 1))
        return x


class GroupNorm(torch.nn.Module):
    """Group normalisation with ``min(num_groups, C // min_channels_per_group)`` groups."""

    def __init__(
        self, num_channels: int, num_groups: int = 32, min_channels_per_group: int = 4, eps: float = 1e-5
    ) -> None:
        super().__init__()
        self.num_groups = min(num_groups, num_channels // min_channels_per_group)
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(num_channels))
        self.bias = torch.nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.group_norm(
            x, num_groups=self.num_groups, weight=self.weight.to(x.dtype), bias=self.bias.to(x.dtype), eps=self.eps
        )


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """EDM's attention ``v · softmax_k(q·k / sqrt(C))`` for q, k, v of shape ``[N, C, L]`` → ``[N, C, L]``.

    Computed by ``scaled_dot_product_attention`` (fused flash / memory-efficient kernels on GPU, no L×L weights
    kept for the backward pass) on transposed views.
    """
    out = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


class UNetBlock(torch.nn.Module):
    """Residual block with optional 2× up/down resampling and single- or multi-head self-attention.

    The union of DDPM++/NCSN++/ADM features as in EDM; SongUNet uses ``adaptive_scale=False`` (the
    embedding is added after ``conv0``) and ``resample_proj=True`` (1×1 conv on resampled skips).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_channels: int,
        up: bool = False,
        down: bool = False,
        attention: bool = False,
        num_heads: int | None = None,
        channels_per_head: int = 64,
        dropout: float = 0,
        skip_scale: float = 1,
        eps: float = 1e-5,
        resample_filter: Sequence[float] = (1, 1),
        resample_proj: bool = False,
        adaptive_scale: bool = True,
        init: dict[str, Any] | None = None,
        init_zero: dict[str, Any] | None = None,
        init_attn: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        init = {} if init is None else init
        init_zero = {"init_weight": 0} if init_zero is None else init_zero
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.emb_channels = emb_channels
        if not attention:
            self.num_heads = 0
        else:
            self.num_heads = num_heads if num_heads is not None else out_channels // channels_per_head
        self.dropout = dropout
        self.skip_scale = skip_scale
        self.adaptive_scale = adaptive_scale

        # Construction order matters for the RNG stream (and hence for EDM-identical initialisation).
        self.norm0 = GroupNorm(num_channels=in_channels, eps=eps)
        self.conv0 = Conv2d(
            in_channels, out_channels, kernel=3, up=up, down=down, resample_filter=resample_filter, **init
        )
        self.affine = Linear(emb_channels, out_channels * (2 if adaptive_scale else 1), **init)
        self.norm1 = GroupNorm(num_channels=out_channels, eps=eps)
        self.conv1 = Conv2d(out_channels, out_channels, kernel=3, **init_zero)

        self.skip = None
        if out_channels != in_channels or up or down:
            # Without a projection, a pure resampling layer (kernel 0) carries the skip connection.
            kernel = 1 if resample_proj or out_channels != in_channels else 0
            self.skip = Conv2d(
                in_channels, out_channels, kernel=kernel, up=up, down=down, resample_filter=resample_filter, **init
            )

        if self.num_heads:
            self.norm2 = GroupNorm(num_channels=out_channels, eps=eps)
            self.qkv = Conv2d(
                out_channels, out_channels * 3, kernel=1, **(init_attn if init_attn is not None else init)
            )
            self.proj = Conv2d(out_channels, out_channels, kernel=1, **init_zero)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        orig = x
        x = self.conv0(silu(self.norm0(x)))

        params = self.affine(emb)[:, :, None, None].to(x.dtype)
        if self.adaptive_scale:
            scale, shift = params.chunk(chunks=2, dim=1)
            x = silu(torch.addcmul(shift, self.norm1(x), scale + 1))
        else:
            x = silu(self.norm1(x.add_(params)))

        x = self.conv1(shared_dropout(self, x, self.dropout))
        x = x.add_(self.skip(orig) if self.skip is not None else orig)
        x = x * self.skip_scale

        if self.num_heads:
            n, c = x.shape[:2]
            # qkv channels are laid out per head as [c_head, 3] pairs, matching EDM's reshape.
            qkv = self.qkv(self.norm2(x)).reshape(n * self.num_heads, c // self.num_heads, 3, -1)
            a = attention(*qkv.unbind(2))
            x = self.proj(a.reshape(*x.shape)).add_(x)
            x = x * self.skip_scale
        return x


class PositionalEmbedding(torch.nn.Module):
    """Sinusoidal embedding ``[cos(x·ω_i), sin(x·ω_i)]`` with ``ω_i = max_positions^(-i/D)``, i < C/2.

    ``D = C/2`` by default; ``endpoint=True`` (DDPM++) uses ``D = C/2 − 1`` so the last frequency is
    exactly ``1/max_positions``.
    """

    def __init__(self, num_channels: int, max_positions: int = 10000, endpoint: bool = False) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.max_positions = max_positions
        self.endpoint = endpoint

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.num_channels // 2
        expo = torch.arange(half, dtype=torch.float32, device=x.device) / (half - (1 if self.endpoint else 0))
        freqs = (1 / self.max_positions) ** expo
        x = torch.outer(x, freqs.to(x.dtype))
        return torch.cat([x.cos(), x.sin()], dim=1)


class FourierEmbedding(torch.nn.Module):
    """Random Fourier features ``[cos(2π·x·f), sin(2π·x·f)]``, ``f ~ N(0, scale²)`` kept in buffer ``freqs``."""

    def __init__(self, num_channels: int, scale: float = 16) -> None:
        super().__init__()
        self.register_buffer("freqs", torch.randn(num_channels // 2) * scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.outer(x, (2 * math.pi * self.freqs).to(x.dtype))
        return torch.cat([x.cos(), x.sin()], dim=1)


class SongUNet(torch.nn.Module):
    """DDPM++ (``embedding_type='positional'``, standard encoder) and NCSN++ (``'fourier'``, residual
    encoder, ``channel_mult_noise=2``, filter ``[1,3,3,1]``) U-Net in EDM's formulation.

    Submodules live in ``enc``/``dec`` ``ModuleDict``s keyed like ``"32x32_block0"``; entries whose name
    contains ``aux`` belong to the skip/residual input and skip output pyramids.
    """

    def __init__(
        self,
        img_resolution: int,
        in_channels: int,
        out_channels: int,
        label_dim: int = 0,
        augment_dim: int = 0,
        model_channels: int = 128,
        channel_mult: Sequence[int] = (1, 2, 2, 2),
        channel_mult_emb: int = 4,
        num_blocks: int = 4,
        attn_resolutions: Sequence[int] = (16,),
        dropout: float = 0.10,
        label_dropout: float = 0,
        embedding_type: Literal["positional", "fourier"] = "positional",
        channel_mult_noise: int = 1,
        encoder_type: Literal["standard", "skip", "residual"] = "standard",
        decoder_type: Literal["standard", "skip"] = "standard",
        resample_filter: Sequence[float] = (1, 1),
    ) -> None:
        if embedding_type not in ("positional", "fourier"):
            raise ValueError(f"embedding_type must be 'positional' or 'fourier', got {embedding_type!r}")
        if encoder_type not in ("standard", "skip", "residual"):
            raise ValueError(f"encoder_type must be 'standard', 'skip' or 'residual', got {encoder_type!r}")
        if decoder_type not in ("standard", "skip"):
            raise ValueError(f"decoder_type must be 'standard' or 'skip', got {decoder_type!r}")
        super().__init__()
        self.label_dropout = label_dropout
        emb_channels = model_channels * channel_mult_emb
        noise_channels = model_channels * channel_mult_noise
        init = {"init_mode": "xavier_uniform"}
        init_zero = {"init_mode": "xavier_uniform", "init_weight": 1e-5}  # near-zero residual branches
        init_attn = {"init_mode": "xavier_uniform", "init_weight": math.sqrt(0.2)}
        resample_filter = list(resample_filter)
        attn_resolutions = set(attn_resolutions)
        block_kwargs: dict[str, Any] = {
            "emb_channels": emb_channels,
            "num_heads": 1,
            "dropout": dropout,
            "skip_scale": math.sqrt(0.5),
            "eps": 1e-6,
            "resample_filter": resample_filter,
            "resample_proj": True,
            "adaptive_scale": False,
            "init": init,
            "init_zero": init_zero,
            "init_attn": init_attn,
        }

        # Mapping network: noise (+ label, + augmentation) embedding → emb_channels.
        if embedding_type == "positional":
            self.map_noise: torch.nn.Module = PositionalEmbedding(num_channels=noise_channels, endpoint=True)
        else:
            self.map_noise = FourierEmbedding(num_channels=noise_channels)
        self.map_label = Linear(label_dim, noise_channels, **init) if label_dim else None
        self.map_augment = Linear(augment_dim, noise_channels, bias=False, **init) if augment_dim else None
        self.map_layer0 = Linear(noise_channels, emb_channels, **init)
        self.map_layer1 = Linear(emb_channels, emb_channels, **init)

        # Encoder. `cout` tracks the main path's channels, `caux` those of the auxiliary input pyramid.
        self.enc = torch.nn.ModuleDict()
        cout = caux = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                cin, cout = cout, model_channels
                self.enc[f"{res}x{res}_conv"] = Conv2d(cin, cout, kernel=3, **init)
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, down=True, **block_kwargs)
                if encoder_type == "skip":
                    self.enc[f"{res}x{res}_aux_down"] = Conv2d(
                        caux, caux, kernel=0, down=True, resample_filter=resample_filter
                    )
                    self.enc[f"{res}x{res}_aux_skip"] = Conv2d(caux, cout, kernel=1, **init)
                if encoder_type == "residual":
                    self.enc[f"{res}x{res}_aux_residual"] = Conv2d(
                        caux, cout, kernel=3, down=True, resample_filter=resample_filter, fused_resample=True, **init
                    )
                    caux = cout
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_block{idx}"] = UNetBlock(
                    cin, cout, attention=res in attn_resolutions, **block_kwargs
                )
        skips = [block.out_channels for name, block in self.enc.items() if "aux" not in name]

        # Decoder. Every non-aux encoder output is concatenated once, in reverse order.
        self.dec = torch.nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f"{res}x{res}_in0"] = UNetBlock(cout, cout, attention=True, **block_kwargs)
                self.dec[f"{res}x{res}_in1"] = UNetBlock(cout, cout, **block_kwargs)
            else:
                self.dec[f"{res}x{res}_up"] = UNetBlock(cout, cout, up=True, **block_kwargs)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * mult
                # Only the last block of a level attends (unlike the encoder, where all blocks do).
                attn = idx == num_blocks and res in attn_resolutions
                self.dec[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=attn, **block_kwargs)
            if decoder_type == "skip" or level == 0:
                if decoder_type == "skip" and level < len(channel_mult) - 1:
                    self.dec[f"{res}x{res}_aux_up"] = Conv2d(
                        out_channels, out_channels, kernel=0, up=True, resample_filter=resample_filter
                    )
                self.dec[f"{res}x{res}_aux_norm"] = GroupNorm(num_channels=cout, eps=1e-6)
                self.dec[f"{res}x{res}_aux_conv"] = Conv2d(cout, out_channels, kernel=3, **init_zero)

    def forward(
        self,
        x: torch.Tensor,
        noise_labels: torch.Tensor,
        class_labels: torch.Tensor | None = None,
        augment_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x``: ``[N, in_channels, R, R]``; ``noise_labels``: ``[N]``; ``class_labels``: ``[N, label_dim]``
        (required when ``label_dim > 0``); ``augment_labels``: ``[N, augment_dim]`` or None (= no term)."""
        # Mapping.
        emb = self.map_noise(noise_labels)
        # EDM feeds [sin, cos] (its embeddings return [cos, sin]); the order matters for pretrained weights.
        emb = emb.reshape(emb.shape[0], 2, -1).flip(1).reshape(*emb.shape)
        if self.map_label is not None:
            if class_labels is None:
                raise ValueError("class_labels are required for a conditional SongUNet (label_dim > 0)")
            labels = class_labels
            labels = shared_dropout(self, labels, self.label_dropout, "label", shape=[x.shape[0], 1], rescale=False)
            # Scaling by sqrt(label_dim) gives one-hot labels unit RMS.
            emb = emb + self.map_label(labels * math.sqrt(self.map_label.in_features))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = silu(self.map_layer0(emb))
        emb = silu(self.map_layer1(emb))

        # Encoder.
        skips: list[torch.Tensor] = []
        aux = x
        for name, block in self.enc.items():
            if "aux_down" in name:
                aux = block(aux)
            elif "aux_skip" in name:
                x = skips[-1] = x + block(aux)
            elif "aux_residual" in name:
                x = skips[-1] = aux = (x + block(aux)) / math.sqrt(2)
            else:
                x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
                skips.append(x)

        # Decoder: the output is the sum of the (upsampled) aux_conv heads.
        out: torch.Tensor | None = None
        head: torch.Tensor | None = None
        for name, block in self.dec.items():
            if "aux_up" in name:
                out = block(out)
            elif "aux_norm" in name:
                head = block(x)
            elif "aux_conv" in name:
                head = block(silu(head))
                out = head if out is None else head + out
            else:
                if x.shape[1] != block.in_channels:
                    x = torch.cat([x, skips.pop()], dim=1)
                x = block(x, emb)
        assert out is not None
        return out


# ---------------------------------------------------------------------------------------------------------
# Presets. Keys follow `ect.networks.build_network`: `img_resolution`, `img_channels` (used for both input
# and output channels) and optional `label_dim` describe the data; the rest are SongUNet keyword arguments.
# Use `songunet_kwargs(name)` for a plain SongUNet kwargs dict.
#
# Parameter counts (unconditional; `python -m ect.networks.songunet` prints them):
#   ddpmpp-cifar10  55,732,739   (EDM/ECT CIFAR-10 DDPM++)
#   ncsnpp-cifar10  56,395,523   (EDM CIFAR-10 NCSN++)
#   tiny-s              66,089   (model_channels 8)
#   tiny-m             147,133   (model_channels 12)   2.23× tiny-s
#   tiny-l             405,221   (model_channels 20)   2.75× tiny-m
# model_channels for the tiny presets must keep every GroupNorm's channel count divisible by its group
# count (min(32, C // 4)); multiples of 4 do for channel_mult [1, 2].

_DDPMPP_CIFAR10: dict[str, Any] = {
    "img_resolution": 32,
    "img_channels": 3,
    "label_dim": 0,
    "augment_dim": 0,
    "model_channels": 128,
    "channel_mult": [2, 2, 2],
    "channel_mult_emb": 4,
    "num_blocks": 4,
    "attn_resolutions": [16],
    "dropout": 0.2,  # ECT's CIFAR-10 value (EDM trains with 0.13)
    "label_dropout": 0,
    "embedding_type": "positional",
    "channel_mult_noise": 1,
    "encoder_type": "standard",
    "decoder_type": "standard",
    "resample_filter": [1, 1],
}

_TINY: dict[str, Any] = {
    **_DDPMPP_CIFAR10,
    "img_resolution": 8,
    "img_channels": 1,
    "channel_mult": [1, 2],
    "num_blocks": 2,
    "attn_resolutions": [4],
    "dropout": 0.1,
}

SONGUNET_PRESETS: dict[str, dict[str, Any]] = {
    "ddpmpp-cifar10": _DDPMPP_CIFAR10,
    "ncsnpp-cifar10": {
        **_DDPMPP_CIFAR10,
        "embedding_type": "fourier",
        "channel_mult_noise": 2,
        "encoder_type": "residual",
        "decoder_type": "standard",
        "resample_filter": [1, 3, 3, 1],
    },
    "tiny-s": {**_TINY, "model_channels": 8},
    "tiny-m": {**_TINY, "model_channels": 12},
    "tiny-l": {**_TINY, "model_channels": 20},
}


def songunet_kwargs(preset: str, **overrides: Any) -> dict[str, Any]:
    """SongUNet constructor kwargs for ``preset`` (``img_channels`` → ``in_channels``/``out_channels``)."""
    if preset not in SONGUNET_PRESETS:
        raise ValueError(f"unknown SongUNet preset {preset!r}; known: {', '.join(SONGUNET_PRESETS)}")
    kwargs = {**SONGUNET_PRESETS[preset], **overrides}
    kwargs.pop("sigma_data", None)
    kwargs.pop("sigma_min", None)
    channels = kwargs.pop("img_channels")
    kwargs.setdefault("in_channels", channels)
    kwargs.setdefault("out_channels", channels)
    return kwargs


def build_songunet(preset: str, **overrides: Any) -> SongUNet:
    """Bare (unpreconditioned) SongUNet for ``preset``; wrap with ``torch.device(...)`` to choose the device."""
    return SongUNet(**songunet_kwargs(preset, **overrides))


if __name__ == "__main__":
    with torch.device("meta"):
        for _name in SONGUNET_PRESETS:
            _net = build_songunet(_name)
            print(f"{_name:16s} {sum(p.numel() for p in _net.parameters()):>12,d}")
