"""Long documents as overlapping passages: the cuts, the build report, search by document or by
passage, and adds, upserts, deletes and merges acting on whole documents."""

import subprocess
import sys

import numpy as np
import pytest

from mvr import ConfigError, CorpusError, Index, IndexConfig
from mvr.passages import windows

INSTALL = "# Installing\n\nRun pip install to get the package. It needs Python 3.10 or newer.\n\n"
FILLER = "# Configuration\n\n" + "The configuration file lists many settings of little interest to most readers. " * 40 + "\n\n"
BACKUPS = "# Backups\n\nSnapshots of the database are written every night to the storage bucket and kept for thirty days.\n"
QUESTION = "how long are the nightly database snapshots kept"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A folder of markdown files, one of them long with the answer in its last section."""
    root = tmp_path_factory.mktemp("md")
    (root / "manual.md").write_text(INSTALL + FILLER + BACKUPS)
    (root / "cats.md").write_text("# Cats\n\nCats purr when they are content, and sleep most of the day.\n")
    (root / "tea.md").write_text("# Tea\n\nGreen tea is rich in antioxidants called catechins.\n")
    return root


def _spans(text):
    spans, at = [], 0
    for word in text.split(" "):
        spans.append((at, at + len(word)))
        at += len(word) + 1
    return np.array(spans)


def test_windows_cover_every_token_overlap_and_start_at_sentences():
    text = " ".join(f"Sentence {i} has exactly six words." if i % 2 else f"word{i} " * 3 + "end." for i in range(40))
    spans = _spans(text)
    for size, stride in ((20, 15), (20, 20), (32, 8), (16, 1)):
        cuts = windows(spans, text, size, stride)
        covered = np.zeros(len(spans), dtype=bool)
        for start, end in cuts:
            assert 0 < end - start <= size
            covered[start:end] = True
        assert covered.all() and cuts[0][0] == 0 and cuts[-1][1] == len(spans)
        assert all(b[0] > a[0] and b[0] <= a[1] for a, b in zip(cuts, cuts[1:]))  # forward, no gap
        if stride >= 12:  # sentences here are 4 or 6 words: one always starts where the cuts look for one
            sentence_starts = {0, len(spans)} | {i for i in range(1, len(spans)) if text[spans[i - 1][1] - 1] == "."}
            assert all(start in sentence_starts and end in sentence_starts for start, end in cuts), cuts
    assert windows(spans[:10], text, 20, 15) == [(0, 10)]


def test_settings_are_checked(tmp_path, default_encoder):
    with pytest.raises(ConfigError, match="passage_tokens must be an integer of at least 16"):
        IndexConfig(passage_tokens=4)
    with pytest.raises(ConfigError, match=r"passage_tokens=100000 \(--passage-tokens\) is more than the 256 tokens"):  # it was cut to that and reported as 100000, stride 75000
        Index.build([("a", "text")], tmp_path / "i", encoder=default_encoder, config=IndexConfig(passage_tokens=100_000))
    with pytest.raises(ConfigError, match=r"passage_stride must be an integer in \[1, passage_tokens=64\]"):
        IndexConfig(passage_tokens=64, passage_stride=65)
    with pytest.raises(ConfigError, match="passage_stride .* needs passage_tokens"):
        IndexConfig(passage_stride=10)
    assert IndexConfig(passage_tokens=64).passage_stride == 48


def test_a_question_about_a_late_section_finds_it_only_with_passages(folder, tmp_path, default_encoder):
    cut = Index.build(folder, tmp_path / "cut", encoder=default_encoder, config=IndexConfig(doc_maxlen=96), show_progress=False)
    split = Index.build(folder, tmp_path / "split", encoder=default_encoder, config=IndexConfig(doc_maxlen=96, passage_tokens=64), show_progress=False)
    assert "Snapshots" not in " ".join(cut.encoder.tokenizer.decode(cut.encoder.tokenize_documents([d.full_text])[0]) for d in cut.documents() if d.id == "manual.md")
    assert cut.search(QUESTION, k=1)[0][0].id != "manual.md" or cut.search(QUESTION, k=1, first_stage="exhaustive")[0][0].score < split.search(QUESTION, k=1)[0][0].score
    for stage in ("exhaustive", None):
        hit = split.search(QUESTION, k=3, first_stage=stage)[0][0]
        assert hit.id == "manual.md" and hit.passage.startswith("manual.md#") and "Snapshots" in hit.text
    counts = split.segments[0].manifest["counts"]
    assert counts["source_documents"] == 3 and counts["split_documents"] == 1 and counts["truncated_documents"] == 0
    assert split.n_docs == len(split.doc_ids) > 3


def test_a_title_longer_than_half_a_passage_leaves_room_for_the_text(tmp_path, default_encoder):
    """Every passage repeats its document's title: one of 400 tokens filled each passage, the
    encoder cut the text off, and a word of the text found nothing. The title is cut to half."""
    docs = [{"id": "long", "title": " ".join(["titleword"] * 400), "text": "The unique zebrafinch opens it. " + " ".join(f"filler{i}" for i in range(300))},
            {"id": "short", "title": "Birds", "text": "Sparrows and robins are small birds."}]
    index = Index.build(docs, tmp_path / "i", encoder=default_encoder, config=IndexConfig(passage_tokens=32, fde=None), show_progress=False)
    assert index.segments[0].manifest["counts"]["truncated_documents"] == 0
    hit = index.search("zebrafinch", k=1, first_stage="exhaustive")[0][0]
    assert hit.id == "long" and "zebrafinch" in hit.text
    assert hit.title == docs[0]["title"]  # only what the encoder reads is cut: the stored title stays whole
    matches = index.search("titleword", k=1, first_stage="exhaustive", explain=True)[0][0].explanation["matches"]
    title = [m for m in matches if m["field"] == "title"]
    assert title and all(hit.title[m["span"][0] : m["span"][1]] in ("title", "word") for m in title)  # its word pieces


def test_search_returns_documents_or_passages(folder, tmp_path, default_encoder):
    index = Index.build(folder, tmp_path / "p", encoder=default_encoder, config=IndexConfig(passage_tokens=32), show_progress=False)
    by_document = index.search([QUESTION, "purring"], k=3)
    for hits in by_document:
        ids = [h.id for h in hits]
        assert sorted(ids) == ["cats.md", "manual.md", "tea.md"] and all(h.passage.startswith(h.id + "#") for h in hits)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    passages = index.search(QUESTION, k=5, group="passages")[0]
    assert all(h.id == h.passage for h in passages) and len({h.id for h in passages}) == 5
    assert passages[0].id == by_document[0][0].passage and passages[0].score == by_document[0][0].score  # a document's score is its best passage's
    run = by_document.to_run(["q1", "q2"])
    assert set(run["q1"]) == {"cats.md", "manual.md", "tea.md"}
    assert by_document.to_dicts()[0][0]["passage"] == by_document[0][0].passage


def test_changes_act_on_whole_documents(folder, tmp_path, default_encoder, capsys):
    index = Index.build(folder, tmp_path / "c", encoder=default_encoder, config=IndexConfig(passage_tokens=32), show_progress=False)
    rows = index.n_docs
    manual = [str(i) for i in index.doc_ids if str(i).startswith("manual.md#")]
    assert len(manual) > 5
    assert "manual.md" in index and "manual.md#1" in index and index.position("manual.md") == index.position("manual.md#0")  # a document id, or a passage's
    with pytest.raises(CorpusError, match="document id 'manual.md' is already in the index"):
        index.add([{"id": "manual.md", "text": "again"}], show_progress=False)
    done = index.upsert([{"id": "manual.md", "text": "A short manual now: backups are kept for a week."}], show_progress=False)
    assert done["added"] == 1 and done["replaced"] == 1 and index.n_docs == rows - len(manual) + 1  # documents, not passages
    hit = index.search(QUESTION, k=1)[0][0]
    assert hit.id == "manual.md" and hit.passage == "manual.md#0" and "a week" in hit.text
    from mvr.passages import passage_rows, rows_of

    asked = ["nope", "manual.md", "cats.md"]  # looked up at once: each id's live passages, across segments, the deleted ones left out
    rows = passage_rows(index._state, asked)
    assert rows == [rows_of(index._state, [doc_id]).tolist() for doc_id in asked] and rows[0] == [] and rows[1] == [index.position("manual.md")]
    index.add([{"id": "long", "text": FILLER + BACKUPS}], show_progress=False)
    index.optimize()
    assert len(index.segments) == 1 and index.search(QUESTION, k=1)[0][0].id in ("long", "manual.md")
    gone = index.delete(["long", "nope"])
    assert gone["deleted"] == 1 and gone["missing"] == ["nope"] and "long" not in index and "long#0" not in index
    assert not any(d.id.startswith("long#") for d in index.documents()) and any(d.id.startswith("manual.md#") for d in index.documents())
    assert all(h.id != "long" for h in index.search(QUESTION, k=3)[0])
    from mvr.cli import main

    assert main(["delete", str(index.path), "manual.md#0"]) == 0 and "manual.md" in index
    assert "an index of passages deletes whole documents, by document id" in capsys.readouterr().err
    assert main(["fde", str(index.path)]) == 0 and f"{index.n_docs} passages x " in capsys.readouterr().out  # its rows, not documents



def test_info_counts_the_live_documents_of_an_index_of_passages(folder, tmp_path, default_encoder):
    """mvr info's only count of documents (not passages) was the first segment's build figure:
    unchanged by deletes and adds, gone after a merge."""
    index = Index.build(folder, tmp_path / "c", encoder=default_encoder, config=IndexConfig(passage_tokens=32), show_progress=False)

    def counts():
        found = index.info()["counts"]
        return found["source_documents"], found["split_documents"]

    assert counts() == (3, 1)
    index.delete(["manual.md"])
    assert counts() == (2, 0)
    index.add([{"id": "long", "text": FILLER + BACKUPS}, {"id": "short", "text": "A line."}], show_progress=False)
    assert counts() == (4, 1)
    index.optimize()
    assert counts() == (4, 1)
    run = subprocess.run([sys.executable, "-m", "mvr.cli", "info", str(index.path)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and "4 documents (1 of them split) stored as passages" in run.stdout, run.stdout + run.stderr


def test_the_build_reports_long_documents(folder, tmp_path):
    common = ["--doc-maxlen", "96", "--index-dir", str(tmp_path), "--quiet"]
    run = subprocess.run([sys.executable, "-m", "mvr.cli", "index", str(folder), "--name", "cut", *common], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert "note: 1 of 3 documents were longer than 96 tokens and were cut there" in run.stdout and "--passage-tokens" in run.stdout
    run = subprocess.run([sys.executable, "-m", "mvr.cli", "index", str(folder), "--name", "split", "--passage-tokens", "64", *common], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert "split 1 of 3 documents longer than 64 tokens (or than fits the model beside the title) into passages (stride 48)" in run.stdout and "were cut" not in run.stdout
    found = subprocess.run([sys.executable, "-m", "mvr.cli", "search", "split", QUESTION, "-k", "1", "--json", "--index-dir", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert '"id": "manual.md"' in found.stdout and '"passage": "manual.md#' in found.stdout


def test_a_document_id_like_a_passage_row_is_the_document(folder, tmp_path, default_encoder):
    """Document "manual.md#1" and passage 1 of "manual.md" share a name: rerank, position and
    membership took the passage; a document's id comes first."""
    index = Index.build(folder, tmp_path / "i", encoder=default_encoder, config=IndexConfig(passage_tokens=32), show_progress=False)
    assert "manual.md#1" in index  # passage 1 of manual.md, while no document has that id
    index.add([{"id": "manual.md#1", "text": "The quick brown fox jumps over the lazy dog."}], show_progress=False)
    hit = index.rerank("quick brown fox", ["manual.md#1"])[0]
    assert hit.id == "manual.md#1" and "fox" in hit.text and hit.passage == "manual.md#1#0"
    assert index.doc_ids[index.position("manual.md#1")] == "manual.md#1#0"
    index.delete(["manual.md#1"])
    assert "manual.md#1" in index and index.doc_ids[index.position("manual.md#1")] == "manual.md#1"  # the passage again
    assert "fox" not in index.rerank("quick brown fox", ["manual.md#1"])[0].text
