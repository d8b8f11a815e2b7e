"""One GPU per local job: real Snakemake runs jobs that ask for gpu=1 through the lease, on a machine that says it
has three cards (GENROBUST_GPUS), and jobs running at the same time never share one."""

from __future__ import annotations

import fcntl
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from .conftest import ENV, copy_project

SNAKEFILE = '''
from genrobust.gpu_lease import launcher

rule all:
    input: expand("out/{i}.txt", i=range(7))

rule job:
    output: "out/{i}.txt"
    resources: gpu=lambda w: 2 if w.i == "6" else 1
    params: launcher=lambda w, resources: launcher(resources.gpu, data_parallel=False)
    shell: """{params.launcher} -c 'import os, time; t = time.time(); time.sleep(1.5); \\
open("{output}", "w").write(os.environ["CUDA_VISIBLE_DEVICES"] + " %f %f" % (t, time.time()))'"""
'''


def _lease_env(tmp_path: Path, gpus: str) -> dict[str, str]:
    return dict(ENV, GENROBUST_GPUS=gpus, GENROBUST_GPU_LOCKS=str(tmp_path / "locks"))


def test_concurrent_local_jobs_each_hold_their_own_gpus(tmp_path: Path) -> None:
    (tmp_path / "Snakefile").write_text(SNAKEFILE)
    done = subprocess.run(["snakemake", "--cores", "7", "--resources", "gpu=3"], cwd=tmp_path,
                          env=_lease_env(tmp_path, "0,1,2"), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    jobs = []
    for i in range(7):
        cards, start, stop = (tmp_path / "out" / f"{i}.txt").read_text().split()
        jobs.append((set(cards.split(",")), float(start), float(stop)))
    assert all(cards <= {"0", "1", "2"} and len(cards) == (2 if i == 6 else 1) for i, (cards, _, _) in enumerate(jobs))
    overlapping = [(a, b) for a in jobs for b in jobs if a is not b and a[1] < b[2] and b[1] < a[2]]
    assert overlapping, "no two jobs ran at once: the test shows nothing"
    assert all(not a[0] & b[0] for a, b in overlapping)
    assert len({min(card) for card, _, _ in jobs}) >= 2                      # more than GPU 0 was used


def test_the_workflow_plans_every_gpu_job_behind_a_lease(tmp_path: Path) -> None:
    """A dry run on a 4-GPU machine: each gpu=1 job leases one card; CPU jobs run as they are."""
    project = copy_project(tmp_path / "p")
    planned = subprocess.run(["snakemake", "--profile", "workflow/profiles/default", "--resources", "gpu=4", "-n",
                              "-p", "--forceall", "results/digits_linf.json"], cwd=project,
                             env=_lease_env(tmp_path, "0,1,2,3"), capture_output=True, text=True, timeout=300)
    assert planned.returncode == 0, planned.stderr[-3000:]
    shells = dict(re.findall(r"^rule (\w+):\n(?:    .*\n)*?Shell command: (.*)$", planned.stdout, re.M))
    for rule in ("train_diffusion", "sample_diffusion_shard", "train_classifier", "quality", "pseudo_label",
                 "adv_train", "evaluate"):
        assert shells[rule].startswith(f"python -m genrobust.gpu_lease 1 python -m genrobust {rule.split('_shard')[0]}")
    for rule in ("prepare_data", "sample_diffusion"):
        assert shells[rule].startswith(f"python -m genrobust {rule} "), shells[rule]


def test_a_job_waits_for_a_held_card_and_refuses_more_cards_than_the_machine_has(tmp_path: Path) -> None:
    env = _lease_env(tmp_path, "0,1")
    (tmp_path / "locks").mkdir()
    held = [open(tmp_path / "locks" / f"gpu-{gpu}.lock", "w") for gpu in ("0", "1")]
    for handle in held:
        fcntl.flock(handle, fcntl.LOCK_EX)
    job = subprocess.Popen([sys.executable, "-m", "genrobust.gpu_lease", "1", sys.executable, "-c",
                            "import os; print(os.environ['CUDA_VISIBLE_DEVICES'])"],
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(3)
    assert job.poll() is None                                 # both cards are held: it waits
    held[1].close()
    out, err = job.communicate(timeout=30)
    assert job.returncode == 0 and out.strip() == "1" and "waiting for 1 of GPUs 0,1" in err
    held[0].close()
    refused = subprocess.run([sys.executable, "-m", "genrobust.gpu_lease", "3", "true"], env=env,
                             capture_output=True, text=True)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        "error: the job asks for 3 GPUs; this machine lets jobs use 2 (0,1): lower the rule's gpu resource or set "
        "GENROBUST_GPUS"]
    assert not os.environ.get("GENROBUST_GPUS")               # nothing leaked into the test process
    one_card = subprocess.run([sys.executable, "-c", "from genrobust.gpu_lease import launcher; print(launcher(1))"],
                              env=_lease_env(tmp_path, "0"), capture_output=True, text=True)
    assert one_card.stdout.strip() == "python"                # one card: nothing to choose between
