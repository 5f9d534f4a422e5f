"""Why a document scored what it did (ColBERTer-style): for every query token, the document token
that gave its maximum similarity, that token's text and character span, and its share of the
MaxSim score.

Spans come from the stored token ids, not from a second store: the hit's text is tokenised again
(with the tokenizer's offsets) exactly as it was encoded, and the ids are checked against
``token_ids.npy`` (the vocabulary id behind every stored vector, written at encode time). Pruned
indexes keep the ids of the vectors they keep, so their rows align too. Spans would cost 8 bytes
per token on disk (half again the 15.4 bytes of the ``small`` preset); re-tokenising ten hits costs
about a millisecond. A clustered index stores centroids of several tokens: its explanations give
each query token's score and share, with no token text or span.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .encode import Encoder, TokenVectors
from .errors import QueryError
from .passages import encoded_title


def _align(stored: np.ndarray | None, ids: np.ndarray, spans: np.ndarray, n_rows: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The vocabulary id and span of each stored row: the re-tokenised ids matched in order to the
    stored ones (pruning drops rows, never reorders them). None when they do not match."""
    if stored is None:
        return (ids, spans) if len(ids) == n_rows else None
    if len(stored) != n_rows:  # not this document's ids
        return None
    rows, at = np.zeros(len(stored), dtype=np.int64), 0
    for row, token in enumerate(stored):
        while at < len(ids) and ids[at] != token:
            at += 1
        if at == len(ids):
            return None
        rows[row], at = at, at + 1
    return ids[rows], spans[rows]


def _field(span, title: str, encoded: str) -> dict | None:
    """A span of ``encoded + " " + text`` (what the encoder read: the title stripped, a passage's
    perhaps cut) as a span of the hit's ``title`` (as stored, spaces included) or ``text``."""
    start, end = int(span[0]), int(span[1])
    if start < 0:
        return None
    stripped = encoded
    if stripped and start < len(stripped):
        lead = len(title) - len(title.lstrip())
        return {"field": "title", "start": start + lead, "end": min(end, len(stripped)) + lead}
    shift = len(stripped) + 1 if stripped else 0
    return {"field": "text", "start": start - shift, "end": end - shift}


def explain_hit(encoder: Encoder, query: np.ndarray, query_ids: np.ndarray, state, position: int, clustered: bool) -> dict:
    """The explanation of one hit: ``{"maxsim": the MaxSim score, "matches": [one per query token:
    {"query_token", "query_position", "document_row", "token", "span": [start, end] or None,
    "field": "title" | "text" | None, "score", "share"}]}``. ``span`` indexes ``field`` of the hit
    (``hit.text[start:end]``); special tokens ([CLS], [SEP]) have a ``token`` and no span; a
    clustered index's rows have neither."""
    segment, row = state.locate(position)
    vectors = segment.tokens.document(row)
    sims = query @ vectors.T
    best = sims.argmax(axis=1)
    top = sims[np.arange(len(query)), best]
    total = float(top.sum())
    doc = segment.document(row)
    if state.config.passage_tokens:  # a passage's encoding repeats a title of at most half its budget
        doc = replace(doc, encoded_title=encoded_title(doc.title, encoder.tokenizer, encoder.document_budget)[0])
    title = doc.title.strip() if doc.encoded_title is None else doc.encoded_title
    aligned = None
    if not clustered:
        tokens = encoder.document_spans(doc.full_text)
        stored = segment.token_ids()
        if tokens is not None:
            first, last = int(segment.doc_offsets[row]), int(segment.doc_offsets[row + 1])
            aligned = _align(None if stored is None else np.asarray(stored[first:last]), tokens[0], tokens[1], last - first)
    vocabulary = encoder.tokenizer.convert_ids_to_tokens
    names = vocabulary([int(i) for i in query_ids])
    matches = []
    for i, (name, j, sim) in enumerate(zip(names, best, top)):
        place = _field(aligned[1][j], doc.title, title) if aligned is not None else None
        source = (doc.title if place["field"] == "title" else doc.text) if place else None
        token = source[place["start"] : place["end"]] if place else (vocabulary(int(aligned[0][j])) if aligned is not None else None)
        matches.append({
            "query_token": name,
            "query_position": i,
            "document_row": int(j),
            "token": token,
            "span": [place["start"], place["end"]] if place else None,
            "field": place["field"] if place else None,
            "score": round(float(sim), 6),
            "share": round(float(sim) / total, 6) if total else 0.0,
        })
    return {"maxsim": round(total, 6), "matches": matches}


def explain_results(index, queries: TokenVectors, results) -> list[list[dict]]:
    """Explanations of every hit of ``results`` (the searches of ``queries``), in hit order."""
    if getattr(results, "expanded", None) is not None:
        raise QueryError('explain shows which document token each query token matched; prf="colbert" adds vectors that are no query token: explain without prf '
                         '(where a search preset gives it, preset="none" or --preset none leaves it out).')
    state = results._index
    clustered = index.config.clusters
    encoder = index.encoder
    out = []
    for q, row in enumerate(results.indices):
        query, ids = queries[q], queries.token_ids[queries.offsets[q] : queries.offsets[q + 1]]
        out.append([explain_hit(encoder, query, ids, state, int(p), clustered) for p in row if p >= 0])
    return out
