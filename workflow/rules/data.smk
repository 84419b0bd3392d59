# 1. Data preparation: fetch or build the dataset and each metric's reference statistics once (cached under
# cache_dir), so that training and the parallel evaluation jobs never race to download or compute them. Later rules
# take its output as ancient(): redoing the preparation (e.g. for another metric) never invalidates results.
PREPARED = f"{RESULTS}/data/prepared.json"


rule prepare_data:
    output:
        PREPARED,
    params:
        time_limit=time_limit("prepare_data"),
        dataset=DATASET,
        options=prepare_options(),
    log:
        f"{RESULTS}/logs/prepare_data.log",
    threads: job_threads("prepare")
    resources:
        gpu=resource("prepare", "gpu"),
        cpus_per_gpu=resource("prepare", "cpus_per_gpu"),
        mem_mb=resource("prepare", "mem_mb"),
        runtime=resource("prepare", "runtime"),
    conda:
        SOFTWARE
    shell:
        "OMP_NUM_THREADS={threads} ect prepare --dataset {params.dataset} {params.options} "
        "--out {output} > {log} 2>&1"


# The resolved workflow config (schema defaults filled in) next to the results it produced.
rule workflow_config:
    output:
        f"{RESULTS}/config.yaml",
    params:
        text=yaml.safe_dump(config, sort_keys=False),
    log:
        f"{RESULTS}/logs/workflow_config.log",
    run:
        Path(output[0]).write_text(params.text)
