# Every generated set is judged before adversarial training uses it: FID, classifier FD, class agreement and
# ARC (quality.json), and the robust real-vs-generated discriminator that ARC trained (pseudo_label's arc mode).
# pseudo_label reads both, so the figures travel into every model and result trained on the set.


rule quality:
    input:
        manifest="data/{dataset}/generated/{generator}/shards/manifest.json",
        train="data/{dataset}/train.npz",
        classifier="models/{dataset}/classifier/model.pt",
        code=CODE["quality"],
    output:
        quality="data/{dataset}/generated/{generator}/quality.json",
        discriminator="data/{dataset}/generated/{generator}/discriminator.pt",
    params:
        launcher=single_process,
        overrides=overrides("quality"),
        settings=settings("quality"),
        shards=lambda w, input: os.path.dirname(input.manifest),
    conda:
        "../../envs/genrobust.yaml"
    log:
        "logs/{dataset}/quality_{generator}.log",
    benchmark:
        "benchmarks/{dataset}/quality_{generator}.tsv"
    threads: all_cores()
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=240,
    shell:
        "{params.launcher} -m genrobust quality --dataset {wildcards.dataset} --shards {params.shards} --train {input.train} "
        "--classifier {input.classifier} --out {output.quality} --discriminator {output.discriminator} "
        "{params.overrides} > {log} 2>&1"
