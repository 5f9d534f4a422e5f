"""A living index measured: adds, deletes and segments against an index built in one go, on one
BEIR corpus, with the default model and the default IndexConfig (the encoder loaded once).

    python -m mvr.eval.living ../shared/datasets/scifact --output docs/results/living-scifact.json --markdown docs/living.md
    (--work DIR keeps the indexes there instead of a temporary folder; --limit N: the first N
    documents only, and the queries with a relevant one among them, for a quick check)

1. Equivalence: the whole corpus built at once (A) against its first half built, then the second
   half added (B): nDCG@10 with the default first stage and exhaustively, and the share of A's
   top-10 that B returns.
2. Deletes: a seeded 10% of B deleted in one call, then 1,000 more ids in one call (both timed);
   no deleted document may come back in any query's top-100; nDCG@10 with the qrels of the
   documents left, default first stage beside exhaustive MaxSim.
3. Throughput: the add's encoding docs/s against A's build (both encoding only, as the
   manifests record them; also end to end, first stages and commit included).
4. Segments: an index built from the first 2% of the corpus, the rest added in 49 pieces without
   merging (50 segments), then merged in groups of 5 (10 segments, mvr.writer.merge), then
   optimized (one segment). Search latency of each, one query at a time on one thread with the
   default first stage (queries encoded beforehand), p50 and mean, and nDCG@10 of that same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .beir import save_report

SEED = 0
DELETE_SHARE = 0.10
BULK_DELETE = 1000
FIRST_SHARE = 0.02  # of the corpus in the first segment of the segmented index
SEGMENTS, MERGED_TO = 50, 10
DEPTH = 100  # retrieved per query: the deletion check reads the top-100, nDCG@10 the top-10
REPEATS = 2  # latency passes; each query's fastest counts (the machine is shared)


def _ndcg(run, qrels) -> float:
    from .beir import evaluate_run

    return round(evaluate_run(run, qrels, ("nDCG@10",))["nDCG@10"], 4)


def _restricted(qrels, keep) -> dict:
    """The qrels of the documents ``keep(doc_id)`` accepts, without queries left with none."""
    return {q: rels for q, rels in ((q, {d: r for d, r in rels.items() if keep(d)}) for q, rels in qrels.items()) if rels}


def _search(index, queries, first_stage=None):
    """Every query at once, ``DEPTH`` deep: (run without identical ids, ranked doc ids per query)."""
    from .beir import drop_identical_ids

    ids, texts, encoded = queries
    results = index.search_encoded(encoded, DEPTH, texts=texts, first_stage=first_stage)
    return drop_identical_ids(results.to_run(ids)), results.doc_ids


def _overlap(a: list[list[str]], b: list[list[str]]) -> float:
    """Mean |top-10 of a ∩ top-10 of b| / 10 over queries."""
    return round(float(np.mean([len(set(x[:10]) & set(y[:10])) / 10 for x, y in zip(a, b)])), 4)


def _returned(index, queries, gone: set[str]) -> dict[str, int]:
    """How many deleted ids come back in the top-100 of any query, per first stage."""
    return {stage or "default": sum(d in gone for row in _search(index, queries, stage)[1] for d in row) for stage in (None, "exhaustive")}


def _latency(index, queries, qrels, label: str) -> dict:
    """One query at a time on one thread, default first stage: search ms (encoding excluded; each
    query's fastest of ``REPEATS`` passes) and nDCG@10 of the run."""
    from ..encode import TokenVectors
    from .beir import drop_identical_ids

    ids, texts, encoded = queries
    alone = [TokenVectors(encoded[i], np.array([0, len(encoded[i])], dtype=np.int64)) for i in range(len(ids))]
    index.search_encoded(alone[0], DEPTH, texts=[texts[0]], threads=1)  # warm-up: JIT, page cache
    run, ms = {}, np.full(len(ids), np.inf)
    for _ in range(REPEATS):
        for i, qid in enumerate(ids):
            started = time.perf_counter()
            results = index.search_encoded(alone[i], DEPTH, texts=[texts[i]], threads=1)
            ms[i] = min(ms[i], (time.perf_counter() - started) * 1e3)
            run.update(results.to_run([qid]))
    row = {"index": label, "segments": len(index.segments), "documents": index.n_docs, "first_stage": index.default_stage,
           "search_ms_p50": round(float(np.median(ms)), 3), "search_ms_mean": round(float(np.mean(ms)), 3), "nDCG@10": _ndcg(drop_identical_ids(run), qrels),
           "load_average": round(os.getloadavg()[0], 2)}
    print(json.dumps(row), flush=True)
    return row


def measure(dataset: Path, work: Path, limit: int | None = None, command: str | None = None) -> dict:
    from ..config import IndexConfig
    from ..corpus import read_corpus
    from ..encode import Encoder
    from ..index import Index
    from ..writer import Writer, merge
    from .beir import load_beir

    begun = time.perf_counter()
    config = IndexConfig()
    documents = list(read_corpus(dataset / "corpus.jsonl"))[:limit]
    queries, qrels = load_beir(dataset, "test")
    if limit:
        qrels = _restricted(qrels, {d.id for d in documents}.__contains__)
        queries = {q: queries[q] for q in qrels}
    encoder = Encoder(config.model, query_maxlen=config.query_maxlen, doc_maxlen=config.doc_maxlen, batch_size=config.batch_size,
                      threads=config.threads, doc_runtime=config.doc_runtime)

    def build(docs, name):
        return Index.build(docs, work / name, config=config, encoder=encoder, overwrite=True, show_progress=False, command=command)

    # 1. equivalence: A built at once, B built from the first half and then added to
    encoder.encode_documents([documents[0].full_text])  # the runtime's session is made here, not inside A's build
    whole = build(documents, "whole")
    half = len(documents) // 2
    grown = build(documents[:half], "grown")
    half_docs_per_second = grown.manifest["build"]["docs_per_second"]
    added = grown.add(documents[half:], show_progress=False, command=command)
    ids = list(queries)
    texts = [queries[q] for q in ids]
    batch = (ids, texts, whole.encode_queries(texts))
    equivalence = {"first_stage": whole.default_stage, "half": half, "segments": {"A": len(whole.segments), "B": len(grown.segments)}}
    for stage in (None, "exhaustive"):
        (run_a, top_a), (run_b, top_b) = _search(whole, batch, stage), _search(grown, batch, stage)
        row = {"A_nDCG@10": _ndcg(run_a, qrels), "B_nDCG@10": _ndcg(run_b, qrels), "top10_overlap": _overlap(top_a, top_b)}
        equivalence[stage or "default"] = {**row, "equal": row["A_nDCG@10"] == row["B_nDCG@10"] and row["top10_overlap"] >= 0.99}
    print(json.dumps(equivalence), flush=True)

    # 2. deletes on B
    rng = np.random.default_rng(SEED)
    every = [d.id for d in documents]
    gone = [str(d) for d in rng.choice(every, size=round(DELETE_SHARE * len(every)), replace=False)]
    started = time.perf_counter()
    done = grown.delete(gone, command=command)
    delete_seconds = time.perf_counter() - started
    gone_set = set(gone)
    left = _restricted(qrels, lambda d: d not in gone_set)
    left_batch = (list(left), [queries[q] for q in left], whole.encode_queries([queries[q] for q in left]))
    deletes = {
        "deleted": done["deleted"], "delete_seconds": round(delete_seconds, 4), "documents_left": grown.n_docs, "segments": len(grown.segments),
        "returned_after_delete": _returned(grown, batch, gone_set), "queries_left": len(left),
        "nDCG@10": _ndcg(_search(grown, left_batch)[0], left), "exhaustive_nDCG@10": _ndcg(_search(grown, left_batch, "exhaustive")[0], left),
    }
    live = [d for d in every if d not in gone_set]
    bulk = [str(d) for d in rng.choice(live, size=min(BULK_DELETE, len(live) // 2), replace=False)]
    generation = grown.generation
    started = time.perf_counter()
    done = grown.delete(bulk, command=command)
    deletes.update({
        "bulk_ids": len(bulk), "bulk_deleted": done["deleted"], "bulk_delete_seconds": round(time.perf_counter() - started, 4),
        "bulk_commits": grown.generation - generation, "returned_after_bulk": _returned(grown, batch, gone_set | set(bulk)),
    })
    print(json.dumps(deletes), flush=True)

    # 3. throughput: the add's encoding against the build's
    build_info = whole.manifest["build"]
    throughput = {
        "build_docs_per_second": build_info["docs_per_second"], "add_docs_per_second": added["docs_per_second"],
        "add_vs_build": round(added["docs_per_second"] / build_info["docs_per_second"], 3),
        "build_end_to_end_docs_per_second": round(len(documents) / build_info["seconds"], 2),
        "add_end_to_end_docs_per_second": round(added["added"] / added["seconds"], 2), "added": added["added"],
        "B_first_half_build_docs_per_second": half_docs_per_second, "load_average": round(os.getloadavg()[0], 2),
    }
    throughput["add_vs_build_end_to_end"] = round(throughput["add_end_to_end_docs_per_second"] / throughput["build_end_to_end_docs_per_second"], 3)
    print(json.dumps(throughput), flush=True)

    # 4. latency by segment count
    first = max(1, round(FIRST_SHARE * len(documents)))
    segmented = build(documents[:first], "segmented")
    small = []
    for piece in np.array_split(np.arange(first, len(documents)), SEGMENTS - 1):
        small.append(segmented.add([documents[i] for i in piece], merge=False, show_progress=False, command=command)["docs_per_second"])
    rows = [_latency(whole, batch, qrels, "A, built at once"), _latency(segmented, batch, qrels, f"{SEGMENTS} segments (build + {SEGMENTS - 1} adds)")]
    started = time.perf_counter()
    group = SEGMENTS // MERGED_TO
    with Writer(segmented) as writer:
        for g in range(MERGED_TO):
            merge(writer, list(range(g, g + group)), command=command)
    merge_seconds = time.perf_counter() - started
    rows.append(_latency(segmented, batch, qrels, f"{MERGED_TO} segments (groups of {group} merged)"))
    started = time.perf_counter()
    segmented.optimize(command=command)
    optimize_seconds = time.perf_counter() - started
    rows.append(_latency(segmented, batch, qrels, "optimized: one merged segment"))
    merged = rows[-1]
    for row in rows:
        row["p50_vs_merged"] = round(row["search_ms_p50"] / merged["search_ms_p50"], 2)
        row["mean_vs_merged"] = round(row["search_ms_mean"] / merged["search_ms_mean"], 2)
    segments = {"first_segment_documents": first, "small_add_docs_per_second_mean": round(float(np.mean(small)), 2),
                "merge_seconds": round(merge_seconds, 2), "optimize_seconds": round(optimize_seconds, 2), "rows": rows}
    return {
        "study": "living", "dataset": dataset.resolve().name, "documents": len(documents), "queries": len(ids), "limit": limit,
        "equivalence": equivalence, "deletes": deletes, "throughput": throughput, "segments": segments, **_environment(whole, encoder, config),
        "seconds": round(time.perf_counter() - begun, 1), "command": command, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _environment(index, encoder, config) -> dict:
    from .beir import package_versions

    identity = encoder.identity
    return {
        "settings": {
            "encoder": {k: identity.get(k) for k in ("name", "kind", "dim", "query_maxlen", "doc_maxlen", "weights_sha256")},
            "doc_runtime": encoder.doc_runtime, "config": index.manifest["config"], "search_threads": 1, "packages": package_versions(),
        },
        "machine": {"processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version()},
    }


def render(report: dict) -> str:
    """docs/living.md: what was measured and how, with every figure of ``report``."""
    eq, de, th, sg = report["equivalence"], report["deletes"], report["throughput"], report["segments"]
    scope = f"{report['documents']} documents, {report['queries']} test queries" + (f"; the first {report['limit']} documents only" if report["limit"] else "")
    lines = [
        "# A living index: adds, deletes and segments",
        "",
        "An index changes by commits of immutable segments (`Index.add`, `upsert`, `delete`, `optimize`;",
        "mvr/writer.py): an add encodes the new documents into a new segment, a delete writes a deletion",
        "bitmap, and search takes the best first-stage candidates over every segment and reranks them together.",
        f"This page measures what that costs and changes on {report['dataset']} ({scope}), with the default",
        f"model and IndexConfig, on a {report['machine']['cpus']}-CPU machine shared with other work (the latency ratios matter, not",
        "the absolute milliseconds).",
        "",
        f"Every figure below comes from one run of `{report['command']}`",
        f"({report['date'][:10]}, {report['seconds'] / 60:.0f} minutes); the JSON beside it holds them all with the package versions.",
        "",
        "## Adding is equivalent to building",
        "",
        f"A: the whole corpus built at once ({eq['segments']['A']} segment). B: the first {eq['half']} documents built, the rest added",
        f"with one `add` ({eq['segments']['B']} segments). Top-10 overlap: mean |top-10 of A ∩ top-10 of B| / 10 over the queries.",
        "",
        "| first stage | nDCG@10 A | nDCG@10 B | top-10 overlap |",
        "|---|---|---|---|",
    ]
    for stage in ("default", "exhaustive"):
        row = eq[stage]
        name = f"default (`{eq['first_stage']}`, 100 candidates)" if stage == "default" else "exhaustive"
        lines.append(f"| {name} | {row['A_nDCG@10']:.4f} | {row['B_nDCG@10']:.4f} | {row['top10_overlap']:.4f} |")
    ret, bulk_ret = de["returned_after_delete"], de["returned_after_bulk"]
    lines += [
        "",
        "## Deletes",
        "",
        f"A seeded random {DELETE_SHARE:.0%} of B ({de['deleted']} documents) deleted in one call took {de['delete_seconds'] * 1e3:.1f} ms;",
        f"{de['bulk_ids']} more ids in one call took {de['bulk_delete_seconds'] * 1e3:.1f} ms ({de['bulk_commits']} commit(s)).",
        f"Deleted documents returned in any query's top-100 afterwards: {ret['default']} (default first stage), {ret['exhaustive']} (exhaustive);",
        f"after the second delete: {bulk_ret['default']} and {bulk_ret['exhaustive']}.",
        "",
        f"After the first delete ({de['documents_left']} documents left, {de['queries_left']} queries with a relevant document left, qrels",
        f"restricted to the documents left): nDCG@10 {de['nDCG@10']:.4f} with the default first stage, {de['exhaustive_nDCG@10']:.4f} exhaustive.",
        "",
        "## Add throughput against build throughput",
        "",
        "| | build of A | add to B | add / build |",
        "|---|---|---|---|",
        f"| encoding docs/s (manifest `docs_per_second`) | {th['build_docs_per_second']:.1f} | {th['add_docs_per_second']:.1f} "
        f"| {th['add_vs_build']:.2f} |",
        f"| end to end docs/s (first stages, commit) | {th['build_end_to_end_docs_per_second']:.1f} | {th['add_end_to_end_docs_per_second']:.1f} "
        f"| {th['add_vs_build_end_to_end']:.2f} |",
        "",
        "Both encode with the same encoder object, its ONNX Runtime session made beforehand (one document encoded), so",
        f"neither pays it; B's first half was built at {th['B_first_half_build_docs_per_second']:.1f} docs/s in between. The machine's",
        f"1-minute load average was {th['load_average']} after the add: on a shared {report['machine']['cpus']}-CPU machine these rates move with the load.",
        f"The {SEGMENTS - 1} small adds of the segment study (about {round((report['documents'] - sg['first_segment_documents']) / (SEGMENTS - 1))} "
        f"documents each) encoded {sg['small_add_docs_per_second_mean']:.1f} docs/s on average.",
        "",
        "## Search latency against the number of segments",
        "",
        f"An index built from the first {sg['first_segment_documents']} documents ({FIRST_SHARE:.0%}), the rest added in {SEGMENTS - 1} pieces with",
        f"`merge=False` ({SEGMENTS} segments); the same merged in groups of {SEGMENTS // MERGED_TO} with `mvr.writer.merge` ({MERGED_TO} segments,",
        f"{sg['merge_seconds']:.1f} s); then `optimize()` ({sg['optimize_seconds']:.1f} s) into one. Each query searched alone on one thread",
        f"with the default first stage, 100 deep, queries encoded beforehand; each query's fastest of {REPEATS} passes; nDCG@10 from that run.",
        "",
        "| index | segments | search ms p50 | search ms mean | p50 / merged | mean / merged | nDCG@10 | load average after |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in sg["rows"]:
        lines.append(
            f"| {row['index']} | {row['segments']} | {row['search_ms_p50']:.2f} | {row['search_ms_mean']:.2f} | {row['p50_vs_merged']:.2f}x "
            f"| {row['mean_vs_merged']:.2f}x | {row['nDCG@10']:.4f} | {row['load_average']} |"
        )
    lines += [
        "",
        "Every segment adds its own first-stage lookups (its FDE and its bm25s); the rerank sees the best",
        "candidates over all segments, as many as one segment gives. The tiered merge policy of `add`",
        "(mvr/writer.py) keeps the count near 9 per size tier, and `optimize()` / `mvr optimize` brings an",
        "index back to one segment.",
        "",
        "## Crash safety and concurrency (in the test suite, not timed here)",
        "",
        "`tests/test_kill.py` SIGKILLs a real writer process 50 times at random points of adds, upserts,",
        "deletes and merges (adds merge every third segment there); after each kill the index opens at its",
        "last commit, its files verify, its vectors scan clean, it holds every committed document with its",
        "committed text and no uncommitted one, and the next writer carries on. `tests/test_concurrency.py`",
        "runs 8 reader threads searching (and refreshing) for a minute while a writer adds and deletes: no",
        "error, and every result list holds only documents live in the commit it was read from.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mvr.eval.living", description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path, help="a BEIR folder (corpus.jsonl, queries.jsonl, qrels/test.tsv)")
    parser.add_argument("--output", type=Path, required=True, help="JSON report")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the report here (docs/living.md)")
    parser.add_argument("--work", type=Path, default=None, help="where the indexes are built (default: a temporary folder, removed)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N documents of the corpus (a quick check)")
    args = parser.parse_args(argv)
    command = "python -m mvr.eval.living " + shlex.join(sys.argv[1:] if argv is None else argv)
    with tempfile.TemporaryDirectory(prefix="mvr-living-") as scratch:
        work = args.work or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        report = measure(args.dataset, work, args.limit, command)
    save_report(report, args.output, args.markdown, render)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
