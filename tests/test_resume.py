"""Resumable builds (issue 15, point 1): a build killed with SIGKILL at random points, encoding or
finishing, resumes from its last recorded chunk (`--resume`, ``resume=True``), possibly killed
again, and ends with the same index, file for file, as a build never interrupted."""

import dataclasses
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mvr import Encoder, Index
from mvr.cli import main
from mvr.config import IndexConfig
from mvr.corpus import read_corpus
from mvr.errors import ConfigError, CorpusError, IndexExistsError

sys.path.insert(0, str(Path(__file__).parent))
from conftest import kill_when_ready  # noqa: E402
from resume_worker import CONFIG, corpus  # noqa: E402

WORKER = Path(__file__).parent / "resume_worker.py"
N_DOCS, CHUNK = 60, 4
TIMESTAMPS = {"created", "seconds", "encode_seconds", "docs_per_second", "fde_seconds", "model_load_seconds", "compact_seconds", "cluster_seconds", "codec_seconds", "build", "resumed_at", "command",
              "index_id"}  # what is of this build and not of its content: its times, and the id a new index draws (storage/commits.py)


def _files(path: Path) -> dict[str, bytes]:
    """Every file of an index, JSON with its timings, dates and build id left out."""
    out = {}
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        data = file.read_bytes()
        if file.suffix == ".json":
            data = json.dumps(_untimed(json.loads(data)), sort_keys=True).encode()
        out[str(file.relative_to(path))] = data
    return out


def _untimed(value):
    if isinstance(value, dict):
        return {k: _untimed(v) for k, v in value.items() if k not in TIMESTAMPS}
    if isinstance(value, list):
        return [_untimed(v) for v in value]
    return value


def _staging(home: Path) -> list[Path]:
    return sorted(p for p in home.iterdir() if ".building-" in p.name)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, models):
    path = tmp_path_factory.mktemp("ref") / "idx"
    Index.build(corpus(N_DOCS), path, config=CONFIG, encoder=Encoder(models["plain"]), chunk_size=CHUNK, show_progress=False)
    return path


def test_sigkill_then_resume_gives_the_uninterrupted_index(tmp_path, models, reference):
    home = tmp_path / "home"
    home.mkdir()
    path = home / "idx"
    rng = random.Random(7)
    kills, finished, deadline, hit = 0, False, time.monotonic() + 300, set()
    while kills < 8 and time.monotonic() < deadline:
        delay = "0.02" if kills % 2 == 0 else "0"  # a slow corpus: killed while encoding; a fast one: often while finishing
        out, _ = kill_when_ready([WORKER, path, models["plain"], N_DOCS, CHUNK, "1" if kills else "0", delay], rng.uniform(0.1, 1.5))
        if "DONE" in out or path.exists():  # published whole (the kill may fall between the commit and DONE)
            finished = True
            break
        kills += 1
        staged = _staging(home)
        assert len(staged) <= 1, staged  # a resumed build goes on in the folder it adopted
        encoded = [p for p in staged[0].glob("segments/*/resume/vectors.raw")] if staged else []
        hit.add("finishing" if encoded else "encoding")
    assert kills >= 2 and "encoding" in hit, "the kills all came too late: slow the worker down"
    assert hit == {"encoding", "finishing"} or kills < 8, hit
    if not finished:
        index = Index.build(corpus(N_DOCS), path, config=CONFIG, encoder=Encoder(models["plain"]), chunk_size=CHUNK, resume=True, show_progress=False)
        assert index.n_docs == N_DOCS
    assert _staging(home) == []
    assert _files(path) == _files(reference)
    a, b = Index.open(path), Index.open(reference)
    assert a.search(["tea", "cats number 3"], 5).doc_ids == b.search(["tea", "cats number 3"], 5).doc_ids


def _interrupted(home: Path, models, stop_after: int) -> None:
    """A build of home/idx that fails (as a kill would stop it) after ``stop_after`` documents."""

    def failing():
        for i, doc in enumerate(corpus(N_DOCS)):
            if i == stop_after:
                raise KeyboardInterrupt
            yield doc

    with pytest.raises(KeyboardInterrupt):
        Index.build(failing(), home / "idx", config=CONFIG, encoder=Encoder(models["plain"]), chunk_size=CHUNK, show_progress=False)


def test_an_interrupted_build_keeps_its_chunks_and_resumes_only_what_matches(tmp_path, models, reference, capsys):
    home = tmp_path / "home"
    _interrupted(home, models, 26)
    staged = _staging(home)
    assert len(staged) == 1 and not (home / "idx").exists()
    encoder = Encoder(models["plain"])
    # another index built in the same home leaves the resumable build alone
    Index.build(corpus(5), home / "other", config=IndexConfig(fde=None, sparse=()), encoder=encoder, show_progress=False)
    assert _staging(home) == staged
    capsys.readouterr()
    assert main(["list", "--index-dir", str(home)]) == 0  # said, so that it is not left forgotten
    out, err = capsys.readouterr()
    assert out.split() == ["other"] and f"an interrupted build of 'idx' is kept at {staged[0]} (" in err and "--name idx --resume` goes on from it" in err
    # other settings, or another corpus: refused in one line, the chunks kept
    with pytest.raises(ConfigError, match="other settings") as caught:
        Index.build(corpus(N_DOCS), home / "idx", config=IndexConfig(fde=None), encoder=encoder, chunk_size=CHUNK, resume=True)
    assert "\n" not in str(caught.value) and _staging(home) == staged
    shuffled = list(corpus(N_DOCS))
    shuffled[1], shuffled[2] = shuffled[2], shuffled[1]
    with pytest.raises(CorpusError, match="document #1 .*'doc002'.*'doc001'"):
        Index.build(shuffled, home / "idx", config=CONFIG, encoder=encoder, chunk_size=CHUNK, resume=True)
    assert _staging(home) == staged
    for change in ({"text": "another text entirely"}, {"title": "a new title"}, {"metadata": {"n": -1}}):  # the same ids, another document (kept its old text before)
        edited = list(corpus(N_DOCS))
        edited[5] = {**edited[5], **change}
        with pytest.raises(CorpusError, match="document 'doc005' holds another title, text or metadata than the interrupted build read"):
            Index.build(edited, home / "idx", config=CONFIG, encoder=encoder, chunk_size=CHUNK, resume=True)
        assert _staging(home) == staged
    index = Index.build(corpus(N_DOCS), home / "idx", config=CONFIG, encoder=encoder, chunk_size=CHUNK, resume=True, show_progress=False)
    assert index.manifest["build"]["resumed_at"] == 24  # the 6 whole chunks before the failure
    assert _files(home / "idx") == _files(reference) and _staging(home) == []


def test_a_write_that_fails_stops_the_build_and_a_resume_goes_on_from_the_chunks_before(tmp_path, models, reference):
    """A chunk is written on a thread of its own while the next one encodes. A write that fails
    there (the file size limit of a real process here, as a full disk would) stops the build with
    that error, the chunks before it recorded and nothing after: a resume goes on from them."""
    import numpy as np

    home = tmp_path / "home"
    offsets = np.load(reference / "segments" / "s000001" / "doc_offsets.npy")
    dim = Index.open(reference).dim
    limit = int(offsets[22]) * dim * 2  # vectors.raw reaches it in the 6th chunk (documents 20-23)
    code = (
        "import resource, signal, sys\nfrom pathlib import Path\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of the process being killed\n"
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from mvr import Encoder, Index\n"
        "from resume_worker import CONFIG, corpus\n"
        "read = []\n"
        "def counted(docs):\n    for doc in docs:\n        read.append(doc)\n        yield doc\n"
        "try:\n"
        f"    Index.build(counted(corpus({N_DOCS})), Path({str(home / 'idx')!r}), config=CONFIG, encoder=Encoder({str(models['plain'])!r}), chunk_size={CHUNK}, show_progress=False)\n"
        "finally:\n    print('READ', len(read))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "File too large" in done.stderr.strip().splitlines()[-1], done.stderr[-2000:]
    assert done.stdout.split() == ["READ", "28"]  # stopped once the next chunk (24-27) had encoded, not at the end
    assert not (home / "idx").exists() and len(_staging(home)) == 1
    index = Index.build(corpus(N_DOCS), home / "idx", config=CONFIG, encoder=Encoder(models["plain"]), chunk_size=CHUNK, resume=True, show_progress=False)
    assert index.manifest["build"]["resumed_at"] == 20  # the 5 chunks whole before the one that failed
    assert _files(home / "idx") == _files(reference) and _staging(home) == []


def test_without_resume_an_interrupted_build_starts_over(tmp_path, models, reference):
    home = tmp_path / "home"
    _interrupted(home, models, 10)
    index = Index.build(corpus(N_DOCS), home / "idx", config=CONFIG, encoder=Encoder(models["plain"]), chunk_size=CHUNK, show_progress=False)
    assert "resumed_at" not in index.manifest["build"] and _staging(home) == []
    assert _files(home / "idx") == _files(reference)


def test_cli_resume(tmp_path, models, capsys):
    home = tmp_path / "home"
    corpus_file = tmp_path / "corpus.jsonl"
    corpus_file.write_text("".join(json.dumps({"_id": d["id"], "title": d["title"], "text": d["text"]}) + "\n" for d in corpus(12)))
    args = ["--index-dir", str(home), "--model", str(models["plain"]), "--no-fde", "--quiet"]
    assert main(["index", str(corpus_file), "--name", "whole", *args, "--resume"]) == 0  # nothing to resume: a build from the start
    out = capsys.readouterr().out
    assert "indexed 12 documents" in out and "resumed after" not in out

    def failing():
        for i, doc in enumerate(read_corpus(corpus_file)):
            if i == 6:
                raise KeyboardInterrupt
            yield doc

    with pytest.raises(KeyboardInterrupt):  # the CLI's chunks are 1024 documents; this build's are 4, and a resume keeps them
        Index.build(failing(), home / "x", config=IndexConfig(model=str(models["plain"]), fde=None), chunk_size=4, show_progress=False)
    assert len(_staging(home)) == 1
    assert main(["index", str(corpus_file), "--name", "x", *args, "--resume"]) == 0
    out = capsys.readouterr().out
    assert "indexed 12 documents" in out and "resumed after 4 documents" in out
    assert _files(home / "x") == _files(home / "whole") and _staging(home) == []
    assert main(["index", "--from", "whole", "--name", "y", *args, "--resume"]) != 0  # deriving encodes nothing to resume
    assert "--resume apply to encoding a CORPUS" in capsys.readouterr().err


def test_builds_in_two_processes_write_the_same_files(tmp_path, models):
    """What resuming relies on: a build is the same in another process (bm25s numbered its terms
    in the order of a Python set, which PYTHONHASHSEED changes)."""
    script = ("import sys; from pathlib import Path; sys.path.insert(0, sys.argv[3]); from resume_worker import CONFIG, corpus; from mvr import Index; "
              "from mvr import Encoder; Index.build(corpus(20), Path(sys.argv[1]), config=CONFIG, encoder=Encoder(sys.argv[2]), show_progress=False)")
    for seed in ("1", "2"):
        done = subprocess.run([sys.executable, "-c", script, str(tmp_path / seed), str(models["plain"]), str(Path(__file__).parent)],
                              capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": os.pathsep.join(sys.path)})
        assert done.returncode == 0, done.stderr[-2000:]
    assert _files(tmp_path / "1") == _files(tmp_path / "2")


def test_damaged_or_missing_records_resume_from_the_chunks_before_them(tmp_path, models, reference):
    encoder = Encoder(models["plain"])
    for damage in ("truncate", "remove"):
        home = tmp_path / damage
        _interrupted(home, models, 30)
        (staged,) = _staging(home)
        records = sorted(staged.glob("segments/*/resume/chunk-*.npz"))
        assert len(records) == 7
        if damage == "truncate":
            records[3].write_bytes(records[3].read_bytes()[:50])  # chunk 4 cut short: chunks 1-3 stand
        else:
            records[0].unlink()  # chunk 1 gone: nothing stands
        index = Index.build(corpus(N_DOCS), home / "idx", config=CONFIG, encoder=encoder, chunk_size=CHUNK, resume=True, show_progress=False)
        assert index.manifest["build"]["resumed_at"] == (12 if damage == "truncate" else 0)
        assert _files(home / "idx") == _files(reference)


def test_a_refused_build_keeps_the_interrupted_one(tmp_path, models, reference):
    home = tmp_path / "home"
    encoder = Encoder(models["plain"])
    Index.build(corpus(5), home / "idx", config=CONFIG, encoder=encoder, show_progress=False)

    def failing():
        for i, doc in enumerate(corpus(N_DOCS)):
            if i == 10:
                raise KeyboardInterrupt
            yield doc

    with pytest.raises(KeyboardInterrupt):  # an interrupted rebuild of an index that exists
        Index.build(failing(), home / "idx", config=CONFIG, encoder=encoder, chunk_size=CHUNK, overwrite=True, show_progress=False)
    staged = _staging(home)
    assert len(staged) == 1
    with pytest.raises(IndexExistsError):  # without --overwrite: refused, and the chunks stay
        Index.build(corpus(N_DOCS), home / "idx", config=CONFIG, encoder=encoder, chunk_size=CHUNK, resume=True)
    assert _staging(home) == staged
    with pytest.raises(ConfigError, match="precision"):  # encoded another way: refused
        Index.build(corpus(N_DOCS), home / "idx", config=dataclasses.replace(CONFIG, doc_runtime="torch"), encoder=Encoder(models["plain"], precision="bf16"),
                    chunk_size=CHUNK, overwrite=True, resume=True)
    assert _staging(home) == staged
    index = Index.build(corpus(N_DOCS), home / "idx", config=CONFIG, encoder=encoder, chunk_size=CHUNK, overwrite=True, resume=True, show_progress=False)
    assert index.manifest["build"]["resumed_at"] == 8 and _files(home / "idx") == _files(reference)
