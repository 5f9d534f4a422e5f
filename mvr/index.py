"""An index, opened: its documents, its token store, its first stages, and a search that delegates
to the pipeline (mvr/search.py). Building and deriving live in mvr/build.py.

    >>> import mvr
    >>> index = mvr.Index.build(["a passage", "another passage"], "demo")   # doctest: +SKIP
    >>> index = mvr.Index.open("demo")                                      # doctest: +SKIP
    >>> results = index.search("which passage?", k=5)                      # doctest: +SKIP
    >>> results[0][0].id, results[0][0].score, results[0][0].text           # doctest: +SKIP
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from . import search as pipeline
from .config import FDEConfig, IndexConfig
from .corpus import Document
from .encode import Encoder, TokenVectors
from .encode.encoder import identity_differences
from .errors import EncoderError, EncoderMismatchError, IndexFormatError, QueryError
from .registry import EXHAUSTIVE, STAGES, parse_stage, store_class
from .results import Hit, Results
from .search import SearchOptions
from .stages import Hybrid, QueryBatch, has_stage, open_stage, stage_class
from .storage import Blob, locate, read_manifest
from .storage.layout import recover_stages
from .storage.formats import FDE_FORMAT, FDE_VERSION, TOKEN_IDS, rebuild_command
from .storage.metadata import Metadata
from .vectors import project

_MOVED = {
    "fde": "index.stage('fde')",
    "sparse": "index.stage(name)",
    "has_fde": "index.has_stage('fde')",
    "doc_codes": "index.tokens (the TokenStore; float16 bits as index.tokens.codes)",
    "coded": "index.tokens",
    "_score": "index.score(query_vectors, positions)",
}

__all__ = ["Index", "Hit", "Results", "SearchOptions", "identity_differences"]


class Index:
    """A built index, memory-mapped. Create with :meth:`build`, load with :meth:`open`."""

    def __init__(self, path: Path, manifest: dict, model=None, splade_model=None):
        from .storage.validate import check_arrays, index_config, load_array

        self.path = Path(path)
        self.manifest = manifest
        # The manifest's fields, then every count and offset against the files: the kernels trust them.
        self.config = index_config(self.path, manifest)
        counts = manifest["counts"]
        self.n_docs, self.n_tokens, self.dim, self.max_doc_len = (counts[k] for k in ("documents", "tokens", "dim", "max_doc_len"))
        self.doc_offsets = check_arrays(self.path, manifest, self.config)
        store = store_class(self.config.codec)
        try:
            self.tokens = store.open(self.path, self.config, self.dim, self.doc_offsets)
        except (OSError, ValueError, TypeError) as error:
            raise IndexFormatError(
                f"{self.path}: the manifest says its vectors are stored as {self.config.codec}, but they cannot be read that way ({error}); "
                f"`mvr info {self.path} --verify` checks all of it, then rebuild the index."
            ) from None
        if (len(self.tokens), self.tokens.dim, self.tokens.max_doc_len) != (self.n_tokens, self.dim, self.max_doc_len):
            raise IndexFormatError(f"{self.path}: its token store does not match the manifest's counts; `mvr info {self.path} --verify` checks all of it, then rebuild the index.")
        self.vectors_sha256 = manifest["files"][store.files[0]]["sha256"]
        self.doc_ids_sha256 = manifest["files"]["doc_ids.npy"]["sha256"]
        self.doc_ids = load_array(self.path, "doc_ids.npy", mmap=True)
        self._id_order = None
        self._texts = Blob(self.path, "text")
        self._titles = Blob(self.path, "title")
        self.projection = load_array(self.path, "projection.npy") if (self.path / "projection.npy").is_file() else None
        self.metadata = Metadata(self.path, self.n_docs)
        self.splade_model = splade_model
        self._model = model
        self._encoder: Encoder | None = None
        self._stages: dict = {}
        self._encoder_lock = threading.Lock()  # lazy loading of the query encoder
        self._stage_lock = threading.Lock()  # lazy opening of the first stages

    # -- opening -------------------------------------------------------------------------------
    @classmethod
    def open(cls, name_or_path: str | os.PathLike, *, home: str | os.PathLike | None = None, model=None, splade_model=None) -> "Index":
        """Open an index by name (under ``home``, default ``$MVR_INDEX_DIR`` or ``./indexes``) or path.

        ``model``: an :class:`Encoder` or a model folder for the queries; by default the model the
        index was built with. A different encoder is refused at the first search. ``splade_model``:
        likewise for the SPLADE first stage, when its model folder has moved.
        """
        path = locate(name_or_path, Path(home) if home else None)
        recover_stages(path, {name: (stage_class(name).format,) for name in STAGES})
        return cls(path, read_manifest(path), model=model, splade_model=splade_model)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def encoder(self) -> Encoder:
        """The query encoder, loaded on first use and checked against the index's record."""
        if self._encoder is None:
            with self._encoder_lock:
                if self._encoder is None:
                    self._encoder = self._load_encoder()
        return self._encoder

    def _load_encoder(self) -> Encoder:
        recorded = self.manifest["encoder"]
        if isinstance(self._model, Encoder):
            encoder = self._model
        else:
            source = self._model if self._model is not None else (None if recorded["source"] == "default" else recorded["source"])
            if self._model is None and source is not None and not Path(source).is_dir():
                raise EncoderError(
                    f"index {self.name!r} was built with the model at {source}, which is not there any more; "
                    "pass the same model's folder (model=PATH, CLI --model PATH)."
                )
            encoder = Encoder(source, query_maxlen=recorded["query_maxlen"], doc_maxlen=recorded["doc_maxlen"])
        differences = identity_differences(recorded, encoder.identity)
        if differences:
            raise EncoderMismatchError(
                f"index {self.name!r} was built with encoder {recorded['name']!r}; the query encoder "
                f"{encoder.name!r} differs: {'; '.join(differences)}. Search with the index's own model, "
                "or rebuild the index with this one."
            )
        return encoder

    # -- first stages --------------------------------------------------------------------------
    def has_stage(self, name: str) -> bool:
        """Whether the first stage ``name`` (a hybrid too) can run on this index."""
        return all(has_stage(self.path, part) for part in parse_stage(name))

    def stage(self, name: str):
        """The built first stage ``name`` ("fde", "bm25", "bm25s", "splade"), opened on first use."""
        stage = self._stages.get(name)
        if stage is None:
            self._require(name)
            with self._stage_lock:
                stage = self._stages.get(name) or open_stage(name, self)
                self._stages[name] = stage
        return stage

    def _require(self, name: str) -> None:
        """Raise, saying how to add it, where the first stage ``name`` (or a part of it) is not built."""
        for part in parse_stage(name):
            if not has_stage(self.path, part):
                raise QueryError(
                    f"index {self.name!r} has no {part} first stage; add it with `{rebuild_command(part, self.name)}` (Index.build_stage), or search with another first stage."
                )

    def first_stage(self, name: str, options: SearchOptions | None = None):
        """What finds candidates for the first stage ``name``: a built stage, or a hybrid of two."""
        parts = parse_stage(name)
        if len(parts) == 2:
            return Hybrid(self.stage(parts[0]), self.stage(parts[1]), (options or SearchOptions()).dense_share)
        return self.stage(parts[0])

    @property
    def default_stage(self) -> str:
        """The first stage used when none is named: FDE joined by bm25s where the index has both
        (within 0.5% of exhaustive MaxSim at 50 candidates on SciFact and NFCorpus, docs/fde.md),
        else FDE alone, else exhaustive search."""
        return self._default_stage(with_texts=True)

    def _default_stage(self, with_texts: bool) -> str:
        for stage in ("fde+bm25s", "fde") if with_texts else ("fde",):
            if self.has_stage(stage):
                return stage
        return EXHAUSTIVE

    # -- documents -----------------------------------------------------------------------------
    def document(self, position: int) -> Document:
        """The document at ``position`` (corpus order)."""
        return Document(id=str(self.doc_ids[position]), text=self._texts[position], title=self._titles[position], metadata=self.metadata.row(position))

    def documents(self) -> Iterable[Document]:
        """Every document, in index order."""
        return (self.document(i) for i in range(self.n_docs))

    def document_vectors(self, position: int) -> np.ndarray:
        """The stored token vectors of the document at ``position``, decoded: float32 ``(n, dim)``."""
        return self.tokens.document(position)

    def token_ids(self) -> np.ndarray | None:
        """int32 ``(n_tokens,)``: the vocabulary id behind each stored vector; None where the index
        does not keep them (built before they were stored, or clustered)."""
        path = self.path / TOKEN_IDS
        return np.load(path, mmap_mode="r") if path.is_file() else None

    def position(self, doc_id: str) -> int:
        """Row of the document with external id ``doc_id`` (KeyError if absent)."""
        if self._id_order is None:
            order = np.load(self.path / "doc_ids_order.npy")
            self._id_order = (order, np.asarray(self.doc_ids)[order])
        order, sorted_ids = self._id_order
        at = int(np.searchsorted(sorted_ids, doc_id))
        if at >= len(sorted_ids) or sorted_ids[at] != doc_id:
            raise KeyError(doc_id)
        return int(order[at])

    def __len__(self) -> int:
        return self.n_docs

    def __getattr__(self, name: str):
        # only reached for names that do not exist: say where what moved in the restructure went
        if name in _MOVED:
            raise AttributeError(f"Index.{name} is gone; use {_MOVED[name]} (docs/architecture.md).")
        raise AttributeError(f"'Index' object has no attribute {name!r}")

    def __repr__(self) -> str:
        return f"Index({self.name!r}, documents={self.n_docs}, tokens={self.n_tokens}, dim={self.dim})"

    # -- search --------------------------------------------------------------------------------
    def encode_queries(self, queries: str | Sequence[str], *, batch_size: int | None = None, threads: int | None = None) -> TokenVectors:
        """Token vectors of queries, projected like the documents when the index uses PCA."""
        texts = [queries] if isinstance(queries, str) else list(queries)
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise QueryError(f"query #{i} is {'empty' if isinstance(text, str) else type(text).__name__}; queries must be non-empty strings.")
        encoded = self.encoder.encode_queries(texts, batch_size=batch_size, threads=threads, show_progress=False)
        return TokenVectors(project(encoded.vectors, self.projection), encoded.offsets, encoded.truncated, encoded.token_ids)

    def score(self, query: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Exact MaxSim of one query (float32 ``(n_tokens, dim)``) against the documents at
        ``positions`` (int64), whatever the codec: float32 ``(len(positions),)``."""
        return self.tokens.score(np.ascontiguousarray(query, dtype=np.float32), np.asarray(positions, dtype=np.int64))

    def search(self, queries: str | Sequence[str], k: int = 10, *, first_stage: str | None = None, candidates: int | None = None, threads: int | None = None, **options) -> Results:
        """Top-``k`` documents of each query. A single string is one query.

        ``first_stage``: ``"fde"`` (MUVERA), ``"bm25"`` (Lucene through pyserini), ``"bm25s"``,
        ``"splade"`` or a hybrid such as ``"fde+bm25s"`` (the union of both rankings, see
        ``dense_share``) find ``candidates`` (default 100) documents that exact MaxSim reranks;
        ``"exhaustive"`` scores every document. None: the index's default, :attr:`default_stage`.
        ``threads``: CPU threads for encoding and scoring. Further options: :class:`SearchOptions`.
        """
        texts = [queries] if isinstance(queries, str) else list(queries)
        opts, _ = self._options(k, first_stage or self.default_stage, candidates, options)
        self._require(opts.first_stage)  # before the model loads
        encoded = self.encode_queries(texts, threads=threads) if opts.rerank or pipeline.needs_vectors(opts.first_stage) else None
        return self.search_encoded(encoded, k, texts=texts, first_stage=opts.first_stage, candidates=candidates, threads=threads, **options)

    def search_encoded(
        self, queries: TokenVectors | None, k: int = 10, *, texts: Sequence[str] | None = None, first_stage: str | None = None,
        candidates: int | None = None, threads: int | None = None, **options,
    ) -> Results:
        """Search with queries already encoded (float32 ``(n_tokens, dim)`` + offsets). Text first
        stages also need the query ``texts``; ``queries`` may be None when nothing is reranked.
        Without ``texts`` the default first stage is ``fde`` (or exhaustive where there is none).

        The returned :class:`Results` carry ``timings`` (ms): ``first_stage`` and ``rerank``, and
        ``fallbacks``: queries whose text first stage found nothing (no searchable terms) and
        that the dense first stage answered instead.
        """
        opts, k = self._options(k, first_stage or self._default_stage(with_texts=texts is not None), candidates, options)
        if pipeline.needs_texts(opts.first_stage) and texts is None:
            raise QueryError(f"the {opts.first_stage} first stage needs the query texts (texts=...).")
        vectors = offsets = None
        if queries is not None:
            vectors = np.ascontiguousarray(queries.vectors, dtype=np.float32)
            if vectors.ndim != 2 or vectors.shape[1] != self.dim:
                raise EncoderMismatchError(
                    f"query vectors have dimension {vectors.shape[-1] if vectors.ndim else '?'}, index {self.name!r} stores "
                    f"{self.dim}: encode the queries with the index's encoder ({self.manifest['encoder']['name']})."
                )
            offsets = np.asarray(queries.offsets, dtype=np.int64)
        elif opts.rerank or pipeline.needs_vectors(opts.first_stage):
            raise QueryError(f"first stage {opts.first_stage!r} with rerank={opts.rerank} needs encoded queries.")
        batch = QueryBatch(None if texts is None else list(texts), vectors, offsets)
        return pipeline.run(self, batch, k, opts, threads)

    def _options(self, k, first_stage: str, candidates: int | None, options: dict) -> tuple[SearchOptions, int]:
        """The search options, and ``k`` capped at the index's documents (the results are ``(n_queries, k)`` arrays; a huge k would not fit in memory)."""
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise QueryError(f"k must be a positive integer, got {k!r}.")
        return SearchOptions.create(first_stage=first_stage, candidates=candidates, **options), min(int(k), max(self.n_docs, 1))

    # -- building (mvr/build.py) ---------------------------------------------------------------
    @classmethod
    def build(cls, documents, name, **kwargs) -> "Index":
        """Encode ``documents`` into the index ``name``: see :func:`mvr.build.build`."""
        from .build import build

        return build(documents, name, **kwargs)

    @classmethod
    def derive(cls, source, name, **kwargs) -> "Index":
        """A pruned / clustered / compressed index from a float16 one: see :func:`mvr.build.derive`."""
        from .build import derive

        return derive(source, name, **kwargs)

    def build_stage(self, name: str, settings=None, *, threads: int | None = None, command: str | None = None, show_progress=None) -> dict:
        """(Re)build the first stage ``name`` from what the index stores: see :func:`mvr.build.rebuild_stage`."""
        from .build import rebuild_stage

        manifest = rebuild_stage(self, name, settings, threads=threads, command=command, show_progress=show_progress)
        self._stages.pop(name, None)
        return manifest

    def build_fde(self, config: FDEConfig | None = None, *, threads: int | None = None, command: str | None = None) -> dict:
        """(Re)build the FDE first stage from the stored token vectors, without re-encoding."""
        return self.build_stage("fde", config or FDEConfig(), threads=threads, command=command)

    def build_sparse(self, stages: Sequence[str] | None = None, *, splade_model=None, command: str | None = None, show_progress=None) -> dict:
        """(Re)build text first stages from the stored texts ("bm25", "bm25s", and "splade" with
        ``splade_model``, a masked-LM folder; default: those of ``IndexConfig().sparse``). Returns
        their manifests by stage."""
        stages = IndexConfig().sparse if stages is None else stages
        return {s: self.build_stage(s, splade_model if s == "splade" else None, command=command, show_progress=show_progress) for s in stages}

    # -- description ---------------------------------------------------------------------------
    def info(self) -> dict:
        """Summary for ``mvr info``: counts, sizes, encoder, config, build figures and first stages."""
        lengths = np.diff(self.doc_offsets)
        return {
            "name": self.name,
            "path": str(self.path),
            "documents": self.n_docs,
            "tokens": self.n_tokens,
            "dim": self.dim,
            "vectors_per_document": {"mean": round(float(lengths.mean()), 2) if len(lengths) else 0.0, "max": int(lengths.max()) if len(lengths) else 0},
            "source_tokens_per_document": round(self.manifest["counts"].get("source_tokens", self.n_tokens) / max(self.n_docs, 1), 2),
            "codec": self.config.codec,
            "bytes_per_token": self.manifest["bytes_per_token"],
            "index_bytes": sum(meta["bytes"] for meta in self.manifest["files"].values()),
            "encoder": self.manifest["encoder"],
            "config": self.manifest["config"],
            "build": self.manifest["build"],
            "counts": self.manifest["counts"],
            "created": self.manifest["created"],
            "format_version": self.manifest["format_version"],
            "fde": self._fde_summary(),
            "stages": self.stage_bytes(),
            "default_stage": self.default_stage,
        }

    def stage_bytes(self) -> dict[str, int]:
        """Bytes on disk of each built first stage."""
        return {
            name: sum(meta["bytes"] for meta in read_manifest(self.path / name, stage_class(name).format, stage_class(name).version)["files"].values())
            for name in STAGES
            if has_stage(self.path, name)
        }

    def _fde_summary(self) -> dict | None:
        if not has_stage(self.path, "fde"):
            return None
        manifest = read_manifest(self.path / "fde", FDE_FORMAT, FDE_VERSION)
        return {k: manifest[k] for k in ("config", "fde_dim", "bytes_per_document", "build")}

