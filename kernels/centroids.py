"""Centroid-interaction candidate generation (PLAID, Santhanam et al. 2022; WARP, Scheerer et al.
2025): every stored vector is represented by its nearest corpus centroid, so a query token's
similarity to a document is approximated by its similarity to that document's centroids.

Two structures, both built from the per-vector centroid ids:

- inverted lists ``list_offsets`` int64 ``(K + 1,)`` / ``list_docs`` uint32: the documents holding
  a vector assigned to each centroid, in increasing order, each document once per centroid;
- per-document centroid sets ``doc_centroid_offsets`` int64 ``(n_docs + 1,)`` /
  ``doc_centroids`` uint16: each document's distinct centroids.

A query then runs in two passes over its ``(query tokens, K)`` centroid scores:

1. ``probe_gains``: each query token probes its ``p`` best centroids' lists, best first; a
   document met for the first time by token ``i`` gains ``s - m_i``, where ``m_i`` is the
   token's best unprobed centroid score (what WARP imputes for a token whose lists missed the
   document). Summed over tokens (plus the constant ``sum m_i``) this bounds the centroid MaxSim
   of every document met from above for the tokens that found it.
2. ``take_pool`` keeps the best of them by that bound, and ``interaction_scores`` gives those the centroid MaxSim over all their centroids
   (PLAID's centroid interaction), which orders the candidates that exact MaxSim reranks.
"""

import numpy as np
from numba import njit


@njit(nogil=True, cache=True)
def centroid_lists(doc_offsets, centroid_ids, n_centroids):
    """``(doc_centroid_offsets, doc_centroids, list_offsets, list_docs)`` from the centroid id of
    every stored vector (rows ``doc_offsets[d]:doc_offsets[d + 1]`` are document ``d``'s)."""
    n_docs = doc_offsets.shape[0] - 1
    seen = np.full(n_centroids, -1, dtype=np.int64)
    doc_centroid_offsets = np.zeros(n_docs + 1, dtype=np.int64)
    list_offsets = np.zeros(n_centroids + 1, dtype=np.int64)
    for d in range(n_docs):
        distinct = 0
        for r in range(doc_offsets[d], doc_offsets[d + 1]):
            c = np.int64(centroid_ids[r])
            if seen[c] != d:
                seen[c] = d
                distinct += 1
                list_offsets[c + 1] += 1
        doc_centroid_offsets[d + 1] = doc_centroid_offsets[d] + distinct
    for c in range(n_centroids):
        list_offsets[c + 1] += list_offsets[c]
    total = doc_centroid_offsets[n_docs]
    doc_centroids = np.empty(total, dtype=np.uint16)
    list_docs = np.empty(total, dtype=np.uint32)
    cursor = list_offsets[:-1].copy()
    seen[:] = -1
    for d in range(n_docs):
        at = doc_centroid_offsets[d]
        for r in range(doc_offsets[d], doc_offsets[d + 1]):
            c = np.int64(centroid_ids[r])
            if seen[c] != d:
                seen[c] = d
                doc_centroids[at] = c
                at += 1
                list_docs[cursor[c]] = d
                cursor[c] += 1
    return doc_centroid_offsets, doc_centroids, list_offsets, list_docs


@njit(nogil=True, cache=True)
def best_centroids(scores_t, p):
    """Each query token's ``p`` best centroids, best first (ties: the lower id), their scores, and
    the best score left out (the (p + 1)-th; the lowest when all are taken): from ``scores_t``
    float32 ``(K, n_tokens)``, in one pass over it."""
    n_centroids, n_tokens = scores_t.shape
    p = min(p, n_centroids)
    ids = np.empty((n_tokens, p + 1), dtype=np.int64)
    best = np.empty((n_tokens, p + 1), dtype=np.float32)
    missing = np.empty(n_tokens, dtype=np.float32)
    for i in range(n_tokens):
        size = 0
        for c in range(n_centroids):
            s = scores_t[c, i]
            if size == p + 1 and s <= best[i, p]:
                continue
            at = size if size < p + 1 else p  # insert, keeping the p + 1 best sorted (descending)
            while at > 0 and best[i, at - 1] < s:
                if at < p + 1:
                    best[i, at] = best[i, at - 1]
                    ids[i, at] = ids[i, at - 1]
                at -= 1
            best[i, at] = s
            ids[i, at] = c
            if size < p + 1:
                size += 1
        if p < n_centroids:
            missing[i] = best[i, p]
        else:
            low = scores_t[0, i]
            for c in range(n_centroids):
                low = min(low, scores_t[c, i])
            missing[i] = low
    return np.ascontiguousarray(ids[:, :p]), np.ascontiguousarray(best[:, :p]), missing


@njit(nogil=True, cache=True)
def probe_gains(probed, probed_scores, missing, list_offsets, list_docs, allowed, slot, touched, gains, marks):
    """Pass 1 for one query: ``probed`` int64 ``(n_tokens, p)`` centroid ids, best first, with
    their ``probed_scores``; ``missing`` float32 ``(n_tokens,)`` each token's best unprobed score;
    ``allowed`` uint8 ``(n_docs,)`` (empty: every document). ``slot`` int32 ``(n_docs,)`` starts at
    zero: a document met gets the next place in ``touched`` (its id), ``gains`` (float32) and
    ``marks`` (int32, the last token that met it), all as long as the probed lists together, and
    ``slot`` holds that place + 1, so that the only per-document array read at random is ``slot``.
    Returns how many documents were met; :func:`take_pool` puts ``slot`` back to zero."""
    n_touched = 0
    check = allowed.shape[0] > 0
    for i in range(probed.shape[0]):
        mark = np.int32(i + 1)
        for j in range(probed.shape[1]):
            c = probed[i, j]
            extra = probed_scores[i, j] - missing[i]
            for at in range(list_offsets[c], list_offsets[c + 1]):
                d = np.int64(list_docs[at])
                s = np.int64(slot[d]) - 1
                if s < 0:
                    if check and allowed[d] == 0:
                        continue
                    s = n_touched
                    slot[d] = s + 1
                    touched[s] = d
                    gains[s] = extra
                    marks[s] = mark
                    n_touched += 1
                elif marks[s] != mark:  # a token's first (best) list to meet a document counts
                    marks[s] = mark
                    gains[s] += extra
    return n_touched


_BINS = 4096


@njit(nogil=True, cache=True)
def _bin(gain, low, scale):
    """The histogram bin of ``gain``: 0 to _BINS, +inf in the top one, -inf and NaN in the bottom one."""
    if np.isnan(gain) or gain == -np.inf:
        return 0
    if gain == np.inf:
        return _BINS
    return min(max(np.int64((np.float64(gain) - low) * scale), 0), _BINS)


@njit(nogil=True, cache=True)
def take_pool(touched, gains, slot, pool):
    """The ``pool`` documents of ``touched`` with the highest ``gains`` (ties: the lower id), in no
    particular order, found with a histogram of the gains and a sort of its edge bin only; puts
    ``slot`` of every touched document back to zero. A NaN gain counts as the lowest."""
    met = touched.shape[0]
    for k in range(met):
        slot[touched[k]] = 0
    if met <= pool:
        return touched.copy()
    low, high = np.inf, -np.inf
    for k in range(met):
        if np.isfinite(gains[k]):
            low = min(low, np.float64(gains[k]))
            high = max(high, np.float64(gains[k]))
    # (g - low) * scale only grows with g, so a higher bin never holds a lower gain
    scale = _BINS / (high - low) if high > low else 0.0
    counts = np.zeros(_BINS + 1, dtype=np.int64)
    for k in range(met):
        counts[_bin(gains[k], low, scale)] += 1
    above, edge = 0, _BINS
    while above + counts[edge] < pool:
        above += counts[edge]
        edge -= 1
    out = np.empty(pool, dtype=np.int64)
    edge_gains = np.empty(counts[edge], dtype=np.float32)
    edge_docs = np.empty(counts[edge], dtype=np.int64)
    n_out, n_edge = 0, 0
    for k in range(met):
        b = _bin(gains[k], low, scale)
        if b > edge:
            out[n_out] = touched[k]
            n_out += 1
        elif b == edge:
            edge_gains[n_edge] = gains[k]
            edge_docs[n_edge] = touched[k]
            n_edge += 1
    edge_gains = np.where(np.isnan(edge_gains), -np.inf, edge_gains)
    by_id = np.argsort(edge_docs, kind="mergesort")
    order = by_id[np.argsort(-edge_gains[by_id], kind="mergesort")]  # gain descending, then id
    for e in range(pool - n_out):
        out[n_out + e] = edge_docs[order[e]]
    return out


@njit(nogil=True, cache=True)
def interaction_scores(scores_t, docs, doc_centroid_offsets, doc_centroids):
    """Pass 2: the centroid MaxSim of each of ``docs``: for every query token the best score among
    the document's centroids, summed; ``scores_t`` float32 ``(K, n_tokens)``."""
    n_tokens = scores_t.shape[1]
    out = np.empty(docs.shape[0], dtype=np.float32)
    best = np.empty(n_tokens, dtype=np.float32)
    for k in range(docs.shape[0]):
        d = docs[k]
        best[:] = -np.inf
        for at in range(doc_centroid_offsets[d], doc_centroid_offsets[d + 1]):
            row = scores_t[np.int64(doc_centroids[at])]
            for i in range(n_tokens):
                if row[i] > best[i]:
                    best[i] = row[i]
        total = np.float32(0.0)
        for i in range(n_tokens):
            total += best[i]
        out[k] = total
    return out
