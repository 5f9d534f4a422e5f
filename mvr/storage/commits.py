"""Commits: which segments make an index, and which of their documents are deleted (Lucene's model).

An index of format version 2 is a folder of immutable segments and generation-numbered commits:

    manifest.json                  the pointer: {"format": "mvr-index", "format_version": 2,
                                   "generation": N, "commit": "commit-0000000N.json", "index_id":
                                   drawn by the index's first commit, carried by every commit}
    commit-0000000N.json           format "mvr-commit": config, encoder, and the segments of
                                   generation N, each with its deletion bitmap (or none)
    segments/sXXXXXX/              one segment: a token store, ids, texts, metadata and its own
                                   first stages, with a manifest of format "mvr-segment"
    segments/sXXXXXX/deletes-0000000N.npy   the rows of that segment deleted as of generation N
                                   (np.packbits of a bool per document); a new one per change

A commit writes its new files and fsyncs them and their folders, writes ``commit-N.json`` the
same way, then replaces ``manifest.json`` with ``os.replace`` (fsynced with its folder). A kill
at any point leaves the previous pointer, which names a commit whose files are all there: new
files are only ever added beside them. Files that no commit in use names (a killed writer's
segment, commits and bitmaps that newer ones replaced) are collected by the writer: when it
starts, and after each commit.

Readers pin a commit: an open :class:`~mvr.index.Index` holds a shared ``flock`` on its commit
file, and the collector skips every commit that someone holds (a ``LOCK_EX | LOCK_NB`` that
fails), with the segments and bitmaps it names. A reader that loses the race with a collection
(its commit removed between reading the pointer and locking the file) reads the pointer again.
"""

from __future__ import annotations

import fcntl
import glob
import json
import os
import re
import secrets
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..errors import IndexFormatError, IndexNotFoundError, is_number
from ..threads import load_npy
from .formats import COMMIT_FORMAT, COMMIT_VERSION, INDEX_FORMAT
from .layout import _recover
from .manifest import MANIFEST, SEGMENT_NAME as _SEGMENT, SEGMENTS, fsync_dir, index_folder, read_json_object, sha256_file

_COMMIT = re.compile(r"^commit-(\d{8,})\.json$")
DELETES = re.compile(r"^deletes-(\d{8,})\.npy$")


def commit_name(generation: int) -> str:
    return f"commit-{generation:08d}.json"


def segment_name(number: int) -> str:
    return f"s{number:06d}"


def write_atomic(path: Path, write) -> None:
    """What ``write(handle)`` writes, into ``path`` atomically: ``NAME.tmp``, fsync, ``os.replace``, fsync of the folder."""
    temp = path.with_name(path.name + ".tmp")
    with open(temp, "wb") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, path)
    fsync_dir(path.parent)


def write_json(path: Path, data: dict) -> None:
    """``data`` into ``path`` atomically (:func:`write_atomic`)."""
    write_atomic(path, lambda handle: handle.write(json.dumps(data, indent=2).encode("utf-8")))


def read_pointer(path: Path) -> dict:
    """The index's ``manifest.json``: the pointer of a version-2 index, or a version-1 manifest whole."""
    data = read_json_object(Path(path) / MANIFEST, Path(path))
    if data.get("format") != INDEX_FORMAT:
        raise IndexFormatError(f"{path} is not an {INDEX_FORMAT} directory (format {data.get('format')!r}).")
    version = data.get("format_version")
    if version not in (1, 2):
        newer = isinstance(version, int) and version > 2
        hint = "upgrade mvr to read it" if newer else "rebuild it with this version of mvr"
        raise IndexFormatError(f"{path} has {INDEX_FORMAT} format version {version!r}, this mvr reads 1 and 2: {hint}.")
    if version == 2:
        generation, name = data.get("generation"), data.get("commit")
        if not is_number(generation, whole=True) or generation < 1 or name != commit_name(generation if isinstance(generation, int) else 0):
            raise IndexFormatError(f"{Path(path) / MANIFEST}: 'generation' and 'commit' do not name a commit (got {generation!r}, {name!r}); the index is damaged.")
    return data


def current_pointer(path: Path, patience: float = 1.0) -> tuple[dict, tuple]:
    """The pointer of the index at ``path`` and which index it is (:func:`index_identity`). While a
    rebuild's swap (storage/layout.py, ``StagingDir.commit``) has renamed the old folder away and not
    yet the new one in, a missing index is looked for again for up to ``patience`` seconds; a swap
    killed between its renames left the old folder hidden: it is put back, as opening does."""
    deadline, restored = time.monotonic() + patience, False
    while True:
        try:
            pointer = read_pointer(path)
            identity = index_identity(path, pointer)  # the pointer carries the index_id as its commit does
        except FileNotFoundError:  # IndexNotFoundError too
            identity = None
        if identity is not None:
            return pointer, identity
        swapping, late = any(Path(path).parent.glob(f".{glob.escape(Path(path).name)}.old-*")), time.monotonic() > deadline
        if not swapping or (late and (restored or not _recover(Path(path)))):  # no swap under way, or one that neither ends nor can be undone
            raise IndexNotFoundError(f"there is no index at {path} any more: it was removed, or is being rebuilt; open it again once it is there.")
        restored = restored or late
        time.sleep(0.02)


def index_identity(path: Path, record: dict) -> tuple | None:
    """Which index the commit ``record`` (or pointer) is of: its folder (device, inode) and the
    ``index_id`` its first commit drew, as a removed folder's inode number may come back (None: gone)."""
    try:
        return (*folder_identity(path), record.get("index_id"))
    except FileNotFoundError:
        return None


def folder_identity(path: Path) -> tuple[int, int]:
    """Which folder stands at ``path`` (device, inode): a rebuild renames a new one into its place."""
    return (found := os.stat(path)).st_dev, found.st_ino


def check_same_files(path: Path, files: dict, index_name: str) -> None:
    """IndexNotFoundError unless the segment folder at ``path`` still holds the ``files`` (its manifest's
    list, with hashes) a reader opened: after ``mvr index --overwrite`` it holds another index's files
    under the same names, or none, which a reader of the old commit must not open lazily."""
    try:
        same = json.loads((Path(path) / MANIFEST).read_text(encoding="utf-8")).get("files") == files
    except (OSError, ValueError, AttributeError):
        same = False
    if not same:
        raise IndexNotFoundError(f"index {index_name!r} was rebuilt or removed since this reader opened it ({path} no longer holds the files it read): "
                                 "refresh() moves it to the index there now (mvr serve does so before each request), or open it again.")


def read_commit(path: Path, generation: int) -> dict:
    """The commit ``generation`` of the index at ``path``, its fields checked."""
    file = Path(path) / commit_name(generation)
    commit = read_json_object(file, Path(path))
    check_commit(file, commit, generation)
    return commit


def missing_commit(path: Path, generation: int) -> IndexFormatError:
    """The error for the commit ``generation``, which the pointer of the index at ``path`` names, not there."""
    return IndexFormatError(f"{Path(path) / commit_name(generation)}: missing, though {Path(path) / MANIFEST} names it as the index's current commit; "
                            "the index is damaged: restore that file from a backup, or rebuild the index with `mvr index`.")


def check_commit(file: Path, commit, generation: int) -> None:
    def wrong(what: str) -> IndexFormatError:
        return IndexFormatError(f"{file}: {what}; the commit is damaged: `mvr info {file.parent} --verify` checks all of it.")

    if not isinstance(commit, dict) or commit.get("format") != COMMIT_FORMAT:
        raise wrong(f"not an {COMMIT_FORMAT} file")
    if commit.get("format_version") != COMMIT_VERSION:
        raise wrong(f"format version {commit.get('format_version')!r}, this mvr reads {COMMIT_VERSION}")
    if commit.get("generation") != generation:
        raise wrong(f"it says generation {commit.get('generation')!r}, its name {generation}")
    for key in ("config", "encoder"):
        if not isinstance(commit.get(key), dict):
            raise wrong(f"'{key}' must be an object")
    segments = commit.get("segments")
    if not isinstance(segments, list):
        raise wrong("'segments' must be a list")
    for i, seg in enumerate(segments):
        if not isinstance(seg, dict) or not isinstance(seg.get("name"), str) or not _SEGMENT.match(seg["name"]):
            raise wrong(f"segments[{i}] has no valid name")
        for key in ("documents", "deleted"):
            if not is_number(seg.get(key), whole=True) or not 0 <= seg[key]:
                raise wrong(f"segments[{i}].{key} must be a whole number >= 0")
        if seg["deleted"] > seg["documents"]:
            raise wrong(f"segments[{i}] deletes more documents than it holds")
        deletes = seg.get("deletes")
        if deletes is not None and not (isinstance(deletes, dict) and isinstance(deletes.get("file"), str) and DELETES.match(deletes["file"]) and isinstance(deletes.get("sha256"), str)):
            raise wrong(f"segments[{i}].deletes must be null or name a deletes-N.npy file with its sha256")
    if not isinstance(commit.get("next_segment"), int):
        raise wrong("'next_segment' must be a whole number")


def new_commit(previous: dict | None, generation: int, segments: list[dict], operation: str, **fields) -> dict:
    """The commit that follows ``previous`` (config, encoder, search presets and the segment counter carried over)."""
    from .. import __version__

    base = {k: v for k, v in (previous or {}).items() if k in ("config", "encoder", "next_segment", "search", "index_id", "metadata_fields")}
    if previous is None:  # a new index (a build, a conversion): which one stands at a path, whatever its folder's inode
        base["index_id"] = secrets.token_hex(8)
    return {
        "format": COMMIT_FORMAT,
        "format_version": COMMIT_VERSION,
        "generation": generation,
        "mvr_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "operation": operation,
        **base,
        **fields,
        "segments": segments,
    }


def publish(path: Path, commit: dict) -> None:
    """Make ``commit`` the index's current one: its file first, then the pointer (each fsynced)."""
    generation = commit["generation"]
    write_json(Path(path) / commit_name(generation), commit)
    pointer = {"format": INDEX_FORMAT, "format_version": 2, "generation": generation, "commit": commit_name(generation)}
    write_json(Path(path) / MANIFEST, {**pointer, "index_id": commit["index_id"]} if "index_id" in commit else pointer)


# -- deletion bitmaps ------------------------------------------------------------------------
def write_deletes(segment: Path, generation: int, deleted: np.ndarray) -> dict:
    """Save the bool ``deleted`` of a segment as ``deletes-GEN.npy`` (packed bits, fsynced); its commit entry."""
    file = Path(segment) / f"deletes-{generation:08d}.npy"
    with open(file, "wb") as handle:
        np.save(handle, np.packbits(np.asarray(deleted, dtype=bool)))
        handle.flush()
        os.fsync(handle.fileno())
    fsync_dir(file.parent)
    return {"file": file.name, "bytes": file.stat().st_size, "sha256": sha256_file(file)}


def read_deletes(segment: Path, entry: dict | None, n_docs: int) -> np.ndarray:
    """bool ``(n_docs,)``: which rows of the segment are deleted (all False without a bitmap)."""
    if entry is None:
        return np.zeros(n_docs, dtype=bool)
    file = Path(segment) / entry["file"]
    try:
        bits = load_npy(file)
    except (OSError, ValueError) as error:
        raise IndexFormatError(f"{file}: the deletion bitmap cannot be read ({error}); the index is damaged: `mvr info {index_folder(segment)} --verify` checks all of it.") from None
    if bits.dtype != np.uint8 or bits.shape != ((n_docs + 7) // 8,):
        raise IndexFormatError(f"{file}: the deletion bitmap does not cover the segment's {n_docs} documents; the index is damaged: `mvr info {index_folder(segment)} --verify` checks all of it.")
    return np.unpackbits(bits, count=n_docs).astype(bool)


# -- readers' pins ---------------------------------------------------------------------------
class Pin:
    """A shared ``flock`` on a commit file: the collector leaves that commit and its files alone."""

    _close = staticmethod(os.close)  # held by the class: at interpreter exit __del__ may run after the module's globals are None

    def __init__(self, path: Path, generation: int):
        self.generation, self._fd = generation, None
        fd = os.open(Path(path) / commit_name(generation), os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            if os.fstat(fd).st_nlink == 0:  # collected between open and lock
                raise FileNotFoundError(commit_name(generation))
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            self._close(self._fd)
            self._fd = None

    def __del__(self):
        self.release()


def pin_current(path: Path, attempts: int = 100) -> tuple[dict, dict | None, Pin | None]:
    """``(pointer, commit, pin)`` of the index's current commit, pinned; a version-1 index gives
    ``(manifest, None, None)``. A commit is collected only once the pointer names a newer one: one
    that is not there while the pointer still names it never was (or was removed by hand)."""
    for _ in range(attempts):
        pointer = read_pointer(path)
        if pointer["format_version"] == 1:
            return pointer, None, None
        generation = pointer["generation"]
        try:
            pin = Pin(path, generation)
        except FileNotFoundError:
            if read_pointer(path).get("generation") == generation and not (Path(path) / commit_name(generation)).exists():
                raise missing_commit(path, generation) from None
            continue  # collected meanwhile: the pointer has moved on
        except BlockingIOError:
            continue  # being collected: the pointer has moved on
        try:
            return pointer, read_commit(path, generation), pin
        except BaseException:
            pin.release()
            raise
    raise IndexFormatError(f"{path}: its commit kept changing while being opened; try again.")


def pin_commit(path: Path, generation: int) -> tuple[dict, Pin]:
    """``(commit, pin)`` of the commit ``generation`` of the index at ``path``, pinned: another
    reader of a commit that one process holds (a shard of a sharded index), current or not."""
    try:
        pin = Pin(path, generation)
    except (FileNotFoundError, BlockingIOError):
        raise IndexFormatError(f"{Path(path) / commit_name(generation)}: no longer there (the index changed and nothing held it); open the index again.") from None
    try:
        return read_commit(path, generation), pin
    except BaseException:
        pin.release()
        raise


def collect(path: Path, current: dict) -> list[str]:
    """Remove what no commit in use names (the writer calls this, holding the index's lock):
    commit files other than ``current`` that no reader pins, and the segments and deletion bitmaps
    that neither ``current`` nor a pinned commit names. Returns what was removed."""
    path = Path(path)
    keep_segments: set[str] = set()
    keep_files: set[tuple[str, str]] = set()

    def keep(commit: dict) -> None:
        for seg in commit["segments"]:
            keep_segments.add(seg["name"])
            if seg.get("deletes"):
                keep_files.add((seg["name"], seg["deletes"]["file"]))

    keep(current)
    removed = []
    for entry in sorted(path.iterdir()):
        match = _COMMIT.match(entry.name)
        if entry.name.endswith(".json.tmp") and (_COMMIT.match(entry.name[:-4]) or entry.name == MANIFEST + ".tmp"):
            entry.unlink(missing_ok=True)
            continue
        if not match or int(match[1]) == current["generation"]:
            continue
        fd = os.open(entry, os.O_RDONLY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # a reader holds it
                try:
                    keep(read_commit(path, int(match[1])))
                except (IndexFormatError, OSError):
                    pass
                continue
            entry.unlink()  # replaced, or written by a killed writer and never published
            removed.append(entry.name)
        finally:
            os.close(fd)
    folder = path / SEGMENTS
    if folder.is_dir():
        for seg in sorted(folder.iterdir()):
            if not _SEGMENT.match(seg.name) or seg.is_symlink() or not seg.is_dir():
                continue
            if seg.name not in keep_segments:
                shutil.rmtree(seg, ignore_errors=True)
                removed.append(f"{SEGMENTS}/{seg.name}")
                continue
            for item in seg.iterdir():
                if DELETES.match(item.name) and (seg.name, item.name) not in keep_files:
                    item.unlink(missing_ok=True)
                    removed.append(f"{SEGMENTS}/{seg.name}/{item.name}")
    if removed:
        fsync_dir(path)
    return removed
