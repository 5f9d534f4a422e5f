"""Late-interaction (MaxSim) scoring, ColBERT's sum over query tokens of the best document token.

    score(q, d) = sum_i max_j <q_i, d_j>          (Khattab & Zaharia, 2020, eq. 3)

Documents are stored as one flat ``(n_tokens, dim)`` float16 matrix, passed here as its uint16
bit pattern, with ``doc_offsets`` (``n_docs + 1`` int64) marking each document's rows. Queries are
float32 ``(n_query_tokens, dim)``. Accumulation is float32. A document with no tokens scores 0.

Each document is decoded to float32 once (F16C, :mod:`kernels.fp16`) into a buffer that stays in
cache, then scored by the register-tiled micro-kernel of :mod:`kernels.simd` against the query
transposed once per call. Work is split into a few contiguous parts per thread, each with its
own buffers, so nothing is allocated per document.

Layout of each kernel (as in ranx): a private body, a parallel loop over documents, and a typed
public function that checks shapes.
"""

import numba
import numpy as np
from numba import njit, prange

from .fp16 import decode_rows
from .simd import query_lanes, score_rows, transpose_queries
from .topk import enters_top


def _parts(n):
    """How many contiguous parts ``n`` documents are split into for the threads (decided here,
    not in the kernels: a kernel that asks Numba for its thread count cannot be cached)."""
    return max(1, min(int(n), 4 * numba.get_num_threads()))


@njit(inline="always", fastmath=True, nogil=True)
def _score_part(qt, starts, query_offsets, doc_codes, doc_offsets, docs, lo, hi, max_doc_len, widest, dim, scores):
    # documents docs[lo:hi] (all documents from lo to hi when docs is empty) against every query;
    # inlined where ``dim`` is a literal, so that every row offset in the tiles is a constant
    scratch = np.empty(max(max_doc_len, 1) * dim, dtype=np.float32)
    best = np.empty(widest, dtype=np.float32)
    for c in range(lo, hi):
        d = docs[c] if docs.shape[0] else c
        start, stop = doc_offsets[d], doc_offsets[d + 1]
        decode_rows(doc_codes, start, stop, scratch)
        for q in range(query_offsets.shape[0] - 1):
            n_query = query_offsets[q + 1] - query_offsets[q]
            scores[q, c] = score_rows(qt, starts[q], query_lanes(n_query), n_query, scratch, 0, stop - start, dim, best)


@njit(parallel=True, fastmath=True, nogil=True, cache=True)
def _score(queries, query_offsets, doc_codes, doc_offsets, docs, n, max_doc_len, parts):
    # scores (n_queries, n) of every query against docs (or, docs empty, the first n documents)
    dim = doc_codes.shape[1]
    qt, starts, widest = transpose_queries(queries, query_offsets)
    scores = np.empty((query_offsets.shape[0] - 1, n), dtype=np.float32)
    for p in prange(parts):
        lo, hi = p * n // parts, (p + 1) * n // parts
        if dim == 384:  # the common widths get code with the width built in (MiniLM / BERT-small, ColBERT)
            _score_part(qt, starts, query_offsets, doc_codes, doc_offsets, docs, lo, hi, max_doc_len, widest, 384, scores)
        elif dim == 128:
            _score_part(qt, starts, query_offsets, doc_codes, doc_offsets, docs, lo, hi, max_doc_len, widest, 128, scores)
        else:
            _score_part(qt, starts, query_offsets, doc_codes, doc_offsets, docs, lo, hi, max_doc_len, widest, dim, scores)
    return scores


_ALL = np.zeros(0, dtype=np.int64)


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
    n_docs = doc_offsets.shape[0] - 1
    return _score(query, np.array([0, len(query)], dtype=np.int64), doc_codes, doc_offsets, _ALL, n_docs, max_doc_len, _parts(n_docs))[0]


def maxsim_candidates(query, doc_codes, doc_offsets, candidates, max_doc_len=None):
    """MaxSim of one query against the documents ``candidates`` (int64 ``(n,)``); float32 ``(n,)``."""
    query, doc_offsets = _check(query, doc_codes, doc_offsets)
    candidates = np.ascontiguousarray(candidates, dtype=np.int64)
    n_docs = doc_offsets.shape[0] - 1
    if candidates.size and (candidates.min() < 0 or candidates.max() >= n_docs):
        raise IndexError(f"candidate ids must lie in [0, {n_docs}), got [{candidates.min()}, {candidates.max()}]")
    if max_doc_len is None:
        max_doc_len = _max_len(doc_offsets)
    n = candidates.shape[0]  # with none, n = 0 scores nothing (an empty ``docs`` stands for every document only up to n)
    return _score(query, np.array([0, len(query)], dtype=np.int64), doc_codes, doc_offsets, candidates, n, max_doc_len, _parts(n))[0]


def maxsim_exhaustive_many(queries, query_offsets, doc_codes, doc_offsets, max_doc_len=None):
    """MaxSim of many queries (flat float32 ``(n_tokens, dim)`` + ``query_offsets``) against every
    document; float32 ``(n_queries, n_docs)``."""
    queries, doc_offsets = _check(queries, doc_codes, doc_offsets)
    query_offsets = np.ascontiguousarray(query_offsets, dtype=np.int64)
    if max_doc_len is None:
        max_doc_len = _max_len(doc_offsets)
    n_docs = doc_offsets.shape[0] - 1
    return _score(queries, query_offsets, doc_codes, doc_offsets, _ALL, n_docs, max_doc_len, _parts(n_docs))


@njit(nogil=True, fastmath=True, cache=True)
def _early_exit(query, doc_codes, doc_offsets, candidates, k, patience, max_doc_len, out):
    # Candidates in first-stage order; stop once `patience` in a row fail to enter the top-k.
    n_query, dim = query.shape
    qt, _, widest = transpose_queries(query, np.array([0, n_query], dtype=np.int64))
    lanes = query_lanes(n_query)
    scratch = np.empty(max(max_doc_len, 1) * dim, dtype=np.float32)
    best_lanes = np.empty(widest, dtype=np.float32)
    best = np.full(k, -np.inf, dtype=np.float32)
    misses = 0
    for c in range(candidates.shape[0]):
        d = candidates[c]
        start, stop = doc_offsets[d], doc_offsets[d + 1]
        decode_rows(doc_codes, start, stop, scratch)
        score = score_rows(qt, 0, lanes, n_query, scratch, 0, stop - start, dim, best_lanes)
        out[c] = score
        if enters_top(best, score):
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
