"""Resuming a run: what may change between the run directory's config and the current one, and what is loaded.

A run directory is resumed only by the config that made it (up to :data:`RESUMABLE_CHANGES`), so a result
is never a mix of two configs; the differing keys are named otherwise.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from ect.checkpoint import load_checkpoint, load_resume_checkpoint
from ect.config import ConfigError, RunConfig, merge_dicts
from ect.kinds import KIND_OF_METHOD
from ect.runs import CHECKPOINT, CONFIG

# Settings that may change when a run is resumed or extended; anything else must match.
RESUMABLE_CHANGES = {("training", "iterations"), ("training", "budgets"), ("training", "checkpoint_every"),
                     ("training", "log_every"), ("training", "threads"), ("training", "device")}


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


# The checkpoint kind each method's --init must hold (pretraining takes none).
INIT_KIND = {"ect": "diffusion"}


def check_init_kind(method: str, init: Path, init_ckpt: dict) -> None:
    """Refuse an --init checkpoint of another kind than ``method`` starts from, naming the kind it holds."""
    expected, found = INIT_KIND.get(method), init_ckpt.get("kind")
    if expected is not None and found != expected:
        raise ConfigError(f"--init {init} holds a {found} checkpoint, but {method} starts from a {expected} "
                          "checkpoint (an `ect pretrain` snapshot or an `ect import`ed network)")


def load_init(cfg: RunConfig, method: str, init: Path | None) -> dict | None:
    """Check the method and its --init checkpoint; returns the init checkpoint (None for pretraining)."""
    if method not in KIND_OF_METHOD:
        raise ConfigError(f"unknown training method {method!r}")
    if method == "ect" and init is None:
        raise ConfigError("ECT tuning needs --init: a pretrained diffusion checkpoint")
    init_ckpt = None
    if init is not None:
        init_ckpt = load_checkpoint(init)
        check_init_kind(method, init, init_ckpt)
        if init_ckpt["network"]["preset"] != cfg.network.preset:
            raise ConfigError(f"network.preset is {cfg.network.preset!r}, but --init {init} holds a "
                              f"{init_ckpt['network']['preset']!r} network")
    return init_ckpt


def load_resume(cfg: RunConfig, method: str, out_dir: Path) -> dict | None:
    """Check that ``out_dir`` holds no other run; returns the checkpoint to resume from (the previous generation
    when the latest is damaged), if any."""
    if (out_dir / CONFIG).is_file():
        old = yaml.safe_load((out_dir / CONFIG).read_text())
        # A key the run predates (added to RunConfig later, with a default that keeps the old behaviour) counts
        # as its default, so adding a config key does not orphan runs made before it.
        diffs = _diff_config(merge_dicts(RunConfig().to_dict(), old.get("run", {})), cfg.to_dict())
        if old.get("method") != method:
            diffs.insert(0, f"method: {old.get('method')!r} in the existing run, {method!r} now")
        if diffs:
            raise ConfigError(f"{out_dir} holds a run with a different config; use a new --out or restore it:\n  "
                              + "\n  ".join(diffs))
    resume = load_resume_checkpoint(out_dir / CHECKPOINT, kind=KIND_OF_METHOD[method])
    if resume is not None and resume["progress"]["iteration"] > cfg.training.iterations:
        # A run only moves forward: a budget below the state it reached cannot be made from it.
        raise ConfigError(f"training.iterations ({cfg.training.iterations}) is below the iteration of the "
                          f"existing checkpoint ({resume['progress']['iteration']}) in {out_dir}; a budget "
                          "inserted below a run's progress needs a new run directory (a new experiment name)")
    return resume
