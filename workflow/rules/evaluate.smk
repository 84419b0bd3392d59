# 3. The diffusion models with EDM's Heun sampler (the reference ECT should approach), and 5. every ECT snapshot
# with each few-step sampler, for every metric. One job scores one checkpoint with every sampler and evaluation
# seed it needs, so the network, the feature extractor and the reference statistics load once. An evaluation needs
# only its snapshot, so it starts as soon as the segment that made it ends; its higher priority lets it go before
# the next segments. The first evaluation seed is scored at every budget; the others (the spread the tables
# report) only at a run's largest budget and for the diffusion models.


rule evaluate_diffusion:
    input:
        ancient(PREPARED),
        checkpoint=lambda wildcards: pretrained_output(wildcards.model),
    output:
        eval_outputs(EVAL_DIFFUSION, ["heun"], SEEDS),
    params:
        time_limit=time_limit("evaluate_diffusion"),
        options=lambda wildcards: eval_options(wildcards.metric, SEEDS),
        out=lambda wildcards: out_template(EVAL_DIFFUSION, wildcards),
    log:
        f"{RESULTS}/logs/evaluate/pretrain-{{model}}-heun-{{metric}}.log",
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
        "--metric {wildcards.metric} {params.options} --no-progress --out {params.out:q} > {log} 2>&1"


rule evaluate_ect:
    input:
        ancient(PREPARED),
        checkpoint=lambda wildcards: snapshot(run_dir(wildcards), wildcards.iteration),
    output:
        eval_outputs(EVAL_TUNE, SAMPLERS, SEEDS[:1]),
    params:
        time_limit=time_limit("evaluate_ect"),
        samplers=" ".join(SAMPLERS),
        options=lambda wildcards: eval_options(wildcards.metric, SEEDS[:1]),
        out=lambda wildcards: out_template(eval_pattern(wildcards), wildcards),
    log:
        f"{RESULTS}/logs/evaluate/tune-{{model}}-{{iteration}}-{{metric}}.log",
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
        "OMP_NUM_THREADS={threads} ect evaluate --checkpoint {input.checkpoint} --sampler {params.samplers} "
        "--metric {wildcards.metric} {params.options} --no-progress --out {params.out:q} > {log} 2>&1"


# The other evaluation seeds, asked for only at a run's largest budget (see eval_seeds).
if SEEDS[1:]:

    use rule evaluate_ect as evaluate_ect_spread with:
        output:
            eval_outputs(EVAL_TUNE, SAMPLERS, SEEDS[1:]),
        params:
            options=lambda wildcards: eval_options(wildcards.metric, SEEDS[1:]),
        log:
            f"{RESULTS}/logs/evaluate/tune-{{model}}-{{iteration}}-{{metric}}-spread.log",


use rule evaluate_ect as evaluate_replicate with:
    output:
        eval_outputs(EVAL_REPLICATE, SAMPLERS, SEEDS[:1]),
    log:
        f"{RESULTS}/logs/evaluate/tune-{{model}}-seed{{tseed}}-{{iteration}}-{{metric}}.log",


if SEEDS[1:]:

    use rule evaluate_ect_spread as evaluate_replicate_spread with:
        output:
            eval_outputs(EVAL_REPLICATE, SAMPLERS, SEEDS[1:]),
        log:
            f"{RESULTS}/logs/evaluate/tune-{{model}}-seed{{tseed}}-{{iteration}}-{{metric}}-spread.log",
