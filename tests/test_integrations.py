"""The LangChain and LlamaIndex retrievers, with the real packages, over an index in this process
and over ``mvr serve``: the same ids and scores as Index.search, in a small chain each (no LLM)."""

import asyncio
import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest

from mvr import Index, QueryError
from mvr.client import Client, ServerError

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
    explained = MvrRetriever(**source, k=1, search_kwargs={"explain": True}).invoke(TEXTS[0])[0]  # the explanation was dropped on the way
    assert explained.metadata["explanation"] == index.search(TEXTS[0], k=1, explain=True).to_dicts()[0][0]["explanation"]


@pytest.mark.parametrize("where", ["index", "url"])
def test_llamaindex_retriever_returns_what_search_returns(index, url, where):
    pytest.importorskip("llama_index.core")
    from llama_index.core.llms import MockLLM
    from llama_index.core.postprocessor import SimilarityPostprocessor
    from llama_index.core.query_engine import RetrieverQueryEngine
    from llama_index.core.response_synthesizers.no_text import NoText
    from llama_index.core.retrievers import QueryFusionRetriever
    from llama_index.core.schema import MetadataMode, NodeWithScore, TextNode

    from mvr.integrations.llamaindex import MvrRetriever

    source = {"index": index} if where == "index" else {"url": url, "index_name": "docs", "api_key": "k3y"}
    retriever = MvrRetriever(**source, k=3)
    got = [[(n.node.id_, n.score) for n in retriever.retrieve(text)] for text in TEXTS]
    assert got == _expected(index)
    first = retriever.retrieve(TEXTS[0])[0]
    assert isinstance(first, NodeWithScore) and isinstance(first.node, TextNode) and first.node.text == DOCS[0][2]
    assert first.node.metadata == {"year": 2019, "id": "d1", "title": "Cats"}  # the score is the NodeWithScore's: LlamaIndex hashes metadata
    assert first.node.get_content(MetadataMode.LLM) == f"year: 2019\ntitle: Cats\n\n{DOCS[0][2]}"
    # LlamaIndex's fusion merges a document that two rankings found (by its node's hash): reciprocal ranks summed
    rankings = {stage: [i for i, _ in _expected(index, first_stage=stage)[0]] for stage in ("exhaustive", "bm25s")}
    fused = QueryFusionRetriever([MvrRetriever(**source, k=3, search_kwargs={"first_stage": stage}) for stage in rankings], llm=MockLLM(),
                                 mode="reciprocal_rerank", num_queries=1, similarity_top_k=3, use_async=False).retrieve(TEXTS[0])
    want = {}
    for ranking in rankings.values():
        for rank, doc in enumerate(ranking):
            want[doc] = want.get(doc, 0.0) + 1.0 / (60 + rank)  # LlamaIndex counts ranks from 0
    assert {n.node.id_: n.score for n in fused} == pytest.approx(dict(sorted(want.items(), key=lambda item: -item[1])[:3]))
    # a query engine that retrieves, post-processes and synthesises nothing (no LLM is called)
    cutoff = got[1][1][1]
    engine = RetrieverQueryEngine(retriever, response_synthesizer=NoText(llm=MockLLM()), node_postprocessors=[SimilarityPostprocessor(similarity_cutoff=cutoff)])
    response = engine.query(TEXTS[1])
    assert [n.node.id_ for n in response.source_nodes] == [i for i, s in got[1] if s >= cutoff]
    assert [n.node.id_ for n in asyncio.run(retriever.aretrieve(TEXTS[1]))] == [i for i, _ in got[1]]
    explained = MvrRetriever(**source, k=1, search_kwargs={"explain": True}).retrieve(TEXTS[0])[0]
    assert explained.node.metadata["explanation"]["maxsim"] == pytest.approx(explained.score, abs=1e-4)


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
    kept = Client(url, "k3y")  # one kept-alive connection for many requests (reading an answer by pieces once left it unusable)
    assert [kept.search("docs", text, k=1)[0][0]["id"] for text in TEXTS] == [hits[0][0] for hits in _expected(index)]
    socket = kept._local.connection.sock
    assert kept.health()["status"] == "ok" and kept._local.connection.sock is socket
    assert Client(url, "k3y").search("docs", TEXTS, k=3) == [[{**h, "score": s} for h, s in zip(hits, [x[1] for x in row])] for hits, row in zip(index.search(TEXTS, k=3).to_dicts(), _expected(index))]


def test_retrievers_refuse_bad_arguments_in_one_line(index):
    """Both retrievers: mvr's one-line error when made, not pydantic's several-line ValidationError
    around it, a TypeError from deep inside, k=True taken for 1, or a failure at the first query."""
    from llama_index.core.schema import QueryBundle

    from mvr.integrations.langchain import MvrRetriever as LangChainRetriever
    from mvr.integrations.llamaindex import MvrRetriever as LlamaIndexRetriever

    cases = [({}, "either index="), ({"index": 5}, "index= is an open mvr.Index"), ({"index": index, "k": True}, "k is a positive integer"), ({"index": index, "k": "x"}, "k is a positive integer"),
             ({"index": index, "k": 0}, "k is a positive integer"), ({"index": index, "search_kwargs": "abc"}, "search_kwargs is a dict"),
             ({"index": index, "search_kwargs": {"k": 3}}, "not its query or k"), ({"url": 5, "index_name": "a"}, "url is a server's address"),
             ({"index": index, "search_kwargs": {"filters": {"year": 2019}}}, "unknown search option(s) ['filters'] in search_kwargs (filters: did you mean filter?); known: candidates"),
             # pydantic's several lines, for values the source did not use (index= given) or checked only when used
             ({"index": index, "api_key": 5}, "api_key is text, got int"), ({"url": "http://127.0.0.1:1", "index_name": 5}, "index_name is text, got int"),
             ({"index": "docs", "home": 5}, "home is the folder of indexes")]
    with pytest.raises(QueryError, match="not 'kk'"):  # pydantic dropped a keyword it did not know (home= was, then)
        LangChainRetriever(index=index, kk=3)
    for kind in (LangChainRetriever, LlamaIndexRetriever):
        assert kind(index=index, search_kwargs=None).search_kwargs == {}  # LangChain's field refused None where LlamaIndex took it
        # a name under home=: LangChain dropped home= and opened ./indexes/NAME (another index, or none)
        assert [h.id for h in LangChainRetriever(index="docs", home=index.path.parent, k=1).invoke("which animal purrs?")] == ["d1"]
        assert [n.node.id_ for n in LlamaIndexRetriever(index="docs", home=str(index.path.parent), k=1).retrieve("which animal purrs?")] == ["d1"]
        for arguments, message in cases:
            with pytest.raises(QueryError, match=re.escape(message)):
                kind(**arguments)
    assert len(LangChainRetriever(index=index, k=np.int64(2)).invoke("tea")) == len(LlamaIndexRetriever(index=index, k=np.int64(2)).retrieve("tea")) == 2
    retriever = LlamaIndexRetriever(index=index, k=2)
    for changed, message in (({"k": 5}, "not its query or k"), (["x"], "search_kwargs is a dict"), ({"filters": {}}, "unknown search option(s) ['filters']")):
        retriever.search_kwargs = changed  # set since construction: checked at the query, as LangChain's is
        with pytest.raises(QueryError, match=re.escape(message)):
            retriever.retrieve("tea")
    retriever.search_kwargs = {}
    for query in (b"tea", None, 5):
        with pytest.raises(QueryError, match="a retriever's query is a string"):
            retriever.retrieve(query)
        with pytest.raises(QueryError, match="a retriever's query is a string"):
            asyncio.run(retriever.aretrieve(query))
    assert [n.node.id_ for n in retriever.retrieve(QueryBundle("green tea"))] == [n.node.id_ for n in retriever.retrieve("green tea")]


def test_a_langchain_retriever_follows_its_fields_and_takes_k_per_call(index, url, tmp_path, default_encoder):
    """Fields set after construction (an assignment, model_copy(update=...)) were ignored: the
    retriever kept searching the index and server it was made with; invoke(query, k=...) and
    search options per call were dropped; a retriever of a server could not be copied."""
    pytest.importorskip("langchain_core")
    import copy
    import pickle

    from mvr.integrations.langchain import MvrRetriever

    other = Index.build([{"id": "o1", "text": "green tea leaves"}, {"id": "o2", "text": "black tea"}], tmp_path / "other", encoder=default_encoder, show_progress=False)
    retriever = MvrRetriever(index=index, k=1)
    assert [d.id for d in retriever.invoke("green tea")] != ["o1"]
    retriever.index = other
    assert [d.id for d in retriever.invoke("green tea")] == ["o1"]
    moved = retriever.model_copy(update={"index": index})
    assert [d.id for d in moved.invoke("which animal purrs?")] == ["d1"] and [d.id for d in retriever.invoke("green tea")] == ["o1"]
    assert len(retriever.invoke("tea", k=2)) == 2 and len(retriever.invoke("tea")) == 1
    expected = [h.id for h in index.search("tea", k=3, filter={"year": {"$gte": 2021}})[0]]
    assert [d.id for d in moved.invoke("tea", k=3, filter={"year": {"$gte": 2021}})] == expected
    for options, message in (({"k": 0}, "k is a positive integer"), ({"queries": ["x"]}, "not its query or k")):
        with pytest.raises(QueryError, match=message):
            moved.invoke("tea", **options)
    for kwargs, message in (({"k": 3}, "not its query or k"), (None, "search_kwargs is a dict")):  # set after construction: a TypeError from inside
        moved.search_kwargs = kwargs
        with pytest.raises(QueryError, match=message):
            moved.invoke("tea")
    moved.search_kwargs = {}
    deep = moved.model_copy(deep=True)  # a deep copy of a retriever over an open index: "cannot pickle '_thread.lock'"
    assert deep.index is not moved.index and [d.id for d in deep.invoke("tea", k=3)] == [d.id for d in moved.invoke("tea", k=3)]
    served = MvrRetriever(url=url, index_name="docs", api_key="k3y", k=2)
    for twin in (pickle.loads(pickle.dumps(served)), copy.deepcopy(served)):
        assert [d.id for d in twin.invoke("tea")] == [d.id for d in served.invoke("tea")]
    # pydantic's other ways: a dump names an open index by its path and leaves the API key out; a retriever made without __init__ searches
    assert json.loads(moved.model_dump_json())["index"] == str(index.path) and "k3y" not in served.model_dump_json()
    constructed = MvrRetriever.model_construct(index=str(index.path), k=1)
    assert [d.id for d in constructed.invoke("which animal purrs?")] == ["d1"]
    served.api_key = "wrong"
    with pytest.raises(QueryError, match="401"):
        served.invoke("tea")


def test_an_async_retrieval_leaves_the_event_loop_free(index):
    """LlamaIndex's aretrieve ran the search on the event loop: every other task stalled for it.
    Here the search waits for a task of the loop, which could never run then."""
    import threading

    from mvr.integrations.langchain import MvrRetriever as LangChainRetriever
    from mvr.integrations.llamaindex import MvrRetriever as LlamaIndexRetriever

    for retriever, call in ((LlamaIndexRetriever(index=index, k=2), "aretrieve"), (LangChainRetriever(index=index, k=2), "ainvoke")):
        searched, freed = threading.Event(), threading.Event()
        search = retriever._source.search

        def waiting(*args):
            searched.set()
            assert freed.wait(10), "the event loop was blocked while the search ran"
            return search(*args)

        retriever._source.search = waiting

        async def free():
            while not searched.is_set():
                await asyncio.sleep(0.01)
            freed.set()

        async def both():
            return await asyncio.gather(getattr(retriever, call)("green tea"), free())

        assert len(asyncio.run(both())[0]) == 2


@pytest.mark.parametrize("module, extra", [("langchain", "langchain"), ("llamaindex", "llamaindex"), ("server", "server")])
def test_a_missing_framework_names_the_pip_command(module, extra):
    blocked = {"langchain": "langchain_core", "llamaindex": "llama_index", "server": "fastapi"}[module]
    load = "from mvr.server import create_app; create_app(None)" if module == "server" else f"import mvr.integrations.{module}"
    code = f"import sys; sys.modules[{blocked!r}] = None\ntry:\n    {load}\nexcept ImportError as e:\n    print(type(e).__name__, e)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith("MissingExtraError") and f"pip install 'mvr[{extra}]'" in out


DRIPPED: list = []  # the bytes the dripping server sent of its last answer
HUNG: list = []  # the requests the server hung up on


@pytest.fixture(scope="module")
def stranger():
    """A web server on 127.0.0.1 that is not mvr serve: the first path segment picks its answer."""
    import http.server
    import threading

    answers = {"html": (200, "text/html", b"<html>hello</html>"), "list": (200, "application/json", b"[1, 2]"), "empty": (200, None, b""),
               "redirect": (302, None, b""), "nested": (200, "application/json", b"[" * 100_000), "object": (200, "application/json", b'{"status": "ok"}'),
               "short": (200, "application/json", b'{"results": [[]]}'), "text": (200, "application/json", b'{"results": "abc"}'),
               "gateway": (502, "text/html", b"<html>\n<h1>bad gateway</h1>\n</html>"), "missing": (404, "text/html", b"<!DOCTYPE HTML>\n<html><body>Not Found</body></html>"),
               "extra": (501, "application/json", b'{"detail": "the bm25 stage needs Lucene: pip install \'mvr[lucene]\'"}')}

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path.startswith("/headdrip/"):  # the headers a byte every 0.1 s: no single read waits long
                for byte in b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}":
                    try:
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                    except OSError:
                        return
                    time.sleep(0.1)
                return
            if self.path.startswith("/hangup/"):  # the request read, the connection closed unanswered (a server killed mid-request)
                HUNG.append(f"{self.command} {self.path}")
                self.close_connection = True
                return
            if self.path.startswith("/cut/"):  # a server that stops part way through its answer
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "100")
                self.end_headers()
                self.wfile.write(b'{"a": 1}')
                self.close_connection = True
                return
            if self.path.startswith("/drip/"):  # a byte every 0.1 s: each receive is quick, the whole is not
                body = b'{"status": "' + b"x" * 28 + b'"}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                DRIPPED.clear()
                for byte in body:
                    try:
                        self.wfile.write(bytes([byte]))
                    except OSError:  # the client went away
                        return
                    DRIPPED.append(byte)
                    time.sleep(0.1)
                return
            status, kind, body = answers[self.path.split("/")[1]]
            self.send_response(status)
            if kind:
                self.send_header("Content-Type", kind)
            if status == 302:
                self.send_header("Location", "/elsewhere")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_POST = do_DELETE = do_GET

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_the_client_refuses_a_bad_url_timeout_or_key_when_made():
    """Each bad argument: mvr's one-line QueryError at construction, not a ValueError, TypeError,
    AttributeError or UnicodeEncodeError at the first request."""
    for url in ("http://127.0.0.1:99999", "http://127.0.0.1:abc", "http://127.0.0.1:0", "http://[::1:80", "ftp://127.0.0.1:1", "127.0.0.1:8000", "http://", "", "http://127.0.0.1:80/a b", 8000, None, b"http://127.0.0.1:80"):
        with pytest.raises(QueryError, match=r"^a server URL looks like http://127\.0\.0\.1:8000"):
            Client(url)
    for timeout in (-1, 0, float("nan"), float("inf"), 1e10, "5", None, True):
        with pytest.raises(QueryError, match="a client's timeout is a positive number of seconds"):
            Client("http://127.0.0.1:8000", timeout=timeout)
    for key, message in (("abc\n", "without control characters"), ("a\tb", "without control characters"), ("\x00", "without control characters"),
                         (b"k3y", "an API key is text, got bytes"), (5, "an API key is text, got int"), ("\ud800", "that UTF-8 can encode")):
        with pytest.raises(QueryError, match=message) as caught:
            Client("http://127.0.0.1:8000", key)
        assert "$MVR_API_KEY" in str(caught.value) and (not isinstance(key, str) or key not in str(caught.value))  # the key itself is not shown
    assert Client("http://[::1]:8000/mvr/", "ключ", timeout=2.5).url == "http://[::1]:8000/mvr"


def test_the_client_says_when_the_url_is_not_an_mvr_server(stranger):
    """A 200 that is not the JSON object the route promises (HTML, a list, nothing, a redirect,
    JSON without "results"): one line that says to check the URL, not a KeyError or TypeError."""
    client = Client(stranger)
    for route, what in (("html", "HTTP 200, text/html"), ("list", "HTTP 200, application/json"), ("empty", "HTTP 200, no content type"),
                        ("redirect", "HTTP 302, a redirect to '/elsewhere'"), ("nested", "HTTP 200, application/json"),
                        ("object", "HTTP 200, JSON without the 'results' list"), ("text", "HTTP 200, JSON without the 'results' list")):
        with pytest.raises(ServerError, match=re.escape(f"{stranger}/{route}: answered with something that is not an mvr server's reply ({what}") + r".*; check the URL\.$"):
            Client(f"{stranger}/{route}").search("docs", "tea")
    with pytest.raises(ServerError, match="JSON without the 'results' list"):
        Client(f"{stranger}/short").search("docs", ["tea", "cats"])  # one list of hits for two queries
    with pytest.raises(ServerError, match="JSON without the 'indexes' list"):
        Client(f"{stranger}/object").indexes()
    with pytest.raises(ServerError, match="not an mvr server's reply"):
        Client(f"{stranger}/html").health()
    # an error page of another server (a proxy's 502, another service's 404) was shown as raw HTML
    with pytest.raises(ServerError, match=r": 502 Bad Gateway, not from mvr serve \(its errors are JSON with a 'detail'; this is text/html\): check the URL, or the proxy in front of the server\.$"):
        client.request("GET", "/gateway")
    with pytest.raises(ServerError, match=r": 404 Not Found, not from mvr serve") as caught:  # not IndexNotFoundError: no index was asked of mvr
        Client(f"{stranger}/missing").search("docs", "tea")
    assert "<" not in str(caught.value)
    with pytest.raises(QueryError, match="is sent as JSON"):
        client.search("docs", "tea", filter={"year": b"2019"})
    # the timeout bounds the whole answer: one dripped a byte at a time kept a client of timeout=1 waiting for all of it
    with pytest.raises(ServerError, match=r"^the mvr server at .*/drip did not answer within 1 s \(the client's timeout\): it may still be working\.$"):
        Client(f"{stranger}/drip", timeout=1).health()
    assert len(DRIPPED) < 30  # gave up part way (about 10 bytes in), not once the 42 bytes were all there
    started = time.monotonic()  # the headers too (each read was given the time left, and each byte came well within it)
    with pytest.raises(ServerError, match=r"did not answer within 1 s .*: it may still be working\. The add or delete may have been applied"):
        Client(f"{stranger}/headdrip", timeout=1).delete("docs", ["a"])
    assert time.monotonic() - started < 3
    assert Client(f"{stranger}/headdrip", timeout=30).health() == {}
    from mvr import MissingExtraError

    with pytest.raises(MissingExtraError, match=r": 501: the bm25 stage needs Lucene: pip install 'mvr\[lucene\]'$"):  # as the library raises it
        Client(f"{stranger}/extra").search("docs", "tea")
    with pytest.raises(ServerError, match=r"stopped part way through its answer \(8 bytes of 100\)"):  # was taken as the whole answer
        Client(f"{stranger}/cut").health()
    assert Client(f"{stranger}/drip", timeout=30).health() == {"status": "x" * 28}
    # a new connection closed with the request unanswered: an add was sent again on another, and the error did not say it may have landed
    HUNG.clear()
    with pytest.raises(ServerError, match=r"is `mvr serve` running there\? The add or delete may have been applied all the same"):
        Client(f"{stranger}/hangup").add("docs", [{"id": "a", "text": "x"}])
    with pytest.raises(ServerError, match=r"running there\?$"):  # a search changes nothing
        Client(f"{stranger}/hangup").search("docs", "tea")
    assert HUNG == ["POST /hangup/indexes/docs/documents", "POST /hangup/indexes/docs/search"]  # each sent once


def test_a_key_beyond_latin1_reaches_the_server_as_utf8(index, default_encoder, stranger, monkeypatch, capsys):
    """`mvr serve --api-key ключ` takes the key's UTF-8 bytes; the client sends those bytes (not a
    UnicodeEncodeError), and so does `mvr search` with MVR_API_KEY=ключ. --server errors are one line."""
    pytest.importorskip("fastapi")
    from mvr.cli import main
    from mvr.server import background
    from mvr.server.catalog import Catalog

    with background(Catalog([index.path], model=default_encoder, concurrency=1), api_key="ключ") as url:
        assert Client(url, "ключ").search("docs", TEXTS, k=3) == Client(url, "ключ").search_raw("docs", TEXTS, k=3)["results"]
        with pytest.raises(QueryError, match=": 401: "):
            Client(url, "ключи").search("docs", "tea")
        monkeypatch.setenv("MVR_API_KEY", "ключ")
        capsys.readouterr()
        assert main(["search", str(index.path), TEXTS[0], "-k", "3", "--server", url, "--json"]) == 0
        assert [h["id"] for h in json.loads(capsys.readouterr().out)["hits"]] == [i for i, _ in _expected(index)[0]]
    for server, message in (("http://127.0.0.1:99999", "a port from 1 to 65535"), ("http://127.0.0.1:abc", "a port from 1 to 65535"), ("", "a server URL looks like"),
                            (f"{stranger}/html", "not an mvr server's reply (HTTP 200, text/html); check the URL.")):
        assert main(["search", str(index.path), "tea", "--server", server]) == 2
        err = capsys.readouterr().err
        assert err.startswith("mvr: error: ") and message in err and err.count("\n") == 1, err
    monkeypatch.setenv("MVR_API_KEY", "k\n")
    assert main(["search", str(index.path), "tea", "--server", "http://127.0.0.1:8000"]) == 2
    assert "without control characters" in capsys.readouterr().err


def test_find_server_passes_over_damaged_notes(tmp_path, monkeypatch):
    """Notes that are not what register writes (a list of indexes, a number for a URL, a pid past
    what os.kill takes): skipped, not a traceback in every `mvr search`; a good note still counts."""
    from mvr.client import find_server, register

    monkeypatch.setenv("MVR_RUNTIME_DIR", str(tmp_path / "runtime"))
    target = tmp_path / "docs"
    register("http://127.0.0.1:8000", {}, None, False)  # makes the folder; serves nothing
    damaged = [[1], {"pid": os.getpid(), "url": 5, "indexes": {"docs": str(target)}}, {"pid": os.getpid(), "url": "http://127.0.0.1:1", "indexes": [str(target)]},
               {"pid": os.getpid(), "url": "http://127.0.0.1:1", "indexes": {"docs": 5}}, {"pid": 10**30, "url": "http://127.0.0.1:1", "indexes": {}},
               {"pid": os.getpid(), "url": "http://127.0.0.1:1", "home": 5}, {"pid": -1, "url": "http://127.0.0.1:1"}]
    for number, record in enumerate(damaged):
        (tmp_path / "runtime" / f"0{number}.json").write_text(json.dumps(record))
    assert find_server(target) is None
    (tmp_path / "runtime" / "zz.json").write_text(json.dumps({"pid": os.getpid(), "url": "http://127.0.0.1:2", "indexes": {"mine": str(target)}}))
    assert find_server(target) == ("http://127.0.0.1:2", "mine", None)
