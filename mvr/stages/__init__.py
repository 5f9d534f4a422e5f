"""First stages: what finds the candidates that MaxSim reranks. The contract is in ``base``, the
names in ``mvr.registry.STAGES``; each stage is one module here (``fde``, ``bm25``, ``bm25s``,
``splade``) and ``hybrid`` composes two. This module opens and builds them by name."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ConfigError, IndexFormatError, many, shown
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


def text_stages(stages, splade_model) -> tuple[str, ...]:
    """The text stages ``Index.build_sparse`` is asked for (a name or a list; None: the default's),
    once each, or a ConfigError for what it would ignore: another kind of stage, none, a
    ``splade_model`` without "splade"."""
    from ..config import IndexConfig
    from ..registry import STAGES

    stages = IndexConfig().sparse if stages is None else (stages,) if isinstance(stages, str) else tuple(dict.fromkeys(many(stages, "stages must be a first stage name or a list of them", ConfigError)))
    texts = [name for name, entry in STAGES.items() if entry.reads == "text"]
    for name in stages:
        stage_entry(name)  # an unknown name, a hybrid's ("searched, not built")
    if not stages or any(s not in texts for s in stages):
        raise ConfigError(f"build_sparse builds text first stages ({', '.join(texts)}), got {shown(list(stages))}; Index.build_stage builds the others.")
    if splade_model is not None and "splade" not in stages:
        raise ConfigError("splade_model goes with the splade stage (the one it builds); name it among the stages.")
    return stages


def stage_settings(name: str, settings):
    """``settings`` of the first stage ``name`` as its build reads them, or a ConfigError: an
    FDEConfig (or a dict of its fields) for "fde", a model folder for "splade"."""
    from ..config import FDEConfig

    if name == "fde" and isinstance(settings, dict):
        return FDEConfig.from_dict(settings)
    if name == "fde" and settings is not None and not isinstance(settings, FDEConfig):
        raise ConfigError(f"the fde stage's settings are an FDEConfig or a dict of its fields, got {type(settings).__name__}.")
    if name in ("pooled", "bm25s", "bm25") and settings is not None:  # they have none: it would be taken and ignored
        raise ConfigError(f"the {name} stage takes no settings, got {shown(settings)}.")
    if name == "splade" and settings is not None and not isinstance(settings, (str, os.PathLike)):
        from .splade import SpladeEncoder

        if not isinstance(settings, SpladeEncoder):
            raise ConfigError(f"the splade stage's settings are its masked-LM model folder (a path) or a SpladeEncoder, got {type(settings).__name__}.")
    return settings


__all__ = ["BuildSource", "Candidates", "FirstStage", "QueryBatch", "Hybrid", "union_candidates", "open_stage", "build_stage", "has_stage", "stage_class", "stage_settings", "text_stages"]
