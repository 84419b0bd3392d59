"""Scaling fits of a metric against ECT training compute C, in two forms, judged by how well they predict.

**The paper's form**, a pure power law ``metric = a·C^(−b)``: ln(metric) = ln(a) − b·ln(C) is an ordinary linear
regression, so b has the usual standard error and a Student-t confidence interval (n − 2 degrees of freedom; with two
points the line is exact and the interval undefined, NaN).

**The saturating form** ``metric = E + a·C^(−b)`` with an irreducible term E ≥ 0 (the level the curve flattens to, as
in the language-model scaling literature): see :func:`fit_saturating` for the method.

**Hold-out.** Each curve (model × sampler × metric) is also fitted without its largest budget, and each form's
prediction there is compared with the measured mean (relative error = prediction / measured − 1); the form with the
smaller absolute error is the one that predicts (``better_form``), and it draws the frontier.

**Bootstrap.** Intervals for b and E from resampling the seeds that exist (:func:`bootstrap_points`): training runs
(the main run and its replicates) with replacement, then each chosen run's evaluation seeds at every budget with
replacement. A budget with a single record stays fixed, so the intervals cover only the spread that was measured.

**Frontier.** For each compute value, which model size the fits predict best, and which others are within the
bootstrap uncertainty (:func:`frontier`); on tuning compute and on total compute (pretraining included,
:func:`total_flops`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import optimize, stats

from ect.analysis.collect import BASE

GROUP = ["experiment", "model", "parameters", "sampler", "metric"]
FORMS = ("power", "saturating")
B_MAX = 10.0  # bound on the saturating exponent: beyond it the curve is a step, not a law
EXTRAPOLATION = 4.0  # the frontier follows a model's fit up to this factor beyond its largest budget
RESAMPLES = 400  # bootstrap draws per curve
FRONTIER = "frontier"  # the `model` of the frontier rows of scaling.csv
TOTAL_FLOPS = "total_flops"  # metrics column: pretraining + tuning FLOPs of a snapshot (used when present)
AXES = {"training_flops": "tuning FLOPs", TOTAL_FLOPS: "total FLOPs (pretraining included)"}
FIT_COLUMNS = [
    *GROUP, "n", "flops_min", "flops_max", "pretrain_flops",
    "a", "b", "b_se", "b_ci_low", "b_ci_high", "r2", "b_boot_low", "b_boot_high",
    "sat_E", "sat_a", "sat_b", "sat_r2", "sat_E_boot_low", "sat_E_boot_high", "sat_b_boot_low", "sat_b_boot_high",
    "holdout_flops", "holdout_value", "holdout_std", "power_prediction", "power_error", "saturating_prediction",
    "saturating_error", "better_form", "within_2std",
    "confidence", "bootstrap", "boot_runs", "boot_records", "axis", "frontier",
]


def _check_points(x: np.ndarray, y: np.ndarray, minimum: int, what: str) -> None:
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"flops and values must be 1-d of one length, got {x.shape} and {y.shape}")
    if len(np.unique(x)) < minimum:
        raise ValueError(f"a {what} fit needs at least {minimum} distinct compute values, got {len(np.unique(x))}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y)) and np.all(x > 0) and np.all(y > 0)):
        raise ValueError("a log-space fit needs finite, positive compute and metric values")


def _r2_log(y: np.ndarray, predicted: np.ndarray) -> float:
    """R² of the fit in log space (the residuals both forms minimise)."""
    residuals = np.log(y) - np.log(predicted)
    ss_tot = float(((np.log(y) - np.log(y).mean()) ** 2).sum())
    return 1.0 - float(residuals @ residuals) / ss_tot if ss_tot > 0 else 1.0


def fit_power_law(flops: np.ndarray | list[float], values: np.ndarray | list[float],
                  confidence: float = 0.95) -> dict[str, float]:
    """The paper's form values = a·flops^(−b); returns a, b, b_se, b_ci_low, b_ci_high, r2 and n (points)."""
    x, y = np.asarray(flops, dtype=float), np.asarray(values, dtype=float)
    _check_points(x, y, 2, "power-law")
    lx, ly = np.log(x), np.log(y)
    n = len(x)
    slope, intercept = np.polyfit(lx, ly, 1)
    residuals = ly - (intercept + slope * lx)
    ss_res = float(residuals @ residuals)
    b_se, half = math.nan, math.nan
    if n > 2:
        b_se = math.sqrt(ss_res / (n - 2) / float(((lx - lx.mean()) ** 2).sum()))
        half = float(stats.t.ppf(0.5 + confidence / 2, n - 2)) * b_se
    b = -float(slope)
    a = math.exp(intercept)
    return {"a": a, "b": b, "b_se": b_se, "b_ci_low": b - half, "b_ci_high": b + half,
            "r2": _r2_log(y, power_law(x, a, b)), "n": n}


def power_law(flops: np.ndarray | float, a: float, b: float) -> np.ndarray | float:
    """The paper's form a·C^(−b)."""
    return a * np.power(flops, -b)


def saturating_law(flops: np.ndarray | float, E: float, a: float, b: float) -> np.ndarray | float:
    """The saturating form E + a·C^(−b)."""
    return E + a * np.power(flops, -b)


def fit_saturating(flops: np.ndarray | list[float], values: np.ndarray | list[float],
                   starts: list[tuple[float, float, float]] | None = None) -> dict[str, float]:
    """Fit values = E + a·flops^(−b) with 0 ≤ E ≤ min(values), a ≥ 0, 0 ≤ b ≤ B_MAX; returns E, a, b, r2, n.

    Method: bounded nonlinear least squares (``scipy.optimize.least_squares``, trust-region reflective) on the
    log residuals ln(E + a·C^(−b)) − ln(value), i.e. relative errors. The metric spans orders of magnitude over the
    budgets and its seed spread grows with its value, so absolute residuals would let the smallest budget (the
    largest value) decide the fit; relative ones weigh every budget alike, as the paper form's log-log regression
    does, so the two forms' residuals and R² compare. Compute is divided by the geometric mean of the fitted values
    (C₀) inside the fit, so that a, b and E are of similar size; a is reported in the original units (a₀·C₀^b).

    Initialisation: E₀ = 0, ¼, ½, ¾ and 0.95 × the smallest value, each with a₀ and b₀ from the log-log line through
    (C, value − E₀), or instead only ``starts`` (E, a, b) in the original units where given (the bootstrap starts
    from the point estimates). The start with the lowest final cost wins. Three points fit exactly; fewer are refused.
    """
    x, y = np.asarray(flops, dtype=float), np.asarray(values, dtype=float)
    _check_points(x, y, 3, "saturating")
    scale = math.exp(float(np.log(x).mean()))
    u, ly, top = x / scale, np.log(y), float(y.min())

    def residuals(p: np.ndarray) -> np.ndarray:
        return np.log(p[0] + p[1] * np.power(u, -p[2])) - ly

    def jacobian(p: np.ndarray) -> np.ndarray:
        power = np.power(u, -p[2])
        curve = p[0] + p[1] * power
        return np.stack([1 / curve, power / curve, -p[1] * power * np.log(u) / curve], axis=1)

    lower, upper = np.array([0.0, 0.0, 0.0]), np.array([top, np.inf, B_MAX])
    guesses = []
    for fraction in () if starts else (0.0, 0.25, 0.5, 0.75, 0.95):
        e0 = fraction * top
        slope, intercept = np.polyfit(np.log(u), np.log(y - e0), 1)
        guesses.append((e0, math.exp(intercept), -slope))
    guesses += [(e, a * scale ** -b, b) for e, a, b in starts or []]
    best = None
    for e0, a0, b0 in guesses:
        start = np.clip([e0, max(a0, 1e-12), b0], lower, np.minimum(upper, [top, np.inf, B_MAX]))
        start[0] = min(start[0], top * (1 - 1e-9))
        with np.errstate(all="ignore"):
            result = optimize.least_squares(residuals, start, jac=jacobian, bounds=(lower, upper), method="trf",
                                            x_scale="jac")
        if np.all(np.isfinite(result.x)) and (best is None or result.cost < best.cost):
            best = result
    E, a0, b = (float(v) for v in best.x)
    a = a0 * scale ** b
    return {"E": E, "a": a, "b": b, "r2": _r2_log(y, saturating_law(x, E, a, b)), "n": len(x)}


# Each form: its fit (flops, values) -> parameters, its curve, the parameters the curve takes, the fewest points.
FORM_SPECS: dict[str, tuple[Callable, Callable, tuple[str, ...], int]] = {
    "power": (fit_power_law, power_law, ("a", "b"), 2),
    "saturating": (fit_saturating, saturating_law, ("E", "a", "b"), 3),
}


def predict(form: str, params: dict | pd.Series, flops: np.ndarray | float) -> np.ndarray | float:
    """The fitted curve of ``form`` at ``flops``, from its parameters as fit_* returns them."""
    _, curve, names, _ = FORM_SPECS[form]
    return curve(flops, *(params[name] for name in names))


def holdout_fits(flops: np.ndarray | list[float], values: np.ndarray | list[float]) -> dict[str, dict | None]:
    """Each form fitted without the point of largest compute (None where too few points remain)."""
    x, y = np.asarray(flops, dtype=float), np.asarray(values, dtype=float)
    keep = np.arange(len(x)) != int(np.argmax(x))
    return {form: fit(x[keep], y[keep]) if len(np.unique(x[keep])) >= minimum else None
            for form, (fit, _, _, minimum) in FORM_SPECS.items()}


def holdout(flops: np.ndarray | list[float], values: np.ndarray | list[float]) -> dict[str, float | str]:
    """Fit each form without the largest compute value (:func:`holdout_fits`) and predict it.

    Returns holdout_flops and holdout_value (the point left out), and for each form its ``<form>_prediction`` and
    ``<form>_error`` (prediction / measured − 1; NaN where too few points remain), and ``better_form``: the form with
    the smaller absolute error (the paper's form on a tie or when the two could not be compared)."""
    x, y = np.asarray(flops, dtype=float), np.asarray(values, dtype=float)
    last = int(np.argmax(x))
    out: dict[str, float | str] = {"holdout_flops": float(x[last]), "holdout_value": float(y[last])}
    for form, params in holdout_fits(x, y).items():
        prediction = math.nan if params is None else float(predict(form, params, x[last]))
        out[f"{form}_prediction"] = prediction
        out[f"{form}_error"] = prediction / y[last] - 1
    power, sat = abs(out["power_error"]), abs(out["saturating_error"])
    # A saturating fit with E at 0 is the paper's form: a tie (to rounding) goes to the paper's form.
    better = math.isfinite(power) and math.isfinite(sat) and sat < power and not math.isclose(sat, power, rel_tol=1e-6)
    out["better_form"] = "saturating" if better else "power"
    return out


# --- Seeds: per-record values behind the means of metrics.csv --------------------------------------------------


def seed_records(metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per evaluation record behind the main runs' ECT rows: the row's GROUP keys, training_flops, ``run``
    (the training run the snapshot belongs to: main run or a replicate, i.e. a training seed) and ``value``.

    Reads the records listed in the ``evaluation`` column (paths joined by ";", as ``ect collect`` writes them);
    a missing or malformed record raises OSError/ValueError/KeyError naming it."""
    rows = _main_ect(metrics)
    out = []
    for row in rows.itertuples(index=False):
        for path in str(row.evaluation).split(";"):
            try:
                record = json.loads(Path(path).read_text())
                run = str(Path(record["checkpoint"]).parent) if record.get("checkpoint") else str(
                    Path(path).parent.parent)
                value = float(record["value"])
            except (OSError, ValueError, KeyError) as exc:
                raise type(exc)(f"evaluation record {path}: {exc}") from exc
            out.append({**{k: getattr(row, k) for k in GROUP}, "training_flops": row.training_flops, "run": run,
                        "value": value})
    return pd.DataFrame(out, columns=[*GROUP, "training_flops", "run", "value"])


def bootstrap_points(records: pd.DataFrame, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One bootstrap draw of a curve from its records (training_flops, run, value): runs resampled with
    replacement, then each drawn run's records at every budget; returns (flops, mean value) per budget."""
    runs = records["run"].unique()
    drawn = rng.choice(runs, size=len(runs), replace=True)
    flops, values = [], []
    for budget, at in records.groupby("training_flops", sort=True):
        by_run = {run: group["value"].to_numpy() for run, group in at.groupby("run")}
        chosen = [rng.choice(by_run[run], size=len(by_run[run]), replace=True) for run in drawn if run in by_run]
        if chosen:
            flops.append(budget)
            values.append(np.concatenate(chosen).mean())
    return np.array(flops), np.array(values)


def bootstrap(records: pd.DataFrame, fits: dict[str, dict], resamples: int,
              seed: int = 0) -> dict[str, list[dict]]:
    """Refit each form on ``resamples`` bootstrap draws of one curve; returns the parameter dicts per form (empty
    when every budget has one record, i.e. nothing to resample)."""
    out: dict[str, list[dict]] = {form: [] for form in FORMS}
    if resamples <= 0 or records.groupby("training_flops")["value"].size().max() < 2:
        return out
    rng = np.random.default_rng(seed)
    # Saturating refits start from its point estimate and from the paper form's (E = 0): two starts, not five.
    start = [tuple(fits["saturating"][k] for k in ("E", "a", "b")), (0.0, fits["power"]["a"], fits["power"]["b"])] \
        if fits.get("saturating") else []
    for _ in range(resamples):
        x, y = bootstrap_points(records, rng)
        for form, (fit, _, _, minimum) in FORM_SPECS.items():
            if fits.get(form) and len(np.unique(x)) >= minimum:
                extra = {"starts": start} if form == "saturating" else {}
                out[form].append(fit(x, y, **extra))
    return out


def _interval(samples: list[dict], key: str, confidence: float) -> tuple[float, float]:
    if not samples:
        return math.nan, math.nan
    values = [s[key] for s in samples]
    return (float(np.quantile(values, 0.5 - confidence / 2)), float(np.quantile(values, 0.5 + confidence / 2)))


# --- Compute axes --------------------------------------------------------------------------------------------------


def pretrain_flops(metrics: pd.DataFrame) -> pd.Series:
    """Each model's pretraining FLOPs: total_flops − training_flops of its ECT rows (the ``total_flops`` column,
    docs/metrics-columns.md), or, where that is absent or 0 (records written before the totals), its diffusion rows'
    training_flops (the teacher checkpoint's progress). NaN where unknown (an imported checkpoint, whose pretraining
    was not counted)."""
    teacher = metrics[(metrics["method"] == "diffusion") & (metrics["variant"] == BASE)]
    fallback = teacher.groupby("model")["training_flops"].first().astype(float)
    fallback = fallback.where(fallback > 0)
    if TOTAL_FLOPS not in metrics:
        return fallback
    tuned = _main_ect(metrics)
    column = (tuned[TOTAL_FLOPS] - tuned["training_flops"]).groupby(tuned["model"]).first().astype(float)
    return column.where(column > 0).combine_first(fallback)


def total_flops(metrics: pd.DataFrame) -> pd.Series:
    """Total compute of each row, pretraining included: training_flops plus the model's pretraining FLOPs
    (:func:`pretrain_flops`, from the ``total_flops`` column where it says more than training_flops). NaN where
    unknown."""
    return metrics["training_flops"] + metrics["model"].map(pretrain_flops(metrics)).astype(float)


def _main_ect(metrics: pd.DataFrame) -> pd.DataFrame:
    return metrics[(metrics["method"] == "ect") & (metrics["variant"] == BASE)]


# --- Frontier ------------------------------------------------------------------------------------------------------


def frontier(fits: pd.DataFrame, axis: str = "training_flops", samples: dict[str, list[dict]] | None = None,
             confidence: float = 0.95, points: int = 200) -> pd.DataFrame:
    """Compute-optimal model size along ``axis`` (training_flops or total_flops) for one sampler and metric.

    ``fits``: one scaling.csv row per model (its better_form's all-budget parameters are used). On a geometric grid
    over the models' compute range, each model's prediction counts from its smallest budget up to EXTRAPOLATION × its
    largest (on the total axis shifted by its pretraining FLOPs). Returns per grid point: ``flops``, ``best`` (lowest
    prediction; empty where no size has one), ``value`` and ``tied``: the other models whose bootstrap prediction
    interval (``samples``: model -> parameter dicts of its better form) overlaps the best's, joined by ";"."""
    offset = fits["pretrain_flops"].fillna(0.0).to_numpy() if axis == TOTAL_FLOPS else np.zeros(len(fits))
    low, high = fits["flops_min"].to_numpy() + offset, EXTRAPOLATION * fits["flops_max"].to_numpy() + offset
    grid = np.geomspace(low.min(), high.max(), points)
    models, value, lo, hi = [], [], [], []
    for i, fit in enumerate(fits.itertuples(index=False)):
        params = form_params(fit._asdict(), fit.better_form)
        if params is None:
            continue
        inside = (grid >= low[i] * (1 - 1e-12)) & (grid <= high[i] * (1 + 1e-12))
        tuning = np.where(inside, grid - offset[i], np.nan)
        curve = np.where(inside, predict(fit.better_form, params, tuning), np.inf)
        draws = (samples or {}).get(fit.model, [])
        if draws:
            table = np.stack([predict(fit.better_form, d, tuning) for d in draws])
            band = np.quantile(table, [0.5 - confidence / 2, 0.5 + confidence / 2], axis=0)
            band = np.where(inside, band, np.inf)
        else:
            band = np.stack([curve, curve])
        models.append(fit.model)
        value.append(curve)
        lo.append(band[0])
        hi.append(band[1])
    if not models:
        return pd.DataFrame(columns=["flops", "best", "value", "tied"])
    value, lo, hi = np.array(value), np.array(lo), np.array(hi)
    out = []
    for j, x in enumerate(grid):
        if not np.isfinite(value[:, j]).any():  # between models' ranges: no size has a prediction here
            out.append({"flops": x, "best": "", "value": math.nan, "tied": ""})
            continue
        best = int(np.argmin(value[:, j]))
        tied = [models[k] for k in range(len(models)) if k != best and np.isfinite(value[k, j])
                and lo[k, j] <= hi[best, j]]
        out.append({"flops": x, "best": models[best], "value": value[best, j], "tied": ";".join(tied)})
    return pd.DataFrame(out, columns=["flops", "best", "value", "tied"])


def form_params(row: dict | pd.Series, form: str) -> dict | None:
    """A scaling.csv row's parameters of one form (None where that form was not fitted)."""
    params = {"a": row["a"], "b": row["b"]} if form == "power" else {
        "E": row["sat_E"], "a": row["sat_a"], "b": row["sat_b"]}
    return params if all(pd.notna(v) for v in params.values()) else None


def describe_frontier(curve: pd.DataFrame) -> str:
    """One line: which size is best over which compute range, and which others are within the uncertainty."""
    if curve.empty:
        return ""
    key = curve["best"] + "|" + curve["tied"]
    starts = np.flatnonzero(np.r_[True, key.to_numpy()[1:] != key.to_numpy()[:-1]])
    parts = []
    for k, start in enumerate(starts):
        end = (starts[k + 1] if k + 1 < len(starts) else len(curve)) - 1
        row = curve.iloc[start]
        if not row["best"]:
            continue
        tied = f" (within uncertainty: {row['tied'].replace(';', ', ')})" if row["tied"] else ""
        parts.append(f"{row['best']} {curve['flops'].iloc[start]:.2e}-{curve['flops'].iloc[end]:.2e}{tied}")
    return "; ".join(parts)


# --- The study's fits ----------------------------------------------------------------------------------------------


def fit_curve(points: pd.DataFrame, records: pd.DataFrame | None, confidence: float,
              resamples: int) -> tuple[dict, dict[str, list[dict]]]:
    """Both forms, the hold-out and the bootstrap for one curve (its metrics rows); returns (row, samples)."""
    x, y = points["training_flops"].to_numpy(float), points["value"].to_numpy(float)
    fits = {}
    for form, (fit, _, _, minimum) in FORM_SPECS.items():
        fits[form] = fit(x, y) if len(np.unique(x)) >= minimum else None
    power = fits["power"]
    sat = fits["saturating"] or {"E": math.nan, "a": math.nan, "b": math.nan, "r2": math.nan}
    row = {"n": power["n"], "flops_min": x.min(), "flops_max": x.max(),
           **{k: power[k] for k in ("a", "b", "b_se", "b_ci_low", "b_ci_high", "r2")},
           **{f"sat_{k}": sat[k] for k in ("E", "a", "b", "r2")}, **holdout(x, y)}
    last = points.loc[points["training_flops"].idxmax()]
    row["holdout_std"] = last["value_std"]
    error = row[f"{row['better_form']}_prediction"] - row["holdout_value"]
    row["within_2std"] = bool(abs(error) <= 2 * row["holdout_std"]) if pd.notna(row["holdout_std"]) and pd.notna(
        error) else None
    samples = bootstrap(records, fits, resamples) if records is not None and len(records) else {f: [] for f in FORMS}
    row["b_boot_low"], row["b_boot_high"] = _interval(samples["power"], "b", confidence)
    row["sat_b_boot_low"], row["sat_b_boot_high"] = _interval(samples["saturating"], "b", confidence)
    row["sat_E_boot_low"], row["sat_E_boot_high"] = _interval(samples["saturating"], "E", confidence)
    row["bootstrap"] = len(samples["power"])
    row["boot_runs"] = records["run"].nunique() if records is not None else 0
    row["boot_records"] = len(records) if records is not None else 0
    return row, samples


def fit_scaling(metrics: pd.DataFrame, records: pd.DataFrame | None = None, confidence: float = 0.95,
                resamples: int = RESAMPLES) -> pd.DataFrame:
    """scaling.csv: one row per (model, sampler, metric) of the main ECT runs (ablations excluded) with both forms,
    the hold-out and the bootstrap over ``records`` (:func:`seed_records`; None: no bootstrap), then per (sampler,
    metric) one frontier row for each compute axis (``model`` = FRONTIER, ``axis``, ``frontier`` = its line)."""
    rows = _main_ect(metrics)
    pretrain = pretrain_flops(metrics)
    fits, samples = [], {}
    for key, group in rows.groupby(GROUP, sort=True):
        if group["training_flops"].nunique() < 2:
            continue  # one budget: nothing to fit
        curve = records[(records[GROUP] == pd.Series(key, index=GROUP)).all(axis=1)] if records is not None else None
        row, draws = fit_curve(group, curve, confidence, resamples)
        model = dict(zip(GROUP, key, strict=True))
        fits.append({**model, **row, "pretrain_flops": pretrain.get(model["model"], math.nan),
                     "confidence": confidence})
        samples[key] = draws
    table = pd.DataFrame(fits, columns=FIT_COLUMNS)
    lines = []
    for (experiment, sampler, metric), curves in table.groupby(["experiment", "sampler", "metric"], sort=True):
        draws = {c.model: samples[tuple(getattr(c, k) for k in GROUP)][c.better_form]
                 for c in curves.itertuples(index=False)}
        for axis in AXES:
            if axis == TOTAL_FLOPS and curves["pretrain_flops"].isna().any():
                continue  # pretraining compute unknown (imported checkpoints): no total axis
            line = describe_frontier(frontier(curves, axis, draws, confidence))
            lines.append({"experiment": experiment, "model": FRONTIER, "sampler": sampler, "metric": metric,
                          "confidence": confidence, "axis": axis, "frontier": line})
    return pd.concat([table, pd.DataFrame(lines, columns=FIT_COLUMNS)], ignore_index=True) if lines else table
