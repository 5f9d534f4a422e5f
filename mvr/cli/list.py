"""``mvr list``: the indexes under ``--index-dir``."""

from __future__ import annotations

import argparse

from .common import add_common


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("list", help="list the indexes under --index-dir")
    add_common(p)
    return p


def run(args) -> int:
    from ..storage import available

    for name in available(args.index_dir):
        print(name)
    return 0
