# 6.-8. The tidy metrics table, the scaling fits (paper's power law and saturating form, hold-out, bootstrap over the
# seeds, frontier; docs/scaling.md) and the main and scaling tables (CSV, Markdown, LaTeX).


rule collect:
    input:
        [path for _, _, path in evaluations()],
    output:
        report(f"{RESULTS}/metrics.csv", caption="../report/metrics.rst", category="Tables",
               labels={"table": "all metrics (tidy)"}),
    params:
        experiment=EXP,
        evals=labelled("--eval", evaluations()),
    log:
        f"{RESULTS}/logs/analysis/collect.log",
    threads: resource("analysis", "threads")
    resources:
        mem_mb=resource("analysis", "mem_mb"),
        runtime=resource("analysis", "runtime"),
    conda:
        SOFTWARE
    shell:
        "ect collect --experiment {params.experiment} {params.evals} --out {output} > {log} 2>&1"


rule fit:
    input:
        rules.collect.output,  # the bootstrap also reads the evaluation records it lists
    output:
        f"{RESULTS}/scaling.csv",
    log:
        f"{RESULTS}/logs/analysis/fit.log",
    threads: resource("analysis", "threads")
    resources:
        mem_mb=resource("analysis", "mem_mb"),
        runtime=resource("analysis", "runtime"),
    conda:
        SOFTWARE
    shell:
        "ect fit --metrics {input} --out {output} > {log} 2>&1"


rule table_main:
    input:
        rules.collect.output,
    output:
        f"{RESULTS}/tables/main.csv",
        f"{RESULTS}/tables/main.md",
        f"{RESULTS}/tables/main.tex",
        report(f"{RESULTS}/tables/main.html", caption="../report/table_main.rst", category="Tables",
               labels={"table": "main results"}),
    params:
        paper=f"--paper {config['paper']}" if config["paper"] else "",
        stem=lambda wildcards, output: Path(output[0]).with_suffix(""),
    log:
        f"{RESULTS}/logs/analysis/table-main.log",
    threads: resource("analysis", "threads")
    resources:
        mem_mb=resource("analysis", "mem_mb"),
        runtime=resource("analysis", "runtime"),
    conda:
        SOFTWARE
    shell:
        "ect table main --metrics {input} {params.paper} --out {params.stem} > {log} 2>&1"


rule table_scaling:
    input:
        rules.fit.output,
    output:
        f"{RESULTS}/tables/scaling.csv",
        f"{RESULTS}/tables/scaling.md",
        f"{RESULTS}/tables/scaling.tex",
        report(f"{RESULTS}/tables/scaling.html", caption="../report/table_scaling.rst", category="Tables",
               labels={"table": "scaling fits"}),
    params:
        stem=lambda wildcards, output: Path(output[0]).with_suffix(""),
    log:
        f"{RESULTS}/logs/analysis/table-scaling.log",
    threads: resource("analysis", "threads")
    resources:
        mem_mb=resource("analysis", "mem_mb"),
        runtime=resource("analysis", "runtime"),
    conda:
        SOFTWARE
    shell:
        "ect table scaling --scaling {input} --out {params.stem} > {log} 2>&1"
