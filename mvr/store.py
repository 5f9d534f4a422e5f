"""The index directory on disk.

An index is a directory of ``.npy`` arrays (memory-mapped on open) and blobs, described by one
``manifest.json`` (format version, full config, encoder identity, counts, checksums):

    manifest.json        written last, to a temporary name, then renamed
    vectors.npy          float16 (n_tokens, dim): every document's token vectors, in corpus order
    doc_offsets.npy      int64 (n_docs + 1,): document i owns rows doc_offsets[i]:doc_offsets[i+1]
    doc_ids.npy          unicode (n_docs,): external ids, in corpus order
    doc_ids_order.npy    int64 (n_docs,): argsort of doc_ids, for searchsorted id lookups
    text.bin, text_offsets.npy     UTF-8 document texts and their byte offsets
    title.bin, title_offsets.npy   UTF-8 titles and their byte offsets
    projection.npy       float32 (model_dim, dim), only with PCA

A build writes everything into a hidden sibling directory and swaps it in only once complete,
so a failed build leaves any existing index of the same name untouched.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .errors import IndexExistsError, IndexFormatError, IndexNotFoundError

FORMAT_NAME = "mvr-index"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


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


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(path: Path, format_name: str = FORMAT_NAME, format_version: int = FORMAT_VERSION) -> dict:
    """The manifest of an index (or of a part with its own manifest), after checking its format,
    version and that every listed file is there with its recorded size."""
    file = path / MANIFEST
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise IndexNotFoundError(f"{path} has no {MANIFEST}: not an mvr index (or its build did not finish).") from None
    except json.JSONDecodeError as exc:
        raise IndexFormatError(f"{file} is damaged ({exc.msg}); rebuild the index with `mvr index`.") from None
    if manifest.get("format") != format_name:
        raise IndexFormatError(f"{path} is not an {format_name} directory (format {manifest.get('format')!r}).")
    version = manifest.get("format_version")
    if version != format_version:
        newer = isinstance(version, int) and version > format_version
        hint = "upgrade mvr to read it" if newer else "rebuild it with this version of mvr"
        raise IndexFormatError(f"{path} has {format_name} format version {version!r}, this mvr reads {format_version}: {hint}.")
    for name, meta in manifest.get("files", {}).items():
        on_disk = path / name
        if not on_disk.is_file() or on_disk.stat().st_size != meta["bytes"]:
            raise IndexFormatError(f"{on_disk} is missing or has the wrong size; the index is damaged, rebuild it.")
    return manifest


def verify(path: Path, manifest: dict) -> list[str]:
    """Names of the files whose sha256 differs from the manifest's (empty when intact)."""
    return [name for name, meta in manifest["files"].items() if sha256_file(path / name) != meta["sha256"]]


def write_manifest(folder: Path, manifest: dict, known_sha256: dict[str, str] | None = None) -> None:
    """Checksum every file of ``folder`` into ``manifest["files"]`` (``known_sha256``: digests
    already computed, by file name), then write the manifest atomically (temporary name, fsync,
    rename)."""
    known_sha256 = known_sha256 or {}
    manifest["files"] = {
        p.name: {"bytes": p.stat().st_size, "sha256": known_sha256.get(p.name) or sha256_file(p)} for p in sorted(folder.iterdir()) if p.is_file()
    }
    temp = folder / (MANIFEST + ".tmp")
    with open(temp, "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, folder / MANIFEST)


class BlobWriter:
    """Appends UTF-8 strings to ``NAME.bin`` and keeps their byte offsets."""

    def __init__(self, folder: Path, name: str):
        self.name = name
        self.folder = folder
        self.handle = open(folder / f"{name}.bin", "wb")
        self.offsets = [0]

    def add(self, value: str) -> None:
        data = value.encode("utf-8")
        self.handle.write(data)
        self.offsets.append(self.offsets[-1] + len(data))

    def close(self) -> None:
        self.handle.close()
        np.save(self.folder / f"{self.name}_offsets.npy", np.asarray(self.offsets, dtype=np.int64))


class Blob:
    """Read side of :class:`BlobWriter`: ``blob[i]`` is the i-th string."""

    def __init__(self, folder: Path, name: str):
        self.offsets = np.load(folder / f"{name}_offsets.npy", mmap_mode="r")
        size = int(self.offsets[-1])
        self.data = np.memmap(folder / f"{name}.bin", dtype=np.uint8, mode="r") if size else np.zeros(0, np.uint8)

    def __getitem__(self, i: int) -> str:
        return bytes(self.data[int(self.offsets[i]) : int(self.offsets[i + 1])]).decode("utf-8")

    def __len__(self) -> int:
        return len(self.offsets) - 1


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
