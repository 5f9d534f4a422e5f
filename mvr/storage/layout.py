"""How an index directory is written and replaced whole (its name and home: storage/names.py).

An index is a directory of ``.npy`` arrays (memory-mapped on open) and blobs, described by one
``manifest.json`` (storage/manifest.py); its parts and their formats are listed in
storage/formats.py. A build writes everything into a hidden sibling directory and swaps it in
only once complete, so a failed build leaves any existing index of the same name untouched.

Beside the index ``HOME/NAME``, mvr keeps only hidden entries of its own (a name never starts
with ``.``): ``.NAME.mvr-lock``, the writer lock (storage/lock.py); ``.NAME.building-PID-xxxxxxxx``,
a build in progress; and ``.NAME.old-PID-xxxxxxxx``, the index being replaced, for the instant
between the two renames of a swap. A killed build leaves them behind: the next writer in the home
(a build, or a change of any index there) removes what no live writer holds, and puts back a
hidden old copy whose target is missing (so does :func:`locate`). A build folder with encoded
chunks (mvr/encoding.py) is kept for the next build of its name: it goes on (``--resume``) or goes."""

from __future__ import annotations

import json
import os
import re
import shutil
import secrets
import sys
import time
from pathlib import Path

from ..errors import IndexExistsError, IndexFormatError, IndexNotFoundError, shown
from .formats import INDEX_FORMAT, SEGMENT_FORMAT
from .lock import WriterLock
from .manifest import MANIFEST, SEGMENT_NAME, SEGMENTS, fsync_dir, fsync_tree, manifest_format, write_manifest
from .names import available, home_folder, name_problem, nameable

# mkdtemp's random part is 8 characters of [a-z0-9_]; folders from before the PID was added lack it
LEFTOVER = re.compile(r"^\.(?P<name>.+?)(?:\.(?P<kind>building|old)-(?:\d+-)?[a-z0-9_]{8}|\.(?P<lock>mvr-lock))$")
STAGING_MARK = ".mvr-staging"  # in every staging folder mvr makes: cleanup removes only those (never another program's of a like name)
REMOVING_MARK = ".mvr-removing"  # an old copy's manifest, renamed as its removal starts: never put back, still ours to remove
_RECORDS = "segments/*/resume"  # mvr/checkpoints.py's records of what a build encoded


def _resumable(folder: Path, chunks: bool = True) -> bool:
    """Whether the build folder ``folder`` can be resumed: it recorded its settings and (``chunks``) encoded chunks."""
    return any((records / "build.json").is_file() and (not chunks or any(records.glob("chunk-*.npz"))) for records in folder.glob(_RECORDS))


def _new_folder(home: Path, prefix: str) -> Path:
    """A new folder ``prefix`` + 8 random characters in ``home``, of the umask's mode (not mkdtemp's 0700)."""
    while True:
        folder = home / (prefix + secrets.token_hex(4))
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue


def locate(name_or_path: str | os.PathLike, home: Path | None = None, *, wait: float = 5.0) -> Path:
    """The directory of an existing index, given a path to it or a name under ``home``. An index
    whose rebuild was killed between the two renames of its swap is renamed back first (when a
    live writer holds the name, after up to ``wait`` seconds for it to finish its own swap)."""
    explicit, home = bool(home), home_folder(home)
    given, named = Path(name_or_path), home / str(name_or_path)
    if not nameable(given) or not nameable(named):  # text decoded wrongly: no file system can be asked for it
        raise IndexNotFoundError(f"no index named or at {str(name_or_path)!r}: it holds a lone surrogate, which no file name has; `mvr list` shows the indexes.")
    if any(len(os.fsencode(part)) > 255 for part in given.parts):  # no file system holds such a folder (asking it raised "File name too long")
        raise IndexNotFoundError(f"no index named or at {shown(str(name_or_path), 60)}: a folder name is at most 255 bytes (an index name 200); `mvr list` shows the indexes.")
    plain = isinstance(name_or_path, str) and name_problem(name_or_path) is None
    for folder in (named, given) if plain and explicit else (given, named):  # a name with a home given is the home's, whatever ./NAME holds
        if (folder / MANIFEST).is_file():
            return folder
    for folder in (named, given) if plain else (given,):
        if _recover(folder, wait=wait):
            return folder
    if given.is_file():
        raise IndexNotFoundError(f"{given} is a file, not an index folder; give the folder of an index, or a name (`mvr list`).")
    if plain and home.exists() and not home.is_dir():
        raise IndexNotFoundError(f"the index home {home} (--index-dir, $MVR_INDEX_DIR) is a file, not a folder; give the folder that holds your indexes.")
    for folder in (given, named) if plain else (given,):
        if folder.is_dir() and (folder / SEGMENTS).is_dir() and any(folder.glob("commit-*.json")):
            raise IndexFormatError(f"{folder} holds an index's commits and segments but no {MANIFEST}, the pointer to its newest commit: "
                                   f"the index is damaged, its data still there; restore {MANIFEST} from a backup of the folder.")
    hidden = _hidden_copies(named if plain else given, (INDEX_FORMAT,))
    names = available(home)
    known = f" Indexes in {home}: {', '.join(names)}." if names else ""
    kept = f" An intact copy, hidden by an interrupted rebuild, is at {hidden[0]}: rename it to use it." if hidden else ""
    raise IndexNotFoundError(f"no index named or at {str(name_or_path)!r}.{known}{kept} Build one with `mvr index CORPUS --name NAME`.")


class StagingDir:
    """A hidden directory beside ``target`` that becomes ``target`` on :meth:`commit`.

    Holds the writer lock of ``target``'s name from creation to commit (a second writer gets
    :class:`IndexLockedError`). Replaces only an index (a folder whose manifest.json says so) or
    an empty folder (:func:`check_replaceable`). As a context manager, leaving without commit (an
    exception) removes the staging directory (unless it recorded encoded chunks) and leaves
    ``target`` as it was. ``resume``: go on in the folder an interrupted build of ``target`` left
    (:attr:`resumed`), else remove it. ``wait``: seconds to wait for another writer's lock."""

    def __init__(self, target: Path, overwrite: bool, resume: bool = False, wait: float = 0.0):
        self.target = Path(target)
        home = self.target.parent
        try:
            home.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise IndexExistsError(f"cannot make {home}: a file stands in the way of the folder it needs; choose another path.") from None
        self._lock = WriterLock(home, self.target.name, f"index {self.target.name!r}").acquire(wait)
        try:
            tidy(home, self._lock)
            check_replaceable(self.target, (INDEX_FORMAT,), overwrite)  # before anything of this name is removed: a refused build removes nothing
            left = _builds_left(home, self.target.name)
            adopted = next((p for p in left if _resumable(p, chunks=False)), None) if resume else None
            for stale in left:
                if stale != adopted:
                    _remove_marked(stale, STAGING_MARK)
            self.resumed = adopted is not None
            self.path = adopted or _new_folder(home, f".{self.target.name}.building-{os.getpid()}-")
            (self.path / STAGING_MARK).write_text(f"{os.getpid()}\n")
        except BaseException:
            self._lock.release()
            raise

    def __enter__(self) -> "StagingDir":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is not None and self.path.exists() and _resumable(self.path):
                print(f"mvr: what this build encoded is kept in {self.path}: `--resume` (resume=True) goes on from there, a build of {self.target.name!r} without it removes it", file=sys.stderr)
            elif self.path.exists():
                _remove_marked(self.path, STAGING_MARK)
        finally:
            self._lock.release()

    def write_manifest(self, manifest: dict, known_sha256: dict[str, str] | None = None) -> None:
        write_manifest(self.path, manifest, known_sha256)

    def commit(self) -> Path:
        """Swap the finished index in place of ``target`` (the old one is removed afterwards), then
        release the lock. Each rename is fsynced with its folder and parent; a kill between the two
        leaves the old copy hidden, and the next :func:`locate` or writer renames it back."""
        if not self._lock.held:
            raise RuntimeError(f"{self.path} was already committed or abandoned")
        home = self.target.parent
        check_replaceable(self.target, (INDEX_FORMAT,), True)  # what stands at the target now (another program may have filled it during the build)
        fsync_tree(self.path)  # the files must be on disk before a rename publishes them
        old = None
        if self.target.exists() or self.target.is_symlink():
            old = home / f".{self.target.name}.old-{os.getpid()}-{secrets.token_hex(4)}"  # a name only: a kill leaves no empty folder
            os.replace(self.target, old)
            fsync_dir(old)
            fsync_dir(home)
        try:
            os.replace(self.path, self.target)
        except BaseException:
            if old is not None and not self.target.exists():
                os.replace(old, self.target)
            raise
        (self.target / STAGING_MARK).unlink(missing_ok=True)  # the mark goes once published: a kill before leaves it on a folder cleanup removes
        fsync_dir(self.target)
        fsync_dir(home)
        if old is not None:
            _remove_copy(old)
        self._lock.release()
        return self.target


def check_replaceable(target: Path, formats: tuple[str, ...], overwrite: bool, damaged: bool = False) -> None:
    """IndexExistsError unless ``target`` may be replaced by mvr: missing, an empty folder, or
    (``overwrite``) a folder whose manifest.json names one of ``formats`` (``damaged``: or is
    missing or unreadable, as in a first stage of mvr's own segment), and no index inside another."""
    inside = next((p for p in target.resolve().parents if manifest_format(p)[0] in (INDEX_FORMAT, SEGMENT_FORMAT)), None) if INDEX_FORMAT in formats else None
    if inside is not None:  # its next write would take the folder for a segment of its own, or call it damaged
        raise IndexExistsError(f"{target} is inside the index {inside}; write an index in a folder of its own, outside any other.")
    if target.is_symlink():
        raise IndexExistsError(f"{target} is a symbolic link; mvr writes an index only into a folder of its own: give the link's target or another name.")
    if not target.exists():
        return
    if not target.is_dir():
        raise IndexExistsError(f"{target} exists and is a file, not an mvr index; choose another name or path.")
    found, what = manifest_format(target)
    if found in formats or (found is None and damaged):
        if not overwrite:
            raise IndexExistsError(f"an index already exists at {target}; replace it with --overwrite (overwrite=True in Python).")
        foreign = foreign_entries(target) if found == INDEX_FORMAT else []
        if foreign:  # the folder is replaced whole: they would go with it
            raise IndexExistsError(f"{target} holds what mvr did not write there ({', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}); "
                                   "move it out of the index's folder, then overwrite the index (its folder is replaced whole).")
        return
    if not (target / MANIFEST).exists() and not any(target.iterdir()):
        return  # an empty folder holds nothing to lose
    raise IndexExistsError(
        f"{target} is not an mvr index (it holds {what}, expected a manifest.json of format {' or '.join(map(repr, formats))}); "
        "mvr will not replace a folder it did not create: choose another name or path, or remove that folder yourself."
    )


_INDEX_ENTRY = re.compile(r"^(manifest\.json|commit-\d{8,}\.json)(\.tmp)?$")  # what mvr writes beside segments/ (storage/commits.py)


def foreign_entries(target: Path) -> list[str]:
    """What the folder of an index of segments holds that mvr did not write there (a user's notes,
    runs, a folder of their own, also inside segments/). A version-1 index, one folder of mvr's
    files, is not looked into (``mvr upgrade`` keeps what else it holds)."""
    try:
        if json.loads((target / MANIFEST).read_text(encoding="utf-8")).get("format_version", 1) < 2:
            return []
    except (OSError, ValueError, AttributeError, TypeError):
        return []
    found = [e.name for e in target.iterdir() if not _INDEX_ENTRY.match(e.name) and e.name not in (SEGMENTS, REMOVING_MARK, STAGING_MARK)]
    if (target / SEGMENTS).is_dir():
        found += [f"{SEGMENTS}/{e.name}" for e in (target / SEGMENTS).iterdir() if not SEGMENT_NAME.match(e.name) or e.is_symlink() or not e.is_dir()]
    return sorted(found)


def ours(entry: Path, formats: tuple[str, ...]) -> bool:
    """Whether ``entry``, named as a leftover of a swap (:data:`LEFTOVER`), is provably mvr's: a
    lock file, a build folder with its mark, a replaced copy (a manifest of one of ``formats``, or
    the mark of its removal). Another program's file of a like name is not."""
    match = LEFTOVER.match(entry.name)
    if match is None or entry.is_symlink():
        return False
    if match["lock"] or not entry.is_dir():
        return bool(match["lock"]) and entry.is_file()
    if match["kind"] == "building":
        return (entry / STAGING_MARK).is_file()
    return manifest_format(entry)[0] in formats or (entry / REMOVING_MARK).is_file()


def _remove_copy(old: Path) -> None:
    """Remove the replaced copy ``old``, its manifest renamed to the mark first: a kill part way
    leaves an incomplete folder never mistaken for an intact copy to put back, and marked ours."""
    if (old / MANIFEST).is_file():
        os.replace(old / MANIFEST, old / REMOVING_MARK)
    else:
        (old / REMOVING_MARK).touch()
    fsync_dir(old)
    _remove_marked(old)


def _remove_marked(folder: Path, mark: str = REMOVING_MARK) -> None:
    """Remove ``folder``, its ``mark`` last: a kill part way leaves a folder still marked ours."""
    for entry in folder.iterdir():
        if entry.name != mark:
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() and not entry.is_symlink() else entry.unlink(missing_ok=True)
    shutil.rmtree(folder, ignore_errors=True)


def _hidden_copies(target: Path, formats: tuple[str, ...]) -> list[Path]:
    """The complete ``.NAME.old-*`` siblings of ``target`` (a manifest.json of one of ``formats``), newest first."""
    try:
        entries = list(target.parent.iterdir()) if target.name else []
    except OSError:
        return []
    copies = []
    for entry in entries:
        match = LEFTOVER.match(entry.name)
        if match and match["kind"] == "old" and match["name"] == target.name and not entry.is_symlink() and manifest_format(entry)[0] in formats:
            copies.append(entry)
    return sorted(copies, key=_mtime, reverse=True)


def _mtime(folder: Path) -> float:
    try:
        return (folder / MANIFEST).stat().st_mtime
    except OSError:  # taken by a writer meanwhile
        return 0.0


def _restore(target: Path, formats: tuple[str, ...]) -> bool:
    """Rename back the copy that a swap killed between its two renames left hidden, when
    ``target`` is missing (the caller holds its lock). A complete ``.NAME.building-*`` is never
    promoted: nobody asked for it to replace anything yet."""
    if target.exists() or target.is_symlink():
        return False
    copies = _hidden_copies(target, formats)
    if not copies:
        return False
    os.replace(copies[0], target)
    fsync_dir(target)
    fsync_dir(target.parent)
    return True


def _recover(target: Path, formats: tuple[str, ...] = (INDEX_FORMAT,), wait: float = 5.0) -> bool:
    """For readers: restore ``target`` from its hidden copy, under its lock. A writer holding the
    lock is given ``wait`` seconds to finish its own swap. False when nothing could be restored."""
    if not target.name or not _hidden_copies(target, formats):
        return False
    lock = WriterLock(target.parent, target.name)
    deadline = time.monotonic() + wait
    while True:
        try:
            if lock.try_acquire():
                break
        except OSError:  # a home this process may not write: leave it to a writer
            return False
        if (target / MANIFEST).is_file():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    try:
        return _restore(target, formats) or (target / MANIFEST).is_file()
    finally:
        lock.release()


def recover_stages(index: Path, formats: dict[str, tuple[str, ...]]) -> None:
    """Put back a first stage (``formats``: stage folder name -> its formats) whose rebuild was
    killed between the two renames of its swap, as :func:`locate` does for an index."""
    for name, stage_formats in formats.items():
        target = index / name
        if not (target / MANIFEST).is_file():
            _recover(target, stage_formats)


def _builds_left(home: Path, name: str) -> list[Path]:
    """The build folders of ``name`` that killed or failed builds left, newest first: ours (marked),
    or empty (a kill between making the folder and marking it; an empty folder holds nothing to lose)."""
    matches = [(entry, LEFTOVER.match(entry.name)) for entry in home.iterdir()]
    found = [e for e, m in matches if m and m["name"] == name and m["kind"] == "building" and not e.is_symlink() and e.is_dir() and ((e / STAGING_MARK).is_file() or not any(e.iterdir()))]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def resumable_builds(home: Path) -> list[tuple[str, Path]]:
    """``(name, folder)`` of each interrupted build in ``home`` that ``--resume`` can go on from."""
    matches = [(entry, LEFTOVER.match(entry.name)) for entry in sorted(home.iterdir())] if home.is_dir() else []
    return [(m["name"], e) for e, m in matches if m and m["kind"] == "building" and not e.is_symlink() and e.is_dir() and _resumable(e)]


def tidy(home: Path, own: WriterLock, builds: bool = True) -> None:
    """What killed writers left in ``home``, for every name no live writer holds: restore a hidden
    old copy whose target is missing, remove staging folders, old copies of present targets and
    stale lock files. A name whose lock is held is skipped: its folders belong to a live build.
    Build folders with encoded chunks are kept for the next build of their name, which resumes
    or removes them; those of ``own``'s name are left to :class:`StagingDir`, which does, unless
    ``builds`` is False (a writer that changes the index: only those with encoded chunks are kept)."""
    leftovers: dict[str, list[tuple[str, Path]]] = {}
    for entry in home.iterdir():
        match = LEFTOVER.match(entry.name)
        if match and not (match["lock"] and match["name"] == own.name):
            leftovers.setdefault(match["name"], []).append((match["kind"] or "lock", entry))
    for name, entries in leftovers.items():
        lock = own if name == own.name else WriterLock(home, name)
        try:
            if lock is not own and not lock.try_acquire():
                continue
        except OSError:
            continue
        try:
            target = home / name
            _restore(target, (INDEX_FORMAT,))
            for kind, entry in entries:
                if entry.is_symlink() or not entry.is_dir():
                    continue
                kept = kind == "building" and ((name == own.name and builds) or _resumable(entry))
                if (ours(entry, (INDEX_FORMAT,)) or not any(entry.iterdir())) and not kept and (kind == "building" or target.exists()):  # (an empty one holds nothing to lose)
                    _remove_marked(entry, STAGING_MARK) if kind == "building" else _remove_copy(entry)
        finally:
            if lock is not own:
                lock.release()  # which also removes a stale lock file of that name
