"""ect.analysis: power-law fits, the tidy table, tables with the published numbers joined, figures."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from ect.analysis import figures, tables
from ect.analysis.collect import Evaluation, collect
from ect.analysis.paper import join_paper, paper_keys, paper_results
from ect.analysis.scaling import fit_power_law, fit_scaling, power_law


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
    with pytest.raises(ValueError, match="two distinct"):
        fit_power_law([1e12, 1e12], [10.0, 5.0])
    with pytest.raises(ValueError, match="positive"):
        fit_power_law([1e12, 1e13], [10.0, -5.0])


def _record(tmp_path, name, kind, iteration, sampler, value, params=1000, images=None, flops=None):
    record = {"metric": "fd_digits", "value": value, "real_data": 6.0, "num_samples": 100,
              "nfe": {"1step": 1, "2step": 2, "heun": 35}[sampler], "sampler": {"sampler": sampler},
              "checkpoint_kind": kind, "num_parameters": params, "iteration": iteration,
              "training_images": images if images is not None else iteration * 64,
              "training_flops": flops if flops is not None else iteration * 1e9}
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(record))
    return path


@pytest.fixture
def metrics(tmp_path):
    """Two model sizes (heun + 3 budgets x 2 samplers each, value = 1e4·C^-0.5) and one ablation run."""
    items = []
    for model, params in (("small", 1000), ("large", 4000)):
        items.append(Evaluation(model, "base", _record(tmp_path, f"{model}-heun", "diffusion", 500, "heun", 8.0,
                                                       params)))
        for it in (100, 200, 400):
            for sampler, scale in (("1step", 2.0), ("2step", 1.0)):
                value = scale * float(power_law(it * 1e9, 1e4, 0.5))
                items.append(Evaluation(model, "base", _record(tmp_path, f"{model}-{it}-{sampler}", "consistency",
                                                               it, sampler, value, params)))
    for sampler in ("1step", "2step"):
        items.append(Evaluation("small", "mapping=const", _record(tmp_path, f"const-{sampler}", "consistency", 400,
                                                                  sampler, 99.0)))
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
    assert len(fits) == 4 and set(fits["n"]) == {3}
    assert np.allclose(fits["b"], 0.5)
    assert np.allclose(sorted(fits["a"]), [1e4, 1e4, 2e4, 2e4])


def test_main_table_has_heun_reference_and_paper_join(metrics):
    table, _ = tables.main_table(metrics)
    small = table[table["model"] == "small"]
    assert (small["diffusion_heun"] == 8.0).all()
    assert small.iloc[0]["method"] == "diffusion"  # the diffusion model first, then the snapshots by budget
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
    joined, unmatched = tables.main_table(metrics, paper)
    row = joined[(joined["model"] == "small") & (joined["iteration"] == 400) & (joined["sampler"] == "2step")].iloc[0]
    assert row["paper"] == 4.0 and row["source"] == "[TAG]"
    assert row["difference"] == pytest.approx(row["value"] - 4.0)
    heun = joined[(joined["model"] == "small") & (joined["method"] == "diffusion")].iloc[0]
    assert heun["paper"] == 7.0 and heun["source"] == "[EDM]"  # the imported teacher, whatever its iteration
    assert joined["paper"].notna().sum() == 2
    assert sorted(unmatched["source"]) == ["[NOBUDGET]", "[OTHER]"]


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


def test_tables_written_in_three_formats(metrics, tmp_path):
    paths = tables.write_table(tables.main_table(metrics)[0], tmp_path / "tables" / "main", "Main results")
    assert [p.suffix for p in paths] == [".csv", ".md", ".tex"]
    assert len(pd.read_csv(paths[0])) == len(metrics) - 2
    assert "| model" in paths[1].read_text() and "Main results" in paths[1].read_text()
    tex = paths[2].read_text()
    assert "\\begin{tabular}" in tex and "\\caption{Main results}" in tex and "fd\\_digits" in tex


def test_figures_written(metrics, tmp_path):
    fits = fit_scaling(metrics)
    log = tmp_path / "log.jsonl"
    (tmp_path / "config.yaml").write_text("run: {ect: {stage_length: 30}, training: {iterations: 100}}\n")
    log.write_text("".join(json.dumps({"iteration": i, "loss": 1.0 / i, "stage": i // 30}) + "\n"
                           for i in range(10, 101, 10)))
    grid = tmp_path / "grid.npz"
    np.savez(grid, images=np.zeros((4, 1, 8, 8), dtype=np.uint8))
    drawn = {
        "scaling": figures.scaling_figure(metrics, fits, "fd_digits"),
        "samplers": figures.samplers_figure(metrics, "fd_digits"),
        "ablation": figures.ablation_figure(tables.ablation_table(metrics, "mapping", "sigmoid", "small"), "mapping"),
        "loss": figures.loss_figure([("small", "diffusion", log), ("small", "ect", log)]),
        "samples": figures.samples_figure([("small", "Heun", grid), ("small", "1-step", grid)]),
    }
    for name, fig in drawn.items():
        for path in figures.save_figure(fig, tmp_path / "figures" / name):
            assert path.stat().st_size > 1000, path


def test_main_table_command_lists_unmatched_published_rows(metrics, tmp_path):
    from ect.cli import main

    metrics.to_csv(tmp_path / "metrics.csv", index=False)
    assert main(["table", "main", "--metrics", str(tmp_path / "metrics.csv"), "--paper", "cifar10",
                 "--out", str(tmp_path / "main")]) == 0
    table = pd.read_csv(tmp_path / "main.csv")
    published = table[table["value"].isna()]
    assert len(published) == len(paper_results("cifar10"))  # the toy models match no published row
    assert set(published["source"]) == {"[README]"}
    assert len(table) - len(published) == len(metrics) - 2  # our rows: the main runs, not the ablation


def test_image_grid_tiles_row_major_with_white_padding():
    from ect.visualize import image_grid

    images = np.arange(5 * 2 * 3, dtype=np.uint8).reshape(5, 1, 2, 3)
    grid = image_grid(images, columns=3)
    assert grid.shape == (2 * (2 + 1) + 1, 3 * (3 + 1) + 1, 1) and grid.dtype == np.uint8
    np.testing.assert_array_equal(grid[1:3, 5:8, 0], images[1, 0])  # image 1: row 0, column 1
    np.testing.assert_array_equal(grid[4:6, 1:4, 0], images[3, 0])  # image 3: row 1, column 0
    assert (grid[0] == 255).all() and (grid[:, 4] == 255).all() and (grid[4:6, 9:12] == 255).all()
    assert image_grid(np.zeros((4, 3, 2, 2), np.uint8)).shape == (7, 7, 3)  # RGB stays RGB, 2×2 by default
