"""A corpus through the encoder into a segment folder being built: ``vectors.raw`` (float16, the
model's dimension), ids, texts, titles, token ids and metadata, chunk by chunk; then
``vectors.npy`` (PCA applied). Each chunk is recorded once its rows are on disk, so a build killed
half-way (SIGKILL, Ctrl-C, a bad document, a full disk) goes on from its last whole chunk
(``mvr index ... --resume``, ``Index.build(..., resume=True)``) and ends with the index an
uninterrupted build writes. The folder keeps, until the segment is whole:

    resume/build.json          the build's settings and encoder, the chunk size, mvr's version
    resume/chunk-00000001.npz  one per chunk, written (temporary name, fsync, rename) once the
                               chunk's vectors and texts are appended and flushed: the ids read
                               and a 64-bit hash of each one's title, text and metadata (a resume
                               checks that it reads the same corpus), the documents kept
                               with their vector counts, token ids, text and title lengths,
                               metadata and counters
    resume/vectors.raw         the encoded vectors and their token ids, moved here once
    resume/token_ids.raw       vectors.npy and token_ids.npy are made from them

The appended files may hold part of a chunk after the last record: a resume cuts them back to
what the records account for and makes everything after the encoding again (PCA, compaction,
first stages: deterministic).
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import json
import os
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from . import __version__
from .config import IndexConfig
from .corpus import Document, as_documents
from .errors import ConfigError, CorpusError, MvrError, shown
from .passages import document_id, split
from .progress import progress
from .storage import ArrayWriter, BlobWriter, RowReader
from .storage.formats import TOKEN_IDS
from .storage.commits import write_atomic, write_json
from .storage.metadata import MetadataWriter
from .threads import NPY_LOCK
from .vectors import fit_pca
from .vectors.heads import configured, save_projection
from .vectors.pca import stored

RESUME = "resume"
_RAW = ("vectors.raw", "token_ids.raw")  # float16 (model dim) and int32 rows, appended chunk by chunk
_KEPT = (*_RAW, "text.bin", "title.bin", RESUME)  # what a resume starts from; the rest is made again
_RUNTIME_ONLY = ("threads",)  # settings that do not change what is written


@dataclass
class Encoded:
    """What the records of an interrupted build hold, in order."""

    chunk_size: int
    read: list[str] = field(default_factory=list)  # ids of every document read, kept or skipped
    digests: list[int] | None = field(default_factory=list)  # of each one read (None: records from before they were kept)
    ids: list[str] = field(default_factory=list)
    lengths: list[np.ndarray] = field(default_factory=list)
    has_token_ids: bool = True  # every chunk had them (token_ids.raw holds them)
    texts: list[np.ndarray] = field(default_factory=list)  # UTF-8 bytes of each kept document's text
    titles: list[np.ndarray] = field(default_factory=list)
    metadata: list[dict] = field(default_factory=list)
    counters: dict = field(default_factory=lambda: {"truncated": 0, "skipped": 0, "split": 0})
    chunks: int = 0


def _settings(config: IndexConfig) -> dict:
    """The settings that decide what a build writes, as its JSON record reads back."""
    return json.loads(json.dumps({k: v for k, v in config.to_dict().items() if k not in _RUNTIME_ONLY}))


class Checkpoints:
    """The ``resume/`` records of the segment folder ``folder``."""

    def __init__(self, folder: Path):
        self.segment = Path(folder)
        self.folder = self.segment / RESUME
        self.chunks = 0

    def start(self, config: IndexConfig, encoder: dict, chunk_size: int, precision: str) -> None:
        self.folder.mkdir(parents=True)
        record = {"mvr_version": __version__, "chunk_size": chunk_size, "config": _settings(config), "encoder": encoder, "precision": precision}
        write_json(self.folder / "build.json", record)

    def record(self, read: list, kept: list, lengths, token_ids, texts: list[int], titles: list[int], counters: dict) -> None:
        """One more chunk (``read``: its documents, kept or skipped), its rows appended and flushed
        to their files already (``token_ids``: None where the encoder gave none)."""
        self.chunks += 1
        arrays = {
            "read": np.array([d.id for d in read], dtype=str), "digests": np.array([digest(d) for d in read], dtype=np.uint64), "ids": np.array([d.id for d in kept], dtype=str), "lengths": np.asarray(lengths, np.int64),
            "texts": np.asarray(texts, np.int64), "titles": np.asarray(titles, np.int64),
            "metadata": np.array(json.dumps([d.metadata for d in kept])), "counters": np.array(json.dumps(counters)),
        }
        arrays["has_token_ids"] = np.array(token_ids is not None)
        write_atomic(self.folder / f"chunk-{self.chunks:08d}.npz", lambda h: np.savez(h, **arrays))

    def resume(self, config: IndexConfig, encoder: dict, model_dim: int, precision: str) -> Encoded:
        """The records of the interrupted build in this folder, checked against this build's
        settings and cut to what its files hold; the files are cut to match, and everything else
        in the folder is removed (it is made again)."""
        try:
            record = json.loads((self.folder / "build.json").read_text(encoding="utf-8"))
            chunk_size, before = int(record["chunk_size"]), dict(record["config"])
        except (OSError, ValueError, KeyError, TypeError):
            raise ConfigError(f"{self.folder}: the interrupted build's record is unreadable; build without --resume to start over.") from None
        mine = _settings(config)
        differ = sorted(k for k in set(before) | set(mine) if before.get(k) != mine.get(k))
        differ += [name for name, now in (("encoder", encoder), ("precision", precision), ("mvr_version", __version__)) if record.get(name) != now]
        if differ:
            raise ConfigError(f"the interrupted build of this index used other settings ({', '.join(differ)}): resume it with the same ones, or build without --resume to start over.")
        segment, state = self.segment, Encoded(chunk_size=chunk_size)
        for name in _RAW:
            if (self.folder / name).is_file():  # the encoding had finished: back where it is read from
                os.replace(self.folder / name, segment / name)
        sizes = {name: (segment / name).stat().st_size if (segment / name).is_file() else -1 for name in (*_RAW, "text.bin", "title.bin")}
        tokens = text_bytes = title_bytes = 0
        records = sorted(self.folder.glob("chunk-*.npz"))
        for number, path in enumerate(records, 1):
            if path.name != f"chunk-{number:08d}.npz":
                break  # one missing: the chunks before it stand
            try:
                with NPY_LOCK, np.load(path, allow_pickle=False) as chunk:
                    part = {name: chunk[name] for name in chunk.files}
                counters = json.loads(str(part["counters"]))
                metadata = json.loads(str(part["metadata"]))
            except Exception:  # a record damaged (a truncated zip, ...): the chunks before it stand
                break
            need = (tokens + int(part["lengths"].sum()), text_bytes + int(part["texts"].sum()), title_bytes + int(part["titles"].sum()))
            with_ids = state.has_token_ids and bool(part["has_token_ids"])
            if need[0] * model_dim * 2 > sizes["vectors.raw"] or need[1] > sizes["text.bin"] or need[2] > sizes["title.bin"] or (with_ids and need[0] * 4 > sizes["token_ids.raw"]):
                break
            state.has_token_ids = with_ids
            tokens, text_bytes, title_bytes = need
            state.chunks += 1
            state.read.extend(part["read"].tolist())
            if state.digests is not None and "digests" in part:
                state.digests.extend(part["digests"].tolist())
            else:
                state.digests = None
            state.ids.extend(part["ids"].tolist())
            state.lengths.append(part["lengths"])
            state.texts.append(part["texts"])
            state.titles.append(part["titles"])
            state.metadata.extend(metadata)
            for key, value in counters.items():
                state.counters[key] += value
        for stale in [*records[state.chunks :], *self.folder.glob("*.tmp")]:
            stale.unlink()
        for entry in segment.iterdir():
            if entry.name not in _KEPT:
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        for name, size in (("vectors.raw", tokens * model_dim * 2), ("token_ids.raw", tokens * 4 * state.has_token_ids), ("text.bin", text_bytes), ("title.bin", title_bytes)):
            with open(segment / name, "ab") as handle:
                handle.truncate(size)
        self.chunks = state.chunks
        return state

    def keep_raw(self) -> None:
        """The raw files out of the segment's files (its manifest lists them) into the records."""
        for name in _RAW:
            if (self.segment / name).is_file():
                os.replace(self.segment / name, self.folder / name)

    def done(self) -> None:
        """Remove the records: the segment is whole (before it is published). The settings go
        first, so that records half removed are never taken for a build to resume."""
        (self.folder / "build.json").unlink(missing_ok=True)
        shutil.rmtree(self.folder, ignore_errors=True)


def digest(doc: Document) -> int:
    """64 bits of a hash of what a document holds besides its id (its title, text and metadata):
    a resume checks that the corpus still holds what the interrupted build read."""
    held = json.dumps([doc.title, doc.text, doc.metadata], sort_keys=True, ensure_ascii=False, default=str)
    return int.from_bytes(hashlib.blake2b(held.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


def _skip_read(documents, read: list[str], digests: list[int] | None = None):
    """``documents`` past the ``read`` ids of an interrupted build, checked to be those (and to
    hold what it read, where ``digests`` says)."""
    count = 0
    for doc in documents:
        if count < len(read):
            if doc.id != read[count]:
                raise CorpusError(f"document #{count} of the corpus is {doc.id!r}; the interrupted build read {read[count]!r} there: resume with the same corpus, or build without --resume to start over.")
            if digests is not None and digest(doc) != digests[count]:
                raise CorpusError(f"{doc.where}: document {shown(doc.id)} holds another title, text or metadata than the interrupted build read: resume with the same corpus, or build without --resume to start over.")
            count += 1
            continue
        yield doc
    if count < len(read):
        raise CorpusError(f"the corpus ends after {count} documents; the interrupted build read {len(read)}: resume with the same corpus, or build without --resume to start over.")


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
        with open(folder / "vectors.raw", mode) as raw, open(folder / "token_ids.raw", mode) as raw_ids:
            for chunk in chunks(_skip_read(as_documents(documents), resumed.read, resumed.digests), chunk_size):
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
                    encoded = encoder.encode_documents([d.full_text for d in kept], show_progress=bar if not config.passage_tokens else False, dtype="float16")
                    if not np.isfinite(encoded.vectors).all():
                        raise MvrError("the encoder produced non-finite vectors; check the model's weights.")
                    raw.write(encoded.vectors.data)
                    lengths.append(encoded.lengths)
                    if encoded.token_ids is None:  # an encoder of another kind may not give them
                        with_ids = False
                    elif with_ids:
                        raw_ids.write(np.asarray(encoded.token_ids, np.int32).tobytes())
                    truncated += int(encoded.truncated.sum())
                    for doc in kept:
                        ids.append(doc.id)
                        texts.add(doc.text)
                        titles.add(doc.title)
                if config.passage_tokens or not kept:
                    bar.update(len(chunk))
                if checkpoints is not None:
                    for handle in (raw, raw_ids, texts.handle, titles.handle):
                        handle.flush()
                        os.fsync(handle.fileno())
                    counters = dict(zip(("truncated", "skipped", "split"), (a - b for a, b in zip((truncated, skipped, split_documents), before))))
                    checkpoints.record(chunk, kept, encoded.lengths if encoded else [], encoded.token_ids if encoded else np.zeros(0, np.int32),
                                       np.diff(texts.offsets[-len(kept) - 1 :]) if kept else [], np.diff(titles.offsets[-len(kept) - 1 :]) if kept else [], counters)
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
    if with_ids:  # token_ids.npy from token_ids.raw, a block at a time
        source, out = RowReader(folder / "token_ids.raw", np.int32), ArrayWriter(folder / TOKEN_IDS, np.int32)
        for start in range(0, int(offsets[-1]), 1 << 22):
            out.add(source[start : min(start + (1 << 22), int(offsets[-1]))])
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
