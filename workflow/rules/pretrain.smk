# 2. The diffusion model of each size: EDM pretraining, or the official checkpoint imported with `ect import`.
# A training rule's output is the run's summary.json (written last), never the run directory: Snakemake then
# never deletes checkpoint.pt or the snapshots, and rerunning an interrupted job resumes from checkpoint.pt.


rule pretrain:
    input:
        ancient(PREPARED),
    output:
        f"{RESULTS}/pretrain/{{model}}/summary.json",
    wildcard_constraints:
        model=alternatives(TRAINED),
    params:
        ect=launcher("pretrain"),
        config=config_arg("pretrain"),
        sets=lambda wildcards: set_args(pretrain_sets(wildcards.model)),
        run_dir=lambda wildcards, output: Path(output[0]).parent,
    log:
        f"{RESULTS}/logs/pretrain/{{model}}.log",
    threads: resource("pretrain", "threads")
    resources:
        gpu=resource("pretrain", "gpu"),
        cpus_per_gpu=resource("pretrain", "cpus_per_gpu"),
        mem_mb=resource("pretrain", "mem_mb"),
        runtime=resource("pretrain", "runtime"),
    shell:
        "OMP_NUM_THREADS={threads} {params.ect} pretrain {params.config} --out {params.run_dir} {params.sets} "
        "--no-progress > {log} 2>&1"


rule import_checkpoint:
    output:
        protected(f"{RESULTS}/pretrain/{{model}}/imported.pt"),
    wildcard_constraints:
        model=alternatives(IMPORTED),
    params:
        source=lambda wildcards: MODELS[wildcards.model]["import"],
        preset=lambda wildcards: MODELS[wildcards.model]["preset"],
        cache=config["cache_dir"],
        data=data_options(),
    log:
        f"{RESULTS}/logs/import/{{model}}.log",
    threads: resource("import", "threads")
    resources:
        gpu=resource("import", "gpu"),
        cpus_per_gpu=resource("import", "cpus_per_gpu"),
        mem_mb=resource("import", "mem_mb"),
        runtime=resource("import", "runtime"),
    shell:
        "ect import --source {params.source:q} --preset {params.preset:q} --cache-dir {params.cache:q} "
        "{params.data} --out {output} > {log} 2>&1"
