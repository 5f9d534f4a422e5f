"""An index searched in shards held by Ray actors: :class:`ShardedIndex`."""

from __future__ import annotations

import copy
import weakref
from concurrent.futures import ThreadPoolExecutor

from ..config import positive_int
from ..errors import ConfigError, IndexNotFoundError, MvrError
from ..segment import Commit
from ..threads import cpu_threads
from .cluster import _node, _ray, _session, _worker_nodes, connect, first_line
from .remote import CALLS, HitDocuments, Remote

CLOSED = "this sharded index is closed; open a new ShardedIndex to search."
GONE = "the Ray cluster this sharded index ran on is gone; open it again (a new ShardedIndex joins or starts one)."


class _Shard:
    """A Ray actor holding some segments of an index, opened; it answers one call at a time, with
    ``threads`` CPU threads (None: each library's default)."""

    def __init__(self, path: str, generation: int | None, record: dict, names: list[str], threads: int | None):
        from pathlib import Path

        from ..segment import open_commit

        # the coordinator's commit (which it holds), not whatever is current now: a write between
        # the two opens (an add, a merge, a stage rebuild) would give the shard other segments; and
        # the same commit, not the one of that number of an index rebuilt at the path meanwhile
        self.threads, self.error = threads, None
        try:
            self.state = open_commit(Path(path), Path(path).name, generation=generation)
            if self.state.record != record:
                raise IndexNotFoundError(f"the index at {path} was rebuilt while the shards of a sharded index opened it; open the sharded index again.")
            self.segments = {s.path.name: s for s in self.state.segments if s.path.name in names}
            missing = sorted(set(names) - set(self.segments))
            if missing:
                raise ConfigError(f"segments {missing} are not in commit {generation} of {path}; open the sharded index again.")
        except MvrError as error:  # said by node(), as a call's error (one line), not as Ray's death of an actor
            self.error = error

    def call(self, name: str, method: str, *args):
        with cpu_threads(self.threads, "numba", "faiss", "blas"):
            return CALLS[method](self.segments[name], *args)

    def node(self) -> str:
        if self.error is not None:
            raise self.error
        return _node()


class ShardedIndex:
    """An index searched by ``shards`` Ray actors, segment ``i`` held by actor ``i % shards``, actor
    ``j`` placed on node ``j % nodes`` of the cluster's nodes with CPUs (this process's first), each
    running its calls with ``threads`` CPU threads (None: each library's default in the actor;
    Ray gives an actor without CPUs one OpenMP thread unless OMP_NUM_THREADS is set, so faiss's is 1).
    :meth:`search` takes what :meth:`mvr.Index.search` takes and returns the same results. The
    coordinator asks every shard at once (a thread per call waits for its answer); a shard
    holding several segments answers for them one after another."""

    def __init__(self, name_or_path, *, shards: int = 2, threads: int | None = None, home=None):
        from ..index import Index

        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        ray = _ray()
        positive_int("", "shards", shards)
        positive_int("", "threads", threads, optional=True)
        self.index = Index.open(name_or_path, home=home)
        state = self.index._state
        names = [s.path.name for s in state.segments]
        connect()  # a local instance unless this process has joined a cluster
        self.closed, self.session = False, _session()
        actor, nodes = ray.remote(num_cpus=0)(_Shard), _worker_nodes()
        self.actors = [actor.options(scheduling_strategy=NodeAffinitySchedulingStrategy(nodes[i % len(nodes)], soft=False)).remote(str(self.index.path), None if state.legacy else state.generation, state.record, names[i::shards], threads)
                       for i in range(min(shards, len(names)))]
        try:
            self._nodes = ray.get([a.node.remote() for a in self.actors])  # each shard has opened its segments on its node
        except ray.exceptions.RayError as error:
            for a in self.actors:
                ray.kill(a)
            if isinstance(error, ray.exceptions.RayTaskError) and isinstance(error.cause, MvrError):
                raise error.cause from None
            raise ConfigError(f"a shard of {self.index.path} could not start ({first_line(error)}); every node must have mvr and read the index at this path (a shared filesystem).") from None
        # the stand-ins reach this index weakly: through the view they would hold it, and its actors, in a cycle
        ask, each = weakref.WeakMethod(self._ask), weakref.WeakMethod(self.each)
        remote = [Remote(lambda *call: ask()(*call), self.actors[i % len(self.actors)], segment) for i, segment in enumerate(state.segments)]
        sharded = Commit(state.index_name, state.generation, remote, state.deleted, state.record)
        sharded.__dict__.update({k: v for k, v in state.__dict__.items() if k not in sharded.__dict__})  # config, manifest, ...
        self.pool = ThreadPoolExecutor(max_workers=max(1, 2 * len(remote)), thread_name_prefix="mvr-shard")  # a hybrid's two stages of each segment at once
        sharded.each = lambda work, items: each()(work, items)
        self.view = copy.copy(self.index)  # the same Index, reading the shards' stand-ins
        self.view._state = sharded

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
        threads = numba.get_num_threads()  # the caller's (cpu_threads sets it per thread)

        def run(item):
            with cpu_threads(threads, "numba"):
                return work(item)

        return list(self.pool.map(run, items))

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
        except Exception:
            if _session() != self.session:  # shut down while the call was out
                raise ConfigError(GONE) from None
            raise

    def nodes(self) -> list[str]:
        """The Ray node each shard runs on (as each said when it started; none once closed)."""
        return list(self._nodes)

    def search(self, queries, k: int = 10, **options):
        """:meth:`mvr.Index.search` over the shards (queries are encoded here; no ``explain``)."""
        if self.closed:
            raise ConfigError(CLOSED)
        if options.get("explain"):
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
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.view._state = self.index._state = None  # the commit is no longer pinned: a writer may collect it

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
