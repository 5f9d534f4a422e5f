"""The coordinator's stand-ins of the segments a :class:`~mvr.distributed.shards.ShardedIndex`'s
actors hold: what the search pipeline reads of a segment, each call forwarded to its actor, and
the documents of a search's hits fetched from them."""

from __future__ import annotations

import copy
import dataclasses
import threading

import numpy as np

from ..registry import STAGES, parse_stage


def _owned(value):
    """``value`` with its arrays copied out of Ray's object store (read-only there), as callers
    of a segment in this process may write to what they get."""
    if isinstance(value, np.ndarray):
        return value.copy() if not value.flags.writeable else value
    if isinstance(value, tuple):
        items = [_owned(v) for v in value]
        return type(value)(*items) if hasattr(value, "_fields") else tuple(items)
    if isinstance(value, list):
        return [_owned(v) for v in value]
    return value


# What a shard does for the coordinator, on one of its segments.
CALLS = {
    "search": lambda segment, stage, *args: segment.stage(stage).search(*args),
    "stage_score": lambda segment, stage, *args: segment.stage(stage).score(*args),
    "score": lambda segment, *args: segment.tokens.score(*args),
    "early_exit": lambda segment, *args: segment.tokens.early_exit(*args),
    "score_all": lambda segment, *args: segment.tokens.score_all(*args),
    "mask": lambda segment, *args: segment.metadata.mask(*args),
    "documents": lambda segment, rows: [segment.document(int(row)) for row in rows],
}


class Remote:
    """What the search pipeline reads of one segment, forwarded to the actor holding it."""

    def __init__(self, ask, actor, segment):
        self.ask, self.actor, self.name, self.path, self.local = ask, actor, segment.path.name, segment.path, segment
        for attr in ("n_docs", "n_tokens", "max_doc_len", "dim", "projection", "doc_ids"):  # small, read here
            setattr(self, attr, getattr(segment, attr))
        self._has = {name: segment.has_stage(name) for name in STAGES}
        self.tokens, self.metadata = RemoteTokens(self), RemoteMetadata(self, segment.metadata.fields)
        self.scorer = self.tokens

    def call(self, method: str, *args):
        return _owned(self.ask(self.actor, self.name, method, *args))

    def has_stage(self, name: str) -> bool:
        return all(self._has.get(part, False) for part in parse_stage(name))

    def require(self, name: str) -> None:
        self.local.require(name)  # a check of the folder's stages, no data read

    def stage(self, name: str):
        return RemoteStage(self, name)

    def document(self, row: int):
        return self.call("documents", [int(row)])[0]


class RemoteStage:
    def __init__(self, segment: Remote, name: str):
        self.segment, self.name = segment, name

    def search(self, queries, n, options=None, allowed=None):
        return self.segment.call("search", self.name, queries, n, options, allowed)

    def score(self, queries, positions):
        return self.segment.call("stage_score", self.name, queries, positions)


class RemoteTokens:
    def __init__(self, segment: Remote):
        self.segment = segment

    def score(self, query, rows):
        return self.segment.call("score", query, rows)

    def early_exit(self, query, rows, k, patience):
        return self.segment.call("early_exit", query, rows, k, patience)

    def score_all(self, queries, offsets):
        return self.segment.call("score_all", queries, offsets)


class RemoteMetadata:
    def __init__(self, segment: Remote, fields: dict):
        self.segment, self.fields = segment, fields

    def mask(self, spec):
        from ..storage.metadata import check_filter

        return self.segment.call("mask", check_filter(spec))  # checked here: a filter nested too deeply fails to pickle


class HitDocuments:
    """What :class:`mvr.results.Results` reads of a sharded commit: its ids, and the documents of
    its hits, those of a query's row fetched at the first read of one of them, in one call per
    segment, every segment at once (not a call per hit, one after another)."""

    def __init__(self, state, each, hits: np.ndarray):
        self.state, self.each, self.hits, self.fetched, self.lock = state, each, hits, {}, threading.Lock()

    def __getattr__(self, name):  # the rest of the commit: its ids, generation, ...
        if name.startswith("__") or "state" not in self.__dict__:
            raise AttributeError(name)
        return getattr(self.state, name)

    def document(self, position: int):
        with self.lock:  # one fetch per row, whole before any reader sees it
            if position not in self.fetched:
                rows_with_it = np.flatnonzero((self.hits == position).any(axis=1))
                row = self.hits[rows_with_it[0]] if len(rows_with_it) else np.array([position])
                wanted = np.unique(row[row >= 0])
                owner = self.state.segment_of(wanted)

                def fetch(s: int) -> dict:
                    rows = wanted[owner == s]
                    return dict(zip(rows.tolist(), self.state.segments[s].call("documents", (rows - int(self.state.bases[s])).tolist())))

                found = {}
                for part in self.each(fetch, np.unique(owner).tolist()):
                    found.update(part)
                self.fetched.update(found)  # whole or not at all: every read holds the lock
            doc = self.fetched[position]
        return dataclasses.replace(doc, metadata=copy.deepcopy(doc.metadata))  # the caller's own, as a local index gives
