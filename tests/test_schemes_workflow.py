"""The schemes comparison in the workflow: dry-run plans (the embedded default, the smoke preset, CIFAR-10's paper arms
behind one key) and the config checks at planning. The smoke study's end-to-end run is checked in test_workflow.py."""

from __future__ import annotations

import re

import pytest
import yaml
from test_workflow import CONFIGS, ROOT, _check_slurm_partitions, _planned, job_counts, snakemake


def _commands(plan: str, rule: str) -> list[str]:
    """The shell commands of a rule's planned jobs (a dry run with -p)."""
    return re.findall(rf"^rule {rule}:\n(?:    .*\n)*?Shell command: (.*)$", plan, re.MULTILINE)


def _arg(command: str, key: str) -> str:
    return re.search(rf"--set '?{re.escape(key)}=([^' ]+)", command)[1]


def test_embedded_default_plans_the_comparison(tmp_path):
    plan = snakemake(tmp_path, "schemes", "-n", "-p")
    assert plan.returncode == 0, plan.stderr[-3000:]
    config = yaml.safe_load((ROOT / "config.yaml").read_text())["schemes"]["arms"]
    trains = _commands(plan.stdout, "train_scheme")
    runs = {re.search(r"--out (\S+)", c)[1].split("/schemes/")[1]: c for c in trains}
    # Every arm that is not a run the study makes anyway, once per seed (one segment per budget).
    for arm, spec in config.items():
        for seed in spec.get("seeds", [0]):
            reused = arm in ("ect", "diffusion") and seed == 0  # tune/tiny-s, pretrain/tiny-s
            assert (f"{arm}/seed{seed}" in runs) == (not reused), (arm, seed)
    # 1.5P from scratch: 1.5 × (3 passes × 128 × 1,000) / (4 passes × 128) = 1,125 iterations; CD from the pretrained
    # model to 1.5P with 6 passes at batch 64: 0.5 × 384,000 / 384 = 500.
    ict = [c for out, c in runs.items() if out.startswith("ict/")]
    assert len(ict) == 3 and all(_arg(c, "training.iterations") == _arg(c, "ict.total_iterations") == "1125"
                                 and "--method ict " in c and "--init" not in c for c in ict)
    cd = [c for out, c in runs.items() if out.startswith("cd/")]
    assert cd and all(_arg(c, "training.iterations") == "500" and "--init results/digits/pretrain/tiny-s/" in c
                      for c in cd)
    assert {_arg(c, "training.seed") for c in cd} == {"0", "1", "2"}
    scratch = [c for out, c in runs.items() if out.startswith("ect-scratch/")]
    assert scratch and all("--method ect " in c and "--init" not in c and _arg(c, "training.iterations") == "1125"
                           for c in scratch)
    ect = [c for out, c in runs.items() if out.startswith("ect/")]
    assert len(ect) == 2 and all(_arg(c, "training.iterations") == "750" and "--init" in c for c in ect)
    # The reused ECT arm adds no tuning beyond the study's own runs and their replicates.
    jobs = job_counts(plan.stdout)
    assert "tune_ablation" not in jobs and jobs["collect_schemes"] == jobs["table_schemes"] == 1
    assert "results/digits/tables/schemes.md" in plan.stdout and "figures/digits/schemes_fd_digits.pdf" in plan.stdout


def test_smoke_plans_every_kind_of_arm(tmp_path):
    plan = snakemake(tmp_path, "-n", "--configfile", str(CONFIGS / "smoke.yaml"))
    assert plan.returncode == 0, plan.stderr[-3000:]
    jobs = _planned(plan.stdout)
    # ect reuses tune/tiny-s and tune-seed1/tiny-s, diffusion seed 0 pretrain/tiny-s; iCT has two segments.
    assert sorted(out.split(",")[0] for out in jobs["train_scheme"]) == [
        f"results/smoke/schemes/{run}.pt" for run in ("cd/seed0/snapshot-0000006", "diffusion/seed1/snapshot-0000060",
                                                      "ect-scratch/seed0/snapshot-0000014",
                                                      "ict/seed0/snapshot-0000009", "ict/seed0/snapshot-0000018")]
    assert len(jobs["evaluate_scheme_heun"]) == 1 and "diffusion/seed1/eval/60-heun" in jobs["evaluate_scheme_heun"][0]
    assert len(jobs["evaluate_scheme_raw"]) == 2  # the diffusion arm's two seeds, raw 1-step


def test_cifar10_paper_arms_are_off_until_enabled(tmp_path):
    off = snakemake(tmp_path, "-n", "--configfile", str(CONFIGS / "cifar10.yaml"))
    assert off.returncode == 0 and "train_scheme" not in job_counts(off.stdout)
    on = snakemake(tmp_path, "-n", "-p", "--workflow-profile", str(ROOT / "workflow/profiles/slurm"),
                   "--configfile", str(CONFIGS / "cifar10.yaml"), "--config", "schemes={enabled: true}")
    assert on.returncode == 0, on.stderr[-3000:]
    jobs = job_counts(on.stdout)
    assert jobs["train_scheme"] == 2 and jobs["evaluate_scheme"] == 4 and jobs["table_schemes"] == 1
    commands = _commands(on.stdout, "train_scheme")
    ict = next(c for c in commands if "--method ict" in c)
    assert "torchrun --standalone --nproc_per_node=8 -m ect.cli train --method ict" in ict and "--init" not in ict
    for key, value in (("network.preset", "ncsnpp-cifar10"), ("training.batch_size", "1024"),
                       ("training.iterations", "400000"), ("ict.total_iterations", "400000"),
                       ("network.dropout", "0.3"), ("optimizer.name", "radam"), ("optimizer.lr", "0.0001")):
        assert _arg(ict, key) == value, key
    cd = next(c for c in commands if "--method cd" in c)
    assert "--init results/cifar10/pretrain/ddpmpp/imported.pt" in cd
    for key, value in (("cd.steps", "18"), ("training.batch_size", "512"), ("training.iterations", "800000")):
        assert _arg(cd, key) == value, key
    seen = _check_slurm_partitions(on.stdout)
    assert {"train_scheme", "evaluate_scheme", "table_schemes", "figure_schemes", "collect_schemes"} <= seen
    assert not (tmp_path / "results").exists()


def test_slurm_puts_every_scheme_gpu_rule_on_gpus(tmp_path):
    """Every scheme rule, with evaluation seeds for the spread rules and a diffusion arm of its own."""
    config = yaml.safe_load((CONFIGS / "cifar10.yaml").read_text())
    config["evaluation"] = {**config.get("evaluation", {}), "seeds": [0, 1]}
    config["schemes"]["enabled"] = True
    config["schemes"]["arms"]["diffusion"] = {"method": "diffusion", "config": "cifar10-tune", "budgets": [1000],
                                              "resources": {"gpu": 1}}  # the preset has no GPUs for pretraining
    path = tmp_path / "cifar10-schemes.yaml"
    path.write_text(yaml.safe_dump(config))
    plan = snakemake(tmp_path, "-n", "-p", "--workflow-profile", str(ROOT / "workflow/profiles/slurm"),
                     "--configfile", str(path))
    assert plan.returncode == 0, plan.stderr[-3000:]
    seen = _check_slurm_partitions(plan.stdout)
    assert {"train_scheme", "evaluate_scheme", "evaluate_scheme_spread", "evaluate_scheme_raw",
            "evaluate_scheme_raw_spread", "evaluate_scheme_heun"} <= seen


def _smoke_with(arms: dict, **schemes) -> dict:
    config = yaml.safe_load((CONFIGS / "smoke.yaml").read_text())
    config["schemes"] = {**schemes, "arms": arms}
    return config


@pytest.mark.parametrize(("config", "message"), [
    (_smoke_with({"a": {"method": "ict", "init": "pretrained", "budgets": [10]}}),
     "config schemes.arms.a.init: ict trains from scratch only, not from pretrained"),
    (_smoke_with({"a": {"method": "cd", "init": "scratch", "budgets": [10]}}),
     "config schemes.arms.a.init: cd trains from pretrained only, not from scratch"),
    (_smoke_with({"a": {"method": "ect", "budgets": ["1P"]}}),
     "config schemes.arms.a.budgets[0]: 1P leaves no iterations after the initialisation's 1P"),
    (_smoke_with({"a": {"method": "ect", "model": "tiny-xl", "budgets": [10]}}),
     "config schemes.arms.a.model: 'tiny-xl' is not one of the models"),
    (_smoke_with({"a": {"method": "ict", "budgets": [10], "set": {"training.iterations": 5}}}),
     "config schemes.arms.a.set: training.iterations is set by the workflow"),
    (_smoke_with({"a": {"method": "ict", "budgets": [10], "set": {"ict.s9": 5}}}), "ict.s9"),
    (_smoke_with({"a": {"method": "ict", "budgets": ["0.1P", 5]}}), "give the iterations [5, 5], not all distinct"),
    (_smoke_with({"a": {"method": "ict", "budgets": ["1.5 P"]}}), "schemes"),
    (_smoke_with({"a": {"method": "lcm", "budgets": [10]}}), "lcm"),
])
def test_invalid_schemes_config_stops_before_any_job(tmp_path, config, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    run = snakemake(tmp_path / "work", "--cores", "1", "--configfile", str(path))
    assert run.returncode != 0
    assert message in run.stdout + run.stderr
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "work" / "results").exists()


def test_p_budget_of_an_imported_model_needs_its_pretraining_images(tmp_path):
    config = yaml.safe_load((CONFIGS / "cifar10.yaml").read_text())
    config["schemes"] = {"arms": {"cd": {"method": "cd", "budgets": ["1.5P"]}}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    run = snakemake(tmp_path, "-n", "--configfile", str(path))
    assert run.returncode != 0 and "Traceback" not in run.stderr
    assert "config schemes.arms.cd.budgets: 1.5P needs the model's pretraining compute P" in run.stderr
    config["schemes"]["pretrain_images"] = {"ddpmpp": 200_000_000}
    path.write_text(yaml.safe_dump(config))
    plan = snakemake(tmp_path, "-n", "-p", "--configfile", str(path))
    assert plan.returncode == 0, plan.stderr[-2000:]
    # 0.5 × 3 passes × 200M images / (6 passes × batch 128) = 390,625 iterations.
    assert _arg(_commands(plan.stdout, "train_scheme")[0], "training.iterations") == "390625"
