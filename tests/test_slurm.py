"""The cluster path, run for real: the digits DAG through workflow/profiles/slurm on .ci/slurm-up's one-node
SLURM cluster, with the test overlay tests/slurm/ (README, "Running on a SLURM cluster"). Every job goes
through real sbatch, squeue and srun; skipped, with the reason, where that cluster is not up."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from genrobust.training.rank_check import check_ranks_match_one

from .conftest import ENV, ROOT, copy_project, run

TARGET = "results/digits_linf.json"
OVERLAY = ROOT / "tests" / "slurm"
TINY = ["--configfile", str(OVERLAY / "tiny.yaml")]
SLURM = ["snakemake", "--profile", "workflow/profiles/slurm", "--profile", str(OVERLAY)]
# The local run's launcher matches the overlay's: adv_train under torchrun with 2 processes.
LOCAL = ["snakemake", "--cores", "2", TARGET, "--set-resources", "adv_train:gpu=2", "--resources", "gpu=2"]
RULES = {"prepare_data", "train_diffusion", "sample_diffusion_shard", "sample_diffusion", "train_classifier",
         "quality", "pseudo_label", "adv_train", "evaluate"}
GROUPED = "shards_sample_diffusion_shard"        # the plugin's name for the group job of the profile's `shards`
DOWN = Path("/var/lib/genrobust-slurm/down")     # .ci/slurm-up's reason, when it could not start the cluster
# Timings and provenance, which no two runs share; everything else in the result must be equal.
VOLATILE = {"stage_wall_time_s", "hashes", "seconds", "images_per_s", "package_versions", "created", "host"}


def cluster_down() -> str:
    """Why the test cluster cannot run jobs here ("" when it can)."""
    missing = [tool for tool in ("sinfo", "sbatch", "squeue", "srun", "scontrol") if shutil.which(tool) is None]
    if missing:
        return f"SLURM client tools missing ({', '.join(missing)}): run .ci/slurm-up as root"
    try:      # a dead controller keeps sinfo waiting for slurm.conf's MessageTimeout
        states = subprocess.run(["sinfo", "-h", "-p", "gpu", "-o", "%T"], capture_output=True, text=True, timeout=5)
    except subprocess.TimeoutExpired:
        states = subprocess.CompletedProcess([], 1, "", "sinfo: no answer from slurmctld in 5 s")
    if states.returncode == 0 and re.search(r"^(idle|mixed|allocated)", states.stdout, re.M):
        return ""
    why = DOWN.read_text().strip() if DOWN.exists() else "run .ci/slurm-up as root"
    return f"no usable node in SLURM partition 'gpu' ({(states.stdout + states.stderr).strip() or 'none'}): {why}"


REASON = cluster_down()
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(bool(REASON), reason=REASON)]


def jobs_of(run_id: str) -> dict[str, dict]:
    """This run's SLURM jobs by id, as slurmctld keeps them (MinJobAge 1 h): rule (the plugin's comment), state,
    start and end."""
    listed = subprocess.run(["squeue", "--states=all", "--noheader", "--name", run_id, "--format=%i|%k|%T|%S|%e"],
                            capture_output=True, text=True, check=True).stdout
    jobs = {}
    for line in listed.split():
        job_id, comment, state, start, end = line.split("|")
        jobs[job_id] = {"rule": comment.removeprefix("rule_").split("_wildcards_")[0], "state": state,
                        "start": start, "end": end}
    return jobs


def comparable(value: object) -> object:
    """A result without the keys that only say when, how fast and where it ran."""
    if isinstance(value, dict):
        return {key: comparable(item) for key, item in value.items() if key not in VOLATILE}
    if isinstance(value, list):
        return [comparable(item) for item in value]
    return value


@pytest.fixture(scope="module")
def cluster_run(tmp_path_factory) -> dict:
    """The same tiny DAG twice: through SLURM and, meanwhile (the SLURM run mostly waits), locally."""
    base = tmp_path_factory.mktemp("slurm")
    cluster, local = copy_project(base / "cluster"), copy_project(base / "local")
    reference = subprocess.Popen(LOCAL + TINY, cwd=local, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True)
    started = time.monotonic()
    try:
        done = run(SLURM + [TARGET] + TINY, cluster)
    finally:                                            # waited for either way: no local run outlives the test
        wall = time.monotonic() - started
        output = reference.communicate(timeout=1200)[0]
    assert reference.returncode == 0, f"the local run failed:\n{output[-4000:]}"
    log = done.stdout + done.stderr
    run_id = re.search(r"SLURM run ID: (\S+)", log).group(1)
    return {"cluster": cluster, "local": local, "log": log, "jobs": jobs_of(run_id), "wall": wall}


def test_every_rule_runs_as_its_own_slurm_job_and_shards_as_one_group(cluster_run: dict) -> None:
    """The profile's `group-components`: the two sample shards share one SLURM job (rule `shards_...`)."""
    jobs = cluster_run["jobs"]
    print(f"SLURM ran {len(jobs)} jobs in {cluster_run['wall']:.0f} s")
    assert {job["rule"] for job in jobs.values()} == RULES - {"sample_diffusion_shard"} | {GROUPED}
    assert len(jobs) == len(RULES)                      # two sample shards, one job
    assert {job["state"] for job in jobs.values()} == {"COMPLETED"}, jobs
    logs = cluster_run["cluster"] / ".snakemake" / "slurm_logs"
    for job_id, job in jobs.items():                    # the plugin's log of each job: rule_<rule>/<wildcards>/<id>.log
        assert list(logs.glob(f"rule_{job['rule']}/*/{job_id}.log")) or \
            list(logs.glob(f"group_{job['rule']}/{job_id}.log")), (job_id, job)
    grouped, = [job_id for job_id, job in jobs.items() if job["rule"] == GROUPED]
    log = next(logs.glob(f"group_{GROUPED}/{grouped}.log")).read_text()
    assert all(f"shard-0000{k}.npz" in log for k in (0, 1)), log[-2000:]
    for k in (0, 1):                                    # grouped or not, the same bytes
        shard = f"data/digits/generated/edm/shards/shard-0000{k}.npz"
        ours, theirs = (np.load(root / shard)["image"] for root in (cluster_run["cluster"], cluster_run["local"]))
        assert np.array_equal(ours, theirs), shard


def test_the_result_is_the_local_runs_and_a_rerun_plans_nothing(cluster_run: dict) -> None:
    cluster, local = cluster_run["cluster"], cluster_run["local"]
    ours, theirs = (json.loads((root / TARGET).read_text()) for root in (cluster, local))
    assert comparable(ours) == comparable(theirs)
    model = "models/digits/adv/linf/model.pt"           # bit for bit: the weights, not the file (its meta has times)
    ours, theirs = (torch.load(root / model, weights_only=False)["state_dict"] for root in (cluster, local))
    assert all(torch.equal(ours[name], theirs[name]) for name in theirs)
    planned = run(SLURM + ["-n", TARGET] + TINY, cluster)
    assert "Nothing to be done" in planned.stdout + planned.stderr


def test_a_multi_gpu_rule_is_one_task_running_torchrun(cluster_run: dict) -> None:
    """The profile's shape for gpu > 1 (tasks_per_gpu: 0): one SLURM task holding both GPUs, and torchrun's two
    processes inside it (each logs its start)."""
    job_id, = [job_id for job_id, job in cluster_run["jobs"].items() if job["rule"] == "adv_train"]
    shown = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, check=True).stdout
    fields = dict(re.findall(r"(\w+)=(\S+)", shown))
    assert fields["NumTasks"] == "1" and fields["TresPerJob"] == "gres:gpu:2", shown
    log = (cluster_run["cluster"] / "logs/digits/adv_train_linf.log").read_text()
    assert len(re.findall(r"^adv_train: 1 epochs", log, re.M)) == 2, log[-2000:]


def test_two_gloo_processes_under_srun_match_one(tmp_path: Path) -> None:
    """tests/test_distributed.py's check, with the two processes started by srun as two SLURM tasks."""
    worker = ("import os, sys; from genrobust.training.rank_check import worker; "
              "worker(int(os.environ['SLURM_PROCID']), 2, sys.argv[1], sys.argv[2])")
    run(["srun", "--ntasks=2", "--cpus-per-task=1", "--mem=2000", "--time=10", f"--chdir={ROOT}", sys.executable,
         "-c", worker, str(tmp_path / "store"), str(tmp_path)], ROOT)
    check_ranks_match_one(tmp_path)


def test_a_failing_job_names_its_logs_and_leaves_no_output(cluster_run: dict) -> None:
    """Last: it breaks the cluster project. evaluate, given a corrupt checkpoint, fails inside its SLURM job."""
    cluster = cluster_run["cluster"]
    (cluster / "models/digits/adv/linf/model.pt").write_bytes(b"not a checkpoint")
    failed = subprocess.run(SLURM + [TARGET] + TINY, cwd=cluster, env=ENV, capture_output=True, text=True,
                            timeout=600)
    log = failed.stdout + failed.stderr
    assert failed.returncode != 0, log[-4000:]
    assert re.search(r"Error in rule evaluate", log), log[-4000:]
    slurm_log = re.search(r"\S*\.snakemake/slurm_logs/rule_evaluate/digits_linf/\d+\.log", log)
    assert slurm_log and Path(slurm_log.group(0)).exists(), log[-4000:]
    assert "logs/digits/evaluate_linf.log" in log
    assert "models/digits/adv/linf/model.pt" in (cluster / "logs/digits/evaluate_linf.log").read_text()
    assert not (cluster / TARGET).exists() and not (cluster / "results/digits_linf.model_info.json").exists()
