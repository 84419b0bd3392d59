# 2. The diffusion model of each size: EDM pretraining, or the official checkpoint imported with `ect import`.
# A pretraining job's outputs are its final snapshot and state manifest, never the run directory: Snakemake then
# never deletes checkpoint.pt, and rerunning an interrupted job resumes from it.


rule pretrain:
    input:
        ancient(PREPARED),
    output:
        protected(f"{RESULTS}/pretrain/{{model}}/{runs.SNAPSHOT}"),
        f"{RESULTS}/pretrain/{{model}}/{runs.STATE}",
    wildcard_constraints:
        model=alternatives(TRAINED),
    params:
        ect=launcher("pretrain"),
        config=config_arg("pretrain"),
        sets=lambda wildcards: set_args(pretrain_sets(wildcards.model)),
        run_dir=lambda wildcards: f"{RESULTS}/pretrain/{wildcards.model}",
    log:
        f"{RESULTS}/logs/pretrain/{{model}}-{{step}}.log",
    threads: job_threads("pretrain")
    resources:
        gpu=resource("pretrain", "gpu"),
        cpus_per_gpu=resource("pretrain", "cpus_per_gpu"),
        mem_mb=resource("pretrain", "mem_mb"),
        runtime=resource("pretrain", "runtime"),
        nproc=job_processes("pretrain"),
    conda:
        SOFTWARE
    shell:
        "attempt={log}.$(date -u +%Y%m%dT%H%M%SZ)-$$${{SLURM_JOB_ID:+-job$SLURM_JOB_ID}}; "
        "ln -sfn \"${{attempt##*/}}\" {log}; "
        "OMP_NUM_THREADS=$(( ({threads} + {resources.nproc} - 1) / {resources.nproc} )) "
        "exec {params.ect} pretrain {params.config} "
        "--out {params.run_dir} {params.sets} --no-progress > \"$attempt\" 2>&1"


rule import_checkpoint:
    output:
        protected(f"{RESULTS}/pretrain/{{model}}/imported.pt"),
    wildcard_constraints:
        model=alternatives(IMPORTED),
    params:
        time_limit=time_limit("import_checkpoint"),
        source=lambda wildcards: MODELS[wildcards.model]["import"],
        preset=lambda wildcards: MODELS[wildcards.model]["preset"],
        cache=config["cache_dir"],
        data=data_options(),
    log:
        f"{RESULTS}/logs/import/{{model}}.log",
    threads: job_threads("import")
    resources:
        gpu=resource("import", "gpu"),
        cpus_per_gpu=resource("import", "cpus_per_gpu"),
        mem_mb=resource("import", "mem_mb"),
        runtime=resource("import", "runtime"),
    conda:
        SOFTWARE
    shell:
        "ect import --source {params.source:q} --preset {params.preset:q} --cache-dir {params.cache:q} "
        "{params.data} --out {output} > {log} 2>&1"
