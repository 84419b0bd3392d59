# 3. The diffusion models with EDM's Heun sampler (the reference ECT should approach), and 5. every ECT snapshot
# with each few-step sampler, for every metric and evaluation seed. An evaluation needs only its snapshot, so it
# starts as soon as the segment that made it ends; its higher priority lets it go before the next segments.


rule evaluate_diffusion:
    input:
        ancient(PREPARED),
        checkpoint=lambda wildcards: pretrained_output(wildcards.model),
    output:
        f"{RESULTS}/pretrain/{{model}}/eval/heun-{{metric}}{{seed}}.json",
    params:
        options=lambda wildcards: eval_options(wildcards.metric, wildcards.seed),
    log:
        f"{RESULTS}/logs/evaluate/pretrain-{{model}}-heun-{{metric}}{{seed}}.log",
    priority: 10
    threads: job_threads("evaluate_heun")
    resources:
        gpu=resource("evaluate_heun", "gpu"),
        cpus_per_gpu=resource("evaluate_heun", "cpus_per_gpu"),
        mem_mb=resource("evaluate_heun", "mem_mb"),
        runtime=resource("evaluate_heun", "runtime"),
    conda:
        SOFTWARE
    shell:
        "OMP_NUM_THREADS={threads} ect evaluate --checkpoint {input.checkpoint} --sampler heun "
        "--metric {wildcards.metric} {params.options} --no-progress --out {output} > {log} 2>&1"


rule evaluate_ect:
    input:
        ancient(PREPARED),
        checkpoint=lambda wildcards: snapshot(run_dir(wildcards), wildcards.iteration),
    output:
        f"{RESULTS}/tune/{{model}}/eval/{{iteration}}-{{sampler}}-{{metric}}{{seed}}.json",
    params:
        options=lambda wildcards: eval_options(wildcards.metric, wildcards.seed),
    log:
        f"{RESULTS}/logs/evaluate/tune-{{model}}-{{iteration}}-{{sampler}}-{{metric}}{{seed}}.log",
    priority: 10
    threads: job_threads("evaluate")
    resources:
        gpu=resource("evaluate", "gpu"),
        cpus_per_gpu=resource("evaluate", "cpus_per_gpu"),
        mem_mb=resource("evaluate", "mem_mb"),
        runtime=resource("evaluate", "runtime"),
    conda:
        SOFTWARE
    shell:
        "OMP_NUM_THREADS={threads} ect evaluate --checkpoint {input.checkpoint} --sampler {wildcards.sampler} "
        "--metric {wildcards.metric} {params.options} --no-progress --out {output} > {log} 2>&1"
