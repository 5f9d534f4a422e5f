"""Retrievers for RAG frameworks, over an index open in this process or a ``mvr serve`` URL:
:mod:`mvr.integrations.langchain` (extra ``mvr[langchain]``) and
:mod:`mvr.integrations.llamaindex` (extra ``mvr[llamaindex]``). Both return what
:meth:`mvr.Index.search` returns: the same ids, in the same order, with the same scores."""

from __future__ import annotations

import os

from ..errors import QueryError, is_number, meant


class Source:
    """Where a retriever's hits come from: ``index`` (an :class:`mvr.Index`, or a name or path to
    open) or ``url`` + ``index_name`` of a server (``api_key``: default ``$MVR_API_KEY``)."""

    def __init__(self, index=None, *, url: str | None = None, index_name: str | None = None, api_key: str | None = None, home=None, k: int = 10, search_kwargs=None):
        if (index is None) == (url is None):
            raise QueryError("give a retriever either index=... (an open mvr.Index, a name or a path) or url=... with index_name=..., not both.")
        self.check_options(k, {} if search_kwargs is None else search_kwargs)
        if url is not None and not isinstance(url, str):
            raise QueryError(f"url is a server's address such as 'http://127.0.0.1:8000', got {type(url).__name__}.")
        for name, value in (("index_name", index_name), ("api_key", api_key)):  # checked even where unused: a framework's own check says it in many lines
            if value is not None and not isinstance(value, str):
                raise QueryError(f"{name} is text, got {type(value).__name__}.")
        if home is not None and not isinstance(home, (str, os.PathLike)):
            raise QueryError(f"home is the folder of indexes (a path), got {type(home).__name__}.")
        self.index = self.client = None
        if index is not None:
            from ..index import Index

            if not isinstance(index, (Index, str, os.PathLike)):
                raise QueryError(f"index= is an open mvr.Index, a name or a path, got {type(index).__name__}.")
            self.index = index if isinstance(index, Index) else Index.open(index, home=home)
            self.name = self.index.name
        else:
            if not index_name:
                raise QueryError(f"which index of the server at {url}? give index_name=... (`GET {url}/indexes` lists them).")
            from ..client import Client

            self.client = Client(url, api_key or os.environ.get("MVR_API_KEY") or None)
            self.name = index_name

    @staticmethod
    def check_options(k, options) -> None:
        """A retriever's ``k`` and search options, checked when given (names too), not at the first query."""
        import numpy as np

        from ..search import SearchOptions

        if not isinstance(options, dict):  # a retriever's search_kwargs, set since construction
            raise QueryError(f"search_kwargs is a dict of mvr.Index.search options such as {{'first_stage': 'fde'}}, got {type(options).__name__}.")
        if not (is_number(k, whole=True) or isinstance(k, np.integer)) or k < 1:  # (True was taken for 1)
            raise QueryError(f"a retriever's k is a positive integer, got {k!r}.")
        if {"k", "queries", "query"} & set(options):
            raise QueryError("search_kwargs holds the options of a search, not its query or k: give k=... to the retriever.")
        unknown = sorted(map(str, set(options) - set(SearchOptions.names())))
        if unknown:
            raise QueryError(f"unknown search option(s) {unknown} in search_kwargs{meant(unknown, SearchOptions.names())}; known: {', '.join(SearchOptions.names())}.")

    def options(self, k, given, extra: dict | None = None) -> tuple[int, dict]:
        """``k`` and the options of one query: a retriever's ``given`` (its search_kwargs) under
        this call's ``extra``, checked again (either may have been set since construction)."""
        options = {**given, **(extra or {})} if isinstance(given, dict) else given  # no dict: check_options says so
        Source.check_options(k, options)
        return int(k), options

    def search(self, query: str, k: int, options: dict | None = None) -> list[dict]:
        """The top-``k`` hits of ``query`` as ``{"id", "score", "title", "text", "metadata"}``."""
        if not isinstance(query, str):
            raise QueryError(f"a retriever's query is a string, got {type(query).__name__}.")
        if self.index is not None:
            self.index.refresh()
            return self.index.search(query, k=k, **(options or {})).to_dicts()[0]
        return self.client.search(self.name, query, k=k, **(options or {}))[0]


def hit_metadata(hit: dict, score: bool = True) -> dict:
    """A hit's metadata as a framework document carries it: the document's own fields, then
    mvr's ``id``, ``title`` and (``score``) ``score`` (which win over fields of the same name), and
    where there is one, the ``passage`` that matched and the ``explanation`` (search_kwargs
    explain=True)."""
    extra = {name: hit[name] for name in ("passage", "explanation") if name in hit}
    return {**hit["metadata"], "id": hit["id"], "title": hit["title"], **({"score": hit["score"]} if score else {}), **extra}
