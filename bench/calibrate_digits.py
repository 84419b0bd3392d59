"""Calibration study for the embedded default (digits): pretrain once per size, tune variants, score them.

Each model size is pretrained once (``digits-pretrain`` plus ``--pretrain-set``), keeping EMA snapshots at the
``--teachers`` iterations; each snapshot is scored with Heun (35 NFE). Every ``--variant`` then tunes
(``digits-tune`` plus the embedded default's overrides plus the variant's) from each teacher, and every tuning
snapshot is scored with the 1-step sampler and the 2-step sampler at each ``--t-mid``, starting from each
``--t-max``. One JSON line per score goes to ``--results``; rows already there are skipped, and runs resume from
their checkpoints, so an interrupted study continues where it stopped.

    nice -n 15 python bench/calibrate_digits.py --sizes tiny-s --teachers 1000 2000 \\
        --variant "base" --variant "b32 training.batch_size=32" --budgets 750 1500

A variant is one string: its name, then KEY=VALUE overrides for ``digits-tune`` (as ``ect tune --set``).
Training FLOPs are counted as the trainer counts them (3 passes per image for pretraining, 4 for ECT), so
``tune_over_pretrain`` is the ratio the workflow's metrics table shows.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from ect.checkpoint import load_checkpoint, network_from_checkpoint
from ect.config import load_run_config
from ect.metrics import prepare_metric
from ect.sampling import T_MAX, generate_images, sampler_spec
from ect.training import train

# The embedded default's tuning overrides that every variant starts from (config.yaml's tune.set); rows record them.
BASE_TUNE = ["training.batch_size=64", "ect.stage_length=75"]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=Path, default=Path("/tmp/ect-calibrate"), help="run directories (scratch)")
    p.add_argument("--results", type=Path, default=Path(__file__).parent / "results" / "calibrate_digits.jsonl")
    p.add_argument("--sizes", nargs="+", default=["tiny-s", "tiny-m", "tiny-l"])
    p.add_argument("--teachers", nargs="+", type=int, default=[1000, 2000],
                   help="pretraining iterations whose EMA snapshots are tuned from (the last is the run length)")
    p.add_argument("--pretrain-set", nargs="*", default=[], help="KEY=VALUE overrides for digits-pretrain")
    p.add_argument("--variant", action="append", default=[], help='"NAME KEY=VALUE ..." tuning variant')
    p.add_argument("--budgets", nargs="+", type=int, default=[1500],
                   help="tuning iterations scored (the last is the run length)")
    p.add_argument("--t-mid", nargs="+", type=float, default=[0.821], help="2-step intermediate times scored")
    p.add_argument("--t-max", nargs="+", type=float, default=[T_MAX],
                   help="starting times of the 1- and 2-step samplers scored (official: 80)")
    p.add_argument("--num", type=int, default=1500, help="samples per score")
    p.add_argument("--seed", type=int, default=0, help="first sampling seed")
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args()


def done_keys(path: Path) -> set[str]:
    if not path.is_file():
        return set()
    return {json.loads(line)["key"] for line in path.read_text().splitlines() if line.strip()}


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    done = done_keys(args.results)
    metric = prepare_metric("fd_digits", "digits")

    def score(snapshot: Path, sampler: str, t_mid: float | None, key: str, row: dict[str, Any],
              t_max: float = T_MAX) -> None:
        if key in done:
            return
        ckpt = load_checkpoint(snapshot)
        net = network_from_checkpoint(ckpt)
        start = time.perf_counter()
        spec = sampler_spec(sampler, t_mid, t_max=t_max)  # Heun keeps EDM's σ_max
        images, _ = generate_images(net, spec, range(args.seed, args.seed + args.num), progress=False)
        value = metric.score(images)
        row = {"key": key, **row, "sampler": sampler, "t_mid": t_mid, "t_max": t_max, "fd": value, "num": args.num,
               "seed": args.seed, "eval_s": round(time.perf_counter() - start, 2),
               "flops": ckpt["progress"]["flops"], "parameters": ckpt["progress"]["parameters"]}
        with args.results.open("a") as f:
            f.write(json.dumps(row) + "\n")
        done.add(key)
        print(json.dumps(row), flush=True)

    variants = [v.split() for v in args.variant] or [["base"]]
    for size in args.sizes:
        teachers = sorted(args.teachers)
        tag = "-".join(args.pretrain_set).replace("=", "") or "default"
        pre_dir = args.runs / f"pretrain-{size}-{tag}"
        cfg = load_run_config("digits-pretrain", [f"network.preset={size}", f"training.iterations={teachers[-1]}",
                                                  f"training.budgets={teachers}", f"training.threads={args.threads}",
                                                  "sampling.grid_size=0", *args.pretrain_set])
        snapshots = [pre_dir / f"snapshot-{teacher:07d}.pt" for teacher in teachers]
        if all(p.is_file() for p in snapshots) and (pre_dir / "summary.json").is_file():
            # A finished pretraining is reused as it is (its config may predate a later default, e.g. channels_last).
            summary = json.loads((pre_dir / "summary.json").read_text())
        else:
            summary = train(cfg, "diffusion", pre_dir, progress=False)
        for teacher in teachers:
            snap = pre_dir / f"snapshot-{teacher:07d}.pt"
            base = {"size": size, "pretrain": tag, "teacher": teacher, "pretrain_wall_s": summary["wall_s"]}
            score(snap, "heun", None, f"{size}|{tag}|{teacher}|heun|{args.num}|{args.seed}", base)
            pre_flops = load_checkpoint(snap)["progress"]["flops"]
            for name, *sets in variants:
                run_dir = args.runs / f"tune-{size}-{tag}-{teacher}-{name}"
                cfg = load_run_config("digits-tune", [
                    f"network.preset={size}", *BASE_TUNE, f"training.iterations={max(args.budgets)}",
                    f"training.budgets={sorted(args.budgets)}", f"training.threads={args.threads}",
                    "sampling.grid_size=0", *sets])
                tuned = train(cfg, "ect", run_dir, init=snap, progress=False)
                for budget in sorted(args.budgets):
                    tsnap = run_dir / f"snapshot-{budget:07d}.pt"
                    row = {**base, "variant": name, "base_sets": BASE_TUNE, "sets": sets, "budget": budget,
                           "tune_wall_s": tuned["wall_s"], "pretrain_flops": pre_flops}
                    tune_flops = load_checkpoint(tsnap)["progress"]["flops"]
                    row["tune_over_pretrain"] = round(tune_flops / pre_flops, 3)
                    prefix = f"{size}|{tag}|{teacher}|{name}|{budget}"
                    for t_max in args.t_max:
                        # Rows at the official t_max keep the keys they had before --t-max existed.
                        at = "" if t_max == T_MAX else f"@{t_max:g}"
                        score(tsnap, "1step", None, f"{prefix}|1step{at}|{args.num}|{args.seed}", row, t_max)
                        for t_mid in args.t_mid:
                            score(tsnap, "2step", t_mid, f"{prefix}|2step{t_mid}{at}|{args.num}|{args.seed}", row,
                                  t_max)


if __name__ == "__main__":
    main()
