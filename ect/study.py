"""Checks of a workflow (study) config that need ect's knowledge, run by the Snakefile before any job.

Each check raises :class:`StudyError` with one line naming the config key and the offending value. Plain Python,
so the checks are testable without Snakemake (the Snakefile turns a StudyError into its error message).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ect.errors import UserError
from ect.metric_specs import METRICS
from ect.runs import snapshot_name, state_iterations, state_name

# sbatch's --signal=[{R|B}:]SIG[@SECONDS] (SLURM's default lead time is 60 s).
SBATCH_SIGNAL = re.compile(r"--signal[= ]+['\"]?(?:[RB]+:)?\w+(?:@(\d+))?")
DEFAULT_SIGNAL_LEAD = 60
STATUS_COMMANDS = ("sacct", "squeue")
# Set by the workflow for each tuning segment (iterations) or fixed for all of them (budgets): never by the user.
SEGMENT_KEYS = ("training.iterations", "training.budgets")
DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
GRAYSCALE = ("digits",)  # datasets with 1-channel images (known without reading the data)


class StudyError(UserError):
    """The workflow config asks for something ect cannot do, or would silently not do."""


def check_tune_sets(where: str, sets: dict[str, Any]) -> None:
    for key in SEGMENT_KEYS:
        if key in sets:
            raise StudyError(f"config {where}: {key} cannot be set for tuning; the budgets come from `budgets` "
                             "(and `ablations.budgets`)")


def check_metrics(metrics: list[str], dataset: str) -> None:
    """Every metric must apply to the study's dataset (as `ect evaluate` would check, but before any job)."""
    channels = 1 if dataset in GRAYSCALE else 3
    for name in metrics:
        spec = METRICS[name]
        if spec.datasets is not None and dataset not in spec.datasets:
            raise StudyError(f"config metrics.{name}: applies to {', '.join(spec.datasets)} only, not to the "
                             f"study's dataset {dataset!r}")
        if spec.channels != channels:
            raise StudyError(f"config metrics.{name}: needs {spec.channels}-channel images; {dataset!r} has "
                             f"{channels}")


def check_device(device: str) -> None:
    if not DEVICE.match(device):
        raise StudyError(f"config evaluation.device: {device!r} is not auto, cpu, cuda or cuda:N")


def check_ablation_key(axis: str, key: str, tune_config: dict[str, Any]) -> Any:
    """The tuning run's value of an ablation axis's key (the base value); the key must be one tuning uses."""
    where = f"config ablations.axes.{axis}.key"
    if key in SEGMENT_KEYS:
        raise StudyError(f"{where}: {key} is set by the workflow for every tuning run; ablate budgets with "
                         "`ablations.budgets`")
    if key.startswith("diffusion."):
        raise StudyError(f"{where}: {key} is a pretraining setting that tuning never uses")
    section, _, name = key.partition(".")
    if section not in tune_config or name not in tune_config[section]:
        known = sorted(tune_config.get(section, {})) or sorted(tune_config)
        raise StudyError(f"{where}: {key} is not an ect run-config key; known: {known}")
    return tune_config[section][name]


def check_run_progress(run_dir: str | Path, budgets: list[int]) -> None:
    """A run only moves forward: a budget below the state it reached must already have its snapshot and manifest.

    Catches a budget inserted between existing ones (or a deleted snapshot) at planning time.
    """
    done = state_iterations(run_dir)
    if not done:
        return
    for budget in budgets:
        if budget < done[-1] and not ((Path(run_dir) / snapshot_name(budget)).is_file()
                                      and (Path(run_dir) / state_name(budget)).is_file()):
            raise StudyError(f"config budgets: {budget} lies below iteration {done[-1]} that {run_dir} has already "
                             f"reached, without a snapshot there; a run cannot go back: give the study a new "
                             f"`experiment` name (a new run directory), or remove {budget} from the budgets")


def check_replicates(replicates: list[int], main_seed: int, model: str) -> None:
    """Replicate runs need training seeds other than the main run's, or one of them would repeat it."""
    if main_seed in replicates:
        raise StudyError(f"config replicates: {main_seed} is the training.seed of {model}'s main run "
                         f"(tune/{model}); list only other seeds, e.g. {[s for s in range(1, 4) if s != main_seed]}")


def signal_lead(slurm_extra: str | None) -> int:
    """Seconds before a job's time limit at which SLURM signals it (``--signal`` among the sbatch options), else 0."""
    found = SBATCH_SIGNAL.findall(slurm_extra or "")
    return max((int(lead) if lead else DEFAULT_SIGNAL_LEAD for lead in found), default=0)


def check_time_limit(rule: str, runtime: int | str | None, slurm_extra: str | None, stop_margin: int) -> None:
    """A SLURM job's time limit (``runtime``, minutes) must leave time to work after its ``--signal`` lead time and,
    for training jobs, the stop margin (``ECT_STOP_MARGIN``, 0 for other jobs): else it is stopped as it starts,
    attempt after attempt."""
    if runtime is None or runtime == "":
        return
    try:
        minutes = int(runtime)
    except (TypeError, ValueError):
        raise StudyError(f"rule {rule}: runtime {runtime!r} is not a whole number of minutes") from None
    lead = signal_lead(slurm_extra)
    if minutes * 60 <= lead + stop_margin:
        margin, or_margin = ((f" plus ECT_STOP_MARGIN {stop_margin} s", " or ECT_STOP_MARGIN") if stop_margin
                             else ("", ""))
        raise StudyError(f"rule {rule}: runtime {minutes} min does not exceed the --signal lead time {lead} s{margin}, "
                         "so the job would be stopped as soon as it starts; raise the rule's runtime (the config's "
                         f"`resources`) or lower the lead time (the profile's slurm_extra){or_margin}")


def parse_scontrol_config(text: str) -> dict[str, str]:
    """``scontrol show config`` as {key: value} (``MinJobAge = 300 sec`` -> {"MinJobAge": "300 sec"})."""
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line)
    return {key.strip(): value.strip() for key, value in pairs if key.strip() and " " not in key.strip()}


def check_slurm_status(status_command: str | None, slurm_config: dict[str, str], interval: int = 40) -> None:
    """The SLURM executor must be able to see its jobs finish, or it waits forever ("No active jobs").

    ``sacct`` needs accounting storage. ``squeue`` sees a finished job for MinJobAge seconds only, and the executor
    itself switches to sacct when MinJobAge is below three status intervals (``interval``, the executor's
    init_seconds_before_status_checks).
    """
    if status_command not in STATUS_COMMANDS:
        raise StudyError(f"slurm-status-command {status_command!r}: expected one of {', '.join(STATUS_COMMANDS)}")
    accounting = slurm_config.get("AccountingStorageType", "")
    no_accounting = accounting in ("", "(null)", "accounting_storage/none")
    min_age = slurm_config.get("MinJobAge", "").split()
    min_job_age = int(min_age[0]) if min_age and min_age[0].isdigit() else None
    if not no_accounting:
        return
    if status_command == "sacct":
        raise StudyError("SLURM here has no accounting (AccountingStorageType=accounting_storage/none), so sacct "
                         "never reports a job finished: set `slurm-status-command: squeue` in the profile")
    if min_job_age is not None and min_job_age < 3 * interval:
        raise StudyError(f"SLURM here has no accounting and forgets finished jobs after MinJobAge={min_job_age} s, "
                         f"less than 3 status intervals of {interval} s, so the SLURM executor would poll with "
                         f"sacct, which cannot see them: set `slurm-init-seconds-before-status-checks: "
                         f"{max(min_job_age // 3, 1)}` in the profile (or ask for MinJobAge >= {3 * interval})")


def first_seed(seed: int, num: int) -> int:
    """Evaluation seed ``seed`` draws samples seed·num … seed·num + num − 1: disjoint sets for different seeds."""
    return seed * num


def default_num(metric: str) -> int:
    return METRICS[metric].default_num
