"""The SLURM path without SLURM: the profile's routing of GPU rules, one node per job, the planning-time checks of
time limits and of the status command (tests/test_slurm.py runs the same profile on a real single-node SLURM)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ect import study

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "workflow" / "configs"
PROFILE = ROOT / "workflow/profiles/slurm"
BIN = Path(sys.executable).parent


def snakemake(workdir: Path, *args: str, snakefile: Path = ROOT / "Snakefile") -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run([str(BIN / "snakemake"), "--snakefile", str(snakefile), "--directory", str(workdir), *args],
                          capture_output=True, text=True, env=env, timeout=600)


def _profile() -> dict:
    return yaml.safe_load((PROFILE / "config.yaml").read_text())


def test_every_rule_that_can_ask_for_a_gpu_goes_to_the_gpu_partition(tmp_path):
    wrapper = tmp_path / "Snakefile"
    wrapper.write_text(f"include: {str(ROOT / 'Snakefile')!r}\n\n"
                       "import json, sys\n"
                       "print('RULES ' + json.dumps({r.name: sorted(r.resources) for r in workflow.rules}), "
                       "file=sys.stderr)\n")
    run = snakemake(tmp_path, "--list-rules", "--configfile", str(CONFIGS / "smoke.yaml"), snakefile=wrapper)
    assert run.returncode == 0, run.stderr[-3000:]
    rules = json.loads(re.search(r"^RULES (.*)$", run.stderr, re.MULTILINE)[1])
    gpu_rules = {name for name, resources in rules.items() if "gpu" in resources}
    assert {"tune", "pretrain", "evaluate_ect", "tune_replicate", "evaluate_ablation_spread"} <= gpu_rules
    # Importing an official checkpoint has a gpu resource but runs on CPUs in every preset (the profile's CPU
    # partition): giving it GPUs would need a line in the profile too.
    for config in [ROOT / "config.yaml", *CONFIGS.glob("*.yaml")]:
        assert yaml.safe_load(config.read_text()).get("resources", {}).get("import", {}).get("gpu", 0) == 0, config
    routed = {rule for rule, res in _profile()["set-resources"].items() if res.get("slurm_partition") == "gpu"}
    missing = sorted(gpu_rules - routed - {"import_checkpoint"})
    assert not missing, f"rules with a gpu resource but no slurm_partition in {PROFILE}/config.yaml: {missing}"
    assert not routed - gpu_rules, f"the profile routes rules that do not exist or use no GPU: {routed - gpu_rules}"


def test_multi_gpu_jobs_ask_for_one_node_and_training_runs_as_its_own_job_step(tmp_path):
    plan = snakemake(tmp_path, "-n", "-p", "--workflow-profile", str(PROFILE), "--configfile",
                     str(CONFIGS / "cifar10.yaml"))
    assert plan.returncode == 0, plan.stderr[-3000:]
    tunes = re.findall(r"^rule tune:\n(?:    .*\n)*?    resources: (.*)\nShell command: (.*)$", plan.stdout,
                       re.MULTILINE)
    assert len(tunes) == 3
    for resources, command in tunes:
        res = dict(item.split("=", 1) for item in resources.split(", "))
        assert res["gpu"] == "4" and res["nodes"] == "1"  # the SLURM executor passes it as sbatch --nodes=1
        assert "exec ${SLURM_JOB_ID:+srun --overlap --ntasks=1 --nodes=1} torchrun --standalone" in command
        # One log per attempt, the rule's log a link to the latest: Snakemake deletes the log before a retry.
        log = re.match(r"attempt=(\S+/logs/tune/ddpmpp-\d+\.log)\.\$\(date -u \+%Y%m%dT%H%M%SZ\)-\$\$"
                       r"\$\{SLURM_JOB_ID:\+-job\$SLURM_JOB_ID\}; ln -sfn \"\$\{attempt##\*/\}\" (\S+); ", command)
        assert log and log[1] == log[2] and command.endswith(' > "$attempt" 2>&1')


@pytest.mark.parametrize(("args", "env", "message"), [
    (["--set-resources", "tune:runtime=8"], {},
     "rule tune: runtime 8 min does not exceed the --signal lead time 300 s plus ECT_STOP_MARGIN 300 s"),
    (["--set-resources", "evaluate_ect:runtime=5"], {}, "rule evaluate_ect: runtime 5 min does not exceed the "
                                                        "--signal lead time 300 s, so the job would be stopped"),
    ([], {"ECT_STOP_MARGIN": "soon"}, "ECT_STOP_MARGIN='soon': expected a whole number of seconds"),
])
def test_a_time_limit_within_the_signal_lead_or_stop_margin_stops_the_plan_naming_the_rule(tmp_path, monkeypatch,
                                                                                           args, env, message):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    plan = snakemake(tmp_path, "-n", "--workflow-profile", str(PROFILE), "--configfile",
                     str(CONFIGS / "cifar10.yaml"), *args)
    assert plan.returncode != 0 and message in plan.stderr, plan.stderr[-3000:]
    assert "Traceback" not in plan.stderr


def test_a_time_limit_with_room_plans(tmp_path, monkeypatch):
    monkeypatch.setenv("ECT_STOP_MARGIN", "59")
    plan = snakemake(tmp_path, "-n", "--workflow-profile", str(PROFILE), "--configfile",
                     str(CONFIGS / "cifar10.yaml"), "--set-resources", "tune:runtime=6", "tune:slurm_partition=gpu")
    assert plan.returncode == 0, plan.stderr[-3000:]


def test_signal_lead_and_time_limit_check():
    assert study.signal_lead("'--signal=TERM@300'") == 300
    assert study.signal_lead("--qos=low --signal B:USR1@90") == 90
    assert study.signal_lead("--signal=USR1") == 60  # SLURM's default lead time
    assert study.signal_lead(None) == study.signal_lead("--qos=low") == 0
    study.check_time_limit("tune", 11, "--signal=TERM@300", 300)
    study.check_time_limit("tune", None, "--signal=TERM@300", 300)  # no time limit asked for
    with pytest.raises(study.StudyError, match="rule tune: runtime 10 min does not exceed"):
        study.check_time_limit("tune", 10, "--signal=TERM@300", 300)
    with pytest.raises(study.StudyError, match="rule pretrain: runtime 1 min .* lead time 60 s, so"):
        study.check_time_limit("pretrain", "1", "--signal=USR1", 0)
    with pytest.raises(study.StudyError, match="runtime '1h' is not a whole number of minutes"):
        study.check_time_limit("tune", "1h", None, 0)


SCONTROL = """Configuration data as of 2026-12-03T11:24:00
AccountingStorageType   = {accounting}
MinJobAge               = {age} sec
SLURM_VERSION           = 22.05.8
"""


@pytest.mark.parametrize(("command", "accounting", "age", "message"), [
    ("squeue", "accounting_storage/none", 300, None),
    ("sacct", "accounting_storage/slurmdbd", 300, None),
    ("squeue", "accounting_storage/slurmdbd", 30, None),  # the executor switches to sacct, which works here
    ("sacct", "accounting_storage/none", 300, "no accounting .* set `slurm-status-command: squeue`"),
    ("squeue", "accounting_storage/none", 60, "MinJobAge=60 s.* `slurm-init-seconds-before-status-checks: 20`"),
    ("qstat", "accounting_storage/none", 300, "slurm-status-command 'qstat'"),
])
def test_the_status_command_must_see_jobs_finish(command, accounting, age, message):
    config = study.parse_scontrol_config(SCONTROL.format(accounting=accounting, age=age))
    assert config["MinJobAge"] == f"{age} sec" and "Configuration data as of 2026-12-03T11" not in config
    if message is None:
        study.check_slurm_status(command, config)
    else:
        with pytest.raises(study.StudyError, match=message):
            study.check_slurm_status(command, config)


def test_the_profile_chooses_squeue_and_one_node_deliberately():
    profile = _profile()
    assert profile["slurm-status-command"] == "squeue"  # works without an accounting database
    assert profile["default-resources"]["nodes"] == 1
    assert study.signal_lead(profile["default-resources"]["slurm_extra"]) == 300
