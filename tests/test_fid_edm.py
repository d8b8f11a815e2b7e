"""EDM's FID protocol: torch-fidelity's TF1 resize reaches the network, the weights' hash is checked, draws are seeded.

No test has the real weights (they cannot be downloaded here): the network is pytorch-fid's FID
architecture with seeded random weights, saved as a plain state dict like the real file. Its hash
is therefore wrong, so these tests either expect the refusal or use `build_tf_inception`, the
unchecked builder; the stage test that needs the checked path (tests/test_quality.py) says so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from genrobust import io
from genrobust.errors import UserError
from genrobust.quality import edm_fid, inception, tf_inception


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """pytorch-fid's FID InceptionV3 with seeded random weights: the real file's keys, not its values."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "random_inception.pth"
    torch.save(inception.build_fid_inception().state_dict(), path)
    return path


IMAGES = np.random.default_rng(7).integers(0, 256, size=(2, 32, 32, 3), dtype=np.uint8)


def test_the_network_sees_torch_fidelitys_tf1_resize_of_the_images(random_weights) -> None:
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    network = tf_inception.build_tf_inception(random_weights)   # pytorch-fid's keys load strictly into it
    seen: list[torch.Tensor] = []
    network.Conv2d_1a_3x3.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].clone()))
    features = tf_inception.tf_features(network, IMAGES, batch_size=1)
    nchw = torch.from_numpy(IMAGES).permute(0, 3, 1, 2).float()
    expected = (interpolate_bilinear_2d_like_tensorflow1x(nchw, size=(299, 299), align_corners=False) - 128) / 128
    assert torch.equal(torch.cat(seen), expected)
    pytorch_fid_input = 2 * F.interpolate(nchw / 255, size=(299, 299), mode="bilinear", align_corners=False) - 1
    assert (expected - pytorch_fid_input).abs().max() > 1e-2       # the two protocols really resize differently
    assert features.shape == (2, 2048) and features.dtype == np.float64 and np.isfinite(features).all()
    with torch.inference_mode():
        direct = network(torch.from_numpy(IMAGES).permute(0, 3, 1, 2))[0].double().numpy()
    np.testing.assert_allclose(features, direct, rtol=1e-5, atol=1e-6 * np.abs(direct).max())


def test_weights_of_another_hash_are_refused_naming_the_file_and_both_hashes(random_weights) -> None:
    digest = io.sha256(random_weights)
    assert not digest.startswith(tf_inception.EXPECTED_SHA256_PREFIX)
    with pytest.raises(UserError) as refused:
        tf_inception.load_tf_inception(random_weights)
    message = str(refused.value)
    assert str(random_weights) in message and digest in message and tf_inception.EXPECTED_SHA256_PREFIX in message
    assert "\n" not in message


def test_without_weights_fid_edm_is_null_and_says_why() -> None:
    def never(*args: object) -> None:
        raise AssertionError("no image is read without weights")

    figure = edm_fid.fid_edm(None, "no FID Inception weights: set quality.inception_weights", never, never,
                             100, 10, 3, 0, 10, torch.device("cpu"))
    assert figure["value"] is None and "quality.inception_weights" in figure["reason"]
    assert figure["protocol"].startswith("EDM")


def test_draws_are_seeded_and_disjoint_while_the_set_holds_enough() -> None:
    draws, disjoint = edm_fid.draw_subsets(1000, 300, 3, seed=5)
    assert disjoint and len(draws) == 3 and all(len(d) == 300 and np.all(np.diff(d) > 0) for d in draws)
    assert len(np.unique(np.concatenate(draws))) == 900
    again, _ = edm_fid.draw_subsets(1000, 300, 3, seed=5)
    assert all(np.array_equal(a, b) for a, b in zip(draws, again))
    other, _ = edm_fid.draw_subsets(1000, 300, 3, seed=6)
    assert not np.array_equal(draws[0], other[0])
    shared, disjoint = edm_fid.draw_subsets(500, 300, 3, seed=5)
    assert not disjoint and all(len(np.unique(d)) == 300 for d in shared)
    assert not np.array_equal(shared[0], shared[1])
