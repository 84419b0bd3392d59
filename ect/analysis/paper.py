"""Published ECT numbers (``ect/analysis/paper_results.yaml``) and their join with our results."""

from __future__ import annotations

from importlib import resources

import pandas as pd
import yaml

PAPER_COLUMNS = ["model", "method", "sampler", "metric", "iterations", "batch_size", "value", "source", "label"]


def paper_keys() -> list[str]:
    return sorted(_load_all())


def _load_all() -> dict[str, list[dict]]:
    return yaml.safe_load((resources.files("ect.analysis") / "paper_results.yaml").read_text())


def paper_results(key: str) -> pd.DataFrame:
    """The published values for one workflow experiment key (e.g. ``cifar10``)."""
    table = _load_all()
    if key not in table:
        raise KeyError(f"no published results for {key!r}; known: {', '.join(sorted(table))}")
    return pd.DataFrame(table[key], columns=PAPER_COLUMNS)


def _matches(row: pd.Series, paper: pd.Series) -> bool:
    if (row["model"], row["method"], row["sampler"], row["metric"]) != \
            (paper["model"], paper["method"], paper["sampler"], paper["metric"]):
        return False
    if paper["method"] == "diffusion":  # the imported official checkpoint itself
        return True
    if pd.isna(paper["iterations"]) or pd.isna(paper["batch_size"]):  # budget not stated: never compared
        return False
    return row["iteration"] == paper["iterations"] and row["training_images"] == paper["iterations"] * paper[
        "batch_size"]


def join_paper(results: pd.DataFrame, paper: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Add paper value, source tag, label and difference (ours − paper) to matching rows of ``results``.

    Returns (results with the paper columns, published rows that match no result, e.g. budgets not stated).
    """
    out = results.copy()
    out[["paper", "source", "paper_label"]] = None
    used = set()
    for i, row in out.iterrows():
        for j, published in paper.iterrows():
            if _matches(row, published):
                out.loc[i, ["paper", "source", "paper_label"]] = [published["value"], published["source"],
                                                                  published["label"]]
                used.add(j)
                break
    out["paper"] = out["paper"].astype(float)
    out["difference"] = out["value"] - out["paper"]
    return out, paper.drop(index=sorted(used)).reset_index(drop=True)
