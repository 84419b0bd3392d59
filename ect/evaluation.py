"""``ect evaluate``: sample a checkpoint with per-index seeds and score it with one metric, into one JSON file.

Everything that can fail for a reason other than the sampling itself (checkpoint, sampler/kind, metric/dataset,
reference data, feature-extractor weights) is checked before the first sample is drawn.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path
from typing import Any

import torch

import ect
from ect.checkpoint import atomic_write_bytes, load_checkpoint, network_from_checkpoint
from ect.config import check_output_path, check_seeds, resolve_device
from ect.errors import UserError
from ect.sampling import T_MID, generate_images, sampler_spec

# Samplers each checkpoint kind supports; 1-step sampling of a diffusion model is the usual baseline.
SAMPLERS_BY_KIND = {"diffusion": ("heun", "1step"), "consistency": ("1step", "2step")}
# The keys of ect.metrics.METRICS, spelled out so that building the CLI parser does not import torch-fidelity.
METRIC_NAMES = ("fid", "fd_dinov2", "fd_digits")


class EvaluationError(UserError):
    """The evaluation request does not fit the checkpoint."""


def add_evaluate_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "evaluate",
        help="sample a checkpoint and compute FID, FD_DINOv2 or the digits FD",
        description="Sample a checkpoint with seeds SEED…SEED+NUM−1 and write one metric as JSON.",
    )
    p.add_argument("--checkpoint", required=True, help="ect checkpoint (.pt)")
    p.add_argument("--sampler", required=True, choices=["1step", "2step", "heun"])
    p.add_argument("--metric", required=True, choices=METRIC_NAMES)
    p.add_argument("--num", type=int, help="samples (default: 50,000 for fid/fd_dinov2, 1,500 for fd_digits)")
    p.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    p.add_argument("--batch", type=int, default=256, help="sampling and feature batch size")
    p.add_argument("--t-mid", type=float, help="2-step intermediate time (default: the checkpoint's, else the "
                   "dataset's official value)")
    p.add_argument("--device", default="auto", help="cuda, cpu, … (default auto: cuda if available)")
    p.add_argument("--data-dir", help="reference data location (default: the checkpoint config's data.data_dir)")
    p.add_argument("--cache-dir", help="reference statistics and digits classifier (default: $ECT_CACHE or "
                   "~/.cache/ect)")
    p.add_argument("--feature-weights", help="local feature-extractor weights, for machines without internet")
    p.add_argument("--out", required=True, help="output JSON path")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")
    return p


def _t_mid(args: argparse.Namespace, config: dict[str, Any], dataset: str) -> float | list[float] | None:
    if args.sampler != "2step":
        if args.t_mid is not None:
            raise EvaluationError(f"--t-mid applies to the 2-step sampler only, not to {args.sampler}")
        return None
    if args.t_mid is not None:
        if not (math.isfinite(args.t_mid) and args.t_mid > 0):
            raise EvaluationError(f"--t-mid must be a positive finite time, got {args.t_mid}")
        return args.t_mid
    if config.get("sampling", {}).get("t_mid") is not None:
        return config["sampling"]["t_mid"]
    if dataset in T_MID:
        return T_MID[dataset]
    raise EvaluationError(f"no 2-step t_mid known for {dataset!r} (none in the checkpoint config); pass --t-mid")


def run_evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Validate, sample, score and write ``args.out``; returns the record written."""
    import torch_fidelity

    from ect.metrics import METRICS, prepare_metric

    start = time.perf_counter()
    device = resolve_device(args.device)
    check_output_path(args.out)
    checkpoint = load_checkpoint(args.checkpoint)
    kind = checkpoint["kind"]
    if args.sampler not in SAMPLERS_BY_KIND[kind]:
        raise EvaluationError(f"--sampler {args.sampler} does not apply to a {kind} checkpoint; "
                              f"use {' or '.join(SAMPLERS_BY_KIND[kind])}")
    config = checkpoint.get("config") or {}
    data = config.get("data") or {}
    if "name" not in data:
        raise EvaluationError(f"{args.checkpoint} records no dataset (config.data.name); for an imported "
                              "checkpoint, import it again with `ect import --dataset NAME`")
    dataset = data["name"]
    spec = sampler_spec(args.sampler, t_mid=_t_mid(args, config, dataset))
    num = METRICS[args.metric].default_num if args.num is None else args.num
    if num < 2 or args.batch < 1:
        raise EvaluationError("--num must be at least 2 (a covariance needs two samples) and --batch at least 1")
    check_seeds(args.seed, num)

    net = network_from_checkpoint(checkpoint).to(device)
    metric = prepare_metric(args.metric, dataset, args.data_dir or data.get("data_dir"), device, args.cache_dir,
                            args.feature_weights, args.batch, args.progress)
    shape = (net.img_channels, net.img_resolution, net.img_resolution)
    if shape != metric.reference_shape[1:]:
        raise EvaluationError(f"the network makes {shape} images but {dataset} has {metric.reference_shape[1:]}")

    seeds = range(args.seed, args.seed + num)
    sampling_start = time.perf_counter()
    images, _ = generate_images(net, spec, seeds, args.batch, device, args.progress)
    sampling_time = time.perf_counter() - sampling_start
    value = metric.score(images, args.progress)

    progress = checkpoint.get("progress") or {}
    record = {
        "metric": args.metric,
        "value": value,
        "floor": metric.floor,
        "num_samples": num,
        "nfe": spec.nfe,
        "sampler": spec.as_dict(),
        "checkpoint": str(Path(args.checkpoint).resolve()),
        "checkpoint_kind": kind,
        "network_preset": checkpoint["network"]["preset"],
        "num_parameters": sum(p.numel() for p in net.parameters()),
        "iteration": progress.get("iteration"),
        "training_images": progress.get("images"),
        "training_flops": progress.get("flops"),
        "dataset": dataset,
        "reference_split": metric.spec.reference_split,
        "reference_size": metric.reference_shape[0],
        "floor_split": metric.spec.floor_split,
        "feature_extractor": metric.spec.extractor,
        "feature_layer": metric.spec.layer,
        "feature_weights": args.feature_weights,
        "feature_weights_digest": metric.weights_digest,
        "seeds": [args.seed, args.seed + num - 1],
        "batch_size": args.batch,
        "device": str(device),
        "versions": {
            "ect": ect.__version__,
            "torch": torch.__version__,
            "torch_fidelity": torch_fidelity.__version__,
            "python": platform.python_version(),
        },
        "sampling_time_s": sampling_time,
        "wall_time_s": time.perf_counter() - start,
    }
    atomic_write_bytes(args.out, lambda f: f.write((json.dumps(record, indent=2) + "\n").encode()))
    floor = "" if metric.floor is None else f" (floor {metric.floor:.4g}: real held-out data)"
    print(f"{args.metric} = {value:.4g}{floor}; {spec.name}, {spec.nfe} NFE, {num} samples → {args.out}")
    return record
