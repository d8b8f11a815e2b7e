"""Streaming feature statistics and the Fréchet distance between two Gaussians (the FID formula).

A generated set can hold millions of images, so their features are never gathered: each batch
updates a running mean and scatter matrix in float64 (merged with Chan et al.'s pairwise rule,
which stays accurate where the textbook E[x x^T] - mu mu^T loses digits to cancellation).
"""

from __future__ import annotations

import warnings
from typing import Callable, Iterable

import numpy as np
from scipy import linalg

EPS = 1e-6                # what pytorch_fid adds to both diagonals when sqrtm(S1 S2) is not finite
IMAGINARY_TOLERANCE = 1e-3  # pytorch_fid's bound on the imaginary part of sqrtm's diagonal


class FeatureStats:
    """Running mean and (unbiased, like np.cov) covariance of feature vectors, fed batch by batch."""

    def __init__(self, dim: int | None = None) -> None:
        self.count = 0
        self._mean = np.zeros(dim) if dim is not None else None
        self._scatter = np.zeros((dim, dim)) if dim is not None else None  # sum of (x - mean)(x - mean)^T

    def update(self, features: np.ndarray) -> "FeatureStats":
        """Add a (N, D) batch; N may be 0. Returns self, so calls can be chained."""
        batch = np.asarray(features, dtype=np.float64)
        if batch.ndim != 2:
            raise ValueError(f"features have shape {batch.shape}; expected (N, D)")
        if self._mean is None:
            self._mean, self._scatter = np.zeros(batch.shape[1]), np.zeros((batch.shape[1],) * 2)
        if batch.shape[1] != self._mean.shape[0]:
            raise ValueError(f"features have dimension {batch.shape[1]}; earlier batches had {self._mean.shape[0]}")
        if not np.isfinite(batch).all():
            raise ValueError("features hold NaN or infinite values; the feature extractor diverged")
        n = len(batch)
        if n == 0:
            return self
        batch_mean = batch.mean(axis=0)
        centred = batch - batch_mean
        total = self.count + n
        delta = batch_mean - self._mean
        self._scatter += centred.T @ centred + np.outer(delta, delta) * (self.count * n / total)
        self._mean += delta * (n / total)
        self.count = total
        return self

    @property
    def mean(self) -> np.ndarray:
        if self.count == 0:
            raise ValueError("no features yet: the mean of an empty set is undefined")
        return self._mean.copy()

    @property
    def cov(self) -> np.ndarray:
        if self.count < 2:
            raise ValueError(f"{self.count} feature vector(s); a covariance needs at least 2")
        return self._scatter / (self.count - 1)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = EPS) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2}), computed as pytorch_fid does, so scores compare.

    sqrtm of a (near) singular product can come back non-finite; then, as pytorch_fid does, eps is
    added to both diagonals and it is taken again. Rounding leaves a tiny imaginary part, which is
    dropped; a large one means the covariances are not valid (not symmetric PSD) and is an error.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, dtype=np.float64)), np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
    dim = mu1.shape[0]
    if mu1.shape != (dim,) or mu2.shape != (dim,) or sigma1.shape != (dim, dim) or sigma2.shape != (dim, dim):
        raise ValueError(f"shapes do not match: means {mu1.shape} and {mu2.shape}, covariances {sigma1.shape} "
                         f"and {sigma2.shape}; expected (D,) and (D, D) for one D")
    if not all(np.isfinite(x).all() for x in (mu1, mu2, sigma1, sigma2)):
        raise ValueError("means or covariances hold NaN or infinite values")
    diff = mu1 - mu2
    covmean = _sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(dim) * eps
        covmean = _sqrtm((sigma1 + offset) @ (sigma2 + offset))
        if not np.isfinite(covmean).all():
            raise ValueError(f"sqrtm(S1 S2) is not finite even with {eps} added to the diagonals")
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=IMAGINARY_TOLERANCE):
            raise ValueError(f"sqrtm(S1 S2) has an imaginary part of up to {np.max(np.abs(covmean.imag)):.3g}; "
                             f"the covariances are not symmetric positive semi-definite")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def _sqrtm(matrix: np.ndarray) -> np.ndarray:
    """scipy's sqrtm without its singular-matrix warning: a non-finite result is handled by the caller."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        return linalg.sqrtm(matrix)


def features_stats(extract: Callable[[np.ndarray], np.ndarray], batches: Iterable[np.ndarray]) -> FeatureStats:
    """Run `extract` (uint8 NHWC batch -> (N, D) features) over `batches`, keeping only running statistics.

    From a shard set: `features_stats(extract, (images for images, _ in ShardSet.open(d).batches(500)))`.
    """
    stats = FeatureStats()
    for images in batches:
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"a batch is {images.dtype} {images.shape}; expected uint8 (N, H, W, 3) images")
        stats.update(extract(images))
    return stats
