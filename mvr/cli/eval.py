"""``mvr eval``: run a BEIR dataset's queries through an index and score them (mvr.eval.beir),
measuring what ``mvr search`` does unless told otherwise."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Sequence

from .common import add_common, add_device, add_search, check_output, search_options, warn, write_output


def _counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or a comma list of numbers, got {text!r}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"candidate counts must be positive, got {text!r}")
    return counts


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("eval", help="evaluate an index on a BEIR dataset", description="Evaluate an index on a BEIR-layout dataset folder.")
    p.add_argument("dataset", type=Path, help="BEIR-layout folder: corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--index", help="index name or path: its search evaluated")
    what.add_argument("--run", type=Path, action="append", metavar="RUN", help="a TREC run file (mvr search --trec, mvr rerank, any system's) scored against the qrels instead; no index; once per run")
    p.add_argument("--split", default="test")
    add_search(p, counts=_counts)
    p.add_argument("--compare-exhaustive", action="store_true", help="also run exhaustive MaxSim in the same process: recall of its top-10 and speed-up")
    p.add_argument("--keep-identical-ids", action="store_true", help="keep retrieved documents whose id equals the query id (BEIR drops them by default)")
    p.add_argument("--depth", type=int, default=None, help="documents retrieved per query (>= 100 for R@100; default 100)")
    p.add_argument("--max-queries", type=int, default=None, help="evaluate only the first N judged queries (quick checks)")
    p.add_argument("--output", type=Path, default=None, help="write the report as JSON here")
    p.add_argument("--run-file", type=Path, default=None, help="write the TREC run here (several runs: one file each, named after the run)")
    p.add_argument("--build", action="store_true", help="build the index (default settings) from the dataset's corpus.jsonl if it does not exist; `mvr index` sets others")
    add_device(p, "query encoding and exact MaxSim")
    add_common(p)
    return p


def run(args) -> int:
    from ..config import IndexConfig
    from ..corpus import read_corpus
    from ..errors import DatasetError, IndexNotFoundError
    from ..eval.beir import MEASURES, evaluate, load_beir
    from ..index import Index
    from ..segment_build import planned_stages

    if args.max_queries is not None and args.max_queries < 1:
        raise DatasetError(f"--max-queries must be >= 1, got {args.max_queries}.")
    if args.run:
        return _score_runs(args)
    show = False if args.quiet else None
    args.depth = 100 if args.depth is None else args.depth
    check_output(args.output, "--output")
    check_output(args.run_file, "--run-file")
    if args.output and args.run_file and Path(args.output).resolve() == Path(args.run_file).resolve():
        raise DatasetError(f"--output and --run-file both name {args.output}: the run would replace the report; give each its own file.")
    if args.depth < 1:
        raise DatasetError(f"--depth must be >= 1, got {args.depth}.")
    # a name builds under --index-dir; a value with a separator is the path it names
    target = Path(args.index) if ("/" in args.index or "\\" in args.index) else args.index
    try:
        index = Index.open(args.index, home=args.index_dir, device=args.device)
    except IndexNotFoundError:
        if not args.build:
            at = f"--path {target}" if isinstance(target, Path) else f"--name {target}"
            raise IndexNotFoundError(f"no index {args.index!r}; build it with `mvr index {args.dataset / 'corpus.jsonl'} {at}` or add --build to this command.") from None
        load_beir(args.dataset, args.split)  # the dataset and the options checked before minutes of encoding, not after
        config, corpus = IndexConfig(threads=args.threads), read_corpus(args.dataset / "corpus.jsonl")  # counted once, for the check and the build
        _check_build(args, planned_stages(config.for_corpus(len(corpus) if hasattr(corpus, "__len__") else 0)))  # a stream is not counted
        index = Index.build(corpus, target, config=config, home=args.index_dir, show_progress=show, command=args.command_line)
        index = Index.open(index.path, device=args.device) if args.device is not None else index
    report, runs = evaluate(
        args.dataset,
        index,
        split=args.split,
        first_stage=args.first_stage,
        candidates=args.candidates,
        compare_exhaustive=args.compare_exhaustive,
        depth=args.depth,
        threads=args.threads,
        max_queries=args.max_queries,
        show_progress=show,
        options=search_options(args),
        ignore_identical_ids=not args.keep_identical_ids,
    )
    report["command"] = getattr(args, "command_line", None)
    warn(*report.get("warnings", ()))
    print(
        f"{report['dataset']} / {report['split']}: {report['queries']} queries, index {report['index']}; "
        f"query encoding {report['encode_ms_p50']} ms p50, {report['encode_ms_p95']} ms p95"
    )
    if report.get("preset"):  # its options are the runs' ("options" in the report): the same first stage scores otherwise without it
        print(f"  the index's search preset {report['preset']!r}: " + ", ".join(f"{k}={v}" for k, v in report["runs"][-1].get("options", {}).items()))
    columns = ("first_stage", "candidates", *MEASURES, "search_ms_p50", "search_ms_p95")
    columns += tuple(c for c in ("recall_of_exhaustive_top10", "speedup_vs_exhaustive") if any(c in row for row in report["runs"]))  # --compare-exhaustive's
    print("  " + "  ".join(f"{c:>12}" for c in columns))
    for row in report["runs"]:
        print("  " + "  ".join(f"{'-' if row.get(c) is None else str(row[c]):>12}" for c in columns))  # exhaustive: no candidates
    if args.output:
        write_output(args.output, json.dumps(report, indent=2) + "\n", "--output")
    if args.run_file:
        for label, path in run_files(args.run_file, list(runs)).items():
            write_output(path, run_text(runs[label], label), "--run-file")
    return 0


def _score_runs(args) -> int:
    """mvr eval DATASET --run RUN...: each run's measures on the split's judged queries (a query
    the run leaves out counts as zero). A query's documents are ranked by score, ties by the
    file's ranks (then its order), and given scores that fall with rank, so that every measure
    reads that one ranking (ir-measures' measures break ties otherwise, and not all alike)."""
    from ..errors import DatasetError
    from ..eval.beir import MEASURES, drop_identical_ids, evaluate_run, load_beir
    from ..results import falling, read_trec

    searching = [name for name, given in (("--build", args.build), ("--compare-exhaustive", args.compare_exhaustive), ("--run-file", args.run_file),
                                          ("--first-stage", args.first_stage), ("--candidates", args.candidates), ("--device", args.device),
                                          ("--depth", args.depth is not None)) if given]
    searching += [f"--{name.replace('_', '-')}" for name in search_options(args)]
    if searching:
        raise DatasetError(f"{', '.join(searching)} {'is' if len(searching) == 1 else 'are'} for searching an index; --run scores runs as they are: leave {'it' if len(searching) == 1 else 'them'} out.")
    check_output(args.output, "--output")
    queries, qrels = load_beir(args.dataset, args.split)
    kept = set(list(queries)[: args.max_queries]) if args.max_queries is not None else set(qrels)  # the queries --index would run
    qrels = {qid: judged for qid, judged in qrels.items() if qid in kept}
    rows = []
    for path in args.run:
        run: dict[str, dict[str, float]] = {}
        twice = 0
        for qid, lines in read_trec(path).items():
            ranked = sorted(range(len(lines)), key=lambda i: (-lines[i][2], lines[i][1], i))
            best: dict[str, float] = {}
            for i in ranked:  # a document listed twice keeps its better line
                best.setdefault(lines[i][0], lines[i][2])
            twice += len(lines) - len(best)
            run[qid] = dict(zip(best, falling(best.values())))
        if twice:
            warn(f"{path} lists {twice} document(s) twice for a query: each is ranked where it stands first.")
        judged = sum(qid in qrels for qid in run)
        if not judged:
            raise DatasetError(f"none of the {len(run)} queries of {path} is judged in {args.dataset}'s split {args.split!r}"
                               f"{' among the first --max-queries' if args.max_queries is not None else ''} (its query ids: {', '.join(list(run)[:3])}, ...): is it a run of this dataset and split?")
        if judged < len(run):
            warn(f"{len(run) - judged} of the {len(run)} queries of {path} are not judged in split {args.split!r}{' or left out by --max-queries' if args.max_queries is not None else ''}: left out.")
        run = run if args.keep_identical_ids else drop_identical_ids(run)
        rows.append({"run": str(path), "queries": judged, **{m: round(v, 4) for m, v in evaluate_run(run, qrels).items()}})
    print(f"{args.dataset} / {args.split}: {len(qrels)} judged queries (one a run leaves out counts as zero)")
    width = max(len(row["run"]) for row in rows)
    print("  " + f"{'run':<{width}}" + "".join(f"  {c:>9}" for c in ("queries", *MEASURES)))
    for row in rows:
        print("  " + f"{row['run']:<{width}}" + "".join(f"  {row[c]!s:>9}" for c in ("queries", *MEASURES)))
    if args.output:
        report = {"dataset": str(args.dataset), "split": args.split, "queries": len(qrels), "measures": list(MEASURES), "runs": rows,
                  "ignore_identical_ids": not args.keep_identical_ids, "command": getattr(args, "command_line", None)}
        write_output(args.output, json.dumps(report, indent=2) + "\n", "--output")
    return 0


def _check_build(args, planned: dict) -> None:
    """The search asked of an index --build makes (its default stages: ``planned``) checked before
    the corpus is encoded: a stage it will not have, or options that stage refuses."""
    from ..errors import DatasetError
    from ..registry import DEFAULT_STAGES, EXHAUSTIVE, parse_stage
    from ..search import SearchOptions

    stage = args.first_stage or next((s for s in DEFAULT_STAGES if set(parse_stage(s)) <= planned.keys()), EXHAUSTIVE)
    missing = [part for part in parse_stage(stage) if part not in planned]
    if missing:
        raise DatasetError(f"--build makes an index with the default first stages ({', '.join(planned) or 'none'}), without {', '.join(missing)}: "
                           f"build it with `mvr index` and the options that make {'it' if len(missing) == 1 else 'them'}, then evaluate it.")
    SearchOptions(first_stage=stage, **{k: v for k, v in search_options(args).items() if k != "preset"})


def run_files(path: Path, labels: Sequence[str]) -> dict[str, Path]:
    """Where each run goes: ``path`` itself for one run, else one file per run beside it
    (``run.trec`` -> ``run.fde+bm25s@25.trec``, ...)."""
    path = Path(path)
    if len(labels) == 1:
        return {labels[0]: path}
    return {label: path.with_name(f"{path.stem}.{label}{path.suffix}") for label in labels}


def run_text(run: dict[str, dict[str, float]], name: str) -> str:
    """A TREC run: ``qid Q0 docid rank score name`` lines, best first per query."""
    from ..results import trec_lines

    return "".join(line + "\n" for line in trec_lines(((qid, sorted(docs.items(), key=lambda x: -x[1])) for qid, docs in run.items()), name))
