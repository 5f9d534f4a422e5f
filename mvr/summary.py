"""What ``mvr info`` says of an open index: counts, sizes, encoder, config, build figures,
segments and first stages (:meth:`mvr.Index.info`)."""

from __future__ import annotations

import numpy as np

from .errors import IndexFormatError
from .passages import live_documents
from .registry import STAGES
from .stages import stage_class
from .storage import read_manifest
from .storage.formats import FDE_FORMAT, FDE_VERSION


def _passage_counts(index) -> dict:
    """An index of passages: its live documents, and those in more than one passage (the first
    segment's build figures were given: never changed by a delete or an add, gone after a merge)."""
    if not index.config.passage_tokens:
        return {}
    documents, split = live_documents(index._state)
    return {"source_documents": documents, "split_documents": split}


def describe_index(index) -> dict:
    """Summary of an open index for ``mvr info``: counts, sizes, encoder, config, build figures,
    segments and first stages."""
    state = index._state
    lengths = np.concatenate([np.diff(s.doc_offsets) for s in state.segments]) if state.segments else np.zeros(0)
    return {
        "name": index.name,
        "path": str(index.path),
        "documents": index.n_docs,
        "deleted_documents": index.n_rows - index.n_docs,
        "tokens": index.n_tokens,
        "dim": index.dim,
        "vectors_per_document": {"mean": round(float(lengths.mean()), 2) if len(lengths) else 0.0, "max": int(lengths.max()) if len(lengths) else 0},
        "source_tokens_per_document": round(index.manifest["counts"].get("source_tokens", index.n_tokens) / max(index.n_rows, 1), 2),
        "codec": index.config.codec,
        "bytes_per_token": index.manifest["bytes_per_token"],
        "index_bytes": sum(meta["bytes"] for meta in index.manifest["files"].values()),
        "encoder": index.manifest["encoder"],
        "config": index.manifest["config"],
        "build": index.manifest["build"],
        "counts": {**index.manifest["counts"], **_passage_counts(index)},
        "created": index.manifest["created"],
        "format_version": index.manifest["format_version"],
        "generation": index.generation,
        "segments": [{"name": s.path.name, "documents": s.n_docs, "deleted": int(d.sum())} for s, d in zip(state.segments, state.deleted)],
        "fde": _fde_summary(index),
        "stages": stage_bytes(index),
        "default_stage": index.default_stage,
        "search_presets": _presets(index),
    }


def _presets(index) -> dict:
    """The index's saved search presets; where they are damaged, none, and why under "damaged"."""
    try:
        return index.search_presets
    except IndexFormatError as error:
        return {"default": None, "presets": {}, "damaged": str(error)}


def stage_bytes(index) -> dict[str, int]:
    """Bytes on disk of each built first stage of an open index, over every segment."""
    out: dict[str, int] = {}
    for name in STAGES:
        if index.has_stage(name):
            cls = stage_class(name)
            out[name] = sum(meta["bytes"] for s in index._state.segments for meta in read_manifest(s.path / name, cls.format, cls.version)["files"].values())
    return out


def _fde_summary(index) -> dict | None:
    if not index._state.segments or not index.has_stage("fde"):  # emptied by deletes: no FDE built to describe
        return None
    manifest = read_manifest(index._state.segments[0].path / "fde", FDE_FORMAT, FDE_VERSION)
    return {k: manifest[k] for k in ("config", "fde_dim", "bytes_per_document", "build", "factory_used") if k in manifest}
