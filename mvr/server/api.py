"""The routes of ``mvr serve`` (FastAPI; the OpenAPI schema at ``/openapi.json``).

    GET    /healthz                     {"status": "ok", "indexes": N, "uptime_s": s, "instance": this server's random id}
    GET    /indexes                     {"indexes": [{"name", "documents", "generation", ...}]}
    GET    /indexes/{name}              what ``mvr info --json`` prints
    POST   /indexes/{name}/search       {"query": str | [str], "k": int, ...search options, "explain": bool}
                                        -> {"results": [[{"id", "score", "title", "text", "metadata"}]], ...}
    POST   /indexes/{name}/documents    {"documents": [{"id", "text", "title"?, "metadata"?}], "upsert": bool}
    DELETE /indexes/{name}/documents    {"ids": [str]}
    GET    /metrics                     Prometheus text format

Every error is a status with ``{"detail": "one line that says what to do"}``: 400 a request mvr
refuses (an unknown first stage, a filter on a field the index lacks, a bad document), 401 no or
a wrong API key, 404 an unknown index, 409 the writer lock held elsewhere, 413 a body over the
limit, 415 a body not sent as JSON, 422 a body of the wrong shape or types, 501 an extra not
installed (docs/server.md has the whole table)."""

from __future__ import annotations

import logging
import time
from typing import Any, Union

from fastapi import Body, FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from .. import __version__
from ..errors import DeviceMemoryError, IndexExistsError, IndexFormatError, IndexLockedError, IndexNotFoundError, MissingExtraError, MvrError, QueryError
from .catalog import Catalog
from .limits import Limits
from .gate import Gate, Metrics

log = logging.getLogger("mvr.server")
Number = Union[StrictInt, StrictFloat]


class SearchRequest(BaseModel):
    """One query or a batch, and any search option of :class:`mvr.SearchOptions` (unset: the index's default)."""

    model_config = ConfigDict(extra="forbid")
    query: Union[StrictStr, list[StrictStr]] = Field(description="a query, or a list of queries searched as one batch")
    k: StrictInt = Field(10, description="hits per query (at most the server's --max-k)")
    preset: StrictStr | None = Field(None, description='a search preset saved in the index (unset: its default preset when no first_stage is named; "none": no preset)')
    first_stage: StrictStr | None = Field(None, description="how candidates are found: exhaustive, fde, centroids, pooled, bm25s, bm25, splade, or a hybrid such as fde+bm25s (unset: the index's default)")
    candidates: StrictInt | None = Field(None, description="first-stage candidates reranked by exact MaxSim")
    rerank: StrictBool | None = Field(None, description="false: the first stage's own ranking")
    prune_alpha: Number | None = Field(None, description="drop candidates scoring below (1 - alpha) x the k-th best first-stage score")
    early_exit: StrictInt | None = Field(None, description="stop reranking after this many candidates in a row miss the top k")
    fusion: StrictStr | None = Field(None, description="fuse MaxSim with first-stage scores: rrf, linear, or weighted (with weights)")
    fusion_weight: Number | None = Field(None, description="linear fusion: MaxSim's weight")
    weights: dict[StrictStr, Number] | None = Field(None, description='weighted fusion: each signal\'s weight, e.g. {"maxsim": 0.45, "pooled": 0.25, "bm25s": 0.3}')
    dense_share: Number | None = Field(None, description="hybrid first stages: the share of candidates from the vector stage")
    nprobe: StrictInt | None = Field(None, description="an FDE in a faiss IVF index: lists probed per query")
    ef_search: StrictInt | None = Field(None, description="an FDE in a faiss HNSW index: search breadth")
    centroid_probe: StrictInt | None = Field(None, description="the centroid stage: nearest centroids probed per query token")
    filter: dict[str, Any] | None = Field(None, description='keep documents whose metadata match, e.g. {"year": {"$gte": 2020}} ($eq $ne $in $nin $gt $gte $lt $lte $and $or $not)')
    group: StrictStr | None = Field(None, description='an index of passages: "documents" (default) or "passages"')
    prf: StrictStr | None = Field(None, description='pseudo-relevance feedback: "rm3" (the Lucene bm25 first stage\'s query) or "colbert" (ColBERT-PRF: a second search with the query\'s vectors expanded)')
    explain: StrictBool | None = Field(None, description="each hit's explanation: the document token behind each query token's maximum, its span, its share of the score")


class Hit(BaseModel):
    id: str
    score: float
    title: str
    text: str
    metadata: dict[str, Any]
    passage: str | None = Field(None, description="an index of passages: the id of the passage that matched")
    explanation: dict[str, Any] | None = Field(None, description="with explain: {maxsim, matches: [{query_token, token, span, field, score, share}]}")


class SearchResponse(BaseModel):
    results: list[list[Hit]]
    generation: int
    timings_ms: dict[str, float]


class NewDocument(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: StrictStr
    text: StrictStr
    title: StrictStr = ""
    metadata: dict[str, Any] = Field(default_factory=dict)


class AddRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    documents: list[NewDocument]
    upsert: StrictBool = False
    wait: Number | None = Field(None, description="seconds to wait for another process's writer (default: the server's limit)")


class DeleteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ids: list[StrictStr]
    wait: Number | None = None


# a damaged index is the server's fault, not the request's: 500, with what is damaged and how to repair it;
# a GPU out of memory is the server's state of the moment: 503, to retry
STATUS = ((IndexNotFoundError, 404), (IndexLockedError, 409), (IndexExistsError, 409), (MissingExtraError, 501), (IndexFormatError, 500), (DeviceMemoryError, 503))


def _status(error: MvrError) -> int:
    return next((code for kind, code in STATUS if isinstance(error, kind)), 400)


def _bad(message: str, status: int = 400) -> JSONResponse:
    if len(message) > 1000:  # an error that quotes what the client sent (a filter's value) does not send it all back
        message = f"{message[:1000]}... ({len(message)} characters)"
    return JSONResponse({"detail": message}, status_code=status)


def _validation_message(error: RequestValidationError) -> tuple[int, str]:
    problems = error.errors()
    if any(p.get("type") == "json_invalid" for p in problems):
        ctx = next(p for p in problems if p.get("type") == "json_invalid").get("ctx", {})
        return 400, f"malformed JSON body ({ctx.get('error', 'cannot parse')}): send one JSON object."
    parts = []
    for p in problems[:5]:
        where = ".".join(str(x) for x in p.get("loc", ()) if x != "body") or "body"
        parts.append(f"{where}: {p.get('msg', 'invalid')}")
    more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
    return 422, "invalid request: " + "; ".join(parts) + more + "."


def create_app(catalog: Catalog, *, api_key: str | None = None, limits: Limits | None = None) -> Gate:
    """The ASGI application serving ``catalog`` (pass it to uvicorn)."""
    limits = limits or Limits()
    metrics = Metrics()
    app = FastAPI(title="mvr", version=__version__, description="Multi-vector (late-interaction) retrieval: search, add and delete over HTTP.",
                  docs_url=None, redoc_url=None)  # FastAPI's pages fetch their scripts from a CDN: /docs is mvr's own (page.py)
    app.state.catalog, app.state.limits, app.state.metrics = catalog, limits, metrics

    @app.exception_handler(MvrError)
    async def _mvr_error(request, error: MvrError):
        return _bad(str(error), _status(error))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, error: RequestValidationError):
        status, message = _validation_message(error)
        return _bad(message, status)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, error: StarletteHTTPException):
        if error.status_code == 404:
            return _bad(f"no route {request.method} {request.url.path}: the routes are listed at /docs (schema /openapi.json).", 404)
        if error.status_code == 405:  # with the Allow header Starlette made (RFC 9110)
            reply = _bad(f"{request.method} is not allowed on {request.url.path}: see /docs for the methods of each route.", 405)
            reply.headers.update(error.headers or {})
            return reply
        if error.status_code == 400 and "parsing the body" in str(error.detail):
            return _bad("cannot read the body as JSON (malformed, not UTF-8, nested too deeply, or a number of more than 4,300 digits): send one JSON object, encoded as UTF-8.", 400)
        return _bad(str(error.detail), error.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(request, error: Exception):
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return _bad(f"internal error ({type(error).__name__}): the server log has the details; please report it.", 500)

    @app.get("/healthz")
    @app.head("/healthz", include_in_schema=False)  # HEAD on every GET route: what load balancers and monitors probe with
    async def healthz():  # on the event loop: answered while every worker thread is taken by searches waiting their turn
        """Whether the server answers, how many indexes it serves, since when, and which server it is."""
        return {"status": "ok", "indexes": catalog.present(), "uptime_s": round(time.time() - catalog.started, 1), "instance": catalog.instance}

    @app.get("/indexes")
    @app.head("/indexes", include_in_schema=False)
    def indexes():
        """The indexes served, with their documents and metadata fields; those that cannot be opened under "unavailable"."""
        listed, unavailable = [], []
        for name in catalog.names():
            try:
                listed.append(catalog.get(name).summary())
            except MvrError as error:  # removed or damaged since it was opened: listed apart, as one that cannot be opened (docs/server.md)
                logging.getLogger("mvr.server").warning("not listing index %r: %s", name, error)
                unavailable.append({"name": name, "error": str(error)})
        served = set(catalog.names(discover=False))
        unavailable += [{"name": name, "error": error} for name, error in catalog.failed.items() if name not in served]
        return {"indexes": listed, "unavailable": sorted(unavailable, key=lambda u: u["name"])}

    @app.get("/indexes/{name}")
    @app.head("/indexes/{name}", include_in_schema=False)
    def info(name: str):
        """What the index holds and how it was built (mvr info)."""
        served = catalog.get(name)
        summary = served.summary()  # refreshes: the info below reads the same commit, unless a write lands in between
        return {**summary, "info": served.index.info()}

    @app.post("/indexes/{name}/search", response_model=SearchResponse, response_model_exclude_unset=True)
    def search(name: str, request: SearchRequest = Body(...)):
        """Search the index with one query or a batch; the options of mvr search."""
        queries = [request.query] if isinstance(request.query, str) else request.query
        if "k" not in request.model_fields_set:  # the default k within a server's smaller --max-k
            request.k = min(request.k, limits.max_k)
        _check_search(queries, request, limits)
        served = catalog.get(name)
        options = request.model_dump(exclude_none=True, exclude={"query", "k", "first_stage", "candidates"})
        index = served.current()  # before a search slot is taken: a refresh may wait for a rebuild's swap
        metrics.in_flight.inc()
        try:
            with catalog.gate:
                results = index.search(queries, request.k, first_stage=request.first_stage, candidates=request.candidates, threads=catalog.threads, **options)
        finally:
            metrics.in_flight.dec()
        timings = results.timings
        for stage, ms in timings.items():
            metrics.stages.labels(name, stage).observe(ms / 1e3)
        metrics.queries.labels(name).inc(len(queries))
        return {"results": results.to_dicts(), "generation": results._index.generation, "timings_ms": {k: round(v, 3) for k, v in timings.items()}}

    @app.post("/indexes/{name}/documents")
    def add(name: str, request: AddRequest = Body(...)):
        """Add documents in one commit (upsert: replace those already there); searches see them once it returns."""
        if len(request.documents) > limits.max_documents:
            return _bad(f"{len(request.documents)} documents in one request; the limit is {limits.max_documents} (send them in several).", 413)
        served = catalog.get(name)
        documents = [d.model_dump() for d in request.documents]
        done = _write(served, lambda index, wait: (index.upsert if request.upsert else index.add)(documents, wait=wait, show_progress=False), request.wait, limits)
        metrics.writes.labels(name, "add").inc(max(done["added"] - done["replaced"], 0))
        metrics.writes.labels(name, "replace").inc(done["replaced"])
        return done

    @app.delete("/indexes/{name}/documents")
    def delete(name: str, request: DeleteRequest = Body(...)):
        """Delete documents by id in one commit; ids the index does not hold are listed as missing."""
        if len(request.ids) > limits.max_documents:
            return _bad(f"{len(request.ids)} ids in one request; the limit is {limits.max_documents} (send them in several).", 413)
        served = catalog.get(name)
        done = _write(served, lambda index, wait: index.delete(request.ids, wait=wait), request.wait, limits)
        metrics.writes.labels(name, "delete").inc(done["deleted"])
        return done

    @app.get("/metrics")
    @app.head("/metrics", include_in_schema=False)
    def prometheus():
        """Prometheus metrics: requests, latency, search stages, documents and commit of each index."""
        for name in catalog.names(discover=False):
            served = catalog.get(name)
            try:
                index = served.current()
            except MvrError:  # removed, or mid-rebuild for longer than a refresh waits: the last figures stand
                index = served.index
            metrics.documents.labels(name).set(served.documents())
            metrics.generation.labels(name).set(index.generation)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    from .page import add_page

    add_page(app)
    return Gate(app, api_key=api_key, max_body_bytes=limits.max_body_bytes, metrics=metrics, routes=app.router.routes, request_seconds=limits.request_seconds)


def _check_search(queries: list[str], request: SearchRequest, limits: Limits) -> None:
    if not queries:
        raise QueryError("an empty list of queries: send at least one.")
    if len(queries) > limits.max_batch:
        raise QueryError(f"{len(queries)} queries in one request; the limit is {limits.max_batch} (mvr serve --max-batch).")
    longest = max(len(q) for q in queries)
    if longest > limits.max_query_chars:
        raise QueryError(f"a query of {longest} characters; the limit is {limits.max_query_chars} (mvr serve --max-query-chars).")
    if request.k > limits.max_k:
        raise QueryError(f"k={request.k} is over this server's limit of {limits.max_k} (mvr serve --max-k).")
    for name in ("candidates", "nprobe", "ef_search", "centroid_probe", "early_exit"):  # each bounds the work of one query
        value = getattr(request, name)
        if value is not None and value > limits.max_candidates:
            raise QueryError(f"{name}={value} is over this server's limit of {limits.max_candidates} (mvr serve --max-candidates).")
    if request.explain and request.k * len(queries) > limits.max_k:
        raise QueryError(f"explain re-reads every hit: at most {limits.max_k} hits per request (k x queries), got {request.k * len(queries)} (mvr serve --max-k).")


def _write(served, change, wait, limits: Limits) -> dict:
    """One write through the index's single writer: this server's writes one at a time, another
    process's writer waited for up to ``wait`` seconds (capped by the server), then the index
    moved to the new commit so the next search sees it."""
    if wait is not None and not 0 <= wait <= limits.max_wait:
        raise QueryError(f"wait must lie in [0, {limits.max_wait}] seconds, got {wait!r}.")
    with served.write_lock:
        done = change(served.index, limits.max_wait if wait is None else wait)
        served.current()
    return done

