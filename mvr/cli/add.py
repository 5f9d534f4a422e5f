"""``mvr add``: encode documents into a new segment of an index (``--upsert``: replacing those whose id it holds)."""

from __future__ import annotations

import argparse

from .common import add_common, add_device, add_wait


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("add", help="add documents to an index", description="Encode documents into a new segment of an index, as its build did, and commit it.")
    p.add_argument("index", help="index name or path")
    p.add_argument("corpus", help="BEIR corpus.jsonl (or its dataset folder), JSONL of {id, text}, a .tsv of id<TAB>text[<TAB>title], or a folder of .txt/.md files")
    p.add_argument("--upsert", action="store_true", help="replace the documents whose id the index holds (default: such an id is an error)")
    p.add_argument("--workers", type=int, default=1, metavar="N", help="encode in N processes of this machine's CPU, one thread each (on a GPU machine too), as mvr index --workers (default 1)")
    p.add_argument("--model", default=None, help="the index's model in another folder (default: the folder it was built from); checked against the index's record")
    add_writer(p)
    add_device(p, "document encoding")
    add_common(p)
    return p


def writer_parser(sub, name: str, help: str, description: str) -> argparse.ArgumentParser:
    """A subcommand that changes one index and takes nothing else: ``mvr NAME INDEX [--wait S]``."""
    p = sub.add_parser(name, help=help, description=description)
    p.add_argument("index", help="index name or path")
    add_writer(p, merge=False)
    add_common(p)
    return p


def add_writer(p: argparse.ArgumentParser, merge: bool = True) -> None:
    add_wait(p)
    if merge:
        p.add_argument("--no-merge", action="store_true", help="do not merge segments after the commit (mvr optimize merges them all)")


def run(args) -> int:
    from ..config import positive_int
    from ..corpus import read_corpus
    from ..errors import ConfigError
    from ..index import Index

    positive_int("--", "workers", args.workers)
    if args.workers != 1 and args.device not in (None, "cpu"):
        raise ConfigError("--workers encodes in processes of this machine's CPU; it does not go with --device other than cpu.")
    index = Index.open(args.index, home=args.index_dir, device=args.device, model=args.model)
    what = index.upsert if args.upsert else index.add
    done = what(read_corpus(args.corpus), wait=args.wait, merge=not args.no_merge, workers=args.workers, show_progress=False if args.quiet else None, command=args.command_line)
    replaced = f" ({done['replaced']} of them in place of documents of the same id)" if args.upsert else ""
    print(
        f"added {done['added']} document{'' if done['added'] == 1 else 's'}{replaced} to {index.name} ({done['docs_per_second']:.1f} docs/s): "
        f"{index.n_docs} {'passages' if index.config.passage_tokens else 'documents'} in {done['segments']} segment(s), generation {done['generation']}"
    )
    return 0
