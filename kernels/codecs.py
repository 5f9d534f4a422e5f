"""MaxSim over compressed token vectors, decoded document by document inside the kernel.

Codecs (the arrays stay compressed in memory; one document at a time is decoded into a float32
scratch buffer and scored, so the whole index is never decompressed):

- ``INT8``: ``codes`` uint8 ``(n, dim)`` holding ``q + 128`` with ``q = round(x / s)`` in
  [-127, 127] and ``s = max|x| / 127`` per token (``scales`` float32 ``(n,)``).
- ``RESIDUAL``: ColBERTv2's residual compression (Santhanam et al., 2022, section 3.3): a token is
  its nearest corpus centroid (``centroid_ids`` uint16 ``(n,)`` into ``centroids`` float32
  ``(K, dim)``) plus a ``bits``-bit bucket index per dimension, packed little-endian into
  ``codes`` uint8 ``(n, dim * bits / 8)``; bucket ``b`` of dimension ``k`` decodes to
  ``values[k, b]``. The decoded vector is re-normalised to unit length, as the encoder's were.
"""

import numpy as np
from numba import njit, prange

from .maxsim import _ALL, _parts
from .simd import query_lanes, score_rows, transpose_queries
from .topk import enters_top

INT8 = 1
RESIDUAL = 2


@njit(inline="always", fastmath=True, nogil=True)
def _decode(codec, codes, scales, centroid_ids, centroids, table, bits, start, stop, out):
    n = stop - start
    dim = out.shape[1]
    if codec == INT8:
        for i in range(n):
            s = scales[start + i]
            for k in range(dim):
                out[i, k] = (np.float32(codes[start + i, k]) - np.float32(128.0)) * s
    else:
        # table[j, byte] holds what the dims packed in code byte j decode to (codec.table)
        per = 8 // bits
        for i in range(n):
            c = centroid_ids[start + i]
            norm = np.float32(0.0)
            for j in range(codes.shape[1]):
                row = table[j, codes[start + i, j]]
                for t in range(per):
                    x = centroids[c, j * per + t] + row[t]
                    out[i, j * per + t] = x
                    norm += x * x
            if norm > 0:
                inv = np.float32(1.0) / np.sqrt(norm)
                for k in range(dim):
                    out[i, k] *= inv
    return out[:n]


@njit(parallel=True, fastmath=True, nogil=True, cache=True)
def _decode_all(codec, codes, scales, centroid_ids, centroids, table, bits, first, out, block):
    # rows first:first + len(out) into out, in parallel blocks
    n = out.shape[0]
    for b in prange((n + block - 1) // block):
        start = b * block
        stop = min(n, start + block)
        _decode(codec, codes, scales, centroid_ids, centroids, table, bits, first + start, first + stop, out[start:stop])


@njit(parallel=True, fastmath=True, nogil=True, cache=True)
def _score(queries, query_offsets, codec, codes, scales, centroid_ids, centroids, table, bits, doc_offsets, docs, n, max_doc_len, parts):
    # scores (n_queries, n) of every query against docs (or, docs empty, the first n documents);
    # each document is decoded once for all the queries
    dim = queries.shape[1]
    qt, starts, widest = transpose_queries(queries, query_offsets)
    scores = np.empty((query_offsets.shape[0] - 1, n), dtype=np.float32)
    for p in prange(parts):
        scratch = np.empty((max_doc_len, dim), dtype=np.float32)
        best = np.empty(widest, dtype=np.float32)
        for c in range(p * n // parts, (p + 1) * n // parts):
            d = docs[c] if docs.shape[0] else c
            _decode(codec, codes, scales, centroid_ids, centroids, table, bits, doc_offsets[d], doc_offsets[d + 1], scratch)
            for q in range(query_offsets.shape[0] - 1):
                n_query = query_offsets[q + 1] - query_offsets[q]
                scores[q, c] = score_rows(qt, starts[q], query_lanes(n_query), n_query, scratch, 0, doc_offsets[d + 1] - doc_offsets[d], dim, best)
    return scores


@njit(nogil=True, fastmath=True, cache=True)
def _early_exit(query, codec, codes, scales, centroid_ids, centroids, table, bits, doc_offsets, candidates, k, patience, max_doc_len, out):
    # kernels.maxsim._early_exit with a decode step: candidates in first-stage order, stop once
    # `patience` in a row fail to enter the running top-k
    n_query, dim = query.shape
    qt, _, widest = transpose_queries(query, np.array([0, n_query], dtype=np.int64))
    lanes = query_lanes(n_query)
    scratch = np.empty((max(max_doc_len, 1), dim), dtype=np.float32)
    best_lanes = np.empty(widest, dtype=np.float32)
    best = np.full(k, -np.inf, dtype=np.float32)
    misses = 0
    for c in range(candidates.shape[0]):
        d = candidates[c]
        start, stop = doc_offsets[d], doc_offsets[d + 1]
        _decode(codec, codes, scales, centroid_ids, centroids, table, bits, start, stop, scratch)
        score = score_rows(qt, 0, lanes, n_query, scratch, 0, stop - start, dim, best_lanes)
        out[c] = score
        if enters_top(best, score):
            misses = 0
        else:
            misses += 1
            if misses >= patience:
                return c + 1
    return candidates.shape[0]


def byte_table(values: np.ndarray, bits: int) -> np.ndarray:
    """float32 ``(dim * bits / 8, 256, 8 / bits)``: for code byte ``j`` holding ``b``, what each of
    the dims packed in it decodes to (``values[k, bucket]``): one lookup per byte instead of a
    shift, a mask and a lookup per dimension."""
    per = 8 // bits
    dim = values.shape[0]
    byte = np.arange(256)[:, None]
    buckets = (byte >> (np.arange(per)[None, :] * bits)) & ((1 << bits) - 1)  # (256, per)
    dims = np.arange(dim).reshape(dim // per, per)  # (n_bytes, per)
    return np.ascontiguousarray(values[dims[:, None, :], buckets[None, :, :]], dtype=np.float32)


class CodedVectors:
    """The arrays of one compressed token matrix, in the kernels' types (see the module doc)."""

    def __init__(self, codec, dim, codes, scales=None, centroid_ids=None, centroids=None, values=None, bits=0):
        if codec not in (INT8, RESIDUAL):
            raise ValueError(f"unknown codec id {codec}")
        self.codec, self.dim, self.bits = int(codec), int(dim), int(bits)
        self.codes = codes
        if codes.dtype != np.uint8 or codes.ndim != 2:
            raise TypeError(f"codes must be a 2-D uint8 array, got {codes.dtype} {codes.shape}")
        n = codes.shape[0]
        self.scales = np.zeros(0, np.float32) if scales is None else scales
        self.centroid_ids = np.zeros(0, np.uint16) if centroid_ids is None else centroid_ids
        self.centroids = np.zeros((1, dim), np.float32) if centroids is None else np.ascontiguousarray(centroids, dtype=np.float32)
        self.values = np.zeros((dim, 1), np.float32) if values is None else np.ascontiguousarray(values, dtype=np.float32)
        self.table = np.zeros((1, 1, 1), np.float32)
        if codec == INT8 and (codes.shape[1] != dim or self.scales.shape != (n,)):
            raise ValueError("int8 codes must be (n, dim) with one scale per row")
        if codec == RESIDUAL:
            if bits not in (1, 2, 4, 8) or codes.shape[1] * 8 != dim * bits or self.centroid_ids.shape != (n,):
                raise ValueError("residual codes must be (n, dim * bits / 8) with one centroid id per row")
            if self.values.shape != (dim, 1 << bits) or self.centroids.shape[1] != dim:
                raise ValueError("residual values must be (dim, 2**bits) and centroids (K, dim)")
            self.table = byte_table(self.values, bits)

    def __len__(self):
        return self.codes.shape[0]

    def _args(self):
        return (self.codec, self.codes, self.scales, self.centroid_ids, self.centroids, self.table, self.bits)

    def decode(self, start=0, stop=None, block=4096):
        """Rows ``start:stop`` decoded to float32 ``(stop - start, dim)``."""
        stop = len(self) if stop is None else stop
        out = np.empty((stop - start, self.dim), dtype=np.float32)
        if stop > start:
            _decode_all(*self._args(), start, out, block)
        return out


def maxsim_codes_candidates(query, coded, doc_offsets, positions, max_doc_len):
    """MaxSim of one query (float32 ``(n_query_tokens, dim)``) against the documents at
    ``positions`` (int64) of a :class:`CodedVectors` matrix. Returns float32 ``(len(positions),)``."""
    query = np.ascontiguousarray(query, dtype=np.float32)
    if query.ndim != 2 or query.shape[1] != coded.dim:
        raise ValueError(f"query must be (n_query_tokens, {coded.dim}), got {query.shape}")
    positions = np.ascontiguousarray(positions, dtype=np.int64)
    offsets = np.ascontiguousarray(doc_offsets, dtype=np.int64)
    one = np.array([0, len(query)], dtype=np.int64)
    return _score(query, one, *coded._args(), offsets, positions, len(positions), max(int(max_doc_len), 1), _parts(len(positions)))[0]


def maxsim_codes_many(queries, query_offsets, coded, doc_offsets, max_doc_len):
    """MaxSim of several queries (flat float32 + offsets) against every document: ``(n_queries, n_docs)``."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if queries.ndim != 2 or queries.shape[1] != coded.dim:
        raise ValueError(f"queries must be (n_query_tokens, {coded.dim}), got {queries.shape}")
    n_docs = len(doc_offsets) - 1
    return _score(
        queries, np.ascontiguousarray(query_offsets, dtype=np.int64), *coded._args(), np.ascontiguousarray(doc_offsets, dtype=np.int64), _ALL, n_docs,
        max(int(max_doc_len), 1), _parts(n_docs),
    )


def maxsim_codes_early_exit(query, coded, doc_offsets, candidates, k, patience, max_doc_len):
    """:func:`kernels.maxsim.maxsim_early_exit` over a :class:`CodedVectors` matrix: MaxSim of one
    query (float32 ``(n_query_tokens, dim)``) against the documents ``candidates`` (int64
    ``(n,)``) in their order, stopping after ``patience`` consecutive candidates that do not enter
    the running top-``k``. ``doc_offsets``: int64 ``(n_docs + 1,)``; ``max_doc_len``: at least the
    longest candidate's token count (the size of the decode buffer). Returns float32 ``(n,)``
    scores, -inf for the unscored tail, and how many were scored."""
    query = np.ascontiguousarray(query, dtype=np.float32)
    if query.ndim != 2 or query.shape[1] != coded.dim:
        raise ValueError(f"query must be (n_query_tokens, {coded.dim}), got {query.shape}")
    offsets = np.ascontiguousarray(doc_offsets, dtype=np.int64)
    if offsets.ndim != 1 or offsets.shape[0] < 1:
        raise ValueError("doc_offsets must be a 1-D array of n_docs + 1 offsets")
    candidates = np.ascontiguousarray(candidates, dtype=np.int64)
    if candidates.ndim != 1:
        raise ValueError(f"candidates must be a 1-D array of document ids, got shape {candidates.shape}")
    if k < 1 or patience < 1:
        raise ValueError(f"k and patience must be >= 1, got {k} and {patience}")
    n_docs = offsets.shape[0] - 1
    if candidates.size and (candidates.min() < 0 or candidates.max() >= n_docs):
        raise IndexError(f"candidate ids must lie in [0, {n_docs}), got [{candidates.min()}, {candidates.max()}]")
    # the kernel decodes into a buffer of max_doc_len rows without bounds checks: a longer
    # candidate would write past it
    longest = int((offsets[candidates + 1] - offsets[candidates]).max()) if candidates.size else 0
    if int(max_doc_len) < longest:
        raise ValueError(f"max_doc_len {max_doc_len} is shorter than the longest candidate ({longest} tokens)")
    out = np.full(candidates.shape[0], -np.inf, dtype=np.float32)
    scored = _early_exit(query, *coded._args(), offsets, candidates, int(k), int(patience), int(max_doc_len), out)
    return out, int(scored)
