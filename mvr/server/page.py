"""The search page ``mvr serve`` answers at ``/``: one HTML file with its script, no build step.
It holds no data (the key, when the server has one, is typed into it and sent with each request)."""

from __future__ import annotations

from importlib import resources

from fastapi.responses import HTMLResponse


def page_html() -> str:
    return resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")


def add_page(app) -> None:
    """The search page at ``/`` and the API reference at ``/docs`` (mvr/server/reference.py): each
    one HTML answer that fetches nothing from elsewhere; added last, so the reference lists every route."""
    from .reference import reference_html

    html, reference = page_html(), reference_html(app.openapi())

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    @app.head("/docs", response_class=HTMLResponse, include_in_schema=False)
    def docs():
        return HTMLResponse(reference, headers={"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'"})

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    @app.head("/", response_class=HTMLResponse, include_in_schema=False)
    def page():
        return HTMLResponse(html, headers={"Cache-Control": "no-cache", "Content-Security-Policy": "default-src 'self'; style-src 'unsafe-inline'; script-src 'unsafe-inline'"})
