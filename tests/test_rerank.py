"""Rerank any candidates: by id with an index's stored vectors, or as texts encoded on the fly;
PyLate's rank.rerank order (MaxSim, best first, ties in the given order); the CLI on a TREC run
and on JSONL."""

import json
import subprocess
import sys

import numpy as np
import pytest

import mvr
from conftest import DOCS, QUERIES, write_beir
from mvr import QueryError


def _reference(query_vectors, docs):
    """PyLate's rank.rerank on the same vectors: MaxSim in float64, sorted best first (stable)."""
    scores = np.array([(query_vectors.astype(np.float64) @ d.astype(np.float64).T).max(axis=1).sum() for d in docs])
    return np.argsort(-scores, kind="stable"), scores


def test_index_rerank_is_maxsim_over_the_stored_vectors(default_index):
    ids = [doc_id for doc_id, _, _ in DOCS][::-1]
    for _, text, _ in QUERIES:
        hits = default_index.rerank(text, ids)
        vectors = default_index.encode_queries([text]).vectors
        order, scores = _reference(vectors, [default_index.document_vectors(default_index.position(i)) for i in ids])
        assert [h.id for h in hits] == [ids[p] for p in order]
        np.testing.assert_allclose([h.score for h in hits], scores[order], rtol=1e-4)
        exhaustive = default_index.search(text, k=len(ids), first_stage="exhaustive")[0]
        assert [h.id for h in hits] == [h.id for h in exhaustive]  # every document a candidate: exhaustive search
    top = default_index.rerank(QUERIES[0][1], ids, k=2)
    assert [h.rank for h in top] == [1, 2] and top[0].text and top[0].position == default_index.position(top[0].id)


def test_texts_are_encoded_as_an_index_stores_them(default_index, default_encoder):
    docs = [{"id": doc_id, "title": title, "text": text} for doc_id, title, text in DOCS]
    for _, query, _ in QUERIES:
        hits = mvr.rerank(query, docs, encoder=default_encoder)
        stored = default_index.rerank(query, [d["id"] for d in docs])
        assert [h.id for h in hits] == [h.id for h in stored]
        np.testing.assert_allclose([h.score for h in hits], [h.score for h in stored], rtol=1e-6)
    assert [h.position for h in mvr.rerank("cats", ["dogs bark", "cats purr"], encoder=default_encoder)] == [1, 0]
    assert mvr.rerank("cats", [], encoder=default_encoder) == []


def test_bad_candidates_are_clear_errors(default_index, default_encoder):
    with pytest.raises(QueryError, match="not in index"):
        default_index.rerank("cats", ["d1", "nope"])
    with pytest.raises(QueryError, match="ids are strings"):
        default_index.rerank("cats", ["d1", 3])
    with pytest.raises(QueryError, match="non-empty string"):
        default_index.rerank("  ", ["d1"])
    with pytest.raises(QueryError, match="k must be a positive integer"):
        default_index.rerank("cats", ["d1"], k=0)
    with pytest.raises(QueryError, match="has no text"):
        mvr.rerank("cats", [{"id": "a", "text": " "}], encoder=default_encoder)


def test_cli_reranks_a_trec_run_and_jsonl(tmp_path, default_index):
    beir = write_beir(tmp_path / "beir")
    run = tmp_path / "run.trec"
    run.write_text("".join(f"{qid} Q0 {doc_id} {rank} 0.0 bm25\n" for qid, _, _ in QUERIES for rank, (doc_id, _, _) in enumerate(DOCS, start=1)))
    cli = [sys.executable, "-m", "mvr.cli", "rerank", str(default_index.path)]
    done = subprocess.run([*cli, "--run", str(run), "--queries", str(beir / "queries.jsonl"), "-k", "3"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    lines = [line.split() for line in done.stdout.splitlines()]
    for qid, text, _ in QUERIES:
        assert [f[2] for f in lines if f[0] == qid] == [h.id for h in default_index.rerank(text, [d for d, _, _ in DOCS], k=3)]
    candidates = tmp_path / "c.jsonl"
    candidates.write_text(json.dumps({"id": "x", "query": QUERIES[0][1], "ids": ["d1", "d2"]}) + "\n" + json.dumps({"id": "y", "query": "cats", "documents": [{"id": "a", "text": "dogs bark"}, {"id": "b", "text": "cats purr"}]}) + "\n")
    done = subprocess.run([*cli, "--candidates", str(candidates), "--json"], capture_output=True, text=True)
    out = json.loads(done.stdout)
    assert [o["query_id"] for o in out] == ["x", "y"] and [h["id"] for h in out[1]["hits"]] == ["b", "a"]
    bad = tmp_path / "bad.trec"
    bad.write_text("q1 Q0 d1 1\n")
    done = subprocess.run([*cli, "--run", str(bad), "--queries", str(beir / "queries.jsonl")], capture_output=True, text=True)
    assert done.returncode == 2 and "has 6 fields" in done.stderr and done.stderr.count("\n") == 1
