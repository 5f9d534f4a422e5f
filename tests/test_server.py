"""``mvr serve`` answering real HTTP requests (httpx against uvicorn on a free loopback port): the
same results as in-process search, writes through the index's writer, limits, keys, and bad
requests that each get a 4xx with a message and leave the server and the index whole."""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from mvr import Index  # noqa: E402
from mvr.errors import ConfigError, IndexFormatError  # noqa: E402
from mvr.server import Limits, background  # noqa: E402
from mvr.server.catalog import Catalog  # noqa: E402
from mvr.storage.validate import verify_files  # noqa: E402

from conftest import DOCS, QUERIES, YEARS  # noqa: E402



@pytest.fixture(scope="module")
def home(tmp_path_factory, default_encoder):
    home = tmp_path_factory.mktemp("served")
    docs = [{"id": i, "title": t, "text": x, "metadata": {"year": YEARS[i], "topic": "animals" if i in ("d1", "d2") else "other"}} for i, t, x in DOCS]
    Index.build(docs, home / "docs", encoder=default_encoder, show_progress=False)
    return home


@pytest.fixture(scope="module")
def server(home, default_encoder):
    catalog = Catalog(["docs"], home, model=default_encoder, concurrency=2)
    with background(catalog) as url, httpx.Client(base_url=url, timeout=60) as client:
        yield client, catalog


@pytest.mark.parametrize(
    "options",
    [
        {}, {"first_stage": "exhaustive"}, {"first_stage": "fde", "candidates": 4}, {"first_stage": "bm25s", "rerank": False}, {"filter": {"year": {"$gte": 2021}}},
        {"first_stage": "fde+bm25s", "candidates": 6, "fusion": "weighted", "weights": {"maxsim": 0.6, "bm25s": 0.4}}, {"preset": "none"},
        {"first_stage": "exhaustive", "prf": "colbert"},
    ],
)
def test_search_over_http_answers_what_search_in_process_does(server, home, default_encoder, options):
    client, _ = server
    texts = [text for _, text, _ in QUERIES]
    expected = Index.open(home / "docs", model=default_encoder).search(texts, k=3, **options)
    reply = client.post("/indexes/docs/search", json={"query": texts, "k": 3, **options})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert [[h["id"] for h in hits] for hits in body["results"]] == expected.doc_ids
    for hits, scores in zip(body["results"], expected.scores):  # float32 scores survive JSON exactly
        assert np.array_equal(np.array([h["score"] for h in hits], dtype=np.float32), scores[: len(hits)])
    first = body["results"][0][0]
    assert set(first) == {"id", "score", "title", "text", "metadata"} and first["metadata"]["year"] == YEARS[first["id"]]
    if "filter" in options:
        assert all(h["metadata"]["year"] >= 2021 for hits in body["results"] for h in hits)
    single = client.post("/indexes/docs/search", json={"query": texts[0], "k": 3, **options}).json()
    assert single["results"] == body["results"][:1] and set(single["timings_ms"]) >= {"encode"}


def test_routes_list_describe_and_measure(server):
    client, _ = server
    assert client.get("/healthz").json()["status"] == "ok"
    listed = client.get("/indexes").json()["indexes"]
    assert [i["name"] for i in listed] == ["docs"] and listed[0]["documents"] == len(DOCS)
    assert listed[0]["metadata_fields"] == {"year": "number", "topic": "string"}
    info = client.get("/indexes/docs").json()
    assert info["info"]["documents"] == len(DOCS) and info["default_stage"] == "fde+bm25s"
    schema = client.get("/openapi.json").json()
    assert {"/healthz", "/indexes", "/indexes/{name}", "/indexes/{name}/search", "/indexes/{name}/documents"} <= set(schema["paths"])
    assert set(schema["paths"]["/indexes/{name}/documents"]) == {"post", "delete"}
    client.post("/indexes/docs/search", json={"query": "tea", "k": 1})
    metrics = client.get("/metrics").text
    assert 'mvr_http_requests_total{method="POST",route="/indexes/{name}/search",status="200"}' in metrics
    assert 'mvr_search_stage_seconds_count{index="docs",stage="rerank"}' in metrics
    assert f'mvr_index_documents{{index="docs"}} {float(len(DOCS))}' in metrics
    page = client.get("/")
    assert page.status_code == 200 and "<form" in page.text and page.headers["content-type"].startswith("text/html")


def test_add_upsert_and_delete_over_http(server):
    client, _ = server
    new = [{"id": "n1", "text": "Koalas sleep up to twenty hours a day in eucalyptus trees.", "metadata": {"year": 2025, "topic": "animals"}}]
    done = client.post("/indexes/docs/documents", json={"documents": new})
    assert done.status_code == 200 and done.json()["added"] == 1, done.text
    hit = client.post("/indexes/docs/search", json={"query": "which animal sleeps in eucalyptus", "k": 1}).json()["results"][0][0]
    assert hit["id"] == "n1" and hit["metadata"] == {"year": 2025, "topic": "animals"}
    again = client.post("/indexes/docs/documents", json={"documents": new})
    assert again.status_code == 400 and "n1" in again.json()["detail"]
    replaced = client.post("/indexes/docs/documents", json={"documents": [{**new[0], "text": "Koalas eat eucalyptus leaves."}], "upsert": True})
    assert replaced.json()["replaced"] == 1
    gone = client.request("DELETE", "/indexes/docs/documents", json={"ids": ["n1", "never-there"]})
    assert gone.status_code == 200 and gone.json()["deleted"] == 1 and gone.json()["missing"] == ["never-there"]
    ids = [h["id"] for h in client.post("/indexes/docs/search", json={"query": "koala eucalyptus", "k": 8}).json()["results"][0]]
    assert "n1" not in ids and len(ids) == len(DOCS)


def test_the_client_sends_one_id_as_one_and_refuses_what_it_would_misread(server):
    """Client.delete("doc1") deleted the documents "d", "o", "c" and "1" (a string taken as a list
    of ids); a dict, set, bytes or None as the queries, ids or documents was sent as what iterating
    it gives, or failed with a TypeError; query= in the options replaced the query asked."""
    from mvr import QueryError
    from mvr.client import Client

    http, _ = server
    client = Client(str(http.base_url))
    added = client.add("docs", [{"id": x, "text": f"short document {x} about tea"} for x in ("d", "o", "c", "1", "doc1")])
    assert added["added"] == 5
    gone = client.delete("docs", "doc1")
    assert gone["deleted"] == 1 and gone["missing"] == []
    left = {h["id"] for h in client.search("docs", "short document about tea", k=20, first_stage="exhaustive")[0]}
    assert {"d", "o", "c", "1"} <= left and "doc1" not in left
    for call, match in ((lambda: client.delete("docs", None), "ids must be a document id or a list of them, got NoneType"),
                        (lambda: client.delete("docs", {"d": 1}), "got dict"), (lambda: client.add("docs", {"id": "x", "text": "y"}), r"documents are a list of objects .*got dict \(one alone: pass \[it\]\)"),
                        (lambda: client.add("docs", None), "got NoneType"), (lambda: client.search("docs", {"tea": 1, "cats": 2}), "queries are a string or a list of strings, got dict"),
                        (lambda: client.search("docs", {"tea"}), "got set"), (lambda: client.search("docs", b"tea"), "decode bytes to str first"),
                        (lambda: client.search("docs", None), "got NoneType"), (lambda: client.search("docs", 5), "got int"),
                        (lambda: client.search(None, "tea"), "an index is named by a non-empty string"), (lambda: client.info("\ud800"), "UTF-8 can encode"),
                        (lambda: client.search("docs", "tea", query="cats"), "not as query="),
                        (lambda: client.search("docs", "tea", threads=2), r"threads are the server's to set \(mvr serve --threads\)")):
        with pytest.raises(QueryError, match=match):
            call()
    assert client.delete("docs", ("d", "o"))["deleted"] == 2 and client.delete("docs", {"c", "1"})["deleted"] == 2  # any collection of ids, as Index.delete
    import pickle

    copy = pickle.loads(pickle.dumps(client))  # a retriever holding a client is copied by frameworks
    assert copy.search("docs", "tea", k=1) == client.search("docs", "tea", k=1)


# (what is sent, the status expected): each gets a message, none reaches a traceback
BAD = [
    ("malformed JSON", "POST", "/indexes/docs/search", b'{"query": ', None, 400),
    ("not UTF-8", "POST", "/indexes/docs/search", b'{"query": "\xff\xfe"}', None, 400),
    ("a list, not an object", "POST", "/indexes/docs/search", b"[1, 2]", None, 422),
    ("no query", "POST", "/indexes/docs/search", b'{"k": 3}', None, 422),
    ("k as a string", "POST", "/indexes/docs/search", b'{"query": "x", "k": "3"}', None, 422),
    ("query as a number", "POST", "/indexes/docs/search", b'{"query": 7}', None, 422),
    ("unknown option", "POST", "/indexes/docs/search", b'{"query": "x", "bogus": 1}', None, 422),
    ("weights as a list", "POST", "/indexes/docs/search", b'{"query": "x", "fusion": "weighted", "weights": [1, 2]}', None, 422),
    ("a weight as a string", "POST", "/indexes/docs/search", b'{"query": "x", "fusion": "weighted", "weights": {"maxsim": "1"}}', None, 422),
    ("unknown signal", "POST", "/indexes/docs/search", b'{"query": "x", "fusion": "weighted", "weights": {"clicks": 1}}', None, 400),
    ("unknown preset", "POST", "/indexes/docs/search", b'{"query": "x", "preset": "best"}', None, 400),
    ("k = 0", "POST", "/indexes/docs/search", b'{"query": "x", "k": 0}', None, 400),
    ("k over the limit", "POST", "/indexes/docs/search", b'{"query": "x", "k": 5000}', None, 400),
    ("candidates over the limit", "POST", "/indexes/docs/search", b'{"query": "x", "candidates": 100000}', None, 400),
    ("unknown first stage", "POST", "/indexes/docs/search", b'{"query": "x", "first_stage": "nope"}', None, 400),
    ("stage not built", "POST", "/indexes/docs/search", b'{"query": "x", "first_stage": "splade"}', None, 400),
    ("filter on a missing field", "POST", "/indexes/docs/search", b'{"query": "x", "filter": {"nope": 1}}', None, 400),
    ("filter of the wrong type", "POST", "/indexes/docs/search", b'{"query": "x", "filter": {"year": "soon"}}', None, 400),
    ("empty batch", "POST", "/indexes/docs/search", b'{"query": []}', None, 400),
    ("batch over the limit", "POST", "/indexes/docs/search", json.dumps({"query": ["x"] * 200}).encode(), None, 400),
    ("query over the limit", "POST", "/indexes/docs/search", json.dumps({"query": "x" * 9000}).encode(), None, 400),
    ("form body", "POST", "/indexes/docs/search", b"query=x", "application/x-www-form-urlencoded", 415),
    ("no content type", "POST", "/indexes/docs/search", b'{"query": "x"}', "", 415),
    ("unknown index", "POST", "/indexes/nope/search", b'{"query": "x"}', None, 404),
    ("traversal", "POST", "/indexes/..%2F..%2Fetc/search", b'{"query": "x"}', None, 404),
    ("hidden name", "POST", "/indexes/.staging/search", b'{"query": "x"}', None, 400),
    ("dot-dot name", "GET", "/indexes/%2E%2E", None, None, 400),
    ("unknown route", "GET", "/admin", None, None, 404),
    ("wrong method", "PUT", "/indexes/docs/search", b"{}", None, 405),
    ("document without text", "POST", "/indexes/docs/documents", b'{"documents": [{"id": "z"}]}', None, 422),
    ("bad id", "POST", "/indexes/docs/documents", b'{"documents": [{"id": "a\\u0000b", "text": "t"}]}', None, 400),
    ("metadata of a new type", "POST", "/indexes/docs/documents", b'{"documents": [{"id": "z1", "text": "t", "metadata": {"year": "x"}}]}', None, 400),
    ("ids not strings", "DELETE", "/indexes/docs/documents", b'{"ids": [1, 2]}', None, 422),
    ("negative wait", "DELETE", "/indexes/docs/documents", b'{"ids": ["x"], "wait": -1}', None, 400),
    ("oversize body", "POST", "/indexes/docs/search", b'{"query": "' + b"x" * 20000 + b'"}', None, 413),
    ("lone surrogate in a query", "POST", "/indexes/docs/search", b'{"query": "\\ud800"}', None, 400),
    ("lone surrogate in an id", "POST", "/indexes/docs/documents", b'{"documents": [{"id": "x\\ud800", "text": "t"}]}', None, 400),
    ("lone surrogate in a text", "POST", "/indexes/docs/documents", b'{"documents": [{"id": "x", "text": "t \\udfff"}]}', None, 400),
    ("lone surrogate in an id to delete", "DELETE", "/indexes/docs/documents", b'{"ids": ["d1", "\\ud800"]}', None, 400),  # d1 stays: nothing is written
    ("id over 512 bytes", "POST", "/indexes/docs/documents", json.dumps({"documents": [{"id": "x" * 600, "text": "t"}]}).encode(), None, 400),
    ("a long value echoed", "POST", "/indexes/docs/documents", json.dumps({"documents": [{"id": "x", "text": "t", "metadata": {"year": "9" * 5000}}]}).encode(), None, 400),
    ("empty first stage", "POST", "/indexes/docs/search", b'{"query": "x", "first_stage": ""}', None, 400),
    ("fusion weight without linear fusion", "POST", "/indexes/docs/search", b'{"query": "x", "fusion_weight": 0.5}', None, 400),
    ("dense share without a hybrid stage", "POST", "/indexes/docs/search", b'{"query": "x", "first_stage": "fde", "dense_share": 0.5}', None, 400),
    ("UTF-16 body", "POST", "/indexes/docs/search", '{"query": "x"}'.encode("utf-16"), None, 400),
    ("a long filter value echoed", "POST", "/indexes/docs/search", json.dumps({"query": "x", "filter": {"year": {"$in": "z" * 3000}}}).encode(), None, 400),
    ("huge early exit", "POST", "/indexes/docs/search", b'{"query": "x", "early_exit": 100000000000000000000}', None, 400),
    ("nprobe over the limit", "POST", "/indexes/docs/search", b'{"query": "x", "nprobe": 1000000}', None, 400),
    ("explain of too many hits", "POST", "/indexes/docs/search", json.dumps({"query": ["x"] * 100, "k": 20, "explain": True}).encode(), None, 400),
]


@pytest.fixture(scope="module")
def strict_server(home, default_encoder):
    catalog = Catalog(["docs"], home, model=default_encoder)
    limits = Limits(max_body_bytes=16384, max_batch=100)
    with background(catalog, limits=limits) as url, httpx.Client(base_url=url, timeout=60) as client:
        yield client


@pytest.mark.parametrize("what, method, path, body, kind, status", BAD, ids=[b[0] for b in BAD])
def test_a_bad_request_gets_a_4xx_with_a_message(strict_server, home, what, method, path, body, kind, status):
    headers = {} if kind == "" else {"content-type": kind or "application/json"}
    reply = strict_server.request(method, path, content=body, headers=headers)
    assert reply.status_code == status, reply.text
    detail = reply.json()["detail"]
    assert isinstance(detail, str) and 10 < len(detail) < 400 and "\n" not in detail and "Traceback" not in detail, detail
    assert strict_server.get("/healthz").status_code == 200
    if status == 405:
        assert reply.headers["allow"] == "POST", reply.headers


def test_a_trailing_slash_names_the_same_route(server):
    """FastAPI answered /indexes/ with an empty 307, which curl shows as nothing and the client as a stranger's reply."""
    client, _ = server
    assert client.get("/indexes/").json() == client.get("/indexes").json()
    found = client.post("/indexes/docs/search/", json={"query": "cats", "k": 2})
    assert found.status_code == 200 and found.json()["results"] == client.post("/indexes/docs/search", json={"query": "cats", "k": 2}).json()["results"]


def test_healthz_answers_while_every_worker_thread_waits_for_a_search_slot(home, default_encoder):
    """/healthz ran in the worker threads that searches hold while they wait their turn: under load
    a health check waited seconds (a load balancer would take the server for dead)."""
    from concurrent.futures import ThreadPoolExecutor

    catalog = Catalog(["docs"], home, model=default_encoder, concurrency=1, warm=False)
    with background(catalog) as url, httpx.Client(base_url=url, timeout=60) as client, ThreadPoolExecutor(45) as pool:
        catalog.gate.acquire()  # the one search slot taken: every search waits in a worker thread
        try:
            waiting = [pool.submit(httpx.post, f"{url}/indexes/docs/search", json={"query": "tea", "k": 1}, timeout=60) for _ in range(45)]
            deadline = time.monotonic() + 30
            while sum(t.name == "AnyIO worker thread" for t in threading.enumerate()) < 40 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert client.get("/healthz", timeout=5).json()["status"] == "ok"
        finally:
            catalog.gate.release()
        assert all(w.result().status_code == 200 for w in waiting)


def test_get_routes_answer_head(server):
    client, _ = server
    for path in ("/healthz", "/indexes", "/indexes/docs", "/metrics", "/"):
        reply = client.head(path)
        assert reply.status_code == 200 and reply.content == b"", (path, reply.status_code)


def test_bad_requests_leave_the_index_whole(strict_server, home):
    for what, method, path, body, kind, status in BAD:
        strict_server.request(method, path, content=body, headers={"content-type": kind or "application/json"})
    assert verify_files(home / "docs") == []
    assert strict_server.post("/indexes/docs/search", json={"query": "purring animal", "k": 1}).json()["results"][0][0]["id"] == "d1"
    metrics = strict_server.get("/metrics").text
    assert 'status="413"' in metrics and 'status="404"' in metrics and 'status="500"' not in metrics


def test_an_api_key_guards_every_request_but_the_page(home, default_encoder):
    catalog = Catalog(["docs"], home, model=default_encoder, warm=False)
    with background(catalog, api_key="s3cret") as url, httpx.Client(base_url=url, timeout=60) as client:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            for method, path in (("GET", "/healthz"), ("GET", "/indexes"), ("GET", "/metrics"), ("GET", "/openapi.json"), ("POST", "/indexes/docs/search")):
                reply = client.request(method, path, headers=headers, json={"query": "x"} if method == "POST" else None)
                assert reply.status_code == 401 and "Authorization: Bearer" in reply.json()["detail"], (method, path, headers)
        good = {"Authorization": "Bearer s3cret"}
        assert client.post("/indexes/docs/search", headers=good, json={"query": "tea", "k": 1}).json()["results"][0][0]["id"] == "d8"
        assert client.get("/").status_code == 200  # the page's HTML holds no data; it sends the key it is given
        for invented in ("AAA", "BBB"):  # each method was a label of its own: anyone, without the key, grew /metrics without end
            assert client.request(invented, "/healthz").status_code == 401
        metrics = client.get("/metrics", headers=good).text
        assert 'method="OTHER",route="unmatched",status="401"} 2.0' in metrics and 'method="AAA"' not in metrics
        # a key beyond ASCII, as UTF-8 bytes or percent-encoded (a browser's fetch cannot send those bytes: the page encodes)
    with background(Catalog(["docs"], home, model=default_encoder, warm=False), api_key="sé%41") as url, httpx.Client(base_url=url, timeout=60) as client:
        for given, status in ((b"Bearer s\xc3\xa9%41", 200), (b"Bearer s%C3%A9%2541", 200), (b"Bearer s%c3%a9%2541", 200), (b"Bearer s\xe9%41", 401), (b"Bearer s%E9%2541", 401), (b"Bearer s%C3%A9A", 401)):
            assert client.get("/indexes", headers={"Authorization": given}).status_code == status, given


def _mvr(*args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "mvr.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def test_mvr_serve_refuses_a_public_address_without_a_key(home):
    env = {k: v for k, v in os.environ.items() if k != "MVR_API_KEY"}
    run = subprocess.run([sys.executable, "-m", "mvr.cli", "serve", "--host", "0.0.0.0", "--index-dir", str(home)], capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode == 2 and "refusing to serve on 0.0.0.0 without an API key" in run.stderr and "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1  # not "opening and warming the indexes" first: nothing was opened


def test_mvr_serve_refuses_settings_it_cannot_serve_with_in_one_line(home, tmp_path, capsys):
    """--port 99999 gave a traceback once every index was warm; --concurrency 0 and --threads 0
    were taken for the defaults; --index-dir naming a file served nothing without a word."""
    from mvr.cli import main

    (tmp_path / "file").write_text("not a folder")
    for argv, said in ((["--port", "99999"], "port must be a number from 0 to 65535"), (["--port", "-1"], "port must be a number from 0 to 65535"),
                       (["--concurrency", "0"], "threads and concurrency must be positive"), (["--threads", "0"], "threads and concurrency must be positive")):
        assert main(["serve", "--index-dir", str(home), *argv]) == 2, argv
        err = capsys.readouterr().err  # the one line: not "opening and warming the indexes" before it
        assert said in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert main(["serve", "--index-dir", str(tmp_path / "file"), "--port", "0"]) == 2
    err = capsys.readouterr().err  # said before the indexes are opened: the one line
    assert "is a file; --index-dir names the folder of the indexes to serve" in err and err.count("\n") == 1, err
    import socket

    with socket.socket() as taken:  # a port in use: said at once, not after every index is opened and warmed
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        assert main(["serve", "--index-dir", str(home), "--port", str(taken.getsockname()[1])]) == 2
        err = capsys.readouterr().err
        assert err.startswith("mvr: error: cannot listen on 127.0.0.1:") and err.count("\n") == 1, err


def test_a_search_without_k_takes_the_default_within_a_smaller_max_k(home, default_encoder):
    catalog = Catalog(["docs"], home, model=default_encoder, warm=False)
    with background(catalog, limits=Limits(max_k=3)) as url, httpx.Client(base_url=url, timeout=60) as client:
        reply = client.post("/indexes/docs/search", json={"query": "tea"})
        assert reply.status_code == 200 and len(reply.json()["results"][0]) == 3, reply.text
        assert client.post("/indexes/docs/search", json={"query": "tea", "k": 4}).status_code == 400  # asked: still refused


def test_warm_writes_loads_the_document_encoder_the_first_add_takes(home, default_encoder):
    """mvr serve --warm-writes: the document encoder (PyTorch, transformers, the export) loaded at
    start, in the background; the first add takes that one instead of loading it then."""
    from mvr.encoding import document_encoder

    catalog = Catalog(["docs"], home, model=default_encoder)
    index = catalog.get("docs").index
    assert getattr(index, "_doc_encoder", None) is None  # searching does not load it
    with catalog.get("docs").write_lock:  # a write holding the index (a delete needs no encoder): the warm-up does not wait for it
        thread = threading.Thread(target=catalog.warm_writes)
        thread.start()
        thread.join(timeout=300)
        assert not thread.is_alive()
    warmed = getattr(index, "_doc_encoder", None)
    assert warmed is not None and document_encoder(index) is warmed[1] and warmed[1].doc_runtime == index.config.doc_runtime


def test_mvr_serve_runs_as_a_process_and_stops_on_sigterm(home):
    process = _mvr("serve", "--port", "0", "--index-dir", str(home), "--quiet", "--warm-writes")
    try:
        line = process.stdout.readline()  # printed once the indexes are warm and the socket listens
        assert "serving at http://127.0.0.1:" in line, process.stderr.read()
        url = line.split("serving at ")[1].split()[0]
        with httpx.Client(base_url=url, timeout=60) as client:
            assert [i["name"] for i in client.get("/indexes").json()["indexes"]] == ["docs"]
            assert client.post("/indexes/docs/search", json={"query": "capital of France", "k": 1}).json()["results"][0][0]["id"] == "d5"
        process.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then raises the signal again so the exit status tells why it stopped
        assert process.wait(timeout=30) in (0, -signal.SIGTERM)
        assert "Traceback" not in process.stderr.read()
    finally:
        process.kill()
        process.wait(timeout=30)


@pytest.mark.parametrize("refresh", [0, 0.2])
def test_an_idle_server_moves_to_new_commits_and_lets_go_of_the_old(tmp_path, default_encoder, refresh):
    """A server that got no request held the commit it last read: the segments a writer replaced
    (an optimize's inputs) stayed on disk until a request came and another write after it. With
    ``refresh`` it moves on by itself; 0 keeps the old way (moves only before requests)."""
    docs = [{"id": f"d{i}", "text": f"document {i} about topic {i % 3}"} for i in range(6)]
    Index.build(docs[:3], tmp_path / "docs", encoder=default_encoder, show_progress=False)
    Index.open(tmp_path / "docs", model=default_encoder).add(docs[3:])
    segments = tmp_path / "docs" / "segments"
    assert len(list(segments.iterdir())) == 2
    catalog = Catalog(["docs"], tmp_path, model=default_encoder, warm=False)
    with background(catalog, refresh=refresh):
        served = catalog.get("docs").index
        elsewhere = Index.open(tmp_path / "docs", model=default_encoder)  # another process's writes, as far as the server knows
        elsewhere.optimize()
        deadline = time.monotonic() + (30 if refresh else 1)
        while served.generation < elsewhere.generation and time.monotonic() < deadline:
            time.sleep(0.05)
        elsewhere.delete(["d0"])  # the next writer collects what nobody holds
        if refresh:
            assert served.generation >= 3 and len(list(segments.iterdir())) == 1
        else:
            assert served.generation == 2 and len(list(segments.iterdir())) == 3  # the old two, pinned, and the merged one
    served.refresh()
    assert served.generation == elsewhere.generation == 4 and served.search("document 4", k=1).doc_ids == [["d4"]]


def test_mvr_serve_refuses_a_bad_refresh_interval_at_once(home):
    for value in ("-1", "inf", "nan"):
        run = subprocess.run([sys.executable, "-m", "mvr.cli", "serve", "--refresh", value, "--index-dir", str(home)], capture_output=True, text=True, timeout=120)
        assert run.returncode == 2 and "the refresh interval must be 0" in run.stderr and "Traceback" not in run.stderr, run.stderr
    with pytest.raises(ConfigError, match="refresh interval"), background(Catalog(["docs"], home, warm=False), refresh=-0.5):
        pass


def test_searches_and_writes_at_once_over_http_give_no_error(server):
    """A short, bounded version of `python -m mvr.eval.serve_load`: 6 clients search while a
    writer adds and deletes through the same server."""
    client, _ = server
    url = str(client.base_url)
    stop, errors, answered = threading.Event(), [], [0]

    def search(seed: int):
        with httpx.Client(base_url=url, timeout=60) as own:
            while not stop.is_set():
                reply = own.post("/indexes/docs/search", json={"query": QUERIES[seed % len(QUERIES)][1], "k": 3})
                if reply.status_code != 200 or len(reply.json()["results"][0]) != 3:
                    errors.append(reply.text)
                answered[0] += 1

    def write():
        with httpx.Client(base_url=url, timeout=60) as own:
            for step in range(4):
                ids = [f"w{step}-{j}" for j in range(2)]
                for reply in (
                    own.post("/indexes/docs/documents", json={"documents": [{"id": i, "text": f"tea and cats, note {i}"} for i in ids]}),
                    own.request("DELETE", "/indexes/docs/documents", json={"ids": ids}),
                ):
                    if reply.status_code != 200:
                        errors.append(reply.text)

    threads = [threading.Thread(target=search, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    writer = threading.Thread(target=write)
    writer.start()
    writer.join(timeout=300)
    time.sleep(0.5)
    stop.set()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors[:3]
    assert answered[0] > 12 and client.get("/indexes").json()["indexes"][0]["documents"] == len(DOCS)


def test_a_keyless_server_answers_only_requests_addressed_to_loopback(server):
    client, _ = server
    for host in ("attacker.example", "attacker.example:80", "10.0.0.1:8000"):
        reply = client.get("/indexes", headers={"Host": host})
        assert reply.status_code == 421 and "--api-key" in reply.json()["detail"], host
    for host in ("localhost", "127.0.0.1:1234", "[::1]:8000", "127.0.0.2:8000", "[0:0:0:0:0:0:0:1]:80", "127.255.0.9"):
        # any loopback address mvr serve --host takes (127.0.0.2 started a server whose every request got a 421)
        assert client.get("/healthz", headers={"Host": host}).status_code == 200, host
    for host in ("127.0.0.1.attacker.example", "localhost.example:80", "[::2]:80"):
        assert client.get("/healthz", headers={"Host": host}).status_code == 421, host


def test_an_index_that_cannot_be_opened_is_left_out(tmp_path, default_encoder):
    home = tmp_path / "home"
    Index.build([("a", "cats purr"), ("b", "dogs bark")], home / "good", encoder=default_encoder, show_progress=False)
    catalog = Catalog([], home, model=default_encoder, warm=False)
    (home / "broken").mkdir()
    (home / "broken" / "manifest.json").write_text("{not json")
    with background(catalog) as url, httpx.Client(base_url=url, timeout=60) as client:
        listed = client.get("/indexes").json()
        assert [i["name"] for i in listed["indexes"]] == ["good"]
        # listed apart, with why (it was only in the log)
        assert [u["name"] for u in listed["unavailable"]] == ["broken"] and "manifest.json" in listed["unavailable"][0]["error"]
        assert client.get("/healthz").json()["indexes"] == 1 and client.get("/metrics").status_code == 200
        assert "broken" in catalog.failed
        assert client.post("/indexes/good/search", json={"query": "purring", "k": 1}).json()["results"][0][0]["id"] == "a"
        # repaired (here: built again) it is served; it was never tried again before the server restarted
        shutil.rmtree(home / "broken")
        Index.build([("c", "birds sing")], home / "broken", encoder=default_encoder, show_progress=False)
        listed = client.get("/indexes").json()
        assert [i["name"] for i in listed["indexes"]] == ["broken", "good"] and listed["unavailable"] == [], listed
        assert client.post("/indexes/broken/search", json={"query": "singing", "k": 1}).json()["results"][0][0]["id"] == "c"
        (home / "other").mkdir()
        (home / "other" / "manifest.json").write_text("[]")
        assert [u["name"] for u in client.get("/indexes").json()["unavailable"]] == ["other"]
        shutil.rmtree(home / "other")  # gone from the home: nothing to report
        assert client.get("/indexes").json()["unavailable"] == []
        assert client.get("/healthz").json()["indexes"] == 2
        shutil.rmtree(home / "broken")  # a served one removed: no longer counted as served
        assert client.get("/healthz").json()["indexes"] == 1
    (home / "broken").mkdir()
    (home / "broken" / "manifest.json").write_text("{not json")
    # damaged before the server starts: left out the same way (it kept the server from starting), with or without warming;
    # one named on the command line is still an error
    for warm in (False, True):
        started = Catalog([], home, model=default_encoder, warm=warm)
        assert started.names() == ["good"] and "manifest.json" in started.failed["broken"]
    with pytest.raises(IndexFormatError, match="manifest.json"):
        Catalog([str(home / "broken")], home, model=default_encoder, warm=False)


def test_an_index_folder_no_request_can_name_is_left_out_not_fatal(tmp_path, default_encoder):
    """`mvr index --path "HOME/bad "` is accepted; `mvr serve` of that home then refused to start
    (the good index was not served either), saying the name was invalid."""
    home = tmp_path / "home"
    for name in ("good", "bad "):
        Index.build([("a", "cats purr"), ("b", "dogs bark")], home / name, encoder=default_encoder, show_progress=False)
    catalog = Catalog([], home, model=default_encoder, warm=False)
    assert catalog.names() == ["good"] and "cannot be named in a request (it starts or ends with white space): rename the folder" in catalog.failed["bad "]
    with background(catalog) as url, httpx.Client(base_url=url, timeout=60) as client:
        assert [u["name"] for u in client.get("/indexes").json()["unavailable"]] == ["bad "]
    with pytest.raises(ConfigError, match="rename the folder to serve it"):
        Catalog([str(home / "bad ")], home, model=default_encoder, warm=False)


def _recv(sock) -> bytes:
    try:
        return sock.recv(65536)
    except ConnectionResetError:  # closed with bytes it had not read: the end, as a FIN would be
        return b""


def test_a_request_that_does_not_arrive_whole_in_time_is_cut_off(home, default_encoder):
    """A connection that sends nothing, or half its headers, is closed after --request-seconds;
    one whose body stops part way gets a 408; a slow but whole request is answered (a client
    holding half-sent requests kept their connections open for ever)."""
    import socket
    from urllib.parse import urlparse

    catalog = Catalog(["docs"], home, model=default_encoder, warm=False)
    with background(catalog, limits=Limits(request_seconds=1.0, max_body_bytes=4096)) as url:
        address = (urlparse(url).hostname, urlparse(url).port)

        def ask(*parts: bytes, pause: float = 0.0) -> tuple[bytes, float]:
            """What the server sends back (until it closes) after ``parts``, and after how long."""
            with socket.create_connection(address, timeout=10) as sock:
                started = time.monotonic()
                for part in parts:
                    try:
                        sock.sendall(part)
                    except (BrokenPipeError, ConnectionResetError):  # cut off meanwhile: what it answered is still to read
                        break
                    time.sleep(pause)
                got = b""
                while chunk := _recv(sock):
                    got += chunk
                    if b"\r\n\r\n" in got and b"purr" in got:  # a whole answer to the slow search: do not wait for keep-alive
                        break
                return got, time.monotonic() - started

        got, took = ask()
        assert got == b"" and 0.5 < took < 5, took
        got, took = ask(b"POST /indexes/docs/search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty")
        assert got == b"" and 0.5 < took < 5, took
        body = b'{"query": "purring animal", "k": 1}'
        head = b"POST /indexes/docs/search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
        got, took = ask(head, body[:10])
        assert got.startswith(b"HTTP/1.1 408") and b"--request-seconds" in got and took < 5, got
        got, _ = ask(head[:20], head[20:], body, pause=0.3)  # 0.6 s in all: slow, within the limit
        assert got.startswith(b"HTTP/1.1 200") and b'"d1"' in got, got
        # answered before its body is read (413 here; 401 without the key), then sent the body byte by byte: cut off too
        big = b"POST /indexes/docs/search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 9999\r\n\r\n"
        got, took = ask(big, *[b"x"] * 8, pause=0.3)
        assert took < 5 and (got == b"" or got.startswith(b"HTTP/1.1 413")), got  # its 413 may be lost to the reset of a close with unread bytes
        # one that sends the whole body reads the answer (a client's send failed on a reset when the server closed at once)
        with socket.create_connection(address, timeout=10) as sock:
            sock.sendall(big + b"x" * 9999)
            assert sock.recv(65536).startswith(b"HTTP/1.1 413")


def test_what_the_server_lists_follows_writes_and_rebuilds_made_elsewhere(tmp_path, default_encoder):
    """GET /indexes and /metrics answered from the commit of the last search (no refresh), and the
    document count of an index of passages was kept per generation, which a rebuild at the path
    counts from 1 again; GET /indexes/NAME mixed two commits (its summary before the refresh)."""
    from mvr import IndexConfig

    def docs(n):
        return [{"id": f"d{i}", "text": " ".join(f"word{i}x{j}" for j in range(60))} for i in range(n)]

    config = IndexConfig(fde=None, sparse=(), passage_tokens=24, passage_stride=24)
    Index.build(docs(5), tmp_path / "long", encoder=default_encoder, config=config, show_progress=False)
    catalog = Catalog(["long"], tmp_path, model=default_encoder, concurrency=1)
    with background(catalog, refresh=0) as url, httpx.Client(base_url=url, timeout=60) as client:  # the routes' own refresh
        listed = client.get("/indexes").json()["indexes"][0]
        assert listed["documents"] == 5 and listed["passages"] > 5 and listed["generation"] == 1
        Index.build(docs(2), tmp_path / "long", encoder=default_encoder, config=config, overwrite=True, show_progress=False)
        listed = client.get("/indexes").json()["indexes"][0]
        assert listed["documents"] == 2 and listed["generation"] == 1, listed
        Index.open(tmp_path / "long").delete(["d1"])  # another process's write, as far as the server knows
        assert 'mvr_index_documents{index="long"} 1.0' in client.get("/metrics").text
        described = client.get("/indexes/long").json()
        assert described["generation"] == described["info"]["generation"] == 2 and described["documents"] == 1
