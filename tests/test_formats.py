"""Formats that new code must still read: an index written by mvr 0.1.0 before the restructure
(tests/data/legacy-v0.1, built at commit 459bec5 with the results it gave then), and the token ids
that indexes now keep beside their vectors."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from mvr import Index, IndexConfig
from mvr.storage.formats import TOKEN_IDS

LEGACY = Path(__file__).parent / "data" / "legacy-v0.1"


@pytest.fixture
def legacy(tmp_path, default_encoder):
    return Index.open(shutil.copytree(LEGACY, tmp_path / "legacy"), model=default_encoder)


def test_an_index_from_before_the_restructure_searches_as_it_did(legacy):
    expected = json.loads((LEGACY.parent / "legacy-v0.1.expected.json").read_text())
    manifest = json.loads((LEGACY / "manifest.json").read_text())
    assert "doc_runtime" in manifest["config"] and "nprobe" in manifest["config"]["fde"]  # the old layout
    assert not (LEGACY / TOKEN_IDS).exists() and legacy.token_ids() is None
    for stage, want in expected["results"].items():
        options = {} if stage == "exhaustive" else {"candidates": 8}
        got = legacy.search(expected["queries"], k=5, first_stage=stage, **options)
        np.testing.assert_array_equal(got.indices, want["indices"], err_msg=stage)
        np.testing.assert_allclose(got.scores, want["scores"], rtol=1e-6, err_msg=stage)
    assert legacy.default_stage == "fde+bm25s" and legacy.config.fde.factory == "IVF2,Flat"


def test_an_index_from_before_the_restructure_derives_by_tokenising_again(legacy, tmp_path, default_encoder):
    # no stored token ids: pruning and kept special tokens re-tokenise the texts, as before
    pruned = Index.derive(legacy, tmp_path / "pruned", prune=("special",), show_progress=False)
    clustered = Index.derive(legacy, tmp_path / "clustered", cluster_ratio=0.5, cluster_keep=("special",), codec="int8", show_progress=False)
    assert pruned.n_tokens == legacy.n_tokens - 2 * len(legacy)  # [CLS] and [SEP] of every document
    ids = pruned.token_ids()
    assert ids is not None and len(ids) == pruned.n_tokens and not np.isin(ids, [101, 102]).any()
    assert clustered.token_ids() is None  # a centroid is no one token
    assert clustered.search("which animal purrs?", k=1)[0][0].id == "d1"


def test_token_ids_are_stored_with_the_vectors_and_used_by_derive(tmp_path, default_encoder):
    from conftest import DOCS, segment_path

    docs = [(i, f"{t} {x}" if t else x) for i, t, x in DOCS]
    index = Index.build(docs, tmp_path / "new", encoder=default_encoder, config=IndexConfig(fde=None, sparse=()), show_progress=False)
    stored = np.asarray(index.token_ids())
    retokenised, offsets = default_encoder.document_token_ids([t for _, t in docs])
    np.testing.assert_array_equal(stored, retokenised)
    np.testing.assert_array_equal(offsets, index.doc_offsets)
    # the stored ids and the re-tokenised ones give the same derived index, byte for byte
    legacy = Path(shutil.copytree(index.path, tmp_path / "old"))
    segment = segment_path(legacy)  # the copy's one segment: where the ids are kept
    (segment / TOKEN_IDS).unlink()
    manifest = json.loads((segment / "manifest.json").read_text())
    del manifest["files"][TOKEN_IDS]
    (segment / "manifest.json").write_text(json.dumps(manifest))
    changes = dict(prune=("punctuation",), cluster_ratio=0.5, cluster_keep=("special",), cluster_idf_weight=0.5)
    a = Index.derive(index, tmp_path / "a", show_progress=False, **changes)
    b = Index.derive(Index.open(legacy, model=default_encoder), tmp_path / "b", show_progress=False, **changes)
    np.testing.assert_array_equal(np.asarray(a.tokens.codes), np.asarray(b.tokens.codes))
    # a codec alone keeps one vector per token, so the ids stay
    np.testing.assert_array_equal(Index.derive(index, tmp_path / "c", codec="int8", show_progress=False).token_ids(), stored)
    # the encoder returns them with the vectors
    encoded = default_encoder.encode_documents([t for _, t in docs])
    np.testing.assert_array_equal(encoded.token_ids, stored)
