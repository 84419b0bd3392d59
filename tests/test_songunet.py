"""Tests for ect.networks.songunet: EDM-compatible structure, presets and the forward semantics."""

from __future__ import annotations

import functools
import itertools
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ect.networks.songunet import (
    SONGUNET_PRESETS,
    Conv2d,
    GroupNorm,
    PositionalEmbedding,
    SongUNet,
    UNetBlock,
    attention,
    build_songunet,
    songunet_kwargs,
)

DDPMPP_SHAPES = Path(__file__).parent / "data" / "edm-ddpmpp-cifar10-uncond.unet-shapes.json"
META = torch.device("meta")


def n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def meta_net(preset: str, **overrides) -> SongUNet:
    with META:
        return build_songunet(preset, **overrides)


@functools.cache
def shared_meta_net(preset: str) -> SongUNet:
    """Meta-device network shared by read-only tests (building the CIFAR-10 nets takes ~1 s each)."""
    return meta_net(preset)


def reference_shapes() -> dict[str, list[int]]:
    return json.loads(DDPMPP_SHAPES.read_text())


def small_config(**overrides) -> dict:
    cfg = {
        "img_resolution": 16,
        "in_channels": 3,
        "out_channels": 3,
        "model_channels": 8,
        "channel_mult": [1, 2, 2],
        "num_blocks": 1,
        "attn_resolutions": [8],
        "dropout": 0.0,
    }
    cfg.update(overrides)
    return cfg


def randomize_(net: torch.nn.Module, seed: int, scale: float = 0.3) -> None:
    """Replace all parameters (not buffers) by N(0, scale²) so near-zero-initialised branches matter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)


# --- presets and EDM structure ------------------------------------------------------------------------


def test_cifar10_parameter_counts_match_edm() -> None:
    assert n_params(shared_meta_net("ddpmpp-cifar10")) == 55_732_739
    assert n_params(meta_net("ncsnpp-cifar10")) == 56_395_523


def test_tiny_presets_are_two_to_three_times_apart() -> None:
    counts = [n_params(meta_net(name)) for name in ("tiny-s", "tiny-m", "tiny-l")]
    assert 60_000 <= counts[0] <= 120_000
    assert counts[2] <= 600_000
    for small, large in itertools.pairwise(counts):
        assert 2 <= large / small <= 3, counts


def test_presets_describe_the_documented_configurations() -> None:
    ddpmpp = SONGUNET_PRESETS["ddpmpp-cifar10"]
    assert (ddpmpp["img_resolution"], ddpmpp["img_channels"], ddpmpp["dropout"]) == (32, 3, 0.2)
    ncsnpp = SONGUNET_PRESETS["ncsnpp-cifar10"]
    assert (ncsnpp["embedding_type"], ncsnpp["encoder_type"], ncsnpp["decoder_type"]) == (
        "fourier",
        "residual",
        "standard",
    )
    assert (ncsnpp["channel_mult_noise"], list(ncsnpp["resample_filter"])) == (2, [1, 3, 3, 1])
    for name in ("tiny-s", "tiny-m", "tiny-l"):
        tiny = SONGUNET_PRESETS[name]
        assert (tiny["img_resolution"], tiny["img_channels"], list(tiny["channel_mult"])) == (8, 1, [1, 2])
    kwargs = songunet_kwargs("tiny-s", label_dim=10)
    assert (kwargs["in_channels"], kwargs["out_channels"], kwargs["label_dim"]) == (1, 1, 10)
    with pytest.raises(ValueError, match="unknown"):
        songunet_kwargs("no-such-net")


def test_ddpmpp_state_dict_matches_edm_reference() -> None:
    ref = reference_shapes()
    ours = {k: list(v.shape) for k, v in shared_meta_net("ddpmpp-cifar10").state_dict().items()}
    assert sorted(ours) == sorted(ref)
    assert ours == ref


def test_edm_shaped_state_dict_loads_strictly() -> None:
    ref = reference_shapes()
    g = torch.Generator().manual_seed(0)
    state = {k: torch.randn(shape, generator=g) for k, shape in ref.items()}
    net = meta_net("ddpmpp-cifar10").to_empty(device="cpu")  # skip the (slow) random init
    net.load_state_dict(state, strict=True)
    assert torch.equal(net.state_dict()["enc.16x16_block0.qkv.weight"], state["enc.16x16_block0.qkv.weight"])

    # EDM's pretrained CIFAR-10 network also carries augmentation labels (augment_dim 9, no bias).
    # assign=True keeps the meta network cheap while still checking names and shapes strictly.
    aug = meta_net("ddpmpp-cifar10", augment_dim=9)
    state["map_augment.weight"] = torch.randn(128, 9, generator=g)
    aug.load_state_dict(state, strict=True, assign=True)
    assert torch.equal(aug.map_augment.weight, state["map_augment.weight"])


# --- forward shapes -----------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["tiny-s", "tiny-m", "tiny-l"])
@pytest.mark.parametrize("label_dim", [0, 10])
def test_tiny_forward_shapes(preset: str, label_dim: int) -> None:
    torch.manual_seed(0)
    net = build_songunet(preset, label_dim=label_dim).eval()
    x = torch.randn(3, 1, 8, 8)
    labels = F.one_hot(torch.tensor([0, 4, 9]), 10).float() if label_dim else None
    with torch.no_grad():
        out = net(x, torch.randn(3), labels)
    assert out.shape == x.shape
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    ("encoder_type", "decoder_type"), [("residual", "standard"), ("residual", "skip"), ("skip", "skip")]
)
@pytest.mark.parametrize("resolution", [8, 16])
def test_ncsnpp_style_paths(encoder_type: str, decoder_type: str, resolution: int) -> None:
    cfg = small_config(
        img_resolution=resolution,
        out_channels=2,
        embedding_type="fourier",
        channel_mult_noise=2,
        encoder_type=encoder_type,
        decoder_type=decoder_type,
        resample_filter=[1, 3, 3, 1],
        augment_dim=9,
    )
    torch.manual_seed(0)
    net = SongUNet(**cfg).eval()
    names = set(net.enc) | set(net.dec)
    has = {tag: any(tag in n for n in names) for tag in ("aux_residual", "aux_down", "aux_skip", "aux_up")}
    assert has["aux_residual"] == (encoder_type == "residual")
    assert has["aux_down"] == has["aux_skip"] == (encoder_type == "skip")
    assert has["aux_up"] == (decoder_type == "skip")
    # A skip decoder has one output head per resolution, the standard decoder only at full resolution.
    heads = sorted(n for n in net.dec if n.endswith("aux_conv"))
    assert len(heads) == (len(cfg["channel_mult"]) if decoder_type == "skip" else 1)
    x = torch.randn(2, 3, resolution, resolution)
    with torch.no_grad():
        out = net(x, torch.randn(2), augment_labels=torch.randn(2, 9))
    assert out.shape == (2, 2, resolution, resolution)
    assert torch.isfinite(out).all()


def test_conditional_network_requires_labels() -> None:
    net = SongUNet(**small_config(label_dim=4))
    with pytest.raises(ValueError, match="class_labels"):
        net(torch.randn(1, 3, 16, 16), torch.randn(1))


# --- semantics, pinned independently -------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", [False, True])
def test_positional_embedding_formula(endpoint: bool) -> None:
    channels, x = 16, torch.tensor([0.0, 0.5, -3.0, 250.0])
    emb = PositionalEmbedding(channels, endpoint=endpoint)(x)
    half = channels // 2
    denom = half - 1 if endpoint else half
    expected = torch.empty(len(x), channels)
    for n, xv in enumerate(x.tolist()):
        for i in range(half):
            freq = 10000.0 ** (-i / denom)
            expected[n, i] = math.cos(xv * freq)
            expected[n, half + i] = math.sin(xv * freq)
    torch.testing.assert_close(emb, expected, rtol=1e-5, atol=1e-5)
    if endpoint:
        torch.testing.assert_close(emb[:, half - 1], torch.cos(x / 10000))


def test_mapping_network_sees_sin_then_cos_and_scaled_labels() -> None:
    net = SongUNet(**small_config(label_dim=5)).eval()
    seen = {}
    net.map_label.register_forward_pre_hook(lambda m, args: seen.__setitem__("label", args[0]))
    net.map_layer0.register_forward_pre_hook(lambda m, args: seen.__setitem__("layer0", args[0]))
    t = torch.tensor([0.3, -1.2])
    labels = F.one_hot(torch.tensor([1, 3]), 5).float()
    with torch.no_grad():
        net(torch.randn(2, 3, 16, 16), t, labels)
        pos = net.map_noise(t)
        expected = torch.cat([pos[:, 4:], pos[:, :4]], dim=1) + net.map_label(labels * math.sqrt(5))
    torch.testing.assert_close(seen["label"], labels * math.sqrt(5))
    torch.testing.assert_close(seen["layer0"], expected)


def test_label_dropout_only_in_training() -> None:
    torch.manual_seed(0)
    net = SongUNet(**small_config(label_dim=5, label_dropout=1.0))
    randomize_(net, seed=1)
    x, t = torch.randn(2, 3, 16, 16), torch.randn(2)
    labels = F.one_hot(torch.tensor([1, 3]), 5).float()
    with torch.no_grad():
        dropped = net.train()(x, t, labels)
        zeros = net.train()(x, t, torch.zeros_like(labels))
        kept = net.eval()(x, t, labels)
    torch.testing.assert_close(dropped, zeros)
    assert not torch.allclose(dropped, kept)


def test_conv2d_resampling_with_box_filter_is_avgpool_and_nearest() -> None:
    x = torch.randn(2, 3, 8, 8)
    down = Conv2d(3, 3, kernel=0, down=True, resample_filter=[1, 1])
    up = Conv2d(3, 3, kernel=0, up=True, resample_filter=[1, 1])
    assert down.weight is None and down.bias is None
    torch.testing.assert_close(down.resample_filter, torch.full((1, 1, 2, 2), 0.25))
    torch.testing.assert_close(down(x), F.avg_pool2d(x, 2))
    torch.testing.assert_close(up(x), F.interpolate(x, scale_factor=2, mode="nearest"))


def test_conv2d_filter_normalisation_and_buffers() -> None:
    f = Conv2d(4, 4, kernel=0, down=True, resample_filter=[1, 3, 3, 1]).resample_filter
    expected = torch.tensor([1.0, 3, 3, 1]).outer(torch.tensor([1.0, 3, 3, 1])) / 64
    torch.testing.assert_close(f, expected.reshape(1, 1, 4, 4))
    # Without resampling there is no filter buffer (EDM's state dicts have none).
    plain = Conv2d(4, 6, kernel=3)
    assert "resample_filter" not in plain.state_dict()
    assert plain.weight.shape == (6, 4, 3, 3)
    # A 1×1 conv after 2× downsampling equals the same conv applied to the average-pooled input.
    proj = Conv2d(4, 6, kernel=1, down=True)
    x = torch.randn(1, 4, 8, 8)
    torch.testing.assert_close(proj(x), F.conv2d(F.avg_pool2d(x, 2), proj.weight, proj.bias))


@pytest.mark.parametrize(("channels", "groups"), [(8, 2), (12, 3), (16, 4), (128, 32), (256, 32), (512, 32)])
def test_groupnorm_group_count(channels: int, groups: int) -> None:
    norm = GroupNorm(channels)
    assert norm.num_groups == groups
    x = torch.randn(2, channels, 4, 4)
    torch.testing.assert_close(norm(x), F.group_norm(x, groups, norm.weight, norm.bias, eps=1e-5))


def test_attention_matches_edm_formula_forward_and_backward() -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 8, 7, generator=g, requires_grad=True) for _ in range(3))
    out = attention(q, k, v)
    q2, k2, v2 = (z.detach().clone().requires_grad_() for z in (q, k, v))
    w = torch.softmax(torch.einsum("ncq,nck->nqk", q2, k2) / math.sqrt(8), dim=2)  # EDM's AttentionOp
    ref = torch.einsum("nqk,nck->ncq", w, v2)
    torch.testing.assert_close(out, ref)
    grad = torch.randn(out.shape, generator=g)
    out.backward(grad)
    ref.backward(grad)
    for a, b in ((q, q2), (k, k2), (v, v2)):
        torch.testing.assert_close(a.grad, b.grad)


def test_attention_blocks_exactly_at_attn_resolutions() -> None:
    net = shared_meta_net("ddpmpp-cifar10")
    with_attn = {
        f"{part}.{name}"
        for part in ("enc", "dec")
        for name, m in getattr(net, part).items()
        if isinstance(m, UNetBlock) and m.num_heads
    }
    expected = {f"enc.16x16_block{i}" for i in range(4)} | {"dec.16x16_block4", "dec.8x8_in0"}
    assert with_attn == expected
    for name in with_attn:
        block = net.get_submodule(name)
        assert block.num_heads == 1 and hasattr(block, "qkv") and hasattr(block, "norm2")
    # DDPM++ block settings.
    block = net.enc["32x32_block0"]
    assert (block.adaptive_scale, block.skip_scale, block.norm0.eps) == (False, math.sqrt(0.5), 1e-6)
    assert net.enc["16x16_down"].skip.weight.shape[-1] == 1  # resample_proj


# EDM's own code (NVlabs/edm training/networks.py) gives these values for the configurations below:
# torch.manual_seed(0) at construction, then `randomize_(net, 1)` and inputs from a generator seeded 2.
GOLDEN = {
    "ddpmpp": {
        "cfg": {"label_dim": 3, "augment_dim": 4},
        "init": [0.091655657, 0.22579041, -3.1607615e-07],
        "out": [36.737514, 150.65038, -0.23836941, -0.64326632, -0.29695332, -0.15936638],
    },
    "ncsnpp": {
        "cfg": {
            "attn_resolutions": [4],
            "embedding_type": "fourier",
            "channel_mult_noise": 2,
            "encoder_type": "residual",
            "decoder_type": "skip",
            "resample_filter": [1, 3, 3, 1],
        },
        "init": [0.13991626, -0.22313671, -2.3172101e-06, -4.6948624],
        "out": [75.201599, 87.796837, 0.0080842972, -0.027824938, -0.15649956, -0.078105927],
    },
}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_matches_edm_golden_values(name: str) -> None:
    golden = GOLDEN[name]
    cfg = {
        "img_resolution": 8,
        "in_channels": 2,
        "out_channels": 2,
        "model_channels": 8,
        "channel_mult": [1, 2],
        "num_blocks": 1,
        "attn_resolutions": [8],
        "dropout": 0.0,
        **golden["cfg"],
    }
    torch.manual_seed(0)
    net = SongUNet(**cfg).eval()
    sd = net.state_dict()
    init = [
        sd["enc.8x8_conv.weight"].flatten()[0],
        sd["enc.8x8_conv.weight"].flatten()[5],
        sd["dec.8x8_aux_conv.weight"].flatten()[3],
    ]
    if name == "ncsnpp":
        init.append(net.map_noise.freqs[1])
    torch.testing.assert_close(torch.stack(init), torch.tensor(golden["init"]), rtol=1e-5, atol=1e-9)

    randomize_(net, seed=1)
    g = torch.Generator().manual_seed(2)
    x, t = torch.randn(2, 2, 8, 8, generator=g), torch.randn(2, generator=g)
    labels, aug = torch.randn(2, 3, generator=g), torch.randn(2, 4, generator=g)
    with torch.no_grad():
        out = net(x, t, labels if cfg.get("label_dim") else None, aug if cfg.get("augment_dim") else None)
    got = torch.cat([torch.stack([out.sum(), out.abs().sum()]), out[0, 0, 0, :4]])
    torch.testing.assert_close(got, torch.tensor(golden["out"]), rtol=1e-4, atol=1e-5)


# --- determinism and dropout ---------------------------------------------------------------------------


def test_same_seed_same_init() -> None:
    def init(seed: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(seed)
        return build_songunet("tiny-s", embedding_type="fourier").state_dict()

    a, b, c = init(3), init(3), init(4)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["map_noise.freqs"], c["map_noise.freqs"])
    assert not torch.equal(a["enc.8x8_conv.weight"], c["enc.8x8_conv.weight"])


def test_dropout_only_in_train_mode() -> None:
    torch.manual_seed(0)
    net = build_songunet("tiny-s", dropout=0.5)
    randomize_(net, seed=1)
    x, t = torch.randn(4, 1, 8, 8), torch.randn(4)
    with torch.no_grad():
        net.eval()
        e1, e2 = net(x, t), net(x, t)
        net.train()
        torch.manual_seed(1)
        t1 = net(x, t)
        t2 = net(x, t)
        torch.manual_seed(1)
        t1_again = net(x, t)
    assert torch.equal(e1, e2)
    assert not torch.allclose(t1, t2)
    assert not torch.allclose(t1, e1)
    assert torch.equal(t1, t1_again)
    # With dropout 0, train and eval modes compute the same function.
    for block in net.modules():
        if isinstance(block, UNetBlock):
            block.dropout = 0.0
    with torch.no_grad():
        torch.testing.assert_close(net.train()(x, t), e1)


def test_gradients_flow_to_every_parameter() -> None:
    torch.manual_seed(0)
    net = build_songunet("tiny-s", label_dim=3, augment_dim=2).train()
    randomize_(net, seed=1)
    out = net(torch.randn(2, 1, 8, 8), torch.randn(2), torch.eye(3)[:2], torch.randn(2, 2))
    out.square().mean().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing
