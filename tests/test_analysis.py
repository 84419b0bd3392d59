"""ect.analysis: power-law fits, the tidy table, tables with the published numbers joined, figures."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ect.analysis import figures, tables
from ect.analysis.collect import Evaluation, collect
from ect.analysis.paper import join_paper, paper_keys, paper_results
from ect.analysis.scaling import (
    FIT_COLUMNS,
    FRONTIER,
    bootstrap,
    bootstrap_points,
    describe_frontier,
    fit_power_law,
    fit_saturating,
    fit_scaling,
    frontier,
    holdout,
    power_law,
    saturating_law,
    seed_records,
    total_flops,
)


def test_fit_recovers_exact_power_law():
    flops = np.geomspace(1e12, 1e15, 6)
    fit = fit_power_law(flops, power_law(flops, 3.0e5, 0.4))
    assert fit["a"] == pytest.approx(3.0e5, rel=1e-9)
    assert fit["b"] == pytest.approx(0.4, rel=1e-9)
    assert fit["r2"] == pytest.approx(1.0)
    assert fit["n"] == 6
    assert fit["b_se"] == pytest.approx(0.0, abs=1e-9)


def test_fit_interval_covers_true_exponent_with_noise():
    rng = np.random.default_rng(0)
    flops = np.geomspace(1e12, 1e16, 12)
    covered = 0
    for _ in range(200):
        values = power_law(flops, 50.0, 0.3) * np.exp(rng.normal(0, 0.1, len(flops)))
        fit = fit_power_law(flops, values)
        assert fit["b_ci_low"] < fit["b"] < fit["b_ci_high"]
        covered += fit["b_ci_low"] <= 0.3 <= fit["b_ci_high"]
    assert 0.9 <= covered / 200 <= 0.99  # a 95% interval


def test_fit_two_points_has_no_interval_and_rejects_bad_input():
    fit = fit_power_law([1e12, 1e13], [10.0, 5.0])
    assert fit["b"] == pytest.approx(np.log10(2)) and np.isnan(fit["b_se"]) and fit["n"] == 2
    with pytest.raises(ValueError, match="at least 2 distinct"):
        fit_power_law([1e12, 1e12], [10.0, 5.0])
    with pytest.raises(ValueError, match="positive"):
        fit_power_law([1e12, 1e13], [10.0, -5.0])


def _record(tmp_path, name, kind, iteration, sampler, value, params=1000, images=None, flops=None, run="main"):
    record = {"metric": "fd_digits", "value": value, "real_data": 6.0, "num_samples": 100,
              "nfe": {"1step": 1, "2step": 2, "heun": 35}[sampler], "sampler": {"sampler": sampler},
              "checkpoint_kind": kind, "num_parameters": params, "iteration": iteration,
              "training_images": images if images is not None else iteration * 64,
              "training_flops": flops if flops is not None else iteration * 1e9,
              "checkpoint": str(tmp_path / run / f"snapshot-{iteration:07d}.pt")}
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(record))
    return path


BUDGETS = (100, 200, 400)


@pytest.fixture
def metrics(tmp_path):
    """Two model sizes (heun + 3 budgets x 2 samplers each, value = 1e4·C^-0.5) and one ablation run."""
    items = []
    for model, params in (("small", 1000), ("large", 4000)):
        items.append(Evaluation(model, "base", _record(tmp_path, f"{model}-heun", "diffusion", 500, "heun", 8.0,
                                                       params, flops=1e12)))
        for it in BUDGETS:
            for sampler, scale in (("1step", 2.0), ("2step", 1.0)):
                value = scale * float(power_law(it * 1e9, 1e4, 0.5))
                items.append(Evaluation(model, "base", _record(tmp_path, f"{model}-{it}-{sampler}", "consistency",
                                                               it, sampler, value, params, run=model)))
    for sampler in ("1step", "2step"):
        items.append(Evaluation("small", "mapping=const", _record(tmp_path, f"const-{sampler}", "consistency", 400,
                                                                  sampler, 99.0)))
    return collect("toy", items)


@pytest.fixture
def seeded(tmp_path):
    """A study with spread: two sizes whose metric levels off (E + a·C^(−b)), five budgets, a main run and a
    replicate per size (training seeds), three evaluation seeds at the largest budget and for the diffusion model."""
    rng = np.random.default_rng(0)
    truth = {"small": (1000, 12.0, 9e12, 1.0, 1e9), "large": (4000, 6.0, 3.6e13, 1.0, 4e9)}  # params, E, a, b, FLOPs/it
    items = []
    for model, (params, E, a, b, per_it) in truth.items():
        for seed in range(3):
            items.append(Evaluation(model, "base", _record(tmp_path, f"{model}-heun-{seed}", "diffusion", 500, "heun",
                                                           E / 2 + 0.1 * seed, params, flops=2e12 * params / 1000)))
        for run in ("main", "seed1"):
            for it in (300, 375, 450, 600, 750):
                for sampler in ("1step", "2step"):
                    for seed in range(3 if it == 750 else 1):
                        value = float(saturating_law(it * per_it, E, a, b)) * (1.5 if sampler == "1step" else 1.0)
                        value *= float(np.exp(rng.normal(0, 0.01)))
                        items.append(Evaluation(model, "base", _record(
                            tmp_path, f"{model}-{run}-{it}-{sampler}-{seed}", "consistency", it, sampler, value, params,
                            flops=it * per_it, run=f"{model}-{run}")))
    for setting, shift, spread in (("mapping=const", 5.0, 0.2), ("mapping=other", 0.0, 1.0)):
        for seed in range(3):
            for sampler in ("1step", "2step"):
                value = float(saturating_law(750e9, 12.0, 9e12, 1.0)) * (1.5 if sampler == "1step" else 1.0)
                items.append(Evaluation("small", setting, _record(
                    tmp_path, f"{setting}-{sampler}-{seed}", "consistency", 750, sampler,
                    value + shift + spread * (seed - 1), 1000, flops=750e9)))
    return collect("toy", items)


def test_collect_is_tidy_and_sorted(metrics):
    assert list(metrics.columns[:12]) == ["experiment", "model", "parameters", "method", "variant", "iteration",
                                          "training_images", "training_flops", "sampler", "nfe", "metric", "value"]
    assert len(metrics) == 2 * (1 + 3 * 2) + 2
    assert metrics["model"].iloc[0] == "small" and metrics["model"].iloc[-1] == "large"
    assert set(metrics["method"]) == {"diffusion", "ect"}


def test_collect_averages_evaluation_seeds(tmp_path):
    """Records of one evaluation with several seeds become one row: mean, sample std (ddof 1) and count."""
    items = [Evaluation("small", "base", _record(tmp_path, f"s{i}", "consistency", 400, "2step", v))
             for i, v in enumerate([10.0, 12.0, 17.0])]
    items.append(Evaluation("small", "base", _record(tmp_path, "one", "consistency", 200, "2step", 20.0)))
    table = collect("toy", items).set_index("iteration")
    assert table.loc[400, "value"] == pytest.approx(13.0) and table.loc[400, "seeds"] == 3
    assert table.loc[400, "value_std"] == pytest.approx(np.std([10.0, 12.0, 17.0], ddof=1))
    assert table.loc[200, "seeds"] == 1 and np.isnan(table.loc[200, "value_std"])
    assert table.loc[400, "evaluation"].split(";") == [str(tmp_path / f"s{i}.json") for i in range(3)]


def test_fit_scaling_one_fit_per_model_and_sampler_without_ablations(metrics):
    fits = fit_scaling(metrics)
    assert list(fits.columns) == FIT_COLUMNS
    curves = fits[fits["model"] != FRONTIER]
    assert len(curves) == 4 and set(curves["n"]) == {3}
    assert np.allclose(curves["b"], 0.5)
    assert np.allclose(sorted(curves["a"]), [1e4, 1e4, 2e4, 2e4])
    # Three budgets: the paper's form is judged on two, the saturating form (three parameters) cannot be.
    assert np.allclose(curves["power_error"], 0.0) and curves["saturating_error"].isna().all()
    assert set(curves["better_form"]) == {"power"} and (curves["bootstrap"] == 0).all()
    lines = fits[fits["model"] == FRONTIER]
    assert sorted(zip(lines["sampler"], lines["axis"], strict=True)) == [
        ("1step", "total_flops"), ("1step", "training_flops"), ("2step", "total_flops"), ("2step", "training_flops")]


def test_main_table_is_compact_with_spread_heun_once_and_paper_join(metrics):
    table = tables.main_table(metrics)
    assert list(table["model"]) == ["small"] * 3 + ["large"] * 3 and list(table["iteration"][:3]) == list(BUDGETS)
    assert [c for c in table.columns if c.startswith(("1step", "2step"))] == [
        "1step", "1step_std", "1step_ratio", "2step", "2step_std", "2step_ratio"]
    assert list(table["heun"].iloc[:3].isna()) == [False, True, True]  # the teacher once per model
    assert table["heun"].iloc[0] == 8.0
    assert np.allclose(table["2step_ratio"], table["2step"] / 8.0)
    assert np.allclose(table["1step"], 2 * table["2step"])
    paper = pd.DataFrame([
        {"model": "small", "method": "ect", "sampler": "2step", "metric": "fd_digits", "iterations": 400,
         "batch_size": 64, "value": 4.0, "source": "[TAG]", "label": "row"},
        {"model": "small", "method": "ect", "sampler": "2step", "metric": "fd_digits", "iterations": 400,
         "batch_size": 1024, "value": 1.0, "source": "[OTHER]", "label": "other batch"},
        {"model": "small", "method": "diffusion", "sampler": "heun", "metric": "fd_digits", "iterations": 9,
         "batch_size": 9, "value": 7.0, "source": "[EDM]", "label": "teacher"},
        {"model": "large", "method": "ect", "sampler": "1step", "metric": "fd_digits", "iterations": None,
         "batch_size": None, "value": 3.0, "source": "[NOBUDGET]", "label": "unknown budget"},
    ])
    joined = tables.main_table(metrics, paper)
    row = joined[(joined["model"] == "small") & (joined["iteration"] == 400)].iloc[0]
    assert row["2step_paper"] == 4.0 and row["source"] == "[TAG]"
    first = joined[joined["model"] == "small"].iloc[0]
    assert first["heun_paper"] == 7.0 and first["source"] == "[EDM]"  # the imported teacher, whatever its iteration
    published = joined[joined["2step"].isna() & joined["1step"].isna()]  # published rows matching none of ours
    assert sorted(published["source"]) == ["[NOBUDGET]", "[OTHER]"]
    assert published.loc[published["source"] == "[OTHER]", "2step_paper"].item() == 1.0


def test_paper_results_carry_reference_tags():
    assert {"cifar10", "cifar10-1hour", "imagenet64"} <= set(paper_keys())
    cifar = paper_results("cifar10")
    row = cifar[(cifar["sampler"] == "2step") & (cifar["iterations"] == 400000) & (cifar["metric"] == "fid")]
    assert row["value"].item() == 2.11 and row["source"].item() == "[README]"
    claim = paper_results("cifar10-1hour")
    assert claim.loc[claim["method"] == "ect", "value"].item() == 2.73
    assert claim.loc[claim["method"] == "ect", "source"].item() == "[P-v1][P-v2][OR-sub][P-ICLR]"
    imagenet = paper_results("imagenet64")
    assert set(imagenet["model"]) == {"S", "M", "L", "XL"}
    assert imagenet.loc[(imagenet["model"] == "L") & (imagenet["sampler"] == "2step"), "source"].item() == \
        "[SEC-NCVSD]"
    # Published ImageNet rows at 100k iterations and batch 128 match a run with 12.8M training images.
    ours = pd.DataFrame([{"model": "S", "method": "ect", "sampler": "1step", "metric": "fid", "iteration": 100000,
                          "training_images": 12_800_000, "value": 6.0}])
    joined, _ = join_paper(ours, imagenet)
    assert joined["paper"].item() == 5.51 and joined["difference"].item() == pytest.approx(0.49)


def test_ablation_table_against_base(metrics):
    table = tables.ablation_table(metrics, "mapping", "sigmoid", "small")
    assert list(table["setting"].unique()) == ["mapping=const", "mapping=sigmoid (base)"]
    const = table[(table["setting"] == "mapping=const") & (table["sampler"] == "2step")].iloc[0]
    base = table[(table["setting"] != "mapping=const") & (table["sampler"] == "2step")].iloc[0]
    assert const["change"] == pytest.approx(99.0 - base["value"])
    assert (table.loc[table["setting"].str.endswith("(base)"), "change"] == 0).all()
    assert table["value_std"].isna().all() and (table["beyond_spread"] == "").all()  # one record: no spread


def test_ablation_calls_a_difference_only_beyond_the_combined_spread(seeded):
    table = tables.ablation_table(seeded, "mapping", "sigmoid", "small").set_index(["setting", "sampler"])
    base = table.loc[("mapping=sigmoid (base)", "2step")]
    for setting, expected in (("mapping=const", "yes"), ("mapping=other", "no")):
        row = table.loc[(setting, "2step")]
        assert row["spread"] == pytest.approx(np.hypot(row["value_std"], base["value_std"]))
        assert row["beyond_spread"] == expected
    assert base["beyond_spread"] == "" and np.isnan(base["spread"])


def _compile(tex: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    document = tmp_path / "document.tex"
    document.write_text("\\documentclass{article}\n\\begin{document}\n\\input{" + tex.with_suffix("").as_posix()
                        + "}\n\\end{document}\n")
    return subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", document.name],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)


def test_tables_written_in_three_formats(seeded, tmp_path):
    from ect.cli import main

    seeded.to_csv(tmp_path / "metrics.csv", index=False)
    assert main(["fit", "--metrics", str(tmp_path / "metrics.csv"), "--bootstrap", "20",
                 "--out", str(tmp_path / "scaling.csv")]) == 0
    for kind, extra in (("main", ["--metrics", str(tmp_path / "metrics.csv")]),
                        ("scaling", ["--scaling", str(tmp_path / "scaling.csv")]),
                        ("ablation", ["--metrics", str(tmp_path / "metrics.csv"), "--axis", "mapping", "--base",
                                      "sigmoid", "--model", "small"])):
        assert main(["table", kind, *extra, "--out", str(tmp_path / "tables" / kind)]) == 0
        csv, md, tex = (tmp_path / "tables" / f"{kind}{suffix}" for suffix in (".csv", ".md", ".tex"))
        assert len(pd.read_csv(csv)) > 0
        assert md.read_text().count("\n|") > 2
        source = tex.read_text()
        assert source.isascii() and "\\begin{tabular}" in source and "\\caption{" in source
        assert "^" not in source.replace("\\textasciicircum", "").replace("$^2$", "").replace("C^{-b}", "")
        header = source.split("\\begin{tabular}{")[1].split("}")[0]
        assert header[0] == "l" and "r" in header  # model names left, numbers right
    assert "± one sample standard deviation" in (tmp_path / "tables" / "main.md").read_text()


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex not installed")
def test_latex_tables_compile(seeded, tmp_path):
    fits = fit_scaling(seeded, seed_records(seeded), resamples=20)
    written = [tables.write_table(tables.main_table(seeded), tmp_path / "main", "Main results ± std, 2×")[2],
               tables.write_table(tables.scaling_table(fits), tmp_path / "scaling", "Fits a·C^(−b), R²")[2],
               tables.write_table(tables.ablation_table(seeded, "mapping", "sigmoid", "small"), tmp_path / "ablation",
                                  "Ablation_c & 50%")[2]]
    for tex in written:
        run = _compile(tex, tmp_path)
        assert run.returncode == 0, run.stdout[-2000:]


def test_latex_text_escapes_and_refuses_unknown_unicode():
    assert tables.latex_text("a_b & 5% −1 ± 2 R² x^2") == "a\\_b \\& 5\\% $-$1 $\\pm$ 2 R$^2$ x\\textasciicircum{}2"
    with pytest.raises(ValueError, match="LaTeX"):
        tables.latex_text("σ")


def test_figures_written(seeded, tmp_path):
    fits = fit_scaling(seeded, seed_records(seeded), resamples=20)
    log = tmp_path / "log.jsonl"
    (tmp_path / "config.yaml").write_text("run: {ect: {stage_length: 30}, training: {iterations: 100}}\n")
    log.write_text("".join(json.dumps({"iteration": i, "loss": 1.0 / i, "stage": i // 30}) + "\n"
                           for i in range(10, 101, 10)))
    grid = tmp_path / "grid.npz"
    np.savez(grid, images=np.zeros((4, 1, 8, 8), dtype=np.uint8))
    drawn = {
        "scaling": figures.scaling_figure(seeded, fits, "fd_digits"),
        "samplers": figures.samplers_figure(seeded, "fd_digits"),
        "ablation": figures.ablation_figure(tables.ablation_table(seeded, "mapping", "sigmoid", "small"), "mapping"),
        "loss": figures.loss_figure([("small", "diffusion", log), ("small", "ect", log)]),
        "samples": figures.samples_figure([("small", "Heun", grid), ("small", "1-step", grid)]),
    }
    # Error bars: one vertical segment per mean with a spread (the largest budget's three seeds, both runs).
    bars = [c for c in drawn["samplers"].axes[0].collections if c.get_segments()]
    assert sum(len(c.get_segments()) for c in bars) == 2 * 5  # two samplers x five budgets (replicates everywhere)
    for name, fig in drawn.items():
        for path in figures.save_figure(fig, tmp_path / "figures" / name):
            assert path.stat().st_size > 1000, path
    # The scaling figure of a study without spread or a saturating fit (three budgets) still draws.
    figures.save_figure(figures.scaling_figure(metrics_without_spread(tmp_path), fit_scaling(
        metrics_without_spread(tmp_path)), "fd_digits"), tmp_path / "figures" / "plain")


def metrics_without_spread(tmp_path):
    items = [Evaluation("small", "base", _record(tmp_path, "plain-heun", "diffusion", 500, "heun", 8.0, flops=1e12))]
    items += [Evaluation("small", "base", _record(tmp_path, f"plain-{it}", "consistency", it, "2step",
                                                  float(power_law(it * 1e9, 1e4, 0.5)))) for it in BUDGETS]
    return collect("toy", items)


def test_main_table_command_lists_unmatched_published_rows(metrics, tmp_path):
    from ect.cli import main

    metrics.to_csv(tmp_path / "metrics.csv", index=False)
    assert main(["table", "main", "--metrics", str(tmp_path / "metrics.csv"), "--paper", "cifar10",
                 "--out", str(tmp_path / "main")]) == 0
    table = pd.read_csv(tmp_path / "main.csv")
    published = table[table["1step"].isna() & table["2step"].isna()]
    assert published["source"].notna().all() and set(published["source"]) == {"[README]"}
    assert len(table) - len(published) == 2 * len(BUDGETS)  # our rows: the main runs, not the ablation


def test_fit_command_names_a_missing_record(metrics, tmp_path, capsys):
    from ect.cli import main

    metrics.assign(evaluation=str(tmp_path / "gone.json")).to_csv(tmp_path / "metrics.csv", index=False)
    assert main(["fit", "--metrics", str(tmp_path / "metrics.csv"), "--out", str(tmp_path / "scaling.csv")]) == 2
    error = capsys.readouterr().err
    assert "gone.json" in error and "--bootstrap 0" in error and not (tmp_path / "scaling.csv").exists()
    assert main(["fit", "--metrics", str(tmp_path / "metrics.csv"), "--bootstrap", "0",
                 "--out", str(tmp_path / "scaling.csv")]) == 0


# --- The saturating form, hold-out, bootstrap and frontier ------------------------------------------------------


def test_saturating_fit_recovers_known_parameters():
    flops = np.geomspace(2e11, 4e12, 6)
    exact = fit_saturating(flops, saturating_law(flops, 6.0, 3e10, 0.8))
    assert exact["E"] == pytest.approx(6.0, rel=1e-5) and exact["b"] == pytest.approx(0.8, rel=1e-5)
    assert exact["a"] == pytest.approx(3e10, rel=1e-4) and exact["r2"] == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    for _ in range(5):  # 2 % relative noise, as seed spreads of a few percent
        noisy = fit_saturating(flops, saturating_law(flops, 6.0, 3e10, 0.8) * np.exp(rng.normal(0, 0.02, 6)))
        assert noisy["E"] == pytest.approx(6.0, rel=0.25) and noisy["b"] == pytest.approx(0.8, rel=0.25)


def test_saturating_fit_bounds_and_minimum_points():
    flops = np.geomspace(1e11, 1e13, 5)
    pure = fit_saturating(flops, power_law(flops, 1e4, 0.3))  # no floor: E at its lower bound, the paper's form
    assert pure["E"] == pytest.approx(0.0, abs=1e-3) and pure["b"] == pytest.approx(0.3, rel=1e-3)
    rising = fit_saturating(flops, [30.0, 20.0, 15.0, 14.0, 16.0])
    assert 0 <= rising["E"] <= 14.0 and 0 <= rising["b"] <= 10
    with pytest.raises(ValueError, match="at least 3"):
        fit_saturating(flops[:2], [3.0, 2.0])


def test_holdout_predicts_the_largest_budget_from_the_others():
    flops = np.array([4e11, 1e11, 3e11, 2e11, 5e11])  # any order: the largest compute is held out
    values = saturating_law(flops, 10.0, 1e7, 0.6) * np.array([1.0, 1.01, 0.99, 1.0, 1.02])
    out = holdout(flops, values)
    assert out["holdout_flops"] == 5e11 and out["holdout_value"] == values[4]
    rest = np.arange(5) != 4
    power, sat = fit_power_law(flops[rest], values[rest]), fit_saturating(flops[rest], values[rest])
    assert out["power_prediction"] == pytest.approx(power_law(5e11, power["a"], power["b"]))
    assert out["saturating_prediction"] == pytest.approx(saturating_law(5e11, sat["E"], sat["a"], sat["b"]))
    assert out["saturating_error"] == pytest.approx(out["saturating_prediction"] / values[4] - 1)
    assert out["better_form"] == "saturating"  # the curve levels off: a straight line in log-log undershoots
    assert out["power_prediction"] < values[4]
    few = holdout(flops[:3], values[:3])  # two points left: only the paper's form can be judged
    assert np.isnan(few["saturating_prediction"]) and few["better_form"] == "power"
    # A curve that steepens: the best E is 0, the saturating fit is the paper's form, and the tie goes to the paper's.
    steepening = power_law(flops, 1e4, 0.3) * np.exp(-0.5 * np.log(flops / 1e11) ** 2)
    tie = holdout(flops, steepening)
    assert tie["saturating_prediction"] == pytest.approx(tie["power_prediction"], rel=1e-6)
    assert tie["better_form"] == "power"


def _runs(values_by_run: dict[str, float], budgets=(1e11, 2e11, 4e11), seeds: int = 1) -> pd.DataFrame:
    return pd.DataFrame([{"training_flops": c, "run": run, "value": v * (1 + 0.01 * s)}
                         for run, v in values_by_run.items() for c in budgets for s in range(seeds)])


def test_bootstrap_resamples_training_runs_whole_and_seeds_within():
    records = _runs({"a": 10.0, "b": 20.0})
    rng = np.random.default_rng(0)
    draws = {tuple(bootstrap_points(records, rng)[1]) for _ in range(50)}
    # A run is drawn for every budget at once: each draw is 10, 15 or 20 at all three budgets, never mixed.
    assert draws == {(10.0,) * 3, (15.0,) * 3, (20.0,) * 3}
    seeds = _runs({"a": 10.0}, seeds=3)
    for _ in range(20):
        flops, values = bootstrap_points(seeds, rng)
        assert list(flops) == [1e11, 2e11, 4e11] and np.all((values >= 10.0) & (values <= 10.2))


def test_bootstrap_intervals_cover_the_estimate_and_need_spread():
    flops = np.array([1e11, 2e11, 3e11, 4e11, 6e11])
    rng = np.random.default_rng(1)
    records = pd.DataFrame([{"training_flops": c, "run": f"r{r}", "value": float(saturating_law(c, 5.0, 1e6, 0.5))
                             * float(np.exp(rng.normal(0, 0.05)))} for c in flops for r in range(3) for _ in range(2)])
    means = records.groupby("training_flops")["value"].mean()
    fits = {"power": fit_power_law(means.index, means), "saturating": fit_saturating(means.index, means)}
    samples = bootstrap(records, fits, 60, seed=3)
    assert len(samples["power"]) == len(samples["saturating"]) == 60
    b = [s["b"] for s in samples["power"]]
    assert min(b) < fits["power"]["b"] < max(b) and np.std(b) > 0
    assert all(s["E"] >= 0 for s in samples["saturating"])
    assert samples == bootstrap(records, fits, 60, seed=3)  # seeded: the same draws
    single = records.drop_duplicates("training_flops")  # one record per budget: nothing to resample
    assert bootstrap(single, fits, 60) == {"power": [], "saturating": []}


def _frontier_fits(pretrain=(np.nan, np.nan)) -> pd.DataFrame:
    """Small: 10 + 1e6·C^-0.5 (better at low compute); large: 4 + 1e7·C^-0.5 (levels off lower)."""
    return pd.DataFrame([
        {"model": "small", "better_form": "saturating", "sat_E": 10.0, "sat_a": 1e6, "sat_b": 0.5, "a": np.nan,
         "b": np.nan, "flops_min": 1e10, "flops_max": 1e12, "pretrain_flops": pretrain[0]},
        {"model": "large", "better_form": "saturating", "sat_E": 4.0, "sat_a": 1e7, "sat_b": 0.5, "a": np.nan,
         "b": np.nan, "flops_min": 1e10, "flops_max": 1e12, "pretrain_flops": pretrain[1]},
    ])


def test_frontier_switches_size_where_the_fits_cross():
    fits = _frontier_fits()
    curve = frontier(fits, points=400)
    crossing = (9e6 / 6.0) ** 2  # 10 + 1e6/√C = 4 + 1e7/√C
    assert set(curve.loc[curve["flops"] < 0.95 * crossing, "best"]) == {"small"}
    assert set(curve.loc[curve["flops"] > 1.05 * crossing, "best"]) == {"large"}
    assert curve["flops"].max() == pytest.approx(4e12)  # the EXTRAPOLATION x the largest budget
    assert (curve["tied"] == "").all()  # no bootstrap: no uncertainty to be tied within
    # Wide bootstrap bands around the crossing: the other size is within the uncertainty there.
    samples = {m: [{"E": e, "a": a, "b": 0.5} for e in (0.8 * E, 1.2 * E)]
               for m, E, a in (("small", 10.0, 1e6), ("large", 4.0, 1e7))}
    tied = frontier(fits, samples=samples, points=400)
    near = tied[(tied["flops"] > 0.9 * crossing) & (tied["flops"] < 1.1 * crossing)]
    assert len(near) and (near["tied"] != "").all()
    text = describe_frontier(curve)
    assert text.startswith("small 1.00e+10-") and "; large " in text


def test_frontier_on_total_compute_charges_pretraining():
    # The large model's pretraining costs 1e13: on total compute it starts there. The small one is best up to its
    # extrapolation limit (4 x 1e12 + 1e11); between the two no size has a prediction.
    curve = frontier(_frontier_fits(pretrain=(1e11, 1e13)), axis="total_flops", points=300)
    assert curve["flops"].min() == pytest.approx(1e10 + 1e11)
    assert set(curve.loc[curve["flops"] < 4e12, "best"]) == {"small"}
    assert set(curve.loc[(curve["flops"] > 4.2e12) & (curve["flops"] < 1e13), "best"]) == {""}
    assert set(curve.loc[curve["flops"] > 1.01e13, "best"]) == {"large"}
    assert "; large 1.0" in describe_frontier(curve)


def test_total_flops_from_the_column_or_the_teacher(metrics):
    ect = metrics["method"] == "ect"
    assert np.allclose(total_flops(metrics)[ect], metrics.loc[ect, "training_flops"] + 1e12)
    with_column = metrics.assign(total_flops=metrics["training_flops"] + 5e12)
    assert np.allclose(total_flops(with_column)[ect], metrics.loc[ect, "training_flops"] + 5e12)
    imported = metrics[metrics["method"] == "ect"].assign(total_flops=metrics["training_flops"])  # nothing counted
    assert total_flops(imported).isna().all()


def test_fit_scaling_with_seeds_bootstraps_and_reports_the_holdout(seeded):
    records = seed_records(seeded)
    assert set(records["run"].str.rsplit("/", n=1).str[-1]) == {"small-main", "small-seed1", "large-main",
                                                                "large-seed1"}
    fits = fit_scaling(seeded, records, resamples=40)
    curves = fits[fits["model"] != FRONTIER].set_index(["model", "sampler"])
    assert len(curves) == 4 and set(curves["n"]) == {5} and (curves["bootstrap"] == 40).all()
    assert (curves["boot_runs"] == 2).all() and (curves["boot_records"] == 2 * (4 + 3)).all()
    for _, row in curves.iterrows():
        assert row["b_boot_low"] <= row["b"] <= row["b_boot_high"]
        assert row["sat_E_boot_low"] <= row["sat_E"] <= row["sat_E_boot_high"]
        assert row["holdout_flops"] == row["flops_max"] and row["holdout_std"] > 0
        better = min(("power", "saturating"), key=lambda form: abs(row[f"{form}_error"]))
        assert row["better_form"] == better
        assert row["within_2std"] == (abs(row[f"{better}_prediction"] - row["holdout_value"]) <= 2 * row["holdout_std"])
    assert (curves["sat_E"] > 0).all()  # the data level off (E = 12 and 6 behind them)
    lines = fits[fits["model"] == FRONTIER]
    assert len(lines) == 4 and lines["frontier"].str.contains("large").all()


def test_image_grid_tiles_row_major_with_white_padding():
    from ect.visualize import image_grid

    images = np.arange(5 * 2 * 3, dtype=np.uint8).reshape(5, 1, 2, 3)
    grid = image_grid(images, columns=3)
    assert grid.shape == (2 * (2 + 1) + 1, 3 * (3 + 1) + 1, 1) and grid.dtype == np.uint8
    np.testing.assert_array_equal(grid[1:3, 5:8, 0], images[1, 0])  # image 1: row 0, column 1
    np.testing.assert_array_equal(grid[4:6, 1:4, 0], images[3, 0])  # image 3: row 1, column 0
    assert (grid[0] == 255).all() and (grid[:, 4] == 255).all() and (grid[4:6, 9:12] == 255).all()
    assert image_grid(np.zeros((4, 3, 2, 2), np.uint8)).shape == (7, 7, 3)  # RGB stays RGB, 2×2 by default
