"""Per-document clustering: a document's token vectors pooled into fewer centroids (Ward linkage
or spherical k-means), with some token classes kept as they are."""

from __future__ import annotations

import numpy as np

from ..progress import progress
from .prune import cumulative, idf_weights


def cluster_counts(lengths: np.ndarray, config) -> np.ndarray:
    """Centroids per document: ceil(ratio x length) or min(count, length), at least 1."""
    if config.cluster_ratio is not None:
        counts = np.ceil(lengths * config.cluster_ratio - 1e-9).astype(np.int64)
    elif config.cluster_count is not None:
        counts = np.minimum(lengths, min(config.cluster_count, 2**62)).astype(np.int64)  # (a count past int64 is every token too)
    else:
        return lengths.astype(np.int64)
    return np.where(lengths > 0, np.clip(counts, 1, lengths), 0)


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
    bar = progress(total=len(n_clusters), desc="clustering (Ward)", unit="doc")
    for d in range(len(n_clusters)):
        bar.update(1)
        tokens = vectors[doc_offsets[d] : doc_offsets[d + 1]]
        target = out[out_offsets[d] : out_offsets[d + 1]]
        if n_clusters[d] >= len(tokens):
            target[:] = tokens
            continue
        points = tokens.astype(np.float64)
        if weights is not None:
            points *= weights[doc_offsets[d] : doc_offsets[d + 1], None]
        labels = fcluster(linkage(points, method="ward"), int(n_clusters[d]), criterion="maxclust")
        # each group's sum, in token order (as np.add.at would add them, at a fraction of its cost);
        # maxclust may return fewer groups when distances tie: pad with copies of the first
        order = np.argsort(labels, kind="stable")
        ranked = labels[order]
        centroids = np.add.reduceat(tokens[order].astype(np.float64), np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]]))
        centroids = np.concatenate([centroids, np.repeat(centroids[:1], len(target) - len(centroids), axis=0)])
        target[:] = centroids / np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    bar.close()
    return out, out_offsets


def cluster(vectors: np.ndarray, offsets: np.ndarray, counts: np.ndarray, config, token_ids=None, classes=None, stats=None) -> tuple[np.ndarray, np.ndarray]:
    """Pool each document's tokens into ``counts[d]`` vectors as ``config`` says: tokens of the
    ``cluster_keep`` classes stay as they are (and use up part of the count), the rest are
    clustered (Ward, optionally IDF-weighted, or k-means) into what is left, at least one."""
    from .._kernels.cluster import cluster_documents

    kept = np.zeros(len(vectors), dtype=bool)
    if config.cluster_keep:
        kept = np.isin(token_ids, np.concatenate([classes[c] for c in config.cluster_keep]))
    kept_offsets, rest_offsets = cumulative(kept)[offsets], cumulative(~kept)[offsets]
    rest_lengths = np.diff(rest_offsets)
    rest_counts = np.where(rest_lengths > 0, np.clip(counts - np.diff(kept_offsets), 1, np.maximum(rest_lengths, 1)), 0)
    rest = vectors[~kept]
    if config.cluster_method == "ward":
        weights = idf_weights(token_ids, offsets, config.cluster_idf_weight, stats)[~kept] if config.cluster_idf_weight else None
        pooled, pooled_offsets = ward_documents(rest, rest_offsets, rest_counts, weights)
    else:
        bar = progress(total=len(rest_counts), desc="clustering (k-means, in parallel)", unit="doc")
        pooled, pooled_offsets = cluster_documents(rest, rest_offsets, rest_counts, config.cluster_iters)
        bar.update(len(rest_counts))
        bar.close()
    if not kept.any():
        return pooled, pooled_offsets
    return interleave_documents(vectors[kept], kept_offsets, pooled, pooled_offsets)
