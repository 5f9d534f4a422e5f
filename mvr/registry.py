"""The one list of names: first stages and token-store codecs, each with where its code lives.

Everything that names a first stage or a codec reads this table: the config's validation, the
CLI's choices, error messages, the docs' result tables. Entries point at their classes by import
path and are loaded on first use, so this module imports nothing heavy (and nothing above it).
Adding a first stage is one module under ``mvr/stages/`` plus one line in ``STAGES``; adding a
codec one class under ``mvr/storage/`` plus one line in ``CODECS`` (docs/architecture.md).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from .errors import ConfigError, MissingExtraError, missing_extra

EXHAUSTIVE = "exhaustive"


@dataclass(frozen=True)
class Entry:
    """One component: ``target`` is ``"module:Class"``; ``extra`` the pip extra its packages come
    in (None: the core install); ``reads`` what a first stage needs of a query: ``"vectors"``
    (encoded token vectors) or ``"text"``; ``needs_model``: it is built from a model folder of its own."""

    name: str
    target: str
    label: str
    reads: str = "vectors"
    extra: str | None = None
    needs_model: bool = False

    def load(self):
        module, _, attribute = self.target.partition(":")
        try:
            return getattr(importlib.import_module(module), attribute)
        except MissingExtraError:
            raise
        except ImportError as error:
            if self.extra is None or (error.name or "mvr").split(".")[0] == "mvr":
                raise
            raise missing_extra(f"the {self.name} {'first stage' if self.name in STAGES else 'codec'}", self.extra, error) from None


STAGES = {
    "fde": Entry("fde", "mvr.stages.fde:FDEStage", "MUVERA FDE (faiss)"),
    "centroids": Entry("centroids", "mvr.stages.centroids:CentroidStage", "centroid interaction (PLAID / WARP)"),
    "pooled": Entry("pooled", "mvr.stages.pooled:PooledStage", "pooled single vector (mean of the token vectors)"),
    "bm25": Entry("bm25", "mvr.stages.bm25:LuceneBM25", "BM25 (Lucene, pyserini)", reads="text", extra="lucene"),
    "bm25s": Entry("bm25s", "mvr.stages.bm25s:BM25S", "bm25s", reads="text"),
    "splade": Entry("splade", "mvr.stages.splade:SpladeStage", "SPLADE", reads="text", needs_model=True),
}
# A hybrid joins a vector stage's candidates with a text stage's: "fde+bm25s", "centroids+bm25s"
# (mvr/stages/hybrid.py).
HYBRIDS = tuple(f"{dense}+{name}" for dense, one in STAGES.items() if one.reads == "vectors" for name, entry in STAGES.items() if entry.reads == "text")
FIRST_STAGES = (EXHAUSTIVE, *STAGES, *HYBRIDS)
# Text stages built from the stored texts alone (no model folder): what IndexConfig.sparse may list.
SPARSE_STAGES = tuple(name for name, entry in STAGES.items() if entry.reads == "text" and not entry.needs_model)

CODECS = {
    "float16": Entry("float16", "mvr.storage.tokens:Float16Store", "float16"),
    "int8": Entry("int8", "mvr.storage.tokens:Int8Store", "int8, one scale per token"),
    "residual": Entry("residual", "mvr.storage.residual:ResidualStore", "residual (centroid + bucketed residuals)"),
}


# The first stage a search takes when it names none: the first of these the index has (a vector
# stage joined by bm25s, else a vector stage alone; else exhaustive).
DEFAULT_STAGES = ("fde+bm25s", "centroids+bm25s", "pooled+bm25s", "fde", "centroids", "pooled")


def parse_stage(name: str) -> tuple[str, ...]:
    """The parts of a first-stage name: ``()`` for exhaustive, ``("fde",)``, ``("fde", "bm25s")``.

    >>> parse_stage("fde+bm25s")
    ('fde', 'bm25s')
    """
    if name not in FIRST_STAGES:
        raise ConfigError(f"unknown first stage {name!r}; available: {', '.join(FIRST_STAGES)}.")
    return () if name == EXHAUSTIVE else tuple(name.split("+"))


def needs_vectors(stage: str) -> bool:
    """Whether the first stage ``stage`` reads encoded queries (exhaustive, the FDE, hybrids)."""
    parts = parse_stage(stage)
    return not parts or any(STAGES[p].reads == "vectors" for p in parts)


def needs_texts(stage: str) -> bool:
    """Whether the first stage ``stage`` reads the query texts (BM25, SPLADE, hybrids)."""
    return any(STAGES[p].reads == "text" for p in parse_stage(stage))


def stage_entry(name: str) -> Entry:
    if name not in STAGES:
        raise ConfigError(f"unknown first stage {name!r}; built stages are {', '.join(STAGES)} (hybrids such as fde+bm25s are searched, not built).")
    return STAGES[name]


def store_class(codec: str):
    if codec not in CODECS:
        raise ConfigError(f"unknown codec {codec!r}; available: {', '.join(CODECS)}.")
    return CODECS[codec].load()
