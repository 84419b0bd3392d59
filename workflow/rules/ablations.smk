# Ablations: one tuning setting changed at a time around the base tuning config, on one model size and from the
# same pretrained diffusion model. Run directories name the change: results/<experiment>/ablations/<axis>=<value>/
# (any value can be run by asking for that path). A value equal to the base config's is not run again: the base
# run's snapshots at the same budgets stand for it (its rows read "<axis>=<value> (base)").


rule tune_ablation:
    input:
        ancient(PREPARED),
        pretrained_output(ABLATION_MODEL),
    output:
        f"{RESULTS}/ablations/{{axis}}={{value}}/summary.json",
    params:
        ect=launcher("tune"),
        config=config_arg("tune"),
        init=pretrained_checkpoint(ABLATION_MODEL),
        sets=lambda wildcards: set_args(ablation_sets(wildcards.axis, wildcards.value)),
        run_dir=lambda wildcards, output: Path(output[0]).parent,
    log:
        f"{RESULTS}/logs/ablations/{{axis}}={{value}}.log",
    threads: resource("tune", "threads")
    resources:
        gpu=resource("tune", "gpu"),
        cpus_per_gpu=resource("tune", "cpus_per_gpu"),
        mem_mb=resource("tune", "mem_mb"),
        runtime=resource("tune", "runtime"),
    shell:
        "OMP_NUM_THREADS={threads} {params.ect} tune {params.config} --init {params.init} --out {params.run_dir} "
        "{params.sets} --no-progress > {log} 2>&1"


rule evaluate_ablation:
    input:
        ancient(PREPARED),
        f"{RESULTS}/ablations/{{axis}}={{value}}/summary.json",
    output:
        f"{RESULTS}/ablations/{{axis}}={{value}}/eval/{{iteration}}-{{sampler}}-{{metric}}.json",
    params:
        checkpoint=lambda wildcards: snapshot(ablation_dir(wildcards.axis, wildcards.value), wildcards.iteration),
        options=lambda wildcards: eval_options(wildcards.metric),
    log:
        f"{RESULTS}/logs/evaluate/ablation-{{axis}}={{value}}-{{iteration}}-{{sampler}}-{{metric}}.log",
    threads: resource("evaluate", "threads")
    resources:
        gpu=resource("evaluate", "gpu"),
        cpus_per_gpu=resource("evaluate", "cpus_per_gpu"),
        mem_mb=resource("evaluate", "mem_mb"),
        runtime=resource("evaluate", "runtime"),
    shell:
        "OMP_NUM_THREADS={threads} ect evaluate --checkpoint {params.checkpoint} --sampler {wildcards.sampler} "
        "--metric {wildcards.metric} {params.options} --no-progress --out {output} > {log} 2>&1"


rule collect_ablation:
    input:
        lambda wildcards: [path for _, _, path in sum(ablation_evaluations(wildcards.axis), [])],
    output:
        f"{RESULTS}/ablations/{{axis}}.csv",
    params:
        evals=lambda wildcards: labelled("--eval", sum(ablation_evaluations(wildcards.axis), [])),
    log:
        f"{RESULTS}/logs/analysis/collect-ablation-{{axis}}.log",
    threads: resource("analysis", "threads")
    resources:
        mem_mb=resource("analysis", "mem_mb"),
        runtime=resource("analysis", "runtime"),
    shell:
        "ect collect --experiment {EXP} {params.evals} --out {output} > {log} 2>&1"


rule table_ablation:
    input:
        f"{RESULTS}/ablations/{{axis}}.csv",
    output:
        report(f"{RESULTS}/tables/ablation_{{axis}}.csv", caption="../report/table_ablation.rst",
               category="Tables", labels={"table": "ablation of {axis}"}),
        f"{RESULTS}/tables/ablation_{{axis}}.md",
        f"{RESULTS}/tables/ablation_{{axis}}.tex",
    params:
        base=lambda wildcards: ABLATION_BASE[wildcards.axis],
        model=ABLATION_MODEL,
        stem=lambda wildcards, output: Path(output[0]).with_suffix(""),
    log:
        f"{RESULTS}/logs/analysis/table-ablation-{{axis}}.log",
    threads: resource("analysis", "threads")
    resources:
        mem_mb=resource("analysis", "mem_mb"),
        runtime=resource("analysis", "runtime"),
    shell:
        "ect table ablation --metrics {input} --axis {wildcards.axis} --base {params.base:q} --model {params.model:q} "
        "--out {params.stem} > {log} 2>&1"


rule figure_ablation:
    input:
        f"{RESULTS}/ablations/{{axis}}.csv",
    output:
        report(f"{FIGURES}/ablation_{{axis}}.png", caption="../report/figure_ablation.rst",
               category="Ablations", labels={"axis": "{axis}"}),
        f"{FIGURES}/ablation_{{axis}}.pdf",
    params:
        base=lambda wildcards: ABLATION_BASE[wildcards.axis],
        model=ABLATION_MODEL,
        stem=lambda wildcards, output: Path(output[0]).with_suffix(""),
    log:
        f"{RESULTS}/logs/analysis/figure-ablation-{{axis}}.log",
    threads: resource("analysis", "threads")
    resources:
        mem_mb=resource("analysis", "mem_mb"),
        runtime=resource("analysis", "runtime"),
    shell:
        "ect figure ablation --metrics {input} --axis {wildcards.axis} --base {params.base:q} "
        "--model {params.model:q} --out {params.stem} > {log} 2>&1"


# Named targets, one per axis: `snakemake --cores all ablation_mapping`.
for _axis in AXES:

    rule:
        name:
            f"ablation_{_axis}"
        input:
            ablation_outputs(_axis),
            rules.workflow_config.output,
