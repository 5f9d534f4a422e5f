"""The pooled single-vector stage: each document as the mean of its stored token vectors,
normalised (the objective sentence-embedding models such as the embedded all-MiniLM-L6-v2 were
trained for: mean pooling), and each query the same way from its token vectors; the score is the
cosine. Alone it is a weaker retriever than MaxSim, but its errors differ, so it finds candidates
and votes in weighted fusion (docs/quality.md). Stored in ``<segment>/pooled/vectors.npy`` as
float16, ``dim`` x 2 bytes per document, built from the stored vectors without re-encoding."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..storage.formats import POOLED_FORMAT, POOLED_VERSION
from ..threads import load_npy
from .base import BuildSource, Candidates, QueryBatch


def mean_vectors(vectors: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Each text's token vectors (rows ``offsets[i]:offsets[i + 1]``) averaged and L2-normalised,
    float32 ``(n_texts, dim)``; a text without vectors gets zeros.

    >>> mean_vectors(np.array([[3.0, 0.0], [0.0, 4.0], [0.0, 2.0]]), np.array([0, 1, 3, 3])).round(3).tolist()
    [[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    lengths = np.diff(offsets)
    out = np.zeros((len(lengths), vectors.shape[1]), dtype=np.float32)
    filled = lengths > 0
    if filled.any():
        sums = np.add.reduceat(np.asarray(vectors, dtype=np.float32), offsets[:-1][filled], axis=0)
        out[filled] = sums / lengths[filled, None]
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return np.divide(out, norms, out=out, where=norms > 0)


class PooledStage:
    """The documents' pooled vectors, held as float32 in memory; exact search by dot product."""

    name = "pooled"
    format, version = POOLED_FORMAT, POOLED_VERSION
    binds = "vectors"

    @classmethod
    def check(cls, settings, dim: int) -> None:
        pass

    @classmethod
    def build(cls, folder: Path, source: BuildSource, settings=None) -> dict:
        started = time.perf_counter()
        out = np.lib.format.open_memmap(folder / "vectors.npy", mode="w+", dtype=np.float16, shape=(source.n_docs, source.dim))
        offsets = source.doc_offsets
        for first, stop, block in source.tokens.decoded_blocks():
            out[first:stop] = mean_vectors(block, offsets[first : stop + 1] - offsets[first])
        out.flush()
        del out
        seconds = time.perf_counter() - started
        return {
            "format": POOLED_FORMAT,
            "format_version": POOLED_VERSION,
            "stage": cls.name,
            "documents": source.n_docs,
            "dim": source.dim,
            "vectors_sha256": source.vectors_sha256,
            "bytes_per_document": 2 * source.dim,
            "build": {"seconds": round(seconds, 3), "docs_per_second": round(source.n_docs / max(seconds, 1e-9), 1), "command": source.command},
        }

    @classmethod
    def open(cls, folder: Path, manifest: dict, index) -> "PooledStage":
        return cls(load_npy(folder / "vectors.npy").astype(np.float32))

    def __init__(self, vectors: np.ndarray):
        self.vectors = vectors

    def _queries(self, queries: QueryBatch) -> np.ndarray:
        return mean_vectors(queries.vectors, queries.offsets)

    def search(self, queries: QueryBatch, n: int, options=None, allowed=None) -> list[Candidates]:
        out = []
        for q in self._queries(queries):
            scores = self.vectors @ q
            rows = np.arange(len(scores)) if allowed is None else np.flatnonzero(allowed)
            m = min(n, len(rows))
            if m == 0:
                out.append(Candidates.empty())
                continue
            picked = rows[np.argpartition(-scores[rows], m - 1)[:m]] if m < len(rows) else rows
            picked = picked[np.lexsort((picked, -scores[picked]))]  # best first, ties to the lower row
            out.append(Candidates(picked.astype(np.int64), scores[picked].astype(np.float32)))
        return out

    def score(self, queries: QueryBatch, positions: list[np.ndarray]) -> list[np.ndarray]:
        """Each query's cosine with the documents at its ``positions``."""
        return [(self.vectors[rows] @ q).astype(np.float32) for q, rows in zip(self._queries(queries), positions)]
