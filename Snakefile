# fusionroute-bench: Table 1, Table 2, Figures 3 and 4 of the FusionRoute paper.
# Default: the tiny world (config/tiny.yaml). Paper: --configfile config/paper.yaml.
from snakemake.utils import min_version, validate

min_version("9.0")


# `--configfile config/paper.yaml` replaces the tiny config (Snakemake would otherwise merge them).
if not workflow.overwrite_configfiles:

    configfile: "config/tiny.yaml"



validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/tiny.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/baselines.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/hub.smk"
include: "workflow/rules/judge.smk"
include: "workflow/rules/theory.smk"
include: "workflow/rules/plan.smk"
include: "workflow/rules/claims.smk"


rule all:
    input:
        "results/table1.tex",
        "results/table2.tex",
        "results/fig3.pdf",
        "results/fig4.pdf",
