rule evaluate:
    input:
        model="models/{dataset}/adv/{threat}/model.pt",
        test="data/{dataset}/test.npz",
        code=CODE["evaluate"],
    output:
        result="results/{dataset}_{threat}.json",
        info="results/{dataset}_{threat}.model_info.json",
    params:
        launcher=single_process,
        overrides=overrides("evaluate", "threats"),
        settings=settings("evaluate"),
    conda:
        "../../envs/genrobust.yaml"
    log:
        "logs/{dataset}/evaluate_{threat}.log",
    benchmark:
        "benchmarks/{dataset}/evaluate_{threat}.tsv"
    threads: all_cores()
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=720,
    shell:
        "{params.launcher} -m genrobust evaluate --dataset {wildcards.dataset} --threat {wildcards.threat} --checkpoint {input.model} "
        "--test {input.test} --out {output.result} --model-info {output.info} {params.overrides} > {log} 2>&1"


rule certify:
    input:
        model="models/{dataset}/smooth/{sigma}/model.pt",
        test="data/{dataset}/test.npz",
        code=CODE["certify"],
    output:
        result="results/{dataset}_smooth{sigma}.json",
    params:
        launcher=single_process,
        overrides=overrides("certify"),
        settings=settings("certify"),
        work="work/{dataset}/certify/smooth{sigma}",
    conda:
        "../../envs/genrobust.yaml"
    log:
        "logs/{dataset}/certify_smooth{sigma}.log",
    benchmark:
        "benchmarks/{dataset}/certify_smooth{sigma}.tsv"
    threads: all_cores()
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=1440,
    shell:
        "{params.launcher} -m genrobust certify --dataset {wildcards.dataset} --sigma {wildcards.sigma} --checkpoint {input.model} "
        "--test {input.test} --out {output.result} --work {params.work} {params.overrides} > {log} 2>&1"
