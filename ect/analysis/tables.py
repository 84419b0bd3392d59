"""Result tables as CSV (raw numbers), Markdown and LaTeX (formatted), built with pandas.

Every table shows the spread next to its means: ± one sample standard deviation over the seeds behind a mean
(evaluation seeds; training seeds where replicate runs exist). The LaTeX files are plain ASCII tabulars that need no
package beyond LaTeX itself (pdflatex), numeric columns right-aligned.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from ect.analysis.collect import BASE
from ect.analysis.paper import join_paper
from ect.analysis.scaling import AXES, FRONTIER
from ect.methods import METHODS

SAMPLER_LABELS = {"1step": "1-step", "2step": "2-step", "heun": "Heun"}
# Column -> header of the formatted (Markdown/LaTeX) tables; the main table's per-sampler columns are named below.
HEADERS = {
    "model": "model", "parameters": "params", "method": "method", "iteration": "iterations",
    "training_images": "images", "training_flops": "training FLOPs", "sampler": "sampler", "nfe": "NFE",
    "total_images": "total images", "total_flops": "total FLOPs",
    "metric": "metric", "value": "value", "heun": "Heun", "heun_std": "±", "heun_paper": "Heun paper",
    "real_data": "real data", "setting": "setting", "change": "vs base", "value_std": "±", "seeds": "seeds",
    "spread": "± combined", "beyond_spread": "beyond spread",
    "n": "n", "b": "b", "b_t_ci": "t-CI(b)", "b_boot": "boot CI(b)", "r2": "R²", "sat_E": "E", "sat_E_boot":
    "boot CI(E)", "sat_b": "b (sat.)", "sat_b_boot": "boot CI(b, sat.)", "sat_r2": "R² (sat.)",
    "holdout_value": "held out", "holdout_std": "±", "power_prediction": "paper form predicts",
    "saturating_prediction": "saturating predicts", "better_form": "better", "within_2std": "within 2 std",
    "frontier": "compute-optimal size", "source": "source",
}
SPECS = {"value": ".2f", "value_std": ".2f", "heun": ".2f", "heun_std": ".2f", "heun_paper": ".2f",
         "real_data": ".2f", "change": "+.2f", "spread": ".2f", "training_flops": ".2e", "total_flops": ".2e",
         "parameters": ",.0f", "training_images": ",.0f", "total_images": ",.0f", "iteration": ",.0f", "b": ".2f",
         "r2": ".3f", "sat_E": ".2f", "sat_b": ".2f",
         "sat_r2": ".3f", "holdout_value": ".2f", "holdout_std": ".2f", "n": ".0f"}
NUMERIC = re.compile(r"[-−+0-9.,eE%()\[\] ×]+")
# Unicode the Markdown tables use, as LaTeX writes it (pdflatex reads ASCII here).
LATEX_UNICODE = {"−": "$-$", "±": "$\\pm$", "²": "$^2$", "×": "$\\times$", "–": "--", "—": "---", "·": "$\\cdot$",
                 "≤": "$\\le$", "≥": "$\\ge$", "→": "$\\to$", "…": "\\dots{}",
                 "√": "$\\surd$"}
LATEX_SPECIAL = {"\\": "\\textbackslash{}", "&": "\\&", "%": "\\%", "$": "\\$", "#": "\\#", "_": "\\_",
                 "{": "\\{", "}": "\\}", "~": "\\textasciitilde{}", "^": "\\textasciicircum{}"}
METHOD_ORDER = {name: i for i, name in enumerate(METHODS)}


def _number(x: object, spec: str) -> str:
    return "" if x is None or pd.isna(x) else format(x, spec).replace("-", "−")


def formatted(table: pd.DataFrame) -> pd.DataFrame:
    """Human-readable strings: metric values with 2 decimals, FLOPs in scientific notation, counts with commas,
    minus signs as −; per-sampler columns of the main table (``<sampler>``, ``_std``, ``_ratio``, ``_paper``) too."""
    out = table.copy()
    for column in out.columns:
        spec = SPECS.get(column) or next((s for suffix, s in (("_std", ".2f"), ("_ratio", ".2f"), ("_paper", ".2f"))
                                          if column.endswith(suffix)), None)
        if spec is None and column in SAMPLER_LABELS:
            spec = ".2f"
        if spec is not None and pd.api.types.is_numeric_dtype(out[column]):
            out[column] = [_number(x, spec) for x in out[column]]
    return out.astype(object).fillna("").rename(columns=lambda c: HEADERS.get(c) or _sampler_header(c))


def _sampler_header(column: str) -> str:
    sampler, _, suffix = column.partition("_")
    label = SAMPLER_LABELS.get(sampler, sampler)
    return {"": label, "std": "±", "ratio": f"{label} / Heun", "paper": f"{label} paper"}.get(suffix, column)


def alignment(pretty: pd.DataFrame) -> list[str]:
    """'r' for columns whose cells are all numbers (or intervals, signs, percentages), else 'l'."""
    return ["r" if _numeric(pretty.iloc[:, i]) else "l" for i in range(pretty.shape[1])]


def _numeric(cells: pd.Series) -> bool:
    filled = [str(c) for c in cells if str(c)]
    return bool(filled) and all(NUMERIC.fullmatch(c) for c in filled)


def latex_text(text: object) -> str:
    """``text`` as LaTeX source: specials escaped, the tables' Unicode as math or dashes; other non-ASCII refused."""
    out = []
    for ch in str(text):
        if ch in LATEX_SPECIAL:
            out.append(LATEX_SPECIAL[ch])
        elif ch in LATEX_UNICODE:
            out.append(LATEX_UNICODE[ch])
        elif ord(ch) > 127:
            raise ValueError(f"no LaTeX spelling for {ch!r} in {text!r}")
        else:
            out.append(ch)
    return "".join(out)


def latex_table(pretty: pd.DataFrame, caption: str, label: str) -> str:
    """A complete ``table`` environment (tabular with \\hline rules) for pdflatex, ``caption`` already LaTeX."""
    align = "".join(alignment(pretty))
    lines = ["\\begin{table}", "\\centering", "\\small", f"\\caption{{{caption}}}", f"\\label{{{label}}}",
             f"\\begin{{tabular}}{{{align}}}", "\\hline",
             " & ".join(latex_text(c) for c in pretty.columns) + " \\\\", "\\hline"]
    lines += [" & ".join(latex_text(c) for c in row) + " \\\\" for row in pretty.itertuples(index=False)]
    lines += ["\\hline", "\\end{tabular}", "\\end{table}", ""]
    return "\n".join(lines)


def write_table(table: pd.DataFrame, stem: Path, caption: str, latex_caption: str | None = None) -> list[Path]:
    """Write ``stem``.csv (raw), .md and .tex (formatted); returns the three paths. ``latex_caption`` is LaTeX
    source (math allowed); by default ``caption`` escaped."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(s) for s in (".csv", ".md", ".tex")]
    table.to_csv(paths[0], index=False)
    pretty = formatted(table)
    align = ["right" if a == "r" else "left" for a in alignment(pretty)]
    markdown = pretty.to_markdown(index=False, colalign=align, disable_numparse=True) if len(pretty.columns) else ""
    paths[1].write_text(f"{caption}\n\n{markdown}\n")
    paths[2].write_text(latex_table(pretty, latex_caption or latex_text(caption), f"tab:{stem.name}"))
    return paths


def main_rows(metrics: pd.DataFrame, paper: pd.DataFrame | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The main runs' rows in the long format of metrics.csv, next to the diffusion model's Heun result (and, with
    ``paper``, the published value, its source tag and the difference). Returns (rows, unmatched published rows)."""
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
    """Long rows followed by the published rows that match none of our results (value left empty)."""
    published = unmatched.rename(columns={"value": "paper", "label": "paper_label", "iterations": "iteration"})
    table = pd.concat([table, published[["model", "method", "sampler", "metric", "iteration", "paper", "source",
                                         "paper_label"]]], ignore_index=True)
    for column in ("parameters", "iteration", "training_images", "nfe"):  # published rows may lack them
        table[column] = table[column].astype("Int64")
    return table


def compact(rows: pd.DataFrame) -> pd.DataFrame:
    """The paper-style main table from long rows: one row per (metric, model, budget); per few-step sampler its
    mean, ± std and ratio to the diffusion model's Heun result (and the published value where ``paper`` exists); the
    Heun result (± std) and the real-data value once per model, on its first row."""
    with_paper = "paper" in rows
    ect = rows[rows["method"] == "ect"]
    samplers = sorted(ect["sampler"].dropna().unique())
    heun = rows[(rows["method"] == "diffusion") & (rows["sampler"] == "heun")].set_index(["metric", "model"])
    index = ["metric", "model", "parameters", "iteration", "training_flops"]
    table = ect[index].drop_duplicates().sort_values(["metric", "parameters", "model", "iteration"],
                                                    na_position="last").reset_index(drop=True)
    key = pd.MultiIndex.from_frame(table[["metric", "model"]])
    first = ~table.duplicated(["metric", "model"])
    for column, source in (("heun", "value"), ("heun_std", "value_std"), ("heun_paper", "paper"),
                           ("real_data", "real_data")):
        if source == "paper" and not with_paper:
            continue
        values = heun[source].reindex(key).to_numpy() if source in heun else np.full(len(table), np.nan)
        if source == "real_data":
            values = ect.groupby(["metric", "model"])["real_data"].first().reindex(key).to_numpy()
        table[column] = np.where(first, values, np.nan)
    reference = heun["value"].reindex(key).to_numpy() if len(heun) else np.full(len(table), np.nan)
    tags = []
    for sampler in samplers:
        at = ect[ect["sampler"] == sampler].drop_duplicates(index).set_index(index)
        where = pd.MultiIndex.from_frame(table[index])
        table[sampler] = at["value"].reindex(where).to_numpy()
        table[f"{sampler}_std"] = at["value_std"].reindex(where).to_numpy()
        table[f"{sampler}_ratio"] = table[sampler].to_numpy() / reference
        if with_paper:
            table[f"{sampler}_paper"] = at["paper"].reindex(where).to_numpy()
            tags.append(at["source"].reindex(where))
    if with_paper:
        heun_tags = heun["source"].reindex(key).where(first.to_numpy()) if "source" in heun else None
        table["source"] = [" ".join(dict.fromkeys(t for t in row if isinstance(t, str) and t))
                           for row in zip(*(list(t) for t in tags), *([list(heun_tags)] if heun_tags is not None
                                                                         else []), strict=True)]
    return table


def main_table(metrics: pd.DataFrame, paper: pd.DataFrame | None = None) -> pd.DataFrame:
    """Main results, compact (:func:`compact`); with ``paper``, the published values in their own columns and the
    published rows that match none of ours as rows of their own (our columns empty)."""
    rows, unmatched = main_rows(metrics, paper)
    if paper is not None:
        rows = append_published_only(rows, unmatched)
    return compact(rows)


def _interval(low: float, high: float) -> str:
    return f"[{low:.2f}, {high:.2f}]".replace("-", "−") if pd.notna(low) and pd.notna(high) else ""


def _prediction(value: float, error: float) -> str:
    return f"{value:.2f} ({100 * error:+.0f}%)".replace("-", "−") if pd.notna(value) else ""


def scaling_table(scaling: pd.DataFrame) -> pd.DataFrame:
    """Both forms per curve (exponent with its t- and bootstrap intervals, E, R²), the held-out budget (measured ±
    std, each form's prediction and error, the better form) and the frontier lines."""
    fits = scaling[scaling["model"] != FRONTIER]
    table = fits[["model", "parameters", "sampler", "metric", "n", "b", "r2", "sat_E", "sat_b", "sat_r2",
                  "holdout_value", "holdout_std", "better_form"]].copy()
    table.insert(6, "b_t_ci", [_interval(lo, hi) for lo, hi in zip(fits["b_ci_low"], fits["b_ci_high"], strict=True)])
    table.insert(7, "b_boot", [_interval(lo, hi) for lo, hi in zip(fits["b_boot_low"], fits["b_boot_high"],
                                                                   strict=True)])
    table.insert(10, "sat_E_boot", [_interval(lo, hi) for lo, hi in zip(fits["sat_E_boot_low"],
                                                                        fits["sat_E_boot_high"], strict=True)])
    table.insert(12, "sat_b_boot", [_interval(lo, hi) for lo, hi in zip(fits["sat_b_boot_low"],
                                                                        fits["sat_b_boot_high"], strict=True)])
    for form in ("power", "saturating"):
        table.insert(table.columns.get_loc("better_form"), f"{form}_prediction",
                     [_prediction(v, e) for v, e in zip(fits[f"{form}_prediction"], fits[f"{form}_error"],
                                                        strict=True)])
    table["within_2std"] = fits["within_2std"].map({True: "yes", False: "no", "True": "yes", "False": "no"})
    table["frontier"] = ""
    lines = scaling[scaling["model"] == FRONTIER]
    frontier = pd.DataFrame({"model": [f"frontier, {AXES.get(a, a)}" for a in lines["axis"]],
                             "sampler": lines["sampler"], "metric": lines["metric"], "frontier": lines["frontier"]})
    return pd.concat([table, frontier], ignore_index=True).astype({"parameters": "Int64", "n": "Int64"})


def ablation_table(metrics: pd.DataFrame, axis: str, base_value: str, model: str) -> pd.DataFrame:
    """One ablation axis: each value's result (± std over seeds) at the ablation budgets, its change against the
    base run, the combined spread √(std² + std_base²) and whether the change exceeds it (empty where no spread
    was measured)."""
    runs = metrics[metrics["variant"].str.startswith(f"{axis}=") & (metrics["model"] == model)
                   & (metrics["method"] == "ect")]
    if runs.empty:
        raise ValueError(f"no ablation results for axis {axis!r}")
    base = metrics[(metrics["variant"] == BASE) & (metrics["model"] == model) & (metrics["method"] == "ect")
                   & metrics["iteration"].isin(runs["iteration"])]
    base = base.assign(variant=f"{axis}={base_value} (base)")
    table = pd.concat([base, runs], ignore_index=True).rename(columns={"variant": "setting"})
    where = pd.MultiIndex.from_frame(table[["iteration", "sampler", "metric"]])
    reference = base.set_index(["iteration", "sampler", "metric"])
    table["change"] = table["value"].to_numpy() - reference["value"].reindex(where).to_numpy()
    base_std = reference["value_std"].reindex(where).to_numpy()
    is_base = table["setting"].str.endswith("(base)").to_numpy()
    table["spread"] = np.where(is_base, np.nan, np.hypot(table["value_std"].to_numpy(), base_std))
    table["beyond_spread"] = [("yes" if abs(c) > s else "no") if not b and math.isfinite(s) else ""
                              for c, s, b in zip(table["change"], table["spread"], is_base, strict=True)]
    table = table.sort_values(["metric", "iteration", "nfe", "setting"], ignore_index=True)
    return table[["setting", "model", "iteration", "training_flops", "sampler", "nfe", "metric", "value", "value_std",
                  "seeds", "change", "spread", "beyond_spread"]]
