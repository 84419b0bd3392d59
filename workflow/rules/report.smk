# 10. The study's answer: the headline table (one row per model size), and when a run ends, the HTML report and a
# summary on the terminal (the Snakefile's onsuccess calls finish()).
import subprocess
import time

REPORT = "report.html"


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
