"""Top-k selection with a bounded min-heap: O(n log k), no full sort.

Ties are broken towards the lower index, so results are deterministic. Slots beyond the number
of items are filled with index -1 and score -inf (faiss's convention for "no result").
"""

import numpy as np
from numba import njit, prange


@njit(inline="always", nogil=True)
def _worse(score_a, idx_a, score_b, idx_b):
    # True when (score_a, idx_a) ranks below (score_b, idx_b).
    return score_a < score_b or (score_a == score_b and idx_a > idx_b)


@njit(inline="always", nogil=True)
def _sift_down(heap_s, heap_i, pos, size):
    while True:
        left = 2 * pos + 1
        if left >= size:
            break
        child = left
        right = left + 1
        if right < size and _worse(heap_s[right], heap_i[right], heap_s[left], heap_i[left]):
            child = right
        if _worse(heap_s[child], heap_i[child], heap_s[pos], heap_i[pos]):
            heap_s[pos], heap_s[child] = heap_s[child], heap_s[pos]
            heap_i[pos], heap_i[child] = heap_i[child], heap_i[pos]
            pos = child
        else:
            break


@njit(nogil=True, cache=True)
def _topk_one(scores, k, out_idx, out_scores):
    n = scores.shape[0]
    size = min(k, n)
    heap_s = np.empty(max(size, 1), dtype=np.float32)
    heap_i = np.empty(max(size, 1), dtype=np.int64)
    for i in range(size):
        heap_s[i] = scores[i]
        heap_i[i] = i
    for pos in range(size // 2 - 1, -1, -1):
        _sift_down(heap_s, heap_i, pos, size)
    for i in range(size, n):
        if _worse(heap_s[0], heap_i[0], scores[i], i):
            heap_s[0] = scores[i]
            heap_i[0] = i
            _sift_down(heap_s, heap_i, 0, size)
    # Pop worst-first into the back of the output: best ends up first.
    for r in range(size - 1, -1, -1):
        out_idx[r] = heap_i[0]
        out_scores[r] = heap_s[0]
        heap_s[0] = heap_s[r]
        heap_i[0] = heap_i[r]
        _sift_down(heap_s, heap_i, 0, r)
    for r in range(size, k):
        out_idx[r] = -1
        out_scores[r] = -np.inf


@njit(parallel=True, nogil=True, cache=True)
def _topk_rows(scores, k, out_idx, out_scores):
    for q in prange(scores.shape[0]):
        _topk_one(scores[q], k, out_idx[q], out_scores[q])


def topk(scores, k):
    """Indices (int64 ``(k,)``) and scores (float32 ``(k,)``) of the k best of ``scores``, best first."""
    scores = np.ascontiguousarray(scores, dtype=np.float32)
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    out_idx = np.empty(k, dtype=np.int64)
    out_scores = np.empty(k, dtype=np.float32)
    _topk_one(scores, k, out_idx, out_scores)
    return out_idx, out_scores


def topk_rows(scores, k):
    """Row-wise :func:`topk` of a float32 ``(n_rows, n)`` matrix: ``(n_rows, k)`` indices and scores."""
    scores = np.ascontiguousarray(scores, dtype=np.float32)
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    out_idx = np.empty((scores.shape[0], k), dtype=np.int64)
    out_scores = np.empty((scores.shape[0], k), dtype=np.float32)
    _topk_rows(scores, k, out_idx, out_scores)
    return out_idx, out_scores


@njit(inline="always", nogil=True)
def enters_top(best, score):
    """Put ``score`` in the running top-k ``best`` (k slots, -inf while empty) in place of its
    lowest, if it beats it; True when it did (the early-exit rule of kernels.maxsim)."""
    worst = 0
    for i in range(1, best.shape[0]):
        if best[i] < best[worst]:
            worst = i
    if score > best[worst]:
        best[worst] = score
        return True
    return False
