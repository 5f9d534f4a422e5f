"""Document metadata (kept from the corpus, returned with every hit) and filters over it, applied
before each first stage cuts its candidates."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import FAST
from mvr import CorpusError, Index, IndexConfig, IndexFormatError, QueryError
from mvr.storage.metadata import Metadata, MetadataWriter

TEXTS = ["cats purr", "dogs bark", "cats meow loudly", "plants grow", "the cat sat", "cats and dogs", "volcano lava", "green tea", "cats again", "more cats"]


def _docs():
    return [
        {
            "id": f"d{i}",
            "text": text,
            "metadata": {"year": 2000 + i, "tags": ["even" if i % 2 == 0 else "odd"] + (["prime"] if i in (2, 3, 5, 7) else [])},
            "source": "web" if i < 5 else "news",  # a field outside "metadata" is kept too
            "ok": i % 3 == 0,
        }
        for i, text in enumerate(TEXTS)
    ]


@pytest.fixture(scope="module")
def meta_index(tmp_path_factory, default_encoder):
    return Index.build(_docs(), tmp_path_factory.mktemp("meta") / "idx", encoder=default_encoder, show_progress=False)


def _expected(spec):
    """The rows a filter keeps, by hand."""
    docs = _docs()

    def holds(doc, spec):
        meta = {**doc["metadata"], "source": doc["source"], "ok": doc["ok"]}
        for key, value in spec.items():
            if key == "$and":
                ok = all(holds(doc, part) for part in value)
            elif key == "$or":
                ok = any(holds(doc, part) for part in value)
            elif key == "$not":
                ok = not holds(doc, value)
            else:
                have = meta.get(key)
                items = have if isinstance(have, list) else [have]
                cond = value if isinstance(value, dict) else {"$eq": value}
                ok = True
                for op, v in cond.items():
                    ok &= {
                        "$eq": lambda: v in items, "$ne": lambda: v not in items, "$in": lambda: any(x in items for x in v),
                        "$nin": lambda: not any(x in items for x in v), "$gt": lambda: have > v, "$gte": lambda: have >= v,
                        "$lt": lambda: have < v, "$lte": lambda: have <= v,
                    }[op]()
            if not ok:
                return False
        return True

    return {i for i, doc in enumerate(docs) if holds(doc, spec)}


FILTERS = [
    {"source": "news"},
    {"year": {"$gte": 2004, "$lt": 2008}},
    {"tags": "prime"},
    {"tags": {"$in": ["prime", "even"]}, "ok": False},
    {"$or": [{"source": "web"}, {"tags": {"$nin": ["odd"]}}]},
    {"$not": {"year": {"$lte": 2006}}},
    {"$and": [{"source": {"$ne": "web"}}, {"ok": True}]},
    {"year": 1999},
]


@pytest.mark.parametrize("spec", FILTERS)
def test_every_first_stage_keeps_only_what_the_filter_keeps(meta_index, spec):
    want = _expected(spec)
    assert set(np.flatnonzero(meta_index.metadata.mask(spec))) == want
    exhaustive = meta_index.search("cats", k=len(TEXTS), first_stage="exhaustive", filter=spec)
    got = exhaustive.indices[0][exhaustive.indices[0] >= 0]
    assert set(got) == want  # every matching document, ranked, and no other
    unfiltered = meta_index.search("cats", k=len(TEXTS), first_stage="exhaustive")
    ranked = [p for p in unfiltered.indices[0] if p in want]
    assert got.tolist() == ranked  # the same order as without the filter
    for stage in ("fde", "fde+bm25s"):
        found = meta_index.search("cats", k=3, first_stage=stage, filter=spec, candidates=len(TEXTS))
        rows = found.indices[0][found.indices[0] >= 0]
        assert set(rows) <= want and len(rows) == min(3, len(want)), stage  # k hits whenever k match
    bm25s = meta_index.search("cats", k=len(TEXTS), first_stage="bm25s", filter=spec, rerank=False)
    assert set(bm25s.indices[0][bm25s.indices[0] >= 0]) <= want


def test_hits_carry_their_metadata_and_json_shows_it(meta_index, capsys):
    from mvr.cli import main

    hit = meta_index.search("volcano", k=1, first_stage="exhaustive")[0][0]
    assert hit.id == "d6" and hit.metadata == {"year": 2006, "tags": ["even"], "source": "news", "ok": True}
    assert main(["search", str(meta_index.path), "cats", "--json", "-k", "2", "--filter", '{"source": "news"}']) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert len(hits) == 2 and all(h["metadata"]["source"] == "news" for h in hits)
    with pytest.raises(SystemExit) as exit_:
        main(["search", str(meta_index.path), "cats", "--filter", "{not json"])
    assert exit_.value.code == 2 and "argument --filter: not valid JSON" in capsys.readouterr().err


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"colour": "red"}, "unknown metadata field 'colour' in the filter; fields: ok, source, tags, year"),
        ({"year": "2004"}, "field 'year' holds numbers"),
        ({"source": {"$gt": 3}}, r"\$gt compares numbers"),
        ({"year": {"$near": 1}}, "unknown operator '\\$near'"),
        ({"$xor": []}, "unknown filter operator"),
        ({"$or": []}, "non-empty list"),
        ({"tags": {"$in": "prime"}}, "takes a list"),
        ({"source": None}, "holds strings"),
        ({"source": {}}, "holds strings"),
        ({"tags": {"a": 1}}, "holds lists of strings"),
        ({"year": 10**400}, r"holds numbers, each finite and at most 2\*\*53"),
        ({"year": 2**53 + 1}, r"at most 2\*\*53 in magnitude.*no document can equal 9007199254740993"),
        ({"year": {"$gt": float("nan")}}, r"\$gt on field 'year' takes a number"),
        ({"year": {"$lte": True}}, r"\$lte on field 'year' takes a number"),
    ],
)
def test_bad_filters_say_what_is_wrong(meta_index, spec, message):
    with pytest.raises(QueryError, match=message):
        meta_index.search("cats", filter=spec)


def _nested(depth: int, key: str = "$not") -> dict:
    """A filter ``depth`` objects and lists deep ($and adds a list per level)."""
    spec = {"year": 2004}
    while depth > 1:
        spec, depth = ({key: spec}, depth - 1) if key == "$not" else ({key: [spec]}, depth - 2)
    return spec


def test_a_filter_nested_too_deeply_is_one_error_on_every_path(meta_index, capsys):
    from mvr.cli import main
    from mvr.storage.metadata import MAX_FILTER_DEPTH

    assert set(np.flatnonzero(meta_index.metadata.mask(_nested(MAX_FILTER_DEPTH)))) == set(range(10)) - {4}  # at the limit: 99 $not
    for spec in (_nested(MAX_FILTER_DEPTH + 1), _nested(1500), _nested(1500, "$and")):  # 1500: past Python's recursion limit
        with pytest.raises(QueryError, match="nested too deeply"):
            meta_index.search("cats", filter=spec)
    for depth in (150, 2000):  # 2000: past what json.loads can decode
        text = '{"$not": ' * depth + '{"year": 2004}' + "}" * depth
        with pytest.raises(SystemExit) as exit_:
            main(["search", str(meta_index.path), "cats", "--filter", text])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and "argument --filter: the filter is nested too deeply" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "spec, message",
    [
        ({1: 2}, r"filter keys are field names or operators \(strings\), got 1 \(int\)"),
        ({"year": {None: 1}}, "filter keys .* got None"),
        ({"source": b"news"}, "filter values are strings, numbers, bools or lists of them: decode bytes to str first"),
        ({"source": object()}, r"the filter holds <object .*\(object\); filter values are"),
        ({"year": {"$in": (2004, 2005)}}, r"\(tuple\).*: give a list"),
    ],
)
def test_filter_keys_and_values_python_gives_are_checked(meta_index, spec, message):
    with pytest.raises(QueryError, match=message):
        meta_index.search("cats", filter=spec)


def test_numpy_scalars_filter_as_the_python_values_they_are(meta_index):
    mask = meta_index.metadata.mask
    assert set(np.flatnonzero(mask({"year": np.int64(2004)}))) == {4}
    assert set(np.flatnonzero(mask({"year": {"$gte": np.float32(2008.0), "$lt": np.uint16(2010)}}))) == {8, 9}
    assert set(np.flatnonzero(mask({"ok": np.bool_(True), "source": np.str_("news")}))) == {6, 9}
    assert set(np.flatnonzero(mask({"year": {"$in": [np.int8(1), np.int32(2001)]}}))) == {1}


def test_number_bounds_past_2_53_compare_exactly(meta_index, tmp_path):
    mask = meta_index.metadata.mask
    assert mask({"year": {"$lt": 1e20}}).all() and mask({"year": {"$gte": -1e300}}).all() and not mask({"year": {"$gt": 2**60}}).any()
    stored = [2**53, 2**53 - 1, -(2**53), 0.5, -0.0, 1e15 + 0.5, 123456789012345, float(2**60), 1e300, None]  # the last three: beyond what the corpus stores
    writer = MetadataWriter()
    for v in stored:
        writer.add({} if v is None else {"n": v})
    writer.close(tmp_path)
    meta = Metadata(tmp_path, len(stored))
    bounds = [2**53 - 1, 2**53, 2**53 + 1, 2**60 - 1, 2**60, 2**60 + 1, -(2**53) - 1, 10**400, -(10**400), 1e20, -1e300, 0, 0.5, float("inf"), -float("inf")]
    compare = {"$gt": lambda a, b: a > b, "$gte": lambda a, b: a >= b, "$lt": lambda a, b: a < b, "$lte": lambda a, b: a <= b}
    for bound in bounds:
        for op, holds in compare.items():  # Python compares int with float exactly: the brute force
            want = [v is not None and holds(v, bound) for v in stored]
            assert meta.mask({"n": {op: bound}}).tolist() == want, (op, bound)
    for value in stored[:7]:
        assert meta.mask({"n": value}).tolist() == [v is not None and v == value for v in stored], value


def test_a_filter_on_an_index_without_metadata(tmp_path, default_encoder):
    index = Index.build([("a", "cats purr"), ("b", "dogs bark")], tmp_path / "plain", config=FAST, encoder=default_encoder)
    assert index.search("cats", k=1)[0][0].metadata == {}
    with pytest.raises(QueryError, match="fields: none"):
        index.search("cats", filter={"year": 2000})
    with pytest.raises(QueryError, match="filter must be a JSON object"):
        index.search("cats", filter=["year"])


def test_other_fields_of_a_line_are_kept_when_they_can_be(tmp_path, default_encoder, capsys):
    import numpy as np

    docs = [{"id": "a", "text": "x", "embedding": [0.1, 0.2], "info": {"k": 1}, "url": "u1", "n": np.int64(3), "huge": 10**30, "none": None},
            {"id": "b", "text": "y", "embedding": [0.3]}]
    with pytest.warns(UserWarning, match=r"left out \('embedding' of 2 documents, 'info' of 1 documents, 'huge' of 1 documents\): a field is a string"):
        index = Index.build(docs, tmp_path / "x", config=FAST, encoder=default_encoder)  # was silent
    assert index.document(0).metadata == {"url": "u1", "n": 3}  # the rest is not a field type mvr stores
    from mvr.cli import main

    corpus = tmp_path / "c.jsonl"
    corpus.write_text(json.dumps({"id": "a", "text": "x", "embedding": [0.1]}) + "\n")
    done = subprocess.run([sys.executable, "-m", "mvr.cli", "index", str(corpus), "--path", str(tmp_path / "y"), "--no-fde", "--sparse", "none", "--quiet"],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.returncode == 0 and done.stderr == "mvr: warning: fields no metadata type holds were left out ('embedding' of 1 documents): a field is a string, a finite number of at most 2**53, true/false or a list of strings.\n"
    corpus.write_text(json.dumps({"_id": "a", "id": "b", "text": "x"}) + "\n")  # the "id" was dropped in silence
    assert main(["index", str(corpus), "--path", str(tmp_path / "z"), "--no-fde", "--quiet"]) == 2
    assert capsys.readouterr().err == f'mvr: error: {corpus}:1: the line gives "_id" \'a\' and "id" \'b\'; keep one.\n'


def test_metadata_values_are_checked_when_read(tmp_path, default_encoder):
    with pytest.raises(CorpusError, match="metadata field name"):
        Index.build([{"id": "a", "text": "x", "metadata": {"\ud800": "v"}}], tmp_path / "s", config=FAST, encoder=default_encoder)
    with pytest.raises(CorpusError, match=r"at most 2\*\*53"):
        Index.build([{"id": "a", "text": "x", "metadata": {"big": 2**60}}], tmp_path / "b", config=FAST, encoder=default_encoder)
    with pytest.raises(CorpusError, match="metadata field 'nested'"):
        Index.build([{"id": "a", "text": "x", "metadata": {"nested": {"a": 1}}}], tmp_path / "x", config=FAST, encoder=default_encoder)
    with pytest.raises(CorpusError, match="'year' is a string here but a number"):
        Index.build([{"id": "a", "text": "x", "year": 2000}, {"id": "b", "text": "y", "year": "2001"}], tmp_path / "y", config=FAST, encoder=default_encoder)
    assert not (tmp_path / "y").exists()  # refused before anything was written


def test_a_document_of_many_fields_reads_in_one_check_and_the_fields_are_bounded(tmp_path, default_encoder):
    """Reading a row loaded each column between its own two checks of the segment's manifest
    (which lists every column): a hit with 2,000 fields took 15 s to return over HTTP. And an
    index takes at most MAX_FIELDS fields, of names at most MAX_FIELD_NAME characters."""
    from mvr.storage.metadata import MAX_FIELD_NAME, MAX_FIELDS

    fields = {f"f{i}": i for i in range(300)}
    index = Index.build([{"id": "a", "text": "cats", "metadata": fields}, {"id": "b", "text": "dogs"}], tmp_path / "many", config=FAST, encoder=default_encoder)
    index = Index.open(tmp_path / "many")
    (segment,) = index.segments
    checks = []
    still_here = segment.still_here
    segment.still_here = lambda: checks.append(1) or still_here()
    assert index.document(0).metadata == fields and index.search("cats", k=1).to_dicts()[0][0]["metadata"] == fields
    assert len(checks) <= 10, len(checks)  # the columns loaded between one pair of checks, the texts and stages likewise (600 before)
    too_many = {f"g{i}": 1 for i in range(MAX_FIELDS + 1)}
    with pytest.raises(CorpusError, match=f"would be field {MAX_FIELDS + 1:,} of the index; it holds at most {MAX_FIELDS:,}"):
        Index.build([{"id": "a", "text": "x", "metadata": too_many}], tmp_path / "t", config=FAST, encoder=default_encoder)
    with pytest.raises(CorpusError, match=f"names are at most {MAX_FIELD_NAME} characters"):
        index.add([{"id": "c", "text": "x", "metadata": {"n" * (MAX_FIELD_NAME + 1): 1}}])
    with pytest.raises(CorpusError, match="would be field 1,001"):  # the index's own 300 count
        index.add([{"id": "c", "text": "x", "metadata": {f"h{i}": 1 for i in range(701)}}])
    index.add([{"id": "c", "text": "x", "metadata": {**fields, **{f"h{i}": 1 for i in range(700)}}}])
    assert Index.open(tmp_path / "many").document(2).metadata["h699"] == 1 and not (tmp_path / "t").exists()


def test_an_index_past_the_field_limits_still_merges_and_takes_its_own_fields(tmp_path, default_encoder, monkeypatch):
    """An index made before the limits may hold more fields, or longer names: its merges (after
    each add and delete, and optimize) rewrite every row and must not refuse them, after the
    write they follow was committed."""
    from mvr.storage import metadata

    long_name = "n" * 300
    monkeypatch.setattr(metadata, "MAX_FIELD_NAME", 1000)  # the index as made before the limits
    index = Index.build([{"id": f"d{i}", "text": f"cats {i}", "metadata": {"a": i, "b": "x", long_name: "y"}} for i in range(3)], tmp_path / "old",
                        config=FAST, encoder=default_encoder)
    monkeypatch.setattr(metadata, "MAX_FIELDS", 2)
    monkeypatch.setattr(metadata, "MAX_FIELD_NAME", 256)
    index.add([{"id": "d3", "text": "dogs", "metadata": {"a": 3, long_name: "z"}}])  # the index's own fields
    index.delete(["d0"])
    index.optimize()
    assert len(index.segments) == 1 and index.document(2).metadata == {"a": 3, long_name: "z"}
    with pytest.raises(CorpusError, match="would be field 4 of the index; it holds at most 2"):
        index.add([{"id": "d4", "text": "x", "metadata": {"c": 1}}])


@pytest.mark.parametrize("value, match, other", [(True, True, 7), (3.5, 3.5, "seven"), ("red", "red", 7), (["red", "blue"], "red", 7)])
def test_a_field_whose_last_holder_is_deleted_stays_known(tmp_path, default_encoder, value, match, other):
    """Once the last document holding a field was deleted and merged away, a filter on it failed
    ("unknown metadata field"): a client's filter broke after deletes. It now matches nothing."""
    index = Index.build([{"id": "a", "text": "cats", "metadata": {"flag": value}}], tmp_path / "i", config=FAST, encoder=default_encoder)
    index.add([{"id": "b", "text": "dogs"}], merge=False)
    index.delete(["a"])  # its segment goes whole
    assert len(index.segments) == 1 and index.search("cats", k=2, filter={"flag": match}, first_stage="exhaustive")[0] == []
    index.add([{"id": "c", "text": "birds", "metadata": {"flag": value}}], merge=False)
    index.delete(["c"], merge=False)
    index.optimize()  # a merge of rows none of which holds it
    assert len(index.segments) == 1 and index.metadata_fields == {"flag": "strings" if isinstance(value, list) else index.metadata_fields["flag"]}
    assert index.search("cats", k=2, filter={"flag": match}, first_stage="exhaustive")[0] == []
    assert [h.id for h in index.search("cats", k=2, filter={"$not": {"flag": match}}, first_stage="exhaustive")[0]] == ["b"]
    assert index.document(0).metadata == {}
    with pytest.raises(CorpusError, match="one field, one type"):  # its type is kept too
        index.add([{"id": "c", "text": "x", "metadata": {"flag": other}}])


def test_the_recorded_fields_follow_an_emptied_index_a_derive_and_damage(tmp_path, default_encoder):
    import json

    from mvr.errors import IndexFormatError

    index = Index.build([{"id": "a", "text": "cats", "metadata": {"flag": "x"}}, {"id": "b", "text": "dogs"}], tmp_path / "i", config=FAST, encoder=default_encoder)
    index.delete(["a"])
    index.optimize()
    derived = Index.derive(index, tmp_path / "d", codec="int8")  # a derive keeps the fields its source's commit records
    assert derived.metadata_fields == {"flag": "string"} and derived.search("cats", k=1, filter={"flag": "x"}, first_stage="exhaustive")[0] == []
    index.delete(["b"])  # no segment left: the commit's record is all there is
    assert index.metadata_fields == {"flag": "string"} and index.search("cats", k=1, filter={"flag": "x"})[0] == []
    for bad, error in [({"flag": {"$gt": 1}}, "compares numbers; field 'flag' holds strings"), ({"colour": "x"}, "unknown metadata field 'colour'")]:
        with pytest.raises(QueryError, match=error):  # checked though no row is searched: it would fail once documents come
            index.search("cats", k=1, filter=bad)
    with pytest.raises(CorpusError, match="one field, one type"):
        index.add([{"id": "c", "text": "birds", "metadata": {"flag": 3}}])
    commit = sorted(index.path.glob("commit-*.json"))[-1]
    record = json.loads(commit.read_text())
    commit.write_text(json.dumps({**record, "metadata_fields": ["flag"]}))
    with pytest.raises(IndexFormatError, match="its metadata_fields are no {field: type} mapping; the index is damaged"):
        Index.open(index.path)


@pytest.mark.parametrize("bad, error", [({"year": {"$bogus": 1}}, "unknown operator '\\$bogus'"), ({"$nor": []}, "unknown filter operator"), ({"tags": 3}, "lists of strings")])
def test_a_filter_is_checked_with_no_queries(meta_index, bad, error):
    """search([]) returned no results for any filter: a client's bad filter passed until it sent a query."""
    with pytest.raises(QueryError, match=error):
        meta_index.search([], k=2, filter=bad)


def test_metadata_follows_derive_and_damage_is_refused(meta_index, tmp_path):
    derived = Index.derive(meta_index, tmp_path / "small", cluster_ratio=0.5, show_progress=False)
    assert derived.search("cats", k=2, filter={"source": "news"})[0][0].metadata["source"] == "news"
    writer = MetadataWriter()
    for i in range(3):
        writer.add({"tags": ["a"] * i})
    writer.close(tmp_path)
    assert Metadata(tmp_path, 3).row(2) == {"tags": ["a", "a"]} and Metadata(tmp_path, 3).row(0) == {}
    with pytest.raises(IndexFormatError, match="does not describe"):
        Metadata(tmp_path, 4)
    np.save(tmp_path / "meta_0.npy", np.array([7, 7, 7], dtype=np.int32))  # codes past the vocabulary
    offsets = np.array([0, 0, 1, 3], dtype=np.int64)
    np.save(tmp_path / "meta_0.offsets.npy", offsets)
    with pytest.raises(IndexFormatError, match="outside its vocabulary"):
        Metadata(tmp_path, 3).row(0)
    assert Path(tmp_path / "metadata.json").is_file() and IndexConfig  # the schema stays beside the columns


@pytest.mark.parametrize("factory, filters", [("IVF2,Flat", True), ("HNSW8", True), ("PQ4x2", False)])
def test_filters_on_approximate_fde_indexes(meta_index, tmp_path, factory, filters):
    import shutil

    from mvr.config import FDEConfig

    copy = Index.open(shutil.copytree(meta_index.path, tmp_path / "copy"))
    copy.build_fde(FDEConfig(k_sim=2, d_proj=8, reps=2, factory=factory))
    spec = {"source": "news"}
    if filters:
        found = copy.search("cats", k=3, first_stage="fde", filter=spec, **({"nprobe": 2} if "IVF" in factory else {"ef_search": 16}))
        assert set(found.indices[0][found.indices[0] >= 0]) <= _expected(spec)
    else:  # faiss cannot filter this kind of index: a clear error, not a crash
        with pytest.raises(QueryError, match=r"cannot apply a filter.*exhaustive"):
            copy.search("cats", k=3, first_stage="fde", filter=spec)
