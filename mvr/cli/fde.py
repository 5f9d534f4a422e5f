"""``mvr fde``: (re)build an index's MUVERA first stage from its stored vectors, without re-encoding."""

from __future__ import annotations

import argparse

from .common import add_common, add_fde, add_wait, fde_config


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("fde", help="(re)build an index's MUVERA first stage from its stored vectors", description="(Re)build the FDE first stage of an index without re-encoding it.")
    p.add_argument("index", help="index name or path")
    add_fde(p, with_switch=False, recorded=True)  # a flag left out keeps the index's setting: `mvr fde NAME` rebuilds the FDE it has
    add_wait(p)
    add_common(p)
    return p


def run(args) -> int:
    from ..index import Index
    from ..storage.validate import replacing

    with replacing("fde"):  # the stage may be damaged: it is replaced, not read
        index = Index.open(args.index, home=args.index_dir)
        manifest = index.build_fde(fde_config(args, base=index.config.fde), threads=args.threads, command=args.command_line, wait=args.wait)
    rows = "passages" if index.config.passage_tokens else "documents"  # an index of passages counts its rows
    print(
        f"built the FDE of {index.name}: {manifest['documents']} {rows} x {manifest['fde_dim']} dims, "
        f"{manifest['bytes_per_document'] / 1024:.1f} KiB per {rows[:-1]}, in {manifest['build']['seconds']:.1f} s "
        f"({manifest['build']['docs_per_second']:.0f} {rows}/s)"
    )
    if manifest.get("factory_used", manifest["config"]["factory"]) != manifest["config"]["factory"]:  # a segment too small to train it: exact until merges make one large enough
        print(f"note: faiss {manifest['config']['factory']} needs more documents to train than a segment holds; it is built as {manifest['factory_used']} (exact) until merges make one large enough")
    return 0
