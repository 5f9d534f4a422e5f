"""Bad input at the edges: document ids, file encodings and byte order marks, empty query files,
a huge k, huge documents, and control characters in what `mvr search` prints."""

import dataclasses
import json
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import FAST
from mvr import CorpusError, Index, QueryError, read_corpus
from mvr.cli import main
from mvr.cli.common import read_queries
from mvr.corpus import Document, as_documents

DOCS = [
    ("d1", "Cats purr softly on the sofa."),
    ("d2", "Dogs bark at night."),
    ("d3", "Red \x1b[31mALERT\x1b[0m: the kettle \x07 boils."),
    ("d4", "Green tea is rich in catechins."),
]
BOM = b"\xef\xbb\xbf"


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def index(tmp_path_factory, default_encoder):
    return Index.build(DOCS, tmp_path_factory.mktemp("inputs") / "idx", encoder=default_encoder, config=FAST)


# -- document ids ----------------------------------------------------------------------------

BAD_IDS = [
    ("", "is empty"),
    ("dup\x00", "holds a control character"),
    ("a\x1b[31m", "holds a control character"),
    ("a\tb", "holds whitespace"),
    ("a\nb", "holds whitespace"),
    ("a\rb", "holds whitespace"),
    ("a b", "holds whitespace"),
    ("a\u00a0b", "holds whitespace"),
    ("a\u2028b", "holds whitespace"),
    ("a\u200bb", "holds an invisible format character"),
    ("\u202eab", "holds an invisible format character"),
    ("é" * 257, "is 514 bytes long (UTF-8), over the 512 an id may have"),
]


@pytest.mark.parametrize("bad, problem", BAD_IDS)
def test_bad_document_ids_name_the_line_and_the_id(tmp_path, bad, problem):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(json.dumps({"_id": "dup", "text": "one"}) + "\n" + json.dumps({"_id": bad, "text": "two"}) + "\n")
    shown = repr(bad) if len(repr(bad)) <= 80 else f"{repr(bad)[:80]}... ({len(repr(bad))} characters)"  # a long id is not echoed whole
    with pytest.raises(CorpusError, match=re.escape(f"c.jsonl:2: document id {shown} {problem}") + ".*TREC"):
        list(read_corpus(corpus))
    for item in ({"id": bad, "text": "two"}, (bad, "two"), Document(bad, "two")):
        with pytest.raises(CorpusError, match=re.escape(f"document #1: document id {shown} {problem}")):
            list(as_documents([("ok", "one"), item]))


def test_an_id_of_512_bytes_is_kept_and_a_huge_asked_one_costs_no_memory(tmp_path, default_encoder):
    """The longest id allowed goes in and is found; ids asked for (deleted, reranked) that are
    longer than every stored one are nobody's, and never widen an array to their length (a
    client's 1 MB id among 1,000 made 4 GB of numpy strings); a lone surrogate in an id to delete
    is refused before anything is written."""
    import tracemalloc

    longest = "x" * 510 + "é"  # 512 bytes
    index = Index.build([(longest, "a long id"), ("short", "a short one")], tmp_path / "i", encoder=default_encoder, config=FAST)
    assert index.search("long id", k=1).doc_ids[0][0] == longest
    asked = ["y" * 1_000_000] + [f"s{i}" for i in range(200)] + ["short"]
    tracemalloc.start()
    try:
        found = index._state.positions(asked)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert list(found[:-1]) == [-1] * 201 and found[-1] >= 0
    assert peak < 20 << 20, peak  # 201 x 4 MB before
    generation = index.generation
    with pytest.raises(QueryError, match="id #1 holds a lone surrogate"):
        index.delete(["short", "a\ud800"])
    assert index.generation == generation and "short" in index
    assert index.delete(["y" * 1_000_000, "short"]) == {"deleted": 1, "missing": ["y" * 1_000_000], "generation": generation + 1}


def test_search_options_that_would_be_ignored_are_refused(index):
    """An option that the search asked for would not read is an error, not silently nothing:
    fusion_weight without linear fusion, dense_share without a hybrid first stage, an empty first
    stage (which fell back to the default)."""
    for options, message in (({"fusion_weight": 0.5}, 'give fusion="linear" with it'), ({"first_stage": "exhaustive", "dense_share": 0.5}, "dense_share splits the candidates of a hybrid"),
                             ({"first_stage": ""}, "unknown first stage ''")):
        with pytest.raises(QueryError, match=re.escape(message)):
            index.search("tea", k=2, **options)


def test_integer_ids_stay_allowed():
    docs = list(as_documents([{"id": 7, "text": "x"}, (8, "y"), {"_id": -1, "text": "z"}]))
    assert [d.id for d in docs] == ["7", "8", "-1"]


def test_file_names_with_spaces_are_refused_as_ids(tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "my notes.txt").write_text("about cats")
    with pytest.raises(CorpusError, match=r"my notes.txt: document id 'my notes.txt' holds whitespace.*rename the file"):
        list(read_corpus(folder))
    with pytest.raises(CorpusError, match=r"document id 'my notes.txt' holds whitespace.*rename the file"):
        list(read_corpus(folder / "my notes.txt"))


def test_cli_refuses_a_control_character_id_without_writing_an_index(tmp_path, capsys):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(json.dumps({"_id": "dup", "text": "one"}) + "\n" + json.dumps({"_id": "dup\x00", "text": "two"}) + "\n")
    home = tmp_path / "home"
    code, out, err = run(capsys, "index", corpus, "--name", "x", "--index-dir", home, "--quiet", "--no-fde", "--sparse", "none")
    assert code == 2 and "Traceback" not in err
    assert err.startswith("mvr: error: ") and f"{corpus}:2: document id 'dup\\x00' holds a control character" in err
    assert not (home / "x").exists()


# -- encodings -------------------------------------------------------------------------------


def test_non_utf8_files_name_the_file_and_line(tmp_path, index, capsys):
    # the bad byte far past the decoder's first read, so that the line number is the byte's own
    good = b"".join(json.dumps({"_id": f"d{i}", "text": "ok"}).encode() + b"\n" for i in range(1000))
    corpus = tmp_path / "latin1.jsonl"
    corpus.write_bytes(good + b'{"_id": "b", "text": "caf\xe9"}\n')
    with pytest.raises(CorpusError, match=r"latin1.jsonl:1001: not UTF-8 text \(byte 0xe9 .*convert the file to UTF-8"):
        list(read_corpus(corpus))
    single = tmp_path / "note.txt"
    single.write_bytes(b"line one\ncaf\xe9\n")
    with pytest.raises(CorpusError, match=r"note.txt:2: not UTF-8 text.*convert the file to UTF-8"):
        list(read_corpus(single))
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "a.txt").write_bytes(b"\xff\xfeh\x00i\x00")  # UTF-16
    with pytest.raises(CorpusError, match=r"a.txt:1: not UTF-8 text.*convert the file to UTF-8"):
        list(read_corpus(folder))

    tsv = tmp_path / "latin1.tsv"
    tsv.write_bytes(b"q1\tcats\nq2\tcaf\xe9\n")
    with pytest.raises(QueryError, match=r"latin1.tsv:2: not UTF-8 text.*convert the file to UTF-8"):
        read_queries(tsv)
    queries = tmp_path / "latin1.jsonl"
    queries.write_bytes(b'{"_id": "q1", "text": "caf\xe9"}\n')
    with pytest.raises(QueryError, match=r"latin1.jsonl:1: not UTF-8 text"):
        read_queries(queries)
    code, out, err = run(capsys, "search", index.path, "--queries", tsv)
    assert code == 2 and out == "" and "Traceback" not in err
    assert err.startswith("mvr: error: ") and "latin1.tsv:2: not UTF-8 text" in err


def test_byte_order_mark_is_dropped(tmp_path):
    corpus = tmp_path / "bom.jsonl"
    corpus.write_bytes(BOM + b'{"_id": "a", "text": "one"}\n{"_id": "b", "text": "two"}\n')
    assert [(d.id, d.text) for d in read_corpus(corpus)] == [("a", "one"), ("b", "two")]
    single = tmp_path / "note.txt"
    single.write_bytes(BOM + b"hello")
    assert [d.text for d in read_corpus(single)] == ["hello"]
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "a.md").write_bytes(BOM + b"# Alpha")
    assert [d.text for d in read_corpus(folder)] == ["# Alpha"]
    tsv = tmp_path / "q.tsv"
    tsv.write_bytes(BOM + b"q1\thello\r\nq2\tworld\r\n")
    assert read_queries(tsv) == [("q1", "hello"), ("q2", "world")]
    queries = tmp_path / "q.jsonl"
    queries.write_bytes(BOM + b'{"_id": "q1", "text": "hello"}\n')
    assert read_queries(queries) == [("q1", "hello")]


# -- TSV corpora (ColBERT's collection.tsv) ------------------------------------------------


def test_a_tsv_corpus_is_read_as_colbert_and_dpr_write_it(tmp_path):
    """id<TAB>text and id<TAB>text<TAB>title lines, a first line of column names skipped, fields as
    they stand (quotes are text), CRLF, a byte order mark and blank lines; counted for progress."""
    tsv = tmp_path / "collection.tsv"
    tsv.write_bytes(BOM + b'id\ttext\ttitle\r\n0\tCats purr "softly".\r\n\r\n1\tDogs bark.\tDogs\n2\tid\ttext\n')
    docs = read_corpus(tsv)
    assert len(docs) == 3 and [(d.id, d.text, d.title) for d in docs] == [("0", 'Cats purr "softly".', ""), ("1", "Dogs bark.", "Dogs"), ("2", "id", "text")]
    assert [d.where for d in read_corpus(tsv)] == [f"{tsv}:2", f"{tsv}:4", f"{tsv}:5"]
    plain = tmp_path / "plain.tsv"  # no header: MS MARCO's collection.tsv; a lone CR is text, not a line's end
    plain.write_bytes(b"7\tfirst\r line\n8\tsecond\n")
    assert len(read_corpus(plain)) == 2 and [(d.id, d.text) for d in read_corpus(plain)] == [("7", "first\r line"), ("8", "second")]
    spread = tmp_path / "spread.tsv"  # a header with a trailing tab (as spreadsheets save it); a first line holding only a byte order mark
    spread.write_bytes(b"ID\tText\t\n5\tfive\n")
    assert len(read_corpus(spread)) == 1 and [d.id for d in read_corpus(spread)] == ["5"]
    spread.write_bytes(BOM + b"\n5\tfive\n6\tsix\n")
    assert len(read_corpus(spread)) == 2 == len(list(read_corpus(spread)))


@pytest.mark.parametrize("line, message", [
    ("d1 text", r"bad.tsv:2: expected id<TAB>text or id<TAB>text<TAB>title, found 1 field separated by tabs; separate the id from the text with a tab"),
    ("d1\ta\tb\tc", r"bad.tsv:2: expected id<TAB>text .*found 4 fields .*belongs in a JSONL corpus"),
    ("a b\ttext", r"bad.tsv:2: document id 'a b' holds whitespace"),
    ("\ttext", r"bad.tsv:2: document id '' is empty"),
])
def test_a_malformed_tsv_line_is_named_and_writes_nothing(tmp_path, capsys, line, message):
    tsv = tmp_path / "bad.tsv"
    tsv.write_text(f"d0\tfine\n{line}\nd9\tafter\n")
    with pytest.raises(CorpusError, match=message):
        list(read_corpus(tsv))
    code, out, err = run(capsys, "index", tsv, "--name", "x", "--index-dir", tmp_path / "home", "--quiet", "--no-fde", "--sparse", "none")
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1 and re.search(message, err)
    assert not (tmp_path / "home" / "x").exists()
    latin1 = tmp_path / "latin1.tsv"
    latin1.write_bytes(b"d0\tok\nd1\tcaf\xe9\n")
    with pytest.raises(CorpusError, match=r"latin1.tsv:2: not UTF-8 text.*convert the file to UTF-8"):
        list(read_corpus(latin1))


def test_a_tsv_corpus_indexes_and_searches_as_its_jsonl(tmp_path, capsys):
    """The same documents as TSV and as JSONL: the same index, the same hits (real builds)."""
    rows = [("d1", "Cats purr softly on the sofa.", "Cats"), ("d2", "Dogs bark at night.", ""), ("d3", "Green tea is rich in catechins.", "Tea")]
    tsv, jsonl = tmp_path / "c.tsv", tmp_path / "c.jsonl"
    tsv.write_text("".join(f"{i}\t{t}\t{title}\n" if title else f"{i}\t{t}\n" for i, t, title in rows))
    jsonl.write_text("".join(json.dumps({"_id": i, "text": t, "title": title}) + "\n" for i, t, title in rows))
    home = tmp_path / "home"
    hits = {}
    for corpus in (tsv, jsonl):
        name = corpus.suffix[1:]
        assert run(capsys, "index", corpus, "--name", name, "--index-dir", home, "--quiet", "--no-fde", "--sparse", "bm25s")[0] == 0
        code, out, err = run(capsys, "search", name, "which animal purrs", "-k", "3", "--index-dir", home, "--no-server", "--json")
        assert code == 0, err
        hits[name] = [(h["id"], h["score"], h["metadata"]) for h in json.loads(out)["hits"]]
    assert hits["tsv"] == hits["jsonl"] and hits["tsv"][0][0] == "d1"


# -- queries ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name, content", [("q.tsv", ""), ("q.tsv", "\n  \n\n"), ("q.jsonl", ""), ("q.jsonl", "\n\n")])
def test_empty_queries_file_is_an_error(tmp_path, index, capsys, name, content):
    path = tmp_path / name
    path.write_text(content)
    code, out, err = run(capsys, "search", index.path, "--queries", path)
    assert code == 2 and out == ""
    assert err.startswith("mvr: error: ") and f"{path} holds no queries" in err
    assert run(capsys, "search", index.path, "--queries", tmp_path)[2] == f"mvr: error: {tmp_path} is a folder; --queries takes a file of queries (JSONL, or id<TAB>text).\n"


def test_huge_k_is_capped_at_the_documents(index, capsys):
    ids = sorted(doc_id for doc_id, _ in DOCS)
    results = index.search(["cats", "tea"], k=10**12)
    assert results.indices.shape == results.scores.shape == (2, len(DOCS))
    assert (results.indices >= 0).all() and np.isfinite(results.scores).all()
    for hits in results:
        assert sorted(h.id for h in hits) == ids and [h.rank for h in hits] == [1, 2, 3, 4]
    assert results.doc_ids[0][0] == "d1" and len(results.to_trec(["a", "b"])) == 2 * len(DOCS)
    encoded = index.search_encoded(index.encode_queries("cats"), np.int64(10**12))
    assert encoded.indices.shape == (1, len(DOCS))
    assert index.search("cats", k=2).indices.shape == (1, 2)
    for bad in (0, -1, 2.5, True, "3"):
        with pytest.raises(QueryError, match="k must be a positive integer"):
            index.search("cats", k=bad)

    code, out, _ = run(capsys, "search", index.path, "cats", "-k", "10000000000", "--trec")
    rows = [line.split() for line in out.splitlines()]
    assert code == 0 and sorted(row[2] for row in rows) == ids and [row[3] for row in rows] == ["1", "2", "3", "4"]
    for name, problem in (("my run", "holds whitespace"), ("", "is empty")):  # wrote lines of 7 and 5 fields
        code, out, err = run(capsys, "search", index.path, "cats", "--trec", "--run-name", name)
        assert code == 2 and out == "" and f"--run-name: run name {name!r} {problem}" in err, err
    code, out, _ = run(capsys, "search", index.path, "cats", "-k", "10000000000", "--json")
    assert code == 0 and sorted(h["id"] for h in json.loads(out)["hits"]) == ids


# -- huge documents --------------------------------------------------------------------------


def test_long_document_is_cut_before_tokenising(default_encoder):
    encoder = default_encoder
    long = ("cats purr softly and dogs bark loudly at night " * 110_000)[:5_000_000]
    started = time.perf_counter()
    (ids,) = encoder.tokenize_documents([long])
    assert time.perf_counter() - started < 2.0  # tokenising it whole took 8 s and 1.5 GB
    kept = encoder.spec.doc_maxlen - 2 - (encoder.spec.doc_marker is not None)
    reference = encoder.tokenizer(long[:50_000], add_special_tokens=False)["input_ids"][:kept]
    assert len(ids) == encoder.spec.doc_maxlen and ids[-kept - 1 : -1] == reference
    whole, head = encoder.encode_documents([long]), encoder.encode_documents([long[:50_000]])
    np.testing.assert_array_equal(whole.vectors, head.vectors)
    np.testing.assert_array_equal(whole.token_ids, head.token_ids)
    assert whole.truncated.tolist() == [True]


def test_cutting_never_changes_the_tokens_or_the_truncated_flag(default_encoder):
    encoder = default_encoder
    kept = encoder.spec.doc_maxlen - 2 - (encoder.spec.doc_marker is not None)
    texts = [
        " " * 100_000 + "cats purr",  # the words lie past any first cut
        "\x00" * 70_000 + " dogs bark",  # characters the tokenizer drops
        "x" * 40_000 + " tea",  # no break inside the first window
        "word " * kept + " " * 100_000,  # exactly the tokens that fit: not truncated
        "word " * (kept + 1) + " " * 100_000,  # one more: truncated
        "short text",
    ]
    got = encoder.tokenize_documents(texts)
    for text, ids in zip(texts, got):
        full = encoder.tokenizer(text, add_special_tokens=False)["input_ids"][:kept]
        assert ids[len(ids) - 1 - len(full) : -1] == full
    assert encoder.encode_documents(texts).truncated.tolist() == [False, False, False, False, True, False]


# -- what `mvr search` prints ----------------------------------------------------------------


def test_plain_output_escapes_control_characters(tmp_path, index, capsys):
    code, out, _ = run(capsys, "search", index.path, "kettle alert", "-k", "4")
    assert code == 0 and "\x1b" not in out and "\x07" not in out
    assert "Red \\x1b[31mALERT\\x1b[0m: the kettle \\x07 boils." in out
    queries = tmp_path / "q.tsv"
    queries.write_text("q1\tkettle \x1b[2J alert\n")
    code, out, _ = run(capsys, "search", index.path, "--queries", queries, "-k", "1")
    assert code == 0 and "\x1b" not in out and out.startswith("## q1: kettle \\x1b[2J alert\n")
    code, out, _ = run(capsys, "search", index.path, "kettle alert", "-k", "4", "--json")
    assert code == 0 and DOCS[2][1] in [h["text"] for h in json.loads(out)["hits"]]  # JSON keeps the text itself


def test_query_ids_that_would_break_a_trec_run_are_refused(tmp_path):
    (tmp_path / "q.tsv").write_text("q 1\twhich animal purrs\n")
    with pytest.raises(QueryError, match=r"q.tsv:1: query id 'q 1' holds whitespace"):
        read_queries(tmp_path / "q.tsv")
    (tmp_path / "q.jsonl").write_text('{"_id": "", "text": "x"}\n')
    with pytest.raises(QueryError, match="query id '' is empty"):
        read_queries(tmp_path / "q.jsonl")
    (tmp_path / "ok.jsonl").write_text('{"_id": 7, "text": "x"}\n')
    assert read_queries(tmp_path / "ok.jsonl") == [("7", "x")]


def test_documents_without_a_term_for_bm25_are_indexed(tmp_path, default_encoder):
    """A batch whose documents all lose every term to BM25's stopwords and punctuation ("x",
    "the of and", "!!! ???") is indexed (bm25s could not index an empty vocabulary: a traceback
    from `mvr index` and `mvr add`); the text stage finds none of them, MaxSim does."""
    from mvr import IndexConfig

    config = IndexConfig(fde=None, sparse=("bm25s",))
    index = Index.build([("a", "x"), ("b", "the of and")], tmp_path / "i", encoder=default_encoder, config=config)
    assert index.search("x", k=2, first_stage="bm25s", rerank=False).doc_ids == [[]]
    assert sorted(index.search("x", k=2, first_stage="exhaustive").doc_ids[0]) == ["a", "b"]
    index.add([("c", "!!! ???")], merge=False)
    index.add([("d", "green tea catechins")], merge=False)
    assert index.search("tea", k=1, first_stage="bm25s", rerank=False).doc_ids == [["d"]]


def test_k_above_the_candidates_still_finds_k_hits(tmp_path, default_encoder):
    """-k 150 over 300 documents found 100 (the default candidates), with every first stage;
    candidates asked for are kept (a sweep of them measures what it says)."""
    from mvr import IndexConfig

    docs = [(f"d{i}", f"document {i} about tea and cats number {i % 17}") for i in range(300)]
    index = Index.build(docs, tmp_path / "i", encoder=default_encoder, config=IndexConfig(sparse=("bm25s",)))
    for options in ({}, {"first_stage": "fde"}, {"first_stage": "bm25s"}, {"first_stage": "exhaustive"}):
        assert len(index.search("tea", k=150, **options).doc_ids[0]) == 150, options
    assert len(index.search("tea", k=150, first_stage="fde", candidates=20).doc_ids[0]) == 20


def test_python_callers_passing_the_wrong_kind_get_mvr_errors_and_no_change(tmp_path, default_encoder):
    """What a Python caller may pass by mistake is an mvr error with a clear line, never a raw
    TypeError from deep inside, and nothing is written; a dict (one document, not a list of them)
    added two documents named "0" and "1", and plain strings took ids "0", "1", ... that the next
    add's collide with."""
    from mvr import ConfigError, Document

    index = Index.build([("a", "cats purr"), ("b", "green tea")], tmp_path / "i", encoder=default_encoder, config=FAST)
    generation = index.generation
    for queries in (5, None, b"cats", {"q": "cats"}, {"cats", "tea"}):
        with pytest.raises(QueryError, match="queries must be a string or a list of strings"):
            index.search(queries)
    with pytest.raises(QueryError, match="query #0 is bytes"):
        index.search([b"cats"])
    with pytest.raises(QueryError, match="dense_share must be a number in"):
        index.search("cats", first_stage="exhaustive", dense_share="0.5")
    for documents, message in ((None, "got NoneType"), (5, "got int"), ({"id": "x1", "text": "t"}, r"got dict \(one alone: pass \[it\]\)"),
                               (["first text"], "a plain string has no id"), ([Document("db", b"bytes")], "text and title must be strings, got bytes")):
        for write in (index.add, index.upsert):
            with pytest.raises(CorpusError, match=message):
                write(documents)
    for ids in (None, 4983, {"a": 1}):
        with pytest.raises(QueryError, match="ids must be a document id or a list of them"):
            index.delete(ids)
    with pytest.raises(ConfigError, match="wait is the seconds to wait"):
        index.add([("c", "tea")], wait="x")
    assert index.generation == generation and sorted(index.doc_ids) == ["a", "b"]
    assert Index.build(["plain strings", "numbered from 0"], tmp_path / "j", encoder=default_encoder, config=FAST).doc_ids.tolist() == ["0", "1"]


def test_rerank_refuses_what_it_would_get_wrong(index, tmp_path, capsys):
    """Candidates that are no list (a string read letter by letter, a dict in no order), a
    candidate named twice (ranked once), two documents of one id, a missing id quoted whole;
    `mvr rerank`: a query id that would break a TREC line, an empty candidates file, a failure
    after a first query (half a run printed), --threads and --run-name that make no sense."""
    import mvr

    for ids in (None, 5, "d1", {"d1": 1}, {"d1"}):
        with pytest.raises(QueryError, match="the candidates are a list of document ids"):
            index.rerank("tea", ids)
    assert [h.id for h in index.rerank("purring cats", ["d1", "d2", "d1"])] == [h.id for h in index.rerank("purring cats", ["d1", "d2"])]
    with pytest.raises(QueryError, match="two documents have the id 'a'"):
        mvr.rerank("tea", [("a", "green tea"), ("a", "black tea")])
    with pytest.raises(QueryError) as caught:
        index.rerank("tea", ["z" * 100_000])
    assert len(str(caught.value)) < 400
    lines = {"bad qid": json.dumps({"id": "q 1", "query": "tea", "ids": ["d4"]}), "empty": ""}
    for name, content in lines.items():
        (tmp_path / f"{name}.jsonl").write_text(content + "\n" if content else "")
        code, out, err = run(capsys, "rerank", index.path, "--candidates", tmp_path / f"{name}.jsonl")
        assert code == 2 and out == "" and ("holds whitespace" if name == "bad qid" else "holds no candidate lines") in err, (name, err)
    (tmp_path / "run.trec").write_text("q1 Q0 d4 1 5 t\nq2 Q0 d1 1 5 t\n")
    (tmp_path / "q.tsv").write_text("q1\tgreen tea\n")
    code, out, err = run(capsys, "rerank", index.path, "--run", tmp_path / "run.trec", "--queries", tmp_path / "q.tsv")
    assert code == 2 and out == "" and "query 'q2'" in err  # nothing of q1 printed before the error
    (tmp_path / "q2.tsv").write_text("q1\tgreen tea\nq1\tcats\n")
    code, _, err = run(capsys, "rerank", index.path, "--run", tmp_path / "run.trec", "--queries", tmp_path / "q2.tsv")
    assert code == 2 and "the query id 'q1' is given twice" in err
    for argv, message in ((["--threads", "-1"], "--threads must be a positive integer"), (["--run-name", "a b"], "--run-name: run name 'a b' holds whitespace")):
        code, _, err = run(capsys, "rerank", index.path, "--run", tmp_path / "run.trec", "--queries", tmp_path / "q.tsv", *argv)
        assert code == 2 and message in err
    for line, message in (("q1 Q0 d4 1 abc t", "the score 'abc' is not a number"), ("q1 Q0 d4 nan 5 t", "the rank is nan")):  # taken in silence
        (tmp_path / "odd.trec").write_text(line + "\n")
        code, out, err = run(capsys, "rerank", index.path, "--run", tmp_path / "odd.trec", "--queries", tmp_path / "q.tsv")
        assert code == 2 and out == "" and message in err, err
    for argv, message in ((["upgrade", index.path, "--wait", "-1"], "wait is the seconds to wait"), (["sparse", index.path, "--splade-model", "x"], "--splade-model goes with --stage splade")):
        code, _, err = run(capsys, *argv)  # upgrade of an index at version 2 took any wait; sparse left the model unread
        assert code == 2 and message in err, err


def test_stage_options_that_crash_faiss_and_empty_indexes_are_refused(tmp_path, default_encoder):
    """FDE settings faiss aborts the process on (HNSW0, HNSW1) or fails every search with (IVF0), a
    final dimension wider than the FDE (bad_alloc, or a TypeError in faiss), a negative seed; a
    stage rebuilt on an index whose documents were all deleted (a KeyError in each command)."""
    from mvr import ConfigError
    from mvr.config import FDEConfig
    from mvr.stages.fde import check_factory

    for settings, message in (({"factory": "HNSW0"}, "HNSW needs at least 2"), ({"factory": "IVF8_HNSW1,Flat"}, "HNSW needs at least 2"), ({"factory": "IVF0,Flat"}, "IVF needs at least 1"),
                              ({"d_final": 10**10}, "more than the FDE's own"), ({"seed": -1}, "seed (--fde-seed) must be an integer"),
                              ({"factory": "PQ16x0"}, "PQ codes are 1 to 16 bits"), ({"factory": "IVF4,PQ16x24"}, "PQ codes are 1 to 16 bits"),  # SIGFPE in faiss; memory
                              ({"factory": "HNSW99999999"}, "at most 1024 neighbours"), ({"factory": "IVF1000000,Flat"}, "its centroids alone take 38 GiB")):  # 21 GB, then the OOM killer
        with pytest.raises(ConfigError, match=re.escape(message)):
            check_factory(FDEConfig(**settings), 384)
    index = Index.build([("a", "green tea")], tmp_path / "i", encoder=default_encoder, config=FAST)
    stale = Index.open(index.path, model=default_encoder)  # emptied by another writer while this one waits: found under the lock (an IndexError)
    index.delete(["a"])
    for one in (index, stale):
        with pytest.raises(ConfigError, match="holds no documents"):
            one.build_stage("pooled")
    # what a stage rebuild would take and ignore: another kind of stage, none, a model without its stage, settings of a stage that has none
    index = Index.build([("a", "green tea"), ("b", "black tea")], tmp_path / "s", encoder=default_encoder, config=FAST)
    for stages, kwargs, message in ((["fde"], {}, "build_sparse builds text first stages"), ([], {}, "build_sparse builds text first stages"),
                                    (["bm25s"], {"splade_model": "x"}, "splade_model goes with the splade stage")):
        with pytest.raises(ConfigError, match=message):
            index.build_sparse(stages, **kwargs)
    with pytest.raises(ConfigError, match="the pooled stage takes no settings, got 5"):
        index.build_stage("pooled", 5)
    generation = index.generation
    assert list(index.build_sparse(["bm25s", "bm25s"])) == ["bm25s"] and index.generation == generation + 1  # once, not twice


def test_the_encoder_refuses_what_it_would_encode_wrong(default_encoder):
    """A document string alone (11 one-letter documents for "hello world"), a dict (its keys),
    None or a number, a lone surrogate (the tokenizer's TypeError), an empty list (a
    ZeroDivisionError for documents), a batch size of 0 (the default, silently) or -1."""
    from mvr import Encoder, EncoderError
    from mvr.errors import ConfigError

    for texts, message in (("hello world", "got str (one alone: pass [it])"), ({"a", "b"}, "got set"), ({"a": "x"}, "got dict"), (None, "got NoneType"), (5, "got int"), (["a\ud800"], "lone surrogate")):
        with pytest.raises(EncoderError, match=re.escape(message)):
            default_encoder.encode_documents(texts)
    assert default_encoder.encode_documents([]).vectors.shape == (0, default_encoder.dim) == default_encoder.encode_queries([]).vectors.shape
    assert default_encoder.encode_documents([], dtype=np.float16).vectors.dtype == np.float16
    for dtype in ("float64", "int8", None, "nonsense", 3):
        with pytest.raises(EncoderError, match="dtype must be float32 or float16"):
            default_encoder.encode_documents(["a"], dtype=dtype)
    assert len(default_encoder.encode_queries("one query")) == 1
    for batch in (0, -1, "2"):
        with pytest.raises(ConfigError, match="batch_size must be a positive integer"):
            default_encoder.encode_queries(["q"], batch_size=batch)
    for options in ({"query_maxlen": "x"}, {"batch_size": None}, {"doc_maxlen": 4.5}):
        with pytest.raises(ConfigError, match="must be a positive integer"):
            Encoder(**options)


def test_a_model_that_gives_non_finite_vectors_builds_no_index(models, tmp_path):
    """A checkpoint whose weights hold a NaN: the build stops at its first chunk with one line,
    nothing is left at the index's path (vectors go to the spool as float16, checked there)."""
    import torch
    from transformers import BertModel

    from mvr import MvrError

    broken = tmp_path / "nan-model"
    shutil.copytree(models["plain"], broken)
    model = BertModel.from_pretrained(broken)
    with torch.no_grad():
        model.encoder.layer[0].output.LayerNorm.weight[0] = float("nan")
    model.save_pretrained(broken)
    with pytest.raises(MvrError, match="the encoder produced non-finite vectors; check the model's weights"):
        Index.build([("d1", "a cat"), ("d2", "a dog barks")], tmp_path / "ix", config=dataclasses.replace(FAST, model=str(broken), doc_runtime="torch"))
    assert not (tmp_path / "ix").exists()


def test_cli_small_mistakes_get_one_line(index, tmp_path, capsys):
    """`mvr list --index-dir` of a file or a missing folder (it listed nothing, as if empty); output
    to a pipe whose reader went away (`mvr search ... | head`: a BrokenPipeError traceback)."""
    import os
    import subprocess
    import sys

    for where in (tmp_path / "missing", Path(__file__)):
        code, _, err = run(capsys, "list", "--index-dir", where)
        assert code == 2 and "is not a folder" in err
    home = tmp_path / "home"  # beside a real index: a folder whose manifest.json is junk, and one of another program's
    for name, manifest in (("junk", "{not json"), ("other", '{"format": "someone-else"}')):
        (home / name).mkdir(parents=True)
        (home / name / "manifest.json").write_text(manifest)
    shutil.copytree(index.path, home / "real")
    code, out, err = run(capsys, "list", "--index-dir", home)
    assert code == 0 and out.split() == ["real"]
    assert "skipped junk: it holds a manifest.json that is not JSON" in err and "skipped other: it holds a manifest.json of format 'someone-else'" in err
    done = subprocess.Popen([sys.executable, "-m", "mvr.cli", "search", str(index.path), "tea", "-k", "4"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    done.stdout.close()  # gone before anything is written
    stderr = done.communicate(timeout=120)[1].decode()
    assert done.returncode == 141 and "Traceback" not in stderr, stderr[-2000:]


def test_a_field_given_twice_with_two_values_is_refused(tmp_path):
    """A corpus line with "year" beside "metadata" and another "year" in it stored one of them
    and dropped the other in silence; the same value twice is fine."""
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"id": "a", "text": "x", "year": 2000, "metadata": {"year": 2000, "lang": "en"}}\n'
                      '{"id": "b", "text": "y", "year": 2000, "metadata": {"year": 1999}}\n')
    with pytest.raises(CorpusError, match=r"c.jsonl:2: document 'b' gives 'year' twice, 2000 beside \"metadata\" and 1999 in it; keep one"):
        list(read_corpus(corpus))
    assert next(iter(read_corpus(corpus))).metadata == {"year": 2000, "lang": "en"}


def test_an_id_with_nul_is_no_stored_id(index):
    """NumPy's fixed-width strings drop trailing NULs: "d1\x00" matched d1, and a delete of it deleted d1."""
    first = index.doc_ids[0]
    assert f"{first}\x00" not in index and first in index
    with pytest.raises(KeyError):
        index.position(f"{first}\x00")
    with pytest.raises(QueryError, match="not in index"):
        index.rerank("tea", [f"{first}\x00"])


def test_encoded_queries_are_checked_before_the_kernels_read_them(index):
    """Offsets that fall, pass the vectors' end or start below 0 were read as given: the process
    aborted (heap corruption), segfaulted, or scored foreign memory. A query of no vectors, texts
    of another count, texts as one string, a bare array: refused too."""
    from mvr import TokenVectors

    q = index.encode_queries(["cats", "green tea"])
    n, mid = len(q.vectors), int(q.offsets[1])
    for offsets in ([0, n + 8, n], [0, mid, 100_000_000], [-5, mid, n], [0, mid, n + 1], [0, 0, n], [[0, n]], [0.0, float(n)]):
        with pytest.raises(QueryError, match="query offsets must rise from 0"):
            index.search_encoded(TokenVectors(q.vectors, np.array(offsets)), 2, first_stage="exhaustive")
    with pytest.raises(QueryError, match="2 encoded queries and 1 texts"):
        index.search_encoded(q, 2, texts=["cats"], first_stage="exhaustive")
    with pytest.raises(QueryError, match="texts are the queries' texts"):
        index.search_encoded(q, 2, texts="cats", first_stage="exhaustive")
    with pytest.raises(QueryError, match="encoded queries are TokenVectors"):
        index.search_encoded(q.vectors, 2, first_stage="exhaustive")
    assert index.search_encoded(q, 2, first_stage="exhaustive").doc_ids == index.search(["cats", "green tea"], k=2, first_stage="exhaustive").doc_ids


def test_a_broken_evaluation_set_is_refused_by_line(tmp_path, capsys, index):
    """Found by a fuzz of `mvr eval`: a judged query given twice (the later text won: nDCG@10 fell
    from 0.96 to 0.07), a pair judged twice with two grades (the last won), a grade past 64 bits
    (a SystemError from trec_eval), qrels/test.tsv a folder (said "no qrels for split 'test';
    available splits: test"), a split that climbs out of the dataset (read another one's qrels),
    and --output or --run-file a folder (a traceback once the whole evaluation had run)."""
    from conftest import write_beir
    from mvr.errors import DatasetError
    from mvr.eval.beir import load_beir
    from mvr.training import train_projection

    data = write_beir(tmp_path / "data")
    queries, qrels = load_beir(data)
    qid = next(iter(queries))
    good_queries, good_qrels = (data / "queries.jsonl").read_text(), (data / "qrels" / "test.tsv").read_text()
    (data / "queries.jsonl").write_text(good_queries + json.dumps({"_id": qid, "text": "another text"}) + "\n")
    with pytest.raises(DatasetError, match=f"queries.jsonl:{len(good_queries.splitlines()) + 1}: the judged query '{qid}' is given twice"):
        load_beir(data)
    (data / "queries.jsonl").write_text(good_queries)
    doc, grade = next(iter(qrels[qid].items()))
    for extra, says in ((f"{qid}\t{doc}\t{grade + 1}\n", f"judges document '{doc}' {grade + 1}, and {grade} on line"), (f"{qid}\t{doc}\t{2**63}\n", "out of range")):
        (data / "qrels" / "test.tsv").write_text(good_qrels + extra)
        with pytest.raises(DatasetError, match=says):
            load_beir(data)
    (data / "qrels" / "test.tsv").write_text(good_qrels + "a b\td1\t1\n")
    with pytest.raises(DatasetError, match="query id 'a b' is empty or holds whitespace"):
        load_beir(data)
    (data / "qrels" / "test.tsv").write_text("qid\tdocid\trel\n" + good_qrels.split("\n", 1)[1])  # another header: said as one, not as a bad score
    with pytest.raises(DatasetError, match=r"test.tsv:1: 'qid\\tdocid\\trel' is no judgement and no BEIR header"):
        load_beir(data)
    (data / "qrels" / "test.tsv").write_text(good_qrels)
    (data / "queries.jsonl").write_text(good_queries + json.dumps({"_id": None, "id": "q-other", "text": "x"}) + "\n")
    with pytest.raises(DatasetError, match="the line gives \"_id\" None and \"id\" 'q-other'; keep one"):  # was: the query lacked, as "None"
        load_beir(data)
    (data / "queries.jsonl").write_text(good_queries)
    (data / "qrels" / "test.tsv").write_text(good_qrels + f"{qid}\t{doc}\t{grade}\n")  # the same judgement twice: harmless
    assert load_beir(data)[1] == qrels
    (data / "queries.jsonl").write_text("".join(json.dumps({**json.loads(line), "text": "tea \ud800"}) + "\n" if json.loads(line)["_id"] == qid else line + "\n" for line in good_queries.splitlines()))
    with pytest.raises(DatasetError, match=f"query '{qid}' has a lone surrogate"):
        load_beir(data)
    (data / "queries.jsonl").write_text(good_queries)
    (data / "qrels" / "dev.tsv").mkdir()
    with pytest.raises(DatasetError, match="dev.tsv is not a file"):
        load_beir(data, "dev")
    for split in ("../data/qrels/test", "/etc/passwd", ".hidden", ""):
        with pytest.raises(DatasetError, match="is no plain name"):
            load_beir(data, split)
    for option in ("--output", "--run-file"):
        code, out, err = run(capsys, "eval", data, "--index", index.path, option, tmp_path, "--quiet")
        assert code == 2 and err.count("\n") == 1 and "is a folder; name a file" in err and out == "", err
    for name, value in (("temperature", 0), ("learning_rate", float("nan")), ("validation", 1)):
        with pytest.raises(Exception, match=rf"^{name} must lie in"):
            train_projection(index, queries, qrels, **{name: value})


def test_rerank_candidates_are_checked_line_by_line(index, tmp_path, capsys):
    """Found by a fuzz of `mvr rerank`: a query id twice wrote a TREC run with a (query, document)
    pair twice; a line with both "ids" and "documents" reranked the ids and dropped the texts;
    a bad candidate said neither file nor line."""
    cases = {
        "twice": ([{"id": "q1", "query": "tea", "ids": ["d4"]}, {"id": "q1", "query": "cats", "ids": ["d1"]}], "candidates.jsonl:2: the query id 'q1' is given twice (first on line 1)"),
        "both": ([{"id": "q1", "query": "tea", "ids": ["d4"], "documents": [{"id": "x", "text": "green tea"}]}], 'candidates.jsonl:1: give either "ids"'),
        "bad id": ([{"id": "q1", "query": "tea", "ids": ["d4"]}, {"id": "q2", "query": "tea", "ids": [5]}], "candidates.jsonl:2: document ids are strings"),
        "no text": ([{"id": "q1", "query": "", "ids": ["d4"]}], "candidates.jsonl:1: "),
    }
    for name, (lines, says) in cases.items():
        (tmp_path / "candidates.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
        code, out, err = run(capsys, "rerank", index.path, "--candidates", tmp_path / "candidates.jsonl")
        assert code == 2 and out == "" and err.count("\n") == 1 and says in err, (name, err)


def test_tune_and_eval_options_that_would_be_misread(tmp_path, capsys):
    """`mvr tune --signals ,` tuned every signal; --no-default without --save did nothing, silently;
    --candidates 0 said 'or None'; `mvr eval --index PATH` of no index suggested `--name PATH`,
    which `mvr index` refuses."""
    from conftest import write_beir

    data = write_beir(tmp_path / "data")
    for argv, says in (
        (["--signals", ","], "--signals names the signals"),
        (["--no-default"], "it needs --save NAME"),
        (["--candidates", "0"], "--candidates must be a positive integer, got 0"),
    ):
        code, out, err = run(capsys, "tune", data, "--index", tmp_path / "none", *argv)
        assert code == 2 and err.count("\n") == 1 and says in err, (argv, err)
    code, out, err = run(capsys, "eval", data, "--index", tmp_path / "none")
    assert code == 2 and f"--path {tmp_path / 'none'}`" in err, err


def test_an_index_home_that_is_a_file_says_so(tmp_path, capsys):
    (tmp_path / "corpus.jsonl").write_text('{"id": "a", "text": "cats"}\n')
    code, out, err = run(capsys, "search", "sci", "cats", "--index-dir", tmp_path / "corpus.jsonl")
    assert code == 2 and err.count("\n") == 1 and "is a file, not a folder" in err, err


def test_eval_tune_list_and_optimize_say_what_they_do(tmp_path, capsys, default_encoder, monkeypatch):
    """`mvr eval --group passages` scored 0 on every measure (passage ids against document qrels);
    eval of an index whose documents were all deleted raised a KeyError; `mvr tune` of an index
    without a first stage blamed a --candidates nobody gave; `mvr list` with MVR_INDEX_DIR naming a
    file listed nothing; `mvr optimize` of a version-1 index converted it and said "nothing to do"."""
    from conftest import DOCS as TINY, write_beir
    from mvr import IndexConfig

    data = write_beir(tmp_path / "data")
    docs = [{"id": i, "title": t, "text": x} for i, t, x in TINY]
    passages = Index.build(docs, tmp_path / "p", encoder=default_encoder, config=IndexConfig(fde=None, passage_tokens=16), show_progress=False)
    code, out, err = run(capsys, "eval", data, "--index", passages.path, "--group", "passages", "--quiet")
    assert code == 2 and err.count("\n") == 1 and "leave out --group passages" in err, err
    code, out, err = run(capsys, "eval", data, "--index", passages.path, "--quiet")
    assert code == 0 and float(re.search(r"exhaustive\s+-\s+([\d.]+)", out)[1]) > 0.5, out + err
    emptied = Index.build(docs, tmp_path / "e", encoder=default_encoder, config=FAST, show_progress=False)
    emptied.delete([d["id"] for d in docs])
    code, out, err = run(capsys, "eval", data, "--index", emptied.path, "--quiet", "--output", tmp_path / "r.json")
    assert code == 0 and json.loads((tmp_path / "r.json").read_text())["nDCG@10"] == 0.0, err
    code, out, err = run(capsys, "tune", data, "--index", emptied.path, "--split", "test")  # the warnings first, then the one-line error
    assert code == 2 and err.splitlines()[-1].startswith("mvr: error:") and "has no first stage whose candidates fusion could weigh" in err and "Traceback" not in err, err
    (tmp_path / "afile").write_text("")
    monkeypatch.setenv("MVR_INDEX_DIR", str(tmp_path / "afile"))
    code, out, err = run(capsys, "list")
    assert code == 2 and f"MVR_INDEX_DIR={tmp_path / 'afile'} is a file, not a folder" in err, err
    monkeypatch.setenv("MVR_INDEX_DIR", str(tmp_path / "nowhere"))  # not made yet: README's `export MVR_INDEX_DIR=~/indexes; mvr list`
    code, out, err = run(capsys, "list")
    assert code == 0 and out == "" and "no indexes yet" in err and "does not exist" in err, err
    monkeypatch.delenv("MVR_INDEX_DIR")
    legacy = shutil.copytree(Path(__file__).parent / "data" / "legacy-v0.1", tmp_path / "legacy")
    code, out, err = run(capsys, "optimize", legacy)
    assert code == 0 and out.startswith("converted legacy to format version 2") and "nothing to merge" in out, out + err
