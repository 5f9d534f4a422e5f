"""Two studies of the sparse first stages that `mvr eval` alone cannot make:

* ``compare``: Lucene BM25 (pyserini) against bm25s on the same queries, in one process: overlap
  of their top-10 and top-100 and the latency ratio.
* ``options``: BM25 + MaxSim rerank with and without candidate pruning, early exit and fusion,
  every variant run on each query in turn in one process, so latencies compare as ratios.
* ``impact``: the SPLADE first stage's own inverted index against pyserini's Lucene impact
  search over the same document weights (quantised x100, as Anserini expects), same queries.
* ``tune``: the weight of linear fusion (z(MaxSim) and z(BM25)) chosen on a training split
  (SciFact train, NFCorpus dev), never on the test queries it is reported on.

    python -m mvr.eval.sparse_study compare ../shared/datasets/scifact --index scifact --output docs/results/sparse-compare-scifact.json
    python -m mvr.eval.sparse_study tune ../shared/datasets/scifact --index scifact --split train --output docs/results/fusion-tuning-scifact.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

WEIGHTS = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0)


_STARTUP = """
import sys, time
t0 = time.perf_counter()
import mvr
t1 = time.perf_counter()
index = mvr.open(sys.argv[1])
index.search("warm up the query encoder", k=10, first_stage="fde")
t2 = time.perf_counter()
index.search("a second query", k=10, first_stage="fde")
t3 = time.perf_counter()
dense_jvm = "jnius" in sys.modules or "pyserini" in sys.modules
index.search("a third query", k=10, first_stage="bm25")
t4 = time.perf_counter()
index.search("a fourth query", k=10, first_stage="bm25")
t5 = time.perf_counter()
print(t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, dense_jvm)
"""


def startup(index) -> dict:
    """Seconds, in a fresh process: ``import mvr``; first and second FDE search (model load, JIT);
    first and second BM25 search (pyserini import and JVM start); and whether the FDE searches
    loaded the JVM or pyserini."""
    import subprocess

    out = subprocess.run([sys.executable, "-c", _STARTUP, str(index.path)], capture_output=True, text=True, check=True).stdout.split()
    names = ("import_mvr_s", "first_fde_search_s", "second_fde_search_s", "first_bm25_search_s", "second_bm25_search_s")
    return {**{n: round(float(v), 3) for n, v in zip(names, out)}, "jvm_or_pyserini_loaded_by_fde_search": out[-1] == "True"}


def compare(dataset: Path, index, split: str = "test", depth: int = 100) -> dict:
    from .beir import _percentiles, evaluate_run, load_beir

    queries, qrels = load_beir(dataset, split)
    runs, tops, times = {}, {}, {}
    for stage in ("bm25", "bm25s"):
        index.search(next(iter(queries.values())), k=depth, first_stage=stage, rerank=False)  # warm-up (JVM, caches)
        runs[stage], tops[stage], times[stage] = {}, {}, []
        for qid, text in queries.items():
            t0 = time.perf_counter()
            results = index.search(text, k=depth, first_stage=stage, rerank=False)
            times[stage].append((time.perf_counter() - t0) * 1e3)
            tops[stage][qid] = results.indices[0][results.indices[0] >= 0].tolist()
            runs[stage].update(results.to_run([qid]))
    overlap = {
        f"overlap@{n}": round(float(np.mean([len(set(tops["bm25"][q][:n]) & set(tops["bm25s"][q][:n])) / max(min(n, len(tops["bm25"][q])), 1) for q in queries])), 4)
        for n in (10, 100)
    }
    stages = {}
    for stage in ("bm25", "bm25s"):
        latency = _percentiles(times[stage])
        stages[stage] = {**{m: round(v, 4) for m, v in evaluate_run(runs[stage], qrels).items()}, "ms_p50": latency["p50"], "ms_p95": latency["p95"]}
    return {
        "dataset": dataset.resolve().name,
        "split": split,
        "queries": len(queries),
        "stages": stages,
        **overlap,
        "bm25s_speedup_p50": round(stages["bm25"]["ms_p50"] / max(stages["bm25s"]["ms_p50"], 1e-9), 2),
        "startup": startup(index),
    }


def options(dataset: Path, index, weight: float, counts=(100, 1000), first_stage: str = "bm25", split: str = "test") -> dict:
    from .beir import _percentiles, evaluate_run, load_beir

    variants = {
        "rerank": {},
        "prune alpha 0.5": {"prune_alpha": 0.5},
        "early exit beta 20": {"early_exit": 20},
        "prune + early exit": {"prune_alpha": 0.5, "early_exit": 20},
        "rrf": {"fusion": "rrf"},
        f"linear w={weight}": {"fusion": "linear", "fusion_weight": weight},
    }
    queries, qrels = load_beir(dataset, split)
    encoded = {qid: index.encode_queries(text) for qid, text in queries.items()}
    first = next(iter(queries))
    rows = []
    for count in counts:
        for opts in variants.values():  # warm-up: JIT and JVM
            index.search_encoded(encoded[first], 100, texts=[queries[first]], first_stage=first_stage, candidates=count, **opts)
        runs = {name: {} for name in variants}
        times = {name: {"search": [], "first_stage": [], "rerank": []} for name in variants}
        for qid, text in queries.items():
            for name, opts in variants.items():  # interleaved: every variant meets the same machine state
                t0 = time.perf_counter()
                results = index.search_encoded(encoded[qid], 100, texts=[text], first_stage=first_stage, candidates=count, **opts)
                times[name]["search"].append((time.perf_counter() - t0) * 1e3)
                times[name]["first_stage"].append(results.timings["first_stage"])
                times[name]["rerank"].append(results.timings["rerank"])
                runs[name].update(results.to_run([qid]))
        base = _percentiles(times["rerank"]["search"])["p50"]
        for name in variants:
            search = _percentiles(times[name]["search"])
            rows.append(
                {
                    "candidates": count,
                    "variant": name,
                    **{m: round(v, 4) for m, v in evaluate_run(runs[name], qrels).items()},
                    "search_ms_p50": search["p50"],
                    "search_ms_p95": search["p95"],
                    "first_stage_ms_p50": _percentiles(times[name]["first_stage"])["p50"],
                    "rerank_ms_p50": _percentiles(times[name]["rerank"])["p50"],
                    "speed_vs_plain_rerank": round(base / max(search["p50"], 1e-9), 2),
                }
            )
    return {"dataset": dataset.resolve().name, "split": split, "queries": len(queries), "first_stage": first_stage, "rows": rows}


def impact(dataset: Path, index, split: str = "test", depth: int = 100, scale: float = 100.0) -> dict:
    import tempfile

    from ..stages.bm25 import start_jvm
    from .beir import _percentiles, evaluate_run, load_beir

    splade = index.stage("splade")
    encoder, matrix = splade.encoder, splade.matrix.tocsr()
    vocab = encoder.tokenizer.convert_ids_to_tokens(list(range(encoder.vocab_size)))
    queries, qrels = load_beir(dataset, split)
    qids = list(queries)
    encoded = encoder.encode([queries[q] for q in qids], encoder.query_maxlen, show_progress=False)
    start_jvm()
    from jnius import autoclass

    with tempfile.TemporaryDirectory() as scratch:
        collection, lucene_dir = Path(scratch) / "collection", Path(scratch) / "index"
        collection.mkdir()
        started = time.perf_counter()
        with open(collection / "docs.jsonl", "w", encoding="utf-8") as handle:
            for row in range(matrix.shape[0]):
                lo, hi = matrix.indptr[row], matrix.indptr[row + 1]
                vector = {vocab[t]: int(round(w * scale)) for t, w in zip(matrix.indices[lo:hi], matrix.data[lo:hi]) if round(w * scale) > 0}
                handle.write(json.dumps({"id": str(index.doc_ids[row]), "contents": "", "vector": vector}) + "\n")
        args = ["-collection", "JsonVectorCollection", "-input", str(collection), "-index", str(lucene_dir), "-impact", "-pretokenized", "-threads", "1"]
        autoclass("io.anserini.index.IndexCollection").main(args)
        lucene_build = time.perf_counter() - started
        searcher = autoclass("io.anserini.search.SimpleImpactSearcher")(str(lucene_dir))
        JHashMap, JInt = autoclass("java.util.HashMap"), autoclass("java.lang.Integer")
        runs = {"own": {}, "lucene": {}}
        times = {"own": [], "lucene": []}
        for qid, (terms, weights) in zip(qids, encoded):
            # Lucene refuses queries of more than 1,024 clauses; keep both sides on the same terms.
            keep = np.argsort(-weights, kind="stable")[:1024]
            terms, weights = terms[keep], weights[keep]
            t0 = time.perf_counter()
            found = splade.search_encoded([(terms, weights)], depth)[0]
            times["own"].append((time.perf_counter() - t0) * 1e3)
            runs["own"][qid] = {str(index.doc_ids[p]): float(s) for p, s in zip(*found)}
            query = JHashMap()
            for t, w in zip(terms, weights):
                if round(w * scale) > 0:
                    query.put(vocab[t], JInt(int(round(w * scale))))
            t0 = time.perf_counter()
            hits = searcher.search(query, depth)
            times["lucene"].append((time.perf_counter() - t0) * 1e3)
            runs["lucene"][qid] = {h.docid: float(h.score) for h in hits}
        searcher.close()
    report = {"dataset": dataset.resolve().name, "split": split, "queries": len(qids), "quantisation": scale, "lucene_index_build_s": round(lucene_build, 2)}
    for name in ("own", "lucene"):
        latency = _percentiles(times[name])
        report[name] = {**{m: round(v, 4) for m, v in evaluate_run(runs[name], qrels).items()}, "search_ms_p50": latency["p50"], "search_ms_p95": latency["p95"]}
    report["own_speedup_p50"] = round(report["lucene"]["search_ms_p50"] / max(report["own"]["search_ms_p50"], 1e-9), 2)
    return report


def tune(dataset: Path, index, split: str, first_stage: str = "bm25", counts=(100, 1000), weights=WEIGHTS) -> dict:
    from ..fusion import fuse
    from .beir import evaluate_run, load_beir

    queries, qrels = load_beir(dataset, split)
    qids = list(queries)
    encoded = index.encode_queries([queries[q] for q in qids])
    rows = []
    for count in counts:
        found = index.search_encoded(encoded, count, texts=[queries[q] for q in qids], first_stage=first_stage, candidates=count, rerank=False)
        scored = []
        for i, qid in enumerate(qids):
            keep = found.indices[i] >= 0
            positions, first = found.indices[i][keep], found.scores[i][keep]
            maxsim = index.score(encoded[i], positions)
            scored.append((qid, positions, first, maxsim))
        for fusion, weight_list in (("rrf", (None,)), ("linear", weights)):
            for weight in weight_list:
                run = {}
                for qid, positions, first, maxsim in scored:
                    final = fuse(maxsim, first, fusion, 0.0 if weight is None else weight)
                    order = np.argsort(-final, kind="stable")[:100]
                    run[qid] = {str(index.doc_ids[positions[o]]): float(final[o]) for o in order}
                rows.append({"candidates": count, "fusion": fusion, "weight": weight, "nDCG@10": round(evaluate_run(run, qrels)["nDCG@10"], 4)})
    best = {}
    for count in counts:
        linear = [r for r in rows if r["candidates"] == count and r["fusion"] == "linear"]
        best[str(count)] = max(linear, key=lambda r: (r["nDCG@10"], -abs(r["weight"] - 0.8)))["weight"]
    return {"dataset": dataset.resolve().name, "split": split, "queries": len(qids), "first_stage": first_stage, "grid": rows, "best_weight": best}


def main(argv: list[str] | None = None) -> int:
    from ..index import Index

    parser = argparse.ArgumentParser(prog="python -m mvr.eval.sparse_study", description=__doc__.splitlines()[0])
    parser.add_argument("study", choices=("compare", "options", "impact", "tune"))
    parser.add_argument("--weight", type=float, default=0.8, help="options: the linear fusion weight (tuned on a training split)")
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--index", required=True)
    parser.add_argument("--split", default=None, help="compare: test by default; tune: a training split (required)")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    index = Index.open(args.index)
    if args.study == "compare":
        report = compare(args.dataset, index, args.split or "test")
    elif args.study == "impact":
        report = impact(args.dataset, index, split=args.split or "test")
    elif args.study == "options":
        report = options(args.dataset, index, args.weight, split=args.split or "test")
    else:
        if not args.split or args.split == "test":
            parser.error("tune needs a training split (--split train or dev); weights are never chosen on test queries")
        report = tune(args.dataset, index, args.split)
    report["command"] = "python -m mvr.eval.sparse_study " + shlex.join(sys.argv[1:] if argv is None else argv)
    report["date"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k not in ("grid", "rows")}, indent=2))
    for row in report.get("rows", []):
        print("  ".join(f"{k}={v}" for k, v in row.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
