"""ColBERT-PRF (mvr/feedback.py): a second search with the query's token vectors expanded by
centroids of its best documents, each weighing beta x the IDF of the token its members are."""

import json

import numpy as np
import pytest

from conftest import DOCS, maxsim_reference
from mvr import Index, IndexConfig
from mvr.errors import QueryError
from mvr.feedback import COLBERT_PRF, kmeans

QUERY = "which animal purrs?"


@pytest.fixture(scope="module")
def living(tmp_path_factory, models):
    """Two segments (6 documents, then 3 more), one document deleted, float16 and int8 codecs."""
    indexes = {}
    for codec in ("float16", "int8"):
        config = IndexConfig(model=str(models["plain"]), sparse=("bm25s",), codec=codec)
        index = Index.build([{"id": i, "title": t, "text": x} for i, t, x in DOCS[:6]], tmp_path_factory.mktemp("prf") / codec, config=config)
        index.add([{"id": i, "title": t, "text": x} for i, t, x in DOCS[6:]] + [{"id": "d9", "text": "Cats and tea purr together."}], merge=False)
        index.delete(["d2"], merge=False)
        index.refresh()
        assert len(index.segments) == 2
        indexes[codec] = index
    return indexes


def _expected(index, query: str, first_ids: list[str]) -> np.ndarray:
    """The expansion recomputed from the files: each document's stored vectors and token ids, the
    document frequencies counted here over every stored document, ColBERT-PRF's choice."""
    vectors, ids, df, n_docs = [], [], {}, 0
    stored = {}
    for segment in index.segments:
        token_ids = np.load(segment.path / "token_ids.npy")
        for row in range(segment.n_docs):
            start, stop = int(segment.doc_offsets[row]), int(segment.doc_offsets[row + 1])
            stored[str(segment.doc_ids[row])] = (segment.tokens.decode(start, stop), token_ids[start:stop])
            for token in set(token_ids[start:stop].tolist()):
                df[token] = df.get(token, 0) + 1
            n_docs += 1
    for doc in first_ids[: COLBERT_PRF["docs"]]:
        vectors.append(stored[doc][0])
        ids.append(stored[doc][1])
    vectors, ids = np.concatenate(vectors), np.concatenate(ids)
    centroids, labels = kmeans(vectors, COLBERT_PRF["clusters"])
    rows = []
    for c in range(len(centroids)):
        members = ids[labels == c]
        if len(members):
            values, counts = np.unique(members, return_counts=True)
            token = int(values[np.argmax(counts)])  # the most frequent; ties to the lowest id
            rows.append((-np.log((n_docs + 1) / (df[token] + 0.5)), c))
    rows.sort(key=lambda r: r[0])  # heaviest first, ties in cluster order (argsort stable)
    chosen = rows[: COLBERT_PRF["terms"]]
    return np.stack([centroids[c] * COLBERT_PRF["beta"] * -w for w, c in chosen]).astype(np.float32)


@pytest.mark.parametrize("codec", ["float16", "int8"])
@pytest.mark.parametrize("stage", ["exhaustive", "fde+bm25s"])
def test_prf_scores_are_maxsim_of_the_query_with_its_expansion(living, codec, stage):
    index = living[codec]
    first = index.search(QUERY, k=COLBERT_PRF["docs"], first_stage=stage)
    assert "d2" not in first.doc_ids[0]  # a deleted document never feeds back
    expansion = _expected(index, QUERY, first.doc_ids[0])
    assert 0 < len(expansion) <= COLBERT_PRF["terms"]
    query = index.encode_queries(QUERY).vectors
    found = index.search(QUERY, k=8, first_stage=stage, prf="colbert")
    hits = found[0]
    assert hits and "d2" not in found.doc_ids[0]
    docs = []
    for hit in hits:
        segment = next(s for s in index.segments if hit.id in set(map(str, s.doc_ids)))
        docs.append(segment.tokens.document(segment.position(hit.id)))
    want = maxsim_reference(np.concatenate([query, expansion]), docs)
    np.testing.assert_allclose([h.score for h in hits], want, rtol=1e-4, atol=1e-4)
    plain = index.search(QUERY, k=8, first_stage=stage)
    assert [h.score for h in hits] != [h.score for h in plain[0]]  # the expansion changed the scores


def test_zero_beta_is_the_plain_search(living, monkeypatch):
    index = living["float16"]
    monkeypatch.setitem(COLBERT_PRF, "beta", 0.0)
    for stage in ("exhaustive", "fde+bm25s", "bm25s"):
        plain, expanded = index.search([QUERY, "capital of France"], k=5, first_stage=stage), index.search([QUERY, "capital of France"], k=5, first_stage=stage, prf="colbert")
        assert plain.doc_ids == expanded.doc_ids and np.allclose(plain.scores, expanded.scores, atol=1e-6), stage


def test_prf_options_and_refusals(living, tmp_path, models):
    index = living["float16"]
    with pytest.raises(QueryError, match="needs rerank=True"):
        index.search(QUERY, first_stage="bm25s", rerank=False, prf="colbert")
    with pytest.raises(QueryError, match="prf must be one of rm3, colbert"):
        index.search(QUERY, prf="rocchio")
    with pytest.raises(QueryError, match="needs a first stage with bm25"):
        index.search(QUERY, first_stage="fde", prf="rm3")
    index.save_search_preset("feedback", {"first_stage": "exhaustive", "prf": "colbert"}, default=False)
    saved, direct = index.search(QUERY, k=3, preset="feedback"), index.search(QUERY, k=3, first_stage="exhaustive", prf="colbert")
    assert saved.doc_ids == direct.doc_ids and np.array_equal(saved.scores, direct.scores)
    assert not np.allclose(saved.scores, index.search(QUERY, k=3, first_stage="exhaustive").scores)
    assert "feedback" in saved.timings and saved.timings["feedback"] > 0
    with pytest.raises(QueryError, match="explain without prf"):
        index.search(QUERY, k=3, first_stage="exhaustive", prf="colbert", explain=True)
    emptied = Index.build([{"id": i, "text": x} for i, _, x in DOCS[:2]], tmp_path / "emptied", config=IndexConfig(model=str(models["plain"]), sparse=("bm25s",)))
    emptied.delete(["d1", "d2"])
    emptied.optimize()
    emptied.refresh()
    assert emptied.search(QUERY, first_stage="exhaustive", prf="colbert").doc_ids == emptied.search(QUERY, first_stage="exhaustive").doc_ids
    clustered = Index.build([{"id": i, "title": t, "text": x} for i, t, x in DOCS], tmp_path / "clustered", config=IndexConfig(model=str(models["plain"]), fde=None, sparse=(), cluster_ratio=0.5))
    with pytest.raises(QueryError, match="stored token ids; index .clustered. has none") as error:
        clustered.search(QUERY, first_stage="exhaustive", prf="colbert")
    assert "\n" not in str(error.value)
    with pytest.raises(QueryError, match="reads the stored token ids, which index .clustered. does not hold"):
        clustered.save_search_preset("feedback", {"first_stage": "exhaustive", "prf": "colbert"})
    assert "feedback" not in clustered.search_presets["presets"]


def test_kmeans_converges_to_a_fixed_point_and_is_deterministic():
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((5, 16)).astype(np.float32) * 4
    points = (centres[rng.integers(5, size=300)] + rng.standard_normal((300, 16))).astype(np.float32)
    centroids, labels = kmeans(points, 5, iters=100)
    assert centroids.shape == (5, 16) and labels.shape == (300,)
    distances = ((points[:, None, :] - centroids[None]) ** 2).sum(-1)
    assert np.array_equal(labels, distances.argmin(1))  # every point at its nearest centroid
    for c in range(5):
        np.testing.assert_allclose(centroids[c], points[labels == c].mean(0), rtol=1e-5, atol=1e-5)
    again = kmeans(points, 5, iters=100)
    assert np.array_equal(again[0], centroids) and np.array_equal(again[1], labels)
    few, few_labels = kmeans(points[:3], 24)
    assert len(few) == 3 and sorted(few_labels.tolist()) == [0, 1, 2]


def test_cli_search_with_colbert_prf(living, capsys):
    from mvr.cli import main

    index = living["float16"]
    code = main(["search", str(index.path), QUERY, "-k", "3", "--first-stage", "exhaustive", "--prf", "colbert", "--json"])
    out = capsys.readouterr().out
    assert code == 0
    payload = json.loads(out)
    hits = payload["hits"]
    want = index.search(QUERY, k=3, first_stage="exhaustive", prf="colbert")
    assert [h["id"] for h in hits] == want.doc_ids[0]
    np.testing.assert_allclose([h["score"] for h in hits], want.scores[0], rtol=1e-6)


def test_the_shipped_settings_are_the_ones_chosen_on_training_queries():
    """mvr.feedback.COLBERT_PRF is what python -m mvr.eval.feedback chose on SciFact train and
    NFCorpus dev (docs/results/colbert-prf.json), the setting its test rows ran with."""
    from pathlib import Path

    report = json.loads((Path(__file__).parent.parent / "docs" / "results" / "colbert-prf.json").read_text())
    assert {key: COLBERT_PRF[key] for key in ("docs", "terms", "beta")} == {key: report["chosen"][key] for key in ("docs", "terms", "beta")}
    assert report["tuning"] == {"scifact": "train", "nfcorpus": "dev"}


def test_eval_applies_prf_to_an_exhaustive_run(living, beir):
    """`mvr eval --first-stage exhaustive --prf colbert` searches with the option (options were
    once dropped for exhaustive runs)."""
    from mvr.eval.beir import evaluate, load_beir

    index = living["float16"]
    queries, _ = load_beir(beir, "test")
    for options in ({"prf": "colbert"},):
        _, runs = evaluate(beir, index, split="test", first_stage="exhaustive", options=options, show_progress=False)
        run = next(iter(runs.values()))
        for qid, text in queries.items():
            if qid in run:
                found = index.search(text, k=len(run[qid]), first_stage="exhaustive", **options)
                plain = index.search(text, k=len(run[qid]), first_stage="exhaustive")
                assert list(run[qid]) == found.doc_ids[0], (options, qid)
                np.testing.assert_allclose(list(run[qid].values()), found.scores[0, : len(run[qid])], rtol=1e-5)
                assert not np.allclose(found.scores[0, : len(run[qid])], plain.scores[0, : len(run[qid])])  # the option changed the run
