"""One training loop for every method of :data:`ect.methods.METHODS`: diffusion pretraining (EDM loss), ECT (from a
diffusion model or from scratch), iCT and consistency distillation (the one consistency loss, :mod:`ect.objectives`).

Reproducibility by construction: every random draw of iteration ``it`` comes from generators seeded by
(seed, it), so a run resumed from a checkpoint continues bit-identically, and the per-sample noise of the
global batch is the same however the batch is split over processes (DDP) or accumulation rounds.

A run stops at ``training.iterations`` and can be continued later to a larger value (a workflow "segment" per
compute budget): at every budget and at the end it writes the snapshot, its sample grid, the resumable checkpoint
and a state manifest. Continuing from the checkpoint gives the same weights as one uninterrupted run. The file
names of a run directory are listed, and spelled, in :mod:`ect.runs`.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from contextlib import ExitStack, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from tqdm.auto import tqdm

from ect import __version__
from ect.checkpoint import (
    CheckpointError,
    first_nonfinite,
    load_checkpoint,
    network_from_checkpoint,
    save_checkpoint,
    tensor_digest,
)
from ect.config import ConfigError, RunConfig, batch_split
from ect.data import ImageDataset, load_dataset
from ect.distributed import Dist, setup_distributed
from ect.ema import EMA
from ect.files import sha256_file, write_text
from ect.flops import forward_flops_per_image
from ect.guard import DivergenceError, PreemptedError, RunLock, StopSignals
from ect.methods import METHODS
from ect.networks import build_network, count_parameters
from ect.objectives import Batch, EMATarget, Objective
from ect.precision import autocast, precision, settings
from ect.resume import RESUMABLE_CHANGES, load_init, load_resume
from ect.runs import CHECKPOINT, CONFIG, LOG, SUMMARY, samples_name, snapshot_name, state_name


def _seed(*parts: int) -> int:
    """A 63-bit seed derived from integers (hashing keeps streams of neighbouring iterations independent)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> np.uint64(1))


# Each method draws its batches, noise and dropout masks from its own streams. With one seed for both, tuning
# would replay its teacher's pretraining draws iteration by iteration: the same images with the same ε and the
# same normal draws behind σ and t.
METHOD_STREAMS = {name: method.stream for name, method in METHODS.items()}


def stream_seed(seed: int, method: str) -> int:
    """The root seed of ``method``'s random streams in a run with ``training.seed`` = ``seed``."""
    return _seed(seed, METHOD_STREAMS[method])


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


class TrainStep:
    """One training iteration: the global batch's data and noise, the loss of every accumulation round with its
    backward pass, the NaN guard, the optimizer step and the EMA update.

    ``train`` and ``bench/train_throughput.py`` run this same object. The loss is the method's
    :class:`ect.objectives.Objective` (``teacher``: the frozen diffusion model of a distillation method; a target
    network when ``cd.target_ema`` > 0). Numerics follow ``training.precision`` (:mod:`ect.precision`); the step
    reads nothing back to the host except whether a target pass is needed, so loss statistics stay on the device
    until a log line asks for them.
    """

    def __init__(self, cfg: RunConfig, method: str, net: torch.nn.Module, ema: EMA,
                 optimizer: torch.optim.Optimizer, dataset: ImageDataset, dist: Dist,
                 teacher: torch.nn.Module | None = None) -> None:
        t = cfg.training
        self.cfg, self.method, self.net, self.ema, self.optimizer, self.dataset, self.dist = (
            cfg, method, net, ema, optimizer, dataset, dist)
        mu = getattr(getattr(cfg, METHODS[method].section), "target_ema", 0.0)
        self.target = EMATarget(net, mu) if mu > 0 else None
        self.objective = Objective(cfg, method, dataset.channels * dataset.resolution**2, teacher, self.target)
        self.micro, self.rounds = batch_split(t.batch_size, t.batch_per_device, dist.world)
        self.ddp = net
        if dist.world > 1:
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                net, device_ids=[dist.device] if dist.device.type == "cuda" else None, broadcast_buffers=False)
        self.model = torch.compile(self.ddp) if t.compile else self.ddp
        self.seed = stream_seed(t.seed, method)
        self.batches = BatchIndices(len(dataset), t.batch_size, self.seed)
        self.shape = (dataset.channels, dataset.resolution, dataset.resolution)
        self.params = list(net.parameters())

    def __call__(self, it: int, images: int) -> dict[str, Any]:
        """Run iteration ``it`` (``images`` seen before it); returns device tensors ``loss`` and ``ratio`` (sums
        over the rounds of the per-round means), ``target_pass`` (whether any r > 0 needed one) and the log's
        ``stage``."""
        cfg, t, dist, micro = self.cfg, self.cfg.training, self.dist, self.micro
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(cfg, it)
        # The global batch's data and noise, identical on every process; each takes its slice.
        idx = self.batches(it)
        gen = torch.Generator(dist.device).manual_seed(_seed(self.seed, it))
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
                torch.manual_seed(_seed(self.seed, it, dist.rank, k))  # dropout masks
                sync = dist.world == 1 or k == self.rounds - 1
                with (self.ddp.no_sync() if not sync else nullcontext()), autocast(t.precision, dist.device):
                    terms = self.objective(self.model, it, Batch(x0, labels, z[rows], eps[rows]))
                    loss = terms.loss
                    target_pass = target_pass or terms.target_pass
                    ratio_sum = ratio_sum + terms.ratio
                    # Mean over the global batch: DDP averages over processes, hence the factor world.
                    (loss.float().sum() * (dist.world / t.batch_size)).backward()
                loss_sum = loss_sum + loss.detach().float().mean()
        grads = [p.grad for p in self.params if p.grad is not None]
        for g in grads:  # as the official loop: NaN → 0, ±inf → ±1e5
            torch.nan_to_num(g, nan=0.0, posinf=1e5, neginf=-1e5, out=g)
        self.optimizer.step()
        self.ema.update(self.net, images, t.batch_size)
        if self.target is not None:
            self.target.update()
        return {"loss": loss_sum, "ratio": ratio_sum, "target_pass": target_pass, "stage": self.objective.stage(it)}


def run_numerics(cfg: RunConfig, device: torch.device) -> dict[str, Any]:
    """The numerics a run's steps use, as recorded in its config.yaml and log lines."""
    t = cfg.training
    return {**settings(t.precision, device), "compile": t.compile, "channels_last": t.channels_last}


def train(cfg: RunConfig, method: str, out_dir: str | Path, init: str | Path | None = None,
          progress: bool = True, from_scratch: bool = False) -> dict[str, Any]:
    """Train ``method`` (a key of :data:`ect.methods.METHODS`) into ``out_dir``, resuming from its checkpoint if
    present.

    ``init``: the checkpoint to start from (and, for distillation, the teacher); ``from_scratch``: start a method
    whose init is optional (ECT) from the seeded random weights instead (:func:`ect.resume.load_init` has the rules).

    The main process holds the run directory's lock throughout; SIGTERM/SIGUSR1 end the run with a checkpoint
    (:class:`ect.guard.PreemptedError`), a non-finite loss or weight with :class:`ect.guard.DivergenceError`.
    """
    with ExitStack() as guards:
        return _train(cfg, method, Path(out_dir), Path(init) if init is not None else None, progress, guards,
                      from_scratch)


def _nonfinite_iteration(losses: list[torch.Tensor], first: int, dist: Dist) -> int | None:
    """The first iteration (1-based) among ``losses`` (iterations first+1, first+2, …) whose loss is not finite,
    on any process; one host sync for the whole list."""
    bad = (~torch.isfinite(torch.stack(losses))).nonzero()
    local = first + 1 + int(bad[0]) if len(bad) else -1
    if dist.world > 1:
        flag = torch.tensor([local if local > 0 else 2**62], device=dist.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
        return None if int(flag.item()) == 2**62 else int(flag.item())
    return None if local < 0 else local


def init_compute(init_ckpt: dict[str, Any] | None) -> dict[str, float | int]:
    """The compute behind a run's starting point: the init checkpoint's total FLOPs and images (its own training
    plus what it started from), 0 from scratch; an imported model records none."""
    progress = (init_ckpt or {}).get("progress") or {}
    return {"init_flops": float(progress.get("total_flops", progress.get("flops", 0.0))),
            "init_images": int(progress.get("total_images", progress.get("images", 0)))}


def load_teacher(init_ckpt: dict[str, Any], cfg: RunConfig, device: torch.device) -> torch.nn.Module:
    """The frozen teacher of a distillation method: the init checkpoint's EMA network in eval mode, no gradients, in
    the run's memory format (its numerics follow the run's autocast)."""
    teacher = network_from_checkpoint(init_ckpt).to(device)
    if cfg.training.channels_last:
        teacher = teacher.to(memory_format=torch.channels_last)
    return teacher


def _train(cfg: RunConfig, method: str, out_dir: Path, init: Path | None, progress: bool,
           guards: ExitStack, from_scratch: bool = False) -> dict[str, Any]:
    t = cfg.training
    dist = setup_distributed(t.device)
    batch_split(t.batch_size, t.batch_per_device, dist.world)  # fails early on a bad split
    if t.threads:
        torch.set_num_threads(t.threads)
    init_ckpt = load_init(cfg, method, init, from_scratch)
    row = METHODS[method]
    dataset = load_dataset(cfg.data.name, cfg.data.split, cfg.data.data_dir)
    if cfg.data.conditional and dataset.num_classes == 0:
        raise ConfigError(f"data.conditional: dataset {cfg.data.name!r} has no labels")
    # Nothing is written before this point, so a refused call leaves no run directory behind.
    if dist.main:
        guards.enter_context(RunLock(out_dir))
    stop = guards.enter_context(StopSignals())
    resume = load_resume(cfg, method, out_dir, init)
    init_digest = tensor_digest(init_ckpt["ema"]) if init_ckpt is not None else None
    if resume is not None and row.teacher and resume.get("init_digest") != init_digest:
        raise ConfigError(f"--init {init} is not the teacher {out_dir} was distilled from (its weights differ); "
                          "pass the same checkpoint or use a new --out")

    numerics = run_numerics(cfg, dist.device)
    if dist.main:
        write_text(out_dir / CONFIG, yaml.safe_dump(
            {"method": method, "init": str(init) if init else None, "ect_version": __version__,
             "torch_version": str(torch.__version__), "world_size": dist.world,
             "numerics": numerics, "run": cfg.to_dict()}, sort_keys=False))

    # Network, EMA, optimizer. Identical seeds give identical initial weights on every process.
    torch.manual_seed(t.seed)
    overrides = network_overrides(cfg, dataset)
    net = build_network(cfg.network.preset, **overrides).to(dist.device).train().requires_grad_(True)
    if init_ckpt is not None:  # tuning and distillation start from the pretrained EMA weights (official ECT, CD)
        net.load_state_dict(init_ckpt["ema"])
    teacher = load_teacher(init_ckpt, cfg, dist.device) if row.teacher else None
    if t.channels_last:
        net = net.to(memory_format=torch.channels_last)
    ema = EMA(net, cfg.ema)
    opt_cls = {"adam": torch.optim.Adam, "radam": torch.optim.RAdam}[cfg.optimizer.name]
    # foreach: one fused kernel per state tensor kind instead of a Python loop per parameter (also on CPU).
    optimizer = opt_cls(net.parameters(), lr=cfg.optimizer.lr, betas=tuple(cfg.optimizer.betas), eps=cfg.optimizer.eps,
                        foreach=True)
    it, images, flops, teacher_flops = 0, 0, 0.0, 0.0
    start_compute = init_compute(init_ckpt)
    if resume is not None:
        net.load_state_dict(resume["net"])
        ema.net.load_state_dict(resume["ema"])
        optimizer.load_state_dict(resume["optimizer"])
        it, images, flops = (resume["progress"][k] for k in ("iteration", "images", "flops"))
        teacher_flops = resume["progress"].get("teacher_flops", 0.0)
        # What the run started from, as recorded when it started (a run that predates the record: from --init).
        start_compute = {k: resume["progress"].get(k, v) for k, v in start_compute.items()}
    flops_fwd = forward_flops_per_image(cfg.network.preset, **overrides)
    teacher_fwd = (forward_flops_per_image(init_ckpt["network"]["preset"], **init_ckpt["network"].get("overrides", {}))
                   if teacher is not None else 0.0)
    num_params = count_parameters(net)

    step = TrainStep(cfg, method, net, ema, optimizer, dataset, dist, teacher)
    if resume is not None and step.target is not None:
        step.target.net.load_state_dict(resume["target"])
    kind = row.kind
    log_path = out_dir / LOG
    if dist.main:
        _truncate_log(log_path, it)

    def run_progress() -> dict[str, Any]:
        return {"iteration": it, "images": images, "flops": flops, "flops_per_image_forward": flops_fwd,
                "parameters": num_params, "teacher_flops": teacher_flops, **start_compute,
                "total_flops": start_compute["init_flops"] + flops,
                "total_images": start_compute["init_images"] + images}

    def checkpoint_meta() -> dict[str, Any]:
        meta = {"kind": kind, "network": {"preset": cfg.network.preset, "overrides": overrides},
                "progress": run_progress(), "config": cfg.to_dict(), "method": method}
        return meta if init_digest is None else {**meta, "init_digest": init_digest}

    def write_checkpoint() -> None:
        target = {} if step.target is None else {"target": step.target.net.state_dict()}
        save_checkpoint(out_dir / CHECKPOINT, {**checkpoint_meta(), "net": net.state_dict(),
                                                "ema": ema.net.state_dict(),
                                                "optimizer": optimizer.state_dict(), **target}, keep_previous=True)

    def write_snapshot() -> None:
        save_checkpoint(out_dir / snapshot_name(it), {**checkpoint_meta(), "ema": ema.net.state_dict()})
        if cfg.sampling.grid_size:
            write_sample_grid(ema.net, kind, cfg, out_dir / samples_name(it), dist.device)

    # A rerun that resumes at a budget it already reached (e.g. Snakemake rerunning an incomplete segment, which
    # removed its outputs first) rewrites that snapshot if it is missing or damaged, and the state manifest if it
    # is missing: the checkpoint's EMA is the snapshot's network. Snapshots of earlier budgets can only be remade
    # by retraining.
    if dist.main and resume is not None and (it in t.budgets or it == t.iterations):
        try:
            load_checkpoint(out_dir / snapshot_name(it))
        except CheckpointError as exc:
            print(f"warning: {exc}; rewriting it from the checkpoint at iteration {it}", file=sys.stderr)
            write_snapshot()
        if not (out_dir / state_name(it)).is_file():
            write_state_manifest(out_dir, cfg, checkpoint_meta()["progress"])

    # Per-iteration loss sums stay on the device until the next check (log line, checkpoint, snapshot, stop):
    # divergence is detected there with one host sync, and no write ever happens from a diverged state.
    losses: list[torch.Tensor] = []
    checked = it  # iterations up to here are known to be finite

    def check_finite() -> None:
        nonlocal losses, checked
        if losses:
            bad = _nonfinite_iteration(losses, checked, dist)
            if bad is not None:
                raise DivergenceError(f"training diverged: non-finite loss at iteration {bad} (lr {lr:g}); "
                                      f"{out_dir} keeps the last good checkpoint")
        checked, losses = it, []

    def check_weights() -> None:
        bad = first_nonfinite(net.state_dict()) or first_nonfinite(ema.net.state_dict())
        if bad is not None:
            raise DivergenceError(f"training diverged: non-finite weight {bad} after iteration {it}; "
                                  f"{out_dir} keeps the last good checkpoint")

    saved = it
    start, interval_start, interval = time.time(), time.time(), {"loss": 0.0, "ratio": 0.0, "n": 0}
    bar = tqdm(total=t.iterations, initial=it, desc=f"{method} {cfg.network.preset}", unit="it",
               disable=not (progress and dist.main))
    while it < t.iterations:
        if stop.requested(dist.world, dist.device):
            check_finite()
            if dist.main and it > saved:
                check_weights()
                write_checkpoint()
            if dist.world > 1:
                torch.distributed.barrier()
            raise PreemptedError(f"stopped by {stop.name} at iteration {it}: checkpoint written to {out_dir}; "
                                 "rerun the same command to resume")
        lr = learning_rate(cfg, it)
        out = step(it, images)
        stage = out["stage"]
        losses.append(out["loss"])
        interval["ratio"] = interval["ratio"] + out["ratio"]
        interval["n"] += step.rounds
        it += 1
        images += t.batch_size
        passes = 3 + int(out["target_pass"])  # forward + backward (≈2×) + the consistency target pass
        teacher_step = step.objective.teacher_evals * teacher_fwd * t.batch_size  # CD: the teacher's ODE step
        teacher_flops += teacher_step
        flops += passes * flops_fwd * t.batch_size + teacher_step
        bar.update(1)

        logs, snaps = it % t.log_every == 0 or it == t.iterations, it in t.budgets or it == t.iterations
        writes = snaps or it % t.checkpoint_every == 0 or it == t.iterations
        if logs or writes:  # the same iterations on every process
            interval["loss"] += float(torch.stack(losses).double().sum()) if losses else 0.0
            check_finite()
            if writes:
                check_weights()
        if dist.main and logs:
            now = time.time()
            n = max(interval["n"], 1)
            record = {"iteration": it, "images": images, "loss": interval["loss"] / n, "stage": stage,
                      "r_over_t": float(interval["ratio"]) / n, "lr": lr,
                      "img_per_s": interval["n"] / step.rounds * t.batch_size / max(now - interval_start, 1e-9),
                      "elapsed_s": now - start, "flops": flops, "numerics": numerics}
            with log_path.open("a") as f:
                f.write(json.dumps(record, allow_nan=False) + "\n")
            bar.set_postfix(loss=f"{record['loss']:.4g}", stage=stage)
            if not progress:  # a job log that `tail -f` can follow
                eta = (t.iterations - it) * (now - interval_start) / n * step.rounds
                print(f"{method} {cfg.network.preset}: iteration {it}/{t.iterations}  loss {record['loss']:.4g}  "
                      f"{record['img_per_s']:.1f} img/s  ETA {_duration(eta)}", flush=True)
            interval_start, interval = now, {"loss": 0.0, "ratio": 0.0, "n": 0}
        if dist.main and snaps:
            write_snapshot()
        if dist.main and writes:
            write_checkpoint()
            saved = it
            if snaps:  # after the checkpoint, whose digest it records
                write_state_manifest(out_dir, cfg, checkpoint_meta()["progress"])
    bar.close()
    summary = {"method": method, "kind": kind, "iterations": it, "images": images, "flops": flops,
               "flops_per_image_forward": flops_fwd, "parameters": num_params,
               **{k: v for k, v in run_progress().items() if k not in ("iteration", "images", "flops",
                                                                       "flops_per_image_forward", "parameters")},
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



def write_state_manifest(out_dir: Path, cfg: RunConfig, progress: dict[str, Any]) -> None:
    """``state-NNNNNNN.json``: the run reached this iteration, and which checkpoint held that state."""
    checkpoint = out_dir / CHECKPOINT
    manifest = {"iteration": progress["iteration"], "images": progress["images"], "flops": progress["flops"],
                "total_images": progress["total_images"], "total_flops": progress["total_flops"],
                "snapshot": snapshot_name(progress["iteration"]), "checkpoint": CHECKPOINT,
                "checkpoint_bytes": checkpoint.stat().st_size, "checkpoint_sha256": sha256_file(checkpoint),
                "config_sha256": config_digest(cfg)}
    write_text(out_dir / state_name(progress["iteration"]), json.dumps(manifest, indent=2) + "\n")


def write_sample_grid(net: torch.nn.Module, kind: str, cfg: RunConfig, path: Path, device: torch.device) -> None:
    """A grid of the model's samples: 1-step for consistency models, Heun for diffusion models."""
    from ect.sampling import generate_images, sampler_spec
    from ect.visualize import save_image_grid

    spec = sampler_spec("1step", t_max=cfg.sampling.t_max) if kind == "consistency" else sampler_spec("heun")
    images, _ = generate_images(net, spec, list(range(cfg.sampling.grid_size)), device=device, progress=False)
    save_image_grid(images, path)

