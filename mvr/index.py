"""Build, open and search an index: the Python API that the CLI, the evaluation and RAG callers use.

    >>> import mvr
    >>> index = mvr.Index.build(["a passage", "another passage"], "demo")   # doctest: +SKIP
    >>> index = mvr.Index.open("demo")                                      # doctest: +SKIP
    >>> results = index.search("which passage?", k=5)                      # doctest: +SKIP
    >>> results[0][0].id, results[0][0].score, results[0][0].text           # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from . import __version__, store
from .compact import coded_vectors, compact, data_file, decoded_float16, stored_bytes
from .config import IndexConfig
from .corpus import Document, as_documents
from .encoder import Encoder, TokenVectors
from .errors import ConfigError, CorpusError, EncoderError, EncoderMismatchError, MvrError, QueryError
from .fde import FDE_DIR, FDE_FORMAT, FDE_VERSION, FDEConfig, FDEFirstStage, build_fde
from .progress import progress
from .reduce import fit_pca, project
from .sparse import SPARSE_STAGES, BM25S, LuceneBM25
from .splade import Splade, SpladeEncoder
from .threads import cpu_threads

_SPARSE_CLASSES = {"bm25": LuceneBM25, "bm25s": BM25S}

SPARSE_FIRST_STAGES = ("bm25", "bm25s", "splade")
# Hybrids: FDE candidates joined by a sparse stage's, one union reranked by MaxSim.
HYBRID_STAGES = tuple(f"fde+{sparse}" for sparse in SPARSE_FIRST_STAGES)
FIRST_STAGES = ("exhaustive", "fde", *SPARSE_FIRST_STAGES, *HYBRID_STAGES)
DENSE_STAGES = ("exhaustive", "fde", *HYBRID_STAGES)  # first stages that need encoded queries
TEXT_STAGES = (*SPARSE_FIRST_STAGES, *HYBRID_STAGES)  # first stages that read the query text
DEFAULT_DENSE_SHARE = 0.8
FUSIONS = ("rrf", "linear")
RRF_K = 60  # Cormack et al. (2009)
SPARSE_FORMAT = "mvr-sparse"
SPARSE_VERSION = 1
DEFAULT_CANDIDATES = 100  # FDE candidates reranked when the caller names none
_IDENTITY_IGNORED = ("name", "source")
_QUERY_CHUNK = 64  # queries scored together by the exhaustive kernel (bounds the score matrix)
_MATMUL_QUERIES = 8  # more queries than this at once: exhaustive scoring by matrix products (BLAS)


def identity_differences(recorded: dict, actual: dict) -> list[str]:
    keys = sorted((set(recorded) | set(actual)) - set(_IDENTITY_IGNORED))
    return [f"{key}: index {recorded.get(key)!r}, query encoder {actual.get(key)!r}" for key in keys if recorded.get(key) != actual.get(key)]


@dataclass(frozen=True)
class Hit:
    """One retrieved document: its rank (from 1), external id, MaxSim score, title and text."""

    rank: int
    id: str
    score: float
    text: str
    title: str
    position: int  # row of the document in the index (corpus order)


class Results:
    """Ranked results of ``n_queries`` queries, fixed shapes as faiss returns them.

    ``indices`` int64 ``(n_queries, k)``: document positions, -1 where fewer than k documents exist;
    ``scores`` float32 ``(n_queries, k)``: -inf where there is no result. ``results[i]`` is the list
    of :class:`Hit` of query i, with ids and texts.
    """

    def __init__(self, indices: np.ndarray, scores: np.ndarray, index: "Index", timings: dict | None = None):
        self.indices = indices
        self.scores = scores
        self.timings = timings or {}
        self.fallbacks = 0
        self._index = index

    def __len__(self) -> int:
        return self.indices.shape[0]

    def __getitem__(self, query: int) -> list[Hit]:
        hits = []
        for rank, (position, score) in enumerate(zip(self.indices[query], self.scores[query]), start=1):
            if position < 0:
                break
            doc = self._index.document(int(position))
            hits.append(Hit(rank, doc.id, float(score), doc.text, doc.title, int(position)))
        return hits

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    @property
    def doc_ids(self) -> list[list[str]]:
        ids = self._index.doc_ids
        return [[str(ids[p]) for p in row if p >= 0] for row in self.indices]

    def to_trec(self, query_ids: Sequence[str], run_name: str = "mvr") -> list[str]:
        """TREC run lines ``qid Q0 docid rank score run``."""
        if len(query_ids) != len(self):
            raise QueryError(f"{len(query_ids)} query ids for {len(self)} result lists.")
        ids = self._index.doc_ids
        return [
            f"{qid} Q0 {ids[p]} {rank} {score:.6f} {run_name}"
            for qid, row, row_scores in zip(query_ids, self.indices, self.scores)
            for rank, (p, score) in enumerate(zip(row, row_scores), start=1)
            if p >= 0
        ]

    def to_run(self, query_ids: Sequence[str]) -> dict[str, dict[str, float]]:
        """``{query id: {document id: score}}``, the run form ir-measures and pytrec_eval read."""
        if len(query_ids) != len(self):
            raise QueryError(f"{len(query_ids)} query ids for {len(self)} result lists.")
        ids = self._index.doc_ids
        return {qid: {str(ids[p]): float(s) for p, s in zip(row, row_scores) if p >= 0} for qid, row, row_scores in zip(query_ids, self.indices, self.scores)}


@dataclass(frozen=True)
class SearchOptions:
    """How candidates are found and ordered (validated on construction).

    rerank          rerank candidates with exact MaxSim (False: the first stage's own ranking)
    prune_alpha     drop candidates whose first-stage score is below (1 - alpha) x the k-th best
    early_exit      stop reranking after this many consecutive candidates miss the running top-k
    fusion          final score from MaxSim and first-stage scores: "rrf" or "linear" (None: MaxSim)
    fusion_weight   MaxSim's weight in "linear" fusion of per-query z-scores
    dense_share     hybrid first stages ("fde+bm25s", ...): the share of the candidates taken from
                    the FDE ranking; the sparse ranking adds new documents up to the count (and the
                    FDE ranking fills in if the sparse one runs short)
    """

    first_stage: str = "exhaustive"
    candidates: int | None = None
    rerank: bool = True
    prune_alpha: float | None = None
    early_exit: int | None = None
    fusion: str | None = None
    fusion_weight: float = 0.8
    dense_share: float = DEFAULT_DENSE_SHARE

    def __post_init__(self):
        if self.first_stage not in FIRST_STAGES:
            raise QueryError(f"unknown first stage {self.first_stage!r}; available: {', '.join(FIRST_STAGES)}.")
        if self.candidates is not None and (not isinstance(self.candidates, (int, np.integer)) or isinstance(self.candidates, bool) or self.candidates < 1):
            raise QueryError(f"candidates must be a positive integer, got {self.candidates!r}.")
        if self.first_stage == "exhaustive":
            if self.candidates is not None:
                raise QueryError("candidates applies to first stages that select candidates; 'exhaustive' scores every document.")
            if not self.rerank or self.prune_alpha is not None or self.early_exit is not None or self.fusion is not None:
                raise QueryError("rerank, pruning, early exit and fusion apply to a first stage with candidates, not to 'exhaustive'.")
        if self.prune_alpha is not None and not 0.0 <= self.prune_alpha <= 1.0:
            raise QueryError(f"prune_alpha must lie in [0, 1], got {self.prune_alpha!r}.")
        if self.early_exit is not None and (not isinstance(self.early_exit, (int, np.integer)) or self.early_exit < 1):
            raise QueryError(f"early_exit must be a positive integer (the patience), got {self.early_exit!r}.")
        if self.fusion is not None and self.fusion not in FUSIONS:
            raise QueryError(f"unknown fusion {self.fusion!r}; available: {', '.join(FUSIONS)}.")
        if not 0.0 <= self.fusion_weight <= 1.0:
            raise QueryError(f"fusion_weight must lie in [0, 1], got {self.fusion_weight!r}.")
        if not self.rerank and (self.fusion is not None or self.early_exit is not None):
            raise QueryError("fusion and early exit need rerank=True.")
        if not 0.0 <= self.dense_share <= 1.0:
            raise QueryError(f"dense_share must lie in [0, 1], got {self.dense_share!r}.")
        if self.first_stage in HYBRID_STAGES and (self.fusion is not None or self.prune_alpha is not None):
            raise QueryError(
                f"fusion and pruning read first-stage scores, and a hybrid first stage ({self.first_stage}) joins two "
                "rankings whose scores do not compare; use them with a single first stage."
            )


def _ranks(scores: np.ndarray) -> np.ndarray:
    ranks = np.empty(len(scores), dtype=np.float64)
    ranks[np.argsort(-scores, kind="stable")] = np.arange(1, len(scores) + 1)
    return ranks


def _zscores(scores: np.ndarray) -> np.ndarray:
    scores = scores.astype(np.float64)
    std = scores.std()
    return (scores - scores.mean()) / std if std > 0 else np.zeros_like(scores)


def fuse(maxsim: np.ndarray, first: np.ndarray, fusion: str | None, weight: float) -> np.ndarray:
    """Final scores of one query's candidates: MaxSim alone, reciprocal rank fusion (k=60) or
    ``weight * z(MaxSim) + (1 - weight) * z(first stage)`` with per-query z-scores."""
    if fusion is None or len(maxsim) == 0:
        return maxsim
    if fusion == "rrf":
        return 1.0 / (RRF_K + _ranks(maxsim)) + 1.0 / (RRF_K + _ranks(first))
    return weight * _zscores(maxsim) + (1.0 - weight) * _zscores(first)


def union_candidates(dense: np.ndarray, sparse: np.ndarray, n_dense: int, n_candidates: int) -> tuple[np.ndarray, np.ndarray]:
    """The hybrid candidate list: the first ``n_dense`` of the dense ranking, then sparse-ranked
    documents not yet in, then the rest of the dense ranking, up to ``n_candidates`` distinct
    positions. Scores are descending in that order (the two stages' own scores do not compare).

    >>> union_candidates(np.array([5, 3, 9, 1]), np.array([3, 7, 8]), 2, 4)[0].tolist()
    [5, 3, 7, 8]
    """
    merged = np.concatenate([dense[:n_dense], sparse, dense[n_dense:]])
    _, first = np.unique(merged, return_index=True)
    positions = merged[np.sort(first)][:n_candidates]
    return positions.astype(np.int64), np.arange(len(positions), 0, -1, dtype=np.float32)


def _chunks(items: Iterable, size: int):
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


class Index:
    """A built index, memory-mapped. Create with :meth:`build`, load with :meth:`open`."""

    def __init__(self, path: Path, manifest: dict, model=None):
        self.path = Path(path)
        self.manifest = manifest
        self.config = IndexConfig.from_dict(manifest["config"])
        counts = manifest["counts"]
        self.n_docs = int(counts["documents"])
        self.n_tokens = int(counts["tokens"])
        self.dim = int(counts["dim"])
        self.max_doc_len = int(counts["max_doc_len"])
        self.doc_offsets = np.load(self.path / "doc_offsets.npy")
        self.doc_codes = self.coded = None
        if self.config.codec == "float16":
            vectors = np.load(self.path / "vectors.npy", mmap_mode="r")
            shape = vectors.shape
            self.doc_codes = vectors.view(np.uint16)  # the kernels read float16 as its bits
        else:
            try:
                self.coded = coded_vectors(self.path, self.config, self.dim)  # stays compressed; decoded per document
            except (OSError, ValueError, TypeError) as error:
                raise store.IndexFormatError(
                    f"{self.path}: the manifest says its vectors are stored as {self.config.codec}, but they cannot be read that way ({error}); rebuild the index."
                ) from None
            shape = (len(self.coded), self.coded.dim)
        if shape != (self.n_tokens, self.dim) or self.doc_offsets.shape != (self.n_docs + 1,):
            raise store.IndexFormatError(f"{self.path}: arrays do not match the manifest's counts; rebuild the index.")
        self.doc_ids = np.load(self.path / "doc_ids.npy", mmap_mode="r")
        self._id_order = None
        self._texts = store.Blob(self.path, "text")
        self._titles = store.Blob(self.path, "title")
        projection = self.path / "projection.npy"
        self.projection = np.load(projection) if projection.is_file() else None
        self._model = model
        self._encoder: Encoder | None = None
        self._fde: FDEFirstStage | None = None
        self._sparse: dict = {}
        self._splade_model = None

    # -- opening -------------------------------------------------------------------------------
    @classmethod
    def open(cls, name_or_path: str | os.PathLike, *, home: str | os.PathLike | None = None, model=None, splade_model=None) -> "Index":
        """Open an index by name (under ``home``, default ``$MVR_INDEX_DIR`` or ``./indexes``) or path.

        ``model``: an :class:`Encoder` or a model folder for the queries; by default the model the
        index was built with. A different encoder is refused at the first search. ``splade_model``:
        likewise for the SPLADE first stage, when its model folder has moved.
        """
        path = store.locate(name_or_path, Path(home) if home else None)
        index = cls(path, store.read_manifest(path), model=model)
        index._splade_model = splade_model
        return index

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def encoder(self) -> Encoder:
        """The query encoder, loaded on first use and checked against the index's record."""
        if self._encoder is None:
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
            self._encoder = encoder
        return self._encoder

    @property
    def has_fde(self) -> bool:
        return (self.path / FDE_DIR / store.MANIFEST).is_file()

    @property
    def fde(self) -> FDEFirstStage:
        """The MUVERA first stage (``fde/``), opened on first use."""
        if self._fde is None:
            if not self.has_fde:
                raise QueryError(
                    f"index {self.name!r} has no FDE first stage; add one with `mvr fde {self.name}` "
                    "(Index.build_fde), or search with first_stage='exhaustive'."
                )
            self._fde = FDEFirstStage(self.path / FDE_DIR, self.dim, self.n_docs, self.manifest["files"][data_file(self.config.codec)]["sha256"])
        return self._fde

    def build_fde(self, config: FDEConfig | None = None, *, threads: int | None = None, command: str | None = None) -> dict:
        """(Re)build the FDE first stage from the stored token vectors, without re-encoding.
        The new one replaces the old only once complete. Returns its manifest."""
        config = config or FDEConfig()
        with store.StagingDir(self.path / FDE_DIR, overwrite=True) as staging, cpu_threads(threads, "numba", "faiss"):
            codes = decoded_float16(self.path, self.config, self.dim)
            manifest = build_fde(staging.path, codes, self.doc_offsets, self.dim, config, self.manifest["files"][data_file(self.config.codec)]["sha256"])
            manifest["build"]["command"] = command
            staging.write_manifest(manifest)
            staging.commit()
        self._fde = None
        return self.fde.manifest

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
        return "exhaustive"

    def has_stage(self, stage: str) -> bool:
        """Whether the first stage ``stage`` can run on this index."""
        if stage == "exhaustive":
            return True
        if "+" in stage:
            return all(self.has_stage(part) for part in stage.split("+"))
        folder = FDE_DIR if stage == "fde" else stage
        return (self.path / folder / store.MANIFEST).is_file()

    def sparse(self, stage: str):
        """The sparse first stage ``stage`` ("bm25" or "bm25s"), opened on first use."""
        if stage not in self._sparse:
            if not self.has_stage(stage):
                raise QueryError(
                    f"index {self.name!r} has no {stage} first stage; add it with `mvr sparse {self.name} --stage {stage}` "
                    "(Index.build_sparse), or search with another first stage."
                )
            folder = self.path / stage
            manifest = store.read_manifest(folder, SPARSE_FORMAT, SPARSE_VERSION)
            if manifest["doc_ids_sha256"] != self.manifest["files"]["doc_ids.npy"]["sha256"]:
                raise store.IndexFormatError(f"{folder} was built for other documents than its index holds; rebuild it with `mvr sparse`.")
            if stage == "splade":
                model = self._splade_model or manifest["model"]["source"]
                if not isinstance(model, SpladeEncoder) and not Path(model).is_dir():
                    raise EncoderError(f"the SPLADE model {model} of index {self.name!r} is not there any more; pass splade_model=PATH (--splade-model).")
                self._sparse[stage] = Splade(folder, model, manifest["model"])
            else:
                self._sparse[stage] = _SPARSE_CLASSES[stage](folder, self.position)
        return self._sparse[stage]

    def build_sparse(self, stages: Sequence[str] = SPARSE_STAGES, *, splade_model=None, command: str | None = None, show_progress=None) -> dict:
        """(Re)build sparse first stages from the stored texts ("bm25", "bm25s", and "splade" with
        ``splade_model``, a masked-LM folder); each replaces the old one only once complete.
        Returns their manifests by stage."""
        built = {}
        for stage in stages:
            if stage not in TEXT_STAGES:
                raise QueryError(f"unknown sparse first stage {stage!r}; available: {', '.join(TEXT_STAGES)}.")
            if stage == "splade" and splade_model is None:
                raise QueryError("the splade first stage needs a masked-LM model folder (splade_model=PATH, --splade-model PATH).")
            with store.StagingDir(self.path / stage, overwrite=True) as staging:
                manifest = _build_sparse(
                    staging.path, stage, _stored_texts(self.path), self.manifest["files"]["doc_ids.npy"]["sha256"], command, splade_model, show_progress
                )
                staging.commit()
            self._sparse.pop(stage, None)
            built[stage] = manifest
        return built

    # -- documents -----------------------------------------------------------------------------
    def document_vectors(self, position: int) -> np.ndarray:
        """The stored token vectors of the document at ``position``, decoded: float32 ``(n, dim)``."""
        return self._rows(int(self.doc_offsets[position]), int(self.doc_offsets[position + 1]))

    def _rows(self, start: int, stop: int) -> np.ndarray:
        if self.coded is not None:
            return self.coded.decode(start, stop)
        return np.asarray(self.doc_codes[start:stop]).view(np.float16).astype(np.float32)

    def document(self, position: int) -> Document:
        """The document at ``position`` (corpus order)."""
        return Document(id=str(self.doc_ids[position]), text=self._texts[position], title=self._titles[position])

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
        return TokenVectors(project(encoded.vectors, self.projection), encoded.offsets, encoded.truncated)

    def search(
        self,
        queries: str | Sequence[str],
        k: int = 10,
        *,
        first_stage: str | None = None,
        candidates: int | None = None,
        threads: int | None = None,
        **options,
    ) -> Results:
        """Top-``k`` documents of each query. A single string is one query.

        ``first_stage``: ``"fde"`` (MUVERA), ``"bm25"`` (Lucene through pyserini), ``"bm25s"``,
        ``"splade"`` or a hybrid such as ``"fde+bm25s"`` (the union of both rankings, see
        ``dense_share``) find ``candidates`` (default 100) documents that exact MaxSim reranks;
        ``"exhaustive"`` scores every document. None: the index's default, :attr:`default_stage`.
        ``threads``: CPU threads for encoding and scoring. Further options (see
        :class:`SearchOptions`): ``rerank=False`` returns the first stage's own ranking;
        ``prune_alpha``, ``early_exit`` and ``fusion`` / ``fusion_weight``.
        """
        texts = [queries] if isinstance(queries, str) else list(queries)
        opts = self._options(k, first_stage, candidates, options)
        needs_vectors = opts.rerank or opts.first_stage in DENSE_STAGES
        encoded = self.encode_queries(texts, threads=threads) if needs_vectors else None
        return self.search_encoded(encoded, k, texts=texts, first_stage=opts.first_stage, candidates=candidates, threads=threads, **options)

    def _options(self, k, first_stage: str | None, candidates: int | None, options: dict) -> "SearchOptions":
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise QueryError(f"k must be a positive integer, got {k!r}.")
        if first_stage is None:
            first_stage = self.default_stage
        unknown = sorted(set(options) - set(SearchOptions.__dataclass_fields__))
        if unknown:
            raise QueryError(f"unknown search option(s) {unknown}; known: first_stage, candidates, threads, {', '.join(SearchOptions.__dataclass_fields__)}.")
        return SearchOptions(first_stage=first_stage, candidates=candidates, **options)

    def search_encoded(
        self,
        queries: TokenVectors | None,
        k: int = 10,
        *,
        texts: Sequence[str] | None = None,
        first_stage: str | None = None,
        candidates: int | None = None,
        threads: int | None = None,
        **options,
    ) -> Results:
        """Search with queries already encoded (float32 ``(n_tokens, dim)`` + offsets). Sparse first
        stages also need the query ``texts``; ``queries`` may be None when nothing is reranked.
        Without ``texts`` the default first stage is ``fde`` (or exhaustive where there is none).

        The returned :class:`Results` carry ``timings`` (ms): ``first_stage`` and ``rerank``, and
        ``fallbacks``: queries whose sparse first stage found nothing (no searchable terms) and
        that the dense first stage answered instead.
        """
        if first_stage is None:
            first_stage = self._default_stage(with_texts=texts is not None)
        opts = self._options(k, first_stage, candidates, options)
        if opts.first_stage in TEXT_STAGES and texts is None:
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
        elif opts.rerank or opts.first_stage in DENSE_STAGES:
            raise QueryError(f"first stage {opts.first_stage!r} with rerank={opts.rerank} needs encoded queries.")
        with cpu_threads(threads, "numba", "faiss", "blas"):
            if opts.first_stage == "exhaustive":
                return self._exhaustive(vectors, offsets, k)
            started = time.perf_counter()
            found, fallbacks = self._candidates(opts, vectors, offsets, texts)
            middle = time.perf_counter()
            indices = np.full((len(found), k), -1, dtype=np.int64)
            top = np.full((len(found), k), -np.inf, dtype=np.float32)
            for q, (positions, first_scores) in enumerate(found):
                query = vectors[offsets[q] : offsets[q + 1]] if vectors is not None else None
                ranked, scores = self._rerank(query, positions, first_scores, k, opts)
                indices[q, : len(ranked)] = ranked
                top[q, : len(ranked)] = scores
            done = time.perf_counter()
        results = Results(indices, top, self, {"first_stage": (middle - started) * 1e3, "rerank": (done - middle) * 1e3})
        results.fallbacks = fallbacks
        return results

    def _exhaustive(self, vectors: np.ndarray, offsets: np.ndarray, k: int) -> Results:
        from ._kernels import topk_rows

        started = time.perf_counter()
        parts = []
        for start in range(0, len(offsets) - 1, _QUERY_CHUNK):
            stop = min(start + _QUERY_CHUNK, len(offsets) - 1)
            block = vectors[offsets[start] : offsets[stop]]
            parts.append(topk_rows(self._score_all(block, offsets[start : stop + 1] - offsets[start]), k))
        indices = np.concatenate([p[0] for p in parts])
        top = np.concatenate([p[1] for p in parts])
        return Results(indices, top, self, {"first_stage": 0.0, "rerank": (time.perf_counter() - started) * 1e3})

    def _candidates(self, opts: "SearchOptions", vectors, offsets, texts) -> tuple[list[tuple[np.ndarray, np.ndarray]], int]:
        """Per query, candidate positions (best first) and their first-stage scores."""
        n_candidates = min(opts.candidates or DEFAULT_CANDIDATES, self.n_docs)
        if opts.first_stage == "fde":
            return self._fde_candidates(vectors, offsets, n_candidates), 0
        if opts.first_stage in HYBRID_STAGES:
            dense = self._fde_candidates(vectors, offsets, n_candidates)
            sparse = self.sparse(opts.first_stage.split("+", 1)[1]).search(texts, n_candidates)
            n_dense = round(opts.dense_share * n_candidates)
            return [union_candidates(d, s, n_dense, n_candidates) for (d, _), (s, _) in zip(dense, sparse)], 0
        found = self.sparse(opts.first_stage).search(texts, n_candidates)
        empty = [q for q, (positions, _) in enumerate(found) if len(positions) == 0]
        if empty and vectors is not None:
            # No searchable terms: the dense first stage answers those queries instead.
            for q in empty:
                one = vectors[offsets[q] : offsets[q + 1]]
                if self.has_fde:
                    found[q] = self._fde_candidates(one, np.array([0, len(one)]), n_candidates)[0]
                else:
                    found[q] = (np.arange(self.n_docs, dtype=np.int64), np.zeros(self.n_docs, dtype=np.float32))
        return found, len(empty)

    def _fde_candidates(self, vectors, offsets, n_candidates: int) -> list[tuple[np.ndarray, np.ndarray]]:
        scores, ids = self.fde.candidates(vectors, offsets, n_candidates)
        return [(row[row >= 0], row_scores[row >= 0]) for row, row_scores in zip(ids, scores)]

    def _score(self, query: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Exact MaxSim of one query against the documents at ``positions``."""
        from ._kernels import maxsim_candidates, maxsim_codes_candidates

        if self.coded is not None:
            return maxsim_codes_candidates(query, self.coded, self.doc_offsets, positions, self.max_doc_len)
        return maxsim_candidates(query, self.doc_codes, self.doc_offsets, positions, self.max_doc_len)

    def _score_all(self, queries: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """MaxSim of each query (flat vectors + offsets) against every document: ``(n_queries, n_docs)``."""
        from ._kernels import maxsim_codes_many, maxsim_exhaustive, maxsim_exhaustive_many, maxsim_matmul_many

        if len(offsets) > _MATMUL_QUERIES:
            return maxsim_matmul_many(queries, offsets, self._decoded_blocks(), self.doc_offsets)
        if self.coded is not None:
            return maxsim_codes_many(queries, offsets, self.coded, self.doc_offsets, self.max_doc_len)
        if len(offsets) == 2:
            return maxsim_exhaustive(queries, self.doc_codes, self.doc_offsets, self.max_doc_len)[None, :]
        return maxsim_exhaustive_many(queries, offsets, self.doc_codes, self.doc_offsets, self.max_doc_len)

    def _decoded_blocks(self, rows: int = 1 << 14):
        """``(first_doc, stop_doc, float32 rows)`` over the stored vectors, about ``rows`` at a time."""
        first = 0
        while first < self.n_docs:
            stop = int(np.searchsorted(self.doc_offsets, self.doc_offsets[first] + rows, side="right")) - 1
            stop = min(max(stop, first + 1), self.n_docs)
            start_row, stop_row = int(self.doc_offsets[first]), int(self.doc_offsets[stop])
            yield first, stop, self._rows(start_row, stop_row)
            first = stop

    def _rerank(self, query, positions: np.ndarray, first_scores: np.ndarray, k: int, opts: "SearchOptions") -> tuple[np.ndarray, np.ndarray]:
        """Order one query's candidates: prune, MaxSim (with early exit), fuse; top-k out."""
        from ._kernels import maxsim_early_exit

        if opts.early_exit is not None and self.coded is not None:
            raise QueryError(f"early exit runs on float16 indexes; index {self.name!r} stores {self.config.codec} codes.")
        if opts.prune_alpha is not None and len(first_scores):
            kth = first_scores[min(k, len(first_scores)) - 1]
            if kth > 0:  # pruning compares non-negative (BM25-like) scores
                keep = first_scores >= (1.0 - opts.prune_alpha) * kth
                positions, first_scores = positions[keep], first_scores[keep]
        if not opts.rerank:
            final = first_scores
        else:
            if opts.early_exit is not None:
                scores, scored = maxsim_early_exit(query, self.doc_codes, self.doc_offsets, positions, k, opts.early_exit, self.max_doc_len)
                positions, first_scores, scores = positions[:scored], first_scores[:scored], scores[:scored]
            else:
                scores = self._score(query, positions)
            final = fuse(scores, first_scores, opts.fusion, opts.fusion_weight)
        # Best first; ties go to the lower position, as in exhaustive search.
        order = np.lexsort((positions, -final))[:k]
        return positions[order], final[order].astype(np.float32)

    # -- building ------------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        documents: Iterable | str | os.PathLike,
        name: str | os.PathLike,
        *,
        config: IndexConfig | None = None,
        home: str | os.PathLike | None = None,
        overwrite: bool = False,
        encoder: Encoder | None = None,
        show_progress: bool | None = None,
        chunk_size: int = 1024,
        command: str | None = None,
    ) -> "Index":
        """Encode ``documents`` (an iterable of Documents, dicts, ``(id, text)`` pairs or strings, or
        a corpus path) and write the index ``name`` (a name under ``home`` or a path).

        Ids must be unique and documents non-empty (or ``config.skip_empty``). Nothing is written
        at ``name`` until the build has finished: a failure leaves an existing index intact.
        ``command`` (the CLI line that asked for the build) is kept in the manifest.
        """
        config = config or IndexConfig()
        started = time.perf_counter()
        target = store.target_path(str(name), Path(home) if home else None)
        with store.StagingDir(target, overwrite) as staging, cpu_threads(config.threads, "numba", "faiss"):
            if encoder is None:
                encoder = Encoder(
                    config.model, query_maxlen=config.query_maxlen, doc_maxlen=config.doc_maxlen, batch_size=config.batch_size,
                    threads=config.threads, doc_runtime=config.doc_runtime,
                )
            loaded = time.perf_counter()
            counts = _encode_corpus(documents, encoder, config, staging.path, show_progress, chunk_size)
            encoded = time.perf_counter()
            # what ran: a given encoder's own runtime, or PyTorch where the ONNX export failed
            config = dataclasses.replace(config, doc_runtime=encoder.doc_runtime)
            counts.update(_finish_vectors(staging.path, encoder.dim, config, counts["tokens"]))
            build = {
                "model_load_seconds": round(loaded - started, 3),
                "encode_seconds": round(encoded - loaded, 3),
                "docs_per_second": round(counts["documents"] / max(encoded - loaded, 1e-9), 2),
            }
            _finish_build(staging, config, encoder, counts, build, started, command, show_progress)
            path = staging.commit()
        return cls.open(path, model=encoder)

    @classmethod
    def derive(
        cls,
        source: "Index | str | os.PathLike",
        name: str | os.PathLike,
        *,
        home: str | os.PathLike | None = None,
        overwrite: bool = False,
        show_progress: bool | None = None,
        command: str | None = None,
        **changes,
    ) -> "Index":
        """A new index ``name`` from a float16 index's stored vectors, pruned, clustered and/or
        compressed by ``changes`` (fields of :class:`IndexConfig`: prune, cluster_ratio, codec, ...,
        and fde) without encoding the corpus again. Texts, ids and sparse stages are copied; the
        FDE is rebuilt from the new vectors. The source is only read.
        """
        import shutil

        source = source if isinstance(source, Index) else cls.open(source, home=home)
        if source.config.compacts:
            raise ConfigError(
                f"index {source.name!r} is already pruned, clustered or compressed; derive from an index that keeps every token in float16."
            )
        unknown = sorted(set(changes) - _DERIVABLE)
        if unknown:
            raise ConfigError(f"{unknown} cannot change without encoding the corpus again (use Index.build / mvr index); derivable: {sorted(_DERIVABLE)}.")
        config = dataclasses.replace(source.config, **changes)
        started = time.perf_counter()
        target = store.target_path(str(name), Path(home) if home else None)
        if target.resolve() == source.path.resolve():
            raise ConfigError("derive into a new name; the source index is kept as it is.")
        with store.StagingDir(target, overwrite) as staging, cpu_threads(config.threads, "numba", "faiss"):
            for item in source.path.iterdir():
                if item.name in (store.MANIFEST, FDE_DIR) or item.name.startswith("."):
                    continue
                if item.is_dir():
                    if item.name in config.sparse or item.name == "splade":
                        shutil.copytree(item, staging.path / item.name)
                else:
                    shutil.copyfile(item, staging.path / item.name)
            counts = {k: v for k, v in source.manifest["counts"].items() if k in _SOURCE_COUNTS}
            build = {"derived_from": str(source.path), "encode_seconds": 0.0, "docs_per_second": source.manifest["build"]["docs_per_second"]}
            _finish_build(staging, config, source.encoder, counts, build, started, command, show_progress)
            path = staging.commit()
        return cls.open(path, model=source.encoder)

    def info(self) -> dict:
        """Summary for ``mvr info``: counts, sizes, encoder, config and build figures."""
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
        }

    def _fde_summary(self) -> dict | None:
        if not self.has_fde:
            return None
        manifest = store.read_manifest(self.path / FDE_DIR, FDE_FORMAT, FDE_VERSION)
        return {k: manifest[k] for k in ("config", "fde_dim", "bytes_per_document", "build")}


# What a derived index may change, and the counts it inherits from its source.
_DERIVABLE = {"prune", "prune_max_df", "cluster_ratio", "cluster_count", "cluster_method", "cluster_iters", "cluster_keep", "cluster_idf_weight", "codec", "codec_bits", "codec_centroids", "codec_sample", "fde", "seed", "threads"}
_SOURCE_COUNTS = {"documents", "tokens", "max_doc_len", "truncated_documents", "skipped_empty_documents", "dim", "model_dim"}


def _finish_build(staging, config: IndexConfig, encoder: Encoder, counts: dict, build: dict, started: float, command: str | None, show_progress) -> None:
    """From stored float16 vectors, ids and texts in ``staging``: prune / cluster / compress, build
    the first stages and write the manifest (the build's last step)."""
    folder = staging.path
    counts.setdefault("source_tokens", counts["tokens"])
    if config.compacts:
        counts.update(compact(folder, config, encoder, (text for _, text in _stored_texts(folder)), show_progress))
    compacted = time.perf_counter()
    data_sha256 = store.sha256_file(folder / data_file(config.codec))
    if config.fde is not None:
        (folder / FDE_DIR).mkdir()
        codes = decoded_float16(folder, config, counts["dim"])
        store.write_manifest(folder / FDE_DIR, build_fde(folder / FDE_DIR, codes, np.load(folder / "doc_offsets.npy"), counts["dim"], config.fde, data_sha256))
        del codes
    fde_done = time.perf_counter()
    stages = [*config.sparse, *(["splade"] if config.splade_model else [])]
    if stages:
        ids_sha256 = store.sha256_file(folder / "doc_ids.npy")
        for stage in stages:
            if not (folder / stage).is_dir():  # a derived index brings its source's sparse stages
                (folder / stage).mkdir()
                _build_sparse(folder / stage, stage, _stored_texts(folder), ids_sha256, command, config.splade_model, show_progress)
    elapsed = time.perf_counter() - started
    staging.write_manifest(
        {
            "format": store.FORMAT_NAME,
            "format_version": store.FORMAT_VERSION,
            "mvr_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "config": config.to_dict(),
            "encoder": encoder.identity,
            "counts": counts,
            "build": {
                "seconds": round(elapsed, 3),
                **build,
                "fde_seconds": round(fde_done - compacted, 3),
                "threads": config.threads,
                "command": command,
            },
            # Everything search reads to score documents, per document token before pruning.
            "bytes_per_token": round(stored_bytes(folder, config) / max(counts["source_tokens"], 1), 3),
        },
        known_sha256={data_file(config.codec): data_sha256},
    )


def _stored_texts(folder: Path) -> Iterable[tuple[str, str]]:
    """``(id, title + " " + text)`` of every document stored in an index directory, in order."""
    ids, texts, titles = np.load(folder / "doc_ids.npy", mmap_mode="r"), store.Blob(folder, "text"), store.Blob(folder, "title")
    for i in range(len(ids)):
        yield str(ids[i]), Document(str(ids[i]), texts[i], titles[i]).full_text


def _build_sparse(
    folder: Path, stage: str, texts: Iterable[tuple[str, str]], doc_ids_sha256: str, command: str | None, splade_model=None, show_progress=None
) -> dict:
    """Build the sparse first stage ``stage`` into ``folder`` and write its manifest."""
    if stage == "splade":
        encoder = splade_model if isinstance(splade_model, SpladeEncoder) else SpladeEncoder(splade_model)
        info = Splade.build(folder, texts, encoder, show_progress)
        details = {"model": info["model"], "terms_per_document": info["terms_per_document"]}
    else:
        info = _SPARSE_CLASSES[stage].build(folder, texts)
        details = {"bm25": {"k1": info["k1"], "b": info["b"]}}
    manifest = {
        "format": SPARSE_FORMAT,
        "format_version": SPARSE_VERSION,
        "stage": stage,
        "documents": info["documents"],
        "doc_ids_sha256": doc_ids_sha256,
        **details,
        "build": {"seconds": info["seconds"], "docs_per_second": round(info["documents"] / max(info["seconds"], 1e-9), 1), "command": command},
    }
    store.write_manifest(folder, manifest)
    return manifest


def _encode_corpus(documents, encoder: Encoder, config: IndexConfig, folder: Path, show_progress, chunk_size: int) -> dict:
    """Stream documents into ``vectors.raw`` (float16, model dim), ids and text blobs; return counts."""
    seen: dict[str, str] = {}
    ids: list[str] = []
    lengths: list[np.ndarray] = []
    truncated = skipped = 0
    texts = store.BlobWriter(folder, "text")
    titles = store.BlobWriter(folder, "title")
    bar = progress(desc="indexing", unit="doc", show=show_progress)
    try:
        with open(folder / "vectors.raw", "wb") as raw:
            for chunk in _chunks(as_documents(documents), chunk_size):
                kept = []
                for doc in chunk:
                    if doc.id in seen:
                        raise CorpusError(
                            f"{doc.where}: duplicate document id {doc.id!r} (first at {seen[doc.id]}). "
                            "Ids must be unique: deduplicate the corpus."
                        )
                    seen[doc.id] = doc.where
                    if not doc.full_text.strip():
                        if config.skip_empty:
                            skipped += 1
                            continue
                        raise CorpusError(
                            f"{doc.where}: document {doc.id!r} has no text. Remove it, give it text, "
                            "or skip such documents (skip_empty=True, CLI --skip-empty)."
                        )
                    kept.append(doc)
                if not kept:
                    continue
                encoded = encoder.encode_documents([d.full_text for d in kept], show_progress=False)
                if not np.isfinite(encoded.vectors).all():
                    raise MvrError("the encoder produced non-finite vectors; check the model's weights.")
                raw.write(encoded.vectors.astype(np.float16).tobytes())
                lengths.append(encoded.lengths)
                truncated += int(encoded.truncated.sum())
                for doc in kept:
                    ids.append(doc.id)
                    texts.add(doc.text)
                    titles.add(doc.title)
                bar.update(len(chunk))
    finally:
        bar.close()
        texts.close()
        titles.close()
    if not ids:
        raise CorpusError("the corpus holds no documents" + (f" ({skipped} empty ones skipped)" if skipped else "") + "; nothing to index.")
    doc_lengths = np.concatenate(lengths)
    offsets = np.zeros(len(doc_lengths) + 1, dtype=np.int64)
    np.cumsum(doc_lengths, out=offsets[1:])
    np.save(folder / "doc_offsets.npy", offsets)
    id_array = np.array(ids, dtype=str)
    np.save(folder / "doc_ids.npy", id_array)
    np.save(folder / "doc_ids_order.npy", np.argsort(id_array, kind="stable").astype(np.int64))
    return {
        "documents": len(ids),
        "tokens": int(offsets[-1]),
        "max_doc_len": int(doc_lengths.max()),
        "truncated_documents": truncated,
        "skipped_empty_documents": skipped,
    }


def _finish_vectors(folder: Path, model_dim: int, config: IndexConfig, n_tokens: int, block: int = 1 << 16) -> dict:
    """Turn ``vectors.raw`` into ``vectors.npy``, fitting and applying PCA when configured."""
    raw_path = folder / "vectors.raw"
    raw = np.memmap(raw_path, dtype=np.float16, mode="r", shape=(n_tokens, model_dim)) if n_tokens else np.zeros((0, model_dim), np.float16)
    projection = None
    if config.pca_dim is not None:
        if config.pca_dim > model_dim:
            raise MvrError(f"pca_dim={config.pca_dim} exceeds the model's {model_dim} dimensions.")
        rng = np.random.default_rng(config.seed)
        sample = np.sort(rng.choice(n_tokens, size=min(config.pca_sample, n_tokens), replace=False))
        projection = fit_pca(raw[sample].astype(np.float32), config.pca_dim)
        np.save(folder / "projection.npy", projection)
    dim = model_dim if projection is None else config.pca_dim
    out = np.lib.format.open_memmap(folder / "vectors.npy", mode="w+", dtype=np.float16, shape=(n_tokens, dim))
    for start in range(0, n_tokens, block):
        part = raw[start : start + block].astype(np.float32)
        out[start : start + block] = project(part, projection).astype(np.float16)
    out.flush()
    del out, raw
    os.remove(raw_path)
    return {"dim": dim, "model_dim": model_dim}
