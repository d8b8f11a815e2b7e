"""The FID detector that published diffusion FIDs use: TensorFlow 1.x's Inception, resize included.

EDM's 1.79 (NVlabs/edm fid.py), like most published FIDs, feeds uint8 images to TF1's Inception
graph, which resizes them to 299x299 with TF1's bilinear rule (clean-fid calls this mode
`legacy_tensorflow`). pytorch-fid resizes with F.interpolate(align_corners=False) instead, which
samples other points (clean-fid, Parmar et al. 2022, show resizing alone moves FID), so only this
detector's number may be set beside a published one; benchmarks/fid_protocols.py measures the gap.

torch-fidelity's FeatureExtractorInceptionV3 reproduces that graph in PyTorch (its
interpolate_bilinear_2d_like_tensorflow1x, then (x - 128) / 128) from a plain state dict. Its
module names are torchvision's, so pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` loads into
it key for key: the same file serves both FIDs. The file must hash to the expected prefix, because
any other network of this shape (a random one included) gives a number that looks comparable and is not.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import io
from ..errors import UserError
from .inception import FEATURE_DIM, FID_WEIGHTS_FILE, FID_WEIGHTS_SHA256_PREFIX, FID_WEIGHTS_URL

EXPECTED_SHA256_PREFIX = FID_WEIGHTS_SHA256_PREFIX   # read at call time: only a test that says so replaces it
EXTRACTOR_NAME = "inception-v3-compat"               # torch-fidelity's registry name for this network
POOL3 = "2048"                                        # torch-fidelity's name for the pool3 features FID uses


def check_weights(path: Path) -> str:
    """The file's sha256 when it starts with EXPECTED_SHA256_PREFIX; otherwise a one-line UserError
    naming the file and both hashes."""
    digest = io.sha256(path)
    if not digest.startswith(EXPECTED_SHA256_PREFIX):
        raise UserError(f"{path}: sha256 {digest} does not start with {EXPECTED_SHA256_PREFIX}, the hash of "
                        f"{FID_WEIGHTS_FILE} ({FID_WEIGHTS_URL}); EDM-protocol FID needs exactly those TF-ported weights")
    return digest


def build_tf_inception(path: Path, device: str | torch.device = "cpu") -> nn.Module:
    """torch-fidelity's TF1-exact InceptionV3 (pool3 out) with `path`'s weights, in eval mode, unchecked.

    Callers check the hash first (`load_tf_inception`); only a run that says its figures mean nothing
    skips it. Imported here: torch_fidelity's package pulls in its CLIP, VGG and DINOv2 modules too,
    which nothing needs when no weights are at hand.
    """
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    network = FeatureExtractorInceptionV3(EXTRACTOR_NAME, [POOL3], feature_extractor_weights_path=str(path))
    return network.to(device).eval()


def load_tf_inception(path: Path, device: str | torch.device = "cpu") -> tuple[nn.Module, str]:
    """(network, the weights' sha256) after the hash check."""
    digest = check_weights(path)
    return build_tf_inception(path, device), digest


@torch.inference_mode()
def tf_features(network: nn.Module, images: np.ndarray, device: str | torch.device = "cpu",
                batch_size: int = 50) -> np.ndarray:
    """(N, 2048) float64 pool3 features of uint8 NHWC images.

    The network takes uint8 NCHW and does its own TF1 resize and scaling, so nothing but the
    layout is changed here (to_tensor's [0, 1] floats would be refused). `batch_size` bounds
    memory: one image's 299x299 activations take megabytes.
    """
    out = np.empty((len(images), FEATURE_DIM), dtype=np.float64)
    for start in range(0, len(images), batch_size):
        chunk = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size])).to(device)
        out[start:start + len(chunk)] = network(chunk.permute(0, 3, 1, 2))[0].double().cpu().numpy()
    return out
