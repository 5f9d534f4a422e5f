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
    assert find_server(home / "docs") == ("http://127.0.0.1:9", "docs", None)
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
    assert find_server(home / "docs") is None and find_server(elsewhere) == ("http://127.0.0.1:9", "docs", None)
    note.unlink()
    keyed = register("http://127.0.0.1:9", {"docs": home / "docs"}, None, True)
    assert find_server(home / "docs") is None and find_server(home / "docs", with_key=True) == ("http://127.0.0.1:9", "docs", None)
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


def _served(catalog, **kwargs):
    pytest.importorskip("fastapi")
    from mvr.server import background

    return background(catalog, **kwargs)


def test_mvr_search_trusts_a_note_only_while_its_server_answers_as_itself(home, tmp_path, monkeypatch, default_encoder):
    """A note outlived its server (SIGKILLed, its process not yet reaped: os.kill(pid, 0) still
    succeeds), and another server took its port, serving another folder under the name: `mvr search`
    printed that index's hits. A server that accepts and never answers (stopped by Ctrl-Z) held
    every `mvr search` of its indexes for two minutes."""
    import socket

    from mvr import Index
    from mvr.server.catalog import Catalog

    monkeypatch.setenv("MVR_RUNTIME_DIR", str(tmp_path / "runtime"))
    env = _env(tmp_path, MVR_INDEX_DIR=str(home))
    other = Index.build([("x1", "", "Berlin is the capital of Germany.")], tmp_path / "other" / "docs", encoder=default_encoder, show_progress=False)
    local = _mvr(["search", "docs", "capital of France", "-k", "1", "--no-server"], env)
    assert local.returncode == 0 and "d5" in local.stdout
    with _served(Catalog([other.path], model=default_encoder, warm=False)) as url:
        note = register(url, {"docs": home / "docs"}, None, False, instance="a-server-gone")  # this process: alive
        found = _mvr(["search", "docs", "capital of France", "-k", "1"], env)
        assert found.returncode == 0 and found.stdout == local.stdout, found.stdout + found.stderr
        note.unlink()
    with socket.socket() as silent:  # accepts connections (the backlog), answers nothing
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        note = register(f"http://127.0.0.1:{silent.getsockname()[1]}", {"docs": home / "docs"}, None, False, instance="stopped")
        found = subprocess.run([sys.executable, "-m", "mvr.cli", "search", "docs", "capital of France", "-k", "1"], capture_output=True, text=True, timeout=60, env=env)  # not the 120 s of a search's reply
        assert found.returncode == 0 and found.stdout == local.stdout, found.stderr
        note.unlink()


def test_mvr_search_searches_here_what_a_found_server_refuses(home, tmp_path, monkeypatch, default_encoder):
    """A found server's refusals fell back to a local search only when their message said "limit"
    (explain's limit on k x queries does not), or for a 401: a hidden folder of its home got a
    400 invalid index name, which the same search without the server answers."""
    import shutil

    from mvr.server import Limits
    from mvr.server.catalog import Catalog

    monkeypatch.setenv("MVR_RUNTIME_DIR", str(tmp_path / "runtime"))
    env = _env(tmp_path, MVR_INDEX_DIR=str(home))
    queries = tmp_path / "queries.tsv"
    queries.write_text("q1\twhich animal purrs?\nq2\tcapital of France\nq3\tgreen tea\n")
    shutil.copytree(home / "docs", tmp_path / "home" / ".hidden")
    catalog = Catalog([], tmp_path / "home", model=default_encoder, warm=False)
    with _served(catalog, limits=Limits(max_k=4)) as url:
        note = register(url, {}, tmp_path / "home", False, instance=catalog.instance)
        hidden = _mvr(["search", str(tmp_path / "home" / ".hidden"), "which animal purrs?", "-k", "1"], env)
        assert hidden.returncode == 0 and "d1" in hidden.stdout, hidden.stderr
        note.unlink()
    catalog = Catalog([home / "docs"], model=default_encoder, warm=False)
    with _served(catalog, limits=Limits(max_k=4)) as url:
        note = register(url, {"docs": home / "docs"}, None, False, instance=catalog.instance)
        asked = ["search", "docs", "--queries", str(queries), "-k", "2", "--explain", "--json"]  # 6 explained hits; the server takes 4
        through, local = _mvr(asked, env), _mvr([*asked, "--no-server"], env)
        assert through.returncode == local.returncode == 0 and through.stdout == local.stdout, through.stderr
        named = _mvr([*asked, "--server", url], env)
        assert named.returncode == 2 and "explain re-reads every hit: at most 4 hits per request" in named.stderr
        note.unlink()


def test_mvr_search_with_server_asks_for_the_folder_it_was_given(home, tmp_path, default_encoder):
    """--server URL sent only the last part of a path: the server answered from whatever it serves
    by that name (another folder, or one given as a path that does not exist); --model turned
    --server off without a word."""
    from mvr import Index
    from mvr.server.catalog import Catalog

    env = _env(tmp_path, MVR_INDEX_DIR=str(home))
    other = Index.build([("x1", "", "Berlin is the capital of Germany.")], tmp_path / "other" / "docs", encoder=default_encoder, show_progress=False)
    with _served(Catalog([other.path], model=default_encoder, warm=False)) as url:
        wrong = _mvr(["search", str(home / "docs"), "capital", "-k", "1", "--server", url], env)
        assert wrong.returncode == 2 and f"serves 'docs' from {other.path.resolve()}" in wrong.stderr and wrong.stderr.count("\n") == 1, wrong.stderr
        nowhere = _mvr(["search", str(tmp_path / "no" / "docs"), "capital", "-k", "1", "--server", url], env)
        assert nowhere.returncode == 2 and "no index named or at" in nowhere.stderr and nowhere.stderr.count("\n") == 1, nowhere.stderr
        right = _mvr(["search", str(other.path), "capital", "-k", "1", "--server", url], env)
        by_name = _mvr(["search", "docs", "capital", "-k", "1", "--server", url], env)  # a name: what the server serves by it
        here = _mvr(["search", ".", "capital", "-k", "1", "--server", url], env, cwd=other.path)
        assert right.returncode == by_name.returncode == here.returncode == 0 and "x1" in right.stdout == by_name.stdout == here.stdout, right.stderr + here.stderr
        for relative in ("./docs", "docs/"):  # paths (tab completion writes the second), not names: asked as 'docs' of that folder
            found = _mvr(["search", relative, "capital", "-k", "1", "--server", url], env, cwd=other.path.parent)
            assert found.returncode == 0 and found.stdout == right.stdout, found.stderr
        both = _mvr(["search", "docs", "capital", "--server", url, "--model", str(tmp_path)], env)
        assert both.returncode == 2 and "give --server or --model, not both" in both.stderr


def test_mvr_serve_serves_without_a_note_it_cannot_leave(home, tmp_path):
    pytest.importorskip("fastapi")
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    env = _env(tmp_path, MVR_INDEX_DIR=str(home), MVR_RUNTIME_DIR=str(blocked))
    server = subprocess.Popen([sys.executable, "-m", "mvr.cli", "serve", "--port", "0", "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = server.stdout.readline()
        assert "serving at" in line, server.stderr.read()
        url = line.split("serving at ")[1].split()[0]
        found = _mvr(["search", "docs", "tea", "-k", "1", "--server", url], env)
        assert found.returncode == 0 and "d8" in found.stdout, found.stderr
    finally:
        server.terminate()
        server.wait(timeout=60)
    err = server.stderr.read()
    assert "cannot leave a note for `mvr search` in" in err and "Traceback" not in err, err
