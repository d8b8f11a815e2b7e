# The standard classifier, pseudo-labels for generated images, and adversarial training.


rule train_classifier:
    input:
        train="data/{dataset}/train.npz",
        code=CODE["train_classifier"],
    output:
        model="models/{dataset}/classifier/model.pt",
    params:
        launcher=launcher,
        overrides=overrides("classifier"),
        settings=settings("classifier", "dataset"),
        work="work/{dataset}/classifier",
    conda:
        "../../envs/genrobust.yaml"
    log:
        "logs/{dataset}/train_classifier.log",
    benchmark:
        "benchmarks/{dataset}/train_classifier.tsv"
    threads: all_cores()
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=720,
    shell:
        "{params.launcher} -m genrobust train_classifier --dataset {wildcards.dataset} --train {input.train} --out {output.model} "
        "--work {params.work} {params.overrides} > {log} 2>&1"


rule pseudo_label:
    input:
        classifier="models/{dataset}/classifier/model.pt",
        manifest="data/{dataset}/generated/{generator}/shards/manifest.json",
        quality="data/{dataset}/generated/{generator}/quality.json",
        discriminator="data/{dataset}/generated/{generator}/discriminator.pt",
        code=CODE["pseudo_label"],
    output:
        labels="data/{dataset}/generated/{generator}/labels.npz",
    params:
        launcher=single_process,
        overrides=overrides("pseudo_label", "sample", "generator"),
        settings=settings("pseudo_label", "sample"),   # sample: whether the set is filtered
        shards=lambda w, input: os.path.dirname(input.manifest),
    conda:
        "../../envs/genrobust.yaml"
    log:
        "logs/{dataset}/pseudo_label_{generator}.log",
    benchmark:
        "benchmarks/{dataset}/pseudo_label_{generator}.tsv"
    threads: all_cores()
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=120,
    shell:
        "{params.launcher} -m genrobust pseudo_label --dataset {wildcards.dataset} --classifier {input.classifier} "
        "--shards {params.shards} --quality {input.quality} --discriminator {input.discriminator} "
        "--out {output.labels} {params.overrides} > {log} 2>&1"


rule adv_train:
    input:
        unpack(generated_inputs),
        train="data/{dataset}/train.npz",
        code=CODE["adv_train"],
    output:
        model="models/{dataset}/adv/{threat}/model.pt",
        last="models/{dataset}/adv/{threat}/last.pt",
        metrics="models/{dataset}/adv/{threat}/metrics.tsv",
    params:
        launcher=launcher,
        overrides=overrides("adv_train", "threats", "generator"),
        settings=settings("adv_train", "dataset"),
        generator=lambda w: PARAMS["generator"],
        generated=generated_args,
        work="work/{dataset}/adv/{threat}",
    conda:
        "../../envs/genrobust.yaml"
    log:
        "logs/{dataset}/adv_train_{threat}.log",
    benchmark:
        "benchmarks/{dataset}/adv_train_{threat}.tsv"
    threads: all_cores()
    resources:
        gpu=1,
        mem_mb=32000,
        runtime=2880,
    shell:
        "{params.launcher} -m genrobust adv_train --dataset {wildcards.dataset} --threat {wildcards.threat} --train {input.train} "
        "{params.generated} --out {output.model} --last {output.last} --metrics {output.metrics} --work {params.work} "
        "{params.overrides} > {log} 2>&1"


rule smooth_train:
    input:
        unpack(generated_inputs),
        train="data/{dataset}/train.npz",
        code=CODE["smooth_train"],
    output:
        model="models/{dataset}/smooth/{sigma}/model.pt",
        last="models/{dataset}/smooth/{sigma}/last.pt",
        metrics="models/{dataset}/smooth/{sigma}/metrics.tsv",
    params:
        launcher=launcher,
        overrides=overrides("smooth_train", "generator"),
        settings=settings("smooth_train", "dataset"),
        generated=generated_args,
        work="work/{dataset}/smooth/{sigma}",
    conda:
        "../../envs/genrobust.yaml"
    log:
        "logs/{dataset}/smooth_train_{sigma}.log",
    benchmark:
        "benchmarks/{dataset}/smooth_train_{sigma}.tsv"
    threads: all_cores()
    resources:
        gpu=1,
        mem_mb=32000,
        runtime=2880,
    shell:
        "{params.launcher} -m genrobust smooth_train --dataset {wildcards.dataset} --sigma {wildcards.sigma} "
        "--train {input.train} {params.generated} --out {output.model} --last {output.last} --metrics {output.metrics} "
        "--work {params.work} {params.overrides} > {log} 2>&1"
