"""Index configuration: a frozen dataclass, validated on construction and saved in the manifest."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from .errors import ConfigError
from .fde import FDEConfig


@dataclass(frozen=True)
class IndexConfig:
    """How an index is built.

    model          local model folder, or None for the embedded all-MiniLM-L6-v2
    query_maxlen   query length in tokens (None: the model's own, 64 for plain encoders)
    doc_maxlen     document length in tokens; longer documents are truncated (None: the model's own, 256 for plain encoders)
    batch_size     texts per encoder forward pass
    pca_dim        reduce token vectors to this many dims with uncentred PCA (None: keep all)
    pca_sample     token vectors sampled to fit the PCA
    seed           seed of every random choice made at build time
    skip_empty     drop documents with no text instead of failing
    threads        torch and Numba threads while building (None: all cores)
    fde            MUVERA first stage built with the index (None: none; exhaustive search only)
    sparse         sparse first stages built with the index: "bm25" (Lucene via pyserini), "bm25s"
    splade_model   a masked-LM folder: also build the learned-sparse (SPLADE) first stage
    """

    model: str | None = None
    query_maxlen: int | None = None
    doc_maxlen: int | None = None
    batch_size: int = 32
    pca_dim: int | None = None
    pca_sample: int = 200_000
    seed: int = 0
    skip_empty: bool = False
    threads: int | None = None
    fde: FDEConfig | None = field(default_factory=FDEConfig)
    sparse: tuple[str, ...] = ("bm25", "bm25s")
    splade_model: str | None = None

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
        if isinstance(self.fde, dict):
            object.__setattr__(self, "fde", FDEConfig.from_dict(self.fde))
        object.__setattr__(self, "sparse", tuple(self.sparse or ()))
        unknown = sorted(set(self.sparse) - {"bm25", "bm25s"})
        if unknown:
            raise ConfigError(f"unknown sparse first stage(s) {unknown}; available: bm25, bm25s.")
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
        return cls(**values)
