"""What a finished study shows first: the headline table (one row per model size), the tables as HTML pages for the
Snakemake report, and the summary ``ect summary`` prints when the workflow ends."""

from __future__ import annotations

import base64
import html
from pathlib import Path

import pandas as pd

from ect.analysis.collect import BASE
from ect.analysis.tables import formatted

SAMPLER_NAMES = {"1step": "1-step", "2step": "2-step"}


def _decimals(x: float) -> int:
    """About three significant digits, as a reader compares them: 525, 34.5, 6.7, 0.42."""
    return 0 if abs(x) >= 100 else 1 if abs(x) >= 1 else 2


def _value(x: float) -> str:
    return f"{x:.{_decimals(x)}f}"


def _with_spread(row: pd.Series) -> str:
    """The value, and its spread over seeds to as many decimals, where several seeds ran."""
    value, spread = row["value"], row.get("value_std")
    return _value(value) + (f" ± {spread:.{_decimals(value)}f}" if pd.notna(spread) else "")


def _parameters(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.0f}k"


def headline_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per metric and model size (smallest first): the diffusion model's Heun result, each few-step sampler
    at every budget ("a / b / c", the spread over seeds where several ran) and what as many real images score."""
    main = metrics[metrics["variant"] == BASE]
    rows = []
    for metric, by_metric in main.groupby("metric", sort=True):
        ect = by_metric[by_metric["method"] == "ect"]
        budgets = sorted(ect["iteration"].unique())
        for model in by_metric.sort_values("parameters").drop_duplicates("model")["model"]:
            mine = by_metric[by_metric["model"] == model]
            heun = mine[(mine["method"] == "diffusion") & (mine["sampler"] == "heun")]
            row = {"metric": metric, "model": f"{model} ({_parameters(int(mine['parameters'].iloc[0]))})",
                   "diffusion, Heun": _with_spread(heun.iloc[0]) if len(heun) else ""}
            for sampler in sorted(ect["sampler"].unique()):
                at = mine[(mine["method"] == "ect") & (mine["sampler"] == sampler)].set_index("iteration")
                cells = [_with_spread(at.loc[b]) if b in at.index else "–" for b in budgets]
                row[f"ECT {SAMPLER_NAMES.get(sampler, sampler)} at {' / '.join(f'{b:,}' for b in budgets)} it."] = \
                    " / ".join(cells)
            real = mine["real_data"].dropna()
            row["real data"] = _value(real.iloc[0]) if len(real) else ""
            rows.append(row)
    table = pd.DataFrame(rows)
    return table.drop(columns="metric") if table["metric"].nunique() == 1 else table


def html_page(table: pd.DataFrame, caption: str) -> str:
    """A formatted table (the Markdown's numbers) as a small standalone HTML page, as the report shows it."""
    body = formatted(table).to_html(index=False, border=0, classes="results", escape=True)
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{html.escape(caption[:80])}</title>
<style>
body {{ font-family: system-ui, sans-serif; font-size: 14px; margin: 1em; }}
table.results {{ border-collapse: collapse; }}
table.results th, table.results td {{ padding: 3px 10px; border-bottom: 1px solid #ddd; text-align: right; }}
table.results th {{ background: #f3f3f3; }}
table.results td:first-child, table.results th:first-child {{ text-align: left; }}
p.caption {{ max-width: 60em; color: #333; }}
</style></head>
<body><p class="caption">{html.escape(caption)}</p>
{body}
</body></html>
"""


def write_html(table: pd.DataFrame, stem: Path, caption: str) -> Path:
    path = stem.with_suffix(".html")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html_page(table, caption))
    return path


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min {seconds} s" if minutes else f"{seconds} s"


def summary(experiment: str, root: Path, elapsed: float | None = None, report: Path | None = None) -> str:
    """The lines printed when the study ends: how long it took, the headline table, where everything is."""
    results, figures = Path("results") / experiment, Path("figures") / experiment
    took = f" in {_duration(elapsed)}" if elapsed is not None else ""
    lines = [f"Study {experiment!r} finished{took}.", ""]
    headline = root / results / "tables" / "headline.md"
    if headline.is_file():
        lines += [headline.read_text().rstrip(), ""]
    tables = sorted({p.stem for p in (root / results / "tables").glob("*.md")})
    if tables:
        lines.append(f"Tables:  {results}/tables/{{{','.join(tables)}}}.{{md,csv,tex,html}}")
    pictures = sorted(p.stem for p in (root / figures).glob("*.png"))
    if pictures:
        lines.append(f"Figures: {figures}/{{{','.join(pictures)}}}.{{png,pdf}}")
    data = [f"{results}/{name}" for name in ("metrics.csv", "scaling.csv") if (root / results / name).is_file()]
    if data:
        lines.append(f"Data:    {', '.join(data)}")
    if report is not None and (root / report).is_file():
        lines.append(f"Report:  {report} (open it in a browser)")
    return "\n".join(lines)


LANDING_FIGURES = (
    ("scaling_*.png", "The metric against ECT training compute (log-log), one panel per sampler, with the fitted power "
                      "laws; dashed: each size's diffusion model with Heun sampling; dotted: real data."),
    ("samples.png", "Samples from the same seeds: real images, the diffusion model (Heun) and ECT with 1 and 2 steps "
                    "at the largest budget; each title gives the panel's metric."),
)


def landing_html(experiment: str, root: Path) -> str:
    """The report's landing page content: the headline table and the main figures, images embedded (the report is
    one file that can be mailed)."""
    parts = []
    headline = root / "results" / experiment / "tables" / "headline.csv"
    if headline.is_file():
        table = pd.read_csv(headline, dtype=str).fillna("")
        parts.append('<p><b>Headline results</b> (lower is better; ± = standard deviation over seeds; real data = what '
                     'as many real images score)</p>')
        parts.append(table.to_html(index=False, border=1, classes="docutils", escape=True))
    for pattern, caption in LANDING_FIGURES:
        for path in sorted((root / "figures" / experiment).glob(pattern)):
            data = base64.b64encode(path.read_bytes()).decode()
            parts.append(f'<div class="figure"><img src="data:image/png;base64,{data}" alt="{html.escape(path.name)}" '
                         f'style="width: 100%;" /><p class="caption">{html.escape(path.name)}: '
                         f"{html.escape(caption)}</p></div>")
    return "\n".join(parts) + "\n"
