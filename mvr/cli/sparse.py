"""``mvr sparse``: (re)build an index's text first stages (BM25, bm25s, SPLADE) from its stored texts."""

from __future__ import annotations

import argparse

from ..config import IndexConfig, positive_int
from ..threads import cpu_threads
from ..errors import ConfigError
from ..registry import STAGES
from .common import add_common, add_wait

TEXT_STAGES = tuple(name for name, entry in STAGES.items() if entry.reads == "text")


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("sparse", help="(re)build an index's text first stages from its stored texts", description="(Re)build the text first stages of an index.")
    p.add_argument("index", help="index name or path")
    p.add_argument("--stage", action="append", choices=TEXT_STAGES, help=f"which (repeatable; default: {' and '.join(IndexConfig().sparse)}, what the default search reads; bm25 needs the lucene extra)")
    p.add_argument("--splade-model", default=None, help="with --stage splade: the masked-LM folder (default: the one the index records)")
    add_wait(p)
    add_common(p)
    return p


def run(args) -> int:
    from ..index import Index
    from ..storage.validate import replacing

    stages = args.stage or IndexConfig().sparse
    if args.splade_model is not None and "splade" not in stages:  # it would be ignored
        raise ConfigError("--splade-model goes with --stage splade (the stage it builds).")
    positive_int("--", "threads", args.threads, optional=True)
    with replacing(*stages):  # what is rebuilt may be damaged: it is replaced, not read
        index = Index.open(args.index, home=args.index_dir)
        with cpu_threads(args.threads, "torch", "numba"):
            built = index.build_sparse(stages, splade_model=args.splade_model, command=args.command_line, show_progress=False if args.quiet else None, wait=args.wait)
    for stage, manifest in built.items():
        print(f"built the {stage} first stage of {index.name}: {manifest['documents']} documents in {manifest['build']['seconds']:.1f} s")
    return 0
