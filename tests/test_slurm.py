"""The workflow on a real SLURM, through the repository's profile: the smoke study, a tuning job preempted with
`scancel --signal=TERM`, and one whose time limit is cut short. Needs a SLURM cluster with partitions `cpu` and `gpu`
(`CI=true bash .ci/run` starts a single-node one with scripts/slurm_testbed.sh; docs/cluster.md); else skipped."""

from __future__ import annotations

import datetime
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from ect.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "workflow" / "configs"
BIN = Path(sys.executable).parent
EXPERIMENT = "preempt"
ITERATIONS, CHECKPOINT_EVERY, STOP_AFTER = 300, 50, 60  # stop a tuning job once its log shows iteration >= 60


def _no_slurm() -> str | None:
    """Why the SLURM tests cannot run here, or None."""
    if shutil.which("sinfo") is None:
        return "no SLURM here (sinfo not found); `CI=true bash .ci/run` or scripts/slurm_testbed.sh start sets one up"
    try:
        info = subprocess.run(["sinfo", "-h", "-o", "%R %T"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "no SLURM controller answers sinfo within 30 s"
    if info.returncode != 0:
        return f"no SLURM controller answers: {(info.stderr.strip().splitlines() or ['sinfo failed'])[-1]}"
    states = dict(line.split() for line in info.stdout.splitlines() if line.strip())
    usable = {p for p, state in states.items() if state.rstrip("*~#") in ("idle", "mixed", "allocated")}
    if not {"cpu", "gpu"} <= usable:
        return f"SLURM has no usable partitions cpu and gpu (sinfo: {states})"
    return None


REASON = _no_slurm()
pytestmark = [pytest.mark.slurm, pytest.mark.skipif(REASON is not None, reason=REASON or "")]


def snakemake(workdir: Path, *args: str, env: dict | None = None, background: bool = False):
    command = [str(BIN / "snakemake"), "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir), *args]
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **(env or {})}
    if background:
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    run = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, timeout=2400)
    return run.returncode, run.stdout


def slurm_profile(directory: Path) -> Path:
    """The repository's SLURM profile with this cluster's account and partitions, and a 5 s first status check
    instead of 40 s (jobs here take seconds)."""
    profile = yaml.safe_load((ROOT / "workflow/profiles/slurm/config.yaml").read_text())
    profile["default-resources"]["slurm_account"] = "ecttest"
    profile["default-resources"]["slurm_partition"] = "cpu"
    for resources in profile["set-resources"].values():
        resources["slurm_partition"] = "gpu"
    profile["slurm-init-seconds-before-status-checks"] = 5
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return directory


# What the SLURM smoke run trains and scores as cluster jobs: one size's tuning segments with their evaluations, and
# the iCT arm's two segments with theirs. The rest of the study comes from the local run (the per-job cost on a
# 2-core test cluster is ~45 s: the whole study took 19 min there), so the run also shows that a study continues
# from results it did not make.
RERUN = ("results/smoke/tune/tiny-s", "results/smoke/schemes/ict")


def test_the_smoke_study_on_slurm_gives_the_local_results(smoke_study, tmp_path):
    shutil.copytree(smoke_study, tmp_path / "work", ignore=shutil.ignore_patterns(".snakemake", "report.html"))
    work = tmp_path / "work"
    for run in RERUN:
        shutil.rmtree(work / run)
    tables = sorted(p.relative_to(smoke_study) for p in (smoke_study / "results/smoke").rglob("*.csv"))
    assert "results/smoke/metrics.csv" in map(str, tables) and "results/smoke/schemes.csv" in map(str, tables)
    for table in tables:  # every table is made again, from the cluster's runs and the copied ones
        (work / table).unlink()
    code, out = snakemake(work, "--workflow-profile", str(slurm_profile(tmp_path / "profile")),
                          "--configfile", str(CONFIGS / "smoke.yaml"))
    assert code == 0, out[-5000:]
    submitted = set(re.findall(r"submitted with SLURM jobid \d+ \(log: \S*/slurm_logs/rule_(\w+)/", out))
    assert {"tune", "evaluate_ect", "train_scheme", "evaluate_scheme"} <= submitted, submitted
    # Each training segment ran as a SLURM job: its attempt's log is named after the job id.
    for log in ("tune/tiny-s-0000020", "tune/tiny-s-0000060", "schemes/ict-seed0-0000009", "schemes/ict-seed0-0000018"):
        assert list((work / "results/smoke/logs").glob(f"{log}.log.*-job[0-9]*")), log
    for table in tables:
        assert (work / table).read_bytes() == (smoke_study / table).read_bytes(), table


# --- A tuning job stopped mid-run ---------------------------------------------------------------------------------


def _preempt_config(directory: Path) -> Path:
    """The smoke study cut to one model and one longer tuning run, whose job is stopped mid-run."""
    config = yaml.safe_load((CONFIGS / "smoke.yaml").read_text())
    config.update(experiment=EXPERIMENT, models={"tiny-s": {"preset": "tiny-s"}}, budgets=[ITERATIONS],
                  replicates=[], samplers=["1step"], evaluation={"batch": 200, "seeds": [0]},
                  ablations={"model": "tiny-s", "budgets": [ITERATIONS], "axes": {}})
    config["tune"]["set"].update({"training.checkpoint_every": CHECKPOINT_EVERY, "training.log_every": 5})
    path = directory / "preempt.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


TARGET = f"results/{EXPERIMENT}/metrics.csv"
RUN = f"results/{EXPERIMENT}/tune/tiny-s"
LOG = f"results/{EXPERIMENT}/logs/tune/tiny-s-{ITERATIONS:07d}.log"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    """The preemption study run locally without interruption: the reference."""
    workdir = tmp_path_factory.mktemp("uninterrupted")
    code, out = snakemake(workdir, TARGET, "--cores", "2", "--configfile", str(_preempt_config(workdir)))
    assert code == 0, out[-5000:]
    return workdir


def _attempts(workdir: Path) -> list[str]:
    """The tuning job's logs, one per attempt, oldest first (the rule's log links to the latest)."""
    return [p.read_text() for p in sorted(workdir.glob(f"{LOG}.*"), key=lambda p: p.stat().st_mtime)]


def _stop_mid_run(uninterrupted: Path, workdir: Path, stop, profile: Path, env: dict) -> str:
    """Run the preemption study on SLURM from the reference's data and diffusion model, call ``stop(job_id)`` once
    the tuning job's log shows iteration STOP_AFTER, and let the workflow finish. Returns snakemake's output."""
    shutil.copytree(uninterrupted, workdir, ignore=shutil.ignore_patterns(".snakemake", "tune", "metrics.csv"))
    config = _preempt_config(workdir)
    proc = snakemake(workdir, TARGET, "--workflow-profile", str(profile), "--configfile", str(config), env=env,
                     background=True)
    deadline, stopped = time.time() + 1200, False
    try:
        while not stopped and proc.poll() is None and time.time() < deadline:
            text = "".join(_attempts(workdir))
            done = [int(m) for m in re.findall(r"iteration (\d+)/", text)]
            if done and max(done) >= STOP_AFTER:
                stop(re.findall(r"-job(\d+)$", str(sorted(workdir.glob(f"{LOG}.*"))[-1]))[0])
                stopped = True
            time.sleep(0.5)
        out, _ = proc.communicate(timeout=max(deadline - time.time(), 1))
    finally:
        if proc.poll() is None:
            proc.kill()
    assert stopped, f"the tuning job never reached iteration {STOP_AFTER}: {_attempts(workdir)}"
    assert proc.returncode == 0, out[-5000:]
    return out


def _check_resumed_exactly(uninterrupted: Path, workdir: Path, out: str, cause: str) -> None:
    attempts = _attempts(workdir)
    assert len(attempts) == 2, attempts
    stops = re.findall(rf"stopped by {cause} at iteration (\d+): checkpoint written", attempts[0])
    assert len(stops) == 1, attempts[0]
    stopped_at = int(stops[0])
    assert STOP_AFTER <= stopped_at < ITERATIONS
    # The retry resumed from the checkpoint written on the way out, not the periodic one before it.
    assert f"resuming {RUN} from iteration {stopped_at}\n" in attempts[1], attempts[1]
    assert (workdir / LOG).read_text() == attempts[1]  # the rule's log: the last attempt
    assert "Removing output files" not in out  # nothing finished was deleted
    for name in (f"snapshot-{ITERATIONS:07d}.pt", "checkpoint.pt"):
        ours, reference = load_checkpoint(workdir / RUN / name), load_checkpoint(uninterrupted / RUN / name)
        for part in ("ema", "net") if name == "checkpoint.pt" else ("ema",):
            assert all(torch.equal(t, reference[part][k]) for k, t in ours[part].items()), (name, part)
    assert (workdir / TARGET).read_bytes() == (uninterrupted / TARGET).read_bytes()


def test_a_tuning_job_preempted_with_scancel_resumes_from_where_it_stopped(uninterrupted, tmp_path):
    """`scancel --signal=TERM` signals the tasks of the job's steps; the trainer is one (its own step)."""
    out = _stop_mid_run(uninterrupted, tmp_path / "work",
                        lambda job: subprocess.run(["scancel", "--signal=TERM", job], check=True),
                        slurm_profile(tmp_path / "profile"), {})
    _check_resumed_exactly(uninterrupted, tmp_path / "work", out, "SIGTERM")


def test_a_tuning_job_whose_time_limit_runs_out_stops_before_it_and_resumes(uninterrupted, tmp_path):
    """The time limit cut to end 60-120 s from now (whole minutes): the trainer sees the new end time (squeue, every
    2 s here) and stops ECT_STOP_MARGIN = 150 s before it, at once. No --signal, so nothing else could stop it
    cleanly before SLURM kills it."""

    def cut_time_limit(job: str) -> None:
        start = subprocess.run(["squeue", "-j", job, "-h", "-o", "%S"], capture_output=True, text=True, check=True)
        elapsed = time.time() - datetime.datetime.fromisoformat(start.stdout.strip()).timestamp()
        minutes = math.floor((elapsed + 60) / 60) + 1  # ends 60-120 s from now
        subprocess.run(["scontrol", "update", f"JobId={job}", f"TimeLimit={minutes}"], check=True)

    profile = slurm_profile(tmp_path / "profile")
    config = yaml.safe_load((profile / "config.yaml").read_text())
    config["default-resources"]["slurm_extra"] = "''"
    (profile / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    out = _stop_mid_run(uninterrupted, tmp_path / "work", cut_time_limit, profile,
                        {"ECT_STOP_MARGIN": "150", "ECT_DEADLINE_REFRESH": "2"})
    _check_resumed_exactly(uninterrupted, tmp_path / "work", out,
                           r"the job's time limit \(ECT_STOP_MARGIN=150 s before its end at [^)]*\)")
