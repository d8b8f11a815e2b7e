# Generated data: a class-conditional diffusion model (edm or ddpm) or the per-class Gaussian baseline.
# Each shard is its own job (the {shard} wildcard), so shards spread over cores, GPUs or cluster nodes,
# and a killed job loses only its own shard; the gather rules write manifest.json. The shard count is
# sample.num_images x sample.oversample / sample.shard_size (shard_files in common.smk).


rule train_diffusion:
    input:
        train="data/{dataset}/train.npz",
        pretrained=pretrained_model,
        code=CODE["train_diffusion"],
    output:
        model="models/{dataset}/diffusion/{diffusion}/model.pt",
    params:
        launcher=launcher,
        overrides=overrides("diffusion"),
        settings=settings("diffusion", "dataset"),  # the dataset's `flip` changes training too
        work="work/{dataset}/diffusion/{diffusion}",
    conda:
        "../../envs/genrobust.yaml"
    log:
        "logs/{dataset}/train_diffusion_{diffusion}.log",
    benchmark:
        "benchmarks/{dataset}/train_diffusion_{diffusion}.tsv"
    threads: all_cores()
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=2880,
    shell:
        "{params.launcher} -m genrobust train_diffusion --dataset {wildcards.dataset} --generator {wildcards.diffusion} "
        "--train {input.train} --out {output.model} --work {params.work} {params.overrides} > {log} 2>&1"


rule sample_diffusion_shard:
    input:
        model="models/{dataset}/diffusion/{diffusion}/model.pt",
        code=CODE["sample_diffusion"],
    output:
        shard="data/{dataset}/generated/{diffusion}/shards/shard-{shard}.npz",
    params:
        launcher=single_process,
        overrides=overrides("sample", "diffusion"),
        settings=settings("sample"),
        out=lambda w, output: os.path.dirname(output.shard),
    conda:
        "../../envs/genrobust.yaml"
    log:
        "logs/{dataset}/sample_{diffusion}/shard-{shard}.log",
    benchmark:
        "benchmarks/{dataset}/sample_{diffusion}/shard-{shard}.tsv"
    threads: all_cores()
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=240,
    shell:
        "{params.launcher} -m genrobust sample_diffusion --dataset {wildcards.dataset} --generator {wildcards.diffusion} "
        "--model {input.model} --out {params.out} --shard {wildcards.shard} {params.overrides} > {log} 2>&1"


rule sample_diffusion:
    input:
        model="models/{dataset}/diffusion/{diffusion}/model.pt",
        shards=shard_files("data/{dataset}/generated/{diffusion}/shards"),
        code=CODE["sample_diffusion"],
    output:
        manifest="data/{dataset}/generated/{diffusion}/shards/manifest.json",
    params:
        overrides=overrides("sample", "diffusion"),
        settings=settings("sample"),
        out=lambda w, output: os.path.dirname(output.manifest),
    conda:
        "../../envs/genrobust.yaml"
    log:
        "logs/{dataset}/sample_{diffusion}/manifest.log",
    benchmark:
        "benchmarks/{dataset}/sample_{diffusion}/manifest.tsv"
    threads: 1
    resources:
        gpu=0,
        mem_mb=2000,
        runtime=30,
    shell:
        "python -m genrobust sample_diffusion --dataset {wildcards.dataset} --generator {wildcards.diffusion} "
        "--model {input.model} --out {params.out} {params.overrides} > {log} 2>&1"


rule fit_gaussian:
    input:
        train="data/{dataset}/train.npz",
        code=CODE["fit_gaussian"],
    output:
        fit="models/{dataset}/gaussian/fit.npz",
    params:
        overrides=overrides("gaussian"),
        settings=settings("gaussian"),
    conda:
        "../../envs/genrobust.yaml"
    log:
        "logs/{dataset}/fit_gaussian.log",
    benchmark:
        "benchmarks/{dataset}/fit_gaussian.tsv"
    threads: all_cores()
    resources:
        gpu=0,
        mem_mb=32000,
        runtime=60,
    shell:
        "python -m genrobust fit_gaussian --dataset {wildcards.dataset} --train {input.train} --out {output.fit} "
        "{params.overrides} > {log} 2>&1"


rule sample_gaussian_shard:
    input:
        fit="models/{dataset}/gaussian/fit.npz",
        code=CODE["sample_gaussian"],
    output:
        shard="data/{dataset}/generated/gaussian/shards/shard-{shard}.npz",
    params:
        overrides=overrides("sample", "gaussian"),
        settings=settings("sample"),
        out=lambda w, output: os.path.dirname(output.shard),
    conda:
        "../../envs/genrobust.yaml"
    log:
        "logs/{dataset}/sample_gaussian/shard-{shard}.log",
    benchmark:
        "benchmarks/{dataset}/sample_gaussian/shard-{shard}.tsv"
    threads: 1
    resources:
        gpu=0,
        mem_mb=8000,
        runtime=60,
    shell:
        "python -m genrobust sample_gaussian --dataset {wildcards.dataset} --fit {input.fit} --out {params.out} "
        "--shard {wildcards.shard} {params.overrides} > {log} 2>&1"


rule sample_gaussian:
    input:
        fit="models/{dataset}/gaussian/fit.npz",
        shards=shard_files("data/{dataset}/generated/gaussian/shards", "gaussian"),
        code=CODE["sample_gaussian"],
    output:
        manifest="data/{dataset}/generated/gaussian/shards/manifest.json",
    params:
        overrides=overrides("sample", "gaussian"),
        settings=settings("sample"),
        out=lambda w, output: os.path.dirname(output.manifest),
    conda:
        "../../envs/genrobust.yaml"
    log:
        "logs/{dataset}/sample_gaussian/manifest.log",
    benchmark:
        "benchmarks/{dataset}/sample_gaussian/manifest.tsv"
    threads: 1
    resources:
        gpu=0,
        mem_mb=2000,
        runtime=30,
    shell:
        "python -m genrobust sample_gaussian --dataset {wildcards.dataset} --fit {input.fit} --out {params.out} "
        "{params.overrides} > {log} 2>&1"


rule import_external:
    input:
        files=lambda w: PARAMS["datasets"][w.dataset].get("external", {}).get("paths", []),
        code=CODE["import_external"],
    output:
        manifest="data/{dataset}/generated/external/shards/manifest.json",
    params:
        overrides=overrides("sample"),
        settings=settings("sample", "dataset"),  # the dataset's `external` paths and labels mode
        out=lambda w, output: os.path.dirname(output.manifest),
    conda:
        "../../envs/genrobust.yaml"
    log:
        "logs/{dataset}/import_external.log",
    benchmark:
        "benchmarks/{dataset}/import_external.tsv"
    threads: 1
    resources:
        gpu=0,
        mem_mb=4000,
        runtime=600,
    shell:
        "python -m genrobust import_external --dataset {wildcards.dataset} --out {params.out} "
        "{params.overrides} > {log} 2>&1"
