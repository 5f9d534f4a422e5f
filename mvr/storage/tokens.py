"""Token stores: how an index keeps its documents' token vectors, and how MaxSim reads them.

One contract (:class:`TokenStore`) with one implementation per codec (the names are in
``mvr.registry.CODECS``): each owns its files, writes them from float32 vectors (fitting what it
needs), decodes row ranges and scores queries with the Numba kernels, without ever decompressing
the whole matrix. ``doc_offsets.npy`` (int64 ``(n_docs + 1,)``) says which rows are whose.

    float16    vectors.npy   float16 (n_vectors, dim)
    int8       codes.npy     uint8 (n_vectors, dim): q + 128, q = round(x / scale)
               scales.npy    float32 (n_vectors,)
    residual   see storage/residual.py
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar, Iterator, Protocol

import numpy as np

from ..threads import load_npy

_MATMUL_QUERIES = 8  # this many queries or more at once: exhaustive scoring by matrix products (BLAS)
_BLOCK_ROWS = 1 << 14
_DECODE_BLOCK = 1 << 16


class TokenStore(Protocol):
    """The stored token vectors of an index, opened. Queries are float32 ``(n_tokens, dim)``
    (several: flat rows + int64 ``offsets``); positions are int64 document rows."""

    codec: ClassVar[str]
    files: ClassVar[tuple[str, ...]]  # files[0] identifies the vectors (first stages record its sha256)
    dim: int
    doc_offsets: np.ndarray
    max_doc_len: int

    @classmethod
    def coder(cls, sample: np.ndarray, config, like: Path | None = None, n_vectors: int | None = None) -> "Coder": ...  # fitted on sample (or like's codebook)

    @classmethod
    def write(cls, folder: Path, vectors: np.ndarray, config, like: Path | None = None) -> dict: ...  # fit (or reuse like's) + encode; counts to record

    @classmethod
    def open(cls, folder: Path, config, dim: int, doc_offsets: np.ndarray) -> "TokenStore": ...

    def __len__(self) -> int: ...

    def decode(self, start: int, stop: int) -> np.ndarray: ...  # rows start:stop as float32

    def score(self, query: np.ndarray, positions: np.ndarray) -> np.ndarray: ...  # float32 (len(positions),)

    def score_all(self, queries: np.ndarray, offsets: np.ndarray) -> np.ndarray: ...  # float32 (n_queries, n_docs)

    def early_exit(self, query: np.ndarray, positions: np.ndarray, k: int, patience: int) -> tuple[np.ndarray, int]: ...


@dataclass
class Coder:
    """A codec fitted for one index: ``encode`` turns float32 vectors into the per-vector arrays
    (file name -> rows), block by block; ``codebook`` (file name -> array) is written once;
    ``counts`` go into the segment's manifest."""

    encode: Callable[[np.ndarray], dict[str, np.ndarray]]
    codebook: dict[str, np.ndarray] = field(default_factory=dict)
    counts: dict = field(default_factory=dict)


class StoreBase:
    """What every codec shares: writing through its :class:`Coder`, opening offsets, exhaustive
    scoring by BLAS for many queries, decoding in blocks. A codec supplies ``coder``, ``decode``
    and its kernels."""

    codec: ClassVar[str] = ""
    files: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def coder(cls, sample: np.ndarray, config, like: Path | None = None, n_vectors: int | None = None) -> Coder:
        """The codec fitted on ``sample`` (float32 vectors) for an index of about ``n_vectors``
        (default: the sample's length), or reusing the codebook of ``like``, a segment of the same index."""
        raise NotImplementedError

    @classmethod
    def write(cls, folder: Path, vectors: np.ndarray, config, like: Path | None = None) -> dict:
        """Fit on ``vectors`` (or reuse ``like``'s codebook), encode them all into ``folder``, a
        block of rows at a time (``vectors`` may be memory-mapped: the codec reads its sample
        only); the counts to record."""
        from .blobs import ArrayWriter

        coder = cls.coder(vectors, config, like)
        for name, array in coder.codebook.items():
            np.save(folder / name, array)
        writers = {}
        for start in range(0, max(len(vectors), 1), _DECODE_BLOCK):
            for name, rows in coder.encode(np.asarray(vectors[start : start + _DECODE_BLOCK], dtype=np.float32)).items():
                if name not in writers:
                    writers[name] = ArrayWriter(folder / name, rows.dtype, rows.shape[1:])
                writers[name].add(rows)
        for writer in writers.values():
            writer.close()
        return coder.counts

    def __init__(self, dim: int, doc_offsets: np.ndarray, n_rows: int):
        self.dim = int(dim)
        self.doc_offsets = np.ascontiguousarray(doc_offsets, dtype=np.int64)
        lengths = np.diff(self.doc_offsets)
        self.max_doc_len = int(lengths.max()) if len(lengths) else 0
        self.n_rows = int(n_rows)

    def __len__(self) -> int:
        return self.n_rows

    @property
    def n_docs(self) -> int:
        return len(self.doc_offsets) - 1

    def document(self, position: int) -> np.ndarray:
        """The vectors of the document at ``position``, decoded: float32 ``(n, dim)``."""
        return self.decode(int(self.doc_offsets[position]), int(self.doc_offsets[position + 1]))

    def score_all(self, queries: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        from .._kernels import maxsim_matmul_many

        if len(offsets) - 1 >= _MATMUL_QUERIES:
            return maxsim_matmul_many(queries, offsets, self.decoded_blocks(), self.doc_offsets)
        return self._score_many(queries, offsets)

    def decoded_blocks(self, rows: int = _BLOCK_ROWS) -> Iterator[tuple[int, int, np.ndarray]]:
        """``(first_doc, stop_doc, float32 rows)`` over the stored vectors, about ``rows`` at a time."""
        first = 0
        while first < self.n_docs:
            stop = int(np.searchsorted(self.doc_offsets, self.doc_offsets[first] + rows, side="right")) - 1
            stop = min(max(stop, first + 1), self.n_docs)
            yield first, stop, self.decode(int(self.doc_offsets[first]), int(self.doc_offsets[stop]))
            first = stop

    def float16_bits(self) -> np.ndarray:
        """Every stored vector as float16 bits, uint16 ``(n, dim)`` (what the FDE is built from)."""
        out = np.empty((len(self), self.dim), dtype=np.float16)
        for start in range(0, len(self), _DECODE_BLOCK):
            stop = min(len(self), start + _DECODE_BLOCK)
            out[start:stop] = self.decode(start, stop)
        return out.view(np.uint16)

    @classmethod
    def layout(cls, n: int, dim: int, config) -> dict[str, tuple[tuple, str]]:
        """Each file's shape (None: any length there) and dtype for ``n`` vectors of ``dim``:
        what opening an index checks before any kernel reads it (storage/validate.py)."""
        return {}

    @classmethod
    def bytes_on_disk(cls, folder: Path) -> int:
        """Bytes of everything search reads to score documents (codes, codebooks, offsets)."""
        return sum((folder / f).stat().st_size for f in (*cls.files, "doc_offsets.npy") if (folder / f).is_file())


class Float16Store(StoreBase):
    """Every vector in float16; the kernels read it as its uint16 bits."""

    codec = "float16"
    files = ("vectors.npy",)

    def __init__(self, codes: np.ndarray, doc_offsets: np.ndarray):
        super().__init__(codes.shape[1], doc_offsets, codes.shape[0])
        self.codes = codes

    @classmethod
    def coder(cls, sample, config, like=None, n_vectors=None) -> Coder:
        return Coder(lambda vectors: {"vectors.npy": np.asarray(vectors).astype(np.float16)})

    @classmethod
    def layout(cls, n, dim, config):
        return {"vectors.npy": ((n, dim), "float16")}

    @classmethod
    def open(cls, folder: Path, config, dim: int, doc_offsets: np.ndarray) -> "Float16Store":
        return cls(load_npy(folder / "vectors.npy", mmap_mode="r").view(np.uint16), doc_offsets)

    def decode(self, start: int, stop: int) -> np.ndarray:
        return np.asarray(self.codes[start:stop]).view(np.float16).astype(np.float32)

    def float16_bits(self) -> np.ndarray:
        return self.codes

    def score(self, query, positions):
        from .._kernels import maxsim_candidates

        return maxsim_candidates(query, self.codes, self.doc_offsets, positions, self.max_doc_len)

    def _score_many(self, queries, offsets):
        from .._kernels import maxsim_exhaustive, maxsim_exhaustive_many

        if len(offsets) == 2:
            return maxsim_exhaustive(queries, self.codes, self.doc_offsets, self.max_doc_len)[None, :]
        return maxsim_exhaustive_many(queries, offsets, self.codes, self.doc_offsets, self.max_doc_len)

    def early_exit(self, query, positions, k, patience):
        from .._kernels import maxsim_early_exit

        return maxsim_early_exit(query, self.codes, self.doc_offsets, positions, k, patience, self.max_doc_len)


class CodedStore(StoreBase):
    """A compressed store: the kernels decode one document at a time into a scratch buffer
    (:class:`mvr._kernels.codecs.CodedVectors`)."""

    def __init__(self, coded, doc_offsets: np.ndarray):
        super().__init__(coded.dim, doc_offsets, len(coded))
        self.coded = coded

    def decode(self, start: int, stop: int) -> np.ndarray:
        return self.coded.decode(start, stop)

    def score(self, query, positions):
        from .._kernels import maxsim_codes_candidates

        return maxsim_codes_candidates(query, self.coded, self.doc_offsets, positions, self.max_doc_len)

    def _score_many(self, queries, offsets):
        from .._kernels import maxsim_codes_many

        return maxsim_codes_many(queries, offsets, self.coded, self.doc_offsets, self.max_doc_len)

    def early_exit(self, query, positions, k, patience):
        from .._kernels import maxsim_codes_early_exit

        return maxsim_codes_early_exit(query, self.coded, self.doc_offsets, positions, k, patience, self.max_doc_len)


def encode_int8(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-row int8: codes uint8 ``(n, dim)`` (q + 128) and scales float32 ``(n,)``;
    each value decodes within scale / 2 of the original."""
    vectors = np.asarray(vectors, dtype=np.float32)
    scales = np.abs(vectors).max(axis=1, initial=0.0) / 127.0
    scales[scales == 0] = 1.0
    q = np.clip(np.rint(vectors / scales[:, None]), -127, 127)
    return (q + 128).astype(np.uint8), scales.astype(np.float32)


class Int8Store(CodedStore):
    """One int8 code per dimension and one float32 scale per vector."""

    codec = "int8"
    files = ("codes.npy", "scales.npy")

    @classmethod
    def coder(cls, sample, config, like=None, n_vectors=None) -> Coder:
        return Coder(lambda vectors: dict(zip(("codes.npy", "scales.npy"), encode_int8(vectors))))

    @classmethod
    def layout(cls, n, dim, config):
        return {"codes.npy": ((n, dim), "uint8"), "scales.npy": ((n,), "float32")}

    @classmethod
    def open(cls, folder: Path, config, dim: int, doc_offsets: np.ndarray) -> "Int8Store":
        from .._kernels.codecs import INT8, CodedVectors

        return cls(CodedVectors(INT8, dim, load_npy(folder / "codes.npy", mmap_mode="r"), scales=load_npy(folder / "scales.npy", mmap_mode="r")), doc_offsets)
