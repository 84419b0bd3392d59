"""Samplers: closed-form checks on Gaussian data, per-seed determinism, network-evaluation counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ect.sampling import SeededNoise, consistency_sample, generate_images, heun_sample, sampler_spec


def test_seeded_noise_is_per_seed():
    a = SeededNoise([3, 4, 5]).randn([2, 2])
    b = SeededNoise([5]).randn([2, 2])
    torch.testing.assert_close(a[2], b[0])
    assert not torch.equal(a[0], a[1])


def test_consistency_sampler_exact_on_gaussian(gaussian_denoiser):
    # With the exact consistency function of N(0, s²) data, 1- and 2-step samples are N(0, s²·80²/(s²+80²))≈N(0,s²).
    s = 0.5
    net = gaussian_denoiser(s=s, resolution=8, consistency=True)
    seeds = list(range(400))
    noise = SeededNoise(seeds)
    latents = noise.randn((1, 8, 8), torch.float64)
    x1 = consistency_sample(net, latents, noise)
    assert x1.dtype == torch.float64
    assert x1.std().item() == pytest.approx(s, rel=0.02)
    x2 = consistency_sample(net, latents, noise, t_mids=(0.821,))
    assert x2.std().item() == pytest.approx(s, rel=0.02)
    assert net.calls == 3


def test_consistency_sampler_starts_from_t_max(gaussian_denoiser):
    # One step from t_max = T maps T·z to the exact consistency function's s·T/√(s² + T²)·z.
    s = 0.5
    net = gaussian_denoiser(s=s, resolution=8, consistency=True)
    noise = SeededNoise(range(16))
    latents = noise.randn((1, 8, 8), torch.float64)
    for t_max in (80.0, 2.0):
        x = consistency_sample(net, latents, noise, t_max=t_max)
        torch.testing.assert_close(x, latents * s * t_max / (s**2 + t_max**2) ** 0.5)


def test_heun_sampler_on_gaussian(gaussian_denoiser):
    s = 0.5
    net = gaussian_denoiser(s=s, resolution=8)
    noise = SeededNoise(range(300))
    latents = noise.randn((1, 8, 8), torch.float64)
    x = heun_sample(net, latents)
    assert net.calls == 35  # 18 steps, 2nd-order except the last
    # The exact PF-ODE maps 80·z to s·z·80/√(s²+80²). Heun is 2nd order: ~5% off with EDM's 18
    # steps on this ODE, and the error shrinks ~1/N² with more steps.
    exact = latents * 80 * s / (s**2 + 80**2) ** 0.5
    err18 = ((x - exact).abs().max() / exact.abs().max()).item()
    fine = heun_sample(net, latents, num_steps=180)
    err180 = ((fine - exact).abs().max() / exact.abs().max()).item()
    assert err18 < 0.08
    assert err180 < err18 / 50


@pytest.mark.parametrize("name", ["1step", "2step", "heun"])
def test_generate_images_independent_of_batch_size(gaussian_denoiser, name):
    net = gaussian_denoiser(consistency=name != "heun", label_dim=3)
    spec = sampler_spec(name, t_mid=0.821)
    seeds = list(range(10, 23))
    a, la = generate_images(net, spec, seeds, batch_size=13, progress=False)
    b, lb = generate_images(net, spec, seeds, batch_size=4, progress=False)
    c, _lc = generate_images(net, spec, seeds[5:], batch_size=3, progress=False)
    assert a.dtype == np.uint8 and a.shape == (13, 1, 4, 4)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a[5:], c)
    np.testing.assert_array_equal(la, lb)
    assert set(la.tolist()) <= {0, 1, 2}


def test_sampler_spec():
    assert sampler_spec("1step").nfe == 1
    assert sampler_spec("2step", 0.821).nfe == 2
    assert sampler_spec("heun").nfe == 35
    assert sampler_spec("2step", [1.526]).t_mids == (1.526,)
    with pytest.raises(ValueError, match="t_mid"):
        sampler_spec("2step")
    with pytest.raises(ValueError, match="unknown sampler"):
        sampler_spec("euler")


def test_resolve_sampler_checks_the_kind_and_finds_t_mid():
    from ect.sampling import SamplerError, resolve_sampler

    cifar = {"data": {"name": "cifar10"}}
    assert resolve_sampler("2step", "consistency", cifar).t_mids == (0.821,)  # the dataset's official value
    own = {**cifar, "sampling": {"t_mid": [0.5]}}
    assert resolve_sampler("2step", "consistency", own).t_mids == (0.5,)  # the checkpoint's beats the official one
    assert resolve_sampler("2step", "consistency", own, [0.3, 0.1]).t_mids == (0.3, 0.1)  # --t-mid beats both
    assert resolve_sampler("heun", "diffusion", cifar).nfe == 35
    assert resolve_sampler("1step", "diffusion", cifar).nfe == 1  # the one-step baseline of a diffusion model
    for name, kind, t_mid, match in [("2step", "diffusion", None, "use heun or 1step"),
                                     ("heun", "consistency", None, "use 1step or 2step"),
                                     ("1step", "consistency", 0.5, "2-step sampler only")]:
        with pytest.raises(SamplerError, match=match):
            resolve_sampler(name, kind, cifar, t_mid)
    with pytest.raises(SamplerError, match="no 2-step t_mid known for dataset 'digits'"):
        resolve_sampler("2step", "consistency", {"data": {"name": "digits"}})


def test_resolve_sampler_finds_t_max():
    from ect.sampling import SamplerError, resolve_sampler

    cifar = {"data": {"name": "cifar10"}}
    assert resolve_sampler("1step", "consistency", cifar).t_max == 80.0  # the official starting time
    own = {**cifar, "sampling": {"t_mid": [0.5], "t_max": 20.0}}
    assert resolve_sampler("1step", "consistency", own).t_max == 20.0  # the checkpoint's beats the official one
    assert resolve_sampler("2step", "consistency", own, t_max=10.0).t_max == 10.0  # --t-max beats both
    assert resolve_sampler("2step", "consistency", own).as_dict()["t_max"] == 20.0  # recorded with every score
    assert resolve_sampler("1step", "diffusion", own).t_max == 20.0
    with pytest.raises(SamplerError, match="not to heun"):
        resolve_sampler("heun", "diffusion", own, t_max=20.0)
    with pytest.raises(SamplerError, match="between 0 and t_max = 0.4"):
        resolve_sampler("2step", "consistency", own, t_max=0.4)  # t_mid 0.5 would lie above the start
    with pytest.raises(SamplerError, match="positive finite"):
        resolve_sampler("1step", "consistency", own, t_max=float("nan"))
