"""Training throughput (ms/step, img/s, MFU) of the real trainer's step, optionally side by side with the official code.

    python bench/train_throughput.py --preset tiny-s --model-channels 16 --threads 2 \
        --official /path/to/locuslab-ect --repeats 3                       # CPU side by side (README table)
    python bench/train_throughput.py --preset ddpmpp-cifar10 --device cuda --precision bf16 --compile
    python bench/train_throughput.py --preset ddpmpp-cifar10 --device cuda --official PATH --official-precision fp16

"ours" runs ``ect.training.TrainStep``, the object ``ect tune``/``ect pretrain`` run for every iteration (data
from an in-memory uint8 dataset, per-iteration seeded noise, the ECT loss with its shared dropout masks,
backward, NaN guard, optimizer, EMA), on a synthetic dataset so that no download is needed.

``--official PATH`` adds the official ECT code (a checkout of https://github.com/locuslab/ect, main branch;
never copied into this repository) built with the same layout: its ``ECMPrecond`` SongUNet, ``ECMLoss``,
RAdam, the NaN guard and EMA update of ``ct_training_loop.py``. Its precision: ``fp32`` (TF32 off, its default),
``tf32`` (``--tf32=1``) or ``fp16`` (``--fp16=1 --tf32=1``, its fastest). On CPU its ``torch.cuda`` RNG calls
are redirected to the CPU generator (the only change). The two implementations alternate in blocks of
``--steps`` steps, ``--repeats`` times, so that both see the same machine load.

MFU = achieved FLOP/s ÷ the device's dense peak at the precision used (``PEAK_TFLOPS``); achieved FLOP/s
counts 4 forward passes per image for ECT (forward + backward ≈ 3, plus the target pass) with forward FLOPs
from ``ect.flops.forward_flops_per_image``, the trainer's own counter. One JSON line per implementation is
appended to ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ect.config import RunConfig, config_from_dict
from ect.data import ImageDataset
from ect.distributed import Dist
from ect.ema import EMA
from ect.flops import forward_flops_per_image
from ect.networks import build_network, count_parameters
from ect.precision import precision
from ect.training import TrainStep

# Dense (no sparsity) peak tensor throughput in TFLOP/s, from the vendors' datasheets: NVIDIA H100 SXM5
# (https://www.nvidia.com/en-us/data-center/h100/: TF32 494.7, BF16/FP16 989.4, FP64/FP32 non-tensor 66.9),
# H100 PCIe (378 / 756 / 51.2), H200 SXM (same tensor cores as H100 SXM), A100 SXM4
# (https://www.nvidia.com/en-us/data-center/a100/: TF32 156, BF16/FP16 312, FP32 19.5). The datasheets list
# TF32/BF16 "with sparsity"; these are the halves, i.e. dense. Strict fp32 runs on the plain FP32 units.
PEAK_TFLOPS = {
    "H100 80GB HBM3": {"fp32": 66.9, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4},
    "H100 PCIe": {"fp32": 51.2, "tf32": 378.0, "bf16": 756.0, "fp16": 756.0},
    "H200": {"fp32": 66.9, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4},
    "A100-SXM4": {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0},
    "A100-PCIE": {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0},
}


def peak_tflops(device: torch.device, numerics: str) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peaks in PEAK_TFLOPS.items():
        if key.lower() in name.lower():
            return peaks[numerics]
    return None


def synthetic_dataset(net: torch.nn.Module, n: int = 4096) -> ImageDataset:
    images = np.random.default_rng(0).integers(0, 256, (n, net.img_channels, net.img_resolution,
                                                        net.img_resolution), dtype=np.uint8)
    labels = np.arange(n) % net.label_dim if net.label_dim else None
    return ImageDataset(name="synthetic", images=images, labels=labels, num_classes=net.label_dim)


def ours(args: argparse.Namespace, device: torch.device, overrides: dict) -> tuple[Callable[[int], None], dict]:
    """The real trainer's step, built the way ``ect.training.train`` builds it."""
    cfg = config_from_dict({
        "data": {"conditional": bool(overrides.get("label_dim"))},
        "network": {"preset": args.preset},
        "training": {"batch_size": args.batch, "precision": args.precision, "compile": args.compile,
                     "channels_last": args.channels_last, "seed": 0},
        "optimizer": {"name": "radam", "lr": 1e-4},
        "ema": {"kind": "beta", "beta": 0.9999},
    })
    torch.manual_seed(0)
    net = build_network(args.preset, **overrides).to(device).train().requires_grad_(True)
    if args.channels_last:
        net = net.to(memory_format=torch.channels_last)
    ema = EMA(net, cfg.ema)
    opt = torch.optim.RAdam(net.parameters(), lr=1e-4, foreach=True)  # as ect.training.train builds it
    step = TrainStep(cfg, args.method, net, ema, opt, synthetic_dataset(net), Dist(device=device))
    counter = {"images": 0}

    def run(it: int) -> None:
        step(it, counter["images"])
        counter["images"] += args.batch

    return run, {"implementation": "ours", "parameters": count_parameters(net), "precision": args.precision,
                 "compile": args.compile, "channels_last": args.channels_last, "config": _short(cfg)}


def _short(cfg: RunConfig) -> dict:
    return {"network": cfg.network.preset, "training.precision": cfg.training.precision}


def official(args: argparse.Namespace, device: torch.device, overrides: dict) -> tuple[Callable[[int], None], dict]:
    """The official ECT step (locuslab/ect ``ct_training_loop.py``) on the same network layout."""
    sys.path.insert(0, str(args.official))
    if device.type == "cpu":  # ECMLoss saves/restores the CUDA RNG state; on CPU the CPU generator's
        torch.cuda.get_rng_state = lambda *a, **k: torch.get_rng_state()
        torch.cuda.set_rng_state = lambda state, *a, **k: torch.set_rng_state(state)
    from torch_utils import training_stats
    from training.loss import ECMLoss
    from training.networks import ECMPrecond

    from ect.networks.songunet import SONGUNET_PRESETS

    layout = {**SONGUNET_PRESETS[args.preset], **overrides}
    keys = ("model_channels", "channel_mult", "channel_mult_emb", "num_blocks", "attn_resolutions", "dropout",
            "embedding_type", "channel_mult_noise", "encoder_type", "decoder_type", "resample_filter", "label_dropout")
    torch.manual_seed(0)
    net = ECMPrecond(img_resolution=layout["img_resolution"], img_channels=layout["img_channels"],
                     label_dim=layout.get("label_dim", 0), use_fp16=args.official_precision == "fp16",
                     model_type="SongUNet", **{k: layout[k] for k in keys}).to(device).train().requires_grad_(True)
    loss_fn = ECMLoss(P_mean=-1.1, P_std=2.0, q=2, c=0.0, k=8.0, b=1.0, adj="sigmoid")
    loss_fn.update_schedule(0)
    opt = torch.optim.RAdam(net.parameters(), lr=1e-4, betas=[0.9, 0.999], eps=1e-8)
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    data = synthetic_dataset(net)
    rng = np.random.default_rng(1)

    def run(it: int) -> None:
        opt.zero_grad(set_to_none=True)
        images = torch.from_numpy(data.images[rng.integers(0, len(data), args.batch)]).to(device)
        images = images.to(torch.float32) / 127.5 - 1
        loss = loss_fn(net=net, images=images, labels=None)
        training_stats.report("Loss/loss", loss)
        loss.mul(1).mean().backward()
        for param in net.parameters():
            if param.grad is not None:
                torch.nan_to_num(param.grad, nan=0, posinf=1e5, neginf=-1e5, out=param.grad)
        opt.step()
        for p_ema, p_net in zip(ema.parameters(), net.parameters(), strict=True):
            p_ema.copy_(p_net.detach().lerp(p_ema, 0.9999))

    tf32 = args.official_precision in ("tf32", "fp16")
    return run, {"implementation": "official", "parameters": count_parameters(net),
                 "precision": args.official_precision, "compile": False, "channels_last": False,
                 "official_flags": {"enable_tf32": tf32, "use_fp16": args.official_precision == "fp16"}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny-m")
    p.add_argument("--model-channels", type=int, help="override the preset's model_channels")
    p.add_argument("--method", choices=["ect", "diffusion"], default="ect")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=20, help="timed steps per block")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=1, help="timed blocks per implementation (alternating)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", choices=["fp32", "tf32", "bf16"], default="fp32")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--threads", type=int)
    p.add_argument("--official", type=Path, help="checkout of locuslab/ect (main) to time side by side")
    p.add_argument("--official-precision", choices=["fp32", "tf32", "fp16"], default="fp32")
    p.add_argument("--only-official", action="store_true", help="time the official code alone")
    p.add_argument("--note", default="", help="free text stored with the record (e.g. the machine)")
    p.add_argument("--out", type=Path, default=Path("bench/results/train_throughput.jsonl"))
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    overrides = {"model_channels": args.model_channels} if args.model_channels else {}

    impls = []
    if not args.only_official:
        impls.append(ours(args, device, overrides))
    if args.official or args.only_official:
        impls.append(official(args, device, overrides))

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def official_flags(info: dict) -> contextlib.AbstractContextManager:
        # The official loop sets its TF32 flags globally; ours sets them in each step (TrainStep).
        if info["implementation"] == "ours":
            return contextlib.nullcontext()
        return precision("tf32" if info["precision"] in ("tf32", "fp16") else "fp32", device)

    it = {info["implementation"]: 0 for _, info in impls}
    for run, info in impls:
        with official_flags(info):
            for _ in range(args.warmup):
                run(it[info["implementation"]])
                it[info["implementation"]] += 1
    sync()
    times: dict[str, list[float]] = {info["implementation"]: [] for _, info in impls}
    cpu_times: dict[str, list[float]] = {info["implementation"]: [] for _, info in impls}
    for _ in range(args.repeats):
        for run, info in impls:
            name = info["implementation"]
            with official_flags(info):
                sync()
                start, cpu_start = time.perf_counter(), time.process_time()
                for _ in range(args.steps):
                    run(it[name])
                    it[name] += 1
                sync()
            times[name].append((time.perf_counter() - start) / args.steps)
            cpu_times[name].append((time.process_time() - cpu_start) / args.steps)

    fwd = forward_flops_per_image(args.preset, **overrides)
    passes = 4 if args.method == "ect" else 3
    records = []
    for _, info in impls:
        name = info["implementation"]
        best = min(times[name])
        achieved = passes * fwd * args.batch / best
        peak = peak_tflops(device, info["precision"])
        records.append({
            **info, "preset": args.preset, "overrides": overrides, "method": args.method, "batch": args.batch,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "threads": torch.get_num_threads(), "steps_per_block": args.steps,
            "ms_per_step_blocks": [round(s * 1e3, 2) for s in times[name]],
            # CPU time of the process: on a shared machine it leaves out the time other processes held the cores.
            "cpu_ms_per_step_blocks": [round(s * 1e3, 2) for s in cpu_times[name]],
            "s_per_iteration": best, "s_per_iteration_median": statistics.median(times[name]),
            "img_per_s": args.batch / best, "tflop_per_s": achieved / 1e12, "forward_flops_per_image": fwd,
            "peak_tflop_per_s": peak, "mfu": achieved / (peak * 1e12) if peak else None,
            "peak_gpu_mem_gb": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
            "torch": str(torch.__version__), "note": args.note, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        })
    if len(records) == 2:
        cpu = [min(cpu_times[r["implementation"]]) for r in records]
        for r in records:
            r["ours_over_official"] = records[0]["s_per_iteration"] / records[1]["s_per_iteration"]
            r["ours_over_official_cpu_time"] = cpu[0] / cpu[1]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as f:
        for r in records:
            print(json.dumps(r))
            f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
