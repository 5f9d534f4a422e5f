"""What the segments of one commit find, merged as one index would find it: exhaustive MaxSim's
top-k of a segment (:func:`exhaustive`), and a first stage's candidates over several segments
(:func:`candidates`, :func:`first_stage`), which mvr/search.py then reranks."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .config import DENSE_SHARE, default_candidates
from .registry import STAGES, needs_vectors, parse_stage
from .stages.base import Candidates, QueryBatch
from .stages.hybrid import union_candidates

if TYPE_CHECKING:
    from .search import SearchOptions

VECTOR_STAGES = tuple(name for name, entry in STAGES.items() if entry.reads == "vectors")  # the fallback of a text stage that finds nothing
_QUERY_CHUNK = 64  # queries scored together by the exhaustive kernel (bounds the score matrix)


def exhaustive(segment, queries: QueryBatch, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact MaxSim of every query against every document of a segment (``allowed``: only those);
    ``(positions, scores)`` of the top-k."""
    from ._kernels import topk_rows

    parts = []
    vectors, offsets = queries.vectors, queries.offsets
    if allowed is not None and allowed.mean() < 0.5:
        # few documents match: score only those, one query at a time; the -1 appended maps the
        # "no result" slots of top-k to -1
        rows = np.append(np.flatnonzero(allowed), -1).astype(np.int64)
        for q in range(len(offsets) - 1):
            best, top = topk_rows(segment.scorer.score(queries.query(q), rows[:-1])[None, :], k)
            parts.append((rows[best], top))
    else:
        for start in range(0, len(offsets) - 1, _QUERY_CHUNK):
            stop = min(start + _QUERY_CHUNK, len(offsets) - 1)
            block = vectors[offsets[start] : offsets[stop]]
            scores = segment.scorer.score_all(block, offsets[start : stop + 1] - offsets[start])
            if allowed is not None:
                scores[:, ~allowed] = -np.inf
            parts.append(topk_rows(scores, k))
    indices = np.concatenate([p[0] for p in parts])
    top = np.concatenate([p[1] for p in parts])
    if allowed is not None:
        indices[top == -np.inf] = -1  # fewer documents match than k
    return indices, top


def candidates(state, searched: list[tuple], queries: QueryBatch, opts: SearchOptions, stages: tuple[str, ...], n: int) -> list[list[Candidates]]:
    """Per stage of ``stages`` (single first stages), per query, the ``n`` best candidates over
    the ``searched`` segments of ``state`` (``(segment number, allowed rows)`` each): every
    segment's own best ``n``, merged by score (the FDE's compare across segments; BM25's nearly,
    each segment weighing terms by its own statistics). Positions are the commit's. Every
    (stage, segment) search goes in one round of ``state.each``: a sharded index asks its shards
    once for both stages of a hybrid."""

    def search(one: tuple) -> tuple:
        stage, s, allowed = one
        segment = state.segments[s]
        m = min(n, segment.n_docs if allowed is None else int(allowed.sum()))
        return state.bases[s], segment.stage(stage).search(queries, m, opts, allowed) if m else [Candidates.empty()] * len(queries)

    found = state.each(search, [(stage, s, allowed) for stage in stages for s, allowed in searched])
    rankings = []
    for i in range(len(stages)):
        mine, merged = found[i * len(searched) : (i + 1) * len(searched)], []
        for q in range(len(queries)):
            positions = np.concatenate([np.zeros(0, np.int64), *(rows[q].positions + base for base, rows in mine)])
            scores = np.concatenate([np.zeros(0, np.float32), *(rows[q].scores for _, rows in mine)])
            order = np.argsort(-scores, kind="stable")[:n]  # one segment: its own order, ties included
            merged.append(Candidates(positions[order], scores[order]))
        rankings.append(merged)
    return rankings


def first_stage(state, searched: list[tuple], queries: QueryBatch, opts: SearchOptions) -> tuple[list[Candidates], int]:
    """Per query, the candidates of ``opts.first_stage`` over the searched segments, as one index
    would find them (a hybrid joins the two merged rankings); and how many queries a text stage
    found nothing for (no searchable terms), answered by a vector stage (or every allowed document)
    when the candidates are to be reranked; without reranking such a query finds no documents, as
    the text stage alone would (whether or not the query's vectors were given)."""
    total = sum(state.segments[s].n_docs if allowed is None else int(allowed.sum()) for s, allowed in searched)
    n = min(opts.candidates or default_candidates(opts.first_stage), total)
    parts = parse_stage(opts.first_stage)
    if len(parts) == 2:
        dense, sparse = candidates(state, searched, queries, opts, parts, n)
        found = [union_candidates(d.positions, t.positions, round((DENSE_SHARE if opts.dense_share is None else opts.dense_share) * n), n) for d, t in zip(dense, sparse)]
    else:
        found = candidates(state, searched, queries, opts, parts, n)[0]
    if needs_vectors(opts.first_stage):
        return found, 0
    empty = [q for q, one in enumerate(found) if len(one.positions) == 0]
    vector = next((name for name in VECTOR_STAGES if all(state.segments[s].has_stage(name) for s, _ in searched)), None)
    for q in empty if queries.vectors is not None and opts.rerank else ():  # unreranked, the text stage's answer is the answer
        if vector is not None:
            found[q] = candidates(state, searched, queries.only(q), opts, (vector,), n)[0][0]
        else:
            every = [state.bases[s] + (np.arange(state.segments[s].n_docs) if allowed is None else np.flatnonzero(allowed)) for s, allowed in searched]
            found[q] = Candidates(np.concatenate(every).astype(np.int64), np.zeros(sum(map(len, every)), dtype=np.float32))
    return found, len(empty)
