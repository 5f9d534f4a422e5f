"""A first stage rebuilt over an index of several segments is one commit: each segment is relinked
into a new one with the new stage, and the pointer moves once. A real process killed at chosen
points of the rebuild leaves the old stage in every segment (never some segments old, some new),
and the next writer collects what it wrote; a reader keeps its commit's stage until it refreshes."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import stat
import subprocess
import sys

import numpy as np
import pytest

from conftest import DOCS, FAST
from mvr import FDEConfig, Index
from mvr.storage.commits import SEGMENTS, read_pointer
from mvr.storage.validate import verify_files

DOC_LIST = [{"id": i, "title": t, "text": x} for i, t, x in DOCS]
QUERIES = ["purring cats", "capital city", "cell energy"]
OLD, NEW = FDEConfig(reps=2, k_sim=2, d_proj=8), FDEConfig(reps=3, k_sim=3, d_proj=8, seed=7)

# A real rebuild of the fde stage (NEW settings), SIGKILLed at one point: "second" as the second
# segment's stage is being built (the first one's is done), "pointer" after the new commit file
# was written and before manifest.json points to it.
KILLED_AT = (
    "import os, signal, sys\n"
    "from pathlib import Path\n"
    "import mvr.build, mvr.storage.commits as commits\n"
    "from mvr import FDEConfig, Index\n"
    "point, build_stage, write_json, calls = sys.argv[3], mvr.build.build_stage, commits.write_json, []\n"
    "def killing_build(*a, **k):\n"
    "    calls.append(1)\n"
    "    if point == 'second' and len(calls) == 2:\n"
    "        os.kill(os.getpid(), signal.SIGKILL)\n"
    "    return build_stage(*a, **k)\n"
    "def killing_write(path, data):\n"
    "    if point == 'pointer' and Path(path).name == 'manifest.json':\n"
    "        os.kill(os.getpid(), signal.SIGKILL)\n"
    "    return write_json(path, data)\n"
    "mvr.build.build_stage, commits.write_json = killing_build, killing_write\n"
    "Index.open(Path(sys.argv[1]), model=sys.argv[2]).build_fde(FDEConfig(reps=3, k_sim=3, d_proj=8, seed=7))\n"
)


def _three_segments(path, encoder) -> Index:
    index = Index.build(DOC_LIST[:4], path, encoder=encoder, config=dataclasses.replace(FAST, fde=OLD))
    index.add(DOC_LIST[4:7], merge=False)
    index.add(DOC_LIST[7:], merge=False)
    index.delete([DOC_LIST[5]["id"]], merge=False)  # a deletion bitmap the rebuild carries over
    assert len(index.segments) == 3
    return index


def _fde_hits(index: Index) -> list:
    found = index.search(QUERIES, k=5, first_stage="fde", rerank=False)
    return [list(zip(ids, np.round(scores, 5).tolist())) for ids, scores in zip(found.doc_ids, found.scores)]


def _settings(index: Index) -> set:
    """(reps, k_sim, seed) of the fde stage of each segment."""
    configs = [json.loads((s.path / "fde" / "manifest.json").read_text())["config"] for s in index.segments]
    return {(c["reps"], c["k_sim"], c["seed"]) for c in configs}


def test_a_stage_rebuild_is_one_commit_and_a_reader_keeps_its_stage(tmp_path, plain_encoder):
    index = _three_segments(tmp_path / "idx", plain_encoder)
    reader = Index.open(tmp_path / "idx", model=plain_encoder)
    before, generation, names = _fde_hits(index), read_pointer(index.path)["generation"], [s.path.name for s in index.segments]
    index.build_fde(NEW)
    assert read_pointer(index.path)["generation"] == generation + 1  # one commit for every segment
    assert _settings(index) == {(3, 3, 7)} and [s.path.name for s in index.segments] != names
    after = _fde_hits(index)
    assert after != before and len(index) == len(DOC_LIST) - 1
    assert _fde_hits(reader) == before  # the reader's commit and its segments are pinned, not collected
    assert reader.config.fde == OLD and index.config.fde == NEW  # the config says what the stage is (it kept the build's)
    reader.refresh()
    assert _fde_hits(reader) == after and Index.open(tmp_path / "idx").config.fde == NEW
    assert verify_files(index.path) == []
    for old, new in zip(names, index.segments):  # the new segments share the old ones' files: nothing was copied
        assert os.stat(tmp_path / "idx" / SEGMENTS / old / "vectors.npy").st_ino == os.stat(new.path / "vectors.npy").st_ino
    del reader
    index.delete(["d1"])  # the next writer collects the segments no commit in use names
    assert sorted(p.name for p in (index.path / SEGMENTS).iterdir()) == sorted(s.path.name for s in index.segments)
    assert not index.config.pooled
    index.build_stage("pooled")
    assert index.config.pooled and Index.open(tmp_path / "idx").has_stage("pooled")


@pytest.mark.parametrize("point", ["second", "pointer"])
def test_a_stage_rebuild_killed_part_way_leaves_the_old_stage_everywhere(tmp_path, models, point):
    from mvr import Encoder

    index = _three_segments(tmp_path / "idx", Encoder(models["plain"]))
    before, committed = _fde_hits(index), sorted(s.path.name for s in index.segments)
    del index  # no reader left pinning the old commit: the next writer may collect it
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    killed = subprocess.run([sys.executable, "-c", KILLED_AT, str(tmp_path / "idx"), str(models["plain"]), point], capture_output=True, text=True, timeout=300, env=env)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert len(list((tmp_path / "idx" / SEGMENTS).iterdir())) > len(committed)  # the killed rebuild had written new segments
    again = Index.open(tmp_path / "idx", model=models["plain"])
    assert _fde_hits(again) == before and _settings(again) == {(2, 2, 0)}  # not a mix of old and new stages
    assert verify_files(again.path) == [] and sorted(s.path.name for s in again.segments) == committed
    again.build_fde(NEW)  # the next writer removes what the kill left, and the rebuild goes through
    assert _settings(again) == {(3, 3, 7)} and _fde_hits(again) != before
    assert sorted(p.name for p in (again.path / SEGMENTS).iterdir()) == sorted(s.path.name for s in again.segments)


# A stage rebuild in a process of its own: were it to open a pipe a user left in a segment, it would wait for ever.
REBUILD = "import sys; from pathlib import Path; from mvr import FDEConfig, Index; Index.open(Path(sys.argv[1]), model=sys.argv[2]).build_fde(FDEConfig(reps=3, k_sim=3, d_proj=8, seed=7))"


def test_a_stage_rebuild_keeps_a_segment_s_other_files_and_refuses_a_folder_it_did_not_make(tmp_path, models):
    """What a user left in a segment goes on into the new one: a file, one named like mvr's
    leftovers, a dangling link and a pipe (the commit flushed every file it found, so the link
    failed the rebuild and the pipe hung it); what an older mvr's killed stage swap left is dropped."""
    from mvr import Encoder, IndexExistsError

    index = _three_segments(tmp_path / "idx", Encoder(models["plain"]))
    segment = index.segments[1].path
    (segment / "notes.txt").write_text("mine")
    (segment / ".notes.old-20240101").write_text("mine too")
    (segment / "dangling").symlink_to(tmp_path / "nowhere")
    os.mkfifo(segment / "pipe")
    shutil.copytree(segment / "fde", segment / ".fde.old-4242-x1y2z3w4")  # a stage's replaced copy, hidden by a kill mid-swap
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    rebuilt = subprocess.run([sys.executable, "-c", REBUILD, str(index.path), str(models["plain"])], capture_output=True, text=True, timeout=300, env=env)
    assert rebuilt.returncode == 0, rebuilt.stderr
    index.refresh()
    segment = index.segments[1].path
    assert (segment / "notes.txt").read_text() == "mine" and (segment / ".notes.old-20240101").read_text() == "mine too"
    assert os.readlink(segment / "dangling") == str(tmp_path / "nowhere") and stat.S_ISFIFO(os.lstat(segment / "pipe").st_mode)
    assert not (segment / ".fde.old-4242-x1y2z3w4").exists() and _settings(index) == {(3, 3, 7)}
    stage = index.segments[2].path / "fde"
    for entry in stage.iterdir():
        entry.unlink()
    (stage / "manifest.json").write_text('{"format": "mvr-index"}')  # another format's folder where the stage was
    generation = read_pointer(index.path)["generation"]
    with pytest.raises(IndexExistsError, match="'mvr-fde'"):
        index.build_fde(OLD)
    assert read_pointer(index.path)["generation"] == generation and (stage / "manifest.json").read_text() == '{"format": "mvr-index"}'


def test_a_shard_opens_the_commit_its_coordinator_holds(tmp_path, plain_encoder):
    """A ShardedIndex's actors opened the index's current commit, not the coordinator's: a write
    between the two opens (a stage rebuild renames every segment) failed every search to come."""
    pytest.importorskip("ray")
    from mvr.distributed.shards import _Shard
    from mvr.stages import QueryBatch

    index = _three_segments(tmp_path / "idx", plain_encoder)
    held = Index.open(tmp_path / "idx", model=plain_encoder)  # the coordinator's commit
    names = [s.path.name for s in held.segments]
    index.build_fde(NEW)  # then a writer moves on, before the shards open
    shard = _Shard(None)
    shard.open(0, str(held.path), held._state.generation, held._state.record, names)
    state, segments = shard.epochs[0]
    assert sorted(segments) == sorted(names) and state.generation == held._state.generation
    encoded = held.encoder.encode_queries(["purring cats"])
    query = QueryBatch(["purring cats"], encoded.vectors, encoded.offsets)
    for segment in held.segments:  # the held commit's old stage, as the coordinator has it
        (found,) = shard.call(0, segment.path.name, "search", "fde", query, 3)
        np.testing.assert_array_equal(found.positions, segment.stage("fde").search(query, 3)[0].positions)


def _mvr(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mvr.cli", *map(str, args)], capture_output=True, text=True, timeout=300)


def test_a_factory_faiss_cannot_train_or_fill_is_refused_or_left_exact(tmp_path, models, plain_encoder):
    docs = [{"id": str(i), "text": f"document {i} about {DOCS[i % len(DOCS)][2]}"} for i in range(300)]
    index = Index.build(docs, tmp_path / "idx", encoder=plain_encoder, config=FAST)
    done = _mvr("fde", index.path, "--fde-factory", "OPQ4,PQ4", "--fde-reps", 4, "--fde-k-sim", 4, "--fde-d-proj", 8)
    assert done.returncode == 0, done.stderr  # faiss's OPQ trained on 256 or more documents, but fewer than its 512 dimensions, killed the process
    (segment,) = Index.open(index.path, model=plain_encoder).segments
    assert json.loads((segment.path / "fde" / "manifest.json").read_text())["factory_used"] == "Flat"
    done = _mvr("fde", index.path, "--fde-factory", "IDMap,Flat")
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "IDMap" in done.stderr, done.stderr


def test_a_centroid_count_given_is_kept_by_added_and_merged_segments(tmp_path, plain_encoder):
    index = Index.build(DOC_LIST[:5], tmp_path / "idx", encoder=plain_encoder, config=FAST)
    index.build_stage("centroids", 3)
    index.add(DOC_LIST[5:], merge=False)
    manifests = [json.loads((s.path / "centroids" / "manifest.json").read_text()) for s in Index.open(index.path).segments]
    assert [(m["asked"], m["centroids"]) for m in manifests] == [(3, 3), (3, 3)]
    index.optimize()
    (merged,) = Index.open(index.path).segments
    assert json.loads((merged.path / "centroids" / "manifest.json").read_text())["centroids"] == 3


def test_centroids_of_damaged_vectors_are_one_line(tmp_path, models, plain_encoder):
    index = Index.build(DOC_LIST, tmp_path / "idx", encoder=plain_encoder, config=dataclasses.replace(FAST, codec="float16"))
    vectors = index.segments[0].path / "vectors.npy"
    data = bytearray(vectors.read_bytes())
    data[-64:] = b"\xff" * 64  # float16 NaNs, the file's size unchanged
    os.chmod(vectors, stat.S_IRUSR | stat.S_IWUSR)
    vectors.write_bytes(bytes(data))
    done = _mvr("centroids", index.path, "--centroids", 4)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "NaN" in done.stderr and "verify" in done.stderr, done.stderr


def test_writers_through_a_symlink_and_its_target_take_one_lock(tmp_path, plain_encoder):
    from mvr.errors import IndexLockedError
    from mvr.writer import Writer

    index = Index.build(DOC_LIST, tmp_path / "idx", encoder=plain_encoder, config=FAST)
    link = tmp_path / "link"
    link.symlink_to(index.path)
    with Writer(Index.open(link, model=plain_encoder)):
        with pytest.raises(IndexLockedError):
            index.delete([DOC_LIST[0]["id"]])  # both took segment s000002 and one generation, and each collected the other's files
    with Writer(index):
        with pytest.raises(IndexLockedError):
            Index.open(link, model=plain_encoder).delete([DOC_LIST[0]["id"]])
    assert Index.open(link, model=plain_encoder).delete([DOC_LIST[0]["id"]])["deleted"] == 1
    assert verify_files(index.path) == []


def test_out_of_memory_is_one_line(tmp_path, plain_encoder):
    import resource

    index = Index.build(DOC_LIST, tmp_path / "idx", encoder=plain_encoder, config=FAST)
    def limit():  # the child's address space: 3 GiB, less than the 2 GiB FDE asked for needs beside the process
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))

    done = subprocess.run([sys.executable, "-m", "mvr.cli", "fde", str(index.path), "--fde-k-sim", "16", "--fde-reps", "64", "--fde-d-proj", "16"],
                          capture_output=True, text=True, timeout=300, preexec_fn=limit)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "out of memory" in done.stderr, done.stderr
    assert verify_files(index.path) == []


def test_an_index_linked_from_a_writable_home_into_a_folder_it_cannot_write_beside_still_takes_writes(tmp_path, plain_encoder):
    locked = tmp_path / "locked"
    index = Index.build(DOC_LIST, locked / "idx", encoder=plain_encoder, config=FAST)
    (tmp_path / "home").mkdir()
    link = tmp_path / "home" / "idx"
    link.symlink_to(index.path)
    if subprocess.run(["chattr", "+i", str(locked)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here (the folder beside the index must refuse new files, even to root)")
    try:
        assert Index.open(link, model=plain_encoder).delete([DOC_LIST[0]["id"]])["deleted"] == 1  # its lock beside the link
        assert DOC_LIST[0]["id"] not in Index.open(index.path, model=plain_encoder)
    finally:
        subprocess.run(["chattr", "-i", str(locked)], check=True)


def test_a_rebuild_reports_the_live_documents_and_the_rows_it_built(tmp_path, plain_encoder):
    index = _three_segments(tmp_path / "idx", plain_encoder)  # 8 documents, one deleted
    built = index.build_fde(NEW)
    assert (built["documents"], built["rows"]) == (7, 8)  # it said 8 documents
