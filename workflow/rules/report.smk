# 10. The study's answer: the headline table (one row per model size), and when a run ends, the HTML report and a
# summary on the terminal (the Snakefile's onsuccess calls finish(), in common.smk).


rule table_headline:
    input:
        rules.collect.output,
    output:
        f"{RESULTS}/tables/headline.csv",
        f"{RESULTS}/tables/headline.md",
        f"{RESULTS}/tables/headline.tex",
        report(f"{RESULTS}/tables/headline.html", caption="../report/table_headline.rst", category="Tables",
               labels={"table": "headline"}),
    params:
        stem=lambda wildcards, output: Path(output[0]).with_suffix(""),
    log:
        f"{RESULTS}/logs/analysis/table-headline.log",
    threads: resource("analysis", "threads")
    resources:
        mem_mb=resource("analysis", "mem_mb"),
        runtime=resource("analysis", "runtime"),
    conda:
        SOFTWARE
    shell:
        "ect table headline --metrics {input} --out {params.stem} > {log} 2>&1"


# The report's landing page: the headline table and the main figures, embedded (workflow/report/workflow.rst).
rule report_landing:
    input:
        rules.table_headline.output,
        expand(f"{FIGURES}/scaling_{{metric}}.png", metric=METRICS),
        rules.figure_samples.output,
    output:
        report(f"{RESULTS}/report/landing.html", category="Overview", labels={"page": "headline and main figures"}),
    params:
        experiment=EXP,
    log:
        f"{RESULTS}/logs/analysis/report-landing.log",
    threads: resource("analysis", "threads")
    resources:
        mem_mb=resource("analysis", "mem_mb"),
        runtime=resource("analysis", "runtime"),
    conda:
        SOFTWARE
    shell:
        "ect summary --experiment {params.experiment} --landing {output} > {log} 2>&1"
