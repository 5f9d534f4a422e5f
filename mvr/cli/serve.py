"""``mvr serve``: indexes kept open and warm behind an HTTP API and a search page (extra ``mvr[server]``)."""

from __future__ import annotations

import argparse
import sys

from .common import add_common


def add_parser(sub) -> argparse.ArgumentParser:
    from ..server import REFRESH_SECONDS
    from ..server.limits import LIMITS

    p = sub.add_parser(
        "serve", help="serve indexes over HTTP", description="Serve indexes over HTTP (search, add, delete, info, metrics) and a search page at /."
    )
    p.add_argument("indexes", nargs="*", metavar="NAME", help="indexes to serve (default: every index under --index-dir, and any built there later)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; any other needs an API key)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one, printed at start)")
    p.add_argument("--api-key", default=None, help="every request must send 'Authorization: Bearer KEY' (default: $MVR_API_KEY)")
    p.add_argument("--refresh", type=float, default=REFRESH_SECONDS, metavar="S",
                   help=f"move every index to its newest commit each S seconds even when no request comes, letting go of replaced ones (default {REFRESH_SECONDS:g}; 0: only before requests)")
    p.add_argument("--concurrency", type=int, default=None, help="searches computed at once (default: one per core); more wait their turn")
    p.add_argument("--warm-writes", action="store_true",
                   help="load each index's document encoder at start, in the background, so that the first add does not wait seconds for it (memory: one encoder per index)")
    limits = p.add_argument_group("limits (a request over one gets a 4xx that names the option)")
    for name, value in LIMITS.items():
        limits.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value, help=f"default {value}")
    p.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"])
    add_common(p)
    p.set_defaults(threads=None)
    return p


def run(args) -> int:
    from ..server import Limits, serve
    from ..server.limits import LIMITS

    limits = Limits(**{name: getattr(args, name) for name in LIMITS})

    def ready(url: str) -> None:
        print(f"mvr: serving at {url} (search page at {url}/, API at {url}/docs)", flush=True)

    def opening() -> None:  # said once the settings pass (a refused --host says nothing of indexes)
        if not args.quiet:
            print("mvr: opening and warming the indexes...", file=sys.stderr, flush=True)

    serve(args.indexes, host=args.host, port=args.port, home=args.index_dir, api_key=args.api_key, limits=limits, threads=args.threads,
          concurrency=args.concurrency, refresh=args.refresh, log_level=args.log_level, ready=ready, opening=opening,
          warm_writes=args.warm_writes)
    return 0
