"""Weighted fusion, lever by lever (issue 16, lever 1): each set of signals tuned on training or
dev queries (mvr.tuning), then searched once on the test queries with those weights.

    python -m mvr.eval.fusion --index-dir indexes --without splade --output docs/results/fusion-levers.json
    python -m mvr.eval.fusion --index-dir indexes --output docs/results/fusion-levers-splade.json

For each dataset (SciFact: tuned on train; NFCorpus: tuned on dev) and each set of signals, the
weights of the best nDCG@10 on its own tuning queries; and one set of weights for both datasets
at once (the best mean relative gain over MaxSim on the same candidates), which is the built-in
``best`` search preset (mvr.config.SEARCH_PRESETS). Test rows: nDCG@10, R@100 and search
latency (query encoding excluded) of the real search with those weights, beside exhaustive
MaxSim and the index's default search in the same process.
"""

from __future__ import annotations

import argparse
from pathlib import Path

DATASETS = {"scifact": "train", "nfcorpus": "dev"}
LEVERS = (
    ("maxsim", "bm25s"),
    ("maxsim", "pooled"),
    ("maxsim", "pooled", "bm25s"),
    ("maxsim", "pooled", "bm25s", "splade"),
    ("maxsim", "pooled", "bm25s", "bm25"),
)
CANDIDATES = {"first_stage": "pooled+bm25s", "candidates": 200, "dense_share": 0.5}


def _test_row(dataset: Path, index, label: str, options: dict) -> dict:
    from .beir import evaluate

    rest = {k: v for k, v in options.items() if k not in ("first_stage", "candidates")}
    report, _ = evaluate(dataset, index, split="test", first_stage=options.get("first_stage"), candidates=options.get("candidates"), show_progress=False, options=rest)
    row = report["runs"][0]
    keep = ("first_stage", "candidates", "nDCG@10", "R@100", "search_ms_p50", "search_ms_p95")
    return {"run": label, **{k: row[k] for k in keep}, **({"weights": options["weights"]} if "weights" in options else {})}


def run(data: Path, home, step: float = 0.05, levers=LEVERS) -> dict:
    from mvr import Index
    from mvr.tuning import features, grid

    from .beir import load_beir

    indexes = {name: Index.open(name, home=home) for name in DATASETS}
    feats = {}
    for name, split in DATASETS.items():
        queries, qrels = load_beir(data / name, split)
        signals = sorted({s for lever in levers for s in lever if s == "maxsim" or indexes[name].has_stage(s)}, key=lambda s: s != "maxsim")
        feats[name] = (signals, features(indexes[name], queries, qrels, CANDIDATES, signals))
    tuned = []
    for lever in levers:
        if not all(s in feats[name][0] for name in DATASETS for s in lever):
            continue
        sets = [feats[name][1] for name in DATASETS]
        own = {name: grid([feats[name][1]], list(lever), step)[0] for name in DATASETS}
        joint = grid(sets, list(lever), step)[0]
        tuned.append({"signals": list(lever), "own": own, "joint": joint})
    test = {}
    for name in DATASETS:
        index, rows = indexes[name], []
        rows.append(_test_row(data / name, index, "exhaustive MaxSim", {"first_stage": "exhaustive"}))
        rows.append(_test_row(data / name, index, "default search (no preset)", {"preset": "none"}))
        rows.append(_test_row(data / name, index, "pooled alone", {"first_stage": "pooled", "candidates": 100, "rerank": False}))
        rows.append(_test_row(data / name, index, "MaxSim on the same candidates", CANDIDATES))
        for one in tuned:
            for which in ("own", "joint"):
                chosen = one["own"][name] if which == "own" else one["joint"]
                options = {**CANDIDATES, "fusion": "weighted", "weights": {k: v for k, v in chosen["weights"].items() if v}}
                rows.append(_test_row(data / name, index, f"{'+'.join(one['signals'])}, weights tuned on {'its own' if which == 'own' else 'both'} tuning queries", options))
        test[name] = rows
    return {"tuning": {name: {"split": split, "queries": len(feats[name][1].ideal)} for name, split in DATASETS.items()}, "candidates": CANDIDATES, "step": step, "levers": tuned, "test": test}


def main(argv=None) -> int:
    from .beir import publish_report

    p = argparse.ArgumentParser(prog="python -m mvr.eval.fusion", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=Path("../shared/datasets"), help="folder with scifact/ and nfcorpus/ in BEIR layout")
    p.add_argument("--index-dir", default=None, help="where the indexes scifact and nfcorpus are (with the pooled and bm25s stages; splade and bm25 for the last levers)")
    p.add_argument("--step", type=float, default=0.05)
    p.add_argument("--without", action="append", default=[], metavar="SIGNAL", help="leave out the levers with this signal (e.g. splade: fusion-levers.json's set)")
    p.add_argument("--output", type=Path, default=None)
    args = p.parse_args(argv)
    known = {s for lever in LEVERS for s in lever} - {"maxsim"}
    if set(args.without) - known:
        p.error(f"--without takes signals of the levers: {', '.join(sorted(known))}")
    report = run(args.data, args.index_dir, args.step, tuple(lever for lever in LEVERS if not set(lever) & set(args.without)))
    publish_report(report, "mvr.eval.fusion", argv, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
