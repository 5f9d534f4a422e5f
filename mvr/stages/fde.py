"""MUVERA first stage (Dhulipala et al., 2024): fixed-dimensional encodings (FDEs) of the documents
in a faiss index; a query's FDE finds candidates, which exact MaxSim then reranks.

An index keeps its FDE in the sub-directory ``fde/``, with a manifest of its own:

    fde/manifest.json      format, FDEConfig, the index vectors' checksum it was built from, files
    fde/simhash.npy        float32 (reps, k_sim, dim): SimHash hyperplanes
    fde/ams_index.npy      int64 (reps, dim): output slot of each input dim (empty: identity)
    fde/ams_sign.npy       float32 (reps, dim): +/-1 of each input dim
    fde/cs_index.npy       int64 (full_dim,): Count-Sketch slot of each coordinate (empty: none)
    fde/cs_sign.npy        float32 (full_dim,)
    fde/fde.faiss          the faiss index of the document FDEs (inner product)

It is built from the stored token vectors, so it can be rebuilt with other settings without
encoding the corpus again (``mvr fde NAME ...``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from ..config import FDE_EF_SEARCH, FDE_NPROBE, FDEConfig
from ..errors import ConfigError, QueryError, is_number, is_utf8
from ..progress import progress
from ..storage.formats import FDE_FORMAT, FDE_VERSION, upgrade_fde_config
from ..threads import load_npy
from .base import BuildSource, Candidates, QueryBatch


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
        return cls(config, dim, *(load_npy(folder / f"{name}.npy") for name in cls._ARRAYS))

    def encode_queries(self, vectors: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """float32 ``(n_queries, out_dim)``: per-partition sums."""
        from .._kernels.fde import fde_queries

        return fde_queries(vectors, offsets, self.simhash, self.ams_index, self.ams_sign, self.d_proj, self.cs_index, self.cs_sign, self.config.d_final or 0)

    def encode_documents(self, codes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """float32 ``(n_docs, out_dim)``: per-partition centroids (float16 token codes in)."""
        from .._kernels.fde import fde_documents

        return fde_documents(
            codes, offsets, self.simhash, self.ams_index, self.ams_sign, self.d_proj, self.config.fill_empty, self.cs_index, self.cs_sign, self.config.d_final or 0
        )


def _check_memory(size: int, n_docs: int, dims: int) -> None:
    """A ConfigError where a flat FDE of ``size`` bytes would not fit in the memory free now: the
    out-of-memory killer ends the process first, and other work on the machine may go with it."""
    try:  # what can be had without swapping (page cache included): MemAvailable, else all of the memory
        with open("/proc/meminfo") as meminfo:
            free = next(int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError, IndexError):
        try:
            free = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError):
            return
    if size > 0.8 * free:
        raise ConfigError(f"the FDE would hold {size / 2**30:.1f} GiB ({n_docs} documents x {dims} dimensions x 4 bytes), more than the {free / 2**30:.1f} GiB "
                          "of memory free: lower --fde-reps, --fde-d-proj or --fde-k-sim, or project it with --fde-d-final.")


TRAIN_DOCUMENTS = 50_000  # documents an IVF / PQ factory trains on (faiss samples its k-means further)


def build_fde(folder: Path, codes: np.ndarray, offsets: np.ndarray, dim: int, config: FDEConfig, vectors_sha256: str, block: int = 4096, show_progress=None) -> dict:
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
    used, encode_seconds = config.factory, 0.0
    if not index.is_trained:  # trained on at most TRAIN_DOCUMENTS, evenly spaced (all of a smaller segment)
        step = max(1, -(-n_docs // TRAIN_DOCUMENTS))
        sample = [fde.encode_documents(codes, offsets[d : d + 2]) for d in range(0, n_docs, step)]
        sample = np.concatenate(sample) if sample else np.zeros((0, fde.out_dim), np.float32)
        try:
            if "OPQ" in config.factory and len(sample) < fde.out_dim:  # faiss's OPQ training corrupts memory then (the process dies)
                raise RuntimeError("fewer training points than dimensions")
            index.train(sample)
        except RuntimeError as exc:
            if "training points" not in str(exc):
                raise ConfigError(f"faiss could not train {config.factory!r} on {n_docs} documents: {str(exc).splitlines()[0]}") from None
            # too few documents to train on (a small add to an IVF / PQ index): this segment's
            # FDE is exact; merges into bigger segments train the configured index again
            index, used = faiss.IndexFlatIP(fde.out_dim), "Flat"
        del sample
    # encoded a block at a time: memory holds the index and one block, never every document's
    # encoding beside the index's own copy; a flat index is filled in place, sized once (adding
    # blocks would grow its storage by doubling, copying it each time)
    flat = isinstance(index, faiss.IndexFlat)
    if flat:
        _check_memory(n_docs * index.code_size, n_docs, fde.out_dim)
        index.codes.resize(n_docs * index.code_size)
        rows = faiss.rev_swig_ptr(index.codes.data(), n_docs * index.code_size).view(np.float32).reshape(n_docs, fde.out_dim) if n_docs else None
    bar = progress(total=n_docs, desc="FDE", unit="doc", show=show_progress)
    for start in range(0, n_docs, block):
        stop = min(start + block, n_docs)
        block_started = time.perf_counter()
        encoded = fde.encode_documents(codes, offsets[start : stop + 1])
        encode_seconds += time.perf_counter() - block_started
        if flat:
            rows[start:stop] = encoded
        else:
            try:
                index.add(encoded)
            except RuntimeError as exc:  # (NSG cannot build a graph of fewer than 100 points, ...)
                raise ConfigError(f"faiss could not add {n_docs} documents to {config.factory!r}: {str(exc).splitlines()[0]}") from None
        del encoded
        bar.update(stop - start)
    bar.close()
    if flat:
        index.ntotal = n_docs
        del rows
    with open(folder / "fde.faiss", "wb") as out:  # through Python: faiss takes a path only as UTF-8 text
        faiss.write_index(index, faiss.PyCallbackIOWriter(out.write))
    return {
        "format": FDE_FORMAT,
        "format_version": FDE_VERSION,
        "config": config.to_dict(),
        "dim": dim,
        "fde_dim": fde.out_dim,
        "documents": n_docs,
        "factory_used": used,
        "vectors_sha256": vectors_sha256,
        "build": {
            "seconds": round(time.perf_counter() - started, 3),
            "encode_seconds": round(encode_seconds, 3),
            "docs_per_second": round(n_docs / max(encode_seconds, 1e-9), 1),
        },
        "bytes_per_document": round((folder / "fde.faiss").stat().st_size / max(n_docs, 1), 1),
    }



def check_factory(config: FDEConfig, dim: int) -> None:
    """Refuse FDE settings that cannot work on ``dim``-wide vectors (a bad faiss factory string
    among them) before anything is encoded."""
    import re

    import faiss

    config.check(dim)
    if config.d_final is not None and config.d_final > config.full_dim(dim):  # a sketch wider than what it sketches: memory for nothing
        raise ConfigError(f"--fde-d-final {config.d_final} is more than the FDE's own {config.full_dim(dim)} dimensions (reps x 2**k_sim x d_proj); use fewer, e.g. 1024-2048.")
    if not is_number(config.seed, whole=True) or not 0 <= config.seed < 2**32:
        raise ConfigError(f"the FDE seed (--fde-seed) must be an integer in [0, 2**32), got {config.seed!r}.")
    if "IDMap" in config.factory:  # faiss refuses add() without ids there
        raise ConfigError(f"the factory string {config.factory!r} (--fde-factory) holds an IDMap: mvr numbers the FDE's rows itself; leave it out.")
    width = config.out_dim(dim)
    for kind, size, bits in re.findall(r"(HNSW|IVF|PQ)(\d+)(?:x(\d+))?", config.factory):
        size, bits, part = int(size), int(bits or 8), f"{kind}{size}{'x' + bits if bits else ''} in the factory string {config.factory!r} (--fde-factory)"
        if size < (2 if kind == "HNSW" else 1):  # faiss aborts the process on HNSW0 and HNSW1, and fails every search of IVF0
            raise ConfigError(f"{part}: {'HNSW needs at least 2 neighbours' if kind == 'HNSW' else f'{kind} needs at least 1'}, e.g. HNSW32, IVF256 or PQ64.")
        if kind == "HNSW" and size > 1024:  # each node's links: HNSW99999999 took 21 GB before the kernel killed it
            raise ConfigError(f"{part}: at most 1024 neighbours (each node holds twice that many links; 32 or 64 is usual).")
        if kind == "PQ" and not 1 <= bits <= 16:  # PQ16x0 ended the process with a division by zero inside faiss
            raise ConfigError(f"{part}: PQ codes are 1 to 16 bits each (8 is usual, 4 for fast scan).")
        table = (size if kind == "IVF" else 2**bits if kind == "PQ" else 0) * width * 4
        if table > 4 * 2**30:  # centroids of the FDE's whole width: trained and held in memory
            raise ConfigError(f"{part}: its centroids alone take {table / 2**30:.0f} GiB at {width} FDE dimensions; use fewer lists or bits, or fewer dimensions (--fde-d-final).")
    try:
        faiss.index_factory(config.out_dim(dim), config.factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise ConfigError(f"faiss cannot make an index from the factory string {config.factory!r} (--fde-factory): {str(exc).splitlines()[0]}") from None


def search_parameters(index, nprobe: int, ef_search: int):
    """faiss per-call search parameters that probe ``nprobe`` IVF lists and search HNSW graphs
    ``ef_search`` wide, wherever they sit in ``index`` (behind a pre-transform, an id map, a
    refinement, or as an IVF's coarse quantizer); None for exact indexes. Per call, so searches
    in several threads never share state, and nothing is saved in the index."""
    import faiss

    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexPreTransform):
        inner = search_parameters(index.index, nprobe, ef_search)
        return None if inner is None else _keep(faiss.SearchParametersPreTransform(index_params=inner), inner)
    if isinstance(index, faiss.IndexRefine):
        inner = search_parameters(index.base_index, nprobe, ef_search)
        return None if inner is None else _keep(faiss.IndexRefineSearchParameters(base_index_params=inner, k_factor=index.k_factor), inner)
    if isinstance(index, faiss.IndexIDMap):
        return search_parameters(index.index, nprobe, ef_search)
    if isinstance(index, faiss.IndexIVF):
        quantizer = search_parameters(index.quantizer, nprobe, ef_search)
        params = faiss.SearchParametersIVF(nprobe=nprobe)
        if quantizer is not None:
            params.quantizer_params = quantizer
            _keep(params, quantizer)
        return params
    if isinstance(index, faiss.IndexHNSW):
        return faiss.SearchParametersHNSW(efSearch=ef_search)
    return None


def with_selector(params, allowed: np.ndarray):
    """``params`` (None: default ones) that let faiss return only the ``allowed`` rows (bool
    ``(n_docs,)``): a bitmap selector on the parameters of the index that holds the ids."""
    import faiss

    bitmap = np.packbits(allowed, bitorder="little")
    selector = faiss.IDSelectorBitmap(len(bitmap), faiss.swig_ptr(bitmap))  # its size in bytes
    outer = params if params is not None else faiss.SearchParameters()
    inner = outer
    while getattr(inner, "index_params", None) is not None or getattr(inner, "base_index_params", None) is not None:
        inner = inner.index_params if getattr(inner, "index_params", None) is not None else inner.base_index_params
    inner.sel = selector
    outer.kept_alive = (selector, bitmap, getattr(outer, "referenced", None))
    return outer


def _keep(outer, inner):
    """faiss parameter objects do not own the ones they point to: keep ``inner`` alive with ``outer``."""
    outer.referenced = inner
    return outer


class FDEStage:
    """The ``fde/`` directory of an index, opened: encodes queries and finds candidates with faiss."""

    name = "fde"
    format, version = FDE_FORMAT, FDE_VERSION
    binds = "vectors"

    def __init__(self, folder: Path, manifest: dict):
        import faiss

        self.folder = folder
        self.manifest = manifest
        self.config = FDEConfig.from_dict(upgrade_fde_config(manifest["config"]))
        self.fde = FDE.load(folder, self.config, manifest["dim"])
        path = str(folder / "fde.faiss")
        if not is_utf8(path):  # an index moved by hand under a folder whose name is not UTF-8: faiss cannot open the path
            with open(path, "rb") as source:
                self.index = faiss.read_index(faiss.PyCallbackIOReader(source.read))  # read whole, not mapped
            return
        mapped = getattr(faiss, "IO_FLAG_MMAP_IFC", 0)  # a flat index's codes mapped, not read (faiss 1.10+): SciFact's 200 MB, 0.5 s
        for flags in (faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY | mapped, faiss.IO_FLAG_READ_ONLY | mapped):
            try:
                self.index = faiss.read_index(path, flags)  # the file never changes once written (a rebuild writes another)
                break
            except RuntimeError:  # index types that faiss cannot memory-map so (IVF lists)
                continue
        else:
            self.index = faiss.read_index(path)

    @classmethod
    def check(cls, settings: FDEConfig | None, dim: int) -> None:
        check_factory(settings or FDEConfig(), dim)

    @classmethod
    def build(cls, folder: Path, source: BuildSource, settings: FDEConfig | None) -> dict:
        return build_fde(folder, source.tokens.float16_bits(), source.doc_offsets, source.dim, settings or FDEConfig(), source.vectors_sha256, show_progress=source.show_progress)

    @classmethod
    def open(cls, folder: Path, manifest: dict, index) -> "FDEStage":
        if manifest["dim"] != index.dim:
            raise ConfigError(f"{folder} was built for {manifest['dim']}-dim vectors, the index stores {index.dim}; rebuild it with `mvr fde`.")
        return cls(folder, manifest)

    def search(self, queries: QueryBatch, n: int, options=None, allowed=None) -> list[Candidates]:
        encoded = self.fde.encode_queries(queries.vectors, queries.offsets)
        nprobe, ef_search = (options.nprobe or FDE_NPROBE, options.ef_search or FDE_EF_SEARCH) if options is not None else (FDE_NPROBE, FDE_EF_SEARCH)
        params = search_parameters(self.index, nprobe, ef_search)
        if allowed is not None:
            params = with_selector(params, allowed)
        try:
            scores, ids = self.index.search(encoded, n, params=params)
        except RuntimeError as error:
            if allowed is None:
                raise
            raise QueryError(
                f"the FDE index ({self.config.factory}) cannot apply a filter ({str(error).strip().splitlines()[-1]}); search with "
                "first_stage='exhaustive' or a text stage, or rebuild the FDE with a Flat, IVF or HNSW factory (`mvr fde NAME --fde-factory ...`)."
            ) from None
        return [Candidates(row[row >= 0], row_scores[row >= 0]) for row, row_scores in zip(ids, scores)]
