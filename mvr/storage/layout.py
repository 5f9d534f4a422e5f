"""Where indexes live and how a directory is replaced whole.

An index is a directory of ``.npy`` arrays (memory-mapped on open) and blobs, described by one
``manifest.json`` (storage/manifest.py); its parts and their formats are listed in
storage/formats.py. A build writes everything into a hidden sibling directory and swaps it in
only once complete, so a failed build leaves any existing index of the same name untouched.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from ..errors import IndexExistsError, IndexNotFoundError
from .manifest import MANIFEST, write_manifest


def default_home() -> Path:
    """Where indexes are built and found by name: ``$MVR_INDEX_DIR`` or ``./indexes``."""
    return Path(os.environ.get("MVR_INDEX_DIR") or "indexes")


def available(home: Path | None = None) -> list[str]:
    home = Path(home) if home else default_home()
    if not home.is_dir():
        return []
    return sorted(p.name for p in home.iterdir() if (p / MANIFEST).is_file() and not p.name.startswith("."))


def locate(name_or_path: str | os.PathLike, home: Path | None = None) -> Path:
    """The directory of an existing index, given a path to it or a name under ``home``."""
    candidate = Path(name_or_path)
    if (candidate / MANIFEST).is_file():
        return candidate
    named = (Path(home) if home else default_home()) / str(name_or_path)
    if (named / MANIFEST).is_file():
        return named
    names = available(home)
    known = f" Indexes in {Path(home) if home else default_home()}: {', '.join(names)}." if names else ""
    raise IndexNotFoundError(
        f"no index named or at {str(name_or_path)!r}.{known} Build one with `mvr index CORPUS --name NAME`."
    )


def target_path(name: str, home: Path | None = None) -> Path:
    """Where an index called ``name`` (or at path ``name``) is written."""
    if not name or name.strip() != name:
        raise IndexNotFoundError(f"invalid index name {name!r}.")
    path = Path(name)
    if path.is_absolute() or len(path.parts) > 1:
        return path
    return (Path(home) if home else default_home()) / name


class StagingDir:
    """A hidden directory beside ``target`` that becomes ``target`` on :meth:`commit`.

    Use as a context manager: leaving it without commit (an exception) removes the staging
    directory and leaves ``target`` as it was.
    """

    def __init__(self, target: Path, overwrite: bool):
        self.target = Path(target)
        if (self.target / MANIFEST).is_file() and not overwrite:
            raise IndexExistsError(f"an index already exists at {self.target}; pass overwrite=True (CLI: --overwrite) to replace it.")
        if self.target.exists() and not (self.target / MANIFEST).is_file() and any(self.target.iterdir()):
            raise IndexExistsError(f"{self.target} exists and is not an mvr index; choose another name or remove it.")
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.building-", dir=self.target.parent))

    def __enter__(self) -> "StagingDir":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.path.exists():
            shutil.rmtree(self.path, ignore_errors=True)

    def write_manifest(self, manifest: dict, known_sha256: dict[str, str] | None = None) -> None:
        write_manifest(self.path, manifest, known_sha256)

    def commit(self) -> Path:
        """Swap the finished index in place of ``target``; the old one is removed afterwards."""
        old = None
        if self.target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.old-", dir=self.target.parent))
            os.rmdir(old)
            os.replace(self.target, old)
        os.replace(self.path, self.target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.target
