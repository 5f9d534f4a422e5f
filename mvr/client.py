"""A client of ``mvr serve`` on the standard library alone (one kept-alive connection per thread):
what the framework retrievers, the warm CLI and the load test call.

    >>> from mvr.client import Client
    >>> Client("http://127.0.0.1:8000").search("scifact", "a question", k=5)[0][0]["id"]   # doctest: +SKIP
"""

from __future__ import annotations

import http.client
import json
import os
import threading
import urllib.parse
from pathlib import Path
from typing import Sequence

from .errors import IndexLockedError, IndexNotFoundError, MvrError, QueryError

# What each status means to a caller, as mvr's own errors.
ERRORS = {400: QueryError, 401: QueryError, 404: IndexNotFoundError, 409: IndexLockedError, 413: QueryError, 415: QueryError, 422: QueryError}


class ServerError(MvrError, ConnectionError):
    """The server could not be reached, or answered with a server-side error."""


class Client:
    """Talks to one ``mvr serve`` at ``url`` (``http://host:port``), sending ``api_key`` as
    ``Authorization: Bearer KEY`` when given. Safe to share between threads."""

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 120.0):
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise QueryError(f"a server URL looks like http://127.0.0.1:8000, got {url!r}.")
        self.url = url.rstrip("/")
        self._parsed = parsed
        self._prefix = parsed.path.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
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
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        for attempt in (0, 1):  # a kept-alive connection the server closed meanwhile is opened again once
            connection = self._connection()
            try:
                connection.request(method, self._prefix + path, body=data, headers=headers)
                response = connection.getresponse()
                payload = response.read()
                break
            except (ConnectionError, http.client.HTTPException, OSError) as error:
                connection.close()
                self._local.connection = None
                if attempt or not isinstance(error, (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)):
                    raise ServerError(f"cannot reach the mvr server at {self.url} ({error}): is `mvr serve` running there?") from None
        try:
            answer = json.loads(payload) if payload else {}
        except ValueError:
            answer = {"detail": payload[:200].decode(errors="replace")}
        if response.status >= 400:
            message = answer.get("detail") if isinstance(answer, dict) else None
            raise ERRORS.get(response.status, ServerError)(f"{self.url}: {response.status}: {message or response.reason}")
        return answer

    def health(self) -> dict:
        return self.request("GET", "/healthz")

    def indexes(self) -> list[dict]:
        return self.request("GET", "/indexes")["indexes"]

    def info(self, name: str) -> dict:
        return self.request("GET", f"/indexes/{_quoted(name)}")

    def search(self, name: str, queries: str | Sequence[str], k: int = 10, **options) -> list[list[dict]]:
        """Hits of each query (a single string: one query) as ``{"id", "score", "title", "text", "metadata"}``."""
        return self.search_raw(name, queries, k, **options)["results"]

    def search_raw(self, name: str, queries: str | Sequence[str], k: int = 10, **options) -> dict:
        """The whole answer of a search: ``results``, ``generation``, ``timings_ms``."""
        query = queries if isinstance(queries, str) else list(queries)
        return self.request("POST", f"/indexes/{_quoted(name)}/search", {"query": query, "k": k, **options})

    def add(self, name: str, documents: Sequence[dict], *, upsert: bool = False) -> dict:
        return self.request("POST", f"/indexes/{_quoted(name)}/documents", {"documents": list(documents), "upsert": upsert})

    def delete(self, name: str, ids: Sequence[str]) -> dict:
        return self.request("DELETE", f"/indexes/{_quoted(name)}/documents", {"ids": list(ids)})

    def close(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None


def _quoted(name: str) -> str:
    return urllib.parse.quote(str(name), safe="")


# -- finding a running server -------------------------------------------------------------------
def servers_dir() -> Path:
    """Where each running ``mvr serve`` leaves a note of what it serves: ``$MVR_RUNTIME_DIR``, else
    ``$XDG_RUNTIME_DIR/mvr``, else ``~/.cache/mvr/servers``."""
    if os.environ.get("MVR_RUNTIME_DIR"):
        return Path(os.environ["MVR_RUNTIME_DIR"])
    if os.environ.get("XDG_RUNTIME_DIR"):
        return Path(os.environ["XDG_RUNTIME_DIR"]) / "mvr"
    return Path.home() / ".cache" / "mvr" / "servers"


def register(url: str, indexes: dict[str, Path], home: Path | None, api_key: bool) -> Path:
    """Note that this process serves ``indexes`` (name -> folder; ``home``: and any index there)
    at ``url``; returns the note's path, for :func:`unregister` when the server stops."""
    folder = servers_dir()
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    note = folder / f"{os.getpid()}.json"
    record = {"url": url, "pid": os.getpid(), "indexes": {n: str(Path(p).resolve()) for n, p in indexes.items()},
              "home": str(Path(home).resolve()) if home is not None else None, "api_key": api_key}
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


def find_server(index_path: Path, with_key: bool = False) -> tuple[str, str] | None:
    """``(url, index name)`` of a running ``mvr serve`` that serves the index folder
    ``index_path`` (one that wants an API key only ``with_key``), or None. Notes of servers no
    longer running are removed."""
    folder = servers_dir()
    if not folder.is_dir():
        return None
    target = Path(index_path).resolve()
    for note in sorted(folder.glob("*.json")):
        try:
            record = json.loads(note.read_text())
            pid = int(record["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if not _alive(pid):
            note.unlink(missing_ok=True)  # a note this module wrote for a server that has gone
            continue
        if record.get("api_key") and not with_key:
            continue
        served = record.get("indexes", {})
        for name, path in served.items():
            if Path(path) == target:
                return record["url"], name
        if record.get("home") and Path(record["home"]) == target.parent and target.name not in served:
            return record["url"], target.name
    return None
