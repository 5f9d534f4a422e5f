"""A hybrid first stage: a vector stage's candidates (FDE or centroids) joined with a text stage's (``fde+bm25s`` ...), one
union that MaxSim reranks. Within 0.5% of exhaustive MaxSim at 10-25 candidates on SciFact and
NFCorpus, where the FDE alone needs 50-500 (docs/fde.md)."""

from __future__ import annotations

import numpy as np

from ..config import DENSE_SHARE
from .base import Candidates, QueryBatch


def union_candidates(dense: np.ndarray, sparse: np.ndarray, n_dense: int, n_candidates: int) -> Candidates:
    """The hybrid candidate list: the first ``n_dense`` of the dense ranking, then sparse-ranked
    documents not yet in, then the rest of the dense ranking, up to ``n_candidates`` distinct
    positions. Scores are descending in that order (the two stages' own scores do not compare).

    >>> union_candidates(np.array([5, 3, 9, 1]), np.array([3, 7, 8]), 2, 4).positions.tolist()
    [5, 3, 7, 8]
    """
    merged = np.concatenate([dense[:n_dense], sparse, dense[n_dense:]])
    _, first = np.unique(merged, return_index=True)
    positions = merged[np.sort(first)][:n_candidates]
    return Candidates(positions.astype(np.int64), np.arange(len(positions), 0, -1, dtype=np.float32))


class Hybrid:
    """``dense`` and ``sparse`` stages composed: ``share`` of the candidates from the dense ranking,
    the sparse ranking adding new documents up to the count (the dense one fills in if it runs short)."""

    def __init__(self, dense, sparse, share: float | None):
        self.dense, self.sparse, self.share = dense, sparse, DENSE_SHARE if share is None else share
        self.name = f"{dense.name}+{sparse.name}"

    def search(self, queries: QueryBatch, n: int, options=None, allowed=None) -> list[Candidates]:
        dense = self.dense.search(queries, n, options, allowed)
        sparse = self.sparse.search(queries, n, options, allowed)
        n_dense = round(self.share * n)
        return [union_candidates(d.positions, s.positions, n_dense, n) for d, s in zip(dense, sparse)]
