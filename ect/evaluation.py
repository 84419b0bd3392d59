"""``ect evaluate``: sample a checkpoint with per-index seeds and score it with one metric, one JSON file per
sampler and evaluation seed (the network and the metric's features are loaded once for all of them).

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
from ect import runs
from ect.checkpoint import load_checkpoint, network_from_checkpoint
from ect.config import check_output_path, check_seeds
from ect.distributed import resolve_device
from ect.errors import UserError
from ect.files import write_json
from ect.kinds import METHOD_OF_KIND
from ect.precision import autocast, evaluation_precision, precision
from ect.sampling import generate_images, resolve_sampler
from ect.study import first_seed


class EvaluationError(UserError):
    """The evaluation request does not fit the checkpoint."""


def output_paths(template: str, samplers: list[str], eval_seeds: list[int]) -> dict[tuple[str, int], Path]:
    """The JSON path of each (sampler, evaluation seed): ``template`` with {sampler} and {seed} filled in."""
    needed = [name for name, values in (("{sampler}", samplers), ("{seed}", eval_seeds)) if len(values) > 1]
    missing = [name for name in needed if name not in template]
    if missing:
        raise EvaluationError(f"--out {template}: with several samplers or evaluation seeds the path must contain "
                              f"{' and '.join(missing)}, or every result would go to one file")
    if len(set(samplers)) < len(samplers) or len(set(eval_seeds)) < len(eval_seeds):
        raise EvaluationError("--sampler and --eval-seed must not repeat a value")
    if any(k < 0 for k in eval_seeds):
        raise EvaluationError(f"--eval-seed must be non-negative, got {eval_seeds}")
    try:
        return {(s, k): Path(template.format(sampler=s, seed=runs.seed_suffix(k))) for s in samplers
                for k in eval_seeds}
    except (KeyError, IndexError, ValueError) as exc:
        raise EvaluationError(f"--out {template}: only {{sampler}} and {{seed}} may be filled in ({exc})") from exc


def run_evaluate(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Validate, then sample and score once per sampler and evaluation seed; returns the records written."""
    import torch_fidelity

    from ect.metrics import METRICS, prepare_metric

    start = time.perf_counter()
    device = resolve_device(args.device)
    outputs = output_paths(args.out, args.sampler, args.eval_seed)
    for path in outputs.values():
        check_output_path(path)
    checkpoint = load_checkpoint(args.checkpoint)
    kind = checkpoint["kind"]
    config = checkpoint.get("config") or {}
    specs = {name: resolve_sampler(name, kind, config, args.t_mid, args.t_max) for name in args.sampler}
    data = config.get("data") or {}
    if "name" not in data:
        raise EvaluationError(f"{args.checkpoint} records no dataset (config.data.name); for an imported "
                              "checkpoint, import it again with `ect import --dataset NAME`")
    dataset = data["name"]
    num = METRICS[args.metric].default_num if args.num is None else args.num
    if num < 2 or args.batch < 1:
        raise EvaluationError("--num must be at least 2 (a covariance needs two samples) and --batch at least 1")
    first_seeds = {k: args.seed + first_seed(k, num) for k in args.eval_seed}
    for first in first_seeds.values():
        check_seeds(first, num)

    net = network_from_checkpoint(checkpoint).to(device)
    metric = prepare_metric(args.metric, dataset, args.data_dir or data.get("data_dir"), device, args.cache_dir,
                            args.feature_weights, args.batch, args.progress)
    shape = (net.img_channels, net.img_resolution, net.img_resolution)
    if shape != metric.reference_shape[1:]:
        raise EvaluationError(f"the network makes {shape} images but {dataset} has {metric.reference_shape[1:]}")

    progress = checkpoint.get("progress") or {}
    shared = {
        "metric": args.metric,
        "real_data": metric.real_data(num),
        "num_samples": num,
        "checkpoint": str(Path(args.checkpoint).resolve()),
        "checkpoint_kind": kind,
        "method": checkpoint.get("method", METHOD_OF_KIND[kind]),
        "network_preset": checkpoint["network"]["preset"],
        "num_parameters": sum(p.numel() for p in net.parameters()),
        "iteration": progress.get("iteration"),
        "training_images": progress.get("images"),
        "training_flops": progress.get("flops"),
        # With the compute of its starting point (the pretrained model an ECT or CD run started from).
        "total_images": progress.get("total_images", progress.get("images")),
        "total_flops": progress.get("total_flops", progress.get("flops")),
        "dataset": dataset,
        "reference_split": metric.spec.reference_split,
        "reference_size": metric.reference_shape[0],
        "real_split": metric.spec.real_split,
        "feature_extractor": metric.spec.extractor,
        "feature_layer": metric.spec.layer,
        "feature_weights": args.feature_weights,
        "feature_weights_digest": metric.weights_digest,
        "batch_size": args.batch,
        "device": device,
        "versions": {
            "ect": ect.__version__,
            "torch": torch.__version__,
            "torch_fidelity": torch_fidelity.__version__,
            "python": platform.python_version(),
        },
        "setup_time_s": time.perf_counter() - start,
    }
    numerics_name = evaluation_precision(args.precision, dataset)
    records = []
    for (name, eval_seed), out in outputs.items():
        spec, first = specs[name], first_seeds[eval_seed]
        sampling_start = time.perf_counter()
        with precision(numerics_name, device) as numerics, autocast(numerics_name, device):
            images, _ = generate_images(net, spec, range(first, first + num), args.batch, device, args.progress)
        sampling_time = time.perf_counter() - sampling_start
        value = metric.score(images, args.progress)
        record = {**shared, "value": value, "nfe": spec.nfe, "sampler": spec.as_dict(), "eval_seed": eval_seed,
                  "seeds": [first, first + num - 1], "numerics": numerics, "sampling_time_s": sampling_time,
                  "wall_time_s": time.perf_counter() - sampling_start}
        write_json(out, record)
        records.append(record)
        real = record["real_data"]
        real = "" if real is None else f" (real data {real:.4g}: what {num} unseen real images score)"
        print(f"{args.metric} = {value:.4g}{real}; {spec.name}, {spec.nfe} NFE, {num} samples from seed {first} "
              f"→ {out}")
    return records
