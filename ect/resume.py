"""Resuming a run: what may change between the run directory's config and the current one, and what is loaded.

A run directory is resumed only by the config that made it (up to :data:`RESUMABLE_CHANGES`), so a result
is never a mix of two configs; the differing keys are named otherwise.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from ect.checkpoint import load_checkpoint, load_resume_checkpoint
from ect.config import ConfigError, RunConfig, merge_dicts
from ect.methods import METHODS
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


def load_init(cfg: RunConfig, method: str, init: Path | None, from_scratch: bool = False) -> dict | None:
    """Check the method and its --init checkpoint against the method's row of :data:`ect.methods.METHODS`; returns
    the init checkpoint (None from random initialisation).

    ``init`` is refused, optional or required as the row says, and must hold the row's ``init_kind``. A method whose
    init is optional (ECT) starts from scratch only when asked (``from_scratch``, what ``ect train`` without --init
    means), so a tuning call that forgot its checkpoint fails instead of training something else.
    """
    if method not in METHODS:
        raise ConfigError(f"unknown training method {method!r}; choose from {sorted(METHODS)}")
    row = METHODS[method]
    if init is not None and (row.init == "refused" or from_scratch):
        raise ConfigError(f"--method {method} trains from random initialisation and takes no --init (got {init})")
    if init is None and (row.init == "required" or (row.init == "optional" and not from_scratch)):
        what = "the teacher" if row.teacher else "the checkpoint to start from"
        alternative = " (or `ect train --method ect` without --init: from scratch)" if row.init == "optional" else ""
        raise ConfigError(f"--method {method} needs --init: {what}, a {row.init_kind} checkpoint{alternative}")
    if from_scratch and row.init == "required":
        raise ConfigError(f"--method {method} cannot start from scratch: it needs --init, a {row.init_kind} checkpoint")
    init_ckpt = None
    if init is not None:
        init_ckpt = load_checkpoint(init)
        if init_ckpt["kind"] != row.init_kind:
            raise ConfigError(f"--init {init} holds a {init_ckpt['kind']} model; --method {method} needs a "
                              f"{row.init_kind} checkpoint")
        if init_ckpt["network"]["preset"] != cfg.network.preset:
            raise ConfigError(f"network.preset is {cfg.network.preset!r}, but --init {init} holds a "
                              f"{init_ckpt['network']['preset']!r} network")
    return init_ckpt


def _resolved(values: dict, method: str) -> dict:
    """The run config as the method uses it: iCT's curriculum length ``ict.total_iterations`` null means
    ``training.iterations``, so a run continued at another ``training.iterations`` would change its curriculum."""
    if METHODS[method].pairs == "ict_grid" and values.get("ict", {}).get("total_iterations") is None:
        return {**values, "ict": {**values.get("ict", {}), "total_iterations": values["training"]["iterations"]}}
    return values


def load_resume(cfg: RunConfig, method: str, out_dir: Path, init: Path | None = None) -> dict | None:
    """Check that ``out_dir`` holds no other run (config, method, and whether it started from an --init); returns
    the checkpoint to resume from (the previous generation when the latest is damaged), if any."""
    if (out_dir / CONFIG).is_file():
        old = yaml.safe_load((out_dir / CONFIG).read_text())
        # A key the run predates (added to RunConfig later, with a default that keeps the old behaviour) counts
        # as its default, so adding a config key does not orphan runs made before it.
        diffs = _diff_config(_resolved(merge_dicts(RunConfig().to_dict(), old.get("run", {})), method),
                             _resolved(cfg.to_dict(), method))
        if old.get("method") != method:
            diffs.insert(0, f"method: {old.get('method')!r} in the existing run, {method!r} now")
        elif (old.get("init") is None) != (init is None):
            diffs.insert(0, f"init: {old.get('init')!r} in the existing run, {str(init) if init else None!r} now "
                            "(a run started from a checkpoint continues from one, a run from scratch without)")
        if diffs:
            raise ConfigError(f"{out_dir} holds a run with a different config; use a new --out or restore it:\n  "
                              + "\n  ".join(diffs))
    resume = load_resume_checkpoint(out_dir / CHECKPOINT, kind=METHODS[method].kind)
    if resume is not None and resume["progress"]["iteration"] > cfg.training.iterations:
        # A run only moves forward: a budget below the state it reached cannot be made from it.
        raise ConfigError(f"training.iterations ({cfg.training.iterations}) is below the iteration of the "
                          f"existing checkpoint ({resume['progress']['iteration']}) in {out_dir}; a budget "
                          "inserted below a run's progress needs a new run directory (a new experiment name)")
    return resume
