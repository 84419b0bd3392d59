# 4. ECT tuning of each model size from its diffusion model, as a chain of segments: segment b_k of a run
# (`ect tune --set training.iterations=b_k`) continues from the state the segment to b_(k-1) left in the run
# directory, and declares the snapshot at b_k and its state manifest as outputs. Evaluating b_k needs only that
# snapshot, so it runs while b_(k+1) trains; appending a budget adds one segment and changes no existing job.
# The resumable checkpoint.pt is the trainer's, never an output: Snakemake never deletes it (not before a rerun,
# not with --delete-all-output), so an interrupted segment resumes from it. `exec`: the training process (in a SLURM
# job, the srun of its own job step, see JOB_STEP) gets SLURM's SIGTERM itself (no shell in between that could die
# first), writes its checkpoint and exits 75; it does the same ECT_STOP_MARGIN seconds before the job's end time.
# One log file per attempt, <log>.<UTC time>-<pid>[-job<SLURM job id>], the rule's log a link to the latest:
# Snakemake deletes a job's log before every attempt, which would lose the earlier attempt's "stopped by ..." line.


rule tune:
    input:
        ancient(PREPARED),
        segment_input,
    output:
        protected(f"{RESULTS}/tune/{{model}}/{runs.SNAPSHOT}"),
        f"{RESULTS}/tune/{{model}}/{runs.STATE}",
    params:
        ect=launcher("tune"),
        config=config_arg("tune"),
        init=lambda wildcards: pretrained_output(job_model(wildcards)),
        sets=lambda wildcards: set_args(run_sets(wildcards)),
        iterations=lambda wildcards: int(wildcards.step),
        run_dir=run_dir,
    log:
        f"{RESULTS}/logs/tune/{{model}}-{{step}}.log",
    threads: job_threads("tune")
    resources:
        gpu=resource("tune", "gpu"),
        cpus_per_gpu=resource("tune", "cpus_per_gpu"),
        mem_mb=resource("tune", "mem_mb"),
        runtime=resource("tune", "runtime"),
        nproc=job_processes("tune"),
    conda:
        SOFTWARE
    shell:
        "attempt={log}.$(date -u +%Y%m%dT%H%M%SZ)-$$${{SLURM_JOB_ID:+-job$SLURM_JOB_ID}}; "
        "ln -sfn \"${{attempt##*/}}\" {log}; "
        "OMP_NUM_THREADS=$(( ({threads} + {resources.nproc} - 1) / {resources.nproc} )) "
        "exec {params.ect} tune {params.config} "
        "--init {params.init} --out {params.run_dir} {params.sets} --set training.iterations={params.iterations} "
        "--no-progress > \"$attempt\" 2>&1"


# Replicates (config `replicates`): the same tuning with another training.seed, in tune-seed<N>/<model>.
use rule tune as tune_replicate with:
    output:
        protected(f"{RESULTS}/tune-seed{{tseed}}/{{model}}/{runs.SNAPSHOT}"),
        f"{RESULTS}/tune-seed{{tseed}}/{{model}}/{runs.STATE}",
    log:
        f"{RESULTS}/logs/tune/{{model}}-seed{{tseed}}-{{step}}.log",
