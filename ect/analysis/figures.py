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
from ect.analysis.scaling import power_law
from ect.visualize import image_grid

METRIC_LABELS = {"fid": "FID", "fd_dinov2": "FD$_\\mathrm{DINOv2}$", "fd_digits": "FD (digits classifier features)"}
SAMPLER_LABELS = {"1step": "1-step", "2step": "2-step", "heun": "Heun"}

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
    """Dashed: each model's diffusion Heun result; dotted grey: what as many real images score. Returns handles."""
    handles = []
    heun = rows[(rows["method"] == "diffusion") & (rows["sampler"] == "heun")]
    for model in models:
        for value in heun.loc[heun["model"] == model, "value"]:
            ax.axhline(value, color=palette[model], ls="--", lw=1)
    if not heun.empty:
        handles.append(Line2D([], [], color="grey", ls="--", lw=1, label="diffusion model, Heun (35 NFE)"))
    real = rows["real_data"].dropna()
    if not real.empty:
        ax.axhline(real.iloc[0], color="grey", ls=":", lw=1.2)
        handles.append(Line2D([], [], color="grey", ls=":", lw=1.2, label="real data, as many samples"))
    return handles


def _scientific(value: float, _position: int) -> str:
    mantissa, exponent = f"{value:.0e}".split("e")
    power = f"10^{{{int(exponent)}}}"
    return f"${power}$" if mantissa == "1" else f"${mantissa}\\times{power}$"


def _log_axes(ax: plt.Axes) -> None:
    """Log-log axes labelled at 1, 2 and 5 × 10^k (readable on ranges shorter than a decade, never crowded):
    compute in scientific notation, metric values as plain numbers."""
    ax.set(xscale="log", yscale="log")
    for axis, formatter in ((ax.xaxis, _scientific), (ax.yaxis, lambda v, _: f"{v:g}")):
        axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(FuncFormatter(formatter))
        axis.set_minor_formatter(NullFormatter())


def _main_rows(metrics: pd.DataFrame, metric: str) -> pd.DataFrame:
    return metrics[(metrics["variant"] == BASE) & (metrics["metric"] == metric)]


def scaling_figure(metrics: pd.DataFrame, scaling: pd.DataFrame, metric: str) -> Figure:
    """Metric vs training FLOPs (log-log), one panel per sampler, one series per model size with its power law."""
    rows = _main_rows(metrics, metric)
    ect = rows[rows["method"] == "ect"]
    models, samplers = _models(ect), sorted(ect["sampler"].unique())
    palette = _palette(models)
    fig, axes = plt.subplots(1, len(samplers), figsize=(4.8 * len(samplers), 4), sharey=True, squeeze=False)
    for ax, sampler in zip(axes[0], samplers, strict=True):
        handles = []
        for model in models:
            points = ect[(ect["sampler"] == sampler) & (ect["model"] == model)]
            ax.scatter(points["training_flops"], points["value"], color=palette[model], s=30, zorder=3)
            fit = scaling[(scaling["model"] == model) & (scaling["sampler"] == sampler)
                          & (scaling["metric"] == metric)]
            label = f"{model} ({points['parameters'].iloc[0]:,} params)"
            if not fit.empty:
                f = fit.iloc[0]
                xs = np.geomspace(f["flops_min"], f["flops_max"], 50)
                ax.plot(xs, power_law(xs, f["a"], f["b"]), color=palette[model], lw=1.5)
                label += f": $b$ = {f['b']:.2f}, $R^2$ = {f['r2']:.2f}"
            handles.append(Line2D([], [], color=palette[model], marker="o", label=label))
        handles += _reference_lines(ax, rows, models, palette)
        _log_axes(ax)
        ax.set(xlabel="ECT training FLOPs", title=f"ECT {SAMPLER_LABELS.get(sampler, sampler)} sampling")
        ax.legend(handles=handles, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.15))
    axes[0][0].set_ylabel(METRIC_LABELS.get(metric, metric))
    fig.suptitle(f"{METRIC_LABELS.get(metric, metric)} against training compute, power-law fits "
                 "metric = a·C$^{-b}$", fontsize=10)
    return fig


def samplers_figure(metrics: pd.DataFrame, metric: str) -> Figure:
    """Per model size: 1-step and 2-step ECT against compute, next to the diffusion model's Heun result."""
    rows = _main_rows(metrics, metric)
    ect = rows[rows["method"] == "ect"]
    models = _models(ect)
    palette = _palette(models)
    fig, axes = plt.subplots(1, len(models), figsize=(4 * len(models), 3.6), sharey=True, squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        sns.lineplot(data=ect[ect["model"] == model], x="training_flops", y="value", style="sampler",
                     style_order=sorted(ect["sampler"].unique()), color=palette[model], markers=True, dashes=False,
                     ax=ax, legend=False)
        handles = [Line2D([], [], color=palette[model], marker=m, label=f"ECT {SAMPLER_LABELS.get(s, s)}")
                   for s, m in zip(sorted(ect["sampler"].unique()), ["o", "X", "s", "P"], strict=False)]
        handles += _reference_lines(ax, rows[rows["model"] == model], [model], palette)
        _log_axes(ax)
        ax.set(xlabel="ECT training FLOPs", title=model)
        ax.legend(handles=handles, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.15))
    axes[0][0].set_ylabel(METRIC_LABELS.get(metric, metric))
    fig.suptitle("1-step vs 2-step ECT vs the diffusion model it was tuned from", fontsize=10)
    return fig


def ablation_figure(table: pd.DataFrame, axis: str) -> Figure:
    """One ablation axis: the metric for each value (base marked), per sampler; one panel per metric and budget."""
    panels = table[["metric", "iteration"]].drop_duplicates().sort_values(["metric", "iteration"])
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6), squeeze=False)
    for ax, (metric, iteration) in zip(axes[0], panels.itertuples(index=False), strict=True):
        rows = table[(table["metric"] == metric) & (table["iteration"] == iteration)]
        rows = rows.assign(sampler=rows["sampler"].map(lambda s: SAMPLER_LABELS.get(s, s)))
        sns.barplot(data=rows, x="setting", y="value", hue="sampler", hue_order=sorted(rows["sampler"].unique()),
                    palette="deep", ax=ax)
        for container in ax.containers:
            ax.bar_label(container, fmt="%.1f", fontsize=7)
        ax.set(xlabel=axis, ylabel=METRIC_LABELS.get(metric, metric),
               title=f"{rows['model'].iloc[0]}, {iteration:,} tuning iterations")
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle(f"Ablation of {axis} (one value changed at a time)", fontsize=10)
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
