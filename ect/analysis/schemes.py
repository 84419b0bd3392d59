"""The training-schemes comparison (issue 18): diffusion, CD, iCT, ECT from scratch and ECT tuning at matched compute.

Input: the tidy metrics of the comparison (``ect collect`` with variant ``<arm>/seed<N>``: one row per arm, training
seed, budget, sampler and metric, its value the mean over evaluation seeds), what each arm is (method,
initialisation, model) and each model's pretraining compute P. Total compute counts the initialisation: an arm
tuned or distilled from the pretrained model starts at P, one from scratch at 0 (the paper's Figure 2).

The table gives, per arm, budget and sampler, the mean and sample standard deviation (ddof = 1) over training seeds
and their number, and compares every scheme with ECT tuning at the same total compute and sampler: a difference is
*called* only where it exceeds the spread, |Δ| > std_a + std_b (the ± one-std error bars do not overlap), and only
with at least two seeds on each side.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter

# (method, init) -> the scheme's name in tables and legends; arms of one scheme form one line.
SCHEME_LABELS = {("diffusion", "scratch"): "diffusion", ("ect", "pretrained"): "ECT (pretraining + tuning)",
                 ("ect", "scratch"): "ECT from scratch", ("ict", "scratch"): "iCT from scratch",
                 ("cd", "pretrained"): "CD (pretraining + distillation)"}
REFERENCE = ("ect", "pretrained")  # what every other scheme is compared with
# What an arm's own compute is, in the stacked bars (the pretrained initialisation is "pretraining").
COMPUTE_KINDS = {("diffusion", "scratch"): "pretraining", ("ect", "pretrained"): "tuning",
                 ("cd", "pretrained"): "distillation", ("ect", "scratch"): "training from scratch",
                 ("ict", "scratch"): "training from scratch"}
KIND_COLOURS = {"pretraining": "#4c72b0", "tuning": "#dd8452", "distillation": "#8172b3",
                "training from scratch": "#55a868"}
# Samplers of the figure's two line panels: the consistency models' and the diffusion models' at that step count.
PANELS = (("1 step", {"consistency": "1step", "diffusion": "1step"}),
          ("2 steps (diffusion: Heun, 35 NFE)", {"consistency": "2step", "diffusion": "heun"}))
PSEUDO_HUBER_NOTE = ("CD's distance is pseudo-Huber (as iCT's), not the LPIPS of the CD paper: a distance built on "
                     "ImageNet features can leak into FID")
TABLE_COLUMNS = ["scheme", "arm", "model", "method", "init", "iteration", "total_p", "total_flops", "training_flops",
                 "training_images", "sampler", "nfe", "metric", "value", "value_std", "seeds", "difference", "call"]


@dataclass(frozen=True)
class Arm:
    """What the workflow knows about an arm: its training method, initialisation and model."""

    method: str
    init: str
    model: str

    @property
    def scheme(self) -> str:
        return SCHEME_LABELS.get((self.method, self.init), f"{self.method} ({self.init})")


def seed_rows(metrics: pd.DataFrame, arms: dict[str, Arm], units: dict[str, float]) -> pd.DataFrame:
    """One row per arm, training seed, budget, sampler and metric, with the compute columns:
    init_flops (P for a pretrained initialisation, else 0), total_flops = init + training, total_p in units of P."""
    rows = metrics.copy()
    parts = rows["variant"].str.rsplit("/seed", n=1, expand=True)
    if parts.shape[1] != 2 or parts[1].isna().any():
        raise ValueError(f"variant {rows['variant'].iloc[0]!r} is not <arm>/seed<N>")
    rows["arm"], rows["training_seed"] = parts[0], parts[1].astype(int)
    unknown = sorted(set(rows["arm"]) - set(arms))
    if unknown:
        raise ValueError(f"rows of arm {unknown[0]!r}, which is not one of the arms {sorted(arms)}")
    missing = sorted({arms[a].model for a in rows["arm"]} - set(units))
    if missing:
        raise ValueError(f"no pretraining compute P for model {missing[0]!r}")
    spec = rows["arm"].map(arms)
    rows["method"] = spec.map(lambda a: a.method)  # the arm's, also for records that predate the method field
    rows["init"] = spec.map(lambda a: a.init)
    rows["scheme"] = spec.map(lambda a: a.scheme)
    unit = rows["model"].map(units)
    rows["init_flops"] = np.where(rows["init"] == "pretrained", unit, 0.0)
    rows["total_flops"] = rows["init_flops"] + rows["training_flops"]
    rows["total_p"] = rows["total_flops"] / unit
    rows["iteration_p"] = rows["training_flops"] / rows["iteration"].clip(lower=1) / unit
    return rows


def schemes_table(metrics: pd.DataFrame, arms: dict[str, Arm], units: dict[str, float]) -> pd.DataFrame:
    """Mean, std and number of training seeds per arm, budget, sampler and metric, with the comparison against
    ECT tuning at the same total compute (``difference`` = value − ECT's; ``call`` says whether it exceeds the
    spread)."""
    rows = seed_rows(metrics, arms, units)
    keys = ["scheme", "arm", "model", "method", "init", "iteration", "sampler", "nfe", "metric"]
    table = rows.groupby(keys, sort=False).agg(
        total_p=("total_p", "mean"), total_flops=("total_flops", "mean"), training_flops=("training_flops", "mean"),
        training_images=("training_images", "mean"), iteration_p=("iteration_p", "mean"),
        value=("value", "mean"), value_std=("value", "std"), seeds=("value", "size"), real_data=("real_data", "first"),
    ).reset_index()
    table["training_images"] = table["training_images"].round().astype("int64")
    table[["difference", "call"]] = [_compare(row, table) for _, row in table.iterrows()]
    order = {label: k for k, label in enumerate(SCHEME_LABELS.values())}
    table = table.assign(_order=table["scheme"].map(order).fillna(len(order))).sort_values(
        ["metric", "model", "_order", "arm", "total_p", "nfe"], ignore_index=True)
    return table[[*TABLE_COLUMNS, "real_data"]]


def _compare(row: pd.Series, table: pd.DataFrame) -> tuple[float, str]:
    """``row`` against ECT tuning at the same model, metric, sampler and total compute (within half an iteration)."""
    if (row["method"], row["init"]) == REFERENCE:
        return np.nan, "reference"
    ref = table[(table["method"] == REFERENCE[0]) & (table["init"] == REFERENCE[1]) & (table["model"] == row["model"])
                & (table["metric"] == row["metric"]) & (table["sampler"] == row["sampler"])]
    ref = ref[(ref["total_p"] - row["total_p"]).abs() <= 0.5 * (ref["iteration_p"] + row["iteration_p"]) + 1e-9]
    if ref.empty:
        return np.nan, ""
    r = ref.iloc[0]
    difference = row["value"] - r["value"]
    if min(row["seeds"], r["seeds"]) < 2:
        return difference, "fewer than 2 seeds"
    if abs(difference) > row["value_std"] + r["value_std"]:
        return difference, "lower than ECT" if difference < 0 else "higher than ECT"
    return difference, "within the spread"


def table_caption(metric_names: list[str]) -> str:
    return ("Training schemes at matched total compute (initialisation included; P = the model's diffusion "
            "pretraining FLOPs): value = mean over training seeds, std = their sample standard deviation, seeds = "
            "their number; difference = value − ECT tuning's at the same total compute and sampler, called lower or "
            "higher only where |difference| exceeds the sum of the two stds (the ± one-std error bars do not "
            f"overlap) with ≥ 2 seeds each; {', '.join(metric_names)}: lower is better. {PSEUDO_HUBER_NOTE}.")


def _number(x: object, spec: str) -> str:
    return "" if x is None or (isinstance(x, float) and np.isnan(x)) or pd.isna(x) else format(x, spec)


HEADERS = {"scheme": "scheme", "arm": "arm", "model": "model", "iteration": "iterations", "total_p": "total (P)",
           "total_flops": "total FLOPs", "training_flops": "own FLOPs", "training_images": "images",
           "sampler": "sampler", "nfe": "NFE", "metric": "metric", "value": "mean", "value_std": "std over seeds",
           "seeds": "seeds", "difference": "vs ECT", "call": "beyond the spread?"}
FORMATS = {"iteration": ",.0f", "total_p": ".3g", "total_flops": ".2e", "training_flops": ".2e",
           "training_images": ",.0f", "value": ".2f", "value_std": ".2f", "difference": "+.2f"}


def write_schemes_table(table: pd.DataFrame, stem: Path, caption: str) -> list[Path]:
    """``stem``.csv (every column, raw numbers), .md and .tex (formatted, without method/init/real data)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(s) for s in (".csv", ".md", ".tex")]
    table.to_csv(paths[0], index=False)
    pretty = table[list(HEADERS)].astype(object).copy()
    for column, spec in FORMATS.items():
        pretty[column] = [_number(x, spec) for x in table[column]]
    pretty = pretty.fillna("").rename(columns=HEADERS)
    paths[1].write_text(f"{caption}\n\n{pretty.to_markdown(index=False, disable_numparse=True)}\n")
    paths[2].write_text(pretty.to_latex(index=False, caption=caption, label=f"tab:{stem.name}", escape=True))
    return paths


def _palette(schemes: list[str]) -> dict[str, tuple]:
    return dict(zip(schemes, sns.color_palette("deep", len(schemes)), strict=True))


def schemes_figure(metrics: pd.DataFrame, arms: dict[str, Arm], units: dict[str, float], metric: str,
                   metric_label: str | None = None) -> Figure:
    """Two panels of the metric against total compute (1 step; 2 steps, the diffusion models with Heun), one line
    per scheme with ± one std over training seeds as error bars, and a Figure-2-style panel: one stacked bar of
    compute per arm and budget (pretraining / tuning / distillation / training from scratch), its 2-step (Heun)
    result written on it."""
    table = schemes_table(metrics, arms, units)
    table = table[table["metric"] == metric]
    if table.empty:
        raise ValueError(f"no rows of metric {metric!r}")
    label = metric_label or metric
    schemes = list(dict.fromkeys(table["scheme"]))
    palette = _palette(schemes)
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6), gridspec_kw={"width_ratios": [1, 1, 1.3]})
    # Schemes at the same total compute are drawn side by side (± 1% of the compute each) so their bars stay apart.
    dodge = {scheme: 1 + 0.01 * (k - (len(schemes) - 1) / 2) for k, scheme in enumerate(schemes)}
    for ax, (title, samplers) in zip(axes[:2], PANELS, strict=True):
        for scheme in schemes:
            rows = table[table["scheme"] == scheme]
            kind = "diffusion" if (rows["method"] == "diffusion").all() else "consistency"
            rows = rows[rows["sampler"] == samplers[kind]].sort_values("total_p")
            if rows.empty:
                continue
            for model, points in rows.groupby("model", sort=False):
                name = scheme if rows["model"].nunique() == 1 else f"{scheme}, {model}"
                if kind == "diffusion":
                    name += f" ({'Heun' if samplers[kind] == 'heun' else 'raw 1-step'})"
                ax.errorbar(points["total_p"] * dodge[scheme], points["value"], yerr=points["value_std"].fillna(0.0),
                            color=palette[scheme], marker="s" if kind == "diffusion" else "o",
                            ls=":" if kind == "diffusion" else "-", capsize=3, label=name)
        real = table["real_data"].dropna()
        if not real.empty:
            ax.axhline(real.iloc[0], color="grey", ls=":", lw=1.2, label="real data, as many samples")
        ax.set(xlabel="total training compute (units of P, the diffusion pretraining)", ylabel=label, title=title)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if str(f"{v:g}")[0] in "25" else ""))
        ax.legend(fontsize=7)
    _compute_bars(axes[2], table, label)
    fig.suptitle(f"{label} of each training scheme against total compute; error bars: ± one std over training seeds "
                 "(none with one seed)", fontsize=10)
    fig.tight_layout()
    return fig


def _compute_bars(ax: plt.Axes, table: pd.DataFrame, label: str) -> None:
    """Figure 2 of the ECT paper: stacked compute per arm and budget, the 2-step (diffusion: Heun) result on top."""
    rows = table[table["sampler"].isin(["2step", "heun"])].sort_values(["total_p", "scheme"])
    rows = rows.drop_duplicates(["arm", "iteration"])
    for x, (_, row) in enumerate(rows.iterrows()):
        own = row["training_flops"] / row["total_flops"] * row["total_p"]  # the arm's own compute, in P
        bottom = 0.0
        if row["init"] == "pretrained":
            pre = row["total_p"] - own
            ax.bar(x, pre, color=KIND_COLOURS["pretraining"])
            bottom = pre
        ax.bar(x, own, bottom=bottom, color=KIND_COLOURS[COMPUTE_KINDS.get((row["method"], row["init"]),
                                                                          "training from scratch")])
        spread = "" if pd.isna(row["value_std"]) else f"\n± {row['value_std']:.2f}"
        ax.text(x, row["total_p"], f"{row['value']:.2f}{spread}\n(n={row['seeds']})", ha="center", va="bottom",
                fontsize=7)
    ax.set_xticks(range(len(rows)), [f"{s}\n{p:.3g}P" for s, p in zip(rows["scheme"], rows["total_p"], strict=True)],
                  rotation=30, ha="right", fontsize=7)
    ax.set(ylabel="total training compute (units of P)", title=f"compute and 2-step {label} (diffusion: Heun)")
    ax.margins(y=0.25)
    ax.legend(handles=[Patch(color=c, label=k) for k, c in KIND_COLOURS.items()], fontsize=7, loc="upper left")
