"""A BEIR folder read and checked for evaluation: its judged queries and qrels (:func:`load_beir`),
and what an index lacks of them (:func:`relevance_warnings`)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import DatasetError, shown


def load_beir(folder: str | os.PathLike, split: str = "test") -> tuple[dict[str, str], dict[str, dict[str, int]]]:
    """Queries (id -> text, only those judged in ``split``) and qrels (qid -> doc id -> relevance)."""
    from ..corpus import read_jsonl_objects, text_lines

    folder = Path(folder)
    if not isinstance(split, str) or not split or split.startswith(".") or len(split) > 200 or any(c in split for c in "/\\\0"):
        raise DatasetError(f"the split {split!r} is no plain name: give the name of a file qrels/SPLIT.tsv of the dataset (test, dev, train).")
    queries_file, qrels_file = folder / "queries.jsonl", folder / "qrels" / f"{split}.tsv"
    if not queries_file.is_file():
        raise DatasetError(f"{folder} {'has no queries.jsonl' if folder.is_dir() else 'is no folder'}: expected a BEIR folder (corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv).")
    if qrels_file.exists() and not qrels_file.is_file():
        raise DatasetError(f"{qrels_file} is not a file: the qrels of split {split!r} are a file query-id<TAB>corpus-id<TAB>score.")
    if not qrels_file.is_file():
        splits = sorted(p.stem for p in (folder / "qrels").glob("*.tsv")) if (folder / "qrels").is_dir() else []
        raise DatasetError(f"{folder} has no qrels for split {split!r}; available splits: {', '.join(splits) or 'none'}.")
    qrels: dict[str, dict[str, int]] = {}
    judged_at: dict[tuple[str, str], int] = {}
    for line_number, line in text_lines(qrels_file, DatasetError):
        parts = line.rstrip("\r\n").split("\t")
        if (line_number == 1 and parts[0] == "query-id") or not line.strip():
            continue
        graded = len(parts) == 3 and re.fullmatch(r"\s*[+-]?[0-9]+\s*", parts[2])  # int() takes "1_0" and other scripts' digits too
        if line_number == 1 and len(parts) == 3 and not graded:  # another header ("qid docid rel")
            raise DatasetError(f"{qrels_file}:1: {shown(line.strip())} is no judgement and no BEIR header; the header is query-id<TAB>corpus-id<TAB>score (or none).")
        if len(parts) != 3:
            raise DatasetError(f"{qrels_file}:{line_number}: expected query-id<TAB>corpus-id<TAB>score.")
        if not graded:
            raise DatasetError(f"{qrels_file}:{line_number}: score {shown(parts[2])} is not an integer; the score must be an integer relevance grade (0: not relevant, 1 or more: relevant).")
        grade = int(parts[2])
        if not -(2**31) <= grade < 2**31:  # what trec_eval (through ir-measures) holds
            raise DatasetError(f"{qrels_file}:{line_number}: score {shown(parts[2])} is out of range; a relevance grade is a small integer (0: not relevant, 1 or more: relevant).")
        qid, doc = parts[0], parts[1]
        for what, value in (("query", qid), ("document", doc)):
            if not value or any(c.isspace() for c in value):  # a document id with a space is no corpus id: its relevant document never found, unsaid
                raise DatasetError(f"{qrels_file}:{line_number}: {what} id {shown(value)} is empty or holds whitespace, which a TREC run cannot hold; give each {what} a plain id.")
        if qrels.get(qid, {}).get(doc, grade) != grade:
            raise DatasetError(f"{qrels_file}:{line_number}: query {shown(qid)} judges document {shown(doc)} {grade}, and {qrels[qid][doc]} on line {judged_at[qid, doc]}; keep one grade per pair.")
        qrels.setdefault(qid, {})[doc] = grade
        judged_at.setdefault((qid, doc), line_number)
    if not qrels:
        raise DatasetError(f"{qrels_file} judges no query: expected lines query-id<TAB>corpus-id<TAB>score after its header.")
    if not any(grade > 0 for judged in qrels.values() for grade in judged.values()):  # every measure would be 0, reported as a result
        raise DatasetError(f"{qrels_file} judges no document relevant (every score is 0 or below); the score is the relevance grade: 1 or more for relevant.")
    queries, lines = {}, {}
    for line_number, obj in read_jsonl_objects(queries_file, DatasetError):
        qid = obj.get("_id", obj.get("id"))
        if "_id" in obj and "id" in obj and obj["_id"] != obj["id"]:  # which one the qrels mean cannot be told
            raise DatasetError(f'{queries_file}:{line_number}: the line gives "_id" {shown(obj["_id"])} and "id" {shown(obj["id"])}; keep one.')
        qid = str(qid) if qid is not None else None  # "_id": null is no id "None"
        if qid in lines:  # the later text would silently replace the earlier one
            raise DatasetError(f"{queries_file}:{line_number}: the judged query {shown(qid)} is given twice (first on line {lines[qid]}); give each query id once.")
        if qid in qrels:
            queries[qid] = _query_text(obj, f"{queries_file}:{line_number}: query {shown(qid)}")
            lines[qid] = line_number
    missing = sorted(set(qrels) - set(queries))
    if missing:
        raise DatasetError(f"{queries_file} lacks {len(missing)} judged queries of split {split!r} (e.g. {missing[0]!r}).")
    return queries, qrels


def _query_text(obj: dict, where: str) -> str:
    """A judged query's text, checked here so that a bad one is named by its line and id."""
    from ..corpus import blank
    from ..errors import is_utf8

    text, fix = obj.get("text"), 'give each judged query a non-empty "text" string.'
    if "text" not in obj:
        raise DatasetError(f'{where} has no "text"; {fix}')
    if not isinstance(text, str):
        raise DatasetError(f'{where} has "text": {shown(text)}, not a string; {fix}')
    if blank(text):
        raise DatasetError(f'{where} has an empty "text"{"" if not text.strip() else " (invisible characters alone)"}; {fix}')
    if not is_utf8(text):
        raise DatasetError(f'{where} has a lone surrogate in its "text" (a \\ud800-\\udfff escape with no pair), which no model reads; fix the file\'s encoding.')
    return text


def relevance_warnings(index, qrels: dict[str, dict[str, int]], *, filter=None, identical: str | None = None) -> list[str]:
    """What makes scores of ``index`` on ``qrels`` lower than the dataset's, said: queries that judge
    no document relevant (0 in every mean, as in trec_eval), and judged relevant documents absent
    from the index (one id lookup: an index of part of a corpus told from a weak one), with the
    queries left with none of theirs, which nothing can find; those a metadata ``filter`` leaves
    out; and (``identical``: what leaves them out, and how to keep them) those whose id is their
    query's, which runs that drop identical ids never hold."""
    from ..passages import row_id

    relevant = {q: [d for d, grade in judged.items() if grade > 0] for q, judged in qrels.items()}
    ids = sorted({d for docs in relevant.values() for d in docs})
    state = index._state
    found = state.positions([row_id(d, 0) for d in ids] if index.config.passage_tokens else ids) if ids else []
    present = {d: int(position) for d, position in zip(ids, found) if position >= 0}
    unjudged, hopeless = sum(not docs for docs in relevant.values()), sum(bool(docs) and present.keys().isdisjoint(docs) for docs in relevant.values())
    warnings = [f"{unjudged} of the {len(qrels)} queries judge no document relevant: each counts as 0 in every mean, as in trec_eval."] if unjudged else []
    if len(present) < len(ids):
        warnings.append(f"{len(ids) - len(present)} of the {len(ids)} judged relevant documents of these {len(qrels)} queries are not in index {index.name!r} "
                        f"(queries left with none of theirs: {hopeless}), so its scores are lower than the dataset's (an index of part of the corpus, or "
                        "judgements of documents the corpus lacks); index the whole corpus.jsonl to compare them with published figures.")
    if filter is not None and present:
        masks = [segment.metadata.mask(filter) for segment in state.segments]
        segments = state.segment_of(list(present.values()))
        kept = {d for (d, p), s in zip(present.items(), segments) if masks[s][p - state.bases[s]]}
        if len(kept) < len(present):
            left = sum(bool(set(docs) & present.keys()) and kept.isdisjoint(docs) for docs in relevant.values())
            warnings.append(f"the filter leaves out {len(present) - len(kept)} of the {len(present)} judged relevant documents in the index (queries left with "
                            f"none of theirs: {left}): the figures are the filtered search's, lower than the whole index's.")
    same = sum(q in docs for q, docs in relevant.items())
    if identical and same:
        warnings.append(f"{same} of the {len(qrels)} queries judge relevant a document with the query's own id, which {identical}.")
    return warnings
