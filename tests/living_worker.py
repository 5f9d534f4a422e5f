"""A writer for the kill test (tests/test_kill.py): runs a fixed sequence of adds, upserts,
deletes and merges on an index, printing ``START KIND i`` before each op and ``DONE i`` after
its commit returns, until killed.

    python tests/living_worker.py INDEX MODEL FIRST_OP

The sequence is a function of the op number and the index's live ids (:func:`plan`), so the
test can compute what every prefix of it leaves, and check the index against it after a kill.
"""

from __future__ import annotations

import random
import sys


def plan(i: int, live: dict[str, str]) -> tuple[str, list]:
    """Op ``i`` given the live documents ``{id: text}``: ``(kind, payload)``."""
    rng = random.Random(i)
    ids = sorted(live)
    kind = ("add", "upsert", "delete", "add", "delete", "optimize")[i % 6]
    if kind == "add" or (kind in ("upsert", "delete") and len(ids) < 3):
        return "add", [{"id": f"a{i}-{j}", "text": f"document {i} {j} about {rng.choice(['cats', 'tea', 'lava', 'dogs'])}"} for j in range(3)]
    if kind == "upsert":
        return "upsert", [{"id": rng.choice(ids), "text": f"replaced by op {i}"}, {"id": f"u{i}", "text": f"upserted {i} tea"}]
    if kind == "delete":
        return "delete", rng.sample(ids, 2)
    return "optimize", []


def apply(kind: str, payload: list, live: dict[str, str]) -> dict[str, str]:
    """The live documents after the op."""
    live = dict(live)
    if kind in ("add", "upsert"):
        live.update({doc["id"]: doc["text"] for doc in payload})
    elif kind == "delete":
        for doc_id in payload:
            live.pop(doc_id, None)
    return live


def main() -> None:
    from mvr import Encoder, Index
    from mvr import writer

    writer.MERGE_FACTOR = 3  # merges often
    path, model, first = sys.argv[1], sys.argv[2], int(sys.argv[3])
    index = Index.open(path, model=Encoder(model))
    live = {doc.id: doc.text for doc in index.documents()}
    # warm up, so the kills after READY land in writes rather than in loading: the ONNX session,
    # and Numba's kernels (whose first load sets up its compiler, in whatever call comes first)
    index.encoder.encode_documents(["warm up"])
    index.search("warm up", k=1)
    print("READY", flush=True)
    for i in range(first, first + 10_000):
        kind, payload = plan(i, live)
        print(f"START {kind} {i}", flush=True)
        if kind == "add":
            index.add(payload, show_progress=False)
        elif kind == "upsert":
            index.upsert(payload, show_progress=False)
        elif kind == "delete":
            index.delete(payload)
        else:
            index.optimize()
        live = apply(kind, payload, live)
        print(f"DONE {i}", flush=True)


if __name__ == "__main__":
    main()
