"""Result tables as CSV (raw numbers), Markdown and LaTeX (formatted), built with pandas."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ect.analysis.collect import BASE
from ect.analysis.paper import join_paper
from ect.methods import METHODS

# Column -> header of the formatted (Markdown/LaTeX) tables.
HEADERS = {
    "model": "model", "parameters": "params", "method": "method", "iteration": "iterations",
    "training_images": "images", "training_flops": "training FLOPs", "sampler": "sampler", "nfe": "NFE",
    "metric": "metric", "value": "value", "diffusion_heun": "diffusion (Heun)", "real_data": "real data",
    "paper": "paper", "difference": "ours − paper", "source": "source", "paper_label": "paper row",
    "a": "a", "b": "b", "b_se": "s.e.(b)", "b_ci": "CI(b)", "r2": "R²", "n": "n", "flops_range": "FLOPs range",
    "setting": "setting", "change": "vs base", "value_std": "std over seeds", "seeds": "seeds",
    "total_images": "total images", "total_flops": "total FLOPs",
}
METHOD_ORDER = {name: i for i, name in enumerate(METHODS)}


def _number(x: object, spec: str) -> str:
    return "" if x is None or pd.isna(x) else format(x, spec)


def formatted(table: pd.DataFrame) -> pd.DataFrame:
    """Human-readable strings: metric values with 2 decimals, FLOPs in scientific notation, counts with commas."""
    out = table.copy()
    specs = {"value": ".2f", "value_std": ".2f", "diffusion_heun": ".2f", "real_data": ".2f", "paper": ".2f",
             "difference": "+.2f", "change": "+.2f", "training_flops": ".2e", "total_flops": ".2e",
             "parameters": ",.0f", "training_images": ",.0f", "total_images": ",.0f", "iteration": ",.0f",
             "a": ".3g", "b": ".3f", "b_se": ".3f", "r2": ".3f"}
    for column, spec in specs.items():
        if column in out:
            out[column] = [_number(x, spec) for x in out[column]]
    return out.astype(object).fillna("").rename(columns=HEADERS)


def write_table(table: pd.DataFrame, stem: Path, caption: str) -> list[Path]:
    """Write ``stem``.csv (raw), .md and .tex (formatted); returns the three paths."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(s) for s in (".csv", ".md", ".tex")]
    table.to_csv(paths[0], index=False)
    pretty = formatted(table)
    paths[1].write_text(f"{caption}\n\n{pretty.to_markdown(index=False)}\n")
    paths[2].write_text(pretty.to_latex(index=False, caption=caption, label=f"tab:{stem.name}", escape=True))
    return paths


def main_table(metrics: pd.DataFrame, paper: pd.DataFrame | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Main results: every snapshot × sampler of the main runs, next to the diffusion model's Heun result
    (and, with ``paper``, the published value, its source tag and the difference).

    Returns (table, published rows that match no result)."""
    rows = metrics[metrics["variant"] == BASE]
    heun = (rows[(rows["method"] == "diffusion") & (rows["sampler"] == "heun")]
            .set_index(["model", "metric"])["value"].rename("diffusion_heun"))
    table = rows.join(heun, on=["model", "metric"])
    table = table.assign(_order=table["method"].map(METHOD_ORDER)).sort_values(
        ["metric", "parameters", "model", "_order", "iteration", "nfe"]).drop(columns="_order")
    columns = ["model", "parameters", "method", "iteration", "training_images", "training_flops", "sampler", "nfe",
               "metric", "value", "value_std", "seeds", "diffusion_heun", "real_data"]
    table = table[columns].reset_index(drop=True)
    if paper is None:
        return table, pd.DataFrame()
    return join_paper(table, paper)


def append_published_only(table: pd.DataFrame, unmatched: pd.DataFrame) -> pd.DataFrame:
    """The main table followed by the published rows that match none of our results (value left empty)."""
    published = unmatched.rename(columns={"value": "paper", "label": "paper_label", "iterations": "iteration"})
    table = pd.concat([table, published[["model", "method", "sampler", "metric", "iteration", "paper", "source",
                                         "paper_label"]]], ignore_index=True)
    for column in ("parameters", "iteration", "training_images", "nfe"):  # published rows may lack them
        table[column] = table[column].astype("Int64")
    return table


def scaling_table(scaling: pd.DataFrame) -> pd.DataFrame:
    """The power-law fits with b's interval written as one column."""
    table = scaling.copy()
    table["b_ci"] = [f"[{lo:.3f}, {hi:.3f}]" if pd.notna(lo) else "" for lo, hi in
                     zip(table["b_ci_low"], table["b_ci_high"], strict=True)]
    table["flops_range"] = [f"{lo:.2e}–{hi:.2e}" for lo, hi in zip(table["flops_min"], table["flops_max"],
                                                                   strict=True)]
    return table[["model", "parameters", "sampler", "metric", "a", "b", "b_se", "b_ci", "r2", "n", "flops_range"]]


def ablation_table(metrics: pd.DataFrame, axis: str, base_value: str, model: str) -> pd.DataFrame:
    """One ablation axis: each value's result at the ablation budgets, and its change against the base run."""
    runs = metrics[metrics["variant"].str.startswith(f"{axis}=") & (metrics["method"] == "ect")]
    if runs.empty:
        raise ValueError(f"no ablation results for axis {axis!r}")
    base = metrics[(metrics["variant"] == BASE) & (metrics["model"] == model) & (metrics["method"] == "ect")
                   & metrics["iteration"].isin(runs["iteration"])]
    base = base.assign(variant=f"{axis}={base_value} (base)")
    table = pd.concat([base, runs], ignore_index=True).rename(columns={"variant": "setting"})
    reference = base.set_index(["iteration", "sampler", "metric"])["value"]
    table["change"] = table["value"].to_numpy() - reference.reindex(
        pd.MultiIndex.from_frame(table[["iteration", "sampler", "metric"]])).to_numpy()
    table = table.sort_values(["metric", "iteration", "nfe", "setting"], ignore_index=True)
    return table[["setting", "model", "iteration", "training_flops", "sampler", "nfe", "metric", "value", "change"]]
