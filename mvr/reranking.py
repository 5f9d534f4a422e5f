"""Rerank any candidates with exact MaxSim: documents given as text (encoded on the fly) or by id
in an index (their stored vectors), with the kernels search uses.

    >>> import mvr
    >>> mvr.rerank("which animal purrs?", ["Dogs bark.", {"id": "c", "text": "Cats purr."}], k=1)[0].id   # doctest: +SKIP
    'c'
    >>> mvr.open("pets").rerank("which animal purrs?", ["a", "b"])                                          # doctest: +SKIP

The order is PyLate's ``rank.rerank``: every candidate scored by MaxSim (the sum over query tokens
of the best dot product with a document token), best first; ties keep the candidates' order.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .corpus import as_documents, repeated
from .ids import asked_ids
from .encode import Encoder
from .errors import QueryError, many, shown
from .passages import passage_rows
from .results import Hit
from .storage.tokens import Float16Store
from .vectors.pca import project, stored


def ranked(scores: np.ndarray, k: int | None) -> np.ndarray:
    """Positions into ``scores``, best first, ties in the given order; the first ``k`` (None: all)."""
    if k is not None and (not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1):
        raise QueryError(f"k must be a positive integer, got {k!r}.")
    return np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")[:k]


def _query(text) -> str:
    if not isinstance(text, str) or not text.strip():
        raise QueryError(f"the query must be a non-empty string, got {text!r}.")
    return text


def rerank(query: str, documents, k: int | None = None, *, model=None, encoder: Encoder | None = None, projection=None) -> list[Hit]:
    """The ``documents`` (strings, dicts with id/text, ``(id, text)`` pairs or Documents) ordered
    by MaxSim against ``query``, each encoded here by ``encoder`` (default: an Encoder of ``model``,
    the embedded default model without one) and mapped by ``projection`` (an index's PCA or head,
    to score in its space: ``Index.projection``); the top ``k`` (None: all) as :class:`Hit` with
    ``position`` the document's place in the input."""
    query = _query(query)
    docs = list(as_documents(documents))
    twice = repeated(d.id for d in docs)
    if twice is not None:  # two hits of one name, which no run can tell apart
        raise QueryError(f"two documents have the id {shown(twice)}; give each document its own id.")
    if not docs:
        return []
    encoder = encoder or Encoder(model)
    empty = [d.id for d in docs if d.blank]
    if empty:
        raise QueryError(f"document {empty[0]!r} has no text; every candidate needs some to be scored.")
    q = project(encoder.encode_queries([query], show_progress=False).vectors, projection, queries=True)
    encoded = encoder.encode_documents([d.full_text for d in docs], show_progress=False)
    store = Float16Store(stored(encoded.vectors, projection).view(np.uint16), encoded.offsets)  # as an index stores them
    scores = store.score(np.ascontiguousarray(q, dtype=np.float32), np.arange(len(docs), dtype=np.int64))
    return [Hit(rank, docs[p].id, float(scores[p]), docs[p].text, docs[p].title, int(p), docs[p].metadata) for rank, p in enumerate(ranked(scores, k), start=1)]


def rerank_ids(index, query: str, ids: Sequence[str], k: int | None = None) -> list[Hit]:
    """:meth:`mvr.Index.rerank`: the documents of ``index`` with these ``ids``, ordered by MaxSim
    of their stored vectors against ``query``. An id the index does not hold is an error. In an
    index of passages a document's id scores as its best passage (the hit's ``passage``), as
    search returns documents; a passage's id scores as that passage."""
    query = _query(query)
    ids = list(dict.fromkeys(asked_ids(list(many(ids, "the candidates are a list of document ids", QueryError)))))  # a candidate named twice is ranked once
    if not ids:
        return []
    state = index._state  # one commit, whatever refreshes meanwhile
    # an index of passages: a document's id stands for its passages, scored by the best (what search returns), a passage's
    # for itself; a document's id first ("a#1" is document "a#1" where there is one, else passage 1 of "a")
    documents = passage_rows(state, ids) if index.config.passage_tokens else [[] for _ in ids]
    rows = [found or [int(p)] for found, p in zip(documents, state.positions(ids))]
    missing = [doc_id for doc_id, found in zip(ids, rows) if not found or found[0] < 0]
    if missing:
        raise QueryError(f"{len(missing)} candidate id(s) are not in index {index.name!r} (e.g. {shown(missing[0])}); rerank documents it holds, or give their texts to mvr.rerank.")
    every = np.array([r for found in rows for r in found], dtype=np.int64)
    scored = state.score(index.encode_queries([query]).vectors, every)
    starts = np.cumsum([0] + [len(found) for found in rows])
    best = [int(np.argmax(scored[a:b])) for a, b in zip(starts[:-1], starts[1:])]
    scores, positions = np.array([scored[a + j] for a, j in zip(starts, best)]), [found[j] for found, j in zip(rows, best)]
    hits = []
    for rank, p in enumerate(ranked(scores, k), start=1):
        doc = state.document(positions[p])
        passage = doc.id if doc.id != ids[p] else None  # asked by document: the passage that scored
        hits.append(Hit(rank, ids[p], float(scores[p]), doc.text, doc.title, positions[p], doc.metadata, passage=passage))
    return hits
