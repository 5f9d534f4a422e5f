"""mvr: multi-vector (late-interaction) retrieval and reranking.

    >>> import mvr
    >>> index = mvr.Index.build(mvr.read_corpus("corpus.jsonl"), "my-index")   # doctest: +SKIP
    >>> mvr.Index.open("my-index").search("a question", k=10)[0]               # doctest: +SKIP

Nothing heavy happens at import: torch, transformers and Numba load when first used.
"""

__version__ = "0.1.0"

_EXPORTS = {
    "Index": "index",
    "Results": "results",
    "Hit": "results",
    "SearchOptions": "search",
    "IndexConfig": "config",
    "FDEConfig": "config",
    "Encoder": "encode",
    "TokenVectors": "encode",
    "Document": "corpus",
    "read_corpus": "corpus",
    "rerank": "reranking",
}
_ERRORS = (
    "MvrError",
    "ConfigError",
    "CorpusError",
    "DatasetError",
    "EncoderError",
    "EncoderMismatchError",
    "IndexExistsError",
    "IndexFormatError",
    "IndexLockedError",
    "IndexNotFoundError",
    "MissingExtraError",
    "QueryError",
    "StageError",
)

__all__ = sorted([*_EXPORTS, *_ERRORS, "open"])


def __getattr__(name):
    import importlib

    if name in _ERRORS:
        return getattr(importlib.import_module(".errors", __name__), name)
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'mvr' has no attribute {name!r}")


def open(name_or_path, **kwargs):  # noqa: A001 - mirrors Index.open for notebooks
    """Open an index by name or path: shorthand for :meth:`mvr.Index.open`."""
    from .index import Index

    return Index.open(name_or_path, **kwargs)
