"""What the Python API does with arguments of the wrong kind: Results indexed or written as TREC
runs with ids that do not fit, build and derive flags given as strings, settings that cannot
work (a seed numpy refuses, a residual codec trained on a vector or two), stage settings of the
wrong type, and a version-1 index whose conversion must wait for the writer lock as asked."""

from __future__ import annotations

import dataclasses
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import DOCS, FAST
from mvr import ConfigError, Encoder, Index, IndexConfig, QueryError
from mvr.errors import IndexLockedError
from mvr.storage.lock import WriterLock

LEGACY = Path(__file__).parent / "data" / "legacy-v0.1"
CORPUS = [{"_id": i, "title": t, "text": x} for i, t, x in DOCS]


@pytest.fixture(scope="module")
def encoder(models):
    return Encoder(models["plain"], doc_runtime="torch")


@pytest.fixture(scope="module")
def index(tmp_path_factory, encoder):
    """The tiny corpus in float16, one segment, no first stage: read only by these tests."""
    return Index.build(CORPUS, tmp_path_factory.mktemp("api") / "idx", encoder=encoder, config=FAST, show_progress=False)


@pytest.fixture
def copy(tmp_path, index, encoder):
    """A copy of ``index`` that a test may change."""
    return Index.open(shutil.copytree(index.path, tmp_path / "copy"), model=encoder)


@pytest.fixture(scope="module")
def results(index):
    return index.search(["which animal purrs?", "capital of France"], k=3, first_stage="exhaustive")


def test_results_are_indexed_by_an_int_as_lists_are(results):
    assert [h.id for h in results[-1]] == [h.id for h in results[1]] and [h.id for h in results[np.int64(0)]] == results.doc_ids[0]
    for key in (2, -3):
        with pytest.raises(IndexError, match=rf"query {key} is out of range: these results hold 2 queries \(0 to 1"):
            results[key]
    for key in (1.0, "0", slice(0, 1), [0, 1], True, None):
        with pytest.raises(TypeError, match=f"indexed by query number, an int .*got {type(key).__name__}"):
            results[key]


@pytest.mark.parametrize("ids, run_name, message", [
    (["q 1", "q2"], "mvr", r"query_ids\[0\]: query id 'q 1' holds whitespace"),
    (["q1", "q2\nx"], "mvr", r"query_ids\[1\]: query id 'q2\\nx' holds whitespace"),
    (["", "q2"], "mvr", "query id '' is empty"),
    (["q1", None], "mvr", "must be a string or an integer, got NoneType"),
    (["q1", "q2"], "my run", "run_name: run name 'my run' holds whitespace"),
    (["q1", "q2"], "", "run name '' is empty"),
    (["q1", "q1"], "mvr", "the query id 'q1' is given twice"),
    (["q1", 1, "1"], "mvr", "3 query ids for 2 result lists"),
    ("q1", "mvr", "query_ids must be a list of query ids, one per query, got str"),
])
def test_trec_lines_refuse_ids_that_are_not_one_field_each(results, ids, run_name, message):
    with pytest.raises(QueryError, match=message):
        results.to_trec(ids, run_name=run_name)
    if run_name == "mvr":
        with pytest.raises(QueryError, match=message):
            results.to_run(ids)


def test_query_ids_may_come_from_any_iterable_and_two_queries_keep_their_hits(results):
    lines = results.to_trec(iter(["a", "b"]), run_name="run-1")
    assert len(lines) == 6 and all(len(line.split()) == 6 for line in lines)
    run = results.to_run(f"q{i}" for i in range(2))
    assert list(run) == ["q0", "q1"] and list(run["q0"]) == results.doc_ids[0] and list(run["q1"]) == results.doc_ids[1]
    with pytest.raises(QueryError, match="the query id '1' is given twice"):  # the same field in a TREC file
        results.to_run([1, "1"])


def test_build_flags_must_be_bools(tmp_path, copy, encoder):
    for flags in ({"overwrite": "no"}, {"overwrite": 1}, {"resume": "yes"}, {"show_progress": "no"}):
        with pytest.raises(ConfigError, match=f"{next(iter(flags))} must be True or False"):
            Index.build(CORPUS[4:], copy.path, encoder=encoder, config=FAST, **flags)
    assert [d.id for d in Index.open(copy.path, model=encoder).documents()] == [d["_id"] for d in CORPUS]  # not replaced
    with pytest.raises(ConfigError, match="overwrite must be True or False, got 'yes'"):
        Index.derive(copy, tmp_path / "derived", codec="int8", overwrite="yes")
    assert not (tmp_path / "derived").exists()


def test_write_flags_must_be_bools(copy):
    """merge="no" merged and default="no" made the preset the default: read by their truth."""
    before = copy.generation
    for call in (lambda: copy.add([{"id": "n1", "text": "new cats"}], merge="no"), lambda: copy.delete(["1"], merge=None),
                 lambda: copy.upsert([{"id": "1", "text": "cats"}], show_progress="no"), lambda: copy.save_search_preset("p", {"first_stage": "exhaustive"}, default="no")):
        with pytest.raises(ConfigError, match="must be True or False"):
            call()
    assert copy.generation == before and "n1" not in copy and copy.search_presets["presets"] == {}
    for options, message in (({1: 2}, "a preset's options are named by strings, got"), ({"threads": 2}, "not another preset, a filter, k or threads"),
                             ({"k": 3}, "not another preset, a filter, k or threads")):
        with pytest.raises(QueryError, match=message):
            copy.save_search_preset("p", options)
    for threads in (0, -5, "x", 1.5):
        with pytest.raises(QueryError, match="threads must be a positive integer"):
            copy.encode_queries("cats", threads=threads)
    with pytest.raises(ConfigError, match="splade_model is the folder of the SPLADE model"):
        Index.open(copy.path, splade_model=5)


def test_search_flags_must_be_bools(index, results):
    """rerank="false" reranked and rerank=None did not, explain="no" explained: the server refuses
    "false" and takes null as unset, so a retriever's search_kwargs meant one thing over an index and
    another through a server."""
    for options in ({"rerank": "false"}, {"rerank": None}, {"rerank": 0}, {"explain": "no"}, {"explain": None}, {"explain": 1}):
        name = next(iter(options))
        with pytest.raises(QueryError, match=f"^{name} is True or False, got "):
            index.search("which animal purrs?", k=3, first_stage="exhaustive" if name == "explain" else "bm25s", **options)
    assert index.search(["which animal purrs?", "capital of France"], k=3, first_stage="exhaustive", explain=np.bool_(False)).doc_ids == results.doc_ids


@pytest.mark.parametrize("kwargs, message", [
    ({"chunk_size": 0}, "chunk_size must be a positive integer, got 0"),
    ({"chunk_size": -1}, "chunk_size must be a positive integer, got -1"),
    ({"chunk_size": 2.5}, "chunk_size must be a positive integer"),
    ({"config": {"fde": None}}, "config must be an IndexConfig .*got dict"),
    ({"encoder": "models/plain"}, "encoder must be a loaded mvr.Encoder .*got str; .*IndexConfig\\(model=PATH\\)"),
    # a TypeError of Python's once; a setting of the index said where it goes, a misspelling the name it may mean
    ({"model": "models/plain"}, r"^Index.build\(\) takes no model; model is a setting of the index: pass config=IndexConfig\(model=...\)\.$"),
    ({"codec": "int8", "overwrit": True}, r"takes no codec, overwrit \(overwrit: did you mean overwrite\?\); codec is a setting of the index"),
])
def test_build_arguments_of_the_wrong_kind_are_refused_in_one_line(tmp_path, encoder, kwargs, message):
    kwargs = {"encoder": encoder, "config": FAST, **kwargs}
    with pytest.raises(ConfigError, match=message) as error:
        Index.build(CORPUS, tmp_path / "idx", **kwargs)
    assert "\n" not in str(error.value) and not (tmp_path / "idx").exists()


@pytest.mark.parametrize("seed", ["abc", -1, 2**32, 2**70, True, 1.0])
def test_seed_is_an_int_numpy_and_faiss_take(seed):
    with pytest.raises(ConfigError, match=r"seed must be an integer in \[0, 2\*\*32\)"):
        IndexConfig(seed=seed)
    assert IndexConfig(seed=2**32 - 1).seed == 2**32 - 1


def test_numpy_integer_counts_reach_faiss_as_ints(copy):
    """candidates=np.int64(5) passed the checks and failed inside faiss with a TypeError."""
    from mvr.config import FDEConfig

    copy.build_fde(FDEConfig(k_sim=2, d_proj=8, reps=2))
    asked = copy.search("cats", k=2, first_stage="fde", candidates=np.int64(5), early_exit=np.int32(3))
    assert [h.id for h in asked[0]] == [h.id for h in copy.search("cats", k=2, first_stage="fde", candidates=5, early_exit=3)[0]]


def test_score_refuses_what_the_kernels_cannot_read(index):
    query = index.encode_queries("which animal purrs?")[0]
    for bad_query, positions, said in [(query, [10**6], "positions must be a list of ints in"), (query, [-1], r"in \[0, "), (query, [0.5], "list of ints"),
                                       (query[:, :5], [0], "shape \\(tokens, "), (np.full_like(query, np.nan), [0], "finite"), ("cats", [0], "score takes one query")]:
        with pytest.raises(QueryError, match=said):
            index.score(bad_query, positions)
    assert index.score(query, []).shape == (0,) and index.score(query, np.array([1, 0])).shape == (2,)


def test_seed_is_refused_before_a_derive_writes_anything(tmp_path, index):
    with pytest.raises(ConfigError, match="seed must be an integer"):
        Index.derive(index, tmp_path / "derived", codec="residual", seed="abc")
    assert not (tmp_path / "derived").exists()


@pytest.mark.parametrize("changes, least", [({"codec_sample": 1}, 256), ({"codec_sample": 2, "codec_centroids": 3}, 256), ({"codec_sample": 300, "codec_centroids": 512}, 512)])
def test_residual_codec_needs_a_sample_to_learn_from(tmp_path, index, encoder, changes, least):
    with pytest.raises(ConfigError, match=f"codec_sample={changes['codec_sample']} is too few vectors .*give at least {least}"):
        Index.derive(index, tmp_path / "derived", codec="residual", **changes)
    config = dataclasses.replace(FAST, codec="residual", **changes)
    with pytest.raises(ConfigError, match="too few vectors to train the residual codec"):
        Index.build(CORPUS, tmp_path / "built", encoder=encoder, config=config)
    assert not (tmp_path / "derived").exists() and not (tmp_path / "built").exists()
    IndexConfig(codec="float16", codec_sample=1)  # only the residual codec is trained on it


def test_residual_codec_of_a_tiny_index_trains_on_all_its_vectors(tmp_path, index):
    small = Index.derive(index, tmp_path / "derived", codec="residual", codec_sample=256, codec_centroids=8)
    scores = small.score(small.encode_queries("which animal purrs?")[0], np.arange(small.n_rows))
    assert len(set(np.round(scores, 4))) == small.n_rows  # documents told apart, not all scored alike


def test_stage_settings_are_checked_or_read_as_their_type(copy):
    built = copy.build_fde({"d_proj": 4, "reps": 2})
    assert built["config"]["d_proj"] == 4 and copy.build_stage("fde", {"d_proj": 8, "reps": 2})["config"]["d_proj"] == 8
    with pytest.raises(ConfigError, match="unknown FDE setting"):
        copy.build_stage("fde", {"nope": 1})
    with pytest.raises(ConfigError, match="the fde stage's settings are an FDEConfig or a dict of its fields, got int"):
        copy.build_stage("fde", 5)
    with pytest.raises(ConfigError, match="the splade stage's settings are its masked-LM model folder .*got int"):
        copy.build_stage("splade", 5)
    assert list(copy.build_sparse("bm25s")) == ["bm25s"]  # one name: that stage, not its letters
    with pytest.raises(ConfigError, match="stages must be a first stage name or a list of them, got int"):
        copy.build_sparse(5)


def _legacy(tmp_path) -> Path:
    return shutil.copytree(LEGACY, tmp_path / "legacy")


def test_first_write_to_a_legacy_index_waits_for_the_lock(tmp_path):
    path = _legacy(tmp_path)
    legacy = Index.open(path)
    assert legacy.legacy
    victim = str(legacy.doc_ids[0])
    lock = WriterLock(path.parent, path.name).acquire()  # another writer, for half a second
    done = {}
    worker = threading.Thread(target=lambda: done.update(result=_outcome(lambda: legacy.delete([victim], wait=30))))
    worker.start()
    time.sleep(0.5)
    lock.release()
    worker.join(60)
    assert isinstance(done["result"], dict) and done["result"]["deleted"] == 1, done
    after = Index.open(path)
    assert not after.legacy and victim not in {d.id for d in after.documents()}


def test_two_writers_of_a_legacy_index_both_wait(tmp_path):
    path = _legacy(tmp_path)
    first, second = Index.open(path), Index.open(path)
    ids = [str(i) for i in first.doc_ids[:2]]
    done = {}
    threads = [threading.Thread(target=lambda ix=ix, i=i: done.update({i: _outcome(lambda: ix.delete([i], wait=30))})) for ix, i in zip((first, second), ids)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert all(isinstance(done[i], dict) and done[i]["deleted"] == 1 for i in ids), done
    assert not set(ids) & {d.id for d in Index.open(path).documents()}


def test_a_legacy_conversion_gives_up_after_its_wait(tmp_path):
    path = _legacy(tmp_path)
    lock = WriterLock(path.parent, path.name).acquire()
    try:
        started = time.monotonic()
        with pytest.raises(IndexLockedError):
            Index.open(path).delete(["x"], wait=0.3)
        assert 0.25 <= time.monotonic() - started < 10
    finally:
        lock.release()
    assert Index.open(path).legacy  # nothing converted


def _outcome(call):
    try:
        return call()
    except Exception as error:  # reported to the test, not lost in the thread
        return f"{type(error).__name__}: {error}"


def test_open_takes_a_name_or_path_and_a_model_or_encoder(tmp_path):
    for name, model in ((None, None), (5, None), (tmp_path, 5)):
        with pytest.raises(ConfigError, match="open an index by its name or path"):
            Index.open(name, model=model)


def test_names_paths_and_homes_that_are_no_text_are_refused_in_one_line(tmp_path, index, encoder):
    """A lone surrogate in a name passed the name check and failed in faiss's writer after every
    document was encoded (its staging folder left behind), or in os.fsencode; a home of another
    type failed in pathlib."""
    from mvr import IndexNotFoundError

    for name in ("a\udc80", "a\ud800"):
        with pytest.raises(ConfigError, match="invalid index name .*: it is not UTF-8 text"):
            Index.build(CORPUS, name, home=tmp_path, encoder=encoder, config=FAST)
        for target, home in ((tmp_path / name, None), ("idx", tmp_path / name)):  # Lucene (Java) takes the path as text
            with pytest.raises(ConfigError, match="mvr writes indexes only where the whole path is UTF-8 text"):
                Index.build(CORPUS, target, home=home, encoder=encoder)
    for where in ("a\ud800", tmp_path / "a\ud800"):
        with pytest.raises(IndexNotFoundError, match="it holds a lone surrogate, which no file name has"):
            Index.open(where, home=tmp_path)
    with pytest.raises(IndexNotFoundError, match="no index named or at"):
        Index.open("a\udc80", home=tmp_path)
    assert list(tmp_path.iterdir()) == []
    latin1 = tmp_path / os.fsdecode(b"caf\xe9")  # a folder mvr did not name, its name not UTF-8: an index moved into it opens
    shutil.copytree(index.path, latin1 / "idx")
    assert Index.open(latin1 / "idx", model=encoder).doc_ids.tolist() == Index.open("idx", home=latin1, model=encoder).doc_ids.tolist() == index.doc_ids.tolist()
    for home in (5, b"/tmp", ["a"]):
        with pytest.raises(ConfigError, match=f"home is the folder of indexes \\(a str or a path\\), got {type(home).__name__}"):
            Index.open("idx", home=home)
        with pytest.raises(ConfigError, match="home is the folder of indexes"):
            Index.build(CORPUS, "idx", home=home, encoder=encoder, config=FAST)
    assert Index.open("idx", home=str(index.path.parent), model=encoder).doc_ids.tolist() == index.doc_ids.tolist()


def test_queries_of_nothing_but_invisible_characters_are_refused(index):
    """A query of zero-width spaces or control characters was searched (as the query marker and
    padding alone, ranking documents by nothing); texts given with encoded queries were not checked."""
    for query in ("\u200b", "\x00\x01", " \ufeff "):
        with pytest.raises(QueryError, match="query #0 is only invisible characters"):
            index.search(query, k=2)
        with pytest.raises(QueryError, match="query #0 is only invisible characters"):
            index.rerank(query, list(index.doc_ids[:2]))
    encoded = index.encode_queries("which animal purrs?")
    for texts, message in (([None], "query #0 is NoneType"), ([5], "query #0 is int"), ([""], "query #0 is empty"), (["a\ud800"], "lone surrogate")):
        with pytest.raises(QueryError, match=message):
            index.search_encoded(encoded, k=2, texts=texts, first_stage="exhaustive")


def _head_file(path: Path, skip) -> str:
    from mvr.vectors.heads import FORMAT

    np.savez(path, format=np.array(FORMAT), kind=np.array("linear"), skip=skip)
    return str(path)


@pytest.mark.parametrize("skip,message", [
    (lambda dim: np.zeros((dim, 0), np.float32), "at least one row and column"),
    (lambda dim: np.eye(dim, 4) + 0j, "real numbers"),
    (lambda dim: np.zeros((dim, 4), np.float32), "all zero"),
    (lambda dim: np.full((dim, 4), 1e38, np.float32), "overflow float32"),
])
def test_a_head_that_cannot_project_is_refused_and_the_index_it_would_replace_stays(tmp_path, index, skip, message):
    victim = Index.open(shutil.copytree(index.path, tmp_path / "victim"), model=index.encoder)
    before = victim.search("cats", k=3, first_stage="exhaustive")
    head = _head_file(tmp_path / "head.npz", skip(index.dim))
    with pytest.raises(ConfigError, match=message) as error:
        Index.derive(index, tmp_path / "victim", overwrite=True, projection=head, fde=None)
    assert "\n" not in str(error.value) and (message == "overflow float32" or "head.npz" in str(error.value))  # the file named where it is read
    after = Index.open(tmp_path / "victim", model=index.encoder).search("cats", k=3, first_stage="exhaustive")
    assert after.indices.tolist() == before.indices.tolist()


def test_a_build_whose_index_cannot_be_read_back_replaces_nothing(tmp_path, index, monkeypatch):
    import mvr.build
    from mvr.errors import IndexFormatError

    victim = shutil.copytree(index.path, tmp_path / "victim")
    finish = mvr.build.finish_segment

    def faulty(folder, *args, **kwargs):  # a fault in what a build writes (a disk, a bug): it must fail the build, not every later open
        manifest = finish(folder, *args, **kwargs)
        (folder / "manifest.json").write_text("{")
        return manifest

    monkeypatch.setattr(mvr.build, "finish_segment", faulty)
    with pytest.raises(IndexFormatError, match="could not be read back, so it took no index's place"):
        Index.derive(index, victim, overwrite=True, codec="int8", fde=None)
    assert Index.open(victim, model=index.encoder).search("cats", k=2, first_stage="exhaustive").indices.tolist() == index.search("cats", k=2, first_stage="exhaustive").indices.tolist()


def test_an_emptied_projected_index_finds_nothing_and_says_why_it_cannot_encode(tmp_path, encoder):
    projected = Index.build(CORPUS, tmp_path / "pca", encoder=encoder, config=dataclasses.replace(FAST, pca_dim=8), show_progress=False)
    assert projected.search("cats", k=2).indices.shape == (1, 2)
    projected.delete([i for i, _, _ in DOCS])
    for options in ({}, {"first_stage": "exhaustive"}, {"explain": True}):
        found = projected.search(["cats", "dogs"], k=3, **options)
        assert found.indices.tolist() == [[-1], [-1]] and len(found[0]) == 0, options
    with pytest.raises(QueryError, match="holds no documents, and its projection"):
        projected.encode_queries("cats")
    with pytest.raises(QueryError, match="empty"):
        projected.search("  ")  # still checked


def test_no_queries_find_nothing(index):
    found = index.search([], k=3)
    assert found.indices.shape == (0, 3) and found.scores.shape == (0, 3) and len(found) == 0


def test_passages_are_asked_of_an_index_of_passages(index):
    with pytest.raises(QueryError, match="applies to an index of passages"):
        index.search("cats", k=2, group="passages")  # it was ignored: whole documents came back
    assert len(index.search("cats", k=2, group="documents")[0]) == 2


def test_positions_are_integers_and_ids_strings(copy):
    with pytest.raises(TypeError, match=r"index.position\(doc_id\)"):
        copy.document("1")
    with pytest.raises(TypeError, match="integer"):
        copy.document_vectors(1.0)
    assert copy.document(np.int64(0)).id == copy.doc_ids[0]
    copy.add([{"id": 7, "text": "seven cats"}])
    assert "7" in copy  # an integer id is stored as its digits
    with pytest.raises(QueryError, match=r"is int 7 \(a document given the id 7 has the id '7'\)"):
        copy.delete([7])  # refused all the same: a position given by mistake would delete another document
    assert copy.delete(["7"])["deleted"] == 1
    with pytest.raises(QueryError, match="strings"):
        copy.delete([10**5000])


def test_damaged_search_presets_are_one_line_and_a_new_preset_replaces_them(copy, capsys):
    import json

    from mvr.cli import main

    from mvr.errors import IndexFormatError
    from mvr.storage.commits import commit_name

    copy.save_search_preset("deep", {"first_stage": "exhaustive"})
    path = copy.path / commit_name(Index.open(copy.path).generation)
    record = json.loads(path.read_text())
    for damage in ([1, 2], {"presets": ["g"]}, {"presets": {"g": None}}, {"presets": {"g": {"candidates": "50"}}}, {"default": "gone", "presets": {}}):
        path.write_text(json.dumps({**record, "search": damage}))
        damaged = Index.open(copy.path, model=copy.encoder)
        with pytest.raises(IndexFormatError, match="saved search presets are damaged") as error:
            damaged.search("cats", k=2)
        assert "\n" not in str(error.value)
        assert len(damaged.search("cats", k=2, first_stage="exhaustive")[0]) == 2  # a stage named: no preset read
        assert "saved search presets are damaged" in damaged.info()["search_presets"]["damaged"]  # info says so, and still answers
    assert main(["info", str(copy.path), "--verify"]) == 2 and "saved search presets are damaged" in capsys.readouterr().err
    damaged.save_search_preset("fresh", {"first_stage": "exhaustive"})
    assert Index.open(copy.path).search_presets == {"default": "fresh", "presets": {"fresh": {"first_stage": "exhaustive"}}}  # "deep" went with the damage
    assert len(Index.open(copy.path, model=copy.encoder).search("cats", k=2)[0]) == 2


def test_an_index_whose_pointer_was_removed_says_so(copy):
    from mvr.errors import IndexFormatError

    (copy.path / "manifest.json").unlink()
    with pytest.raises(IndexFormatError, match="no manifest.json, the pointer to its newest commit") as error:
        Index.open(copy.path)
    assert "data still there" in str(error.value) and "\n" not in str(error.value)
