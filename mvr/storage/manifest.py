"""Manifests: one ``manifest.json`` per directory (the index, and each first stage inside it) that
names its format and version and lists every file with its size and sha256. Written last, to a
temporary name, fsynced, then renamed into place: a crash leaves the old manifest or the new one."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..errors import IndexFormatError, IndexNotFoundError
from .formats import INDEX_FORMAT, INDEX_VERSION

MANIFEST = "manifest.json"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()



def read_manifest(path: Path, format_name: str = INDEX_FORMAT, format_version: int = INDEX_VERSION) -> dict:
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
