"""The trained projection (issue 16, lever 4), in-domain and cross-domain: a head trained on each
dataset's training queries (mvr.training), applied to both datasets' indexes, tested once.

    python -m mvr.eval.projection --index-dir indexes --output docs/results/projection.json
    python -m mvr.eval.projection --index-dir indexes --query-weights --output docs/results/projection-query-weights.json
    python -m mvr.eval.projection --index-dir indexes --kind residual --train-on scifact --output docs/results/projection-residual.json

For each dataset (SciFact: trained on train; NFCorpus: trained on train; 20% of those queries held
out to pick the epoch) a head is trained on the float16 index of its corpus. Each test set is then
searched (exhaustive MaxSim, and the default search: the FDE rebuilt on the new vectors, joined
with bm25s) with: the model's own vectors; the same vectors reduced by uncentred PCA to the head's
width (the untrained compression, as ``--pca-dim`` makes it); the head trained on its own
dataset (in-domain); and the head trained on the other one (cross-domain); ``--train-on``: heads
for those datasets only, each still tested on both. Each projected index
is derived from the float16 one (``mvr index --from X --projection HEAD``): no re-encoding.
Each row also splits the test queries into those with a relevant document that some training
query has as a positive ("seen") and the rest ("unseen"): a head can learn such documents.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np

DATASETS = {"scifact": "train", "nfcorpus": "train"}


def _seen(data: Path, split: str) -> tuple[set, dict]:
    """Test queries with a relevant document that is also relevant to a training query (what a
    head trained on that split has seen as a positive), and the test qrels."""
    from .beir import load_beir

    _, train = load_beir(data, split)
    positives = {d for judged in train.values() for d, r in judged.items() if r > 0}
    _, test = load_beir(data, "test")
    return {q for q, judged in test.items() if any(r > 0 and d in positives for d, r in judged.items())}, test


def _rows(data: Path, index, label: str, head: str | None) -> list[dict]:
    from .beir import evaluate, evaluate_run

    seen, test = _seen(data, DATASETS[data.name])
    rows = []
    for name, stage in (("exhaustive", "exhaustive"), ("default search", None)):
        report, runs = evaluate(data, index, split="test", first_stage=stage, show_progress=False, options={"preset": "none"} if stage is None else None)
        run, ranked = report["runs"][0], next(iter(runs.values()))
        split = {}
        for part in ("seen", "unseen"):
            subset = {q: j for q, j in test.items() if (q in seen) == (part == "seen")}
            split[part] = round(evaluate_run({q: r for q, r in ranked.items() if q in subset}, subset)["nDCG@10"], 4) if subset else None
        rows.append({"vectors": label, "head": head, "search": name, "first_stage": run["first_stage"], "dim": index.dim,
                     "bytes_per_token": index.manifest["bytes_per_token"], **{k: run[k] for k in ("nDCG@10", "R@100", "search_ms_p50")},
                     "nDCG@10_seen": split["seen"], "nDCG@10_unseen": split["unseen"], "queries_seen": len(seen), "queries_unseen": len(test) - len(seen)})
    return rows


def run(data: Path, home, work: Path, kind: str = "linear", dim: int = 128, epochs: int = 20, query_weights: bool = False, train_on=None) -> dict:
    from mvr import Index
    from mvr.training import train_projection
    from mvr.vectors import fit_pca
    from mvr.vectors.heads import Head

    from .beir import load_beir

    indexes = {name: Index.open(name, home=home) for name in DATASETS}
    heads, training = {}, {}
    for name, split in DATASETS.items():
        if train_on and name not in train_on:
            continue
        heads[name] = work / f"{name}-{kind}-{dim}{'-weighted' if query_weights else ''}.npz"
        if heads[name].is_file():  # trained by an earlier run with --work: reused, not trained again
            training[name] = {"split": split, "reused": str(heads[name])}
            continue
        queries, qrels = load_beir(data / name, split)
        head, report = train_projection(indexes[name], queries, qrels, kind=kind, dim=dim, epochs=epochs, query_weights=query_weights, show_progress=False)
        head.save(heads[name])
        training[name] = {"split": split, **report}
    test = {}
    for name, index in indexes.items():
        rows = _rows(data / name, index, "model (no projection)", None)
        sample = np.concatenate([index.document_vectors(p) for p in range(0, index.n_docs, max(1, index.n_docs // 2000))])
        pca = work / f"{name}-pca-{dim}.npz"
        Head("linear", fit_pca(sample[:200_000], dim)).save(pca)
        for label, head, trained_on in (
            (f"uncentred PCA to {dim} (untrained)", pca, None),
            *((f"head trained on {other} {DATASETS[other]} ({'in' if other == name else 'cross'}-domain)", heads[other], other) for other in heads),
        ):
            target = work / f"{name}-{head.stem}"
            projected = Index.derive(index, target, projection=str(head), show_progress=False, overwrite=True)
            rows.extend({**row, "trained_on": trained_on} for row in _rows(data / name, projected, label, head.name))
            shutil.rmtree(target)
        test[name] = rows
    return {"kind": kind, "dim": dim, "epochs": epochs, "query_weights": query_weights, "trained_on": sorted(heads), "training": training, "test": test}


def main(argv=None) -> int:
    from .beir import publish_report

    p = argparse.ArgumentParser(prog="python -m mvr.eval.projection", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=Path("../shared/datasets"), help="folder with scifact/ and nfcorpus/ in BEIR layout")
    p.add_argument("--index-dir", default=None, help="where the float16 indexes scifact and nfcorpus are (eval/reproduce.sh builds them)")
    p.add_argument("--kind", choices=("linear", "residual"), default="linear")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--query-weights", action="store_true", help="the heads also learn a weight for each query token (lever 3)")
    p.add_argument("--train-on", nargs="+", choices=sorted(DATASETS), default=None, help="train heads on these datasets only (default: both); each is still tested on both")
    p.add_argument("--work", type=Path, default=None, help="keep the heads here, and reuse those already there (default: a temporary folder, removed)")
    p.add_argument("--output", type=Path, default=None)
    args = p.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="mvr-projection-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        report = run(args.data, args.index_dir, work, args.kind, args.dim, args.epochs, args.query_weights, args.train_on)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    publish_report(report, "mvr.eval.projection", argv, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
