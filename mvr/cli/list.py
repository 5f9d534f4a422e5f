"""``mvr list``: the indexes under ``--index-dir``."""

from __future__ import annotations

import argparse

from .common import add_common


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("list", help="list the indexes under --index-dir")
    add_common(p)
    return p


def run(args) -> int:
    import os
    import sys

    from ..errors import ConfigError
    from ..storage import available, default_home
    from ..storage.names import name_problem
    from ..storage.formats import INDEX_FORMAT
    from ..storage.layout import resumable_builds
    from ..storage.manifest import manifest_format

    if args.index_dir is not None and not args.index_dir.is_dir():  # a typo, or a file, would look like a folder without indexes
        raise ConfigError(f"--index-dir {args.index_dir} is not a folder{' (it is a file)' if args.index_dir.exists() else ''}; name the folder that holds your indexes.")
    home = args.index_dir or default_home()
    if os.environ.get("MVR_INDEX_DIR") and args.index_dir is None and not home.is_dir():
        if home.exists():  # the same mistake as --index-dir FILE, through the environment
            raise ConfigError(f"MVR_INDEX_DIR={home} is a file, not a folder; set it to the folder that holds your indexes.")
        print(f"mvr list: no indexes yet: MVR_INDEX_DIR={home} does not exist (`mvr index CORPUS --name NAME` makes it).", file=sys.stderr)
    for name in available(home):
        found, what = manifest_format(home / name)
        if name_problem(name) is not None:  # a name no command takes (a newline would print as two names): said, not listed
            print(f"mvr list: skipped {name!r}: {name_problem(name)}; rename the folder to search it.", file=sys.stderr)
        elif found == INDEX_FORMAT:
            print(name)
        else:  # a folder of something else, or an index whose manifest is damaged: not one to search
            print(f"mvr list: skipped {name}: it holds {what}, not an mvr index (`mvr info {home / name}` says more).", file=sys.stderr)
    for name, folder in resumable_builds(home):  # kept for a --resume that may never come: said, so that it is not forgotten
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and not f.is_symlink())
        print(f"mvr list: an interrupted build of {name!r} is kept at {folder} ({size / 2**20:.1f} MiB): `mvr index CORPUS --name {name} "
              "--resume` goes on from it; a build of that name without --resume removes it.", file=sys.stderr)
    return 0
