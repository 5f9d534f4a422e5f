"""What a search returns: fixed-shape arrays as faiss returns them, and the documents behind them."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from .corpus import repeated
from .ids import check_id
from .errors import CorpusError, QueryError, many
from .passages import document_id


@dataclass(frozen=True)
class Hit:
    """One retrieved document: its rank (from 1), external id, MaxSim score, title, text and metadata."""

    rank: int
    id: str
    score: float
    text: str
    title: str
    position: int  # row of the document in the index (corpus order)
    metadata: dict = field(default_factory=dict)
    explanation: dict | None = None  # search(explain=True): see mvr.explain
    passage: str | None = None  # an index of passages: the passage's id (the hit's id is its document's, unless searched by passage)


class Results:
    """Ranked results of ``n_queries`` queries, fixed shapes as faiss returns them.

    ``indices`` int64 ``(n_queries, k)`` (k capped at the number of documents): document positions,
    -1 where the first stage found fewer than k; ``scores`` float32 ``(n_queries, k)``: -inf where
    there is no result. ``results[i]`` is the list
    of :class:`Hit` of query i, with ids and texts.
    """

    def __init__(self, indices: np.ndarray, scores: np.ndarray, index, timings: dict | None = None, group: str | None = None):
        self.indices = indices
        self.scores = scores
        self.timings = timings or {}
        self.fallbacks = 0
        self.explanations: list[list[dict]] | None = None  # per query, per hit, with search(explain=True)
        self.truncated: np.ndarray | None = None  # search(): per query, whether it ran past the query length and was cut there
        self._index = index
        self.group = group  # an index of passages: "documents" (ids are documents') or "passages"

    @classmethod
    def empty(cls, n_queries: int, k: int, index, explain: bool = False) -> "Results":
        """Results of ``n_queries`` queries that found nothing (-1, -inf)."""
        results = cls(np.full((n_queries, k), -1, np.int64), np.full((n_queries, k), -np.inf, np.float32), index, {"encode": 0.0})
        results.explanations = [[] for _ in range(n_queries)] if explain else None
        return results

    def __len__(self) -> int:
        return self.indices.shape[0]

    def __getitem__(self, query: int) -> list[Hit]:
        if isinstance(query, (bool, np.bool_)) or not isinstance(query, (int, np.integer)):
            raise TypeError(f"results are indexed by query number, an int (negative from the end), got {type(query).__name__}; iterate them for every query's hits.")
        if not -len(self) <= query < len(self):
            raise IndexError(f"query {query} is out of range: these results hold {len(self)} queries" + (f" (0 to {len(self) - 1}, or negative from the end)." if len(self) else "."))
        query = int(query) % len(self)
        hits = []
        for rank, (position, score) in enumerate(zip(self.indices[query], self.scores[query]), start=1):
            if position < 0:
                break
            doc = self._index.document(int(position))
            why = self.explanations[query][rank - 1] if self.explanations is not None else None
            passage = doc.id if self.group else None
            hits.append(Hit(rank, self._shown(doc.id), float(score), doc.text, doc.title, int(position), doc.metadata, why, passage))
        return hits

    def _shown(self, row_id: str) -> str:
        """The id a hit reports: a passage's document when grouped by documents."""
        return document_id(row_id) if self.group == "documents" else row_id

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    @property
    def doc_ids(self) -> list[list[str]]:
        ids = self._index.doc_ids
        return [[self._shown(str(ids[p])) for p in row if p >= 0] for row in self.indices]

    def to_trec(self, query_ids: Iterable[str], run_name: str = "mvr") -> list[str]:
        """TREC run lines ``qid Q0 docid rank score run``: one query id per query, each one field."""
        query_ids, run_name = self._query_ids(query_ids), trec_field(run_name, "run_name", "run name")
        ids = self._index.doc_ids
        ranked = ((qid, [(self._shown(str(ids[p])), score) for p, score in zip(row, row_scores) if p >= 0]) for qid, row, row_scores in zip(query_ids, self.indices, self.scores))
        return trec_lines(ranked, run_name)

    def to_dicts(self) -> list[list[dict]]:
        """Every query's hits as JSON-ready dicts ``{"id", "score", "title", "text", "metadata"}``
        (and ``"explanation"`` when explained): what ``mvr serve`` answers and the framework
        retrievers read."""
        def one(h: Hit) -> dict:
            hit = {"id": h.id, "score": h.score, "title": h.title, "text": h.text, "metadata": h.metadata}
            if h.passage is not None:
                hit["passage"] = h.passage
            return {**hit, "explanation": h.explanation} if h.explanation is not None else hit

        return [[one(h) for h in hits] for hits in self]

    def to_run(self, query_ids: Iterable[str]) -> dict[str, dict[str, float]]:
        """``{query id: {document id: score}}``, the run form ir-measures and pytrec_eval read, in
        rank order, each score below the one before (:func:`falling`: tied documents are scored in
        this ranking's order, not by their ids)."""
        query_ids = self._query_ids(query_ids)
        ids = self._index.doc_ids
        runs = {}
        for qid, row, row_scores in zip(query_ids, self.indices, self.scores):
            found = row >= 0
            runs[qid] = dict(zip((self._shown(str(ids[p])) for p in row[found]), falling(row_scores[found])))
        return runs

    def _query_ids(self, query_ids) -> list[str]:
        """``query_ids`` (any iterable) as strings, one per query, each one TREC field and none
        twice (a run holds one ranking per id: a second would replace the first)."""
        query_ids = list(many(query_ids, "query_ids must be a list of query ids, one per query", QueryError))
        if len(query_ids) != len(self):
            raise QueryError(f"{len(query_ids)} query ids for {len(self)} result lists; give one id per query, in the order searched.")
        query_ids = [trec_field(qid, f"query_ids[{i}]", "query id") for i, qid in enumerate(query_ids)]
        twice = repeated(query_ids)
        if twice is not None:
            raise QueryError(f"the query id {twice!r} is given twice; give each query its own id.")
        return query_ids


def trec_lines(ranked: Iterable[tuple[str, Iterable[tuple[str, float]]]], run_name: str) -> list[str]:
    """TREC run lines ``qid Q0 docid rank score run`` of ``(query id, [(document id, score), ...])``
    pairs, each query's documents ranked from 1 in the order given (best first); every field is
    the caller's to check (:func:`trec_field`). trec_eval orders a query's documents by score
    alone, ties by document id: each score is written below the one before (:func:`falling`), with
    6 decimals where they tell every rank apart, else in full."""
    lines = []
    for qid, docs in ranked:
        docs = list(docs)
        scores = falling(score for _, score in docs)
        shown = [f"{score:.6f}" for score in scores]
        if any(a == b for a, b in zip(shown, shown[1:])):
            shown = [repr(score) for score in scores]
        lines += [f"{qid} Q0 {doc} {rank} {score} {run_name}" for rank, ((doc, _), score) in enumerate(zip(docs, shown), start=1)]
    return lines


def falling(scores: Iterable[float]) -> list[float]:
    """Scores given in rank order (best first) as floats that each lie below the one before, in
    float32: each score rounded to float32, and a tie, or a score above its predecessor, made the
    float32 just below that predecessor. ir-measures and trec_eval rank a run's documents by score,
    breaking ties by document id, which would score another ranking than the one returned
    (reciprocal rank fusion ties often); and trec_eval (pytrec_eval, behind ir-measures' nDCG and
    recall) reads scores as float32, so distinct float64 scores, or a float64 step, may tie there."""
    out, last, down = [], np.float32(np.inf), np.float32(-np.inf)
    for score in scores:
        score = np.float32(score)
        last = score if score < last else np.nextafter(last, down)
        out.append(float(last))
    return out


def trec_field(value, where: str, what: str) -> str:
    """``value`` as one field of a TREC line, by the rule of document ids (as the CLI checks query
    ids): non-empty, without whitespace or control characters; else a QueryError."""
    try:
        return check_id(value, where, f"change the {what}")
    except CorpusError as error:
        raise QueryError(str(error).replace("document id", what)) from None


def read_trec(path) -> dict[str, list[tuple[str, float, float]]]:
    """Each query's lines of a TREC run file (``qid Q0 docid rank score tag``, whitespace
    between fields; the second and the last are not read) as ``(document id, rank, score)``, in
    the file's order; a QueryError names the first line that is not such a line."""
    from pathlib import Path

    from .corpus import text_lines

    path = Path(path)
    if not path.is_file():
        raise QueryError(f"run file not found: {path}." if not path.exists() else f"{path} is a folder; give a TREC run file.")
    rows: dict[str, list[tuple[str, float, float]]] = {}
    for line, row in text_lines(path, QueryError):
        fields = row.split()
        if not fields:
            continue
        if len(fields) != 6:
            raise QueryError(f"{path}:{line}: a TREC run line has 6 fields (qid Q0 docid rank score tag), this one {len(fields)}.")
        try:
            rank, score = float(fields[3]), float(fields[4])
        except ValueError:
            raise QueryError(f"{path}:{line}: the rank {fields[3]!r} or the score {fields[4]!r} is not a number.") from None
        if math.isnan(rank) or math.isnan(score):
            raise QueryError(f"{path}:{line}: the {'rank' if math.isnan(rank) else 'score'} is nan; ranks and scores order the documents.")
        rows.setdefault(fields[0], []).append((fields[2], rank, score))
    if not rows:
        raise QueryError(f"{path} holds no run lines.")
    return rows
