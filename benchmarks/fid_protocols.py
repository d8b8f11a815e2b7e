"""FID by both protocols side by side, on Fashion-MNIST's test set against its whole training set.

The quality stage writes two FIDs: `fid` as pytorch-fid computes it (F.interpolate resize) and
`fid_edm`, EDM's protocol (TF1's bilinear resize inside torch-fidelity's port of TF's Inception).
Both run the same weights file. Here both detectors see the very same images (the test set as
the "generated" side, the whole training set as the reference, as fid_edm uses it), so the gap
between the two numbers is the resize alone: how far a pytorch-fid figure may stand from a
published one.

The images come through the project's loader (32x32 RGB, as the pipeline trains on them): from
--archive, else Debian's dataset-fashion-mnist package (/usr/share/datasets/fashion-mnist), staged
into --root. --weights is the real pt_inception-2015-12-05-6726825d.pth; its sha256 is checked.
Prints one JSON line per protocol (FID, seconds) and one with the difference.

  python benchmarks/fid_protocols.py --weights pt_inception-2015-12-05-6726825d.pth     # all 70,000 images: a GPU
  python benchmarks/fid_protocols.py --weights W --limit 2000 --batch-size 100          # a seeded subset of each side

--unchecked-weights-for-testing skips the hash check so that a random network of the right shape can
prove the script runs; its numbers mean nothing, and every line says so.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from genrobust.data.sources import fashionmnist
from genrobust.distributed import device
from genrobust.errors import UserError
from genrobust.quality.frechet import features_stats, frechet_distance
from genrobust.quality.inception import FID_WEIGHTS_FILE, FID_WEIGHTS_URL, load_inception, make_extractor
from genrobust.quality.stage import subset
from genrobust.quality.tf_inception import build_tf_inception, check_weights, tf_features

Extract = Callable[[np.ndarray], np.ndarray]


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, required=True, help=f"{FID_WEIGHTS_FILE} ({FID_WEIGHTS_URL})")
    parser.add_argument("--unchecked-weights-for-testing", action="store_true",
                        help="skip the sha256 check (a random network: proves the script runs, figures mean nothing)")
    parser.add_argument("--archive", type=Path, help="a folder of Fashion-MNIST's four *-ubyte.gz files "
                                                     "(default: Debian's dataset-fashion-mnist package)")
    parser.add_argument("--root", type=Path, help="where torchvision's FashionMNIST files are staged (default: a temp dir)")
    parser.add_argument("--limit", type=int, help="a seeded random subset of this many images per side (default: all)")
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if not args.weights.is_file():
        parser.error(f"--weights {args.weights}: not found; the figures need the real {FID_WEIGHTS_FILE}, "
                     f"from {FID_WEIGHTS_URL} (it cannot be made here)")
    return args


def batches(images: np.ndarray, size: int) -> Iterator[np.ndarray]:
    return (images[start:start + size] for start in range(0, len(images), size))


def measure(name: str, extract: Extract, test: np.ndarray, train: np.ndarray, batch_size: int) -> dict[str, object]:
    """One protocol's FID of the test set against the training set, and its wall time."""
    tick = time.perf_counter()
    reference = features_stats(extract, batches(train, batch_size))
    stats = features_stats(extract, batches(test, batch_size))
    value = frechet_distance(stats.mean, stats.cov, reference.mean, reference.cov)
    return {"protocol": name, "fid": value, "test_images": len(test), "train_images": len(train),
            "seconds": round(time.perf_counter() - tick, 1)}


def main() -> None:
    args = parse()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        digest = None if args.unchecked_weights_for_testing else check_weights(args.weights)
        with tempfile.TemporaryDirectory() as scratch:
            train, _, test, _ = fashionmnist(args.root or Path(scratch), args.archive)
    except UserError as exc:
        raise SystemExit(f"fid_protocols: {exc}") from None
    if args.limit:
        train = train[subset(len(train), min(args.limit, len(train)), args.seed)]
        test = test[subset(len(test), min(args.limit, len(test)), args.seed + 1)]
    target = device()
    pytorch_fid_net, reason = load_inception(args.weights, target)
    if pytorch_fid_net is None:
        raise SystemExit(f"fid_protocols: {reason}")
    tf_net = build_tf_inception(args.weights, target)
    note = {"weights": str(args.weights), "sha256": digest, "device": str(target)}
    if args.unchecked_weights_for_testing:
        note["warning"] = "unchecked weights (--unchecked-weights-for-testing): these figures mean nothing"
    results = [
        measure("pytorch-fid (F.interpolate bilinear resize)", make_extractor(pytorch_fid_net, target, args.batch_size),
                test, train, args.batch_size),
        measure("EDM (TF1 bilinear resize, torch-fidelity)",
                lambda images: tf_features(tf_net, images, target, args.batch_size), test, train, args.batch_size),
    ]
    for result in results:
        print(json.dumps({**result, **note}))
    print(json.dumps({"edm_minus_pytorch_fid": results[1]["fid"] - results[0]["fid"], **note}))


if __name__ == "__main__":
    main()
