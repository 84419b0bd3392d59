"""EDM2 U-Net: EDM2-compatible names/shapes/sizes, preconditioning, forced weight norm, ECT's target pass."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from ect.networks.edm2 import (
    EDM2_PRESETS,
    MPConv,
    MPFourier,
    Precond,
    build_edm2,
    logvar_head_parameters,
    mp_cat,
    mp_silu,
    mp_sum,
    normalize,
    resample,
)

REFERENCE = Path(__file__).parent / "data" / "edm2-img64-s.unet-shapes.json"

# Official EDM2 ImageNet-64 sizes, in millions, of the full network including the log-variance head.
OFFICIAL_MPARAMS = {"edm2-img64-s": 280.2, "edm2-img64-m": 497.8, "edm2-img64-l": 777.5, "edm2-img64-xl": 1119.3}


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _tiny(seed: int = 0, **overrides) -> Precond:
    torch.manual_seed(seed)
    return build_edm2("edm2-tiny", **overrides)


def test_logvar_head_size_from_edm2_definition():
    # EDM2 Precond: logvar_fourier = MPFourier(logvar_channels=128) (buffers only), logvar_linear = MPConv(128, 1, []).
    with torch.device("meta"):
        head = torch.nn.ModuleDict({"logvar_fourier": MPFourier(128), "logvar_linear": MPConv(128, 1, kernel=[])})
    assert _count(head) == 128 == logvar_head_parameters()
    assert sorted(dict(head.named_buffers())) == ["logvar_fourier.freqs", "logvar_fourier.phases"]


@pytest.mark.parametrize("preset", sorted(OFFICIAL_MPARAMS))
def test_parameter_counts_match_edm2(preset):
    with torch.device("meta"):
        net = build_edm2(preset)
    assert all(p.is_meta for p in net.parameters())
    assert not any(k.startswith("logvar") for k in net.state_dict())
    assert round((_count(net) + logvar_head_parameters()) / 1e6, 1) == OFFICIAL_MPARAMS[preset]


def test_s_state_dict_matches_reference_json():
    reference = json.loads(REFERENCE.read_text())
    with torch.device("meta"):
        net = build_edm2("edm2-img64-s")
    ours = {k: list(v.shape) for k, v in net.state_dict().items()}
    assert all(k.startswith("unet.") for k in ours)
    ours = {k.removeprefix("unet."): v for k, v in ours.items()}
    assert ours == reference
    assert list(ours) == list(reference)  # same registration order as EDM2


def test_ect_dropout_only_at_low_resolution():
    with torch.device("meta"):
        net = build_edm2("edm2-img64-s")
    blocks = {f"{side}.{name}": b for side in ("enc", "dec") for name, b in getattr(net.unet, side).items()}
    drops = {name: b.dropout for name, b in blocks.items() if hasattr(b, "dropout")}
    for name, p in drops.items():
        res = int(name.split(".")[1].split("x")[0])
        assert p == (0.40 if res <= 16 else 0.0), name
    assert drops["dec.16x16_up"] == 0.40 and drops["enc.32x32_down"] == 0.0
    assert EDM2_PRESETS["edm2-img64-m"]["dropout"] == EDM2_PRESETS["edm2-img64-xl"]["dropout"] == 0.50


def test_magnitude_preserving_helpers():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(64, 256, generator=g), torch.randn(64, 128, generator=g)
    rms = lambda t: t.square().mean().sqrt().item()  # noqa: E731
    assert rms(mp_sum(a[:, :128], b, t=0.3)) == pytest.approx(1, abs=0.03)
    assert rms(mp_cat(a, b, t=0.5)) == pytest.approx(1, abs=0.03)
    assert mp_cat(a, b).shape == (64, 384)
    assert rms(mp_silu(torch.randn(100_000, generator=g))) == pytest.approx(1, abs=0.01)
    n = normalize(torch.randn(8, 3, 3, 3, generator=g) * 7)
    assert n.square().mean(dim=[1, 2, 3]).sqrt() == pytest.approx(torch.ones(8), abs=1e-3)
    x = torch.full([2, 5, 8, 8], 3.0)
    assert torch.allclose(resample(x, mode="down"), torch.full([2, 5, 4, 4], 3.0))
    assert torch.allclose(resample(x, mode="up"), torch.full([2, 5, 16, 16], 3.0))
    assert resample(x) is x


def test_tiny_forward_shapes_and_conditioning():
    net = _tiny().eval()
    x = torch.randn(3, 3, 16, 16)
    sigma = torch.tensor([0.1, 1.0, 20.0])
    sd = net.sigma_data
    # out_gain starts at 0, so F = 0 and the denoiser is exactly c_skip·x at initialisation.
    with torch.no_grad():
        d0 = net(x, sigma)
    assert d0.shape == x.shape and d0.dtype == torch.float32
    assert torch.allclose(d0, sd**2 / (sigma**2 + sd**2).reshape(-1, 1, 1, 1) * x)

    with torch.no_grad():
        net.unet.out_gain.fill_(1.0)
        for b in [*net.unet.enc.values(), *net.unet.dec.values()]:
            if hasattr(b, "emb_gain"):
                b.emb_gain.fill_(1.0)
        onehot = torch.nn.functional.one_hot(torch.tensor([1, 2, 3]), 10).float()
        d_onehot = net(x, sigma, onehot)
        d_index = net(x, sigma, torch.tensor([1, 2, 3]))
        d_none = net(x, sigma)
        d_zero = net(x, sigma, torch.zeros(3, 10))
        d_scalar = net(x, 1.0, onehot)
        d_vector = net(x, torch.ones(3), onehot)
    assert torch.equal(d_onehot, d_index)
    assert torch.equal(d_none, d_zero)
    assert not torch.allclose(d_onehot, d_none)
    assert torch.allclose(d_scalar, d_vector)
    assert net(x, sigma, onehot, boundary=True).shape == x.shape  # accepted, ignored
    assert (net.img_resolution, net.img_channels, net.label_dim, net.sigma_data) == (16, 3, 10, 0.5)


def test_training_forward_normalises_weights_in_place():
    net = _tiny()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, MPConv):
                m.weight.mul_(5.0)
    before = {n: p.clone() for n, p in net.named_parameters() if p.ndim > 0}
    x, sigma = torch.randn(2, 3, 16, 16), torch.tensor([0.5, 2.0])

    with torch.no_grad():
        net.eval()(x, sigma)
    assert all(torch.equal(p, before[n]) for n, p in net.named_parameters() if n in before)

    net.train()(x, sigma)
    for name, m in net.named_modules():
        if isinstance(m, MPConv):
            rms = m.weight.detach().flatten(1).square().mean(dim=1).sqrt()
            assert torch.allclose(rms, torch.ones_like(rms), atol=1e-3), name


def test_target_pass_switches_forced_wn_off_and_back():
    net = _tiny().train()
    convs = [m for m in net.modules() if isinstance(m, MPConv)]
    assert convs and all(m.force_wn for m in convs)
    with torch.no_grad():
        for m in convs:
            m.weight.mul_(3.0)
    before = [m.weight.clone() for m in convs]
    x, sigma = torch.randn(2, 3, 16, 16), torch.tensor([0.5, 2.0])

    with net.target_pass():
        assert not any(m.force_wn for m in convs)
        with torch.no_grad():
            net(x, sigma)
    assert all(m.force_wn for m in convs)
    assert all(torch.equal(m.weight, w) for m, w in zip(convs, before, strict=True))

    with pytest.raises(RuntimeError), net.target_pass():
        raise RuntimeError("boom")
    assert all(m.force_wn for m in convs)


def _train_step(net: Precond, batch: int, seed: int = 0) -> tuple[float, float]:
    g = torch.Generator().manual_seed(seed)
    res, ch = net.img_resolution, net.img_channels
    x = torch.randn(batch, ch, res, res, generator=g) * 0.5
    sigma = torch.exp(torch.randn(batch, generator=g) * 1.6 - 0.8)
    labels = torch.randint(net.label_dim, [batch], generator=g)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, betas=(0.9, 0.99), eps=1e-8)
    gain_before = net.unet.out_gain.item()
    start = time.perf_counter()
    net.train()
    denoised = net(x + torch.randn(x.shape, generator=g) * sigma.reshape(-1, 1, 1, 1), sigma, labels)
    loss = (denoised - x).square().mean()
    loss.backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in net.parameters())
    opt.step()
    assert torch.isfinite(loss)
    assert net.unet.out_gain.item() != gain_before  # the zero-initialised output gain receives a gradient
    return loss.item(), time.perf_counter() - start


def test_tiny_training_step():
    _train_step(_tiny(), batch=4)


@pytest.mark.slow
def test_s_training_step_cpu():
    # ~45-55 s on 2 idle CPU cores (280M parameters at 64×64, batch 2; about 2 min when the cores are shared);
    # prints the time for the record.
    torch.manual_seed(0)
    net = build_edm2("edm2-img64-s")
    loss, seconds = _train_step(net, batch=2)
    print(f"edm2-img64-s: one training step (batch 2, CPU) took {seconds:.1f} s, loss {loss:.4f}")
