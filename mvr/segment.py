"""One segment of an index, opened: an immutable folder of documents (token store, ids, texts,
titles, metadata) and the first stages built over them. An :class:`mvr.Index` is the segments of
one commit (storage/commits.py) with their deletions; the search pipeline (mvr/search.py) runs on
each segment and merges.

A version-1 index (everything in one folder) is read as a single segment. :class:`Commit` holds
the segments of one commit, opened, with their deleted rows.
"""

from __future__ import annotations

import functools
import threading
from pathlib import Path
from typing import Sequence

import numpy as np

from .corpus import Document
from .encode.encoder import identity_differences
from .errors import ConfigError, IndexFormatError, QueryError
from .registry import STAGES, parse_stage, store_class
from .stages import Hybrid, has_stage, open_stage, stage_class
from .storage import Blob, read_manifest
from .storage.commits import SEGMENTS, check_same_files, commit_name, pin_commit, pin_current, read_deletes
from .storage.formats import SEGMENT_FORMAT, SEGMENT_VERSION, TOKEN_IDS, rebuild_command
from .storage.layout import recover_stages
from .storage.metadata import Metadata, read_types
from .storage.validate import index_config
from .threads import load_npy
from .vectors.heads import FILE as HEAD_FILE, Head


class Segment:
    """The documents of one folder, memory-mapped, checked against the files on open.

    ``index_name`` names the index in messages; ``fields``: the metadata fields of the whole
    index with their types (a field this segment lacks reads as absent everywhere in it).
    """

    def __init__(self, path: Path, manifest: dict, index_name: str, fields: dict | None = None, splade_model=None):
        from .storage.validate import check_arrays, damaged, index_config, load_array

        self.path = Path(path)
        self.manifest = manifest
        self.index_name = index_name
        self.still_here = functools.partial(check_same_files, self.path, manifest.get("files"), index_name)
        # The manifest's fields, then every count and offset against the files: the kernels trust them.
        self.config = index_config(self.path, manifest)
        counts = manifest["counts"]
        self.n_docs, self.n_tokens, self.dim, self.max_doc_len = (counts[k] for k in ("documents", "tokens", "dim", "max_doc_len"))
        self.doc_offsets = check_arrays(self.path, manifest, self.config)
        store = store_class(self.config.codec)
        try:
            self.tokens = store.open(self.path, self.config, self.dim, self.doc_offsets)
            self.scorer = self.tokens  # what search scores with: the store, or its MaxSim on a GPU (open_commit's device)
        except (OSError, ValueError, TypeError) as error:
            raise damaged(self.path, "", f"the manifest says its vectors are stored as {self.config.codec}, but they cannot be read that way ({error})") from None
        if (len(self.tokens), self.tokens.dim, self.tokens.max_doc_len) != (self.n_tokens, self.dim, self.max_doc_len):
            raise damaged(self.path, "", "its token store does not match the manifest's counts")
        self.vectors_sha256 = manifest["files"][store.files[0]]["sha256"]
        self.doc_ids_sha256 = manifest["files"]["doc_ids.npy"]["sha256"]
        self.doc_ids = load_array(self.path, "doc_ids.npy", mmap=True)
        self._id_order = None
        self._token_ids: tuple | None = None  # (the token ids, or None where none are stored), read once
        self._texts = Blob(self.path, "text")
        self._titles = Blob(self.path, "title")
        self.projection = load_array(self.path, "projection.npy") if (self.path / "projection.npy").is_file() else None
        if (self.path / HEAD_FILE).is_file():  # a trained head (mvr train-projection)
            try:
                self.projection = Head.load(self.path / HEAD_FILE)
            except ConfigError as error:
                raise IndexFormatError(f"segment {self.path} is damaged: {error} Rebuild it with `mvr index`.") from None
            if self.projection.shape != (manifest["counts"].get("model_dim"), self.dim):
                raise IndexFormatError(f"segment {self.path} is damaged: its projection head maps {self.projection.shape}, the manifest says model_dim {manifest['counts'].get('model_dim')} and dim {self.dim}; rebuild it with `mvr index`.")
        self.metadata = Metadata(self.path, self.n_docs, fields, guard=self.read_lazily)
        self.splade_model = splade_model
        self._stages: dict = {}
        self._present: dict[str, bool] = {}  # has_stage's answers
        self._stage_lock = threading.Lock()  # lazy opening of the first stages

    @classmethod
    def open(cls, path: Path, index_name: str, fields: dict | None = None, splade_model=None, legacy: bool = False) -> "Segment":
        manifest = read_manifest(path) if legacy else read_manifest(path, SEGMENT_FORMAT, SEGMENT_VERSION)
        return cls(path, manifest, index_name, fields, splade_model)

    @property
    def name(self) -> str:
        """The index's name, as the first stages say it in their messages."""
        return self.index_name

    # -- first stages --------------------------------------------------------------------------
    def has_stage(self, name: str) -> bool:
        """Whether the segment has the first stage ``name``. A segment's stages never change, so the
        answer is kept; one absent is first checked to be absent from the folder this reader opened
        (after a rebuild at the path the folder holds another index's: IndexNotFoundError)."""
        for part in parse_stage(name):
            if part not in self._present:
                found = part in self._stages or has_stage(self.path, part)
                if not found:
                    self.still_here()
                self._present[part] = found
        return all(self._present[part] for part in parse_stage(name))

    def read_lazily(self, load):
        """``load()``, which reads files of this segment after its commit was opened, between two
        checks that the folder still holds the files this reader opened: a rebuild at the path may
        swap the folder meanwhile, and a load then reads another index's file, or none
        (IndexNotFoundError, not that file's rows or a FileNotFoundError)."""
        self.still_here()
        try:
            value = load()
        except (OSError, ValueError, IndexFormatError):
            self.still_here()
            raise
        self.still_here()
        return value

    def stage(self, name: str):
        stage = self._stages.get(name)
        if stage is None:
            self.require(name)  # a stage absent from a folder swapped by a rebuild is told apart (has_stage)
            with self._stage_lock:
                stage = self._stages.get(name) or self.read_lazily(lambda: open_stage(name, self))
                self._stages[name] = stage
        return stage

    def require(self, name: str) -> None:
        for part in parse_stage(name):
            if not self.has_stage(part):
                raise QueryError(
                    f"index {self.index_name!r} has no {part} first stage; add it with `{rebuild_command(part, self.index_name)}` (Index.build_stage), or search with another first stage."
                )

    def first_stage(self, name: str, options=None):
        parts = parse_stage(name)
        if len(parts) == 2:
            return Hybrid(self.stage(parts[0]), self.stage(parts[1]), None if options is None else options.dense_share)
        return self.stage(parts[0])

    # -- documents -----------------------------------------------------------------------------
    def document(self, position: int) -> Document:
        return Document(id=str(self.doc_ids[position]), text=self._texts[position], title=self._titles[position], metadata=self.metadata.row(position))

    def token_ids(self) -> np.ndarray | None:
        if self._token_ids is None:  # read once (explain asks for every hit): a segment's files never change
            path = self.path / TOKEN_IDS
            self._token_ids = (self.read_lazily(lambda: load_npy(path, mmap_mode="r") if path.is_file() else None),)
        return self._token_ids[0]

    def positions(self, doc_ids) -> np.ndarray:
        """int64 row of each id in ``doc_ids`` (-1 where this segment does not hold it)."""
        if self._id_order is None:
            order = self.read_lazily(lambda: load_npy(self.path / "doc_ids_order.npy"))
            self._id_order = (order, np.asarray(self.doc_ids)[order])
        order, sorted_ids = self._id_order
        wanted = np.asarray(list(doc_ids), dtype=str) if not isinstance(doc_ids, np.ndarray) else doc_ids
        out = np.full(len(wanted), -1, dtype=np.int64)
        if not len(sorted_ids) or not len(wanted):
            return out
        at = np.searchsorted(sorted_ids, wanted)
        found = np.zeros(len(wanted), dtype=bool)
        found[at < len(sorted_ids)] = sorted_ids[at[at < len(sorted_ids)]] == wanted[at < len(sorted_ids)]
        out[found] = order[at[found]]
        return out

    def position(self, doc_id: str) -> int:
        """Row of the document with external id ``doc_id`` (KeyError if absent)."""
        at = int(self.positions(np.array([doc_id], dtype=str))[0])
        if at < 0:
            raise KeyError(doc_id)
        return at

    def score(self, query: np.ndarray, positions: np.ndarray) -> np.ndarray:
        return self.scorer.score(np.ascontiguousarray(query, dtype=np.float32), np.asarray(positions, dtype=np.int64))

    def __len__(self) -> int:
        return self.n_docs

    def __repr__(self) -> str:
        return f"Segment({self.path.name!r}, documents={self.n_docs}, tokens={self.n_tokens})"


class Commit:
    """What one commit holds, opened: its segments, their deleted rows, where each starts. Searches
    read one of these whole, so a refresh in another thread never mixes two commits."""

    def __init__(self, index_name: str, generation: int, segments: list[Segment], deleted: list[np.ndarray], record: dict, pin=None):
        self.index_name = index_name
        self.pin = pin  # storage.commits.Pin: released when this state is garbage
        self.generation = generation
        self.segments = segments
        self.deleted = deleted
        self.record = record
        self.bases = np.zeros(len(segments) + 1, dtype=np.int64)
        np.cumsum([s.n_docs for s in segments], out=self.bases[1:])
        self.n_rows = int(self.bases[-1])
        self.n_live = self.n_rows - sum(int(d.sum()) for d in deleted)
        self._doc_ids = None

    @functools.cached_property
    def fields(self) -> dict[str, str]:
        """``{field: type}`` of the index's metadata: the segments' and those the commit records
        (a field stays known when its last segment goes: filters on it match nothing). A commit
        never changes: worked out once (every search checks its filter against it)."""
        return {**self.record.get("metadata_fields", {}), **{n: f["type"] for s in self.segments for n, f in s.metadata.fields.items()}}

    def each(self, work, items) -> list:
        """``[work(item) for item in items]``, each item a segment's work; a commit whose segments are
        held by Ray actors (mvr/distributed/shards.py) runs them at once, one shard beside another."""
        return [work(item) for item in items]

    def live(self, s: int) -> np.ndarray | None:
        """bool mask of the live rows of segment ``s`` (None: all of them)."""
        return ~self.deleted[s] if self.deleted[s].any() else None

    def segment_of(self, positions: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.bases, positions, side="right") - 1

    def locate(self, position: int) -> tuple[Segment, int]:
        if not 0 <= position < self.n_rows:
            raise IndexError(f"position {position} is outside the index's {self.n_rows} rows")
        s = int(self.segment_of(np.array([position]))[0])
        return self.segments[s], position - int(self.bases[s])

    def document(self, position: int) -> Document:
        segment, row = self.locate(position)
        return segment.document(row)

    @property
    def doc_ids(self) -> np.ndarray:
        """The id of every row, deleted ones included (indexed by position)."""
        if len(self.segments) == 1:
            return self.segments[0].doc_ids
        if self._doc_ids is None:
            self._doc_ids = np.concatenate([np.asarray(s.doc_ids) for s in self.segments]) if self.segments else np.zeros(0, dtype=str)
        return self._doc_ids

    def score(self, query: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Exact MaxSim of one query against the documents at ``positions`` of this commit, each
        scored by its segment's token store: float32 ``(len(positions),)``."""
        query, positions = np.ascontiguousarray(query, dtype=np.float32), np.asarray(positions, dtype=np.int64)
        owner, out = self.segment_of(positions), np.empty(len(positions), dtype=np.float32)
        for s in np.unique(owner):
            out[owner == s] = self.segments[s].score(query, positions[owner == s] - self.bases[s])
        return out

    def positions(self, doc_ids: Sequence[str]) -> np.ndarray:
        """int64 position of each live document id (-1 where none has it). An id longer than all
        stored ones is none's, and kept out of the array (a client's megabyte-long id would widen it);
        so is one holding NUL, which no stored id does (NumPy's strings drop a trailing one: "d1\\0" was "d1")."""
        doc_ids, width = [str(d) for d in doc_ids], max((s.doc_ids.dtype.itemsize // 4 for s in self.segments), default=0)
        fits = np.flatnonzero([len(d) <= width and "\x00" not in d for d in doc_ids]).astype(np.int64)
        wanted, out = np.asarray([doc_ids[i] for i in fits], dtype=str), np.full(len(doc_ids), -1, dtype=np.int64)
        for s, segment in enumerate(self.segments):
            rows = segment.positions(wanted)
            hit = rows >= 0
            hit[hit] = ~self.deleted[s][rows[hit]]
            out[fits[hit]] = rows[hit] + self.bases[s]
        return out


def _on(segment: Segment, device: str) -> Segment:
    if device != "cpu":
        from .storage.torch_tokens import TorchTokens

        segment.scorer = TorchTokens(segment.tokens, device)  # the store itself stays: builds and checks read its type
    return segment


def open_commit(path: Path, index_name: str, splade_model=None, previous: "Commit | None" = None, device: str = "cpu", generation: int | None = None) -> "Commit":
    """The current commit of the index at ``path`` (or the commit ``generation``), opened and pinned
    (a version-1 index: its one folder, read-only). Segments of ``previous`` (the commit read before)
    are reused as they are. ``device`` other than "cpu": exact MaxSim runs in PyTorch there."""
    pointer, record, pin = pin_current(path) if generation is None else (None, *pin_commit(path, generation))
    try:
        if record is None:  # version 1: the whole index in one folder, read-only
            segment = _on(Segment.open(path, index_name, splade_model=splade_model, legacy=True), device)
            state = Commit(index_name, 0, [segment], [np.zeros(segment.n_docs, dtype=bool)], {"config": pointer["config"], "encoder": pointer["encoder"], "segments": []})
            state.legacy, state.manifest, state.config = True, dict(segment.manifest), segment.config
            return state
        folders = [path / SEGMENTS / seg["name"] for seg in record["segments"]]
        fields = record.get("metadata_fields", {})  # each field with its first type: the commit's, then the segments'
        if not isinstance(fields, dict) or not all(isinstance(n, str) and t in ("string", "strings", "number", "bool") for n, t in fields.items()):
            raise IndexFormatError(f"{path / commit_name(record['generation'])}: its metadata_fields are no {{field: type}} mapping; the index is damaged: `mvr info {path} --verify`.")
        fields = dict(fields)
        for folder in folders:
            fields.update({name: kind for name, kind in read_types(folder).items() if name not in fields})
        segments, deleted = [], []
        # segments never change: those of the commit this index reads now are reused as they are
        opened = {s.path.name: s for s in (previous.segments if previous is not None else []) if {n: f["type"] for n, f in s.metadata.fields.items()} == fields}  # the types too: a field may come back as another
        for seg, folder in zip(record["segments"], folders):
            segment = opened.get(seg["name"])
            if segment is None:
                recover_stages(folder, {name: (stage_class(name).format,) for name in STAGES})
                segment = _on(Segment.open(folder, index_name, fields, splade_model), device)
            if segment.n_docs != seg["documents"]:
                raise IndexFormatError(f"{folder}: the commit says {seg['documents']} documents, the segment holds {segment.n_docs}; the index is damaged.")
            segments.append(segment)
            gone = read_deletes(folder, seg.get("deletes"), segment.n_docs)
            if int(gone.sum()) != seg["deleted"]:
                raise IndexFormatError(f"{folder}: its deletion bitmap holds {int(gone.sum())} deleted rows, the commit says {seg['deleted']}; the index is damaged.")
            deleted.append(gone)
        config = index_config(path, {**(segments[0].manifest if segments else EMPTY), "config": record["config"], "encoder": record["encoder"]}, commit_name(record["generation"]))
        for segment in segments:
            if segment.config != config or identity_differences(record["encoder"], segment.manifest["encoder"]):  # the model's folder may have moved between writes
                raise IndexFormatError(
                    f"{segment.path}: written with other settings or another encoder than {path / commit_name(record['generation'])} records; "
                    f"the index is damaged: `mvr info {path} --verify` checks all of it."
                )
    except BaseException:
        if pin is not None:
            pin.release()
        raise
    # the pin lives as long as this commit's state: a search still running on it (or results
    # still read from it) keeps its files from being collected after a refresh
    state = Commit(index_name, record["generation"], segments, deleted, record, pin)
    state.legacy, state.manifest, state.config = False, describe(record, segments), config
    return state


def describe(record: dict, segments: list[Segment]) -> dict:
    """The index's manifest as one dict: the commit's config and encoder, counts over every segment."""
    first = segments[0].manifest if segments else EMPTY
    counts = dict(first["counts"])
    for key in ("documents", "tokens", "source_tokens", "truncated_documents", "skipped_empty_documents", "pruned_tokens"):
        if key in counts or key in ("documents", "tokens"):
            counts[key] = sum(s.manifest["counts"].get(key, 0) for s in segments)
    counts["max_doc_len"] = max((s.max_doc_len for s in segments), default=0)
    counts["deleted_documents"] = sum(seg["deleted"] for seg in record["segments"])
    counts["documents"] -= counts["deleted_documents"]
    search_bytes = sum(s.manifest["bytes_per_token"] * s.manifest["counts"].get("source_tokens", s.n_tokens) for s in segments)
    return {
        **first,
        "format_version": 2,
        "generation": record["generation"],
        "config": record["config"],
        "encoder": record["encoder"],
        "counts": counts,
        "segments": len(segments),
        "bytes_per_token": round(search_bytes / max(counts.get("source_tokens", counts["tokens"]), 1), 3),
        "files": {f"{SEGMENTS}/{s.path.name}/{name}": meta for s in segments for name, meta in s.manifest["files"].items()},
    }


EMPTY = {"counts": {"documents": 0, "tokens": 0, "dim": 1, "max_doc_len": 0}, "build": {}, "created": "", "bytes_per_token": 0.0, "files": {}}
