# genrobust: real + generated data -> adversarially robust classifier -> AutoAttack result.
# `snakemake --cores all` builds pipeline.datasets x pipeline.threats from params.yaml;
# `snakemake --cores all results/cifar10_linf.json` builds one result.
from snakemake.utils import min_version

min_version("9.0")


configfile: "params.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/generate.smk"
include: "workflow/rules/quality.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/grids.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        expand(
            "results/{dataset}_{threat}.json",
            dataset=PARAMS["pipeline"]["datasets"],
            threat=PARAMS["pipeline"]["threats"],
        ),
        expand("results/{dataset}_smooth{sigma}.json", dataset=PARAMS["pipeline"]["datasets"],
               sigma=PARAMS["pipeline"]["sigmas"]),
        "results/summary.csv",
