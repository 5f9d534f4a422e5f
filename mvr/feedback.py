"""ColBERT-PRF (Wang, Macdonald, Tonellotto and Ounis, "Pseudo-Relevance Feedback for Multiple
Representation Dense Retrieval", ICTIR 2021): the query's token vectors grow by a few vectors
drawn from its best documents, and the whole search runs again with them.

1. A first search gives the top ``docs`` documents of the query (the search as asked, filters
   and fusion included).
2. Their stored token vectors are clustered by k-means into ``clusters`` centroids.
3. Each centroid stands for the token most of its members are (the stored token ids), and
   weighs that token's IDF in the index: rare, informative tokens weigh most. The paper looks
   up the centroid's nearest tokens in the whole index; here its own members vote, which needs
   no index of every token and asks nothing of the feedback documents it has not read already.
4. The ``terms`` heaviest centroids join the query, each scaled by ``beta x idf``: MaxSim
   gives a scaled vector's best product scaled alike, so a document scores
   ``sum_i max_j q_i.d_j + beta sum_e idf_e max_j c_e.d_j``.

The second search reads the expanded query everywhere a query's vectors are read: MaxSim, the
FDE and the centroid stage (the paper's "ranker": new candidates, not only a new order), the
pooled vector's mean. In an index of passages the feedback comes from the best passage of each
of the top documents. ``Results.timings["feedback"]`` is the first search and the clustering.
Text stages (BM25, SPLADE) see the same text, so they find the same candidates again.
"""

from __future__ import annotations

import weakref

import numpy as np

from .errors import QueryError
from .stages.base import QueryBatch
from .threads import cpu_threads
from .vectors.prune import corpus_stats, idf_weights

# Chosen on SciFact train and NFCorpus dev (docs/quality.md, "ColBERT-PRF"; python -m mvr.eval.feedback),
# on builds with the onnx-int8-fused document runtime (3 documents and beta 0.1 on the onnx-int8 builds before)
COLBERT_PRF = {"docs": 5, "clusters": 24, "terms": 10, "beta": 0.05}
_KMEANS_ITERS = 10
_STATS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # segment -> (its token ids, corpus_stats of its documents)


def kmeans(vectors: np.ndarray, k: int, iters: int = _KMEANS_ITERS, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means of the rows of ``vectors`` (float32) into at most ``k`` clusters, seeded by
    k-means++ from ``seed``: ``(centroids (k, dim), label of each row)``. A few hundred rows:
    plain NumPy, deterministic, and nothing printed. Not the per-document spherical k-means of
    ``kernels/cluster.py``: ColBERT-PRF's centroids are plain means, whose length says how
    tightly their members agree, and their members' labels are needed to vote."""
    n = len(vectors)
    k = min(k, n)
    rng = np.random.default_rng(seed)
    squared = np.einsum("ij,ij->i", vectors, vectors)
    chosen = [int(rng.integers(n))]
    nearest = squared + squared[chosen[0]] - 2.0 * vectors @ vectors[chosen[0]]
    for _ in range(1, k):
        weights = np.maximum(nearest, 0.0)
        total = float(weights.sum())
        pick = int(rng.choice(n, p=weights / total)) if total > 0 else int(np.argmax(weights))
        chosen.append(pick)
        nearest = np.minimum(nearest, squared + squared[pick] - 2.0 * vectors @ vectors[pick])
    centroids = vectors[chosen].astype(np.float32)
    labels = np.full(n, -1, dtype=np.int64)
    for _ in range(iters):
        distances = squared[:, None] - 2.0 * vectors @ centroids.T + np.einsum("ij,ij->i", centroids, centroids)[None, :]
        new = np.argmin(distances, axis=1)
        if np.array_equal(new, labels):
            break
        labels = new
        order = np.argsort(labels, kind="stable")
        present, starts, counts = np.unique(labels[order], return_index=True, return_counts=True)
        centroids[present] = np.add.reduceat(vectors[order], starts, axis=0) / counts[:, None]  # an emptied cluster keeps its centroid
    return centroids, labels


def _token_ids(segment) -> tuple[np.ndarray, np.ndarray]:
    """One segment's stored token ids (memory-mapped) and their ``corpus_stats`` (computed once
    per opened segment)."""
    segment = getattr(segment, "local", segment)  # a shard's stand-in (mvr.distributed): its files are read here
    found = _STATS.get(segment)
    if found is None:
        ids = segment.token_ids()
        if ids is None:
            raise QueryError(
                f"prf=\"colbert\" weighs each expansion vector by its token's IDF, read from the stored token ids; index {segment.index_name!r} "
                "has none (its vectors are clustered, as with the small or tiny preset, or it was built before they were stored): search it without prf, or build it again without clustering."
            )
        found = _STATS[segment] = (ids, corpus_stats(np.asarray(ids), segment.doc_offsets))
    return found


def index_stats(state) -> np.ndarray:
    """``corpus_stats`` over every segment of a commit: documents, then each token id's document
    frequency (deleted documents still counted: statistics, like BM25's, move at a merge)."""
    parts = [_token_ids(segment)[1] for segment in state.segments]
    total = np.zeros(max((len(p) for p in parts), default=1), dtype=np.int64)
    for part in parts:
        total[: len(part)] += part
    return total


def feedback_vectors(state, positions: np.ndarray, stats: np.ndarray, dim: int, docs: int, clusters: int, terms: int, beta: float) -> np.ndarray:
    """The expansion of one query whose first search ranked ``positions`` (commit positions, -1
    for none): float32 ``(<= terms, dim)``, each centroid already scaled by ``beta x idf``."""
    vectors, ids = [], []
    for position in [int(p) for p in positions[:docs] if p >= 0]:
        segment, row = state.locate(position)
        segment = getattr(segment, "local", segment)
        start, stop = int(segment.doc_offsets[row]), int(segment.doc_offsets[row + 1])
        vectors.append(segment.tokens.decode(start, stop))
        ids.append(np.asarray(_token_ids(segment)[0][start:stop]))
    if not vectors or not sum(map(len, vectors)):
        return np.zeros((0, dim), dtype=np.float32)
    vectors, ids = np.concatenate(vectors).astype(np.float32), np.concatenate(ids).astype(np.int64)
    with cpu_threads(1, "blas"):  # small products: one thread is faster, and idle BLAS threads would spin beside faiss's
        centroids, labels = kmeans(vectors, clusters)
    token = np.array([np.bincount(ids[labels == c]).argmax() if (labels == c).any() else -1 for c in range(len(centroids))])
    used = token >= 0
    centroids, token = centroids[used], token[used]
    weights = idf_weights(token, np.array([0, len(token)]), 1.0, stats)
    best = np.argsort(-weights, kind="stable")[:terms]
    return (centroids[best] * (beta * weights[best])[:, None]).astype(np.float32)


def expand(state, queries: QueryBatch, ranked: np.ndarray, docs: int | None = None, clusters: int | None = None, terms: int | None = None, beta: float | None = None) -> QueryBatch:
    """``queries`` with each query's expansion appended (``ranked``: ``(n_queries, >= docs)``
    commit positions of its first search); parameters default to :data:`COLBERT_PRF`."""
    chosen = {"docs": docs, "clusters": clusters, "terms": terms, "beta": beta}
    params = {name: COLBERT_PRF[name] if value is None else value for name, value in chosen.items()}
    stats = index_stats(state)
    pieces, lengths = [], []
    for q in range(len(queries)):
        extra = feedback_vectors(state, ranked[q], stats, queries.vectors.shape[1], **params)
        pieces += [queries.query(q), extra]
        lengths.append(len(pieces[-2]) + len(extra))
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    vectors = np.concatenate(pieces) if pieces else queries.vectors
    return QueryBatch(queries.texts, np.ascontiguousarray(vectors, dtype=np.float32), offsets)
