"""ColBERT-PRF (issue 16, lever 2; mvr/feedback.py): its settings chosen on training queries, then
the test queries searched once with and once without it.

    python -m mvr.eval.feedback --index-dir indexes --output docs/results/colbert-prf.json

For each dataset (SciFact: tuned on train; NFCorpus: on dev) and two searches (the default
search of the default build, ``DATASET-int8``: fde+bm25s candidates reranked; and the ``best``
preset of ``DATASET-best``, built by ``mvr index --preset best``), the tuning queries are searched
once, and then again with the query expanded under every setting of the grid (feedback
documents x beta; 10 expansion vectors of 24 clusters, as the paper). The setting with the best
mean relative gain in nDCG@10 over every tuned search is the one the test rows use
(``prf="colbert"`` through ``Index.search_encoded``, one query at a time, as ``mvr eval --prf
colbert`` runs it; exhaustive MaxSim too), and the one ``mvr.feedback.COLBERT_PRF`` ships
(tests/test_feedback.py checks it against this report). Latency: search p50 / p95 in ms,
encoding excluded, the rows of a search in one process.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

DATASETS = {"scifact": "train", "nfcorpus": "dev"}
# label: (index name suffix, search options); the tuned searches, then exhaustive (tested only)
SEARCHES = {"default search": ("int8", {"preset": "none"}), "best preset": ("best", {}), "exhaustive": ("int8", {"first_stage": "exhaustive"})}
TUNED = ("default search", "best preset")
GRID = {"docs": (3, 5), "terms": (10,), "beta": (0.05, 0.1, 0.25, 0.5, 1.0)}


def tune(data: Path, index, split: str, options: dict) -> list[dict]:
    """nDCG@10 and R@100 of the ``split`` queries without feedback (the first row) and under every
    setting of :data:`GRID`, all queries searched together."""
    from mvr import search as pipeline
    from mvr.feedback import expand

    from .beir import drop_identical_ids, evaluate_run, load_beir

    queries, qrels = load_beir(data, split)
    qids = [q for q in queries if q in qrels]
    texts = [queries[q] for q in qids]
    state = index._state
    opts, _ = index._options(100, options.get("first_stage"), None, {k: v for k, v in options.items() if k != "first_stage"}, with_texts=True)
    batch = pipeline.query_batch(index.encode_queries(texts), texts, opts, index.dim, index.name, index.manifest["encoder"]["name"])

    def scored(results) -> dict:
        report = evaluate_run(drop_identical_ids(results.to_run(qids)), qrels)
        return {"nDCG@10": round(report["nDCG@10"], 4), "R@100": round(report["R@100"], 4)}

    first = pipeline.run(state, batch, 100, opts)
    rows = [{"docs": 0, "terms": 0, "beta": 0.0, **scored(first)}]
    for docs, terms, beta in itertools.product(*GRID.values()):
        expanded = expand(state, batch, first.indices, docs=docs, terms=terms, beta=beta)
        rows.append({"docs": docs, "terms": terms, "beta": beta, **scored(pipeline.run(state, expanded, 100, opts))})
    return rows


def test(data: Path, index, options: dict, chosen: dict) -> list[dict]:
    """The test queries, one at a time, without and with ``prf="colbert"`` (the ``chosen`` settings)."""
    from mvr.feedback import COLBERT_PRF

    from .beir import evaluate

    rows, shipped = [], dict(COLBERT_PRF)
    COLBERT_PRF.update({key: chosen[key] for key in GRID})
    try:
        for prf in (None, "colbert"):
            others = {k: v for k, v in options.items() if k != "first_stage"}
            report, _ = evaluate(data, index, split="test", first_stage=options.get("first_stage"), show_progress=False, options={**others, "prf": prf})
            run = report["runs"][0]
            rows.append({"prf": prf, **{key: run[key] for key in ("nDCG@10", "R@100", "search_ms_p50", "search_ms_p95")}})
    finally:
        COLBERT_PRF.clear()
        COLBERT_PRF.update(shipped)
    return rows


def choose(tuned: dict) -> dict:
    """The grid setting with the best mean relative nDCG@10 gain over every tuned (dataset, search)."""
    gains = {}
    for rows in tuned.values():
        base = rows[0]["nDCG@10"]
        for row in rows[1:]:
            key = (row["docs"], row["terms"], row["beta"])
            gains.setdefault(key, []).append(row["nDCG@10"] / base - 1.0)
    best = max(gains, key=lambda key: sum(gains[key]) / len(gains[key]))
    return {"docs": best[0], "terms": best[1], "beta": best[2], "mean_gain": round(sum(gains[best]) / len(gains[best]), 4)}


def main(argv=None) -> int:
    from mvr import Index
    from mvr.feedback import COLBERT_PRF

    from .beir import publish_report

    parser = argparse.ArgumentParser(prog="python -m mvr.eval.feedback", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/datasets"), help="folder of the BEIR datasets")
    parser.add_argument("--index-dir", type=Path, default=Path("indexes"), help="where the DATASET-int8 and DATASET-best indexes are (mvr index CORPUS --name DATASET-int8 [--preset best])")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--skip-test", action="store_true", help="tune only: do not touch the test queries")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    tuned, tested = {}, {}
    for name in args.datasets:
        for label in TUNED:
            suffix, options = SEARCHES[label]
            tuned[f"{name} / {label}"] = rows = tune(args.data / name, Index.open(args.index_dir / f"{name}-{suffix}"), DATASETS[name], options)
            print(f"{name} / {label} ({DATASETS[name]}): " + "; ".join(f"{r['docs']}/{r['terms']}/{r['beta']}: {r['nDCG@10']}" for r in rows), flush=True)
    chosen = choose(tuned)
    shipped = dict(COLBERT_PRF)
    print(f"grid's choice {chosen}; mvr.feedback.COLBERT_PRF {shipped}", flush=True)
    if not args.skip_test:
        for name in args.datasets:
            for label, (suffix, options) in SEARCHES.items():
                tested[f"{name} / {label}"] = test(args.data / name, Index.open(args.index_dir / f"{name}-{suffix}"), options, chosen)
                print(f"{name} / {label} (test): {tested[f'{name} / {label}']}", flush=True)
    report = {"tuning": {name: split for name, split in DATASETS.items() if name in args.datasets}, "grid": GRID, "tuned": tuned, "chosen": chosen,
              "shipped": shipped, "test": tested}
    publish_report(report, "mvr.eval.feedback", argv, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
