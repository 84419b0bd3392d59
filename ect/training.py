"""One training loop for diffusion pretraining (EDM loss) and consistency tuning (ECT loss).

Reproducibility by construction: every random draw of iteration ``it`` comes from generators seeded by
(seed, it), so a run resumed from a checkpoint continues bit-identically, and the per-sample noise of the
global batch is the same however the batch is split over processes (DDP) or accumulation rounds.

A run stops at ``training.iterations`` and can be continued later to a larger value (a workflow "segment" per
compute budget): at every budget and at the end it writes the snapshot, its sample grid, the resumable checkpoint
and a state manifest (file names: :mod:`ect.runs`). Continuing from the checkpoint gives the same weights as one
uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from tqdm.auto import tqdm

from ect import __version__
from ect.checkpoint import save_checkpoint
from ect.config import ConfigError, RunConfig, batch_split
from ect.data import ImageDataset, load_dataset
from ect.distributed import setup_distributed
from ect.ema import EMA
from ect.files import write_text
from ect.flops import forward_flops_per_image
from ect.kinds import KIND_OF_METHOD
from ect.losses import ect_loss, edm_loss, lognormal_t, mapping_r, stage_at
from ect.networks import build_network, count_parameters
from ect.resume import RESUMABLE_CHANGES, prepare_run
from ect.runs import CHECKPOINT, CONFIG, LOG, SUMMARY, samples_name, snapshot_name, state_name


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


def network_overrides(cfg: RunConfig, dataset: ImageDataset) -> dict[str, Any]:
    over: dict[str, Any] = {"img_resolution": dataset.resolution, "img_channels": dataset.channels,
                            "label_dim": dataset.num_classes if cfg.data.conditional else 0}
    if cfg.network.dropout is not None:
        over["dropout"] = cfg.network.dropout
    return over


def _truncate_log(path: Path, iteration: int) -> None:
    """Drop log lines past the resumed iteration (written after the checkpoint before an interruption)."""
    if path.is_file():
        lines = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln)["iteration"] <= iteration]
        write_text(path, "".join(f"{ln}\n" for ln in lines))


def train(cfg: RunConfig, method: str, out_dir: str | Path, init: str | Path | None = None,
          progress: bool = True) -> dict[str, Any]:
    """Train (``method`` = "diffusion" or "ect") into ``out_dir``, resuming from its checkpoint if present."""
    out_dir = Path(out_dir)
    init = Path(init) if init is not None else None
    t = cfg.training
    dist = setup_distributed(t.device)
    micro, rounds = batch_split(t.batch_size, t.batch_per_device, dist.world)
    if t.threads:
        torch.set_num_threads(t.threads)
    init_ckpt, resume = prepare_run(cfg, method, out_dir, init)
    dataset = load_dataset(cfg.data.name, cfg.data.split, cfg.data.data_dir)
    if cfg.data.conditional and dataset.num_classes == 0:
        raise ConfigError(f"data.conditional: dataset {cfg.data.name!r} has no labels")

    if dist.main:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_text(out_dir / CONFIG, yaml.safe_dump(
            {"method": method, "init": str(init) if init else None, "ect_version": __version__,
             "torch_version": str(torch.__version__), "world_size": dist.world, "run": cfg.to_dict()}, sort_keys=False))

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
    optimizer = opt_cls(net.parameters(), lr=cfg.optimizer.lr, betas=tuple(cfg.optimizer.betas), eps=cfg.optimizer.eps)
    it, images, flops = 0, 0, 0.0
    if resume is not None:
        net.load_state_dict(resume["net"])
        ema.net.load_state_dict(resume["ema"])
        optimizer.load_state_dict(resume["optimizer"])
        it, images, flops = (resume["progress"][k] for k in ("iteration", "images", "flops"))
    flops_fwd = forward_flops_per_image(cfg.network.preset, **overrides)
    num_params = count_parameters(net)

    ddp = net
    if dist.world > 1:
        ddp = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[dist.device] if dist.device.type == "cuda" else None, broadcast_buffers=False)
    model = torch.compile(ddp) if t.compile else ddp
    batches = BatchIndices(len(dataset), t.batch_size, t.seed)
    shape = (dataset.channels, dataset.resolution, dataset.resolution)
    kind = KIND_OF_METHOD[method]
    log_path = out_dir / LOG
    if dist.main:
        _truncate_log(log_path, it)
    e = cfg.ect

    def checkpoint_meta() -> dict[str, Any]:
        return {"kind": kind, "network": {"preset": cfg.network.preset, "overrides": overrides},
                "progress": {"iteration": it, "images": images, "flops": flops,
                             "flops_per_image_forward": flops_fwd, "parameters": num_params},
                "config": cfg.to_dict(), "method": method}

    def save_state() -> None:
        """Snapshot, sample grid, resumable checkpoint and the state manifest of the current iteration."""
        meta = checkpoint_meta()
        save_checkpoint(out_dir / snapshot_name(it), {**meta, "ema": ema.net.state_dict()})
        if cfg.sampling.grid_size:
            write_sample_grid(ema.net, kind, cfg, out_dir / samples_name(it), dist.device)
        if resume_it != it:  # else checkpoint.pt already holds this iteration (a finished segment rerun)
            save_checkpoint(out_dir / CHECKPOINT, {**meta, "net": net.state_dict(), "ema": ema.net.state_dict(),
                                                   "optimizer": optimizer.state_dict()})
        write_state_manifest(out_dir, cfg, meta["progress"])

    resume_it = it
    start, interval_start, interval = time.time(), time.time(), {"loss": 0.0, "ratio": 0.0, "n": 0}
    bar = tqdm(total=t.iterations, initial=it, desc=f"{method} {cfg.network.preset}", unit="it",
               disable=not (progress and dist.main))
    while it < t.iterations:
        stage = stage_at(it, e.stage_length)
        lr = learning_rate(cfg, it)
        for group in optimizer.param_groups:
            group["lr"] = lr

        # The global batch's data and noise, identical on every process; each takes its slice.
        idx = batches(it)
        gen = torch.Generator(dist.device).manual_seed(_seed(t.seed, it))
        z = torch.randn([t.batch_size], generator=gen, device=dist.device)
        eps = torch.randn([t.batch_size, *shape], generator=gen, device=dist.device)
        optimizer.zero_grad(set_to_none=True)
        target_pass = 0
        for k in range(rounds):
            first = (dist.rank * rounds + k) * micro  # this process's rows of the global batch, round k
            rows = slice(first, first + micro)
            x0, labels = dataset.batch(idx[rows], dist.device, cfg.data.conditional)
            if t.channels_last:
                x0 = x0.contiguous(memory_format=torch.channels_last)
            torch.manual_seed(_seed(t.seed, it, dist.rank, k))  # dropout masks
            sync = dist.world == 1 or k == rounds - 1
            with (ddp.no_sync() if not sync else nullcontext()), \
                    torch.autocast(dist.device.type, torch.bfloat16, enabled=t.precision == "bf16"):
                if method == "diffusion":
                    sigma = lognormal_t(z[rows], cfg.diffusion.P_mean, cfg.diffusion.P_std)
                    loss = edm_loss(model, x0, labels, sigma, eps[rows])
                    ratio = torch.zeros(())
                else:
                    tt = lognormal_t(z[rows], e.P_mean, e.P_std)
                    r = mapping_r(tt, stage, e.mapping, e.q, e.k, e.b)
                    loss = ect_loss(model, x0, labels, tt, r, eps[rows], c=e.c, weighting=e.weighting)
                    target_pass = max(target_pass, int(bool((r > 0).any())))
                    ratio = (r / tt).mean()
                # Mean over the global batch: DDP averages over processes, hence the factor world.
                (loss.float().sum() * (dist.world / t.batch_size)).backward()
            interval["loss"] += float(loss.detach().float().sum()) / micro
            interval["ratio"] += float(ratio)
            interval["n"] += 1
        for p in net.parameters():  # as the official loop: NaN → 0, ±inf → ±1e5
            if p.grad is not None:
                torch.nan_to_num(p.grad, nan=0.0, posinf=1e5, neginf=-1e5, out=p.grad)
        optimizer.step()
        ema.update(net, images, t.batch_size)
        it += 1
        images += t.batch_size
        passes = 3 if method == "diffusion" else 3 + target_pass  # forward + backward (≈2×) + target
        flops += passes * flops_fwd * t.batch_size
        bar.update(1)

        if dist.main and (it % t.log_every == 0 or it == t.iterations):
            now = time.time()
            n = max(interval["n"], 1)
            record = {"iteration": it, "images": images, "loss": interval["loss"] / n, "stage": stage,
                      "r_over_t": interval["ratio"] / n, "lr": lr,
                      "img_per_s": interval["n"] / rounds * t.batch_size / max(now - interval_start, 1e-9),
                      "elapsed_s": now - start, "flops": flops}
            with log_path.open("a") as f:
                f.write(json.dumps(record) + "\n")
            bar.set_postfix(loss=f"{record['loss']:.4g}", stage=stage)
            if not progress:  # a job log that `tail -f` can follow
                eta = (t.iterations - it) * (now - interval_start) / n * rounds
                print(f"{method} {cfg.network.preset}: iteration {it}/{t.iterations}  loss {record['loss']:.4g}  "
                      f"{record['img_per_s']:.1f} img/s  ETA {_duration(eta)}", flush=True)
            interval_start, interval = now, {"loss": 0.0, "ratio": 0.0, "n": 0}
        if dist.main and (it in t.budgets or it == t.iterations):
            save_state()
        elif dist.main and it % t.checkpoint_every == 0:
            save_checkpoint(out_dir / CHECKPOINT, {**checkpoint_meta(), "net": net.state_dict(),
                                                   "ema": ema.net.state_dict(), "optimizer": optimizer.state_dict()})
    bar.close()
    # A segment that had finished before its outputs were removed (e.g. Snakemake rerunning an incomplete job):
    # the checkpoint is at the end, so its snapshot and manifest are written again from it.
    if dist.main and it == resume_it and not (out_dir / state_name(it)).is_file():
        save_state()
    summary = {"method": method, "kind": kind, "iterations": it, "images": images, "flops": flops,
               "flops_per_image_forward": flops_fwd, "parameters": num_params,
               "budgets": sorted(set([*t.budgets, t.iterations])), "wall_s": time.time() - start}
    if dist.main:
        write_text(out_dir / SUMMARY, json.dumps(summary, indent=2))
    if dist.world > 1:
        torch.distributed.barrier()
    return summary


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def config_digest(cfg: RunConfig) -> str:
    """SHA-256 of the run config without the settings a run may change when continued (RESUMABLE_CHANGES)."""
    values = cfg.to_dict()
    for section, key in RESUMABLE_CHANGES:
        values[section].pop(key, None)
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 24):
            digest.update(block)
    return digest.hexdigest()


def write_state_manifest(out_dir: Path, cfg: RunConfig, progress: dict[str, Any]) -> None:
    """``state-NNNNNNN.json``: the run reached this iteration, and which checkpoint held that state."""
    checkpoint = out_dir / CHECKPOINT
    manifest = {"iteration": progress["iteration"], "images": progress["images"], "flops": progress["flops"],
                "snapshot": snapshot_name(progress["iteration"]), "checkpoint": CHECKPOINT,
                "checkpoint_bytes": checkpoint.stat().st_size, "checkpoint_sha256": file_sha256(checkpoint),
                "config_sha256": config_digest(cfg)}
    write_text(out_dir / state_name(progress["iteration"]), json.dumps(manifest, indent=2) + "\n")


def write_sample_grid(net: torch.nn.Module, kind: str, cfg: RunConfig, path: Path, device: torch.device) -> None:
    """A grid of the model's samples: 1-step for consistency models, Heun for diffusion models."""
    from ect.sampling import generate_images, sampler_spec
    from ect.visualize import save_image_grid

    spec = sampler_spec("1step") if kind == "consistency" else sampler_spec("heun")
    images, _ = generate_images(net, spec, list(range(cfg.sampling.grid_size)), device=device, progress=False)
    save_image_grid(images, path)

