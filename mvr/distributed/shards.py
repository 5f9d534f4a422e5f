"""An index searched in shards held by Ray actors: :class:`ShardedIndex`."""

from __future__ import annotations

import os
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor

from ..config import positive_int
from ..errors import ConfigError, IndexNotFoundError, MvrError
from ..search import flag
from ..segment import Commit
from ..threads import cpu_threads
from .cluster import _node, _ray, _session, _worker_nodes, connect, first_line
from .remote import CALLS, HitDocuments, Remote

CLOSED = "this sharded index is closed; open a new ShardedIndex to search."
GONE = "the Ray cluster this sharded index ran on is gone; open it again (a new ShardedIndex joins or starts one)."


class _Shard:
    """A Ray actor holding some segments of an index, opened; it answers one call at a time, with
    ``threads`` CPU threads (None: each library's default). It holds a commit per ``epoch`` (one
    opening of the sharded index: the first, then each refresh) until the coordinator lets go of it."""

    def __init__(self, threads: int | None):
        self.threads, self.epochs = threads, {}

    def open(self, epoch: int, path: str, generation: int | None, record: dict, names: list[str]) -> str:
        """Open the segments ``names`` of commit ``generation``; returns this actor's node."""
        from pathlib import Path

        from ..segment import open_commit

        # the coordinator's commit (which it holds), not whatever is current now: a write between
        # the two opens (an add, a merge, a stage rebuild) would give the shard other segments; and
        # the same commit, not the one of that number of an index rebuilt at the path meanwhile
        state = open_commit(Path(path), Path(path).name, generation=generation)
        if state.record != record:
            raise IndexNotFoundError(f"the index at {path} was rebuilt while the shards of a sharded index opened it; open the sharded index again, or refresh it.")
        segments = {s.path.name: s for s in state.segments if s.path.name in names}
        missing = sorted(set(names) - set(segments))
        if missing:
            raise ConfigError(f"segments {missing} are not in commit {generation} of {path}; open the sharded index again.")
        self.epochs[epoch] = (state, segments)  # the state pins the commit
        return _node()

    def drop(self, epoch: int) -> None:
        self.epochs.pop(epoch, None)

    def call(self, epoch: int, name: str, method: str, *args):
        if epoch not in self.epochs:  # let go of: nothing of the coordinator's should still read it
            raise ConfigError("this shard no longer holds the commit of that search; search again (ShardedIndex.refresh() moves to the newest).")
        with cpu_threads(self.threads, "numba", "faiss", "blas"):
            return CALLS[method](self.epochs[epoch][1][name], *args)

    def node(self) -> str:
        return _node()


def _drop(actors, epoch: int, session) -> None:
    """Tell ``actors`` to let go of ``epoch``'s commit (no view or results read it any more)."""
    if _session() != session:  # Ray gone: the actors went with it
        return
    for actor in actors:
        try:
            actor.drop.remote(epoch)
        except Exception:  # killed by close(), Ray shutting down
            pass


class ShardedIndex:
    """An index searched by ``shards`` Ray actors, segment ``i`` held by actor ``i % shards``, actor
    ``j`` placed on node ``j % nodes`` of the cluster's nodes with CPUs (this process's first), each
    running its calls with ``threads`` CPU threads (None: each library's default in the actor;
    Ray gives an actor without CPUs one OpenMP thread unless OMP_NUM_THREADS is set, so faiss's is 1).
    :meth:`search` takes what :meth:`mvr.Index.search` takes and returns the same results. The
    coordinator asks every shard at once (a thread per call waits for its answer); a shard
    holding several segments answers for them one after another. It serves the commit it opened
    until :meth:`refresh` moves it, shards and all, to the newest."""

    def __init__(self, name_or_path, *, shards: int = 2, threads: int | None = None, home=None):
        from ..index import Index

        _ray()
        positive_int("", "shards", shards)
        positive_int("", "threads", threads, optional=True)
        self.index = Index.open(name_or_path, home=home)
        connect()  # a local instance unless this process has joined a cluster
        self.closed, self.session, self.shards, self.threads, self._broken = False, _session(), shards, threads, False  # _broken: a shard died
        self.actors, self._nodes, self._epoch, self._lock, self.pool = [], [], -1, threading.Lock(), None
        try:
            self._open(self.index._state)
        except BaseException:
            self.close()
            raise

    def _open(self, state) -> None:
        """Deal the segments of ``state`` (the coordinator's commit, pinned) to the actors, starting
        those it needs, and serve it: searches already under way end on the commit they started."""
        ray = _ray()
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        names = [s.path.name for s in state.segments]
        used = min(self.shards, len(names))
        nodes = _worker_nodes() if len(self.actors) < used else []
        for j in range(len(self.actors), used):
            self.actors.append(ray.remote(num_cpus=0)(_Shard).options(scheduling_strategy=NodeAffinitySchedulingStrategy(nodes[j % len(nodes)], soft=False)).remote(self.threads))
        epoch, actors = self._epoch + 1, self.actors[:used]
        generation = None if state.legacy else state.generation
        try:  # each shard opens its segments on its node
            self._nodes = ray.get([a.open.remote(epoch, os.path.abspath(self.index.path), generation, state.record, names[i::used]) for i, a in enumerate(actors)]) + self._nodes[used:]
        except ray.exceptions.RayError as error:
            _drop(actors, epoch, self.session)
            if isinstance(error, ray.exceptions.RayTaskError) and isinstance(error.cause, MvrError):
                raise error.cause from None
            raise ConfigError(f"a shard of {self.index.path} could not start ({first_line(error)}); every node must have mvr and read the index at this path (a shared filesystem).") from None
        # the stand-ins reach this index weakly: through the view they would hold it, and its actors, in a cycle
        ask, each = weakref.WeakMethod(self._ask), weakref.WeakMethod(self.each)
        remote = [Remote(lambda actor, *call: ask()(actor, epoch, *call), actors[i % used], segment) for i, segment in enumerate(state.segments)]
        sharded = Commit(state.index_name, state.generation, remote, state.deleted, state.record)
        sharded.__dict__.update({k: v for k, v in state.__dict__.items() if k not in sharded.__dict__})  # config, manifest, ...
        sharded.each = lambda work, items: each()(work, items)
        weakref.finalize(sharded, _drop, actors, epoch, self.session)  # once no view or results read it, the shards let go of it
        if self.closed:  # closed while the shards opened it
            _drop(actors, epoch, self.session)
            raise ConfigError(CLOSED)
        if self.pool is None or self._pool_size < 2 * len(remote):  # a hybrid's two stages of each segment at once
            self._pool_size = max(1, 2 * len(remote))  # the old pool is not shut down: a search under way still submits to it
            self.pool = ThreadPoolExecutor(max_workers=self._pool_size, thread_name_prefix="mvr-shard")
        if getattr(self, "view", None) is not None:
            self.index._encoder, self.index._lean = self.view._encoder, self.view._lean  # the query models the last view loaded (a rebuild's other model is loaded anew)
        view = object.__new__(type(self.index))  # the same Index, reading the shards' stand-ins (copy.copy opens it again: Index.__reduce__)
        view.__dict__.update(self.index.__dict__)
        view._state = sharded
        self.view, self._epoch, self._opened = view, epoch, state

    def refresh(self) -> bool:
        """Move to the index's newest commit, as :meth:`mvr.Index.refresh` does; True when there was
        a newer one. The shards open it beside the one they serve, so searches under way (and
        results whose documents are still to be read) end on theirs; each lets go of an old commit
        once nothing reads it. Segments may move between shards; shards are started up to
        ``shards`` as segments come. An error leaves its searches on the commit they had."""
        with self._lock:
            if self.closed:
                raise ConfigError(CLOSED)
            if _session() != self.session:
                raise ConfigError(GONE)
            self.index.refresh()
            if self._broken:  # a shard died: all start again (searches under way on them end with the error)
                for actor in self.actors:
                    _ray().kill(actor)
                self.actors, self._broken = [], False
            elif self.index._state is self._opened:
                return False
            self._open(self.index._state)
            return True

    def each(self, work, items) -> list:
        """:meth:`mvr.segment.Commit.each` with the segments' calls made at once, each thread
        running with the caller's Numba thread count (a search's ``threads``); every search comes
        through here, so a closed index says so here."""
        import numba

        if self.closed:  # not "no actors": an index without segments has none, and searches
            raise ConfigError(CLOSED)
        items = list(items)
        if len(items) < 2:
            return [work(item) for item in items]
        threads, pool = numba.get_num_threads(), self.pool  # the caller's (cpu_threads sets it per thread); one pool for the whole map

        def run(item):
            with cpu_threads(threads, "numba"):
                return work(item)

        return list(pool.map(run, items))

    def _ask(self, actor, *call):
        """What ``actor.call(*call)`` returns: an mvr error raised in the shard is raised here as
        itself (Ray wraps it in a traceback of many lines), and a Ray gone under this index says so
        before Ray's call would start a new local instance for an actor it no longer has."""
        ray = _ray()
        if self.closed:
            raise ConfigError(CLOSED)
        if _session() != self.session:
            raise ConfigError(GONE)
        try:
            return ray.get(actor.call.remote(*call))
        except ray.exceptions.RayTaskError as error:
            if isinstance(error.cause, MvrError):
                raise error.cause from None
            raise
        except ray.exceptions.RayActorError as error:  # the shard's process died (killed, out of memory), or Ray went
            if _session() != self.session:
                raise ConfigError(GONE) from None
            self._broken = True
            raise ConfigError(f"a shard of {self.index.path} stopped ({first_line(error)}); ShardedIndex.refresh() starts its shards again.") from None
        except Exception:
            if _session() != self.session:  # shut down while the call was out
                raise ConfigError(GONE) from None
            raise

    def nodes(self) -> list[str]:
        """The Ray node each shard runs on (as each said when it last opened a commit; none once closed)."""
        return list(self._nodes)

    def search(self, queries, k: int = 10, **options):
        """:meth:`mvr.Index.search` over the shards (queries are encoded here; no ``explain``)."""
        if self.closed:
            raise ConfigError(CLOSED)
        if flag("explain", options.get("explain", False)):
            raise ConfigError("explanations read stored vectors in this process; search the index itself (Index.search) to explain hits.")
        return self._fetching(self.view.search(queries, k, **options))

    def search_encoded(self, queries, k: int = 10, **options):
        """:meth:`mvr.Index.search_encoded` over the shards."""
        if self.closed:
            raise ConfigError(CLOSED)
        return self._fetching(self.view.search_encoded(queries, k, **options))

    def _fetching(self, results):
        """``results``, reading its hits' documents through :class:`~mvr.distributed.remote.HitDocuments`."""
        results._index = HitDocuments(results._index, self.each, results.indices)
        return results

    def close(self) -> None:
        """Stop the shards at once: calls still waiting on one end with Ray's error. Nothing to stop
        where Ray is gone: the shards went with it."""
        ray = _ray()
        actors, self.actors, self._nodes, self.closed = self.actors, [], [], True
        if actors and _session() == self.session:  # else ray.kill would raise, or start a new Ray
            for actor in actors:
                ray.kill(actor)
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
        if getattr(self, "view", None) is not None:
            self.view._state = None
        self.index._state = self._opened = None  # the commit is no longer pinned: a writer may collect it

    def __reduce__(self):
        """A copy (copy.copy, pickle) opens the index in shards of its own: sharing these, the
        first closed (or garbage) would stop the other's."""
        if self.closed:
            raise ConfigError(CLOSED)
        return _reopen, (os.path.abspath(self.index.path), self.shards, self.threads)

    def __del__(self):  # dropped without close(): its actors and threads go with it
        if not getattr(self, "closed", True):
            try:
                self.close()
            except Exception:  # Ray already shut down, the interpreter exiting
                pass

    def __enter__(self) -> "ShardedIndex":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _reopen(path: str, shards: int, threads: int | None) -> ShardedIndex:
    from pathlib import Path

    return ShardedIndex(Path(path), shards=shards, threads=threads)
