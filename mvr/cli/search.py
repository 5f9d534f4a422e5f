"""``mvr search``: one query, or a file of queries, against an index."""

from __future__ import annotations

import argparse
import json
import sys
import unicodedata
from pathlib import Path

from .common import add_common, add_device, add_search, read_queries, search_options

# Shown escaped in plain output: controls (terminal escape sequences, carriage returns), invisible
# format characters (bidirectional overrides) and line separators; the joiners that emoji and some
# scripts need are kept.
_HIDDEN = {"Cc", "Cf", "Zl", "Zp"}
_JOINERS = {"\u200c", "\u200d"}
LATE_POSITIONAL = "query"  # also taken after options (mvr/cli/__init__.py)


def shown(text: str) -> str:
    """``text`` safe to print to a terminal: each hidden character as its ``\\xNN`` / ``\\uNNNN`` escape."""
    return "".join(c.encode("unicode_escape").decode("ascii") if unicodedata.category(c) in _HIDDEN and c not in _JOINERS else c for c in text)


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("search", help="search an index", description="Search an index with one query or a file of queries.")
    p.add_argument("index", help="index name or path")
    p.add_argument("query", nargs="?", help="the query text (or use --queries)")
    p.add_argument("--queries", type=Path, help="JSONL of {_id|id, text} or TSV of id<TAB>text, one query per line")
    p.add_argument("-k", type=int, default=10, help="results per query (default 10)")
    p.add_argument("--model", default=None, help="query model folder (default: the one the index was built with)")
    add_search(p)
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="JSON output")
    out.add_argument("--trec", action="store_true", help="TREC run output: qid Q0 docid rank score run")
    p.add_argument("--run-name", default=None, help="with --trec: the run's name, its last field (default mvr)")
    served = p.add_mutually_exclusive_group()
    served.add_argument("--server", metavar="URL", help="search through this mvr serve (default: one running on this machine that serves the index, else the index is opened here)")
    served.add_argument("--no-server", action="store_true", help="open the index here even when a running mvr serve holds it warm")
    p.add_argument("--explain", action="store_true", help="show why each hit matched: the document tokens behind the query tokens' maxima, highlighted, with their share of the score")
    add_device(p, "query encoding and exact MaxSim")
    add_common(p)
    return p


def highlighted(text: str, spans, color: bool) -> str:
    """``text`` (escaped as :func:`shown` does) with the character ``spans`` marked: reverse video
    on a terminal, ``[[...]]`` elsewhere."""
    on, off = ("\x1b[1;7m", "\x1b[0m") if color else ("[[", "]]")
    out, at = [], 0
    for start, end in sorted({(s, e) for s, e in spans if e > s}):
        if start < at:
            continue
        out += [shown(text[at:start]), on, shown(text[start:end]), off]
        at = end
    return "".join(out + [shown(text[at:])])


def _explained(hit: dict, color: bool) -> list[str]:
    matches = hit["explanation"]["matches"]
    spans = {field: [m["span"] for m in matches if m["field"] == field] for field in ("title", "text")}
    lines = [f"      {highlighted(hit['title'], spans['title'], color)}"] if hit["title"] else []
    lines.append("      " + highlighted(" ".join(hit["text"].split("\n")), spans["text"], color))
    best = sorted(matches, key=lambda m: -m["share"])[:8]  # a clustered index's rows are no token of the text: the query token's share alone
    lines.append("      matched: " + ", ".join(f"{shown(m['query_token'])}{'->' + shown(m['token']) if m['token'] else ''} {100 * m['share']:.0f}%" for m in best)
                 + ("" if any(m["token"] for m in matches) else " (a clustered index's vectors pool tokens: no document token to show)"))
    return lines


def _through_server(args, texts: list[str]) -> list[list[dict]] | None:
    """The hits from a running ``mvr serve`` that holds this index warm (``--server URL``, or one
    found on this machine), or None: then the index is opened here. A server found by itself is
    used only while it answers as the one that left its note, and anything it refuses (a limit,
    a name it does not serve) is searched here instead, which gives the result or the error."""
    import os

    from ..client import Client, answers_as, find_server
    from ..errors import ConfigError, MvrError
    from ..storage import locate
    from ..storage.names import name_problem

    key = os.environ.get("MVR_API_KEY") or None
    if args.server is not None:  # --server "" is a mistake to report, not a request to look for one
        if args.model:
            raise ConfigError("--model encodes queries here, with another model than the server's: give --server or --model, not both.")
        url, name = args.server, _served_name(args, key)
    elif args.no_server or args.model:
        return None
    else:
        target = locate(args.index, args.index_dir).resolve()
        found = None if name_problem(target.name) else find_server(target, with_key=bool(key))
        if found is None or not answers_as(found[0], found[2], key):  # stopped, hung, or another server on its port
            return None
        url, name = found[:2]
    options = search_options(args)
    hits: list[list[dict]] = []
    try:
        client = Client(url, key)
        for start in range(0, len(texts), 64):  # within the server's batch limit
            hits += client.search(name, texts[start : start + 64], k=args.k, first_stage=args.first_stage, candidates=args.candidates, explain=args.explain or None, **options)
    except MvrError:
        if args.server:
            raise
        return None  # it stopped meanwhile, or refused (past its limits, not our key): search here
    return hits


def _served_name(args, key: str | None) -> str:
    """The name to ask ``--server`` for: the index argument when it is a name; given as a path, its
    folder's name, once the server says it serves that very folder by it."""
    from ..client import Client
    from ..errors import QueryError
    from ..storage import locate
    from ..storage.names import name_problem

    if name_problem(args.index) is None:
        return args.index  # a name: what the server serves by it (./docs, docs/ and ~ are paths)
    folder = locate(args.index, args.index_dir).resolve()
    described = Client(args.server, key).info(folder.name).get("info")
    served = described.get("path") if isinstance(described, dict) else None
    if not isinstance(served, str) or Path(served).resolve() != folder:
        raise QueryError(f"{args.server} serves {folder.name!r} from {served}, not {folder}: give the name alone to search what it serves, or --no-server to search {folder} here.")
    return folder.name


def run(args) -> int:
    from ..errors import QueryError
    from ..index import Index
    from ..results import trec_field, trec_lines

    if (args.query is None) == (args.queries is None):
        raise QueryError("give either a query text or --queries FILE.")
    if args.run_name is not None and not args.trec:
        raise QueryError("--run-name names a TREC run: give --trec with it.")
    if args.explain and args.trec:
        raise QueryError("--explain shows why each hit matched, which a TREC run has no room for: leave out --trec (--json keeps the explanations).")
    run_name = trec_field("mvr" if args.run_name is None else args.run_name, "--run-name", "run name") if args.trec else None
    queries = read_queries(args.queries) if args.queries else [("q1", args.query)]
    texts = [text for _, text in queries]
    answered = _through_server(args, texts)
    if answered is None:
        index = Index.open(args.index, home=args.index_dir, model=args.model, device=args.device)
        results = index.search(texts, k=args.k, first_stage=args.first_stage, candidates=args.candidates, threads=args.threads, explain=args.explain, **search_options(args))
        answered = results.to_dicts()
        cut = [qid for (qid, _), long in zip(queries, results.truncated if results.truncated is not None else ()) if long]
        if cut:  # as mvr index notes documents cut at their length
            print(f"mvr: note: {'query' if not args.queries else f'{len(cut)} of {len(queries)} queries ({shown(cut[0])}' + (', ...)' if len(cut) > 1 else ')')} "
                  f"ran past the index's query length of {index.manifest['encoder']['query_maxlen']} tokens and {'was' if len(cut) == 1 else 'were'} cut there: "
                  "what follows is not searched", file=sys.stderr)
    if args.trec:
        print("\n".join(trec_lines(((qid, [(hit["id"], hit["score"]) for hit in hits]) for (qid, _), hits in zip(queries, answered)), run_name)))
    elif args.json:
        payload = [{"query_id": qid, "query": text, "hits": [{"rank": rank, **hit} for rank, hit in enumerate(hits, start=1)]} for (qid, text), hits in zip(queries, answered)]
        print(json.dumps(payload if args.queries else payload[0], ensure_ascii=False, indent=2))
    else:
        for (qid, text), hits in zip(queries, answered):
            if args.queries:
                print(f"## {shown(qid)}: {shown(text)}")
            print(f"{'rank':>4}  {'score':>8}  {'id':<16}  text")
            for rank, hit in enumerate(hits, start=1):
                snippet = shown(" ".join(f"{hit['title']} {hit['text']}".split()))
                print(f"{rank:>4}  {hit['score']:>8.3f}  {shown(hit['id'])[:16]:<16}  {snippet[:100]}")
                if hit.get("explanation"):
                    print("\n".join(_explained(hit, sys.stdout.isatty())))
    return 0
