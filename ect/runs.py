"""File names inside a training run directory: the one place they are spelled, for the trainer and the workflow.

    config.yaml            resolved run config
    log.jsonl              one line per ``log_every`` iterations
    checkpoint.pt          latest resumable state (net, EMA, optimizer, progress); trainer-managed, never a
                           workflow output, so Snakemake never deletes it
    checkpoint-previous.pt the generation before it, the fallback when checkpoint.pt is damaged
                           (ect.checkpoint.previous_path)
    writer.lock            held by the one process writing the run (ect.guard.RunLock)
    snapshot-NNNNNNN.pt    EMA network at a compute budget
    samples-NNNNNNN.png    sample grid of that snapshot
    state-NNNNNNN.json     state manifest: the run reached iteration NNNNNNN and checkpoint.pt held that state
                           (the small file a workflow segment declares as output and the next segment takes as input)
    summary.json           progress when the last invocation finished
"""

from __future__ import annotations

import json
import re
from pathlib import Path

CONFIG = "config.yaml"
LOG = "log.jsonl"
CHECKPOINT = "checkpoint.pt"
LOCK = "writer.lock"
SUMMARY = "summary.json"
# Per-iteration names, with the zero-padded iteration as {step} (also a Snakemake wildcard of that name).
SNAPSHOT = "snapshot-{step}.pt"
SAMPLES = "samples-{step}.png"
STATE = "state-{step}.json"
_STATE = re.compile(r"^state-(\d{7,})\.json$")


def step(iteration: int) -> str:
    return f"{int(iteration):07d}"


def snapshot_name(iteration: int) -> str:
    return SNAPSHOT.format(step=step(iteration))


def samples_name(iteration: int) -> str:
    return SAMPLES.format(step=step(iteration))


def state_name(iteration: int) -> str:
    return STATE.format(step=step(iteration))


def seed_suffix(eval_seed: int) -> str:
    """Evaluation-file suffix of evaluation seed K: none for 0 (the paths of single-seed studies), else -seedK."""
    return f"-seed{eval_seed}" if eval_seed else ""


def state_iterations(run_dir: str | Path) -> list[int]:
    """Iterations of the state manifests in a run directory (empty if there is none), ascending."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    return sorted(int(m[1]) for p in run_dir.iterdir() if (m := _STATE.match(p.name)))


def read_state(run_dir: str | Path, iteration: int) -> dict:
    return json.loads((Path(run_dir) / state_name(iteration)).read_text())
