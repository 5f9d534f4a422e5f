"""The indexes a server holds open: each opened once and kept warm (query model loaded, first
stages read, kernels compiled), moved to the newest commit before each request and every
``--refresh`` seconds, written through one writer at a time."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import threading
import time
import weakref
from pathlib import Path

from ..errors import ConfigError, IndexNotFoundError, MvrError, QueryError
from ..index import Index
from ..passages import live_documents
from ..storage import available
from ..storage.manifest import MANIFEST
from ..storage.names import home_folder, name_problem

log = logging.getLogger("mvr.server")


def _looks(folder: Path) -> tuple:
    """What tells that an index folder was rebuilt or repaired: the folder's and its manifest's
    inode, size and time of change."""
    def stat(path):
        try:
            found = os.stat(path)
        except OSError:
            return None
        return found.st_ino, found.st_size, found.st_mtime_ns, found.st_ctime_ns

    return stat(folder), stat(folder / "manifest.json")


def _askable(name: str) -> None:
    """Refuse to serve an index whose folder name no request can name (``mvr index --path`` takes
    any folder: one ending in a space, one hidden)."""
    problem = name_problem(name)
    if problem:
        raise ConfigError(f"the index folder {name!r} cannot be named in a request ({problem}): rename the folder to serve it.")


def check_refresh(seconds) -> float:
    """``seconds`` between refreshes, checked: a finite number, 0 (none) or more."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds < float("inf"):
        raise ConfigError(f"the refresh interval must be 0 (refresh only before requests) or a positive number of seconds, got {seconds!r}.")
    return float(seconds)


class Served:
    """One open index, its locks and what it answers."""

    def __init__(self, index: Index):
        self.index = index
        self.write_lock = threading.Lock()  # writes of this server, one at a time (the writer lock orders processes)
        self._counted = (lambda: None, 0)  # (weak reference to the commit state counted, documents) of an index of passages

    def current(self) -> Index:
        """The index at its newest commit (another process may have written)."""
        self.index.refresh()
        return self.index

    def documents(self) -> int:
        """Live documents; in an index of passages, documents (not passages), counted once per commit."""
        index = self.index
        if not index.config.passage_tokens:
            return index.n_docs
        state = index._state
        if self._counted[0]() is not state:  # not its generation: a rebuild counts them from 1 again; weak: it pins no commit
            self._counted = (weakref.ref(state), live_documents(state)[0])
        return self._counted[1]

    def summary(self) -> dict:
        """What ``GET /indexes`` says of the index, at its newest commit."""
        index = self.current()
        return {
            "name": index.name,
            "documents": self.documents(),
            **({"passages": index.n_docs} if index.config.passage_tokens else {}),
            "generation": index.generation,
            "segments": len(index.segments),
            "dim": index.dim,
            "encoder": index.manifest["encoder"]["name"],
            "default_stage": index.default_stage,
            "metadata_fields": dict(index.metadata_fields),
        }


def shares(threads: int | None, concurrency: int | None) -> tuple[int, int]:
    """``(threads, concurrency)``: CPU threads of one search and searches computed at once, one
    search a core by default; a ConfigError for one that is not positive."""
    cores = os.cpu_count() or 1
    concurrency = cores if concurrency is None else concurrency
    threads_of_one = max(1, cores // max(concurrency, 1)) if threads is None else threads
    if concurrency < 1 or threads_of_one < 1:  # 0 too: not taken for the default
        raise ConfigError(f"threads and concurrency must be positive, got {threads!r} and {concurrency!r}.")
    return threads_of_one, concurrency


class Catalog:
    """The indexes a server answers for, by name.

    ``names``: the indexes to serve (names under ``home`` or paths); none: every index in ``home``
    when the server starts, and any that appears there later (opened at its first request).
    ``threads``: CPU threads of one search (requests run side by side, see ``concurrency``).
    ``concurrency``: searches computed at once; more requests wait their turn. ``model``: the
    query encoder (an :class:`mvr.Encoder` or folder) when not the one each index names.
    """

    def __init__(self, names=(), home: str | os.PathLike | None = None, *, threads: int | None = None, concurrency: int | None = None, warm: bool = True, model=None):
        self.home = home_folder(home)
        self.fixed = bool(names)
        self.threads, self.concurrency = shares(threads, concurrency)
        self.gate = threading.BoundedSemaphore(self.concurrency)
        self._served: dict[str, Served] = {}
        self._lock = threading.Lock()
        self.warm, self.model = warm, model
        self.started = time.time()
        self.instance = secrets.token_hex(8)  # /healthz says it: a client tells this server from another that took its port
        self.failed: dict[str, str] = {}  # indexes of the home that could not be opened, and why
        self._failed_as: dict[str, tuple] = {}  # what their folder and manifest looked like then
        for name in names or available(self.home):
            looks = None if names else _looks(self.home / name)  # before the open: a repair landing during it is seen next time
            try:
                index = Index.open(name if names else self.home / name, home=self.home, model=model)  # a home's index by its path there
                _askable(index.name)
                if index.name in self._served:
                    raise ConfigError(f"two indexes named {index.name!r}: serve each name once.")
                self._served[index.name] = self._open(index)
            except MvrError as error:
                if names:  # one asked for by name is served or the server does not start
                    raise
                self._failed(name, error, looks)  # one found in the home is left out, as one that appears later is

    def _open(self, index: Index) -> Served:
        if self.warm:  # load the query model, read the first stages, compile the kernels now, not at the first request
            index.search("warm up", k=1, threads=self.threads)
        return Served(index)

    def warm_writes(self) -> None:
        """Load the document encoder of each index served now and encode a text with it (what the
        first add or upsert would otherwise wait for: PyTorch, transformers and the export), under
        loader's lock (an add that comes meanwhile waits for this load, not a second one; a delete
        needs no encoder and does not wait); one that fails is logged and left to fail at that request."""
        from ..encoding import document_encoder

        for name, served in list(self._served.items()):
            try:
                document_encoder(served.index).encode_documents(["warm up"])
            except Exception as error:  # noqa: BLE001 (a thread of its own: said in one line, not a traceback)
                log.warning("could not load the document encoder of %r: %s", name, f"{type(error).__name__}: {error}".splitlines()[0])

    def _failed(self, name: str, error: MvrError, looks: tuple) -> None:
        self.failed[name] = str(error)
        self._failed_as[name] = looks
        log.warning("not serving index %r: %s", name, error)

    def present(self) -> int:
        """How many of the indexes served are still there (one removed since it was opened is not)."""
        return sum((served.index.path / MANIFEST).is_file() for served in list(self._served.values()))

    def names(self, discover: bool = True) -> list[str]:
        """The indexes served; ``discover``: first open those built in the home since. One that
        cannot be opened is left out (:attr:`failed` says why) and tried again once its folder
        or manifest changes (rebuilt, repaired)."""
        if discover and not self.fixed:
            found = available(self.home)
            for name in set(self.failed) - set(found):  # removed from the home: nothing to report
                self.failed.pop(name, None)
            for name in found:
                if name in self._served:
                    continue
                looks = _looks(self.home / name)
                if name in self.failed and self._failed_as.get(name) == looks:
                    continue
                try:
                    _askable(name)
                    self.get(name)
                    self.failed.pop(name, None)
                except MvrError as error:  # removed since it was listed, damaged, another model's
                    self._failed(name, error, looks)
        return sorted(self._served)

    def get(self, name: str) -> Served:
        """The served index ``name``: a 400 for a name that is no plain index name (a path, ``..``),
        a 404 for one this server does not serve."""
        problem = name_problem(name) if isinstance(name, str) else "it is not a string"
        if problem:
            raise QueryError(f"invalid index name {name!r}: {problem}.")
        served = self._served.get(name)
        if served is not None:
            return served
        if not self.fixed and (self.home / name).is_dir():
            with self._lock:
                if name not in self._served:
                    self._served[name] = self._open(Index.open(self.home / name, home=self.home, model=self.model))
                    self.failed.pop(name, None)
                return self._served[name]
        names = ", ".join(sorted(self._served)) or "none"
        raise IndexNotFoundError(f"this server has no index named {name!r} (it serves: {names}).")

    @contextlib.contextmanager
    def following(self, seconds: float):
        """While the ``with`` block runs, move every served index to its newest commit each
        ``seconds`` (0: only before requests). An idle server then lets go of the commits that
        writers replaced (the next writer collects their files), and the first request after a
        write finds the new commit already read."""
        if not check_refresh(seconds):
            yield
            return
        stop = threading.Event()
        thread = threading.Thread(target=self._follow, args=(stop, float(seconds)), name="mvr-refresh", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def _follow(self, stop: threading.Event, seconds: float) -> None:
        while not stop.wait(seconds):
            for name, served in list(self._served.items()):
                try:
                    served.current()
                except MvrError as error:  # removed or damaged for now: requests say so; keep following the others
                    log.debug("refreshing index %r: %s", name, error)
                except Exception:  # never let the thread die: the next round tries again
                    log.exception("refreshing index %r", name)
