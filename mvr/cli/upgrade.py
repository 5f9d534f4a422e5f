"""``mvr upgrade``: convert an index written by an older mvr (format version 1) to segments and commits."""

from __future__ import annotations

import argparse

from .add import writer_parser


def add_parser(sub) -> argparse.ArgumentParser:
    return writer_parser(sub, "upgrade", "convert an older index to the current format", "Convert a version-1 index (one folder) to segments and commits, in place and crash-safe; files are hard-linked, not copied.")


def run(args) -> int:
    from ..index import Index

    index = Index.open(args.index, home=args.index_dir)
    if index.upgrade(wait=args.wait):
        print(f"converted {index.name} to format version 2: {index.n_docs} documents in one segment, generation {index.generation}")
    else:
        print(f"{index.name} is at format version 2 already; nothing to do")
    return 0
