"""Encoding in local worker processes (mvr/encode/pool.py, ``mvr index --workers N``): the batches
dealt to the workers are the encoder's own, and the index is the one a single process writes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import DOCS, segment_path
from mvr import Encoder, Index, IndexConfig
from mvr.cli import main
from mvr.encode.pool import ProcessEncoder, deal
from mvr.errors import ConfigError, EncoderError

# two worker processes, and --workers is at most the cores this process may use
pytestmark = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2 if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1) < 2, reason="needs 2 CPU cores")


def corpus():
    return [{"id": f"{i}-{n}", "title": t, "text": f"{x} {n}" + " more" * (n % 5), "metadata": {"n": n}} for n in range(9) for i, t, x in DOCS]


@pytest.mark.parametrize("runtime,batch", [("onnx-int8-fused", 1), ("onnx-int8", 1), ("torch", 4)])
def test_deal_gives_each_worker_whole_batches_of_the_encoders_order(models, runtime, batch):
    encoder = Encoder(str(models["plain"]), doc_runtime=runtime, batch_size=4)
    texts = [d["text"] for d in corpus()]
    parts = deal(encoder, texts, 3)
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(texts)))  # every text once
    lengths = np.array([len(s) for s in encoder.tokenize_documents(texts)])
    order = np.argsort(-lengths, kind="stable")
    batches = [order[s : s + batch].tolist() for s in range(0, len(order), batch)]
    for w, part in enumerate(parts):
        again = part[np.argsort(-lengths[part], kind="stable")]  # how the worker orders its share
        assert [again[s : s + batch].tolist() for s in range(0, len(again), batch)] == batches[w::3]


@pytest.mark.parametrize("runtime", ["onnx-int8-fused", "onnx-int8", "torch"])
def test_a_build_in_worker_processes_writes_the_same_index(tmp_path, models, runtime):
    config = IndexConfig(model=str(models["plain"]), doc_runtime=runtime, batch_size=4, sparse=("bm25s",))
    local = Index.build(corpus(), tmp_path / "local", config=config, chunk_size=30)
    with ProcessEncoder(str(models["plain"]), workers=2, doc_runtime=runtime, batch_size=4) as encoder:
        pooled = Index.build(corpus(), tmp_path / "pooled", config=config, encoder=encoder, chunk_size=30)
        with pytest.raises(EncoderError, match="text #1 is a int"):
            encoder.encode_documents(["fine", 3])
    with pytest.raises(EncoderError, match="this ProcessEncoder is closed"):  # not the pool's "cannot schedule new futures after shutdown"
        encoder.encode_documents(["fine"])
    a, b = segment_path(local), segment_path(pooled)
    for name in ("vectors.npy", "token_ids.npy", "doc_offsets.npy", "doc_ids.npy", "text.bin", "fde/fde.faiss"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert pooled.config == local.config and pooled.manifest["encoder"] == local.manifest["encoder"]
    assert pooled.search("which animal purrs", k=3).doc_ids == local.search("which animal purrs", k=3).doc_ids


def test_documents_added_through_an_encoder_of_another_runtime_are_encoded_as_the_index_records(tmp_path, models, monkeypatch):
    monkeypatch.setenv("MVR_CACHE_DIR", str(tmp_path / "cache"))
    config = IndexConfig(model=str(models["plain"]), doc_runtime="onnx-int8", sparse=("bm25s",))  # an index from before the fused default
    docs = corpus()
    Index.build(docs[:20], tmp_path / "old", config=config)
    Index.build(docs[:20], tmp_path / "reference", config=config).add(docs[20:])
    given = Index.open(tmp_path / "old", model=Encoder(str(models["plain"])))  # an Encoder of today's default runtime
    assert given.encoder.doc_runtime == "onnx-int8-fused"
    given.add(docs[20:])
    reference = Index.open(tmp_path / "reference")
    for query in ("which animal purrs", "dogs bark 7"):
        a, b = given.search(query, k=10, first_stage="exhaustive"), reference.search(query, k=10, first_stage="exhaustive")
        assert a.doc_ids == b.doc_ids and [h.score for h in a[0]] == [h.score for h in b[0]]
    assert not list((tmp_path / "cache" / "onnx").glob("*-int8-fused.onnx"))  # the fused runtime never ran


def test_the_index_command_encodes_in_workers(tmp_path, models, beir, capsys):
    assert main(["index", str(beir / "corpus.jsonl"), "--path", str(tmp_path / "cli"), "--model", str(models["plain"]), "--workers", "2", "--quiet"]) == 0
    assert "indexed 8 documents" in capsys.readouterr().out
    one = Index.open(tmp_path / "cli")
    assert one.search("which animal purrs", k=1)[0][0].id == Index.build(str(beir / "corpus.jsonl"), tmp_path / "one", config=IndexConfig(model=str(models["plain"])), show_progress=False).search("which animal purrs", k=1)[0][0].id
    for argv, message in ((["--workers", "0"], "--workers must be a positive integer"), (["--workers", "2", "--precision", "bf16"], "does not go with")):
        assert main(["index", str(beir / "corpus.jsonl"), "--path", str(tmp_path / "x"), "--model", str(models["plain"]), *argv]) != 0
        assert message in capsys.readouterr().err
    assert main(["index", "--from", str(tmp_path / "cli"), "--path", str(tmp_path / "y"), "--workers", "2"]) != 0
    assert "apply to encoding a CORPUS" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="positive integer"):
        ProcessEncoder(str(models["plain"]), workers=True)
    for option in ({"threads": 2}, {"device": "cuda"}, {"precision": "bf16"}):
        with pytest.raises(ConfigError, match="one thread each"):
            ProcessEncoder(str(models["plain"]), **option)


def test_a_command_with_workers_exits_without_leaving_semaphores(tmp_path, models, beir):
    # workers that end as processes do run their finalizers; terminated, they left tqdm's lock and
    # another semaphore for the resource tracker to warn about at exit
    argv = ["index", str(beir / "corpus.jsonl"), "--path", str(tmp_path / "w"), "--model", str(models["plain"]), "--workers", "2", "--quiet"]
    done = subprocess.run([sys.executable, "-m", "mvr.cli", *argv], capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.returncode == 0 and "indexed 8 documents" in done.stdout, done.stderr[-2000:]
    assert "leaked semaphore" not in done.stderr, done.stderr[-2000:]


def test_adding_in_worker_processes_writes_the_segment_one_process_writes(tmp_path, models, capsys):
    config = IndexConfig(model=str(models["plain"]), batch_size=4, sparse=("bm25s",))
    docs = corpus()
    one, two = (Index.build(docs[:20], tmp_path / name, config=config, show_progress=False) for name in ("one", "two"))
    one.add(docs[20:], merge=False)
    done = two.add(docs[20:], merge=False, workers=2)
    assert done["added"] == len(docs) - 20 and len(two.segments) == 2
    a, b = one.segments[-1].path, two.segments[-1].path
    for name in ("vectors.npy", "token_ids.npy", "doc_offsets.npy", "doc_ids.npy", "text.bin", "fde/fde.faiss"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    # the CLI: an upsert in workers replaces documents; refusals leave the index as it was
    changed = tmp_path / "changed.jsonl"
    changed.write_text("".join(json.dumps({"id": d["id"], "text": d["text"] + " changed"}) + "\n" for d in docs[:5]))
    assert main(["add", str(two.path), str(changed), "--upsert", "--workers", "2", "--quiet"]) == 0
    assert "added 5 documents (5 of them in place of documents of the same id)" in capsys.readouterr().out
    generation = Index.open(two.path).generation
    for argv, message in ((["--workers", "0"], "--workers must be a positive integer"), (["--workers", "2", "--device", "cuda"], "does not go with --device other than cpu"),
                          (["--workers", "99999"], f"--workers 99999 is more than the {len(os.sched_getaffinity(0))} CPU cores")):
        assert main(["add", str(two.path), str(changed), "--upsert", *argv]) != 0
        assert message in capsys.readouterr().err
    for bad in (0, True, 2.0):
        with pytest.raises(ConfigError, match="workers must be a positive integer"):
            two.upsert(docs[:2], workers=bad)
    with pytest.raises(ConfigError, match="use at most"):  # before any process starts: a mistyped count would start that many
        two.upsert(docs[:2], workers=10**5)
    assert Index.open(two.path).generation == generation and not _children(os.getpid())  # no worker left behind


def test_a_failed_add_in_worker_processes_stops_them_and_keeps_the_index(tmp_path, models, monkeypatch):
    import mvr.writer

    index = Index.build(corpus()[:10], tmp_path / "i", config=IndexConfig(model=str(models["plain"]), sparse=("bm25s",)), show_progress=False)
    started = []

    def broken(*args, **kwargs):
        started.extend(_children(os.getpid()))  # the workers are up while the segment is written
        raise OSError("disk full")

    monkeypatch.setattr(mvr.writer, "write_segment", broken)
    with pytest.raises(OSError, match="disk full"):
        index.add(corpus()[10:], workers=2)
    assert started and not _children(os.getpid())
    again = Index.open(index.path)
    assert again.n_docs == 10 and len(again.segments) == 1 and sorted(p.name for p in (index.path / "segments").iterdir()) == [again.segments[0].path.name]


def _children(pid: int) -> set[int]:
    """The live worker processes of the pool whose parent is ``pid`` (from /proc: spawn's
    children, not its resource tracker)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                command = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z" and b"spawn_main" in command:
                found.add(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (a zombie, ended and not yet reaped, does not)."""
    try:
        return (Path(f"/proc/{pid}") / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _stop_with_workers(argv: list[str], sig=signal.SIGKILL, settle: float = 2.0, env: dict | None = None) -> str:
    """Run ``mvr ARGV`` (with --workers 2), send it ``sig`` ``settle`` seconds after both workers
    exist (0: still starting; a few: encoding), and check that no worker outlives it. Its stderr."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)} if env is None else env
    run = subprocess.Popen([sys.executable, "-m", "mvr.cli", *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 120
        while len(_children(run.pid)) < 2 and time.monotonic() < deadline and run.poll() is None:
            time.sleep(0.05)
        workers = _children(run.pid)
        assert len(workers) == 2, run.stderr.read().decode() if run.poll() is not None else "no workers started"
        time.sleep(settle)
    finally:
        run.send_signal(sig)
        stderr = run.communicate(timeout=60)[1].decode()
    deadline = time.monotonic() + 30
    while any(map(_alive, workers)) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [p for p in workers if _alive(p)]
    assert not left, f"worker processes {left} outlived their stopped process"
    return stderr


def _big(path: Path) -> Path:
    path.write_text("".join(json.dumps({"id": f"d{n}", "text": f"{DOCS[n % 8][2]} {n} " * 6}) + "\n" for n in range(20000)))
    return path


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_workers_end_when_their_build_is_killed(tmp_path, models):
    """SIGKILL of a build with --workers: no worker process is left behind, no index appears,
    and the same build then completes."""
    _stop_with_workers(["index", str(_big(tmp_path / "corpus.jsonl")), "--path", str(tmp_path / "idx"), "--model", str(models["plain"]), "--workers", "2", "--quiet"])
    assert not (tmp_path / "idx").exists()
    small = tmp_path / "small.jsonl"
    small.write_text("".join(json.dumps({"id": f"d{n}", "text": DOCS[n % 8][2]}) + "\n" for n in range(40)))
    assert main(["index", str(small), "--path", str(tmp_path / "idx"), "--model", str(models["plain"]), "--workers", "2", "--quiet"]) == 0
    assert len(Index.open(tmp_path / "idx").doc_ids) == 40


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
@pytest.mark.parametrize("settle", [8.0, 0.0], ids=["encoding", "starting"])
def test_ctrl_c_stops_a_build_and_its_workers_cleanly(tmp_path, settle):
    """Ctrl-C (SIGINT) of a build with --workers (the default model), its workers encoding or
    still starting (8 s after they exist, they have loaded the model and are encoding: this
    corpus takes them about 100 s): one line, exit status 130, no traceback of a worker, no
    semaphore left for the resource tracker to warn about (a busy worker is asked to end, and
    ends as a process does; killed, each left its progress lock), no worker left, no index."""
    argv = ["index", str(_big(tmp_path / "corpus.jsonl")), "--path", str(tmp_path / "idx"), "--workers", "2"]
    stderr = _stop_with_workers(argv, signal.SIGINT, settle)
    lines = stderr.strip().splitlines()  # a note may come first: what the build encoded is kept for --resume
    assert lines[-1] == "mvr: interrupted" and all(line.startswith("mvr: what this build encoded is kept") for line in lines[:-1]), stderr[-3000:]
    assert not (tmp_path / "idx").exists()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_an_add_in_workers_killed_part_way_leaves_the_last_commit_whole(tmp_path, models):
    index = Index.build(corpus(), tmp_path / "idx", config=IndexConfig(model=str(models["plain"]), sparse=("bm25s",)), show_progress=False)
    before = (index.generation, list(index.doc_ids), index.search("which animal purrs", k=3).doc_ids)
    _stop_with_workers(["add", str(tmp_path / "idx"), str(_big(tmp_path / "big.jsonl")), "--workers", "2", "--quiet"])
    after = Index.open(tmp_path / "idx")
    assert (after.generation, list(after.doc_ids), after.search("which animal purrs", k=3).doc_ids) == before
    small = tmp_path / "small.jsonl"
    small.write_text("".join(json.dumps({"id": f"new{n}", "text": DOCS[n % 8][2]}) + "\n" for n in range(6)))
    assert main(["add", str(tmp_path / "idx"), str(small), "--workers", "2", "--quiet"]) == 0  # the killed writer's lock is gone
    assert Index.open(tmp_path / "idx").n_docs == len(corpus()) + 6


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_a_worker_stopped_from_elsewhere_fails_the_build_in_one_line(tmp_path):
    """SIGTERM to a busy worker (``kill``, an out-of-memory killer), not from the build: the
    build fails with the one line that says a worker stopped (the worker's SystemExit came back
    to the build as its own, which exited with status 1 and said nothing)."""
    argv = ["index", str(_big(tmp_path / "corpus.jsonl")), "--path", str(tmp_path / "idx"), "--workers", "2", "--quiet"]
    run = subprocess.Popen([sys.executable, "-m", "mvr.cli", *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        deadline = time.monotonic() + 120
        while len(_children(run.pid)) < 2 and time.monotonic() < deadline and run.poll() is None:
            time.sleep(0.05)
        workers = sorted(_children(run.pid))
        assert len(workers) == 2, run.stderr.read().decode()
        time.sleep(8.0)  # loaded and encoding (this corpus takes them about 100 s)
        os.kill(workers[0], signal.SIGTERM)
        stderr = run.communicate(timeout=120)[1].decode()
    finally:
        if run.poll() is None:
            run.kill()
    # (a note may come first: what the build encoded is kept for --resume; and where the signal caught the worker sending
    # its part back, the resource tracker may warn of its semaphore at exit, as for any process killed)
    errors = [line for line in stderr.splitlines() if line.startswith("mvr: error:")]
    assert run.returncode == 2 and len(errors) == 1 and errors[0].startswith("mvr: error: a worker process of --workers stopped") and "Traceback" not in stderr, stderr[-3000:]
    assert not (tmp_path / "idx").exists()
