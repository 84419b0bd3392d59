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
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from ect.metrics import ReferenceFile


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


def _refuse_sampling_options(args: argparse.Namespace) -> None:
    """With --images nothing is sampled: options that choose samples are refused, not ignored."""
    given = [flag for flag, value in (("--sampler", args.sampler), ("--seed", args.seed),
                                      ("--eval-seed", args.eval_seed), ("--t-mid", args.t_mid),
                                      ("--t-max", args.t_max)) if value is not None]
    if given:
        raise EvaluationError(f"{', '.join(given)} choose{'s' * (len(given) == 1)} how a checkpoint is sampled; "
                              "--images are scored as they are")


def _reference_shape(args: argparse.Namespace, dataset: str | None, data_dir: str | None,
                     reference: ReferenceFile | None) -> tuple[tuple[int, int, int], str]:
    """The image shape (C, H, W) scored images must have and whose it is: the --ref file's, else the dataset's."""
    from ect.data import load_dataset
    from ect.metrics import METRICS

    if reference is not None and reference.image_shape is not None:
        return reference.image_shape, f"--ref {reference.path}"
    if dataset is None and reference is not None:
        raise EvaluationError(f"--ref {reference.path} holds only mu and sigma, no image shape: pass --dataset NAME "
                              "to check the images against")
    if dataset is None:
        raise EvaluationError("--images needs --dataset NAME (whose reference statistics to score against) or "
                              "--ref FILE (written by `ect ref`)")
    split = METRICS[args.metric].reference_split
    return load_dataset(dataset, split, data_dir).images.shape[1:], f"{dataset} ({split} split)"


def run_evaluate(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Validate, then score: a checkpoint once per sampler and evaluation seed, or an image set (``--images``);
    returns the records written."""
    import torch_fidelity

    from ect.data import load_image_set
    from ect.metrics import METRICS, MetricError, metric_spec, prepare_metric, read_reference, reference_metric

    start = time.perf_counter()
    if (args.checkpoint is None) == (args.images is None):
        raise EvaluationError("give either --checkpoint (sampled, then scored) or --images (scored as they are)")
    device = resolve_device(args.device)
    if args.images is not None:
        _refuse_sampling_options(args)
    elif args.sampler is None:
        raise EvaluationError("--checkpoint needs --sampler (1step, 2step or heun)")
    samplers = args.sampler or ["images"]
    eval_seeds = [0] if args.eval_seed is None else args.eval_seed
    outputs = output_paths(args.out, samplers, eval_seeds)
    for path in outputs.values():
        check_output_path(path)
    reference = None if args.ref is None else read_reference(args.ref)

    checkpoint, config, specs = None, {}, {}
    if args.checkpoint is not None:
        checkpoint = load_checkpoint(args.checkpoint)
        config = checkpoint.get("config") or {}
        specs = {name: resolve_sampler(name, checkpoint["kind"], config, args.t_mid, args.t_max) for name in samplers}
    data = config.get("data") or {}
    if args.dataset is not None and data.get("name") not in (None, args.dataset):
        raise EvaluationError(f"--dataset {args.dataset}, but {args.checkpoint} was trained on {data['name']}")
    dataset = args.dataset or data.get("name") or (reference.dataset if reference is not None else None)
    if dataset is None and reference is None and checkpoint is not None:
        raise EvaluationError(f"{args.checkpoint} records no dataset (config.data.name): pass --dataset NAME, or "
                              "import it again with `ect import --dataset NAME`")
    data_dir = args.data_dir or data.get("data_dir")
    metric_spec(args.metric, dataset if reference is None else None)
    shape, whose = _reference_shape(args, dataset, data_dir, reference)
    if shape[0] != METRICS[args.metric].channels:
        raise MetricError(f"{args.metric} needs {METRICS[args.metric].channels}-channel images; {whose} has "
                          f"{shape[0]}")

    if checkpoint is not None:
        net = network_from_checkpoint(checkpoint).to(device)
        made = (net.img_channels, net.img_resolution, net.img_resolution)
        if made != tuple(shape):
            raise EvaluationError(f"the network makes {made} images but {whose} has {tuple(shape)}")
        num = METRICS[args.metric].default_num if args.num is None else args.num
    else:
        images = load_image_set(args.images, shape, whose)
        num = len(images) if args.num is None else args.num
        if num > len(images):
            raise EvaluationError(f"--num {num}, but --images {args.images} holds {len(images)} images")
        images = images[:num]
    if num < 2 or args.batch < 1:
        raise EvaluationError("--num must be at least 2 (a covariance needs two samples) and --batch at least 1")
    seed = args.seed or 0
    first_seeds = {k: seed + first_seed(k, num) for k in eval_seeds}
    for first in first_seeds.values():
        check_seeds(first, num)

    if reference is None:
        metric = prepare_metric(args.metric, dataset, data_dir, device, args.cache_dir, args.feature_weights,
                                args.batch, args.progress)
    else:
        metric = reference_metric(args.metric, reference, device, args.cache_dir, args.feature_weights, args.batch)

    progress = (checkpoint or {}).get("progress") or {}
    shared = {
        "metric": args.metric,
        "real_data": metric.real_data(num),
        "num_samples": num,
        "source": "checkpoint" if checkpoint is not None else "images",
        "images": None if args.images is None else str(Path(args.images).resolve()),
        "checkpoint": None if checkpoint is None else str(Path(args.checkpoint).resolve()),
        "checkpoint_kind": None if checkpoint is None else checkpoint["kind"],
        "method": None if checkpoint is None else checkpoint.get("method", METHOD_OF_KIND[checkpoint["kind"]]),
        "network_preset": None if checkpoint is None else checkpoint["network"]["preset"],
        "num_parameters": None if checkpoint is None else sum(p.numel() for p in net.parameters()),
        "iteration": progress.get("iteration"),
        "training_images": progress.get("images"),
        "training_flops": progress.get("flops"),
        # With the compute of its starting point (the pretrained model an ECT or CD run started from).
        "total_images": progress.get("total_images", progress.get("images")),
        "total_flops": progress.get("total_flops", progress.get("flops")),
        "dataset": dataset,
        "reference_file": None if reference is None else str(reference.path.resolve()),
        "reference_split": None if reference is not None else metric.spec.reference_split,
        "reference_size": None if metric.reference_shape is None else metric.reference_shape[0],
        "real_split": None if reference is not None else metric.spec.real_split,
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
    numerics_name = None if checkpoint is None else evaluation_precision(args.precision, dataset)
    records = []
    for (name, eval_seed), out in outputs.items():
        sampling_start = time.perf_counter()
        if checkpoint is None:  # the fields of sampling say where the images came from
            sampler, nfe, seeds, numerics = {"sampler": "images", "images": shared["images"]}, None, None, None
        else:
            spec, first = specs[name], first_seeds[eval_seed]
            with precision(numerics_name, device) as numerics, autocast(numerics_name, device):
                images, _ = generate_images(net, spec, range(first, first + num), args.batch, device, args.progress)
            sampler, nfe, seeds = spec.as_dict(), spec.nfe, [first, first + num - 1]
        sampling_time = time.perf_counter() - sampling_start
        value = metric.score(images, args.progress)
        record = {**shared, "value": value, "nfe": nfe, "sampler": sampler,
                  "eval_seed": None if checkpoint is None else eval_seed, "seeds": seeds, "numerics": numerics,
                  "sampling_time_s": None if checkpoint is None else sampling_time,
                  "wall_time_s": time.perf_counter() - sampling_start}
        write_json(out, record)
        records.append(record)
        real = record["real_data"]
        real = "" if real is None else f" (real data {real:.4g}: what {num} unseen real images score)"
        what = f"{num} images from {args.images}" if checkpoint is None else \
            f"{spec.name}, {spec.nfe} NFE, {num} samples from seed {first}"
        print(f"{args.metric} = {value:.4g}{real}; {what} → {out}")
    return records


def run_ref(args: argparse.Namespace) -> dict[str, Any]:
    """``ect ref``: write the reference statistics of a dataset split or an image set (as EDM's ``fid.py ref``);
    returns their meta. A dataset split gives the very statistics ``ect evaluate`` scores against (its cache)."""
    from ect.data import load_dataset, load_image_set
    from ect.metrics import (
        image_statistics,
        metric_extractor,
        metric_spec,
        reference_statistics,
        weights_digest,
        write_reference,
    )

    if (args.dataset is None) == (args.images is None):
        raise EvaluationError("give either --dataset (a dataset split) or --images (a folder or .npz of images)")
    if Path(args.out).suffix != ".npz":
        raise EvaluationError(f"--out must end in .npz, got {args.out}")
    check_output_path(args.out)
    spec = metric_spec(args.metric, args.dataset)
    if args.batch < 1:
        raise EvaluationError(f"--batch must be at least 1, got {args.batch}")
    if args.dataset is not None:
        split = args.split or spec.reference_split
        dataset = load_dataset(args.dataset, split, args.data_dir)
        images, source = dataset.images, {"dataset": args.dataset, "split": split, "data_dir": args.data_dir}
    else:
        # A metric made for one dataset (the digits classifier) reads only that dataset's image shape.
        shape, what = None, ""
        if spec.datasets is not None:
            shape = load_dataset(spec.datasets[0], spec.reference_split).images.shape[1:]
            what = f"{args.metric} (made for {spec.datasets[0]})"
        images = load_image_set(args.images, shape, what)
        if args.num is not None:
            if not 2 <= args.num <= len(images):
                raise EvaluationError(f"--num {args.num}: --images {args.images} holds {len(images)} images")
            images = images[:args.num]
        source = {"images": str(Path(args.images).resolve())}
    if images.shape[1] != spec.channels:
        raise EvaluationError(f"{args.metric} needs {spec.channels}-channel images; these have {images.shape[1]}")
    if len(images) < 2:
        raise EvaluationError("reference statistics need at least 2 images (a covariance)")
    extractor = metric_extractor(spec, resolve_device(args.device), args.cache_dir, args.feature_weights)
    if args.dataset is not None:
        stats = reference_statistics(dataset, extractor, args.cache_dir, args.batch, args.progress)
    else:
        stats = image_statistics(spec, extractor, images, args.batch, args.progress)
    meta = {"metric": args.metric, "extractor": spec.extractor, "layer": spec.layer,
            "feature_weights_digest": weights_digest(extractor).hex(), "image_shape": list(images.shape[1:]),
            "count": len(images), "source": source, "versions": {"ect": ect.__version__, "torch": torch.__version__}}
    write_reference(args.out, stats, meta)
    print(f"{args.metric} reference statistics of {len(images)} images ({len(stats['mu'])}-d features) → {args.out}")
    return meta
