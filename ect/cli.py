"""``ect`` command line: pretrain, tune, sample, evaluate, import, and the study's analysis steps.

Every command validates its inputs (config keys, files, values) and fails with one clear message before
any expensive work starts.
"""

from __future__ import annotations

import argparse
import importlib
import math
import sys
from pathlib import Path

from ect.config import ConfigError, check_output_path
from ect.errors import UserError


def _add_train_parser(sub: argparse._SubParsersAction, name: str, help: str) -> None:
    p = sub.add_parser(name, help=help, description=help)
    p.add_argument("--config", help="run config: a YAML file or a packaged preset name (e.g. digits-tune)")
    p.add_argument("--out", required=True, type=Path, help="run directory (resumed if it holds a checkpoint)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set ect.q=4 (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    if name == "tune":
        p.add_argument("--init", required=True, type=Path, help="pretrained diffusion checkpoint to start from")


def run_train(args: argparse.Namespace) -> None:
    from ect.config import load_run_config
    from ect.training import train

    cfg = load_run_config(args.config, args.sets)
    method = "diffusion" if args.command == "pretrain" else "ect"
    summary = train(cfg, method, args.out, init=getattr(args, "init", None), progress=not args.no_progress)
    print(f"done: {summary['iterations']} iterations, {summary['images']} images, {summary['flops']:.3e} FLOPs "
          f"→ {args.out}")


def _add_sample_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="draw images from a checkpoint (npz of uint8 images and/or PNG grid)")
    p.add_argument("--checkpoint", required=True, type=Path)
    p.add_argument("--sampler", required=True, choices=["1step", "2step", "heun"])
    p.add_argument("--num", type=int, default=64, help="number of images")
    p.add_argument("--seed", type=int, default=0, help="first seed; image i uses seed+i")
    p.add_argument("--t-mid", type=float, nargs="+", help="2-step intermediate time(s); default from the checkpoint")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", required=True, type=Path, help="output .npz or .png (both written if the suffix is .npz)")


def run_sample(args: argparse.Namespace) -> None:
    import numpy as np

    from ect.checkpoint import load_checkpoint, network_from_checkpoint
    from ect.config import check_seeds, resolve_device
    from ect.sampling import generate_images, sampler_spec
    from ect.visualize import save_image_grid

    if args.num < 1:
        raise ConfigError(f"--num must be positive, got {args.num}")
    check_seeds(args.seed, args.num)
    if args.t_mid is not None:
        if args.sampler != "2step":
            raise ConfigError(f"--t-mid applies to the 2-step sampler only, not to {args.sampler}")
        if not all(math.isfinite(t) and t > 0 for t in args.t_mid):
            raise ConfigError(f"--t-mid: {args.t_mid} must be positive finite times")
    if args.batch < 1:
        raise ConfigError(f"--batch must be positive, got {args.batch}")
    if args.out.suffix not in (".npz", ".png"):
        raise ConfigError(f"--out must end in .npz or .png, got {args.out}")
    check_output_path(args.out)
    ckpt = load_checkpoint(args.checkpoint)
    if args.sampler == "heun" and ckpt["kind"] != "diffusion":
        raise ConfigError(f"--sampler heun needs a diffusion checkpoint; {args.checkpoint} is a {ckpt['kind']} model")
    t_mid = args.t_mid or ckpt.get("config", {}).get("sampling", {}).get("t_mid")
    spec = sampler_spec(args.sampler, t_mid)
    device = resolve_device(args.device)
    net = network_from_checkpoint(ckpt).to(device)
    seeds = list(range(args.seed, args.seed + args.num))
    images, classes = generate_images(net, spec, seeds, batch_size=args.batch, device=device)
    if args.out.suffix == ".npz":
        extra = {} if classes is None else {"labels": classes}
        np.savez_compressed(args.out, images=images, seeds=np.asarray(seeds), **extra)
    save_image_grid(images, args.out.with_suffix(".png"))
    print(f"{len(images)} images ({spec.name}, {spec.nfe} NFE) → {args.out}")


# Commands implemented in their own modules: name -> (module, parser hook, runner).
_EXTERNAL = {
    "evaluate": ("ect.evaluation", "add_evaluate_parser", "run_evaluate"),
    "import": ("ect.importer", "add_import_parser", "run_import"),
    "prepare": ("ect.analysis.cli", "add_prepare_parser", "run_prepare"),
    "collect": ("ect.analysis.cli", "add_collect_parser", "run_collect"),
    "fit": ("ect.analysis.cli", "add_fit_parser", "run_fit"),
    "table": ("ect.analysis.cli", "add_table_parser", "run_table"),
    "figure": ("ect.analysis.cli", "add_figure_parser", "run_figure"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ect", description="Easy Consistency Tuning: train, sample, evaluate.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train_parser(sub, "pretrain", "diffusion pretraining with the EDM loss")
    _add_train_parser(sub, "tune", "easy consistency tuning from a pretrained diffusion checkpoint")
    _add_sample_parser(sub)
    for module, hook, _ in _EXTERNAL.values():
        getattr(importlib.import_module(module), hook)(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    runners = {"pretrain": run_train, "tune": run_train, "sample": run_sample}
    if args.command in _EXTERNAL:
        module, _, runner = _EXTERNAL[args.command]
        runners[args.command] = getattr(importlib.import_module(module), runner)
    try:
        status = runners[args.command](args)
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
