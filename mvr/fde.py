"""MUVERA first stage: fixed-dimensional encodings (FDEs) of the documents in a faiss index; a
query's FDE finds candidates, which exact MaxSim then reranks.

An index keeps its FDE in the sub-directory ``fde/``, with a manifest of its own:

    fde/manifest.json      format, FDEConfig, the index vectors' checksum it was built from, files
    fde/simhash.npy        float32 (reps, k_sim, dim): SimHash hyperplanes
    fde/ams_index.npy      int64 (reps, dim): output slot of each input dim (empty: identity)
    fde/ams_sign.npy       float32 (reps, dim): +/-1 of each input dim
    fde/cs_index.npy       int64 (full_dim,): Count-Sketch slot of each coordinate (empty: none)
    fde/cs_sign.npy        float32 (full_dim,)
    fde/fde.faiss          the faiss index of the document FDEs (inner product)

It is built from the stored float16 token vectors, so it can be rebuilt with other settings
without encoding the corpus again (``mvr fde NAME ...``).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from . import store
from .errors import ConfigError, IndexFormatError

FDE_FORMAT = "mvr-fde"
FDE_VERSION = 1
FDE_DIR = "fde"


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
    nprobe       IVF lists probed per query;  ef_search: HNSW search breadth
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
    nprobe: int = 32
    ef_search: int = 256

    def __post_init__(self):
        if not isinstance(self.k_sim, int) or not 0 <= self.k_sim < 31:
            raise ConfigError(f"k_sim must be an integer in [0, 30], got {self.k_sim!r}.")
        for name in ("reps", "nprobe", "ef_search"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}.")
        for name in ("d_proj", "d_final"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"{name} must be a positive integer or None, got {value!r}.")
        if not isinstance(self.factory, str) or not self.factory:
            raise ConfigError("factory must be a faiss index factory string such as 'Flat' or 'HNSW32'.")

    def full_dim(self, dim: int) -> int:
        return self.reps * (1 << self.k_sim) * (self.d_proj or dim)

    def out_dim(self, dim: int) -> int:
        return self.d_final or self.full_dim(dim)

    def check(self, dim: int) -> None:
        if self.d_proj is not None and self.d_proj > dim:
            raise ConfigError(f"d_proj={self.d_proj} exceeds the token dimension {dim}; use at most {dim} or None (identity).")
        if self.full_dim(dim) > 1 << 26:
            raise ConfigError(f"reps * 2**k_sim * d_proj = {self.full_dim(dim)} is too large; lower k_sim, reps or d_proj.")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "FDEConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown FDE setting(s) {unknown}; known: {sorted(known)}.")
        return cls(**values)


class FDE:
    """The random maps of one FDE configuration, and the encoders that use them."""

    _ARRAYS = ("simhash", "ams_index", "ams_sign", "cs_index", "cs_sign")

    def __init__(self, config: FDEConfig, dim: int, simhash, ams_index, ams_sign, cs_index, cs_sign):
        self.config, self.dim = config, dim
        self.simhash, self.ams_index, self.ams_sign = simhash, ams_index, ams_sign
        self.cs_index, self.cs_sign = cs_index, cs_sign
        self.d_proj = config.d_proj or dim
        self.out_dim = config.out_dim(dim)

    @classmethod
    def draw(cls, config: FDEConfig, dim: int) -> "FDE":
        """Draw every random matrix from ``config.seed``."""
        config.check(dim)
        rng = np.random.default_rng(config.seed)
        simhash = rng.standard_normal((config.reps, config.k_sim, dim), dtype=np.float32)
        if config.d_proj is None:
            ams_index = np.zeros((config.reps, 0), dtype=np.int64)
            ams_sign = np.zeros((config.reps, 0), dtype=np.float32)
        else:
            ams_index = rng.integers(0, config.d_proj, size=(config.reps, dim), dtype=np.int64)
            ams_sign = rng.choice(np.array([-1.0, 1.0], dtype=np.float32), size=(config.reps, dim))
        full = config.full_dim(dim)
        if config.d_final is None:
            cs_index, cs_sign = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        else:
            cs_index = rng.integers(0, config.d_final, size=full, dtype=np.int64)
            cs_sign = rng.choice(np.array([-1.0, 1.0], dtype=np.float32), size=full)
        return cls(config, dim, simhash, ams_index, ams_sign, cs_index, cs_sign)

    def save(self, folder: Path) -> None:
        for name in self._ARRAYS:
            np.save(folder / f"{name}.npy", getattr(self, name))

    @classmethod
    def load(cls, folder: Path, config: FDEConfig, dim: int) -> "FDE":
        return cls(config, dim, *(np.load(folder / f"{name}.npy") for name in cls._ARRAYS))

    def encode_queries(self, vectors: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """float32 ``(n_queries, out_dim)``: per-partition sums."""
        from ._kernels.fde import fde_queries

        return fde_queries(vectors, offsets, self.simhash, self.ams_index, self.ams_sign, self.d_proj, self.cs_index, self.cs_sign, self.config.d_final or 0)

    def encode_documents(self, codes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """float32 ``(n_docs, out_dim)``: per-partition centroids (float16 token codes in)."""
        from ._kernels.fde import fde_documents

        return fde_documents(
            codes, offsets, self.simhash, self.ams_index, self.ams_sign, self.d_proj, self.config.fill_empty, self.cs_index, self.cs_sign, self.config.d_final or 0
        )


def _set_search_parameters(index, config: FDEConfig) -> None:
    import faiss

    space = faiss.ParameterSpace()
    for name, value in (("nprobe", config.nprobe), ("efSearch", config.ef_search)):
        with contextlib.suppress(RuntimeError):
            space.set_index_parameter(index, name, value)


def build_fde(folder: Path, codes: np.ndarray, offsets: np.ndarray, dim: int, config: FDEConfig, vectors_sha256: str, block: int = 4096) -> dict:
    """Encode every document and write ``folder`` (a staging directory); return its manifest."""
    import faiss

    started = time.perf_counter()
    fde = FDE.draw(config, dim)
    fde.save(folder)
    n_docs = len(offsets) - 1
    try:
        index = faiss.index_factory(fde.out_dim, config.factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise ConfigError(f"faiss cannot make an index from factory string {config.factory!r}: {str(exc).splitlines()[0]}") from None
    encoded = []
    for start in range(0, n_docs, block):
        stop = min(start + block, n_docs)
        encoded.append(fde.encode_documents(codes, offsets[start : stop + 1]))
    encode_seconds = time.perf_counter() - started
    matrix = np.concatenate(encoded) if encoded else np.zeros((0, fde.out_dim), np.float32)
    if not index.is_trained:
        try:
            index.train(matrix)
        except RuntimeError as exc:
            raise ConfigError(f"faiss could not train {config.factory!r} on {n_docs} documents: {str(exc).splitlines()[0]}") from None
    index.add(matrix)
    faiss.write_index(index, str(folder / "fde.faiss"))
    return {
        "format": FDE_FORMAT,
        "format_version": FDE_VERSION,
        "config": config.to_dict(),
        "dim": dim,
        "fde_dim": fde.out_dim,
        "documents": n_docs,
        "vectors_sha256": vectors_sha256,
        "build": {
            "seconds": round(time.perf_counter() - started, 3),
            "encode_seconds": round(encode_seconds, 3),
            "docs_per_second": round(n_docs / max(encode_seconds, 1e-9), 1),
        },
        "bytes_per_document": round((folder / "fde.faiss").stat().st_size / max(n_docs, 1), 1),
    }


class FDEFirstStage:
    """An index's ``fde/`` directory, opened: encodes queries and finds candidates with faiss."""

    def __init__(self, folder: Path, dim: int, n_docs: int, vectors_sha256: str):
        import faiss

        self.folder = folder
        self.manifest = store.read_manifest(folder, FDE_FORMAT, FDE_VERSION)
        if self.manifest["vectors_sha256"] != vectors_sha256 or self.manifest["documents"] != n_docs or self.manifest["dim"] != dim:
            raise IndexFormatError(f"{folder} was built for other token vectors than its index holds; rebuild it with `mvr fde`.")
        self.config = FDEConfig.from_dict(self.manifest["config"])
        self.fde = FDE.load(folder, self.config, dim)
        path = str(folder / "fde.faiss")
        try:
            self.index = faiss.read_index(path, faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
        except RuntimeError:  # index types that faiss cannot memory-map
            self.index = faiss.read_index(path)
        _set_search_parameters(self.index, self.config)

    def candidates(self, vectors: np.ndarray, offsets: np.ndarray, n_candidates: int) -> tuple[np.ndarray, np.ndarray]:
        """faiss ``(D, I)`` of the queries' FDEs: ``(n_queries, n_candidates)``, -1 where none."""
        encoded = self.fde.encode_queries(vectors, offsets)
        scores, ids = self.index.search(encoded, n_candidates)
        return scores, ids
