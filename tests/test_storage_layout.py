"""Writing the index home safely: only mvr's own folders are replaced, names stay under the home,
one writer per name (a real lock between real processes), and what killed writers leave behind
is put back or removed by the next one."""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import DOCS, FAST, segment_path
from mvr import ConfigError, Encoder, FDEConfig, Index, IndexExistsError, IndexNotFoundError
from mvr.cli import main
from mvr.errors import IndexLockedError
from mvr.storage.layout import StagingDir, locate
from mvr.storage.names import target_path
from mvr.storage.validate import verify_files

DOC_LIST = [{"_id": i, "title": t, "text": x} for i, t, x in DOCS]

# A real second process: opens a build of HOME/idx (taking the writer lock), writes a part, says
# where, then sleeps until killed.
HOLDER = (
    "import sys, time\n"
    "from pathlib import Path\n"
    "from mvr.storage.layout import StagingDir\n"
    "staging = StagingDir(Path(sys.argv[1]) / 'idx', overwrite=True)\n"
    "(staging.path / 'vectors.npy').write_bytes(b'x' * 4096)\n"
    "print(staging.path, flush=True)\n"
    "time.sleep(600)\n"
)


def _fake_index(folder: Path, note: str = "") -> Path:
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"format": "mvr-index", "note": note}))
    return folder


def _hidden(home: Path) -> list[str]:
    return sorted(p.name for p in home.iterdir() if p.name.startswith("."))


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("manifest", ['{"album": "holidays"}', '{"format": "mvr-fde"}', "not json at all", "[1, 2]"])
def test_overwrite_replaces_only_a_folder_mvr_created(tmp_path, beir, models, capsys, manifest):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "manifest.json").write_text(manifest)
    (folder / "holiday.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    code, _, err = _run(capsys, "index", beir / "corpus.jsonl", "--path", folder, "--overwrite", "--model", models["plain"], "--no-fde", "--sparse", "none", "--quiet")
    assert code == 2 and err.startswith("mvr: error: ") and len(err.strip().splitlines()) == 1
    assert str(folder) in err and "mvr will not replace a folder it did not create" in err
    with pytest.raises(IndexExistsError, match="photos is not an mvr index .*will not replace a folder it did not create"):
        StagingDir(folder, overwrite=True)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert _hidden(tmp_path) == []  # the refused writer left no lock or staging behind


def test_overwrite_still_replaces_an_index_and_an_empty_folder(tmp_path, plain_encoder):
    index = Index.build(DOC_LIST, tmp_path / "idx", encoder=plain_encoder, config=FAST)
    rebuilt = Index.build([("only", "one document")], tmp_path / "idx", encoder=plain_encoder, config=FAST, overwrite=True)
    assert list(rebuilt.doc_ids) == ["only"] and rebuilt.path == index.path
    (tmp_path / "empty").mkdir()
    assert list(Index.build([("a", "cats")], tmp_path / "empty", encoder=plain_encoder, config=FAST).doc_ids) == ["a"]
    assert _hidden(tmp_path) == []


def test_overwrite_refuses_an_index_folder_holding_what_mvr_did_not_write(tmp_path, plain_encoder, capsys):
    """The folder is replaced whole: a user's notes, runs or folders inside it (segments/ too) went
    with it, exit 0. They are named, and nothing is touched until they are moved out."""
    index = Index.build(DOC_LIST, tmp_path / "idx", encoder=plain_encoder, config=FAST)
    (tmp_path / "idx" / "NOTES.md").write_text("keep")
    (tmp_path / "idx" / "runs").mkdir()
    (tmp_path / "idx" / "segments" / "README").write_text("mine")
    for attempt in range(2):
        with pytest.raises(IndexExistsError, match=r"holds what mvr did not write there \(NOTES\.md, runs, segments/README\); move it out"):
            Index.build([("only", "one document")], tmp_path / "idx", encoder=plain_encoder, config=FAST, overwrite=True)
        assert (tmp_path / "idx" / "NOTES.md").read_text() == "keep" and Index.open(tmp_path / "idx").n_docs == index.n_docs
    (tmp_path / "c.jsonl").write_text(json.dumps({"id": "a", "text": "cats"}) + "\n")
    assert main(["index", str(tmp_path / "c.jsonl"), "--path", str(tmp_path / "idx"), "--overwrite", "--no-fde", "--sparse", "none", "--quiet"]) == 2
    assert "holds what mvr did not write there" in capsys.readouterr().err and (tmp_path / "idx" / "runs").is_dir()
    for entry in ("NOTES.md", "runs", "segments/README"):
        os.replace(tmp_path / "idx" / entry, tmp_path / entry.replace("/", "-"))
    assert list(Index.build([("only", "one document")], tmp_path / "idx", encoder=plain_encoder, config=FAST, overwrite=True).doc_ids) == ["only"]


@pytest.mark.parametrize("name", ["../escape", "a/b", "/tmp/abs", "..", ".", ".hidden", "tab\tname", "bell\x07", " padded", "back\\slash", "", "x" * 201])
def test_a_name_stays_under_the_index_home(tmp_path, beir, models, capsys, name):
    home = tmp_path / "deep" / "home"
    code, _, err = _run(capsys, "index", beir / "corpus.jsonl", "--name", name, "--index-dir", home, "--model", models["plain"], "--no-fde", "--sparse", "none", "--quiet")
    assert code == 2 and err.startswith("mvr: error: invalid index name") and "--path PATH" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(ConfigError, match=r"invalid index name .*pathlib\.Path"):
        Index.build(DOC_LIST, name, home=home)
    assert not (tmp_path / "escape").exists() and not (tmp_path / "deep" / "escape").exists() and not home.exists()


def test_paths_are_given_explicitly(tmp_path, beir, models, capsys):
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere" / "idx"
    common = ("--model", models["plain"], "--no-fde", "--sparse", "none", "--quiet")
    code, out, _ = _run(capsys, "index", beir / "corpus.jsonl", "--path", elsewhere, "--index-dir", home, *common)
    assert code == 0 and str(elsewhere) in out and (elsewhere / "manifest.json").is_file() and not home.exists()
    assert locate(str(elsewhere)) == elsewhere  # reading still takes a path
    code, out, _ = _run(capsys, "index", beir / "corpus.jsonl", "--name", "tiny", "--index-dir", home, *common)
    assert code == 0 and (home / "tiny" / "manifest.json").is_file()
    code, out, _ = _run(capsys, "search", home / "tiny", "which animal purrs?", "-k", "1")
    assert code == 0 and out.splitlines()[0].split()[:3] == ["rank", "score", "id"]  # a random model: any hit will do
    for both_or_neither in (["--name", "x", "--path", tmp_path / "x"], []):
        with pytest.raises(SystemExit) as exit_:
            main(["index", str(beir / "corpus.jsonl"), *map(str, both_or_neither)])
        assert exit_.value.code == 2
    assert "one of the arguments --name --path is required" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="give the path of the index folder itself"):
        target_path(tmp_path / "..")


def test_one_writer_per_name_and_a_killed_one_is_cleaned_up(tmp_path, beir, models, capsys):
    home = tmp_path / "home"
    # a staging folder an interrupted build left (mvr's mark inside), and an old copy of an index
    # that is present
    home.mkdir()
    (home / ".idx.building-k3j_9x2q").mkdir()
    (home / ".idx.building-k3j_9x2q" / "vectors.raw").write_bytes(b"\0" * 1000)
    (home / ".idx.building-k3j_9x2q" / ".mvr-staging").write_text("1\n")
    _fake_index(home / "other")
    _fake_index(home / ".other.old-77-abcdefgh")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(home)], stdout=subprocess.PIPE, text=True)
    try:
        staging = Path(holder.stdout.readline().strip())
        assert staging.parent == home and staging.name.startswith(f".idx.building-{holder.pid}-") and staging.is_dir()
        assert not (home / ".idx.building-k3j_9x2q").exists()  # the holder cleaned up on starting
        assert (home / ".idx.mvr-lock").read_text().strip() == str(holder.pid)
        with pytest.raises(IndexLockedError, match=rf"^index 'idx' is being written by PID {holder.pid}; wait for it"):
            StagingDir(home / "idx", overwrite=True)
        code, _, err = _run(capsys, "index", beir / "corpus.jsonl", "--name", "idx", "--index-dir", home, "--overwrite", "--model", models["plain"], "--quiet")
        assert code == 2 and err.strip() == err.strip().splitlines()[0] and f"mvr: error: index 'idx' is being written by PID {holder.pid}" in err
        # another name is free to write, and its writer leaves the live build's folder alone
        with StagingDir(home / "second", overwrite=False) as other:
            assert other.path.name.startswith(f".second.building-{os.getpid()}-")
        assert staging.is_dir() and (staging / "vectors.npy").stat().st_size == 4096
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        holder.stdout.close()
    assert staging.is_dir() and (home / ".idx.mvr-lock").exists()  # what the killed writer left
    with StagingDir(home / "idx", overwrite=True) as mine:  # the lock died with its holder
        assert not staging.exists()
        assert (home / ".idx.mvr-lock").read_text().strip() == str(os.getpid())
        assert _hidden(home) == sorted([".idx.mvr-lock", mine.path.name])
    assert _hidden(home) == [] and sorted(p.name for p in home.iterdir()) == ["other"]


def test_overlapping_builds_of_one_name_do_not_both_succeed(tmp_path, plain_encoder):
    home = tmp_path / "home"
    first = StagingDir(target_path("idx", home), overwrite=True)
    with pytest.raises(IndexLockedError, match=f"PID {os.getpid()}"):
        Index.build(DOC_LIST, "idx", home=home, encoder=plain_encoder, config=FAST, overwrite=True)
    with first:
        (first.path / "manifest.json").write_text(json.dumps({"format": "mvr-index"}))
        first.commit()
    assert Index.build(DOC_LIST, "idx", home=home, encoder=plain_encoder, config=FAST, overwrite=True).path == home / "idx"
    assert _hidden(home) == []


def test_a_swap_killed_between_its_renames_is_put_back(tmp_path, plain_encoder):
    home = tmp_path / "home"
    built = Index.build(DOC_LIST, "idx", home=home, encoder=plain_encoder, config=FAST)
    expected = built.search("which animal purrs?", k=3).indices
    os.replace(home / "idx", home / ".idx.old-4242-x1y2z3w4")  # the first rename of a commit, then the kill
    # the reader renames it back
    reopened = Index.open("idx", home=home, model=plain_encoder)
    assert reopened.path == home / "idx" and _hidden(home) == []
    assert (reopened.search("which animal purrs?", k=3).indices == expected).all()
    # so does locate given a path, and the next writer
    os.replace(home / "idx", home / ".idx.old-4242-x1y2z3w4")
    assert locate(home / "idx") == home / "idx" and _hidden(home) == []
    os.replace(home / "idx", home / ".idx.old-4242-x1y2z3w4")
    with pytest.raises(IndexExistsError, match=r"replace it with --overwrite \(overwrite=True in Python\)"):
        Index.build(DOC_LIST, "idx", home=home, encoder=plain_encoder, config=FAST)
    assert (home / "idx" / "manifest.json").is_file() and _hidden(home) == []
    # and a reader open all along (mvr serve refreshes before each request): it failed until another process opened the index
    os.replace(home / "idx", home / ".idx.old-4242-x1y2z3w4")
    assert not reopened.refresh() and _hidden(home) == []
    assert (reopened.search("which animal purrs?", k=3).indices == expected).all()


def test_a_finished_but_uncommitted_build_is_never_promoted(tmp_path, plain_encoder):
    home = tmp_path / "home"
    Index.build(DOC_LIST, "idx", home=home, encoder=plain_encoder, config=FAST)
    shutil.move(home / "idx", home / ".idx.building-999999-abcdefgh")
    (home / ".idx.building-999999-abcdefgh" / ".mvr-staging").write_text("999999\n")
    with pytest.raises(IndexNotFoundError, match="no index named or at 'idx'"):
        locate("idx", home)
    assert (home / ".idx.building-999999-abcdefgh").is_dir()
    with StagingDir(home / "idx", overwrite=False):  # the next writer removes it: no one runs it
        assert not (home / ".idx.building-999999-abcdefgh").exists()


def test_a_hidden_copy_that_cannot_be_put_back_is_named(tmp_path):
    home = tmp_path / "home"
    hidden = _fake_index(home / ".idx.old-4242-x1y2z3w4")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(home)], stdout=subprocess.PIPE, text=True)
    try:
        holder.stdout.readline()  # the holder put it back on starting: hide it again under its lock
        os.replace(home / "idx", hidden)
        with pytest.raises(IndexNotFoundError, match=f"An intact copy, hidden by an interrupted rebuild, is at {hidden}"):
            locate("idx", home, wait=0.2)
        assert hidden.is_dir() and not (home / "idx").exists()  # a reader never renames under a live writer
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        holder.stdout.close()
    assert locate("idx", home) == home / "idx" and not hidden.exists()


def test_rebuilding_a_stage_replaces_its_folder_and_leaves_no_hidden_files(tmp_path, plain_encoder):
    from mvr.config import IndexConfig

    index = Index.build(DOC_LIST, tmp_path / "idx", encoder=plain_encoder, config=IndexConfig(fde=None, sparse=("bm25s",)))
    index.build_stage("bm25s")
    segment = segment_path(index)  # the stage is the segment's: swapped in its folder
    assert _hidden(index.path) == [] and _hidden(segment) == []
    assert Index.open(index.path, model=plain_encoder).search("cats purr", k=1, first_stage="bm25s", rerank=False).doc_ids[0] == ["d1"]
    shutil.rmtree(segment / "bm25s")
    (segment / "bm25s").mkdir()
    (segment / "bm25s" / "manifest.json").write_text('{"format": "mvr-index"}')
    with pytest.raises(IndexExistsError, match="'mvr-sparse'"):
        index.build_stage("bm25s")


def test_a_file_where_a_folder_should_be_is_a_clear_error(tmp_path, capsys):
    from mvr.cli import main

    (tmp_path / "afile").write_text("not an index")
    (tmp_path / "c.jsonl").write_text('{"id": "a", "text": "cats"}\n')
    for path in (tmp_path / "afile", tmp_path / "afile" / "sub"):
        assert main(["index", str(tmp_path / "c.jsonl"), "--path", str(path), "--no-fde", "--quiet"]) == 2
        assert "mvr: error:" in capsys.readouterr().err
    assert main(["search", str(tmp_path / "afile"), "cats"]) == 2
    assert "is a file, not an index folder" in capsys.readouterr().err
    assert (tmp_path / "afile").read_text() == "not an index"


def test_a_built_index_has_the_mode_the_umask_gives(tmp_path, default_encoder):
    import os
    import stat

    from conftest import FAST
    from mvr import Index

    old = os.umask(0o022)
    try:
        index = Index.build([("a", "cats purr")], tmp_path / "idx", config=FAST, encoder=default_encoder)
    finally:
        os.umask(old)
    assert stat.S_IMODE(index.path.stat().st_mode) == 0o755  # not mkdtemp's 0700: others may read it


def test_cleanup_never_touches_what_mvr_did_not_make(tmp_path, default_encoder):
    """A home given as a path may be any folder: files and folders of other programs whose names
    look like mvr's leftovers stay as they are."""
    from conftest import FAST
    from mvr import Index

    (tmp_path / ".s.PGSQL.5432.lock").write_text("4242\n")
    (tmp_path / ".cache.building-12345678").mkdir()
    (tmp_path / ".cache.building-12345678" / "data").write_text("keep me")
    (tmp_path / "photos").mkdir()
    (tmp_path / ".photos.old-20240101").mkdir()
    (tmp_path / ".photos.old-20240101" / "a.jpg").write_text("keep me too")
    (tmp_path / ".idx.lock").write_text("another program's lock")
    Index.build([("a", "cats purr")], tmp_path / "idx", config=FAST, encoder=default_encoder)
    assert (tmp_path / ".s.PGSQL.5432.lock").read_text() == "4242\n"
    assert (tmp_path / ".cache.building-12345678" / "data").read_text() == "keep me"
    assert (tmp_path / ".photos.old-20240101" / "a.jpg").read_text() == "keep me too"
    assert (tmp_path / ".idx.lock").read_text() == "another program's lock"


def test_a_stage_rebuild_killed_between_its_renames_is_put_back(tmp_path, default_encoder):
    from mvr import Index

    index = Index.build([("a", "cats purr"), ("b", "dogs bark")], tmp_path / "idx", encoder=default_encoder)
    before = index.search("cats", k=2, first_stage="fde").indices
    segment = segment_path(index)
    os.replace(segment / "fde", segment / ".fde.old-4242-x1y2z3w4")  # the first rename of a swap, then a kill
    verified = subprocess.run([sys.executable, "-m", "mvr.cli", "info", str(tmp_path / "idx"), "--verify"], capture_output=True, text=True)
    assert verified.returncode == 0, verified.stderr  # mvr info --verify opens the index (which puts the stage back) before checking its files
    reopened = Index.open(tmp_path / "idx")
    assert reopened.has_stage("fde") and reopened.default_stage == "fde+bm25s"  # not a silent fall-back to exhaustive
    np.testing.assert_array_equal(reopened.search("cats", k=2, first_stage="fde").indices, before)


def test_a_stage_rebuild_waits_for_no_one_and_excludes_an_overwrite(tmp_path, default_encoder):
    """`mvr fde` / `mvr sparse` hold the index's own name: a concurrent writer of that name is refused."""
    from mvr.storage.lock import WriterLock

    index = Index.build([("a", "cats purr"), ("b", "dogs bark")], tmp_path / "idx", encoder=default_encoder)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from mvr.storage.lock import WriterLock; "
         "WriterLock(Path(sys.argv[1]), 'idx').acquire(); print('held', flush=True); time.sleep(600)", str(tmp_path)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(IndexLockedError, match=f"being written by PID {holder.pid}"):
            index.build_sparse(["bm25s"])
    finally:
        holder.kill()
        holder.wait()
    assert index.build_sparse(["bm25s"])["bm25s"]["documents"] == 2  # free again once the holder died
    assert WriterLock(tmp_path, "idx").try_acquire()


def test_an_overwrite_killed_at_any_point_leaves_the_last_commit_whole(tmp_path, models):
    """SIGKILL a real `mvr index --overwrite` at several points of its build: the committed index
    opens, verifies and searches as before, and the next writer removes what the killed one left."""
    import random
    import time

    home = tmp_path / "home"
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"d{i}", "text": f"document {i} about cats and dogs number {i % 97}"}) + "\n" for i in range(1500)))
    small = [("a", "cats purr"), ("b", "dogs bark"), ("c", "plants grow")]
    Index.build(small, "idx", home=home, encoder=Encoder(models["plain"]), config=FAST)
    before = Index.open("idx", home=home).search("cats", k=3, first_stage="exhaustive")
    command = [sys.executable, "-m", "mvr.cli", "index", str(corpus), "--name", "idx", "--index-dir", str(home), "--overwrite",
               "--model", str(models["plain"]), "--doc-runtime", "torch", "--no-fde", "--sparse", "bm25s", "--quiet"]
    rng = random.Random(0)
    mid_build = 0
    for delay in (0.5, 2.0, *(rng.uniform(0.5, 6.0) for _ in range(2))):
        writer = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=30)
        mid_build += any(p.name.startswith(f".idx.building-{writer.pid}-") for p in home.iterdir())  # its own staging folder
        index = Index.open("idx", home=home)  # whatever the kill interrupted, the last commit is there
        if index.n_docs == len(small):
            assert verify_files(index.path) == []
            np.testing.assert_array_equal(index.search("cats", k=3, first_stage="exhaustive").indices, before.indices)
        else:  # the kill came after the swap: the new commit is whole instead
            assert index.n_docs == 1500 and verify_files(index.path) == []
    assert mid_build >= 1  # at least one kill landed inside a build, not before or after it
    Index.build(small, "idx", home=home, encoder=Encoder(models["plain"]), config=FAST, overwrite=True)
    assert not [p.name for p in home.iterdir() if p.name.startswith(".idx.building") or p.name.startswith(".idx.old")]


# A real build of HOME/idx (overwrite) killed at one point: "before": SIGKILL instead of the first
# os.replace of a `.NAME.building-*` folder into place; "removing": instead of the first
# shutil.rmtree in a replaced `.NAME.old-*` copy (after the swap, part way through its removal);
# "marking": instead of writing the staging mark into the new, empty `.NAME.building-*` folder.
KILLED_AT = (
    "import os, pathlib, shutil, signal, sys\n"
    "from pathlib import Path\n"
    "from mvr import Encoder, Index\n"
    "point, replace, rmtree, write_text = sys.argv[3], os.replace, shutil.rmtree, pathlib.Path.write_text\n"
    "def killing_replace(src, dst, *a, **k):\n"
    "    if point == 'before' and '.building-' in Path(src).name:\n"
    "        os.kill(os.getpid(), signal.SIGKILL)\n"
    "    return replace(src, dst, *a, **k)\n"
    "def killing_rmtree(path, *a, **k):\n"
    "    if point == 'removing' and '.old-' in str(path):\n"
    "        os.kill(os.getpid(), signal.SIGKILL)\n"
    "    return rmtree(path, *a, **k)\n"
    "def killing_write_text(path, *a, **k):\n"
    "    if point == 'marking' and path.name == '.mvr-staging':\n"
    "        os.kill(os.getpid(), signal.SIGKILL)\n"
    "    return write_text(path, *a, **k)\n"
    "os.replace, shutil.rmtree, pathlib.Path.write_text = killing_replace, killing_rmtree, killing_write_text\n"
    "index = Index.open(Path(sys.argv[1]), model=sys.argv[2])\n"
    "Index.build(index.documents(), index.path, encoder=Encoder(sys.argv[2]), overwrite=True)\n"
)


@pytest.mark.parametrize("after", ["build", "add"])
@pytest.mark.parametrize("point", ["before", "removing", "marking"])
def test_what_a_swap_killed_at_its_last_steps_leaves_is_removed_by_the_next_writer(tmp_path, models, plain_encoder, point, after):
    """A kill after the staging mark was removed but before the rename left a finished build folder
    that no writer removed (unmarked: not provably mvr's); one during the removal of the replaced
    copy, after its manifest went, left that copy for ever (no manifest: not provably mvr's either);
    one between making a build folder and marking it left an empty folder no build of that name
    removed. Each kill added one, and an add or delete removed none. Now the first two keep a mark
    until they are gone, an empty build folder holds nothing to lose, and every next writer in the
    home removes them: a build, or a change of the index itself."""
    index = Index.build(DOC_LIST, tmp_path / "idx", encoder=plain_encoder, config=dataclasses.replace(FAST, fde=FDEConfig(reps=2, k_sim=2)))
    before = index.search("purring cats", k=3, first_stage="fde").doc_ids
    for _ in range(2):
        killed = subprocess.run([sys.executable, "-c", KILLED_AT, str(index.path), str(models["plain"]), point], capture_output=True, text=True, timeout=300)
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        assert len([p for p in _hidden(tmp_path) if ".building-" in p or ".old-" in p]) >= 1  # what the kill left
        again = Index.open(tmp_path / "idx", model=models["plain"])  # the last commit whole, whatever the kill left
        assert again.search("purring cats", k=3, first_stage="fde").doc_ids == before
    if after == "build":
        Index.build(DOC_LIST[:2], tmp_path / "idx", encoder=plain_encoder, config=dataclasses.replace(FAST, fde=FDEConfig(reps=2, k_sim=2)), overwrite=True)
        Index.build(DOC_LIST, tmp_path / "idx", encoder=plain_encoder, config=dataclasses.replace(FAST, fde=FDEConfig(reps=2, k_sim=2)), overwrite=True)
    else:
        Index.open(tmp_path / "idx", model=models["plain"]).add([{"id": "new", "text": "a new document"}])
    assert [p for p in _hidden(tmp_path) if ".building-" in p or ".old-" in p] == []
    final = Index.open(tmp_path / "idx", model=models["plain"])
    assert len(final) == len(DOC_LIST) + (after == "add") and verify_files(final.path) == []


def test_no_index_is_written_inside_another(tmp_path, plain_encoder):
    """An index derived into the source's segments/s000002 was taken by the source's next add
    for its new segment; one inside a segment made `mvr info --verify` call the source damaged."""
    source = Index.build(DOC_LIST, tmp_path / "src", encoder=plain_encoder, config=FAST)
    for inside in (tmp_path / "src" / "segments" / "s000002", segment_path(source) / "derived", tmp_path / "src" / "mine"):
        with pytest.raises(IndexExistsError, match=f"is inside the index {tmp_path / 'src'}"):
            Index.derive(source, inside, codec="int8")
        with pytest.raises(IndexExistsError, match="is inside the index"):
            Index.build(DOC_LIST[:2], inside, encoder=plain_encoder, config=FAST)
    source.add([{"id": "new", "text": "a new document"}])
    assert len(Index.open(tmp_path / "src")) == len(DOC_LIST) + 1


def test_an_empty_hidden_copy_is_removed_and_an_unmarked_full_one_kept(tmp_path, plain_encoder):
    """An empty `.NAME.old-*` (a kill between making a temporary folder and the rename) holds
    nothing to lose and goes; one with files but neither manifest nor mark may be another
    program's and stays."""
    Index.build(DOC_LIST, tmp_path / "idx", encoder=plain_encoder, config=FAST)
    (tmp_path / ".idx.old-4242-abcdefgh").mkdir()
    (tmp_path / ".idx.old-4243-abcdefgh").mkdir()
    (tmp_path / ".idx.old-4243-abcdefgh" / "notes.txt").write_text("mine")
    Index.build(DOC_LIST[:2], tmp_path / "other", encoder=plain_encoder, config=FAST)  # the next writer of the home
    assert _hidden(tmp_path) == [".idx.old-4243-abcdefgh"]


def test_a_name_with_a_home_given_is_the_homes_whatever_the_current_folder_holds(tmp_path, monkeypatch):
    """`mvr add idx --index-dir HOME`, run from a folder that held another index named idx, wrote
    to ./idx: the name was tried as a path first."""
    here, home = _fake_index(tmp_path / "cwd" / "idx", "here").parent, tmp_path / "home"
    _fake_index(home / "idx", "home")
    monkeypatch.chdir(here)
    assert locate("idx", home) == home / "idx"
    assert locate("idx") == Path("idx") and locate(Path("idx"), home) == Path("idx")  # no home given, or a path: as before


# A real delete of HOME/idx whose writer, tidying the home first, removes a hidden replaced copy
# `.idx.old-*`: SIGKILL right after the first thing inside the copy is removed once it holds no
# manifest.json (the old removal unlinked the manifest among the rest, unmarked).
KILLED_TIDYING = (
    "import os, shutil, signal, sys\n"
    "from pathlib import Path\n"
    "from mvr import Index\n"
    "unlink, rmtree = os.unlink, shutil.rmtree\n"
    "def after(path):\n"
    "    path = Path(path)\n"
    "    root = next((p for p in path.parents if '.old-' in p.name), None)\n"
    "    if root is not None and not (root / 'manifest.json').exists():\n"
    "        os.kill(os.getpid(), signal.SIGKILL)\n"
    "def killing_unlink(path, *a, **k):\n"
    "    unlink(path, *a, **k)\n"
    "    after(path)\n"
    "def killing_rmtree(path, *a, **k):\n"
    "    rmtree(path, *a, **k)\n"
    "    after(path)\n"
    "os.unlink, shutil.rmtree = killing_unlink, killing_rmtree\n"
    "Index.open(Path(sys.argv[1]), model=sys.argv[2]).delete(['d1'])\n"
)


def test_a_writer_killed_removing_a_hidden_copy_leaves_it_marked_for_the_next(tmp_path, models, plain_encoder):
    index = Index.build(DOC_LIST, tmp_path / "idx", encoder=plain_encoder, config=FAST)
    hidden = tmp_path / ".idx.old-123-abcdefgh"
    shutil.copytree(index.path, hidden)  # an overwrite killed after its second rename: a whole copy of the replaced index
    killed = subprocess.run([sys.executable, "-c", KILLED_TIDYING, str(index.path), str(models["plain"])], capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert hidden.is_dir() and (hidden / ".mvr-removing").is_file()  # part way removed, and marked as mvr's to remove
    Index.open(tmp_path / "idx", model=plain_encoder).delete(["d2"])
    assert not hidden.exists() and len(Index.open(tmp_path / "idx")) == len(DOC_LIST) - 1


@pytest.mark.parametrize("name", ["a" * 300, Path("/tmp") / ("b" * 256) / "idx"])
def test_a_name_no_file_system_holds_is_not_found_in_one_line(tmp_path, name, capsys):
    """Opening asked the file system about it, which raised "File name too long"."""
    from mvr.cli import main

    with pytest.raises(IndexNotFoundError, match="a folder name is at most 255 bytes"):
        Index.open(name, home=tmp_path)
    assert main(["info", str(name), "--index-dir", str(tmp_path)]) == 2
    assert "a folder name is at most 255 bytes" in capsys.readouterr().err
