"""Per-document spherical k-means of token vectors (CRISP, "Clustering Multi-Vector
Representations for Denoising and Pruning", 2025: each document keeps the re-normalised
centroids of its own tokens instead of the tokens).

Every document is clustered independently, in parallel. Initial centroids are the tokens at
evenly spaced positions (``floor((c + 0.5) * n / C)``): neighbouring tokens of a text tend to be
alike, so spacing the seeds along the text covers it, and the result depends on nothing but
the input. Assignment is by largest inner product; a cluster that loses all its tokens keeps its
previous centroid. Iteration stops early when no assignment changes.
"""

import numpy as np
from numba import njit, prange


@njit(fastmath=True, nogil=True, cache=True)
def _cluster_one(doc, n_clusters, iters, out):
    n, dim = doc.shape
    for c in range(n_clusters):
        src = int((c + 0.5) * n / n_clusters)
        for k in range(dim):
            out[c, k] = doc[src, k]
    if n_clusters == n:
        return
    assign = np.full(n, -1, dtype=np.int64)
    sums = np.zeros((n_clusters, dim), dtype=np.float32)
    counts = np.zeros(n_clusters, dtype=np.int64)
    for _ in range(iters):
        changed = 0
        for j in range(n):
            best, best_c = np.float32(-np.inf), 0
            for c in range(n_clusters):
                acc = np.float32(0.0)
                for k in range(dim):
                    acc += doc[j, k] * out[c, k]
                if acc > best:
                    best, best_c = acc, c
            if assign[j] != best_c:
                assign[j] = best_c
                changed += 1
        if changed == 0:
            break
        sums[:] = 0.0
        counts[:] = 0
        for j in range(n):
            c = assign[j]
            counts[c] += 1
            for k in range(dim):
                sums[c, k] += doc[j, k]
        for c in range(n_clusters):
            if counts[c] == 0:
                continue
            norm = np.float32(0.0)
            for k in range(dim):
                norm += sums[c, k] * sums[c, k]
            if norm > 0:
                inv = np.float32(1.0) / np.sqrt(norm)
                for k in range(dim):
                    out[c, k] = sums[c, k] * inv


@njit(parallel=True, fastmath=True, nogil=True, cache=True)
def _cluster_all(vectors, doc_offsets, out_offsets, iters, out):
    n_docs = doc_offsets.shape[0] - 1
    for d in prange(n_docs):
        doc = vectors[doc_offsets[d] : doc_offsets[d + 1]]
        n_clusters = out_offsets[d + 1] - out_offsets[d]
        if n_clusters > 0:
            _cluster_one(doc, n_clusters, iters, out[out_offsets[d] : out_offsets[d + 1]])


def cluster_documents(vectors, doc_offsets, n_clusters, iters=10):
    """Spherical k-means of each document's tokens.

    vectors: float32 ``(n_tokens, dim)``, unit rows; doc_offsets: int64 ``(n_docs + 1,)``;
    n_clusters: int64 ``(n_docs,)``, each in ``[min(1, length), length]``. Returns the unit
    centroids float32 ``(n_clusters.sum(), dim)`` and their offsets int64 ``(n_docs + 1,)``.
    A document with as many clusters as tokens keeps its tokens unchanged.
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    doc_offsets = np.ascontiguousarray(doc_offsets, dtype=np.int64)
    n_clusters = np.ascontiguousarray(n_clusters, dtype=np.int64)
    lengths = np.diff(doc_offsets)
    if n_clusters.shape != lengths.shape or np.any(n_clusters > lengths) or np.any((n_clusters < 1) & (lengths > 0)) or np.any(n_clusters < 0):
        raise ValueError("n_clusters must give each document between 1 and its length clusters")
    out_offsets = np.zeros(len(n_clusters) + 1, dtype=np.int64)
    np.cumsum(n_clusters, out=out_offsets[1:])
    out = np.empty((int(out_offsets[-1]), vectors.shape[1]), dtype=np.float32)
    if len(out):
        _cluster_all(vectors, doc_offsets, out_offsets, int(iters), out)
    return out, out_offsets
