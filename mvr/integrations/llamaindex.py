"""A LlamaIndex retriever over mvr (extra ``mvr[llamaindex]``).

    >>> from mvr.integrations.llamaindex import MvrRetriever
    >>> retriever = MvrRetriever(index=mvr.open("scifact"), k=5)                          # doctest: +SKIP
    >>> retriever = MvrRetriever(url="http://127.0.0.1:8000", index_name="scifact", k=5)  # doctest: +SKIP
    >>> retriever.retrieve("a question")[0].score                                          # doctest: +SKIP

Each hit is a ``NodeWithScore`` whose node is a ``TextNode``: ``id_`` the document's mvr id,
``text`` its text, ``metadata`` its metadata fields plus ``id`` and ``title`` (the score is the
``NodeWithScore``'s alone: see ``_node``).
"""

from __future__ import annotations

import asyncio

from ..errors import QueryError, missing_extra
from . import Source, hit_metadata

try:
    from llama_index.core.retrievers import BaseRetriever
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
except ImportError as error:
    raise missing_extra("mvr.integrations.llamaindex", "llamaindex", error) from None


class MvrRetriever(BaseRetriever):
    """mvr search as a LlamaIndex retriever: ``index=`` an open :class:`mvr.Index` (or a name or
    path, under ``home=`` for a name), or ``url=`` + ``index_name=`` (+ ``api_key=``) of a ``mvr serve``. ``k`` hits per query;
    ``search_kwargs``: any option of :meth:`mvr.Index.search` (``first_stage``, ``filter``, ...)."""

    def __init__(self, index=None, *, url: str | None = None, index_name: str | None = None, api_key: str | None = None, home=None, k: int = 10,
                 search_kwargs: dict | None = None, callback_manager=None, verbose: bool = False):
        self._source = Source(index, url=url, index_name=index_name, api_key=api_key, home=home, k=k, search_kwargs=search_kwargs)
        self.k = k
        self.search_kwargs = dict(search_kwargs or {})
        super().__init__(callback_manager=callback_manager, verbose=verbose)

    def retrieve(self, str_or_query_bundle):
        return super().retrieve(_checked(str_or_query_bundle))

    async def aretrieve(self, str_or_query_bundle):
        return await super().aretrieve(_checked(str_or_query_bundle))

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        # in a thread: LlamaIndex's own runs the search on the event loop, which stalls every other task for its whole length
        return await asyncio.to_thread(self._retrieve, query_bundle)

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        hits = self._source.search(query_bundle.query_str, *self._source.options(self.k, self.search_kwargs))
        return [NodeWithScore(node=_node(hit), score=hit["score"]) for hit in hits]


def _node(hit: dict) -> TextNode:
    """A hit as a LlamaIndex node. Its score stays out of the metadata: LlamaIndex tells nodes
    apart by a hash of text and metadata (its fusion retriever merges the same document found by
    several queries by it), and a node's metadata goes into its prompts; mvr's id, passage id and
    explanation stay out of the prompts and of what is embedded."""
    metadata = hit_metadata(hit, score=False)
    hidden = [key for key in ("id", "passage", "explanation") if key in metadata]
    return TextNode(id_=hit["id"], text=hit["text"], metadata=metadata, excluded_llm_metadata_keys=hidden, excluded_embed_metadata_keys=hidden)


def _checked(query):
    if not isinstance(query, (str, QueryBundle)):  # LlamaIndex fails on them inside, with an AttributeError or its ValidationError
        raise QueryError(f"a retriever's query is a string or a QueryBundle, got {type(query).__name__}.")
    return query
