"""Eight reader threads search one index while a writer adds and deletes in a loop: no error, and
every result list is one commit's (only documents live in it, as many as k allows)."""

import os
import random
import threading
import time

from mvr import Index, IndexConfig

SECONDS = float(os.environ.get("MVR_CONCURRENCY_SECONDS", "60"))
WORDS = ["cats", "tea", "lava", "dogs", "plants", "water", "green", "sleep"]


def _text(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(6))


def test_readers_see_whole_commits_while_a_writer_changes_the_index(tmp_path, default_encoder):
    rng = random.Random(3)
    docs = [{"id": f"d{i}", "text": _text(rng)} for i in range(40)]
    path = tmp_path / "idx"
    Index.build(docs, path, encoder=default_encoder, show_progress=False)
    writer = Index.open(path, model=default_encoder)
    reader = Index.open(path, model=default_encoder)
    live_at = {writer.generation: frozenset(d["id"] for d in docs)}
    stop = threading.Event()
    errors, seen = [], []

    def write():
        step = 0
        try:
            while not stop.is_set():
                step += 1
                if step % 3:
                    writer.add([{"id": f"w{step}-{j}", "text": _text(rng)} for j in range(4)], show_progress=False)
                else:
                    writer.delete(rng.sample(sorted(d.id for d in writer.documents()), 5))
                live_at[writer.generation] = frozenset(d.id for d in writer.documents())
        except Exception as error:  # noqa: BLE001 - reported by the test
            errors.append(error)

    def read(seed: int):
        local = random.Random(seed)
        try:
            while not stop.is_set():
                if local.random() < 0.2:
                    reader.refresh()
                stage = local.choice(["exhaustive", "fde+bm25s", "fde", "bm25s"])
                results = reader.search([local.choice(WORDS), _text(local)], k=10, first_stage=stage)
                state = results._index
                seen.append((state.generation, stage, results.doc_ids, state.n_live, [[h.text for h in hits] for hits in results]))
        except Exception as error:  # noqa: BLE001
            errors.append(error)

    for stage in ("exhaustive", "fde+bm25s", "fde", "bm25s"):  # kernels compiled here first: Python 3.11 raised a SystemError ("AST constructor
        reader.search(["cats", "lava"], k=10, first_stage=stage)  # recursion depth mismatch", CPython gh-106905) once, with threads building ASTs at once
    writer.add([{"id": "warm", "text": _text(rng)}], show_progress=False)  # and the write path's (it raised it again with the writer's first add
    writer.delete(["warm"])  # compiling beside the readers); the readers, not refreshed yet, see none of these commits
    live_at[writer.generation] = frozenset(d.id for d in writer.documents())
    threads = [threading.Thread(target=write)] + [threading.Thread(target=read, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    time.sleep(SECONDS)
    stop.set()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert len(live_at) > 5 and len(seen) > 50
    generations = set()
    recorded = sorted(live_at)
    for generation, stage, ids, n_live, texts in seen:
        generations.add(generation)
        # the writer records the live documents after each add or delete with its merges; a merge
        # changes no document, so a generation in between holds those of the next recorded one
        live = live_at[min(g for g in recorded if g >= generation)]
        assert n_live == len(live)
        for row in ids:
            assert set(row) <= live and len(set(row)) == len(row)
            if stage in ("exhaustive", "fde", "fde+bm25s"):
                assert len(row) == min(10, n_live)
    assert len(generations) > 2  # the readers moved on with refresh


def test_two_first_searches_at_once_both_answer(tmp_path, models):
    """In a fresh process, two threads' first searches load the model at once: transformers' lazy
    module raced, and one got "cannot import name 'AutoConfig' from 'transformers'"."""
    import subprocess
    import sys

    Index.build([("a", "cats purr"), ("b", "green tea")], tmp_path / "idx", config=IndexConfig(model=str(models["plain"])))
    code = (
        "import sys, threading\nfrom mvr import Index\n"
        "indexes, errors = [Index.open(sys.argv[1]) for _ in range(2)], []\n"
        "def first(index):\n"
        "    try:\n        index.search('cats', k=1)\n"
        "    except Exception as error:\n        errors.append(repr(error))\n"
        "threads = [threading.Thread(target=first, args=(i,)) for i in indexes]\n"
        "[t.start() for t in threads]; [t.join() for t in threads]\nprint(errors)\n"
    )
    run = subprocess.run([sys.executable, "-c", code, str(tmp_path / "idx")], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.strip() == "[]", run.stdout + run.stderr


def test_every_npy_header_is_read_under_the_lock(default_index):
    """numpy parses .npy headers with ast.literal_eval, which CPython 3.11 can fail with a
    SystemError when threads do it at once (mvr/threads.py): each reader of a header (the
    validation's, a blob's rows, bm25s's own load) waits while another thread holds NPY_LOCK."""
    from mvr.stages.bm25s import BM25S
    from mvr.storage.blobs import RowReader
    from mvr.storage.validate import npy_header
    from mvr.threads import NPY_LOCK

    from conftest import segment_path

    folder = segment_path(default_index)
    assert (folder / "bm25s").is_dir()
    readers = {
        "npy_header": lambda: npy_header(folder, "doc_ids.npy"),
        "RowReader": lambda: RowReader(folder / "doc_ids.npy"),
        "BM25S.open": lambda: BM25S(folder / "bm25s"),
    }
    for name, read in readers.items():
        done = threading.Event()
        reader = threading.Thread(target=lambda: (read(), done.set()), daemon=True)
        with NPY_LOCK:
            reader.start()
            assert not done.wait(0.5), f"{name} read a header while another thread held NPY_LOCK"
        reader.join(30)
        assert done.is_set(), f"{name} did not finish once NPY_LOCK was free"
