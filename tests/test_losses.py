"""ECT and EDM losses against the official forms (docs/paper-numbers.md §1.2–1.5)."""

from __future__ import annotations

import math

import pytest
import torch

from ect.losses import (
    adaptive_distance,
    ect_loss,
    edm_loss,
    edm_weight,
    lognormal_t,
    mapping_r,
    stage_at,
    time_weight,
)
from ect.networks.dropout import replay_masks, shared_dropout


def test_stage_at_floors():
    assert [stage_at(i, 300) for i in (0, 299, 300, 899, 900)] == [0, 0, 1, 2, 3]
    with pytest.raises(ValueError, match="stage_length"):
        stage_at(5, 0)


@pytest.mark.parametrize("stage,q", [(0, 2.0), (3, 2.0), (1, 4.0), (7, 2.0)])
def test_mapping_const(stage, q):
    t = torch.tensor([0.01, 0.5, 2.0, 80.0])
    expected = t * (1 - 1 / q ** (stage + 1))
    torch.testing.assert_close(mapping_r(t, stage, "const", q=q), expected)


def test_mapping_sigmoid_values():
    # r = t·(1 − q^−(a+1)·(1 + k·sigmoid(−b·t))), by hand for t = 2, stage 2, q = 2, k = 8, b = 1.
    t = torch.tensor([2.0])
    n = 1 + 8 / (1 + math.exp(2.0))
    assert mapping_r(t, 2, "sigmoid").item() == pytest.approx(2.0 * (1 - n / 8))
    # Small t at stage 0: decay·n(t) ≈ ½·5 > 1, so r clamps to 0 (target = clean image).
    assert mapping_r(torch.tensor([1e-3]), 0, "sigmoid").item() == 0.0
    # n(t) → 1 for large t: sigmoid mapping approaches the constant one.
    big = torch.tensor([80.0])
    torch.testing.assert_close(mapping_r(big, 1, "sigmoid"), mapping_r(big, 1, "const"))


def test_mapping_tightens_with_stage_and_stays_below_t():
    t = lognormal_t(torch.randn(1000, generator=torch.Generator().manual_seed(0)), -1.1, 2.0)
    previous = torch.zeros_like(t)
    for stage in range(8):
        r = mapping_r(t, stage, "sigmoid")
        assert torch.all(r >= 0) and torch.all(r < t)
        assert torch.all(r >= previous)
        previous = r
    # Final stage of the CIFAR-10 schedule: decay 1/256, so r/t ≥ 1 − 5/256 for every t.
    assert torch.all(previous / t >= 1 - 5 / 256 - 1e-6)
    with pytest.raises(ValueError, match="mapping kind"):
        mapping_r(t, 0, "linear")


def test_adaptive_distance():
    d2 = torch.tensor([0.0, 1.0, 9.0])
    torch.testing.assert_close(adaptive_distance(d2, 0.0), torch.tensor([0.0, 1.0, 3.0]))
    c = 0.06
    torch.testing.assert_close(adaptive_distance(d2, c), torch.sqrt(d2 + c * c) - c)
    # Its gradient is the adaptive weight 1/(2·sqrt(‖Δ‖² + c²)) on ‖Δ‖².
    x = torch.tensor([4.0], requires_grad=True)
    adaptive_distance(x, c).backward()
    assert x.grad.item() == pytest.approx(1 / (2 * math.sqrt(4 + c * c)))
    with pytest.raises(ValueError):
        adaptive_distance(d2, -1.0)


def test_time_weights():
    t, r = torch.tensor([1.0, 2.0]), torch.tensor([0.5, 1.5])
    torch.testing.assert_close(time_weight(t, r, "inverse_dt"), torch.tensor([2.0, 2.0]))
    torch.testing.assert_close(time_weight(t, r, "snr_plus_one"), 1 / t**2 + 4)
    # ImageNet weight equals EDM's λ(t) = (t² + σ_d²)/(t·σ_d)².
    torch.testing.assert_close(time_weight(t, r, "snr_plus_one"), edm_weight(t))
    torch.testing.assert_close(time_weight(t, r, "uniform"), torch.ones(2))
    with pytest.raises(ValueError):
        time_weight(t, r, "snr")


class _Dropout(torch.nn.Module):
    """A tiny 'network' with dropout, to observe whether both ECT passes share one mask."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, x, sigma, labels=None):
        return shared_dropout(self, x * self.scale, 0.5)

    def target_pass(self):
        return replay_masks()


def test_ect_loss_shares_dropout_mask_and_noise():
    torch.manual_seed(0)
    net = _Dropout().train()
    x0 = torch.randn(4, 1, 4, 4)
    eps = torch.randn_like(x0)
    t = torch.full((4,), 1.0)
    # r = t would make the two passes identical: Δ = 0 only if the dropout mask is shared.
    loss = ect_loss(net, x0, None, t, t.clone() - 1e-12, eps, weighting="uniform")
    assert torch.all(loss == 0)


def test_ect_loss_formula_and_gradient_path():
    torch.manual_seed(0)
    net = _Dropout().eval()
    x0 = torch.randn(3, 1, 2, 2)
    eps = torch.randn_like(x0)
    t = torch.tensor([2.0, 1.0, 0.5])
    r = torch.tensor([1.0, 0.0, 0.25])  # middle sample: r = 0 → target is x0 itself
    loss = ect_loss(net, x0, None, t, r, eps, c=0.1, weighting="inverse_dt")
    # Identity network: D_t − D_r = (t − r)·ε for r > 0, and x0 + t·ε − x0 = t·ε for r = 0.
    dt = torch.tensor([1.0, 1.0, 0.25])
    d2 = (dt.reshape(-1, 1, 1, 1) ** 2 * eps**2).sum(dim=(1, 2, 3))
    expected = (torch.sqrt(d2 + 0.01) - 0.1) / (t - r)
    torch.testing.assert_close(loss, expected)
    # Gradient flows only through the D_t pass: d loss/d scale from D_t alone.
    loss.sum().backward()
    assert net.scale.grad is not None and torch.isfinite(net.scale.grad)


def test_edm_loss_matches_definition():
    net = _Dropout().eval()
    x0 = torch.randn(2, 1, 2, 2)
    eps = torch.randn_like(x0)
    sigma = torch.tensor([0.5, 2.0])
    loss = edm_loss(net, x0, None, sigma, eps)
    # Identity denoiser: D − x0 = σ·ε.
    expected = edm_weight(sigma) * (sigma.reshape(-1, 1, 1, 1) ** 2 * eps**2).sum(dim=(1, 2, 3))
    torch.testing.assert_close(loss, expected)


def test_lognormal_t():
    z = torch.tensor([0.0, 1.0])
    torch.testing.assert_close(lognormal_t(z, -1.1, 2.0), torch.tensor([math.exp(-1.1), math.exp(0.9)]))
