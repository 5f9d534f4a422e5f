"""Indexing throughput (issue 15, points 4 and 5): documents/s of a whole default build (encode,
first stages, files) of the first N documents of a BEIR corpus, locally at each thread count, in
W local worker processes of one thread each (``mvr index --workers W``), on a local Ray instance
with W encoder workers of one thread each, and on a Ray cluster of W nodes of one CPU each started
on this machine (``--ray-nodes``: a head and W - 1 more raylets, each with its own object store,
joined by address as ``mvr index --ray ADDRESS`` joins a cluster of machines), one after the other
in this command, each build timed from the first document read to the index opened. ``--doc-runtimes``: the local
builds with each of these document runtimes (default: the default one); workers and Ray use the last.

    python -m mvr.eval.index_speed ../shared/datasets/scifact --documents 2000 --threads 1 2 --doc-runtimes onnx-int8 onnx-int8-fused --workers 2 --ray-workers 2 --ray-nodes 2 --output docs/results/index-speed-scifact.json

The model is loaded (and its ONNX export made) before the clock starts, by a warm-up build of a
few documents; the worker processes' start and model loading (and Ray's) are inside their
figures, as a user would pay them.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path


def _first(dataset: Path, n: int) -> list:
    from mvr.corpus import read_corpus

    docs = []
    for doc in read_corpus(dataset / "corpus.jsonl"):
        docs.append(doc)
        if len(docs) == n:
            break
    return docs


@contextlib.contextmanager
def nodes_cluster(nodes: int, cpus: int = 1):
    """A Ray cluster of ``nodes`` nodes of ``cpus`` CPUs each on this machine (a head and more
    raylets, each with its own object store; ``ray.cluster_utils``), for as long as the block
    runs; yields its address, which a process joins as it joins a cluster of machines."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": cpus, "include_dashboard": False})
    try:
        for _ in range(nodes - 1):
            cluster.add_node(num_cpus=cpus)
        cluster.wait_for_nodes()
        yield cluster.address
    finally:
        cluster.shutdown()


def _row(how: str, started: float, documents: int, **what) -> dict:
    """One build's row: ``how`` it ran, ``what`` it ran with, its seconds since ``started`` and documents/s."""
    seconds = time.perf_counter() - started
    return {"how": how, **what, "seconds": round(seconds, 1), "docs_per_s": round(documents / seconds, 1)}


def _ray_build(docs: list, folder: Path, workers: int, runtime: str, address: str) -> list[str]:
    """Builds ``docs`` with ``workers`` Ray encoder workers on the cluster at ``address``; the
    nodes the workers ran on."""
    import ray

    from mvr import Index
    from mvr.distributed import RayEncoder, connect

    connect(address, cpus=workers if address == "local" else None)
    try:
        encoder = RayEncoder(None, workers=workers, doc_runtime=runtime)
        try:
            nodes = encoder.nodes()
            Index.build(docs, folder, encoder=encoder, show_progress=False)
        finally:
            encoder.close()
    finally:
        ray.shutdown()
    return nodes


def run(dataset: Path, documents: int, threads: list[int], workers: list[int], processes: list[int] = (), runtimes: list[str] | None = None,
        nodes: list[int] = ()) -> dict:
    from mvr import Encoder, Index
    from mvr.config import DEFAULT_DOC_RUNTIME, IndexConfig

    docs = _first(dataset, documents)
    runtimes = list(runtimes or [DEFAULT_DOC_RUNTIME])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for runtime in runtimes:  # export, load, kernels
            Index.build(docs[:8], Path(tmp) / f"warm-{runtime}", config=IndexConfig(doc_runtime=runtime), show_progress=False)
        for runtime in runtimes:
            for n in threads:
                config = IndexConfig(threads=n, doc_runtime=runtime)
                started = time.perf_counter()
                Index.build(docs, Path(tmp) / f"local-{runtime}-{n}", config=config, encoder=Encoder(threads=n, doc_runtime=runtime), show_progress=False)
                rows.append(_row(f"local, {runtime}, {n} thread{'s' if n > 1 else ''}", started, len(docs), doc_runtime=runtime, threads=n))
        for w in processes:
            from mvr.encode.pool import ProcessEncoder

            started = time.perf_counter()
            with ProcessEncoder(None, workers=w, doc_runtime=runtimes[-1]) as pool:
                Index.build(docs, Path(tmp) / f"workers-{w}", encoder=pool, show_progress=False)
            rows.append(_row(f"local, {w} worker processes of 1 thread", started, len(docs), doc_runtime=runtimes[-1], processes=w))
        for w in workers:
            started = time.perf_counter()
            _ray_build(docs, Path(tmp) / f"ray-{w}", w, runtimes[-1], "local")
            rows.append(_row(f"Ray, {w} workers of 1 thread", started, len(docs), doc_runtime=runtimes[-1], workers=w))
        for n in nodes:
            with nodes_cluster(n) as address:
                started = time.perf_counter()  # the cluster is up, as a user's would be
                used = _ray_build(docs, Path(tmp) / f"ray-nodes-{n}", n, runtimes[-1], address)
                rows.append(_row(f"Ray cluster of {n} nodes of 1 CPU, a worker on each", started, len(docs), doc_runtime=runtimes[-1], nodes=n, nodes_used=len(set(used))))
    base = rows[0]["docs_per_s"]
    for row in rows:
        row["ratio_to_first"] = round(row["docs_per_s"] / base, 2)
    return {"dataset": dataset.name, "documents": len(docs), "runs": rows}


def main(argv=None) -> int:
    from mvr.config import RUNTIMES

    from .beir import publish_report

    p = argparse.ArgumentParser(prog="python -m mvr.eval.index_speed", description=__doc__.split("\n\n")[0])
    p.add_argument("dataset", type=Path)
    p.add_argument("--documents", type=int, default=2000)
    p.add_argument("--threads", type=int, nargs="*", default=[1, 2])
    p.add_argument("--workers", type=int, nargs="*", default=[], help="also build with this many local worker processes of one thread each (mvr index --workers)")
    p.add_argument("--ray-workers", type=int, nargs="*", default=[], help="also build on a local Ray instance with this many workers (extra mvr[ray])")
    p.add_argument("--ray-nodes", type=int, nargs="*", default=[], help="also build on a Ray cluster of this many one-CPU nodes started on this machine, a worker on each")
    p.add_argument("--doc-runtimes", nargs="*", default=None, choices=RUNTIMES, help="local builds with each of these document runtimes (default: the default one)")
    p.add_argument("--output", type=Path, default=None)
    args = p.parse_args(argv)
    report = run(args.dataset, args.documents, args.threads, args.ray_workers, args.workers, args.doc_runtimes, args.ray_nodes)
    publish_report(report, "mvr.eval.index_speed", argv, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
