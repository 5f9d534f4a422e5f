"""An index, opened: the segments of one commit (mvr/segment.py, storage/commits.py) with their
deletions, the query encoder, and a search that runs the pipeline (mvr/search.py) on every segment
and merges. Building lives in mvr/build.py; adding, deleting and merging in mvr/writer.py.

    >>> import mvr
    >>> index = mvr.Index.build(["a passage", "another passage"], "demo")   # doctest: +SKIP
    >>> index.add([{"id": "3", "text": "a third passage"}]); index.search("which passage?", k=5)[0][0].id   # doctest: +SKIP

Positions: the rows of every segment of the commit, one after the other (deleted rows keep their
place and are never returned); they are stable until the index moves to another commit.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from . import search as pipeline, search_presets
from .config import IndexConfig
from .corpus import Document
from .device import resolve_device
from .encode import Encoder, TokenVectors
from .encode.encoder import identity_differences
from .encode.queries import index_encoder, query_encoder, remember
from .errors import ConfigError, MvrError, QueryError
from .explain import explain_results
from .registry import DEFAULT_STAGES, EXHAUSTIVE, STAGES, needs_vectors, parse_stage
from .passages import rows_of
from .results import Hit, Results
from .search import SearchOptions
from .segment import Commit, Segment, open_commit
from .summary import describe_index, stage_bytes
from .writer import Changes
from .stages import stage_class
from .storage import locate
from .storage.commits import current_pointer, index_identity
from .storage.layout import recover_stages
from .vectors import project

_MOVED = {"fde": "index.stage('fde')", "sparse": "index.stage(name)", "has_fde": "index.has_stage('fde')", "coded": "index.tokens",
          "doc_codes": "index.tokens (the TokenStore; float16 bits as index.tokens.codes)", "_score": "index.score(query_vectors, positions)"}
_ONE_SEGMENT = ("tokens", "doc_offsets", "stage", "token_ids", "vectors_sha256", "doc_ids_sha256", "metadata")

__all__ = ["Index", "Hit", "Results", "SearchOptions", "identity_differences"]


def _position(position) -> int:  # a document's position, not its id
    if not isinstance(position, (int, np.integer)) or isinstance(position, bool):
        raise TypeError(f"a position is an integer, got {type(position).__name__} {position!r}; a document's id gives its position: index.position(doc_id).")
    return int(position)


class Index(Changes):
    """An index at one commit, memory-mapped. Create with :meth:`build`, load with :meth:`open`,
    change with :meth:`add`, :meth:`upsert`, :meth:`delete`, :meth:`optimize`; :meth:`refresh`
    moves a reader to the newest commit."""

    def __init__(self, path: Path, model=None, splade_model=None, device: str | None = None):
        self.path = Path(path)
        self.splade_model = splade_model
        self.device = resolve_device(device)
        self._model = model
        self._encoder: tuple | None = None  # (the index's identity, its query encoder): another index built at the path has its own
        self._lean: tuple | None = None  # (the same, its QueryEncoder, or None where there is none: see _queries)
        self._encoder_lock, self._refresh_lock = threading.Lock(), threading.Lock()  # lazy loading of the query encoder; refresh
        self._state: Commit = self._read()

    def _read(self) -> Commit:
        """The current commit, opened, pinned and made this index's state with the identity of the index
        at the path (folder, index_id); the last commit's segments reused, unless a rebuild put another there."""
        folder = current_pointer(self.path, patience=0)[1]
        reuse = getattr(self, "_state", None) if folder == getattr(self, "_folder", folder) else None
        state = open_commit(self.path, self.name, self.splade_model, reuse, self.device)
        opened = index_identity(self.path, state.record)
        if reuse is not None and opened != folder:  # a rebuild's swap between the two reads: reuse nothing of the other index
            state = open_commit(self.path, self.name, self.splade_model, None, self.device)
            opened = index_identity(self.path, state.record)
        self._state, self._folder = state, opened or folder  # the state first: an encoder loaded for the new identity reads the new record
        return state

    manifest = property(lambda self: self._state.manifest, doc="The index's manifest as one dict: the commit's config and encoder, counts over every segment.")
    config: IndexConfig = property(lambda self: self._state.config, doc="The settings of the index's commit (:class:`IndexConfig`).")
    legacy = property(lambda self: self._state.legacy, doc="Whether this is a version-1 index (read-only until converted: :meth:`upgrade`).")

    # -- opening -------------------------------------------------------------------------------
    @classmethod
    def open(cls, name_or_path: str | os.PathLike, *, home: str | os.PathLike | None = None, model=None, splade_model=None, device: str | None = None) -> "Index":
        """Open an index by name (under ``home``, default ``$MVR_INDEX_DIR`` or ``./indexes``) or path,
        at its newest commit (kept while other processes write; :meth:`refresh` moves on).

        ``model``: an :class:`Encoder` or a model folder for the queries; by default the model the
        index was built with (another is refused at the first search). ``splade_model``: likewise
        for the SPLADE first stage, when its model folder has moved. ``device``: where exact MaxSim
        and query encoding run, "auto" (None: ``$MVR_DEVICE``, else auto), "cpu", "cuda", "cuda:N"."""
        from .storage.commits import read_pointer

        if not isinstance(name_or_path, (str, os.PathLike)) or (model is not None and not isinstance(model, (str, os.PathLike, Encoder))):
            raise ConfigError(f"open an index by its name or path (str or Path), with model= an Encoder or a model folder; got {type(name_or_path).__name__} and {type(model).__name__}.")
        if splade_model is not None and not isinstance(splade_model, (str, os.PathLike)):
            raise ConfigError(f"splade_model is the folder of the SPLADE model (a str or a path), got {type(splade_model).__name__}.")
        path = locate(name_or_path, home)
        if read_pointer(path)["format_version"] == 1:
            recover_stages(path, {name: (stage_class(name).format,) for name in STAGES})
        return cls(path, model=model, splade_model=splade_model, device=device)

    def refresh(self) -> bool:
        """Move to the index's newest commit; True when there was a newer one. Searches running in
        other threads finish on the commit they started with (its files stay while they read them)."""
        with self._refresh_lock:  # one at a time, never back to an older commit
            pointer, folder = current_pointer(self.path)
            replaced = folder != self._folder  # a new index at this path: its generations count from 1 again
            newer = pointer["format_version"] > 1 and (self.legacy or replaced or pointer["generation"] > self._state.generation)
            if newer:
                self._state = self._read()
            return newer

    generation = property(lambda self: self._state.generation, doc="The commit this index reads (0: a version-1 index).")
    segments = property(lambda self: list(self._state.segments), doc="The segments of that commit (a list of :class:`Segment`).")
    name = property(lambda self: self.path.name)
    n_docs = property(lambda self: self._state.n_live, doc="Live documents (deleted ones not counted).")
    n_rows = property(lambda self: self._state.n_rows, doc="Rows of every segment, deleted ones included: positions run from 0 to n_rows - 1.")
    n_tokens = property(lambda self: sum(s.n_tokens for s in self._state.segments))
    max_doc_len = property(lambda self: max((s.max_doc_len for s in self._state.segments), default=0))
    dim = property(lambda self: self._state.segments[0].dim if self._state.segments else self._state.record.get("dim", 0))
    projection = property(lambda self: self._state.segments[0].projection if self._state.segments else None)  # one for every segment
    metadata_fields = property(lambda self: dict(self._state.fields), doc="``{field: type}`` of the index's metadata, as its commit records them too")

    def _one(self) -> Segment:
        segments = self._state.segments
        if len(segments) != 1:
            raise MvrError(f"index {self.name!r} has {len(segments)} segments; this reads one (index.segments[i] does): "
                           f"merge them with `mvr optimize {self.name}` (Index.optimize()).")
        return segments[0]

    @property
    def encoder(self) -> Encoder:
        """The query encoder, loaded on first use and checked against the index's record."""
        return self._kept("_encoder", lambda: self._load_encoder(device=self.device))

    def _queries(self):
        """What encodes queries: where it encodes as the Encoder does, one without PyTorch and
        transformers (mvr/encode/queries.py: a second off a cold search), else the Encoder."""
        if self.device == "cpu" and not isinstance(self._model, Encoder):
            lean = self._kept("_lean", lambda: query_encoder(self.manifest["encoder"], self._model))
            if lean is not None:
                return lean
        return self.encoder

    def _kept(self, attribute: str, load):
        """``load()``, kept for the index at the path (another index built there has its own)."""
        kept = getattr(self, attribute)
        if kept is None or kept[0] != self._folder:
            with self._encoder_lock:
                kept = getattr(self, attribute)
                if kept is None or kept[0] != self._folder:
                    kept = (self._folder, load())
                    setattr(self, attribute, kept)
        return kept[1]

    def _load_encoder(self, **runtime) -> Encoder:
        """The index's model as an Encoder (``runtime``: batch_size, threads, doc_runtime, ...),
        checked against the index's record; a given Encoder as it is."""
        return index_encoder(self.name, self.manifest["encoder"], self._model, **runtime)

    # -- first stages --------------------------------------------------------------------------
    def has_stage(self, name: str) -> bool:
        """Whether the first stage ``name`` (a hybrid too) can run on this index (on every segment;
        in an index emptied by deletes, whether its builds make it)."""
        segments = self._state.segments
        if not segments:
            from .segment_build import planned_stages

            return set(parse_stage(name)) <= set(planned_stages(self.config))
        return all(s.has_stage(name) for s in segments)

    def first_stage(self, name: str, options: SearchOptions | None = None):
        """What finds candidates for ``name`` in a one-segment index (pipeline.run does it per segment)."""
        return self._one().first_stage(name, options)

    @property
    def default_stage(self) -> str:
        """The first stage used when none is named: a vector stage (the FDE, else the centroid stage)
        joined by bm25s where the index has both (docs/fde.md, docs/scale.md), else the vector stage alone, else exhaustive."""
        return self._default_stage(with_texts=True)

    def _default_stage(self, with_texts: bool) -> str:
        for stage in DEFAULT_STAGES if with_texts else [stage for stage in DEFAULT_STAGES if "+" not in stage]:
            if self.has_stage(stage):
                return stage
        return EXHAUSTIVE

    # -- documents -----------------------------------------------------------------------------
    def document(self, position: int) -> Document:
        """The document at ``position``."""
        return self._state.document(_position(position))

    def documents(self) -> Iterable[Document]:
        """Every live document, in index order."""
        state = self._state
        for s, segment in enumerate(state.segments):
            for row in np.flatnonzero(~state.deleted[s]):
                yield segment.document(int(row))

    @property
    def doc_ids(self) -> np.ndarray:
        """The id of every position (deleted rows included)."""
        return self._state.doc_ids

    def document_vectors(self, position: int) -> np.ndarray:
        """The stored token vectors of the document at ``position``, decoded: float32 ``(n, dim)``."""
        segment, row = self._state.locate(_position(position))
        return segment.tokens.document(row)

    def position(self, doc_id: str) -> int:
        """Position of the live document with external id ``doc_id`` (in an index of passages, of its
        first live passage, or else of the passage with that row id); KeyError if absent."""
        rows = rows_of(self._state, [doc_id]) if isinstance(doc_id, str) and self.config.passage_tokens else []
        at = int(rows[0]) if len(rows) else int(self._state.positions([doc_id])[0]) if isinstance(doc_id, str) else -1
        if at < 0:
            raise KeyError(doc_id)
        return at

    def __contains__(self, doc_id) -> bool:
        try:
            return self.position(doc_id) >= 0
        except KeyError:
            return False

    def __len__(self) -> int:
        return self.n_docs

    def __getattr__(self, name: str):
        # only reached for names that do not exist: say where what moved in the restructure went
        if name in _ONE_SEGMENT:
            return getattr(self._one(), name)
        if name in _MOVED:
            raise AttributeError(f"Index.{name} is gone; use {_MOVED[name]} (docs/architecture.md).")
        raise AttributeError(f"'Index' object has no attribute {name!r}")

    def __reduce__(self):  # pickle, deepcopy (a framework's copy of a retriever, another process): the index opened again at its path
        return Index, (self.path, self._model, self.splade_model, self.device)  # an Encoder as its settings (mvr/encode/__init__.py)

    def __repr__(self) -> str:
        return f"Index({self.name!r}, documents={self.n_docs}, segments={len(self._state.segments)}, generation={self.generation})"

    # -- search --------------------------------------------------------------------------------
    def encode_queries(self, queries: str | Sequence[str], *, batch_size: int | None = None, threads: int | None = None) -> TokenVectors:
        """Token vectors of queries, projected like the documents when the index uses PCA."""
        texts = pipeline.query_strings(queries)
        if not self._state.segments and (self.config.projection or self.config.pca_dim):
            raise QueryError(f"index {self.name!r} holds no documents, and its projection of query vectors went with them; add documents before encoding queries for it.")
        encoder = self._queries()
        encoded = encoder.encode_queries(texts, batch_size=batch_size, threads=threads, show_progress=False)
        if isinstance(encoder, Encoder):
            remember(encoder)  # so that the next process encodes queries without PyTorch (mvr/encode/queries.py)
        return TokenVectors(project(encoded.vectors, self.projection, queries=True), encoded.offsets, encoded.truncated, encoded.token_ids, encoded.model)

    def score(self, query: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Exact MaxSim of one query (float32 ``(n_tokens, dim)``) against the documents at
        ``positions`` (int64), whatever the codec: float32 ``(len(positions),)``."""
        state = self._state
        return state.score(*pipeline.scored_inputs(query, positions, self.dim, state.n_rows))

    def rerank(self, query: str, ids: Sequence[str], k: int | None = None) -> list[Hit]:
        """The documents with these ``ids`` ordered by exact MaxSim of their stored vectors against
        ``query`` (PyLate's ``rank.rerank`` order; ties keep the given order): see :mod:`mvr.reranking`."""
        from .reranking import rerank_ids  # which imports this module
        return rerank_ids(self, query, ids, k)

    def search(self, queries: str | Sequence[str], k: int = 10, *, first_stage: str | None = None, candidates: int | None = None, threads: int | None = None, **options) -> Results:
        """Top-``k`` documents of each query. A single string is one query.

        ``first_stage``: ``"fde"`` (MUVERA), ``"bm25"`` (Lucene through pyserini), ``"bm25s"``,
        ``"splade"``, ``"pooled"`` or a hybrid such as ``"fde+bm25s"`` (the union of both rankings,
        see ``dense_share``) find ``candidates`` (default 100) documents that exact MaxSim reranks;
        ``"exhaustive"`` scores every document. None: the index's default search preset if it has
        one (``preset``: another, or "none"; mvr/search_presets.py), else :attr:`default_stage`.
        ``threads``: CPU threads for encoding and scoring. Further options: :class:`SearchOptions`.
        ``timings`` (ms) add ``encode`` to :meth:`search_encoded`'s. ``explain``: each hit's :attr:`Hit.explanation`
        (:mod:`mvr.explain`): the document token behind each query token's maximum, its span, its share of the score.
        """
        texts = pipeline.query_strings(queries)
        explain = pipeline.flag("explain", options.pop("explain", False))
        opts, k = self._options(k, first_stage, candidates, options, with_texts=True)
        if not texts or not self._state.segments:  # no queries; or no documents (a projected index's projection went with its segments)
            return Results.empty(len(texts), k, self._state, explain)
        started = time.perf_counter()
        encoded = self.encode_queries(texts, threads=threads) if explain or opts.rerank or needs_vectors(opts.first_stage) else None
        encode_ms = (time.perf_counter() - started) * 1e3
        results = self._run(encoded, k, texts, opts, threads)
        results.timings, results.truncated = {"encode": encode_ms, **results.timings}, None if encoded is None else encoded.truncated
        if explain:
            results.explanations = explain_results(self, encoded, results)
        return results

    def search_encoded(
        self, queries: TokenVectors | None, k: int = 10, *, texts: Sequence[str] | None = None, first_stage: str | None = None,
        candidates: int | None = None, threads: int | None = None, **options,
    ) -> Results:
        """Search with queries already encoded (float32 ``(n_tokens, dim)`` + offsets). Text first
        stages also need the query ``texts``; ``queries`` may be None when nothing is reranked.
        Without ``texts`` no default search preset applies (a named one does) and the default first
        stage is ``fde`` (else the centroid or pooled stage, else exhaustive).

        The returned :class:`Results` carry ``timings`` (ms): ``first_stage`` and ``rerank``, and
        ``fallbacks``: queries whose text first stage found nothing (no searchable terms) and
        that the dense first stage answered instead.
        """
        opts, k = self._options(k, first_stage, candidates, options, with_texts=texts is not None)
        return self._run(queries, k, texts, opts, threads)

    def _run(self, queries: TokenVectors | None, k: int, texts, opts: SearchOptions, threads) -> Results:
        batch = pipeline.query_batch(queries, texts, opts, self.dim, f"index {self.name!r}", self.manifest["encoder"])
        return pipeline.run(self._state, batch, k, opts, threads)

    def _options(self, k, first_stage: str | None, candidates: int | None, options: dict, with_texts: bool) -> tuple[SearchOptions, int]:
        """The search options (a saved preset's under the caller's: mvr/search_presets.py), every
        stage they read checked, and ``k`` capped at the index's documents (the results are
        ``(n_queries, k)`` arrays; a huge k would not fit in memory)."""
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise QueryError(f"k must be a positive integer, got {k!r}.")
        options = {"preset": search_presets.NONE, **options} if not with_texts and first_stage is None else options  # a default preset may read texts
        k = min(int(k), max(self._state.n_live, 1))
        first_stage, candidates, merged, preset = search_presets.resolve(lambda: self.search_presets, first_stage, candidates, options, k)
        opts = search_presets.create(SearchOptions, preset, first_stage=self._default_stage(with_texts) if first_stage is None else first_stage, candidates=candidates, **merged)
        pipeline.check_stages(opts, self._state, given=options)  # before the model loads
        return opts, k

    @property
    def search_presets(self) -> dict:
        """The index's saved search presets: ``{"default": name or None, "presets": {name: options}}``."""
        return search_presets.saved(self._state.record)

    # -- building (mvr/build.py); changes (add, delete, ...) come from writer.Changes ---------------
    @classmethod
    def build(cls, documents, name, **kwargs) -> "Index":
        """Encode ``documents`` into the index ``name``: see :func:`mvr.build.build`."""
        from .build import build, keywords

        return build(documents, name, **keywords(build, kwargs))

    @classmethod
    def derive(cls, source, name, **kwargs) -> "Index":
        """A pruned / clustered / compressed index from a float16 one: see :func:`mvr.build.derive`."""
        from .build import derive

        return derive(source, name, **kwargs)

    def info(self) -> dict:
        """Summary for ``mvr info``: counts, sizes, encoder, config, build figures, segments and first stages."""
        return describe_index(self)

    def stage_bytes(self) -> dict[str, int]:
        """Bytes on disk of each built first stage, over every segment."""
        return stage_bytes(self)
