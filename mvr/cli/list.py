"""``mvr list``: the indexes under ``--index-dir``."""

from __future__ import annotations

import argparse

from .common import add_common


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("list", help="list the indexes under --index-dir")
    add_common(p)
    return p


def run(args) -> int:
    from ..errors import ConfigError
    from ..storage import available

    if args.index_dir is not None and not args.index_dir.is_dir():  # a typo, or a file, would look like a folder without indexes
        raise ConfigError(f"--index-dir {args.index_dir} is not a folder{' (it is a file)' if args.index_dir.exists() else ''}; name the folder that holds your indexes.")
    for name in available(args.index_dir):
        print(name)
    return 0
