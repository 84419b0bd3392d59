"""One training loop for diffusion pretraining (EDM loss) and consistency tuning (ECT loss).

Reproducibility by construction: every random draw of iteration ``it`` comes from generators seeded by
(seed, it), so a run resumed from a checkpoint continues bit-identically, and the per-sample noise of the
global batch is the same however the batch is split over processes (DDP) or accumulation rounds.

Outputs in the run directory:
    config.yaml               resolved run config
    log.jsonl                 one line per ``log_every`` iterations
    checkpoint.pt             latest resumable state (net, EMA, optimizer, progress)
    snapshot-NNNNNNN.pt       EMA network at every budget in ``training.budgets`` and at the end
    samples-NNNNNNN.png       sample grid of each snapshot
    summary.json              written when the run completes
"""

from __future__ import annotations

import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode
from tqdm.auto import tqdm

from ect import __version__
from ect.checkpoint import atomic_write_bytes, load_checkpoint, save_checkpoint
from ect.config import ConfigError, RunConfig
from ect.data import ImageDataset, load_dataset
from ect.ema import EMA
from ect.losses import ect_loss, edm_loss, lognormal_t, mapping_r, stage_at
from ect.networks import build_network, count_parameters
from ect.precision import autocast, precision, settings

METHODS = {"diffusion": "diffusion", "ect": "consistency"}  # training method -> checkpoint kind
# Settings that may change when a run is resumed or extended; anything else must match.
RESUMABLE_CHANGES = {("training", "iterations"), ("training", "budgets"), ("training", "checkpoint_every"),
                     ("training", "log_every"), ("training", "threads"), ("training", "device")}


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str) -> Dist:
    """Join the process group that ``torchrun`` describes (gloo on CPU, nccl on CUDA); 1 process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank, world, dev)


def _seed(*parts: int) -> int:
    """A 63-bit seed derived from integers (hashing keeps streams of neighbouring iterations independent)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> np.uint64(1))


class BatchIndices:
    """Global batch ``it`` = positions it·B … it·B+B−1 of an endless stream of seeded epoch permutations."""

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            self._perms = {e: p for e, p in self._perms.items() if e >= epoch - 1}
            self._perms[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return self._perms[epoch]

    def __call__(self, it: int) -> np.ndarray:
        pos = it * self.batch_size + np.arange(self.batch_size)
        epochs = pos // self.n
        return np.concatenate([self._perm(int(e))[pos[epochs == e] % self.n] for e in np.unique(epochs)])


def learning_rate(cfg: RunConfig, it: int) -> float:
    """Base lr with optional linear warm-up and EDM2's inverse-sqrt decay lr/√max(it/decay, 1)."""
    o = cfg.optimizer
    lr = o.lr
    if o.rampup_iterations:
        lr *= min(it / o.rampup_iterations, 1.0)
    if o.decay_iterations:
        lr /= math.sqrt(max(it / o.decay_iterations, 1.0))
    return lr


def forward_flops_per_image(preset: str, **overrides: Any) -> float:
    """Forward FLOPs of one image (2 per multiply-add), counted with ``torch.utils.flop_counter``.

    The network is built on the meta device: counting needs shapes only, so this costs no compute
    even for billion-parameter presets.
    """
    with torch.device("meta"):
        net = build_network(preset, **overrides)
        x = torch.zeros([1, net.img_channels, net.img_resolution, net.img_resolution])
        labels = torch.zeros([1, net.label_dim]) if net.label_dim else None
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            net(x, torch.ones([1]), labels)
    return float(counter.get_total_flops())


def _diff_config(old: dict, new: dict, prefix: tuple = ()) -> list[str]:
    diffs = []
    for key in sorted(set(old) | set(new)):
        path = (*prefix, key)
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += _diff_config(a, b, path)
        elif a != b and path not in RESUMABLE_CHANGES:
            diffs.append(f"{'.'.join(path)}: {a!r} in the existing run, {b!r} now")
    return diffs


def network_overrides(cfg: RunConfig, dataset: ImageDataset) -> dict[str, Any]:
    over: dict[str, Any] = {"img_resolution": dataset.resolution, "img_channels": dataset.channels,
                            "label_dim": dataset.num_classes if cfg.data.conditional else 0}
    if cfg.network.dropout is not None:
        over["dropout"] = cfg.network.dropout
    return over


def prepare_run(cfg: RunConfig, method: str, out_dir: Path, init: Path | None) -> tuple[dict | None, dict | None]:
    """Validate everything that can fail cheaply; returns (init checkpoint, resume checkpoint)."""
    if method not in METHODS:
        raise ConfigError(f"unknown training method {method!r}")
    if method == "ect" and init is None:
        raise ConfigError("ECT tuning needs --init: a pretrained diffusion checkpoint")
    init_ckpt = None
    if init is not None:
        init_ckpt = load_checkpoint(init)
        if init_ckpt["network"]["preset"] != cfg.network.preset:
            raise ConfigError(f"network.preset is {cfg.network.preset!r}, but --init {init} holds a "
                              f"{init_ckpt['network']['preset']!r} network")
    resume = None
    if (out_dir / "config.yaml").is_file():
        old = yaml.safe_load((out_dir / "config.yaml").read_text())
        diffs = _diff_config(old.get("run", {}), cfg.to_dict())
        if old.get("method") != method:
            diffs.insert(0, f"method: {old.get('method')!r} in the existing run, {method!r} now")
        if diffs:
            raise ConfigError(f"{out_dir} holds a run with a different config; use a new --out or restore it:\n  "
                              + "\n  ".join(diffs))
    if (out_dir / "checkpoint.pt").is_file():
        resume = load_checkpoint(out_dir / "checkpoint.pt", kind=METHODS[method])
        if resume["progress"]["iteration"] > cfg.training.iterations:
            raise ConfigError(f"training.iterations ({cfg.training.iterations}) is below the iteration of the "
                              f"existing checkpoint ({resume['progress']['iteration']}) in {out_dir}")
    return init_ckpt, resume


def _write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def _truncate_log(path: Path, iteration: int) -> None:
    """Drop log lines past the resumed iteration (written after the checkpoint before an interruption)."""
    if path.is_file():
        lines = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln)["iteration"] <= iteration]
        _write_text(path, "".join(f"{ln}\n" for ln in lines))


def batch_split(batch_size: int, batch_per_device: int | None, world_size: int) -> tuple[int, int]:
    """(micro-batch, accumulation rounds) of each process for a global batch split over ``world_size`` processes.

    ``batch_per_device`` caps the micro-batch (None: the whole per-process batch in one round).
    """
    per_process = batch_size // world_size
    if per_process * world_size != batch_size:
        raise ConfigError(f"training.batch_size {batch_size} is not divisible by the {world_size} processes")
    micro = min(batch_per_device or per_process, per_process)
    if per_process % micro:
        raise ConfigError(f"training.batch_per_device {micro} does not divide the per-process batch {per_process}")
    return micro, per_process // micro


class TrainStep:
    """One training iteration: the global batch's data and noise, the loss of every accumulation round with its
    backward pass, the NaN guard, the optimizer step and the EMA update.

    ``train`` and ``bench/train_throughput.py`` run this same object. Numerics follow ``training.precision``
    (:mod:`ect.precision`); the step reads nothing back to the host except whether a target pass is needed,
    so loss statistics stay on the device until a log line asks for them.
    """

    def __init__(self, cfg: RunConfig, method: str, net: torch.nn.Module, ema: EMA,
                 optimizer: torch.optim.Optimizer, dataset: ImageDataset, dist: Dist) -> None:
        t = cfg.training
        self.cfg, self.method, self.net, self.ema, self.optimizer, self.dataset, self.dist = (
            cfg, method, net, ema, optimizer, dataset, dist)
        self.micro, self.rounds = batch_split(t.batch_size, t.batch_per_device, dist.world)
        self.ddp = net
        if dist.world > 1:
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                net, device_ids=[dist.device] if dist.device.type == "cuda" else None, broadcast_buffers=False)
        self.model = torch.compile(self.ddp) if t.compile else self.ddp
        self.batches = BatchIndices(len(dataset), t.batch_size, t.seed)
        self.shape = (dataset.channels, dataset.resolution, dataset.resolution)
        self.params = list(net.parameters())

    def __call__(self, it: int, images: int) -> dict[str, Any]:
        """Run iteration ``it`` (``images`` seen before it); returns device tensors ``loss`` and ``ratio`` (sums
        over the rounds of the per-round means) and ``target_pass`` (whether any r > 0 needed one)."""
        cfg, t, e, dist, micro = self.cfg, self.cfg.training, self.cfg.ect, self.dist, self.micro
        stage = stage_at(it, e.stage_length)
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(cfg, it)
        # The global batch's data and noise, identical on every process; each takes its slice.
        idx = self.batches(it)
        gen = torch.Generator(dist.device).manual_seed(_seed(t.seed, it))
        z = torch.randn([t.batch_size], generator=gen, device=dist.device)
        eps = torch.randn([t.batch_size, *self.shape], generator=gen, device=dist.device)
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = ratio_sum = torch.zeros((), device=dist.device)
        target_pass = False
        with precision(t.precision, dist.device):
            for k in range(self.rounds):
                first = (dist.rank * self.rounds + k) * micro  # this process's rows of the global batch, round k
                rows = slice(first, first + micro)
                x0, labels = self.dataset.batch(idx[rows], dist.device, cfg.data.conditional)
                if t.channels_last:
                    x0 = x0.contiguous(memory_format=torch.channels_last)
                torch.manual_seed(_seed(t.seed, it, dist.rank, k))  # dropout masks
                sync = dist.world == 1 or k == self.rounds - 1
                with (self.ddp.no_sync() if not sync else nullcontext()), autocast(t.precision, dist.device):
                    if self.method == "diffusion":
                        sigma = lognormal_t(z[rows], cfg.diffusion.P_mean, cfg.diffusion.P_std)
                        loss = edm_loss(self.model, x0, labels, sigma, eps[rows])
                    else:
                        tt = lognormal_t(z[rows], e.P_mean, e.P_std)
                        r = mapping_r(tt, stage, e.mapping, e.q, e.k, e.b)
                        loss = ect_loss(self.model, x0, labels, tt, r, eps[rows], c=e.c, weighting=e.weighting)
                        target_pass = target_pass or bool((r > 0).any())
                        ratio_sum = ratio_sum + (r / tt).mean().detach()
                    # Mean over the global batch: DDP averages over processes, hence the factor world.
                    (loss.float().sum() * (dist.world / t.batch_size)).backward()
                loss_sum = loss_sum + loss.detach().float().mean()
        grads = [p.grad for p in self.params if p.grad is not None]
        for g in grads:  # as the official loop: NaN → 0, ±inf → ±1e5
            torch.nan_to_num(g, nan=0.0, posinf=1e5, neginf=-1e5, out=g)
        self.optimizer.step()
        self.ema.update(self.net, images, t.batch_size)
        return {"loss": loss_sum, "ratio": ratio_sum, "target_pass": target_pass, "stage": stage}


def run_numerics(cfg: RunConfig, device: torch.device) -> dict[str, Any]:
    """The numerics a run's steps use, as recorded in its config.yaml and log lines."""
    t = cfg.training
    return {**settings(t.precision, device), "compile": t.compile, "channels_last": t.channels_last}


def train(cfg: RunConfig, method: str, out_dir: str | Path, init: str | Path | None = None,
          progress: bool = True) -> dict[str, Any]:
    """Train (``method`` = "diffusion" or "ect") into ``out_dir``, resuming from its checkpoint if present."""
    out_dir = Path(out_dir)
    init = Path(init) if init is not None else None
    t = cfg.training
    dist = setup_distributed(t.device)
    batch_split(t.batch_size, t.batch_per_device, dist.world)  # fails early on a bad split
    if t.threads:
        torch.set_num_threads(t.threads)
    init_ckpt, resume = prepare_run(cfg, method, out_dir, init)
    dataset = load_dataset(cfg.data.name, cfg.data.split, cfg.data.data_dir)
    if cfg.data.conditional and dataset.num_classes == 0:
        raise ConfigError(f"data.conditional: dataset {cfg.data.name!r} has no labels")

    if dist.main:
        out_dir.mkdir(parents=True, exist_ok=True)
        _write_text(out_dir / "config.yaml", yaml.safe_dump(
            {"method": method, "init": str(init) if init else None, "ect_version": __version__,
             "torch_version": str(torch.__version__), "world_size": dist.world,
             "numerics": run_numerics(cfg, dist.device), "run": cfg.to_dict()}, sort_keys=False))

    # Network, EMA, optimizer. Identical seeds give identical initial weights on every process.
    torch.manual_seed(t.seed)
    overrides = network_overrides(cfg, dataset)
    net = build_network(cfg.network.preset, **overrides).to(dist.device).train().requires_grad_(True)
    if init_ckpt is not None:  # tuning starts from the pretrained EMA weights (official ECT)
        net.load_state_dict(init_ckpt["ema"])
    if t.channels_last:
        net = net.to(memory_format=torch.channels_last)
    ema = EMA(net, cfg.ema)
    opt_cls = {"adam": torch.optim.Adam, "radam": torch.optim.RAdam}[cfg.optimizer.name]
    # foreach: one fused kernel per state tensor kind instead of a Python loop per parameter (also on CPU).
    optimizer = opt_cls(net.parameters(), lr=cfg.optimizer.lr, betas=tuple(cfg.optimizer.betas), eps=cfg.optimizer.eps,
                        foreach=True)
    it, images, flops = 0, 0, 0.0
    if resume is not None:
        net.load_state_dict(resume["net"])
        ema.net.load_state_dict(resume["ema"])
        optimizer.load_state_dict(resume["optimizer"])
        it, images, flops = (resume["progress"][k] for k in ("iteration", "images", "flops"))
    flops_fwd = forward_flops_per_image(cfg.network.preset, **overrides)
    num_params = count_parameters(net)

    step = TrainStep(cfg, method, net, ema, optimizer, dataset, dist)
    numerics = run_numerics(cfg, dist.device)
    kind = METHODS[method]
    log_path = out_dir / "log.jsonl"
    if dist.main:
        _truncate_log(log_path, it)

    def checkpoint_meta() -> dict[str, Any]:
        return {"kind": kind, "network": {"preset": cfg.network.preset, "overrides": overrides},
                "progress": {"iteration": it, "images": images, "flops": flops,
                             "flops_per_image_forward": flops_fwd, "parameters": num_params},
                "config": cfg.to_dict(), "method": method}

    start, interval_start, interval = time.time(), time.time(), {"loss": 0.0, "ratio": 0.0, "n": 0}
    bar = tqdm(total=t.iterations, initial=it, desc=f"{method} {cfg.network.preset}", unit="it",
               disable=not (progress and dist.main))
    while it < t.iterations:
        out = step(it, images)
        interval["loss"] = interval["loss"] + out["loss"]
        interval["ratio"] = interval["ratio"] + out["ratio"]
        interval["n"] += step.rounds
        it += 1
        images += t.batch_size
        passes = 3 + int(out["target_pass"])  # forward + backward (≈2×) + the ECT target pass
        flops += passes * flops_fwd * t.batch_size
        bar.update(1)

        if dist.main and (it % t.log_every == 0 or it == t.iterations):
            now = time.time()
            n = max(interval["n"], 1)
            record = {"iteration": it, "images": images, "loss": float(interval["loss"]) / n,
                      "stage": out["stage"], "r_over_t": float(interval["ratio"]) / n,
                      "lr": learning_rate(cfg, it - 1),
                      "img_per_s": interval["n"] / step.rounds * t.batch_size / max(now - interval_start, 1e-9),
                      "elapsed_s": now - start, "flops": flops, "numerics": numerics}
            with log_path.open("a") as f:
                f.write(json.dumps(record) + "\n")
            bar.set_postfix(loss=f"{record['loss']:.4g}", stage=out["stage"])
            interval_start, interval = now, {"loss": 0.0, "ratio": 0.0, "n": 0}
        if dist.main and (it in t.budgets or it == t.iterations):
            meta = checkpoint_meta()
            save_checkpoint(out_dir / f"snapshot-{it:07d}.pt", {**meta, "ema": ema.net.state_dict()})
            if cfg.sampling.grid_size:
                write_sample_grid(ema.net, kind, cfg, out_dir / f"samples-{it:07d}.png", dist.device)
        if dist.main and (it % t.checkpoint_every == 0 or it == t.iterations):
            save_checkpoint(out_dir / "checkpoint.pt", {**checkpoint_meta(), "net": net.state_dict(),
                                                        "ema": ema.net.state_dict(),
                                                        "optimizer": optimizer.state_dict()})
    bar.close()
    summary = {"method": method, "kind": kind, "iterations": it, "images": images, "flops": flops,
               "flops_per_image_forward": flops_fwd, "parameters": num_params,
               "budgets": sorted(set([*t.budgets, t.iterations])), "wall_s": time.time() - start}
    if dist.main:
        _write_text(out_dir / "summary.json", json.dumps(summary, indent=2))
    if dist.world > 1:
        torch.distributed.barrier()
    return summary


def write_sample_grid(net: torch.nn.Module, kind: str, cfg: RunConfig, path: Path, device: torch.device) -> None:
    """A grid of the model's samples: 1-step for consistency models, Heun for diffusion models."""
    from ect.sampling import generate_images, sampler_spec
    from ect.visualize import save_image_grid

    spec = sampler_spec("1step") if kind == "consistency" else sampler_spec("heun")
    images, _ = generate_images(net, spec, list(range(cfg.sampling.grid_size)), device=device, progress=False)
    save_image_grid(images, path)

