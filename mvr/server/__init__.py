"""``mvr serve``: indexes kept open and warm behind an HTTP API (FastAPI + uvicorn, extra
``mvr[server]``). The routes: :mod:`mvr.server.api`.

    >>> from mvr.server import serve
    >>> serve(["scifact"], host="127.0.0.1", port=8000)   # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import importlib
import ipaddress
import os
import signal
import socket
import sys
import threading
import time

from ..errors import ConfigError, missing_extra
from .limits import LIMITS, Limits

REFRESH_SECONDS = 1.0  # an idle server's indexes move to their newest commit this often

__all__ = ["Limits", "LIMITS", "create_app", "serve", "background", "is_loopback", "open_socket"]


def require_server() -> None:
    """A MissingExtraError naming ``mvr[server]`` where its packages (FastAPI, uvicorn) are missing."""
    try:
        importlib.import_module("uvicorn")
        importlib.import_module(".api", __package__)
    except ImportError as error:
        raise missing_extra("mvr serve", "server", error) from None


def create_app(catalog, *, api_key: str | None = None, limits: Limits | None = None):
    """The ASGI application that serves ``catalog``: see :func:`mvr.server.api.create_app`."""
    try:
        from .api import create_app as create
    except ImportError as error:
        raise missing_extra("mvr serve", "server", error) from None
    return create(catalog, api_key=api_key, limits=limits)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, api_key: str | None) -> None:
    """Refuse to listen beyond this machine without an API key."""
    if not api_key and not is_loopback(host):
        raise ConfigError(
            f"refusing to serve on {host} without an API key: anyone who reaches it could read and change the indexes. "
            "Set --api-key KEY (or MVR_API_KEY), or listen on 127.0.0.1."
        )


def open_socket(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: a free one, see ``getsockname()``)."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as error:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port} ({error.strerror or error}): choose another --port, or stop what holds it.") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def uvicorn_server(app, sock: socket.socket, *, log_level: str = "warning", limits: Limits | None = None):
    """A uvicorn server for ``app`` on ``sock`` (``.run(sockets=[sock])`` serves; set ``should_exit``
    to stop); a request's headers must arrive within ``limits.request_seconds`` (mvr/server/protocol.py)."""
    try:
        import uvicorn

        from .protocol import deadline_protocol
    except ImportError as error:
        raise missing_extra("mvr serve", "server", error) from None
    seconds = (limits or Limits()).request_seconds
    config = uvicorn.Config(app, log_level=log_level, access_log=False, timeout_keep_alive=30, lifespan="off", http=deadline_protocol(seconds))
    return uvicorn.Server(config)


def serve(names=(), *, host: str = "127.0.0.1", port: int = 8000, home=None, api_key: str | None = None, limits: Limits | None = None,
          threads: int | None = None, concurrency: int | None = None, refresh: float = REFRESH_SECONDS, log_level: str = "warning", ready=None, opening=None, warm_writes: bool = False) -> None:
    """Serve ``names`` (default: every index in ``home``) until interrupted. ``api_key`` (default
    ``$MVR_API_KEY``): every request must send it; required to listen beyond loopback.
    ``refresh``: seconds between moves of every index to its newest commit when no request comes
    (0: only before requests; see :meth:`Catalog.following`).
    ``opening()`` is called once the settings are checked, as the indexes are opened and warmed;
    ``ready(url)`` once the socket listens and the indexes are warm. ``warm_writes``: load each
    index's document encoder too, in the background while requests are served (one per index,
    hundreds of MB each), so that the first add does not wait for it."""
    api_key = api_key or os.environ.get("MVR_API_KEY") or None
    check_exposure(host, api_key)
    from ..storage.names import home_folder
    from .catalog import Catalog, check_refresh, shares

    check_refresh(refresh)  # every setting before the indexes are opened and warmed
    shares(threads, concurrency)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError(f"port must be a number from 0 to 65535 (0: a free one), got {port!r}.")
    served_home = home_folder(home)  # the catalog's
    if not names and not served_home.is_dir():  # every index of a home: one that is not there serves nothing until it is made
        if served_home.exists():
            raise ConfigError(f"{served_home} is a file; --index-dir names the folder of the indexes to serve.")
        print(f"mvr: warning: {served_home} does not exist: no index is served until one is built there.", file=sys.stderr)
    require_server()  # before the port and the indexes: a missing package is said at once
    sock = open_socket(host, port)  # a port in use is said before the indexes are opened and warmed, not after
    try:
        if opening is not None:
            opening()
        catalog = Catalog(names, served_home, threads=threads, concurrency=concurrency)
        app = create_app(catalog, api_key=api_key, limits=limits)
        runner = uvicorn_server(app, sock, log_level=log_level, limits=limits)
    except BaseException:
        sock.close()
        raise
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{bound}"
    from ..client import register, servers_dir, unregister

    # so that `mvr search` on the same machine answers through this warm server
    try:
        note = register(url, {name: served.index.path for name, served in catalog._served.items()}, None if catalog.fixed else catalog.home, bool(api_key), catalog.instance)
    except OSError as error:  # a convenience: the server serves without it
        note = None
        print(f"mvr: warning: cannot leave a note for `mvr search` in {servers_dir()} ({error.strerror or error}): it will reach this server with --server {url} only.", file=sys.stderr)
    if threading.current_thread() is threading.main_thread():
        # uvicorn shuts down on SIGTERM, then raises it again with the handler it found: this one
        # ends the process through SystemExit, so the note below is removed
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        with catalog.following(refresh):
            if ready:
                ready(url)
            if warm_writes:
                threading.Thread(target=catalog.warm_writes, name="mvr-warm-writes", daemon=True).start()
            runner.run(sockets=[sock])
    finally:
        sock.close()
        if note is not None:
            unregister(note)


@contextlib.contextmanager
def background(catalog, *, host: str = "127.0.0.1", port: int = 0, api_key: str | None = None, limits: Limits | None = None, timeout: float = 30.0,
               refresh: float = REFRESH_SECONDS):
    """Serve ``catalog`` from a thread of this process while the ``with`` block runs; yields the
    base URL (port 0: a free one). For notebooks, tests and benchmarks. ``refresh``: as :func:`serve`'s."""
    check_exposure(host, api_key)
    app = create_app(catalog, api_key=api_key, limits=limits)
    sock = open_socket(host, port)
    runner = uvicorn_server(app, sock, limits=limits)
    thread = threading.Thread(target=runner.run, kwargs={"sockets": [sock]}, name="mvr-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not runner.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        if not runner.started:
            raise ConfigError(f"the server did not start within {timeout} s on {host}:{sock.getsockname()[1]}.")
        with catalog.following(refresh):
            yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        runner.should_exit = True
        thread.join(timeout)
        sock.close()
