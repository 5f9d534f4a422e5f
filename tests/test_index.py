"""Index build / open / search round trips, the on-disk format, and every way input goes wrong."""

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import DOCS, FAST, maxsim_reference, segment_path
from mvr import (
    ConfigError,
    CorpusError,
    Encoder,
    EncoderError,
    EncoderMismatchError,
    Index,
    IndexConfig,
    IndexExistsError,
    IndexFormatError,
    IndexNotFoundError,
    QueryError,
    TokenVectors,
    read_corpus,
)
from mvr.config import FDEConfig


def _build(tmp_path, encoder, docs=None, name="idx", config=FAST, **kwargs):
    """An index of ``docs`` (default: the tiny corpus), with no first stage unless ``config`` asks."""
    docs = [{"_id": i, "title": t, "text": x} for i, t, x in DOCS] if docs is None else docs
    return Index.build(docs, tmp_path / name, encoder=encoder, config=config, **kwargs)


def test_round_trip_keeps_ids_texts_and_vectors(tmp_path, plain_encoder):
    index = _build(tmp_path, plain_encoder)
    reopened = Index.open(tmp_path / "idx", model=plain_encoder)
    assert len(reopened) == len(DOCS)
    expected = plain_encoder.encode_documents([f"{t} {x}" if t else x for _, t, x in DOCS])
    np.testing.assert_array_equal(reopened.doc_offsets, expected.offsets)
    np.testing.assert_array_equal(np.asarray(reopened.tokens.codes).view(np.float16), expected.vectors.astype(np.float16))
    for position, (doc_id, title, text) in enumerate(DOCS):
        doc = reopened.document(position)
        assert (doc.id, doc.title, doc.text) == (doc_id, title, text)
        assert reopened.position(doc_id) == position
    with pytest.raises(KeyError):
        reopened.position("nope")
    pointer = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert pointer["format"] == "mvr-index" and pointer["format_version"] == 2 and pointer["generation"] == 1
    commit = json.loads((tmp_path / "idx" / pointer["commit"]).read_text())
    assert commit["encoder"] == plain_encoder.identity and [s["name"] for s in commit["segments"]] == ["s000001"]
    segment = segment_path(index)
    assert segment == tmp_path / "idx" / "segments" / "s000001"
    manifest = json.loads((segment / "manifest.json").read_text())
    assert manifest["format"] == "mvr-segment" and manifest["format_version"] == 1 and manifest["counts"]["documents"] == len(DOCS)
    assert manifest["encoder"] == plain_encoder.identity
    assert set(manifest["files"]) >= {"vectors.npy", "doc_offsets.npy", "doc_ids.npy", "text.bin"}
    assert not (tmp_path / "idx" / "vectors.raw").exists() and not (segment / "vectors.raw").exists()
    sizes = {name: (segment / name).stat().st_size for name in ("vectors.npy", "doc_offsets.npy")}
    assert sizes["vectors.npy"] == 128 + index.n_tokens * 32 * 2  # float16 rows behind a .npy header
    assert index.manifest["bytes_per_token"] == pytest.approx(sum(sizes.values()) / index.n_tokens, abs=1e-3)


def test_search_ranks_by_exact_maxsim(tmp_path, plain_encoder):
    index = _build(tmp_path, plain_encoder)
    queries = ["purring cats", "capital city", "cell energy"]
    results = index.search(queries, k=5)
    docs = [np.asarray(index.tokens.codes[index.doc_offsets[i] : index.doc_offsets[i + 1]]).view(np.float16).astype(np.float32) for i in range(len(index))]
    for i, query in enumerate(queries):
        reference = maxsim_reference(plain_encoder.encode_queries(query).vectors, docs)
        assert results.indices[i].tolist() == np.argsort(-reference, kind="stable")[:5].tolist()
        np.testing.assert_allclose(results.scores[i], np.sort(reference)[::-1][:5], rtol=1e-4)
        hits = results[i]
        assert [h.rank for h in hits] == [1, 2, 3, 4, 5] and hits[0].text == index.document(hits[0].position).text
    single = index.search("capital city", k=5)
    np.testing.assert_array_equal(single.indices[0], results.indices[1])  # one-query and batched kernels agree


def test_k_larger_than_corpus_is_capped_at_the_documents(tmp_path, plain_encoder):
    index = _build(tmp_path, plain_encoder)
    results = index.search("tea", k=20)
    assert results.indices.shape == (1, len(DOCS)) and (results.indices[0] >= 0).all()
    few = index.search("tea", k=5, first_stage="exhaustive")
    assert few.indices.shape == (1, 5)
    assert len(results[0]) == len(DOCS)
    lines = results.to_trec(["q"])
    assert len(lines) == len(DOCS) and lines[0].startswith("q Q0 ")


def test_default_model_finds_the_obvious_documents(default_index):
    results = default_index.search(["which animal purrs?", "what is the capital of France", "plants make sugar from sunlight"], k=1)
    assert [hits[0].id for hits in results] == ["d1", "d5", "d3"]


def test_pca_index_projects_queries_and_shrinks_vectors(tmp_path, plain_encoder):
    full = _build(tmp_path, plain_encoder)
    with pytest.raises(ConfigError, match=r"d_proj=32 \(--fde-d-proj\) exceeds the 8 token dimensions \(--pca-dim"):
        _build(tmp_path, plain_encoder, name="pca", config=IndexConfig(pca_dim=8))
    reduced = _build(tmp_path, plain_encoder, name="pca", config=IndexConfig(pca_dim=8, fde=FDEConfig(d_proj=4, reps=2)))
    assert reduced.dim == 8 and reduced.projection.shape == (32, 8)
    assert (segment_path(reduced) / "vectors.npy").stat().st_size == 128 + reduced.n_tokens * 8 * 2
    assert reduced.manifest["bytes_per_token"] < full.manifest["bytes_per_token"] / 2  # projection included
    query = reduced.encode_queries("purring cats")
    assert query.vectors.shape[1] == 8 and np.allclose(np.linalg.norm(query.vectors, axis=1), 1, atol=1e-5)
    assert len(reduced.search("purring cats", k=3)[0]) == 3
    assert len(reduced.search("purring cats", k=3, first_stage="fde", candidates=4)[0]) == 3
    with pytest.raises(ConfigError, match="exceeds"):
        _build(tmp_path, plain_encoder, name="pca-too-big", config=IndexConfig(pca_dim=64))


def test_corpus_forms(tmp_path, plain_encoder):
    folder = tmp_path / "notes"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.md").write_text("# Alpha\nabout cats")
    (folder / "sub" / "b.txt").write_text("about dogs")
    (folder / "ignored.bin").write_bytes(b"\x00")
    index = Index.build(read_corpus(folder), tmp_path / "folder-idx", encoder=plain_encoder)
    assert sorted(str(i) for i in index.doc_ids) == ["a.md", "sub/b.txt"]
    pairs = Index.build([("x", "first"), ("y", "second")], tmp_path / "pairs", encoder=plain_encoder)
    assert list(pairs.doc_ids) == ["x", "y"]
    strings = Index.build(["first", "second"], tmp_path / "strings", encoder=plain_encoder)
    assert list(strings.doc_ids) == ["0", "1"]


# -- bad input -------------------------------------------------------------------------------


def test_malformed_jsonl_names_the_line(tmp_path, plain_encoder):
    corpus = tmp_path / "bad.jsonl"
    corpus.write_text('{"_id": "a", "text": "ok"}\n\n{"_id": "b", "text": "broken"\n')
    with pytest.raises(CorpusError, match=r"bad.jsonl:3: not valid JSON \(Expecting ',' delimiter at column 30\)"):  # where the line stops, not the next line's column 1
        Index.build(read_corpus(corpus), tmp_path / "x", encoder=plain_encoder)
    corpus.write_text('{"_id": "a"}\n')
    with pytest.raises(CorpusError, match=r':1: document .a. has no "text"'):
        Index.build(read_corpus(corpus), tmp_path / "x", encoder=plain_encoder)
    corpus.write_text('["a", "b"]\n')
    with pytest.raises(CorpusError, match=r":1: expected a JSON object"):
        Index.build(read_corpus(corpus), tmp_path / "x", encoder=plain_encoder)
    assert not (tmp_path / "x").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".x.")]
    corpus.write_bytes(b'{"_id": "a",\r"text": "ok"}\n{"_id": "b", "text": "two"}\n')  # a lone CR is JSON's whitespace, not a line's end
    assert len(read_corpus(corpus)) == 2 and [(d.id, d.where) for d in read_corpus(corpus)] == [("a", f"{corpus}:1"), ("b", f"{corpus}:2")]


def test_empty_corpus_and_empty_documents(tmp_path, plain_encoder):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(CorpusError, match="no documents"):
        Index.build(read_corpus(tmp_path / "empty.jsonl"), tmp_path / "x", encoder=plain_encoder)
    docs = [{"id": "a", "text": "fine"}, {"id": "b", "text": "   ", "title": ""}]
    with pytest.raises(CorpusError, match=r"document #1: document 'b' has no text.*skip-empty"):
        Index.build(docs, tmp_path / "x", encoder=plain_encoder)
    for invisible in ("\u200b\u200b", "\x00\x01\x02", "\ufeff\u00ad"):  # zero-width, control, format: indexed as [CLS] [SEP] alone, they outranked real documents
        with pytest.raises(CorpusError, match="has no text"):
            Index.build([docs[0], {"id": "b", "text": invisible}], tmp_path / "x", encoder=plain_encoder)
    docs.append({"id": "c", "text": "\u200b", "title": "\x00"})
    index = Index.build(docs, tmp_path / "x", encoder=plain_encoder, config=IndexConfig(skip_empty=True))
    assert list(index.doc_ids) == ["a"] and index.manifest["counts"]["skipped_empty_documents"] == 2
    with pytest.raises(CorpusError, match=r"holds no documents \(2 empty ones skipped\)"):  # its build folder was kept "for --resume", nothing in it
        Index.build(docs[1:], tmp_path / "y", encoder=plain_encoder, config=IndexConfig(skip_empty=True))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.jsonl", "x"]
    with pytest.raises(CorpusError, match="not found"):
        read_corpus(tmp_path / "missing.jsonl")


def test_duplicate_ids_name_both_places(tmp_path, plain_encoder):
    corpus = tmp_path / "dup.jsonl"
    corpus.write_text('{"_id": "a", "text": "one"}\n{"_id": "b", "text": "two"}\n{"_id": "a", "text": "three"}\n')
    with pytest.raises(CorpusError, match=r"dup.jsonl:3: duplicate document id 'a' \(first at .*dup.jsonl:1\)"):
        Index.build(read_corpus(corpus), tmp_path / "x", encoder=plain_encoder)


def test_huge_document_is_truncated_and_counted(tmp_path, plain_encoder):
    index = Index.build([("big", "word " * 50_000), ("small", "tiny")], tmp_path / "x", encoder=plain_encoder)
    assert int(np.diff(index.doc_offsets)[0]) == plain_encoder.spec.doc_maxlen
    assert index.manifest["counts"]["truncated_documents"] == 1


def test_failed_rebuild_leaves_existing_index_intact(tmp_path, plain_encoder):
    index = _build(tmp_path, plain_encoder)
    before = {p.relative_to(tmp_path): p.read_bytes() for p in (tmp_path / "idx").rglob("*") if p.is_file()}
    expected = index.search("purring cats", k=3).indices
    with pytest.raises(IndexExistsError, match="overwrite"):
        _build(tmp_path, plain_encoder)
    with pytest.raises(CorpusError, match="duplicate"):
        _build(tmp_path, plain_encoder, docs=[("a", "x"), ("a", "y")], overwrite=True)
    after = {p.relative_to(tmp_path): p.read_bytes() for p in (tmp_path / "idx").rglob("*") if p.is_file()}
    assert before == after
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]  # no staging leftovers
    np.testing.assert_array_equal(Index.open(tmp_path / "idx", model=plain_encoder).search("purring cats", k=3).indices, expected)
    rebuilt = _build(tmp_path, plain_encoder, docs=[("only", "one document")], overwrite=True)
    assert list(rebuilt.doc_ids) == ["only"]


def test_missing_and_damaged_indexes(tmp_path, plain_encoder):
    with pytest.raises(IndexNotFoundError, match="mvr index"):
        Index.open("nope", home=tmp_path)
    index = _build(tmp_path, plain_encoder)
    manifest_path = tmp_path / "idx" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    version, manifest["format_version"] = manifest["format_version"], 99
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(IndexFormatError, match="upgrade mvr"):
        Index.open(tmp_path / "idx")
    manifest["format_version"] = version
    manifest_path.write_text(json.dumps(manifest))
    with open(segment_path(index) / "vectors.npy", "ab") as handle:
        handle.write(b"\x00\x00")
    with pytest.raises(IndexFormatError, match="wrong size"):
        Index.open(tmp_path / "idx")
    manifest_path.write_text("{not json")
    with pytest.raises(IndexFormatError, match="damaged"):
        Index.open(tmp_path / "idx")


def test_queries_from_another_encoder_are_refused(tmp_path, models, plain_encoder, default_index):
    _build(tmp_path, plain_encoder)
    other = Index.open(tmp_path / "idx", model=models["plain-other"])
    with pytest.raises(EncoderMismatchError, match="weights_sha256"):
        other.search("cats")
    longer = Index.open(tmp_path / "idx", model=Encoder(models["plain"], query_maxlen=16))
    with pytest.raises(EncoderMismatchError, match="query_maxlen"):
        longer.search("cats")
    colbert = Index.open(tmp_path / "idx", model=models["colbert"])
    with pytest.raises(EncoderMismatchError, match="dim: index 32, query encoder 16"):
        colbert.search("cats")
    short = Index.open(default_index.path, model=models["plain"])  # 128 positions, the index's model reads 256 tokens of a document
    with pytest.raises(EncoderMismatchError, match="the model at .*plain cannot encode as it did: doc_maxlen=256 exceeds the model's 128 positions"):
        short.search("cats")
    index = Index.open(tmp_path / "idx", model=plain_encoder)
    wrong_dim = TokenVectors(np.ones((3, 16), np.float32), np.array([0, 3]))
    with pytest.raises(EncoderMismatchError, match="dimension 16.*stores 32"):
        index.search_encoded(wrong_dim)


def test_queries_through_another_dense_activation_are_refused(tmp_path, models):
    """A PyLate model's Dense weights were checked, not its activation: the same files with a Tanh
    after the projection searched the index with other query vectors, silently."""
    import shutil

    model = shutil.copytree(models["pylate"], tmp_path / "pylate")
    _build(tmp_path, Encoder(model))
    config = model / "1_Dense" / "config.json"
    config.write_text(config.read_text().replace("torch.nn.modules.linear.Identity", "torch.nn.modules.activation.Tanh"))
    with pytest.raises(EncoderMismatchError, match="dense_activations: index \\[None\\], query encoder \\['tanh'\\]"):
        Index.open(tmp_path / "idx", model=model).search("cats")


def test_an_index_pickles_and_copies_as_a_handle_opened_again(tmp_path, models):
    """A copy (pickle for another process, copy.deepcopy by a framework copying a retriever) failed
    on the index's locks; it opens the index at its path again, with the same query model."""
    import copy
    import pickle

    index = Index.build([{"id": i, "title": t, "text": x} for i, t, x in DOCS], tmp_path / "idx", encoder=Encoder(models["plain"]), config=IndexConfig(fde=None, sparse=()))
    index = Index.open(tmp_path / "idx", model=Encoder(models["plain"]))
    expected = index.search(["purring cats", "volcano"], k=3)
    for twin in (pickle.loads(pickle.dumps(index)), copy.deepcopy(index)):
        assert twin is not index and twin.path == index.path and twin._model.path == models["plain"].resolve()
        found = twin.search(["purring cats", "volcano"], k=3)
        np.testing.assert_array_equal(found.indices, expected.indices)
        np.testing.assert_array_equal(found.scores, expected.scores)
    # opened with an encoder of other settings, which the index refuses: so is its copy (a copy of the path alone searched)
    other = Index.open(tmp_path / "idx", model=Encoder(models["plain"], query_maxlen=8, doc_runtime="torch"))
    for twin in (pickle.loads(pickle.dumps(other)), copy.deepcopy(other)):
        assert (twin._model.spec.query_maxlen, twin._model.doc_runtime) == (8, "torch")
        with pytest.raises(EncoderMismatchError):
            twin.search("purring cats", k=3)


def test_index_remembers_a_moved_model(tmp_path, models):
    import shutil

    folder = shutil.copytree(models["plain"], tmp_path / "model")
    Index.build([("a", "cats")], tmp_path / "idx", config=IndexConfig(model=str(folder)))
    assert Index.open(tmp_path / "idx").search("cats", k=1)[0][0].id == "a"  # loads the recorded model
    moved = shutil.move(folder, tmp_path / "moved")
    with pytest.raises(EncoderError, match="not there any more.*--model"):
        Index.open(tmp_path / "idx").search("cats")
    corpus = tmp_path / "more.jsonl"
    corpus.write_text('{"id": "b", "text": "dogs"}\n')
    added = subprocess.run([sys.executable, "-m", "mvr.cli", "add", str(tmp_path / "idx"), str(corpus), "--model", str(moved), "--quiet"], capture_output=True, text=True)
    assert added.returncode == 0, added.stderr  # mvr add had no --model, and the segment it added through another folder made the index unopenable
    again = Index.open(tmp_path / "idx", model=moved)
    assert [h.id for h in again.search("dogs", k=2)[0]] == ["b", "a"] and again.n_docs == 2


def test_the_same_weights_with_another_tokenizer_are_another_model(tmp_path, models):
    """A model folder whose tokenizer no longer lower-cases gives other token ids for the same
    weights: its queries met the index's vectors without a word, and the results were wrong."""
    import shutil

    from mvr import EncoderMismatchError

    Index.build([("a", "cats")], tmp_path / "idx", config=IndexConfig(model=str(models["plain"])))
    cased = shutil.copytree(models["plain"], tmp_path / "cased")
    tokenizer = json.loads((cased / "tokenizer.json").read_text())
    tokenizer["normalizer"]["lowercase"] = False
    (cased / "tokenizer.json").write_text(json.dumps(tokenizer))
    settings = json.loads((cased / "tokenizer_config.json").read_text())
    (cased / "tokenizer_config.json").write_text(json.dumps({**settings, "do_lower_case": False}))
    with pytest.raises(EncoderMismatchError, match="tokenizer_sha256"):
        Index.open(tmp_path / "idx", model=cased).search("CATS")
    assert Index.open(tmp_path / "idx", model=shutil.copytree(models["plain"], tmp_path / "copy")).search("CATS", k=1)[0][0].id == "a"  # a copy is the same model


def test_bad_queries_and_arguments(tmp_path, plain_encoder):
    index = _build(tmp_path, plain_encoder)
    with pytest.raises(QueryError, match="empty"):
        index.search(["cats", "  "])
    with pytest.raises(QueryError, match="k must be"):
        index.search("cats", k=0)
    with pytest.raises(QueryError, match="first stage"):
        index.search("cats", first_stage="nope")
    with pytest.raises(QueryError, match="candidates applies"):
        index.search("cats", first_stage="exhaustive", candidates=100)
    with pytest.raises(QueryError, match="candidates must be"):
        index.search("cats", candidates=0)
    with pytest.raises(QueryError, match="threads"):
        index.search("cats", threads=0)


def test_thread_count_is_restored(tmp_path, plain_encoder):
    import numba

    index = _build(tmp_path, plain_encoder)
    before = numba.get_num_threads()
    index.search("cats", threads=1)
    assert numba.get_num_threads() == before
    import faiss
    import torch

    from mvr.threads import cores, cpu_threads

    with cpu_threads(100_000, "torch", "faiss"):  # more than the cores run as the cores: 100,000 crashed BLAS
        assert torch.get_num_threads() == faiss.omp_get_max_threads() == cores()
    assert index.search("cats", threads=100_000, k=1)[0][0].id == index.search("cats", k=1)[0][0].id


def test_import_is_light():
    import subprocess
    import sys

    code = "import sys, mvr; print(any(m in sys.modules for m in ('torch', 'transformers', 'numba', 'faiss')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


def test_results_as_a_run(tmp_path, plain_encoder):
    index = _build(tmp_path, plain_encoder)
    results = index.search(["purring cats", "tea"], k=3, first_stage="exhaustive")
    run = results.to_run(["a", "b"])
    assert list(run) == ["a", "b"] and list(run["a"]) == [h.id for h in results[0]]
    assert list(run["a"].values()) == [h.score for h in results[0]]
    with pytest.raises(QueryError, match="1 query ids for 2 result lists"):
        results.to_run(["a"])


def test_docstring_examples_hold():
    import doctest

    import mvr.index

    result = doctest.testmod(mvr.index)
    assert result.attempted >= 1 and result.failed == 0


def test_document_runtime_is_recorded_and_old_manifests_read_as_pytorch(tmp_path, models):
    docs = [("a", "the cat purrs"), ("b", "paris is in france"), ("c", "plants make sugar from light")]
    built = Index.build(docs, tmp_path / "given", encoder=Encoder(models["plain"], doc_runtime="torch"), config=IndexConfig(sparse=(), fde=None))
    assert built.config.doc_runtime == "torch"  # what ran (the given encoder's), not the config's default
    from mvr.storage.formats import upgrade_config

    assert IndexConfig.from_dict(upgrade_config({})).doc_runtime == "torch"  # built before the field existed
    assert IndexConfig().doc_runtime == "onnx-int8-fused"
    with pytest.raises(ConfigError, match="unknown doc_runtime 'int4'"):
        IndexConfig(doc_runtime="int4")
    with pytest.raises(ConfigError, match="cannot change without encoding the corpus again"):
        Index.derive(built, tmp_path / "derived", doc_runtime="onnx")
