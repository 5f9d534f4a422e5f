"""Building an index: one path from documents (or from another index's stored vectors) to a
finished directory. Encode -> PCA -> prune / cluster -> token store -> first stages -> manifest,
all in a staging directory that replaces the target only once complete (storage/layout.py).

    build(documents, name, config=IndexConfig())      encode a corpus
    derive(index, name, cluster_ratio=0.25, ...)       shrink a float16 index without re-encoding
    rebuild_stage(index, "fde", FDEConfig(...))        (re)build one first stage in place
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

import numpy as np

from . import __version__
from .config import IndexConfig
from .corpus import Document, as_documents
from .encode import Encoder
from .errors import ConfigError, CorpusError, MvrError
from .progress import progress
from .registry import store_class
from .stages import BuildSource, build_stage, stage_class
from .storage import Blob, BlobWriter, StagingDir, sha256_file, target_path
from .storage.formats import INDEX_FORMAT, INDEX_VERSION, TOKEN_IDS
from .storage.lock import WriterLock
from .storage.metadata import MetadataWriter
from .storage.manifest import MANIFEST
from .threads import cpu_threads
from .vectors import compact_vectors, fit_pca, needs_token_ids, project

# What a derived index may change, and the counts it inherits from its source.
DERIVABLE = {"prune", "prune_max_df", "cluster_ratio", "cluster_count", "cluster_method", "cluster_iters", "cluster_keep", "cluster_idf_weight", "codec", "codec_bits", "codec_centroids", "codec_sample", "fde", "seed", "threads"}
_SOURCE_COUNTS = {"documents", "tokens", "max_doc_len", "truncated_documents", "skipped_empty_documents", "dim", "model_dim"}


def planned_stages(config: IndexConfig) -> dict[str, object]:
    """The first stages a build with ``config`` makes, with each one's settings."""
    stages: dict[str, object] = {"fde": config.fde} if config.fde is not None else {}
    stages.update({name: None for name in config.sparse})
    if config.splade_model:
        stages["splade"] = config.splade_model
    return stages


def build(documents, name, *, config: IndexConfig | None = None, home=None, overwrite: bool = False, encoder: Encoder | None = None,
          show_progress: bool | None = None, chunk_size: int = 1024, command: str | None = None):
    """Encode ``documents`` (an iterable of Documents, dicts, ``(id, text)`` pairs or strings, or
    a corpus path) and write the index ``name`` (a ``str`` name under ``home``, or a ``pathlib.Path``); return it opened.

    Ids must be unique and documents non-empty (or ``config.skip_empty``). Settings that cannot
    work are refused before any document is encoded. Nothing is written at ``name`` until the
    build has finished: a failure leaves an existing index intact. ``command`` (the CLI line that
    asked for the build) is kept in the manifest.
    """
    from .index import Index

    config = config or IndexConfig()
    started = time.perf_counter()
    target = target_path(name, Path(home) if home else None)
    with StagingDir(target, overwrite) as staging, cpu_threads(config.threads, "numba", "faiss"):
        if encoder is None:
            encoder = Encoder(config.model, query_maxlen=config.query_maxlen, doc_maxlen=config.doc_maxlen, batch_size=config.batch_size, threads=config.threads, doc_runtime=config.doc_runtime)
        if config.pca_dim is not None and config.pca_dim > encoder.dim:
            raise ConfigError(f"pca_dim={config.pca_dim} (--pca-dim) exceeds the model's {encoder.dim} dimensions.")
        for stage, settings in planned_stages(config).items():
            stage_class(stage).check(settings, config.pca_dim or encoder.dim)
        loaded = time.perf_counter()
        counts = _encode_corpus(documents, encoder, config, staging.path, show_progress, chunk_size)
        encoded = time.perf_counter()
        # what ran: a given encoder's own runtime, or PyTorch where the ONNX export failed
        config = dataclasses.replace(config, doc_runtime=encoder.doc_runtime)
        counts.update(_finish_vectors(staging.path, encoder.dim, config, counts["tokens"]))
        build_info = {"model_load_seconds": round(loaded - started, 3), "encode_seconds": round(encoded - loaded, 3), "docs_per_second": round(counts["documents"] / max(encoded - loaded, 1e-9), 2)}
        _finish(staging, config, encoder, counts, build_info, started, command, show_progress)
        path = staging.commit()
    return Index.open(path, model=encoder)


def derive(source, name, *, home=None, overwrite: bool = False, show_progress: bool | None = None, command: str | None = None, **changes):
    """A new index ``name`` from a float16 index's stored vectors, pruned, clustered and/or
    compressed by ``changes`` (fields of :class:`IndexConfig`: prune, cluster_ratio, codec, ...,
    and fde) without encoding the corpus again. Texts, ids and text stages are copied; the FDE is
    rebuilt from the new vectors. The source is only read.
    """
    from .index import Index

    source = source if isinstance(source, Index) else Index.open(source, home=home)
    if source.config.compacts:
        raise ConfigError(f"index {source.name!r} is already pruned, clustered or compressed; derive from an index that keeps every token in float16.")
    unknown = sorted(set(changes) - DERIVABLE)
    if unknown:
        raise ConfigError(f"{unknown} cannot change without encoding the corpus again (use Index.build / mvr index); derivable: {sorted(DERIVABLE)}.")
    config = dataclasses.replace(source.config, **changes)
    if config.fde is not None:
        stage_class("fde").check(config.fde, source.dim)
    started = time.perf_counter()
    target = target_path(name, Path(home) if home else None)
    if target.resolve() == source.path.resolve():
        raise ConfigError("derive into a new name; the source index is kept as it is.")
    with StagingDir(target, overwrite) as staging, cpu_threads(config.threads, "numba", "faiss"):
        for item in source.path.iterdir():
            if item.name in (MANIFEST, "fde") or item.name.startswith("."):
                continue
            if item.is_dir():
                if item.name in config.sparse or item.name == "splade":
                    shutil.copytree(item, staging.path / item.name)
            else:
                shutil.copyfile(item, staging.path / item.name)
        counts = {k: v for k, v in source.manifest["counts"].items() if k in _SOURCE_COUNTS}
        build_info = {"derived_from": str(source.path), "encode_seconds": 0.0, "docs_per_second": source.manifest["build"]["docs_per_second"]}
        _finish(staging, config, source.encoder, counts, build_info, started, command, show_progress)
        path = staging.commit()
    return Index.open(path, model=source.encoder)


def rebuild_stage(index, name: str, settings=None, *, threads: int | None = None, command: str | None = None, show_progress=None) -> dict:
    """(Re)build the first stage ``name`` of an open index from its stored vectors or texts; the
    new one replaces the old only once complete. Returns its manifest."""
    stage_class(name).check(settings, index.dim)
    # the index's own name is held too: no `mvr index --overwrite` of it may swap it away meanwhile
    lock = WriterLock(index.path.parent, index.path.name, f"index {index.name!r}").acquire()
    try:
        with StagingDir(index.path / name, overwrite=True, formats=(stage_class(name).format,)) as staging, cpu_threads(threads, "numba", "faiss"):
            source = BuildSource(index.path, index.dim, index.doc_offsets, index.tokens, lambda: stored_texts(index.path), index.doc_ids_sha256, index.vectors_sha256, command, show_progress)
            manifest = build_stage(name, staging.path, source, settings)
            staging.commit()
    finally:
        lock.release()
    return manifest


def stored_texts(folder: Path) -> Iterable[tuple[str, str]]:
    """``(id, title + " " + text)`` of every document stored in an index directory, in order."""
    ids, texts, titles = np.load(folder / "doc_ids.npy", mmap_mode="r"), Blob(folder, "text"), Blob(folder, "title")
    for i in range(len(ids)):
        yield str(ids[i]), Document(str(ids[i]), texts[i], titles[i]).full_text


def _finish(staging: StagingDir, config: IndexConfig, encoder: Encoder, counts: dict, build_info: dict, started: float, command, show_progress) -> None:
    """From stored float16 vectors, ids and texts in ``staging``: prune / cluster / compress, build
    the first stages and write the manifest (the build's last step)."""
    folder = staging.path
    counts.setdefault("source_tokens", counts["tokens"])
    if config.compacts:
        counts.update(_compact(folder, config, encoder, counts))
    store = store_class(config.codec)
    data_sha256 = sha256_file(folder / store.files[0])
    doc_offsets = np.load(folder / "doc_offsets.npy")
    tokens = store.open(folder, config, counts["dim"], doc_offsets)
    ids_sha256 = sha256_file(folder / "doc_ids.npy")
    source = BuildSource(folder, counts["dim"], doc_offsets, tokens, lambda: stored_texts(folder), ids_sha256, data_sha256, command, show_progress)
    fde_seconds = 0.0
    for name, settings in planned_stages(config).items():
        if (folder / name).is_dir():  # a derived index brings its source's text stages
            continue
        (folder / name).mkdir()
        stage_started = time.perf_counter()
        build_stage(name, folder / name, source, settings)
        fde_seconds += time.perf_counter() - stage_started if name == "fde" else 0.0
    del tokens
    staging.write_manifest(
        {
            "format": INDEX_FORMAT,
            "format_version": INDEX_VERSION,
            "mvr_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "config": config.to_dict(),
            "encoder": encoder.identity,
            "counts": counts,
            "build": {"seconds": round(time.perf_counter() - started, 3), **build_info, "fde_seconds": round(fde_seconds, 3), "threads": config.threads, "command": command},
            # Everything search reads to score documents, per document token before pruning.
            "bytes_per_token": round(_search_bytes(folder, store) / max(counts["source_tokens"], 1), 3),
        },
        known_sha256={store.files[0]: data_sha256, "doc_ids.npy": ids_sha256},
    )


def _search_bytes(folder: Path, store) -> int:
    projection = folder / "projection.npy"
    return store.bytes_on_disk(folder) + (projection.stat().st_size if projection.is_file() else 0)


def _compact(folder: Path, config: IndexConfig, encoder: Encoder, counts: dict) -> dict:
    """Prune, cluster and compress ``folder/vectors.npy`` in place; the counts to record."""
    started = time.perf_counter()
    offsets = np.load(folder / "doc_offsets.npy")
    source = np.load(folder / "vectors.npy", mmap_mode="r")
    source_tokens, dim = source.shape
    vectors = np.asarray(source, dtype=np.float32)
    del source
    ids_file = folder / TOKEN_IDS
    token_ids = classes = None
    if needs_token_ids(config):
        token_ids = np.load(ids_file) if ids_file.is_file() else None
        if token_ids is not None and len(token_ids) != source_tokens:
            raise MvrError(f"{ids_file} holds {len(token_ids)} token ids for {source_tokens} vectors; the index is damaged, build it again from the corpus.")
        if token_ids is None:  # built before token ids were stored: tokenise the texts again
            token_ids, id_offsets = encoder.document_token_ids([text for _, text in stored_texts(folder)])
            if not np.array_equal(id_offsets, offsets):
                raise MvrError("the stored vectors do not line up with the re-tokenised texts; build the index again from the corpus.")
        classes = encoder.token_classes()
    result = compact_vectors(vectors, offsets, config, token_ids, classes)
    del vectors
    os.remove(folder / "vectors.npy")
    np.save(folder / "doc_offsets.npy", result.offsets)
    if config.clusters:
        ids_file.unlink(missing_ok=True)  # a centroid is no one token
    elif result.token_ids is not None:
        np.save(ids_file, result.token_ids.astype(np.int32))
    details = store_class(config.codec).write(folder, result.vectors, config)
    lengths = np.diff(result.offsets)
    return {
        "tokens": int(result.offsets[-1]),
        "source_tokens": int(source_tokens),
        "pruned_tokens": result.pruned,
        "max_doc_len": int(lengths.max(initial=0)),
        "dim": int(dim),
        "compact_seconds": round(time.perf_counter() - started, 3),
        "cluster_seconds": round(result.cluster_seconds, 3),
        **details,
    }


def _encode_corpus(documents, encoder: Encoder, config: IndexConfig, folder: Path, show_progress, chunk_size: int) -> dict:
    """Stream documents into ``vectors.raw`` (float16, model dim), token ids, ids and text blobs; return counts."""
    seen: dict[str, str] = {}
    ids: list[str] = []
    lengths: list[np.ndarray] = []
    token_ids: list[np.ndarray] = []
    truncated = skipped = 0
    texts = BlobWriter(folder, "text")
    titles = BlobWriter(folder, "title")
    metadata = MetadataWriter()
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
                    metadata.add(doc.metadata, doc.where)  # one type per field, checked before encoding
                    kept.append(doc)
                if not kept:
                    continue
                encoded = encoder.encode_documents([d.full_text for d in kept], show_progress=False)
                if not np.isfinite(encoded.vectors).all():
                    raise MvrError("the encoder produced non-finite vectors; check the model's weights.")
                raw.write(encoded.vectors.astype(np.float16).tobytes())
                lengths.append(encoded.lengths)
                token_ids.append(encoded.token_ids)
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
    metadata.close(folder)
    if not ids:
        raise CorpusError("the corpus holds no documents" + (f" ({skipped} empty ones skipped)" if skipped else "") + "; nothing to index.")
    doc_lengths = np.concatenate(lengths)
    offsets = np.zeros(len(doc_lengths) + 1, dtype=np.int64)
    np.cumsum(doc_lengths, out=offsets[1:])
    np.save(folder / "doc_offsets.npy", offsets)
    if all(ids is not None for ids in token_ids):  # an encoder of another kind may not give them
        np.save(folder / TOKEN_IDS, np.concatenate(token_ids).astype(np.int32))
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
            raise ConfigError(f"pca_dim={config.pca_dim} (--pca-dim) exceeds the model's {model_dim} dimensions.")
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


def _chunks(items: Iterable, size: int):
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk
