"""Evaluation throughput: N few-step samples of a preset plus their Inception (FID) features, timed apart.

    python bench/eval_throughput.py --preset ddpmpp-cifar10 --num 50000 --batch 1000 --precision fp32 \
        --feature-weights weights-inception-2015-12-05-6726825d.pth          # the issue's ≤ 2 min target, H100
    python bench/eval_throughput.py --preset tiny-s --num 2000 --batch 500 --features none   # CPU smoke run

Runs what ``ect evaluate`` runs: ``ect.sampling.generate_images`` (per-seed generators, the 2-step sampler at the
official t_mid) under ``ect.precision``, then ``ect.metrics.feature_statistics`` with torch-fidelity's
inception-v3-compat extractor (pool3, 2,048 features, as FID). The network has random weights: speed does not
depend on them. ``--feature-weights`` points at torch-fidelity's Inception weights for machines without internet.
One JSON line is appended to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from ect.metrics import INCEPTION_EXTRACTOR, create_extractor, feature_statistics
from ect.networks import build_network
from ect.precision import EVALUATION_PRECISIONS, autocast, precision
from ect.sampling import T_MID, generate_images, sampler_spec


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="ddpmpp-cifar10")
    p.add_argument("--sampler", choices=["1step", "2step"], default="2step")
    p.add_argument("--num", type=int, default=50_000)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", choices=EVALUATION_PRECISIONS, default="fp32")
    p.add_argument("--features", choices=["inception", "none"], default="inception")
    p.add_argument("--feature-weights", help="torch-fidelity inception-v3-compat weights (offline machines)")
    p.add_argument("--feature-batch", type=int, default=500)
    p.add_argument("--threads", type=int)
    p.add_argument("--out", type=Path, default=Path("bench/results/eval_throughput.jsonl"))
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    net = build_network(args.preset).to(device).eval()
    spec = sampler_spec(args.sampler, T_MID["cifar10"] if args.sampler == "2step" else None)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    with precision(args.precision, device) as numerics, autocast(args.precision, device):
        generate_images(net, spec, range(args.batch), args.batch, device, progress=False)  # warm-up (cuDNN, allocator)
        sync()
        start = time.perf_counter()
        images, _ = generate_images(net, spec, range(args.num), args.batch, device, progress=False)
        sync()
        sampling_s = time.perf_counter() - start
    features_s = None
    if args.features == "inception":
        extractor = create_extractor(INCEPTION_EXTRACTOR, "2048", device, args.feature_weights)
        start = time.perf_counter()
        feature_statistics(images, extractor, args.feature_batch)
        sync()
        features_s = time.perf_counter() - start
    record = {
        "preset": args.preset, "sampler": spec.as_dict(), "num": args.num, "batch": args.batch,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "numerics": numerics, "sampling_s": sampling_s, "samples_per_s": args.num / sampling_s,
        "features_s": features_s, "total_s": sampling_s + (features_s or 0.0), "torch": str(torch.__version__),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    print(json.dumps(record))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as f:
        f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
