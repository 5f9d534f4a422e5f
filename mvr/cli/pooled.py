"""``mvr pooled``: (re)build an index's pooled single-vector stage from its stored vectors."""

from __future__ import annotations

import argparse

from .common import add_common, add_wait


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "pooled", help="(re)build an index's pooled single-vector stage from its stored vectors",
        description="(Re)build the pooled stage of an index (each document's mean token vector, for the pooled first stage and weighted fusion) without re-encoding it.",
    )
    p.add_argument("index", help="index name or path")
    add_wait(p)
    add_common(p)
    return p


def run(args) -> int:
    from ..config import positive_int
    from ..index import Index
    from ..storage.validate import replacing

    positive_int("--", "threads", args.threads, optional=True)
    with replacing("pooled"):  # the stage may be damaged: it is replaced, not read
        index = Index.open(args.index, home=args.index_dir)
        manifest = index.build_stage("pooled", threads=args.threads, command=args.command_line, show_progress=False if args.quiet else None, wait=args.wait)
    print(f"built the pooled stage of {index.name}: {manifest['documents']} documents, {manifest['bytes_per_document']} bytes per document, in {manifest['build']['seconds']:.1f} s")
    return 0
