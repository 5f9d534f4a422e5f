"""Where a document's encoding time goes (issue 15, point 5): each ONNX document runtime's
transformer run on the first N documents of a BEIR corpus, one document per run on one thread,
timed by ONNX Runtime's profiler per kind of operation, beside the multiply-adds each document
needs (products with weights, and the attention's own products of two activations).

    python -m mvr.eval.encode_profile ../shared/datasets/scifact --documents 60 --output docs/results/speed/encode-profile-scifact.json

Rows: ``onnx-int8`` (the graph as traced), ``onnx-int8-fused`` (the default), and the fused graph
with ONNX Runtime's ``SkipLayerNormFusion`` left on (the session the runtime opens turns it off).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def multiply_adds(config, lengths: list[int]) -> dict:
    """Multiply-adds per document of a BERT-like ``config`` over documents of ``lengths`` tokens."""
    layers, hidden, inner = config.num_hidden_layers, config.hidden_size, config.intermediate_size
    weights = sum(layers * n * (4 * hidden * hidden + 2 * hidden * inner) for n in lengths) / len(lengths)
    attention = sum(layers * 2 * n * n * hidden for n in lengths) / len(lengths)
    return {"with_weights": weights, "attention": attention}


def profile(model: bytes, sequences: list[list[int]], names: list[str], off: list[str] | None) -> dict:
    """ms per document of ``model`` on ``sequences`` (one per run, one thread, the first three
    again as warm-up), in all and per kind of operation."""
    import onnxruntime

    with tempfile.TemporaryDirectory() as tmp:
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        options.log_severity_level = 3
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(tmp, "profile")
        session = onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"], disabled_optimizers=off)
        runs = [{"input_ids": np.array([ids]), "attention_mask": np.ones((1, len(ids)), dtype=np.int64), "token_type_ids": np.zeros((1, len(ids)), dtype=np.int64)} for ids in sequences]
        runs = [{name: feeds[name] for name in names} for feeds in runs]
        for feeds in runs[:3]:
            session.run(None, feeds)
        started = time.perf_counter()
        for feeds in runs:
            session.run(None, feeds)
        seconds = time.perf_counter() - started
        with open(session.end_profiling()) as handle:
            events = json.load(handle)
    by_op: collections.Counter = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            by_op[event["args"]["op_name"]] += event["dur"]
    profiled = len(runs) + 3
    return {"ms_per_document": round(seconds / len(runs) * 1000, 2),
            "ms_per_document_by_op": {op: round(us / 1000 / profiled, 3) for op, us in by_op.most_common()}}


def run(dataset: Path, documents: int) -> dict:
    from mvr import Encoder
    from mvr.corpus import read_corpus
    from mvr.encode.quantize import FUSED_SESSION_OFF

    texts = []
    for doc in read_corpus(dataset / "corpus.jsonl"):
        texts.append(doc.full_text)
        if len(texts) == documents:
            break
    encoder = Encoder()
    sequences = encoder.tokenize_documents(texts)
    lengths = [len(s) for s in sequences]
    rows = {}
    for label, runtime, off in (("onnx-int8", "onnx-int8", None), ("onnx-int8-fused", "onnx-int8-fused", FUSED_SESSION_OFF),
                                ("onnx-int8-fused, SkipLayerNormFusion on", "onnx-int8-fused", None)):
        rows[label] = profile(encoder._onnx.exported(runtime), sequences, encoder._onnx.input_names, off)
    return {"dataset": dataset.name, "documents": len(texts), "tokens_mean": round(float(np.mean(lengths)), 1),
            "cut_at_maxlen": round(float(np.mean(np.array(lengths) == encoder.spec.doc_maxlen)), 3),
            "multiply_adds_per_document": {k: round(v) for k, v in multiply_adds(encoder.config, lengths).items()}, "runs": rows}


def main(argv=None) -> int:
    from .beir import publish_report

    p = argparse.ArgumentParser(prog="python -m mvr.eval.encode_profile", description=__doc__.split("\n\n")[0])
    p.add_argument("dataset", type=Path)
    p.add_argument("--documents", type=int, default=60)
    p.add_argument("--output", type=Path, default=None)
    args = p.parse_args(argv)
    if args.documents < 1:
        p.error("--documents must be at least 1")
    publish_report(run(args.dataset, args.documents), "mvr.eval.encode_profile", argv, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
