"""What every request passes before a route sees it, as one ASGI layer: the API key, the body
size limit, and the request counts and latencies of /metrics (Prometheus text format)."""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import time
import urllib.parse

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.routing import Match

# Latency buckets (seconds) from a warm query to a large add.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# What needs no key: the search page's own HTML (it holds no data; it asks for the key and sends it).
OPEN_PATHS = frozenset({"/"})
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})  # metrics label any other "OTHER"


def _local_host(host: bytes | None) -> bool:
    """Whether a Host header names this machine's loopback (any port): ``localhost`` or a loopback
    address (127.0.0.0/8, ::1: any that mvr serve --host takes); no header (HTTP/1.0) passes."""
    if host is None:
        return True
    name = host.decode("latin-1").strip().lower()
    name = name[1 : name.index("]")] if name.startswith("[") and "]" in name else name.rsplit(":", 1)[0] if name.count(":") == 1 else name
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:  # a name: one an attacker may point at 127.0.0.1 (DNS rebinding)
        return False


class Metrics:
    """The server's Prometheus metrics, in a registry of its own (several servers in one process keep theirs apart)."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("mvr_http_requests", "HTTP requests answered", ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("mvr_http_request_seconds", "HTTP request latency", ["method", "route"], buckets=BUCKETS, registry=self.registry)
        self.stages = Histogram("mvr_search_stage_seconds", "Time per search request in each stage", ["index", "stage"], buckets=BUCKETS, registry=self.registry)
        self.queries = Counter("mvr_search_queries", "Queries searched", ["index"], registry=self.registry)
        self.documents = Gauge("mvr_index_documents", "Live documents of a served index", ["index"], registry=self.registry)
        self.generation = Gauge("mvr_index_generation", "Commit generation a served index reads", ["index"], registry=self.registry)
        self.writes = Counter("mvr_index_writes", "Documents added, replaced or deleted through the server", ["index", "operation"], registry=self.registry)
        self.in_flight = Gauge("mvr_searches_in_flight", "Searches being computed or waiting for a turn", registry=self.registry)


async def _reply(send, status: int, message: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"detail": message}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class Gate:
    """ASGI middleware: 401 without the API key (``Authorization: Bearer KEY``); without a key,
    421 for a request addressed to another host than loopback (DNS rebinding); 413 for a body
    over ``max_body_bytes`` (read before the route runs, so a route never sees a partial body),
    415 for a body not sent as ``application/json``,
    and the metrics of every request, labelled by route template (not by raw path)."""

    def __init__(self, app, *, api_key: str | None, max_body_bytes: int, metrics: Metrics, routes, request_seconds: float = 30.0):
        self.app = app
        self.key = f"Bearer {api_key}".encode() if api_key else None
        self.max_body, self.request_seconds = max_body_bytes, request_seconds
        self.metrics = metrics
        self.routes = routes

    def _route(self, scope) -> str:
        for route in self.routes:
            match, _ = route.matches(scope)
            if match == Match.FULL:
                return route.path
        return "unmatched"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if len(scope["path"]) > 1 and scope["path"].endswith("/"):  # /indexes/ is /indexes (FastAPI answered an empty 307)
            scope = {**scope, "path": scope["path"].rstrip("/") or "/", "raw_path": (scope.get("raw_path") or b"").rstrip(b"/") or b"/"}
        started = time.perf_counter()
        route = self._route(scope)
        status = {"code": 499}  # no answer started: the client went away (nginx's "client closed request")

        async def sending(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self._pass(scope, receive, sending)
        finally:
            method = scope["method"] if scope["method"] in METHODS else "OTHER"  # a label per invented method would grow /metrics without end
            self.metrics.requests.labels(method, route, str(status["code"])).inc()
            self.metrics.latency.labels(method, route).observe(time.perf_counter() - started)

    async def _pass(self, scope, receive, send):
        headers = dict(scope["headers"])
        # answered before its body is read (401, 421, 413, ...), the connection stays open: a client may send the rest and
        # read the answer, and one that trickles it is cut off after --request-seconds (mvr/server/protocol.py)
        if self.key is not None and scope["path"] not in OPEN_PATHS:
            given = headers.get(b"authorization", b"")
            # as sent (UTF-8), or percent-encoded: a browser's fetch sends no header byte past Latin-1 (the search page encodes)
            encoded = b"Bearer " + urllib.parse.unquote_to_bytes(given[7:]) if given.startswith(b"Bearer ") and b"%" in given else b""
            if not (hmac.compare_digest(given, self.key) | hmac.compare_digest(encoded, self.key)):
                why = "missing" if not given else "wrong"
                return await _reply(send, 401, f"API key {why}: send the header 'Authorization: Bearer KEY' (the key mvr serve was started with).", {"WWW-Authenticate": "Bearer"})
        if self.key is None and not _local_host(headers.get(b"host")):
            # a page elsewhere cannot reach a keyless server through a name it points at 127.0.0.1 (DNS rebinding)
            return await _reply(send, 421, "without an API key this server answers only requests addressed to localhost or a loopback address (127.0.0.1, [::1]); start it with --api-key to serve other names.")
        declared = headers.get(b"content-length")
        if declared is not None and not declared.isdigit():
            return await _reply(send, 400, "the Content-Length header is not a number.")
        if declared is not None and int(declared) > self.max_body:
            return await _reply(send, 413, f"request body of {declared.decode(errors='replace')} bytes; the limit is {self.max_body} (mvr serve --max-body-bytes).")
        body, more = bytearray(), True
        deadline = time.monotonic() + self.request_seconds
        while more:  # the whole body, counted, before the route runs (chunked bodies have no length to check first)
            try:
                message = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0.0))
            except asyncio.TimeoutError:
                return await _reply(send, 408, f"the request body did not arrive within {self.request_seconds:g} s (mvr serve --request-seconds).", {"Connection": "close"})
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_body:
                return await _reply(send, 413, f"request body over {self.max_body} bytes (mvr serve --max-body-bytes).")
        kind = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if body and kind != b"application/json":
            # a JSON body says so: a browser's cross-site form or text/plain post, which skips CORS preflight, is refused
            return await _reply(send, 415, f"send the body as JSON with the header 'Content-Type: application/json' (got {kind.decode(errors='replace') or 'none'}).")
        if body[:2] in (b"\xff\xfe", b"\xfe\xff") or b"\x00" in body[:4]:  # UTF-16 or -32, which the JSON parser would read too
            return await _reply(send, 400, "the body is not UTF-8 (UTF-16 or UTF-32): send one JSON object, encoded as UTF-8.")
        delivered = False

        async def replay():
            nonlocal delivered
            if delivered:
                return await receive()  # a disconnect, when it comes
            delivered = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)
