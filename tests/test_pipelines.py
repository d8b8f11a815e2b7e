"""The real Snakemake and DVC pipelines, end to end on the digits smoke preset, and their agreement."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from genrobust import code_deps

from .conftest import ENV, ROOT, copy_project, parse_dry_run, run, run_two_at_a_time

ARTIFACTS = ("data", "models", "results")
TARGET = "results/digits_linf.json"


def artifacts(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for top in ARTIFACTS for path in (root / top).rglob("*")
            if path.is_file() and path.name != ".gitignore"}


@pytest.fixture(scope="module")
def snakemake_project(main_run: Path, tmp_path_factory) -> Path:
    """This module's copy of the session's main run, which its tests share, edit and extend in turn."""
    project = tmp_path_factory.mktemp("snakemake") / "project"
    shutil.copytree(main_run, project, symlinks=True)
    return project


@pytest.mark.e2e
def test_snakemake_runs_the_whole_dag_on_digits(snakemake_project: Path) -> None:
    result = json.loads((snakemake_project / TARGET).read_text())
    for key in ("clean_accuracy", "robust_accuracy", "per_attack_accuracy", "n_examples", "eps", "norm", "preset",
                "hashes", "stage_wall_time_s", "package_versions", "attack"):
        assert key in result, key
    assert result["preset"] == "smoke" and result["norm"] == "Linf" and result["eps"] == pytest.approx(8 / 255)
    assert result["attack"]["attacks"] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert set(result["stage_wall_time_s"]) == {"prepare_data", "train_diffusion", "sample_diffusion",
                                                "train_classifier", "quality", "pseudo_label", "adv_train", "evaluate"}
    assert set(result["stage_numerics"]) == set(result["stage_wall_time_s"])       # precision, TF32, cuDNN flags
    assert result["stage_numerics"]["adv_train"]["precision"] == "fp32"            # a CPU: auto is fp32
    assert result["generator"] == "edm" and result["num_generated"] > 0
    quality = json.loads((snakemake_project / "data/digits/generated/edm/quality.json").read_text())
    assert result["generated_quality"]["class_agreement"] == quality["class_agreement"]["overall"]
    assert result["generated_quality"]["fid"] is None and "weights" in quality["fid"]["reason"]
    assert result["clean_accuracy"] >= 0.85
    assert 0.1 < result["robust_accuracy"] < result["clean_accuracy"]
    assert min(result["per_attack_accuracy"].values()) == pytest.approx(result["robust_accuracy"])
    metrics = (snakemake_project / "models/digits/adv/linf/metrics.tsv").read_text().splitlines()
    assert len(metrics) == 1 + 10 and "val_robust_accuracy" in metrics[0]    # 10 epochs of 1280 images
    again = run(["snakemake", "--cores", "2", TARGET], snakemake_project)
    assert "Nothing to be done" in again.stdout + again.stderr


@pytest.mark.e2e
def test_a_configfile_replans_only_what_it_changes(snakemake_project: Path, tmp_path: Path) -> None:
    """`--configfile` with changed evaluate keys plans and runs only the rules downstream of them; nested `--config`
    values and a float without a dot (1e-6) arrive typed, as YAML 1.2 reads them."""
    project = tmp_path / "project"
    shutil.copytree(snakemake_project, project, symlinks=True)
    # digits runs the smoke preset, whose evaluate section sets n_examples: the preset's key is the one to change.
    # (APGD-CE alone: the suite's time goes to planning, not to a second full AutoAttack.)
    (project / "my.yaml").write_text("presets:\n  smoke:\n"
                                     "    evaluate: {n_examples: 24, version: custom, attacks: [apgd-ce]}\n")
    # --configfile and --config take several values: the target goes first (after them it would be read as one).
    plan = parse_dry_run(run(["snakemake", "-n", "-p", "--cores", "2", TARGET, "--configfile", "my.yaml"],
                             project).stdout)
    assert set(plan) == {"evaluate"}, plan
    assert "--set=presets.smoke.evaluate.n_examples=24" in plan["evaluate"][0]["shell"]
    run(["snakemake", "--cores", "2", TARGET, "--configfile", "my.yaml"], project)
    assert json.loads((project / TARGET).read_text())["n_examples"] == 24
    nested = ["--config", 'presets={"smoke": {"evaluate": {"n_examples": 16}}}', 'gaussian={"rank_tolerance": 1e-6}']
    plan = parse_dry_run(run(["snakemake", "-n", "-p", "--cores", "2", TARGET, "--configfile", "my.yaml", *nested],
                             project).stdout)
    assert set(plan) == {"evaluate"}, plan                 # the Gaussian baseline is not part of this target
    assert "--set=presets.smoke.evaluate.n_examples=16" in plan["evaluate"][0]["shell"]


@pytest.mark.e2e
def test_dvc_repro_makes_the_same_files(snakemake_project: Path, tmp_path: Path) -> None:
    """The set of files is the point here (accuracy is checked above), so the smoke preset is cut further."""
    project = copy_project(tmp_path / "dvc")
    params = yaml.safe_load((project / "params.yaml").read_text())
    smoke = params["presets"]["smoke"]
    smoke["diffusion"].update(steps=20, checkpoint_every=10)
    smoke["adv_train"]["epochs"] = 1
    smoke["evaluate"]["n_examples"] = 8
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], project)
    run(["dvc", "repro", "evaluate"], project)              # the same target: evaluate and what it needs
    assert artifacts(project) == artifacts(snakemake_project)
    assert "Data and pipelines are up to date" in run(["dvc", "status", "--with-deps", "evaluate"], project).stdout
    wideresnet = project / "src/genrobust/models/wideresnet.py"      # imported by the classifiers' stages only
    wideresnet.write_text(wideresnet.read_text() + "\n# a change\n")
    changed = run(["dvc", "status"], project).stdout
    assert {"train_classifier", "quality", "adv_train", "evaluate", "pseudo_label"} <= set(re.findall(r"^(\w+)@", changed, re.M))
    assert not {"prepare_data", "train_diffusion", "sample_diffusion"} & set(re.findall(r"^(\w+)@", changed, re.M))
    plots = json.loads(run(["dvc", "plots", "show", "--json"], project).stdout)["data"]
    curve, = plots["models/digits/adv/linf/metrics.tsv"]
    assert curve["content"]["encoding"]["x"]["field"] == "images_seen"
    assert curve["content"]["layer"][0]["encoding"]["y"]["field"] == "val_robust_accuracy"
    assert [row["images_seen"] for row in curve["content"]["data"]["values"]] == ["1280"]


def test_every_dvc_stage_is_a_snakemake_rule(tmp_path: Path) -> None:
    """Same command, inputs and outputs, so the two pipelines cannot drift apart."""
    from dvc.repo import Repo

    project = copy_project(tmp_path / "p")
    run(["git", "init", "-q"], project)
    gaussian = "data/digits/generated/gaussian/shards/manifest.json"    # the generator: edm target skips it
    rules = parse_dry_run(run(["snakemake", "-n", "-p", "--forceall", "--cores", "1", TARGET, gaussian], project).stdout)
    stages = Repo(str(project)).index.stages
    assert {stage.name.split("@")[0] for stage in stages} == {rule for rule in rules if not rule.endswith("_shard")}
    for stage in stages:
        name = stage.name.split("@")[0]
        job, = rules[name]
        assert re.sub(r"\s+>.*$", "", job["shell"]).strip() == stage.cmd
        dirs = [str(out.def_path) for out in stage.outs] + [str(dep.def_path) for dep in stage.deps]

        def as_dvc(path: str) -> str:      # a shard or manifest inside a DVC-tracked directory is that directory
            return next((d for d in dirs if path.startswith(d + "/")), path)

        data_deps = {str(dep.def_path) for dep in stage.deps if not str(dep.def_path).startswith(("src/", "params"))}
        code = code_deps.expand([str(dep.def_path) for dep in stage.deps if str(dep.def_path).startswith("src/")],
                                project)
        outs = {str(out.def_path) for out in stage.outs}
        # The gather rules' inputs are the shards of their own output directory (made by the per-shard jobs).
        assert {as_dvc(path) for path in job["input"] if not path.startswith("src/")} - outs == data_deps, name
        assert {path for path in job["input"] if path.startswith("src/")} == code, name     # the same code deps
        assert {as_dvc(path) for path in job["output"]} == outs, name


GIT = ["git", "-c", "user.email=ci@genrobust.invalid", "-c", "user.name=ci"]


@pytest.mark.e2e
def test_a_second_machine_pulls_instead_of_recomputing(snakemake_project: Path) -> None:
    """`make share` on the first checkout, `git clone` + `make pull` on a second: nothing is left to run."""
    first = snakemake_project
    run(["git", "init", "-q"], first)
    run(["make", "share"], first)                       # dvc commit + dvc push to the shipped local remote
    # dvc commit re-links the files it caches (new mtimes): share must leave Snakemake with nothing to redo.
    assert "Nothing to be done" in run(["snakemake", "-n", "--cores", "1", TARGET], first).stdout
    run(["git", "add", "-A"], first)
    run(GIT + ["commit", "-qm", "a finished run"], first)
    assert (first.parent / "genrobust-dvc-remote" / "files").is_dir()

    second = first.parent / "second"
    run(["git", "clone", "-q", str(first), str(second)], first.parent)
    run(["make", "pull"], second)                       # dvc pull + snakemake --touch
    assert artifacts(second) >= {"models/digits/diffusion/edm/model.pt", "models/digits/adv/linf/model.pt", TARGET}
    planned = run(["snakemake", "-n", "--cores", "1", TARGET], second)
    assert "Nothing to be done" in planned.stdout + planned.stderr
    assert "Data and pipelines are up to date" in run(["dvc", "status", "--with-deps", "evaluate"], second).stdout
    assert "didn't change, skipping" in run(["dvc", "repro", "evaluate"], second).stdout

    params = yaml.safe_load((second / "params.yaml").read_text())
    params["presets"]["smoke"]["adv_train"]["lr"] /= 2
    (second / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    stats = run(["snakemake", "-n", "--cores", "1", TARGET], second).stdout
    assert dict(re.findall(r"^(\w+)\s+(\d+)$", stats, re.M)) == {"adv_train": "1", "evaluate": "1", "total": "2"}
    changed = run(["dvc", "status", "--with-deps", "evaluate"], second).stdout
    assert re.findall(r"^(\S+):$", changed, re.M) == ["adv_train@digits-linf"]


@pytest.mark.e2e
def test_a_corrupt_object_in_the_remote_fails_the_pull_by_name(snakemake_project: Path, tmp_path: Path) -> None:
    lock = yaml.safe_load((snakemake_project / "dvc.lock").read_text())
    out, = [o for o in lock["stages"]["adv_train@digits-linf"]["outs"] if o["path"].endswith("/model.pt")]
    remote = snakemake_project.parent / "genrobust-dvc-remote"
    obj = remote / "files" / "md5" / out["md5"][:2] / out["md5"][2:]
    data = bytearray(obj.read_bytes())
    data[len(data) // 2] ^= 0xFF
    obj.write_bytes(bytes(data))
    third = snakemake_project.parent / "third"
    run(["git", "clone", "-q", str(snakemake_project), str(third)], tmp_path)
    pulled = subprocess.run(["dvc", "pull"], cwd=third, env=ENV, capture_output=True, text=True)
    assert pulled.returncode != 0
    assert "models/digits/adv/linf/model.pt" in pulled.stdout + pulled.stderr
    assert not (third / "models/digits/adv/linf/model.pt").exists()


def test_snakemake_lint_is_clean() -> None:
    done = subprocess.run(["snakemake", "--lint"], cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("profile", ["slurm", "default"])
def test_profiles_plan_the_cifar10_dag(profile: str, tmp_path: Path) -> None:
    """A dry run with the cluster (or local) profile: the executor plugin is installed and GPUs are requested."""
    project = copy_project(tmp_path / "p")
    planned = run(["snakemake", "--profile", f"workflow/profiles/{profile}", "-n", "-p", "results/cifar10_linf.json"],
                  project).stdout
    jobs = parse_dry_run(planned)
    assert set(jobs) >= {"train_diffusion", "sample_diffusion_shard", "adv_train", "evaluate"}
    adv = re.search(r"^rule adv_train:\n(?:    .*\n)*?    resources: (.*)$", planned, re.M).group(1)
    evaluate = re.search(r"^rule evaluate:\n(?:    .*\n)*?    resources: (.*)$", planned, re.M).group(1)
    assert "gpu=1" in evaluate
    if profile == "slurm":      # the multi-GPU rule runs one data-parallel process per GPU
        assert "slurm_partition=gpu" in adv and "gpu=4" in adv and "tasks_per_gpu=0" in adv
        assert jobs["adv_train"][0]["shell"].startswith("torchrun --standalone --nproc_per_node=4 -m genrobust adv_train")
    else:
        assert "gpu=1" in adv and jobs["adv_train"][0]["shell"].startswith("python -m genrobust adv_train")


def test_dvc_grid_cells_file_is_current_and_its_stages_match_snakemake(tmp_path: Path) -> None:
    """workflow/grid_cells.yaml is what params.yaml gives, and each cell's DVC command is Snakemake's."""
    from dvc.repo import Repo

    from genrobust import config, grids

    committed = yaml.safe_load((ROOT / "workflow" / "grid_cells.yaml").read_text())
    assert committed == grids.dvc_cells(config.load_params(ROOT / "params.yaml")), "run `make grids`"

    project = copy_project(tmp_path / "p")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["pipeline"].update(grids=["gowal_smoke", "sehwag_smoke", "sehwag_certified_smoke"], sigmas=[0.25])
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["python", "-m", "genrobust", "grid_cells", "--out", "workflow/grid_cells.yaml"], project)
    run(["git", "init", "-q"], project)
    jobs = parse_dry_run(run(["snakemake", "-n", "-p", "--forceall", "--cores", "1", "grid_gowal_smoke",
                              "grid_sehwag_smoke", "grid_sehwag_certified_smoke", "results/digits_smooth0.25.json"],
                             project).stdout)
    rules = ("adv_train_cell", "evaluate_cell", "smooth_train_cell", "certify_cell", "smooth_train", "certify")
    by_output = {job["output"][0]: job for rule in rules for job in jobs[rule]}
    stages = [s for s in Repo(str(project)).index.stages if s.name.split("@")[0] in rules]
    # 6 distinct cells, results gowal 3 + sehwag 4; certified: 4 cells, 4 results; the sigma 0.25 pair
    assert len(stages) == len(by_output) == 6 + 7 + 4 + 4 + 2
    for stage in stages:
        job = by_output[str(stage.outs[0].def_path)]
        assert re.sub(r"\s+>.*$", "", job["shell"]).strip() == stage.cmd, stage.name


@pytest.mark.e2e
def test_a_smoke_grid_shares_upstream_work_and_the_report_lists_every_cell(snakemake_project: Path) -> None:
    """Last in this module: it changes the shared project's params (cheaper cells) and adds grid outputs."""
    from PIL import Image

    project = snakemake_project
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["pipeline"]["grids"] = ["sehwag_smoke"]
    params["presets"]["smoke"]["adv_train"]["epochs"] = 1
    params["presets"]["smoke"]["evaluate"].update(n_examples=32, version="custom", attacks=["apgd-ce"])
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    plan = run(["snakemake", "-n", "--cores", "2", "grid_sehwag_smoke"], project).stdout
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", plan, re.MULTILINE))
    # One diffusion model and one set of shards (already built by the main run) serve all four cells.
    assert counts == {"adv_train_cell": "4", "evaluate_cell": "4", "grid_sehwag_smoke": "1", "total": "9"}, plan
    run_two_at_a_time(["snakemake", "--cores", "2", "grid_sehwag_smoke"], project)
    # The main result is older than the params edit but newer than its inputs: mtime says keep it.
    run(["snakemake", "--cores", "2", "results/summary.csv", "--rerun-triggers", "mtime"], project)
    summary = (project / "results/summary.csv").read_text()
    for cell in ("digits_linf_none_0_silu", "digits_linf_edm_60_silu", "digits_linf_edm_200_silu",
                 "digits_linf_edm_600_silu", "digits_linf"):
        assert f",{cell}," in summary, cell
    with Image.open(project / "results/plots/robust_vs_generated.png") as image:
        image.verify()
    cell = json.loads((project / "results/grid/sehwag_smoke/digits_linf_edm_60_silu.json").read_text())
    assert cell["num_generated"] == 60 and cell["attack"]["attacks"] == ["apgd-ce"]
    run(["snakemake", "--cores", "1", "--report", "results/report.html", "results/summary.csv"], project)
    html = (project / "results/report.html").read_text(errors="replace")
    assert "robust_vs_generated.png" in html and "scaling.png" in html


@pytest.mark.e2e
def test_certified_target_and_smoke_grid_run_and_the_report_draws_their_curves(snakemake_project: Path) -> None:
    """After the grid test: results/digits_smooth0.25.json and the certified smoke grid on the main run's data."""
    from PIL import Image

    project = snakemake_project
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["pipeline"].update(grids=["sehwag_certified_smoke"], sigmas=[0.25])
    params["presets"]["smoke"]["smooth_train"]["epochs"] = 2
    params["presets"]["smoke"]["certify"].update(n_examples=16, n=100, batch_size=110)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    plan = run(["snakemake", "-n", "--cores", "2", "results/digits_smooth0.25.json", "grid_sehwag_certified_smoke"],
               project).stdout
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", plan, re.MULTILINE))
    assert counts == {"smooth_train": "1", "certify": "1", "smooth_train_cell": "4", "certify_cell": "4",
                      "grid_sehwag_certified_smoke": "1", "total": "11"}, plan
    run_two_at_a_time(["snakemake", "--cores", "2", "results/digits_smooth0.25.json", "grid_sehwag_certified_smoke"],
                      project)
    result = json.loads((project / "results/digits_smooth0.25.json").read_text())
    assert (result["sigma"], result["trained_sigma"], result["generator"]) == (0.25, 0.25, "edm")
    assert result["n_examples"] == 16 and result["certify"]["n"] == 100 and len(result["points"]) == 16
    assert list(result["certified_accuracy"]) == ["0", "0.25", "0.5", "0.75", "1", "1.25", "1.5"]
    assert result["certified_accuracy"]["0"] == result["clean_accuracy"] >= result["certified_accuracy"]["0.25"]
    assert result["certified_accuracy"]["0.5"] == 0.0      # n = 100 cannot prove more than 0.25 * PhiInv(0.001 ** 0.01)
    assert set(result["stage_wall_time_s"]) >= {"smooth_train", "certify", "pseudo_label"}
    none = json.loads((project / "results/grid/sehwag_certified_smoke/digits_smooth0p5_none_0_relu.json").read_text())
    assert (none["sigma"], none["generator"], none["num_generated"]) == (0.5, "none", 0)
    again = run(["snakemake", "-n", "--cores", "2", "results/digits_smooth0.25.json", "grid_sehwag_certified_smoke"],
                project)
    assert "Nothing to be done" in again.stdout + again.stderr
    run(["snakemake", "--cores", "2", "results/summary.csv", "--rerun-triggers", "mtime"], project)
    markdown = (project / "results/summary.md").read_text()
    assert "## Certified L2 robustness" in markdown and "digits_smooth0p25_edm_300_relu" in markdown
    paired = markdown.split("## Certified, with minus without generated data")[1]
    assert "| sehwag_certified_smoke | digits | 0.25 | edm | 300 | " in paired and "## Certified, best over sigma" in markdown
    assert "digits_smooth0.25" in markdown and "digits_smooth" not in (project / "results/summary.csv").read_text()
    with Image.open(project / "results/plots/certified_vs_radius.png") as image:
        image.verify()
