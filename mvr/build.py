"""Building an index: one path from documents (or from another index's stored vectors) to a
finished directory. Encode -> PCA -> prune / cluster -> token store -> first stages -> manifest,
all in a staging directory that replaces the target only once complete (storage/layout.py).

    build(documents, name, config=IndexConfig())      encode a corpus
    build_blocks(blocks, name, sample=..., ...)         already encoded vectors, a block at a time
    derive(index, name, cluster_ratio=0.25, ...)       shrink a float16 index without re-encoding
    rebuild_stage(index, "fde", FDEConfig(...))        (re)build one first stage, as one commit
    upgrade(index)                                     convert a version-1 index to segments
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import shutil
import time
from pathlib import Path

import numpy as np

from .config import SEARCH_PRESETS, IndexConfig, positive_int
from .encode import Encoder
from .errors import ConfigError, IndexFormatError, MvrError, check_flags, meant, shown
from .stages import BuildSource, build_stage, stage_class, stage_settings
from .storage import ArrayWriter, StagingDir, target_path
from .storage.layout import check_replaceable
from .checkpoints import Checkpoints
from .passages import live_documents
from .segment import open_commit
from .segment_build import check_sources, finish_segment, link_tree, planned_stages, reconfigure, restage, stored_texts, with_stage, write_segment
from .storage.commits import SEGMENTS, new_commit, publish, read_pointer, segment_name, write_json
from .storage.formats import SEGMENT_FORMAT, SEGMENT_VERSION
from .storage.lock import check_wait
from .storage.manifest import MANIFEST, fsync_tree, read_manifest
from .threads import cpu_threads
from .vectors.heads import pinned, save_projection

# What a derived index may change, and the counts it inherits from its source.
DERIVABLE = {"projection", "prune", "prune_max_df", "cluster_ratio", "cluster_count", "cluster_method", "cluster_iters", "cluster_keep", "cluster_idf_weight", "codec", "codec_bits", "codec_centroids", "codec_sample", "fde", "centroid_stage", "pooled", "search_preset", "seed", "threads"}
_SOURCE_COUNTS = {"documents", "tokens", "max_doc_len", "truncated_documents", "skipped_empty_documents", "dim", "model_dim", "source_documents", "split_documents"}
# The fewest vectors the residual codec is trained on (an index of fewer: all of them): on a
# handful, its centroids and bucket cutoffs fit those alone and every document scores alike.
MIN_CODEC_SAMPLE = 256


def keywords(function, given: dict) -> dict:
    """``given`` if ``function`` takes each of them, else a ConfigError naming where an unknown
    one belongs (a setting of :class:`IndexConfig`: in ``config=``) or the one it may mean."""
    taken = inspect.signature(function).parameters
    unknown = [name for name in given if name not in taken]
    if unknown:
        settings = [name for name in unknown if name in IndexConfig.__dataclass_fields__]
        where = f"; {', '.join(settings)} {'is a setting' if len(settings) == 1 else 'are settings'} of the index: pass config=IndexConfig({', '.join(f'{n}=...' for n in settings)})" if settings else ""
        raise ConfigError(f"Index.{function.__name__}() takes no {', '.join(unknown)}{meant([n for n in unknown if n not in settings], taken)}{where}.")
    return given


def build(documents, name, *, config: IndexConfig | None = None, home=None, overwrite: bool = False, encoder: Encoder | None = None,
          show_progress: bool | None = None, chunk_size: int = 1024, command: str | None = None, resume: bool = False, wait: float = 0.0):
    """Encode ``documents`` (an iterable of Documents, dicts, ``(id, text)`` pairs or strings, or
    a corpus path) and write the index ``name`` (a ``str`` name under ``home``, or a ``pathlib.Path``); return it opened.

    Ids must be unique and documents non-empty (or ``config.skip_empty``). Settings that cannot
    work are refused before any document is encoded. Nothing is written at ``name`` until the
    build has finished: a failure leaves an existing index intact. ``command`` (the CLI line that
    asked for the build) is kept in the manifest. The index is one segment at generation 1.

    Each chunk of ``chunk_size`` documents is recorded once encoded (mvr/checkpoints.py): a build
    killed half-way, or stopped by an error, leaves them, and ``resume=True`` (CLI ``--resume``)
    goes on from the last whole chunk with the same settings and corpus (checked), ending with
    the index an uninterrupted build writes; ``manifest["build"]["resumed_at"]`` says after how
    many documents. Without it, a build starts over and removes what an interrupted one left.
    ``wait``: seconds to wait for another writer of ``name`` (an add to the index replaced).
    """
    from .index import Index

    config = _checked(config, overwrite=overwrite, resume=resume, show_progress=show_progress)
    positive_int("", "chunk_size", chunk_size)
    if encoder is not None and (isinstance(encoder, (str, bytes, os.PathLike)) or not hasattr(encoder, "identity")):
        raise ConfigError(f"encoder must be a loaded mvr.Encoder (or None: the config's model), got {type(encoder).__name__}; name a model folder with config=IndexConfig(model=PATH).")
    started = time.perf_counter()
    target = target_path(name, home)
    with StagingDir(target, overwrite, resume=resume, wait=wait) as staging, cpu_threads(config.threads, "numba", "faiss"):
        if encoder is None:
            encoder = Encoder(config.model, query_maxlen=config.query_maxlen, doc_maxlen=config.doc_maxlen, batch_size=config.batch_size, threads=config.threads, doc_runtime=config.doc_runtime)
        if config.pca_dim is not None and config.pca_dim > encoder.dim:
            raise ConfigError(f"pca_dim={config.pca_dim} (--pca-dim) exceeds the model's {encoder.dim} dimensions.")
        doc_maxlen = getattr(getattr(encoder, "spec", None), "doc_maxlen", None)
        if config.passage_tokens is not None and doc_maxlen is not None and config.passage_tokens > doc_maxlen:  # it was cut to fit, and reported as asked
            raise ConfigError(f"passage_tokens={config.passage_tokens} (--passage-tokens) is more than the {doc_maxlen} tokens of this model's documents; give at most that (passages are cut to fit beside the special tokens and the title).")
        config, head = pinned(config, encoder.identity)
        for stage, settings in planned_stages(config).items():
            stage_class(stage).check(settings, _stored_dim(config, head, encoder.dim))
        loaded = time.perf_counter()
        # what runs: a given encoder's own runtime, or PyTorch where the ONNX export fails (tried
        # now, so that the index records what encodes it)
        if isinstance(encoder, Encoder):
            encoder.onnx_ready()
        config = dataclasses.replace(config, doc_runtime=encoder.doc_runtime)
        folder = staging.path / SEGMENTS / segment_name(1)
        manifest = write_segment(documents, folder, encoder, config, show_progress=show_progress, chunk_size=chunk_size, command=command,
                                 checkpoints=True, resume=staging.resumed)
        Checkpoints(folder).done()
        manifest["build"]["model_load_seconds"] = round(loaded - started, 3)
        first_commit(staging.path, folder, manifest, config, encoder.identity, "build", command)
        path = staging.commit()
    local = getattr(encoder, "local", encoder)  # a RayEncoder or ProcessEncoder (mvr.encode.pool): its local Encoder
    return Index.open(path, model=local, device=getattr(local, "device", None))  # where its encoder runs, not where MVR_DEVICE points


def build_blocks(blocks, name, *, sample, model_dim: int, encoder: dict, config: IndexConfig | None = None, n_docs: int | None = None, home=None,
                 overwrite: bool = False, show_progress: bool | None = None, command: str | None = None, wait: float = 0.0):
    """The index ``name`` from documents already encoded, as :class:`mvr.streaming.Block` s (an
    iterable), in bounded memory: each block is compacted and compressed as it comes
    (mvr/streaming.py); the codec is fitted first on ``sample`` (a Block of documents drawn from
    the whole corpus). ``encoder``: the identity of the model that made the vectors (an index's
    ``manifest["encoder"]``), which later queries must match; ``n_docs``: the corpus size, when
    known (it sizes the codec, and the progress bar). Returns the index, opened."""
    from .index import Index
    from .progress import progress
    from .streaming import SegmentStream

    from .storage.validate import ENCODER_FIELDS

    config = _checked(config, overwrite=overwrite, show_progress=show_progress)
    started = time.perf_counter()
    wrong = [key for key, kind in ENCODER_FIELDS.items() if not isinstance(encoder.get(key) if isinstance(encoder, dict) else None, kind)]
    if wrong or encoder["dim"] != model_dim:
        raise ConfigError(f"encoder must be the identity of the {model_dim}-dim model that made the vectors (an index's manifest['encoder'], Encoder.identity); "
                          + (f"missing or wrong: {', '.join(wrong)}." if wrong else f"it says dim {encoder['dim']}."))
    target = target_path(name, home)
    config, head = pinned(config, encoder)
    for stage, settings in planned_stages(config).items():
        stage_class(stage).check(settings, _stored_dim(config, head, model_dim))
    with StagingDir(target, overwrite, wait=wait) as staging, cpu_threads(config.threads, "numba", "faiss", "blas"):
        folder = staging.path / SEGMENTS / segment_name(1)
        stream = SegmentStream(folder, config, sample, model_dim, n_docs=n_docs)
        bar = progress(total=n_docs, desc="compacting", unit="doc", show=show_progress)
        for block in blocks:
            stream.add(block)
            bar.update(len(block))
        bar.close()
        counts = stream.close()
        written = time.perf_counter()
        build_info = {"encode_seconds": 0.0, "stream_seconds": round(written - started, 3), "docs_per_second": round(counts["documents"] / max(written - started, 1e-9), 2)}
        manifest = finish_segment(folder, config, encoder, counts, build_info, started, command, show_progress, compact=False)
        first_commit(staging.path, folder, manifest, config, encoder, "build", command)
        path = staging.commit()
    return Index.open(path)


def _checked(config, **flags) -> IndexConfig:
    """``config`` (None: the defaults) where it is an IndexConfig a build can follow, and each of
    ``flags`` True or False (show_progress: or None; overwrite="no" would be taken for True)."""
    check_flags(**flags)
    config = IndexConfig() if config is None else config
    if not isinstance(config, IndexConfig):
        raise ConfigError(f"config must be an IndexConfig (IndexConfig(**settings) for a dict of settings), got {type(config).__name__}.")
    check_read(config)
    least = max(MIN_CODEC_SAMPLE, config.codec_centroids or 0)
    if config.codec == "residual" and config.codec_sample < least:
        raise ConfigError(f"codec_sample={config.codec_sample} is too few vectors to train the residual codec on: give at least {least} "
                          f"({MIN_CODEC_SAMPLE}, or codec_centroids where more; an index of fewer vectors trains on all it has).")
    return config


def check_read(config: IndexConfig, given=()) -> None:
    """A ConfigError naming the first of :func:`unread_settings`."""
    unread = unread_settings(config, given)
    if unread:
        name, needs = unread[0]
        flag = f" (--{name.replace('_', '-')})" if name not in ("codec_sample", "pca_sample") else ""
        raise ConfigError(f"{name}={shown(getattr(config, name))}{flag} is read only with {needs}, which this build does not have; give that too, or leave it out.")


def unread_settings(config: IndexConfig, given=()) -> list[tuple[str, str]]:
    """``(setting, what it needs)`` for each setting of ``config`` changed from its default (or
    named in ``given``) that the build would not read, what it needs not being there (codec_bits
    with a float16 codec)."""
    default = IndexConfig()
    needs = (
        (config.codec == "residual", "codec='residual' (--codec residual)", ("codec_bits", "codec_centroids", "codec_sample")),
        (config.clusters and config.cluster_method == "kmeans", "k-means clustering (--cluster-method kmeans, and --cluster-ratio or --cluster-count)", ("cluster_iters",)),
        (config.clusters, "clustering (--cluster-ratio or --cluster-count)", ("cluster_method", "cluster_keep", "cluster_idf_weight")),
        ("df" in config.prune, "the df pruning rule (--prune df)", ("prune_max_df",)),
        (config.pca_dim is not None, "PCA (--pca-dim)", ("pca_sample",)),
    )
    return [(name, what) for present, what, names in needs if not present for name in names if name in given or getattr(config, name) != getattr(default, name)]


def _stored_dim(config: IndexConfig, head, model_dim: int) -> int:
    """Dimensions of the vectors an index of ``config`` (with its trained ``head``, if any) stores."""
    return head.shape[1] if head is not None else config.pca_dim or model_dim


def first_commit(index: Path, folder: Path, manifest: dict, config: IndexConfig, encoder_identity: dict, operation: str, command, **fields) -> None:
    """Generation 1 of a new index folder: its one segment ``folder`` (``config`` with the
    centroid stage decided for its size, as the segment's manifest has it)."""
    config = config.for_corpus(manifest["counts"]["documents"])
    segment = {"name": folder.name, "documents": manifest["counts"]["documents"], "deleted": 0, "deletes": None}
    saved = {"search": {"default": config.search_preset, "presets": {config.search_preset: SEARCH_PRESETS[config.search_preset]}}} if config.search_preset else {}
    commit = new_commit(None, 1, [segment], operation, config=config.to_dict(), encoder=encoder_identity, dim=manifest["counts"]["dim"], next_segment=int(folder.name[1:]) + 1, command=command, **saved, **fields)
    fsync_tree(index)
    publish(index, commit)
    try:  # read back as every reader will, before it takes any index's place: what cannot be read fails here
        opened = open_commit(index, index.name)
    except MvrError as error:
        raise IndexFormatError(f"the index just written could not be read back, so it took no index's place (its folder is removed): {error}") from None
    if opened.pin is not None:
        opened.pin.release()


def derive(source, name, *, home=None, overwrite: bool = False, show_progress: bool | None = None, command: str | None = None, wait: float = 0.0, **changes):
    """A new index ``name`` from a float16 index's stored vectors, projected (a trained head:
    ``projection``), pruned, clustered and/or compressed by ``changes`` (fields of
    :class:`IndexConfig`: projection, prune, cluster_ratio, codec, ..., and fde) without encoding the corpus again. Texts, ids and text stages are copied; the FDE is
    rebuilt from the new vectors. The source is only read; it must be one segment without
    deletions (`mvr optimize` makes it so). Search presets saved in the source (`mvr tune`) are
    not carried: they were learned on other vectors; a ``search_preset`` of the config is saved.
    """
    from .index import Index

    source = source if isinstance(source, Index) else Index.open(source, home=home)
    if source.config.compacts:
        raise ConfigError(f"index {source.name!r} is already pruned, clustered or compressed; derive from an index that keeps every token in float16.")
    if len(source.segments) != 1 or source.n_rows != source.n_docs:
        raise ConfigError(f"index {source.name!r} has {len(source.segments)} segments and {source.n_rows - source.n_docs} deleted documents; derive reads one segment without deletions: run `mvr optimize {source.name}` first.")
    unknown = sorted(set(changes) - DERIVABLE)
    if unknown:
        raise ConfigError(f"{unknown} cannot change without encoding the corpus again (use Index.build / mvr index); derivable: {sorted(DERIVABLE)}.")
    config = dataclasses.replace(source.config, **changes)
    default = IndexConfig()  # a setting of the source's that it never read (an index from before check_read) goes back to its default
    config = dataclasses.replace(config, **{n: getattr(default, n) for n, _ in unread_settings(config) if n not in changes})
    check_read(config, changes)  # a change at its default value too (codec_bits=2 without a residual codec)
    config = _checked(config, overwrite=overwrite, show_progress=show_progress)
    head = None
    if changes.get("projection") is not None:  # a new head (a source's own is carried with its files)
        if source.projection is not None:
            raise ConfigError(f"index {source.name!r} already projects its vectors (PCA or a trained head); derive a projected index from one of the model's own vectors.")
        config, head = pinned(config, source.manifest["encoder"])
    if config.fde is not None:
        stage_class("fde").check(config.fde, source.dim if head is None else head.shape[1])
    started = time.perf_counter()
    target = target_path(name, home)
    if target.resolve() == source.path.resolve():
        raise ConfigError("derive into a new name; the source index is kept as it is.")
    check_sources(source.segments)
    origin = source.segments[0].path
    with StagingDir(target, overwrite, wait=wait) as staging, cpu_threads(config.threads, "numba", "faiss"):
        folder = staging.path / SEGMENTS / segment_name(1)
        folder.mkdir(parents=True)
        for item in origin.iterdir():
            if item.name in (MANIFEST, "fde") or item.name.startswith((".", "deletes-")) or (head is not None and item.name == "vectors.npy"):
                continue
            if item.is_dir():
                if item.name in config.sparse or item.name == "splade":
                    shutil.copytree(item, folder / item.name)
            else:
                shutil.copyfile(item, folder / item.name)
        counts = {k: v for k, v in source.segments[0].manifest["counts"].items() if k in _SOURCE_COUNTS}
        if head is not None:  # the stored vectors through the head, a block at a time
            out = ArrayWriter(folder / "vectors.npy", np.float16, (head.shape[1],))
            for _, _, block in source.segments[0].tokens.decoded_blocks():
                out.add(head(block).astype(np.float16))
            out.close()
            save_projection(folder, head)
            counts.update(dim=head.shape[1], model_dim=source.dim)
        build_info = {"derived_from": str(source.path), "encode_seconds": 0.0, "docs_per_second": source.manifest["build"]["docs_per_second"]}
        manifest = finish_segment(folder, config, source.encoder, counts, build_info, started, command, show_progress)
        first_commit(staging.path, folder, manifest, config, source.manifest["encoder"], "derive", command, metadata_fields=source.metadata_fields)  # fields no row holds too
        path = staging.commit()
    return Index.open(path, model=source.encoder, device=source.device)  # where its source searches


def rebuild_stage(index, name: str, settings=None, *, threads: int | None = None, command: str | None = None, show_progress=None, wait: float = 0.0) -> dict:
    """(Re)build the first stage ``name`` of every segment of an open index from its stored
    vectors or texts, under the index's writer lock, as one commit: each segment is relinked into a
    new one (its files shared, storage/commits.py) with the new stage, so a search sees the old
    stage everywhere or the new one everywhere, and a kill part way leaves the old commit whole.
    The index's config (and each new segment's) records the stage as a build would (``config.fde``
    its settings; ``centroid_stage``, ``pooled``, ``sparse``, ``splade_model``). A damaged old stage (one that lost its manifest) is replaced too. A version-1 index is
    converted first. Open the index within ``storage.validate.replacing(name)`` to rebuild a stage
    whose damage stops it from opening. Returns the last segment's manifest with its documents,
    bytes per document and build time over every segment (the commands report them). ``wait``:
    seconds to wait for another writer of the index."""
    from .writer import Writer

    settings = stage_settings(name, {"fde": index.config.fde, "splade": index.config.splade_model}.get(name) if settings is None else settings)  # None: as recorded
    stage_class(name).check(settings, index.dim)
    empty = f"index {index.name!r} holds no documents: a first stage is built from them; documents added later get the stages the index has."
    if not index.segments:  # every document deleted: nothing to build from (a KeyError in each command's report)
        raise ConfigError(empty)
    built, written = [], []
    with Writer(index, wait) as writer, cpu_threads(threads, "numba", "faiss"):
        if not index.segments:  # emptied by the writer waited for
            raise ConfigError(empty)
        entries = [dict(entry) for entry in writer.record["segments"]]
        formats = (stage_class(name).format,)
        for segment in index.segments:  # refused before anything is written: a folder of that name mvr did not make
            check_replaceable(segment.path / name, formats, overwrite=True, damaged=True)
        try:
            for segment, entry in zip(index.segments, entries):
                written.append(writer.new_segment())
                restage(segment.path, written[-1], name, entry.get("deletes"))
                (written[-1] / name).mkdir()
                source = BuildSource(segment.path, segment.dim, segment.doc_offsets, segment.tokens, lambda p=segment.path: stored_texts(p), segment.doc_ids_sha256, segment.vectors_sha256, command, show_progress)
                built.append(build_stage(name, written[-1] / name, source, settings))
                entry["name"] = written[-1].name
            config = with_stage(index.config, name, built[-1])  # the settings the index now has, as a build would record them
            for segment, folder in zip(index.segments, written):
                reconfigure(segment.path, folder, config)
        except BaseException:
            for folder in written:  # never committed: the old segments stay as they were
                shutil.rmtree(folder, ignore_errors=True)
            raise
        writer.commit(entries, "stage", written, stage=name, command=command, config=config.to_dict())
    documents, seconds = sum(m["documents"] for m in built), sum(m["build"]["seconds"] for m in built)  # rows: passages, deleted ones too
    live = live_documents(index._state)[0] if index.config.passage_tokens else index.n_docs  # what the commands report
    over_all = {"documents": live, "rows": documents, "build": {**built[-1]["build"], "seconds": round(seconds, 3), "docs_per_second": round(documents / max(seconds, 1e-9), 1)}}
    if all("bytes_per_document" in m for m in built):
        over_all["bytes_per_document"] = round(sum(m["bytes_per_document"] * m["documents"] for m in built) / max(documents, 1), 1)
    return {**built[-1], **over_all}


def upgrade(index, *, wait: float = 0.0) -> bool:
    """Convert a version-1 index (everything in one folder) into segments and commits: its files,
    hard-linked (copied where links fail) into segment s000001 of a new folder that replaces the
    old one whole (storage/layout.py); what else the folder holds (a user's notes, hidden or not)
    is linked to the new folder's top, as it was. True when there was something to convert."""
    from .registry import STAGES

    check_wait(wait)  # refused whether or not there is anything to convert
    if not index.legacy:
        return False
    target = index.path
    with StagingDir(target, overwrite=True, wait=wait) as staging:  # the writer lock, waiting up to ``wait`` seconds for its holder
        if read_pointer(target)["format_version"] != 1:  # converted by another process meanwhile
            index.refresh()
            return False
        folder = staging.path / SEGMENTS / segment_name(1)
        folder.mkdir(parents=True)
        manifest = {**read_manifest(target), "format": SEGMENT_FORMAT, "format_version": SEGMENT_VERSION}
        for entry in sorted(target.iterdir()):
            ours = entry.name in manifest["files"] or (entry.name in STAGES and (entry / MANIFEST).is_file())
            if entry.name != MANIFEST and not ours and (entry.name == SEGMENTS or entry.name.startswith("commit-")):
                raise ConfigError(f"{entry} has a name the new layout of an index uses; move it out of {target} and run `mvr upgrade {target}` again.")
            if entry.name != MANIFEST and not entry.name.startswith(".mvr-"):  # mvr's own marks are not carried
                link_tree(entry, (folder if ours else staging.path) / entry.name)
        write_json(folder / MANIFEST, manifest)
        first_commit(staging.path, folder, manifest, index.config, manifest["encoder"], "upgrade", None)
        staging.commit()
    index._state = index._read()
    return True
