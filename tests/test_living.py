"""A living index: add, upsert and delete documents in commits; segments, merges, readers pinned
to a commit, one writer, and the conversion of version-1 indexes."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mvr import CorpusError, Index, IndexConfig, IndexLockedError, IndexNotFoundError, QueryError
from mvr import writer as writing
from mvr.storage.commits import SEGMENTS
from mvr.storage.lock import WriterLock
from mvr.storage.validate import verify_files

TEXTS = ["cats purr", "dogs bark", "cats meow loudly", "plants grow", "the cat sat", "cats and dogs", "volcano lava", "green tea", "cats again", "more cats",
         "tea leaves", "lava flows", "dogs run", "plants need water", "cats sleep"]
DOCS = [{"id": f"d{i}", "text": t, "metadata": {"year": 2000 + i}} for i, t in enumerate(TEXTS)]
QUERIES = ["cats", "volcano", "tea", "dogs and plants"]
LEGACY = Path(__file__).parent / "data" / "legacy-v0.1"


@pytest.fixture(scope="module")
def whole(tmp_path_factory, default_encoder):
    return Index.build(DOCS, tmp_path_factory.mktemp("whole") / "idx", encoder=default_encoder, show_progress=False)


def _split(tmp_path, encoder, parts, config=None, merge=False):
    """The corpus built from its first part, then each other part added."""
    index = Index.build(DOCS[: parts[0]], tmp_path / "idx", config=config, encoder=encoder, show_progress=False)
    for start, stop in zip(parts, parts[1:] + [len(DOCS)]):
        index.add(DOCS[start:stop], merge=merge, show_progress=False)
    return index


@pytest.mark.parametrize("stage", ["exhaustive", "fde+bm25s", "fde", "bm25s"])
def test_built_in_parts_searches_as_built_whole(tmp_path, default_encoder, whole, stage):
    index = _split(tmp_path, default_encoder, [5, 9, 12])
    assert len(index.segments) == 4 and len(index) == len(DOCS) and index.generation == 4
    a, b = whole.search(QUERIES, k=5, first_stage=stage), index.search(QUERIES, k=5, first_stage=stage)
    assert a.doc_ids == b.doc_ids
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6)
    assert [h.text for h in a[0]] == [h.text for h in b[0]] and [h.metadata for h in a[0]] == [h.metadata for h in b[0]]
    if stage == "fde":  # the best candidates over all segments are the one segment's: FDE scores compare
        a, b = whole.search(QUERIES, k=3, first_stage=stage, candidates=4), index.search(QUERIES, k=3, first_stage=stage, candidates=4)
        assert a.doc_ids == b.doc_ids and np.array_equal(a.scores, b.scores)


@pytest.mark.parametrize("options", [{"fusion": "rrf"}, {"fusion": "linear", "fusion_weight": 0.5}, {"early_exit": 2}, {"rerank": False}])
def test_fusion_and_early_exit_see_every_segment_candidates(tmp_path, default_encoder, whole, options):
    # the FDE scores a document the same in any segment: with every document a candidate, the
    # fused ranking over several segments is the one-segment ranking
    index = _split(tmp_path, default_encoder, [4, 11])
    a = whole.search(QUERIES, k=6, first_stage="fde", candidates=len(DOCS), **options)
    b = index.search(QUERIES, k=6, first_stage="fde", candidates=len(DOCS), **options)
    if "early_exit" not in options:
        assert a.doc_ids == b.doc_ids
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5)
        return
    # Early exit is approximate and runs in each segment over its own candidates, against its own
    # running top-k: the split and whole rankings may differ (they did when the document runtime
    # changed). What holds: k hits per query, best first, each scored by exact MaxSim.
    for q, query in enumerate(QUERIES):
        exact = {h.id: h.score for h in whole.search([query], k=len(DOCS), first_stage="exhaustive")[0]}
        for found in (a, b):
            assert len(found[q]) == 6 and list(found.scores[q]) == sorted(found.scores[q], reverse=True)
            for hit in found[q]:
                assert hit.score == pytest.approx(exact[hit.id], rel=1e-5)


def test_deleted_documents_are_never_returned_and_merges_drop_them(tmp_path, default_encoder, whole):
    index = _split(tmp_path, default_encoder, [8])
    gone = ["d0", "d5", "d9", "d14"]
    done = index.delete(gone + ["not-there"])
    assert done["deleted"] == 4 and done["missing"] == ["not-there"] and len(index) == len(DOCS) - 4
    for stage in ("exhaustive", "fde+bm25s", "bm25s"):
        ids = index.search(QUERIES, k=len(DOCS), first_stage=stage).doc_ids
        assert not set(gone) & {i for row in ids for i in row}
    expected = [[i for i in row if i not in gone] for row in whole.search(QUERIES, k=len(DOCS), first_stage="exhaustive").doc_ids]
    assert index.search(QUERIES, k=len(DOCS), first_stage="exhaustive").doc_ids == expected
    assert "d0" not in index and "d1" in index and sorted(d.id for d in index.documents()) == sorted(d["id"] for d in DOCS if d["id"] not in gone)
    assert index.delete(["d0"])["deleted"] == 0  # deleting again changes nothing, and commits nothing
    before = index.generation
    assert index.optimize()["merged"] == 2
    assert len(index.segments) == 1 and index.n_rows == len(index) == len(DOCS) - 4 and index.generation == before + 1
    assert index.search(QUERIES, k=len(DOCS), first_stage="exhaustive").doc_ids == expected
    assert index.search(QUERIES, k=5).doc_ids == [row[:5] for row in expected]  # its first stages were rebuilt for the merged rows
    assert verify_files(index.path) == []
    assert index.optimize()["merged"] == 0


def test_upsert_replaces_and_add_refuses_known_ids(tmp_path, default_encoder):
    index = Index.build(DOCS[:6], tmp_path / "idx", encoder=default_encoder, show_progress=False)
    with pytest.raises(CorpusError, match="'d2' is already in the index.*upsert"):
        index.add([{"id": "d20", "text": "new"}, {"id": "d2", "text": "again"}], show_progress=False)
    with pytest.raises(CorpusError, match="duplicate document id 'd30'"):
        index.add([{"id": "d30", "text": "one"}, {"id": "d30", "text": "two"}], show_progress=False)
    assert index.generation == 1 and len(index.segments) == 1 and sorted(p.name for p in (index.path / SEGMENTS).iterdir()) == ["s000001"]
    done = index.upsert([{"id": "d1", "text": "volcano lava erupts"}, {"id": "d40", "text": "tea time"}], show_progress=False)
    assert (done["added"], done["replaced"]) == (2, 1) and len(index) == 7
    hit = index.search("volcano erupts", k=1, first_stage="exhaustive")[0][0]
    assert (hit.id, hit.text) == ("d1", "volcano lava erupts")
    assert [d.text for d in index.documents() if d.id == "d1"] == ["volcano lava erupts"]


def test_metadata_and_filters_span_segments(tmp_path, default_encoder):
    index = Index.build(DOCS[:5], tmp_path / "idx", encoder=default_encoder, show_progress=False)
    index.add([{"id": "n1", "text": "cats", "metadata": {"year": 2030, "source": "news"}}, {"id": "n2", "text": "cats too", "metadata": {"source": "web"}}], show_progress=False)
    hits = index.search("cats", k=10, filter={"year": {"$gte": 2003}}, first_stage="exhaustive")[0]
    assert sorted(h.id for h in hits) == ["d3", "d4", "n1"]
    assert [h.id for h in index.search("cats", k=10, filter={"source": "web"})[0]] == ["n2"]  # a field only the new segment has
    assert index.search("cats", k=10, filter={"$not": {"source": "news"}}, first_stage="exhaustive")[0][-1].id  # absent counts as not equal
    with pytest.raises(QueryError, match="unknown metadata field 'colour'"):
        index.search("cats", filter={"colour": "red"})
    with pytest.raises(CorpusError, match="'year' is a string here but a number in the index"):
        index.add([{"id": "n3", "text": "x", "metadata": {"year": "2020"}}], show_progress=False)


def test_a_field_keeps_its_type_when_its_holders_go_and_readers_agree(tmp_path, default_encoder):
    """A field outlives its last holder with its type, as a mapping does (a filter on it matches
    nothing rather than failing as unknown): a value of another type is refused, and a reader
    refreshed past the deletes knows the fields a fresh open knows."""
    path = tmp_path / "idx"
    index = Index.build([{"id": "a", "text": "vitamin D deficiency", "metadata": {"f": 1}}, {"id": "b", "text": "cancer prognosis", "metadata": {"f": 2}}],
                        path, encoder=default_encoder, show_progress=False)
    index.add([{"id": "c", "text": "stem cell biology"}], show_progress=False)
    reader = Index.open(path)
    reader.search("cells", k=3)
    index.delete(["a", "b"])  # the segment that held f as a number goes
    with pytest.raises(CorpusError, match="metadata field 'f' is a string here but a number in the index"):
        index.add([{"id": "d", "text": "antibiotic resistance", "metadata": {"f": "x"}}], show_progress=False)
    index.add([{"id": "d", "text": "antibiotic resistance", "metadata": {"f": 3}}], show_progress=False)
    assert reader.refresh() and reader.metadata_fields == Index.open(path).metadata_fields == {"f": "number"}
    assert [h.id for h in reader.search("antibiotic", k=5, filter={"f": 3})[0]] == ["d"] and reader.search("antibiotic", k=5, filter={"f": 1})[0] == []


def test_codec_and_projection_of_new_segments_are_the_index_own(tmp_path, default_encoder):
    config = IndexConfig(pca_dim=32, codec="residual", codec_bits=2, codec_centroids=8, fde=None, sparse=())
    index = _split(tmp_path, default_encoder, [10], config=config)
    first, added = index.segments
    for name in ("projection.npy", "centroids.npy", "bucket_values.npy", "bucket_cutoffs.npy"):
        assert (first.path / name).read_bytes() == (added.path / name).read_bytes()
    # the added documents went through the first segment's projection and codebooks
    raw = default_encoder.encode_documents([d["text"] for d in DOCS[10:]]).vectors @ first.projection
    raw /= np.linalg.norm(raw, axis=1, keepdims=True)
    decoded = added.tokens.decode(0, added.n_tokens)
    assert decoded.shape == raw.shape and float(np.mean(np.sum(decoded * raw, axis=1))) > 0.9
    merged = index.optimize()
    assert merged["documents"] == len(DOCS) and np.asarray(index.segments[0].tokens.coded.codes).shape[0] == index.n_tokens


def test_added_documents_are_pruned_by_the_statistics_of_the_build(tmp_path, default_encoder):
    from mvr.vectors.prune import prune_mask

    config = IndexConfig(prune=("df",), prune_max_df=0.3, fde=None, sparse=())
    index = _split(tmp_path, default_encoder, [10], config=config)
    first, added = index.segments
    stats = np.load(first.path / "corpus_df.npy")
    assert stats[0] == 10 and (added.path / "corpus_df.npy").read_bytes() == (first.path / "corpus_df.npy").read_bytes()
    encoded = default_encoder.encode_documents([d["text"] for d in DOCS[10:]])
    keep = prune_mask(encoded.token_ids, encoded.offsets, ("df",), None, 0.3, stats)
    assert added.n_tokens == int(keep.sum()) < len(keep)  # the build's frequent tokens go, not the new segment's
    saved = (first.path / "corpus_df.npy").read_bytes()
    assert index.optimize()["documents"] == len(DOCS) and (index.segments[0].path / "corpus_df.npy").read_bytes() == saved


def test_merge_policy_keeps_tiers_bounded(tmp_path, default_encoder, monkeypatch):
    monkeypatch.setattr(writing, "MERGE_FACTOR", 3)
    assert writing.plan_merge([{"documents": n, "deleted": 0} for n in (5, 1, 1, 1)]) == [1, 2, 3]
    assert writing.plan_merge([{"documents": n, "deleted": 0} for n in (5, 1, 1)]) is None
    assert writing.plan_merge([{"documents": 10, "deleted": 6}]) == [0]  # mostly deleted: rewritten
    index = Index.build(DOCS[:1], tmp_path / "idx", encoder=default_encoder, show_progress=False)
    for i in range(1, 9):
        index.add(DOCS[i : i + 1], show_progress=False)
        tiers = [writing._tier(s.n_docs, 3) for s in index.segments]
        assert all(tiers.count(t) < 3 for t in set(tiers)), tiers
    assert len(index) == 9 and sorted(index.doc_ids[i] for i in range(index.n_rows)) == sorted(d["id"] for d in DOCS[:9])


def test_a_reader_keeps_its_commit_until_it_refreshes(tmp_path, default_encoder):
    writer = Index.build(DOCS[:5], tmp_path / "idx", encoder=default_encoder, show_progress=False)
    reader = Index.open(tmp_path / "idx", model=default_encoder)
    writer.add(DOCS[5:], show_progress=False)
    writer.delete(["d0", "d1"])
    writer.optimize()
    assert len(reader) == 5 and reader.generation == 1
    assert sorted(reader.search("cats", k=10, first_stage="exhaustive").doc_ids[0]) == [f"d{i}" for i in range(5)]
    assert (tmp_path / "idx" / SEGMENTS / "s000001").is_dir()  # pinned: not collected
    assert reader.refresh() and reader.generation == writer.generation and len(reader) == len(DOCS) - 2
    assert not reader.refresh()
    del reader
    writer.add([{"id": "x", "text": "one more"}], show_progress=False)  # the writer collects what nobody pins
    names = sorted(p.name for p in (tmp_path / "idx").iterdir())
    assert names == [f"commit-{writer.generation:08d}.json", "manifest.json", SEGMENTS]
    assert {p.name for p in (tmp_path / "idx" / SEGMENTS).iterdir()} == {s.path.name for s in writer.segments}


def test_one_writer_at_a_time(tmp_path, default_encoder):
    index = Index.build(DOCS[:3], tmp_path / "idx", encoder=default_encoder, show_progress=False)
    held = WriterLock(tmp_path, "idx").acquire()
    try:
        with pytest.raises(IndexLockedError, match=f"being written by PID {os.getpid()}"):
            index.add(DOCS[3:4], show_progress=False)
        with pytest.raises(IndexLockedError):
            index.delete(["d0"], wait=0.2)
    finally:
        held.release()
    assert index.delete(["d0"], wait=0.2)["deleted"] == 1


def test_stage_rebuilds_wait_for_another_writer_as_the_lock_error_says(tmp_path, default_encoder, capsys):
    """The lock error says --wait SECONDS; mvr fde / sparse / centroids / pooled and mvr index had no --wait."""
    import threading

    from mvr.cli import main

    index = Index.build(DOCS[:4], tmp_path / "idx", encoder=default_encoder, config=IndexConfig(fde=None, sparse=()), show_progress=False)
    held = WriterLock(tmp_path, "idx").acquire()
    try:
        with pytest.raises(IndexLockedError, match="--wait SECONDS"):
            index.build_stage("pooled", wait=0.2)
        assert main(["sparse", str(tmp_path / "idx"), "--stage", "bm25s", "--wait", "0.2"]) == 2 and "being written by" in capsys.readouterr().err
        for command in (["fde"], ["pooled"], ["centroids"], ["sparse", "--stage", "bm25s"]):  # the number checked as every writer's
            assert main([command[0], str(tmp_path / "idx"), *command[1:], "--wait", "-1"]) == 2
            assert "wait is the seconds to wait for another writer: a number >= 0, got -1.0" in capsys.readouterr().err
        with pytest.raises(IndexLockedError):  # mvr index --overwrite --wait too
            Index.build(DOCS[:2], tmp_path / "idx", encoder=default_encoder, overwrite=True, wait=0.2, show_progress=False)
        threading.Timer(0.3, held.release).start()
        assert main(["fde", str(tmp_path / "idx"), "--wait", "30", "--quiet"]) == 0
    finally:
        held.release()
    assert Index.open(tmp_path / "idx").has_stage("fde")


def test_a_version_1_index_opens_read_only_and_converts(tmp_path):
    copy = tmp_path / "legacy"
    shutil.copytree(LEGACY, copy)
    mine = {"notes.txt": "mine", ".mynotes": "mine", "mydir/f.txt": "mine"}  # a user's files in the folder: not mvr's to move into a segment or drop
    for name, text in mine.items():
        (copy / name).parent.mkdir(exist_ok=True)
        (copy / name).write_text(text)
    old = Index.open(copy)
    assert old.legacy and old.generation == 0
    before = old.search(["cats", "tea"], k=3, first_stage="exhaustive")
    mtimes = {p.name: p.stat().st_mtime_ns for p in copy.iterdir()}
    assert {p.name: p.stat().st_mtime_ns for p in copy.iterdir()} == mtimes  # opening wrote nothing
    run = subprocess.run([sys.executable, "-m", "mvr.cli", "upgrade", str(copy)], capture_output=True, text=True)
    assert run.returncode == 0 and "converted" in run.stdout, run.stderr
    assert json.loads((copy / "manifest.json").read_text())["format_version"] == 2
    new = Index.open(copy)
    assert not new.legacy and new.generation == 1 and verify_files(copy) == []
    after = new.search(["cats", "tea"], k=3, first_stage="exhaustive")
    assert after.doc_ids == before.doc_ids and np.array_equal(after.scores, before.scores)
    assert old.search(["cats", "tea"], k=3, first_stage="exhaustive").doc_ids == before.doc_ids  # still readable through its open files
    assert "nothing to do" in subprocess.run([sys.executable, "-m", "mvr.cli", "upgrade", str(copy)], capture_output=True, text=True).stdout
    new.add([("n1", "a kitten naps")])
    new.optimize()  # the converted segment merged away and collected
    assert {name: (copy / name).read_text() for name in mine} == mine
    assert not any((segment / "notes.txt").exists() for segment in (copy / "segments").iterdir())


def test_the_first_write_converts_a_version_1_index(tmp_path):
    copy = tmp_path / "legacy"
    shutil.copytree(LEGACY, copy)
    index = Index.open(copy)
    first = index.doc_ids[0]
    assert index.delete([str(first)])["deleted"] == 1
    assert not index.legacy and index.generation == 2 and str(first) not in index
    # an add builds the new segment's FDE with the settings of the old one (whose saved config still
    # holds the search-time nprobe of format 1)
    index.add([{"id": "new-doc", "text": "a green tea ceremony in Kyoto"}], show_progress=False)
    assert "new-doc" in index and index.search("green tea in Kyoto", k=1, first_stage="fde")[0][0].id == "new-doc"


def test_cli_add_delete_optimize(tmp_path, default_encoder, beir):
    home = tmp_path / "home"
    Index.build(DOCS[:5], home / "idx", encoder=default_encoder, show_progress=False)
    more = tmp_path / "more.jsonl"
    more.write_text("".join(json.dumps(d) + "\n" for d in DOCS[5:]))
    cli = [sys.executable, "-m", "mvr.cli"]

    def mvr(*args):
        return subprocess.run([*cli, *map(str, args), "--index-dir", str(home)], capture_output=True, text=True)

    run = mvr("add", "idx", more, "--quiet")
    assert run.returncode == 0 and f"{len(DOCS)} documents in 2 segment(s)" in run.stdout, run.stderr
    run = mvr("add", "idx", more, "--quiet")
    assert run.returncode == 2 and "already in the index" in run.stderr and run.stderr.count("\n") == 1
    run = mvr("fde", "idx", "--quiet")  # every segment's stage rebuilt, and all of them counted (it said the last one's)
    assert run.returncode == 0 and f"built the FDE of idx: {len(DOCS)} documents" in run.stdout, run.stdout + run.stderr
    ids = tmp_path / "ids.txt"
    ids.write_text("d1\nd2\n\nnope\n")
    run = mvr("delete", "idx", "d0", "--ids", ids, "--no-merge")  # (3 of the 5 rows of the first segment: the policy would rewrite it)
    assert run.returncode == 0 and "deleted 3 documents" in run.stdout and "1 id(s) not in the index: 'nope'" in run.stderr
    run = mvr("delete", "idx", "d3,d4")  # one argument: one id, and a hint
    assert run.returncode == 0 and "deleted 0 documents" in run.stdout and "'d3,d4'; give several ids as separate arguments, not one joined by commas" in run.stderr
    run = mvr("delete", "idx")
    assert run.returncode == 2 and "no ids to delete" in run.stderr
    info = json.loads(mvr("info", "idx", "--json").stdout)
    assert info["documents"] == len(DOCS) - 3 and info["deleted_documents"] == 3 and len(info["segments"]) == 2
    run = mvr("optimize", "idx")
    assert run.returncode == 0 and "merged 2 segment(s)" in run.stdout
    run = mvr("info", "idx", "--verify")
    assert run.returncode == 0, run.stderr
    run = mvr("search", "idx", "volcano", "-k", "1", "--json")
    assert run.returncode == 0 and json.loads(run.stdout)["hits"][0]["id"] == "d6"


def test_a_segment_that_disagrees_with_its_commit_is_refused(tmp_path, default_encoder):
    from mvr import IndexFormatError

    index = Index.build(DOCS[:4], tmp_path / "idx", encoder=default_encoder, config=IndexConfig(fde=None, sparse=()), show_progress=False)
    commit = tmp_path / "idx" / f"commit-{index.generation:08d}.json"
    record = json.loads(commit.read_text())
    record["config"]["codec"] = "int8"
    commit.write_text(json.dumps(record))
    with pytest.raises(IndexFormatError, match="other settings or another encoder than .*commit-00000001.json"):
        Index.open(tmp_path / "idx")
    record["config"]["codec"] = "no-such-codec"
    commit.write_text(json.dumps(record))
    with pytest.raises(IndexFormatError, match="commit-00000001.json: its config cannot be read"):
        Index.open(tmp_path / "idx")


def test_an_open_index_follows_a_rebuild_at_its_path(tmp_path, default_encoder):
    """A rebuild renames a new index into the folder's place, and its generations count from 1
    again: an Index open on the old one refreshed to nothing new, reused its old segments by name
    (listing documents the index no longer held) and wrote its deletes into the new index by the
    old positions (deleting another document, or a commit that made the index unopenable)."""
    old = [{"id": f"o{i}", "text": f"old document {i} about tea"} for i in range(6)]
    new = [{"id": f"n{i}", "text": f"new document {i} about cats"} for i in range(6)]
    stale = Index.build(old, tmp_path / "idx", encoder=default_encoder, show_progress=False)
    stale.add([{"id": "o6", "text": "one more"}])  # the stale handle ahead, at generation 2
    Index.build(new, tmp_path / "idx", encoder=default_encoder, overwrite=True, show_progress=False)
    assert stale.delete(["o1", "n2"]) == {"deleted": 1, "missing": ["o1"], "generation": 2}
    live = lambda index: sorted(doc.id for doc in index.documents())  # noqa: E731
    assert live(Index.open(tmp_path / "idx")) == live(stale) == sorted(d["id"] for d in new if d["id"] != "n2")
    Index.build(old, tmp_path / "idx", encoder=default_encoder, overwrite=True, show_progress=False)
    assert stale.refresh() and live(stale) == sorted(d["id"] for d in old)
    assert [h.id for h in stale.search("old document 3", k=1, first_stage="exhaustive")[0]] == ["o3"]


def test_an_open_index_encodes_as_the_index_rebuilt_at_its_path_does(tmp_path, default_encoder):
    """The encoders an Index keeps (the query one from its first search, the document one from its
    first add) were kept after a rebuild at its path with other lengths: its next add committed a
    segment of the old lengths, and every open after it said the index was damaged; its searches
    encoded queries at the old length (other scores than any fresh reader's)."""
    from mvr import Encoder

    docs = [{"id": f"d{i}", "text": f"document {i} about tea and the cells of plants, their light and water"} for i in range(6)]
    Index.build(docs, tmp_path / "idx", encoder=default_encoder, config=IndexConfig(fde=None), show_progress=False)
    held = Index.open(tmp_path / "idx")  # its own model (an Encoder given is checked against the new index instead: refused)
    held.search("tea", k=2)
    held.add([{"id": "x1", "text": "one more about coffee"}])
    Index.build(docs, tmp_path / "idx", encoder=Encoder(query_maxlen=8, doc_maxlen=12), config=IndexConfig(fde=None), overwrite=True, show_progress=False)
    held.add([{"id": "x2", "text": "one more about coffee and the long roots of plants in dry ground"}])
    fresh = Index.open(tmp_path / "idx")  # it was refused: written with other settings than the commit records
    assert not verify_files(tmp_path / "idx") and fresh.n_docs == 7 and fresh.max_doc_len <= 12
    query = "what do plants make from light and water, and how much tea is drunk"
    ours, theirs = held.search(query, k=7, first_stage="exhaustive"), fresh.search(query, k=7, first_stage="exhaustive")
    assert ours.doc_ids == theirs.doc_ids and np.allclose(ours.scores, theirs.scores)


def test_a_reader_that_has_not_refreshed_refuses_what_a_rebuild_at_its_path_left(tmp_path, default_encoder):
    """A reader keeps its commit's open files; what it opens lazily (a first stage, the id order,
    token ids, a metadata column) it opened by path, and after a rebuild there those paths held the
    new index's files: bm25s said the healthy index was damaged, explain lost every token."""
    old = [{"id": f"o{i}", "text": f"old document {i} about tea", "metadata": {"year": 2000 + i}} for i in range(6)]
    new = [{"id": f"n{i}", "text": f"new document {i} about cats", "metadata": {"year": 2000 + i}} for i in range(3)]
    reader = Index.build(old, tmp_path / "idx", encoder=default_encoder, config=IndexConfig(fde=None), show_progress=False)
    assert [h.id for h in reader.search("old document 2", k=1, first_stage="exhaustive")[0]] == ["o2"]
    Index.build(new, tmp_path / "idx", encoder=default_encoder, config=IndexConfig(fde=None), overwrite=True, show_progress=False)
    assert [h.id for h in reader.search("old document 2", k=1, first_stage="exhaustive")[0]] == ["o2"]  # what it holds open still reads
    for use in (lambda: reader.search("tea", k=2, first_stage="bm25s", rerank=False), lambda: reader.position("o3"),
                lambda: reader.search("tea", k=1, first_stage="exhaustive", explain=True)):
        with pytest.raises(IndexNotFoundError, match="was rebuilt or removed since this reader opened it.*refresh"):
            use()
    try:  # a metadata column loaded before (the build's returned index has it) answers from the old commit; one not loaded is refused
        assert reader.search("tea", k=1, first_stage="exhaustive", filter={"year": 2003}).doc_ids == [["o3"]]
    except IndexNotFoundError as error:
        assert "rebuilt or removed since this reader opened it" in str(error)
    assert reader.refresh() and [h.id for h in reader.search("cats", k=3, first_stage="bm25s", rerank=False)[0]][:1] != []
    assert reader.search("new document 1", k=1, first_stage="exhaustive", explain=True)[0][0].id == "n1"


@pytest.mark.parametrize("use", ["explain", "bm25s", "position", "filter"])
def test_a_rebuild_between_a_readers_check_and_its_lazy_load_is_refused(tmp_path, default_encoder, use):
    """A reader checked its folder, then loaded a file by path: a rebuild swapping the folder in
    between (the retrievers' explain under `mvr index --overwrite`) gave an IndexError, a
    FileNotFoundError, or another index's rows (an explanation without spans)."""
    import shutil

    old = [{"id": f"o{i}", "text": f"old document {i} about tea", "metadata": {"year": 2000 + i}} for i in range(6)]
    new = [{"id": f"n{i}", "text": f"new {i}", "metadata": {"year": 1990 + i}} for i in range(2)]
    config = IndexConfig(fde=None)
    Index.build(new, tmp_path / "next", encoder=default_encoder, config=config, show_progress=False)
    Index.build(old, tmp_path / "idx", encoder=default_encoder, config=config, show_progress=False)
    reader = Index.open(tmp_path / "idx", model=default_encoder)
    segment = reader.segments[0]
    checked = segment.still_here

    def check_then_rebuild():  # the first check passes; the rebuild lands before the load
        checked()
        segment.still_here = checked
        os.replace(tmp_path / "idx", tmp_path / ".idx.old-1-0a0b0c0d")
        shutil.copytree(tmp_path / "next", tmp_path / "idx")  # new files (not the linked old ones)

    segment.still_here = check_then_rebuild
    with pytest.raises(IndexNotFoundError, match="was rebuilt or removed since this reader opened it"):
        if use == "explain":
            reader.search("old document 2", k=1, first_stage="exhaustive", explain=True)
        elif use == "bm25s":
            reader.search("tea", k=2, first_stage="bm25s", rerank=False)
        elif use == "position":
            reader.position("o3")
        else:
            reader.search("tea", k=1, first_stage="exhaustive", filter={"year": 2003})
    assert reader.refresh() and reader.search("new 1", k=1, first_stage="exhaustive", explain=True)[0][0].id == "n1"


def test_a_reader_that_has_not_refreshed_keeps_the_stages_it_had(tmp_path, default_encoder):
    """Whether a segment has a first stage was asked of the folder at every search: after a rebuild
    without bm25s the reader's default stage turned to another, and a bm25s it held open was refused
    ('has no bm25s first stage; add it with mvr sparse', which would not help)."""
    docs = [{"id": f"d{i}", "text": f"document {i} about tea and cats"} for i in range(8)]
    reader = Index.build(docs, tmp_path / "idx", encoder=default_encoder, show_progress=False)
    before = (reader.default_stage, reader.search("tea", k=3).doc_ids, reader.search("cats", k=3, first_stage="bm25s", rerank=False).doc_ids)
    Index.build(docs[:4], tmp_path / "idx", encoder=default_encoder, config=IndexConfig(fde=None, sparse=()), overwrite=True, show_progress=False)
    assert (reader.default_stage, reader.search("tea", k=3).doc_ids, reader.search("cats", k=3, first_stage="bm25s", rerank=False).doc_ids) == before
    with pytest.raises(IndexNotFoundError, match="rebuilt or removed since this reader opened it"):
        reader.search("tea", k=3, first_stage="pooled")  # not built here: is that so of the folder it read? it cannot tell any more
    assert reader.refresh() and reader.default_stage == "exhaustive"


def test_a_refresh_during_a_rebuilds_swap_waits_for_the_new_index(tmp_path, default_encoder):
    """A rebuild renames the old folder away, then the new one in: a refresh in between (a server's
    request) said the index was gone, or raised a bare FileNotFoundError."""
    import threading

    docs = [{"id": f"d{i}", "text": f"document {i}"} for i in range(3)]
    index = Index.build(docs, tmp_path / "idx", encoder=default_encoder, config=IndexConfig(fde=None, sparse=()), show_progress=False)
    Index.build(docs[:2], tmp_path / "next", encoder=default_encoder, config=IndexConfig(fde=None, sparse=()), show_progress=False)
    os.replace(tmp_path / "idx", tmp_path / ".idx.old-1-0a0b0c0d")  # as StagingDir.commit names it
    swap = threading.Timer(0.2, os.replace, (tmp_path / "next", tmp_path / "idx"))
    swap.start()
    try:
        assert index.refresh() and index.n_docs == 2
    finally:
        swap.join()
    shutil.rmtree(tmp_path / "idx")
    shutil.rmtree(tmp_path / ".idx.old-1-0a0b0c0d")
    started = time.monotonic()
    with pytest.raises(IndexNotFoundError, match="there is no index at .* any more"):
        index.refresh()
    assert time.monotonic() - started < 0.5  # no swap under way: said at once (a server's request to a removed index waited a second)


def test_a_rebuild_between_a_refreshs_two_reads_is_not_mixed_into_the_old_index(tmp_path, default_encoder, monkeypatch):
    """A rebuild's swap landing after refresh saw the old index and before it opened the commit
    reused the old index's segments (by name) under the new index's commit: the old texts, and a
    document the old index had deleted, under generation 1 of the new."""
    import mvr.segment as segment

    config = IndexConfig(fde=None, sparse=())
    reader = Index.build([{"id": f"d{i}", "text": f"old text {i}"} for i in range(6)], tmp_path / "idx", encoder=default_encoder, config=config, show_progress=False)
    Index.build([{"id": f"d{i}", "text": f"new text {i}"} for i in range(6)], tmp_path / "next", encoder=default_encoder, config=config, show_progress=False)
    Index.open(tmp_path / "idx").delete(["d0"])
    pin = segment.pin_current

    def swapped_then_pinned(path):
        monkeypatch.setattr(segment, "pin_current", pin)
        os.replace(tmp_path / "idx", tmp_path / ".idx.old-1-0a0b0c0d")
        os.replace(tmp_path / "next", tmp_path / "idx")
        return pin(path)

    monkeypatch.setattr(segment, "pin_current", swapped_then_pinned)
    assert reader.refresh() and reader.generation == 1
    assert sorted(d.text for d in reader.documents()) == [f"new text {i}" for i in range(6)]


def test_a_rebuild_at_the_path_is_told_apart_when_its_folder_number_comes_back(tmp_path, default_encoder, monkeypatch):
    """Which index stands at a path was told by the folder's (device, inode) alone, and a file
    system may give a removed folder's inode number to a later one: every commit now carries the
    index_id its first commit drew, in the pointer too."""
    from mvr.storage import commits

    monkeypatch.setattr(commits, "folder_identity", lambda path: (0, 0))  # every folder the same number, as when one comes back
    config = IndexConfig(fde=None, sparse=())
    reader = Index.build([{"id": f"o{i}", "text": f"old {i}"} for i in range(3)], tmp_path / "idx", encoder=default_encoder, config=config, show_progress=False)
    first = json.loads((tmp_path / "idx" / "manifest.json").read_text())["index_id"]
    reader.add([{"id": "o3", "text": "old 3"}])
    assert json.loads((tmp_path / "idx" / "manifest.json").read_text())["index_id"] == first == reader._state.record["index_id"]
    Index.build([{"id": f"n{i}", "text": f"new {i}"} for i in range(5)], tmp_path / "idx", encoder=default_encoder, config=config, overwrite=True, show_progress=False)
    assert reader.refresh() and sorted(d.id for d in reader.documents()) == [f"n{i}" for i in range(5)]
