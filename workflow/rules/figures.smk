# 9. Figures (PNG for the report, PDF for papers): scaling with both fitted forms, the held-out budget and the
# frontier, 1-step vs 2-step vs the diffusion model, training losses with stage boundaries, and sample grids.


rule figure_scaling:
    input:
        metrics=rules.collect.output,
        scaling=rules.fit.output,
    output:
        report(f"{FIGURES}/scaling_{{metric}}.png", caption="../report/figure_scaling.rst", category="Scaling",
               labels={"metric": "{metric}"}),
        f"{FIGURES}/scaling_{{metric}}.pdf",
    params:
        stem=lambda wildcards, output: Path(output[0]).with_suffix(""),
    log:
        f"{RESULTS}/logs/analysis/figure-scaling-{{metric}}.log",
    threads: resource("analysis", "threads")
    resources:
        mem_mb=resource("analysis", "mem_mb"),
        runtime=resource("analysis", "runtime"),
    conda:
        SOFTWARE
    shell:
        "ect figure scaling --metrics {input.metrics} --scaling {input.scaling} --metric {wildcards.metric} "
        "--out {params.stem} > {log} 2>&1"


rule figure_samplers:
    input:
        rules.collect.output,
    output:
        report(f"{FIGURES}/samplers_{{metric}}.png", caption="../report/figure_samplers.rst", category="Samplers",
               labels={"metric": "{metric}"}),
        f"{FIGURES}/samplers_{{metric}}.pdf",
    params:
        stem=lambda wildcards, output: Path(output[0]).with_suffix(""),
    log:
        f"{RESULTS}/logs/analysis/figure-samplers-{{metric}}.log",
    threads: resource("analysis", "threads")
    resources:
        mem_mb=resource("analysis", "mem_mb"),
        runtime=resource("analysis", "runtime"),
    conda:
        SOFTWARE
    shell:
        "ect figure samplers --metrics {input} --metric {wildcards.metric} --out {params.stem} > {log} 2>&1"


rule figure_loss:
    input:
        [pretrained_output(m) for m in TRAINED],
        [f"{RESULTS}/tune/{m}/{runs.state_name(BUDGETS[-1])}" for m in MODELS],
    output:
        report(f"{FIGURES}/loss.png", caption="../report/figure_loss.rst", category="Training"),
        f"{FIGURES}/loss.pdf",
    params:
        logs=labelled("--log", training_logs()),
        stem=lambda wildcards, output: Path(output[0]).with_suffix(""),
    log:
        f"{RESULTS}/logs/analysis/figure-loss.log",
    threads: resource("analysis", "threads")
    resources:
        mem_mb=resource("analysis", "mem_mb"),
        runtime=resource("analysis", "runtime"),
    conda:
        SOFTWARE
    shell:
        "ect figure loss {params.logs} --out {params.stem} > {log} 2>&1"


rule sample_grid:
    input:
        lambda wildcards: grid_checkpoint(wildcards.model, wildcards.sampler),
    output:
        npz=f"{RESULTS}/samples/{{model}}-{{sampler}}.npz",
        png=f"{RESULTS}/samples/{{model}}-{{sampler}}.png",
    wildcard_constraints:
        sampler=alternatives(["heun", *SAMPLERS]),
    params:
        time_limit=time_limit("sample_grid"),
        num=config["sample_grid"]["num"],
    log:
        f"{RESULTS}/logs/sample/{{model}}-{{sampler}}.log",
    threads: job_threads("sample")
    resources:
        gpu=resource("sample", "gpu"),
        cpus_per_gpu=resource("sample", "cpus_per_gpu"),
        mem_mb=resource("sample", "mem_mb"),
        runtime=resource("sample", "runtime"),
    conda:
        SOFTWARE
    shell:
        "OMP_NUM_THREADS={threads} ect sample --checkpoint {input} --sampler {wildcards.sampler} "
        "--num {params.num} --seed 0 --out {output.npz} > {log} 2>&1"


rule figure_samples:
    input:
        [path for _, _, path in sample_grids()],
        metrics=rules.collect.output,
    output:
        report(f"{FIGURES}/samples.png", caption="../report/figure_samples.rst", category="Samples"),
        f"{FIGURES}/samples.pdf",
    params:
        samples=labelled("--samples", sample_grids()),
        real=real_panel(),
        metric=METRICS[0],
        iteration=BUDGETS[-1],
        stem=lambda wildcards, output: Path(output[0]).with_suffix(""),
    log:
        f"{RESULTS}/logs/analysis/figure-samples.log",
    threads: resource("analysis", "threads")
    resources:
        mem_mb=resource("analysis", "mem_mb"),
        runtime=resource("analysis", "runtime"),
    conda:
        SOFTWARE
    shell:
        "ect figure samples {params.samples} --iteration {params.iteration} --metrics {input.metrics} "
        "--metric {params.metric} {params.real} --out {params.stem} > {log} 2>&1"
