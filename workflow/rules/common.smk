# Shared by all rules: the validated config turned into run settings, paths and `ect` command lines.
# Every run config (pretraining, tuning, each ablation) is resolved here with ect's own loader, and the study-level
# checks of ect.study run, so a bad key or value stops the workflow before any job with one line naming it.

import json
import re
import shlex
import subprocess
import sys
import time
from functools import cache
from pathlib import Path

import yaml

from ect import runs, study
from ect.analysis.paper import paper_keys
from ect.config import ConfigError, batch_split, load_run_config
from ect.errors import UserError
from ect.guard import stop_margin

EXP = config["experiment"]
RESULTS = f"results/{EXP}"
FIGURES = f"figures/{EXP}"
MODELS = config["models"]
METRICS = list(config["metrics"])
SAMPLERS = config["samplers"]
BUDGETS = sorted(config["budgets"])
ABLATIONS = config["ablations"]
AXES = ABLATIONS["axes"]
ABLATION_MODEL = ABLATIONS["model"] or next(iter(MODELS))
ABLATION_BUDGETS = sorted(ABLATIONS["budgets"]) or BUDGETS[-1:]
IMPORTED = [m for m, spec in MODELS.items() if spec["import"]]
TRAINED = [m for m in MODELS if m not in IMPORTED]
SEEDS = sorted(config["evaluation"]["seeds"])
REPLICATES = sorted(config["replicates"])
# One software environment for every rule (`--sdm conda` builds it once, e.g. on a cluster node).
SOFTWARE = f"{workflow.basedir}/environment.yml"

# Evaluation records: one file per checkpoint, sampler, metric and evaluation seed ({seed} is the file suffix
# ect.runs.seed_suffix gives; `ect evaluate --out` fills {sampler} and {seed} itself).
EVAL_DIFFUSION = f"{RESULTS}/pretrain/{{model}}/eval/heun-{{metric}}{{seed}}.json"
EVAL_TUNE = f"{RESULTS}/tune/{{model}}/eval/{{iteration}}-{{sampler}}-{{metric}}{{seed}}.json"
EVAL_ABLATION = f"{RESULTS}/ablations/{{axis}}={{value}}/eval/{{iteration}}-{{sampler}}-{{metric}}{{seed}}.json"
EVAL_REPLICATE = f"{RESULTS}/tune-seed{{tseed}}/{{model}}/eval/{{iteration}}-{{sampler}}-{{metric}}{{seed}}.json"


def fail(message: str):
    """Stop the workflow with one line (Snakemake prints a raised exception with its traceback)."""
    sys.exit(f"Error: {message}")


def alternatives(names) -> str:
    """A wildcard constraint matching exactly these names."""
    return "|".join(re.escape(str(n)) for n in names) or "(?!)"


wildcard_constraints:
    model=alternatives(MODELS),
    metric=alternatives(METRICS),
    sampler=alternatives(SAMPLERS),
    iteration=r"\d+",
    step=r"\d\d\d\d\d\d\d+",  # zero-padded (ect.runs.step)
    axis=alternatives(AXES),
    value=r"[^/=]+",
    tseed=alternatives(REPLICATES),


def _resolve(where: str, run_config: str | None, sets: dict):
    try:
        return load_run_config(run_config, [f"{k}={set_value(v)}" for k, v in sets.items()])
    except ConfigError as exc:
        fail(f"config {where}: {exc}")


def _data_sets() -> dict:
    return {"data.data_dir": config["data_dir"]} if config["data_dir"] else {}


def pretrain_sets(model: str) -> dict:
    spec = MODELS[model]
    return {**config["pretrain"]["set"], **spec["pretrain_set"], "network.preset": spec["preset"], **_data_sets()}


def tune_sets(model: str) -> dict:
    """A tuning run's settings; each segment adds only its own training.iterations (its budget)."""
    spec = MODELS[model]
    return {**config["tune"]["set"], **spec["tune_set"], "network.preset": spec["preset"], **_data_sets(),
            "training.budgets": []}


def ablation_sets(axis: str, value: str) -> dict:
    # The value comes from the run's path and is parsed by ect like any --set value ("0.03" -> 0.03).
    return {**tune_sets(ABLATION_MODEL), AXES[axis]["key"]: yaml.safe_load(value)}


def set_value(value) -> str:
    """A value as `--set` reads it (YAML): plain where that round-trips (tiny-s, 0.001), else JSON ("1e-3")."""
    plain = value if isinstance(value, str) else json.dumps(value)
    return plain if yaml.safe_load(plain) == value else json.dumps(value)


def set_args(sets: dict) -> str:
    """`--set` options in key order: reordering a config's keys changes no job's params (no rerun)."""
    return " ".join(f"--set {shlex.quote(f'{k}={set_value(v)}')}" for k, v in sorted(sets.items()))


def config_arg(section: str) -> str:
    run_config = config[section]["config"]
    return f"--config {shlex.quote(run_config)}" if run_config else ""


def _check(check, *args):
    try:
        return check(*args)
    except study.StudyError as exc:
        fail(str(exc))


# Resolve (and so validate) every run config now.
_check(study.check_tune_sets, "tune.set", config["tune"]["set"])
for _m in MODELS:
    _check(study.check_tune_sets, f"models.{_m}.tune_set", MODELS[_m]["tune_set"])
PRETRAIN_CFG = {m: _resolve(f"pretrain.set / models.{m}.pretrain_set", config["pretrain"]["config"],
                            pretrain_sets(m)) for m in TRAINED}
TUNE_CFG = {m: _resolve(f"tune.set / models.{m}.tune_set", config["tune"]["config"],
                        {**tune_sets(m), "training.iterations": BUDGETS[-1]}) for m in MODELS}
if ABLATION_MODEL not in MODELS:
    fail(f"config ablations.model: {ABLATION_MODEL!r} is not one of the models {list(MODELS)}")
if not set(ABLATION_BUDGETS) <= set(BUDGETS):
    fail(f"config ablations.budgets: {ABLATION_BUDGETS} must be a subset of budgets {BUDGETS} "
         "(the base run's snapshots serve as the ablation baseline)")
if config["paper"] is not None and config["paper"] not in paper_keys():
    fail(f"config paper: {config['paper']!r} is not one of {paper_keys()}")
DATASET = TUNE_CFG[ABLATION_MODEL].data.name
for _cfg in [*PRETRAIN_CFG.values(), *TUNE_CFG.values()]:
    if _cfg.data.name != DATASET:
        fail(f"config: every run must use one dataset, found {DATASET!r} and {_cfg.data.name!r}")
_check(study.check_metrics, METRICS, DATASET)
_check(study.check_device, config["evaluation"]["device"])
# An ablation value equal to the base run's is not run again: the base run's snapshots stand for it.
ABLATION_BASE = {axis: _check(study.check_ablation_key, axis, spec["key"], TUNE_CFG[ABLATION_MODEL].to_dict())
                 for axis, spec in AXES.items()}
ABLATION_RUNS = [(axis, str(v)) for axis, spec in AXES.items() for v in spec["values"] if v != ABLATION_BASE[axis]]


@cache
def ablation_config(axis: str, value: str):
    """The resolved config of an ablation run (any value asked for by path is checked here, at planning)."""
    return _resolve(f"ablations.axes.{axis} (run ablations/{axis}={value})", config["tune"]["config"],
                    {**ablation_sets(axis, value), "training.iterations": ABLATION_BUDGETS[-1]})


ABLATION_CFG = {run: ablation_config(*run) for run in ABLATION_RUNS}


# --- Paths ------------------------------------------------------------------------------------------------------


def snapshot(run: str, iteration: int) -> str:
    return f"{run}/{runs.snapshot_name(iteration)}"


def pretrained_output(model: str) -> str:
    """The model's diffusion checkpoint (a Snakemake output): imported, or pretraining's final snapshot."""
    if model in IMPORTED:
        return f"{RESULTS}/pretrain/{model}/imported.pt"
    return snapshot(f"{RESULTS}/pretrain/{model}", PRETRAIN_CFG[model].training.iterations)


def ablation_dir(axis: str, value: str) -> str:
    return f"{RESULTS}/ablations/{axis}={value}"


def replicate_dir(seed: int | str, model: str) -> str:
    return f"{RESULTS}/tune-seed{seed}/{model}"


# A tuning job's run, from its wildcards: tune/<model>, tune-seed<N>/<model> (a replicate), or
# ablations/<axis>=<value> of the ablated model.
def run_dir(wildcards) -> str:
    if wildcards.get("axis"):
        return ablation_dir(wildcards.axis, wildcards.value)
    if wildcards.get("tseed"):
        return replicate_dir(wildcards.tseed, wildcards.model)
    return f"{RESULTS}/tune/{wildcards.model}"


def run_budgets(wildcards) -> list[int]:
    return ABLATION_BUDGETS if wildcards.get("axis") else BUDGETS


def run_sets(wildcards) -> dict:
    if wildcards.get("axis"):
        ablation_config(wildcards.axis, wildcards.value)  # a bad value stops the plan here
        return ablation_sets(wildcards.axis, wildcards.value)
    if wildcards.get("tseed"):
        return {**tune_sets(wildcards.model), "training.seed": int(wildcards.tseed)}
    return tune_sets(wildcards.model)


def segment_input(wildcards):
    """Segment b_k of a run continues from the state left by segment b_(k-1), or starts from the diffusion model."""
    budgets, iteration = run_budgets(wildcards), int(wildcards.step)
    run_sets(wildcards)
    if iteration not in budgets:
        fail(f"{run_dir(wildcards)}/{runs.snapshot_name(iteration)}: {iteration} is not one of the budgets {budgets}")
    k = budgets.index(iteration)
    if k == 0:
        return pretrained_output(job_model(wildcards))
    return ancient(f"{run_dir(wildcards)}/{runs.state_name(budgets[k - 1])}")


def eval_seeds(iteration: int | None, budgets: list[int]) -> list[int]:
    """Seeds evaluated at a budget: all at a run's largest budget and for the diffusion model (None), else one."""
    return SEEDS if iteration is None or iteration == budgets[-1] else SEEDS[:1]


def run_evaluations(pattern: str, where: dict, model: str, variant: str,
                    budgets: list[int]) -> list[tuple[str, str, str]]:
    """(model, variant, path) of every evaluation of one run: ``pattern`` (an EVAL_* pattern) filled with the run's
    wildcards ``where``."""
    return [(model, variant, pattern.format(**where, iteration=it, sampler=s, metric=metric,
                                            seed=runs.seed_suffix(seed)))
            for it in budgets for s in SAMPLERS for metric in METRICS for seed in eval_seeds(it, budgets)]


def evaluations() -> list[tuple[str, str, str]]:
    """Every evaluation record of the study as (model, variant, path)."""
    items = [(m, "base", EVAL_DIFFUSION.format(model=m, metric=metric, seed=runs.seed_suffix(seed)))
             for m in MODELS for metric in METRICS for seed in SEEDS]
    for m in MODELS:
        items += run_evaluations(EVAL_TUNE, {"model": m}, m, "base", BUDGETS)
        for seed in REPLICATES:  # the same rows as the main run's: collect averages over them
            items += run_evaluations(EVAL_REPLICATE, {"tseed": seed, "model": m}, m, "base", BUDGETS)
    for axis in AXES:
        items += ablation_evaluations(axis)[1]
    return items


def ablation_evaluations(axis: str) -> tuple[list, list]:
    """(base-run records at the ablation budgets, the axis's own records), each as (model, variant, path)."""
    base = [item for item in run_evaluations(EVAL_TUNE, {"model": ABLATION_MODEL}, ABLATION_MODEL, "base", BUDGETS)
            if int(Path(item[2]).name.split("-")[0]) in ABLATION_BUDGETS]
    runs_ = [item for a, value in ABLATION_RUNS if a == axis
             for item in run_evaluations(EVAL_ABLATION, {"axis": a, "value": value}, ABLATION_MODEL, f"{a}={value}",
                                         ABLATION_BUDGETS)]
    return base, runs_


# A budget inserted below what a run has already reached cannot be made from it: say so before planning any job.
for _m in MODELS:
    _check(study.check_run_progress, f"{RESULTS}/tune/{_m}", BUDGETS)
    _check(study.check_replicates, REPLICATES, TUNE_CFG[_m].training.seed, _m)
    for _seed in REPLICATES:
        _check(study.check_run_progress, replicate_dir(_seed, _m), BUDGETS)
for _axis, _value in ABLATION_RUNS:
    _check(study.check_run_progress, ablation_dir(_axis, _value), ABLATION_BUDGETS)


def ablation_outputs(axis: str) -> list[str]:
    return [*(f"{RESULTS}/tables/ablation_{axis}{ext}" for ext in (".csv", ".md", ".tex", ".html")),
            *(f"{FIGURES}/ablation_{axis}{ext}" for ext in (".png", ".pdf"))]


def training_logs() -> list[tuple[str, str, str]]:
    """(model, method, log.jsonl) of every main run; imported models have no pretraining log."""
    logs = [(m, "diffusion", f"{RESULTS}/pretrain/{m}/{runs.LOG}") for m in TRAINED]
    return logs + [(m, "ect", f"{RESULTS}/tune/{m}/{runs.LOG}") for m in MODELS]


def grid_checkpoint(model: str, sampler: str) -> str:
    """The diffusion model for Heun, else the ECT snapshot at the largest budget."""
    if sampler == "heun":
        return pretrained_output(model)
    return snapshot(f"{RESULTS}/tune/{model}", BUDGETS[-1])


def sample_grids() -> list[tuple[str, str, str]]:
    """(model, sampler, images) of the sample figure: Heun of the diffusion model, then each ECT sampler."""
    return [(m, s, f"{RESULTS}/samples/{m}-{s}.npz") for m in MODELS for s in ["heun", *SAMPLERS]]


def labelled(flag: str, items: list[tuple[str, str, str]]) -> str:
    return " ".join(f"{flag} {' '.join(shlex.quote(x) for x in item)}" for item in items)


# --- Resources and launch -----------------------------------------------------------------------------------------


def resources(rule: str, model: str | None = None) -> dict:
    """A rule's resources: the config's per-rule values, then the model's own overrides."""
    res = dict(config["resources"][rule])
    if model is not None:
        res.update(MODELS[model]["resources"].get(rule, {}))
    return res


def job_model(wildcards) -> str | None:
    """The model size a job works on: its `model` wildcard, or the ablated model for ablation jobs."""
    return wildcards.get("model") or (ABLATION_MODEL if wildcards.get("axis") else None)


def resource(rule: str, key: str):
    """A callable for `resources:` that looks the value up for the job's model."""
    return lambda wildcards: resources(rule, job_model(wildcards))[key]


def job_threads(rule: str):
    """A callable for `threads:`: a GPU job's CPU cores are gpu × cpus_per_gpu (as SLURM grants them), else threads.

    Training commands set OMP_NUM_THREADS to each process's share, {threads} / {resources.nproc} rounded up.
    """

    def threads(wildcards) -> int:
        res = resources(rule, job_model(wildcards))
        return res["gpu"] * res["cpus_per_gpu"] if res["gpu"] else res["threads"]

    return threads


def granted_gpus(asked: int) -> int:
    """The GPUs Snakemake grants a job that asks for ``asked``: it caps a job's resources at `--resources gpu=N`
    (silently), so a job's processes must follow the grant, not the config."""
    limit = workflow.global_resources.get("gpu")
    limit = getattr(limit, "value", limit)
    return asked if limit is None else min(asked, limit)


def processes(rule: str, model: str | None) -> int:
    """Training processes of a rule's job: one per GPU granted (torchrun), else one."""
    return max(granted_gpus(resources(rule, model)["gpu"]), 1)


def job_processes(rule: str):
    return lambda wildcards: processes(rule, job_model(wildcards))


# Inside a SLURM job, training runs as a job step of its own (`srun --overlap`, sharing the job's resources with the
# step that runs snakemake): SLURM signals the tasks of every step, and with proctrack/cgroup only those, so a
# `scancel --signal=TERM` or the profile's --signal reaches the trainer itself, not only the job-step snakemake
# (which would wait for training to end, then fail the job and have its outputs removed).
JOB_STEP = "${SLURM_JOB_ID:+srun --overlap --ntasks=1 --nodes=1}"


def on_slurm(resources) -> bool:
    """Whether a job goes to SLURM (the SLURM profile gives every job a partition)."""
    return "slurm_partition" in resources.keys() or "slurm_extra" in resources.keys()


def launch(rule: str, n: int, resources) -> str:
    """`ect`, or ``n`` processes (one per GPU) under torchrun; in a SLURM job, as a job step of its own. Checks at
    planning that the job's time limit leaves room after its signal lead time and the trainer's stop margin
    (ect.guard.JobDeadline)."""
    if on_slurm(resources):
        try:
            margin = stop_margin()
        except UserError as exc:
            fail(str(exc))
        _check(study.check_time_limit, rule, resources.get("runtime"), resources.get("slurm_extra"), margin)
    program = f"torchrun --standalone --nproc_per_node={n} -m ect.cli" if n > 1 else "ect"
    return f"{JOB_STEP} {program}"


def launcher(rule: str):
    """A `params` entry: :func:`launch` for a training rule's job, with one process per GPU granted."""
    return lambda wildcards, resources: launch(rule, processes(rule, job_model(wildcards)), resources)


def time_limit(rule: str):
    """A `params` entry for jobs that do not train: checks at planning that the job's time limit exceeds its
    signal lead time."""

    def check(wildcards, resources) -> str:
        if on_slurm(resources):
            _check(study.check_time_limit, rule, resources.get("runtime"), resources.get("slurm_extra"), 0)
        return ""

    return check


onstart:
    # With the SLURM executor: stop before submitting anything if it could not see its jobs finish.
    if workflow.executor_plugin is not None and workflow.executor_plugin.name.endswith("slurm"):
        try:
            _scontrol = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, check=True)
        except (OSError, subprocess.CalledProcessError) as exc:
            fail(f"cannot read the SLURM configuration (scontrol show config): {exc}")
        _settings = workflow.executor_settings
        _check(study.check_slurm_status, _settings.status_command, study.parse_scontrol_config(_scontrol.stdout),
               _settings.init_seconds_before_status_checks or 40)


# Every training job's batch must split evenly over its processes and micro-batches (checked now, not on the node).
# Ablation runs are tuning jobs of the ablated model.
for _rule, _model, _cfg in [*(("pretrain", m, PRETRAIN_CFG[m]) for m in TRAINED),
                            *(("tune", m, TUNE_CFG[m]) for m in MODELS),
                            *(("tune", ABLATION_MODEL, c) for c in ABLATION_CFG.values())]:
    _n = processes(_rule, _model)
    try:
        batch_split(_cfg.training.batch_size, _cfg.training.batch_per_device, _n)
    except ConfigError as exc:
        fail(f"config models.{_model} ({_rule} on {_n} GPUs): {exc}")


def _shared_options() -> str:
    """Options of both `ect prepare` and `ect evaluate`: where data and cache live, which device."""
    options = [f"--cache-dir {shlex.quote(config['cache_dir'])}"]
    if config["evaluation"]["device"] != "auto":
        options.append(f"--device {shlex.quote(config['evaluation']['device'])}")
    if config["data_dir"]:
        options.append(f"--data-dir {shlex.quote(config['data_dir'])}")
    return " ".join(options)


def data_options() -> str:
    """`ect import` options recording the experiment's dataset in an imported checkpoint, for `ect evaluate`."""
    options = [f"--dataset {shlex.quote(DATASET)}"]
    if config["data_dir"]:
        options.append(f"--data-dir {shlex.quote(config['data_dir'])}")
    return " ".join(options)


def prepare_options() -> str:
    options = [_shared_options()]
    for metric, spec in config["metrics"].items():
        options.append(f"--metric {metric}")
        if spec["feature_weights"]:
            options.append(f"--feature-weights {metric} {shlex.quote(spec['feature_weights'])}")
    return " ".join(options)


def eval_options(metric: str, seeds: list[int]) -> str:
    """`ect evaluate` options; each evaluation seed (file suffix -seedK) draws its own, disjoint set of samples."""
    spec, e = config["metrics"][metric], config["evaluation"]
    options = [_shared_options(), "--eval-seed " + " ".join(map(str, seeds)), f"--batch {e['batch']}"]
    if e["precision"] != "auto":
        options.append(f"--precision {e['precision']}")
    if spec["num"]:
        options.append(f"--num {spec['num']}")
    if spec["feature_weights"]:
        options.append(f"--feature-weights {shlex.quote(spec['feature_weights'])}")
    return " ".join(options)


def eval_outputs(pattern: str, samplers: list[str], seeds: list[int]) -> list[str]:
    """The files one evaluation job writes: every sampler × evaluation seed, other wildcards kept."""
    return expand(pattern, sampler=samplers, seed=[runs.seed_suffix(k) for k in seeds], allow_missing=True)


def eval_pattern(wildcards) -> str:
    """The evaluation-record pattern of a tuning job's run (as run_dir chooses its directory)."""
    if wildcards.get("axis"):
        return EVAL_ABLATION
    if wildcards.get("tseed"):
        return EVAL_REPLICATE
    return EVAL_TUNE


def out_template(pattern: str, wildcards) -> str:
    """`ect evaluate --out`: ``pattern`` with the job's wildcards filled; ect fills {sampler} and {seed}."""
    return expand(pattern, allow_missing=True, **dict(wildcards.items()))[0]


def real_panel() -> str:
    """`ect figure samples --real`: real images beside the samples, from datasets held in memory (an image folder,
    ImageNet 64, would be read whole by this local job, so its figure has no real column)."""
    if DATASET not in ("digits", "cifar10"):
        return ""
    data_dir = TUNE_CFG[ABLATION_MODEL].data.data_dir
    return f"--real {DATASET}" + (f" --data-dir {shlex.quote(str(data_dir))}" if data_dir else "")


# --- The run's end: report and summary -------------------------------------------------------------------------

REPORT = "report.html"


def finish(started: float) -> None:
    """After a run that did something: build report.html, then print the summary (`ect summary`).

    `snakemake --report` must run after the workflow, so it runs here in a second snakemake on the same config
    (written out resolved, so --config values and defaults are the same). A report that fails to build is said
    in one line; the study's results stand either way.
    """
    elapsed = time.monotonic() - started
    resolved = Path(".snakemake/ect-report-config.yaml")
    resolved.parent.mkdir(exist_ok=True)
    resolved.write_text(yaml.safe_dump(config, sort_keys=False))
    build = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(workflow.main_snakefile),
                            "--configfile", str(resolved), "--report", REPORT, "--nolock", "--quiet", "all"],
                           capture_output=True, text=True)
    if build.returncode != 0:
        last = (build.stderr.strip().splitlines() or ["(no message)"])[-1]
        print(f"{REPORT} not built: {last} (retry: snakemake --report {REPORT})", file=sys.stderr)
    print(flush=True)
    subprocess.run(["ect", "summary", "--experiment", EXP, "--elapsed", f"{elapsed:.0f}", "--report", REPORT])
