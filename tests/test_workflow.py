"""The Snakemake workflow: the smoke config end to end (outputs and their contents), dry-run plans of the paper
presets, and config validation before any job. Every run goes to a temporary --directory, never the repo."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "workflow" / "configs"
BIN = Path(sys.executable).parent


def snakemake(workdir: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run([str(BIN / "snakemake"), "--snakefile", str(ROOT / "Snakefile"), "--directory",
                           str(workdir), *args], capture_output=True, text=True, env=env, timeout=timeout)


def job_counts(output: str) -> dict[str, int]:
    """The `Job stats` table of a (dry) run: rule -> number of jobs."""
    table = output[output.index("Job stats:"):]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.MULTILINE)}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("smoke")
    run = snakemake(workdir, "--cores", "2", "--configfile", str(CONFIGS / "smoke.yaml"))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    return workdir


@pytest.mark.slow
def test_smoke_metrics_table(smoke):
    config = yaml.safe_load((CONFIGS / "smoke.yaml").read_text())
    metrics = pd.read_csv(smoke / "results/smoke/metrics.csv")
    assert list(metrics.columns[:13]) == ["experiment", "model", "parameters", "method", "variant", "iteration",
                                          "training_images", "training_flops", "sampler", "nfe", "metric", "value",
                                          "num_samples"]
    models, budgets = list(config["models"]), config["budgets"]
    main = metrics[metrics["variant"] == "base"]
    assert len(main) == len(models) * (1 + len(budgets) * 2)  # Heun + every budget x {1step, 2step}
    assert set(main.loc[main["method"] == "diffusion", "sampler"]) == {"heun"}
    assert set(main.loc[main["method"] == "ect", "iteration"]) == set(budgets)
    assert sorted(metrics.loc[metrics["variant"] != "base", "variant"].unique()) == ["c=1.0", "mapping=const"]
    for column in ("value", "training_flops", "training_images", "parameters", "real_data"):
        assert metrics[column].map(math.isfinite).all() and (metrics[column] > 0).all(), column
    assert (metrics["num_samples"] == 200).all()
    assert (metrics.groupby("model")["parameters"].nunique() == 1).all()
    ect = main[main["method"] == "ect"].sort_values("iteration")
    for _, rows in ect.groupby(["model", "sampler"]):
        assert rows["training_flops"].is_monotonic_increasing


@pytest.mark.slow
def test_smoke_scaling_fits(smoke):
    scaling = pd.read_csv(smoke / "results/smoke/scaling.csv")
    assert sorted(zip(scaling["model"], scaling["sampler"], strict=True)) == [
        ("tiny-m", "1step"), ("tiny-m", "2step"), ("tiny-s", "1step"), ("tiny-s", "2step")]
    assert (scaling["n"] == 3).all()
    for column in ("a", "b", "b_se", "r2"):
        assert scaling[column].map(math.isfinite).all(), column
    assert ((scaling["b_ci_low"] <= scaling["b"]) & (scaling["b"] <= scaling["b_ci_high"])).all()


@pytest.mark.slow
def test_smoke_tables_and_figures(smoke):
    tables = smoke / "results/smoke/tables"
    for stem in ("main", "scaling", "ablation_mapping", "ablation_c"):
        assert len(pd.read_csv(tables / f"{stem}.csv")) > 0
        assert (tables / f"{stem}.md").read_text().count("\n|") > 2
        assert "\\begin{tabular}" in (tables / f"{stem}.tex").read_text()
    main = pd.read_csv(tables / "main.csv")
    assert main["diffusion_heun"].notna().all()
    ablation = pd.read_csv(tables / "ablation_mapping.csv")
    assert set(ablation["setting"]) == {"mapping=const", "mapping=sigmoid (base)"}
    figures = smoke / "figures/smoke"
    for stem in ("scaling_fd_digits", "samplers_fd_digits", "loss", "samples", "ablation_mapping", "ablation_c"):
        assert (figures / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (figures / f"{stem}.pdf").read_bytes()[:5] == b"%PDF-"
        assert (figures / f"{stem}.png").stat().st_size > 5000


@pytest.mark.slow
def test_smoke_run_directories_hold_resolved_configs(smoke):
    results = smoke / "results/smoke"
    resolved = yaml.safe_load((results / "config.yaml").read_text())
    assert resolved["evaluation"]["seed"] == 0 and resolved["resources"]["tune"]["gpu"] == 0  # schema defaults
    ablations = sorted(p.name for p in (results / "ablations").iterdir() if p.is_dir())
    assert ablations == ["c=1.0", "mapping=const"]  # base values (sigmoid, c=0.0) reuse the main run
    run = yaml.safe_load((results / "ablations/mapping=const/config.yaml").read_text())
    assert run["method"] == "ect" and run["run"]["ect"]["mapping"] == "const"
    assert run["run"]["training"]["budgets"] == [60]
    for run_dir in ["pretrain/tiny-s", "pretrain/tiny-m", "tune/tiny-s", "tune/tiny-m", "ablations/c=1.0"]:
        assert (results / run_dir / "config.yaml").is_file() and (results / run_dir / "summary.json").is_file()
    tune = yaml.safe_load((results / "tune/tiny-m/config.yaml").read_text())["run"]
    assert tune["network"]["preset"] == "tiny-m" and tune["training"]["budgets"] == [20, 40, 60]
    assert sorted(p.name for p in (results / "tune/tiny-m").glob("snapshot-*.pt")) == [
        "snapshot-0000020.pt", "snapshot-0000040.pt", "snapshot-0000060.pt"]


@pytest.mark.slow
def test_smoke_rerun_is_a_no_op_and_report_builds(smoke):
    again = snakemake(smoke, "-n", "--configfile", str(CONFIGS / "smoke.yaml"))
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr
    report = snakemake(smoke, "--configfile", str(CONFIGS / "smoke.yaml"), "--report", "report.html")
    assert report.returncode == 0, report.stderr[-3000:]
    html = (smoke / "report.html").read_text()
    assert "scaling_fd_digits.png" in html and "ablation_mapping.png" in html


@pytest.mark.slow
def test_single_ablation_target_plans_only_its_axis(tmp_path):
    plan = snakemake(tmp_path, "ablation_mapping", "-n", "--configfile", str(CONFIGS / "smoke.yaml"))
    assert plan.returncode == 0, plan.stderr[-3000:]
    jobs = job_counts(plan.stdout)
    assert jobs["tune_ablation"] == 1 and jobs["tune"] == 1 and jobs["pretrain"] == 1  # tiny-s only
    assert "collect" not in jobs and "figure_scaling" not in jobs
    assert "ablations/mapping=const/summary.json" in plan.stdout and "c=1.0" not in plan.stdout


@pytest.mark.parametrize(("preset", "expected"), [
    ("cifar10", {"import_checkpoint": 1, "tune": 1, "evaluate_diffusion": 2, "evaluate_ect": 12,
                 "tune_ablation": 4, "evaluate_ablation": 16}),
    ("cifar10-1hour", {"import_checkpoint": 1, "tune": 1, "evaluate_diffusion": 1, "evaluate_ect": 12}),
    ("imagenet64", {"import_checkpoint": 4, "tune": 4, "evaluate_diffusion": 4, "evaluate_ect": 32,
                    "tune_ablation": 4, "evaluate_ablation": 8}),
])
def test_paper_presets_plan_without_checkpoints_or_data(tmp_path, preset, expected):
    plan = snakemake(tmp_path, "-n", "-p", "--configfile", str(CONFIGS / f"{preset}.yaml"))
    assert plan.returncode == 0, plan.stderr[-3000:]
    jobs = job_counts(plan.stdout)
    assert {rule: jobs.get(rule, 0) for rule in expected} == expected
    assert "pretrain" not in jobs  # official checkpoints are imported instead
    dataset = {"cifar10": "cifar10", "cifar10-1hour": "cifar10", "imagenet64": "imagenet64"}[preset]
    imports = re.findall(r"\bect import .*$", plan.stdout, re.MULTILINE)
    assert len(imports) == expected["import_checkpoint"]  # each records the dataset that `ect evaluate` needs
    assert all(f"--dataset {dataset} --data-dir data/{dataset}" in command for command in imports)
    for rule in ("prepare_data", "collect", "fit", "table_main", "table_scaling", "figure_scaling",
                 "figure_samples"):
        assert jobs.get(rule, 0) >= 1, rule
    # Multi-GPU training goes through torchrun with one process per requested GPU.
    gpus = yaml.safe_load((CONFIGS / f"{preset}.yaml").read_text())["resources"]["tune"]["gpu"]
    if gpus > 1:
        assert f"torchrun --standalone --nproc_per_node={gpus} -m ect.cli tune" in plan.stdout
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize(("change", "message"), [
    ({"budgetz": [10]}, "budgetz"),
    ({"budgets": ["ten"]}, "budgets"),
    ({"samplers": ["3step"]}, "samplers"),
    ({"tune": {"config": "digits-tune", "set": {"ect.qq": 2}}}, "ect.qq"),
    ({"tune": {"config": "digits-tune", "set": {"ect.mapping": "linear"}}}, "ect.mapping"),
    ({"ablations": {"model": "tiny-xl"}}, "ablations.model"),
    ({"models": {"tiny-s": {"preset": "tiny-s", "resources": {"tune": {"gpu": 3}}}}},
     "models.tiny-s (tune on 3 GPUs): training.batch_size 32 is not divisible by the 3 processes"),
])
def test_invalid_config_stops_before_any_job(tmp_path, change, message):
    config = {**yaml.safe_load((CONFIGS / "smoke.yaml").read_text()), **change}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    run = snakemake(tmp_path / "work", "--cores", "1", "--configfile", str(path))
    assert run.returncode != 0
    assert message in run.stdout + run.stderr
    assert not (tmp_path / "work" / "results").exists()
