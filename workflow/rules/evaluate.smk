# 3. The diffusion models with EDM's Heun sampler (the reference ECT should approach), and 5. every ECT snapshot
# with each few-step sampler, for every metric. Evaluation waits for its run's summary.json; the snapshot it
# reads is named by the budget.


rule evaluate_diffusion:
    input:
        ancient(PREPARED),
        lambda wildcards: pretrained_output(wildcards.model),
    output:
        f"{RESULTS}/pretrain/{{model}}/eval/heun-{{metric}}.json",
    params:
        checkpoint=lambda wildcards: pretrained_checkpoint(wildcards.model),
        options=lambda wildcards: eval_options(wildcards.metric),
    log:
        f"{RESULTS}/logs/evaluate/pretrain-{{model}}-heun-{{metric}}.log",
    threads: resource("evaluate_heun", "threads")
    resources:
        gpu=resource("evaluate_heun", "gpu"),
        cpus_per_gpu=resource("evaluate_heun", "cpus_per_gpu"),
        mem_mb=resource("evaluate_heun", "mem_mb"),
        runtime=resource("evaluate_heun", "runtime"),
    shell:
        "OMP_NUM_THREADS={threads} ect evaluate --checkpoint {params.checkpoint} --sampler heun "
        "--metric {wildcards.metric} {params.options} --no-progress --out {output} > {log} 2>&1"


rule evaluate_ect:
    input:
        ancient(PREPARED),
        f"{RESULTS}/tune/{{model}}/summary.json",
    output:
        f"{RESULTS}/tune/{{model}}/eval/{{iteration}}-{{sampler}}-{{metric}}.json",
    params:
        checkpoint=lambda wildcards: snapshot(f"{RESULTS}/tune/{wildcards.model}", wildcards.iteration),
        options=lambda wildcards: eval_options(wildcards.metric),
    log:
        f"{RESULTS}/logs/evaluate/tune-{{model}}-{{iteration}}-{{sampler}}-{{metric}}.log",
    threads: resource("evaluate", "threads")
    resources:
        gpu=resource("evaluate", "gpu"),
        cpus_per_gpu=resource("evaluate", "cpus_per_gpu"),
        mem_mb=resource("evaluate", "mem_mb"),
        runtime=resource("evaluate", "runtime"),
    shell:
        "OMP_NUM_THREADS={threads} ect evaluate --checkpoint {params.checkpoint} --sampler {wildcards.sampler} "
        "--metric {wildcards.metric} {params.options} --no-progress --out {output} > {log} 2>&1"
