"""``ect evaluate``: sample a checkpoint with per-index seeds and score it with one metric, into one JSON file.

Everything that can fail for a reason other than the sampling itself (checkpoint, sampler/kind, metric/dataset,
reference data, feature-extractor weights) is checked before the first sample is drawn.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path
from typing import Any

import torch

import ect
from ect.checkpoint import load_checkpoint, network_from_checkpoint
from ect.config import check_output_path, check_seeds
from ect.distributed import resolve_device
from ect.errors import UserError
from ect.files import write_json
from ect.precision import autocast, evaluation_precision, precision
from ect.sampling import generate_images, resolve_sampler


class EvaluationError(UserError):
    """The evaluation request does not fit the checkpoint."""


def run_evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Validate, sample, score and write ``args.out``; returns the record written."""
    import torch_fidelity

    from ect.metrics import METRICS, prepare_metric

    start = time.perf_counter()
    device = resolve_device(args.device)
    check_output_path(args.out)
    checkpoint = load_checkpoint(args.checkpoint)
    kind = checkpoint["kind"]
    config = checkpoint.get("config") or {}
    spec = resolve_sampler(args.sampler, kind, config, args.t_mid)
    data = config.get("data") or {}
    if "name" not in data:
        raise EvaluationError(f"{args.checkpoint} records no dataset (config.data.name); for an imported "
                              "checkpoint, import it again with `ect import --dataset NAME`")
    dataset = data["name"]
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
    numerics_name = evaluation_precision(args.precision, dataset)
    with precision(numerics_name, device) as numerics, autocast(numerics_name, device):
        images, _ = generate_images(net, spec, seeds, args.batch, device, args.progress)
    sampling_time = time.perf_counter() - sampling_start
    value = metric.score(images, args.progress)

    progress = checkpoint.get("progress") or {}
    record = {
        "metric": args.metric,
        "value": value,
        "real_data": metric.real_data(num),
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
        "real_split": metric.spec.real_split,
        "feature_extractor": metric.spec.extractor,
        "feature_layer": metric.spec.layer,
        "feature_weights": args.feature_weights,
        "feature_weights_digest": metric.weights_digest,
        "seeds": [args.seed, args.seed + num - 1],
        "batch_size": args.batch,
        "device": device,
        "numerics": numerics,
        "versions": {
            "ect": ect.__version__,
            "torch": torch.__version__,
            "torch_fidelity": torch_fidelity.__version__,
            "python": platform.python_version(),
        },
        "sampling_time_s": sampling_time,
        "wall_time_s": time.perf_counter() - start,
    }
    write_json(args.out, record)
    real = record["real_data"]
    real = "" if real is None else f" (real data {real:.4g}: what {num} unseen real images score)"
    print(f"{args.metric} = {value:.4g}{real}; {spec.name}, {spec.nfe} NFE, {num} samples → {args.out}")
    return record
