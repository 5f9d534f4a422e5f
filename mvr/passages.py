"""Long documents as overlapping passages (``IndexConfig(passage_tokens=N, passage_stride=S)``,
``mvr index --passage-tokens N --passage-stride S``).

A document longer than ``N`` model tokens is cut into windows of at most ``N`` tokens whose
starts are ``S`` tokens apart (so consecutive passages overlap by ``N - S``), each cut moved back
to the start of a sentence (after ``.``, ``!`` or ``?``, or at a line break: a paragraph, a
markdown heading) when one lies in the window's second half, else to the start of a word. Every
passage is stored as a row of its own with the document's title and metadata; a document of
``N`` tokens or fewer is one passage. Row ids are ``f"{document id}#{passage number}"`` (from 0),
always, so the document behind a row is its id less the last ``#`` part, and a document's rows
are consecutive in its segment.

Search returns documents by default: each document's best passage (MaxP), ``k`` distinct
documents; ``group="passages"`` returns the passages themselves. Adds, upserts and deletes take
document ids and act on all of a document's passages.
"""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np

from .corpus import Document
from .errors import ConfigError, is_number

GROUPS = ("documents", "passages")
# Where a sentence starts: after end punctuation and white space, or after a line break.
_SENTENCE = re.compile(r"(?<=[.!?])[\"')\]]*\s+|\n\s*")


def row_id(document_id: str, number: int) -> str:
    return f"{document_id}#{number}"


def document_id(row: str) -> str:
    """The document a passage row belongs to."""
    return row.rsplit("#", 1)[0]


def check(passage_tokens, passage_stride) -> None:
    if passage_tokens is None:
        if passage_stride is not None:
            raise ConfigError("passage_stride (--passage-stride) needs passage_tokens (--passage-tokens).")
        return
    if not is_number(passage_tokens, whole=True) or passage_tokens < 16:
        raise ConfigError(f"passage_tokens must be an integer of at least 16 (tokens per passage), got {passage_tokens!r}.")
    if passage_stride is not None and (not is_number(passage_stride, whole=True) or not 1 <= passage_stride <= passage_tokens):
        raise ConfigError(f"passage_stride must be an integer in [1, passage_tokens={passage_tokens}], got {passage_stride!r}.")


def _snap(target: int, low: int, sentence: np.ndarray, word: np.ndarray) -> int:
    """The last sentence start in ``(low, target]``, else the last word start there, else ``target``."""
    for starts in (sentence, word):
        i = np.searchsorted(starts, target, side="right") - 1
        if i >= 0 and starts[i] > low:
            return int(starts[i])
    return target


def windows(spans: np.ndarray, text: str, size: int, stride: int) -> list[tuple[int, int]]:
    """Token windows ``[start, end)`` over tokens with character ``spans`` in ``text``."""
    n = len(spans)
    if n <= size:
        return [(0, n)]
    starts = spans[:, 0]
    gaps = np.ones(n, dtype=bool)
    gaps[1:] = starts[1:] > spans[:-1, 1]  # a token right after another continues its word
    word = np.flatnonzero(gaps)
    breaks = [m.end() for m in _SENTENCE.finditer(text)]
    sentence = np.unique(np.searchsorted(starts, breaks)) if breaks else np.zeros(0, dtype=np.int64)
    sentence = sentence[sentence < n]
    out, start = [], 0
    while True:
        end = start + size
        if end >= n:
            out.append((start, n))
            return out
        end = _snap(end, start + size // 2, sentence, word)
        out.append((start, end))
        start = max(_snap(start + stride, start + stride // 2, sentence, word), start + 1)
        if start >= end:  # no overlap left to keep (stride == size): continue where this one ended
            start = end


def encoded_title(title: str, tokenizer, budget: int) -> tuple[str, int]:
    """The part of ``title`` that each passage's encoding repeats, and its tokens: the title (less
    surrounding spaces), cut to half of ``budget`` tokens where longer (or it would leave its
    passages no room for the text, which the encoder cut off). The stored title stays whole."""
    title = title.strip()
    found = tokenizer(title, add_special_tokens=False, return_offsets_mapping=True, verbose=False) if title else {"input_ids": []}
    tokens = min(len(found["input_ids"]), budget // 2)
    return (title[: found["offset_mapping"][tokens - 1][1]] if tokens else "") if tokens < len(found["input_ids"]) else title, tokens


def split(doc: Document, tokenizer, size: int, stride: int, budget: int) -> tuple[list[Document], bool]:
    """The passages of ``doc`` (a list of one when it fits), and whether it was split. ``budget``:
    the model's document length less its special tokens; the title, repeated in every passage,
    comes out of it (:func:`encoded_title`), so no passage is cut by the encoder."""
    title, title_tokens = encoded_title(doc.title, tokenizer, budget)
    doc = replace(doc, encoded_title=title)
    size = max(8, min(size, budget - title_tokens))
    stride = min(stride, size)
    found = tokenizer(doc.text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)  # the whole text: no warning about its length
    spans = np.asarray(found["offset_mapping"], dtype=np.int64).reshape(-1, 2)
    cuts = windows(spans, doc.text, size, stride) if len(spans) else [(0, 0)]
    passages = []
    for number, (start, end) in enumerate(cuts):
        text = doc.text if len(cuts) == 1 else doc.text[spans[start, 0] : spans[end - 1, 1]]
        passages.append(replace(doc, id=row_id(doc.id, number), text=text, where=f"{doc.where} (passage {number})" if doc.where else ""))
    return passages, len(cuts) > 1


def rows_of(state, documents) -> np.ndarray:
    """Positions of every live passage of these document ids (an id without any: none)."""
    return np.asarray([at for rows in passage_rows(state, documents) for at in rows], dtype=np.int64)


def passage_rows(state, documents) -> list[list[int]]:
    """The positions of each document id's live passages, one list per id (empty: it has none),
    all looked up at once."""
    first = state.positions([row_id(d, 0) for d in documents]) if len(documents) else np.zeros(0, dtype=np.int64)
    segments = state.segment_of(np.maximum(first, 0)) if len(first) else first
    ids, out = state.doc_ids, []
    for doc, at, s in zip(documents, first.tolist(), segments.tolist()):
        rows = []
        number, end = 0, int(state.bases[s + 1]) if at >= 0 else 0
        while at + number < end and str(ids[at + number]) == row_id(doc, number):
            if not state.deleted[s][at + number - state.bases[s]]:
                rows.append(at + number)
            number += 1
        out.append(rows)
    return out


def live_documents(state) -> tuple[int, int]:
    """``(documents, documents in more than one passage)`` of an index of passages, deleted ones
    not counted (a document's rows are deleted and added together)."""
    ids = np.asarray(state.doc_ids, dtype=str)
    live = ~np.concatenate(state.deleted) if state.deleted else np.zeros(0, dtype=bool)
    return int((np.char.endswith(ids, "#0") & live).sum()), int((np.char.endswith(ids, "#1") & live).sum())


def best_per_document(indices: np.ndarray, scores: np.ndarray, ids, k: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """Each query's ranked passages reduced to the best one of each document, ``k`` documents at
    most; and whether every query got ``k`` (or ran out of passages)."""
    out = np.full((len(indices), k), -1, dtype=np.int64)
    best = np.full((len(indices), k), -np.inf, dtype=np.float32)
    complete = True
    for q, (row, row_scores) in enumerate(zip(indices, scores)):
        seen, n = set(), 0
        for position, score in zip(row, row_scores):
            if position < 0 or n == k:
                break
            parent = document_id(str(ids[position]))
            if parent in seen:
                continue
            seen.add(parent)
            out[q, n], best[q, n], n = position, score, n + 1
        complete &= n == k or bool((row < 0).any())
    return out, best, complete
