# The training-schemes comparison (config `schemes`; docs/schemes-workflow.md): diffusion, consistency
# distillation, consistency training from scratch (iCT), ECT from scratch and ECT tuning, at matched total compute.
# Each arm's run for training seed N lives in results/<experiment>/schemes/<arm>/seed<N>/ and is a chain of
# segments, one per budget, exactly as tuning (tune.smk); its snapshots are evaluated as the tuning runs' are
# (evaluate.smk). An arm that *is* a run the study makes anyway is not trained again: ECT from the pretrained model
# with no overrides is the model's tuning run (tune/<model>, or the replicate tune-seed<N>/<model>) when its budgets
# are tuning budgets, and a diffusion arm at exactly the model's pretraining is pretrain/<model>.


rule train_scheme:
    input:
        ancient(PREPARED),
        scheme_segment_input,
    output:
        protected(f"{RESULTS}/schemes/{{arm}}/seed{{aseed}}/{runs.SNAPSHOT}"),
        f"{RESULTS}/schemes/{{arm}}/seed{{aseed}}/{runs.STATE}",
    params:
        ect=scheme_launcher,
        method=lambda wildcards: ARMS[wildcards.arm]["method"],
        config=lambda wildcards: f"--config {shlex.quote(ARMS[wildcards.arm]['config'])}"
        if ARMS[wildcards.arm]["config"] else "",
        init=lambda wildcards: f"--init {pretrained_output(ARMS[wildcards.arm]['model'])}"
        if ARMS[wildcards.arm]["init"] == "pretrained" else "",
        sets=lambda wildcards: set_args({**ARMS[wildcards.arm]["sets"], "training.seed": int(wildcards.aseed)}),
        iterations=lambda wildcards: int(wildcards.step),
        run_dir=lambda wildcards: scheme_dir(wildcards.arm, wildcards.aseed),
    log:
        f"{RESULTS}/logs/schemes/{{arm}}-seed{{aseed}}-{{step}}.log",
    threads: scheme_threads
    resources:
        gpu=scheme_resource("gpu"),
        cpus_per_gpu=scheme_resource("cpus_per_gpu"),
        mem_mb=scheme_resource("mem_mb"),
        runtime=scheme_resource("runtime"),
        nproc=scheme_processes,
    conda:
        SOFTWARE
    shell:  # one log file per attempt, as tune.smk's
        "attempt={log}.$(date -u +%Y%m%dT%H%M%SZ)-$$${{SLURM_JOB_ID:+-job$SLURM_JOB_ID}}; "
        "ln -sfn \"${{attempt##*/}}\" {log}; "
        "OMP_NUM_THREADS=$(( ({threads} + {resources.nproc} - 1) / {resources.nproc} )) "
        "exec {params.ect} train --method {params.method} {params.config} {params.init} --out {params.run_dir} "
        "{params.sets} --set training.iterations={params.iterations} --no-progress > \"$attempt\" 2>&1"


# Evaluation as evaluate.smk's: the first evaluation seed at every budget, the others at an arm's largest.
use rule evaluate_ect as evaluate_scheme with:
    input:
        ancient(PREPARED),
        checkpoint=lambda wildcards: scheme_snapshot(wildcards.arm, wildcards.aseed, wildcards.iteration),
    output:
        eval_outputs(EVAL_SCHEME, SAMPLERS, SCHEME_SEEDS[:1]),
    wildcard_constraints:
        arm=alternatives(CONSISTENCY_ARMS),
    params:
        out=lambda wildcards: out_template(EVAL_SCHEME, wildcards),
    log:
        f"{RESULTS}/logs/evaluate/schemes-{{arm}}-seed{{aseed}}-{{iteration}}-{{metric}}.log",


# The diffusion arms: the raw 1-step sampler (the baseline a consistency model must beat) and Heun.
use rule evaluate_scheme as evaluate_scheme_raw with:
    output:
        eval_outputs(EVAL_SCHEME, ["1step"], SCHEME_SEEDS[:1]),
    wildcard_constraints:
        arm=alternatives(DIFFUSION_ARMS),
    params:
        samplers="1step",
    log:
        f"{RESULTS}/logs/evaluate/schemes-{{arm}}-seed{{aseed}}-{{iteration}}-{{metric}}-1step.log",


use rule evaluate_diffusion as evaluate_scheme_heun with:
    input:
        ancient(PREPARED),
        checkpoint=lambda wildcards: scheme_snapshot(wildcards.arm, wildcards.aseed, wildcards.iteration),
    output:
        eval_outputs(EVAL_SCHEME, ["heun"], SCHEME_SEEDS),
    wildcard_constraints:
        arm=alternatives(DIFFUSION_ARMS),
    params:
        options=lambda wildcards: eval_options(wildcards.metric, SCHEME_SEEDS),
        out=lambda wildcards: out_template(EVAL_SCHEME, wildcards),
    log:
        f"{RESULTS}/logs/evaluate/schemes-{{arm}}-seed{{aseed}}-{{iteration}}-{{metric}}-heun.log",


if SCHEME_SEEDS[1:]:

    use rule evaluate_ect as evaluate_scheme_spread with:
        input:
            ancient(PREPARED),
            checkpoint=lambda wildcards: scheme_snapshot(wildcards.arm, wildcards.aseed, wildcards.iteration),
        output:
            eval_outputs(EVAL_SCHEME, SAMPLERS, SCHEME_SEEDS[1:]),
        wildcard_constraints:
            arm=alternatives(CONSISTENCY_ARMS),
        params:
            options=lambda wildcards: eval_options(wildcards.metric, SCHEME_SEEDS[1:]),
            out=lambda wildcards: out_template(EVAL_SCHEME, wildcards),
        log:
            f"{RESULTS}/logs/evaluate/schemes-{{arm}}-seed{{aseed}}-{{iteration}}-{{metric}}-spread.log",

    use rule evaluate_scheme_spread as evaluate_scheme_raw_spread with:
        output:
            eval_outputs(EVAL_SCHEME, ["1step"], SCHEME_SEEDS[1:]),
        wildcard_constraints:
            arm=alternatives(DIFFUSION_ARMS),
        params:
            samplers="1step",
        log:
            f"{RESULTS}/logs/evaluate/schemes-{{arm}}-seed{{aseed}}-{{iteration}}-{{metric}}-1step-spread.log",


use rule collect as collect_schemes with:
    input:
        [path for _, _, path in scheme_evaluations()],
    output:
        f"{RESULTS}/schemes.csv",
    params:
        evals=labelled("--eval", scheme_evaluations()),
    log:
        f"{RESULTS}/logs/analysis/collect-schemes.log",


rule table_schemes:
    input:
        rules.collect_schemes.output,
    output:
        f"{RESULTS}/tables/schemes.csv",
        f"{RESULTS}/tables/schemes.md",
        f"{RESULTS}/tables/schemes.tex",
        report(f"{RESULTS}/tables/schemes.html", caption="../report/table_schemes.rst", category="Tables",
               labels={"table": "training schemes at matched compute"}),
    params:
        options=scheme_options(),
        stem=lambda wildcards, output: Path(output[0]).with_suffix(""),
    log:
        f"{RESULTS}/logs/analysis/table-schemes.log",
    threads: resource("analysis", "threads")
    resources:
        mem_mb=resource("analysis", "mem_mb"),
        runtime=resource("analysis", "runtime"),
    conda:
        SOFTWARE
    shell:
        "ect table schemes --metrics {input} {params.options} --out {params.stem} > {log} 2>&1"


rule figure_schemes:
    input:
        rules.collect_schemes.output,
    output:
        report(f"{FIGURES}/schemes_{{metric}}.png", caption="../report/figure_schemes.rst", category="Schemes",
               labels={"metric": "{metric}"}),
        f"{FIGURES}/schemes_{{metric}}.pdf",
    params:
        options=scheme_options(),
        stem=lambda wildcards, output: Path(output[0]).with_suffix(""),
    log:
        f"{RESULTS}/logs/analysis/figure-schemes-{{metric}}.log",
    threads: resource("analysis", "threads")
    resources:
        mem_mb=resource("analysis", "mem_mb"),
        runtime=resource("analysis", "runtime"),
    conda:
        SOFTWARE
    shell:
        "ect figure schemes --metrics {input} --metric {wildcards.metric} {params.options} --out {params.stem} "
        "> {log} 2>&1"


# Named target: `snakemake --cores all schemes` runs only the comparison (and what it needs).
rule schemes:
    input:
        scheme_outputs(),
        rules.workflow_config.output,
