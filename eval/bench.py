"""Time every stage of search on a real index, in one process, against baselines run beside it.

    python -m mvr.eval.bench ../shared/datasets/scifact --index scifact --output docs/results/bench-scifact.json

For each thread setting (one thread, then all cores) and each test query, one at a time:
query encoding, first stage, MaxSim rerank (from :class:`mvr.Results` timings) and the whole
search call; then, on the very same candidates, the rerank kernel alone against a NumPy matmul
MaxSim and a torch einsum MaxSim over the candidates' token matrices already decoded to float32
(the baselines get the decoding for free), each as GFLOP/s of the ``2 x query tokens x document
tokens x dim`` multiply-adds MaxSim needs, and as a share of the machine's float32 peak: the best
of a few large square matrix products (torch, same thread count). Query encoding at batch 1 is
also timed with PyTorch and with ONNX Runtime, alternating query by query. Medians and p95 in ms.
Quality rides along: nDCG@10 of the same search over all the queries, against exhaustive MaxSim
over ``--reference`` (the full index a compact one was derived from; default the index itself).

With ``--documents N`` it times document encoding instead (what ``mvr index`` spends its time
on): N corpus documents drawn at random, encoded with each document runtime (PyTorch, ONNX Runtime
float32, ONNX Runtime int8) chunk by chunk in turn, per thread setting; docs/s, each runtime's
speed-up over PyTorch, and how far its token vectors lie from PyTorch's (cosine).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np


def _pct(values: list[float]) -> dict:
    arr = np.asarray(values, dtype=np.float64)
    return {"p50": round(float(np.percentile(arr, 50)), 3), "p95": round(float(np.percentile(arr, 95)), 3)} if len(arr) else {"p50": None, "p95": None}


def float32_peak(threads: int, size: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of the best of ``repeats`` float32 ``size``-square matrix products (torch)."""
    import torch

    from ..threads import cpu_threads

    with cpu_threads(threads, "torch"):
        a = torch.randn(size, size)
        b = torch.randn(size, size)
        torch.mm(a, b)  # warm-up
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - t0)
    return 2.0 * size**3 / best / 1e9


def _numpy_maxsim(query, docs_cat, starts):
    sims = query @ docs_cat.T
    return np.maximum.reduceat(sims, starts, axis=1).sum(axis=0)


def _torch_maxsim(query, padded, mask):
    import torch

    sims = torch.einsum("qd,cnd->cqn", query, padded)
    sims.masked_fill_(~mask[:, None, :], float("-inf"))
    return sims.max(dim=2).values.sum(dim=1)


def _timed(fn, repeats: int = 3) -> float:
    """Best of ``repeats`` calls, in seconds."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _index_encoder(index, **runtime):
    """A new encoder of the index's model and lengths, with the given runtime."""
    from ..encode import Encoder

    recorded = index.manifest["encoder"]
    source = None if recorded["source"] == "default" else recorded["source"]
    return Encoder(source, query_maxlen=recorded["query_maxlen"], doc_maxlen=recorded["doc_maxlen"], **runtime)


def encoding(index, texts: list[str], threads: int) -> dict:
    """Batch-1 query encoding with PyTorch and with ONNX Runtime, alternating query by query in
    this process; also the largest difference between their vectors."""
    from ..config import QUERY_RUNTIMES
    from ..threads import cpu_threads

    encoders = {runtime: _index_encoder(index, query_runtime=runtime) for runtime in QUERY_RUNTIMES}
    times: dict[str, list[float]] = {runtime: [] for runtime in encoders}
    largest = 0.0
    with cpu_threads(threads, "torch"):
        for encoder in encoders.values():
            encoder.encode_queries(texts[0])  # warm-up (and the ONNX export, once)
        for text in texts:
            vectors = {}
            for runtime, encoder in encoders.items():
                t0 = time.perf_counter()
                vectors[runtime] = encoder.encode_queries(text).vectors
                times[runtime].append((time.perf_counter() - t0) * 1e3)
            largest = max(largest, float(np.abs(vectors["torch"] - vectors["onnx"]).max()))
    out = {f"{runtime}_ms": _pct(values) for runtime, values in times.items()}
    out["onnx_speedup"] = round(out["torch_ms"]["p50"] / out["onnx_ms"]["p50"], 2)
    out["largest_difference"] = largest
    return out


def document_encoding(index, texts: list[str], thread_settings: list[int], chunk: int = 64) -> list[dict]:
    """Documents per second of each document runtime on ``texts``, the runtimes taking turns
    chunk by chunk (so that they share the machine's state), per thread setting; and the cosine
    of each runtime's token vectors with PyTorch's."""
    from ..config import RUNTIMES

    encoders = {runtime: _index_encoder(index, doc_runtime=runtime) for runtime in RUNTIMES}
    tokens = sum(len(ids) for ids in encoders["torch"].tokenize_documents(texts))
    runs = []
    for threads in thread_settings:
        seconds = dict.fromkeys(encoders, 0.0)
        cosines: dict[str, list[np.ndarray]] = {runtime: [] for runtime in encoders}
        for encoder in encoders.values():
            encoder.encode_documents(texts[:8], threads=threads)  # warm-up (and the ONNX export, once)
        for start in range(0, len(texts), chunk):
            part = texts[start : start + chunk]
            vectors = {}
            for runtime, encoder in encoders.items():
                t0 = time.perf_counter()
                vectors[runtime] = encoder.encode_documents(part, threads=threads).vectors
                seconds[runtime] += time.perf_counter() - t0
            for runtime in encoders:
                cosines[runtime].append((vectors[runtime] * vectors["torch"]).sum(axis=1))
        run = {"threads": threads}
        for runtime in encoders:
            cos = np.concatenate(cosines[runtime])
            run[runtime] = {
                "docs_per_second": round(len(texts) / seconds[runtime], 2),
                "tokens_per_second": round(tokens / seconds[runtime], 1),
                "speedup_vs_torch": round(seconds["torch"] / seconds[runtime], 2),
                "cosine_with_torch": {"mean": round(float(cos.mean()), 5), "min": round(float(cos.min()), 5)},
            }
        runs.append(run)
        print(json.dumps(run), flush=True)
    return runs


def quality(index, reference, qids: list[str], texts: list[str], qrels: dict, stage: str, candidates: int | None) -> dict:
    """nDCG@10 of the timed two-stage search and of exhaustive MaxSim over ``reference`` (the
    full index it is compared with; it may be ``index`` itself), over the same queries."""
    from .beir import evaluate_run

    judged = {q: qrels[q] for q in qids}
    encoded = index.encode_queries(texts)
    two = index.search_encoded(encoded, 100, texts=texts, first_stage=stage, candidates=candidates)
    exhaustive = reference.search_encoded(encoded if reference is index else reference.encode_queries(texts), 100, first_stage="exhaustive")
    ours = evaluate_run(two.to_run(qids), judged)["nDCG@10"]
    full = evaluate_run(exhaustive.to_run(qids), judged)["nDCG@10"]
    return {"reference_index": reference.name, "nDCG@10": round(ours, 4), "exhaustive_nDCG@10": round(full, 4), "change_vs_exhaustive": round(ours / full - 1, 4)}


def bench(dataset: Path, index, first_stage: str | None, candidates: int | None, max_queries: int | None, thread_settings: list[int], reference=None) -> dict:
    import torch

    from ..threads import cpu_threads
    from .beir import load_beir

    queries, qrels = load_beir(dataset, "test")
    qids = list(queries)[:max_queries] if max_queries else list(queries)
    texts = [queries[q] for q in qids]
    stage = first_stage or index.default_stage
    warm = index.search(texts[0], first_stage=stage, candidates=candidates)  # model load, JIT, JVM
    del warm
    runs = []
    for threads in thread_settings:
        peak = float32_peak(threads)
        encoders = encoding(index, texts, threads)
        encode_ms, first_ms, rerank_ms, search_ms = [], [], [], []
        kernel_s = numpy_s = torch_s = 0.0
        flops = 0.0
        with cpu_threads(threads, "torch", "numba", "faiss", "blas"):
            for text in texts:
                t0 = time.perf_counter()
                encoded = index.encode_queries(text)
                t1 = time.perf_counter()
                results = index.search_encoded(encoded, 10, texts=[text], first_stage=stage, candidates=candidates)
                t2 = time.perf_counter()
                encode_ms.append((t1 - t0) * 1e3)
                search_ms.append((t2 - t1) * 1e3)
                first_ms.append(results.timings["first_stage"])
                rerank_ms.append(results.timings["rerank"])
                # the same candidates, scored by the kernel and by the baselines
                pool = index.search_encoded(encoded, candidates or 100, texts=[text], first_stage=stage, candidates=candidates, rerank=False)
                positions = pool.indices[0][pool.indices[0] >= 0]
                query = np.ascontiguousarray(encoded.vectors, dtype=np.float32)
                docs = [index.document_vectors(int(p)) for p in positions]
                lengths = np.array([len(d) for d in docs])
                docs_cat = np.concatenate(docs)
                starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
                padded = torch.zeros(len(docs), int(lengths.max()), index.dim)
                for i, d in enumerate(docs):
                    padded[i, : len(d)] = torch.from_numpy(d)
                mask = torch.arange(padded.shape[1])[None, :] < torch.from_numpy(lengths)[:, None]
                tq = torch.from_numpy(query)
                expected = index.score(query, positions)
                np.testing.assert_allclose(_numpy_maxsim(query, docs_cat, starts), expected, rtol=1e-3, atol=1e-3)
                with torch.inference_mode():
                    np.testing.assert_allclose(_torch_maxsim(tq, padded, mask).numpy(), expected, rtol=1e-3, atol=1e-3)
                    torch_s += _timed(lambda: _torch_maxsim(tq, padded, mask))
                kernel_s += _timed(lambda: index.score(query, positions))
                numpy_s += _timed(lambda: _numpy_maxsim(query, docs_cat, starts))
                flops += 2.0 * len(query) * len(docs_cat) * index.dim
        gflops = {name: round(flops / seconds / 1e9, 2) for name, seconds in (("mvr_kernel", kernel_s), ("numpy_matmul", numpy_s), ("torch_einsum", torch_s))}
        run = {
            "threads": threads,
            "float32_peak_gflops": round(peak, 1),
            "query_runtime": index.encoder.query_runtime,
            "encode_ms": _pct(encode_ms),
            "first_stage_ms": _pct(first_ms),
            "rerank_ms": _pct(rerank_ms),
            "search_ms": _pct(search_ms),
            "search_with_encoding_ms": _pct([a + b for a, b in zip(encode_ms, search_ms)]),
            "rerank_gflops": gflops,
            "rerank_share_of_peak": {name: round(value / peak, 3) for name, value in gflops.items()},
            "kernel_vs_torch_einsum": round(torch_s / kernel_s, 2),
            "kernel_vs_numpy_matmul": round(numpy_s / kernel_s, 2),
            "query_encoding": encoders,
        }
        runs.append(run)
        print(json.dumps(run), flush=True)
    return {
        "study": "bench",
        "dataset": Path(dataset).resolve().name,
        "index": index.name,
        "first_stage": stage,
        "candidates": candidates or 100,
        "queries": len(texts),
        "codec": index.config.codec,
        "vectors_per_document": index.info()["vectors_per_document"]["mean"],
        "quality": quality(index, reference or index, qids, texts, qrels, stage, candidates),
        "command": "python -m mvr.eval.bench " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "machine": {"processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__},
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "runs": runs,
    }


def documents_report(dataset: Path, index, count: int, thread_settings: list[int], seed: int = 0) -> dict:
    import torch

    from ..corpus import read_corpus

    corpus = [doc.full_text for doc in read_corpus(dataset)]
    picked = np.random.default_rng(seed).choice(len(corpus), size=min(count, len(corpus)), replace=False)
    texts = [corpus[i] for i in sorted(picked)]
    return {
        "study": "bench-documents",
        "dataset": Path(dataset).resolve().name,
        "index": index.name,
        "documents": len(texts),
        "seed": seed,
        "doc_maxlen": index.manifest["encoder"]["doc_maxlen"],
        "batch_size": index.config.batch_size,
        "command": "python -m mvr.eval.bench " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "machine": {"processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__},
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "runs": document_encoding(index, texts, thread_settings),
    }


def main(argv: list[str] | None = None) -> int:
    from ..index import Index

    parser = argparse.ArgumentParser(prog="python -m mvr.eval.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", type=Path, help="BEIR dataset folder (its test queries are timed)")
    parser.add_argument("--index", required=True)
    parser.add_argument("--index-dir", default=None)
    parser.add_argument("--first-stage", default=None, help="default: the index's default first stage")
    parser.add_argument("--candidates", type=int, default=None)
    parser.add_argument("--max-queries", type=int, default=None)
    parser.add_argument("--threads", default=f"1,{os.cpu_count()}", help="comma list of thread counts (default: 1 and all cores)")
    parser.add_argument("--reference", default=None, help="index whose exhaustive MaxSim nDCG@10 the search is compared with (default: --index)")
    parser.add_argument("--documents", type=int, default=None, help="time document encoding of this many corpus documents instead of search")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    index = Index.open(args.index, home=args.index_dir)
    threads = [int(t) for t in args.threads.split(",")]
    if args.documents is not None:
        if args.documents < 1:
            parser.error("--documents must be at least 1")
        report = documents_report(args.dataset, index, args.documents, threads)
    else:
        reference = Index.open(args.reference, home=args.index_dir) if args.reference else None
        report = bench(args.dataset, index, args.first_stage, args.candidates, args.max_queries, threads, reference)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
