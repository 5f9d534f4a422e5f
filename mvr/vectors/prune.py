"""Which document tokens to keep, and how much each weighs: pruning rules and corpus statistics
over token ids (flat int32 ids + int64 ``doc_offsets``, one row range per document)."""

from __future__ import annotations

import numpy as np


def prune_mask(token_ids: np.ndarray, doc_offsets: np.ndarray, rules, classes: dict[str, np.ndarray], max_df: float, stats: np.ndarray | None = None) -> np.ndarray:
    """bool ``(n_tokens,)``: which tokens survive ``rules``. A document that would lose every
    token keeps them all (an empty document cannot be scored). ``stats``: the corpus statistics
    that "df" reads (:func:`corpus_stats`; default: those of these documents)."""
    drop = np.zeros(len(token_ids), dtype=bool)
    for rule in rules:
        if rule == "df":
            n_docs, df = _stats(token_ids, doc_offsets, stats)
            drop |= df[token_ids] > max_df * n_docs
        else:
            drop |= np.isin(token_ids, classes[rule])
    kept_per_doc = np.diff(cumulative(~drop)[doc_offsets])
    for d in np.flatnonzero((kept_per_doc == 0) & (np.diff(doc_offsets) > 0)):
        drop[doc_offsets[d] : doc_offsets[d + 1]] = False
    return ~drop


def document_frequency(token_ids: np.ndarray, doc_offsets: np.ndarray) -> np.ndarray:
    """How many documents hold each vocabulary id (indexed by id)."""
    doc_of = np.repeat(np.arange(len(doc_offsets) - 1), np.diff(doc_offsets))
    pairs = np.unique(np.stack([token_ids.astype(np.int64), doc_of]), axis=1)
    return np.bincount(pairs[0], minlength=int(token_ids.max(initial=0)) + 1)


def cumulative(flags: np.ndarray) -> np.ndarray:
    """``out[i]`` = how many of ``flags[:i]`` are set (length n + 1), to map offsets through a mask."""
    out = np.zeros(len(flags) + 1, dtype=np.int64)
    np.cumsum(flags, out=out[1:])
    return out


def corpus_stats(token_ids: np.ndarray, doc_offsets: np.ndarray) -> np.ndarray:
    """int64 ``(1 + vocabulary,)``: the number of documents, then each token id's document
    frequency. Saved by a build (``corpus_df.npy``) so that documents added later are pruned and
    weighted by the statistics the index was built with."""
    return np.concatenate([[len(doc_offsets) - 1], document_frequency(token_ids, doc_offsets)]).astype(np.int64)


def _stats(token_ids: np.ndarray, doc_offsets: np.ndarray, stats: np.ndarray | None) -> tuple[int, np.ndarray]:
    """``(documents, df)`` with df long enough for every id in ``token_ids``."""
    stats = corpus_stats(token_ids, doc_offsets) if stats is None else stats
    df = np.zeros(max(len(stats) - 1, int(token_ids.max(initial=0)) + 1), dtype=np.int64)
    df[: len(stats) - 1] = stats[1:]
    return int(stats[0]), df


def idf_weights(token_ids: np.ndarray, doc_offsets: np.ndarray, power: float, stats: np.ndarray | None = None) -> np.ndarray:
    """``idf(token) ** power`` of every token, idf = ln((N + 1) / (df + 0.5)) over the index's
    documents (``stats``, :func:`corpus_stats`; default: these documents): rare terms weigh most,
    a token in nearly every document close to nothing."""
    n_docs, df = _stats(token_ids, doc_offsets, stats)
    return (np.log((n_docs + 1) / (df[token_ids] + 0.5)) ** power).astype(np.float32)
