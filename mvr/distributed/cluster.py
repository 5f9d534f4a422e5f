"""Joining a Ray cluster, and the nodes work is placed on."""

from __future__ import annotations

import os
import re
import socket

from ..threads import cores
from ..errors import ConfigError, missing_extra, shown


def _ray():
    try:
        import ray
    except ImportError as error:
        raise missing_extra("Ray (--ray, mvr.distributed)", "ray", error) from None
    return ray


def connect(address: str = "local", cpus: int | None = None) -> None:
    """Join the Ray cluster at ``address`` ("local": start one on this machine, with ``cpus``
    CPUs); nothing when this process is connected already."""
    ray = _ray()
    if ray.is_initialized():
        return
    if cpus is not None and (not isinstance(cpus, int) or cpus < 1):
        raise ConfigError(f"a local Ray instance needs a positive number of CPUs (--ray-workers), got {cpus!r}.")
    if address == "local" and cpus is not None and cpus > cores():
        raise ConfigError(f"a local Ray instance of {cpus} CPUs is more than the {cores()} cores of this machine (each --ray-workers worker holds the model); use at most {cores()}.")
    env = {"env_vars": {k: v for k, v in os.environ.items() if k.startswith("MVR_")}}
    _reachable(address)
    try:
        if address == "local":
            ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False, runtime_env=env)  # a new instance, not one running here already
        else:
            ray.init(address=address, log_to_driver=False, runtime_env=env)
    except (ConnectionError, RuntimeError, ValueError, ray.exceptions.RayError) as error:  # AuthenticationError is a RayError
        first = first_line(error).split(". ")[0]
        if _refused_token(error):
            raise ConfigError(f"the Ray cluster at {address!r} asks for its authentication token ({first}); run on one of its nodes with --ray auto, "
                              "or set RAY_AUTH_MODE=token and give the token (RAY_AUTH_TOKEN or ~/.ray/auth_token).") from None
        raise ConfigError(f"could not join the Ray cluster at {address!r} ({first}); give 'local' or the address `ray start --head` printed.") from None


def _reachable(address: str) -> None:
    """A ConfigError unless ``address`` is "local", "auto", or a ``[ray://]host:port`` that accepts a
    connection within 5 s (Ray itself retries an unreachable one for minutes, printing warnings)."""
    if address in ("local", "auto"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if address.startswith("ray://") and not port.isdigit():  # Ray Client's port by default
        host, port = address.removeprefix("ray://"), "10001"
    if not host or not port.isdigit():
        raise ConfigError(f"--ray takes local, auto or a cluster's address host:port (as `ray start --head` prints it), got {address!r}.")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=5) as probe:
            answer = _answer(probe)
    except OSError as error:
        raise ConfigError(f"could not reach the Ray cluster at {address!r} ({error.strerror or error}); give 'local', 'auto' or the address `ray start --head` printed.") from None
    if answer and answer[3:4] != b"\x04" and answer[:1] != b"\x15":  # neither HTTP/2's SETTINGS nor a TLS alert: Ray would retry it for minutes
        raise ConfigError(f"{address!r} answers as no Ray cluster does (its head speaks gRPC; this sent {shown(answer[:24].decode('latin-1'))}); give the address `ray start --head` printed.")


def _answer(probe: socket.socket) -> bytes:
    """What a server says to the opening of an HTTP/2 connection (gRPC's, which Ray's head and
    client server speak: a SETTINGS frame); b"" where it says nothing within 3 s."""
    probe.settimeout(3)
    probe.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]))
    try:
        return probe.recv(64)
    except (socket.timeout, OSError):
        return b""


def first_line(error: BaseException) -> str:
    """The first line of a (Ray) error's message, or its type's name where it has none."""
    return re.sub(r"\x1b\[[0-9;]*m", "", (str(error).strip().splitlines() or [type(error).__name__])[0])  # without Ray's colours


def _refused_token(error: BaseException | None) -> bool:
    """Whether Ray's error, or one it was raised from, is a missing or refused authentication token
    (Ray 2.60's `ray start` turns token authentication on where a token exists)."""
    seen = set()
    while error is not None and id(error) not in seen:
        if "AuthenticationError" in type(error).__name__ or "InvalidAuthToken" in str(error):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


def _node() -> str:
    """The id of the Ray node this process runs on."""
    return _ray().get_runtime_context().get_node_id()


def _session() -> tuple[str, str] | None:
    """What tells this process's Ray connection from a later one (None: not connected): a new local
    instance has a new node id, the same cluster joined again a new job id."""
    ray = _ray()
    if not ray.is_initialized():  # asked first: Ray's calls would start a new local instance
        return None
    context = ray.get_runtime_context()
    return context.get_node_id(), context.get_job_id()


def _worker_nodes() -> list[str]:
    """The ids of the cluster's live nodes that have CPUs (all live nodes where none has), the node
    this process is attached to first (under Ray Client, the head), then in Ray's order."""
    alive = [n for n in _ray().nodes() if n.get("Alive")]
    ids = [n["NodeID"] for n in alive if n.get("Resources", {}).get("CPU", 0) > 0] or [n["NodeID"] for n in alive]
    here = _node()
    return sorted(ids, key=lambda node: node != here)
