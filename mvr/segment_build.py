"""One segment from documents: encode -> PCA -> prune / cluster -> token store -> first stages ->
manifest, written into a folder that nothing reads until a commit names it (mvr/build.py for a
new index, mvr/writer.py for additions and merges).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

import numpy as np

from . import __version__
from .config import FDEConfig, IndexConfig
from .corpus import Document
from .encode import Encoder
from .checkpoints import RESUME, Checkpoints
from .encoding import encode_corpus, finish_vectors
from .errors import IndexFormatError, MvrError
from .registry import STAGES, store_class
from .stages import BuildSource, build_stage, stage_class
from .storage import MANIFEST, ArrayWriter, Blob, BlobWriter, RowReader, sha256_file, write_manifest
from .storage.commits import DELETES, write_json
from .storage.formats import SEGMENT_FORMAT, SEGMENT_VERSION, TOKEN_IDS, upgrade_fde_config
from .storage.layout import LEFTOVER, ours
from .storage.manifest import index_folder, read_json_object, verify
from .storage.metadata import MetadataWriter
from .threads import load_npy
from .vectors import compact_vectors, corpus_stats, needs_corpus_stats, needs_token_ids
from .vectors.heads import FILE as HEAD_FILE

CORPUS_STATS = "corpus_df.npy"  # vectors.prune.corpus_stats of the build: documents, then df per token id


def write_segment(documents, folder: Path, encoder: Encoder, config: IndexConfig, *, like=None, stages: dict | None = None, existing=None,
                  replaced: list | None = None, metadata_types: dict | None = None, show_progress=None, chunk_size: int = 1024, command=None,
                  checkpoints: bool = False, resume: bool = False) -> dict:
    """Encode ``documents`` into the new segment ``folder`` as ``config`` says; ``like``: an opened
    segment of the same index, whose PCA projection and codec the new one reuses. The manifest.
    ``checkpoints``: record each encoded chunk in ``folder/resume`` (mvr/checkpoints.py; removed with
    :meth:`Checkpoints.done` before the segment is published); ``resume``: ``folder`` holds such
    records of an interrupted build, which this one goes on from (with its chunk size)."""
    started = time.perf_counter()
    for name in planned_stages(config) if stages is None else stages:  # what cannot be written there: refused before encoding
        getattr(stage_class(name), "check_folder", lambda folder: None)(folder / name)
    records = resumed = None
    if resume and (folder / RESUME / "build.json").is_file():
        records = Checkpoints(folder)
        resumed = records.resume(config, encoder.identity, encoder.dim, getattr(encoder, "precision", "fp32"))
        chunk_size = resumed.chunk_size
    else:
        folder.mkdir(parents=True)
        if checkpoints:
            records = Checkpoints(folder)
            records.start(config, encoder.identity, chunk_size, getattr(encoder, "precision", "fp32"))
    counts = encode_corpus(documents, encoder, config, folder, show_progress, chunk_size, existing, replaced, metadata_types, records, resumed)
    encoded = time.perf_counter()
    counts.update(finish_vectors(folder, encoder.dim, config, counts["tokens"], None if like is None else like.projection, checkpoints=records))
    done = counts["documents"] - (len(resumed.ids) if resumed else 0)
    build_info = {"encode_seconds": round(encoded - started, 3), "docs_per_second": round(done / max(encoded - started, 1e-9), 2)}
    if resumed is not None:
        build_info["resumed_at"] = len(resumed.read)
    return finish_segment(folder, config, encoder, counts, build_info, started, command, show_progress, None if like is None else like.path, stages)


def planned_stages(config: IndexConfig) -> dict[str, object]:
    """The first stages a build with ``config`` makes, with each one's settings."""
    stages: dict[str, object] = {"fde": config.fde} if config.fde is not None else {}
    if config.centroid_stage:
        stages["centroids"] = None
    if config.pooled:
        stages["pooled"] = None
    stages.update({name: None for name in config.sparse})
    if config.splade_model:
        stages["splade"] = config.splade_model
    return stages


def with_stage(config: IndexConfig, name: str, built: dict) -> IndexConfig:
    """``config`` as a build that made the first stage ``name`` would read it (planned_stages'
    inverse for one stage), ``built`` the stage's manifest (for its settings)."""
    if name == "fde":
        return dataclasses.replace(config, fde=FDEConfig.from_dict(upgrade_fde_config(built["config"])))
    if name in ("centroids", "pooled"):
        return dataclasses.replace(config, **{"centroid_stage" if name == "centroids" else "pooled": True})
    if name == "splade":
        return dataclasses.replace(config, splade_model=built["model"]["source"])
    return dataclasses.replace(config, sparse=tuple(dict.fromkeys((*config.sparse, name))))


def stored_texts(folder: Path) -> Iterable[tuple[str, str]]:
    """``(id, title + " " + text)`` of every document stored in an index directory, in order."""
    ids, texts, titles = load_npy(folder / "doc_ids.npy", mmap_mode="r"), Blob(folder, "text"), Blob(folder, "title")
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
    doc_offsets = load_npy(folder / "doc_offsets.npy")
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
    return store.bytes_on_disk(folder) + sum((folder / name).stat().st_size for name in ("projection.npy", HEAD_FILE) if (folder / name).is_file())


def _compact(folder: Path, config: IndexConfig, encoder: Encoder, counts: dict, like: Path | None = None, block: int = 1 << 18) -> dict:
    """Prune, cluster and compress ``folder/vectors.npy`` in place, in blocks of documents of
    about ``block`` vectors (documents are compacted one by one, so blocks change nothing): the
    compacted float32 vectors go to a file first, from which the codec is fitted on its sample
    (only those rows are read) and the store written block by block. Memory holds a block, not
    the corpus. The counts to record."""
    started = time.perf_counter()
    offsets = load_npy(folder / "doc_offsets.npy")
    source = RowReader(folder / "vectors.npy")
    source_tokens, dim = source.shape
    ids_file = folder / TOKEN_IDS
    token_ids = classes = None
    if needs_token_ids(config):
        token_ids = RowReader(ids_file) if ids_file.is_file() else None
        if token_ids is not None and len(token_ids) != source_tokens:
            raise MvrError(f"{ids_file} holds {len(token_ids)} token ids for {source_tokens} vectors; the index is damaged, build it again from the corpus.")
        if token_ids is None:  # built before token ids were stored: tokenise the texts again
            token_ids, id_offsets = encoder.document_token_ids([text for _, text in stored_texts(folder)])
            if not np.array_equal(id_offsets, offsets):
                raise MvrError("the stored vectors do not line up with the re-tokenised texts; build the index again from the corpus.")
        classes = encoder.token_classes()
    stats = None
    if needs_corpus_stats(config):  # the build's statistics, kept for every segment added later
        stats = load_npy(Path(like) / CORPUS_STATS) if like is not None and (Path(like) / CORPUS_STATS).is_file() else corpus_stats(token_ids[:], offsets)
        np.save(folder / CORPUS_STATS, stats)
    compacted = ArrayWriter(folder / ".compacted.npy", np.float32, (dim,))
    kept_ids = ArrayWriter(folder / ".token_ids.npy", np.int32) if token_ids is not None and not config.clusters else None
    lengths, pruned, cluster_seconds, first = [], 0, 0.0, 0
    while first < len(offsets) - 1:
        last = max(first + 1, int(np.searchsorted(offsets, offsets[first] + block, side="right")) - 1)
        start, stop = int(offsets[first]), int(offsets[last])
        part = compact_vectors(source[start:stop].astype(np.float32), offsets[first : last + 1] - start, config,
                               None if token_ids is None else np.asarray(token_ids[start:stop]), classes, stats)
        compacted.add(part.vectors)
        if kept_ids is not None:
            kept_ids.add(part.token_ids)
        lengths.append(np.diff(part.offsets))
        pruned, cluster_seconds, first = pruned + part.pruned, cluster_seconds + part.cluster_seconds, last
    compacted.close()
    del source, token_ids
    os.remove(folder / "vectors.npy")
    if kept_ids is not None:
        kept_ids.close()
        os.replace(folder / ".token_ids.npy", ids_file)
    elif config.clusters:
        ids_file.unlink(missing_ok=True)  # a centroid is no one token
    lengths = np.concatenate(lengths)
    new_offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=new_offsets[1:])
    np.save(folder / "doc_offsets.npy", new_offsets)
    vectors = RowReader(folder / ".compacted.npy")
    details = store_class(config.codec).write(folder, vectors, config, like=like)
    del vectors
    os.remove(folder / ".compacted.npy")
    return {
        "tokens": int(new_offsets[-1]),
        "source_tokens": int(source_tokens),
        "pruned_tokens": pruned,
        "max_doc_len": int(lengths.max(initial=0)),
        "dim": int(dim),
        "compact_seconds": round(time.perf_counter() - started, 3),
        "cluster_seconds": round(cluster_seconds, 3),
        **details,
    }


def check_sources(segments) -> None:
    """An IndexFormatError where a segment to be copied (merged, derived from) holds a file whose
    sha256 differs from its manifest's: the copy would carry the damage under a fresh checksum,
    past every later --verify."""
    for segment in segments:
        bad = verify(segment.path, segment.manifest)
        if bad:
            raise IndexFormatError(f"{segment.path / bad[0]}: its sha256 differs from the manifest's, so it is not copied; the index is damaged: "
                                   f"`mvr info {index_folder(segment.path)} --verify`, then rebuild it.")


def merge_segments(folder: Path, sources: list, live: list[np.ndarray], config: IndexConfig, encoder_identity: dict, stages: dict, show_progress=None, command=None) -> dict:
    """One new segment ``folder`` from the ``live`` rows of the opened segments ``sources``, in
    their order, without decoding or re-encoding: the token store's per-vector rows are copied
    (its codebooks are shared by every segment of an index), as are ids, texts, titles, metadata
    and token ids; the first stages (``stages``) are built anew. The manifest."""
    started = time.perf_counter()
    check_sources(sources)
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
        parts = [np.asarray(load_npy(s.path / name, mmap_mode="r")[r]) for s, r in zip(sources, rows)]
        np.save(folder / name, np.concatenate(parts))
    for name in (*store.files, "projection.npy", HEAD_FILE, CORPUS_STATS):
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
            metadata.add(segment.metadata.row(int(row)), limits=False)
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


def link_tree(source: Path, target: Path) -> None:
    """``source`` (a file or a folder) at ``target``, hard-linked file by file (copied where the file system does not link)."""
    if source.is_dir() and not source.is_symlink():
        target.mkdir()
        for entry in source.iterdir():
            link_tree(entry, target / entry.name)
        return
    try:
        os.link(source, target, follow_symlinks=False)
    except OSError:
        shutil.copy2(source, target, follow_symlinks=False)


def restage(source: Path, folder: Path, stage: str, deletes: dict | None) -> None:
    """A new segment ``folder`` holding what the segment ``source`` holds, linked (segments never
    change, so they can share their files), less its first stage ``stage``, to be built anew, its
    manifest (written anew: :func:`reconfigure`), the deletion bitmaps other than ``deletes`` (the
    commit's entry), and what killed swaps of its first stages left (an mvr before stage rebuilds
    were commits swapped them in place; a user's files are kept, whatever their names)."""
    folder.mkdir()
    for entry in source.iterdir():
        stale = DELETES.match(entry.name) and entry.name != (deletes or {}).get("file")
        left = LEFTOVER.match(entry.name)
        swapped = left is not None and left["name"] in STAGES and ours(entry, (stage_class(left["name"]).format,))
        if entry.name not in (stage, MANIFEST) and not stale and not swapped:
            link_tree(entry, folder / entry.name)


def reconfigure(source: Path, folder: Path, config: IndexConfig) -> None:
    """The manifest of the segment ``source``, with ``config``, as the manifest of ``folder`` (a
    file of its own: the old one, which a reader of the old commit may read, is not changed)."""
    write_json(folder / MANIFEST, {**read_json_object(source / MANIFEST, source), "config": config.to_dict()})
