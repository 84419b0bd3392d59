"""Tuning sweep of the arms of the embedded default's schemes comparison (iCT and ECT from scratch; CD from a
diffusion checkpoint).

Each ``--arm`` is trained on tiny-s, from scratch or (CD) from ``--init``, to ``--budget`` (total compute in units
of P, the embedded default's tiny-s pretraining: 1,000 iterations at batch 128; iterations from ``ect.schemes``, as the
workflow computes them) for every learning rate × dropout of ``--lr`` and ``--dropout``, with training seed
``--seed`` (9: a seed the reported table does not use), and each final snapshot is scored with the 1-step and
2-step samplers (``fd_digits``, 1,500 samples, evaluation seed 0). One JSON line per run goes to ``--results``;
finished rows are skipped and runs resume from their checkpoints, so an interrupted sweep continues.

    nice -n 15 python bench/calibrate_schemes.py --arm ict --arm ect-scratch --lr 5e-4 2e-3 --dropout 0.1 0.3
    nice -n 15 python bench/calibrate_schemes.py --arm cd --init results/digits/pretrain/tiny-s/snapshot-0001000.pt \
        --lr 3e-4 1e-3 2e-3 --dropout 0.1

An arm is NAME=METHOD:CONFIG[:KEY=VALUE,...] (built in: ``ict``, ``ect-scratch``, ``cd``, the embedded default's
arms). Arms whose method starts from a diffusion model (cd) need ``--init``; their budget counts its compute.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from ect.checkpoint import load_checkpoint, network_from_checkpoint
from ect.config import load_run_config
from ect.flops import forward_flops_per_image
from ect.methods import get_method
from ect.metrics import prepare_metric
from ect.sampling import generate_images, resolve_sampler
from ect.schemes import budget_iterations, passes_per_image, pretraining_flops
from ect.training import train

PRESET = "tiny-s"
UNIT = {"batch": 128, "iterations": 1000}  # the embedded default's tiny-s pretraining (config.yaml)
# The embedded default's arms (config.yaml schemes.arms), without the swept keys. Both train at pretraining's batch
# 128; ECT from scratch keeps the tuning recipe's ten stages over its run (1,125 iterations: stages of 113).
ARMS = {
    "ict": ("ict", "digits-ict", ["training.batch_size=128"]),
    "ect-scratch": ("ect", "digits-tune", ["training.batch_size=128", "ect.stage_length=113"]),
    "cd": ("cd", "digits-cd", []),
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=Path, default=Path("/tmp/ect-calibrate-schemes"), help="run directories (scratch)")
    p.add_argument("--results", type=Path,
                   default=Path(__file__).parent / "results" / "calibrate_schemes.jsonl")
    p.add_argument("--arm", action="append", default=[], help="a built-in arm or NAME=METHOD:CONFIG[:K=V,...]")
    p.add_argument("--init", type=Path, help="the diffusion checkpoint of the arms that start from one (cd): the "
                   "embedded default's results/digits/pretrain/tiny-s/snapshot-0001000.pt")
    p.add_argument("--budget", type=float, default=1.5, help="total compute in units of P")
    p.add_argument("--lr", nargs="+", type=float, default=[5e-4, 2e-3])
    p.add_argument("--dropout", nargs="+", type=float, default=[0.1, 0.3])
    p.add_argument("--seed", type=int, default=9, help="training seed (one the reported table does not use)")
    p.add_argument("--num", type=int, default=1500, help="samples per score")
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args()


def done_keys(path: Path) -> set[str]:
    if not path.is_file():
        return set()
    return {json.loads(line)["key"] for line in path.read_text().splitlines() if line.strip()}


def arm_spec(text: str) -> tuple[str, str, str, list[str]]:
    if text in ARMS:
        return (text, *ARMS[text])
    name, _, rest = text.partition("=")
    method, config, *sets = rest.split(":")
    return name, method, config, (sets[0].split(",") if sets else [])


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    metric = prepare_metric("fd_digits", "digits")
    flops = forward_flops_per_image(PRESET)
    unit = pretraining_flops(flops, UNIT["batch"], UNIT["iterations"])
    init_flops = 0.0 if args.init is None else float(load_checkpoint(args.init)["progress"]["flops"])
    for name, method, config, base in (arm_spec(a) for a in args.arm or list(ARMS)):
        pretrained = get_method(method).init == "required"
        if pretrained and args.init is None:
            raise SystemExit(f"arm {name}: method {method} starts from a diffusion model; pass --init")
        for lr in args.lr:
            for dropout in args.dropout:
                key = f"{name}|{args.budget:g}P|lr{lr:g}|dropout{dropout:g}|seed{args.seed}|{args.num}"
                if key in done_keys(args.results):  # read each time: several sweeps may share the file
                    continue
                sets = [f"network.preset={PRESET}", *base, f"optimizer.lr={lr}", f"network.dropout={dropout}",
                        f"training.seed={args.seed}", f"training.threads={args.threads}", "sampling.grid_size=0",
                        "training.budgets=[]"]
                batch = load_run_config(config, sets).training.batch_size
                iterations = budget_iterations(args.budget, unit, init_flops if pretrained else 0.0,
                                               passes_per_image(method), flops, batch)
                sets += [f"training.iterations={iterations}"]
                if method == "ict":
                    sets.append(f"ict.total_iterations={iterations}")
                run_dir = args.runs / key.replace("|", "-")
                summary = train(load_run_config(config, sets), method, run_dir, init=args.init if pretrained else None,
                                progress=False, from_scratch=not pretrained)
                ckpt = load_checkpoint(run_dir / f"snapshot-{iterations:07d}.pt")
                net = network_from_checkpoint(ckpt)
                row = {"key": key, "arm": name, "method": method, "config": config, "sets": sets,
                       "budget_p": args.budget, "iterations": iterations, "lr": lr, "dropout": dropout,
                       "seed": args.seed, "train_wall_s": round(summary["wall_s"], 1),
                       "total_p": round(ckpt["progress"]["total_flops"] / unit, 4), "num": args.num}
                for sampler in ("1step", "2step"):
                    start = time.perf_counter()
                    spec = resolve_sampler(sampler, "consistency", ckpt["config"])
                    images, _ = generate_images(net, spec, range(args.num), progress=False)
                    row[f"fd_{sampler}"] = round(metric.score(images), 3)
                    row[f"eval_{sampler}_s"] = round(time.perf_counter() - start, 2)
                with args.results.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
