"""Every build setting and its default, in frozen dataclasses validated on construction and saved
in the index. The CLI reads its defaults from here; search-time settings live in
:class:`mvr.search.SearchOptions`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace

from .errors import ConfigError, is_number
from .registry import CODECS, SPARSE_STAGES

PRUNE_RULES = ("special", "punctuation", "stopwords", "df")
CLUSTER_METHODS = ("ward", "kmeans")
KEEP_CLASSES = ("special", "punctuation", "stopwords")
# How the transformer runs: PyTorch, ONNX Runtime float32, or ONNX Runtime with weights quantised
# to int8 per output channel and activations quantised per run (dynamic quantisation), its graph as
# traced or with each layer's attention, layer norms and GELU fused (mvr/encode/quantize.py).
RUNTIMES = ("torch", "onnx", "onnx-int8", "onnx-int8-fused")
INT8_RUNTIMES = ("onnx-int8", "onnx-int8-fused")
QUERY_RUNTIMES = ("torch", "onnx")
# Documents: int8 ONNX with fused attention encodes SciFact 2.9x as fast as PyTorch on one thread
# (1.24x int8 ONNX as traced), at PyTorch's nDCG@10 (docs/speed.md).
DEFAULT_DOC_RUNTIME = "onnx-int8-fused"
# How widely an approximate faiss index of the FDEs is searched, unless a search says otherwise
# (SearchOptions.nprobe / ef_search): IVF lists probed, HNSW search breadth.
FDE_NPROBE = 32
FDE_EF_SEARCH = 256
# Candidates reranked when a search names none, except after the centroid stage alone, whose
# centroid scores order documents more coarsely: 256 find 96% of the exhaustive top-10 on the
# synthetic 10k corpus, 128 find 92% (docs/scale.md).
DEFAULT_CANDIDATES = 100
STAGE_CANDIDATES = {"centroids": 256}


def default_candidates(stage: str | None) -> int:
    """Candidates reranked after the first stage ``stage`` when the search names none."""
    return STAGE_CANDIDATES.get(stage, DEFAULT_CANDIDATES)


# Above this many documents, a build's default vector first stage is the centroid stage instead of
# the flat FDE: the FDE holds 40 KiB per document and scans them all for every query (13.7 ms per
# 5,183 documents on SciFact, docs/fde.md: 27 ms at 10,000), while the centroid stage holds a few
# hundred bytes per document and searches 100,000 in about 12 ms, within 0.5% nDCG@10 of
# exhaustive MaxSim on SciFact and NFCorpus (docs/scale.md). Below it the FDE stays, as measured.
LARGE_CORPUS = 10_000
# Centroids probed per query token by the centroid stage, unless a search says otherwise
# (SearchOptions.centroid_probe; docs/scale.md).
CENTROID_PROBE = 8
FUSION_WEIGHT, DENSE_SHARE = 0.8, 0.8  # MaxSim's weight in linear fusion; a hybrid first stage's share of candidates from its vector stage
# Search presets an index can be built with (IndexConfig.search_preset), saved as its default
# search (mvr/search_presets.py). "best": weighted fusion of MaxSim, the pooled vector and bm25s
# over the union of the pooled stage's and bm25s's candidates, the weights one grid chose for
# SciFact train and NFCorpus dev together (the mean relative gain in nDCG@10; docs/quality.md).
SEARCH_PRESETS = {
    "best": {
        "first_stage": "pooled+bm25s",
        "candidates": 200,
        "dense_share": 0.5,
        "fusion": "weighted",
        "weights": {"maxsim": 0.45, "pooled": 0.25, "bm25s": 0.3},
    },
}
# Named build settings (docs/compression.md and docs/quality.md have the measurements behind them).
PRESETS = {
    "small": {
        "about": "the smallest index measured within 1% nDCG@10 of full float16 on SciFact and NFCorpus, on the tuning queries "
        "and on test, with today's int8-encoded documents: Ward clustering to 0.28 of the tokens, 4-bit residual codec, "
        "about 56 bytes per token, 14x smaller (docs/compression.md)",
        "cluster_method": "ward",
        "cluster_ratio": 0.28,
        "cluster_keep": (),
        "codec": "residual",
        "codec_bits": 4,
    },
    "tiny": {
        "about": "about 16 bytes per token, 48x smaller, at a cost: Ward clustering to 0.28 of the tokens, 1-bit residual codec; "
        "-0.5% / -0.9% nDCG@10 on SciFact / NFCorpus test with the default's documents (docs/quality.md, docs/compression.md)",
        "cluster_method": "ward",
        "cluster_ratio": 0.28,
        "cluster_keep": (),
        "codec": "residual",
        "codec_bits": 1,
    },
    "fast": {
        "about": "4x fewer vectors at no loss on SciFact and NFCorpus: Ward clustering to 0.24 of the tokens, "
        "IDF-weighted (power 0.5), [CLS]/[SEP] kept, float16; a quarter of the rerank work (docs/compression.md, docs/speed.md)",
        "cluster_method": "ward",
        "cluster_ratio": 0.24,
        "cluster_keep": ("special",),
        "cluster_idf_weight": 0.5,
        "codec": "float16",
    },
    "best": {
        "about": "the best nDCG@10 mvr reaches with its model: float16 vectors, the pooled and bm25s stages (no FDE), "
        "and the 'best' search preset, weighted fusion of MaxSim, pooled vector and BM25, as the default search (docs/quality.md)",
        "fde": None,
        "centroid_stage": False,
        "pooled": True,
        "search_preset": "best",
    },
}


def positive_int(owner: str, name: str, value, optional: bool = False) -> None:
    """A ConfigError unless ``value`` is an int >= 1 (not a bool; None where ``optional``)."""
    if value is None and optional:
        return
    if not is_number(value, whole=True) or value < 1:
        raise ConfigError(f"{owner}{name} must be a positive integer{(' or None' if owner != '--' else ', or left out') if optional else ''}, got {value!r}.")


def _strict(cls, values: dict, what: str):
    if not isinstance(values, dict):
        raise ConfigError(f"{what} must be a mapping of settings, got {type(values).__name__}.")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown {what} setting(s) {unknown}; known: {sorted(known)}.")
    return cls(**values)


@dataclass(frozen=True)
class FDEConfig:
    """MUVERA settings (paper notation in brackets) and the faiss index over the encodings.

    k_sim        SimHash bits per repetition [k_sim]: 2**k_sim partitions
    d_proj       AMS-sketch projection of each token [d_proj]; None keeps all dims (identity)
    reps         independent repetitions [R_reps]
    fill_empty   fill a document's empty partitions with its Hamming-nearest token
    d_final      final Count-Sketch dimension [d_final]; None keeps reps * 2**k_sim * d_proj
    seed         seed of every random matrix (stored, so queries always match documents)
    factory      faiss index factory string, inner-product metric: "Flat" (exact), "HNSW32", "IVF256,PQ64", ...

    How widely an IVF or HNSW index is searched (``nprobe``, ``ef_search``) is a search option.
    """

    # Defaults chosen on SciFact and NFCorpus (docs/fde.md): the best recall of the exhaustive
    # top-10 among the settings of 10,240 dims built with 20 repetitions.
    k_sim: int = 4
    d_proj: int | None = 32
    reps: int = 20
    fill_empty: bool = False
    d_final: int | None = None
    seed: int = 0
    factory: str = "Flat"

    def __post_init__(self):
        if not is_number(self.k_sim, whole=True) or not 0 <= self.k_sim < 31:
            raise ConfigError(f"fde k_sim (--fde-k-sim) must be an integer in [0, 30], got {self.k_sim!r}.")
        positive_int("fde ", "reps", self.reps)
        positive_int("fde ", "d_proj", self.d_proj, optional=True)
        positive_int("fde ", "d_final", self.d_final, optional=True)
        if not isinstance(self.factory, str) or not self.factory:
            raise ConfigError("fde factory (--fde-factory) must be a faiss index factory string such as 'Flat' or 'HNSW32'.")

    def full_dim(self, dim: int) -> int:
        return self.reps * (1 << self.k_sim) * (self.d_proj or dim)

    def out_dim(self, dim: int) -> int:
        return self.d_final or self.full_dim(dim)

    def check(self, dim: int) -> None:
        """Raise where these settings cannot work on ``dim``-wide token vectors."""
        if self.d_proj is not None and self.d_proj > dim:
            raise ConfigError(
                f"the FDE projection d_proj={self.d_proj} (--fde-d-proj) exceeds the {dim} token dimensions "
                f"(--pca-dim or the model's); use at most {dim}, or 0 to keep them all."
            )
        if self.full_dim(dim) > 1 << 26:
            raise ConfigError(f"reps * 2**k_sim * d_proj = {self.full_dim(dim)} is too large; lower --fde-k-sim, --fde-reps or --fde-d-proj.")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "FDEConfig":
        return _strict(cls, values, "FDE")


@dataclass(frozen=True)
class IndexConfig:
    """How an index is built.

    model          local model folder, or None for the embedded all-MiniLM-L6-v2
    query_maxlen   query length in tokens (None: the model's own, 64 for plain encoders)
    doc_maxlen     document length in tokens; longer documents are truncated (None: the model's own, 256 for plain encoders)
    batch_size     texts per encoder forward pass
    doc_runtime    how documents run through the transformer: "onnx-int8-fused" (ONNX Runtime,
                   int8 weights, attention fused: PyTorch's nDCG@10 on SciFact and NFCorpus, 2.9x
                   as fast on one thread, docs/speed.md), "onnx-int8" (the graph as traced: indexes built before
                   the fused one keep it), "onnx" (float32) or "torch"
    pca_dim        reduce token vectors to this many dims with uncentred PCA (None: keep all)
    pca_sample     token vectors sampled to fit the PCA
    projection     a trained projection head (an .npz of `mvr train-projection`, mvr/vectors/heads.py)
                   applied to every token vector, query and document, in place of PCA; the index
                   records its absolute path and checksum (``projection_sha256``)
    seed           seed of every random choice made at build time, an integer in [0, 2**32)
    skip_empty     drop documents with no text instead of failing
    threads        torch and Numba threads while building (None: all cores)
    fde            MUVERA first stage built with the index (None: none)
    centroid_stage build the centroid-interaction first stage (PLAID / WARP style, stages/centroids.py):
                   a few hundred bytes per document; None (the default): decided by the corpus
                   size: above LARGE_CORPUS documents it is built and replaces the default
                   (flat) FDE, below it the FDE stays (:meth:`for_corpus`)
    pooled         build the pooled single-vector stage (stages/pooled.py): each document's mean vector
    search_preset  a search preset of SEARCH_PRESETS saved as the index's default search ("best")
    sparse         text first stages built with the index (mvr.registry.SPARSE_STAGES): "bm25s" (the
                   default search joins it with the FDE), "bm25" (Lucene via pyserini, extra 'lucene')
    splade_model   a masked-LM folder: also build the learned-sparse (SPLADE) first stage
    passage_tokens split documents longer than this many tokens into overlapping passages, each
                   stored and searched on its own (mvr/passages.py); None: one row per document,
                   cut at doc_maxlen
    passage_stride tokens from one passage's start to the next (None: 3/4 of passage_tokens)

    Shrinking the stored vectors (docs/compression.md), applied in this order:
    prune          drop document tokens by rule before clustering: "special" ([CLS], [SEP], markers),
                   "punctuation", "stopwords" (Lucene's English list), "df" (tokens found in more
                   than ``prune_max_df`` of the documents); a document keeps all its tokens
                   rather than none
    cluster_ratio  per-document clustering to ceil(ratio x length) re-normalised centroids
    cluster_count  ... or to at most this many centroids per document (not both)
    cluster_method "ward" (agglomerative, Ward linkage, as in training-free token pooling) or
                   "kmeans" (spherical k-means, evenly spaced seeds)
    cluster_iters  k-means iterations per document
    cluster_keep   token classes ("special", "punctuation", "stopwords") kept as their own vectors,
                   never pooled; they count towards the document's centroids
    cluster_idf_weight  Ward only: tokens are scaled by idf ** weight for the linkage, so rare
                   terms are merged last (0: plain Ward)
    codec          how token vectors are stored (mvr.registry.CODECS): "float16", "int8" (per-token
                   scale) or "residual" (ColBERTv2-style corpus centroids + ``codec_bits``-bit
                   per-dimension residual buckets)
    codec_bits     residual bits per dimension: 1, 2 or 4
    codec_centroids residual codec centroids (None: a power of two near 4 x sqrt(vectors))
    codec_sample   vectors sampled to train the residual codec (a build asks for at least 256, and codec_centroids)
    """

    model: str | None = None
    query_maxlen: int | None = None
    doc_maxlen: int | None = None
    batch_size: int = 32
    doc_runtime: str = DEFAULT_DOC_RUNTIME
    pca_dim: int | None = None
    pca_sample: int = 200_000
    projection: str | None = None
    projection_sha256: str | None = None
    seed: int = 0
    skip_empty: bool = False
    threads: int | None = None
    fde: FDEConfig | None = field(default_factory=FDEConfig)
    centroid_stage: bool | None = None
    pooled: bool = False
    search_preset: str | None = None
    sparse: tuple[str, ...] = ("bm25s",)
    splade_model: str | None = None
    passage_tokens: int | None = None
    passage_stride: int | None = None
    prune: tuple[str, ...] = ()
    prune_max_df: float = 0.5
    cluster_ratio: float | None = None
    cluster_count: int | None = None
    cluster_method: str = "ward"
    cluster_iters: int = 10
    cluster_keep: tuple[str, ...] = ("special",)
    cluster_idf_weight: float = 0.0
    codec: str = "float16"
    codec_bits: int = 2
    codec_centroids: int | None = None
    codec_sample: int = 100_000

    @property
    def clusters(self) -> bool:
        """Whether each document's tokens are pooled into fewer vectors."""
        return self.cluster_ratio is not None or self.cluster_count is not None

    @property
    def compacts(self) -> bool:
        """Whether the stored vectors are pruned, clustered or compressed."""
        return bool(self.prune) or self.clusters or self.codec != "float16"

    def __post_init__(self):
        for name in ("query_maxlen", "doc_maxlen", "pca_dim", "threads", "cluster_count", "codec_centroids"):
            positive_int("", name, getattr(self, name), optional=True)
        for name in ("batch_size", "pca_sample", "cluster_iters", "codec_sample"):
            positive_int("", name, getattr(self, name))
        for name in (n for n in ("model", "splade_model", "projection") if getattr(self, n) is not None):
            object.__setattr__(self, name, str(getattr(self, name)))  # a Path, kept as text
        if not is_number(self.seed, whole=True) or not 0 <= self.seed < 2**32:  # what numpy and faiss take
            raise ConfigError(f"seed must be an integer in [0, 2**32), got {self.seed!r}.")
        if self.doc_runtime not in RUNTIMES:
            raise ConfigError(f"unknown doc_runtime {self.doc_runtime!r}; available: {', '.join(RUNTIMES)}.")
        if self.centroid_stage is not None and not isinstance(self.centroid_stage, bool):
            raise ConfigError(f"centroid_stage must be True, False or None (decided by the corpus size), got {self.centroid_stage!r}.")
        if not isinstance(self.pooled, bool):
            raise ConfigError(f"pooled must be True or False, got {self.pooled!r}.")
        if isinstance(self.fde, dict):
            object.__setattr__(self, "fde", FDEConfig.from_dict(self.fde))
        if self.fde is not None and not isinstance(self.fde, FDEConfig):
            raise ConfigError(f"fde must be an FDEConfig, a dict of its fields, or None; got {type(self.fde).__name__}.")
        for name, what, allowed in (("sparse", "sparse first stage", SPARSE_STAGES), ("prune", "pruning rule", PRUNE_RULES), ("cluster_keep", "cluster_keep class", KEEP_CLASSES)):
            value = getattr(self, name)
            object.__setattr__(self, name, (value,) if isinstance(value, str) else tuple(value or ()))
            unknown = sorted(set(getattr(self, name)) - set(allowed))
            if unknown:
                raise ConfigError(f"unknown {what}(s) {unknown} in {name}; available: {', '.join(allowed)}.")
        if not isinstance(self.prune_max_df, (int, float)) or not 0.0 < self.prune_max_df <= 1.0:
            raise ConfigError(f"prune_max_df must lie in (0, 1], got {self.prune_max_df!r}.")
        if self.cluster_ratio is not None and self.cluster_count is not None:
            raise ConfigError("give cluster_ratio or cluster_count, not both.")
        if self.cluster_ratio is not None and (not is_number(self.cluster_ratio) or not 0.0 < self.cluster_ratio <= 1.0):
            raise ConfigError(f"cluster_ratio must lie in (0, 1], got {self.cluster_ratio!r}.")
        if not is_number(self.cluster_idf_weight) or not 0.0 <= self.cluster_idf_weight <= 8.0:
            raise ConfigError(f"cluster_idf_weight must be a number in [0, 8], got {self.cluster_idf_weight!r}.")
        if self.cluster_method not in CLUSTER_METHODS:
            raise ConfigError(f"unknown cluster_method {self.cluster_method!r}; available: {', '.join(CLUSTER_METHODS)}.")
        if self.cluster_idf_weight and self.cluster_method != "ward":
            raise ConfigError("cluster_idf_weight applies to Ward clustering only; use cluster_method='ward' or leave it at 0.")
        if self.codec not in CODECS:
            raise ConfigError(f"unknown codec {self.codec!r}; available: {', '.join(CODECS)}.")
        if self.codec_bits not in (1, 2, 4):
            raise ConfigError(f"codec_bits must be 1, 2 or 4, got {self.codec_bits!r}.")
        if self.codec_centroids is not None and self.codec_centroids > 65536:
            raise ConfigError(f"codec_centroids must be at most 65536 (ids are stored in 16 bits), got {self.codec_centroids}.")
        if self.pca_dim is not None and self.projection is not None:
            raise ConfigError("give pca_dim (--pca-dim) or a trained projection (--projection), not both.")
        if self.pca_dim is not None and self.fde is not None:
            self.fde.check(self.pca_dim)
        from .passages import check

        check(self.passage_tokens, self.passage_stride)
        if self.passage_tokens is not None and self.passage_stride is None:
            object.__setattr__(self, "passage_stride", max(1, self.passage_tokens * 3 // 4))
        if self.search_preset is not None:
            self._check_search_preset()

    def _check_search_preset(self) -> None:
        if not isinstance(self.search_preset, str) or self.search_preset not in SEARCH_PRESETS:
            raise ConfigError(f"unknown search_preset {self.search_preset!r}; available: {', '.join(SEARCH_PRESETS)}.")
        preset = SEARCH_PRESETS[self.search_preset]
        built = {"pooled": self.pooled, "splade": self.splade_model is not None, "fde": self.fde is not None, "centroids": bool(self.centroid_stage)}
        needed = [*preset["first_stage"].split("+"), *(name for name in preset.get("weights", {}) if name != "maxsim")]
        missing = [name for name in needed if not built.get(name, name in self.sparse)]
        if missing:
            raise ConfigError(f"search_preset {self.search_preset!r} reads the {', '.join(missing)} stage(s), which this build leaves out; build them too.")

    def for_corpus(self, n_docs: int) -> "IndexConfig":
        """This config with ``centroid_stage`` decided for a build of ``n_docs`` documents: left as
        given, or (None) built above :data:`LARGE_CORPUS` documents, where it also replaces the
        default flat FDE (an FDE of other settings stays)."""
        large = n_docs > LARGE_CORPUS
        return self if self.centroid_stage is not None else replace(self, centroid_stage=large, fde=None if large and self.fde == FDEConfig() else self.fde)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "IndexConfig":
        """The config of ``values`` (every key a field; an index's saved config is migrated first,
        see :func:`mvr.storage.formats.upgrade_config`)."""
        return _strict(cls, values, "index")
