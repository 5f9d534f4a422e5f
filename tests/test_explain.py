"""search(explain=True): for every query token the document token behind its maximum, that token's
text and span, and its share of the score; checked against the stored vectors and the tokenizer."""

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mvr import Index

from conftest import QUERIES

TEXTS = [text for _, text, _ in QUERIES]
LEGACY = Path(__file__).parent / "data" / "legacy-v0.1"


def _piece(token: str) -> str:
    return token[2:] if token.startswith("##") else token


def _check(index, results, clustered=False):
    """Every explanation agrees with the stored vectors, the tokenizer and the text it points into."""
    encoded = index.encode_queries(TEXTS)
    names = index.encoder.tokenizer.convert_ids_to_tokens
    stored = index.segments[0].token_ids() if len(index.segments) == 1 else None
    spans = 0
    for q, hits in enumerate(results):
        query = encoded[q]
        assert hits
        for hit in hits:
            why = hit.explanation
            vectors = index.document_vectors(hit.position)
            sims = query @ vectors.T
            assert why["maxsim"] == pytest.approx(float(sims.max(axis=1).sum()), rel=1e-5)
            assert why["maxsim"] == pytest.approx(hit.score, rel=1e-4)  # the score MaxSim gave the hit
            assert sum(m["share"] for m in why["matches"]) == pytest.approx(1.0, abs=1e-4)
            assert [m["query_token"] for m in why["matches"]] == names([int(i) for i in encoded.token_ids[encoded.offsets[q] : encoded.offsets[q + 1]]])
            for m in why["matches"]:
                assert m["document_row"] == int(sims[m["query_position"]].argmax())
                assert m["score"] == pytest.approx(float(sims[m["query_position"]].max()), abs=1e-5)
                if clustered:
                    assert m["span"] is None and m["token"] is None
                elif m["span"] is not None:
                    source = hit.title if m["field"] == "title" else hit.text
                    assert source[slice(*m["span"])] == m["token"]
                    if stored is not None:  # the span holds the very token whose vector matched
                        segment, row = index._state.locate(hit.position)
                        assert _piece(names(int(stored[segment.doc_offsets[row] + m["document_row"]]))) == m["token"].lower()
                    spans += 1
                else:
                    assert m["token"] in ("[CLS]", "[SEP]")
    if not clustered:
        assert spans > 3 * len(TEXTS)


def test_explanations_agree_with_the_vectors_and_the_text(default_index):
    results = default_index.search(TEXTS, k=3, explain=True)
    _check(default_index, results)
    plain = default_index.search(TEXTS, k=3)
    assert plain.doc_ids == results.doc_ids and np.array_equal(plain.scores, results.scores)  # explaining changes nothing
    assert all(h.explanation is None for hits in plain for h in hits)
    purr = next(m for m in results[0][0].explanation["matches"] if m["query_token"] == "pu")
    assert results[0][0].id == "d1" and purr["field"] == "text" and purr["token"] == "pu"
    capital = next(m for m in results[1][0].explanation["matches"] if m["query_token"] == "capital")
    assert capital["token"] == "capital" and results[1][0].text[slice(*capital["span"])] == "capital"


def test_a_match_in_the_title_points_into_the_title(default_index):
    hit = default_index.search("volcanoes", k=1, explain=True, first_stage="exhaustive")[0][0]
    match = next(m for m in hit.explanation["matches"] if m["query_token"] == "volcanoes")
    assert hit.id == "d7" and match["field"] == "title" and hit.title[slice(*match["span"])] == "Volcanoes"


def test_pruned_and_clustered_indexes_explain_what_they_store(default_index, tmp_path, capsys):
    pruned = Index.derive(default_index, tmp_path / "pruned", prune=("special", "punctuation", "stopwords"), show_progress=False)
    _check(pruned, pruned.search(TEXTS, k=3, explain=True, first_stage="exhaustive"))
    clustered = Index.derive(default_index, tmp_path / "clustered", cluster_ratio=0.5, show_progress=False)
    _check(clustered, clustered.search(TEXTS, k=3, explain=True, first_stage="exhaustive"), clustered=True)
    from mvr.cli import main

    assert main(["search", str(clustered.path), TEXTS[0], "-k", "1", "--explain", "--no-server"]) == 0
    matched = [line for line in capsys.readouterr().out.splitlines() if "matched:" in line]
    assert matched and "%" in matched[0] and "no document token to show" in matched[0]  # not an empty "matched: " line


def test_an_index_from_before_token_ids_were_stored_explains_too(tmp_path, default_encoder):
    legacy = Index.open(shutil.copytree(LEGACY, tmp_path / "legacy"), model=default_encoder)
    assert legacy.token_ids() is None
    _check(legacy, legacy.search(TEXTS, k=2, explain=True, first_stage="exhaustive"))


def test_explanations_travel_over_http_and_the_command_line(default_index):
    pytest.importorskip("fastapi")
    httpx = pytest.importorskip("httpx")
    from mvr.server import background
    from mvr.server.catalog import Catalog

    with background(Catalog([default_index.path], model=default_index.encoder, warm=False)) as url:
        name = default_index.name
        explained = httpx.post(f"{url}/indexes/{name}/search", json={"query": TEXTS[0], "k": 2, "explain": True}, timeout=60).json()["results"][0]
        plain = httpx.post(f"{url}/indexes/{name}/search", json={"query": TEXTS[0], "k": 2}, timeout=60).json()["results"][0]
    local = default_index.search(TEXTS[0], k=2, explain=True).to_dicts()[0]
    assert explained == local and all("explanation" not in h for h in plain)
    run = subprocess.run([sys.executable, "-m", "mvr.cli", "search", str(default_index.path), TEXTS[0], "-k", "1", "--explain"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "[[pu]]" in run.stdout and "matched: " in run.stdout and "->" in run.stdout


def test_spans_point_into_the_title_as_stored(tmp_path, default_encoder):
    index = Index.build([{"id": "a", "title": "  Purring cats ", "text": "They sleep 😺😺 a lot, then purr."}], tmp_path / "t", encoder=default_encoder, show_progress=False)
    hit = index.search("purring cats", k=1, explain=True, first_stage="exhaustive")[0][0]
    for m in hit.explanation["matches"]:
        if m["span"]:
            assert (hit.title if m["field"] == "title" else hit.text)[slice(*m["span"])] == m["token"]
    assert any(m["field"] == "title" and m["token"] == "cats" for m in hit.explanation["matches"])
