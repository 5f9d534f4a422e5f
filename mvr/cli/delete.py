"""``mvr delete``: delete documents from an index by id, in one commit."""

from __future__ import annotations

import argparse
import sys

from .add import add_writer
from .common import add_common


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("delete", help="delete documents from an index by id", description="Delete documents by id in one commit; deleted documents are dropped from disk when their segment merges.")
    p.add_argument("index", help="index name or path")
    p.add_argument("ids", nargs="*", metavar="ID", help="document ids")
    p.add_argument("--ids", dest="ids_file", metavar="FILE", help="a file of document ids, one per line ('-': standard input)")
    add_writer(p)
    add_common(p)
    return p


def run(args) -> int:
    from ..corpus import read_id_lines
    from ..ids import check_id
    from ..errors import QueryError
    from ..index import Index

    ids = [check_id(doc_id, f"id argument #{number}") for number, doc_id in enumerate(args.ids, 1)]  # "" is no id: refused, not reported missing
    if args.ids_file is not None:
        ids += read_id_lines(sys.stdin if args.ids_file == "-" else args.ids_file)
    if not ids:
        raise QueryError("no ids to delete: give them as arguments or in a file (--ids FILE).")
    index = Index.open(args.index, home=args.index_dir)
    done = index.delete(ids, wait=args.wait, merge=not args.no_merge, command=args.command_line)
    rows = f"{index.n_docs} passages" if index.config.passage_tokens else f"{index.n_docs}"  # an index of passages counts its rows
    print(f"deleted {done['deleted']} document{'' if done['deleted'] == 1 else 's'} from {index.name}: {rows} left, generation {done['generation']}")
    if done["missing"]:
        shown = ", ".join(map(repr, done["missing"][:5])) + (", ..." if len(done["missing"]) > 5 else "")
        hint = "; an index of passages deletes whole documents, by document id (a passage id less its last '#' part)" if index.config.passage_tokens and any("#" in i for i in done["missing"]) else ""
        hint += "; give several ids as separate arguments, not one joined by commas" if any("," in i for i in done["missing"]) else ""
        print(f"mvr: {len(done['missing'])} id(s) not in the index: {shown}{hint}", file=sys.stderr)
    return 0
