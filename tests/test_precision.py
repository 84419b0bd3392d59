"""Numerics: strict fp32 really clears TF32, bf16 autocast reaches the network, runs record what they used, and
the fast mode (torch.compile + bf16) keeps ECT's shared dropout mask and trains like fp32."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from ect.config import load_run_config
from ect.data import ImageDataset
from ect.distributed import Dist
from ect.ema import EMA
from ect.losses import ect_loss
from ect.networks import build_network
from ect.networks.dropout import shared_dropout
from ect.networks.precond import Preconditioner
from ect.precision import autocast, precision
from ect.training import TrainStep, train

FLAGS = (lambda: torch.backends.cuda.matmul.allow_tf32, lambda: torch.backends.cudnn.allow_tf32,
         lambda: torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction)


def test_strict_fp32_clears_tf32_and_restores_flags():
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = True, True  # PyTorch's cuDNN default
    with precision("fp32", "cuda") as record:
        assert [f() for f in FLAGS] == [False, False, False]
        assert record["cuda_matmul_allow_tf32"] is False and record["cudnn_allow_tf32"] is False
        assert record["autocast_dtype"] is None and not record["tf32_in_effect"]
    assert [f() for f in FLAGS[:2]] == [True, True]  # the caller's flags come back
    torch.backends.cuda.matmul.allow_tf32 = False
    for name in ("tf32", "bf16", "fp16"):
        with precision(name, "cuda") as record:
            assert [f() for f in FLAGS] == [True, True, True]
            assert record["tf32_in_effect"]
    assert record["autocast_dtype"] == "float16"
    with precision("tf32", "cpu") as record:  # no TF32 on CPU: the record says so
        assert not record["tf32_in_effect"]
    with pytest.raises(ValueError, match="fp8"), precision("fp8", "cpu"):
        pass


def _step(preset: str, prec: str, compile: bool = False) -> tuple[TrainStep, torch.nn.Module]:
    cfg = load_run_config(None, [f"network.preset={preset}", f"training.precision={prec}",
                                 f"training.compile={compile}", "training.batch_size=8"])
    torch.manual_seed(0)
    net = build_network(preset).train().requires_grad_(True)
    images = torch.randint(0, 256, (32, 1, 8, 8), dtype=torch.uint8).numpy()
    opt = torch.optim.RAdam(net.parameters(), lr=1e-3, foreach=True)
    step = TrainStep(cfg, "ect", net, EMA(net, cfg.ema), opt, ImageDataset("synthetic", images), Dist())
    return step, net


@pytest.mark.parametrize(("prec", "dtype"), [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_training_step_runs_the_network_in_the_asked_dtype(prec, dtype):
    step, net = _step("tiny-s", prec)
    seen = []
    conv = net.model.enc["8x8_block0"].conv0
    handle = conv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    out = step(0, 0)
    handle.remove()
    assert seen == [dtype, dtype]  # online and target pass
    assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"])
    assert all(p.dtype == torch.float32 for p in net.parameters())  # master weights stay fp32


def test_run_records_its_numerics(tmp_path, pretrained_tiny):
    cfg = load_run_config("digits-tune", ["network.preset=tiny-s", "training.iterations=2", "training.log_every=1",
                                          "training.batch_size=8", "training.precision=bf16",
                                          "sampling.grid_size=0", "training.budgets=[]"])
    train(cfg, "ect", tmp_path, init=pretrained_tiny, progress=False)
    numerics = yaml.safe_load((tmp_path / "config.yaml").read_text())["numerics"]
    assert numerics["precision"] == "bf16" and numerics["autocast_dtype"] == "bfloat16"
    assert numerics["compile"] is False and "cudnn_allow_tf32" in numerics
    logged = [json.loads(line)["numerics"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert logged == [numerics, numerics]


class _DropoutNet(Preconditioner):
    """conv → dropout 0.5 → conv: an output that depends strongly on the dropout mask."""

    img_resolution, img_channels, label_dim = 4, 2, 0

    def __init__(self) -> None:
        super().__init__()
        self.conv0 = torch.nn.Conv2d(2, 16, 3, padding=1)
        self.conv1 = torch.nn.Conv2d(16, 2, 3, padding=1)

    def backbone(self, x, c_noise, labels):
        return self.conv1(shared_dropout(self, torch.relu(self.conv0(x)) + c_noise.reshape(-1, 1, 1, 1), 0.5))


def test_compiled_bf16_passes_share_the_dropout_mask():
    torch.manual_seed(0)
    net = _DropoutNet().train()
    model = torch.compile(net)
    x0, eps = torch.randn(8, 2, 4, 4), torch.randn(8, 2, 4, 4)
    t = torch.full((8,), 0.7)
    with autocast("bf16", "cpu"):
        # r = t: identical inputs, so ‖D_t − D_r‖ = 0 exactly when both passes use one mask.
        same = ect_loss(model, x0, None, t, t.clone(), eps, weighting="uniform")
        with torch.no_grad():  # two plain training passes draw two masks
            fresh = (model(x0 + 0.7 * eps, t) - model(x0 + 0.7 * eps, t)).flatten(1).norm(dim=1)
    scale = model(x0 + 0.7 * eps, t).detach().flatten(1).norm(dim=1)
    assert same.dtype == torch.float32
    assert same.max() <= 1e-6 * scale.max()
    assert fresh.min() > 0.1 * scale.min()


def _loss_curve(pretrained, *extra: str) -> list[float]:
    import tempfile

    cfg = load_run_config("digits-tune", ["network.preset=tiny-s", "training.iterations=40", "training.log_every=5",
                                          "training.batch_size=32", "ect.stage_length=10", "sampling.grid_size=0",
                                          "training.budgets=[]", "training.checkpoint_every=1000", *extra])
    with tempfile.TemporaryDirectory() as out:
        train(cfg, "ect", out, init=pretrained, progress=False)
        return [json.loads(line)["loss"] for line in open(f"{out}/log.jsonl")]


def test_fast_mode_loss_curve_follows_fp32_within_seed_noise(pretrained_tiny):
    # bf16 + channels_last, the fast mode on CPU; compiling the whole U-Net takes minutes on a CPU, so the
    # compiled passes are checked on a small network above.
    fp32 = _loss_curve(pretrained_tiny, "training.seed=0")
    other_seed = _loss_curve(pretrained_tiny, "training.seed=1")
    fast = _loss_curve(pretrained_tiny, "training.seed=0", "training.precision=bf16", "training.channels_last=true")
    noise = max(abs(a - b) for a, b in zip(fp32, other_seed, strict=True))
    deviation = max(abs(a - b) for a, b in zip(fp32, fast, strict=True))
    assert noise > 0
    assert deviation <= noise, (fp32, fast, other_seed)
