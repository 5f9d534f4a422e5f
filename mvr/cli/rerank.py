"""``mvr rerank``: order candidates from elsewhere (a TREC run, or JSONL) by exact MaxSim."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .common import _query_id, add_common, read_queries, warn


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "rerank", help="rerank candidates from a TREC run or JSONL by exact MaxSim",
        description="Rerank candidates by exact MaxSim: the documents of a TREC run (with --queries) by their vectors stored in INDEX, "
        'or JSONL lines {"id": QID, "query": TEXT, "ids": [...]} (stored vectors) or {"id", "query", "documents": [{"id", "text"}, ...]} (encoded here).',
    )
    p.add_argument("index", nargs="?", help="index holding the candidates' vectors (needed for runs and for JSONL with ids)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", type=Path, help="a TREC run: qid Q0 docid rank score tag")
    source.add_argument("--candidates", type=Path, help="JSONL of candidates, one query per line")
    p.add_argument("--queries", type=Path, help="the queries of --run: JSONL {_id, text} or TSV id<TAB>text")
    p.add_argument("-k", type=int, default=None, help="keep the best k of each query (default: all)")
    p.add_argument("--model", default=None, help="model folder for JSONL documents given as text (default: the index's, else the embedded model)")
    p.add_argument("--json", action="store_true", help="JSON output instead of a TREC run")
    p.add_argument("--run-name", default="mvr-rerank")
    add_common(p)
    return p


def read_run(path: Path) -> dict[str, list[str]]:
    """``{query id: [document ids, in the run's rank order]}`` of a TREC run file."""
    from ..results import read_trec

    return {qid: [doc for doc, _, _ in sorted(rows, key=lambda r: r[1])] for qid, rows in read_trec(path).items()}


def _jobs(args, index):
    """``(query id, query, hits)`` for each query to rerank."""
    from ..corpus import read_jsonl_objects
    from ..errors import CorpusError, QueryError
    from ..reranking import rerank

    if args.run is not None:
        if index is None or args.queries is None:
            raise QueryError("--run needs the index holding its documents and --queries with the query texts.")
        texts = dict(read_queries(args.queries))
        for qid, ids in read_run(args.run).items():
            if qid not in texts:
                raise QueryError(f"query {qid!r} of {args.run} is not in {args.queries}.")
            try:
                yield qid, index.rerank(texts[qid], list(dict.fromkeys(ids)), args.k)
            except (QueryError, CorpusError) as error:  # said of this query: a run holds thousands
                raise type(error)(f"{args.run}: query {qid!r}: {error}") from None
        return
    if not args.candidates.is_file():
        raise QueryError(f"candidates file not found: {args.candidates}.")
    encoder = projection = None
    seen: dict[str, int] = {}
    empty: list[str] = []
    for line, obj in read_jsonl_objects(args.candidates, QueryError):
        where = f"{args.candidates}:{line}"
        if "id" not in obj and "_id" not in obj:  # (its line number was taken for it, which another line's id could be)
            raise QueryError(f'{where}: each line needs "id", the query id its lines of the run carry, beside "query".')
        qid, query = _query_id(obj.get("id", obj.get("_id")), where), obj.get("query")
        if qid in seen:  # a run holds one ranking per query
            raise QueryError(f"{where}: the query id {qid!r} is given twice (first on line {seen[qid]}); give each query once, with all its candidates.")
        seen[qid] = line
        if "ids" in obj and "documents" in obj:
            raise QueryError(f'{where}: give either "ids" (documents of the index) or "documents" (texts), not both.')
        try:
            if not obj.get("ids", obj.get("documents", [None])):
                empty.append(qid)
            if "ids" in obj:
                if index is None:
                    raise QueryError('"ids" name documents of an index: give the index (mvr rerank INDEX --candidates FILE).')
                yield qid, index.rerank(query, obj["ids"], args.k)
            elif isinstance(obj.get("documents"), list):
                if encoder is None:
                    from ..encode import Encoder

                    ours = index is not None and args.model is None  # scored in the index's space: its model, its PCA or head
                    encoder, projection = (index.encoder, index.projection) if ours else (Encoder(args.model), None)
                yield qid, rerank(query, obj["documents"], args.k, encoder=encoder, projection=projection)
            else:
                raise QueryError('each line needs "query" and either "ids" or "documents".')
        except (QueryError, CorpusError) as error:  # said of this line
            raise type(error)(f"{where}: {error}") from None
    if not seen:
        raise QueryError(f"{args.candidates} holds no candidate lines.")
    if empty:  # a run holds no line for them: said, not left to be found missing
        warn(f"{len(empty)} of the {len(seen)} queries of {args.candidates} have no candidates (e.g. {empty[0]!r}); the run holds nothing for them.")


def run(args) -> int:
    from ..config import positive_int
    from ..index import Index
    from ..results import trec_field, trec_lines
    from ..threads import cpu_threads
    from .search import shown

    positive_int("--", "threads", args.threads, optional=True)
    run_name = trec_field(args.run_name, "--run-name", "run name")
    index = Index.open(args.index, home=args.index_dir, model=args.model) if args.index else None
    out, lines = [], []
    with cpu_threads(args.threads, "torch", "numba", "blas"):
        for qid, hits in _jobs(args, index):  # every query reranked before anything is printed: an error leaves no half run
            if args.json:
                out.append({"query_id": qid, "hits": [{"rank": h.rank, "id": h.id, "score": h.score, "title": h.title, "text": h.text, "metadata": h.metadata} for h in hits]})
            else:
                lines += trec_lines([(shown(qid), [(shown(h.id), h.score) for h in hits])], run_name)
    if args.json:
        print(json.dumps(out, ensure_ascii=False, indent=2))
    elif lines:
        print("\n".join(lines))
    return 0
