"""The study's analysis steps as ``ect`` subcommands (called by the Snakemake rules; listed in ``ect.cli.COMMANDS``):

    ect collect   evaluation records -> one tidy CSV
    ect fit       tidy CSV -> scaling fits (paper's power law and saturating form, hold-out, bootstrap, frontier)
    ect table     main | scaling | ablation | headline | schemes tables as CSV, Markdown, LaTeX and HTML
    ect figure    scaling | samplers | ablation | loss | samples | schemes figures as PNG and PDF
    ect summary   what the workflow prints when it ends: the headline table and where everything is
"""

from __future__ import annotations

import argparse
import contextlib
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ect.errors import UserError

if TYPE_CHECKING:
    import pandas as pd


@contextlib.contextmanager
def _reading(path: Path, what: str) -> Iterator[None]:
    """Turn a malformed input file's parse errors into one line naming the file."""
    try:
        yield
    except (ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile, UnicodeDecodeError) as exc:
        detail = " ".join(str(exc).split())[:200]
        raise UserError(f"{path} is not {what} ({type(exc).__name__}: {detail})") from exc


def _read_csv(path: Path, kind: str) -> pd.DataFrame:
    """A metrics table (ect collect) or scaling table (ect fit), refused by name when it is not one."""
    import pandas as pd

    from ect.analysis.collect import COLUMNS
    from ect.analysis.scaling import FIT_COLUMNS

    columns = COLUMNS if kind == "metrics" else FIT_COLUMNS
    with _reading(path, f"a {kind} table"):
        table = pd.read_csv(path)
        missing = [c for c in columns if c not in table.columns]
        if missing:
            raise KeyError(f"no column {missing[0]!r}")
    return table


def add_labelled(p: argparse.ArgumentParser, flag: str, names: tuple[str, ...], help: str) -> None:
    """A repeatable option with several values per use (e.g. ``--eval MODEL VARIANT JSON``)."""
    p.add_argument(flag, nargs=len(names), action="append", default=[], metavar=names, help=help)


def _ablation_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--metrics", required=True, type=Path, help="tidy CSV of the axis's runs and its base run")
    p.add_argument("--axis", required=True)
    p.add_argument("--base", required=True, help="the axis's value in the base run")
    p.add_argument("--model", required=True, help="the model size the ablations tune")


def _schemes_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--metrics", required=True, type=Path, help="tidy CSV of the comparison (variant <arm>/seed<N>)")
    add_labelled(p, "--arm", ("NAME", "METHOD", "INIT", "MODEL"), "an arm: its training method, initialisation "
                 "(pretrained or scratch) and model; repeatable")
    add_labelled(p, "--pretraining", ("MODEL", "FLOPS"), "a model's pretraining compute P in FLOPs; repeatable")


def _schemes_inputs(args: argparse.Namespace) -> tuple[pd.DataFrame, dict, dict[str, float]]:
    from ect.analysis.schemes import Arm

    arms = {name: Arm(method, init, model) for name, method, init, model in args.arm}
    if not arms:
        raise UserError("no arms (--arm NAME METHOD INIT MODEL)")
    units = {}
    for model, flops in args.pretraining:
        try:
            units[model] = float(flops)
        except ValueError:
            raise UserError(f"--pretraining {model}: {flops!r} is not a number of FLOPs") from None
        if not units[model] > 0:
            raise UserError(f"--pretraining {model}: P must be positive, got {flops}")
    metrics = _read_csv(args.metrics, "metrics")
    from ect.analysis.schemes import seed_rows

    with _reading(args.metrics, "the comparison's metrics (variant <arm>/seed<N>, an --arm and a --pretraining "
                  "for each)"):
        seed_rows(metrics, arms, units)
    return metrics, arms, units


def add_collect_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("collect", help="collect `ect evaluate` records into one tidy CSV")
    p.add_argument("--experiment", required=True)
    add_labelled(p, "--eval", ("MODEL", "VARIANT", "JSON"), "an evaluation record, its model name and run variant "
              "(base, or AXIS=VALUE for an ablation run); repeatable")
    p.add_argument("--out", required=True, type=Path)


def run_collect(args: argparse.Namespace) -> None:
    from ect.analysis.collect import Evaluation, collect, evaluation_row

    if not args.eval:
        raise UserError("no evaluation records to collect (--eval MODEL VARIANT JSON)")
    for _, _, path in args.eval:
        with _reading(Path(path), "an `ect evaluate` record"):
            evaluation_row(args.experiment, Evaluation("", "", Path(path)))
    table = collect(args.experiment, [Evaluation(m, v, Path(p)) for m, v, p in args.eval])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False)
    print(f"{len(table)} rows → {args.out}")


def add_fit_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fit", help="scaling fits of metric against training FLOPs (docs/scaling.md)")
    p.add_argument("--metrics", required=True, type=Path, help="tidy metrics CSV (ect collect)")
    p.add_argument("--confidence", type=float, default=0.95, help="level of the intervals on b and E")
    p.add_argument("--bootstrap", type=int, default=None,
                   help="bootstrap draws over the seeds per curve (default 400, ect.analysis.scaling.RESAMPLES; 0: "
                        "none; reads the evaluation records the metrics table lists)")
    p.add_argument("--out", required=True, type=Path)


def run_fit(args: argparse.Namespace) -> None:
    from ect.analysis.scaling import RESAMPLES, fit_scaling, seed_records

    if args.bootstrap is None:
        args.bootstrap = RESAMPLES
    if not 0 < args.confidence < 1:
        raise UserError(f"--confidence must be between 0 and 1, got {args.confidence}")
    if args.bootstrap < 0:
        raise UserError(f"--bootstrap must be 0 or more, got {args.bootstrap}")
    metrics = _read_csv(args.metrics, "metrics")
    records = None
    if args.bootstrap:
        try:
            records = seed_records(metrics)
        except (OSError, ValueError, KeyError) as exc:
            raise UserError(f"{args.metrics}: {exc} (the bootstrap reads the records in its evaluation column; "
                            "--bootstrap 0 fits without it)") from exc
    fits = fit_scaling(metrics, records, args.confidence, args.bootstrap)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fits.to_csv(args.out, index=False)
    print(f"{len(fits)} rows (fits and frontier lines) → {args.out}")


def add_table_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("table", help="write a results table as CSV, Markdown and LaTeX (OUT.csv/.md/.tex)")
    kinds = p.add_subparsers(dest="kind", required=True)
    main = kinds.add_parser("main", help="every snapshot and sampler, the diffusion model's Heun result, the paper")
    main.add_argument("--metrics", required=True, type=Path)
    main.add_argument("--paper", help="published results to compare with (a key of ect/analysis/paper_results.yaml)")
    scaling = kinds.add_parser("scaling", help="the scaling fits, their hold-out test and the frontier")
    scaling.add_argument("--scaling", required=True, type=Path)
    ablation = kinds.add_parser("ablation", help="one ablation axis against its base run")
    _ablation_arguments(ablation)
    headline = kinds.add_parser("headline", help="one row per model size: Heun, each sampler at every budget")
    headline.add_argument("--metrics", required=True, type=Path)
    schemes = kinds.add_parser("schemes", help="the training schemes at matched total compute, over training seeds")
    _schemes_arguments(schemes)
    for q in (main, scaling, ablation, headline, schemes):
        q.add_argument("--out", required=True, type=Path, help="output path without suffix")


def run_table(args: argparse.Namespace) -> None:
    from ect.analysis import summary, tables

    if args.kind == "main":
        metrics = _read_csv(args.metrics, "metrics")
        paper = None
        if args.paper:
            from ect.analysis.paper import paper_results

            paper = paper_results(args.paper)
        table = tables.main_table(metrics, paper)
        caption = ("Main results: ECT per model size and budget with 1- and 2-step sampling, their ratio to the "
                   "diffusion model they were tuned from (Heun, 35 NFE) and what as many real images score (once per "
                   "model). Values are means and ± one sample standard deviation over the seeds behind them "
                   "(evaluation seeds; training seeds where replicate runs exist; empty for one record)")
        if paper is not None:
            caption += ("; paper = published value, source = its tags (docs/paper-numbers.md); rows without our "
                        "values: published budget not stated or not run")
        latex = None
    elif args.kind == "scaling":
        table = tables.scaling_table(_read_csv(args.scaling, "scaling"))
        caption = ("Scaling fits against ECT training FLOPs C: the paper's form a·C^(−b) (log-log least squares, "
                   "t- and bootstrap intervals on b) and the saturating form E + a·C^(−b) (bounded least squares on "
                   "relative errors, bootstrap intervals). Held out: the largest budget's mean ± std over seeds, "
                   "each form's prediction from the smaller budgets and its error; better = the form that "
                   "predicted it better, used for the compute-optimal model size (frontier lines)")
        latex = ("Scaling fits against ECT training FLOPs $C$: the paper's form $a C^{-b}$ (log-log least squares, "
                 "$t$- and bootstrap intervals on $b$) and the saturating form $E + a C^{-b}$ (bounded least squares "
                 "on relative errors, bootstrap intervals). Held out: the largest budget's mean $\\pm$ std over "
                 "seeds, each form's prediction from the smaller budgets and its error; better = the form that "
                 "predicted it better, used for the compute-optimal model size (frontier lines)")
    elif args.kind == "headline":
        table = summary.headline_table(_read_csv(args.metrics, "metrics"))
        caption = ("Headline: the metric (lower is better) of each model size's diffusion model with Heun sampling "
                   "(35 NFE) and of its ECT snapshots at every budget (tuning iterations) with 1- and 2-step "
                   "sampling, next to what as many real images score; ± = standard deviation over evaluation seeds "
                   "and replicate runs, where several ran")
        latex = None
    elif args.kind == "schemes":
        from ect.analysis.schemes import schemes_table, table_caption, write_schemes_table

        table = schemes_table(*_schemes_inputs(args))
        caption = table_caption(sorted(table["metric"].unique()))
        paths = [*write_schemes_table(table, args.out, caption), summary.write_html(table, args.out, caption)]
        print(f"{len(table)} rows → {', '.join(map(str, paths))}")
        return
    else:
        table = tables.ablation_table(_read_csv(args.metrics, "metrics"), args.axis, args.base, args.model)
        caption = (f"Ablation of {args.axis} on {args.model}: means ± one std over seeds; vs base = value minus "
                   "the base run's, beyond spread = whether it exceeds the combined spread √(std² + std_base²)")
        latex = None
    paths = [*tables.write_table(table, args.out, caption, latex), summary.write_html(table, args.out, caption)]
    print(f"{len(table)} rows → {', '.join(map(str, paths))}")


def add_figure_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("figure", help="draw a figure as PNG and PDF (OUT.png/.pdf)")
    kinds = p.add_subparsers(dest="kind", required=True)
    scaling = kinds.add_parser("scaling", help="metric vs training FLOPs with the fitted power laws")
    scaling.add_argument("--scaling", required=True, type=Path)
    samplers = kinds.add_parser("samplers", help="1-step vs 2-step vs the diffusion model, per model size")
    for q in (scaling, samplers):
        q.add_argument("--metrics", required=True, type=Path)
        q.add_argument("--metric", required=True)
    ablation = kinds.add_parser("ablation", help="one ablation axis")
    _ablation_arguments(ablation)
    loss = kinds.add_parser("loss", help="training-loss curves with ECT stage boundaries")
    add_labelled(loss, "--log", ("MODEL", "METHOD", "LOG"), "a run's log.jsonl, its model and method; repeatable")
    samples = kinds.add_parser("samples", help="sample grids per model and sampler, beside real images")
    add_labelled(samples, "--samples", ("MODEL", "SAMPLER", "NPZ"), "images from `ect sample` (SAMPLER heun: the "
                 "diffusion model; else the ECT snapshot at --iteration); repeatable")
    samples.add_argument("--iteration", type=int, help="the ECT snapshots' training iteration (titles, scores)")
    samples.add_argument("--metrics", type=Path, help="tidy metrics CSV: each panel's title gives its --metric")
    samples.add_argument("--metric", help="the metric shown in the titles (with --metrics)")
    samples.add_argument("--real", metavar="DATASET", help="a first column of the dataset's first training images")
    samples.add_argument("--data-dir", help="the dataset's location (with --real)")
    schemes = kinds.add_parser("schemes", help="the training schemes against total compute, and their compute bars")
    _schemes_arguments(schemes)
    schemes.add_argument("--metric", required=True)
    for q in (scaling, samplers, ablation, loss, samples, schemes):
        q.add_argument("--out", required=True, type=Path, help="output path without suffix")


def run_figure(args: argparse.Namespace) -> None:
    import numpy as np

    from ect.analysis import figures

    if args.kind == "scaling":
        fig = figures.scaling_figure(_read_csv(args.metrics, "metrics"), _read_csv(args.scaling, "scaling"),
                                     args.metric)
    elif args.kind == "samplers":
        fig = figures.samplers_figure(_read_csv(args.metrics, "metrics"), args.metric)
    elif args.kind == "ablation":
        from ect.analysis.tables import ablation_table

        fig = figures.ablation_figure(ablation_table(_read_csv(args.metrics, "metrics"), args.axis, args.base,
                                                     args.model), args.axis)
    elif args.kind == "schemes":
        from ect.analysis.schemes import schemes_figure

        metrics, arms, units = _schemes_inputs(args)
        if args.metric not in set(metrics["metric"]):
            raise UserError(f"--metric {args.metric}: {args.metrics} has no rows of it")
        fig = schemes_figure(metrics, arms, units, args.metric, figures.METRIC_LABELS.get(args.metric))
    elif args.kind == "loss":
        for _, _, path in args.log:
            with _reading(Path(path), "a training log.jsonl"):
                figures.read_log(Path(path))["loss"]
        fig = figures.loss_figure([(m, method, Path(p)) for m, method, p in args.log])
    else:
        for _, _, path in args.samples:
            with _reading(Path(path), "an `ect sample` .npz"), np.load(path) as data:
                data["images"]
        metrics = _read_csv(args.metrics, "metrics") if args.metrics else None
        if metrics is not None and args.metric not in set(metrics["metric"]):
            raise UserError(f"--metric {args.metric!r} is not in {args.metrics}")
        real = None
        if args.real:
            from ect.data import load_dataset

            real = load_dataset(args.real, "train", args.data_dir).images
        fig = figures.samples_figure([(m, s, Path(p)) for m, s, p in args.samples], args.iteration, metrics,
                                     args.metric, real)
    paths = figures.save_figure(fig, args.out)
    print(f"→ {', '.join(map(str, paths))}")


def add_summary_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("summary", help="print a finished study's headline table and where its results are",
                       description="What the workflow prints when it ends (Snakefile, onsuccess): the headline table "
                                   "(results/EXPERIMENT/tables/headline.md) and the paths of the tables, figures, "
                                   "data and report.")
    p.add_argument("--experiment", required=True, help="the study's experiment name (results/EXPERIMENT/)")
    p.add_argument("--directory", type=Path, default=Path("."), help="the workflow's working directory")
    p.add_argument("--elapsed", type=float, help="seconds the run took, to report")
    p.add_argument("--report", type=Path, help="the HTML report, listed if it exists")
    p.add_argument("--landing", type=Path, help="write the report's landing-page content (headline table, main "
                   "figures embedded) to this HTML file instead of printing")


def run_summary(args: argparse.Namespace) -> None:
    from ect.analysis.summary import landing_html, summary
    from ect.files import write_text

    if not (args.directory / "results" / args.experiment).is_dir():
        raise UserError(f"no results/{args.experiment} in {args.directory}: run the study first")
    if args.landing:
        args.landing.parent.mkdir(parents=True, exist_ok=True)
        write_text(args.landing, landing_html(args.experiment, args.directory))
        print(f"→ {args.landing}")
    else:
        print(summary(args.experiment, args.directory, args.elapsed, args.report))
