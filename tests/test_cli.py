"""End-to-end CLI runs on a tiny BEIR-layout dataset with the real default model."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import QUERIES
from mvr import Index
from mvr.cli import main


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_index_search_info_eval(tmp_path, beir, capsys):
    home = tmp_path / "home"
    code, out, _ = run(capsys, "index", beir / "corpus.jsonl", "--name", "tiny", "--index-dir", home, "--quiet")
    assert code == 0 and "indexed 8 documents" in out

    code, out, _ = run(capsys, "search", "tiny", "which animal purrs?", "-k", "3", "--index-dir", home)
    lines = out.splitlines()
    assert code == 0 and lines[0].split()[:3] == ["rank", "score", "id"] and lines[1].split()[2] == "d1"

    code, out, _ = run(capsys, "search", "tiny", "capital of France", "--json", "-k", "2", "--index-dir", home)
    payload = json.loads(out)
    assert payload["hits"][0]["id"] == "d5" and payload["hits"][0]["text"].startswith("Paris")

    queries = tmp_path / "q.tsv"
    queries.write_text("a\twhich animal purrs?\nb\tenergy production in cells\n")
    code, out, _ = run(capsys, "search", "tiny", "--queries", queries, "--trec", "-k", "2", "--index-dir", home)
    rows = [line.split() for line in out.splitlines()]
    assert code == 0 and len(rows) == 4 and rows[0][:4] == ["a", "Q0", "d1", "1"] and rows[2][:3] == ["b", "Q0", "d4"]
    code, out, _ = run(capsys, "search", "tiny", "--trec", "-k", "1", "which animal purrs?", "--index-dir", home, "--run-name", "late")  # the query after options
    assert code == 0 and out.split() == ["q1", "Q0", "d1", "1", out.split()[4], "late"]
    _, _, err = run(capsys, "search", "tiny", "purring " * 100, "-k", "1", "--index-dir", home)
    assert "mvr: note: query ran past the index's query length of 64 tokens and was cut there" in err  # not silently
    assert run(capsys, "search", "tiny", "which animal purrs?", "-k", "1", "--index-dir", home)[2] == ""
    queries.write_text("qid\tquery\na\twhich animal purrs?\n")  # a first line of column names is no query
    code, out, _ = run(capsys, "search", "tiny", "--queries", queries, "--trec", "-k", "1", "--index-dir", home)
    assert code == 0 and [line.split()[0] for line in out.splitlines()] == ["a"]
    queries.write_text("query-id\tcorpus-id\tscore\na\td1\t1\n")  # qrels given for queries: said, not searched for "d1\t1"
    assert "holds relevance judgements (query-id, corpus-id, score), not queries" in run(capsys, "search", "tiny", "--queries", queries, "--index-dir", home)[2]
    queries.write_text("query-id\ttext\n")
    assert run(capsys, "search", "tiny", "--queries", queries, "--index-dir", home)[2].startswith(f"mvr: error: {queries} holds no queries (only a line of column names)")
    queries.write_text("a\twhich animal purrs?\nb\t  \n")
    for args, said in [(["--queries", queries], f"{queries}:2: query 'b' is empty"), (["x", "--run-name", "r"], "--run-name names a TREC run: give --trec"),
                       (["x", "--trec", "--explain"], "leave out --trec"), (["x", "y"], "unrecognized arguments: y (see mvr search --help)"),
                       (["x", "--kk", "3"], "mvr search: error: unrecognized arguments: --kk 3 (--kk: did you mean -k?) (see mvr search --help)"),
                       (["x", "-K", "3"], "unrecognized arguments: -K 3 (-K: did you mean -k?)"),
                       (["x", "--cand", "3"], "unrecognized arguments: --cand 3 (--cand: did you mean --candidates?)"),  # no option by a prefix of its name
                       (["x", "--fi", "{}"], "(--fi: did you mean --first-stage or --filter?)")]:
        try:
            code, _, err = run(capsys, "search", "tiny", *args, "--index-dir", home)
        except SystemExit as usage:  # argparse's own errors
            code, err = usage.code, capsys.readouterr().err
        assert code == 2 and said in err, err

    code, out, _ = run(capsys, "info", "tiny", "--json", "--verify", "--index-dir", home)
    info = json.loads(out)
    assert info["documents"] == 8 and info["verified"] and info["build"]["command"].startswith("mvr index")
    assert info["config"]["doc_runtime"] == "onnx-int8-fused"  # the default document runtime, recorded

    # the same corpus encoded in PyTorch: the first hit of every query agrees with the int8 index
    code, out, _ = run(capsys, "index", beir / "corpus.jsonl", "--name", "tiny-torch", "--doc-runtime", "torch", "--index-dir", home, "--quiet", "--sparse", "none")
    code, out, _ = run(capsys, "info", "tiny-torch", "--json", "--index-dir", home)
    assert code == 0 and json.loads(out)["config"]["doc_runtime"] == "torch"
    for _, text, _ in QUERIES:
        firsts = [json.loads(run(capsys, "search", name, text, "--json", "-k", "1", "--index-dir", home)[1])["hits"][0]["id"] for name in ("tiny", "tiny-torch")]
        assert firsts[0] == firsts[1], (text, firsts)

    report_path = tmp_path / "report.json"
    code, out, _ = run(capsys, "eval", beir, "--index", "tiny", "--index-dir", home, "--output", report_path, "--quiet", "--run-file", tmp_path / "run.trec")
    report = json.loads(report_path.read_text())
    assert code == 0 and report["queries"] == len(QUERIES)
    (run_report,) = report["runs"]
    for key in ("encode_ms_p50", "encode_ms_p95", "index_docs_per_second", "index_bytes_per_token"):
        assert key in report
    for key in ("nDCG@10", "R@100", "RR@10", "search_ms_p50", "search_ms_p95"):
        assert key in run_report
    assert run_report["first_stage"] == "fde+bm25s" and run_report["candidates"] == 100  # what `mvr search` does
    assert report["ignore_identical_ids"] is True and (tmp_path / "run.trec").is_file()
    assert all(report[key] == run_report[key] for key in run_report)  # the only run stands at the top level too
    assert run_report["RR@10"] == 1.0 and run_report["R@100"] == 1.0  # every judged document is first for its query
    assert report["command"].startswith("mvr eval") and report["settings"]["encoder"]["name"] == "all-MiniLM-L6-v2"
    assert len((tmp_path / "run.trec").read_text().splitlines()) == len(QUERIES) * 8

    from mvr.eval.table import main as table

    table([str(report_path), "--output", str(tmp_path / "results.md")])
    markdown = (tmp_path / "results.md").read_text()
    assert f"**{run_report['nDCG@10']:.4f}**" in markdown and "[report.json](report.json)" in markdown
    assert "`mvr index " in markdown and "`mvr eval " in markdown


@pytest.mark.parametrize("command", ["index", "sparse", "fde", "search", "info", "list", "eval"])
def test_every_help_prints(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0 and "usage: mvr " + command in capsys.readouterr().out


@pytest.mark.parametrize("argv, says", [
    (["search"], "mvr search: error: the following arguments are required: index (see mvr search --help)"),
    (["index", "c.jsonl", "--name", "x", "--doc-maxlen", "abc"], "mvr index: error: argument --doc-maxlen: invalid int value: 'abc' (see mvr index --help)"),
    (["serach", "x"], "mvr: error: argument command: invalid choice: 'serach'"),
    (["search", "x", "q", "--first-stage", "fdee"], "argument --first-stage: invalid choice: 'fdee'"),
    (["index", "c.jsonl"], "one of the arguments --name --path is required"),
])
def test_a_usage_error_is_one_line_that_points_to_help(argv, says, capsys):
    """argparse printed the whole usage before its error: a dozen lines for mvr search."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and says in err and err.rstrip().endswith("--help)"), err


def test_errors_are_one_line_with_status_2(tmp_path, beir, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"_id": "a", "text": "x"}\n{oops\n')
    code, _, err = run(capsys, "index", bad, "--name", "x", "--index-dir", tmp_path)
    assert code == 2 and err.startswith("mvr: error:") and "bad.jsonl:2" in err
    code, _, err = run(capsys, "search", "missing", "q", "--index-dir", tmp_path)
    assert code == 2 and "no index named" in err
    code, _, err = run(capsys, "eval", beir, "--index", "missing", "--index-dir", tmp_path)
    assert code == 2 and "--build" in err
    code, _, err = run(capsys, "eval", beir, "--index", "x", "--split", "dev", "--build", "--index-dir", tmp_path, "--quiet")
    assert code == 2 and "available splits: test" in err
    code, _, err = run(capsys, "search", "x", "--index-dir", tmp_path)
    assert code == 2 and "either a query" in err


def test_list_skips_a_name_no_command_takes_and_optimize_names_an_empty_index(tmp_path, capsys, models):
    """A folder named with a newline listed as two names; an emptied index was 'one segment without deletions'."""
    import shutil

    home = tmp_path / "home"
    (tmp_path / "c.jsonl").write_text('{"id": "a", "text": "cats"}\n{"id": "b", "text": "dogs"}\n')
    assert run(capsys, "index", tmp_path / "c.jsonl", "--name", "a", "--index-dir", home, "--model", models["plain"], "--no-fde", "--quiet")[0] == 0
    shutil.copytree(home / "a", home / "new\nline")
    code, out, err = run(capsys, "list", "--index-dir", home)
    assert code == 0 and out == "a\n" and err == "mvr list: skipped 'new\\nline': it holds a control character; rename the folder to search it.\n"
    assert run(capsys, "delete", "a", "a", "b", "--index-dir", home)[0] == 0
    code, out, _ = run(capsys, "optimize", "a", "--index-dir", home)
    assert code == 0 and out == "a is empty (no segments) already; nothing to merge\n"


def test_console_script_is_installed(tmp_path, beir):
    result = subprocess.run([sys.executable, "-m", "mvr.cli", "list", "--index-dir", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 0
    script = Path(sys.executable).parent / "mvr"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "index" in result.stdout and "eval" in result.stdout


def test_fde_commands_and_candidate_sweep(tmp_path, beir, capsys):
    home = tmp_path / "home"
    code, _, _ = run(capsys, "index", beir, "--name", "tiny", "--index-dir", home, "--quiet", "--fde-reps", "4", "--fde-k-sim", "3")
    assert code == 0
    code, out, _ = run(capsys, "info", "tiny", "--json", "--index-dir", home)
    assert json.loads(out)["fde"]["fde_dim"] == 4 * 8 * 32
    code, out, _ = run(capsys, "fde", "tiny", "--fde-reps", "2", "--fde-k-sim", "2", "--fde-d-final", "64", "--index-dir", home)
    assert code == 0 and "x 64 dims" in out
    # a rebuild without flags (the repair the error of a damaged stage asks for) keeps the index's settings; one flag changes only itself
    assert run(capsys, "fde", "tiny", "--index-dir", home)[0] == 0 and (Index.open("tiny", home=home).config.fde.reps, Index.open("tiny", home=home).config.fde.d_final) == (2, 64)
    code, out, _ = run(capsys, "fde", "tiny", "--fde-reps", "3", "--fde-factory", "IVF64,Flat", "--index-dir", home)
    fde = Index.open("tiny", home=home).config.fde
    assert code == 0 and (fde.reps, fde.k_sim, fde.d_final) == (3, 2, 64) and "is built as Flat (exact) until merges make one large enough" in out
    assert "faiss IVF64,Flat (built as Flat for now: too few documents to train it)" in run(capsys, "info", "tiny", "--index-dir", home)[1]
    for command in ("pooled", "sparse"):  # it was taken and ignored
        code, _, err = run(capsys, command, "tiny", "--threads", "-5", "--index-dir", home)
        assert code == 2 and "--threads must be a positive integer" in err
    code, out, _ = run(capsys, "search", "tiny", "which animal purrs?", "--first-stage", "fde", "--candidates", "3", "--json", "--index-dir", home)
    assert code == 0 and len(json.loads(out)["hits"]) == 3
    report_path = tmp_path / "sweep.json"
    code, out, err = run(
        capsys, "eval", beir, "--index", "tiny", "--first-stage", "fde", "--candidates", "2,8", "--compare-exhaustive", "--output", report_path, "--index-dir", home, "--quiet"
    )
    assert "runs of fewer than 100 documents a query have R@100 as recall at that many (fde@2: 2, fde@8: 8); nDCG@10 and RR@10 are cut too where under 10." in err
    report = json.loads(report_path.read_text())
    assert code == 0 and [(r["first_stage"], r["candidates"]) for r in report["runs"]] == [("exhaustive", None), ("fde", 2), ("fde", 8)]
    assert report["runs"][2]["recall_of_exhaustive_top10"] == 1.0  # all 8 documents are candidates
    assert report["first_stage"] == "fde" and report["candidates"] == 2  # the first run asked for
    assert report["runs"][2]["nDCG@10"] == report["runs"][0]["nDCG@10"]
    assert 0 < report["runs"][1]["recall_of_exhaustive_top10"] <= 1 and report["runs"][1]["speedup_vs_exhaustive"] >= 0  # a ratio of timings (0.0 where 8 documents are scored faster than searched)
    from mvr.eval.plot import main as plot

    plot([str(report_path), "--output", str(tmp_path / "sweep.png")])
    assert (tmp_path / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SystemExit):
        run(capsys, "eval", beir, "--index", "tiny", "--candidates", "0", "--index-dir", home)
    assert "candidate counts must be positive" in capsys.readouterr().err
    code, _, err = run(capsys, "eval", beir, "--index", "tiny", "--first-stage", "exhaustive", "--candidates", "5", "--index-dir", home)
    assert code == 2 and "not to exhaustive" in err
    code, _, err = run(capsys, "eval", beir, "--index", "tiny", "--first-stage", "exhaustive", "--compare-exhaustive", "--index-dir", home)
    assert code == 2 and "the search evaluated is exhaustive already" in err  # taken and never read
    # with no stage named, eval measures the index's default search, so candidates apply
    code, _, _ = run(capsys, "eval", beir, "--index", "tiny", "--candidates", "5", "--output", report_path, "--index-dir", home, "--quiet")
    assert code == 0 and json.loads(report_path.read_text())["first_stage"] == "fde+bm25s"


def test_sparse_commands(tmp_path, beir, capsys):
    home = tmp_path / "home"
    code, _, _ = run(capsys, "index", beir, "--name", "tiny", "--index-dir", home, "--quiet", "--sparse", "none", "--no-fde")
    code, _, err = run(capsys, "search", "tiny", "which animal purrs?", "--first-stage", "bm25", "--index-dir", home)
    assert code == 2 and "mvr sparse tiny --stage bm25" in err
    code, out, _ = run(capsys, "sparse", "tiny", "--index-dir", home)  # the default: what the default search reads
    assert code == 0 and "built the bm25s first stage" in out and "bm25 first" not in out
    code, out, _ = run(capsys, "sparse", "tiny", "--stage", "bm25", "--index-dir", home)
    assert code == 0 and "built the bm25 first stage" in out
    code, out, _ = run(capsys, "search", "tiny", "which animal purrs?", "--first-stage", "bm25", "--no-rerank", "--json", "-k", "2", "--index-dir", home)
    assert code == 0 and json.loads(out)["hits"][0]["id"] == "d1"
    report_path = tmp_path / "bm25.json"
    code, _, _ = run(
        capsys, "eval", beir, "--index", "tiny", "--first-stage", "bm25s", "--candidates", "4", "--fusion", "linear", "--fusion-weight", "0.5",
        "--output", report_path, "--index-dir", home, "--quiet",
    )
    report = json.loads(report_path.read_text())
    assert code == 0 and report["first_stage"] == "bm25s" and report["options"]["fusion"] == "linear" and report["options"]["fusion_weight"] == 0.5
