"""Fewer token vectors: PCA (``pca``), pruning by rule (``prune``) and per-document clustering
(``cluster``). Arrays in, arrays out; the build (mvr/build.py) reads and writes the files.

    >>> import numpy as np
    >>> from mvr.config import IndexConfig
    >>> v = np.eye(4, dtype=np.float32)
    >>> out = compact_vectors(v, np.array([0, 4]), IndexConfig(cluster_count=2, cluster_keep=()))
    >>> out.vectors.shape, out.offsets.tolist()
    ((2, 4), [0, 2])
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .cluster import cluster, cluster_counts
from .pca import fit_pca, project
from .prune import corpus_stats, cumulative, prune_mask


def needs_token_ids(config) -> bool:
    """Whether compacting with ``config`` has to know the vocabulary id behind each vector."""
    return bool(config.prune) or (config.clusters and bool(config.cluster_keep or config.cluster_idf_weight))


@dataclass
class Compacted:
    vectors: np.ndarray  # float32 (n_vectors, dim)
    offsets: np.ndarray  # int64 (n_docs + 1,)
    token_ids: np.ndarray | None  # int32 (n_vectors,) while vectors are still tokens; None once clustered
    pruned: int
    cluster_seconds: float


def needs_corpus_stats(config) -> bool:
    """Whether compacting with ``config`` reads corpus statistics (document frequencies)."""
    return "df" in config.prune or (config.clusters and bool(config.cluster_idf_weight) and config.cluster_method == "ward")


def compact_vectors(vectors: np.ndarray, offsets: np.ndarray, config, token_ids: np.ndarray | None = None, classes: dict | None = None, stats: np.ndarray | None = None) -> Compacted:
    """Prune, then cluster each document's vectors as ``config`` says (see :class:`mvr.IndexConfig`).
    ``token_ids`` and ``classes`` (vocabulary ids of "special", "punctuation", "stopwords") are
    needed where :func:`needs_token_ids` says so; ``stats`` (:func:`corpus_stats`) where
    :func:`needs_corpus_stats` does (default: those of these documents)."""
    pruned = 0
    if config.prune:
        keep = prune_mask(token_ids, offsets, config.prune, classes, config.prune_max_df, stats)
        pruned = int((~keep).sum())
        vectors, token_ids = vectors[keep], token_ids[keep]
        offsets = cumulative(keep)[offsets]
    started = time.perf_counter()
    if config.clusters:
        vectors, offsets = cluster(vectors, offsets, cluster_counts(np.diff(offsets), config), config, token_ids, classes, stats)
        token_ids = None
    return Compacted(vectors, offsets, token_ids, pruned, time.perf_counter() - started)


__all__ = ["compact_vectors", "corpus_stats", "needs_corpus_stats", "needs_token_ids", "fit_pca", "project", "prune_mask", "cluster_counts"]
