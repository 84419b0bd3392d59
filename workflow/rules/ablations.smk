# Ablations: one tuning setting changed at a time around the base tuning config, on one model size and from the
# same pretrained diffusion model. Run directories name the change: results/<experiment>/ablations/<axis>=<value>/
# (any value can be run by asking for that path). A value equal to the base config's is not run again: the base
# run's snapshots at the same budgets stand for it (its rows read "<axis>=<value> (base)").


# The same rules as the main runs (segments, evaluation, collection), with the run directory as the only change.
use rule tune as tune_ablation with:
    output:
        protected(f"{RESULTS}/ablations/{{axis}}={{value}}/{runs.SNAPSHOT}"),
        f"{RESULTS}/ablations/{{axis}}={{value}}/{runs.STATE}",
    log:
        f"{RESULTS}/logs/ablations/{{axis}}={{value}}-{{step}}.log",


use rule evaluate_ect as evaluate_ablation with:
    output:
        eval_outputs(EVAL_ABLATION, SAMPLERS, SEEDS[:1]),
    log:
        f"{RESULTS}/logs/evaluate/ablation-{{axis}}={{value}}-{{iteration}}-{{metric}}.log",


if SEEDS[1:]:

    use rule evaluate_ect_spread as evaluate_ablation_spread with:
        output:
            eval_outputs(EVAL_ABLATION, SAMPLERS, SEEDS[1:]),
        log:
            f"{RESULTS}/logs/evaluate/ablation-{{axis}}={{value}}-{{iteration}}-{{metric}}-spread.log",


use rule collect as collect_ablation with:
    input:
        lambda wildcards: [path for _, _, path in sum(ablation_evaluations(wildcards.axis), [])],
    output:
        f"{RESULTS}/ablations/{{axis}}.csv",
    params:
        evals=lambda wildcards: labelled("--eval", sum(ablation_evaluations(wildcards.axis), [])),
    log:
        f"{RESULTS}/logs/analysis/collect-ablation-{{axis}}.log",


rule table_ablation:
    input:
        f"{RESULTS}/ablations/{{axis}}.csv",
    output:
        f"{RESULTS}/tables/ablation_{{axis}}.csv",
        f"{RESULTS}/tables/ablation_{{axis}}.md",
        f"{RESULTS}/tables/ablation_{{axis}}.tex",
        report(f"{RESULTS}/tables/ablation_{{axis}}.html", caption="../report/table_ablation.rst",
               category="Tables", labels={"table": "ablation of {axis}"}),
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
    conda:
        SOFTWARE
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
    conda:
        SOFTWARE
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
