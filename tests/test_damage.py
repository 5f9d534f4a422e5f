"""A damaged index gives one clear error, never a crash or a silently wrong result; `mvr info
--verify` checks all of it; a cached ONNX export is used only when it is the model's own.

Every test damages a copy: the session's indexes stay as built. Damage that keeps the manifest's
sizes and checksums right (the file rewritten, its manifest entry fixed up) is what only the
checks of counts, offsets and contents can find."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import DOCS, FAST, segment_path
from mvr import Encoder, Index, IndexFormatError, IndexNotFoundError
from mvr.cli import main
from mvr.storage import read_manifest, sha256_file


@pytest.fixture(scope="module")
def small(tmp_path_factory, default_encoder) -> Path:
    """The tiny corpus with the default model and no first stage (built once; tests damage copies)."""
    docs = [{"_id": i, "title": t, "text": x} for i, t, x in DOCS]
    return Index.build(docs, tmp_path_factory.mktemp("damage") / "small", encoder=default_encoder, config=FAST).path


def copy(source: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(source, tmp_path / "copy"))


def edit_manifest(folder: Path, change) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    change(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))


def rewrite(index: Path, name: str, array: np.ndarray) -> None:
    """Save ``array`` as ``index/name`` and fix up the manifest (of its folder) that lists it."""
    file = index / name
    np.save(file, array, allow_pickle=True)
    seal(file)


def seal(file: Path) -> None:
    def fix(manifest):
        manifest["files"][file.name] = {"bytes": file.stat().st_size, "sha256": sha256_file(file)}

    edit_manifest(file.parent, fix)


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _offsets(folder, name="doc_offsets.npy"):
    return np.load(folder / name)


def _truncate(file):
    file.write_bytes(file.read_bytes()[:-2])
    seal(file)


def _swap(a):
    a = a.copy()
    a[1], a[2] = a[2], a[1]
    return a


# (what, damage, the file the error must name, what it must say)
ARRAYS = [
    ("max_doc_len", lambda f: edit_manifest(f, lambda m: m["counts"].update(max_doc_len=2)), "manifest.json", "max_doc_len is 2"),
    ("token count", lambda f: edit_manifest(f, lambda m: m["counts"].update(tokens=m["counts"]["tokens"] + 1)), "vectors.npy", "has shape"),
    ("offsets fall", lambda f: rewrite(f, "doc_offsets.npy", _swap(_offsets(f))), "doc_offsets.npy", "decreases at entry 2"),
    ("offsets start", lambda f: rewrite(f, "doc_offsets.npy", _offsets(f) + 1), "doc_offsets.npy", "starts at 1"),
    ("offsets end", lambda f: rewrite(f, "doc_offsets.npy", np.r_[_offsets(f)[:-1], 10**8]), "doc_offsets.npy", "ends at 100000000"),
    ("offsets length", lambda f: rewrite(f, "doc_offsets.npy", _offsets(f)[:-1]), "doc_offsets.npy", "has shape"),
    ("offsets float", lambda f: rewrite(f, "doc_offsets.npy", _offsets(f).astype(np.float64)), "doc_offsets.npy", "dtype float64"),
    ("offsets int32", lambda f: rewrite(f, "doc_offsets.npy", _offsets(f).astype(np.int32)), "doc_offsets.npy", "dtype int32"),
    ("offsets 2-D", lambda f: rewrite(f, "doc_offsets.npy", _offsets(f)[:, None]), "doc_offsets.npy", "has shape"),
    ("ids length", lambda f: rewrite(f, "doc_ids.npy", np.load(f / "doc_ids.npy")[:-1]), "doc_ids.npy", "has shape"),
    ("text end", lambda f: rewrite(f, "text_offsets.npy", _offsets(f, "text_offsets.npy") + np.r_[0, np.ones(len(DOCS), np.int64)]), "text_offsets.npy", "size of text.bin"),
    ("text falls", lambda f: rewrite(f, "text_offsets.npy", _swap(_offsets(f, "text_offsets.npy"))), "text_offsets.npy", "decreases"),
    ("title length", lambda f: rewrite(f, "title_offsets.npy", _offsets(f, "title_offsets.npy")[:-1]), "title_offsets.npy", "has shape"),
    ("projection", lambda f: rewrite(f, "projection.npy", np.eye(5, dtype=np.float32)), "projection.npy", r"has shape \(5, 5\)"),
    ("token ids", lambda f: rewrite(f, "token_ids.npy", np.load(f / "token_ids.npy")[:-3]), "token_ids.npy", "has shape"),
    ("truncated file", lambda f: _truncate(f / "vectors.npy"), "vectors.npy", "its header"),
]


@pytest.mark.parametrize("what, damage, file, says", ARRAYS, ids=[a[0] for a in ARRAYS])
def test_counts_and_offsets_that_disagree_with_the_files_are_refused_on_open(small, tmp_path, default_encoder, what, damage, file, says):
    folder = copy(small, tmp_path)
    damage(segment_path(folder))
    with pytest.raises(IndexFormatError, match=rf"{file}: .*{says}.*mvr info .*--verify"):
        Index.open(folder, model=default_encoder).search("which animal purrs?", k=3, first_stage="exhaustive")


def test_the_cli_says_what_is_damaged_in_one_line(small, tmp_path, capsys):
    folder = copy(small, tmp_path)
    edit_manifest(segment_path(folder), lambda m: m["counts"].update(max_doc_len=2))
    for command in (["search", folder, "cats"], ["info", folder], ["info", folder, "--verify"]):
        code, out, err = run(capsys, *command)
        assert code == 2 and out == "" and err.count("\n") == 1, (command, err)
        assert err.startswith("mvr: error: ") and "max_doc_len is 2" in err and "Traceback" not in err


FIELDS = [
    ("counts missing", lambda m: m.pop("counts"), r"'counts' must be an object, got nothing"),
    ("documents a string", lambda m: m["counts"].update(documents="8"), r"counts.documents must be a whole number >= 0, got str '8'"),
    ("tokens negative", lambda m: m["counts"].update(tokens=-1), r"counts.tokens must be a whole number"),
    ("dim a bool", lambda m: m["counts"].update(dim=True), r"counts.dim must be a whole number >= 1"),
    ("config a list", lambda m: m.update(config=[1]), r"'config' must be an object, got list"),
    ("config unknown", lambda m: m["config"].update(colour="red"), r"config cannot be read \(unknown index setting"),
    ("config bad value", lambda m: m["config"].update(codec="zip"), r"config cannot be read \(unknown codec"),
    ("encoder missing", lambda m: m.pop("encoder"), r"'encoder' must be an object"),
    ("encoder maxlen", lambda m: m["encoder"].update(query_maxlen="64"), r"encoder.query_maxlen must be a whole number, got str"),
    ("build missing", lambda m: m.pop("build"), r"'build' must be an object"),
    ("bytes missing", lambda m: m["files"]["vectors.npy"].pop("bytes"), r"files\['vectors.npy'\].bytes must be a byte count, got None"),
    ("sha256 short", lambda m: m["files"]["vectors.npy"].update(sha256="abc"), r"files\['vectors.npy'\].sha256 must be 64 hex digits"),
    ("files a list", lambda m: m.update(files=[]), r"'files' must map file names"),
    ("entry a number", lambda m: m["files"].update({"doc_ids.npy": 3}), r"files\['doc_ids.npy'\] must be an object"),
    ("outside the folder", lambda m: m["files"].update({"../small/vectors.npy": m["files"]["vectors.npy"]}), r"not a file of this folder"),
    ("file unlisted", lambda m: m["files"].pop("doc_offsets.npy"), r"doc_offsets.npy: is not listed in the manifest"),
]


@pytest.mark.parametrize("what, change, says", FIELDS, ids=[f[0] for f in FIELDS])
def test_manifest_fields_of_the_wrong_shape_are_refused(small, tmp_path, what, change, says):
    folder = copy(small, tmp_path)
    edit_manifest(segment_path(folder), change)  # the segment's manifest: what its open checks
    with pytest.raises(IndexFormatError, match=says):
        Index.open(folder)


# The index's config and encoder are its commit's (the segment's manifest holds its own copy).
COMMIT_FIELDS = [
    ("config a list", lambda m: m.update(config=[1]), r"'config' must be an object"),
    ("config unknown", lambda m: m["config"].update(colour="red"), r"config cannot be read \(unknown index setting"),
    ("config bad value", lambda m: m["config"].update(codec="zip"), r"config cannot be read \(unknown codec"),
    ("encoder missing", lambda m: m.pop("encoder"), r"'encoder' must be an object"),
    ("encoder maxlen", lambda m: m["encoder"].update(query_maxlen="64"), r"encoder.query_maxlen must be a whole number, got str"),
]


@pytest.mark.parametrize("what, change, says", COMMIT_FIELDS, ids=[f[0] for f in COMMIT_FIELDS])
def test_a_commit_whose_config_or_encoder_has_the_wrong_shape_is_refused(small, tmp_path, what, change, says):
    folder = copy(small, tmp_path)
    commit = folder / json.loads((folder / "manifest.json").read_text())["commit"]
    record = json.loads(commit.read_text())
    change(record)
    commit.write_text(json.dumps(record))
    with pytest.raises(IndexFormatError, match=rf"{says}.*mvr info .*--verify"):
        Index.open(folder)


def test_a_manifest_that_is_not_an_object_or_a_folder_that_is_a_file(small, tmp_path, capsys):
    folder = copy(small, tmp_path)
    (folder / "manifest.json").write_text("[1, 2]")
    with pytest.raises(IndexFormatError, match=r"manifest.json holds a JSON list, not an object"):
        Index.open(folder)
    a_file = tmp_path / "not-a-folder"
    a_file.write_text("hello")
    with pytest.raises(IndexNotFoundError, match=r"not-a-folder is a file, not an index folder"):
        read_manifest(a_file)
    code, _, err = run(capsys, "info", a_file)
    assert code == 2 and err.startswith("mvr: error: ") and "not-a-folder" in err
    (folder / "manifest.json").unlink()
    (folder / "manifest.json").mkdir()
    with pytest.raises(IndexFormatError, match=r"manifest.json cannot be read"):
        read_manifest(folder)


OBJECTS = ["doc_ids.npy", "doc_offsets.npy", "doc_ids_order.npy", "text_offsets.npy", "token_ids.npy", "vectors.npy", "fde/simhash.npy", "bm25s/data.csc.index.npy"]


@pytest.mark.parametrize("name", OBJECTS)
def test_arrays_of_python_objects_are_refused_naming_the_file(default_index, tmp_path, default_encoder, name):
    folder = copy(default_index.path, tmp_path)
    rewrite(segment_path(folder), name, np.array([{"not": "numbers"}] * 3 + [None], dtype=object))
    with pytest.raises(IndexFormatError, match=rf"{name}: holds Python objects .*mvr info"):
        Index.open(folder, model=default_encoder).search("which animal purrs?", k=3)


@pytest.mark.parametrize("file", ["fde/fde.faiss", "fde/simhash.npy", "bm25s/vocab.index.json", "title.bin"])
def test_verify_checks_every_component_against_its_own_manifest(default_index, tmp_path, capsys, file):
    folder = copy(default_index.path, tmp_path)
    segment = segment_path(folder)
    data = bytearray((segment / file).read_bytes())
    data[-1] ^= 0x55  # same size: only the checksum can tell
    (segment / file).write_bytes(bytes(data))
    code, out, err = run(capsys, "info", folder, "--verify")
    assert code == 2 and out == "" and err.count("\n") == 1 and "Traceback" not in err
    named = f"{segment.relative_to(folder).as_posix()}/{file}"  # the file, named within the index folder
    assert f"{named}: its sha256 differs from" in err
    mend = {"fde": f"rebuild `mvr fde {folder}`", "bm25s": f"rebuild `mvr sparse {folder} --stage bm25s`"}.get(file.split("/")[0], "build the index again with `mvr index`")
    assert f"To mend it, {mend}" in err and err.count("`mvr ") == 1  # a stage's rebuild where only it is damaged
    code, out, err = run(capsys, "info", folder, "--verify", "--json")
    report = json.loads(out)
    assert code == 2 and report["verified"] is False and len(report["problems"]) == 1 and report["problems"][0].startswith(f"{named}: ")


def test_verify_passes_an_intact_index_with_first_stages(default_index, tmp_path, capsys):
    folder = copy(default_index.path, tmp_path)
    code, out, _ = run(capsys, "info", folder, "--verify", "--json")
    report = json.loads(out)
    assert code == 0 and report["verified"] is True and report["problems"] == [] and set(report["stages"]) == {"fde", "bm25s"}
    code, out, _ = run(capsys, "info", folder, "--verify")
    assert code == 0 and "(fde, bm25s) matches its manifest" in out


def test_verify_finds_vectors_that_are_nan_or_zero(small, tmp_path, capsys):
    folder = copy(small, tmp_path)
    segment = segment_path(folder)
    vectors = np.load(segment / "vectors.npy")
    vectors[3] = np.nan
    vectors[7, 5] = np.inf
    vectors[10] = 0
    rewrite(segment, "vectors.npy", vectors)  # checksums right: only reading the vectors finds it
    Index.open(folder)  # opens: counts and offsets are right
    code, out, err = run(capsys, "info", folder, "--verify", "--json")
    problems = json.loads(out)["problems"]
    assert code == 2 and problems == [
        f"vectors.npy: 2 of {len(vectors)} token vectors are NaN or infinite (rows 3, 7)",
        f"vectors.npy: 1 of {len(vectors)} token vectors are all zeros (rows 10)",
    ]
    assert "rows 3, 7" in err and err.count("\n") == 1


def test_verify_reports_what_opening_refuses_and_a_stale_stage(default_index, tmp_path, capsys):
    folder = copy(default_index.path, tmp_path)
    segment = segment_path(folder)
    rewrite(segment, "doc_offsets.npy", _swap(_offsets(segment)))
    code, out, err = run(capsys, "info", folder, "--verify", "--json")
    report = json.loads(out)
    assert code == 2 and report["verified"] is False and any("doc_offsets.npy: decreases" in p for p in report["problems"])
    vectors = np.load(segment / "vectors.npy")
    rewrite(segment, "doc_offsets.npy", np.sort(_offsets(segment)))
    rewrite(segment, "vectors.npy", vectors[::-1].copy())  # other vectors: the FDE no longer matches them
    code, _, err = run(capsys, "info", folder, "--verify")
    assert code == 2 and "fde/: built for other token vectors than the index holds" in err and f"To mend it, rebuild `mvr fde {folder}`." in err


def _suggested(message: str) -> list[list[str]]:
    """The mvr commands a message suggests (between backticks), as argument lists for main()."""
    return [command.split()[1:] for command in re.findall(r"`(mvr [^`]+)`", message)]


def _spoil_header(file: Path) -> None:
    file.write_bytes(b"0123456789abcdef" + file.read_bytes()[16:])  # same size: the manifest's sizes still agree


def test_damage_messages_name_the_index_folder_and_their_commands_run(default_index, tmp_path, capsys):
    folder = copy(default_index.path, tmp_path)
    segment = segment_path(folder)
    _spoil_header(segment / "fde" / "simhash.npy")
    code, out, err = run(capsys, "search", folder, "cats")
    assert code == 2 and err.count("\n") == 1 and f"`mvr info {folder} --verify`" in err and f"`mvr fde {folder}`" in err, err
    assert str(segment) + " --verify" not in err and f"mvr fde {segment}" not in err
    for argv in _suggested(err):  # each runs on the index: verify finds the damage, `mvr fde` repairs it
        code, _, said = run(capsys, *argv)
        assert "is not an mvr-index directory" not in said and code == (2 if "--verify" in argv else 0), (argv, said)
    # the segment's own manifest, and a file it lists gone: the index folder too
    damages = {"counts": lambda f: edit_manifest(f, lambda m: m["counts"].update(max_doc_len=2)), "gone": lambda f: (f / "title.bin").unlink()}
    for what, damage in damages.items():
        folder = copy(default_index.path, tmp_path / what)
        damage(segment_path(folder))
        with pytest.raises(IndexFormatError, match=rf"`mvr info {re.escape(str(folder))} --verify` checks all of it, then rebuild it with `mvr index`\.$"):
            Index.open(folder)


@pytest.mark.parametrize("file, command", [("fde/simhash.npy", ["fde"]), ("bm25s/data.csc.index.npy", ["sparse", "--stage", "bm25s"])])
def test_a_stage_too_damaged_to_open_is_rebuilt_by_its_command(default_index, tmp_path, capsys, file, command):
    folder = copy(default_index.path, tmp_path)
    _spoil_header(segment_path(folder) / file)
    code, _, err = run(capsys, "search", folder, "cats")
    assert code == 2 and f"{file}: not a readable .npy array" in err
    code, out, err = run(capsys, command[0], folder, *command[1:])
    assert code == 0 and err == "" and out.startswith("built the"), err
    code, out, _ = run(capsys, "info", folder, "--verify")
    assert code == 0 and "(fde, bm25s) matches its manifest" in out
    assert Index.open(folder).search("which animal purrs?", k=1).doc_ids[0] == ["d1"]


@pytest.mark.parametrize("lost", ["manifest", "folder"])
def test_a_stage_that_lost_its_manifest_or_folder_is_reported_not_dropped(default_index, tmp_path, capsys, lost):
    folder = copy(default_index.path, tmp_path)
    stage = segment_path(folder) / "fde"
    (stage / "manifest.json").unlink() if lost == "manifest" else shutil.rmtree(stage)
    named = f"{stage}/manifest.json: missing" if lost == "manifest" else f"{stage}: missing"
    for argv in (["info", folder], ["info", folder, "--verify"], ["search", folder, "cats"]):
        code, out, err = run(capsys, *argv)
        assert code == 2 and out == "" and err.count("\n") == 1 and named in err and f"`mvr fde {folder}`" in err, (argv, err)
    with pytest.raises(IndexFormatError, match="fde"):
        Index.open(folder)
    assert run(capsys, "fde", folder)[0] == 0
    code, out, _ = run(capsys, "info", folder, "--verify")
    assert code == 0 and "(fde, bm25s) matches its manifest" in out and Index.open(folder).default_stage == "fde+bm25s"


def test_a_missing_commit_is_named_and_a_moving_one_retried(small, tmp_path, capsys, monkeypatch):
    from mvr.storage import commits

    folder = copy(small, tmp_path)
    (folder / "commit-00000001.json").unlink()
    for argv in (["info", folder], ["search", folder, "cats"], ["info", folder, "--verify"]):
        code, out, err = run(capsys, *argv)
        assert code == 2 and err.count("\n") == 1 and "kept changing" not in err, (argv, err)
        assert f"{folder}/commit-00000001.json: missing, though {folder}/manifest.json names it" in err and "mvr index" in err
    # the race the retry is for: a writer published generation 2 and collected 1 after the reader read the pointer
    folder = copy(small, tmp_path / "race")
    record = json.loads((folder / "commit-00000001.json").read_text())
    stale = commits.read_pointer(folder)
    commits.publish(folder, {**record, "generation": 2})
    (folder / "commit-00000001.json").unlink()
    real, reads = commits.read_pointer, []

    def pointer(path):  # the first read is from before the writer's commit
        reads.append(path)
        return stale if len(reads) == 1 else real(path)

    monkeypatch.setattr(commits, "read_pointer", pointer)
    _, record, pin = commits.pin_current(folder)
    assert record["generation"] == 2 and len(reads) == 3
    pin.release()


def test_verify_joins_its_problems_without_doubled_full_stops(default_index, tmp_path, capsys):
    folder = copy(default_index.path, tmp_path)
    _spoil_header(segment_path(folder) / "fde" / "simhash.npy")  # its checksum, and opening: two problems, one a sentence
    code, out, err = run(capsys, "info", folder, "--verify")
    assert code == 2 and err.count("\n") == 1 and ".." not in err.replace(str(folder), "") and "simhash.npy: its sha256 differs" in err


PIN_AT_EXIT = """
import sys, types
holder = sys.modules["holder"] = sys.holder = types.ModuleType("holder")  # imported first, so torn down after mvr's modules
import mvr.storage.commits
sys.commits = mvr.storage.commits  # alive at exit: its globals are set to None before holder's
from mvr import Index
holder.index = Index.open(sys.argv[1])  # its commit's pin is released only when holder's globals go
"""


def test_an_index_kept_until_interpreter_exit_releases_its_pin_quietly(small):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", PIN_AT_EXIT, str(small)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0 and "Exception ignored" not in done.stderr and "Error" not in done.stderr, done.stderr


# -- the cached ONNX export -----------------------------------------------------------------------
QUERIES = ["what do cats eat", "lava", "a much longer question about the capital cities of europe"]


def _export(encoder, cache: Path, runtime: str = "onnx") -> Path:
    """The cached export of ``encoder``'s weights that ``runtime`` runs (named after their sha256)."""
    return cache / "onnx" / encoder._onnx.path(runtime).name


def _plant(source: Path, encoder) -> Path:
    """Put the export ``source`` (and its sidecar, where there is one) under the name of
    ``encoder``'s export; return that name."""
    target = source.with_name(source.name.replace(source.name.split("-")[0], encoder._onnx.weights_sha256[:24]))
    shutil.copy(source, target)
    if Path(f"{source}.json").is_file():
        shutil.copy(f"{source}.json", f"{target}.json")
    return target


def test_another_models_export_under_the_models_name_is_not_used(models, tmp_path, monkeypatch):
    monkeypatch.setenv("MVR_CACHE_DIR", str(tmp_path))
    other = Encoder(models["plain-other"], query_runtime="onnx")
    other.encode_queries(QUERIES)
    plain = Encoder(models["plain"], query_runtime="onnx")
    planted = _plant(_export(other, tmp_path), plain)  # its own sidecar too: it names the other weights
    want = Encoder(models["plain"], query_runtime="torch").encode_queries(QUERIES).vectors
    np.testing.assert_allclose(plain.encode_queries(QUERIES).vectors, want, atol=1e-5)
    record = json.loads(Path(f"{planted}.json").read_text())
    assert record["weights_sha256"] == plain._onnx.weights_sha256 and record["onnx_sha256"] == sha256_file(planted)  # the key of its weights and configuration

    # the model's own sidecar with another file, or no sidecar (a cache from before them): made again
    for keep_sidecar in (True, False):
        shutil.copy(_export(other, tmp_path), planted)
        if not keep_sidecar:
            Path(f"{planted}.json").unlink()
        again = Encoder(models["plain"], query_runtime="onnx").encode_queries(QUERIES).vectors
        np.testing.assert_allclose(again, want, atol=1e-5)


@pytest.mark.parametrize("runtime", ["onnx-int8", "onnx-int8-fused"])
def test_another_models_int8_export_is_not_used(models, tmp_path, monkeypatch, runtime):
    texts = [text for _, _, text in DOCS]
    monkeypatch.setenv("MVR_CACHE_DIR", str(tmp_path / "clean"))
    want = Encoder(models["plain"], doc_runtime=runtime).encode_documents(texts).vectors
    monkeypatch.setenv("MVR_CACHE_DIR", str(tmp_path / "planted"))
    other = Encoder(models["plain-other"], doc_runtime=runtime)
    other.encode_documents(texts)
    plain = Encoder(models["plain"], doc_runtime=runtime)
    for made in {"onnx-int8": ("onnx", runtime), "onnx-int8-fused": (runtime,)}[runtime]:  # what that runtime's export is made from
        assert _plant(_export(other, tmp_path / "planted", made), plain).is_file()
    np.testing.assert_allclose(plain.encode_documents(texts).vectors, want, atol=1e-5)


def test_residual_centroid_ids_past_the_centroids_are_refused(small, tmp_path, default_encoder):
    folder = Index.derive(Index.open(small, model=default_encoder), tmp_path / "residual", codec="residual", codec_bits=2).path
    segment = segment_path(folder)
    ids = np.load(segment / "centroid_ids.npy")
    ids[5] = 60000
    rewrite(segment, "centroid_ids.npy", ids)
    with pytest.raises(IndexFormatError, match=r"centroid_ids.npy: names centroid 60000, but centroids.npy holds \d+.*mvr info"):
        Index.open(folder, model=default_encoder).search("which animal purrs?", k=3, first_stage="exhaustive")


def test_a_damaged_segment_is_never_copied_into_one_that_passes_verify(small, tmp_path, default_encoder, capsys):
    """optimize (and the merges after a write) and derive copied vectors whose sha256 was already
    wrong into a new segment with a fresh checksum: --verify passed after, and search read the
    damage. They refuse now, naming the file; a write whose merge meets it says it is committed."""
    index = copy(small, tmp_path)
    vectors = segment_path(index) / "vectors.npy"

    def damage():
        damaged = np.load(vectors, mmap_mode="r+")
        damaged[:5] = -damaged[:5]  # the same shape, the same size: only the checksum tells
        damaged.flush()

    damage()
    said = f"{vectors}: its sha256 differs from the manifest's, so it is not copied; the index is damaged"
    code, _, err = run(capsys, "index", "--from", index, "--path", tmp_path / "derived", "--preset", "small")
    assert code == 2 and err.startswith(f"mvr: error: {said}") and not (tmp_path / "derived").exists(), err
    shutil.rmtree(index)
    index = copy(small, tmp_path)
    Index.open(index).add([{"id": "n1", "text": "a new document on cats"}], merge=False)
    damage()
    code, _, err = run(capsys, "optimize", index)
    assert code == 2 and err.startswith(f"mvr: error: {said}"), err
    assert run(capsys, "info", index, "--verify")[0] == 2  # still said: nothing laundered
    gone = [i for i, _, _ in DOCS[1:]]
    with pytest.raises(IndexFormatError, match=r"^the write is committed \(generation 3\), but merging segments after it failed: .*not copied"):
        Index.open(index).delete(gone)  # most of the damaged segment deleted: it would be rewritten without them
    assert not any(i in Index.open(index) for i in gone)
