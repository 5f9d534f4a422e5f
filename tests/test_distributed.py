"""Runs the Ray cases (tests/ray_cases.py: a local instance; tests/ray_nodes_cases.py: a cluster of
two nodes) each in a pytest process of its own: Ray's threads and signal handlers and the JVM that
the Lucene tests start do not share a process, and a process joins one Ray cluster."""

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
