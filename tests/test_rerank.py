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
from mvr import CorpusError, QueryError


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
    with pytest.raises(CorpusError, match=r"documents is the string 'Cats purr\.', read as a corpus file's path, and there is none: give a text as a list of one, \[text\]\.$"):
        mvr.rerank("cats", "Cats purr.", encoder=default_encoder)  # once "corpus not found: Cats purr.."


def test_cli_reranks_a_trec_run_and_jsonl(tmp_path, default_index, capsys):
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
    from mvr.cli import main

    # a run's unknown document is said of its query; a JSONL line without an id took its line number for one
    # (which another line's id could be); a query without candidates left the run without a word
    bad.write_text(f"{QUERIES[1][0]} Q0 nowhere 1 1.0 t\n")
    assert main(["rerank", str(default_index.path), "--run", str(bad), "--queries", str(beir / "queries.jsonl")]) == 2
    assert capsys.readouterr().err.startswith(f"mvr: error: {bad}: query {QUERIES[1][0]!r}: ")
    candidates.write_text(json.dumps({"id": "2", "query": "cats", "ids": ["d1"]}) + "\n" + json.dumps({"query": "dogs", "ids": ["d2"]}) + "\n")
    assert main(["rerank", str(default_index.path), "--candidates", str(candidates)]) == 2
    assert capsys.readouterr().err == f'mvr: error: {candidates}:2: each line needs "id", the query id its lines of the run carry, beside "query".\n'
    candidates.write_text(json.dumps({"id": "e", "query": "cats", "ids": []}) + "\n" + json.dumps({"id": "f", "query": "dogs", "ids": ["d2"]}) + "\n")
    assert main(["rerank", str(default_index.path), "--candidates", str(candidates)]) == 0
    out, err = capsys.readouterr()
    assert [line.split()[0] for line in out.splitlines()] == ["f"] and err == f"mvr: warning: 1 of the 2 queries of {candidates} have no candidates (e.g. 'e'); the run holds nothing for them.\n"


def test_texts_are_scored_in_the_space_of_an_index_with_pca(tmp_path, default_encoder):
    """mvr rerank INDEX --candidates with documents as text encoded them without the index's PCA:
    other scores and another order than the same documents by id, or search."""
    docs = [{"id": i, "title": t, "text": x} for i, t, x in DOCS]
    index = mvr.Index.build(docs, tmp_path / "pca", encoder=default_encoder, config=mvr.IndexConfig(fde=None, pca_dim=16), show_progress=False)
    query = QUERIES[1][1]
    lines = [{"id": "t", "query": query, "documents": docs}, {"id": "i", "query": query, "ids": [d["id"] for d in docs]}]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    run = subprocess.run([sys.executable, "-m", "mvr.cli", "rerank", str(index.path), "--candidates", str(tmp_path / "c.jsonl")], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    rows = [line.split() for line in run.stdout.splitlines()]
    by_text, by_id = [r for r in rows if r[0] == "t"], [r for r in rows if r[0] == "i"]
    assert [r[2] for r in by_text] == [r[2] for r in by_id] == [h.id for h in index.search(query, k=len(docs), first_stage="exhaustive")[0]]
    # the texts' vectors made as the build made the stored ones (float16, projected, float16): the same scores
    np.testing.assert_allclose([float(r[4]) for r in by_text], [float(r[4]) for r in by_id], rtol=1e-6)


def test_an_index_of_passages_reranks_documents_by_their_best_passage(tmp_path, default_encoder):
    """A run of `mvr search` on an index of passages names documents; `mvr rerank` of it said they
    were not in the index (it took passage ids only)."""
    long = " ".join(f"Sentence {n} is about something else entirely." for n in range(30)) + " Green tea is rich in catechins."
    docs = [{"id": i, "title": t, "text": x} for i, t, x in DOCS[:4]] + [{"id": "long", "text": long}]
    index = mvr.Index.build(docs, tmp_path / "p", encoder=default_encoder, config=mvr.IndexConfig(fde=None, passage_tokens=24), show_progress=False)
    assert sum(str(i).startswith("long#") for i in index.doc_ids) > 2
    ids = [d["id"] for d in docs]
    for query in ("green tea catechins", QUERIES[0][1]):
        hits, searched = index.rerank(query, ids), index.search(query, k=len(ids), first_stage="exhaustive")[0]
        assert [(h.id, h.passage) for h in hits] == [(h.id, h.passage) for h in searched]
        np.testing.assert_allclose([h.score for h in hits], [h.score for h in searched], rtol=1e-5)
    best = index.rerank("green tea catechins", ["d1", "long"])[0]
    assert best.id == "long" and best.passage.startswith("long#") and "catechins" in best.text
    alone = index.rerank("green tea catechins", [best.passage])[0]  # a passage's id stands for itself
    assert (alone.id, alone.passage, alone.score) == (best.passage, None, best.score)
    with pytest.raises(QueryError, match="not in index"):
        index.rerank("tea", ["long", "nope"])
