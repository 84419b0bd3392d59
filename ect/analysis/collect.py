"""Collect ``ect evaluate`` records into one tidy table: one row per (run, snapshot, sampler, metric).

Records of the same evaluation with different seeds become one row: evaluation seeds (disjoint sample sets) and the
workflow's replicate runs (other training seeds, labelled like the main run) alike. ``value`` is their mean,
``value_std`` the sample standard deviation over them (ddof = 1; empty for one record), ``seeds`` their count and
``evaluation`` the records' paths joined by ";".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ect.kinds import METHOD_OF_KIND

# training_* count the run's own compute; total_* add the compute of its starting point (the pretraining an ECT run
# tuned, the teacher a CD run distilled): docs/metrics-columns.md. The totals come last so that the earlier columns
# keep their positions.
COLUMNS = ["experiment", "model", "parameters", "method", "variant", "iteration", "training_images", "training_flops",
           "sampler", "nfe", "metric", "value", "num_samples", "real_data", "evaluation", "value_std", "seeds",
           "total_images", "total_flops"]
BASE = "base"  # variant of the main runs; ablation runs are named "<axis>=<value>"


@dataclass(frozen=True)
class Evaluation:
    """One evaluation record and what the workflow knows about it: the model name and the run variant."""

    model: str
    variant: str
    path: Path


def evaluation_row(experiment: str, item: Evaluation) -> dict:
    record = json.loads(Path(item.path).read_text())
    return {
        "experiment": experiment,
        "model": item.model,
        "parameters": record["num_parameters"],
        # Records written before the method field: the default method of the checkpoint's kind.
        "method": record.get("method") or METHOD_OF_KIND[record["checkpoint_kind"]],
        "variant": item.variant,
        "iteration": record["iteration"],
        "training_images": record["training_images"],
        "training_flops": record["training_flops"],
        # Records written before the totals: a run's total is its own compute.
        "total_images": record.get("total_images", record["training_images"]),
        "total_flops": record.get("total_flops", record["training_flops"]),
        "sampler": record["sampler"]["sampler"],
        "nfe": record["nfe"],
        "metric": record["metric"],
        "value": record["value"],
        "num_samples": record["num_samples"],
        "real_data": record["real_data"],
        "evaluation": str(item.path),
    }


def collect(experiment: str, items: list[Evaluation]) -> pd.DataFrame:
    """The tidy metrics table, sorted by model size, method, variant, iteration, sampler and metric."""
    if not items:
        raise ValueError("no evaluation records to collect")
    records = pd.DataFrame([evaluation_row(experiment, item) for item in items])
    keys = [c for c in COLUMNS if c not in ("value", "evaluation", "value_std", "seeds")]
    table = records.groupby(keys, dropna=False, sort=False).agg(
        value=("value", "mean"), value_std=("value", "std"), seeds=("value", "size"),
        evaluation=("evaluation", ";".join)).reset_index()[COLUMNS]
    return table.sort_values(["parameters", "model", "method", "variant", "iteration", "sampler", "metric"],
                             ignore_index=True)
