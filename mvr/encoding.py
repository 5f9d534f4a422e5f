"""A corpus through the encoder into a segment folder being built: ``vectors.raw`` (float16, the
model's dimension), ids, texts, titles, token ids and metadata, chunk by chunk; then
``vectors.npy`` (PCA applied). Each chunk is recorded once its rows are on disk
(:mod:`mvr.checkpoints`), so a build killed half-way goes on from its last whole chunk. A chunk is
written on a thread of its own while the next one encodes.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable

import numpy as np

from .checkpoints import Checkpoints, Encoded, skip_read
from .config import IndexConfig
from .corpus import as_documents
from .encode import Encoder
from .errors import ConfigError, CorpusError, MvrError, shown
from .passages import document_id, split
from .progress import progress
from .storage import ArrayWriter, BlobWriter, RowReader
from .storage.formats import TOKEN_IDS
from .storage.metadata import MetadataWriter
from .vectors import fit_pca
from .vectors.heads import configured, save_projection
from .vectors.pca import half, stored


def encode_corpus(documents, encoder, config: IndexConfig, folder: Path, show_progress, chunk_size: int, existing=None, replaced: list | None = None,
                  metadata_types: dict | None = None, checkpoints: Checkpoints | None = None, resumed: Encoded | None = None) -> dict:
    """Stream documents into ``vectors.raw`` (float16, model dim), token ids, ids and text blobs; return counts.

    ``existing(ids) -> int64 positions`` (-1: absent) says which ids the index already holds: an
    error, unless ``replaced`` is a list, which then collects their positions (an upsert).
    ``metadata_types``: the index's metadata fields, whose types new documents must keep.
    ``checkpoints``: record each chunk there; ``resumed``: what an interrupted build recorded
    (its files cut to match), from which this one goes on."""
    resumed = resumed or Encoded(chunk_size)
    seen: dict[str, str] = dict.fromkeys(resumed.read, "an earlier run of this build")
    ids, lengths, with_ids = list(resumed.ids), list(resumed.lengths), resumed.has_token_ids
    truncated, skipped, split_documents = (resumed.counters[k] for k in ("truncated", "skipped", "split"))
    texts = BlobWriter(folder, "text", np.concatenate([np.zeros(0, np.int64), *resumed.texts]))
    titles = BlobWriter(folder, "title", np.concatenate([np.zeros(0, np.int64), *resumed.titles]))
    metadata, left_out = MetadataWriter(metadata_types), collections.Counter()
    for row in resumed.metadata:
        metadata.add(row, limits=False)
    total = len(documents) if hasattr(documents, "__len__") and not isinstance(documents, (str, os.PathLike)) else None
    bar = progress(total=total, desc="encoding", unit="doc", show=show_progress)
    bar.update(len(resumed.read))
    try:
        mode = "ab" if resumed.chunks else "wb"
        # a chunk is appended and recorded on the spool thread while the next one encodes; one at a
        # time, in order, and the files close only once it has ended (an error: the chunk before whole)
        with open(folder / "vectors.raw", mode) as raw, open(folder / "token_ids.raw", mode) as raw_ids, ThreadPoolExecutor(1, thread_name_prefix="mvr-spool") as spool:
            files, spooled = (raw, raw_ids, texts, titles), None
            for chunk in chunks(skip_read(as_documents(documents), resumed.read, resumed.digests), chunk_size):
                kept = []
                before = (truncated, skipped, split_documents)
                for doc in chunk:
                    left_out.update(doc.dropped)
                    if doc.id in seen:
                        raise CorpusError(
                            f"{doc.where}: duplicate document id {doc.id!r} (first at {seen[doc.id]}). "
                            "Ids must be unique: deduplicate the corpus."
                        )
                    seen[doc.id] = doc.where
                    if doc.blank:
                        if config.skip_empty:
                            skipped += 1
                            continue
                        raise CorpusError(
                            f"{doc.where}: document {shown(doc.id)} has no text (nothing but white space or invisible characters): remove it or give it text (an index built with "
                            "`mvr index --skip-empty`, skip_empty=True, skips such documents, added ones too)."
                        )
                    if config.passage_tokens:
                        parts, cut = split(doc, encoder.tokenizer, config.passage_tokens, config.passage_stride, encoder.document_budget)
                        split_documents += cut
                    else:
                        parts = [doc]
                    for part in parts:
                        metadata.add(part.metadata, part.where)  # one type per field, checked before encoding
                    kept.extend(parts)
                encoded = None
                if kept:
                    if existing is not None:
                        found = existing([d.id for d in kept])
                        if replaced is None and (found >= 0).any():
                            doc = kept[int(np.flatnonzero(found >= 0)[0])]
                            raise CorpusError(
                                f"{doc.where}: document id {shown(document_id(doc.id) if config.passage_tokens else doc.id)} is already in the index; replace documents with upsert "
                                "(Index.upsert, `mvr add --upsert`), or delete it first."
                            )
                        if replaced is not None:
                            replaced.extend(int(p) for p in found[found >= 0])
                    if spooled is not None and spooled.done():
                        spooled.result()  # a write of the chunk before that failed: raised before more is encoded
                    encoded = encoder.encode_documents([d.full_text for d in kept], show_progress=bar if not config.passage_tokens else False, dtype="float16")
                    encoded = dataclasses.replace(encoded, vectors=np.ascontiguousarray(half(encoded.vectors)))  # already so from mvr's encoders
                    if not np.isfinite(encoded.vectors).all():
                        raise MvrError("the encoder produced non-finite vectors; check the model's weights.")
                    lengths.append(encoded.lengths)
                    with_ids = with_ids and encoded.token_ids is not None  # an encoder of another kind may not give them
                    truncated += int(encoded.truncated.sum())
                    ids.extend(doc.id for doc in kept)
                if config.passage_tokens or not kept:
                    bar.update(len(chunk))
                counters = dict(zip(("truncated", "skipped", "split"), (a - b for a, b in zip((truncated, skipped, split_documents), before))))
                if spooled is not None:
                    spooled.result()  # the chunk before on disk (or its error raised) before this one is written
                spooled = spool.submit(_spool, files, chunk, kept, encoded, with_ids, checkpoints, counters)
            if spooled is not None:
                spooled.result()
    finally:
        bar.close()
        texts.close()
        titles.close()
    metadata.close(folder)
    if left_out:  # fields of the corpus's lines that no metadata type holds: left out, and said
        warnings.warn(f"mvr: fields no metadata type holds were left out ({', '.join(f'{shown(k)} of {n} documents' for k, n in left_out.most_common(5))}"
                      f"{', ...' if len(left_out) > 5 else ''}): a field is a string, a finite number of at most 2**53, true/false or a list of strings.", stacklevel=2)
    if not ids:
        for record in checkpoints.folder.glob("chunk-*.npz") if checkpoints is not None else ():
            record.unlink()  # nothing encoded to go on from: the build's folder goes with the error
        raise CorpusError("the corpus holds no documents" + (f" ({skipped} empty ones skipped)" if skipped else "") + "; nothing to index.")
    doc_lengths = np.concatenate(lengths)
    offsets = np.zeros(len(doc_lengths) + 1, dtype=np.int64)
    np.cumsum(doc_lengths, out=offsets[1:])
    np.save(folder / "doc_offsets.npy", offsets)
    if with_ids:  # token_ids.npy: token_ids.raw copied as vectors.npy is (finish_vectors)
        out = ArrayWriter(folder / TOKEN_IDS, np.int32)
        out.add_file(folder / "token_ids.raw", int(offsets[-1]))
        out.close()
    if checkpoints is None or not with_ids:
        os.remove(folder / "token_ids.raw")
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


def _spool(files, chunk: list, kept: list, encoded, with_ids: bool, checkpoints: Checkpoints | None, counters: dict) -> None:
    """Append one encoded chunk's vectors, token ids, texts and titles to ``files`` and, where the
    build is recorded, flush them to disk and record the chunk."""
    raw, raw_ids, texts, titles = files
    if encoded is not None:
        raw.write(encoded.vectors.data)
        if with_ids:
            raw_ids.write(np.asarray(encoded.token_ids, np.int32).tobytes())
    for doc in kept:
        texts.add(doc.text)
        titles.add(doc.title)
    if checkpoints is not None:
        for handle in (raw, raw_ids, texts.handle, titles.handle):
            handle.flush()
            os.fsync(handle.fileno())
        checkpoints.record(chunk, kept, encoded.lengths if encoded else [], encoded.token_ids if encoded else np.zeros(0, np.int32),
                           np.diff(texts.offsets[-len(kept) - 1 :]) if kept else [], np.diff(titles.offsets[-len(kept) - 1 :]) if kept else [], counters)


def finish_vectors(folder: Path, model_dim: int, config: IndexConfig, n_tokens: int, projection=None, block: int = 1 << 16,
                   checkpoints: Checkpoints | None = None) -> dict:
    """Turn ``vectors.raw`` into ``vectors.npy``, projected when configured: ``projection``
    (another segment's), the trained head ``config.projection``, or a PCA fitted here on a sample. ``vectors.raw`` is removed, or moved into
    ``checkpoints`` (a resume starts from it until the segment is whole)."""
    raw_path = folder / "vectors.raw"
    raw = RowReader(raw_path, np.float16, (model_dim,))
    projection = configured(config, model_dim) if projection is None else projection
    if projection is not None:
        save_projection(folder, projection)
    elif config.pca_dim is not None:
        if config.pca_dim > model_dim:
            raise ConfigError(f"pca_dim={config.pca_dim} (--pca-dim) exceeds the model's {model_dim} dimensions.")
        rng = np.random.default_rng(config.seed)
        sample = np.sort(rng.choice(n_tokens, size=min(config.pca_sample, n_tokens), replace=False))
        projection = fit_pca(raw[sample].astype(np.float32), config.pca_dim)
        np.save(folder / "projection.npy", projection)
    dim = model_dim if projection is None else projection.shape[1]
    out = ArrayWriter(folder / "vectors.npy", np.float16, (dim,))
    if projection is None:  # the spool's rows are the stored ones: copied as they are
        out.add_file(raw_path, n_tokens)
    else:
        for start in range(0, n_tokens, block):
            out.add(stored(raw[start : min(start + block, n_tokens)], projection))
    out.close()
    if checkpoints is not None:
        checkpoints.keep_raw()
    else:
        os.remove(raw_path)
    return {"dim": dim, "model_dim": model_dim}


def chunks(items: Iterable, size: int):
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


_LOADING = threading.Lock()


def document_encoder(index, cpu: bool = False) -> Encoder:
    """The encoder that adds documents as the index's build did (its runtime, batch size, threads;
    the recorded runtime even where the index was opened with an Encoder of another), checked
    against the index's record as the query encoder is; ``cpu``: one on the CPU, whatever
    the index's device (worker processes encode there; it is not kept)."""
    config = index.config
    if cpu:
        return index._load_encoder(batch_size=config.batch_size, threads=1, doc_runtime=config.doc_runtime, device="cpu").for_documents(config.doc_runtime, config.batch_size, 1)
    kept = getattr(index, "_doc_encoder", None)  # (the index's identity, the encoder): another index built at the path has its own
    if kept is not None and kept[0] == index._folder:
        return kept[1]
    with _LOADING:
        loading = index.__dict__.setdefault("_doc_encoder_lock", threading.Lock())
    with loading:  # one load an index at a time (mvr serve --warm-writes beside a first add): the second takes the first's
        kept = getattr(index, "_doc_encoder", None)
        if kept is None or kept[0] != index._folder:
            encoder = index._load_encoder(batch_size=config.batch_size, threads=config.threads, doc_runtime=config.doc_runtime, device=index.device)
            index._doc_encoder = (index._folder, encoder.for_documents(config.doc_runtime, config.batch_size, config.threads))
        return index._doc_encoder[1]
