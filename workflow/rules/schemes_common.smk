# The schemes comparison's planning (config `schemes`; rules in schemes.smk): every arm resolved and checked, its
# budgets in iterations (ect.schemes), run directories, the runs it reuses, its evaluation records and resources.

from ect import schemes as scheme_math
from ect.flops import cached_forward_flops_per_image

SCHEMES = config["schemes"]
# `--config schemes='{enabled: true}'` gives the string "true" (Snakemake reads nested --config values as strings).
ARM_SPECS = SCHEMES["arms"] if SCHEMES["enabled"] in (True, "true") else {}
# The evaluation seeds of the comparison (a subset of evaluation.seeds: the reused runs' records are those): its
# spread is over training seeds, so a study can save the other evaluation seeds' jobs here.
SCHEME_SEEDS = sorted(SCHEMES["evaluation_seeds"] or SEEDS)
if ARM_SPECS and not set(SCHEME_SEEDS) <= set(SEEDS):
    fail(f"config schemes.evaluation_seeds: {SCHEME_SEEDS} must be a subset of evaluation.seeds {SEEDS}")
EVAL_SCHEME = f"{RESULTS}/schemes/{{arm}}/seed{{aseed}}/eval/{{iteration}}-{{sampler}}-{{metric}}{{seed}}.json"


@cache
def flops_per_image(preset: str) -> float:
    return cached_forward_flops_per_image(preset)


def pretraining_unit(model: str) -> float | None:
    """P of a model: its own pretraining's FLOPs, or an imported model's from schemes.pretrain_images."""
    if model in TRAINED:
        t = PRETRAIN_CFG[model].training
        return scheme_math.pretraining_flops(flops_per_image(MODELS[model]["preset"]), t.batch_size, t.iterations)
    images = SCHEMES["pretrain_images"].get(model)
    return None if images is None else scheme_math.pretraining_flops(flops_per_image(MODELS[model]["preset"]), 1,
                                                                      images)


def _arm(name: str, spec: dict) -> dict:
    """An arm resolved: method, init, model, budgets (labels and iterations), seeds, run config and its overrides."""
    where = f"schemes.arms.{name}"
    method = spec["method"]
    init = spec["init"] or scheme_math.allowed_inits(method)[0]
    model = spec["model"] or next(iter(MODELS))
    _check(scheme_math.check_arm, where, method, init, model, list(MODELS), spec["set"])
    budgets = [_check(scheme_math.parse_budget, b, f"{where}.budgets") for b in spec["budgets"]]
    section = "pretrain" if method == "diffusion" else "tune"
    run_config = spec["config"] or config[section]["config"]
    # The pretraining's length is not the arm's: its budgets are.
    base = ({k: v for k, v in pretrain_sets(model).items() if k != "training.iterations"} if method == "diffusion"
            else tune_sets(model))
    sets = {**base, **spec["set"], "training.budgets": []}
    cfg = _resolve(f"{where}.set", run_config, {**sets, "training.iterations": 1})
    unit = pretraining_unit(model)
    passes = scheme_math.passes_per_image(method, cfg.cd.solver)
    iterations = _check(lambda: scheme_math.arm_iterations(
        where, budgets, unit_flops=unit, init_flops=(unit or 0.0) if init == "pretrained" else 0.0, passes=passes,
        flops_per_image=flops_per_image(cfg.network.preset), batch_size=cfg.training.batch_size))
    if method == "ict":  # the curriculum spans the run's largest budget, whichever segment is running
        sets["ict.total_iterations"] = max(iterations)
    cfg = _resolve(f"{where}.set", run_config, {**sets, "training.iterations": max(iterations)})
    if cfg.data.name != DATASET:
        fail(f"config {where}: every run must use one dataset, found {DATASET!r} and {cfg.data.name!r}")
    order = sorted(range(len(budgets)), key=lambda k: iterations[k])
    return {"method": method, "init": init, "model": model, "iterations": [iterations[k] for k in order],
            "labels": {iterations[k]: budgets[k].label for k in order}, "seeds": sorted(spec["seeds"]),
            "config": run_config, "own_config": spec["config"], "sets": sets, "overrides": spec["set"],
            "cfg": cfg, "resources": spec["resources"]}


ARMS = {name: _arm(name, spec) for name, spec in ARM_SPECS.items()}
DIFFUSION_ARMS = [a for a, s in ARMS.items() if s["method"] == "diffusion"]
CONSISTENCY_ARMS = [a for a in ARMS if a not in DIFFUSION_ARMS]


def _reused_run(arm: str, seed: int) -> str | None:
    """The study's own run that this arm's run for ``seed`` would repeat exactly, if there is one."""
    s = ARMS[arm]
    m = s["model"]
    if s["overrides"] or s["own_config"]:
        return None
    if s["method"] == "ect" and s["init"] == "pretrained" and set(s["iterations"]) <= set(BUDGETS):
        if seed == TUNE_CFG[m].training.seed:
            return f"{RESULTS}/tune/{m}"
        if seed in REPLICATES:
            return replicate_dir(seed, m)
    if (s["method"] == "diffusion" and m in TRAINED and seed == PRETRAIN_CFG[m].training.seed
            and s["iterations"] == [PRETRAIN_CFG[m].training.iterations]):
        return f"{RESULTS}/pretrain/{m}"
    return None


def scheme_dir(arm: str, seed: int | str) -> str:
    """Where the arm's run for a training seed keeps its snapshots: its own directory, or the run it repeats."""
    return _reused_run(arm, int(seed)) or f"{RESULTS}/schemes/{arm}/seed{seed}"


for _arm_name, _s in ARMS.items():
    for _seed in _s["seeds"]:
        if not _reused_run(_arm_name, _seed):
            _check(study.check_run_progress, scheme_dir(_arm_name, _seed), _s["iterations"])
    _n = processes("pretrain" if _s["method"] == "diffusion" else "tune", _s["model"])
    try:
        batch_split(_s["cfg"].training.batch_size, _s["cfg"].training.batch_per_device, _n)
    except ConfigError as exc:
        fail(f"config schemes.arms.{_arm_name} (training on {_n} GPUs): {exc}")


wildcard_constraints:
    arm=alternatives(ARMS),
    aseed=r"\d+",


def scheme_resources(arm: str) -> dict:
    """An arm's training resources: the rule's (pretrain for diffusion arms, else tune), the model's, the arm's."""
    s = ARMS[arm]
    return {**resources("pretrain" if s["method"] == "diffusion" else "tune", s["model"]), **s["resources"]}


def scheme_resource(key: str):
    return lambda wildcards: scheme_resources(wildcards.arm)[key]


def scheme_threads(wildcards) -> int:
    res = scheme_resources(wildcards.arm)
    return res["gpu"] * res["cpus_per_gpu"] if res["gpu"] else res["threads"]


def scheme_processes(wildcards) -> int:
    """One training process per GPU granted, as for tuning (common.smk: processes)."""
    return max(granted_gpus(scheme_resources(wildcards.arm)["gpu"]), 1)


def scheme_launcher(wildcards, resources) -> str:
    return launch("train_scheme", scheme_processes(wildcards), resources)


def scheme_segment_input(wildcards) -> list:
    """Segment b_k continues from the state b_(k-1) left; the first starts from the pretrained model or from
    scratch (nothing but the data)."""
    s, iteration = ARMS[wildcards.arm], int(wildcards.step)
    if iteration not in s["iterations"]:
        fail(f"{scheme_dir(wildcards.arm, wildcards.aseed)}/{runs.snapshot_name(iteration)}: {iteration} is not one "
             f"of the arm's budgets in iterations {s['iterations']}")
    if int(wildcards.aseed) not in s["seeds"]:
        fail(f"schemes/{wildcards.arm}/seed{wildcards.aseed}: {wildcards.aseed} is not one of the arm's seeds "
             f"{s['seeds']}")
    k = s["iterations"].index(iteration)
    if k > 0:
        return [ancient(f"{scheme_dir(wildcards.arm, wildcards.aseed)}/{runs.state_name(s['iterations'][k - 1])}")]
    return [pretrained_output(s["model"])] if s["init"] == "pretrained" else []


def scheme_snapshot(arm: str, seed: int | str, iteration: int | str) -> str:
    return snapshot(scheme_dir(arm, seed), int(iteration))


def scheme_eval_seeds(iteration: int, budgets: list[int]) -> list[int]:
    """As eval_seeds: every seed of the comparison at an arm's largest budget, else the first."""
    return SCHEME_SEEDS if iteration == budgets[-1] else SCHEME_SEEDS[:1]


def scheme_evaluations() -> list[tuple[str, str, str]]:
    """Every evaluation record of the comparison as (model, "<arm>/seed<N>", path): the consistency arms with the
    few-step samplers, the diffusion arms with Heun and raw 1-step sampling. A reused run's records are its own."""
    items = []
    for arm, s in ARMS.items():
        m, budgets = s["model"], s["iterations"]
        for seed in s["seeds"]:
            variant, reused = f"{arm}/seed{seed}", _reused_run(arm, seed)
            own = {"arm": arm, "aseed": seed}
            if s["method"] != "diffusion":
                if reused == f"{RESULTS}/tune/{m}":
                    pattern, where = EVAL_TUNE, {"model": m}
                elif reused:
                    pattern, where = EVAL_REPLICATE, {"tseed": seed, "model": m}
                else:
                    pattern, where = EVAL_SCHEME, own
                items += [(m, variant, pattern.format(**where, iteration=it, sampler=sampler, metric=metric,
                                                      seed=runs.seed_suffix(k)))
                          for it in budgets for sampler in SAMPLERS for metric in METRICS
                          for k in scheme_eval_seeds(it, budgets)]
                continue
            for it in budgets:
                items += [(m, variant, EVAL_SCHEME.format(**own, iteration=it, sampler="1step", metric=metric,
                                                          seed=runs.seed_suffix(k)))
                          for metric in METRICS for k in scheme_eval_seeds(it, budgets)]
                items += [(m, variant, EVAL_DIFFUSION.format(model=m, metric=metric, seed=runs.seed_suffix(k))
                           if reused else EVAL_SCHEME.format(**own, iteration=it, sampler="heun", metric=metric,
                                                             seed=runs.seed_suffix(k)))
                          for metric in METRICS for k in SCHEME_SEEDS]
    return items


def scheme_options() -> str:
    """What the schemes table and figure need beyond the metrics: each arm's scheme and each model's P."""
    arms = [(a, s["method"], s["init"], s["model"]) for a, s in ARMS.items()]
    units = [(m, repr(pretraining_unit(m))) for m in dict.fromkeys(s["model"] for s in ARMS.values())
             if pretraining_unit(m) is not None]
    return f"{labelled('--arm', arms)} {labelled('--pretraining', units)}"


def scheme_outputs() -> list[str]:
    if not ARMS:
        return []
    return [*(f"{RESULTS}/tables/schemes{ext}" for ext in (".csv", ".md", ".tex")),
            *(f"{FIGURES}/schemes_{metric}{ext}" for metric in METRICS for ext in (".png", ".pdf"))]
