"""Centroid interaction (PLAID, Santhanam et al. 2022; WARP, Scheerer et al. 2025): candidates from
the corpus centroids that the stored vectors are nearest to, with no per-document encoding beside
the token store (kernels/centroids.py has the algorithm).

An index keeps it in ``centroids/``, with a manifest of its own:

    centroids/manifest.json              format, the vectors' checksum it was built from, counts
    centroids/centroids.npy              float16 (K, dim): the residual codec's centroids, or a
                                         spherical k-means of the stored vectors for other codecs
    centroids/list_offsets.npy           int64 (K + 1,)    inverted lists: centroid -> documents
    centroids/list_docs.npy              uint32 (pairs,)
    centroids/doc_centroid_offsets.npy   int64 (n_docs + 1,)  document -> its distinct centroids
    centroids/doc_centroids.npy          uint16 (pairs,)

About 6 bytes per distinct (document, centroid) pair and 8 per document: a few hundred bytes per
document, against 40 KiB for the default flat FDE. A query scores its tokens against the K
centroids, probes each token's ``centroid_probe`` nearest centroids' lists, and ranks the
documents met by their centroid MaxSim.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

from ..config import CENTROID_PROBE
from ..errors import ConfigError, IndexFormatError, is_number
from ..storage.formats import CENTROIDS_FORMAT, CENTROIDS_VERSION
from ..storage.manifest import index_folder
from ..threads import load_npy
from .base import BuildSource, Candidates, QueryBatch

POOL_FACTOR, MIN_POOL = 8, 256  # documents given the full centroid interaction: max(8 n, 256)
_SAMPLE = 100_000  # vectors the k-means of a non-residual store is fitted on
_FILES = ("centroids", "list_offsets", "list_docs", "doc_centroid_offsets", "doc_centroids")


def _codebook(source: BuildSource, n_centroids: int | None, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """``(centroids float32 (K, dim), centroid id of every stored vector, origin)``: the residual
    codec's own, or a k-means fitted here on an evenly spaced sample of the decoded vectors."""
    from ..storage.residual import CentroidSearch, ResidualStore, default_centroids, fit_centroids

    tokens = source.tokens
    if isinstance(tokens, ResidualStore) and n_centroids is None:
        return np.asarray(tokens.coded.centroids, dtype=np.float32), np.asarray(tokens.coded.centroid_ids), "residual codec"
    n_vectors = len(tokens)
    rows = np.unique(np.linspace(0, max(n_vectors - 1, 0), num=min(_SAMPLE, n_vectors)).astype(np.int64))
    sample = _decode_rows(tokens, rows)
    centroids = fit_centroids(sample, min(n_centroids or default_centroids(n_vectors), 65536), seed, what="centroid stage")
    search = CentroidSearch(centroids)
    ids = np.empty(n_vectors, dtype=np.uint16)
    for start in range(0, n_vectors, 1 << 16):
        stop = min(n_vectors, start + (1 << 16))
        ids[start:stop] = search.nearest(tokens.decode(start, stop))
    return centroids.astype(np.float32), ids, "k-means"


def _decode_rows(tokens, rows: np.ndarray) -> np.ndarray:
    """The decoded vectors of ``rows``, one at a time (they lie far apart: decoding the spans
    between them would hold most of the index)."""
    return np.concatenate([tokens.decode(int(r), int(r) + 1) for r in rows])


class CentroidStage:
    """The ``centroids/`` folder of an index, opened."""

    name = "centroids"
    format, version = CENTROIDS_FORMAT, CENTROIDS_VERSION
    binds = "vectors"

    def __init__(self, folder: Path, manifest: dict):
        self.folder, self.manifest = folder, manifest
        arrays = {name: load_npy(folder / f"{name}.npy", mmap_mode="r") for name in _FILES}
        self.centroids = np.ascontiguousarray(arrays["centroids"], dtype=np.float32)
        self.list_offsets = np.asarray(arrays["list_offsets"])
        self.list_docs = arrays["list_docs"]
        self.doc_centroid_offsets = np.asarray(arrays["doc_centroid_offsets"])
        self.doc_centroids = arrays["doc_centroids"]
        self.n_docs = len(self.doc_centroid_offsets) - 1
        self._check(manifest)
        self._scratch = threading.local()  # per searching thread: a slot per document, kept zero between queries

    def _slots(self) -> np.ndarray:
        """This thread's int32 slot of every document, all zero (see kernels/centroids.py)."""
        scratch = self._scratch
        if getattr(scratch, "slot", None) is None:
            scratch.slot = np.zeros(self.n_docs, dtype=np.int32)
        return scratch.slot

    def _check(self, manifest: dict) -> None:
        """Refuse arrays that do not fit together: the kernels index with them unchecked."""
        k, pairs, n = len(self.centroids), len(self.list_docs), self.n_docs
        problems = [
            (self.centroids.ndim != 2 or self.centroids.shape[1] != manifest["dim"], "centroids.npy is not (K, dim)"),
            (n != manifest["documents"] or len(self.list_offsets) != k + 1 or len(self.doc_centroids) != pairs, "its arrays' lengths disagree"),
            (self.list_offsets[0] != 0 or self.list_offsets[-1] != pairs or (np.diff(self.list_offsets) < 0).any(), "list_offsets.npy is not a run of offsets"),
            (self.doc_centroid_offsets[0] != 0 or self.doc_centroid_offsets[-1] != pairs or (np.diff(self.doc_centroid_offsets) < 0).any(), "doc_centroid_offsets.npy is not a run of offsets"),
            (pairs > 0 and (int(np.max(self.list_docs)) >= n or int(np.max(self.doc_centroids)) >= k), "a document or centroid id is out of range"),
        ]
        for bad, what in problems:
            if bad:
                raise IndexFormatError(f"{self.folder}: {what}; the centroid stage is damaged: rebuild it with `mvr centroids {index_folder(self.folder)}`.")

    @classmethod
    def check(cls, settings, dim: int) -> None:
        if settings is not None and (not is_number(settings, whole=True) or not 1 <= settings <= 65536):
            raise ConfigError(f"the centroid stage's centroid count must be an integer in [1, 65536] (None: the residual codec's), got {settings!r}.")

    @classmethod
    def build(cls, folder: Path, source: BuildSource, settings: int | None) -> dict:
        from .._kernels.centroids import centroid_lists

        started = time.perf_counter()
        centroids, ids, origin = _codebook(source, settings, seed=0)
        doc_centroid_offsets, doc_centroids, list_offsets, list_docs = centroid_lists(source.doc_offsets, ids, len(centroids))
        arrays = {"centroids": centroids.astype(np.float16), "list_offsets": list_offsets, "list_docs": list_docs,
                  "doc_centroid_offsets": doc_centroid_offsets, "doc_centroids": doc_centroids}
        for name in _FILES:
            np.save(folder / f"{name}.npy", arrays[name])
        n_docs = source.n_docs
        size = sum((folder / f"{name}.npy").stat().st_size for name in _FILES)
        return {
            "format": CENTROIDS_FORMAT,
            "format_version": CENTROIDS_VERSION,
            "dim": source.dim,
            "documents": n_docs,
            "centroids": int(len(centroids)),
            "asked": settings,  # what segments added later are built with (None: the default for their size)
            "origin": origin,
            "pairs": int(len(list_docs)),
            "vectors_sha256": source.vectors_sha256,
            "build": {"seconds": round(time.perf_counter() - started, 3)},
            "bytes_per_document": round(size / max(n_docs, 1), 1),
        }

    @classmethod
    def open(cls, folder: Path, manifest: dict, index) -> "CentroidStage":
        if manifest["dim"] != index.dim:
            raise IndexFormatError(f"{folder} was built for {manifest['dim']}-dim vectors, the index stores {index.dim}; rebuild it with `mvr centroids {index_folder(folder)}`.")
        return cls(folder, manifest)

    def search(self, queries: QueryBatch, n: int, options=None, allowed: np.ndarray | None = None) -> list[Candidates]:
        probe = (options.centroid_probe or CENTROID_PROBE) if options is not None else CENTROID_PROBE
        mask = np.zeros(0, np.uint8) if allowed is None else np.ascontiguousarray(allowed, dtype=np.uint8)
        few = None
        if allowed is not None and int(allowed.sum()) <= max(POOL_FACTOR * n, MIN_POOL):
            few = np.flatnonzero(allowed).astype(np.int64)  # a selective filter: score those, probe nothing
        wanted = min(n, self.n_docs if allowed is None else int(allowed.sum()))
        return [self._one(queries.query(q), n, wanted, probe, mask, few) for q in range(len(queries))]

    def _one(self, query: np.ndarray, n: int, wanted: int, probe: int, mask: np.ndarray, few: np.ndarray | None) -> Candidates:
        """One query's ``n`` best candidates: the documents ``few``, or those the probed lists meet
        (more centroids probed, x4 each time, while they meet fewer than ``wanted``)."""
        from .._kernels.centroids import best_centroids, interaction_scores, probe_gains, take_pool

        if len(query) == 0 or wanted == 0:
            return Candidates.empty()
        # (K, tokens): the centroids as the left operand, a third of the time of query @ centroids.T
        scores_t = self.centroids @ np.ascontiguousarray(query, dtype=np.float32).T
        if few is not None:
            exact = interaction_scores(scores_t, few, self.doc_centroid_offsets, self.doc_centroids)
            order = np.lexsort((few, -exact))[:n]
            return Candidates(few[order], exact[order])
        n_centroids = scores_t.shape[0]
        pool = max(POOL_FACTOR * n, MIN_POOL)
        while True:
            p = min(probe, n_centroids)
            probed, probed_scores, missing = best_centroids(scores_t, p)
            reach = min(int((self.list_offsets[probed + 1] - self.list_offsets[probed]).sum()), self.n_docs)
            touched, gains, marks = np.empty(reach, np.int64), np.empty(reach, np.float32), np.empty(reach, np.int32)
            slot = self._slots()
            try:
                met = probe_gains(probed, probed_scores, missing, self.list_offsets, self.list_docs, mask, slot, touched, gains, marks)
                touched = take_pool(touched[:met], gains[:met], slot, pool)  # slot back to zero
            except BaseException:
                self._scratch.slot = None  # whatever it holds now: made anew for the next query
                raise
            if met >= wanted or p >= n_centroids:
                break
            probe = p * 4
        exact = interaction_scores(scores_t, touched, self.doc_centroid_offsets, self.doc_centroids)
        order = np.lexsort((touched, -exact))[:n]
        return Candidates(touched[order].astype(np.int64), exact[order])
