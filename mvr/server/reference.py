"""The API reference ``mvr serve`` answers at ``/docs``: its OpenAPI schema as one HTML page with
nothing to fetch. FastAPI's own pages load Swagger UI from a CDN, which a machine offline (or a
browser behind a strict proxy) cannot reach: they showed a blank page, while every 404 pointed there."""

from __future__ import annotations

import html

_STYLE = """body{font:15px/1.45 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}
h2{font-size:1.05rem;margin:2rem 0 .3rem;border-top:1px solid #ddd;padding-top:1rem}code{font-size:.95em}
table{border-collapse:collapse;width:100%}td,th{text-align:left;vertical-align:top;padding:.25rem .6rem .25rem 0;border-bottom:1px solid #eee}
th{font-weight:600}.method{color:#05a}.muted{color:#666}"""


def reference_html(schema: dict) -> str:
    """The page for ``schema`` (FastAPI's ``app.openapi()``): each route with its method, what it
    does, its path parameters and the fields of its JSON body, with their types and defaults."""
    shared = schema.get("components", {}).get("schemas", {})
    info = schema.get("info", {})
    out = [f"<!doctype html><html lang=en><meta charset=utf-8><title>{_e(info.get('title', 'API'))} API</title><style>{_STYLE}</style>",
           f"<h1>{_e(info.get('title', 'API'))} {_e(info.get('version', ''))}: HTTP API</h1>",
           f"<p>{_e(info.get('description', ''))} Requests and answers are JSON; every error is <code>{{\"detail\": \"...\"}}</code> "
           "with a 4xx or 5xx status. The machine-readable schema is at <a href=openapi.json><code>/openapi.json</code></a>.</p>"]
    for path, methods in schema.get("paths", {}).items():
        for method, operation in methods.items():
            out.append(f"<h2><span class=method>{method.upper()}</span> <code>{_e(path)}</code></h2>")
            about = operation.get("description") or operation.get("summary") or ""
            out.append(f"<p>{_e(about)}</p>" if about else "")
            rows = [(p["name"], f"path: {_type(p.get('schema', {}))}", True, None, p.get("description", "")) for p in operation.get("parameters", [])]
            body = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            out.append(_table(rows + (_fields(_resolve(body, shared)) if body else [])))
            answer = operation.get("responses", {}).get("200", {}).get("content", {}).get("application/json", {}).get("schema")
            if answer and "$ref" in answer:
                out.append(f"<p class=muted>Answers a {_e(_type(answer))} (below).</p>")
    out.append("<h2>Objects</h2>")
    for name, model in shared.items():
        if name not in ("HTTPValidationError", "ValidationError"):  # a 422's detail is a message here (mvr/server/api.py)
            out.append(f"<h3 id={_e(name)}><code>{_e(name)}</code></h3>")
            out.append(_table(_fields(model)))
    return "\n".join(part for part in out if part) + "\n"


def _fields(model: dict) -> list[tuple]:
    """``(name, type, required, default, description)`` of each field of an object's schema."""
    required = set(model.get("required", ()))
    return [(name, _type(field), name in required, field.get("default"), field.get("description", "")) for name, field in model.get("properties", {}).items()]


def _table(rows: list[tuple]) -> str:
    if not rows:
        return ""
    cells = [f"<tr><td><code>{_e(name)}</code></td><td>{_e(kind)}</td><td>{'required' if needed else _e(_default(default))}</td><td>{_e(about)}</td></tr>"
             for name, kind, needed, default, about in rows]
    return "<table><tr><th>field</th><th>type</th><th>default</th><th>what it is</th></tr>" + "".join(cells) + "</table>"


def _resolve(schema: dict, shared: dict) -> dict:
    ref = schema.get("$ref", "")
    return shared.get(ref.rsplit("/", 1)[-1], {}) if ref else schema


def _type(schema: dict) -> str:
    """``schema``'s type in words: ``string or list of string``, ``integer or null``, a model's name."""
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[-1]
    if "anyOf" in schema:
        kinds = dict.fromkeys(_type(s) for s in schema["anyOf"])
        return " or ".join(k for k in kinds if not (k == "integer" and "number" in kinds))  # an integer is a number
    if schema.get("type") == "array":
        return f"list of {_type(schema.get('items', {}))}"
    if schema.get("type") == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"object of {_type(schema['additionalProperties'])}"
    return str(schema.get("type", "any"))


def _default(value) -> str:
    return "" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def _e(text) -> str:
    return html.escape(str(text))
