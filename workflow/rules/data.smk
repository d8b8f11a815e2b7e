rule prepare_data:
    input:
        code=CODE["prepare_data"],
    output:
        train="data/{dataset}/train.npz",
        test="data/{dataset}/test.npz",
        extra="data/{dataset}/extra_real.npz",
    params:
        overrides=overrides(),
        settings=lambda w: json.dumps(PARAMS["datasets"][w.dataset], sort_keys=True),
    conda:
        "../../envs/genrobust.yaml"
    log:
        "logs/{dataset}/prepare_data.log",
    benchmark:
        "benchmarks/{dataset}/prepare_data.tsv"
    threads: 1
    resources:
        gpu=0,
        mem_mb=4000,
        runtime=60,
    shell:
        "python -m genrobust prepare_data --dataset {wildcards.dataset} --train-out {output.train} "
        "--test-out {output.test} --extra-out {output.extra} {params.overrides} > {log} 2>&1"
