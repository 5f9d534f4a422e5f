"""Changing an index: add, upsert and delete documents, merge segments, convert a version-1 index.

Every change is one commit (storage/commits.py): new files beside the old ones, then the pointer.
One process writes an index at a time (:class:`Writer` holds the index's lock, storage/lock.py);
readers keep searching the commit they opened and move on with ``Index.refresh()``.

Merge policy (tiered, by live documents): segments are grouped in tiers of ``MERGE_FACTOR``-fold
size (1-9 documents, 10-99, 100-999, ...); when a tier holds ``MERGE_FACTOR`` segments they
merge into one of the next tier, and a segment whose rows are more than half deleted is rewritten
without them. A search costs one first-stage lookup and one rerank per segment, so this keeps
their number near ``MERGE_FACTOR - 1`` per tier (about 30 segments for a million documents
added 100 at a time). ``Index.optimize()`` / ``mvr optimize`` merges everything into one.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .config import FDEConfig, positive_int
from .encode.pool import ProcessEncoder
from .encoding import document_encoder
from .corpus import as_documents
from .ids import asked_ids
from .errors import CorpusError, IndexFormatError, check_flags
from .passages import document_id, passage_rows, rows_of
from .search_presets import preset_stages, saved
from .segment_build import merge_segments, planned_stages, write_segment
from .storage.commits import SEGMENTS, collect, new_commit, publish, segment_name, write_deletes
from .storage.layout import tidy
from .storage.lock import index_lock
from .storage.manifest import fsync_dir, fsync_tree, read_manifest

MERGE_FACTOR = 10
EXPUNGE_SHARE = 0.5  # a segment with more of its rows deleted is rewritten without them


class Writer:
    """The index's one writer, as a context manager: converts a version-1 index, takes the lock
    (``wait`` seconds at most), moves ``index`` to the newest commit and collects what no commit
    in use names. :meth:`commit` publishes a new generation."""

    def __init__(self, index, wait: float = 0.0):
        self.index, self.wait = index, wait

    def __enter__(self) -> "Writer":
        from .build import upgrade

        upgrade(self.index, wait=self.wait)
        index = self.index
        self.lock = index_lock(index.path, f"index {index.name!r}", self.wait)  # one however the index is reached
        try:
            tidy(self.lock.path.parent, self.lock, builds=False)  # what killed builds beside it left (a replaced copy a swap hid)
            index.refresh()
            self.record = index._state.record
            collect(index.path, self.record)
        except BaseException:
            self.lock.release()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.lock.release()

    @property
    def generation(self) -> int:
        return self.record["generation"]

    def new_segment(self) -> Path:
        """The folder of the next segment (not yet there), its number taken."""
        number = self.record["next_segment"]
        self.record = {**self.record, "next_segment": number + 1}
        return self.index.path / SEGMENTS / segment_name(number)

    def commit(self, segments: list[dict], operation: str, written: list[Path] = (), **fields) -> dict:
        """Publish ``segments`` as the next generation; ``written``: new segment folders to flush first."""
        for folder in written:
            fsync_tree(folder)
        if written:
            fsync_dir(self.index.path / SEGMENTS)
        known = {**self.record.get("metadata_fields", {}), **self.index.metadata_fields}  # a field stays known when its last segment goes: filters on it match nothing
        commit = new_commit(self.record, self.generation + 1, segments, operation, dim=self.record.get("dim"), metadata_fields=known, **fields)
        publish(self.index.path, commit)
        self.record = commit
        self.index.refresh()
        collect(self.index.path, commit)
        return commit


def segment_stages(segment) -> dict:
    """The first stages of ``segment``, each with the settings it was built with: a new segment's."""
    from .registry import STAGES
    from .stages import stage_class
    from .storage.formats import upgrade_fde_config

    stages = {}
    for name in STAGES:
        if segment.has_stage(name):
            cls = stage_class(name)
            manifest = read_manifest(segment.path / name, cls.format, cls.version)
            if name == "fde":
                stages[name] = FDEConfig.from_dict(upgrade_fde_config(manifest["config"]))
            elif name == "splade":
                stages[name] = segment.splade_model or manifest["model"]["source"]
            else:
                stages[name] = manifest.get("asked")  # the centroid stage's count given (mvr centroids --centroids K); None elsewhere
    return stages


def _entries(record: dict) -> list[dict]:  # the record's segments, each a copy to change
    return [dict(seg) for seg in record["segments"]]


def add(index, documents, *, upsert: bool = False, wait: float = 0.0, merge: bool = True, workers: int = 1, show_progress=None, command=None) -> dict:
    """Encode ``documents`` into one new segment and commit it, as the build did (the index's
    config, PCA projection, codec, first stages and their settings). An id the index holds is an
    error unless ``upsert``, which deletes the old document in the same commit. ``workers``: encode
    in that many processes of one CPU thread each (mvr.encode.pool.ProcessEncoder; the same
    vectors). Returns ``{"added", "replaced", "generation", "segments", "seconds", "docs_per_second"}``."""
    positive_int("", "workers", workers)
    check_flags(merge=merge, show_progress=show_progress)
    documents = as_documents(documents, numbered=False)  # what is no list of documents, refused before the lock is taken
    started = time.perf_counter()
    with Writer(index, wait) as writer:
        state = index._state
        like = state.segments[-1] if state.segments else None
        encoder = document_encoder(index, cpu=workers > 1)
        stages = segment_stages(like) if like is not None else {**planned_stages(index.config), **preset_stages(saved(state.record, replace_damaged=True))}
        folder = writer.new_segment()
        replaced: list[int] | None = [] if upsert else None
        pool = None
        try:
            pool = None if workers == 1 else ProcessEncoder.like(encoder, workers)
            manifest = write_segment(
                documents, folder, pool or encoder, index.config, like=like, stages=stages, existing=state.positions, replaced=replaced,
                metadata_types=index.metadata_fields, show_progress=show_progress, command=command,
            )
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        finally:
            if pool is not None:
                pool.close()
        segments = _entries(writer.record)
        replaced = np.asarray(replaced or [], dtype=np.int64)
        if index.config.passage_tokens and len(replaced):  # every passage of a replaced document, however many it had
            replaced = rows_of(state, sorted({document_id(str(state.doc_ids[p])) for p in replaced}))
        _mark_deleted(writer, state, segments, replaced)
        state_ids = state.doc_ids if len(replaced) else np.zeros(0, dtype=str)
        del state, like  # its pin: the commit's collection may take what only it held
        segments.append({"name": folder.name, "documents": manifest["counts"]["documents"], "deleted": 0, "deletes": None})
        writer.commit(segments, "upsert" if upsert else "add", [folder], command=command)
        if merge:
            merge_policy(writer, show_progress=show_progress)
        return {
            "added": manifest["counts"].get("source_documents", manifest["counts"]["documents"]),  # documents, not passages
            "replaced": len({document_id(str(i)) for i in state_ids[replaced]}) if index.config.passage_tokens else len(replaced),
            "generation": writer.generation, "segments": len(writer.record["segments"]),
            "seconds": round(time.perf_counter() - started, 3),
            "docs_per_second": manifest["build"]["docs_per_second"],
        }


def _mark_deleted(writer: Writer, state, segments: list[dict], positions: np.ndarray) -> int:
    """Add the rows at ``positions`` (of ``state``, the writer's commit) to the deletion bitmaps of
    ``segments``, written for the next generation; how many were newly deleted."""
    if not len(positions):
        return 0
    owner = state.segment_of(positions)
    newly = 0
    for s in np.unique(owner):
        gone = state.deleted[s].copy()
        rows = positions[owner == s] - state.bases[s]
        before = int(gone.sum())
        gone[rows] = True
        newly += int(gone.sum()) - before
        segments[s].update(deletes=write_deletes(state.segments[s].path, writer.generation + 1, gone), deleted=int(gone.sum()))
    return newly


def delete(index, ids, *, wait: float = 0.0, merge: bool = True, command=None) -> dict:
    """Delete the documents with ``ids`` in one commit. Ids the index does not hold are reported,
    not an error (they may have been deleted already). Returns ``{"deleted", "missing", "generation"}``."""
    check_flags(merge=merge)
    ids = asked_ids(ids)
    with Writer(index, wait) as writer:
        state = index._state
        if index.config.passage_tokens:  # a document id stands for all its passages
            found = [np.asarray(rows, dtype=np.int64) for rows in passage_rows(state, ids)]
            missing = [doc_id for doc_id, rows in zip(ids, found) if not len(rows)]
            positions = np.concatenate([np.zeros(0, dtype=np.int64), *found])
        else:
            positions = state.positions(ids) if ids else np.zeros(0, dtype=np.int64)
            missing = [doc_id for doc_id, at in zip(ids, positions) if at < 0]
        segments = _entries(writer.record)
        deleted = _mark_deleted(writer, state, segments, np.unique(positions[positions >= 0]))
        if index.config.passage_tokens:
            deleted = len({document_id(str(state.doc_ids[p])) for p in positions})
        del state
        if deleted:
            writer.commit(segments, "delete", command=command)
            if merge:
                merge_policy(writer)
        return {"deleted": deleted, "missing": missing, "generation": writer.generation}


def _live(entry: dict) -> int:
    return entry["documents"] - entry["deleted"]


def _tier(documents: int, factor: int) -> int:
    """0 for 0 to factor - 1 documents, 1 up to factor**2 - 1, ..."""
    tier, bound = 0, factor
    while documents >= bound:
        tier, bound = tier + 1, bound * factor
    return tier


def plan_merge(segments: list[dict], factor: int | None = None) -> list[int] | None:
    """Which segments (indices into ``segments``) to merge next, or None: the ``factor``
    smallest of the lowest tier that holds ``factor`` segments, else one whose rows are mostly
    deleted (or wholly: it is dropped)."""
    factor = factor or MERGE_FACTOR
    tiers: dict[int, list[int]] = {}
    for i, entry in enumerate(segments):
        tiers.setdefault(_tier(_live(entry), factor), []).append(i)
    full = [tiers[tier] for tier in sorted(tiers) if len(tiers[tier]) >= factor]  # the lowest such tier first
    if full:
        return sorted(sorted(full[0], key=lambda i: _live(segments[i]))[:factor])
    for i, entry in enumerate(segments):
        if entry["documents"] and entry["deleted"] > EXPUNGE_SHARE * entry["documents"]:
            return [i]
    return None


def merge_policy(writer: Writer, factor: int | None = None, show_progress=None) -> int:
    """Merge as :func:`plan_merge` says until it says nothing; how many merges ran (after a write's commit, which stands whatever they meet)."""
    merges = 0
    try:
        while (chosen := plan_merge(writer.record["segments"], factor)) is not None:
            merge(writer, chosen, show_progress=show_progress)
            merges += 1
    except IndexFormatError as error:  # the write went in: said, with what stopped the merge
        raise IndexFormatError(f"the write is committed (generation {writer.generation}), but merging segments after it failed: {error}") from None
    return merges


def merge(writer: Writer, chosen: list[int], operation: str = "merge", show_progress=None, command=None) -> dict:
    """Merge the segments at ``chosen`` (indices into the writer's commit) into one new segment
    of their live documents (none: they are dropped), in their order; one commit."""
    index = writer.index
    state = index._state
    segments = _entries(writer.record)
    keep = [entry for i, entry in enumerate(segments) if i not in chosen]
    live = sum(_live(segments[i]) for i in chosen)
    written = []
    if live:
        folder = writer.new_segment()
        sources = [state.segments[i] for i in chosen]
        try:
            manifest = merge_segments(folder, sources, [~state.deleted[i] for i in chosen], index.config, index.manifest["encoder"], segment_stages(sources[-1]), show_progress, command)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        del sources
        entry = {"name": folder.name, "documents": manifest["counts"]["documents"], "deleted": 0, "deletes": None}
        keep.insert(min(chosen), entry)  # where the first merged one was: positions keep their order
        written.append(folder)
    del state
    return writer.commit(keep, operation, written, command=command)


def optimize(index, *, wait: float = 0.0, show_progress=None, command=None) -> dict:
    """Merge every segment into one, without the deleted documents (nothing to do when the index
    is one segment without deletions). Returns ``{"merged", "generation", "documents"}``."""
    with Writer(index, wait) as writer:
        segments = writer.record["segments"]
        if len(segments) <= 1 and not any(entry["deleted"] for entry in segments):
            return {"merged": 0, "generation": writer.generation, "documents": index.n_docs}
        merge(writer, list(range(len(segments))), "optimize", show_progress=show_progress, command=command)
        return {"merged": len(segments), "generation": writer.generation, "documents": index.n_docs}


class Changes:
    """What changes an index, as methods of :class:`mvr.Index` (each one commit, or a few with merges)."""

    def add(self, documents, *, wait: float = 0.0, merge: bool = True, workers: int = 1, show_progress: bool | None = None, command: str | None = None) -> dict:
        """Encode ``documents`` (in ``workers`` processes) into a new segment and commit it; an id already in
        the index is an error (:meth:`upsert` replaces). Returns what was done: see :func:`mvr.writer.add`."""
        return add(self, documents, upsert=False, wait=wait, merge=merge, workers=workers, show_progress=show_progress, command=command)

    def upsert(self, documents, *, wait: float = 0.0, merge: bool = True, workers: int = 1, show_progress: bool | None = None, command: str | None = None) -> dict:
        """Add ``documents``, replacing those whose id the index holds, in one commit."""
        return add(self, documents, upsert=True, wait=wait, merge=merge, workers=workers, show_progress=show_progress, command=command)

    def delete(self, ids: Iterable[str], *, wait: float = 0.0, merge: bool = True, command: str | None = None) -> dict:
        """Delete the documents with these ids in one commit: see :func:`mvr.writer.delete`."""
        return delete(self, ids, wait=wait, merge=merge, command=command)

    def optimize(self, *, wait: float = 0.0, show_progress: bool | None = None, command: str | None = None) -> dict:
        """Merge every segment into one, dropping deleted documents: see :func:`mvr.writer.optimize`."""
        return optimize(self, wait=wait, show_progress=show_progress, command=command)

    def upgrade(self, *, wait: float = 0.0) -> bool:
        """Convert a version-1 index to segments and commits (True when it was one)."""
        from .build import upgrade

        return upgrade(self, wait=wait)

    def save_search_preset(self, name: str, options: dict, *, default: bool = True, wait: float = 0.0) -> dict:
        """Save ``options`` (:class:`mvr.SearchOptions` values, ``first_stage`` and ``candidates``
        too) as the search preset ``name`` in a new commit; ``default``: the search done when none
        is named (mvr/search_presets.py). Returns the commit."""
        from .search_presets import check

        check_flags(default=default)
        options = check(self, name, options)
        with Writer(self, wait) as writer:
            found = saved(writer.record, replace_damaged=True)  # a damaged record's presets were unusable
            search = {"default": name if default else found["default"], "presets": {**found["presets"], name: options}}
            return writer.commit(_entries(writer.record), "search-preset", search=search)

    def build_stage(self, name: str, settings=None, *, threads: int | None = None, command: str | None = None, show_progress=None, wait: float = 0.0) -> dict:
        """(Re)build the first stage ``name`` from what the index stores: see :func:`mvr.build.rebuild_stage`."""
        from .build import rebuild_stage

        return rebuild_stage(self, name, settings, threads=threads, command=command, show_progress=show_progress, wait=wait)

    def build_fde(self, config: FDEConfig | None = None, *, threads: int | None = None, command: str | None = None, wait: float = 0.0) -> dict:
        """(Re)build the FDE first stage from the stored token vectors, without re-encoding."""
        return self.build_stage("fde", config, threads=threads, command=command, wait=wait)  # None: the settings the index records, else the defaults

    def build_sparse(self, stages: Sequence[str] | None = None, *, splade_model=None, command: str | None = None, show_progress=None, wait: float = 0.0) -> dict:
        """(Re)build text first stages from the stored texts: a name or a list of them ("bm25", "bm25s", "splade" with
        ``splade_model``, a masked-LM folder, else the index's; default: ``IndexConfig().sparse``). Returns their manifests by stage."""
        from .stages import text_stages  # text stages only, once each

        return {s: self.build_stage(s, splade_model if s == "splade" else None, command=command, show_progress=show_progress, wait=wait) for s in text_stages(stages, splade_model)}


__all__ = ["Changes", "Writer", "add", "delete", "merge", "merge_policy", "optimize", "plan_merge", "CorpusError"]
