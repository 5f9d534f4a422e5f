"""Manifests: one ``manifest.json`` per directory (the index, and each first stage inside it) that
names its format and version and lists every file with its size and sha256. Written last, to a
temporary name, fsynced, then renamed into place: a crash leaves the old manifest or the new one."""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from pathlib import Path

from ..errors import IndexFormatError, IndexNotFoundError, is_number
from .formats import INDEX_FORMAT, LEGACY_VERSION, SEGMENT_FORMAT, rebuild_command

MANIFEST = "manifest.json"
SEGMENTS = "segments"  # the index folder's folder of segments (storage/commits.py)
SEGMENT_NAME = re.compile(r"^s\d{6,}$")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def index_folder(path: Path) -> Path:
    """The index folder that ``path`` (an index, one of its segments, or a first stage of one) is
    part of: what the `mvr` commands take, so what a message about a damaged file names."""
    path = Path(path)
    for segment in (path, path.parent):
        if SEGMENT_NAME.match(segment.name) and segment.parent.name == SEGMENTS and (segment.parent.parent / MANIFEST).is_file():
            return segment.parent.parent
    return path


def manifest_format(folder: Path) -> tuple[str | None, str]:
    """``(format, what)``: the "format" named by ``folder/manifest.json`` (None when there is no
    such file or it names none) and what the folder holds, in words for a message."""
    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError):
        return None, f"no {MANIFEST}"
    except (OSError, UnicodeDecodeError, ValueError):
        return None, f"a {MANIFEST} that is not JSON"
    found = data.get("format") if isinstance(data, dict) else None
    if not isinstance(found, str):
        return None, f'a {MANIFEST} with no "format"'
    return found, f"a {MANIFEST} of format {found!r}"


def read_manifest(path: Path, format_name: str = INDEX_FORMAT, format_version: int = LEGACY_VERSION) -> dict:
    """The manifest of an index (or of a part with its own manifest), after checking its format,
    version, the shape of its file list and that every listed file is there with its recorded size."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise IndexNotFoundError(f"{path} is a file, not an index folder: give the folder of an index (or its name).")
    file = path / MANIFEST
    part = format_name not in (INDEX_FORMAT, SEGMENT_FORMAT)  # a first stage's folder
    index = index_folder(path.parent if part else path)
    fix = f"rebuild it with `{rebuild_command(path.name, index)}`" if part else "rebuild it with `mvr index`"
    manifest = read_json_object(file, path, index, fix)
    if manifest.get("format") != format_name:
        raise IndexFormatError(f"{path} is not an {format_name} directory (format {manifest.get('format')!r}).")
    version = manifest.get("format_version")
    if version != format_version:
        newer = isinstance(version, int) and version > format_version
        hint = "upgrade mvr to read it" if newer else "rebuild it with this version of mvr"
        raise IndexFormatError(f"{path} has {format_name} format version {version!r}, this mvr reads {format_version}: {hint}.")
    for name, meta in _file_list(file, manifest.get("files"), index, fix).items():
        on_disk = path / name
        if not on_disk.is_file() or on_disk.stat().st_size != meta["bytes"]:
            found = f"{on_disk.stat().st_size} bytes" if on_disk.is_file() else "not there"
            raise IndexFormatError(
                f"{on_disk} is missing or has the wrong size ({found}, the manifest says {meta['bytes']}); the index is damaged: "
                f"`mvr info {index} --verify` checks all of it, then {fix}."
            )
    return manifest


def read_json_object(file: Path, path: Path, index: Path | None = None, fix: str = "rebuild it with `mvr index`") -> dict:
    """The JSON object in ``file`` (a manifest, pointer or commit of the folder ``path``, part of
    the index folder ``index``, by default :func:`index_folder`'s): a missing, unreadable, non-JSON
    or non-object file is a one-line error saying so, and ``fix`` (what repairs it)."""
    index = index_folder(path) if index is None else Path(index)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if index == path:
            raise IndexNotFoundError(f"{path} has no {file.name}: not an mvr index (or its build did not finish).") from None
        raise IndexFormatError(f"{file} is missing; the index is damaged: `mvr info {index} --verify` checks all of it, then {fix}.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IndexFormatError(f"{file} is damaged ({getattr(exc, 'msg', exc)}); `mvr info {index} --verify` checks all of it, then {fix}.") from None
    except OSError as exc:  # a folder, or unreadable
        raise IndexFormatError(f"{file} cannot be read ({exc.strerror or exc}); the index is damaged: {fix}.") from None
    if not isinstance(data, dict):
        raise IndexFormatError(f"{file} holds a JSON {type(data).__name__}, not an object of fields; the index is damaged: {fix}.")
    return data


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    """Flush every regular file and folder under ``folder`` to disk (a link, a pipe or a device a
    user left there is not opened: a dangling link fails to, a pipe waits for a writer for ever)."""
    for root, _dirs, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            if not stat.S_ISREG(os.lstat(path).st_mode):
                continue
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(root))


def _file_list(file: Path, files, index: Path, fix: str) -> dict:
    """``files`` of a manifest, checked: file name -> {"bytes": int >= 0, "sha256": 64 hex digits}.
    A name is a plain file name of the folder: checking or reading it never leaves the folder."""

    def wrong(what: str) -> IndexFormatError:
        return IndexFormatError(f"{file}: {what}; the manifest is damaged: `mvr info {index} --verify` checks all of it, then {fix}.")

    if not isinstance(files, dict):
        raise wrong(f"'files' must map file names to their bytes and sha256, got {type(files).__name__}")
    for name, meta in files.items():
        if not name or name in (".", "..") or "/" in name or "\\" in name:
            raise wrong(f"'files' lists {name!r}, which is not a file of this folder")
        if not isinstance(meta, dict):
            raise wrong(f"files[{name!r}] must be an object with 'bytes' and 'sha256', got {type(meta).__name__}")
        size, digest = meta.get("bytes"), meta.get("sha256")
        if not is_number(size, whole=True) or size < 0:
            raise wrong(f"files[{name!r}].bytes must be a byte count, got {size!r}")
        if not isinstance(digest, str) or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise wrong(f"files[{name!r}].sha256 must be 64 hex digits, got {digest!r}")
    return files


def verify(path: Path, manifest: dict) -> list[str]:
    """Names of the files whose sha256 differs from the manifest's (empty when intact)."""
    return [name for name, meta in manifest["files"].items() if sha256_file(Path(path) / name) != meta["sha256"]]


def write_manifest(folder: Path, manifest: dict, known_sha256: dict[str, str] | None = None) -> None:
    """Checksum every file of ``folder`` into ``manifest["files"]`` (``known_sha256``: digests
    already computed, by file name), then write the manifest atomically (temporary name, fsync,
    rename)."""
    known_sha256 = known_sha256 or {}
    manifest["files"] = {
        p.name: {"bytes": p.stat().st_size, "sha256": known_sha256.get(p.name) or sha256_file(p)} for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".mvr-")  # mvr's own marks are not index data
    }
    temp = folder / (MANIFEST + ".tmp")
    with open(temp, "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, folder / MANIFEST)
