# Experiment grids: every cell is an adv_train + evaluate pair (a certified cell, named *_smooth<sigma>_*:
# smooth_train + certify) reading the dataset's shared upstream artifacts (train/test data, diffusion
# model, generated shards, pseudo-labels). Models sit under models/cells/{cell}/, so a cell that
# appears in two grids is trained once.
ADVERSARIAL_CELL = r"(?![a-z0-9_]*_smooth\d)[a-z][a-z0-9_]*"
CERTIFIED_CELL = r"[a-z][a-z0-9_]*_smooth\d[a-z0-9_]*"


rule adv_train_cell:
    wildcard_constraints:
        cell=ADVERSARIAL_CELL,
    input:
        unpack(cell_inputs),
        code=CODE["adv_train"],
    output:
        model="models/cells/{cell}/model.pt",
        last="models/cells/{cell}/last.pt",
        metrics="models/cells/{cell}/metrics.tsv",
    params:
        launcher=launcher,
        overrides=overrides("adv_train", "threats"),
        settings=cell_settings("adv_train"),
        args=lambda w: grid_cells.cell_args(cell_of(w)),
        work="work/cells/{cell}",
    conda:
        "../../envs/genrobust.yaml"
    log:
        "logs/cells/{cell}/adv_train.log",
    benchmark:
        "benchmarks/cells/{cell}/adv_train.tsv"
    threads: all_cores()
    resources:
        gpu=1,
        mem_mb=32000,
        runtime=2880,
    shell:
        "{params.launcher} -m genrobust adv_train {params.args} --train {input.train} --out {output.model} "
        "--last {output.last} --metrics {output.metrics} --work {params.work} {params.overrides} > {log} 2>&1"


rule evaluate_cell:
    wildcard_constraints:
        cell=ADVERSARIAL_CELL,
    input:
        model="models/cells/{cell}/model.pt",
        test=lambda w: f"data/{cell_of(w).dataset}/test.npz",
        code=CODE["evaluate"],
    output:
        result="results/grid/{grid}/{cell}.json",
        info="results/grid/{grid}/{cell}.model_info.json",
    params:
        launcher=single_process,
        overrides=overrides("evaluate", "threats"),
        settings=cell_settings("evaluate"),
        dataset=lambda w: cell_of(w).dataset,
        threat=lambda w: cell_of(w).threat,
    conda:
        "../../envs/genrobust.yaml"
    log:
        "logs/grid/{grid}/{cell}/evaluate.log",
    benchmark:
        "benchmarks/grid/{grid}/{cell}/evaluate.tsv"
    threads: all_cores()
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=720,
    shell:
        "{params.launcher} -m genrobust evaluate --dataset {params.dataset} --threat {params.threat} --checkpoint {input.model} "
        "--test {input.test} --out {output.result} --model-info {output.info} {params.overrides} > {log} 2>&1"


rule smooth_train_cell:
    wildcard_constraints:
        cell=CERTIFIED_CELL,
    input:
        unpack(cell_inputs),
        code=CODE["smooth_train"],
    output:
        model="models/cells/{cell}/model.pt",
        last="models/cells/{cell}/last.pt",
        metrics="models/cells/{cell}/metrics.tsv",
    params:
        launcher=launcher,
        overrides=overrides("smooth_train"),
        settings=cell_settings("smooth_train"),
        args=lambda w: grid_cells.cell_args(cell_of(w)),
        work="work/cells/{cell}",
    conda:
        "../../envs/genrobust.yaml"
    log:
        "logs/cells/{cell}/smooth_train.log",
    benchmark:
        "benchmarks/cells/{cell}/smooth_train.tsv"
    threads: all_cores()
    resources:
        gpu=1,
        mem_mb=32000,
        runtime=2880,
    shell:
        "{params.launcher} -m genrobust smooth_train {params.args} --train {input.train} --out {output.model} "
        "--last {output.last} --metrics {output.metrics} --work {params.work} {params.overrides} > {log} 2>&1"


rule certify_cell:
    wildcard_constraints:
        cell=CERTIFIED_CELL,
    input:
        model="models/cells/{cell}/model.pt",
        test=lambda w: f"data/{cell_of(w).dataset}/test.npz",
        code=CODE["certify"],
    output:
        result="results/grid/{grid}/{cell}.json",
    params:
        launcher=single_process,
        overrides=overrides("certify"),
        settings=cell_settings("certify"),
        dataset=lambda w: cell_of(w).dataset,
        sigma=lambda w: f"{cell_of(w).sigma:g}",
        work="work/cells/{cell}/certify",
    conda:
        "../../envs/genrobust.yaml"
    log:
        "logs/grid/{grid}/{cell}/certify.log",
    benchmark:
        "benchmarks/grid/{grid}/{cell}/certify.tsv"
    threads: all_cores()
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=1440,
    shell:
        "{params.launcher} -m genrobust certify --dataset {params.dataset} --sigma {params.sigma} --checkpoint {input.model} "
        "--test {input.test} --out {output.result} --work {params.work} {params.overrides} > {log} 2>&1"


for _grid in PARAMS["grids"]:

    rule:
        name:
            f"grid_{_grid}"
        input:
            grid_results(_grid),
        localrule: True
