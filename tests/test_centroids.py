"""The centroid-interaction first stage (mvr/stages/centroids.py): its lists against a plain
transcription, its scores against brute-force centroid MaxSim, filters, recall of the exhaustive
top-10, the default stage it makes, adds, verification and the command line."""

import numpy as np
import pytest

from mvr import ConfigError, Index, IndexConfig, IndexFormatError, QueryError, TokenVectors
from mvr._kernels.centroids import centroid_lists
from mvr.build import build_blocks
from mvr.cli import main
from mvr.storage.validate import verify_files
from conftest import DOCS, FAST, segment_path
from test_streaming import ENCODER, blocks_of, corpus

RESIDUAL = IndexConfig(fde=None, sparse=(), centroid_stage=True, codec="residual", codec_bits=2)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    vectors, offsets = corpus(400, seed=3)
    path = tmp_path_factory.mktemp("centroids") / "synthetic"
    index = build_blocks(blocks_of(vectors, offsets, 64), path, sample=next(blocks_of(vectors, offsets, 400)), model_dim=24, encoder=ENCODER, config=RESIDUAL, n_docs=400)
    return index, vectors, offsets


def queries(vectors, offsets, n=20, seed=0):
    """Noisy subsets of documents' tokens."""
    rng = np.random.default_rng(seed)
    out = []
    for d in rng.integers(len(offsets) - 1, size=n):
        rows = vectors[offsets[d] : offsets[d + 1]][: rng.integers(2, 8)]
        noisy = rows + 0.3 * rng.standard_normal(rows.shape).astype(np.float32)
        out.append(noisy / np.linalg.norm(noisy, axis=1, keepdims=True))
    return TokenVectors(np.concatenate(out).astype(np.float32), np.concatenate([[0], np.cumsum([len(q) for q in out])]).astype(np.int64))


def test_lists_match_a_plain_transcription():
    rng = np.random.default_rng(0)
    offsets = np.concatenate([[0], np.cumsum(rng.integers(1, 9, 50))]).astype(np.int64)
    ids = rng.integers(0, 7, offsets[-1]).astype(np.uint16)
    doc_offsets, doc_centroids, list_offsets, list_docs = centroid_lists(offsets, ids, 7)
    for d in range(50):
        mine = doc_centroids[doc_offsets[d] : doc_offsets[d + 1]]
        assert sorted(mine.tolist()) == sorted(set(ids[offsets[d] : offsets[d + 1]].tolist())) and len(set(mine.tolist())) == len(mine)
    for c in range(7):
        want = [d for d in range(50) if c in ids[offsets[d] : offsets[d + 1]]]
        assert list_docs[list_offsets[c] : list_offsets[c + 1]].tolist() == want


def test_probing_every_centroid_ranks_by_centroid_maxsim(synthetic):
    index, _, _ = synthetic
    segment = index.segments[0]
    stage = segment.stage("centroids")
    assert stage.manifest["origin"] == "residual codec"
    assert np.array_equal(stage.centroids, segment.tokens.coded.centroids)  # the codec's own
    encoded = queries(*synthetic[1:])
    from mvr.search import SearchOptions
    from mvr.stages.base import QueryBatch

    ids = np.asarray(segment.tokens.coded.centroid_ids)
    found = stage.search(QueryBatch(None, encoded.vectors, encoded.offsets), 30, SearchOptions(centroid_probe=len(stage.centroids)))
    for q, one in enumerate(found):
        query = encoded.vectors[encoded.offsets[q] : encoded.offsets[q + 1]]
        sims = query.astype(np.float64) @ stage.centroids.astype(np.float64).T
        reference = np.array([sims[:, ids[segment.doc_offsets[d] : segment.doc_offsets[d + 1]]].max(axis=1).sum() for d in range(segment.n_docs)])
        assert np.allclose(one.scores, reference[one.positions], atol=1e-4)
        assert np.allclose(np.sort(reference)[::-1][:30], one.scores, atol=1e-4)  # the 30 best, best first


def test_default_search_finds_the_exhaustive_top10(synthetic):
    index, vectors, offsets = synthetic
    assert index.default_stage == "centroids"
    encoded = queries(vectors, offsets, n=30, seed=1)
    fast = index.search_encoded(encoded, 10).indices
    exact = index.search_encoded(encoded, 10, first_stage="exhaustive").indices
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(fast, exact)])
    assert recall >= 0.9, recall
    narrow = index.search_encoded(encoded, 10, centroid_probe=1, candidates=10).indices
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(narrow, exact)]) <= recall


def test_a_filter_keeps_k_hits_among_few_allowed_documents(synthetic):
    index, vectors, offsets = synthetic
    segment = index.segments[0]
    stage = segment.stage("centroids")
    from mvr.search import SearchOptions
    from mvr.stages.base import QueryBatch

    allowed = np.zeros(segment.n_docs, bool)
    allowed[::37] = True  # 11 documents
    encoded = queries(vectors, offsets, n=5)
    for one in stage.search(QueryBatch(None, encoded.vectors, encoded.offsets), 10, SearchOptions(centroid_probe=1), allowed):
        assert len(one.positions) == 10 and allowed[one.positions].all()


def test_an_index_of_texts_with_adds_searches_and_verifies(tmp_path, models, capsys):
    config = IndexConfig(model=str(models["plain"]), fde=None, sparse=("bm25s",), centroid_stage=True, codec="residual", codec_bits=2)
    index = Index.build([{"id": i, "title": t, "text": x} for i, t, x in DOCS[:6]], tmp_path / "texts", config=config)
    assert index.default_stage == "centroids+bm25s"
    index.add([{"id": i, "title": t, "text": x} for i, t, x in DOCS[6:]])
    index.refresh()
    assert len(index.segments) == 2 and all(s.has_stage("centroids") for s in index.segments)
    assert verify_files(index.path) == []
    exact = index.search("green tea antioxidants", k=8, first_stage="exhaustive")
    found = index.search("green tea antioxidants", k=8, first_stage="centroids", centroid_probe=64)
    assert found.doc_ids[0][0] == exact.doc_ids[0][0] == "d8"  # from the added segment
    fallen = index.search(["the of and", "green tea"], k=3, first_stage="bm25s")  # no searchable terms: the centroid stage answers
    assert fallen.fallbacks == 1 and len(fallen[0]) == 3
    assert main(["centroids", str(tmp_path / "texts")]) == 0
    assert "built the centroid stage" in capsys.readouterr().out
    assert main(["centroids", str(tmp_path / "texts"), "--centroids", "0"]) != 0
    assert "centroid count" in capsys.readouterr().err
    assert main(["centroids", str(tmp_path / "texts"), "--centroids", "16"]) == 0 and "16 centroids" in capsys.readouterr().out
    assert main(["centroids", str(tmp_path / "texts")]) == 0 and "16 centroids" in capsys.readouterr().out  # a rebuild keeps the count it was given


def test_a_float16_index_fits_centroids_of_its_own(tmp_path, models):
    index = Index.build([{"id": i, "title": t, "text": x} for i, t, x in DOCS], tmp_path / "f16", config=IndexConfig(model=str(models["plain"]), fde=None, sparse=(), centroid_stage=True))
    stage = index.segments[0].stage("centroids")
    assert stage.manifest["origin"] == "k-means" and stage.manifest["documents"] == len(DOCS)
    assert (segment_path(index) / "centroids" / "list_docs.npy").is_file()
    assert index.search("cats purr", k=3).doc_ids[0][0] == index.search("cats purr", k=3, first_stage="exhaustive").doc_ids[0][0]


def test_bad_centroid_settings(tmp_path, models):
    with pytest.raises(ConfigError, match="centroid_stage"):
        IndexConfig(centroid_stage="yes")
    with pytest.raises(QueryError, match="centroid_probe"):
        from mvr.search import SearchOptions

        SearchOptions(centroid_probe=0)
    index = Index.build([{"id": i, "title": t, "text": x} for i, t, x in DOCS], tmp_path / "none", config=FAST.__class__(model=str(models["plain"]), fde=None, sparse=()))
    with pytest.raises(QueryError, match="mvr centroids"):
        index.search("cats", first_stage="centroids")


def test_the_corpus_size_decides_the_default_vector_stage(tmp_path, models, monkeypatch):
    import mvr.config
    from mvr.config import LARGE_CORPUS, FDEConfig

    assert IndexConfig().centroid_stage is None
    large, small = IndexConfig().for_corpus(LARGE_CORPUS + 1), IndexConfig().for_corpus(LARGE_CORPUS)
    assert (large.centroid_stage, large.fde) == (True, None) and (small.centroid_stage, small.fde) == (False, FDEConfig())
    assert IndexConfig(fde=FDEConfig(factory="HNSW32")).for_corpus(LARGE_CORPUS + 1).fde.factory == "HNSW32"  # asked for: kept
    assert IndexConfig(centroid_stage=False).for_corpus(10 * LARGE_CORPUS).fde == FDEConfig()
    monkeypatch.setattr(mvr.config, "LARGE_CORPUS", 4)
    index = Index.build([{"id": i, "title": t, "text": x} for i, t, x in DOCS[:6]], tmp_path / "big", config=IndexConfig(model=str(models["plain"]), codec="residual", codec_bits=2))
    assert (index.config.centroid_stage, index.config.fde) == (True, None)
    assert index.default_stage == "centroids+bm25s" and not index.has_stage("fde")
    index.add([{"id": i, "title": t, "text": x} for i, t, x in DOCS[6:]])  # 2 documents: the index's choice holds
    index.refresh()
    assert all(s.has_stage("centroids") for s in index.segments) and index.default_stage == "centroids+bm25s"


def test_a_damaged_centroid_stage_gives_a_one_line_error(tmp_path, models):
    import shutil

    Index.build([{"id": i, "title": t, "text": x} for i, t, x in DOCS], tmp_path / "ok", config=IndexConfig(model=str(models["plain"]), fde=None, sparse=(), centroid_stage=True))
    shutil.copytree(tmp_path / "ok", tmp_path / "bad")
    lists = segment_path(tmp_path / "bad") / "centroids" / "list_docs.npy"
    docs = np.load(lists)
    docs[0] = 10_000  # a document that is not there
    np.save(lists, docs)
    with pytest.raises(IndexFormatError, match="centroid"):
        Index.open(tmp_path / "bad").search("cats", first_stage="centroids")


def test_best_centroids_match_a_sort():
    from mvr._kernels.centroids import best_centroids

    scores_t = np.random.default_rng(5).standard_normal((300, 7)).astype(np.float32)
    for p in (1, 8, 299, 300, 400):
        ids, best, missing = best_centroids(scores_t, p)
        order = np.argsort(-scores_t, axis=0, kind="stable").T  # (tokens, K)
        q = min(p, 300)
        assert np.array_equal(ids, order[:, :q]) and np.allclose(best, np.take_along_axis(scores_t.T, order[:, :q], axis=1))
        assert np.allclose(missing, scores_t.T[np.arange(7), order[:, q]] if q < 300 else scores_t.min(axis=0))


def test_take_pool_orders_non_finite_gains_and_never_writes_out_of_bounds():
    from mvr._kernels.centroids import take_pool

    touched = np.arange(10, dtype=np.int64)
    slot = np.ones(10, dtype=np.int32)
    gains = np.array([1, 2, np.inf, 4, 5, np.nan, -np.inf, 3, 5, 0], dtype=np.float32)
    assert sorted(take_pool(touched, gains, slot, 3).tolist()) == [2, 4, 8]  # inf, then the two 5s
    assert not slot.any()
    left_out = set(range(10)) - set(take_pool(touched, gains, np.ones(10, np.int32), 9).tolist())
    assert len(left_out) == 1 and left_out <= {5, 6}  # NaN counts as the lowest, as -inf
    same = np.full(10, 0.5, dtype=np.float32)
    assert sorted(take_pool(touched, same, np.ones(10, np.int32), 4).tolist()) == [0, 1, 2, 3]  # ties: the lower ids


def test_non_finite_query_vectors_are_refused(tmp_path, models):
    index = Index.build([{"id": i, "title": t, "text": x} for i, t, x in DOCS], tmp_path / "i", config=IndexConfig(model=str(models["plain"]), fde=None, sparse=(), centroid_stage=True))
    query = np.full((3, index.dim), np.nan, dtype=np.float32)
    with pytest.raises(QueryError, match="NaN or infinite"):
        index.search_encoded(TokenVectors(query, np.array([0, 3])), 5)
