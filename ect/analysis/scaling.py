"""Power-law fits of a metric against training compute: metric = a·C^(−b), by least squares in log-log space.

ln(metric) = ln(a) − b·ln(C) is an ordinary linear regression, so b has the usual standard error and a
Student-t confidence interval (n − 2 degrees of freedom). With two points the line is exact and the interval
is undefined (NaN); with fewer there is no fit.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

GROUP = ["experiment", "model", "parameters", "sampler", "metric"]


def fit_power_law(flops: np.ndarray | list[float], values: np.ndarray | list[float],
                  confidence: float = 0.95) -> dict[str, float]:
    """Fit values = a·flops^(−b); returns a, b, b_se, b_ci_low, b_ci_high, r2 and n (the number of points)."""
    x, y = np.asarray(flops, dtype=float), np.asarray(values, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"flops and values must be 1-d of one length, got {x.shape} and {y.shape}")
    if len(x) < 2 or len(np.unique(x)) < 2:
        raise ValueError(f"a power-law fit needs at least two distinct compute values, got {len(np.unique(x))}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y)) and np.all(x > 0) and np.all(y > 0)):
        raise ValueError("a log-log fit needs finite, positive compute and metric values")
    lx, ly = np.log(x), np.log(y)
    n = len(x)
    slope, intercept = np.polyfit(lx, ly, 1)
    residuals = ly - (intercept + slope * lx)
    ss_res, ss_tot = float(residuals @ residuals), float(((ly - ly.mean()) ** 2).sum())
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0
    b_se, half = math.nan, math.nan
    if n > 2:
        b_se = math.sqrt(ss_res / (n - 2) / float(((lx - lx.mean()) ** 2).sum()))
        half = float(stats.t.ppf(0.5 + confidence / 2, n - 2)) * b_se
    b = -float(slope)
    return {"a": math.exp(intercept), "b": b, "b_se": b_se, "b_ci_low": b - half, "b_ci_high": b + half,
            "r2": r2, "n": n}


def power_law(flops: np.ndarray | float, a: float, b: float) -> np.ndarray | float:
    """The fitted curve a·C^(−b)."""
    return a * np.power(flops, -b)


def fit_scaling(metrics: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """One fit per (model, sampler, metric) over the ECT snapshots of the main runs (ablations excluded)."""
    rows = metrics[(metrics["method"] == "ect") & (metrics["variant"] == "base")]
    fits = []
    for key, group in rows.groupby(GROUP, sort=True):
        if group["training_flops"].nunique() < 2:
            continue  # one budget: nothing to fit
        fit = fit_power_law(group["training_flops"], group["value"], confidence)
        fits.append({**dict(zip(GROUP, key, strict=True)), **fit, "confidence": confidence,
                     "flops_min": group["training_flops"].min(), "flops_max": group["training_flops"].max()})
    return pd.DataFrame(fits, columns=[*GROUP, "a", "b", "b_se", "b_ci_low", "b_ci_high", "r2", "n", "confidence",
                                       "flops_min", "flops_max"])
