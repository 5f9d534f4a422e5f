"""Fewer and smaller stored token vectors: pruning, per-document clustering and compression.

Runs on an index directory whose ``vectors.npy`` holds every document token (float16), in the
order pruning -> clustering -> codec (see :class:`mvr.IndexConfig`), and rewrites it as:

    float16    vectors.npy        float16 (n_vectors, dim)
    int8       codes.npy          uint8 (n_vectors, dim): q + 128, q = round(x / scale)
               scales.npy         float32 (n_vectors,)
    residual   codes.npy          uint8 (n_vectors, dim * bits / 8): packed bucket indices
               centroid_ids.npy   uint16 (n_vectors,)
               centroids.npy      float16 (K, dim): corpus k-means centroids (faiss)
               bucket_values.npy  float32 (dim, 2**bits): what each bucket decodes to
               bucket_cutoffs.npy float32 (dim, 2**bits - 1): quantile boundaries (encoding only)

with ``doc_offsets.npy`` giving each document's vectors. ``source_tokens`` (the document tokens
before any of this) stays in the counts, so bytes per token compare with the uncompressed index.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np

from .config import IndexConfig
from .errors import MvrError

CODEC_FILES = {
    "float16": ("vectors.npy",),
    "int8": ("codes.npy", "scales.npy"),
    "residual": ("codes.npy", "centroid_ids.npy", "centroids.npy", "bucket_values.npy", "bucket_cutoffs.npy"),
}
_BLOCK = 1 << 16


def data_file(codec: str) -> str:
    """The file whose checksum identifies the stored vectors (FDEs record it)."""
    return CODEC_FILES[codec][0]


def vector_files(codec: str) -> tuple[str, ...]:
    """Every file that search reads to score documents (for bytes per token)."""
    return (*CODEC_FILES[codec], "doc_offsets.npy")


def prune_mask(token_ids: np.ndarray, doc_offsets: np.ndarray, rules, classes: dict[str, np.ndarray], max_df: float) -> np.ndarray:
    """bool ``(n_tokens,)``: which tokens survive ``rules``. A document that would lose every
    token keeps them all (an empty document cannot be scored)."""
    drop = np.zeros(len(token_ids), dtype=bool)
    for rule in rules:
        if rule == "df":
            drop |= document_frequency(token_ids, doc_offsets)[token_ids] > max_df * (len(doc_offsets) - 1)
        else:
            drop |= np.isin(token_ids, classes[rule])
    kept_per_doc = np.diff(_cumulative(~drop)[doc_offsets])
    for d in np.flatnonzero((kept_per_doc == 0) & (np.diff(doc_offsets) > 0)):
        drop[doc_offsets[d] : doc_offsets[d + 1]] = False
    return ~drop


def document_frequency(token_ids: np.ndarray, doc_offsets: np.ndarray) -> np.ndarray:
    """How many documents hold each vocabulary id (indexed by id)."""
    doc_of = np.repeat(np.arange(len(doc_offsets) - 1), np.diff(doc_offsets))
    pairs = np.unique(np.stack([token_ids.astype(np.int64), doc_of]), axis=1)
    return np.bincount(pairs[0], minlength=int(token_ids.max(initial=0)) + 1)


def _cumulative(flags: np.ndarray) -> np.ndarray:
    """``out[i]`` = how many of ``flags[:i]`` are set (length n + 1), to map offsets through a mask."""
    out = np.zeros(len(flags) + 1, dtype=np.int64)
    np.cumsum(flags, out=out[1:])
    return out


def cluster_counts(lengths: np.ndarray, config: IndexConfig) -> np.ndarray:
    """Centroids per document: ceil(ratio x length) or min(count, length), at least 1."""
    if config.cluster_ratio is not None:
        counts = np.ceil(lengths * config.cluster_ratio - 1e-9).astype(np.int64)
    elif config.cluster_count is not None:
        counts = np.minimum(lengths, config.cluster_count).astype(np.int64)
    else:
        return lengths.astype(np.int64)
    return np.where(lengths > 0, np.clip(counts, 1, lengths), 0)


def idf_weights(token_ids: np.ndarray, doc_offsets: np.ndarray, power: float) -> np.ndarray:
    """``idf(token) ** power`` of every token, idf = ln((N + 1) / (df + 0.5)) over the index's
    own documents: rare terms weigh most, a token in nearly every document close to nothing."""
    n_docs = len(doc_offsets) - 1
    df = document_frequency(token_ids, doc_offsets)
    return (np.log((n_docs + 1) / (df[token_ids] + 0.5)) ** power).astype(np.float32)


def interleave_documents(a: np.ndarray, a_offsets: np.ndarray, b: np.ndarray, b_offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Document d of the result is document d of ``a`` followed by document d of ``b``."""
    a_len, b_len = np.diff(a_offsets), np.diff(b_offsets)
    offsets = np.zeros(len(a_len) + 1, dtype=np.int64)
    np.cumsum(a_len + b_len, out=offsets[1:])
    out = np.empty((int(offsets[-1]), a.shape[1]), dtype=a.dtype)
    out[np.repeat(offsets[:-1] - a_offsets[:-1], a_len) + np.arange(len(a))] = a
    out[np.repeat(offsets[:-1] + a_len - b_offsets[:-1], b_len) + np.arange(len(b))] = b
    return out, offsets


def ward_documents(vectors: np.ndarray, doc_offsets: np.ndarray, n_clusters: np.ndarray, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Agglomerative clustering of each document's tokens with Ward linkage (SciPy), cut into
    ``n_clusters[d]`` groups whose re-normalised means replace the tokens (training-free token
    pooling, Clavie et al. 2024). ``weights`` (one per token) scale the tokens for the linkage
    only, so heavy tokens are merged last; the means are of the unscaled tokens. Deterministic.
    Returns the centroids and their offsets."""
    from scipy.cluster.hierarchy import fcluster, linkage

    out_offsets = np.zeros(len(n_clusters) + 1, dtype=np.int64)
    np.cumsum(n_clusters, out=out_offsets[1:])
    out = np.empty((int(out_offsets[-1]), vectors.shape[1]), dtype=np.float32)
    for d in range(len(n_clusters)):
        tokens = vectors[doc_offsets[d] : doc_offsets[d + 1]]
        target = out[out_offsets[d] : out_offsets[d + 1]]
        if n_clusters[d] >= len(tokens):
            target[:] = tokens
            continue
        points = tokens.astype(np.float64)
        if weights is not None:
            points *= weights[doc_offsets[d] : doc_offsets[d + 1], None]
        labels = fcluster(linkage(points, method="ward"), int(n_clusters[d]), criterion="maxclust")
        sums = np.zeros((int(n_clusters[d]), tokens.shape[1]))
        np.add.at(sums, labels - 1, tokens)
        # maxclust may return fewer groups when distances tie; pad with copies of the first
        used = np.unique(labels) - 1
        centroids = sums[used]
        centroids = np.concatenate([centroids, np.repeat(centroids[:1], len(target) - len(centroids), axis=0)])
        target[:] = centroids / np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    return out, out_offsets


def cluster(vectors: np.ndarray, offsets: np.ndarray, counts: np.ndarray, config: IndexConfig, token_ids=None, classes=None) -> tuple[np.ndarray, np.ndarray]:
    """Pool each document's tokens into ``counts[d]`` vectors as ``config`` says: tokens of the
    ``cluster_keep`` classes stay as they are (and use up part of the count), the rest are
    clustered (Ward, optionally IDF-weighted, or k-means) into what is left, at least one."""
    from ._kernels.cluster import cluster_documents

    kept = np.zeros(len(vectors), dtype=bool)
    if config.cluster_keep:
        kept = np.isin(token_ids, np.concatenate([classes[c] for c in config.cluster_keep]))
    kept_offsets, rest_offsets = _cumulative(kept)[offsets], _cumulative(~kept)[offsets]
    rest_lengths = np.diff(rest_offsets)
    rest_counts = np.where(rest_lengths > 0, np.clip(counts - np.diff(kept_offsets), 1, np.maximum(rest_lengths, 1)), 0)
    rest = vectors[~kept]
    if config.cluster_method == "ward":
        weights = idf_weights(token_ids, offsets, config.cluster_idf_weight)[~kept] if config.cluster_idf_weight else None
        pooled, pooled_offsets = ward_documents(rest, rest_offsets, rest_counts, weights)
    else:
        pooled, pooled_offsets = cluster_documents(rest, rest_offsets, rest_counts, config.cluster_iters)
    if not kept.any():
        return pooled, pooled_offsets
    return interleave_documents(vectors[kept], kept_offsets, pooled, pooled_offsets)


# -- codecs ------------------------------------------------------------------------------------
def encode_int8(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-row int8: codes uint8 ``(n, dim)`` (q + 128) and scales float32 ``(n,)``;
    each value decodes within scale / 2 of the original."""
    vectors = np.asarray(vectors, dtype=np.float32)
    scales = np.abs(vectors).max(axis=1, initial=0.0) / 127.0
    scales[scales == 0] = 1.0
    q = np.clip(np.rint(vectors / scales[:, None]), -127, 127)
    return (q + 128).astype(np.uint8), scales.astype(np.float32)


def default_centroids(n_vectors: int) -> int:
    """A power of two near 4 x sqrt(n), between 16 and 65536 (and no more than n / 8)."""
    k = 2 ** round(math.log2(max(4.0 * math.sqrt(max(n_vectors, 1)), 1.0)))
    return int(max(1, min(65536, max(16, k), max(1, n_vectors // 8))))


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
        import faiss

        sample = np.ascontiguousarray(sample, dtype=np.float32)
        dim = sample.shape[1]
        if (dim * bits) % 8:
            raise MvrError(f"the residual codec packs {bits}-bit codes into bytes: dim x bits must be a multiple of 8, got {dim} x {bits}.")
        n_centroids = min(n_centroids, len(sample))
        kmeans = faiss.Kmeans(dim, n_centroids, niter=iters, seed=seed, spherical=True, max_points_per_centroid=1 << 30, min_points_per_centroid=1, verbose=False)
        kmeans.train(sample)
        codec = cls(kmeans.centroids, np.zeros((dim, (1 << bits) - 1)), np.zeros((dim, 1 << bits)), bits)
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
        import faiss

        if self._search is None:
            self._search = faiss.IndexFlatIP(self.centroids.shape[1])
            self._search.add(self.centroids.astype(np.float32))
        out = np.empty(len(vectors), dtype=np.int64)
        for start in range(0, len(vectors), _BLOCK):
            _, ids = self._search.search(np.ascontiguousarray(vectors[start : start + _BLOCK], dtype=np.float32), 1)
            out[start : start + _BLOCK] = ids[:, 0]
        return out

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


def coded_vectors(folder: Path, config: IndexConfig, dim: int, mmap_mode: str | None = "r"):
    """The kernels' view (:class:`mvr._kernels.codecs.CodedVectors`) of a compressed index."""
    from ._kernels.codecs import INT8, RESIDUAL, CodedVectors

    def load(name):
        return np.load(folder / name, mmap_mode=mmap_mode)

    if config.codec == "int8":
        return CodedVectors(INT8, dim, load("codes.npy"), scales=load("scales.npy"))
    return CodedVectors(
        RESIDUAL,
        dim,
        load("codes.npy"),
        centroid_ids=load("centroid_ids.npy"),
        centroids=np.load(folder / "centroids.npy").astype(np.float32),
        values=np.load(folder / "bucket_values.npy"),
        bits=config.codec_bits,
    )


# -- the pass over an index directory ----------------------------------------------------------
def compact(folder: Path, config: IndexConfig, encoder, texts, show_progress=None) -> dict:
    """Prune, cluster and compress ``folder/vectors.npy`` in place (see the module doc).
    ``texts``: the documents' full texts in index order (pruning re-tokenises them to learn
    which token each vector is). Returns the counts to merge into the manifest."""
    started = time.perf_counter()
    offsets = np.load(folder / "doc_offsets.npy")
    source = np.load(folder / "vectors.npy", mmap_mode="r")
    source_tokens = len(source)
    vectors = np.asarray(source, dtype=np.float32)
    dim = vectors.shape[1]
    del source
    pruned = 0
    token_ids = None
    if config.prune or (config.clusters and (config.cluster_keep or config.cluster_idf_weight)):
        token_ids, id_offsets = encoder.document_token_ids(list(texts))
        if not np.array_equal(id_offsets, offsets):
            raise MvrError("the stored vectors do not line up with the re-tokenised texts; build the index again from the corpus.")
    classes = encoder.token_classes() if token_ids is not None else {}
    if config.prune:
        keep = prune_mask(token_ids, offsets, config.prune, classes, config.prune_max_df)
        pruned = int((~keep).sum())
        vectors, token_ids = vectors[keep], token_ids[keep]
        offsets = _cumulative(keep)[offsets]
    clustered = time.perf_counter()
    if config.clusters:
        vectors, offsets = cluster(vectors, offsets, cluster_counts(np.diff(offsets), config), config, token_ids, classes)
    cluster_seconds = time.perf_counter() - clustered
    os.remove(folder / "vectors.npy")
    np.save(folder / "doc_offsets.npy", offsets)
    details: dict = {}
    if config.codec == "float16":
        np.save(folder / "vectors.npy", vectors.astype(np.float16))
    elif config.codec == "int8":
        codes, scales = encode_int8(vectors)
        np.save(folder / "codes.npy", codes)
        np.save(folder / "scales.npy", scales)
    else:
        rng = np.random.default_rng(config.seed)
        sample = vectors[np.sort(rng.choice(len(vectors), size=min(config.codec_sample, len(vectors)), replace=False))]
        n_centroids = config.codec_centroids or default_centroids(len(vectors))
        codec = ResidualCodec.fit(sample, n_centroids, config.codec_bits, seed=config.seed)
        codes, ids = codec.encode(vectors)
        for name, array in (("codes", codes), ("centroid_ids", ids), ("centroids", codec.centroids), ("bucket_values", codec.values), ("bucket_cutoffs", codec.cutoffs)):
            np.save(folder / f"{name}.npy", array)
        details = {"codec_centroids": int(len(codec.centroids))}
    lengths = np.diff(offsets)
    return {
        "tokens": int(offsets[-1]),
        "source_tokens": source_tokens,
        "pruned_tokens": pruned,
        "max_doc_len": int(lengths.max(initial=0)),
        "dim": dim,
        "compact_seconds": round(time.perf_counter() - started, 3),
        "cluster_seconds": round(cluster_seconds, 3),
        **details,
    }


def decoded_float16(folder: Path, config: IndexConfig, dim: int) -> np.ndarray:
    """The stored vectors as float16 bits (uint16 ``(n, dim)``), decoding a compressed index."""
    if config.codec == "float16":
        return np.load(folder / "vectors.npy", mmap_mode="r").view(np.uint16)
    coded = coded_vectors(folder, config, dim)
    out = np.empty((len(coded), dim), dtype=np.float16)
    for start in range(0, len(coded), _BLOCK):
        out[start : start + _BLOCK] = coded.decode(start, min(len(coded), start + _BLOCK))
    return out.view(np.uint16)


def stored_bytes(folder: Path, config: IndexConfig) -> int:
    """Bytes of everything search reads to score documents (codes, codebooks, offsets, PCA)."""
    files = [*vector_files(config.codec), "projection.npy"]
    return sum((folder / f).stat().st_size for f in files if (folder / f).is_file())


__all__ = ["compact", "encode_int8", "ResidualCodec", "prune_mask", "cluster_counts", "coded_vectors", "decoded_float16"]
