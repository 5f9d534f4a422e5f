"""``mvr train-projection``: train a projection head on a dataset's training queries (mvr/training.py),
then apply it with ``mvr index ... --projection FILE`` (or ``--from INDEX --projection FILE``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .common import add_common, warn


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "train-projection", help="train a projection head on training queries (apply it with mvr index --projection)",
        description="Train a small head (linear, or two-layer with a residual skip) on top of the frozen token vectors of an index's model, "
        "with a MaxSim contrastive loss on a BEIR-layout dataset's training queries, their judged documents and hard negatives "
        "(bm25s and MaxSim top candidates). The index must hold the model's own vectors (no PCA, no head). Train on train/dev only.",
    )
    p.add_argument("dataset", type=Path, help="BEIR-layout folder: queries.jsonl, qrels/SPLIT.tsv")
    p.add_argument("--index", required=True, help="index of the dataset's corpus, with the model's own vectors (float16 is best)")
    p.add_argument("--split", default="train", help="the queries that train (default train; never the split you report)")
    p.add_argument("--output", type=Path, required=True, help="where to write the head (.npz)")
    p.add_argument("--kind", choices=("linear", "residual"), default="linear", help="linear, or residual: x P + gelu(x A + b) B (default linear)")
    p.add_argument("--dim", type=int, default=128, help="output dimensions (default 128; the model's keeps them all)")
    p.add_argument("--epochs", type=int, default=20, help="passes over the training queries (default 20; the best validation epoch is kept)")
    p.add_argument("--batch-size", type=int, default=16, help="queries per step (default 16)")
    p.add_argument("--negatives", type=int, default=7, help="hard negatives per query per step (default 7)")
    p.add_argument("--temperature", type=float, default=0.05, help="softmax temperature over mean MaxSim scores (default 0.05)")
    p.add_argument("--learning-rate", type=float, default=1e-3, help="Adam's step size (default 1e-3)")
    p.add_argument("--validation", type=float, default=0.2, help="share of the queries held out to pick the epoch (default 0.2)")
    p.add_argument("--query-weights", action="store_true", help="also learn a weight for each query token (from its vector), applied to queries at search time")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    add_common(p)
    return p


def run(args) -> int:
    from ..errors import ConfigError
    from ..eval.beir import load_beir, relevance_warnings
    from ..index import Index
    from ..threads import cpu_threads
    from ..training import train_projection

    if args.output.suffix != ".npz":
        raise ConfigError(f"--output must name an .npz file, got {args.output}.")
    if not args.output.parent.is_dir():
        raise ConfigError(f"--output's folder {args.output.parent} does not exist.")
    for path in (args.output, args.output.with_suffix(".json")):  # the head and its report: found only after training otherwise
        if path.exists() and not path.is_file():
            raise ConfigError(f"{path} exists and is not a file: --output names the head's file, and its report goes beside it (.json); name another file.")
    index = Index.open(args.index, home=args.index_dir)
    queries, qrels = load_beir(args.dataset, args.split)
    warnings = relevance_warnings(index, qrels, identical="training and its validation leave out, as mvr eval does (BEIR's ignore_identical_ids)")  # the training leaves out queries with no relevant document in the index: said
    if args.split == "test":  # what is then reported on test was fitted to it
        warnings.insert(0, "training on the test split: nDCG@10 then measured on test is optimistic; train with --split train or dev.")
    warn(*warnings)  # before the training: a failure it leads to is then explained
    with cpu_threads(args.threads, "torch", "numba", "blas"):
        head, report = train_projection(
            index, queries, qrels, kind=args.kind, dim=args.dim, epochs=args.epochs, batch_size=args.batch_size, negatives=args.negatives,
            temperature=args.temperature, learning_rate=args.learning_rate, validation=args.validation, query_weights=args.query_weights, seed=args.seed,
            show_progress=False if args.quiet else None,
        )
    head.save(args.output)
    report.update(output=str(args.output), command=args.command_line, dataset=str(args.dataset), split=args.split, index=index.name, **({"warnings": warnings} if warnings else {}))
    args.output.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    v = report["validation_ndcg_at_10"]
    print(f"{args.dataset.name} / {args.split}: {report['train_queries']} training queries, {report['validation_queries']} held out")
    trained = f"trained {v['best']:.4f} (epoch {v['best_epoch']})" if v["best_epoch"] else "no epoch did better: the head written is the one at start"
    print(f"held-out nDCG@10 (their candidates reranked): model {v['model']:.4f}, head at start {v['start']:.4f}, {trained}")
    print(f"wrote {args.output} ({head.kind}, {head.shape[0]} -> {head.shape[1]} dims) and its report {args.output.with_suffix('.json')}")
    return 0
