"""``mvr tune``: learn weighted fusion on a dataset's training queries and save it in the index
as a search preset (mvr/tuning.py)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .common import add_common, warn


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "tune", help="learn fusion weights on training queries and save them as a search preset",
        description="Learn the weights of weighted fusion (MaxSim, pooled vector, BM25, SPLADE: the signals the index has) on a BEIR-layout "
        "dataset's training or dev queries, and save them in the index as a search preset. Tune on train/dev only; report on test once.",
    )
    p.add_argument("dataset", type=Path, help="BEIR-layout folder: queries.jsonl, qrels/SPLIT.tsv")
    p.add_argument("--index", required=True, help="index name or path")
    p.add_argument("--split", default="train", help="the queries that tune (default train; never the split you report)")
    p.add_argument("--signals", default=None, help="comma list of the signals to fuse (default: every one the index has)")
    p.add_argument("--first-stage", default=None, help="how candidates are found (default: pooled+bm25s where the index has both, else its default)")
    p.add_argument("--candidates", type=int, default=None, help="candidates per query (default 200 with pooled+bm25s, else 100)")
    p.add_argument("--dense-share", type=float, default=None, help="a hybrid first stage: share of the candidates from its vector stage (default 0.5)")
    p.add_argument("--step", type=float, default=0.05, help="grid step of the weights (default 0.05)")
    p.add_argument("--save", default=None, metavar="NAME", help="save the weights as the search preset NAME")
    p.add_argument("--no-default", action="store_true", help="with --save: keep the index's default search as it is")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    add_common(p)
    return p


def run(args) -> int:
    from ..config import positive_int
    from ..errors import ConfigError
    from ..eval.beir import load_beir, relevance_warnings
    from ..index import Index
    from ..threads import cpu_threads
    from ..search_presets import check_name
    from ..tuning import tune

    positive_int("--", "threads", args.threads, optional=True)
    if args.candidates is not None:
        positive_int("--", "candidates", args.candidates)
    if args.first_stage == "":
        raise ConfigError("--first-stage names a first stage with candidates, such as pooled+bm25s or fde; got ''.")
    if args.first_stage == "exhaustive":
        raise ConfigError("tuning weighs the signals of a first stage's candidates; exhaustive search scores every document by MaxSim alone: name a first stage with candidates.")
    if args.save is not None and not args.save.strip():
        raise ConfigError("--save names the search preset to save; got ''.")
    if args.save is not None:
        check_name(args.save)  # before the tuning, not after it
    if args.no_default and args.save is None:
        raise ConfigError("--no-default saves the preset without making it the default: it needs --save NAME.")
    if args.signals is not None and not [s for s in args.signals.split(",") if s.strip()]:
        raise ConfigError(f"--signals names the signals to weigh, comma-separated (maxsim and others); got {args.signals!r}.")
    index = Index.open(args.index, home=args.index_dir)
    queries, qrels = load_beir(args.dataset, args.split)
    warnings = relevance_warnings(index, qrels, identical="tuning leaves out, as mvr eval does (BEIR's ignore_identical_ids)")  # queries that cannot count: said, not averaged in unseen
    if len(qrels) < 20:  # weights fitted to a handful of queries are noise, and --save makes them the default
        warnings.insert(0, f"tuning on {len(qrels)} queries: weights fitted to so few are noise; tune on a split of more (SciFact's train has 809).")
    if args.split == "test":  # what is then reported on test was fitted to it
        warnings.insert(0, "tuning on the test split: nDCG@10 then measured on test is optimistic; tune with --split train or dev.")
    options = None
    if args.first_stage or args.candidates or args.dense_share is not None:
        stage = args.first_stage or ("pooled+bm25s" if index.has_stage("pooled+bm25s") else index.default_stage)
        options = {"first_stage": stage, "candidates": args.candidates or (200 if stage == "pooled+bm25s" else 100)}
        if "+" in stage:
            options["dense_share"] = 0.5 if args.dense_share is None else args.dense_share
        elif args.dense_share is not None and stage != "exhaustive":
            raise ConfigError(f"--dense-share splits the candidates between the two halves of a joined first stage (such as fde+bm25s); {stage} is one: leave it out.")
    signals = [s.strip() for s in args.signals.split(",") if s.strip()] if args.signals else None
    warn(*warnings)  # before the tuning: a failure it leads to is then explained
    with cpu_threads(args.threads, "torch", "numba", "faiss", "blas"):
        report = tune(index, queries, qrels, options=options, signals=signals, step=args.step)
    if args.save:
        commit = index.save_search_preset(args.save, report["preset"], default=not args.no_default)
        report["saved"] = {"preset": args.save, "generation": commit["generation"], "default": not args.no_default}
    if warnings:
        report["warnings"] = warnings
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    weights = ", ".join(f"{k} {v:g}" for k, v in report["preset"]["weights"].items())
    print(f"{args.dataset.name} / {args.split}: {report['queries']} queries; weights {weights}")
    print(f"nDCG@10 on these queries: {report['ndcg_at_10']:.4f} fused, {report['maxsim_ndcg_at_10']:.4f} MaxSim alone (same candidates)")
    if args.save:
        print(f"saved as search preset {args.save!r} of {index.name}{'' if args.no_default else ' (its default search)'}")
    return 0
