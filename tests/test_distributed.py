"""Runs the Ray cases (tests/ray_cases.py: a local instance; tests/ray_nodes_cases.py: a cluster of
two nodes) each in a pytest process of its own: Ray's threads and signal handlers and the JVM that
the Lucene tests start do not share a process, and a process joins one Ray cluster."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray")


@pytest.mark.parametrize("cases", ["ray_cases.py", "ray_nodes_cases.py"])
def test_ray_cases_in_a_process_of_their_own(tmp_path, cases):
    here = Path(__file__).parent
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp", str(tmp_path / "t"), str(here / cases)],
        cwd=here.parent, capture_output=True, text=True, timeout=1800,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "skipped" not in done.stdout.splitlines()[-1], done.stdout[-2000:]


def test_a_refused_token_is_told_apart_from_an_unreachable_cluster():
    from mvr.distributed.cluster import _refused_token

    def raised(error, cause):
        try:
            raise error from cause
        except Exception as caught:
            return caught

    # as Ray 2.60 raised it on joining a `ray start` cluster without the token (seen here)
    refused = raised(ConnectionError("Failed to connect to Ray cluster at 192.0.2.2:6391"),
                     RuntimeError("Failed to connect to GCS. ... ray.exceptions.AuthenticationError: RPC error: InvalidAuthToken: Authentication token is missing"))
    assert _refused_token(refused)
    assert not _refused_token(raised(ConnectionError("Failed to connect to Ray cluster at 10.0.0.1:6379"), TimeoutError("no answer")))


@pytest.mark.parametrize("address, says", [("127.0.0.1:1", "could not reach the Ray cluster at '127.0.0.1:1'"), ("", "--ray takes local, auto or a cluster's address")])
def test_an_address_without_a_cluster_is_a_one_line_error_at_once(tmp_path, address, says):
    # Ray retried an address where nothing listens for minutes, printing warnings; --ray "" built without Ray
    code = f"from mvr.cli import main; raise SystemExit(main(['index', 'x.jsonl', '--path', 'y', '--ray', {address!r}]))"
    (tmp_path / "x.jsonl").write_text('{"id": "a", "text": "one document"}\n')
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stderr.strip().startswith(f"mvr: error: {says}") and "\n" not in done.stderr.strip(), done.stderr[-2000:]
    assert not (tmp_path / "y").exists()


def test_an_address_where_a_web_server_listens_is_refused_at_once(tmp_path):
    # it accepts connections, so Ray was let try it: for minutes, printing warnings, until killed
    import http.server
    import threading

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        address = f"127.0.0.1:{server.server_address[1]}"
        code = f"from mvr.cli import main; raise SystemExit(main(['index', 'x.jsonl', '--path', 'y', '--ray', '{address}']))"
        (tmp_path / "x.jsonl").write_text('{"id": "a", "text": "one document"}\n')
        done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}, capture_output=True, text=True, timeout=60)
    finally:
        server.shutdown()
        server.server_close()
    assert done.returncode == 2 and done.stderr.strip().startswith(f"mvr: error: '{address}' answers as no Ray cluster does") and "\n" not in done.stderr.strip(), done.stderr[-2000:]


def test_a_local_instance_larger_than_the_machine_is_refused(tmp_path):
    # before Ray starts: an instance of 99,999 CPUs would start a worker, each with the model, for each
    # (in a process of its own: Ray is imported there)
    code = "from mvr.cli import main; raise SystemExit(main(['index', 'x.jsonl', '--path', 'y', '--ray', 'local', '--ray-workers', '99999']))"
    (tmp_path / "x.jsonl").write_text('{"id": "a", "text": "one document"}\n')
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and done.stderr.strip().endswith(f"more than the {len(os.sched_getaffinity(0))} cores of this machine (each --ray-workers worker holds the model); use at most {len(os.sched_getaffinity(0))}."), done.stderr[-2000:]
    assert not (tmp_path / "y").exists()


def test_joining_without_the_token_is_a_one_line_error(tmp_path):
    # Ray raises its AuthenticationError itself when token authentication is on and no token is
    # found; in a process of its own, as Ray is imported and started there
    import socket

    with socket.create_server(("127.0.0.1", 0)) as listening:  # an address that answers, as a cluster's would
        address = f"127.0.0.1:{listening.getsockname()[1]}"
        code = f"from mvr.cli import main; raise SystemExit(main(['index', 'x.jsonl', '--path', 'y', '--ray', '{address}']))"
        env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(tmp_path / "no-token"), "PYTHONPATH": os.pathsep.join(sys.path)}
        (tmp_path / "x.jsonl").write_text('{"id": "a", "text": "one document"}\n')
        done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    errors = [line for line in done.stderr.splitlines() if line.startswith("mvr: error:")]
    assert done.returncode != 0 and len(errors) == 1 and "asks for its authentication token" in errors[0], done.stderr[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
