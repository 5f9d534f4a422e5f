"""Late-interaction (MaxSim) scoring, ColBERT's sum over query tokens of the best document token.

    score(q, d) = sum_i max_j <q_i, d_j>          (Khattab & Zaharia, 2020, eq. 3)

Documents are stored as one flat ``(n_tokens, dim)`` float16 matrix, passed here as its uint16
bit pattern, with ``doc_offsets`` (``n_docs + 1`` int64) marking each document's rows. Queries are
float32 ``(n_query_tokens, dim)``. Accumulation is float32. A document with no tokens scores 0.

Layout of each kernel (as in ranx): a private per-document body, a parallel loop over
documents, and a typed public function that checks shapes.
"""

import numpy as np
from numba import njit, prange

from .fp16 import decode_rows


@njit(inline="always", fastmath=True, nogil=True)
def _score_one(query, doc):
    # Register blocking: four query tokens against two document tokens per pass over ``dim``,
    # eight independent dot products the compiler vectorises over ``dim``, so six loads feed
    # eight FMAs (the loop is FMA-bound, not load-bound). Running maxima stay in scalars.
    n_query, dim = query.shape
    n_doc = doc.shape[0]
    if n_doc == 0:
        return np.float32(0.0)
    total = np.float32(0.0)
    i = 0
    while i + 4 <= n_query:
        m0 = m1 = m2 = m3 = np.float32(-np.inf)
        j = 0
        while j + 2 <= n_doc:
            a0 = a1 = a2 = a3 = b0 = b1 = b2 = b3 = np.float32(0.0)
            for k in range(dim):
                d0 = doc[j, k]
                d1 = doc[j + 1, k]
                q0 = query[i, k]
                q1 = query[i + 1, k]
                q2 = query[i + 2, k]
                q3 = query[i + 3, k]
                a0 += q0 * d0
                a1 += q1 * d0
                a2 += q2 * d0
                a3 += q3 * d0
                b0 += q0 * d1
                b1 += q1 * d1
                b2 += q2 * d1
                b3 += q3 * d1
            m0 = max(m0, max(a0, b0))
            m1 = max(m1, max(a1, b1))
            m2 = max(m2, max(a2, b2))
            m3 = max(m3, max(a3, b3))
            j += 2
        if j < n_doc:
            a0 = a1 = a2 = a3 = np.float32(0.0)
            for k in range(dim):
                d0 = doc[j, k]
                a0 += query[i, k] * d0
                a1 += query[i + 1, k] * d0
                a2 += query[i + 2, k] * d0
                a3 += query[i + 3, k] * d0
            m0 = max(m0, a0)
            m1 = max(m1, a1)
            m2 = max(m2, a2)
            m3 = max(m3, a3)
        total += m0 + m1 + m2 + m3
        i += 4
    while i < n_query:  # the last one to three query tokens, two document tokens per pass
        m0 = np.float32(-np.inf)
        j = 0
        while j + 2 <= n_doc:
            a0 = b0 = np.float32(0.0)
            for k in range(dim):
                q0 = query[i, k]
                a0 += q0 * doc[j, k]
                b0 += q0 * doc[j + 1, k]
            m0 = max(m0, max(a0, b0))
            j += 2
        if j < n_doc:
            a0 = np.float32(0.0)
            for k in range(dim):
                a0 += query[i, k] * doc[j, k]
            m0 = max(m0, a0)
        total += m0
        i += 1
    return total


@njit(parallel=True, fastmath=True, nogil=True, cache=True)
def _exhaustive(query, doc_codes, doc_offsets, max_doc_len):
    n_docs = doc_offsets.shape[0] - 1
    dim = doc_codes.shape[1]
    scores = np.empty(n_docs, dtype=np.float32)
    for d in prange(n_docs):
        scratch = np.empty(max_doc_len * dim, dtype=np.uint32)
        doc = decode_rows(doc_codes, doc_offsets[d], doc_offsets[d + 1], scratch)
        scores[d] = _score_one(query, doc)
    return scores


@njit(parallel=True, fastmath=True, nogil=True, cache=True)
def _candidates(query, doc_codes, doc_offsets, candidates, max_doc_len):
    n = candidates.shape[0]
    dim = doc_codes.shape[1]
    scores = np.empty(n, dtype=np.float32)
    for c in prange(n):
        d = candidates[c]
        scratch = np.empty(max_doc_len * dim, dtype=np.uint32)
        doc = decode_rows(doc_codes, doc_offsets[d], doc_offsets[d + 1], scratch)
        scores[c] = _score_one(query, doc)
    return scores


@njit(parallel=True, fastmath=True, nogil=True, cache=True)
def _exhaustive_many(queries, query_offsets, doc_codes, doc_offsets, max_doc_len):
    # Each document is decoded once and scored against every query.
    n_queries = query_offsets.shape[0] - 1
    n_docs = doc_offsets.shape[0] - 1
    dim = doc_codes.shape[1]
    scores = np.empty((n_queries, n_docs), dtype=np.float32)
    for d in prange(n_docs):
        scratch = np.empty(max_doc_len * dim, dtype=np.uint32)
        doc = decode_rows(doc_codes, doc_offsets[d], doc_offsets[d + 1], scratch)
        for q in range(n_queries):
            scores[q, d] = _score_one(queries[query_offsets[q] : query_offsets[q + 1]], doc)
    return scores


def _check(query, doc_codes, doc_offsets):
    if doc_codes.dtype != np.uint16 or doc_codes.ndim != 2:
        raise TypeError(f"doc_codes must be a (n_tokens, dim) uint16 view of float16, got {doc_codes.dtype} {doc_codes.shape}")
    if query.ndim != 2 or query.shape[1] != doc_codes.shape[1]:
        raise ValueError(f"query must be (n_query_tokens, {doc_codes.shape[1]}), got {query.shape}")
    if doc_offsets.ndim != 1 or doc_offsets.shape[0] < 1:
        raise ValueError("doc_offsets must be a 1-D array of n_docs + 1 offsets")
    return (
        np.ascontiguousarray(query, dtype=np.float32),
        np.ascontiguousarray(doc_offsets, dtype=np.int64),
    )


def _max_len(doc_offsets):
    return int(np.diff(doc_offsets).max()) if doc_offsets.shape[0] > 1 else 0


def maxsim_exhaustive(query, doc_codes, doc_offsets, max_doc_len=None):
    """MaxSim of one query against every document.

    query: float32 ``(n_query_tokens, dim)``; doc_codes: uint16 ``(n_tokens, dim)`` (float16 bits);
    doc_offsets: int64 ``(n_docs + 1,)``. Returns float32 ``(n_docs,)``.
    """
    query, doc_offsets = _check(query, doc_codes, doc_offsets)
    if max_doc_len is None:
        max_doc_len = _max_len(doc_offsets)
    return _exhaustive(query, doc_codes, doc_offsets, max_doc_len)


def maxsim_candidates(query, doc_codes, doc_offsets, candidates, max_doc_len=None):
    """MaxSim of one query against the documents ``candidates`` (int64 ``(n,)``); float32 ``(n,)``."""
    query, doc_offsets = _check(query, doc_codes, doc_offsets)
    candidates = np.ascontiguousarray(candidates, dtype=np.int64)
    n_docs = doc_offsets.shape[0] - 1
    if candidates.size and (candidates.min() < 0 or candidates.max() >= n_docs):
        raise IndexError(f"candidate ids must lie in [0, {n_docs}), got [{candidates.min()}, {candidates.max()}]")
    if max_doc_len is None:
        max_doc_len = _max_len(doc_offsets)
    return _candidates(query, doc_codes, doc_offsets, candidates, max_doc_len)


def maxsim_exhaustive_many(queries, query_offsets, doc_codes, doc_offsets, max_doc_len=None):
    """MaxSim of many queries (flat float32 ``(n_tokens, dim)`` + ``query_offsets``) against every
    document; float32 ``(n_queries, n_docs)``."""
    queries, doc_offsets = _check(queries, doc_codes, doc_offsets)
    query_offsets = np.ascontiguousarray(query_offsets, dtype=np.int64)
    if max_doc_len is None:
        max_doc_len = _max_len(doc_offsets)
    return _exhaustive_many(queries, query_offsets, doc_codes, doc_offsets, max_doc_len)


@njit(nogil=True, fastmath=True, cache=True)
def _early_exit(query, doc_codes, doc_offsets, candidates, k, patience, max_doc_len, out):
    # Candidates in first-stage order; stop once `patience` in a row fail to enter the top-k.
    dim = doc_codes.shape[1]
    scratch = np.empty(max(max_doc_len, 1) * dim, dtype=np.uint32)
    best = np.full(k, -np.inf, dtype=np.float32)
    misses = 0
    for c in range(candidates.shape[0]):
        d = candidates[c]
        doc = decode_rows(doc_codes, doc_offsets[d], doc_offsets[d + 1], scratch)
        score = _score_one(query, doc)
        out[c] = score
        worst = 0
        for i in range(1, k):
            if best[i] < best[worst]:
                worst = i
        if score > best[worst]:
            best[worst] = score
            misses = 0
        else:
            misses += 1
            if misses >= patience:
                return c + 1
    return candidates.shape[0]


def maxsim_early_exit(query, doc_codes, doc_offsets, candidates, k, patience, max_doc_len=None):
    """MaxSim of ``candidates`` in order, stopping after ``patience`` consecutive candidates that
    do not enter the running top-``k`` ("early exit", Multivector Reranking in the Era of Strong
    First-Stage Retrievers, 2025). Returns float32 ``(n,)`` scores, -inf for the unscored tail,
    and how many were scored."""
    query, doc_offsets = _check(query, doc_codes, doc_offsets)
    candidates = np.ascontiguousarray(candidates, dtype=np.int64)
    if k < 1 or patience < 1:
        raise ValueError(f"k and patience must be >= 1, got {k} and {patience}")
    if max_doc_len is None:
        max_doc_len = _max_len(doc_offsets)
    out = np.full(candidates.shape[0], -np.inf, dtype=np.float32)
    scored = _early_exit(query, doc_codes, doc_offsets, candidates, k, patience, max_doc_len, out)
    return out, int(scored)


def maxsim_matmul_many(queries, query_offsets, doc_blocks, doc_offsets):
    """MaxSim of many queries against every document, by matrix products (BLAS sgemm): each
    block of documents is decoded once and multiplied with all query tokens together, which
    beats the per-document loop when there are many queries to amortise the decoding over.

    queries: float32 ``(n_query_tokens, dim)`` + query_offsets ``(n_queries + 1,)``;
    doc_blocks: iterable of ``(first_doc, stop_doc, float32 rows of those documents)``;
    doc_offsets: int64 ``(n_docs + 1,)``. Returns float32 ``(n_queries, n_docs)``.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    query_offsets = np.asarray(query_offsets, dtype=np.int64)
    doc_offsets = np.asarray(doc_offsets, dtype=np.int64)
    n_queries = len(query_offsets) - 1
    scores = np.zeros((n_queries, len(doc_offsets) - 1), dtype=np.float32)
    query_lengths = np.diff(query_offsets)
    query_starts = query_offsets[:-1][query_lengths > 0]
    for first, stop, rows in doc_blocks:
        local = doc_offsets[first : stop + 1] - doc_offsets[first]
        lengths = np.diff(local)
        nonempty = np.flatnonzero(lengths > 0)
        if len(nonempty) == 0 or len(query_starts) == 0:
            continue
        sims = queries @ rows.T  # (n_query_tokens, n_rows)
        best = np.maximum.reduceat(sims, local[:-1][nonempty], axis=1)  # best document token per query token
        scores[np.flatnonzero(query_lengths > 0)[:, None], first + nonempty[None, :]] = np.add.reduceat(best, query_starts, axis=0)
    return scores
