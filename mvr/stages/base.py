"""The contract every first stage keeps, and the values that cross it.

A first stage finds candidate documents for a batch of queries; exact MaxSim then reranks them
(mvr/search.py). Each stage is a class with a name, an on-disk format and version, a ``build``
from a :class:`BuildSource` into a folder of the index, an ``open`` of that folder, and a
``search`` that answers every query with :class:`Candidates`, best first. The registry
(mvr/registry.py) names them; a hybrid (stages/hybrid.py) is a composite of two.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar, Iterable, NamedTuple, Protocol, Sequence

import numpy as np


class Candidates(NamedTuple):
    """One query's candidates, best first: ``positions`` int64 document rows and ``scores``
    float32 in the stage's own scale (descending)."""

    positions: np.ndarray
    scores: np.ndarray

    @classmethod
    def empty(cls) -> "Candidates":
        return cls(np.zeros(0, np.int64), np.zeros(0, np.float32))


@dataclass(frozen=True)
class QueryBatch:
    """Queries as a stage may read them: ``texts`` and / or their token vectors (flat float32
    ``vectors`` ``(n_tokens, dim)`` + int64 ``offsets``)."""

    texts: Sequence[str] | None = None
    vectors: np.ndarray | None = None
    offsets: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.texts) if self.texts is not None else len(self.offsets) - 1

    def query(self, q: int) -> np.ndarray:
        """The token vectors of query ``q``."""
        return self.vectors[self.offsets[q] : self.offsets[q + 1]]

    def only(self, q: int) -> "QueryBatch":
        """Query ``q`` alone, as a batch of one."""
        vectors = self.query(q) if self.vectors is not None else None
        return QueryBatch(
            [self.texts[q]] if self.texts is not None else None, vectors, None if vectors is None else np.array([0, len(vectors)], dtype=np.int64)
        )


@dataclass
class BuildSource:
    """What a first stage is built from: an index directory's stored parts."""

    folder: Path  # the index directory (a staging one during a build)
    dim: int
    doc_offsets: np.ndarray
    tokens: object  # the opened TokenStore (mvr/storage/tokens.py)
    texts: Callable[[], Iterable[tuple[str, str]]]  # (id, title + " " + text) of every document, in order
    doc_ids_sha256: str
    vectors_sha256: str
    command: str | None = None
    show_progress: bool | None = None

    @property
    def n_docs(self) -> int:
        return len(self.doc_offsets) - 1


class FirstStage(Protocol):
    name: ClassVar[str]
    format: ClassVar[str]
    version: ClassVar[int]
    binds: ClassVar[str]  # what it was built from and must still match: "vectors" or "doc_ids"

    @classmethod
    def check(cls, settings, dim: int) -> None:
        """Refuse settings that cannot work, before any document is encoded."""

    # optional: ``check_folder(cls, folder)``, refusing a folder the stage cannot be written in,
    # before any document is encoded (the Lucene stage: a path Java has no string for)

    @classmethod
    def build(cls, folder: Path, source: BuildSource, settings) -> dict:
        """Write the stage into ``folder`` (empty); return its manifest fields (format added by the caller)."""

    @classmethod
    def open(cls, folder: Path, manifest: dict, index) -> "FirstStage":
        """The stage in ``folder`` (manifest already checked against ``index``)."""

    def search(self, queries: QueryBatch, n: int, options, allowed: np.ndarray | None = None) -> list[Candidates]:
        """Up to ``n`` candidates per query; ``options``: the search's :class:`mvr.search.SearchOptions`;
        ``allowed``: bool ``(n_docs,)``, the only documents that may be candidates (a metadata
        filter, applied before the cut: None keeps all)."""


def top_n(scores: np.ndarray, n: int, allowed: np.ndarray | None = None) -> Candidates:
    """The ``n`` best positive scores of a dense score vector (among the ``allowed`` rows), best
    first (ties: lower row first)."""
    if allowed is not None:
        scores = np.where(allowed, scores, 0)
    top = np.argsort(-scores, kind="stable")[: min(n, len(scores))]
    top = top[scores[top] > 0]
    return Candidates(top.astype(np.int64), scores[top].astype(np.float32))


def text_stage_manifest(stage: str, source: BuildSource, documents: int, seconds: float, **details) -> dict:
    """The manifest of a stage built from the stored texts (format ``mvr-sparse``): bound to the
    index's document ids, which it must still match when opened."""
    from ..storage.formats import SPARSE_FORMAT, SPARSE_VERSION

    return {
        "format": SPARSE_FORMAT,
        "format_version": SPARSE_VERSION,
        "stage": stage,
        "documents": documents,
        "doc_ids_sha256": source.doc_ids_sha256,
        **details,
        "build": {"seconds": round(seconds, 3), "docs_per_second": round(documents / max(seconds, 1e-9), 1), "command": source.command},
    }
