# ECT study: pretraining -> tuning at every budget x model size -> evaluation -> power-law fits, ablations, the
# training-schemes comparison, tables, figures and report, for the active config.
#
#   snakemake --cores all                                         the embedded default (config.yaml)
#   snakemake --cores all --configfile workflow/configs/smoke.yaml
#   snakemake --cores all ablation_mapping                        one ablation axis
#   snakemake --cores all schemes                                 the training-schemes comparison only
#   snakemake --report report.html                                HTML report (built when a run ends, too)
#
# Every step is an `ect` command; the rules only wire files together (README.md).

import sys
import time

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

from ect import study_config
from ect.study import StudyError

min_version("9.0")
STARTED = time.monotonic()  # the summary at the end says how long the run took

# A preset given with --configfile replaces the embedded default instead of being merged into it. (The default is
# found next to this file, so --directory can put a study's outputs anywhere.)
if not workflow.overwrite_configfiles:

    configfile: f"{workflow.basedir}/config.yaml"


# --config values arrive as strings ("150"): coerce them to the schema's types; every problem is one line naming the
# key (jsonschema's own message would print the whole schema).
_SCHEMA = study_config.load_schema(f"{workflow.current_basedir}/workflow/schemas/config.schema.yaml")
try:
    config.update(study_config.coerce(config, _SCHEMA))
    study_config.check_required(config, _SCHEMA, workflow.overwrite_configfiles)
    try:
        validate(config, "workflow/schemas/config.schema.yaml")
    except WorkflowError as exc:  # raised while handling jsonschema's ValidationError
        if not hasattr(exc.__context__, "absolute_path"):
            raise
        raise StudyError(study_config.error_line(exc.__context__)) from None
    study_config.check_ablation_values(config["ablations"]["axes"])
except StudyError as exc:
    sys.exit(f"Error: {exc}")


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
include: "workflow/rules/report.smk"
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
    table_headline,
    report_landing,
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
        rules.table_headline.output,
        rules.report_landing.output,
        expand(f"{FIGURES}/{{kind}}_{{metric}}.{{ext}}", kind=["scaling", "samplers"], metric=METRICS,
               ext=["png", "pdf"]),
        rules.figure_loss.output,
        rules.figure_samples.output,
        [ablation_outputs(axis) for axis in AXES],
        scheme_outputs(),
    default_target: True


# A run that did something ends with its answer: report.html and the summary (headline table, where everything is).
# (Snakemake calls this neither on a dry run nor when there is nothing to do; `ect summary` prints it again.)
onsuccess:
    finish(STARTED)
