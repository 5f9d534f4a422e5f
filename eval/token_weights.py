"""Query-token IDF weighting of MaxSim (issue 16, lever 3), measured on training or dev queries:
each query token's MaxSim term is weighted by ``idf(token) ** p``, the weights of a query scaled to
mean 1 (the query vectors are scaled by them, which is the same: max_j (w q) . d = w max_j q . d
for w > 0); exhaustive search over an index's stored vectors, nDCG@10 per power.

    python -m mvr.eval.token_weights ../shared/datasets/scifact --index scifact --split train --powers 0 0.5 1 1.5 2 --output docs/results/token-weights-scifact-train.json

idf = ln((N + 1) / (df + 0.5)) over the index's documents, df from the tokenised texts (the ids
the encoder gives them); p = 0 is plain MaxSim.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def run(dataset: Path, index_name: str, split: str, powers: list[float], home=None) -> dict:
    from mvr import Index, TokenVectors
    from mvr.segment_build import stored_texts
    from mvr.vectors import corpus_stats

    from .beir import evaluate_run, load_beir

    index = Index.open(index_name, home=home)
    if len(index.segments) != 1:
        raise SystemExit(f"{index_name}: one segment expected (mvr optimize)")
    queries, qrels = load_beir(dataset, split)
    qids = [q for q in queries if q in qrels]
    encoded = index.encode_queries([queries[q] for q in qids])
    ids, offsets = index.encoder.document_token_ids([text for _, text in stored_texts(index.segments[0].path)])
    stats = corpus_stats(ids, offsets)
    df = np.zeros(max(len(stats) - 1, int(encoded.token_ids.max()) + 1))
    df[: len(stats) - 1] = stats[1:]
    idf = np.log((stats[0] + 1) / (df + 0.5))
    doc_ids = index.doc_ids
    rows = []
    for p in powers:
        weights = idf[encoded.token_ids] ** p if p else np.ones(len(encoded.token_ids))
        for q in range(len(qids)):
            a, b = encoded.offsets[q], encoded.offsets[q + 1]
            weights[a:b] /= weights[a:b].mean()
        found = index.search_encoded(TokenVectors((encoded.vectors * weights[:, None]).astype(np.float32), encoded.offsets), 100, first_stage="exhaustive")
        run_ = {qid: {doc_ids[i]: float(s) for i, s in zip(found.indices[k], found.scores[k]) if i >= 0 and doc_ids[i] != qid} for k, qid in enumerate(qids)}
        rows.append({"power": p, **{k: round(v, 4) for k, v in evaluate_run(run_, {q: qrels[q] for q in qids}).items()}})
    return {"dataset": dataset.name, "split": split, "queries": len(qids), "index": index_name, "rows": rows}


def main(argv=None) -> int:
    from .beir import publish_report

    p = argparse.ArgumentParser(prog="python -m mvr.eval.token_weights", description=__doc__.split("\n\n")[0])
    p.add_argument("dataset", type=Path)
    p.add_argument("--index", required=True)
    p.add_argument("--index-dir", default=None)
    p.add_argument("--split", default="train", help="the queries that tune (train or dev; the test split is for reporting once)")
    p.add_argument("--powers", type=float, nargs="+", default=[0.0, 0.5, 1.0, 1.5, 2.0])
    p.add_argument("--output", type=Path, default=None)
    args = p.parse_args(argv)
    report = run(args.dataset, args.index, args.split, args.powers, args.index_dir)
    publish_report(report, "mvr.eval.token_weights", argv, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
