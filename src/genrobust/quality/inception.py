"""The standard FID feature extractor: pytorch_fid's InceptionV3 with the TF-ported FID weights, pool3 (2048-d).

pytorch_fid builds this network and downloads its weights in one call, which a cluster node
without internet cannot do. We build the same architecture (torchvision's Inception3 with
pytorch_fid's patched blocks) without weights, then load them from, in this order: the file
`quality.inception_weights` names, torch hub's cache (where pytorch_fid itself would have put
them), or, only when the caller allows it, a download with a bounded time. With none of these
there is no extractor and a one-line reason, never an exception: FID is a report, not a gate.
"""

from __future__ import annotations

import hashlib
import os
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torchvision
from torch import nn
from torch.nn import functional as F

from .. import io
from ..data.transform import to_tensor
from ..errors import UserError
from ..models.checkpoint import read_torch_file, state_mismatch

FID_WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                   "pt_inception-2015-12-05-6726825d.pth")
FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_SHA256_PREFIX = "6726825d"  # torch hub's convention: the file name ends in its hash's first digits
FEATURE_DIM = 2048
INPUT_SIZE = 299


def build_fid_inception() -> nn.Module:
    """fid_inception_v3's architecture (1008 classes, no aux head, FID-patched blocks), without its download.

    The weights are PyTorch's default initialisation; load the FID state dict into the result.
    Raises ImportError when pytorch-fid is not installed.
    """
    from pytorch_fid.inception import FIDInceptionA, FIDInceptionC, FIDInceptionE_1, FIDInceptionE_2

    inception = torchvision.models.inception_v3(weights=None, aux_logits=False, num_classes=1008, init_weights=False)
    inception.Mixed_5b = FIDInceptionA(192, pool_features=32)
    inception.Mixed_5c = FIDInceptionA(256, pool_features=64)
    inception.Mixed_5d = FIDInceptionA(288, pool_features=64)
    inception.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
    inception.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
    inception.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
    inception.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
    inception.Mixed_7b = FIDInceptionE_1(1280)
    inception.Mixed_7c = FIDInceptionE_2(2048)
    return inception


class FIDInceptionPool3(nn.Module):
    """pytorch_fid's InceptionV3(output_blocks=[3]): [0, 1] NCHW in, (N, 2048) pool3 features out.

    It resizes to 299x299 bilinearly (align_corners=False) and scales to [-1, 1] exactly as
    pytorch_fid does, so features, and hence FIDs, agree with pytorch_fid's own.
    """

    def __init__(self, inception: nn.Module) -> None:
        super().__init__()
        i = inception
        self.blocks = nn.ModuleList([
            nn.Sequential(i.Conv2d_1a_3x3, i.Conv2d_2a_3x3, i.Conv2d_2b_3x3, nn.MaxPool2d(kernel_size=3, stride=2)),
            nn.Sequential(i.Conv2d_3b_1x1, i.Conv2d_4a_3x3, nn.MaxPool2d(kernel_size=3, stride=2)),
            nn.Sequential(i.Mixed_5b, i.Mixed_5c, i.Mixed_5d, i.Mixed_6a, i.Mixed_6b, i.Mixed_6c, i.Mixed_6d,
                          i.Mixed_6e),
            nn.Sequential(i.Mixed_7a, i.Mixed_7b, i.Mixed_7c, nn.AdaptiveAvgPool2d(output_size=(1, 1))),
        ])
        for param in self.parameters():
            param.requires_grad = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        for block in self.blocks:
            x = block(x)
        return x.flatten(1)


def cached_weights_path() -> Path:
    """Where torch hub (and so pytorch_fid) keeps the FID weights: $TORCH_HOME/hub/checkpoints/..."""
    return Path(torch.hub.get_dir()) / "checkpoints" / FID_WEIGHTS_FILE


def load_inception(weights: str | os.PathLike | None, device: str | torch.device = "cpu",
                   allow_download: bool = False, timeout_s: float = 120.0) -> tuple[nn.Module | None, str | None]:
    """(model in eval mode, None), or (None, one-line reason) when no weights can be had.

    Where the weights come from, and when a download is tried, is `resolve_weights`'s business; a
    file that does not fit pytorch_fid's network is a UserError naming it.
    """
    path, reason = resolve_weights(weights, allow_download, timeout_s)
    if path is None:
        return None, reason
    try:
        inception = build_fid_inception()
    except ImportError as exc:
        return None, f"pytorch-fid is not installed ({exc}); FID needs pytorch-fid==0.3.0"
    return _ready(inception, path, device), None


def resolve_weights(weights: str | os.PathLike | None, allow_download: bool = False,
                    timeout_s: float = 120.0) -> tuple[Path | None, str | None]:
    """(path of the FID weights file, None), or (None, one-line reason) when there is none.

    One resolution serves both FIDs the quality stage writes (pytorch-fid's and EDM's protocol), since
    both run the same TF-ported weights. `weights` (quality.inception_weights) is the user's file:
    missing is a UserError naming it. Without it, torch hub's cached copy is used. A download is
    tried only with `allow_download`, because urllib waits indefinitely on a silently dropped
    connection; even then `timeout_s` bounds each network wait and the whole transfer.
    """
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise UserError(f"{path}: FID Inception weights not found (quality.inception_weights); expected "
                            f"{FID_WEIGHTS_FILE} from {FID_WEIGHTS_URL}")
        return path, None
    path = cached_weights_path()
    if path.is_file():
        return path, None
    if not allow_download:
        return None, (f"no FID Inception weights: set quality.inception_weights to a copy of "
                      f"{FID_WEIGHTS_URL} or put it at {path} (downloads are off)")
    try:
        _download(FID_WEIGHTS_URL, path, FID_WEIGHTS_SHA256_PREFIX, timeout_s)
    except (OSError, ValueError, UserError) as exc:  # URLError, timeouts and refused writes are OSErrors
        return None, f"could not download the FID Inception weights from {FID_WEIGHTS_URL}: {exc}"
    return path, None


def _ready(inception: nn.Module, path: Path, device: str | torch.device) -> nn.Module:
    state = _read_state_dict(path)
    mismatch = state_mismatch(inception.state_dict(), state)
    if mismatch:
        raise UserError(f"{path}: weights do not fit pytorch_fid's FID InceptionV3: {mismatch}; expected "
                        f"{FID_WEIGHTS_FILE} from {FID_WEIGHTS_URL}")
    inception.load_state_dict(state)
    return FIDInceptionPool3(inception).to(device).eval()


def _read_state_dict(path: Path) -> Mapping[str, Any]:
    state = read_torch_file(path, f"{FID_WEIGHTS_FILE} from {FID_WEIGHTS_URL}")
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path}: holds a {type(state).__name__}, not a state dict of tensors; expected "
                        f"{FID_WEIGHTS_FILE} from {FID_WEIGHTS_URL}")
    return state


def _download(url: str, dest: Path, sha256_prefix: str, timeout_s: float) -> None:
    """Fetch `url` into `dest` atomically, checking its hash; a timeout or a wrong file leaves no `dest`."""
    deadline = time.monotonic() + timeout_s
    digest = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        with io.atomic_path(dest) as tmp, open(tmp, "wb") as out:
            while chunk := response.read(1 << 20):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"download took over {timeout_s:g} s")
                digest.update(chunk)
                out.write(chunk)
            if not digest.hexdigest().startswith(sha256_prefix):
                raise ValueError(f"downloaded file has sha256 {digest.hexdigest()[:12]}..., expected {sha256_prefix}...")


@torch.inference_mode()
def inception_features(model: nn.Module, images: np.ndarray, device: str | torch.device = "cpu",
                       batch_size: int = 50) -> np.ndarray:
    """(N, 2048) float64 features of uint8 NHWC images, `batch_size` at a time: at 299x299 one image's
    activations take megabytes, so a caller's large batch must not go through in one piece."""
    out = np.empty((len(images), FEATURE_DIM), dtype=np.float64)
    for start in range(0, len(images), batch_size):
        chunk = to_tensor(images[start:start + batch_size], torch.device(device))
        out[start:start + len(chunk)] = model(chunk).double().cpu().numpy()
    return out


def make_extractor(model: nn.Module, device: str | torch.device = "cpu",
                   batch_size: int = 50) -> Callable[[np.ndarray], np.ndarray]:
    """The `extract` that frechet.features_stats takes."""
    return lambda images: inception_features(model, images, device, batch_size)
