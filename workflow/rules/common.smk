# Shared by all rules: the validated config turned into run settings, paths and `ect` command lines.
# Every run config (pretraining, tuning, each ablation) is resolved here with ect's own loader, so an unknown
# `--set` key or a bad value stops the workflow before any job, naming the key.

import json
import re
import shlex
from pathlib import Path

import yaml

from ect.analysis.paper import paper_keys
from ect.config import ConfigError, batch_split, load_run_config

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


def alternatives(names) -> str:
    """A wildcard constraint matching exactly these names."""
    return "|".join(re.escape(str(n)) for n in names) or "(?!)"


wildcard_constraints:
    model=alternatives(MODELS),
    metric=alternatives(METRICS),
    sampler=alternatives(SAMPLERS),
    iteration=r"\d+",
    axis=alternatives(AXES),
    value=r"[^/=]+",


def _resolve(where: str, run_config: str | None, sets: dict):
    try:
        return load_run_config(run_config, [f"{k}={set_value(v)}" for k, v in sets.items()])
    except ConfigError as exc:
        raise ValueError(f"config {where}: {exc}") from None


def _data_sets() -> dict:
    return {"data.data_dir": config["data_dir"]} if config["data_dir"] else {}


def pretrain_sets(model: str) -> dict:
    spec = MODELS[model]
    return {**config["pretrain"]["set"], **spec["pretrain_set"], "network.preset": spec["preset"], **_data_sets()}


def tune_sets(model: str) -> dict:
    spec = MODELS[model]
    return {**config["tune"]["set"], **spec["tune_set"], "network.preset": spec["preset"], **_data_sets(),
            "training.iterations": BUDGETS[-1], "training.budgets": BUDGETS}


def ablation_sets(axis: str, value: str) -> dict:
    # The value comes from the run's path and is parsed by ect like any --set value ("0.03" -> 0.03).
    return {**tune_sets(ABLATION_MODEL), AXES[axis]["key"]: yaml.safe_load(value),
            "training.iterations": ABLATION_BUDGETS[-1], "training.budgets": ABLATION_BUDGETS}


def set_value(value) -> str:
    """A value as `--set` reads it (YAML): plain where that round-trips (tiny-s, 0.001), else JSON ("1e-3")."""
    plain = value if isinstance(value, str) else json.dumps(value)
    return plain if yaml.safe_load(plain) == value else json.dumps(value)


def set_args(sets: dict) -> str:
    return " ".join(f"--set {shlex.quote(f'{k}={set_value(v)}')}" for k, v in sets.items())


def config_arg(section: str) -> str:
    run_config = config[section]["config"]
    return f"--config {shlex.quote(run_config)}" if run_config else ""


def _lookup(values: dict, dotted: str):
    for part in dotted.split("."):
        values = values[part]
    return values


# Resolve (and so validate) every run config now.
PRETRAIN_CFG = {m: _resolve(f"pretrain.set / models.{m}.pretrain_set", config["pretrain"]["config"],
                            pretrain_sets(m)) for m in TRAINED}
TUNE_CFG = {m: _resolve(f"tune.set / models.{m}.tune_set", config["tune"]["config"], tune_sets(m)) for m in MODELS}
if ABLATION_MODEL not in MODELS:
    raise ValueError(f"config ablations.model: {ABLATION_MODEL!r} is not one of the models {list(MODELS)}")
if not set(ABLATION_BUDGETS) <= set(BUDGETS):
    raise ValueError(f"config ablations.budgets: {ABLATION_BUDGETS} must be a subset of budgets {BUDGETS} "
                     "(the base run's snapshots serve as the ablation baseline)")
if config["paper"] is not None and config["paper"] not in paper_keys():
    raise ValueError(f"config paper: {config['paper']!r} is not one of {paper_keys()}")
DATASET = TUNE_CFG[ABLATION_MODEL].data.name
for _cfg in [*PRETRAIN_CFG.values(), *TUNE_CFG.values()]:
    if _cfg.data.name != DATASET:
        raise ValueError(f"config: every run must use one dataset, found {DATASET!r} and {_cfg.data.name!r}")
# An ablation value equal to the base run's is not run again: the base run's snapshots stand for it.
ABLATION_BASE = {axis: _lookup(TUNE_CFG[ABLATION_MODEL].to_dict(), spec["key"]) for axis, spec in AXES.items()}
ABLATION_RUNS = [(axis, str(v)) for axis, spec in AXES.items() for v in spec["values"] if v != ABLATION_BASE[axis]]
ABLATION_CFG = {(axis, value): _resolve(f"ablations.axes.{axis}.values ({value})", config["tune"]["config"],
                                        ablation_sets(axis, value)) for axis, value in ABLATION_RUNS}


# --- Paths ------------------------------------------------------------------------------------------------------


def snapshot(run_dir: str, iteration: int) -> str:
    return f"{run_dir}/snapshot-{int(iteration):07d}.pt"


def pretrained_output(model: str) -> str:
    """The file whose existence means the model's diffusion checkpoint is ready (a Snakemake output)."""
    if model in IMPORTED:
        return f"{RESULTS}/pretrain/{model}/imported.pt"
    return f"{RESULTS}/pretrain/{model}/summary.json"


def pretrained_checkpoint(model: str) -> str:
    if model in IMPORTED:
        return pretrained_output(model)
    return snapshot(f"{RESULTS}/pretrain/{model}", PRETRAIN_CFG[model].training.iterations)


def ablation_dir(axis: str, value: str) -> str:
    return f"{RESULTS}/ablations/{axis}={value}"


def evaluations() -> list[tuple[str, str, str]]:
    """Every evaluation record of the study as (model, variant, path)."""
    items = [(m, "base", f"{RESULTS}/pretrain/{m}/eval/heun-{metric}.json") for m in MODELS for metric in METRICS]
    items += [(m, "base", f"{RESULTS}/tune/{m}/eval/{it}-{s}-{metric}.json")
              for m in MODELS for it in BUDGETS for s in SAMPLERS for metric in METRICS]
    for axis in AXES:
        items += ablation_evaluations(axis)[1]
    return items


def ablation_evaluations(axis: str) -> tuple[list, list]:
    """(base-run records at the ablation budgets, the axis's own records), each as (model, variant, path)."""
    base = [(ABLATION_MODEL, "base", f"{RESULTS}/tune/{ABLATION_MODEL}/eval/{it}-{s}-{metric}.json")
            for it in ABLATION_BUDGETS for s in SAMPLERS for metric in METRICS]
    runs = [(ABLATION_MODEL, f"{axis}={value}", f"{ablation_dir(axis, value)}/eval/{it}-{s}-{metric}.json")
            for a, value in ABLATION_RUNS if a == axis for it in ABLATION_BUDGETS for s in SAMPLERS
            for metric in METRICS]
    return base, runs


def ablation_outputs(axis: str) -> list[str]:
    return [*(f"{RESULTS}/tables/ablation_{axis}{ext}" for ext in (".csv", ".md", ".tex")),
            *(f"{FIGURES}/ablation_{axis}{ext}" for ext in (".png", ".pdf"))]


def training_logs() -> list[tuple[str, str, str]]:
    """(model, method, log.jsonl) of every main run; imported models have no pretraining log."""
    logs = [(m, "diffusion", f"{RESULTS}/pretrain/{m}/log.jsonl") for m in TRAINED]
    return logs + [(m, "ect", f"{RESULTS}/tune/{m}/log.jsonl") for m in MODELS]


def grid_checkpoint(model: str, sampler: str) -> tuple[str, str]:
    """(Snakemake input, checkpoint): the diffusion model for Heun, else the ECT snapshot at the largest budget."""
    if sampler == "heun":
        return pretrained_output(model), pretrained_checkpoint(model)
    return f"{RESULTS}/tune/{model}/summary.json", snapshot(f"{RESULTS}/tune/{model}", BUDGETS[-1])


def sample_grids() -> list[tuple[str, str, str]]:
    """(model, column label, images) of the sample figure: Heun of the diffusion model, then each ECT sampler."""
    labels = {"heun": "diffusion, Heun (35 NFE)", "1step": f"ECT 1-step ({BUDGETS[-1]:,} it.)",
              "2step": f"ECT 2-step ({BUDGETS[-1]:,} it.)"}
    return [(m, labels[s], f"{RESULTS}/samples/{m}-{s}.npz") for m in MODELS for s in ["heun", *SAMPLERS]]


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
    """A callable for `threads:`/`resources:` that looks the value up for the job's model."""
    return lambda wildcards: resources(rule, job_model(wildcards))[key]


def processes(rule: str, model: str | None) -> int:
    """Training processes of a rule's job: one per GPU (torchrun), else one."""
    return max(resources(rule, model)["gpu"], 1)


def launcher(rule: str):
    """`ect`, or one process per GPU under torchrun when a training job has several GPUs."""

    def command(wildcards) -> str:
        n = processes(rule, job_model(wildcards))
        return f"torchrun --standalone --nproc_per_node={n} -m ect.cli" if n > 1 else "ect"

    return command


# Every training job's batch must split evenly over its processes and micro-batches (checked now, not on the node).
# Ablation runs are tuning jobs of the ablated model.
for _rule, _model, _cfg in [*(("pretrain", m, PRETRAIN_CFG[m]) for m in TRAINED),
                            *(("tune", m, TUNE_CFG[m]) for m in MODELS),
                            *(("tune", ABLATION_MODEL, c) for c in ABLATION_CFG.values())]:
    _n = processes(_rule, _model)
    try:
        batch_split(_cfg.training.batch_size, _cfg.training.batch_per_device, _n)
    except ConfigError as exc:
        raise ValueError(f"config models.{_model} ({_rule} on {_n} GPUs): {exc}") from None


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


def eval_options(metric: str) -> str:
    spec, e = config["metrics"][metric], config["evaluation"]
    options = [_shared_options(), f"--seed {e['seed']}", f"--batch {e['batch']}"]
    if e["precision"] != "auto":
        options.append(f"--precision {e['precision']}")
    if spec["num"]:
        options.append(f"--num {spec['num']}")
    if spec["feature_weights"]:
        options.append(f"--feature-weights {shlex.quote(spec['feature_weights'])}")
    return " ".join(options)
