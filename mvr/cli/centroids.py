"""``mvr centroids``: (re)build an index's centroid-interaction first stage from its stored vectors."""

from __future__ import annotations

import argparse

from .common import add_common, add_wait


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "centroids", help="(re)build an index's centroid-interaction first stage from its stored vectors",
        description="(Re)build the centroid-interaction first stage of an index (PLAID / WARP style) without re-encoding it.",
    )
    p.add_argument("index", help="index name or path")
    p.add_argument("--centroids", type=int, default=None, metavar="K", help="fit K centroids (default: the residual codec's own; otherwise a power of two near 4 x sqrt(vectors))")
    add_wait(p)
    add_common(p)
    return p


def run(args) -> int:
    from ..index import Index
    from ..storage.validate import replacing

    with replacing("centroids"):  # the stage may be damaged: it is replaced, not read
        index = Index.open(args.index, home=args.index_dir)
        manifest = index.build_stage("centroids", args.centroids if args.centroids is not None else _asked(index), threads=args.threads, command=args.command_line, show_progress=False if args.quiet else None, wait=args.wait)
    rows = "passages" if index.config.passage_tokens else "documents"  # an index of passages counts its rows
    print(
        f"built the centroid stage of {index.name}: {manifest['documents']} {rows}, {manifest['centroids']} centroids ({manifest['origin']}), "
        f"{manifest['bytes_per_document']:.0f} bytes per {rows[:-1]}, in {manifest['build']['seconds']:.1f} s"
    )
    return 0


def _asked(index) -> int | None:
    """The --centroids count the index's centroid stage was built with (None: the default, or a
    stage damaged past reading): a rebuild without --centroids keeps it."""
    from ..errors import MvrError
    from ..stages import stage_class
    from ..storage.manifest import read_manifest

    cls = stage_class("centroids")
    try:
        return read_manifest(index.segments[0].path / "centroids", cls.format, cls.version).get("asked") if index.segments else None
    except (MvrError, OSError, ValueError):
        return None
