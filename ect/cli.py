"""``ect`` command line: train (pretrain, tune), sample, evaluate, ref, prepare, import, and the study's analysis steps.

:data:`COMMANDS` lists every command with the function that adds its parser and the one that runs it. The
model and data commands are here; the study's analysis steps are in :mod:`ect.analysis.cli`.

Every command validates its inputs (config keys, files, values) and fails with one clear message before
any expensive work starts.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ect.analysis import cli as study
from ect.config import ConfigError
from ect.errors import UserError
from ect.kinds import SAMPLERS
from ect.methods import METHODS
from ect.metric_specs import METRICS
from ect.official import OFFICIAL_SOURCES

METRIC_NAMES = tuple(METRICS)
# ect.precision.EVALUATION_PRECISIONS, spelled out so that building the parser does not import torch.
EVALUATION_PRECISIONS = ("fp32", "tf32", "bf16", "fp16")


def _add_train_parser(sub: argparse._SubParsersAction, name: str, help: str) -> None:
    p = sub.add_parser(name, help=help, description=help)
    p.add_argument("--config", help="run config: a YAML file or a packaged preset name (e.g. digits-tune)")
    p.add_argument("--out", required=True, type=Path, help="run directory (resumed if it holds a checkpoint)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set ect.q=4 (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    if name == "tune":
        p.add_argument("--init", required=True, type=Path, help="pretrained diffusion checkpoint to start from")
    if name == "train":
        p.add_argument("--method", required=True, choices=list(METHODS),
                       help="; ".join(f"{m.name}: {m.label}" for m in METHODS.values()))
        p.add_argument("--init", type=Path, help="checkpoint to start from: a diffusion checkpoint for ect (without "
                       "--init: ECT from scratch) and the teacher for cd (required); diffusion and ict take none")


def add_train_parser(sub: argparse._SubParsersAction) -> None:
    _add_train_parser(sub, "train", "train with any method: diffusion pretraining, ECT (tuning or from scratch), "
                      "iCT from scratch, or consistency distillation")


def add_pretrain_parser(sub: argparse._SubParsersAction) -> None:
    _add_train_parser(sub, "pretrain", "diffusion pretraining with the EDM loss")


def add_tune_parser(sub: argparse._SubParsersAction) -> None:
    _add_train_parser(sub, "tune", "easy consistency tuning from a pretrained diffusion checkpoint")


def run_train(args: argparse.Namespace) -> None:
    from ect.config import load_run_config
    from ect.training import train

    cfg = load_run_config(args.config, args.sets)
    method = {"pretrain": "diffusion", "tune": "ect"}.get(args.command) or args.method
    init = getattr(args, "init", None)
    # `ect train` without --init starts a method whose init is optional (ECT) from scratch; `ect tune` never does.
    from_scratch = args.command == "train" and init is None and METHODS[method].init == "optional"
    summary = train(cfg, method, args.out, init=init, progress=not args.no_progress, from_scratch=from_scratch)
    print(f"done: {summary['iterations']} iterations, {summary['images']} images, {summary['flops']:.3e} FLOPs "
          f"({summary['total_flops']:.3e} with its starting point) → {args.out}")


def add_sample_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="draw images from a checkpoint: an .npz of uint8 images, a PNG grid, one PNG per "
                       "seed")
    p.add_argument("--checkpoint", required=True, type=Path)
    p.add_argument("--sampler", required=True, choices=SAMPLERS)
    p.add_argument("--num", type=int, help="number of images (default 64)")
    p.add_argument("--seed", type=int, help="first seed (default 0); image i uses seed+i")
    p.add_argument("--seeds", help="the seeds instead of --seed/--num, as EDM's generate.py: 0-63 or 0,5,10-12")
    p.add_argument("--t-mid", type=float, nargs="+", help="2-step intermediate time(s); default from the checkpoint")
    p.add_argument("--t-max", type=float, help="starting time of the 1- and 2-step samplers; default from the "
                   "checkpoint, else 80")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", choices=["auto", *EVALUATION_PRECISIONS],
                   help="numerics of the network (ect.precision); auto: the official evaluation's for the checkpoint's "
                        "dataset (fp16 for ImageNet 64, strict fp32 otherwise)")
    p.add_argument("--out", type=Path, help="output .npz (images, seeds; with a .png grid beside it) or .png grid")
    p.add_argument("--outdir", type=Path, help="folder for one PNG per seed, named as EDM's generate.py names them "
                   "(000042.png)")


def sample_seeds(args: argparse.Namespace) -> list[int]:
    """The seeds ``ect sample`` draws: --seeds, else --num images from --seed."""
    from ect.config import check_seeds, parse_seeds

    if args.seeds is not None:
        if args.seed is not None or args.num is not None:
            raise ConfigError("give either --seeds or --seed/--num, not both")
        return parse_seeds(args.seeds)
    num, first = 64 if args.num is None else args.num, args.seed or 0
    if num < 1:
        raise ConfigError(f"--num must be positive, got {num}")
    check_seeds(first, num)
    return list(range(first, first + num))


def run_sample(args: argparse.Namespace) -> None:
    import numpy as np

    from ect.checkpoint import load_checkpoint, network_from_checkpoint
    from ect.config import check_output_path
    from ect.distributed import resolve_device
    from ect.files import atomic_write_bytes
    from ect.precision import autocast, evaluation_precision, precision
    from ect.sampling import generate_images, resolve_sampler
    from ect.visualize import save_image_files, save_image_grid

    seeds = sample_seeds(args)
    if args.batch < 1:
        raise ConfigError(f"--batch must be positive, got {args.batch}")
    if args.out is None and args.outdir is None:
        raise ConfigError("give --out (an .npz or a .png grid), --outdir (one PNG per seed) or both")
    if args.out is not None:
        if args.out.suffix not in (".npz", ".png"):
            raise ConfigError(f"--out must end in .npz or .png, got {args.out}")
        check_output_path(args.out)
    if args.outdir is not None:
        if args.outdir.exists() and not args.outdir.is_dir():
            raise ConfigError(f"--outdir {args.outdir} is a file, not a folder")
        check_output_path(args.outdir / f"{seeds[0]:06d}.png")
    ckpt = load_checkpoint(args.checkpoint)
    spec = resolve_sampler(args.sampler, ckpt["kind"], ckpt.get("config") or {}, args.t_mid, args.t_max)
    device = resolve_device(args.device)
    net = network_from_checkpoint(ckpt).to(device)
    name = evaluation_precision(args.precision, (ckpt.get("config") or {}).get("data", {}).get("name"))
    with precision(name, device), autocast(name, device):
        images, classes = generate_images(net, spec, seeds, batch_size=args.batch, device=device)
    written = []
    if args.out is not None:
        if args.out.suffix == ".npz":
            extra = {} if classes is None else {"labels": classes}
            arrays = {"images": images, "seeds": np.asarray(seeds), **extra}
            atomic_write_bytes(args.out, lambda f: np.savez_compressed(f, **arrays))
        save_image_grid(images, args.out.with_suffix(".png"))
        written.append(str(args.out))
    if args.outdir is not None:
        save_image_files(images, seeds, args.outdir)
        written.append(f"one PNG per seed in {args.outdir}")
    print(f"{len(images)} images ({spec.name}, {spec.nfe} NFE) → {', '.join(written)}")


def add_evaluate_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "evaluate",
        help="score a checkpoint's samples or any image set with FID, FD_DINOv2 or the digits FD",
        description="Sample a checkpoint with seeds SEED…SEED+NUM−1 and write one metric as JSON, for each sampler "
                    "and evaluation seed; or score an image set (--images, as EDM's fid.py calc) by the same protocol "
                    "into the same JSON record.",
    )
    p.add_argument("--checkpoint", help="ect checkpoint (.pt) to sample and score")
    p.add_argument("--images", help="image set to score instead: a folder or zip of PNGs, or an .npz of uint8 images "
                   "(key images or arr_0, NCHW or NHWC), e.g. what `ect sample` wrote")
    p.add_argument("--dataset", help="dataset whose reference statistics to score against (default: the "
                   "checkpoint's, else the --ref file's)")
    p.add_argument("--ref", help="reference statistics written by `ect ref` (or a mu/sigma .npz as EDM's fid.py ref "
                   "writes) instead of the dataset's")
    p.add_argument("--sampler", nargs="+", choices=SAMPLERS,
                   help="with --checkpoint: one or more samplers; the network and the metric are loaded once for all")
    p.add_argument("--metric", required=True, choices=METRIC_NAMES)
    p.add_argument("--num", type=int, help="samples (default: 50,000 for fid/fd_dinov2, 1,500 for fd_digits); with "
                   "--images the first NUM images (default all)")
    p.add_argument("--seed", type=int, help="first seed (default 0)")
    p.add_argument("--eval-seed", type=int, nargs="+",
                   help="evaluation seeds K (default 0): K draws seeds SEED + K·NUM … SEED + (K+1)·NUM − 1, "
                        "disjoint sets of samples whose spread the tables report")
    p.add_argument("--batch", type=int, default=256, help="sampling and feature batch size")
    p.add_argument("--t-mid", type=float, help="2-step intermediate time (default: the checkpoint's, else the "
                   "dataset's official value)")
    p.add_argument("--t-max", type=float, help="starting time of the 1- and 2-step samplers (default: the "
                   "checkpoint's sampling.t_max, else the official 80)")
    p.add_argument("--device", default="auto", help="cuda, cpu, … (default auto: cuda if available)")
    p.add_argument("--precision", default="auto", choices=["auto", *EVALUATION_PRECISIONS],
                   help="numerics of the network (ect.precision); auto: the official evaluation's for the checkpoint's "
                        "dataset (fp16 for ImageNet 64, strict fp32 otherwise)")
    p.add_argument("--data-dir", help="reference data location (default: the checkpoint config's data.data_dir)")
    p.add_argument("--cache-dir", help="reference statistics and digits classifier (default: $ECT_CACHE or "
                   "~/.cache/ect)")
    p.add_argument("--feature-weights", help="local feature-extractor weights, for machines without internet")
    p.add_argument("--out", required=True,
                   help="output JSON path; with several samplers or evaluation seeds it must contain {sampler} and "
                        "{seed} (the file suffix of evaluation seed K: empty for 0, -seedK otherwise)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")
    return p


def run_evaluate(args: argparse.Namespace) -> list[dict]:
    from ect.evaluation import run_evaluate

    return run_evaluate(args)


def add_ref_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "ref",
        help="write the reference statistics of a dataset or an image set, for `ect evaluate --ref`",
        description="Write the mean and covariance of a metric's features of a dataset split or an image set (as "
                    "EDM's fid.py ref) to an .npz, so that `ect evaluate --ref FILE` scores against them.",
    )
    p.add_argument("--metric", required=True, choices=METRIC_NAMES)
    p.add_argument("--dataset", help="a dataset (ect.data.DATASETS) whose split to describe")
    p.add_argument("--split", help="the dataset's split (default: the metric's reference split, train)")
    p.add_argument("--data-dir", help="where the dataset lives or is downloaded to")
    p.add_argument("--images", help="an image set instead: a folder or zip of PNGs, or an .npz of uint8 images")
    p.add_argument("--num", type=int, help="with --images: the first NUM images (default all)")
    p.add_argument("--batch", type=int, default=256, help="feature batch size")
    p.add_argument("--device", default="auto")
    p.add_argument("--cache-dir", help="reference statistics and digits classifier (default: $ECT_CACHE or "
                   "~/.cache/ect)")
    p.add_argument("--feature-weights", help="local feature-extractor weights, for machines without internet")
    p.add_argument("--out", required=True, help="output .npz: mu, sigma and meta (what they were computed from)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")
    return p


def run_ref(args: argparse.Namespace) -> None:
    from ect.evaluation import run_ref

    run_ref(args)


def add_prepare_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare", help="fetch or build a dataset and its metric reference statistics (cached)")
    p.add_argument("--dataset", required=True)
    p.add_argument("--data-dir", help="where the dataset lives or is downloaded to")
    p.add_argument("--metric", dest="metrics", action="append", default=[], help="metric to prepare (repeatable)")
    p.add_argument("--cache-dir", help="metric cache: reference statistics, digits classifier")
    p.add_argument("--device", default="auto")
    study.add_labelled(p, "--feature-weights", ("METRIC", "PATH"), "a metric's local feature-extractor weights, "
                       "for machines without internet; repeatable")
    p.add_argument("--out", required=True, type=Path, help="JSON summary of what was prepared")


def run_prepare(args: argparse.Namespace) -> None:
    from ect.config import check_output_path
    from ect.data import load_dataset
    from ect.distributed import resolve_device
    from ect.files import write_json
    from ect.metrics import prepare_metric

    device = resolve_device(args.device)
    check_output_path(args.out)
    train = load_dataset(args.dataset, "train", args.data_dir)
    record = {"dataset": args.dataset, "data_dir": args.data_dir, "train_images": len(train),
              "shape": list(train.images.shape[1:]), "num_classes": train.num_classes, "metrics": {}}
    weights = dict(args.feature_weights)
    for name in args.metrics:
        metric = prepare_metric(name, args.dataset, args.data_dir, device, args.cache_dir, weights.get(name))
        record["metrics"][name] = {"extractor": metric.spec.extractor, "layer": metric.spec.layer,
                                   "reference_split": metric.spec.reference_split,
                                   "real_data_fit": None if metric.real_data_fit is None
                                   else dataclasses.asdict(metric.real_data_fit)}
    write_json(args.out, record)
    print(f"prepared {args.dataset} ({len(train)} training images) and {', '.join(args.metrics) or 'no metrics'}")


def add_import_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    names = ", ".join(OFFICIAL_SOURCES)
    p = subparsers.add_parser(
        "import",
        help="convert an official EDM/EDM2 .pkl into an ect checkpoint (no code from the pickle is run)",
        description="Import an official NVIDIA EDM / EDM2 network pickle into an ect checkpoint without running "
                    "its code.",
    )
    p.add_argument("--source", required=True, help=f"URL, local .pkl path, or an official name: {names}")
    p.add_argument("--out", required=True, help="checkpoint to write")
    p.add_argument("--preset", default=None, help="network preset (default: from the official table, else inferred)")
    p.add_argument("--cache-dir", default=None, help="download cache (default: $ECT_CACHE or ~/.cache/ect)")
    p.add_argument("--dataset", default=None, help="dataset the network was trained on, recorded for `ect evaluate` "
                   "(default: the official source's)")
    p.add_argument("--data-dir", default=None, help="where that dataset lives, recorded with it")
    return p


def run_import(args: argparse.Namespace) -> int:
    """Run ``ect import`` and print a summary; errors propagate as :class:`CheckpointImportError`."""
    from ect.importer import import_checkpoint

    data = import_checkpoint(args.source, args.out, preset=args.preset, cache_dir=args.cache_dir,
                             dataset=args.dataset, data_dir=args.data_dir)
    src = data["source"]
    count = sum(v.numel() for v in data["ema"].values())
    print(f"wrote {args.out}: preset {data['network']['preset']}, {len(data['ema'])} tensors, {count:,d} values")
    print(f"source {src['url_or_path']} sha256 {src['sha256']}")
    if src["dropped_keys"]:
        print(f"dropped (unused by ECT): {', '.join(src['dropped_keys'])}")
    if not data["config"]:
        print("no dataset recorded (--dataset): the checkpoint can be tuned but `ect evaluate` cannot score it")
    return 0


# Every command: name -> (adds its parser, runs it). Runners import heavy modules (torch, pandas) when called.
COMMANDS: dict[str, tuple[Callable[[argparse._SubParsersAction], Any], Callable[[argparse.Namespace], Any]]] = {
    "train": (add_train_parser, run_train),
    "pretrain": (add_pretrain_parser, run_train),
    "tune": (add_tune_parser, run_train),
    "sample": (add_sample_parser, run_sample),
    "evaluate": (add_evaluate_parser, run_evaluate),
    "ref": (add_ref_parser, run_ref),
    "import": (add_import_parser, run_import),
    "prepare": (add_prepare_parser, run_prepare),
    "collect": (study.add_collect_parser, study.run_collect),
    "fit": (study.add_fit_parser, study.run_fit),
    "table": (study.add_table_parser, study.run_table),
    "figure": (study.add_figure_parser, study.run_figure),
    "summary": (study.add_summary_parser, study.run_summary),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ect", description="Easy Consistency Tuning: train, sample, evaluate.")
    sub = parser.add_subparsers(dest="command", required=True)
    for add_parser, _ in COMMANDS.values():
        add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        status = COMMANDS[args.command][1](args)
    except UserError as exc:
        print(f"ect {args.command}: error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_status", 2)  # 2, or 75 for a run stopped by a signal (ect.guard.PREEMPTED_EXIT)
    except OSError as exc:  # a named file that cannot be read or written: missing, a directory, disk full
        if exc.filename is None:
            raise
        print(f"ect {args.command}: error: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 1
    return status if isinstance(status, int) else 0  # runners return None, a record, or an exit status


if __name__ == "__main__":
    sys.exit(main())
