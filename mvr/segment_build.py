"""One segment from documents: encode -> PCA -> prune / cluster -> token store -> first stages ->
manifest, written into a folder that nothing reads until a commit names it (mvr/build.py for a
new index, mvr/writer.py for additions and merges).
"""

from __future__ import annotations

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
from .passages import document_id, split
from .progress import progress
from .registry import store_class
from .stages import BuildSource, build_stage
from .storage import Blob, BlobWriter, sha256_file, write_manifest
from .storage.formats import SEGMENT_FORMAT, SEGMENT_VERSION, TOKEN_IDS
from .storage.metadata import MetadataWriter
from .vectors import compact_vectors, corpus_stats, fit_pca, needs_corpus_stats, needs_token_ids, project

CORPUS_STATS = "corpus_df.npy"  # vectors.prune.corpus_stats of the build: documents, then df per token id


def write_segment(documents, folder: Path, encoder: Encoder, config: IndexConfig, *, like=None, stages: dict | None = None, existing=None,
                  replaced: list | None = None, metadata_types: dict | None = None, show_progress=None, chunk_size: int = 1024, command=None) -> dict:
    """Encode ``documents`` into the new segment ``folder`` as ``config`` says; ``like``: an opened
    segment of the same index, whose PCA projection and codec the new one reuses. The manifest."""
    started = time.perf_counter()
    folder.mkdir(parents=True)
    counts = encode_corpus(documents, encoder, config, folder, show_progress, chunk_size, existing, replaced, metadata_types)
    encoded = time.perf_counter()
    counts.update(finish_vectors(folder, encoder.dim, config, counts["tokens"], None if like is None else like.projection))
    build_info = {"encode_seconds": round(encoded - started, 3), "docs_per_second": round(counts["documents"] / max(encoded - started, 1e-9), 2)}
    return finish_segment(folder, config, encoder, counts, build_info, started, command, show_progress, None if like is None else like.path, stages)


def planned_stages(config: IndexConfig) -> dict[str, object]:
    """The first stages a build with ``config`` makes, with each one's settings."""
    stages: dict[str, object] = {"fde": config.fde} if config.fde is not None else {}
    if config.centroid_stage:
        stages["centroids"] = None
    stages.update({name: None for name in config.sparse})
    if config.splade_model:
        stages["splade"] = config.splade_model
    return stages


def stored_texts(folder: Path) -> Iterable[tuple[str, str]]:
    """``(id, title + " " + text)`` of every document stored in an index directory, in order."""
    ids, texts, titles = np.load(folder / "doc_ids.npy", mmap_mode="r"), Blob(folder, "text"), Blob(folder, "title")
    for i in range(len(ids)):
        yield str(ids[i]), Document(str(ids[i]), texts[i], titles[i]).full_text


def finish_segment(folder: Path, config: IndexConfig, encoder, counts: dict, build_info: dict, started: float, command, show_progress,
                   like: Path | None = None, stages: dict | None = None, compact: bool = True) -> dict:
    """From stored float16 vectors, ids and texts in ``folder``: prune / cluster / compress, build
    the first stages (``stages``: name -> settings; default: those ``config`` plans) and write the
    segment's manifest (its last step). ``like``: a segment of the same index whose fitted codec
    (residual centroids) the new one reuses. Returns the manifest, whose config has the centroid
    stage decided for the segment's size (:meth:`IndexConfig.for_corpus`)."""
    config = config.for_corpus(counts["documents"])
    counts.setdefault("source_tokens", counts["tokens"])
    if config.compacts and compact:
        counts.update(_compact(folder, config, encoder, counts, like))
    store = store_class(config.codec)
    data_sha256 = sha256_file(folder / store.files[0])
    doc_offsets = np.load(folder / "doc_offsets.npy")
    tokens = store.open(folder, config, counts["dim"], doc_offsets)
    ids_sha256 = sha256_file(folder / "doc_ids.npy")
    source = BuildSource(folder, counts["dim"], doc_offsets, tokens, lambda: stored_texts(folder), ids_sha256, data_sha256, command, show_progress)
    fde_seconds = 0.0
    for name, settings in (planned_stages(config) if stages is None else stages).items():
        if (folder / name).is_dir():  # a derived index brings its source's text stages
            continue
        (folder / name).mkdir()
        stage_started = time.perf_counter()
        build_stage(name, folder / name, source, settings)
        fde_seconds += time.perf_counter() - stage_started if name == "fde" else 0.0
    del tokens
    manifest = {
            "format": SEGMENT_FORMAT,
            "format_version": SEGMENT_VERSION,
            "mvr_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "config": config.to_dict(),
            "encoder": encoder if isinstance(encoder, dict) else encoder.identity,
            "counts": counts,
            "build": {"seconds": round(time.perf_counter() - started, 3), **build_info, "fde_seconds": round(fde_seconds, 3), "threads": config.threads, "command": command},
            # Everything search reads to score documents, per document token before pruning.
            "bytes_per_token": round(_search_bytes(folder, store) / max(counts["source_tokens"], 1), 3),
    }
    write_manifest(folder, manifest, known_sha256={store.files[0]: data_sha256, "doc_ids.npy": ids_sha256})
    return manifest


def _search_bytes(folder: Path, store) -> int:
    projection = folder / "projection.npy"
    return store.bytes_on_disk(folder) + (projection.stat().st_size if projection.is_file() else 0)


def _compact(folder: Path, config: IndexConfig, encoder: Encoder, counts: dict, like: Path | None = None) -> dict:
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
    stats = None
    if needs_corpus_stats(config):  # the build's statistics, kept for every segment added later
        stats = np.load(Path(like) / CORPUS_STATS) if like is not None and (Path(like) / CORPUS_STATS).is_file() else corpus_stats(token_ids, offsets)
        np.save(folder / CORPUS_STATS, stats)
    result = compact_vectors(vectors, offsets, config, token_ids, classes, stats)
    del vectors
    os.remove(folder / "vectors.npy")
    np.save(folder / "doc_offsets.npy", result.offsets)
    if config.clusters:
        ids_file.unlink(missing_ok=True)  # a centroid is no one token
    elif result.token_ids is not None:
        np.save(ids_file, result.token_ids.astype(np.int32))
    details = store_class(config.codec).write(folder, result.vectors, config, like=like)
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


def encode_corpus(documents, encoder: Encoder, config: IndexConfig, folder: Path, show_progress, chunk_size: int,
                  existing=None, replaced: list | None = None, metadata_types: dict | None = None) -> dict:
    """Stream documents into ``vectors.raw`` (float16, model dim), token ids, ids and text blobs; return counts.

    ``existing(ids) -> int64 positions`` (-1: absent) says which ids the index already holds: an
    error, unless ``replaced`` is a list, which then collects their positions (an upsert).
    ``metadata_types``: the index's metadata fields, whose types new documents must keep."""
    seen: dict[str, str] = {}
    ids: list[str] = []
    lengths: list[np.ndarray] = []
    token_ids: list[np.ndarray] = []
    truncated = skipped = split_documents = 0
    texts = BlobWriter(folder, "text")
    titles = BlobWriter(folder, "title")
    metadata = MetadataWriter(metadata_types)
    total = len(documents) if hasattr(documents, "__len__") and not isinstance(documents, (str, os.PathLike)) else None
    bar = progress(total=total, desc="encoding", unit="doc", show=show_progress)
    try:
        with open(folder / "vectors.raw", "wb") as raw:
            for chunk in chunks(as_documents(documents), chunk_size):
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
                    if config.passage_tokens:
                        parts, cut = split(doc, encoder.tokenizer, config.passage_tokens, config.passage_stride, encoder.document_budget)
                        split_documents += cut
                    else:
                        parts = [doc]
                    for part in parts:
                        metadata.add(part.metadata, part.where)  # one type per field, checked before encoding
                    kept.extend(parts)
                if not kept:
                    continue
                if existing is not None:
                    found = existing([d.id for d in kept])
                    if replaced is None and (found >= 0).any():
                        doc = kept[int(np.flatnonzero(found >= 0)[0])]
                        raise CorpusError(
                            f"{doc.where}: document id {doc.id!r} is already in the index; replace documents with upsert "
                            "(Index.upsert, `mvr add --upsert`), or delete it first."
                        )
                    if replaced is not None:
                        replaced.extend(int(p) for p in found[found >= 0])
                encoded = encoder.encode_documents([d.full_text for d in kept], show_progress=bar if not config.passage_tokens else False)
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
                if config.passage_tokens:
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
        **({"source_documents": len({document_id(i) for i in ids}), "split_documents": split_documents} if config.passage_tokens else {}),
    }


def finish_vectors(folder: Path, model_dim: int, config: IndexConfig, n_tokens: int, projection: np.ndarray | None = None, block: int = 1 << 16) -> dict:
    """Turn ``vectors.raw`` into ``vectors.npy``, applying PCA when configured: ``projection``
    (another segment's) or one fitted here on a sample."""
    raw_path = folder / "vectors.raw"
    raw = np.memmap(raw_path, dtype=np.float16, mode="r", shape=(n_tokens, model_dim)) if n_tokens else np.zeros((0, model_dim), np.float16)
    if projection is not None:
        np.save(folder / "projection.npy", projection)
    elif config.pca_dim is not None:
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


def chunks(items: Iterable, size: int):
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def merge_segments(folder: Path, sources: list, live: list[np.ndarray], config: IndexConfig, encoder_identity: dict, stages: dict, show_progress=None, command=None) -> dict:
    """One new segment ``folder`` from the ``live`` rows of the opened segments ``sources``, in
    their order, without decoding or re-encoding: the token store's per-vector rows are copied
    (its codebooks are shared by every segment of an index), as are ids, texts, titles, metadata
    and token ids; the first stages (``stages``) are built anew. The manifest."""
    started = time.perf_counter()
    folder.mkdir(parents=True)
    store = store_class(config.codec)
    first = sources[0].path
    rows, lengths = [], []
    for segment, keep in zip(sources, live):
        docs = np.flatnonzero(keep)
        starts, sizes = segment.doc_offsets[docs], np.diff(segment.doc_offsets)[docs]
        rows.append(np.repeat(starts - np.concatenate([[0], np.cumsum(sizes)[:-1]]), sizes) + np.arange(int(sizes.sum())) if len(docs) else np.zeros(0, np.int64))
        lengths.append(sizes)
    lengths = np.concatenate(lengths)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    n_tokens = int(offsets[-1])
    per_vector = [name for name, (shape, _) in store.layout(-1, sources[0].dim, config).items() if shape and shape[0] == -1]
    extra = [name for name in ("token_ids.npy",) if all((s.path / name).is_file() for s in sources)]
    for name in (*per_vector, *extra):
        parts = [np.asarray(np.load(s.path / name, mmap_mode="r")[r]) for s, r in zip(sources, rows)]
        np.save(folder / name, np.concatenate(parts))
    for name in (*store.files, "projection.npy", CORPUS_STATS):
        if name not in per_vector and (first / name).is_file():
            shutil.copyfile(first / name, folder / name)
    np.save(folder / "doc_offsets.npy", offsets)
    ids = np.concatenate([np.asarray(s.doc_ids)[keep] for s, keep in zip(sources, live)]).astype(str)
    np.save(folder / "doc_ids.npy", ids)
    np.save(folder / "doc_ids_order.npy", np.argsort(ids, kind="stable").astype(np.int64))
    texts, titles, metadata = BlobWriter(folder, "text"), BlobWriter(folder, "title"), MetadataWriter({})
    for segment, keep in zip(sources, live):
        for row in np.flatnonzero(keep):
            texts.add(segment._texts[int(row)])
            titles.add(segment._titles[int(row)])
            metadata.add(segment.metadata.row(int(row)))
    texts.close()
    titles.close()
    metadata.close(folder)
    share = [float(keep.mean()) if len(keep) else 0.0 for keep in live]
    counts = {
        "documents": len(ids),
        "tokens": n_tokens,
        "max_doc_len": int(lengths.max(initial=0)),
        "dim": sources[0].dim,
        **{key: int(round(sum(s.manifest["counts"].get(key, 0) * f for s, f in zip(sources, share))))
           for key in ("source_tokens", "truncated_documents", "pruned_tokens") if key in sources[0].manifest["counts"]},
    }
    if "model_dim" in sources[0].manifest["counts"]:
        counts["model_dim"] = sources[0].manifest["counts"]["model_dim"]
    for key in ("codec_centroids",):
        if key in sources[0].manifest["counts"]:
            counts[key] = sources[0].manifest["counts"][key]
    build_info = {"merged_from": [s.path.name for s in sources], "encode_seconds": 0.0, "docs_per_second": sources[0].manifest["build"].get("docs_per_second")}
    return finish_segment(folder, config, encoder_identity, counts, build_info, started, command, show_progress, stages=stages, compact=False)
