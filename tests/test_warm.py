"""Friendlier long work: `mvr search` answered by a running `mvr serve`, progress lines with totals
and ETA off a terminal, and the index home from MVR_INDEX_DIR."""

import json
import os
import subprocess
import sys

import pytest

from mvr.client import find_server, register

from conftest import DOCS


def _env(tmp_path, **extra):
    return {**os.environ, "MVR_RUNTIME_DIR": str(tmp_path / "runtime"), **extra}


def _mvr(args, env, **kwargs):
    return subprocess.run([sys.executable, "-m", "mvr.cli", *args], capture_output=True, text=True, timeout=600, env=env, **kwargs)


@pytest.fixture(scope="module")
def home(tmp_path_factory, default_encoder):
    from mvr import Index

    home = tmp_path_factory.mktemp("warm")
    Index.build([{"id": i, "title": t, "text": x} for i, t, x in DOCS], home / "docs", encoder=default_encoder, show_progress=False)
    return home


def test_mvr_search_answers_through_a_running_server(home, tmp_path):
    pytest.importorskip("fastapi")
    httpx = pytest.importorskip("httpx")
    env = _env(tmp_path, MVR_INDEX_DIR=str(home))
    server = subprocess.Popen([sys.executable, "-m", "mvr.cli", "serve", "--port", "0", "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = server.stdout.readline()
        assert "serving at" in line, server.stderr.read()
        url = line.split("serving at ")[1].split()[0]
        assert find_server.__module__ == "mvr.client"
        for extra in ([], ["--json", "--explain"], ["--trec", "--first-stage", "exhaustive"]):
            through = _mvr(["search", "docs", "which animal purrs?", "-k", "3", *extra], env)
            local = _mvr(["search", "docs", "which animal purrs?", "-k", "3", "--no-server", *extra], env)
            assert through.returncode == 0 and local.returncode == 0, through.stderr + local.stderr
            assert through.stdout == local.stdout and "d1" in through.stdout
        metrics = httpx.get(f"{url}/metrics").text
        assert 'mvr_http_requests_total{method="POST",route="/indexes/{name}/search",status="200"} 3.0' in metrics  # the three searches above
        named = _mvr(["search", "docs", "capital of France", "-k", "1", "--server", url, "--json"], env)
        assert json.loads(named.stdout)["hits"][0]["id"] == "d5"
        notes = list((tmp_path / "runtime").glob("*.json"))
        assert len(notes) == 1 and json.loads(notes[0].read_text())["home"] == str(home.resolve())
    finally:
        server.terminate()
        assert server.wait(timeout=60) == 0  # SIGTERM: a clean stop, which removes the note
    assert not list((tmp_path / "runtime").glob("*.json"))
    gone = _mvr(["search", "docs", "capital of France", "-k", "1", "--server", url], env)
    assert gone.returncode == 2 and "cannot reach the mvr server" in gone.stderr


def test_notes_of_servers_that_died_are_dropped(tmp_path, monkeypatch, home):
    monkeypatch.setenv("MVR_RUNTIME_DIR", str(tmp_path / "runtime"))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    note = register("http://127.0.0.1:9", {"docs": home / "docs"}, None, False)
    os.replace(note, note.with_name(f"{dead.pid}.json"))
    record = json.loads(note.with_name(f"{dead.pid}.json").read_text())
    record["pid"] = dead.pid
    note.with_name(f"{dead.pid}.json").write_text(json.dumps(record))
    assert find_server(home / "docs") is None and not list((tmp_path / "runtime").glob("*.json"))
    live = register("http://127.0.0.1:9", {"docs": home / "docs"}, None, False)  # this process: alive
    assert find_server(home / "docs") == ("http://127.0.0.1:9", "docs")
    live.unlink()


def test_progress_lines_off_a_terminal(tmp_path, home):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"x{i}", "text": f"{t} {x} number {i}"}) + "\n" for i, (_, t, x) in enumerate(DOCS * 5)))
    env = _env(tmp_path, MVR_PROGRESS_SECONDS="0", MVR_QUIET="")  # the suite is quiet otherwise (conftest)
    run = _mvr(["index", str(corpus), "--name", "p", "--index-dir", str(tmp_path / "h")], env)
    assert run.returncode == 0, run.stderr
    lines = [line for line in run.stderr.splitlines() if line.startswith("mvr: encoding")]
    assert any("/40 docs (" in line and "ETA" in line for line in lines), run.stderr  # total from the corpus, rate and ETA
    assert any("40/40 docs in" in line for line in lines)  # and the closing line
    assert any(line.startswith("mvr: FDE:") for line in run.stderr.splitlines())
    quiet = _mvr(["index", str(corpus), "--name", "q", "--index-dir", str(tmp_path / "h"), "--quiet"], env)
    assert quiet.returncode == 0 and "mvr: encoding" not in quiet.stderr


def test_the_index_home_comes_from_mvr_index_dir(home, tmp_path):
    listed = _mvr(["list"], _env(tmp_path, MVR_INDEX_DIR=str(home)), cwd=tmp_path)
    assert listed.stdout.split() == ["docs"]
    found = _mvr(["search", "docs", "tea", "-k", "1", "--no-server"], _env(tmp_path, MVR_INDEX_DIR=str(home)), cwd=tmp_path)
    assert found.returncode == 0 and "d8" in found.stdout


def test_a_note_is_used_only_for_the_index_it_names_and_with_a_key_when_one_is_wanted(tmp_path, monkeypatch, home):
    monkeypatch.setenv("MVR_RUNTIME_DIR", str(tmp_path / "runtime"))
    elsewhere = tmp_path / "elsewhere" / "docs"
    # a server of every index in `home` that opened a folder named "docs" somewhere else
    note = register("http://127.0.0.1:9", {"docs": elsewhere}, home, False)
    assert find_server(home / "docs") is None and find_server(elsewhere) == ("http://127.0.0.1:9", "docs")
    note.unlink()
    keyed = register("http://127.0.0.1:9", {"docs": home / "docs"}, None, True)
    assert find_server(home / "docs") is None and find_server(home / "docs", with_key=True) == ("http://127.0.0.1:9", "docs")
    keyed.unlink()


def test_mvr_search_without_the_key_of_a_keyed_server_searches_here(home, tmp_path):
    pytest.importorskip("fastapi")
    env = _env(tmp_path, MVR_INDEX_DIR=str(home), MVR_API_KEY="")
    server = subprocess.Popen([sys.executable, "-m", "mvr.cli", "serve", "docs", "--port", "0", "--quiet", "--api-key", "k"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert "serving at" in server.stdout.readline(), server.stderr.read()
        found = _mvr(["search", "docs", "tea", "-k", "1"], env)
        assert found.returncode == 0 and "d8" in found.stdout, found.stderr
        wrong = _mvr(["search", "docs", "tea", "-k", "1"], {**env, "MVR_API_KEY": "not-it"})
        assert wrong.returncode == 0 and "d8" in wrong.stdout, wrong.stderr  # a 401 falls back to searching here
    finally:
        server.terminate()
        server.wait(timeout=60)
