"""Index configuration: a frozen dataclass, validated on construction and saved in the manifest."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from .errors import ConfigError
from .encoder import DEFAULT_DOC_RUNTIME, RUNTIMES
from .fde import FDEConfig


PRUNE_RULES = ("special", "punctuation", "stopwords", "df")
CODECS = ("float16", "int8", "residual")
CLUSTER_METHODS = ("ward", "kmeans")
KEEP_CLASSES = ("special", "punctuation", "stopwords")
# Named compaction settings (docs/compression.md has the measurements behind them).
PRESETS = {
    "small": {
        "about": "the smallest index within 1% nDCG@10 of full float16 on SciFact and NFCorpus: "
        "Ward clustering to 0.28 of the tokens, 1-bit residual codec, about 16 bytes per token (docs/compression.md)",
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
}


@dataclass(frozen=True)
class IndexConfig:
    """How an index is built.

    model          local model folder, or None for the embedded all-MiniLM-L6-v2
    query_maxlen   query length in tokens (None: the model's own, 64 for plain encoders)
    doc_maxlen     document length in tokens; longer documents are truncated (None: the model's own, 256 for plain encoders)
    batch_size     texts per encoder forward pass
    doc_runtime    how documents run through the transformer: "onnx-int8" (ONNX Runtime, int8
                   weights; same nDCG@10 as PyTorch on SciFact and NFCorpus, 1.5x faster:
                   docs/speed.md), "onnx" (float32) or "torch"
    pca_dim        reduce token vectors to this many dims with uncentred PCA (None: keep all)
    pca_sample     token vectors sampled to fit the PCA
    seed           seed of every random choice made at build time
    skip_empty     drop documents with no text instead of failing
    threads        torch and Numba threads while building (None: all cores)
    fde            MUVERA first stage built with the index (None: none; exhaustive search only)
    sparse         sparse first stages built with the index: "bm25" (Lucene via pyserini), "bm25s"
    splade_model   a masked-LM folder: also build the learned-sparse (SPLADE) first stage

    Shrinking the stored vectors (docs/compression.md), applied in this order:
    prune          drop document tokens by rule before clustering: "special" ([CLS], [SEP], markers),
                   "punctuation", "stopwords" (Lucene's English list), "df" (tokens found in more
                   than ``prune_max_df`` of the documents); a document keeps all its tokens
                   rather than none
    cluster_ratio  per-document spherical k-means to ceil(ratio x length) re-normalised centroids
    cluster_count  ... or to at most this many centroids per document (not both)
    cluster_method "ward" (agglomerative, Ward linkage, as in training-free token pooling) or
                   "kmeans" (spherical k-means, evenly spaced seeds)
    cluster_iters  k-means iterations per document
    cluster_keep   token classes ("special", "punctuation", "stopwords") kept as their own vectors,
                   never pooled; they count towards the document's centroids
    cluster_idf_weight  Ward only: tokens are scaled by idf ** weight for the linkage, so rare
                   terms are merged last (0: plain Ward)
    codec          "float16", "int8" (per-token scale) or "residual" (ColBERTv2-style corpus
                   centroids + ``codec_bits``-bit per-dimension residual buckets)
    codec_bits     residual bits per dimension: 1, 2 or 4
    codec_centroids residual codec centroids (None: a power of two near 4 x sqrt(vectors))
    codec_sample   vectors sampled to train the residual codec
    """

    model: str | None = None
    query_maxlen: int | None = None
    doc_maxlen: int | None = None
    batch_size: int = 32
    doc_runtime: str = DEFAULT_DOC_RUNTIME
    pca_dim: int | None = None
    pca_sample: int = 200_000
    seed: int = 0
    skip_empty: bool = False
    threads: int | None = None
    fde: FDEConfig | None = field(default_factory=FDEConfig)
    sparse: tuple[str, ...] = ("bm25", "bm25s")
    splade_model: str | None = None
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
        for name in ("query_maxlen", "doc_maxlen", "pca_dim", "threads"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"{name} must be a positive integer or None, got {value!r}.")
        for name in ("batch_size", "pca_sample"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}.")
        for name in ("model", "splade_model"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                object.__setattr__(self, name, str(getattr(self, name)))
        if self.doc_runtime not in RUNTIMES:
            raise ConfigError(f"unknown doc_runtime {self.doc_runtime!r}; available: {', '.join(RUNTIMES)}.")
        if isinstance(self.fde, dict):
            object.__setattr__(self, "fde", FDEConfig.from_dict(self.fde))
        object.__setattr__(self, "sparse", tuple(self.sparse or ()))
        unknown = sorted(set(self.sparse) - {"bm25", "bm25s"})
        if unknown:
            raise ConfigError(f"unknown sparse first stage(s) {unknown}; available: bm25, bm25s.")
        object.__setattr__(self, "prune", tuple(self.prune or ()))
        unknown = sorted(set(self.prune) - set(PRUNE_RULES))
        if unknown:
            raise ConfigError(f"unknown pruning rule(s) {unknown}; available: {', '.join(PRUNE_RULES)}.")
        if not 0.0 < self.prune_max_df <= 1.0:
            raise ConfigError(f"prune_max_df must lie in (0, 1], got {self.prune_max_df!r}.")
        if self.cluster_ratio is not None and self.cluster_count is not None:
            raise ConfigError("give cluster_ratio or cluster_count, not both.")
        if self.cluster_ratio is not None and (isinstance(self.cluster_ratio, bool) or not 0.0 < self.cluster_ratio <= 1.0):
            raise ConfigError(f"cluster_ratio must lie in (0, 1], got {self.cluster_ratio!r}.")
        object.__setattr__(self, "cluster_keep", tuple(self.cluster_keep or ()))
        unknown = sorted(set(self.cluster_keep) - set(KEEP_CLASSES))
        if unknown:
            raise ConfigError(f"unknown cluster_keep class(es) {unknown}; available: {', '.join(KEEP_CLASSES)}.")
        if isinstance(self.cluster_idf_weight, bool) or not isinstance(self.cluster_idf_weight, (int, float)) or not 0.0 <= self.cluster_idf_weight <= 8.0:
            raise ConfigError(f"cluster_idf_weight must be a number in [0, 8], got {self.cluster_idf_weight!r}.")
        if self.cluster_idf_weight and self.cluster_method != "ward":
            raise ConfigError("cluster_idf_weight applies to Ward clustering only; use cluster_method='ward' or leave it at 0.")
        if self.cluster_method not in CLUSTER_METHODS:
            raise ConfigError(f"unknown cluster_method {self.cluster_method!r}; available: {', '.join(CLUSTER_METHODS)}.")
        for name in ("cluster_count", "codec_centroids"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ConfigError(f"{name} must be a positive integer or None, got {value!r}.")
        for name in ("cluster_iters", "codec_sample"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}.")
        if self.codec not in CODECS:
            raise ConfigError(f"unknown codec {self.codec!r}; available: {', '.join(CODECS)}.")
        if self.codec_bits not in (1, 2, 4):
            raise ConfigError(f"codec_bits must be 1, 2 or 4, got {self.codec_bits!r}.")
        if self.codec_centroids is not None and self.codec_centroids > 65536:
            raise ConfigError(f"codec_centroids must be at most 65536 (ids are stored in 16 bits), got {self.codec_centroids}.")
        if self.fde is not None and not isinstance(self.fde, FDEConfig):
            raise ConfigError(f"fde must be an FDEConfig, a dict of its fields, or None; got {type(self.fde).__name__}.")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "IndexConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown index setting(s) {unknown}; known: {sorted(known)}.")
        if "cluster_keep" not in values and (values.get("cluster_ratio") is not None or values.get("cluster_count") is not None):
            values = {**values, "cluster_keep": ()}  # clustered before cluster_keep existed: every token was pooled
        values.setdefault("doc_runtime", "torch")  # built before doc_runtime existed: documents ran in PyTorch
        return cls(**values)
