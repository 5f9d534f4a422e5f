"""Index names and homes: where an index is found by name (``$MVR_INDEX_DIR`` or ``./indexes``),
which names are plain folder names, and where a name or a path is written (storage/layout.py
writes it)."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ConfigError, is_utf8
from .manifest import MANIFEST


def default_home() -> Path:
    """Where indexes are built and found by name: ``$MVR_INDEX_DIR`` or ``./indexes``."""
    return Path(os.environ.get("MVR_INDEX_DIR") or "indexes")


def home_folder(home=None) -> Path:
    """The folder of indexes ``home`` (a str or a path) as a Path; None or "": :func:`default_home`."""
    if not home:
        return default_home()
    if not isinstance(home, (str, os.PathLike)):
        raise ConfigError(f"home is the folder of indexes (a str or a path), got {type(home).__name__}.")
    return Path(home)


def available(home: Path | None = None) -> list[str]:
    home = home_folder(home)
    if not home.is_dir():
        return []
    return sorted(p.name for p in home.iterdir() if (p / MANIFEST).is_file() and not p.name.startswith("."))


def nameable(path) -> bool:
    """Whether ``path`` can name a file: its lone surrogates, if any, are what bytes of a file name
    that are not UTF-8 decode to (os.fsdecode), not text decoded wrongly."""
    try:
        os.fsencode(path)
    except UnicodeEncodeError:
        return False
    return True


def name_problem(name: str) -> str | None:
    """Why ``name`` is not a plain index name (one folder name, not hidden), or None when it is."""
    if not name:
        return "it is empty"
    if name.strip() != name:
        return "it starts or ends with white space"
    if not is_utf8(name):
        return "it is not UTF-8 text (it holds a lone surrogate such as '\\udc80')"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "it holds a control character"
    if name in (".", ".."):
        return f"{name!r} is not a folder name"
    if "/" in name or "\\" in name or (os.altsep and os.altsep in name):
        return "it holds a path separator"
    if name.startswith("."):
        return "it starts with '.', which mvr keeps for its own hidden staging folders"
    if len(name.encode("utf-8")) > 200:
        return "it is longer than 200 bytes (mvr's hidden folders add to it, and file systems stop at 255)"
    return None


def target_path(name: str | os.PathLike, home: Path | None = None) -> Path:
    """Where an index is written: a name (``str``) is a plain folder name under ``home``, so it
    cannot land elsewhere; a path is given explicitly as a ``pathlib.Path`` (any ``os.PathLike``)."""
    home = home_folder(home)
    if isinstance(name, os.PathLike):
        path = Path(os.fspath(name))
        if path.name in ("", ".", ".."):
            raise ConfigError(f"cannot write an index at {str(path)!r}: give the path of the index folder itself (e.g. {str(path / 'myindex')!r}).")
        return _utf8_path(path)
    if not isinstance(name, str):
        raise ConfigError(f"an index name must be a str (or a pathlib.Path to write at a path), not {type(name).__name__}.")
    problem = name_problem(name)
    if problem:
        raise ConfigError(
            f"invalid index name {name!r}: {problem}. A name is a plain folder name under the index home ({home}); "
            "to write an index at a path, give it as a path: pathlib.Path in Python, `mvr index --path PATH` on the command line."
        )
    return _utf8_path(home / name)


def _utf8_path(path: Path) -> Path:
    """``path`` where it is UTF-8 text from the root (Java, which writes the Lucene bm25 stage,
    takes paths as text), else a ConfigError before anything is encoded."""
    if not is_utf8(str(path.absolute())):
        raise ConfigError(f"cannot write an index at {str(path)!r}: mvr writes indexes only where the whole path is UTF-8 text (it holds bytes that are not); give another folder.")
    return path
