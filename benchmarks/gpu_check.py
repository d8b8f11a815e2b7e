"""The GPU check: on one GPU in under 10 minutes, every GPU path of the pipeline run, timed and checked.

One JSON line per section, printed and written to --out (default gpu_check.jsonl):
  device         the card, torch and CUDA versions, and the flags that change numbers (TF32, cuDNN)
  dag            the digits DAG through Snakemake on this device (planned only with --tiny)
  trades_step    TRADES WRN-28-10 at batch 512 (bf16): images/s, TFLOP/s, share of the bf16 peak; host syncs per
                 step (must be 0)
  memory         peak memory counted before training against the measured peak of one step, WRN-28-10 at 2048
                 (fp32) and WRN-70-16 at 256 and 512 (bf16), with the accumulation each gets
  loader         batches/s from the loader workers (real images + memory-mapped shards) against the step
  bf16_attack    a bf16 attack moves the inputs an fp32 one does (the fp32 stem)
  diffusion      DDPM++ training and sampling images/s, sampling fp32 and bf16, each bit-repeatable
  evaluation     AutoAttack APGD-CE and certification noisy copies per second at the preset batches
  state_save     how long training pauses for a resume state, and the write behind it
  compile        graphs torch.compile makes for TRADES with accumulation (must be 3)
  two_ranks      two data-parallel processes end equal, and equal to one
A failed check prints its section with "ok": false and the reason; the exit status is then 1.

  python benchmarks/gpu_check.py              # a GPU: the paper's sizes
  python benchmarks/gpu_check.py --tiny       # any CPU, toy sizes (CI runs this)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gpu_check_pipeline as pipeline  # noqa: E402  (the benchmarks folder, put on the path just above)
import gpu_check_training as training  # noqa: E402

from genrobust.provenance import numerics_flags  # noqa: E402


def device_row(device: torch.device) -> dict[str, Any]:
    row = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "torch": torch.__version__, "cuda": torch.version.cuda, **numerics_flags("fp32")}
    if device.type == "cuda":
        row["memory_gib"] = round(torch.cuda.get_device_properties(device).total_memory / 2 ** 30, 1)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="toy sizes on any device (CI: a CPU)")
    parser.add_argument("--out", type=Path, default=Path("gpu_check.jsonl"))
    parser.add_argument("--only", help="comma-separated sections to run (default: all)")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and not args.tiny:
        parser.error("no GPU here: the paper-sized check needs one (--tiny runs toy sizes on a CPU)")
    scale = training.TINY if args.tiny else training.PAPER
    step: dict[str, float] = {}

    def trades() -> dict[str, Any]:
        row = training.trades_step(scale, device)
        step["seconds"] = scale.batch / row["images_per_s"]
        return row

    sections: dict[str, Callable[[], dict[str, Any]]] = {
        "device": lambda: device_row(device),
        "dag": lambda: pipeline.dag(args.tiny),
        "trades_step": trades,
        "memory": lambda: training.memory(scale, device),
        "loader": lambda: training.loader(scale, device, step.get("seconds")),
        "bf16_attack": lambda: training.bf16_attack(scale, device),
        "diffusion": lambda: pipeline.diffusion(scale, device),
        "evaluation": lambda: pipeline.evaluation(scale, device),
        "state_save": lambda: pipeline.state_save(scale, device),
        "compile": lambda: pipeline.compile_graphs(scale, device, args.tiny),
        "two_ranks": lambda: pipeline.two_ranks(device),
    }
    chosen = args.only.split(",") if args.only else list(sections)
    if unknown := set(chosen) - set(sections):
        parser.error(f"unknown sections {sorted(unknown)}; choose from {', '.join(sections)}")
    failed = 0
    with args.out.open("w") as out:
        for name in chosen:
            started = time.perf_counter()
            try:
                row = {"section": name, "ok": True, **sections[name]()}
            except Exception as error:       # a failed check is a line of the report, and the exit status
                traceback.print_exc(file=sys.stderr)
                row, failed = {"section": name, "ok": False, "error": f"{type(error).__name__}: {error}"}, failed + 1
            row["section_s"] = round(time.perf_counter() - started, 1)
            line = json.dumps(row)
            print(line, flush=True)
            out.write(line + "\n")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
