"""The study's analysis steps as ``ect`` subcommands (called by the Snakemake rules; listed in ``ect.cli.COMMANDS``):

    ect collect   evaluation records -> one tidy CSV
    ect fit       tidy CSV -> power-law fits per model size, sampler and metric
    ect table     main | scaling | ablation | schemes tables as CSV, Markdown and LaTeX
    ect figure    scaling | samplers | ablation | loss | samples | schemes figures as PNG and PDF
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
    from ect.analysis.scaling import fit_scaling

    columns = COLUMNS if kind == "metrics" else list(fit_scaling(pd.DataFrame(columns=COLUMNS)).columns)
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
    p = sub.add_parser("fit", help="power-law fits of metric against training FLOPs")
    p.add_argument("--metrics", required=True, type=Path, help="tidy metrics CSV (ect collect)")
    p.add_argument("--confidence", type=float, default=0.95, help="level of the interval on the exponent b")
    p.add_argument("--out", required=True, type=Path)


def run_fit(args: argparse.Namespace) -> None:
    from ect.analysis.scaling import fit_scaling

    if not 0 < args.confidence < 1:
        raise UserError(f"--confidence must be between 0 and 1, got {args.confidence}")
    fits = fit_scaling(_read_csv(args.metrics, "metrics"), args.confidence)
    fits.to_csv(args.out, index=False)
    print(f"{len(fits)} fits → {args.out}")


def add_table_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("table", help="write a results table as CSV, Markdown and LaTeX (OUT.csv/.md/.tex)")
    kinds = p.add_subparsers(dest="kind", required=True)
    main = kinds.add_parser("main", help="every snapshot and sampler, the diffusion model's Heun result, the paper")
    main.add_argument("--metrics", required=True, type=Path)
    main.add_argument("--paper", help="published results to compare with (a key of ect/analysis/paper_results.yaml)")
    scaling = kinds.add_parser("scaling", help="the power-law fits")
    scaling.add_argument("--scaling", required=True, type=Path)
    ablation = kinds.add_parser("ablation", help="one ablation axis against its base run")
    _ablation_arguments(ablation)
    schemes = kinds.add_parser("schemes", help="the training schemes at matched total compute, over training seeds")
    _schemes_arguments(schemes)
    for q in (main, scaling, ablation, schemes):
        q.add_argument("--out", required=True, type=Path, help="output path without suffix")


def run_table(args: argparse.Namespace) -> None:
    from ect.analysis import tables

    if args.kind == "main":
        metrics = _read_csv(args.metrics, "metrics")
        paper = None
        if args.paper:
            from ect.analysis.paper import paper_results

            paper = paper_results(args.paper)
        table, unmatched = tables.main_table(metrics, paper)
        caption = ("Main results: ECT snapshots per model size and budget with 1- and 2-step sampling, the "
                   "diffusion model they were tuned from with Heun sampling, and what as many real images score; "
                   "where several evaluation seeds (disjoint sample sets) or training seeds (replicate runs) were run, "
                   "value is their mean and std "
                   "their sample standard deviation (Heun: the mean)")
        if paper is not None:
            table = tables.append_published_only(table, unmatched)
            caption += ("; paper = published value with its source tag (rows without our value: published "
                        "budget not stated or not run)")
    elif args.kind == "scaling":
        table = tables.scaling_table(_read_csv(args.scaling, "scaling"))
        caption = "Power-law fits metric = a·C^(−b) against ECT training FLOPs C (log-log least squares)"
    elif args.kind == "schemes":
        from ect.analysis.schemes import schemes_table, table_caption, write_schemes_table

        table = schemes_table(*_schemes_inputs(args))
        paths = write_schemes_table(table, args.out, table_caption(sorted(table["metric"].unique())))
        print(f"{len(table)} rows → {', '.join(map(str, paths))}")
        return
    else:
        table = tables.ablation_table(_read_csv(args.metrics, "metrics"), args.axis, args.base, args.model)
        caption = f"Ablation of {args.axis} on {args.model}; change = value minus the base run's"
    paths = tables.write_table(table, args.out, caption)
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
    samples = kinds.add_parser("samples", help="sample grids per model and sampler")
    add_labelled(samples, "--samples", ("MODEL", "LABEL", "NPZ"), "images from `ect sample`; repeatable")
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
        fig = figures.samples_figure([(m, label, Path(p)) for m, label, p in args.samples])
    paths = figures.save_figure(fig, args.out)
    print(f"→ {', '.join(map(str, paths))}")
