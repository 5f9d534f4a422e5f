"""Kernels against plain NumPy references, on hand-made and Hypothesis-drawn ragged shapes.

The whole module runs twice: compiled, and (test_same_results_without_jit) again in a subprocess
with NUMBA_DISABLE_JIT=1, so the Python semantics of the kernels are checked too.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import maxsim_reference
from mvr._kernels import (
    maxsim_candidates,
    maxsim_codes_candidates,
    maxsim_codes_early_exit,
    maxsim_codes_many,
    maxsim_early_exit,
    maxsim_exhaustive,
    maxsim_exhaustive_many,
    maxsim_matmul_many,
    topk,
    topk_rows,
)
from mvr._kernels.codecs import INT8, RESIDUAL, CodedVectors
from mvr._kernels.fp16 import decode_rows

NO_JIT = os.environ.get("NUMBA_DISABLE_JIT") == "1"
EXAMPLES = 10 if NO_JIT else 60


def _unit(rng, n, dim):
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _corpus(rng, lengths, dim):
    lengths = np.asarray(lengths, dtype=np.int64)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    vectors = _unit(rng, int(offsets[-1]), dim).astype(np.float16)
    docs = [vectors[offsets[i] : offsets[i + 1]].astype(np.float32) for i in range(len(lengths))]
    return vectors.view(np.uint16), offsets, docs


def test_fp16_decode_matches_numpy_for_every_half():
    codes = np.arange(1 << 16, dtype=np.uint16).reshape(-1, 8)  # subnormals, infinities and NaN included
    decoded = decode_rows(codes, 0, codes.shape[0], np.empty(codes.size, dtype=np.float32))
    expected = codes.view(np.float16).astype(np.float32)
    np.testing.assert_array_equal(decoded, expected)  # NaN == NaN here


def test_fp16_decode_without_f16c_matches_numpy_for_every_finite_half():
    import numba
    from numba import njit

    if numba.config.DISABLE_JIT:
        pytest.skip("the fall-back is an LLVM bit cast; without the JIT NumPy decodes instead")

    from mvr._kernels.simd import _half_bits

    @njit
    def decode(bits, out):
        for i in range(bits.shape[0]):
            out[i] = _half_bits(bits[i])

    bits = np.arange(1 << 16, dtype=np.uint16)
    bits = bits[np.isfinite(bits.view(np.float16))]
    out = np.empty(bits.shape[0], dtype=np.float32)
    decode(bits, out)
    np.testing.assert_array_equal(out, bits.view(np.float16).astype(np.float32))


def test_exhaustive_matches_reference_with_empty_and_one_token_docs():
    rng = np.random.default_rng(0)
    codes, offsets, docs = _corpus(rng, [5, 0, 1, 17, 3], dim=24)
    query = _unit(rng, 7, 24)
    scores = maxsim_exhaustive(query, codes, offsets)
    np.testing.assert_allclose(scores, maxsim_reference(query, docs), rtol=1e-5, atol=1e-5)
    assert scores[1] == 0.0


def test_every_register_block_tail_is_scored():
    # the kernel takes 4 query tokens x 2 document tokens at a time: every remainder of each
    rng = np.random.default_rng(7)
    codes, offsets, docs = _corpus(rng, [1, 2, 3, 4, 5], dim=40)
    for n_query in range(1, 10):
        query = _unit(rng, n_query, 40)
        np.testing.assert_allclose(maxsim_exhaustive(query, codes, offsets), maxsim_reference(query, docs), rtol=1e-5, atol=1e-5)


def test_candidates_score_only_the_candidates_in_their_order():
    rng = np.random.default_rng(1)
    codes, offsets, docs = _corpus(rng, [4, 9, 2, 6, 1, 8], dim=16)
    query = _unit(rng, 5, 16)
    candidates = np.array([5, 0, 3, 3], dtype=np.int64)
    expected = maxsim_reference(query, [docs[c] for c in candidates])
    np.testing.assert_allclose(maxsim_candidates(query, codes, offsets, candidates), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(IndexError):
        maxsim_candidates(query, codes, offsets, np.array([6]))


def test_many_queries_equal_one_at_a_time():
    rng = np.random.default_rng(2)
    codes, offsets, _ = _corpus(rng, [3, 8, 1, 0, 12], dim=8)
    queries = [_unit(rng, n, 8) for n in (1, 4, 9)]
    q_offsets = np.array([0, 1, 5, 14], dtype=np.int64)
    many = maxsim_exhaustive_many(np.concatenate(queries), q_offsets, codes, offsets)
    for i, q in enumerate(queries):
        np.testing.assert_allclose(many[i], maxsim_exhaustive(q, codes, offsets), rtol=1e-6, atol=1e-6)


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 9), min_size=1, max_size=14),
    query_lengths=st.lists(st.integers(0, 5), min_size=1, max_size=5),
    block=st.integers(1, 40),
    seed=st.integers(0, 2**32 - 1),
)
def test_matmul_many_equals_the_loop_kernel(lengths, query_lengths, block, seed):
    rng = np.random.default_rng(seed)
    codes, offsets, _ = _corpus(rng, lengths, dim=8)
    q_offsets = np.concatenate([[0], np.cumsum(query_lengths)]).astype(np.int64)
    queries = _unit(rng, int(q_offsets[-1]), 8)
    floats = np.asarray(codes).view(np.float16).astype(np.float32)
    blocks, first = [], 0
    while first < len(lengths):  # blocks of about `block` rows, never splitting a document
        stop = first + 1
        while stop < len(lengths) and offsets[stop + 1] - offsets[first] <= block:
            stop += 1
        blocks.append((first, stop, floats[offsets[first] : offsets[stop]]))
        first = stop
    many = maxsim_matmul_many(queries, q_offsets, blocks, offsets)
    expected = maxsim_exhaustive_many(queries, q_offsets, codes, offsets)
    np.testing.assert_allclose(many, expected, rtol=1e-5, atol=1e-5)


def test_dimension_mismatch_is_refused():
    rng = np.random.default_rng(3)
    codes, offsets, _ = _corpus(rng, [2, 2], dim=8)
    with pytest.raises(ValueError, match="n_query_tokens, 8"):
        maxsim_exhaustive(_unit(rng, 3, 16), codes, offsets)


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 12), min_size=1, max_size=12),
    n_query=st.integers(1, 6),
    dim=st.sampled_from([1, 3, 8, 33]),
    k=st.integers(1, 20),
    seed=st.integers(0, 2**16),
)
def test_search_equals_reference_ranking(lengths, n_query, dim, k, seed):
    rng = np.random.default_rng(seed)
    codes, offsets, docs = _corpus(rng, lengths, dim)
    query = _unit(rng, n_query, dim)
    scores = maxsim_exhaustive(query, codes, offsets)
    reference = maxsim_reference(query, docs)
    np.testing.assert_allclose(scores, reference, rtol=1e-4, atol=1e-4)
    idx, top = topk(scores, k)
    n = len(lengths)
    assert idx.shape == (k,) and top.shape == (k,)
    assert (idx[n:] == -1).all() and np.isneginf(top[n:]).all()  # k > n_docs pads like faiss
    order = sorted(range(n), key=lambda i: (-scores[i], i))[:k]
    assert idx[: min(k, n)].tolist() == order


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    rows=st.integers(1, 5),
    n=st.integers(0, 40),
    k=st.integers(1, 50),
    seed=st.integers(0, 2**16),
)
def test_topk_rows_equals_stable_argsort(rows, n, k, seed):
    rng = np.random.default_rng(seed)
    scores = rng.integers(-3, 3, size=(rows, n)).astype(np.float32)  # many ties
    idx, top = topk_rows(scores, k)
    for r in range(rows):
        expected = np.argsort(-scores[r], kind="stable")[:k]
        assert idx[r, : len(expected)].tolist() == expected.tolist()
        np.testing.assert_array_equal(top[r, : len(expected)], scores[r, expected])
        assert (idx[r, len(expected) :] == -1).all()


@pytest.mark.skipif(NO_JIT, reason="already running without JIT")
def test_same_results_without_jit():
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    result = subprocess.run(
        # this file's kernels, and the clustering and codec kernels of test_compact.py
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "test_compact.py", "-k", "not derived and not index and not refuses"],
        env=env,
        capture_output=True,
        text=True,
        cwd=os.path.dirname(__file__),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert " passed" in result.stdout


def test_early_exit_stops_after_patience_misses():
    rng = np.random.default_rng(5)
    codes, offsets, docs = _corpus(rng, [4, 6, 3, 5, 2, 7, 4, 3], dim=8)
    query = _unit(rng, 3, 8)
    full = maxsim_reference(query, docs)
    order = np.argsort(-full, kind="stable")  # best first: every later candidate misses the top-2
    scores, scored = maxsim_early_exit(query, codes, offsets, order, k=2, patience=3)
    assert scored == 5 and np.isneginf(scores[5:]).all()
    np.testing.assert_allclose(scores[:5], full[order[:5]], rtol=1e-5, atol=1e-5)
    scores, scored = maxsim_early_exit(query, codes, offsets, order[::-1].copy(), k=2, patience=3)
    assert scored == 8  # worst first: each candidate enters the top-2, nothing is skipped


# -- every width the kernels specialise, against the float64 reference ------------------------
# _score compiles 384 and 128 with the width built in and every other width generically; the
# coded-vector and early-exit kernels take the generic path. Query lengths cover one token, a
# short and a full 8-lane panel, one token past it, a 16-lane panel plus an 8-lane tail, and two
# 16-lane panels; document lengths 0 to 15 cover every remainder of the 6- and 8-row tiles.

WIDTHS = [96] if NO_JIT else [128, 384, 96]  # without the JIT every width runs the same Python
QUERY_LENGTHS = (1, 5, 8, 9, 17, 32)
N_DOCS = 20 if NO_JIT else 48  # the pure-Python run decodes value by value
# float16 documents, float32 query and accumulation: errors of a few float32 ulps per product,
# summed over up to 32 query tokens
TOL = dict(rtol=1e-4, atol=1e-3)
CODECS = ["int8", "residual-1", "residual-2", "residual-4"]


def _lengths(rng, n_docs):
    tails = np.arange(16)
    return np.concatenate([tails, rng.integers(0, 40, size=max(n_docs - len(tails), 0))])[:n_docs]


def _offsets(lengths):
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


def _split(rows, offsets):
    return [rows[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]


def _flat_queries(rng, dim, lengths):
    return _unit(rng, int(sum(lengths)), dim), _offsets(lengths)


def _stop_point(scores, k, patience):
    """Plain-Python early exit over already computed scores: how many candidates are scored, and
    whether the rule stopped (rather than running out of candidates)."""
    top, misses = [], 0
    for c, score in enumerate(scores):
        if len(top) < k or score > min(top):
            if len(top) == k:
                top.remove(min(top))
            top.append(score)
            misses = 0
        else:
            misses += 1
            if misses >= patience:
                return c + 1, True
    return len(scores), False


@pytest.mark.parametrize("dim", WIDTHS)
def test_exhaustive_and_candidates_match_reference_at_every_width(dim):
    rng = np.random.default_rng(dim)
    codes, offsets, docs = _corpus(rng, _lengths(rng, N_DOCS), dim)
    candidates = np.concatenate([rng.permutation(N_DOCS), [0, 3, 3]]).astype(np.int64)  # any order, repeats, empty docs
    for n_query in QUERY_LENGTHS:
        query = _unit(rng, n_query, dim)
        expected = maxsim_reference(query, docs)
        np.testing.assert_allclose(maxsim_exhaustive(query, codes, offsets), expected, **TOL, err_msg=f"{n_query} query tokens")
        np.testing.assert_allclose(maxsim_candidates(query, codes, offsets, candidates), expected[candidates], **TOL, err_msg=f"{n_query} query tokens")


@pytest.mark.parametrize("dim", WIDTHS)
def test_many_queries_match_reference_at_every_width(dim):
    rng = np.random.default_rng(dim + 1)
    codes, offsets, docs = _corpus(rng, _lengths(rng, N_DOCS), dim)
    query_lengths = (0,) + QUERY_LENGTHS  # an empty query scores 0 everywhere
    queries, q_offsets = _flat_queries(rng, dim, query_lengths)
    expected = np.stack([maxsim_reference(q, docs) for q in _split(queries, q_offsets)])
    np.testing.assert_allclose(maxsim_exhaustive_many(queries, q_offsets, codes, offsets), expected, **TOL)
    floats = codes.view(np.float16).astype(np.float32)
    blocks = [(first, min(first + 7, N_DOCS), floats[offsets[first] : offsets[min(first + 7, N_DOCS)]]) for first in range(0, N_DOCS, 7)]
    np.testing.assert_allclose(maxsim_matmul_many(queries, q_offsets, blocks, offsets), expected, **TOL)


def _check_early_exit(early_exit, candidates_scores, n, rng):
    """``early_exit(candidates, k, patience)`` against ``candidates_scores(candidates)``: with
    patience beyond the list it scores every candidate as the candidates kernel does; with a small
    one it stops exactly where the rule applied to its own scores says."""
    order = rng.permutation(n).astype(np.int64)
    full = candidates_scores(order)
    scores, scored = early_exit(order, 3, n + 1)
    assert scored == n
    np.testing.assert_allclose(scores, full, rtol=1e-6, atol=1e-6)
    stopped_early = False
    for k, patience in [(1, 1), (1, 3), (3, 2), (5, 4), (10, 1)]:
        for candidates in (order, order[np.argsort(-full, kind="stable")]):  # random, then best first
            scores, scored = early_exit(candidates, k, patience)
            # the rule over the kernel's own scores (a tie must not hinge on the last bit of a score
            # computed by another kernel): it stops exactly at the last one scored, unless that is
            # the last candidate (then the rule may stop there or run out)
            count, stopped = _stop_point(scores[:scored], k, patience)
            assert count == scored and (stopped or scored == n), (k, patience)
            assert np.isneginf(scores[scored:]).all() and np.isfinite(scores[:scored]).all()
            np.testing.assert_allclose(scores[:scored], candidates_scores(candidates)[:scored], rtol=1e-6, atol=1e-6)
            stopped_early |= scored < n
    assert stopped_early
    for k, patience in [(1, 2), (2, 3)]:  # one document again and again: the first k fill the top-k, a tie does not enter
        scores, scored = early_exit(np.full(10, order[0], dtype=np.int64), k, patience)
        assert scored == k + patience and (scores[:scored] == scores[0]).all()


@pytest.mark.parametrize("dim", WIDTHS)
@pytest.mark.parametrize("n_query", [1, 9, 32])
def test_early_exit_scores_like_candidates_and_stops_by_the_rule(dim, n_query):
    rng = np.random.default_rng(dim * 100 + n_query)
    codes, offsets, docs = _corpus(rng, _lengths(rng, N_DOCS), dim)
    query = _unit(rng, n_query, dim)
    np.testing.assert_allclose(maxsim_early_exit(query, codes, offsets, np.arange(N_DOCS), 1, N_DOCS)[0], maxsim_reference(query, docs), **TOL)
    _check_early_exit(
        lambda c, k, patience: maxsim_early_exit(query, codes, offsets, c, k, patience),
        lambda c: maxsim_candidates(query, codes, offsets, c),
        N_DOCS,
        rng,
    )


def _coded(rng, codec, dim, n):
    """Random compressed rows of one codec: int8 rows scaled to unit length, residual rows over
    unit centroids (the kernel re-normalises what it decodes)."""
    if codec == "int8":
        codes = rng.integers(0, 256, size=(n, dim), dtype=np.uint8)
        norms = np.linalg.norm(codes.astype(np.float32) - 128, axis=1)
        return CodedVectors(INT8, dim, codes, scales=(1 / np.maximum(norms, 1)).astype(np.float32))
    bits = int(codec.split("-")[1])
    n_centroids = 12
    return CodedVectors(
        RESIDUAL,
        dim,
        rng.integers(0, 256, size=(n, dim * bits // 8), dtype=np.uint8),
        centroid_ids=rng.integers(0, n_centroids, size=n).astype(np.uint16),
        centroids=_unit(rng, n_centroids, dim),
        values=(0.05 * rng.standard_normal((dim, 1 << bits))).astype(np.float32),
        bits=bits,
    )


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("dim", WIDTHS)
def test_codes_kernels_match_reference_at_every_width(dim, codec):
    rng = np.random.default_rng(dim + len(codec))
    lengths = _lengths(rng, N_DOCS)
    offsets = _offsets(lengths)
    coded = _coded(rng, codec, dim, int(offsets[-1]))
    docs = _split(coded.decode(), offsets)
    max_len = int(lengths.max())
    candidates = np.concatenate([rng.permutation(N_DOCS), [0, 5, 5]]).astype(np.int64)
    query_lengths = (0,) + QUERY_LENGTHS
    queries, q_offsets = _flat_queries(rng, dim, query_lengths)
    expected = np.stack([maxsim_reference(q, docs) for q in _split(queries, q_offsets)])
    np.testing.assert_allclose(maxsim_codes_many(queries, q_offsets, coded, offsets, max_len), expected, **TOL)
    for i, query in enumerate(_split(queries, q_offsets)[1:], start=1):
        got = maxsim_codes_candidates(query, coded, offsets, candidates, max_len)
        np.testing.assert_allclose(got, expected[i, candidates], **TOL, err_msg=f"{len(query)} query tokens")


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("dim", WIDTHS)
def test_codes_early_exit_scores_like_candidates_and_stops_by_the_rule(dim, codec):
    rng = np.random.default_rng(dim * 7 + len(codec))
    lengths = _lengths(rng, N_DOCS)
    offsets = _offsets(lengths)
    coded = _coded(rng, codec, dim, int(offsets[-1]))
    docs = _split(coded.decode(), offsets)
    max_len = int(lengths.max())
    for n_query in (1, 17):
        query = _unit(rng, n_query, dim)
        every, scored = maxsim_codes_early_exit(query, coded, offsets, np.arange(N_DOCS), 2, N_DOCS, max_len)
        assert scored == N_DOCS
        np.testing.assert_allclose(every, maxsim_reference(query, docs), **TOL)
        _check_early_exit(
            lambda c, k, patience: maxsim_codes_early_exit(query, coded, offsets, c, k, patience, max_len),
            lambda c: maxsim_codes_candidates(query, coded, offsets, c, max_len),
            N_DOCS,
            rng,
        )


def test_codes_early_exit_of_no_candidates_scores_nothing():
    rng = np.random.default_rng(11)
    coded = _coded(rng, "int8", 8, 5)
    scores, scored = maxsim_codes_early_exit(_unit(rng, 3, 8), coded, np.array([0, 2, 5]), np.zeros(0, np.int64), 1, 1, 3)
    assert scores.shape == (0,) and scores.dtype == np.float32 and scored == 0


def test_codes_early_exit_refuses_bad_arguments():
    rng = np.random.default_rng(12)
    coded = _coded(rng, "residual-2", 8, 5)
    offsets = np.array([0, 2, 5], dtype=np.int64)
    query = _unit(rng, 3, 8)
    both = np.array([0, 1], dtype=np.int64)
    with pytest.raises(ValueError, match="n_query_tokens, 8"):
        maxsim_codes_early_exit(_unit(rng, 3, 16), coded, offsets, both, 1, 1, 3)
    with pytest.raises(ValueError, match="doc_offsets"):
        maxsim_codes_early_exit(query, coded, offsets[None, :], both, 1, 1, 3)
    with pytest.raises(ValueError, match="candidates"):
        maxsim_codes_early_exit(query, coded, offsets, both[None, :], 1, 1, 3)
    for k, patience in [(0, 1), (1, 0)]:
        with pytest.raises(ValueError, match="k and patience"):
            maxsim_codes_early_exit(query, coded, offsets, both, k, patience, 3)
    for bad in (-1, 2):
        with pytest.raises(IndexError, match="candidate ids"):
            maxsim_codes_early_exit(query, coded, offsets, np.array([0, bad]), 1, 1, 3)
    with pytest.raises(ValueError, match="max_doc_len"):  # document 1 has 3 tokens
        maxsim_codes_early_exit(query, coded, offsets, both, 1, 1, 2)

