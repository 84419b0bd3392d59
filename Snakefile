# ECT study: pretraining -> tuning at every budget x model size -> evaluation -> power-law fits, ablations, the
# training-schemes comparison, tables, figures and report, for the active config.
#
#   snakemake --cores all                                         the embedded default (config.yaml)
#   snakemake --cores all --configfile workflow/configs/smoke.yaml
#   snakemake --cores all ablation_mapping                        one ablation axis
#   snakemake --cores all schemes                                 the training-schemes comparison only
#   snakemake --report report.html                                HTML report of the finished study
#
# Every step is an `ect` command; the rules only wire files together (README.md).

from snakemake.utils import min_version, validate

min_version("9.0")

# A preset given with --configfile replaces the embedded default instead of being merged into it. (The default is
# found next to this file, so --directory can put a study's outputs anywhere.)
if not workflow.overwrite_configfiles:

    configfile: f"{workflow.basedir}/config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/schemes_common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/tune.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/analysis.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/ablations.smk"
include: "workflow/rules/schemes.smk"


# Light jobs (pandas, matplotlib, a YAML dump) run where Snakemake runs, never queued for a cluster node.
localrules:
    workflow_config,
    collect,
    collect_ablation,
    fit,
    table_main,
    table_scaling,
    table_ablation,
    figure_scaling,
    figure_samplers,
    figure_loss,
    figure_samples,
    figure_ablation,
    collect_schemes,
    table_schemes,
    figure_schemes,


rule all:
    input:
        rules.workflow_config.output,
        rules.collect.output,
        rules.fit.output,
        rules.table_main.output,
        rules.table_scaling.output,
        expand(f"{FIGURES}/{{kind}}_{{metric}}.{{ext}}", kind=["scaling", "samplers"], metric=METRICS,
               ext=["png", "pdf"]),
        rules.figure_loss.output,
        rules.figure_samples.output,
        [ablation_outputs(axis) for axis in AXES],
        scheme_outputs(),
    default_target: True
