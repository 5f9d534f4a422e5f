"""The LangChain and LlamaIndex retrievers, with the real packages, over an index in this process
and over ``mvr serve``: the same ids and scores as Index.search, in a small chain each (no LLM)."""

import asyncio
import re
import subprocess
import sys

import pytest

from mvr import Index, QueryError
from mvr.client import Client

from conftest import DOCS, QUERIES, dated_docs

TEXTS = [text for _, text, _ in QUERIES]


@pytest.fixture(scope="module")
def index(tmp_path_factory, default_encoder):
    return Index.build(dated_docs(), tmp_path_factory.mktemp("rag") / "docs", encoder=default_encoder, show_progress=False)


@pytest.fixture(scope="module")
def url(index, default_encoder):
    pytest.importorskip("fastapi")
    from mvr.server import background
    from mvr.server.catalog import Catalog

    with background(Catalog([index.path], model=default_encoder, concurrency=1), api_key="k3y") as url:
        yield url


def _expected(index, **options):
    results = index.search(TEXTS, k=3, **options)
    return [[(h.id, h.score) for h in hits] for hits in results]


@pytest.mark.parametrize("where", ["index", "url"])
def test_langchain_retriever_returns_what_search_returns(index, url, where):
    pytest.importorskip("langchain_core")
    from langchain_core.documents import Document
    from langchain_core.runnables import RunnableLambda

    from mvr.integrations.langchain import MvrRetriever

    source = {"index": index} if where == "index" else {"url": url, "index_name": "docs", "api_key": "k3y"}
    retriever = MvrRetriever(**source, k=3)
    got = [[(d.id, d.metadata["score"]) for d in retriever.invoke(text)] for text in TEXTS]
    assert got == _expected(index)
    first = retriever.invoke(TEXTS[0])[0]
    assert isinstance(first, Document) and first.id == "d1" and first.page_content == DOCS[0][2]
    assert first.metadata == {"year": 2019, "id": "d1", "title": "Cats", "score": got[0][0][1]}
    # a chain: retriever -> documents -> the context a prompt would get; batched, and async
    chain = retriever | RunnableLambda(lambda docs: "\n".join(f"[{d.id}] {d.page_content}" for d in docs))
    contexts = chain.batch(TEXTS[:2])
    assert contexts[0].startswith("[d1] Cats are small") and "[d5]" in contexts[1]
    assert [d.id for d in asyncio.run(retriever.ainvoke(TEXTS[1]))] == [i for i, _ in got[1]]
    filtered = MvrRetriever(**source, k=3, search_kwargs={"filter": {"year": {"$gte": 2021}}, "first_stage": "exhaustive"})
    assert [[(d.id, d.metadata["score"]) for d in filtered.invoke(t)] for t in TEXTS] == _expected(index, filter={"year": {"$gte": 2021}}, first_stage="exhaustive")


@pytest.mark.parametrize("where", ["index", "url"])
def test_llamaindex_retriever_returns_what_search_returns(index, url, where):
    pytest.importorskip("llama_index.core")
    from llama_index.core.llms import MockLLM
    from llama_index.core.postprocessor import SimilarityPostprocessor
    from llama_index.core.query_engine import RetrieverQueryEngine
    from llama_index.core.response_synthesizers.no_text import NoText
    from llama_index.core.schema import NodeWithScore, TextNode

    from mvr.integrations.llamaindex import MvrRetriever

    source = {"index": index} if where == "index" else {"url": url, "index_name": "docs", "api_key": "k3y"}
    retriever = MvrRetriever(**source, k=3)
    got = [[(n.node.id_, n.score) for n in retriever.retrieve(text)] for text in TEXTS]
    assert got == _expected(index)
    first = retriever.retrieve(TEXTS[0])[0]
    assert isinstance(first, NodeWithScore) and isinstance(first.node, TextNode) and first.node.text == DOCS[0][2]
    assert first.node.metadata == {"year": 2019, "id": "d1", "title": "Cats", "score": got[0][0][1]}
    # a query engine that retrieves, post-processes and synthesises nothing (no LLM is called)
    cutoff = got[1][1][1]
    engine = RetrieverQueryEngine(retriever, response_synthesizer=NoText(llm=MockLLM()), node_postprocessors=[SimilarityPostprocessor(similarity_cutoff=cutoff)])
    response = engine.query(TEXTS[1])
    assert [n.node.id_ for n in response.source_nodes] == [i for i, s in got[1] if s >= cutoff]
    assert [n.node.id_ for n in asyncio.run(retriever.aretrieve(TEXTS[1]))] == [i for i, _ in got[1]]


def test_the_client_and_the_sources_say_what_is_wrong(index, url):
    from mvr.integrations import Source

    with pytest.raises(QueryError, match="either index=... .* or url=..."):
        Source(index, url=url)
    with pytest.raises(QueryError, match="give index_name"):
        Source(url=url)
    with pytest.raises(QueryError, match="401: API key missing"):
        Client(url).search("docs", "tea")
    with pytest.raises(Exception, match="no index named 'nope'"):
        Client(url, "k3y").search("nope", "tea")
    with pytest.raises(Exception, match="cannot reach the mvr server at http://127.0.0.1:9"):
        Client("http://127.0.0.1:9").health()
    assert Client(url, "k3y").search("docs", TEXTS, k=3) == [[{**h, "score": s} for h, s in zip(hits, [x[1] for x in row])] for hits, row in zip(index.search(TEXTS, k=3).to_dicts(), _expected(index))]


def test_retrievers_refuse_bad_arguments_in_one_line(index):
    """Both retrievers: mvr's one-line error when made, not pydantic's several-line ValidationError
    around it, a TypeError from deep inside, k=True taken for 1, or a failure at the first query."""
    from llama_index.core.schema import QueryBundle

    from mvr.integrations.langchain import MvrRetriever as LangChainRetriever
    from mvr.integrations.llamaindex import MvrRetriever as LlamaIndexRetriever

    cases = [({}, "either index="), ({"index": 5}, "index= is an open mvr.Index"), ({"index": index, "k": True}, "k is a positive integer"), ({"index": index, "k": "x"}, "k is a positive integer"),
             ({"index": index, "k": 0}, "k is a positive integer"), ({"index": index, "search_kwargs": "abc"}, "search_kwargs is a dict"),
             ({"index": index, "search_kwargs": {"k": 3}}, "not its query or k"), ({"url": 5, "index_name": "a"}, "url is a server's address")]
    for kind in (LangChainRetriever, LlamaIndexRetriever):
        for arguments, message in cases:
            with pytest.raises(QueryError, match=re.escape(message)):
                kind(**arguments)
    retriever = LlamaIndexRetriever(index=index, k=2)
    for query in (b"tea", None, 5):
        with pytest.raises(QueryError, match="a retriever's query is a string"):
            retriever.retrieve(query)
        with pytest.raises(QueryError, match="a retriever's query is a string"):
            asyncio.run(retriever.aretrieve(query))
    assert [n.node.id_ for n in retriever.retrieve(QueryBundle("green tea"))] == [n.node.id_ for n in retriever.retrieve("green tea")]


@pytest.mark.parametrize("module, extra", [("langchain", "langchain"), ("llamaindex", "llamaindex"), ("server", "server")])
def test_a_missing_framework_names_the_pip_command(module, extra):
    blocked = {"langchain": "langchain_core", "llamaindex": "llama_index", "server": "fastapi"}[module]
    load = "from mvr.server import create_app; create_app(None)" if module == "server" else f"import mvr.integrations.{module}"
    code = f"import sys; sys.modules[{blocked!r}] = None\ntry:\n    {load}\nexcept ImportError as e:\n    print(type(e).__name__, e)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith("MissingExtraError") and f"pip install 'mvr[{extra}]'" in out
