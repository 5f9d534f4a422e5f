"""Sharded search (issue 15, point 4): an index of several segments searched by Ray actors, each
holding some of them (mvr.distributed.ShardedIndex), its shards asked at once against one after
another, beside the same index searched in this process, one query at a time, in one command.

    python -m mvr.eval.sharded ../shared/datasets/scifact --documents 2000 --segments 2 --shards 2 --threads 1 --output docs/results/sharded-scifact.json
    python -m mvr.eval.sharded ../shared/datasets/scifact --documents 2000 --segments 2 --shards 2 --threads 1 --nodes --output docs/results/sharded-nodes-scifact.json

The index: the first N documents of the corpus, built with the default settings in ``--segments``
parts (a build, then additions that are not merged). Each shard runs with ``--threads`` CPU
threads, and so does the coordinator (merging, top-k); the local searches run with ``--threads``
and with shards x threads (the cores the shards hold together). Every search is checked to return
the first one's ids and scores. Times are per query, the fastest of ``--repeat``, query encoding
excluded (the queries are encoded once, before the clock starts). A third set of rows reads the
hits' documents (their texts) after each default search, as a RAG caller does: locally, through
the shards as mvr reads them (one call per segment at the first read), and a call per hit (as
before that). ``--nodes``: the shards on a Ray
cluster of ``--shards`` nodes of ``--threads`` CPUs started on this machine (each node a raylet
with its own object store, joined by address; a shard on each), instead of a local Ray instance.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path

import numpy as np


def _measure(search, n: int, repeat: int) -> tuple[list, list]:
    """Milliseconds of each query's search (``search(q)``; the fastest of ``repeat``), and its results."""
    spent, found = [], []
    for q in range(n):
        best = np.inf
        for _ in range(repeat):
            started = time.perf_counter()
            results = search(q)
            best = min(best, (time.perf_counter() - started) * 1e3)
        spent.append(best)
        found.append(results)
    return spent, found


def run(dataset: Path, documents: int, segments: int, shards: int, threads: int, n_queries: int, repeat: int, nodes: bool = False) -> dict:
    import ray

    from mvr import Index
    from mvr.distributed import ShardedIndex, connect
    from mvr.distributed.remote import HitDocuments
    from mvr.segment import Commit

    from .beir import load_beir
    from .index_speed import _first, nodes_cluster

    docs = _first(dataset, documents)
    queries, _ = load_beir(dataset, "test")
    texts = list(queries.values())[:n_queries]
    rows, placed = [], []
    with tempfile.TemporaryDirectory() as tmp, (nodes_cluster(shards, threads) if nodes else contextlib.nullcontext("local")) as address:
        cut = np.linspace(0, len(docs), segments + 1).astype(int)
        index = Index.build(docs[: cut[1]], Path(tmp) / "index", show_progress=False)
        for a, b in zip(cut[1:-1], cut[2:]):
            index.add(docs[a:b], merge=False, show_progress=False)
        index.refresh()
        encoded = [index.encode_queries([text]) for text in texts]
        connect(address, cpus=shards if address == "local" else None)
        try:
            with ShardedIndex(index.path, shards=shards, threads=threads) as sharded:
                state, placed = sharded.view._state, sharded.nodes()

                def one_after_another(work, items):
                    return Commit.each(state, work, items)

                def read(results, batched: bool):
                    """The hits' documents, as a caller reads them (``batched`` False: a call per hit, as before)."""
                    if not batched and isinstance(results._index, HitDocuments):
                        results._index = results._index.state
                    for hit in results[0]:
                        hit.text  # noqa: B018 (read, as a caller reads it)
                    return results

                modes = (
                    (f"local, {threads} thread{'s' * (threads > 1)}", index, threads, None),
                    (f"local, {shards * threads} threads", index, shards * threads, None),
                    ("sharded, shards one after another", sharded, threads, one_after_another),
                    ("sharded, shards at once", sharded, threads, sharded.each),
                )
                texts_modes = (modes[0], modes[3], ("sharded, shards at once, a call per hit's document", sharded, threads, sharded.each))
                for stage, label, chosen in ((None, None, modes), ("exhaustive", None, modes), (None, "with the hits' documents read", texts_modes)):
                    options = {"first_stage": stage} if stage else {}
                    runs = {}
                    for how, searcher, cores, each in chosen:
                        if each is not None:
                            state.each = each

                        def one(q, searcher=searcher, cores=cores, how=how):
                            found = searcher.search_encoded(encoded[q], 10, texts=[texts[q]], threads=cores, **options)
                            return read(found, "per hit" not in how) if label else found

                        one(0)  # compiled kernels, warm actors
                        runs[how] = _measure(one, len(texts), repeat)
                    state.each = sharded.each
                    reference = next(iter(runs.values()))[1]
                    for how, (spent, found) in runs.items():
                        rows.append({"search": (stage or index.default_stage) + (f", {label}" if label else ""), "how": how,
                                     "search_ms_p50": round(float(np.percentile(spent, 50)), 2), "search_ms_p95": round(float(np.percentile(spent, 95)), 2),
                                     "same_results_as_local": all(np.array_equal(a.indices, b.indices) and np.array_equal(a.scores, b.scores)
                                                                  and (not label or [h.text for h in a[0]] == [h.text for h in b[0]]) for a, b in zip(reference, found))})
        finally:
            ray.shutdown()  # before the cluster goes
    for row in rows:
        base = next((r for r in rows if r["search"] == row["search"] and r["how"] == "sharded, shards one after another"), None)
        if base is not None:
            row["speedup_vs_one_after_another"] = round(base["search_ms_p50"] / row["search_ms_p50"], 2)
    return {"dataset": dataset.name, "documents": len(docs), "segments": segments, "shards": shards, "threads_per_shard": threads,
            "ray": f"a cluster of {shards} nodes on this machine" if nodes else "a local instance", "nodes_holding_shards": len(set(placed)),
            "queries": len(texts), "repeat": repeat, "rows": rows}


def main(argv=None) -> int:
    from .beir import publish_report

    p = argparse.ArgumentParser(prog="python -m mvr.eval.sharded", description=__doc__.split("\n\n")[0])
    p.add_argument("dataset", type=Path, help="BEIR-layout folder")
    p.add_argument("--documents", type=int, default=2000)
    p.add_argument("--segments", type=int, default=2)
    p.add_argument("--shards", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="CPU threads of each shard")
    p.add_argument("--queries", type=int, default=100, help="the first N test queries")
    p.add_argument("--repeat", type=int, default=3, help="each query searched this many times, the fastest kept")
    p.add_argument("--nodes", action="store_true", help="the shards on a Ray cluster of --shards nodes started on this machine, a shard on each")
    p.add_argument("--output", type=Path, default=None)
    args = p.parse_args(argv)
    report = run(args.dataset, args.documents, args.segments, args.shards, args.threads, args.queries, args.repeat, args.nodes)
    publish_report(report, "mvr.eval.sharded", argv, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
