"""``mvr optimize``: merge every segment of an index into one, dropping deleted documents."""

from __future__ import annotations

import argparse

from .add import writer_parser


def add_parser(sub) -> argparse.ArgumentParser:
    return writer_parser(sub, "optimize", "merge an index's segments into one", "Merge every segment into one, without the deleted documents (the fastest layout to search).")


def run(args) -> int:
    from ..index import Index

    index = Index.open(args.index, home=args.index_dir)
    legacy = index.legacy
    done = index.optimize(wait=args.wait, show_progress=False if args.quiet else None, command=args.command_line)
    if legacy:  # the writer converts a version-1 index first: a change, even where there is nothing to merge
        print(f"converted {index.name} to format version 2 (as `mvr upgrade` does; older mvr versions no longer read it)")
    if not done["merged"]:
        print(f"{index.name} is {'one segment without deletions' if len(index.segments) else 'empty (no segments)'} already; nothing to merge")
    else:
        print(f"merged {done['merged']} segment(s) of {index.name} into one: {done['documents']} documents, generation {done['generation']}")
    return 0
