"""Figures of a study (seaborn/matplotlib, Agg backend), each saved as PNG and PDF."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import yaml

matplotlib.use("Agg")  # files only: no display on cluster nodes or in CI

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from ect.analysis.collect import BASE
from ect.analysis.scaling import (
    AXES,
    EXTRAPOLATION,
    FRONTIER,
    TOTAL_FLOPS,
    form_params,
    frontier,
    holdout_fits,
    predict,
    total_flops,
)
from ect.visualize import image_grid

METRIC_LABELS = {"fid": "FID", "fd_dinov2": "FD$_\\mathrm{DINOv2}$", "fd_digits": "FD (digits classifier features)"}
SAMPLER_LABELS = {"1step": "1-step", "2step": "2-step", "heun": "Heun"}
FORM_NAMES = {"power": "paper's form", "saturating": "saturating"}

sns.set_theme(style="whitegrid", context="paper")


def save_figure(fig: Figure, stem: Path) -> list[Path]:
    """Write ``stem``.png (150 dpi) and ``stem``.pdf; returns both paths."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    for path in paths:
        fig.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(fig)
    return paths


def _models(rows: pd.DataFrame) -> list[str]:
    """Model names, smallest first."""
    return list(rows.sort_values("parameters").drop_duplicates("model")["model"])


def _palette(models: list[str]) -> dict[str, tuple]:
    return dict(zip(models, sns.color_palette("viridis", len(models)), strict=True))


def _reference_lines(ax: plt.Axes, rows: pd.DataFrame, models: list[str], palette: dict) -> list[Line2D]:
    """Dashed: each model's diffusion Heun result with a ± std band; dotted grey: what as many real images score.
    Returns legend handles."""
    handles = []
    heun = rows[(rows["method"] == "diffusion") & (rows["sampler"] == "heun")]
    for model in models:
        for value, std in heun.loc[heun["model"] == model, ["value", "value_std"]].itertuples(index=False):
            ax.axhline(value, color=palette[model], ls="--", lw=1)
            if pd.notna(std):
                ax.axhspan(value - std, value + std, color=palette[model], alpha=0.12, lw=0)
    if not heun.empty:
        handles.append(Line2D([], [], color="grey", ls="--", lw=1, label="diffusion model, Heun (35 NFE) ± std"))
    real = rows["real_data"].dropna()
    if not real.empty:
        ax.axhline(real.iloc[0], color="grey", ls=":", lw=1.2)
        handles.append(Line2D([], [], color="grey", ls=":", lw=1.2, label="real data, as many samples"))
    return handles


def _errorbars(ax: plt.Axes, x: pd.Series, rows: pd.DataFrame, color: tuple, **style: object) -> None:
    """Means with ± one std over seeds (no bar where one record)."""
    ax.errorbar(x, rows["value"], yerr=rows["value_std"].fillna(0.0), color=color, capsize=2.5, elinewidth=1,
                **style)


def _scientific(value: float, _position: int) -> str:
    mantissa, exponent = f"{value:.0e}".split("e")
    power = f"10^{{{int(exponent)}}}"
    return f"${power}$" if mantissa == "1" else f"${mantissa}\\times{power}$"


def _log_axes(ax: plt.Axes) -> None:
    """Log-log axes labelled at 1, 2 and 5 × 10^k, or 1, 2, 3, 5 and 7 × 10^k on ranges shorter than a decade (so
    that at least two labels show without matplotlib's linear fallback crowding them): compute in scientific
    notation, metric values as plain numbers."""
    ax.set(xscale="log", yscale="log")
    for axis, formatter, limits in ((ax.xaxis, _scientific, ax.get_xlim()), (ax.yaxis, lambda v, _: f"{v:g}",
                                                                             ax.get_ylim())):
        short = max(limits) / min(limits) < 10
        axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 3.0, 5.0, 7.0) if short else (1.0, 2.0, 5.0)))
        axis.set_major_formatter(FuncFormatter(formatter))
        axis.set_minor_formatter(NullFormatter())


def _main_rows(metrics: pd.DataFrame, metric: str) -> pd.DataFrame:
    return metrics[(metrics["variant"] == BASE) & (metrics["metric"] == metric)]


def scaling_figure(metrics: pd.DataFrame, scaling: pd.DataFrame, metric: str) -> Figure:
    """Metric against compute (log-log), one column per sampler.

    Top: tuning FLOPs; means ± std, filled where fitted, open at the held-out largest budget; each form fitted
    without it and extended to it (solid: saturating E + a·C^(−b), dashed: the paper's a·C^(−b)); the legend gives
    each form's held-out error and the better one. Bottom: each size's better form fitted on all budgets (dotted
    beyond its largest budget) against total compute (pretraining included, where known) and the frontier (black):
    the lowest prediction at each compute."""
    rows = _main_rows(metrics, metric)
    ect = rows[rows["method"] == "ect"].assign(total=total_flops(metrics))
    models, samplers = _models(ect), sorted(ect["sampler"].unique())
    palette = _palette(models)
    fits = scaling[(scaling["metric"] == metric) & (scaling["model"] != FRONTIER)]
    axis = TOTAL_FLOPS if len(fits) and fits["pretrain_flops"].notna().all() else "training_flops"
    fig, axes = plt.subplots(2, len(samplers), figsize=(4.8 * len(samplers), 8.4), sharey=True, squeeze=False)
    for column, sampler in enumerate(samplers):
        top, bottom = axes[0][column], axes[1][column]
        handles, lower = [], []
        for model in models:
            points = ect[(ect["sampler"] == sampler) & (ect["model"] == model)].sort_values("training_flops")
            fit = fits[(fits["model"] == model) & (fits["sampler"] == sampler)]
            color = palette[model]
            label = f"{model} ({points['parameters'].iloc[0]:,} params)"
            fitted, held = points.iloc[:-1], points.iloc[-1:]
            _errorbars(top, fitted["training_flops"], fitted, color, fmt="o", ms=5, zorder=3)
            _errorbars(top, held["training_flops"], held, color, fmt="o", ms=6, mfc="white", zorder=3)
            if len(fit):
                f = fit.iloc[0]
                x = np.geomspace(points["training_flops"].min(), points["training_flops"].max(), 60)
                for form, params in holdout_fits(points["training_flops"], points["value"]).items():
                    if params is not None:
                        top.plot(x, predict(form, params, x), color=color, lw=1.3,
                                 ls="-" if form == "saturating" else "--")
                errors = ", ".join(f"{name} {100 * f[f'{form}_error']:+.0f}%" for form, name in
                                   (("power", "paper"), ("saturating", "sat.")) if pd.notna(f[f"{form}_error"]))
                if errors:
                    label += f": held-out error {errors} (better: {FORM_NAMES[f['better_form']]})"
                params = form_params(f, f["better_form"])
                if params is not None:
                    offset = f["pretrain_flops"] if axis == TOTAL_FLOPS else 0.0
                    inside = np.geomspace(f["flops_min"], f["flops_max"], 40)
                    beyond = np.geomspace(f["flops_max"], EXTRAPOLATION * f["flops_max"], 20)
                    bottom.plot(inside + offset, predict(f["better_form"], params, inside), color=color, lw=1.3)
                    bottom.plot(beyond + offset, predict(f["better_form"], params, beyond), color=color, lw=1.3,
                                ls=":")
                    lower.append(f)
            _errorbars(bottom, points["total" if axis == TOTAL_FLOPS else "training_flops"], points, color, fmt="o",
                       ms=4, zorder=3)
            handles.append(Line2D([], [], color=color, marker="o", label=label))
        if lower:
            curve = frontier(pd.DataFrame(lower), axis)
            bottom.plot(curve["flops"], curve["value"], color="black", lw=2.5, alpha=0.6, zorder=2)
        style = [Line2D([], [], color="grey", marker="o", ls="", label="fitted budgets (mean ± std)"),
                 Line2D([], [], color="grey", marker="o", mfc="white", ls="", label="held out (largest budget)"),
                 Line2D([], [], color="grey", ls="-", label="saturating form E + a·C$^{-b}$"),
                 Line2D([], [], color="grey", ls="--", label="paper's form a·C$^{-b}$")]
        handles += style + _reference_lines(top, rows, models, palette)
        _reference_lines(bottom, rows, models, palette)
        for ax in (top, bottom):
            _log_axes(ax)
        name = SAMPLER_LABELS.get(sampler, sampler)
        top.set(xlabel="ECT training FLOPs", title=f"ECT {name}: fits without the largest budget")
        bottom.set(xlabel=AXES[axis].replace("tuning", "ECT training"),
                   title=f"ECT {name}: better form per size; frontier (black)")
        top.legend(handles=handles, fontsize=6.5, loc="upper center", bbox_to_anchor=(0.5, -0.2))
        bottom.legend(handles=[Line2D([], [], color="black", lw=2.5, alpha=0.6, label="frontier: lowest prediction"),
                               Line2D([], [], color="grey", ls=":", label=f"extrapolated (≤ {EXTRAPOLATION:g}× the "
                                                                            "largest budget)")],
                      fontsize=6.5, loc="upper center", bbox_to_anchor=(0.5, -0.2))
    for row in axes:
        row[0].set_ylabel(f"{METRIC_LABELS.get(metric, metric)} (mean ± std over seeds)")
    fig.suptitle(f"{METRIC_LABELS.get(metric, metric)} against compute: which form predicts the largest budget, and "
                 "which size is best per compute", fontsize=10)
    fig.subplots_adjust(hspace=1.0)
    return fig


def samplers_figure(metrics: pd.DataFrame, metric: str) -> Figure:
    """Per model size: 1-step and 2-step ECT (mean ± std over seeds) against compute, next to the diffusion model's
    Heun result (± std band)."""
    rows = _main_rows(metrics, metric)
    ect = rows[rows["method"] == "ect"]
    models = _models(ect)
    palette = _palette(models)
    samplers = sorted(ect["sampler"].unique())
    markers = dict(zip(samplers, ["o", "X", "s", "P"], strict=False))
    fig, axes = plt.subplots(1, len(models), figsize=(4 * len(models), 3.6), sharey=True, squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        for sampler in samplers:
            points = ect[(ect["model"] == model) & (ect["sampler"] == sampler)].sort_values("training_flops")
            _errorbars(ax, points["training_flops"], points, palette[model], fmt=f"-{markers.get(sampler, 'o')}",
                       ms=5)
        handles = [Line2D([], [], color=palette[model], marker=markers.get(s, "o"), label=f"ECT "
                          f"{SAMPLER_LABELS.get(s, s)} (mean ± std)") for s in samplers]
        handles += _reference_lines(ax, rows[rows["model"] == model], [model], palette)
        _log_axes(ax)
        ax.set(xlabel="ECT training FLOPs", title=model)
        ax.legend(handles=handles, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.15))
    axes[0][0].set_ylabel(METRIC_LABELS.get(metric, metric))
    fig.suptitle("1-step vs 2-step ECT vs the diffusion model it was tuned from", fontsize=10)
    return fig


def ablation_figure(table: pd.DataFrame, axis: str) -> Figure:
    """One ablation axis: the metric (mean ± std over seeds) for each value (base marked), per sampler; one panel
    per metric and budget. A change beyond the combined spread is starred."""
    panels = table[["metric", "iteration"]].drop_duplicates().sort_values(["metric", "iteration"])
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6), squeeze=False)
    for ax, (metric, iteration) in zip(axes[0], panels.itertuples(index=False), strict=True):
        rows = table[(table["metric"] == metric) & (table["iteration"] == iteration)]
        settings, samplers = sorted(rows["setting"].unique()), sorted(rows["sampler"].unique())
        width = 0.8 / len(samplers)
        for k, (sampler, color) in enumerate(zip(samplers, sns.color_palette("deep", len(samplers)), strict=True)):
            bars = rows[rows["sampler"] == sampler].set_index("setting").reindex(settings)
            x = np.arange(len(settings)) + (k - (len(samplers) - 1) / 2) * width
            drawn = ax.bar(x, bars["value"], width, yerr=bars["value_std"].fillna(0.0), capsize=3, color=color,
                           label=SAMPLER_LABELS.get(sampler, sampler), error_kw={"elinewidth": 1})
            labels = [f"{v:.1f}" + ("*" if beyond == "yes" else "") for v, beyond in
                      zip(bars["value"], bars["beyond_spread"], strict=True)]
            ax.bar_label(drawn, labels=labels, fontsize=7, padding=2)
        ax.set_xticks(np.arange(len(settings)), [s.split("=", 1)[-1].replace(" (base)", "\n(base)") for s in settings])
        ax.set(xlabel=axis, ylabel=f"{METRIC_LABELS.get(metric, metric)} (mean ± std)",
               title=f"{rows['model'].iloc[0]}, {iteration:,} tuning iterations")
        ax.tick_params(axis="x", labelsize=8)
        ax.legend(fontsize=7)
    fig.suptitle(f"Ablation of {axis} (one value changed at a time; * = change beyond the combined spread)",
                 fontsize=10)
    return fig


def read_log(path: Path) -> pd.DataFrame:
    return pd.DataFrame([json.loads(line) for line in Path(path).read_text().splitlines() if line])


def stage_boundaries(log: Path) -> list[int]:
    """Iterations where an ECT run's stage changes, from the config.yaml that training writes next to log.jsonl."""
    run = yaml.safe_load((Path(log).parent / "config.yaml").read_text())["run"]
    length, last = run["ect"]["stage_length"], run["training"]["iterations"]
    return list(range(length, last, length))


def loss_figure(logs: list[tuple[str, str, Path]]) -> Figure:
    """Training-loss curves (one panel per method, one line per model); vertical lines mark ECT stage boundaries."""
    frames = [read_log(path).assign(model=model, method=method) for model, method, path in logs]
    data = pd.concat(frames, ignore_index=True)
    methods = [m for m in ("diffusion", "ect") if m in set(data["method"])]
    models = list(dict.fromkeys(model for model, _, _ in logs))
    palette = _palette(models)
    fig, axes = plt.subplots(1, len(methods), figsize=(5 * len(methods), 3.6), squeeze=False)
    for ax, method in zip(axes[0], methods, strict=True):
        rows = data[data["method"] == method]
        sns.lineplot(data=rows, x="iteration", y="loss", hue="model", hue_order=[m for m in models if m in
                     set(rows["model"])], palette=palette, ax=ax)
        if method == "ect":
            first = next(path for _, m, path in logs if m == "ect")
            for i, it in enumerate(stage_boundaries(first)):
                ax.axvline(it, color="grey", ls=":", lw=1, label="stage boundary" if i == 0 else None)
        ax.set(xlabel="iteration", ylabel="training loss (mean over the logging interval)",
               title="diffusion pretraining (EDM loss)" if method == "diffusion" else "ECT tuning (ECT loss)")
        ax.legend(fontsize=7)
    return fig


def samples_figure(samples: list[tuple[str, str, Path]], iteration: int | None = None,
                   metrics: pd.DataFrame | None = None, metric: str | None = None,
                   real: np.ndarray | None = None) -> Figure:
    """Image grids: one row per model, one column per sampler (``heun`` for the diffusion model, else ECT at
    ``iteration``), the same seeds everywhere; with ``real``, a first column of real images. With ``metrics``, each
    title gives the panel's ``metric`` (the real panel: what as many real images score)."""
    models = list(dict.fromkeys(model for model, _, _ in samples))
    samplers = list(dict.fromkeys(sampler for _, sampler, _ in samples))
    columns = (["real"] if real is not None else []) + samplers
    label = {"fid": "FID", "fd_dinov2": "FD$_\\mathrm{DINOv2}$", "fd_digits": "FD"}.get(metric, metric)
    fig, axes = plt.subplots(len(models), len(columns), figsize=(3.4 * len(columns), 3.7 * len(models)),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")

    def show(ax: plt.Axes, images: np.ndarray, title: str, score: float | None) -> None:
        grid = image_grid(images)
        ax.imshow(grid[..., 0] if grid.shape[2] == 1 else grid, cmap="gray", vmin=0, vmax=255,
                  interpolation="nearest")
        ax.set_title(title + (f"\n{label} {score:.1f}" if score is not None and np.isfinite(score) else ""),
                     fontsize=9)

    for model, sampler, path in samples:
        with np.load(path) as data:
            images = data["images"]
        name = ("diffusion, Heun (35 NFE)" if sampler == "heun" else
                f"ECT {SAMPLER_LABELS.get(sampler, sampler)}" + (f" ({iteration:,} it.)" if iteration else ""))
        row = axes[models.index(model)]
        show(row[columns.index(sampler)], images, f"{model}: {name}",
             _sample_score(metrics, metric, model, sampler, iteration))
        if real is not None and not row[0].images:  # as many real images as samples, once per row
            show(row[0], real[:len(images)], "real data",
                 _sample_score(metrics, metric, model, sampler, iteration, "real_data"))
    return fig


def _sample_score(metrics: pd.DataFrame | None, metric: str | None, model: str, sampler: str, iteration: int | None,
                  column: str = "value") -> float | None:
    """The main run's ``column`` for one panel: the diffusion model's Heun row, or ECT's at ``iteration``."""
    if metrics is None or metric is None:
        return None
    rows = _main_rows(metrics, metric)
    rows = rows[(rows["model"] == model) & (rows["sampler"] == sampler)]
    if sampler != "heun":
        rows = rows[(rows["method"] == "ect") & (rows["iteration"] == iteration)]
    return float(rows[column].iloc[0]) if len(rows) else None
