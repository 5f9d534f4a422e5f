"""The GPU paths against the CPU's (issue 15, point 3), on the first documents of a BEIR dataset:

    python -m mvr.eval.gpu_check ../shared/datasets/scifact --documents 2000 --output docs/results/gpu-scifact.json

1. Encoding: documents/s of the CPU default (ONNX Runtime, int8) and of ``--device`` (PyTorch
   under autocast at ``--precision``, texts batched by length), both in this process; the device's
   vectors against float32 PyTorch on the CPU (the same tokens; cosine per vector).
2. Exact MaxSim: an index of those documents (float16, the CPU's float32 vectors) searched
   exhaustively by every test query, on the CPU (Numba) and on the device (PyTorch): the same
   top-10 (share of ids found), the largest score difference, and the time of each.
3. Every store on the device: the float16 index and its int8 and residual derivatives, each
   held on the device and sent per search, scored by PyTorch against the Numba kernels
   (every document, 100 candidates a query, early exit): the largest score difference and
   whether early exit scored the same candidates.

It runs anywhere: ``--device cpu --precision bf16`` runs the same code on the CPU (the tests do).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def _timed(encoder, texts: list[str], batch_size: int | None = None):
    encoder.encode_documents(texts[: min(16, len(texts))], batch_size=batch_size)  # warm: export, load, kernels
    started = time.perf_counter()
    encoded = encoder.encode_documents(texts, batch_size=batch_size)
    return encoded, len(texts) / (time.perf_counter() - started)


def run(dataset: Path, documents: int, device: str, precision: str | None, batch_size: int, queries: int) -> dict:
    from mvr import Encoder, Index
    from mvr.config import IndexConfig
    from mvr.corpus import read_corpus
    from mvr.device import resolve_device

    from .beir import load_beir

    device = resolve_device(device)
    corpus = []
    for doc in read_corpus(dataset / "corpus.jsonl"):
        corpus.append(doc)
        if len(corpus) == documents:
            break
    texts = [doc.full_text for doc in corpus]
    cpu_default = Encoder(device="cpu")  # the CPU's default runtime, whatever "auto" would pick here
    reference = Encoder(doc_runtime="torch", query_runtime="torch", device="cpu")
    on_device = Encoder(device=device, precision=precision, batch_size=batch_size)
    _, cpu_rate = _timed(cpu_default, texts)
    exact, _ = _timed(reference, texts)
    mine, device_rate = _timed(on_device, texts)
    same_tokens = bool(np.array_equal(exact.offsets, mine.offsets) and np.array_equal(exact.token_ids, mine.token_ids))
    cosine = np.sum(exact.vectors * mine.vectors, axis=1)

    with tempfile.TemporaryDirectory() as tmp:
        Index.build(corpus, Path(tmp) / "check", config=IndexConfig(fde=None, sparse=(), doc_runtime="torch"), encoder=reference, show_progress=False)
        cpu_index, device_index = Index.open(Path(tmp) / "check", device="cpu"), Index.open(Path(tmp) / "check", device=device)
        if device == "cpu":  # the GPU's code with the CPU as its device
            from mvr.storage.torch_tokens import TorchTokens

            for segment in device_index.segments:
                segment.scorer = TorchTokens(segment.tokens, "cpu")
        texts_q = list(load_beir(dataset)[0].values())[:queries]
        encoded = cpu_index.encode_queries(texts_q)
        timings = {}
        for name, index in (("cpu", cpu_index), ("device", device_index)):
            index.search_encoded(encoded, 10, first_stage="exhaustive")  # warm: decoding to the device, kernels
            started = time.perf_counter()
            found = index.search_encoded(encoded, 10, first_stage="exhaustive")
            timings[name] = ((time.perf_counter() - started) * 1e3, found)
        (cpu_ms, a), (device_ms, b) = timings["cpu"], timings["device"]
        overlap = float(np.mean([len(set(x) & set(y)) / max(len(x), 1) for x, y in zip(a.indices.tolist(), b.indices.tolist())]))
        score_diff = float(np.abs(a.scores - b.scores).max())
        stores = _stores(cpu_index, Path(tmp), encoded, device)
    return {
        "dataset": dataset.name, "documents": len(texts), "device": device, "precision": on_device.precision, "batch_size": batch_size,
        "encoding": {
            "cpu_default_docs_per_s": round(cpu_rate, 1), "cpu_default_runtime": cpu_default.doc_runtime,
            "device_docs_per_s": round(device_rate, 1), "speedup": round(device_rate / cpu_rate, 2),
            "same_tokens": same_tokens, "cosine_to_cpu_fp32_min": round(float(cosine.min()), 5), "cosine_to_cpu_fp32_median": round(float(np.median(cosine)), 6),
        },
        "exhaustive_maxsim": {
            "queries": len(texts_q), "cpu_ms": round(cpu_ms, 1), "device_ms": round(device_ms, 1), "speedup": round(cpu_ms / device_ms, 2),
            "top10_overlap": round(overlap, 4), "max_score_difference": score_diff,
        },
        "stores": stores,
    }


def _stores(index, folder: Path, encoded, device: str) -> dict:
    """Each codec's store scored by PyTorch on ``device`` (resident, and sent per search) against its kernels."""
    from mvr import Index
    from mvr.storage.torch_tokens import TorchTokens

    indexes = {"float16": index}
    for codec, changes in (("int8", {"codec": "int8"}), ("residual", {"codec": "residual", "codec_bits": 2})):
        indexes[codec] = Index.derive(index, folder / codec, show_progress=False, fde=None, **changes)
    queries, offsets = encoded.vectors, encoded.offsets
    rng = np.random.default_rng(0)
    report = {}
    for codec, built in indexes.items():
        store = built.segments[0].tokens
        want = store.score_all(queries, offsets)
        for resident in (True, False):
            budget = (None if device != "cpu" else 1 << 34) if resident else 0  # None: the device's own budget
            scorer = TorchTokens(store, device, budget=budget)
            got = scorer.score_all(queries, offsets)
            worst, same_exit = float(np.abs(got - want).max()), 0
            repeatable = bool(np.array_equal(got, scorer.score_all(queries, offsets)))  # the same bits, every time
            for q in range(len(offsets) - 1):
                rows = queries[offsets[q] : offsets[q + 1]]
                positions = rng.permutation(want.shape[1])[:100]
                worst = max(worst, float(np.abs(scorer.score(rows, positions) - store.score(rows, positions)).max()))
                (_, n), (_, m) = scorer.early_exit(rows, positions, 10, 20), store.early_exit(rows, positions, 10, 20)
                same_exit += n == m
            report[f"{codec}, {'resident' if resident else 'per search'}"] = {
                "resident": scorer._whole() is not None, "max_score_difference": worst, "same_scores_again": repeatable,
                # a share: a store kept as float16 (int8, residual) may rank a near-tie otherwise and stop a candidate earlier or later
                "early_exit_same_candidates": round(same_exit / max(len(offsets) - 1, 1), 4),
                "top10_overlap": round(float(np.mean([len(set(np.argsort(-x)[:10]) & set(np.argsort(-y)[:10])) / 10 for x, y in zip(got, want)])), 4),
            }
    return report


def main(argv=None) -> int:
    from .beir import publish_report

    p = argparse.ArgumentParser(prog="python -m mvr.eval.gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("dataset", type=Path, help="BEIR-layout folder (corpus.jsonl, queries.jsonl)")
    p.add_argument("--documents", type=int, default=2000)
    p.add_argument("--queries", type=int, default=300)
    p.add_argument("--device", default="cuda")
    p.add_argument("--precision", default=None, choices=("fp32", "fp16", "bf16"))
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--output", type=Path, default=None)
    args = p.parse_args(argv)
    report = run(args.dataset, args.documents, args.device, args.precision, args.batch_size, args.queries)
    publish_report(report, "mvr.eval.gpu_check", argv, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
