"""BEIR evaluation: run a dataset's queries through an index and score the run with ir-measures.

    mvr eval ../shared/datasets/scifact --index scifact --output docs/results/scifact.json

Quality: nDCG@10, R@100 and RR@10 (ir-measures' names). Cost, per query and measured one query
at a time as a caller would see it: query encoding and search separately (p50 / p95 in ms), plus
the index's build time, docs/s and bytes per token from its manifest. The JSON it writes keeps
the command line that produced it, so every table row can be rerun.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..errors import DatasetError, IndexNotFoundError

MEASURES = ("nDCG@10", "R@100", "RR@10")


def load_beir(folder: str | os.PathLike, split: str = "test") -> tuple[dict[str, str], dict[str, dict[str, int]]]:
    """Queries (id -> text, only those judged in ``split``) and qrels (qid -> doc id -> relevance)."""
    from ..corpus import read_jsonl_objects

    folder = Path(folder)
    queries_file, qrels_file = folder / "queries.jsonl", folder / "qrels" / f"{split}.tsv"
    if not queries_file.is_file():
        raise DatasetError(f"{folder} has no queries.jsonl: expected a BEIR folder (corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv).")
    if not qrels_file.is_file():
        splits = sorted(p.stem for p in (folder / "qrels").glob("*.tsv")) if (folder / "qrels").is_dir() else []
        raise DatasetError(f"{folder} has no qrels for split {split!r}; available splits: {', '.join(splits) or 'none'}.")
    qrels: dict[str, dict[str, int]] = {}
    with open(qrels_file, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            parts = line.rstrip("\n").split("\t")
            if line_number == 1 and parts[0] == "query-id":
                continue
            if len(parts) != 3:
                raise DatasetError(f"{qrels_file}:{line_number}: expected query-id<TAB>corpus-id<TAB>score.")
            qrels.setdefault(parts[0], {})[parts[1]] = int(parts[2])
    queries = {}
    for _, obj in read_jsonl_objects(queries_file):
        qid = str(obj.get("_id", obj.get("id")))
        if qid in qrels:
            queries[qid] = obj["text"]
    missing = sorted(set(qrels) - set(queries))
    if missing:
        raise DatasetError(f"{queries_file} lacks {len(missing)} judged queries of split {split!r} (e.g. {missing[0]!r}).")
    return queries, qrels


def evaluate_run(run: dict[str, dict[str, float]], qrels: dict[str, dict[str, int]], measures=MEASURES) -> dict[str, float]:
    """Aggregate ir-measures scores of a run; queries absent from the run count as zero."""
    import ir_measures

    parsed = [ir_measures.parse_measure(m) for m in measures]
    qrel_rows = [ir_measures.Qrel(q, d, rel) for q, docs in qrels.items() for d, rel in docs.items()]
    run_rows = [ir_measures.ScoredDoc(q, d, float(s)) for q, docs in run.items() for d, s in docs.items()]
    totals = {m: 0.0 for m in parsed}
    for metric in ir_measures.iter_calc(parsed, qrel_rows, run_rows):
        totals[metric.measure] += metric.value
    return {str(m): totals[m] / len(qrels) for m in parsed}


def _percentiles(values_ms: list[float]) -> dict[str, float]:
    values = np.asarray(values_ms, dtype=np.float64)
    return {"p50": round(float(np.percentile(values, 50)), 3), "p95": round(float(np.percentile(values, 95)), 3), "mean": round(float(values.mean()), 3)}


def evaluate(
    dataset: str | os.PathLike,
    index,
    *,
    split: str = "test",
    first_stage: str = "exhaustive",
    depth: int = 100,
    threads: int | None = None,
    max_queries: int | None = None,
    show_progress=None,
) -> tuple[dict, dict[str, dict[str, float]]]:
    """Evaluate an open :class:`mvr.Index` on a BEIR folder; returns (report, run)."""
    from ..index import numba_threads
    from ..progress import progress

    queries, qrels = load_beir(dataset, split)
    if max_queries:
        keep = list(queries)[:max_queries]
        queries = {q: queries[q] for q in keep}
        qrels = {q: qrels[q] for q in keep}
    # Warm-up: model load and JIT compilation are one-off costs, not per-query latency.
    first = next(iter(queries.values()))
    index.search_encoded(index.encode_queries(first), depth, first_stage=first_stage, threads=threads)

    encode_ms, search_ms, run = [], [], {}
    bar = progress(total=len(queries), desc=f"queries ({first_stage})", unit="q", show=show_progress)
    with numba_threads(threads):
        for qid, text in queries.items():
            t0 = time.perf_counter()
            encoded = index.encode_queries(text)
            t1 = time.perf_counter()
            results = index.search_encoded(encoded, depth, first_stage=first_stage)
            t2 = time.perf_counter()
            encode_ms.append((t1 - t0) * 1e3)
            search_ms.append((t2 - t1) * 1e3)
            run[qid] = {index.doc_ids[p]: float(s) for p, s in zip(results.indices[0], results.scores[0]) if p >= 0}
            bar.update(1)
    bar.close()
    scores = evaluate_run(run, qrels)
    search, encode = _percentiles(search_ms), _percentiles(encode_ms)
    total = [e + s for e, s in zip(encode_ms, search_ms)]
    info = index.info()
    import numba
    import torch

    report = {
        "dataset": Path(dataset).resolve().name,
        "split": split,
        "queries": len(queries),
        "index": index.name,
        "first_stage": first_stage,
        "depth": depth,
        **{m: round(v, 4) for m, v in scores.items()},
        "search_ms_p50": search["p50"],
        "search_ms_p95": search["p95"],
        "encode_ms_p50": encode["p50"],
        "encode_ms_p95": encode["p95"],
        "total_ms_p50": _percentiles(total)["p50"],
        "search_ms_mean": search["mean"],
        "encode_ms_mean": encode["mean"],
        "index_command": info["build"].get("command"),
        "index_build_seconds": info["build"]["seconds"],
        "index_docs_per_second": info["build"]["docs_per_second"],
        "index_bytes_per_token": info["bytes_per_token"],
        "index_documents": info["documents"],
        "index_tokens": info["tokens"],
        "dim": info["dim"],
        "settings": {
            "encoder": {k: info["encoder"][k] for k in ("name", "kind", "dim", "query_maxlen", "doc_maxlen", "weights_sha256")},
            "config": info["config"],
            "numba_threads": numba.get_num_threads(),
            "torch_threads": torch.get_num_threads(),
        },
        "machine": {"processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    return report, run


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..index import FIRST_STAGES

    parser.add_argument("dataset", type=Path, help="BEIR-layout folder: corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv")
    parser.add_argument("--index", required=True, help="index name or path")
    parser.add_argument("--split", default="test")
    parser.add_argument("--first-stage", default="exhaustive", choices=FIRST_STAGES)
    parser.add_argument("--depth", type=int, default=100, help="documents retrieved per query (>= 100 for R@100)")
    parser.add_argument("--max-queries", type=int, default=None, help="evaluate only the first N judged queries (quick checks)")
    parser.add_argument("--output", type=Path, default=None, help="write the report as JSON here")
    parser.add_argument("--run-file", type=Path, default=None, help="write the TREC run here")
    parser.add_argument("--build", action="store_true", help="build the index from the dataset's corpus.jsonl if it does not exist")
    parser.add_argument("--model", default=None, help="with --build: local model folder (default: all-MiniLM-L6-v2)")
    parser.add_argument("--pca-dim", type=int, default=None, help="with --build: reduce token vectors to this many dims")
    parser.add_argument("--doc-maxlen", type=int, default=None, help="with --build: document length in tokens")
    parser.add_argument("--query-maxlen", type=int, default=None, help="with --build: query length in tokens")


def run_from_args(args) -> int:
    from ..config import IndexConfig
    from ..corpus import read_corpus
    from ..index import Index

    show = False if args.quiet else None
    try:
        index = Index.open(args.index, home=args.index_dir)
    except IndexNotFoundError:
        if not args.build:
            raise IndexNotFoundError(
                f"no index {args.index!r}; build it with `mvr index {args.dataset / 'corpus.jsonl'} --name {args.index}` "
                "or add --build to this command."
            ) from None
        config = IndexConfig(pca_dim=args.pca_dim, model=args.model, doc_maxlen=args.doc_maxlen, query_maxlen=args.query_maxlen, threads=args.threads)
        index = Index.build(read_corpus(args.dataset / "corpus.jsonl"), args.index, config=config, home=args.index_dir, show_progress=show)
    if args.depth < 1:
        raise DatasetError(f"--depth must be >= 1, got {args.depth}.")
    report, run = evaluate(
        args.dataset, index, split=args.split, first_stage=args.first_stage, depth=args.depth, threads=args.threads, max_queries=args.max_queries, show_progress=show
    )
    report["command"] = getattr(args, "command_line", None)
    width = max(len(k) for k in (*MEASURES, "search_ms_p50"))
    print(f"{report['dataset']} / {report['split']}: {report['queries']} queries, index {report['index']} ({report['first_stage']})")
    for key in (*MEASURES, "search_ms_p50", "search_ms_p95", "encode_ms_p50", "encode_ms_p95", "index_docs_per_second", "index_bytes_per_token"):
        print(f"  {key:<{width + 8}} {report[key]}")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if args.run_file:
        args.run_file.parent.mkdir(parents=True, exist_ok=True)
        with open(args.run_file, "w", encoding="utf-8") as handle:
            for qid, docs in run.items():
                for rank, (doc, score) in enumerate(sorted(docs.items(), key=lambda x: -x[1]), start=1):
                    handle.write(f"{qid} Q0 {doc} {rank} {score:.6f} mvr\n")
    return 0
