"""Bounded-memory segment builds: documents arrive in blocks, and each block is projected, pruned,
clustered and compressed, then appended to the segment's files before the next one is read. Memory
holds one block and the fitted codebooks, whatever the corpus size; the token store grows on disk
only. The PCA projection and the codec are fitted first, on a sample of documents the caller gives
(a random sample of the corpus: the codec's centroids are only as good as it).

    stream = SegmentStream(folder, config, sample, model_dim, n_docs=1_000_000)
    for block in blocks:
        stream.add(block)
    counts = stream.close()        # then segment_build.finish_segment builds the first stages
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import IndexConfig
from .errors import ConfigError, CorpusError
from .registry import store_class
from .storage import ArrayWriter, BlobWriter
from .storage.formats import TOKEN_IDS
from .vectors import compact_vectors, fit_pca, needs_corpus_stats, needs_token_ids, project
from .vectors.heads import configured, save_projection


@dataclass
class Block:
    """Encoded documents: ``ids``, their token vectors float32 ``(n_tokens, model_dim)`` (rows
    ``offsets[d]:offsets[d + 1]`` are document ``d``'s), and optionally texts, titles and the
    vocabulary id behind each vector (int32; needed to prune or keep token classes)."""

    ids: list[str]
    vectors: np.ndarray
    offsets: np.ndarray
    texts: list[str] | None = None
    titles: list[str] | None = None
    token_ids: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)


def check_block(block: Block, dim: int, with_token_ids: bool) -> None:
    """Refuse a block whose parts do not fit together, before any of it is written."""
    n = len(block.ids)
    offsets, vectors = np.asarray(block.offsets), np.asarray(block.vectors)
    problem = None
    if not all(isinstance(i, str) and i for i in block.ids):
        problem = "ids must be non-empty strings"
    elif offsets.ndim != 1 or len(offsets) != n + 1 or offsets[0] != 0 or (np.diff(offsets) < 1).any():
        problem = f"offsets must run from 0 up, one more than the {n} ids, every document with at least one vector"
    elif vectors.ndim != 2 or vectors.shape != (int(offsets[-1]), dim):
        problem = f"vectors must be ({int(offsets[-1])}, {dim}) as the offsets and the model say, got {vectors.shape}"
    elif not np.isfinite(vectors).all():
        problem = "vectors hold NaN or infinite values"
    elif any(part is not None and len(part) != n for part in (block.texts, block.titles)):
        problem = f"texts and titles need one string per id ({n})"
    elif with_token_ids and (block.token_ids is None or len(block.token_ids) != len(vectors)):
        problem = "token_ids are needed, one per vector (the sample had them, or the config prunes / keeps token classes)"
    if problem:
        raise CorpusError(f"a block of {n} documents{f' from {block.ids[0]!r}' if n and isinstance(block.ids[0], str) else ''}: {problem}.")


class SegmentStream:
    """One segment written a block at a time into ``folder`` (created here)."""

    def __init__(self, folder: Path, config: IndexConfig, sample: Block, model_dim: int, *, n_docs: int | None = None, classes: dict | None = None):
        if needs_corpus_stats(config):
            raise ConfigError("pruning by document frequency and IDF-weighted Ward read statistics of the whole corpus; a block-by-block build cannot use them yet (drop --prune df / --cluster-idf-weight).")
        if needs_token_ids(config) and sample.token_ids is None:
            raise ConfigError("pruning and kept token classes need the vocabulary id of every vector; give each Block its token_ids.")
        self.folder, self.config, self.classes = Path(folder), config, classes
        self.folder.mkdir(parents=True)
        self.projection = configured(config, model_dim)
        if self.projection is not None:
            save_projection(self.folder, self.projection)
        elif config.pca_dim is not None:
            if config.pca_dim > model_dim:
                raise ConfigError(f"pca_dim={config.pca_dim} (--pca-dim) exceeds the model's {model_dim} dimensions.")
            rng = np.random.default_rng(config.seed)
            rows = np.sort(rng.choice(len(sample.vectors), size=min(config.pca_sample, len(sample.vectors)), replace=False))
            self.projection = fit_pca(sample.vectors[rows], config.pca_dim)
            np.save(self.folder / "projection.npy", self.projection)
        self.dim = model_dim if self.projection is None else self.projection.shape[1]
        fitted = compact_vectors(project(sample.vectors, self.projection), sample.offsets, config, sample.token_ids, classes)
        per_document = len(fitted.vectors) / max(len(sample), 1)
        store = store_class(config.codec)
        self.coder = store.coder(fitted.vectors, config, n_vectors=int(per_document * n_docs) if n_docs else None)
        for name, array in self.coder.codebook.items():
            np.save(self.folder / name, array)
        layout = store.layout(-1, self.dim, config)
        self.writers = {name: ArrayWriter(self.folder / name, dtype, shape[1:]) for name, (shape, dtype) in layout.items() if shape and shape[0] == -1}
        self.token_ids = ArrayWriter(self.folder / TOKEN_IDS, np.int32) if sample.token_ids is not None and not config.clusters else None
        self.texts, self.titles = BlobWriter(self.folder, "text"), BlobWriter(self.folder, "title")
        self.ids: list[str] = []
        self.seen: set[str] = set()
        self.lengths: list[np.ndarray] = []
        self.source_tokens = self.pruned = 0
        self.cluster_seconds = self.encode_seconds = 0.0

    def add(self, block: Block) -> None:
        """Check, compact, compress and append ``block``."""
        check_block(block, self.projection.shape[0] if self.projection is not None else self.dim, self.token_ids is not None or needs_token_ids(self.config))
        for doc_id in block.ids:
            if doc_id in self.seen:
                raise CorpusError(f"duplicate document id {doc_id!r}. Ids must be unique: deduplicate the corpus.")
            self.seen.add(doc_id)
        compacted = compact_vectors(project(block.vectors, self.projection), block.offsets, self.config, block.token_ids, self.classes)
        started = time.perf_counter()
        for name, rows in self.coder.encode(compacted.vectors).items():
            self.writers[name].add(rows)
        self.encode_seconds += time.perf_counter() - started
        if self.token_ids is not None:
            self.token_ids.add(compacted.token_ids)
        self.lengths.append(np.diff(compacted.offsets))
        self.source_tokens += len(block.vectors)
        self.pruned += compacted.pruned
        self.cluster_seconds += compacted.cluster_seconds
        for d, doc_id in enumerate(block.ids):
            self.ids.append(doc_id)
            self.texts.add(block.texts[d] if block.texts is not None else "")
            self.titles.add(block.titles[d] if block.titles is not None else "")

    def close(self) -> dict:
        """Finish the files; the segment's counts (what :func:`mvr.segment_build.finish_segment` takes)."""
        if not self.ids:
            raise CorpusError("no documents were given; nothing to index.")
        for writer in (*self.writers.values(), *([self.token_ids] if self.token_ids is not None else [])):
            writer.close()
        self.texts.close()
        self.titles.close()
        lengths = np.concatenate(self.lengths)
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        np.save(self.folder / "doc_offsets.npy", offsets)
        ids = np.array(self.ids, dtype=str)
        np.save(self.folder / "doc_ids.npy", ids)
        np.save(self.folder / "doc_ids_order.npy", np.argsort(ids, kind="stable").astype(np.int64))
        return {
            "documents": len(ids),
            "tokens": int(offsets[-1]),
            "source_tokens": int(self.source_tokens),
            "pruned_tokens": int(self.pruned),
            "max_doc_len": int(lengths.max()),
            "truncated_documents": 0,
            "skipped_empty_documents": 0,
            "dim": int(self.dim),
            "model_dim": int(self.dim if self.projection is None else self.projection.shape[0]),
            "cluster_seconds": round(self.cluster_seconds, 3),
            "codec_seconds": round(self.encode_seconds, 3),
            **self.coder.counts,
        }
