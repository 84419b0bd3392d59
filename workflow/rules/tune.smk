# 4. ECT tuning of each model size from its diffusion model: one run to the largest budget keeps a snapshot at
# every budget (training.budgets), so all budgets cost one run.


rule tune:
    input:
        ancient(PREPARED),
        lambda wildcards: pretrained_output(wildcards.model),
    output:
        f"{RESULTS}/tune/{{model}}/summary.json",
    params:
        ect=launcher("tune"),
        config=config_arg("tune"),
        init=lambda wildcards: pretrained_checkpoint(wildcards.model),
        sets=lambda wildcards: set_args(tune_sets(wildcards.model)),
        run_dir=lambda wildcards, output: Path(output[0]).parent,
    log:
        f"{RESULTS}/logs/tune/{{model}}.log",
    threads: resource("tune", "threads")
    resources:
        gpu=resource("tune", "gpu"),
        cpus_per_gpu=resource("tune", "cpus_per_gpu"),
        mem_mb=resource("tune", "mem_mb"),
        runtime=resource("tune", "runtime"),
    shell:
        "OMP_NUM_THREADS={threads} {params.ect} tune {params.config} --init {params.init} --out {params.run_dir} "
        "{params.sets} --no-progress > {log} 2>&1"
