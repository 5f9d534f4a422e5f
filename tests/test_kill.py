"""SIGKILL a real writer process at random points of adds, upserts, deletes and merges: after
each kill the index opens at its last commit, verifies, holds every committed document (with its
committed text) and no uncommitted one, and the next writer carries on."""

import os
import random
import sys
import time
from pathlib import Path

from mvr import Encoder, Index
from mvr.storage.validate import scan_tokens, verify_files

sys.path.insert(0, str(Path(__file__).parent))
from conftest import kill_when_ready  # noqa: E402
from living_worker import apply, plan  # noqa: E402

KILLS = int(os.environ.get("MVR_KILLS", "50"))
WORKER = Path(__file__).parent / "living_worker.py"


def _live(path: Path) -> dict[str, str]:
    index = Index.open(path)
    try:
        live = {doc.id: doc.text for doc in index.documents()}
        assert len(live) == len(index)
        found = index.search_encoded(None, k=5, texts=["tea"], first_stage="bm25s", rerank=False).doc_ids[0] if index.has_stage("bm25s") else []
        assert set(found) <= set(live)
        assert not [line for segment in index.segments for line in scan_tokens(segment.tokens)]  # --verify's vector scan
        return live
    finally:
        del index


def test_sigkill_during_writes_leaves_the_last_commit_whole(tmp_path, models):
    encoder = Encoder(models["plain"])
    docs = [{"id": f"d{i}", "text": f"first document {i} about tea and cats"} for i in range(6)]
    path = tmp_path / "idx"
    Index.build(docs, path, encoder=encoder, show_progress=False)
    live = {d["id"]: d["text"] for d in docs}
    rng = random.Random(13)
    op, kills, hit = 0, 0, set()
    deadline = time.monotonic() + 900
    while kills < KILLS and time.monotonic() < deadline:
        # half the kills at a random time, half a moment after a given kind of write begins (a
        # delete takes milliseconds: random times alone can miss it)
        kind = None if kills % 2 == 0 else ("delete", "upsert", "optimize", "add")[kills // 2 % 4]
        after = None if kind is None else f"START {kind} "
        seconds = rng.uniform(0.0, 0.8) if kind is None else rng.uniform(0.0, 0.02)
        out, _ = kill_when_ready([WORKER, path, models["plain"], op], seconds, after=after)
        done = [int(line.split()[1]) for line in out.splitlines() if line.startswith("DONE")]
        for i in done:
            assert i == op
            live = apply(*plan(op, live), live)
            op += 1
        # killed during op `op`: its commit happened or did not, nothing in between
        hit.add(plan(op, live)[0])
        after = apply(*plan(op, live), live)
        found = _live(path)
        assert found in (live, after), f"after a kill in op {op}: {sorted(set(found) ^ set(live))}"
        if found == after and after != live:
            live = after
            op += 1
        assert verify_files(path) == []
        kills += 1
    assert kills >= min(KILLS, 50) or time.monotonic() >= deadline
    if kills >= 50:  # the kills fell in every kind of write (adds merge too: MERGE_FACTOR 3)
        assert hit == {"add", "upsert", "delete", "optimize"}, hit
    index = Index.open(path)
    assert {doc.id for doc in index.documents()} == set(live) and op > 10
