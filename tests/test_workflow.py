"""The Snakemake workflow: the smoke config end to end (outputs and their contents), dry-run plans of the paper
presets, and config validation before any job. Every run goes to a temporary --directory, never the repo."""

from __future__ import annotations

import json
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


def snakemake(workdir: Path, *args: str, timeout: int = 1800) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run([str(BIN / "snakemake"), "--snakefile", str(ROOT / "Snakefile"), "--directory",
                           str(workdir), *args], capture_output=True, text=True, env=env, timeout=timeout)


def job_counts(output: str) -> dict[str, int]:
    """The `Job stats` table of a (dry) run: rule -> number of jobs."""
    table = output[output.index("Job stats:"):]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.MULTILINE)}


@pytest.fixture(scope="module")
def smoke(smoke_study) -> Path:
    return smoke_study


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
    # Evaluation seeds [0, 1] for the diffusion models and the largest budget; replicates [1]: every ECT row also
    # averages the replicate run's records (training seed 1), so the largest budget has 2 runs x 2 seeds.
    diffusion = main["method"] == "diffusion"
    last = ~diffusion & (main["iteration"] == budgets[-1])
    assert (main.loc[diffusion, "seeds"] == 2).all()
    assert (main.loc[last, "seeds"] == 4).all() and (main.loc[~diffusion & ~last, "seeds"] == 2).all()
    assert (main["value_std"] > 0).all()
    ect_rows = main.loc[~diffusion, "evaluation"].str.split(";")
    assert ect_rows.map(lambda paths: {p.split("/")[2] for p in paths} == {"tune", "tune-seed1"}).all()
    assert (metrics.groupby("model")["parameters"].nunique() == 1).all()
    ect = main[main["method"] == "ect"].sort_values("iteration")
    for _, rows in ect.groupby(["model", "sampler"]):
        assert rows["training_flops"].is_monotonic_increasing


@pytest.mark.slow
def test_smoke_scaling_fits(smoke):
    table = pd.read_csv(smoke / "results/smoke/scaling.csv")
    scaling = table[table["model"] != "frontier"]
    assert sorted(zip(scaling["model"], scaling["sampler"], strict=True)) == [
        ("tiny-m", "1step"), ("tiny-m", "2step"), ("tiny-s", "1step"), ("tiny-s", "2step")]
    assert (scaling["n"] == 3).all()
    for column in ("a", "b", "b_se", "r2", "sat_E", "sat_b", "power_prediction", "b_boot_low", "b_boot_high"):
        assert scaling[column].map(math.isfinite).all(), column
    assert ((scaling["b_ci_low"] <= scaling["b"]) & (scaling["b"] <= scaling["b_ci_high"])).all()
    # Three budgets: the held-out fit keeps two, too few for the saturating form's three parameters.
    assert scaling["saturating_prediction"].isna().all() and (scaling["better_form"] == "power").all()
    assert (scaling["holdout_flops"] == scaling["flops_max"]).all() and (scaling["boot_runs"] == 2).all()
    frontier = table[table["model"] == "frontier"]
    assert sorted(zip(frontier["sampler"], frontier["axis"], strict=True)) == [
        ("1step", "total_flops"), ("1step", "training_flops"), ("2step", "total_flops"), ("2step", "training_flops")]
    assert frontier["frontier"].str.contains("tiny-").all()


@pytest.mark.slow
def test_smoke_tables_and_figures(smoke):
    tables = smoke / "results/smoke/tables"
    for stem in ("main", "scaling", "ablation_mapping", "ablation_c"):
        assert len(pd.read_csv(tables / f"{stem}.csv")) > 0
        assert (tables / f"{stem}.md").read_text().count("\n|") > 2
        assert "\\begin{tabular}" in (tables / f"{stem}.tex").read_text()
    main = pd.read_csv(tables / "main.csv")
    assert len(main) == 2 * 3 and main["heun"].notna().sum() == 2  # model x budget; the teacher once per model
    assert main["2step_ratio"].notna().all() and main["2step_std"].notna().any()
    ablation = pd.read_csv(tables / "ablation_mapping.csv")
    assert set(ablation["setting"]) == {"mapping=const", "mapping=sigmoid (base)"}
    figures = smoke / "figures/smoke"
    for stem in ("scaling_fd_digits", "samplers_fd_digits", "loss", "samples", "ablation_mapping", "ablation_c"):
        assert (figures / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (figures / f"{stem}.pdf").read_bytes()[:5] == b"%PDF-"
        assert (figures / f"{stem}.png").stat().st_size > 5000


@pytest.mark.slow
def test_smoke_schemes_comparison(smoke):
    """Every kind of arm of smoke.yaml's schemes section ran, and the table counts its compute and seeds."""
    results = smoke / "results/smoke"
    collected = pd.read_csv(results / "schemes.csv")
    assert sorted(collected["variant"].unique()) == ["cd/seed0", "diffusion/seed0", "diffusion/seed1",
                                                     "ect-scratch/seed0", "ect/seed0", "ect/seed1", "ict/seed0"]
    assert set(collected["method"]) == {"diffusion", "ect", "ict", "cd"}
    table = pd.read_csv(results / "tables/schemes.csv")
    assert set(zip(table["arm"], table["sampler"], strict=True)) == {
        *((arm, s) for arm in ("ect", "ect-scratch", "ict", "cd") for s in ("1step", "2step")),
        ("diffusion", "heun"), ("diffusion", "1step")}
    # Total compute in units of P (tiny-s pretraining: 60 iterations × 32 images × 3 passes) counts the
    # initialisation: ECT tuning to 40 iterations = 1 + 40 × 32 × 4 / 5,760; the P budgets within half an iteration.
    total = table.groupby("arm")["total_p"].agg(list)
    half = {passes: 0.5 * passes * 32 / 5760 + 1e-9 for passes in (4, 6)}  # half an iteration, in P
    assert total["ect"] == pytest.approx([1 + 40 * 32 * 4 / 5760] * 2)
    assert total["diffusion"] == pytest.approx([1.0, 1.0])
    assert sorted(total["ict"]) == pytest.approx([0.2, 0.2, 0.4, 0.4], abs=half[4])
    assert total["cd"] == pytest.approx([1.2, 1.2], abs=half[6])
    assert total["ect-scratch"] == pytest.approx([0.3, 0.3], abs=half[4])
    # The table's total (init + own) is the trainer's own total_flops of the records.
    for _, row in table.iterrows():
        trainer = collected.loc[collected["variant"].str.startswith(f"{row['arm']}/")
                                & (collected["iteration"] == row["iteration"]), "total_flops"]
        assert len(trainer) and trainer.tolist() == pytest.approx([row["total_flops"]] * len(trainer), rel=1e-9)
    seeds = table.groupby("arm")["seeds"].agg(set)
    assert seeds["ect"] == {2} and seeds["diffusion"] == {2} and seeds["ict"] == seeds["cd"] == {1}
    ect = table[(table["arm"] == "ect") & (table["sampler"] == "2step")].iloc[0]
    assert ect["value_std"] > 0 and ect["call"] == "reference"
    # ict's curriculum spans its largest budget in both segments.
    ict = yaml.safe_load((results / "schemes/ict/seed0/config.yaml").read_text())
    assert ict["method"] == "ict" and ict["run"]["ict"]["total_iterations"] == 18
    assert (results / "schemes/ict/seed0/snapshot-0000009.pt").is_file()
    assert yaml.safe_load((results / "schemes/cd/seed0/config.yaml").read_text())["method"] == "cd"
    assert "pseudo-Huber" in (results / "tables/schemes.md").read_text()
    figure = smoke / "figures/smoke/schemes_fd_digits"
    assert figure.with_suffix(".png").stat().st_size > 5000 and figure.with_suffix(".pdf").read_bytes()[:5] == b"%PDF-"


@pytest.mark.slow
def test_smoke_run_directories_hold_resolved_configs(smoke):
    results = smoke / "results/smoke"
    resolved = yaml.safe_load((results / "config.yaml").read_text())
    assert resolved["evaluation"]["seeds"] == [0, 1] and resolved["resources"]["tune"]["gpu"] == 0  # + defaults
    ablations = sorted(p.name for p in (results / "ablations").iterdir() if p.is_dir())
    assert ablations == ["c=1.0", "mapping=const"]  # base values (sigmoid, c=0.0) reuse the main run
    run = yaml.safe_load((results / "ablations/mapping=const/config.yaml").read_text())
    assert run["method"] == "ect" and run["run"]["ect"]["mapping"] == "const"
    assert run["run"]["training"]["iterations"] == 60 and run["run"]["training"]["budgets"] == []
    for run_dir in ["pretrain/tiny-s", "pretrain/tiny-m", "tune/tiny-s", "tune/tiny-m", "ablations/c=1.0"]:
        assert (results / run_dir / "config.yaml").is_file() and (results / run_dir / "checkpoint.pt").is_file()
    tune = yaml.safe_load((results / "tune/tiny-m/config.yaml").read_text())["run"]
    assert tune["network"]["preset"] == "tiny-m" and tune["training"]["iterations"] == 60  # the last segment's
    replicate = yaml.safe_load((results / "tune-seed1/tiny-m/config.yaml").read_text())["run"]
    assert replicate["training"]["seed"] == 1 and tune["training"]["seed"] == 0
    assert {k: v for k, v in replicate.items() if k != "training"} == {k: v for k, v in tune.items() if k != "training"}
    assert (results / "tune-seed1/tiny-m/snapshot-0000060.pt").is_file()
    assert sorted(p.name for p in (results / "tune/tiny-m").glob("snapshot-*.pt")) == [
        "snapshot-0000020.pt", "snapshot-0000040.pt", "snapshot-0000060.pt"]
    # One segment per budget: each left a state manifest; snapshots are write-protected outputs.
    states = [json.loads((results / f"tune/tiny-m/state-00000{b}.json").read_text()) for b in (20, 40, 60)]
    assert [s["iteration"] for s in states] == [20, 40, 60] and len({s["config_sha256"] for s in states}) == 1
    assert not (results / "tune/tiny-m/snapshot-0000020.pt").stat().st_mode & 0o222
    logs = (results / "logs/tune/tiny-m-0000060.log").read_text().splitlines()
    assert any(line.startswith("ect tiny-m: iteration 60/60  loss ") and "img/s  ETA" in line for line in logs)


@pytest.mark.slow
def test_smoke_evaluation_runs_while_the_next_segments_train(smoke):
    """Evaluating the first budget needs only its snapshot: it is done before the run's last segment ends."""
    results = smoke / "results/smoke"
    for model in ("tiny-s", "tiny-m"):
        first = max((results / f"tune/{model}/eval").glob("20-*.json"), key=lambda p: p.stat().st_mtime)
        assert first.stat().st_mtime < (results / f"tune/{model}/state-0000060.json").stat().st_mtime, model


def _planned(output: str) -> dict[str, list[str]]:
    """rule -> the outputs of its planned jobs, from a dry run's job listing."""
    jobs: dict[str, list[str]] = {}
    for m in re.finditer(r"^(?:local)?rule (\w+):\n(?:    input: .*\n)?    output: (.*)$", output, re.MULTILINE):
        jobs.setdefault(m[1], []).append(m[2])
    return jobs


@pytest.mark.slow
def test_smoke_appending_a_budget_plans_only_the_new_segments(smoke, tmp_path):
    config = yaml.safe_load((CONFIGS / "smoke.yaml").read_text())
    # Keys in another order too: that alone must not change any job.
    # (sort_keys=False: the order of `models` is meaningful, its first model is the schemes arms' default.)
    config = {**dict(reversed(config.items())), "budgets": [*config["budgets"], 80]}
    path = tmp_path / "more.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    plan = snakemake(smoke, "-n", "--configfile", str(path))
    assert plan.returncode == 0, plan.stderr[-3000:]
    jobs = _planned(plan.stdout)
    assert sorted(jobs["tune"]) == [f"results/smoke/tune/{m}/snapshot-0000080.pt, results/smoke/tune/{m}/"
                                    "state-0000080.json" for m in ("tiny-m", "tiny-s")]
    # One job per model scores the new snapshot with both samplers; another its second evaluation seed (the new
    # budget is the largest, where the tables show the spread).
    assert sorted(jobs["tune_replicate"]) == [f"results/smoke/tune-seed1/{m}/snapshot-0000080.pt, "
                                              f"results/smoke/tune-seed1/{m}/state-0000080.json"
                                              for m in ("tiny-m", "tiny-s")]
    evaluations = [*jobs["evaluate_ect"], *jobs["evaluate_ect_spread"], *jobs["evaluate_replicate"],
                   *jobs["evaluate_replicate_spread"]]
    assert len(jobs["evaluate_ect"]) == len(jobs["evaluate_ect_spread"]) == len(jobs["evaluate_replicate"]) == 2
    assert all(out.count("/eval/80-") == 2 for out in evaluations)
    assert all(out.count("-seed1.json") == 2 for out in jobs["evaluate_ect_spread"] + jobs["evaluate_replicate_spread"])
    assert not {"pretrain", "prepare_data", "tune_ablation", "evaluate_diffusion", "evaluate_ablation"} & set(jobs)
    light = {"collect", "collect_ablation", "fit", "table_main", "table_scaling", "table_ablation", "figure_scaling",
             "figure_samplers", "figure_loss", "figure_samples", "figure_ablation", "sample_grid", "workflow_config",
             "table_headline", "report_landing", "all"}
    assert set(jobs) <= {"tune", "evaluate_ect", "evaluate_ect_spread", "tune_replicate", "evaluate_replicate",
                         "evaluate_replicate_spread"} | light
    # A budget inserted below what the runs have reached is refused at planning, saying what to do.
    config["budgets"] = [20, 30, 40, 60]
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    plan = snakemake(smoke, "-n", "--configfile", str(path))
    assert plan.returncode != 0
    assert "config budgets: 30 lies below iteration 60" in plan.stderr and "new `experiment` name" in plan.stderr
    assert "Traceback" not in plan.stderr


@pytest.mark.slow
def test_smoke_rerun_is_a_no_op_and_report_builds(smoke):
    again = snakemake(smoke, "-n", "--configfile", str(CONFIGS / "smoke.yaml"))
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr
    report = snakemake(smoke, "--configfile", str(CONFIGS / "smoke.yaml"), "--report", "report.html")
    assert report.returncode == 0, report.stderr[-3000:]
    html = (smoke / "report.html").read_text()
    assert "scaling_fd_digits.png" in html and "ablation_mapping.png" in html


@pytest.mark.slow
def test_smoke_run_ends_with_its_answer(smoke):
    """The run prints the headline table and where everything is, and builds report.html opening on the results."""
    printed = (smoke / "run.stdout").read_text()
    assert re.search(r"^Study 'smoke' finished in \d+ (min \d+ )?s\.$", printed, re.MULTILINE)
    assert re.search(r"^\| tiny-s \(66k\) +\| \d+ ± \d+ +\| (\d+ ± \d+ / ){2}\d+ ± \d+ ", printed, re.MULTILINE)
    assert "Figures: figures/smoke/{ablation_c,ablation_mapping,loss,samplers_fd_digits,samples," in printed
    assert "Report:  report.html" in printed
    html = (smoke / "report.html").read_text()
    landing = (smoke / "results/smoke/report/landing.html").read_text()
    assert landing.count("data:image/png;base64,") == 2 and "<td>tiny-m (147k)</td>" in landing
    assert "tiny-m (147k)" in html and "headline.html" in html and "main.html" in html


@pytest.mark.slow
def test_single_ablation_target_plans_only_its_axis(tmp_path):
    plan = snakemake(tmp_path, "ablation_mapping", "-n", "--configfile", str(CONFIGS / "smoke.yaml"))
    assert plan.returncode == 0, plan.stderr[-3000:]
    jobs = job_counts(plan.stdout)
    assert jobs["tune_ablation"] == 1 and jobs["tune"] == 3 and jobs["pretrain"] == 1  # tiny-s only, 3 segments
    assert "collect" not in jobs and "figure_scaling" not in jobs
    assert "ablations/mapping=const/snapshot-0000060.pt" in plan.stdout and "c=1.0" not in plan.stdout


@pytest.mark.parametrize(("preset", "expected"), [
    # One evaluation job per checkpoint and metric, scoring every sampler.
    ("cifar10", {"import_checkpoint": 1, "tune": 3, "evaluate_diffusion": 2, "evaluate_ect": 6,
                 "tune_ablation": 4, "evaluate_ablation": 8}),
    ("cifar10-1hour", {"import_checkpoint": 1, "tune": 6, "evaluate_diffusion": 1, "evaluate_ect": 6}),
    ("imagenet64", {"import_checkpoint": 4, "tune": 16, "evaluate_diffusion": 4, "evaluate_ect": 16,
                    "tune_ablation": 4, "evaluate_ablation": 4}),
])
def test_paper_presets_plan_without_checkpoints_or_data(tmp_path, preset, expected):
    plan = snakemake(tmp_path, "-n", "-p", "--workflow-profile", str(ROOT / "workflow/profiles/slurm"),
                     "--configfile", str(CONFIGS / f"{preset}.yaml"))
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
    seen = _check_slurm_partitions(plan.stdout)
    assert {"collect", "fit", "table_main", "figure_scaling", "tune", "evaluate_ect"} <= seen
    assert not (tmp_path / "results").exists()


def _check_slurm_partitions(plan: str) -> set[str]:
    """With the SLURM profile, a job is on the GPU partition exactly when it asks for GPUs; light jobs never are.
    Returns the rules seen."""
    light = {"collect", "collect_ablation", "fit", "table_main", "table_scaling", "table_ablation", "figure_scaling",
             "figure_samplers", "figure_loss", "figure_samples", "figure_ablation", "workflow_config",
             "import_checkpoint"}
    seen = set()
    for rule, resources in re.findall(r"^rule (\w+):\n(?:    .*\n)*?    resources: (.*)$", plan, re.MULTILINE):
        res = dict(item.split("=", 1) for item in resources.split(", "))
        gpu = int(res.get("gpu", 0))
        assert (res["slurm_partition"] == "gpu") == (gpu > 0), (rule, res)
        assert gpu == 0 or rule not in light, rule
        seen.add(rule)
    return seen


def test_slurm_puts_spread_and_replicate_jobs_on_gpus(tmp_path):
    config = yaml.safe_load((CONFIGS / "cifar10.yaml").read_text())
    config["evaluation"] = {**config.get("evaluation", {}), "seeds": [0, 1]}
    config["replicates"] = [1]
    path = tmp_path / "cifar10-replicated.yaml"
    path.write_text(yaml.safe_dump(config))
    plan = snakemake(tmp_path, "-n", "-p", "--workflow-profile", str(ROOT / "workflow/profiles/slurm"),
                     "--configfile", str(path))
    assert plan.returncode == 0, plan.stderr[-3000:]
    seen = _check_slurm_partitions(plan.stdout)
    assert {"tune_replicate", "evaluate_replicate", "evaluate_replicate_spread", "evaluate_ect_spread",
            "evaluate_ablation_spread"} <= seen
    assert "--set training.seed=1" in plan.stdout and "results/cifar10/tune-seed1/" in plan.stdout


@pytest.mark.parametrize(("change", "message"), [
    ({"budgetz": [10]}, "budgetz"),
    ({"budgets": ["ten"]}, "budgets"),
    ({"samplers": ["3step"]}, "samplers"),
    ({"tune": {"config": "digits-tune", "set": {"ect.qq": 2}}}, "ect.qq"),
    ({"tune": {"config": "digits-tune", "set": {"ect.mapping": "linear"}}}, "ect.mapping"),
    ({"ablations": {"model": "tiny-xl"}}, "ablations.model"),
    ({"models": {"tiny-s": {"preset": "tiny-s", "resources": {"tune": {"gpu": 3}}}}},
     "models.tiny-s (tune on 3 GPUs): training.batch_size 32 is not divisible by the 3 processes"),
    # Issue 11's list: asked for, but impossible or silently ignored.
    ({"metrics": {"fid": {"num": 100}}}, "config metrics.fid: needs 3-channel images; 'digits' has 1"),
    ({"evaluation": {"device": "tpu"}}, "config evaluation.device: 'tpu' is not auto, cpu, cuda or cuda:N"),
    ({"evaluation": {"seeds": [2**70]}}, "4294967295"),
    ({"tune": {"config": "digits-tune", "set": {"training.iterations": 99}}},
     "config tune.set: training.iterations cannot be set for tuning; the budgets come from `budgets`"),
    ({"models": {"tiny-s": {"preset": "tiny-s", "tune_set": {"training.budgets": [5]}}}},
     "config models.tiny-s.tune_set: training.budgets cannot be set for tuning"),
    ({"ablations": {"axes": {"it": {"key": "training.iterations", "values": [10]}}}},
     "config ablations.axes.it.key: training.iterations is set by the workflow"),
    ({"ablations": {"axes": {"p": {"key": "diffusion.P_mean", "values": [-1.0]}}}},
     "config ablations.axes.p.key: diffusion.P_mean is a pretraining setting that tuning never uses"),
    ({"ablations": {"axes": {"x": {"key": "ect.foo", "values": [1]}}}},
     "config ablations.axes.x.key: ect.foo is not an ect run-config key"),
])
def test_invalid_config_stops_before_any_job(tmp_path, change, message):
    config = {**yaml.safe_load((CONFIGS / "smoke.yaml").read_text()), **change}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    run = snakemake(tmp_path / "work", "--cores", "1", "--configfile", str(path))
    assert run.returncode != 0
    assert message in run.stdout + run.stderr
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "work" / "results").exists()


@pytest.mark.parametrize(("preset", "target", "message"), [
    ("smoke", "results/smoke/ablations/mapping=foo/eval/60-1step-fd_digits.json",
     "ablations/mapping=foo): ect.mapping: 'foo' is not one of ['const', 'sigmoid']"),
    ("smoke", "results/smoke/ablations/c=-1/snapshot-0000060.pt", "ect.c: -1.0 is below the minimum 0.0"),
])
def test_bad_ablation_path_stops_before_any_job(tmp_path, preset, target, message):
    run = snakemake(tmp_path, target, "--cores", "1", "--configfile", str(CONFIGS / f"{preset}.yaml"))
    assert run.returncode != 0 and message in run.stdout + run.stderr, run.stderr[-2000:]
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "results").exists()


def test_metric_the_dataset_cannot_use_stops_before_any_job(tmp_path):
    config = {**yaml.safe_load((CONFIGS / "cifar10.yaml").read_text()), "metrics": {"fd_digits": {}}}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    run = snakemake(tmp_path / "work", "-n", "--configfile", str(path))
    assert run.returncode != 0
    assert "config metrics.fd_digits: applies to digits only, not to the study's dataset 'cifar10'" in run.stderr


def test_study_checks_without_snakemake(tmp_path):
    """ect.study: the planning-time checks on their own (the Snakefile turns a StudyError into one line)."""
    from ect import study
    from ect.runs import snapshot_name, state_name

    run = tmp_path / "run"
    study.check_run_progress(run, [10, 20])  # no run yet: anything goes
    run.mkdir()
    for it in (10, 20):
        (run / snapshot_name(it)).write_bytes(b"")
        (run / state_name(it)).write_text("{}")
    study.check_run_progress(run, [10, 20, 40])  # appending is fine
    with pytest.raises(study.StudyError, match="15 lies below iteration 20"):
        study.check_run_progress(run, [10, 15, 20])
    (run / snapshot_name(10)).unlink()  # a lost snapshot below the run's progress cannot be remade either
    with pytest.raises(study.StudyError, match="10 lies below"):
        study.check_run_progress(run, [10, 20])
    tune = {"ect": {"c": 0.0}, "training": {"iterations": 5}, "diffusion": {"P_mean": -1.2}}
    assert study.check_ablation_key("c", "ect.c", tune) == 0.0
    for key, message in (("training.budgets", "set by the workflow"), ("diffusion.P_mean", "never uses"),
                         ("ect.nope", "not an ect run-config key"), ("nope.c", "not an ect run-config key")):
        with pytest.raises(study.StudyError, match=message):
            study.check_ablation_key("a", key, tune)
    # Replicate runs need training seeds other than the main run's.
    study.check_replicates([1, 2], 0, "tiny-s")
    with pytest.raises(study.StudyError, match="0 is the training.seed of tiny-s's main run"):
        study.check_replicates([0, 1], 0, "tiny-s")
    # Evaluation seeds draw disjoint sample sets.
    seeds = [set(range(study.first_seed(s, 1500), study.first_seed(s, 1500) + 1500)) for s in (0, 1, 2)]
    assert not (seeds[0] & seeds[1]) and not (seeds[1] & seeds[2]) and min(seeds[0]) == 0


@pytest.mark.parametrize("config", ["config.yaml", *(f"workflow/configs/{p.name}" for p in sorted(CONFIGS.iterdir()))])
def test_lint_is_clean(tmp_path, config):
    lint = snakemake(tmp_path, "--lint", "--configfile", str(ROOT / config))
    output = lint.stdout + lint.stderr
    assert lint.returncode == 0 and "Congratulations, your workflow is in a good condition!" in output, output[-3000:]
