"""The BEIR loader and the ir-measures scoring against values worked out by hand."""

import json
import math

import numpy as np
import pytest

from mvr import DatasetError, IndexNotFoundError
from mvr.eval.beir import evaluate_run, load_beir


def test_load_beir_keeps_only_judged_queries(beir):
    queries, qrels = load_beir(beir, "test")
    assert set(queries) == {"q1", "q2", "q3", "q4"} and qrels["q2"] == {"d5": 2, "d6": 0}


def test_load_beir_errors(beir, tmp_path):
    with pytest.raises(DatasetError, match="available splits: test"):
        load_beir(beir, "train")
    with pytest.raises(DatasetError, match="no queries.jsonl"):
        load_beir(tmp_path, "test")
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\n")
    with pytest.raises(DatasetError, match="test.tsv:2"):
        load_beir(beir, "test")


def test_measures_match_hand_computation():
    qrels = {"a": {"d1": 1, "d2": 2}, "b": {"d9": 1}}
    run = {"a": {"d3": 3.0, "d2": 2.0, "d1": 1.0}}  # query b retrieved nothing: counts as 0
    scores = evaluate_run(run, qrels)
    # trec_eval's ndcg_cut (what pyserini and BEIR report) uses the relevance itself as the gain.
    dcg = 2 / math.log2(3) + 1 / math.log2(4)
    ideal = 2 + 1 / math.log2(3)
    assert scores["nDCG@10"] == pytest.approx(dcg / ideal / 2, abs=1e-4)
    assert scores["RR@10"] == pytest.approx(0.5 / 2)
    assert scores["R@100"] == pytest.approx(1.0 / 2)


def test_bench_times_each_stage_and_checks_the_baselines_agree(default_index, beir, tmp_path):
    from mvr.eval.bench import main

    out = tmp_path / "bench.json"
    # bench asserts that the kernel, NumPy and torch give the same MaxSim on every query's candidates
    assert main([str(beir), "--index", str(default_index.path), "--candidates", "4", "--threads", "1", "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["first_stage"] == "fde+bm25s" and report["queries"] == 4
    (run,) = report["runs"]
    assert run["threads"] == 1 and run["float32_peak_gflops"] > 0
    for part in ("encode_ms", "first_stage_ms", "rerank_ms", "search_ms"):
        assert run[part]["p50"] > 0 and run[part]["p95"] >= run[part]["p50"]
    assert set(run["rerank_gflops"]) == {"mvr_kernel", "numpy_matmul", "torch_einsum"}
    assert run["query_encoding"]["largest_difference"] < 1e-4 and run["query_encoding"]["onnx_ms"]["p50"] > 0
    quality = report["quality"]  # against exhaustive MaxSim over the index itself (no --reference)
    assert quality["reference_index"] == default_index.name and 0 < quality["exhaustive_nDCG@10"] <= 1
    assert quality["change_vs_exhaustive"] == pytest.approx(quality["nDCG@10"] / quality["exhaustive_nDCG@10"] - 1, abs=2e-4)
    with pytest.raises(IndexNotFoundError, match="no index named"):
        main([str(beir), "--index", str(default_index.path), "--reference", str(tmp_path / "missing"), "--output", str(out)])


def test_encode_profile_times_each_int8_graph_by_operation(beir, tmp_path):
    from mvr.eval.encode_profile import main

    out = tmp_path / "profile.json"
    assert main([str(beir), "--documents", "4", "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["documents"] == 4 and report["multiply_adds_per_document"]["with_weights"] > report["multiply_adds_per_document"]["attention"] > 0
    runs = report["runs"]
    assert set(runs) == {"onnx-int8", "onnx-int8-fused", "onnx-int8-fused, SkipLayerNormFusion on"}
    assert "QAttention" in runs["onnx-int8-fused"]["ms_per_document_by_op"] and "QAttention" not in runs["onnx-int8"]["ms_per_document_by_op"]
    assert "SkipLayerNormalization" not in runs["onnx-int8-fused"]["ms_per_document_by_op"]  # the session leaves that fusion off
    assert "SkipLayerNormalization" in runs["onnx-int8-fused, SkipLayerNormFusion on"]["ms_per_document_by_op"]
    assert all(run["ms_per_document"] > 0 for run in runs.values())


def test_bench_documents_times_each_document_runtime(default_index, beir, tmp_path, capsys):
    from mvr.eval.bench import main

    out = tmp_path / "documents.json"
    assert main([str(beir), "--index", str(default_index.path), "--documents", "5", "--threads", "1", "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["study"] == "bench-documents" and report["documents"] == 5
    (run,) = report["runs"]
    assert run["threads"] == 1 and set(run) == {"threads", "torch", "onnx", "onnx-int8", "onnx-int8-fused"}
    assert run["torch"]["speedup_vs_torch"] == 1.0 and run["torch"]["cosine_with_torch"]["min"] == pytest.approx(1.0, abs=1e-5)
    assert run["onnx"]["cosine_with_torch"]["min"] > 0.9999  # float32: the same vectors
    assert all(0.9 < run[r]["cosine_with_torch"]["mean"] < 1.0 for r in ("onnx-int8", "onnx-int8-fused"))  # int8: close, not equal
    assert all(run[r]["docs_per_second"] > 0 and run[r]["tokens_per_second"] > run[r]["docs_per_second"] for r in ("torch", "onnx", "onnx-int8", "onnx-int8-fused"))
    with pytest.raises(SystemExit):
        main([str(beir), "--index", str(default_index.path), "--documents", "0", "--output", str(out)])
    assert "--documents must be at least 1" in capsys.readouterr().err


def test_compression_study_on_a_tiny_index(default_index, beir, tmp_path):
    from mvr.eval.compression import main, parse_setting

    assert parse_setting("prune=special+punctuation,cluster_ratio=0.5,codec_bits=1") == {"prune": ("special", "punctuation"), "cluster_ratio": 0.5, "codec_bits": 1}
    out = tmp_path / "c.json"
    assert main([str(beir), "--index", str(default_index.path), "--setting", "full", "--setting", "cluster_ratio=0.5,codec=int8", "--output", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["setting"] for r in rows] == ["full", "cluster_ratio=0.5,codec=int8"]
    assert rows[1]["vectors_per_document"] < rows[0]["vectors_per_document"] and rows[1]["bytes_per_token"] < rows[0]["bytes_per_token"] / 3
    assert not (default_index.path.parent / f"{default_index.name}-cluster_ratio-0.5-codec-int8").exists()  # removed unless --keep


def test_filter_study_against_exact_filtered_search(beir, tmp_path, default_encoder):
    from mvr import Index
    from mvr.eval.filters import FILTERS, measure, synthetic

    docs = list(synthetic(beir))
    assert all(set(d.metadata) == {"year", "source"} for d in docs) and docs == list(synthetic(beir))  # same seed, same metadata
    index = Index.build(docs, tmp_path / "meta", encoder=default_encoder, show_progress=False)
    report = measure(beir, index)
    assert [r["selectivity"] for r in report["rows"]] == list(FILTERS)
    for row in report["rows"]:
        assert 0.0 <= row["kept_share"] <= 1.0 and 0.0 <= row["recall_of_exact_top10"] <= 1.0 and row["search_ms_p50"] > 0


def test_metadata_store_study_gives_the_same_masks_from_columns_and_sqlite(beir, tmp_path):
    from mvr.eval import metadata_store

    out = tmp_path / "store.json"
    assert metadata_store.main([str(beir), "--output", str(out), "--markdown", str(tmp_path / "store.md")]) == 0
    report = json.loads(out.read_text())
    assert [r["selectivity"] for r in report["filters"]] == ["1%", "10%", "50%"]  # measure() asserted equal masks for each
    assert all(r["columns_ms"] > 0 and r["sqlite_ms"] > 0 for r in report["filters"]) and report["write_ms"]["sqlite"] > 0
    assert "SQLite" in (tmp_path / "store.md").read_text()


def test_presets_table_counts_every_component(default_index, beir):
    from mvr.eval.presets import measure

    row = measure(beir, default_index, "none")
    parts = row["bytes_per_token"]
    tokens = default_index.segments[0].manifest["counts"]["source_tokens"]
    assert set(parts) == {"vectors", "total", *default_index.stage_bytes()} and "bm25s" in parts
    assert parts["total"] == pytest.approx(sum(v for k, v in parts.items() if k != "total"), abs=0.3)
    assert parts["vectors"] == pytest.approx(default_index.manifest["bytes_per_token"], abs=0.1)
    assert parts["bm25s"] == pytest.approx(default_index.stage_bytes()["bm25s"] / tokens, abs=0.1)
    assert 0 <= row["nDCG@10"] <= 1 and 0 <= row["exhaustive_nDCG@10"] <= 1 and row["search_ms_p50"] > 0


def test_a_run_is_scored_in_its_own_order_where_scores_tie(default_index, tmp_path):
    """ir-measures and trec_eval order tied documents by id: reciprocal rank fusion (whose sums tie
    often) was scored in another order than the one returned, and --trec wrote 6 decimals, which tie
    more. Runs and TREC lines now fall strictly with rank; distinct scores keep their order."""
    from mvr.results import falling, trec_lines

    assert evaluate_run({"q": {"a": 0.5, "b": 0.5}}, {"q": {"b": 1}}, ["RR@10"])["RR@10"] == 0.5  # b ranked first, scored second
    assert evaluate_run({"q": dict(zip("ba", falling([0.5, 0.5])))}, {"q": {"b": 1}}, ["RR@10"])["RR@10"] == 1.0
    # nDCG@10 and recall are pytrec_eval's, which reads scores as float32: a float64 step, or float64 sums that round alike, tied there
    for scores in ([0.5, 0.5], [1 / 61, 1 / 61 - 1e-10]):
        assert evaluate_run({"q": dict(zip("ba", falling(scores)))}, {"q": {"b": 1}}, ["nDCG@10"])["nDCG@10"] == 1.0, scores
    below = lambda x: float(np.nextafter(np.float32(x), np.float32(0)))  # noqa: E731
    assert falling([3.0, 2.0, 2.0, 2.0, 1.0]) == [3.0, 2.0, below(2.0), below(below(2.0)), 1.0]
    assert trec_lines([("q", [("a", 0.7), ("b", 0.6)])], "r") == ["q Q0 a 1 0.700000 r", "q Q0 b 2 0.600000 r"]  # told apart at 6 decimals: as before
    lines = trec_lines([("q", [("b", 0.5), ("a", 0.5), ("c", 0.1234561), ("d", 0.1234559)])], "r")
    run = tmp_path / "run.trec"
    run.write_text("\n".join(lines) + "\n")
    import ir_measures

    ranked = sorted(ir_measures.read_trec_run(str(run)), key=lambda d: (-d.score, d.doc_id))  # trec_eval's order: score, then id
    assert [d.doc_id for d in ranked] == ["b", "a", "c", "d"]
    results = default_index.search(["cats", "tea"], k=6, first_stage="fde", candidates=6, fusion="rrf")  # "tea": ranks 3 and 4 tie
    for qid, docs in results.to_run(["q1", "q2"]).items():
        assert list(docs) == [h.id for h in results[0 if qid == "q1" else 1]] and all(a > b for a, b in zip(docs.values(), list(docs.values())[1:]))
    assert len(set(results.scores[1].tolist())) < 6  # a tie there was


def _eval(capsys, folder, index, *more) -> tuple[int, str]:
    from mvr.cli import main

    code = main(["eval", str(folder), "--index", str(index.path), "--quiet", *more])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("score", ["abc", "1.5", "1_0", "\u0661"])
def test_eval_rejects_a_qrels_score_that_is_not_an_integer(beir, default_index, capsys, score):
    qrels = beir / "qrels" / "test.tsv"
    qrels.write_text(f"query-id\tcorpus-id\tscore\nq1\td1\t{score}\n")
    code, err = _eval(capsys, beir, default_index)
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"mvr: error: {qrels}:2: score {score!r} is not an integer; the score must be an integer relevance grade")


def test_eval_names_the_line_of_a_qrels_file_that_is_not_utf8(beir, default_index, capsys):
    qrels = beir / "qrels" / "test.tsv"
    qrels.write_bytes(b"query-id\tcorpus-id\tscore\nq1\td1\t1\n\xff\xfe\td2\t1\n")
    code, err = _eval(capsys, beir, default_index)
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"mvr: error: {qrels}:3: not UTF-8 text (byte 0xff at column 1); convert the file to UTF-8")


@pytest.mark.parametrize("text", ["", "query-id\tcorpus-id\tscore\n"])
def test_eval_rejects_a_qrels_file_that_judges_no_query(beir, default_index, capsys, text):
    qrels = beir / "qrels" / "test.tsv"
    qrels.write_text(text)
    code, err = _eval(capsys, beir, default_index)
    assert code == 2 and err.count("\n") == 1 and err.startswith(f"mvr: error: {qrels} judges no query")


@pytest.mark.parametrize(
    "query, said",
    [
        ({"_id": "q2"}, 'has no "text"'),
        ({"_id": "q2", "text": 5}, 'has "text": 5, not a string'),
        ({"_id": "q2", "text": None}, 'has "text": None, not a string'),
        ({"_id": "q2", "text": ""}, 'has an empty "text"'),
        ({"_id": "q2", "text": " \t"}, 'has an empty "text"'),
        ({"_id": "q2", "text": "\u200b\u200b"}, 'has an empty "text" (invisible characters alone)'),
    ],
)
def test_eval_names_the_line_and_id_of_a_judged_query_without_text(beir, default_index, capsys, query, said):
    queries = beir / "queries.jsonl"
    lines = queries.read_text().splitlines()
    lines[1] = json.dumps(query)  # q2, on line 2
    queries.write_text("\n".join(lines) + "\n")
    code, err = _eval(capsys, beir, default_index)
    assert code == 2 and err == f"mvr: error: {queries}:2: query 'q2' {said}; give each judged query a non-empty \"text\" string.\n"


def test_eval_warns_when_judged_relevant_documents_are_not_in_the_index(beir, default_index, capsys, tmp_path):
    code, err = _eval(capsys, beir, default_index)
    assert code == 0 and err == ""  # the whole corpus indexed: nothing to say
    with open(beir / "qrels" / "test.tsv", "a") as handle:
        handle.write("q1\td99\t1\nq2\td98\t2\nq3\td97\t0\n")  # two relevant documents and one not, none indexed
    out = tmp_path / "report.json"
    code, err = _eval(capsys, beir, default_index, "--output", out)
    said = f"2 of the 6 judged relevant documents of these 4 queries are not in index {default_index.name!r} (queries left with none of theirs: 0), so its scores are lower than the dataset's"
    assert code == 0 and err.count("\n") == 1 and err.startswith(f"mvr: warning: {said}")
    assert json.loads(out.read_text())["warnings"] == [err.removeprefix("mvr: warning: ").rstrip("\n")]


def test_eval_refuses_qrels_without_a_relevant_document_and_warns_of_queries_without_one(beir, default_index, capsys, tmp_path):
    """Every grade 0: nDCG@10 0.0 came back as a result, with no word; a query judging nothing
    relevant, or whose relevant documents the index lacks, counted as 0 unsaid; R@100 of runs
    shorter than 100 documents was recall at their length."""
    qrels = beir / "qrels" / "test.tsv"
    lines = qrels.read_text().splitlines()
    qrels.write_text("\n".join(lines[:1] + [line.rsplit("\t", 1)[0] + "\t0" for line in lines[1:]]) + "\n")
    code, err = _eval(capsys, beir, default_index)
    assert code == 2 and err == f"mvr: error: {qrels} judges no document relevant (every score is 0 or below); the score is the relevance grade: 1 or more for relevant.\n"
    qrels.write_text("\n".join(lines + ["q9\td1\t0", "q8\td99\t1"]) + "\n")
    with open(beir / "queries.jsonl", "a") as handle:
        handle.write(json.dumps({"_id": "q9", "text": "tea"}) + "\n" + json.dumps({"_id": "q8", "text": "lava"}) + "\n")
    code, err = _eval(capsys, beir, default_index, "--depth", "20")
    warnings = err.splitlines()
    assert code == 0 and warnings[0] == "mvr: warning: 1 of the 6 queries judge no document relevant: each counts as 0 in every mean, as in trec_eval."
    assert warnings[1].startswith(f"mvr: warning: 1 of the 5 judged relevant documents of these 6 queries are not in index {default_index.name!r} (queries left with none of theirs: 1)")
    assert warnings[2:] == ["mvr: warning: the runs hold at most 20 documents a query, so R@100 is recall at 20."]


def test_eval_says_what_leaves_judged_documents_out_of_its_runs(beir, default_index, capsys, tmp_path):
    """Each figure fell without a word: a relevant document with its query's id (dropped as BEIR
    drops them), a filter keeping judged documents out, a depth under 10 cutting nDCG@10 and
    RR@10; and a filtered search's share of the exhaustive top-10 was of the unfiltered top-10."""
    from conftest import dated_docs

    from mvr import Index

    with open(beir / "qrels" / "test.tsv", "a") as handle:
        handle.write("d2\td2\t1\n")  # a generated query, named after the document it came from
    with open(beir / "queries.jsonl", "a") as handle:
        handle.write(json.dumps({"_id": "d2", "text": "loyal companions descended from wolves"}) + "\n")
    code, err = _eval(capsys, beir, default_index)
    said = "1 of the 5 queries judge relevant a document with the query's own id, which the runs leave out, as BEIR does"
    assert code == 0 and err.startswith(f"mvr: warning: {said}") and "--keep-identical-ids keeps them" in err, err
    assert _eval(capsys, beir, default_index, "--keep-identical-ids") == (0, "")
    code, err = _eval(capsys, beir, default_index, "--depth", "5")
    assert "so R@100 is recall at 5; nDCG@10 and RR@10 are cut at 5 too." in err
    dated = Index.build(dated_docs(), tmp_path / "dated", encoder=default_index.encoder, show_progress=False)
    out = tmp_path / "filtered.json"
    code, err = _eval(capsys, beir, dated, "--keep-identical-ids", "--filter", '{"year": {"$gte": 2021}}', "--compare-exhaustive", "--candidates", "5", "--output", out)
    assert code == 0 and "the filter leaves out 2 of the 5 judged relevant documents in the index (queries left with none of theirs: 2)" in err, err
    report = json.loads(out.read_text())
    assert report["runs"][0]["options"] == {"filter": {"year": {"$gte": 2021}}}  # the reference: exhaustive over what the filter keeps
    assert report["runs"][1]["recall_of_exhaustive_top10"] == 1.0  # 5 candidates: the 5 documents the filter keeps (of 8, fewer)


def test_eval_scores_a_run_file_as_it_scores_its_own_run(beir, default_index, tmp_path, capsys):
    """mvr eval --run: a TREC run scored against the qrels without an index (BM25 -> mvr rerank ->
    eval); the run mvr eval writes scores as the report it wrote says, to four places."""
    from mvr.cli import main

    own, report_file = tmp_path / "own.trec", tmp_path / "own.json"
    assert main(["eval", str(beir), "--index", str(default_index.path), "--quiet", "--run-file", str(own), "--output", str(report_file)]) == 0
    partial = tmp_path / "partial.trec"  # one judged query of the run's, its documents listed twice, and one the qrels do not judge
    first = own.read_text().splitlines()[0].split()[0]
    lines = [line for line in own.read_text().splitlines() if line.split()[0] == first]
    partial.write_text("\n".join(lines + lines[:2] + ["nobody 0 d1 1 3.5 x"]) + "\n")
    capsys.readouterr()
    scored = tmp_path / "scored.json"
    assert main(["eval", "--run", str(own), "--run", str(partial), str(beir), "--output", str(scored)]) == 0  # the dataset after the runs too
    out, err = capsys.readouterr()
    assert "1 of the 2 queries of" in err and "not judged in split 'test'" in err, err
    report, theirs = json.loads(report_file.read_text()), json.loads(scored.read_text())["runs"]
    mine = report["runs"][0]
    assert [r["queries"] for r in theirs] == [report["queries"], 1] and theirs[0]["run"] == str(own)
    for measure in ("nDCG@10", "R@100", "RR@10"):
        assert abs(theirs[0][measure] - mine[measure]) < 1e-4, measure
        assert theirs[1][measure] < theirs[0][measure] or theirs[0][measure] == 0  # four judged queries the partial run leaves out count as zero
    tied = tmp_path / "tied.trec"  # equal scores: the file's ranks order them for every measure (ir-measures breaks ties by id, one way or the other)
    tied.write_text("q1 Q0 d1 1 7.0 t\nq1 Q0 e0 2 7.0 t\nq1 Q0 d1 3 2.0 t\n")
    assert main(["eval", str(beir), "--run", str(tied), "--output", str(scored)]) == 0
    row = json.loads(scored.read_text())["runs"][0]
    assert row["nDCG@10"] == row["RR@10"] == round(1 / report["queries"], 4), row  # q1's relevant d1 first, three queries left out
    assert "lists 1 document(s) twice for a query" in capsys.readouterr().err
    elsewhere = tmp_path / "elsewhere.trec"
    elsewhere.write_text("q9 Q0 d1 1 1.0 x\n")
    for argv, said in ((["--run", str(elsewhere)], "none of the 1 queries of"), (["--run", str(own), "--candidates", "5"], "--candidates is for searching an index"),
                       (["--run", str(own), "--depth", "5"], "--depth is for searching an index"), (["--run", str(own), "--max-queries", "0"], "--max-queries must be >= 1"),
                       (["--run", str(own), "--index", "x"], "not allowed with argument"), (["--run", str(tmp_path / "no.trec")], "run file not found")):
        try:
            code = main(["eval", str(beir), *argv])
        except SystemExit as usage:
            code = usage.code
        err = capsys.readouterr().err
        assert code == 2 and said in err and "Traceback" not in err, (argv, err)


def test_eval_prints_the_exhaustive_columns_only_when_compared(beir, default_index, capsys):
    from mvr.cli import main

    for more, shown in (((), False), (("--compare-exhaustive",), True)):
        assert main(["eval", str(beir), "--index", str(default_index.path), "--quiet", "--keep-identical-ids", *more]) == 0
        header = next(line for line in capsys.readouterr().out.splitlines() if "first_stage" in line)
        assert ("recall_of_exhaustive_top10" in header and "speedup_vs_exhaustive" in header) == shown, header


def test_eval_refuses_what_it_would_misread(beir, default_index, capsys, tmp_path):
    from mvr.eval.beir import evaluate

    qrels = beir / "qrels" / "test.tsv"
    text = qrels.read_text()
    qrels.write_text(text + "q1\td1 \t1\n")  # a document id with a space: no corpus id, never found
    code, err = _eval(capsys, beir, default_index)
    assert code == 2 and f"{qrels}:{len(text.splitlines()) + 1}: document id 'd1 ' is empty or holds whitespace" in err
    qrels.write_text(text)
    code, err = _eval(capsys, beir, default_index, "--output", tmp_path / "x", "--run-file", tmp_path / "x")
    assert code == 2 and "--output and --run-file both name" in err and not (tmp_path / "x").exists()
    for bad in (-1, 0, 1.5, True):
        with pytest.raises(DatasetError, match="max_queries must be a positive integer"):
            evaluate(beir, default_index, max_queries=bad)
    with pytest.raises(DatasetError, match="the qrels judge no query"):
        evaluate_run({}, {})
    with pytest.raises(DatasetError, match="unknown measure among \\['nDGC@10'\\]"):
        evaluate_run({"q": {"d": 1.0}}, {"q": {"d": 1}}, ["nDGC@10"])


def test_eval_names_a_missing_folder_a_long_split_and_runs_each_count_once(beir, default_index, capsys, tmp_path):
    code, err = _eval(capsys, tmp_path / "nowhere", default_index)
    assert code == 2 and err.startswith(f"mvr: error: {tmp_path / 'nowhere'} is no folder: expected a BEIR folder")
    code, err = _eval(capsys, beir, default_index, "--split", "s" * 300)  # "File name too long", and no advice
    assert code == 2 and "is no plain name" in err
    out = tmp_path / "r.json"
    assert _eval(capsys, beir, default_index, "--candidates", "2,2", "--output", out)[0] == 0
    assert [row["candidates"] for row in json.loads(out.read_text())["runs"]] == [2]


def test_eval_build_checks_the_dataset_and_options_before_it_builds(beir, tmp_path, capsys):
    """--build encoded the whole corpus, then found the split missing or an option bad."""
    from mvr.cli import main

    (beir / "qrels" / "test.tsv").rename(beir / "qrels" / "dev.tsv")
    assert main(["eval", str(beir), "--index", str(tmp_path / "built"), "--build", "--quiet"]) == 2
    assert "no qrels for split 'test'; available splits: dev" in capsys.readouterr().err
    assert main(["eval", str(beir), "--index", str(tmp_path / "built"), "--build", "--split", "dev", "--prune-alpha", "nan", "--quiet"]) == 2
    assert "prune_alpha" in capsys.readouterr().err and not (tmp_path / "built").exists()
    for argv, said in ((["--first-stage", "centroids"], "--build makes an index with the default first stages (fde, bm25s), without centroids"),
                       (["--fusion", "rrf"], "a hybrid first stage (fde+bm25s) joins two rankings")):  # the default stage the build makes
        assert main(["eval", str(beir), "--index", str(tmp_path / "built"), "--build", "--split", "dev", *argv, "--quiet"]) == 2
        assert said in capsys.readouterr().err and not (tmp_path / "built").exists()


def test_missing_relevant_looks_documents_up_in_an_index_of_passages(tmp_path, default_encoder):
    from conftest import DOCS

    from mvr import Index
    from mvr.config import IndexConfig
    from mvr.eval.beir import relevance_warnings

    docs = [{"id": i, "title": t, "text": x} for i, t, x in DOCS[:3]]
    index = Index.build(docs, tmp_path / "p", encoder=default_encoder, config=IndexConfig(fde=None, sparse=(), passage_tokens=16), show_progress=False)
    assert all("#" in str(row) for row in index.doc_ids)
    (said,) = relevance_warnings(index, {"a": {"d1": 1, "d2": 0, "d4": 1}, "b": {"d3": 2, "d9": 1}, "c": {"d9": 1}})
    assert said.startswith(f"2 of the 4 judged relevant documents of these 3 queries are not in index {index.name!r} (queries left with none of theirs: 1)")


def test_results_table_is_what_its_command_makes_of_the_reports_it_links():
    """docs/results.md is `python -m mvr.eval.table --again docs/results.md` of its own reports, and
    a glob over every JSON of docs/results/ (studies, speed runs) takes the eval reports only."""
    import glob
    from pathlib import Path

    from mvr.eval.table import linked_reports, render

    docs = Path(__file__).resolve().parents[1] / "docs"
    reports = linked_reports(docs / "results.md")
    assert len(reports) > 20 and all(path.is_file() for path in reports)
    assert render(reports, docs) == (docs / "results.md").read_text(encoding="utf-8")
    every = [Path(p) for p in glob.glob(str(docs / "results" / "**" / "*.json"), recursive=True)]
    assert "| scifact |" in render(every, docs)  # index-speed reports have "runs" too: they stopped it with a KeyError
