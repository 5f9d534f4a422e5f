"""A client of ``mvr serve`` on the standard library alone (one kept-alive connection per thread):
what the framework retrievers, the warm CLI and the load test call.

    >>> from mvr.client import Client
    >>> Client("http://127.0.0.1:8000").search("scifact", "a question", k=5)[0][0]["id"]   # doctest: +SKIP
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import threading
import time
import unicodedata
import urllib.parse
from pathlib import Path
from typing import Sequence

from .errors import IndexLockedError, IndexNotFoundError, MissingExtraError, MvrError, QueryError, is_number, many, shown

# What each status means to a caller, as mvr's own errors.
ERRORS = {400: QueryError, 401: QueryError, 404: IndexNotFoundError, 409: IndexLockedError, 413: QueryError, 415: QueryError, 422: QueryError, 501: MissingExtraError}
# The longest timeout a socket takes: a larger one fails at the first request as an OverflowError.
MAX_TIMEOUT = 1e6


class ServerError(MvrError, ConnectionError):
    """The server could not be reached, or answered with a server-side error."""


class Client:
    """Talks to one ``mvr serve`` at ``url`` (``http://host:port``), sending ``api_key`` as
    ``Authorization: Bearer KEY`` when given. Safe to share between threads."""

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 120.0):
        parsed, self._prefix = _split(url)
        if not is_number(timeout) or not 0 < timeout <= MAX_TIMEOUT:
            raise QueryError(f"a client's timeout is a positive number of seconds (at most {MAX_TIMEOUT:,.0f}) such as 120, got {shown(timeout)}.")
        self.url = url.rstrip("/")
        self._parsed = parsed
        self.api_key = api_key
        self._key = _key_bytes(api_key)
        self.timeout = timeout
        self._local = threading.local()

    def __getstate__(self) -> dict:  # a copy (pickle, deepcopy) opens its own connections
        return {k: v for k, v in self.__dict__.items() if k != "_local"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._local = threading.local()

    def _connection(self) -> http.client.HTTPConnection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            kind = http.client.HTTPSConnection if self._parsed.scheme == "https" else http.client.HTTPConnection
            connection = kind(self._parsed.hostname, self._parsed.port, timeout=self.timeout)
            self._local.connection = connection
        return connection

    def request(self, method: str, path: str, body: dict | None = None) -> dict:
        """One request; the JSON answer, or the server's message raised as an mvr error."""
        headers: dict[str, str | bytes] = {"Accept": "application/json"}
        data = None
        if body is not None:
            try:
                data = json.dumps(body).encode()
            except (TypeError, ValueError) as error:
                raise QueryError(f"a request to {self.url} is sent as JSON: give text, numbers, booleans, lists and dicts ({error}).") from None
            headers["Content-Type"] = "application/json"
        if self._key:
            headers["Authorization"] = b"Bearer " + self._key  # bytes: sent as they are, UTF-8 as the server compares them
        deadline = time.monotonic() + self.timeout  # for the whole exchange, not each read (a server dripping its answer)
        writes, sent = method == "DELETE" or path.endswith("/documents"), False
        for attempt in (0, 1):  # a kept-alive connection the server closed meanwhile is opened again once
            connection = self._connection()
            reused = connection.sock is not None  # a new one that fails after sending is not sent again: the server may have the request
            late = _Deadline(connection, deadline)
            try:
                late.connect()
                late.sent = True  # from here the server may have the request
                connection.request(method, self._prefix + path, body=data, headers=headers)
                response = connection.getresponse()
                payload = response.read()  # an IncompleteRead where it ends before its Content-Length
                late.check()
                break
            except (ConnectionError, http.client.HTTPException, OSError) as error:
                connection.close()
                self._local.connection = None
                timed_out = late.passed or isinstance(error, TimeoutError)
                sent = sent or late.sent
                applied = " The add or delete may have been applied all the same (`info` shows the index's documents; upsert adds again safely)." if writes and sent else ""
                if timed_out and not sent:
                    raise ServerError(f"cannot reach the mvr server at {self.url} (no connection within {self.timeout:g} s, the client's timeout): is `mvr serve` running there?") from None
                if timed_out:
                    raise ServerError(f"the mvr server at {self.url} did not answer within {self.timeout:g} s (the client's timeout): it may still be working.{applied}") from None
                if isinstance(error, http.client.IncompleteRead):
                    raise ServerError(f"the mvr server at {self.url} stopped part way through its answer ({len(error.partial)} bytes of {len(error.partial) + (error.expected or 0)}): was it stopped or restarted? Ask again.{applied}") from None
                if attempt or not reused or not isinstance(error, (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)):
                    raise ServerError(f"cannot reach the mvr server at {self.url} ({error}): is `mvr serve` running there?{applied}") from None
            finally:
                if late.cancel():  # cut just after the answer came: the kept-alive socket is shut down
                    connection.close()
                    self._local.connection = None
        try:  # every route answers a JSON object: nothing, or anything else, comes from another server
            answer = json.loads(payload) if payload else None
        except (ValueError, RecursionError):  # not JSON (a proxy's HTML page), or JSON nested too deep to read
            answer = None
        if response.status >= 400:
            if not isinstance(answer, dict) or not isinstance(answer.get("detail"), (str, list)):  # every error of mvr serve says why in "detail"
                kind = response.getheader("Content-Type") or "no content type"
                raise ServerError(f"{self.url}: {response.status} {response.reason}, not from mvr serve (its errors are JSON with a 'detail'; this is {kind}): check the URL, or the proxy in front of the server.")
            message = " ".join(str(answer["detail"]).split()) or response.reason  # one line, whatever the body was
            raise ERRORS.get(response.status, ServerError)(f"{self.url}: {response.status}: {message}")
        if not 200 <= response.status < 300 or not isinstance(answer, dict):
            location = response.getheader("Location")
            raise self._stranger(response.status, f"a redirect to {shown(location)}" if location else response.getheader("Content-Type") or "no content type")
        return answer

    def _stranger(self, status: int, what: str) -> ServerError:
        """The error for an answer no route of ``mvr serve`` gives: the URL names another server."""
        return ServerError(f"{self.url}: answered with something that is not an mvr server's reply (HTTP {status}, {what}); check the URL.")

    def _listed(self, answer: dict, field: str, length: int | None = None) -> list:
        """``answer[field]``, the list the route promises (of ``length`` items when given)."""
        value = answer.get(field)
        if not isinstance(value, list) or (length is not None and len(value) != length):
            raise self._stranger(200, f"JSON without the {field!r} list of an mvr reply")
        return value

    def health(self) -> dict:
        return self.request("GET", "/healthz")

    def indexes(self) -> list[dict]:
        return self._listed(self.request("GET", "/indexes"), "indexes")

    def info(self, name: str) -> dict:
        return self.request("GET", f"/indexes/{_quoted(name)}")

    def search(self, name: str, queries: str | Sequence[str], k: int = 10, **options) -> list[list[dict]]:
        """Hits of each query (a single string: one query) as ``{"id", "score", "title", "text", "metadata"}``."""
        return self.search_raw(name, queries, k, **options)["results"]

    def search_raw(self, name: str, queries: str | Sequence[str], k: int = 10, **options) -> dict:
        """The whole answer of a search: ``results``, ``generation``, ``timings_ms``."""
        if "query" in options:
            raise QueryError("give the query, or a list of them, as search's second argument, not as query=.")
        if "threads" in options:  # the server would answer 422 "extra inputs are not permitted"
            raise QueryError("threads are the server's to set (mvr serve --threads), not a search's; leave threads out of a search through a server.")
        query = queries if isinstance(queries, str) else list(many(queries, "queries are a string or a list of strings", QueryError))
        answer = self.request("POST", f"/indexes/{_quoted(name)}/search", {"query": query, "k": k, **options})
        self._listed(answer, "results", 1 if isinstance(query, str) else len(query))  # one list of hits per query
        return answer

    def add(self, name: str, documents: Sequence[dict], *, upsert: bool = False) -> dict:
        """Add ``documents`` (a list of ``{"id", "text", "title", "metadata"}``); ``upsert``: replace those already there."""
        listed = list(many(documents, 'documents are a list of objects such as {"id": "d1", "text": "..."}', QueryError))
        return self.request("POST", f"/indexes/{_quoted(name)}/documents", {"documents": listed, "upsert": upsert})

    def delete(self, name: str, ids: str | Sequence[str]) -> dict:
        """Delete the documents ``ids`` (a single string: one id)."""
        listed = [ids] if isinstance(ids, str) else list(many(ids, "ids must be a document id or a list of them", QueryError, ordered=False))  # as Index.delete
        return self.request("DELETE", f"/indexes/{_quoted(name)}/documents", {"ids": listed})

    def close(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None


class _Deadline:
    """Shuts ``connection``'s socket down at ``deadline`` (time.monotonic), wherever the exchange is
    then (sending a large body, waiting for the headers, a server dripping its answer a byte at a
    time): the read or write under way fails or ends, and :meth:`check` says the time passed."""

    def __init__(self, connection: http.client.HTTPConnection, deadline: float):
        self.connection, self.deadline, self.passed, self.sent, self.sock = connection, deadline, False, False, None
        self._lock, self._done = threading.Lock(), False
        self._timer = threading.Timer(max(deadline - time.monotonic(), 0.0), self._cut)
        self._timer.daemon = True
        self._timer.start()

    def connect(self) -> None:
        """Connect where not connected, within the time left (so that the socket exists to shut
        down), each single read or write limited to the time left too."""
        if self.connection.sock is None:
            self.connection.timeout = max(self.deadline - time.monotonic(), 1e-3)
            self.connection.connect()
        self.sock = self.connection.sock  # kept: the connection lets go of it where the answer ends the connection
        self.check()  # the time passed while connecting, before there was a socket to shut down
        self.sock.settimeout(max(self.deadline - time.monotonic(), 1e-3))

    def _cut(self) -> None:
        with self._lock:
            if self._done:
                return
            self.passed = True
            if self.sock is not None:
                try:  # the plain socket's shutdown: an SSL socket's would first drop its SSL object under a read or write under way
                    socket.socket.shutdown(self.sock, socket.SHUT_RDWR)
                except OSError:
                    pass

    def check(self) -> None:
        if self.passed:  # what was read may have ended early: the socket was shut down under it
            raise TimeoutError("timed out")

    def cancel(self) -> bool:
        """Stop the timer; whether it cut the socket first."""
        with self._lock:
            self._done = True
        self._timer.cancel()
        return self.passed


def _quoted(name: str) -> str:
    if not isinstance(name, str) or not name:
        raise QueryError(f"an index is named by a non-empty string (`GET /indexes` lists them), got {type(name).__name__} {shown(name)}.")
    try:
        return urllib.parse.quote(name, safe="")
    except UnicodeEncodeError:
        raise QueryError(f"an index name is text that UTF-8 can encode, got {shown(name)}.") from None


def _split(url) -> tuple[urllib.parse.SplitResult, str]:
    """``url`` split, and its path as the prefix of each request's; or the one-line error that
    says what a server URL looks like (http.client would fail later, with a raw ValueError)."""
    example = "a server URL looks like http://127.0.0.1:8000"
    if not isinstance(url, str):
        raise QueryError(f"{example}, got {type(url).__name__} {shown(url)}.")
    if any(c.isspace() or unicodedata.category(c) == "Cc" for c in url):
        raise QueryError(f"{example}, without spaces or control characters; got {shown(url)}.")
    try:
        parsed = urllib.parse.urlsplit(url)
        port = parsed.port
        if parsed.hostname and not parsed.hostname.isascii():
            parsed.hostname.encode("idna")  # what http.client sends as the Host header
        prefix = urllib.parse.quote(parsed.path.rstrip("/"), safe="/%:@!$&'()*+,;=~")
    except ValueError:  # a port that is no number or past 65535, a broken [IPv6] or host name
        parsed = port = None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise QueryError(f"{example} (http or https, a host, a port from 1 to 65535), got {shown(url)}.")
    if port is not None and not 1 <= port <= 65535:
        raise QueryError(f"{example}: its port is from 1 to 65535, got {shown(url)}.")
    return parsed, prefix


def _key_bytes(api_key) -> bytes | None:
    """The API key as the server compares it (UTF-8; a key read from the environment undecoded
    gets its own bytes back), or the one-line error. The key itself is never shown."""
    where = "check api_key= or $MVR_API_KEY"
    if api_key is None:
        return None
    if not isinstance(api_key, str):
        raise QueryError(f"an API key is text, got {type(api_key).__name__}; {where}.")
    bad = next((i for i, c in enumerate(api_key) if unicodedata.category(c) == "Cc"), None)
    if bad is not None:  # a newline would end the Authorization header early
        raise QueryError(f"an API key is text without control characters (newlines, tabs), got one at position {bad}; {where}.")
    try:
        return api_key.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise QueryError(f"an API key is text that UTF-8 can encode, got a lone surrogate; {where}.") from None


# -- finding a running server -------------------------------------------------------------------
def servers_dir() -> Path:
    """Where each running ``mvr serve`` leaves a note of what it serves: ``$MVR_RUNTIME_DIR``, else
    ``$XDG_RUNTIME_DIR/mvr``, else ``~/.cache/mvr/servers``."""
    if os.environ.get("MVR_RUNTIME_DIR"):
        return Path(os.environ["MVR_RUNTIME_DIR"])
    if os.environ.get("XDG_RUNTIME_DIR"):
        return Path(os.environ["XDG_RUNTIME_DIR"]) / "mvr"
    return Path.home() / ".cache" / "mvr" / "servers"


def register(url: str, indexes: dict[str, Path], home: Path | None, api_key: bool, instance: str | None = None) -> Path:
    """Note that this process serves ``indexes`` (name -> folder; ``home``: and any index there)
    at ``url``; returns the note's path, for :func:`unregister` when the server stops.
    ``instance``: what the server's ``/healthz`` answers as its ``instance``, so that a client
    tells it from another server that took its port since (its note left by a SIGKILL)."""
    folder = servers_dir()
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    note = folder / f"{os.getpid()}.json"
    record = {"url": url, "pid": os.getpid(), "indexes": {n: str(Path(p).resolve()) for n, p in indexes.items()},
              "home": str(Path(home).resolve()) if home is not None else None, "api_key": api_key, "instance": instance}
    tmp = note.with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, note)
    return note


def unregister(note: Path) -> None:
    note.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def find_server(index_path: Path, with_key: bool = False) -> tuple[str, str, str | None] | None:
    """``(url, index name, instance)`` of a running ``mvr serve`` that serves the index folder
    ``index_path`` (one that wants an API key only ``with_key``), or None. Notes of servers no
    longer running are removed. Check that the server answering at ``url`` is that one
    (:func:`answers_as`) before trusting it: a killed server's process may linger unreaped."""
    folder = servers_dir()
    if not folder.is_dir():
        return None
    target = Path(index_path).resolve()
    for note in sorted(folder.glob("*.json")):
        try:
            record = json.loads(note.read_text())
            pid, url, served, home = int(record["pid"]), record["url"], record.get("indexes") or {}, record.get("home")
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
            continue
        # a note damaged or written by something else is passed over, not a traceback in every `mvr search`
        if not 0 < pid < 2**31 or not isinstance(url, str) or not isinstance(served, dict) or not isinstance(home, (str, type(None))):
            continue
        if not all(isinstance(path, str) for path in served.values()):
            continue
        if not _alive(pid):
            note.unlink(missing_ok=True)  # a note this module wrote for a server that has gone
            continue
        if record.get("api_key") and not with_key:
            continue
        instance = record.get("instance") if isinstance(record.get("instance"), str) else None
        for name, path in served.items():
            if Path(path) == target:
                return url, name, instance
        if home and Path(home) == target.parent and target.name not in served:
            return url, target.name, instance
    return None


def answers_as(url: str, instance: str | None, api_key: str | None = None, timeout: float = 2.0) -> bool:
    """Whether the ``mvr serve`` that left a note (``instance``) answers ``/healthz`` at ``url``
    within ``timeout`` seconds: not one stopped (Ctrl-Z), hung, or another that took its port."""
    try:
        health = Client(url, api_key, timeout=timeout).health()
    except MvrError:
        return False
    return instance is None or health.get("instance") == instance
