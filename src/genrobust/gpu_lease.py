"""One GPU (or N) of this machine per local job: `python -m genrobust.gpu_lease N COMMAND...`.

Snakemake counts GPUs as a resource (`--resources gpu=4` lets four gpu=1 jobs run at once) but
never says which card a job gets, and every stage uses `cuda:0`: four jobs would pile onto GPU 0.
The lease takes N cards nobody else holds (an exclusive `flock` on one file per card, held by the
job's own process until it exits, whatever kills it), sets CUDA_VISIBLE_DEVICES to them and
execs the command. Under SLURM each job sees only its own cards, so the lease changes nothing there.
"""

from __future__ import annotations

import fcntl
import os
import re
import sys
import tempfile
import time
from pathlib import Path

from .errors import UserError

WAIT_S = 2.0


def visible_gpus() -> list[str]:
    """The cards jobs may use: GENROBUST_GPUS (e.g. "0,1,2"), else CUDA_VISIBLE_DEVICES, else every /dev/nvidiaN
    (read without initialising CUDA, so planning a DAG stays cheap)."""
    for variable in ("GENROBUST_GPUS", "CUDA_VISIBLE_DEVICES"):
        if (value := os.environ.get(variable)) is not None:
            return [gpu.strip() for gpu in value.split(",") if gpu.strip()]
    return sorted((m.group(1) for p in Path("/dev").glob("nvidia*") if (m := re.fullmatch(r"nvidia(\d+)", p.name))),
                  key=int)


def launcher(gpus: int, data_parallel: bool = True) -> str:
    """The command prefix of a job given `gpus` GPUs: `python`, or (for a data-parallel stage) torchrun with a
    process per GPU; leased when the machine has more cards than one, so that each job runs on cards of its own."""
    base = f"torchrun --standalone --nproc_per_node={gpus}" if gpus > 1 and data_parallel else "python"
    if gpus < 1 or len(visible_gpus()) <= 1:
        return base
    return f"python -m genrobust.gpu_lease {gpus} {base}"


def lock_dir() -> Path:
    """GENROBUST_GPU_LOCKS, else one folder per user in the temporary directory: every Snakemake run of this user
    on this machine leases from the same cards."""
    path = Path(os.environ.get("GENROBUST_GPU_LOCKS") or Path(tempfile.gettempdir()) / f"genrobust-gpus-{os.getuid()}")
    path.mkdir(parents=True, exist_ok=True)
    return path


def lease(count: int, pool: list[str], folder: Path) -> tuple[list[str], list[int]] | None:
    """`count` cards of `pool` whose lock files this process could lock (and the locked descriptors), or None."""
    taken: list[str] = []
    descriptors: list[int] = []
    for gpu in pool:
        fd = os.open(folder / f"gpu-{gpu}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        taken.append(gpu)
        descriptors.append(fd)
        if len(taken) == count:
            return taken, descriptors
    for fd in descriptors:
        os.close(fd)
    return None


def main(argv: list[str]) -> None:
    if len(argv) < 2 or not argv[0].isdigit() or int(argv[0]) < 1:
        raise UserError("usage: python -m genrobust.gpu_lease N COMMAND [ARGS...] (N: GPUs the command needs, 1 or more)")
    count, command, pool = int(argv[0]), argv[1:], visible_gpus()
    if count > len(pool):
        raise UserError(f"the job asks for {count} GPUs; this machine lets jobs use {len(pool)} ({','.join(pool)}): "
                        "lower the rule's gpu resource or set GENROBUST_GPUS")
    folder, waited = lock_dir(), False
    while (got := lease(count, pool, folder)) is None:
        if not waited:
            print(f"gpu_lease: waiting for {count} of GPUs {','.join(pool)} (held by other jobs; locks in {folder})",
                  file=sys.stderr, flush=True)
            waited = True
        time.sleep(WAIT_S)
    gpus, descriptors = got
    for fd in descriptors:              # the locks live as long as the command's process, which inherits them
        os.set_inheritable(fd, True)
    print(f"gpu_lease: GPU {','.join(gpus)} for {' '.join(command[:4])} ...", file=sys.stderr, flush=True)
    os.execvpe(command[0], command, dict(os.environ, CUDA_VISIBLE_DEVICES=",".join(gpus)))


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
