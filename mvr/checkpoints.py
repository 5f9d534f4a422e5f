"""The records of a build under way, which a build killed half-way (SIGKILL, Ctrl-C, a bad
document, a full disk) goes on from (``mvr index ... --resume``, ``Index.build(..., resume=True)``),
ending with the index an uninterrupted build writes. The segment folder keeps, until it is whole:

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
first stages: deterministic) (:mod:`mvr.encoding` writes the chunks).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import __version__
from .config import IndexConfig
from .corpus import Document
from .errors import ConfigError, CorpusError, shown
from .storage.commits import write_atomic, write_json
from .threads import NPY_LOCK

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


def skip_read(documents, read: list[str], digests: list[int] | None = None):
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
