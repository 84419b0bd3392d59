"""Training throughput (img/s) and FLOP rate of one ECT or EDM step, for any preset on any device.

    python bench/train_throughput.py --preset ddpmpp-cifar10 --batch 128 --device cuda --precision bf16
    python bench/train_throughput.py --preset tiny-m --batch 128 --device cpu --threads 1

Synthetic data (no dataset needed); prints one JSON line and appends it to ``--out`` (JSONL).
The step is the real one: the ECT loss from ``ect.losses`` (two passes, shared dropout mask), backward,
NaN-guard, optimizer step and EMA update.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from ect.config import EMAConfig
from ect.ema import EMA
from ect.flops import forward_flops_per_image
from ect.losses import ect_loss, edm_loss, lognormal_t, mapping_r
from ect.networks import build_network, count_parameters


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny-m")
    p.add_argument("--method", choices=["ect", "diffusion"], default="ect")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--threads", type=int)
    p.add_argument("--out", type=Path, default=Path("bench/results/train_throughput.jsonl"))
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    net = build_network(args.preset).to(device).train()
    if args.channels_last:
        net = net.to(memory_format=torch.channels_last)
    model = torch.compile(net) if args.compile else net
    opt = torch.optim.RAdam(net.parameters(), lr=1e-4)
    ema = EMA(net, EMAConfig(kind="beta", beta=0.9999))
    shape = (args.batch, net.img_channels, net.img_resolution, net.img_resolution)
    x0 = torch.rand(shape, device=device) * 2 - 1
    labels = None
    if net.label_dim:
        labels = torch.nn.functional.one_hot(torch.arange(args.batch, device=device) % net.label_dim,
                                             net.label_dim).float()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, torch.bfloat16, enabled=args.precision == "bf16"):
            t = lognormal_t(torch.randn(args.batch, device=device), -1.1, 2.0)
            eps = torch.randn(shape, device=device)
            if args.method == "ect":
                loss = ect_loss(model, x0, labels, t, mapping_r(t, 3, "sigmoid"), eps)
            else:
                loss = edm_loss(model, x0, labels, t, eps)
        (loss.float().sum() / args.batch).backward()
        for q in net.parameters():
            if q.grad is not None:
                torch.nan_to_num(q.grad, nan=0.0, posinf=1e5, neginf=-1e5, out=q.grad)
        opt.step()
        ema.update(net, 0, args.batch)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(args.warmup):
        step()
    sync()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    seconds = (time.perf_counter() - start) / args.steps
    fwd = forward_flops_per_image(args.preset)
    passes = 4 if args.method == "ect" else 3
    record = {
        "preset": args.preset, "method": args.method, "parameters": count_parameters(net), "batch": args.batch,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(), "precision": args.precision, "channels_last": args.channels_last,
        "compile": args.compile, "s_per_iteration": seconds, "img_per_s": args.batch / seconds,
        "tflop_per_s": passes * fwd * args.batch / seconds / 1e12, "forward_flops_per_image": fwd,
        "peak_gpu_mem_gb": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "torch": str(torch.__version__),
    }
    print(json.dumps(record))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as f:
        f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
