"""First stages: what finds the candidates that MaxSim reranks. The contract is in ``base``, the
names in ``mvr.registry.STAGES``; each stage is one module here (``fde``, ``bm25``, ``bm25s``,
``splade``) and ``hybrid`` composes two. This module opens and builds them by name."""

from __future__ import annotations

from pathlib import Path

from ..errors import IndexFormatError
from ..registry import stage_entry
from ..storage.formats import rebuild_command, stage_mismatch
from ..storage.manifest import MANIFEST, index_folder, read_manifest, write_manifest
from .base import BuildSource, Candidates, FirstStage, QueryBatch
from .hybrid import Hybrid, union_candidates


def stage_class(name: str):
    """The class of the built first stage ``name`` (loading its module; a missing extra says which)."""
    return stage_entry(name).load()


def stage_folder(index_path: Path, name: str) -> Path:
    return Path(index_path) / name


def has_stage(index_path: Path, name: str) -> bool:
    return (stage_folder(index_path, name) / MANIFEST).is_file()


def open_stage(name: str, index) -> FirstStage:
    """The first stage ``name`` of ``index``, after checking that it was built for what the index holds."""
    cls = stage_class(name)
    folder = stage_folder(index.path, name)
    manifest = read_manifest(folder, cls.format, cls.version)
    bound = {"vectors": {"vectors_sha256": index.vectors_sha256}, "doc_ids": {"doc_ids_sha256": index.doc_ids_sha256}}[cls.binds]
    other = stage_mismatch(manifest, bound, index.n_docs)
    if other:
        raise IndexFormatError(f"{folder} was built for other {other} than its index holds; rebuild it with `{rebuild_command(name, index_folder(folder))}`.")
    return cls.open(folder, manifest, index)


def build_stage(name: str, folder: Path, source: BuildSource, settings=None) -> dict:
    """Build the first stage ``name`` into the empty ``folder`` and write its manifest (last)."""
    manifest = stage_class(name).build(folder, source, settings)
    manifest["build"]["command"] = source.command
    write_manifest(folder, manifest)
    return manifest


__all__ = ["BuildSource", "Candidates", "FirstStage", "QueryBatch", "Hybrid", "union_candidates", "open_stage", "build_stage", "has_stage", "stage_class"]
