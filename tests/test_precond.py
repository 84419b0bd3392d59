"""ECT preconditioning: coefficients, boundary condition, and the network registry."""

from __future__ import annotations

import itertools

import pytest
import torch

from ect.networks import build_network, count_parameters, preset_names


def test_coefficients_match_reference():
    net = build_network("tiny-s")
    t = torch.tensor([0.002, 0.5, 80.0])
    c_skip, c_out, c_in, c_noise = net.coefficients(t, boundary=False)
    torch.testing.assert_close(c_skip, 0.25 / (t**2 + 0.25))
    torch.testing.assert_close(c_out, t * 0.5 / (t**2 + 0.25).sqrt())
    torch.testing.assert_close(c_in, 1 / (t**2 + 0.25).sqrt())
    torch.testing.assert_close(c_noise, t.log() / 4)
    s_skip, s_out, _, _ = net.coefficients(t, boundary=True)
    torch.testing.assert_close(s_skip, 0.25 / ((t - 0.003) ** 2 + 0.25))
    torch.testing.assert_close(s_out, (t - 0.003) * 0.5 / (t**2 + 0.25).sqrt())


def test_boundary_condition_holds_in_eval_mode():
    torch.manual_seed(0)
    net = build_network("tiny-s").eval()
    x = torch.randn(3, 1, 8, 8)
    # f(x, σ_min) = x exactly at evaluation time (c_skip = 1, c_out = 0).
    torch.testing.assert_close(net(x, torch.full((3,), net.sigma_min)), x)
    # Training mode uses EDM's coefficients: at σ_min the output is only close to x, not equal.
    net.train()
    assert not torch.equal(net(x, torch.full((3,), net.sigma_min)), x)
    # boundary=False asks for the plain EDM denoiser even in eval mode (used by the Heun sampler).
    net.eval()
    y = net(x, 1.0, boundary=False)
    net.train()
    net.model.eval()  # same dropout state; only the wrapper's mode differs
    torch.testing.assert_close(y, net(x, 1.0))


def test_conditional_network_uses_labels():
    torch.manual_seed(0)
    net = build_network("tiny-s", label_dim=10).eval()
    for p in net.parameters():  # EDM initialises some layers near zero; perturb so labels matter
        p.data.add_(0.1 * torch.randn_like(p))
    x = torch.randn(2, 1, 8, 8)
    a = net(x, 1.0, torch.nn.functional.one_hot(torch.tensor([1, 2]), 10).float())
    b = net(x, 1.0, torch.nn.functional.one_hot(torch.tensor([3, 4]), 10).float())
    assert a.shape == (2, 1, 8, 8) and not torch.allclose(a, b)


def test_registry():
    assert {"ddpmpp-cifar10", "ncsnpp-cifar10", "tiny-s", "tiny-m", "tiny-l"} <= set(preset_names())
    sizes = [count_parameters(build_network(n)) for n in ("tiny-s", "tiny-m", "tiny-l")]
    assert all(2 <= b / a <= 3 for a, b in itertools.pairwise(sizes))
    with torch.device("meta"):
        assert count_parameters(build_network("ddpmpp-cifar10")) == 55_732_739
    with pytest.raises(ValueError, match="unknown network preset"):
        build_network("tiny-xxl")


def test_official_edm_state_dict_layout_loads_strictly():
    """EDM/ECT checkpoints keep the U-Net under ``model.``; that layout loads into ddpmpp-cifar10 as is."""
    import json
    from pathlib import Path

    ref = Path(__file__).parent / "data" / "edm-ddpmpp-cifar10-uncond.unet-shapes.json"
    state = {f"model.{name}": torch.zeros(shape) for name, shape in json.loads(ref.read_text()).items()}
    with torch.device("meta"):
        net = build_network("ddpmpp-cifar10")
    missing, unexpected = net.load_state_dict(state, strict=True, assign=True)
    assert not missing and not unexpected
    assert count_parameters(net) == 55_732_739
