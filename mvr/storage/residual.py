"""The residual codec (ColBERTv2, Santhanam et al. 2022, section 3.3): each vector is stored as its
nearest corpus centroid plus a few bits per dimension for the residual.

    codes.npy          uint8 (n_vectors, dim * bits / 8): packed bucket indices
    centroid_ids.npy   uint16 (n_vectors,)
    centroids.npy      float16 (K, dim): corpus k-means centroids (faiss, spherical)
    bucket_values.npy  float32 (dim, 2**bits): what each bucket decodes to
    bucket_cutoffs.npy float32 (dim, 2**bits - 1): quantile boundaries (encoding only)
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..errors import ConfigError, IndexFormatError
from ..progress import progress
from ..threads import load_npy
from .tokens import CodedStore, Coder

_BLOCK = 1 << 16


def default_centroids(n_vectors: int) -> int:
    """A power of two near 4 x sqrt(n), between 16 and 65536 (and no more than n / 8)."""
    k = 2 ** round(math.log2(max(4.0 * math.sqrt(max(n_vectors, 1)), 1.0)))
    return int(max(1, min(65536, max(16, k), max(1, n_vectors // 8))))


def fit_centroids(sample: np.ndarray, n_centroids: int, seed: int = 0, iters: int = 10, what: str = "centroids") -> np.ndarray:
    """Spherical k-means (faiss) of the rows of ``sample`` into at most ``n_centroids``: float32 ``(K, dim)``."""
    import faiss

    sample = np.ascontiguousarray(sample, dtype=np.float32)
    if not np.isfinite(sample).all():  # faiss refuses them with a C++ error
        raise IndexFormatError(f"{what}: the vectors to cluster hold NaN or infinite values; the index is damaged (`mvr info --verify` says where).")
    n_centroids = min(n_centroids, len(sample))
    kmeans = faiss.Kmeans(sample.shape[1], n_centroids, niter=iters, seed=seed, spherical=True, max_points_per_centroid=1 << 30, min_points_per_centroid=1, verbose=False)
    bar = progress(total=1, desc=f"{what}: k-means of {len(sample)} vectors into {n_centroids} centroids", unit="step")
    kmeans.train(sample)
    bar.update(1)
    bar.close()
    return kmeans.centroids


class CentroidSearch:
    """The nearest of a fixed set of centroids (largest inner product), exactly, by faiss."""

    def __init__(self, centroids: np.ndarray):
        import faiss

        self.index = faiss.IndexFlatIP(centroids.shape[1])
        self.index.add(np.ascontiguousarray(centroids, dtype=np.float32))

    def nearest(self, vectors: np.ndarray) -> np.ndarray:
        """int64 ``(n,)``: each row's nearest centroid."""
        out = np.empty(len(vectors), dtype=np.int64)
        for start in range(0, len(vectors), _BLOCK):
            _, ids = self.index.search(np.ascontiguousarray(vectors[start : start + _BLOCK], dtype=np.float32), 1)
            out[start : start + _BLOCK] = ids[:, 0]
        return out


class ResidualCodec:
    """ColBERTv2-style residual compression: nearest corpus centroid + per-dimension buckets.

    Centroids come from faiss spherical k-means on a sample; bucket cutoffs are per-dimension
    quantiles of the sample's residuals, and each bucket decodes to the mean residual in it.
    """

    def __init__(self, centroids: np.ndarray, cutoffs: np.ndarray, values: np.ndarray, bits: int):
        self.centroids = np.asarray(centroids, dtype=np.float16)  # stored as float16; residuals use these
        self.cutoffs = np.asarray(cutoffs, dtype=np.float32)
        self.values = np.asarray(values, dtype=np.float32)
        self.bits = int(bits)
        self._search = None

    @classmethod
    def fit(cls, sample: np.ndarray, n_centroids: int, bits: int, seed: int = 0, iters: int = 10) -> "ResidualCodec":
        sample = np.ascontiguousarray(sample, dtype=np.float32)
        dim = sample.shape[1]
        if (dim * bits) % 8:
            raise ConfigError(f"the residual codec packs {bits}-bit codes into bytes: dim x bits must be a multiple of 8, got {dim} x {bits}.")
        centroids = fit_centroids(sample, n_centroids, seed, iters, "residual codec")
        codec = cls(centroids, np.zeros((dim, (1 << bits) - 1)), np.zeros((dim, 1 << bits)), bits)
        residuals = sample - codec.centroids.astype(np.float32)[codec.assign(sample)]
        levels = 1 << bits
        codec.cutoffs = np.quantile(residuals, np.arange(1, levels) / levels, axis=0).T.astype(np.float32)
        buckets = codec._buckets(residuals)
        values = np.empty((dim, levels), dtype=np.float32)
        for b in range(levels):
            inside = buckets == b
            counts = inside.sum(axis=0)
            sums = np.where(inside, residuals, 0.0).sum(axis=0)
            lo = codec.cutoffs[:, b - 1] if b > 0 else codec.cutoffs[:, 0]
            hi = codec.cutoffs[:, b] if b < levels - 1 else codec.cutoffs[:, -1]
            values[:, b] = np.where(counts > 0, sums / np.maximum(counts, 1), (lo + hi) / 2)
        codec.values = values
        return codec

    def assign(self, vectors: np.ndarray) -> np.ndarray:
        """Nearest centroid (largest inner product) of each row: int64 ``(n,)``."""
        if self._search is None:
            self._search = CentroidSearch(self.centroids)
        return self._search.nearest(vectors)

    def _buckets(self, residuals: np.ndarray) -> np.ndarray:
        buckets = np.zeros(residuals.shape, dtype=np.uint8)
        for j in range(self.cutoffs.shape[1]):
            buckets += residuals > self.cutoffs[:, j]
        return buckets

    def encode(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Packed codes uint8 ``(n, dim * bits / 8)`` and centroid ids uint16 ``(n,)``."""
        vectors = np.asarray(vectors, dtype=np.float32)
        ids = self.assign(vectors)
        per_byte = 8 // self.bits
        codes = np.empty((len(vectors), vectors.shape[1] * self.bits // 8), dtype=np.uint8)
        for start in range(0, len(vectors), _BLOCK):
            part = vectors[start : start + _BLOCK] - self.centroids.astype(np.float32)[ids[start : start + _BLOCK]]
            buckets = self._buckets(part).reshape(len(part), -1, per_byte)
            packed = np.zeros(buckets.shape[:2], dtype=np.uint8)
            for j in range(per_byte):
                packed |= buckets[:, :, j] << (j * self.bits)
            codes[start : start + _BLOCK] = packed
        return codes, ids.astype(np.uint16)



class ResidualStore(CodedStore):
    """Centroid id + packed residual buckets per vector; decoded vectors are re-normalised."""

    codec = "residual"
    files = ("codes.npy", "centroid_ids.npy", "centroids.npy", "bucket_values.npy", "bucket_cutoffs.npy")

    @classmethod
    def coder(cls, sample: np.ndarray, config, like: Path | None = None, n_vectors: int | None = None) -> Coder:
        """Fitted on at most ``codec_sample`` rows of ``sample``, with as many centroids as
        ``n_vectors`` (default: the sample's length) call for; ``like``: a segment of the same
        index whose codec (centroids, bucket cutoffs and values) is reused, so new segments decode
        like the first."""
        if like is not None:
            codec = ResidualCodec(*(load_npy(Path(like) / f"{name}.npy") for name in ("centroids", "bucket_cutoffs", "bucket_values")), config.codec_bits)
        else:
            rng = np.random.default_rng(config.seed)
            chosen = sample[np.sort(rng.choice(len(sample), size=min(config.codec_sample, len(sample)), replace=False))]
            codec = ResidualCodec.fit(chosen, config.codec_centroids or default_centroids(n_vectors or len(sample)), config.codec_bits, seed=config.seed)
        codebook = {"centroids.npy": codec.centroids, "bucket_values.npy": codec.values, "bucket_cutoffs.npy": codec.cutoffs}
        return Coder(lambda vectors: dict(zip(("codes.npy", "centroid_ids.npy"), codec.encode(vectors))), codebook, {"codec_centroids": int(len(codec.centroids))})

    @classmethod
    def layout(cls, n, dim, config):
        levels = 1 << config.codec_bits
        return {
            "codes.npy": ((n, dim * config.codec_bits // 8), "uint8"),
            "centroid_ids.npy": ((n,), "uint16"),
            "centroids.npy": ((None, dim), "float16"),
            "bucket_values.npy": ((dim, levels), "float32"),
            "bucket_cutoffs.npy": ((dim, levels - 1), "float32"),
        }

    @classmethod
    def open(cls, folder: Path, config, dim: int, doc_offsets: np.ndarray) -> "ResidualStore":
        from .._kernels.codecs import RESIDUAL, CodedVectors

        def load(name):
            return load_npy(folder / name, mmap_mode="r")

        coded = CodedVectors(
            RESIDUAL,
            dim,
            load("codes.npy"),
            centroid_ids=load("centroid_ids.npy"),
            centroids=load_npy(folder / "centroids.npy").astype(np.float32),
            values=load_npy(folder / "bucket_values.npy"),
            bits=config.codec_bits,
        )
        return cls(coded, doc_offsets)
