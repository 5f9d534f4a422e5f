"""MUVERA fixed-dimensional encodings (Dhulipala et al., 2024, "MUVERA: Multi-Vector Retrieval via
Fixed Dimensional Encodings", section 3), following Google's reference implementation
(graph-mining, sketching/point_cloud/fixed_dimensional_encoding.cc).

For each repetition r of R:
  * ``k_sim`` Gaussian SimHash hyperplanes split space into 2**k_sim partitions; a token's
    partition is the Gray code of its sign bits (``_partition``), so neighbouring partitions
    differ in one bit;
  * each token is projected to ``d_proj`` dims by an AMS sketch (every input dimension goes to one
    random output dimension with a random sign) or kept as is (identity);
  * block ``(r, p)`` of the encoding holds, for a query, the **sum** of its projected tokens in
    partition p (eq. 1), for a document their **centroid** (eq. 2). With ``fill_empty``, an empty
    document block takes the projected token whose sign pattern is nearest in Hamming distance
    to the partition (section 3.1, "filling empty clusters").
Optionally a final Count-Sketch maps the ``R * 2**k_sim * d_proj`` coordinates to ``d_final``.

<q_fde, d_fde> approximates Chamfer / MaxSim similarity (theorem 2.1). Every random matrix is an
argument, drawn once by the caller from a seed and stored, so queries and documents always match.
"""

import numpy as np
from numba import njit, prange

from .fp16 import decode_rows


@njit(inline="always", nogil=True)
def _partition(bits_row, k_sim):
    # Gray-code partition index of a token's SimHash sign bits (AppendToGrayCode in the reference).
    index = 0
    for i in range(k_sim):
        bit = 1 if bits_row[i] > 0 else 0
        index = (index << 1) + (bit ^ (index & 1))
    return index


@njit(inline="always", nogil=True)
def _hamming_to_partition(bits_row, index, k_sim):
    # Sign pattern of partition ``index`` is index ^ (index >> 1); count disagreeing bits.
    pattern = index ^ (index >> 1)
    distance = 0
    for i in range(k_sim - 1, -1, -1):
        bit = 1 if bits_row[i] > 0 else 0
        distance += bit != (pattern & 1)
        pattern >>= 1
    return distance


@njit(inline="always", nogil=True)
def _project(row, r, ams_index, ams_sign, identity, scale, out, start):
    """Add ``scale`` times repetition ``r``'s AMS projection of ``row`` (identity: ``row``) to
    ``out[start : start + d_proj]``."""
    if identity:
        for i in range(row.shape[0]):
            out[start + i] += scale * row[i]
    else:
        for i in range(row.shape[0]):
            out[start + ams_index[r, i]] += scale * ams_sign[r, i] * row[i]


@njit(nogil=True, fastmath=True)
def _encode_one(points, simhash, ams_index, ams_sign, d_proj, is_query, fill_empty, cs_index, cs_sign, out):
    """FDE of one token set ``points`` (n, dim) float32 into ``out`` (d_final or full length).
    The projection is linear: where partitions are no more than tokens, each partition's tokens
    are summed first and the sum projected once (projecting every token, a scattered write per
    dimension, took most of a document's time); else each token is projected."""
    n, dim = points.shape
    reps, k_sim, _ = simhash.shape
    n_parts = 1 << k_sim
    block = n_parts * d_proj
    identity = ams_index.shape[1] == 0
    by_sum = n_parts <= n
    full = np.zeros(reps * block, dtype=np.float32) if cs_index.shape[0] > 0 else out
    full[:] = 0.0
    bits = np.empty((n, k_sim), dtype=np.float32)
    counts = np.empty(n_parts, dtype=np.int64)
    sums = np.empty((n_parts if by_sum else 0, dim), dtype=np.float32)
    for r in range(reps):
        counts[:] = 0
        sums[:] = 0.0
        base = r * block
        for t in range(n):
            for j in range(k_sim):
                acc = np.float32(0.0)
                for i in range(dim):
                    acc += points[t, i] * simhash[r, j, i]
                bits[t, j] = acc
            p = _partition(bits[t], k_sim)
            counts[p] += 1
            if by_sum:
                for i in range(dim):
                    sums[p, i] += points[t, i]
            else:
                _project(points[t], r, ams_index, ams_sign, identity, np.float32(1.0), full, base + p * d_proj)
        for p in range(n_parts):
            start = base + p * d_proj
            scale = np.float32(1.0) if is_query or counts[p] == 0 else np.float32(1.0) / counts[p]  # documents: centroids
            if counts[p] > 0 and by_sum:
                _project(sums[p], r, ams_index, ams_sign, identity, scale, full, start)
            elif counts[p] > 0:
                for j in range(d_proj):
                    full[start + j] *= scale
            elif not is_query and fill_empty and n > 0 and k_sim > 0:
                nearest = 0
                best = k_sim + 1
                for t in range(n):
                    distance = _hamming_to_partition(bits[t], p, k_sim)
                    if distance < best:
                        best = distance
                        nearest = t
                _project(points[nearest], r, ams_index, ams_sign, identity, np.float32(1.0), full, start)
    if cs_index.shape[0] > 0:
        out[:] = 0.0
        for j in range(full.shape[0]):
            out[cs_index[j]] += cs_sign[j] * full[j]


@njit(parallel=True, nogil=True, cache=True)
def _queries(vectors, offsets, simhash, ams_index, ams_sign, d_proj, cs_index, cs_sign, out):
    for q in prange(offsets.shape[0] - 1):
        _encode_one(vectors[offsets[q] : offsets[q + 1]], simhash, ams_index, ams_sign, d_proj, True, False, cs_index, cs_sign, out[q])


@njit(parallel=True, nogil=True, cache=True)
def _documents(codes, offsets, simhash, ams_index, ams_sign, d_proj, fill_empty, cs_index, cs_sign, max_len, out):
    dim = codes.shape[1]
    for d in prange(offsets.shape[0] - 1):
        scratch = np.empty(max_len * dim, dtype=np.float32)
        points = decode_rows(codes, offsets[d], offsets[d + 1], scratch)
        _encode_one(points, simhash, ams_index, ams_sign, d_proj, False, fill_empty, cs_index, cs_sign, out[d])


def fde_dim(reps, k_sim, d_proj, d_final=0):
    """Length of an encoding: ``d_final`` if set, else ``reps * 2**k_sim * d_proj``."""
    return d_final if d_final else reps * (1 << k_sim) * d_proj


def _args(simhash, ams_index, ams_sign, cs_index, cs_sign, dim):
    simhash = np.ascontiguousarray(simhash, dtype=np.float32)
    if simhash.ndim != 3 or simhash.shape[2] != dim:
        raise ValueError(f"simhash must be (reps, k_sim, {dim}), got {simhash.shape}")
    ams_index = np.ascontiguousarray(ams_index, dtype=np.int64).reshape(simhash.shape[0], -1)
    ams_sign = np.ascontiguousarray(ams_sign, dtype=np.float32).reshape(simhash.shape[0], -1)
    if ams_index.shape[1] not in (0, dim):
        raise ValueError(f"ams_index must be (reps, {dim}) or empty for identity, got {ams_index.shape}")
    return simhash, ams_index, ams_sign, np.ascontiguousarray(cs_index, dtype=np.int64), np.ascontiguousarray(cs_sign, dtype=np.float32)


def fde_queries(vectors, offsets, simhash, ams_index, ams_sign, d_proj, cs_index, cs_sign, d_final=0):
    """Query FDEs (per-partition sums) of float32 token vectors + offsets: float32 ``(n, fde_dim)``.

    simhash: float32 ``(reps, k_sim, dim)``, the hyperplanes (the reference's (dim, k_sim) matrix, transposed); ams_index / ams_sign: ``(reps, dim)`` output slot and
    +/-1 of each input dimension (both empty ``(reps, 0)`` for identity, then d_proj == dim);
    cs_index / cs_sign: ``(reps * 2**k_sim * d_proj,)`` Count-Sketch slot and sign (empty: none).
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    simhash, ams_index, ams_sign, cs_index, cs_sign = _args(simhash, ams_index, ams_sign, cs_index, cs_sign, vectors.shape[1])
    offsets = np.ascontiguousarray(offsets, dtype=np.int64)
    out = np.zeros((offsets.shape[0] - 1, fde_dim(simhash.shape[0], simhash.shape[1], d_proj, d_final)), dtype=np.float32)
    _queries(vectors, offsets, simhash, ams_index, ams_sign, d_proj, cs_index, cs_sign, out)
    return out


def fde_documents(codes, offsets, simhash, ams_index, ams_sign, d_proj, fill_empty, cs_index, cs_sign, d_final=0):
    """Document FDEs (per-partition centroids, optional Hamming fill) of float16 token vectors given
    as uint16 ``codes`` ``(n_tokens, dim)`` + offsets: float32 ``(n_docs, fde_dim)``."""
    if codes.dtype != np.uint16:
        raise TypeError(f"codes must be the uint16 view of float16 vectors, got {codes.dtype}")
    simhash, ams_index, ams_sign, cs_index, cs_sign = _args(simhash, ams_index, ams_sign, cs_index, cs_sign, codes.shape[1])
    offsets = np.ascontiguousarray(offsets, dtype=np.int64)
    max_len = int(np.diff(offsets).max()) if offsets.shape[0] > 1 else 0
    out = np.zeros((offsets.shape[0] - 1, fde_dim(simhash.shape[0], simhash.shape[1], d_proj, d_final)), dtype=np.float32)
    _documents(codes, offsets, simhash, ams_index, ams_sign, d_proj, bool(fill_empty), cs_index, cs_sign, max_len, out)
    return out
