"""A LangChain retriever over mvr (extra ``mvr[langchain]``).

    >>> from mvr.integrations.langchain import MvrRetriever
    >>> retriever = MvrRetriever(index=mvr.open("scifact"), k=5)                          # doctest: +SKIP
    >>> retriever = MvrRetriever(url="http://127.0.0.1:8000", index_name="scifact", k=5)  # doctest: +SKIP
    >>> retriever.invoke("a question")[0].metadata["score"]                                # doctest: +SKIP

Each hit is a ``langchain_core.documents.Document``: ``page_content`` the document's text, ``id``
its mvr id, ``metadata`` its metadata fields plus ``id``, ``title`` and ``score``.
"""

from __future__ import annotations

import os
from typing import Any

from ..errors import QueryError, missing_extra
from . import Source, hit_metadata

try:
    from langchain_core.callbacks import CallbackManagerForRetrieverRun
    from langchain_core.documents import Document
    from langchain_core.retrievers import BaseRetriever
    from pydantic import ConfigDict, Field, PrivateAttr, field_serializer
except ImportError as error:
    raise missing_extra("mvr.integrations.langchain", "langchain", error) from None


class MvrRetriever(BaseRetriever):
    """mvr search as a LangChain retriever: ``index=`` an open :class:`mvr.Index` (or a name or
    path, under ``home=`` for a name), or ``url=`` + ``index_name=`` (+ ``api_key=``) of a ``mvr serve``. ``k`` hits per query;
    ``search_kwargs``: any option of :meth:`mvr.Index.search` (``first_stage``, ``filter``, ...)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    index: Any = None
    url: str | None = None
    index_name: str | None = None
    api_key: str | None = Field(default=None, repr=False, exclude=True)  # never in a dump (model_dump_json), as not in its repr
    home: Any = None
    k: int = 10
    search_kwargs: dict = Field(default_factory=dict)
    _source: Source = PrivateAttr()
    _made_of: tuple = PrivateAttr()  # the fields _source was made of

    def __init__(self, **data: Any):
        # checked, and the index opened, before pydantic sees the values: its ValidationError would wrap mvr's one line in several,
        # and it drops a keyword it does not know (home= was, so the index was looked for in ./indexes)
        unknown = sorted(set(data) - set(type(self).model_fields))
        if unknown:
            raise QueryError(f"MvrRetriever takes {', '.join(sorted(type(self).model_fields))}; not {', '.join(map(repr, unknown))}.")
        if data.get("search_kwargs") is None:
            data.pop("search_kwargs", None)
        source = Source(data.get("index"), url=data.get("url"), index_name=data.get("index_name"), api_key=data.get("api_key"), home=data.get("home"),
                        k=data.get("k", 10), search_kwargs=data.get("search_kwargs"))
        super().__init__(**data)
        self._source, self._made_of = source, self._naming()

    @field_serializer("index")
    def _index_as_path(self, index):
        """An open index dumped (model_dump, model_dump_json) as the path it was opened from."""
        return str(index.path) if hasattr(index, "path") and not isinstance(index, (str, os.PathLike)) else index

    def _naming(self) -> tuple:
        return self.index, self.url, self.index_name, self.api_key, self.home

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun, **options: Any) -> list[Document]:
        """``options`` (``invoke(query, k=5, filter=...)``): ``k`` and search options for this query, over the retriever's."""
        naming, made_of = self._naming(), getattr(self, "_made_of", None)  # None: made without __init__ (model_construct)
        if made_of is None or any(a is not b and a != b for a, b in zip(naming, made_of)):  # a field set since (retriever.index_name = ..., model_copy(update=...))
            self._source = Source(naming[0], url=self.url, index_name=self.index_name, api_key=self.api_key, home=self.home, k=self.k, search_kwargs=self.search_kwargs)
            self._made_of = naming
        k, options = self._source.options(options.pop("k", self.k), self.search_kwargs, options)
        hits = self._source.search(query, k, options)
        return [Document(page_content=hit["text"], id=hit["id"], metadata=hit_metadata(hit)) for hit in hits]
