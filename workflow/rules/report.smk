# The report: a table of every result found, figures, and the scaling fit. Its inputs are the main
# pipeline's results and the cells of pipeline.grids; the stage also lists any other result it finds.

PLOTS = ["robust_vs_generated", "clean_vs_robust", "robust_vs_quality", "training_curves", "scaling",
         "certified_vs_radius", "paired_vs_none"]


rule report:
    input:
        expand(
            "results/{dataset}_{threat}.json",
            dataset=PARAMS["pipeline"]["datasets"],
            threat=PARAMS["pipeline"]["threats"],
        ),
        expand("results/{dataset}_smooth{sigma}.json", dataset=PARAMS["pipeline"]["datasets"],
               sigma=PARAMS["pipeline"]["sigmas"]),
        [result for grid in PARAMS["pipeline"]["grids"] for result in grid_results(grid)],
    output:
        csv=report("results/summary.csv", caption="../report/summary.rst", category="Results"),
        md="results/summary.md",
        scaling="results/scaling.json",
        plots=[
            report(f"results/plots/{name}.png", caption=f"../report/{name}.rst", category="Figures")
            for name in PLOTS
        ],
    conda:
        "../../envs/genrobust.yaml"
    log:
        "logs/report.log",
    benchmark:
        "benchmarks/report.tsv"
    threads: 1
    resources:
        gpu=0,
        mem_mb=2000,
        runtime=10,
    shell:
        "python -m genrobust report --results results --summary-csv {output.csv} --summary-md {output.md} "
        "--scaling {output.scaling} --plots results/plots > {log} 2>&1"
