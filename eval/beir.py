"""BEIR evaluation: run a dataset's queries through an index and score the run with ir-measures.

    mvr eval ../shared/datasets/scifact --index scifact --output docs/results/scifact.json

Quality: nDCG@10, R@100 and RR@10 (ir-measures' names). Cost, per query and measured one query
at a time as a caller would see it: query encoding and search separately (p50 / p95 in ms), plus
the index's build time, docs/s and bytes per token from its manifest. The JSON it writes keeps
the command line that produced it, so every table row can be rerun.
"""

from __future__ import annotations

import json
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import DatasetError, QueryError, missing_extra
from .dataset import load_beir, relevance_warnings  # noqa: F401  (read a BEIR folder; what an index lacks of it)

MEASURES = ("nDCG@10", "R@100", "RR@10")


def _ir_measures():
    try:
        import ir_measures
    except ImportError as error:
        raise missing_extra("evaluation", "eval", error) from None
    return ir_measures


def evaluate_run(run: dict[str, dict[str, float]], qrels: dict[str, dict[str, int]], measures=MEASURES) -> dict[str, float]:
    """Aggregate ir-measures scores of a run; queries absent from the run count as zero."""
    ir_measures = _ir_measures()

    if not qrels:  # a mean over no query
        raise DatasetError("the qrels judge no query: evaluate a run against the judgements of at least one.")
    try:
        parsed = [ir_measures.parse_measure(m) for m in measures]
    except Exception as error:  # a NameError or ValueError of ir-measures' parser
        raise DatasetError(f"unknown measure among {list(measures)!r} ({error}); give ir-measures names such as nDCG@10, R@100, RR@10.") from None
    qrel_rows = [ir_measures.Qrel(q, d, rel) for q, docs in qrels.items() for d, rel in docs.items()]
    run_rows = [ir_measures.ScoredDoc(q, d, float(s)) for q, docs in run.items() for d, s in docs.items()]
    totals = {m: 0.0 for m in parsed}
    for metric in ir_measures.iter_calc(parsed, qrel_rows, run_rows):
        totals[metric.measure] += metric.value
    return {str(m): totals[m] / len(qrels) for m in parsed}


def _percentiles(values_ms: list[float]) -> dict[str, float]:
    values = np.asarray(values_ms, dtype=np.float64)
    return {"p50": round(float(np.percentile(values, 50)), 3), "p95": round(float(np.percentile(values, 95)), 3), "mean": round(float(values.mean()), 3)}


def _encode_timed(index, queries: dict[str, str], threads: int | None) -> tuple[dict, list[float]]:
    """Encode each query alone, as a caller would, timing each."""
    encoded, times = {}, []
    for qid, text in queries.items():
        t0 = time.perf_counter()
        encoded[qid] = index.encode_queries(text, threads=threads)
        times.append((time.perf_counter() - t0) * 1e3)
    return encoded, times


def _documents(index, positions) -> set[str]:
    """The documents at ``positions`` (-1 skipped): in an index of passages, the documents the
    passages belong to, so a document found through another of its passages counts as found."""
    from ..passages import document_id

    ids = index.doc_ids
    names = [str(ids[p]) for p in positions if p >= 0]
    return {document_id(n) for n in names} if index.config.passage_tokens else set(names)


def drop_identical_ids(run: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """The run without any document whose id is its query's id: BEIR's
    ``EvaluateRetrieval.evaluate(ignore_identical_ids=True)``, its default (ArguAna and Quora
    hold each query as a document too)."""
    return {qid: {doc: score for doc, score in docs.items() if doc != qid} for qid, docs in run.items()}


def _search_timed(index, encoded: dict, texts: dict, first_stage: str, candidates: int | None, depth: int, options: dict, show_progress) -> tuple[dict, dict, dict]:
    """Search each encoded query alone; returns (run, positions of the top documents, latencies)."""
    from ..progress import progress

    run, tops, search_ms, first_ms, rerank_ms = {}, {}, [], [], []
    bar = progress(total=len(encoded), desc=f"queries ({first_stage}{'' if candidates is None else f', {candidates}'})", unit="q", show=show_progress)
    for qid, vectors in encoded.items():
        t0 = time.perf_counter()
        results = index.search_encoded(vectors, depth, texts=[texts[qid]], first_stage=first_stage, candidates=candidates, **options)
        search_ms.append((time.perf_counter() - t0) * 1e3)
        first_ms.append(results.timings["first_stage"])
        rerank_ms.append(results.timings["rerank"])
        tops[qid] = results.indices[0][results.indices[0] >= 0]
        run.update(results.to_run([qid]))
        bar.update(1)
    bar.close()
    latency = {"search": search_ms, "first_stage": first_ms, "rerank": rerank_ms}
    return run, tops, latency


def evaluate(
    dataset: str | os.PathLike,
    index,
    *,
    split: str = "test",
    first_stage: str | None = None,
    candidates: Sequence[int] | int | None = None,
    compare_exhaustive: bool = False,
    depth: int = 100,
    threads: int | None = None,
    max_queries: int | None = None,
    show_progress=None,
    options: dict | None = None,
    ignore_identical_ids: bool = True,
) -> tuple[dict, dict[str, dict[str, dict[str, float]]]]:
    """Evaluate an open :class:`mvr.Index` on a BEIR folder.

    ``first_stage``: None measures what ``Index.search`` does with no stage named (the index's
    default search preset, else its default stage). One run per candidate count, or one
    exhaustive run; with ``compare_exhaustive`` an exhaustive run comes first in the same
    process, and each other run also reports the share of the exhaustive top-10 found among its
    candidates and its speed-up. ``options``: further
    :class:`mvr.SearchOptions` (rerank, prune_alpha, early_exit, fusion, filter, prf, ...) for
    the runs asked for (the reference run of ``compare_exhaustive`` is plain exhaustive MaxSim, over
    the documents a ``filter`` keeps).
    ``ignore_identical_ids``: drop a retrieved document whose id is the query's, as
    BEIR does by default. Judged relevant documents absent from the index (an index of part of
    the corpus) are counted in the report's ``warnings``. Returns (report, {run label: run}).
    """
    from ..config import default_candidates
    from ..search_presets import resolve
    from ..threads import cpu_threads

    _ir_measures()  # a missing extra is said before any query runs
    # the index's default search preset (or the one options name) applies as in Index.search
    first_stage, candidates, options, preset = resolve(index.search_presets, first_stage, candidates, options or {})
    if options.get("group") == "passages":  # the run would hold passage ids, which no qrels judge: every figure 0
        raise QueryError("the qrels judge documents, so an evaluation ranks documents: leave out --group passages (an index of passages is evaluated by each document's best passage).")
    first_stage = first_stage or index.default_stage
    if compare_exhaustive and first_stage == "exhaustive":  # it would compare exhaustive MaxSim with itself: a flag taken and never read
        raise DatasetError("--compare-exhaustive compares a first stage with exhaustive MaxSim; the search evaluated is exhaustive already: leave it out.")

    if max_queries is not None and (isinstance(max_queries, bool) or not isinstance(max_queries, int) or max_queries < 1):
        raise DatasetError(f"max_queries must be a positive integer (None: every judged query), got {max_queries!r}.")
    queries, qrels = load_beir(dataset, split)
    if max_queries:
        keep = list(queries)[:max_queries]
        queries, qrels = {q: queries[q] for q in keep}, {q: qrels[q] for q in keep}
    counts = [candidates] if isinstance(candidates, int) or candidates is None else list(dict.fromkeys(candidates))  # one run of each
    plan = [("exhaustive", None)] if first_stage == "exhaustive" or compare_exhaustive else []
    if first_stage != "exhaustive":
        plan += [(first_stage, max(default_candidates(first_stage), depth) if c is None else c) for c in counts]  # what Index.search takes for k=depth
    elif any(c is not None for c in counts):
        raise DatasetError("--candidates applies to first stages that select candidates, not to exhaustive.")
    # The options are the run's own when exhaustive is the run asked for (a filter, prf); the
    # reference run of compare_exhaustive is plain exhaustive MaxSim, over what a filter keeps.
    own = {stage: options if stage == first_stage or stage != "exhaustive" else {k: v for k, v in options.items() if k == "filter"} for stage, _ in plan}
    with cpu_threads(threads, "numba", "faiss"):
        # Warm-up: model load and JIT compilation are one-off costs, not per-query latency.
        first = next(iter(queries.values()))
        warm = index.encode_queries(first)
        for stage, count in plan:
            index.search_encoded(warm, depth, texts=[first], first_stage=stage, candidates=count, **own[stage])
        encoded, encode_ms = _encode_timed(index, queries, threads)
        runs, rows, exhaustive_top, exhaustive_p50 = {}, [], None, None
        for stage, count in plan:
            stage_options = own[stage]
            run, tops, latency = _search_timed(index, encoded, queries, stage, count, depth, stage_options, show_progress)
            if ignore_identical_ids:
                run = drop_identical_ids(run)
            label = stage if count is None else f"{stage}@{count}"
            runs[label] = run
            row = {"first_stage": stage, "candidates": count, **{m: round(v, 4) for m, v in evaluate_run(run, qrels).items()}}
            if stage_options:
                row["options"] = dict(stage_options)
            latency["total"] = [e + s for e, s in zip(encode_ms, latency["search"])]  # encoding + search, per query
            latency = {part: _percentiles(values) for part, values in latency.items()}
            for part, values in latency.items():
                row[f"{part}_ms_p50"], row[f"{part}_ms_p95"] = values["p50"], values["p95"]
            if stage == "exhaustive":
                exhaustive_top = {q: _documents(index, t[:10]) for q, t in tops.items()}
                exhaustive_p50 = latency["search"]["p50"]
            elif exhaustive_top is not None:
                # the candidates alone, found as the timed run found them
                pool = {"first_stage": stage, "candidates": min(count, index.n_docs), "rerank": False}
                pool.update({k: stage_options[k] for k in ("dense_share", "nprobe", "ef_search", "centroid_probe", "filter") if k in stage_options})
                found = [
                    len(exhaustive_top[q] & _documents(index, index.search_encoded(v, pool["candidates"], texts=[queries[q]], **pool).indices[0])) / max(len(exhaustive_top[q]), 1)
                    for q, v in encoded.items()
                ]
                row["recall_of_exhaustive_top10"] = round(float(np.mean(found)), 4)
                row["speedup_vs_exhaustive"] = round(exhaustive_p50 / max(latency["search"]["p50"], 1e-9), 1)
            rows.append(row)
    # The first run of the first stage asked for also stands at the top level of the report.
    primary = rows[1] if compare_exhaustive and first_stage != "exhaustive" else rows[0]
    report = _report(dataset, split, index, queries, depth, encode_ms, rows, primary)
    report["ignore_identical_ids"] = ignore_identical_ids
    identical = "the runs leave out, as BEIR does (ArguAna and Quora hold each query as a document too): --keep-identical-ids keeps them" if ignore_identical_ids else None
    warnings = relevance_warnings(index, qrels, filter=options.get("filter"), identical=identical) + _short_runs({label: min(depth, count or depth) for label, (_, count) in zip(runs, plan)})
    if warnings:
        report["warnings"] = warnings
    if preset:
        report["preset"] = preset
    return report, runs


def _short_runs(lengths: dict[str, int]) -> list[str]:
    """The warning for runs of fewer than 100 documents a query (``lengths``: per run label), whose
    R@100 is recall at that many (and nDCG@10, RR@10 cut too under 10); none when all reach 100."""
    short = {label: n for label, n in lengths.items() if n < 100}
    if not short:
        return []
    if len(short) == len(lengths) and len(set(short.values())) == 1:
        (n,) = set(short.values())
        return [f"the runs hold at most {n} documents a query, so R@100 is recall at {n}{f'; nDCG@10 and RR@10 are cut at {n} too' if n < 10 else ''}."]
    cut = "; nDCG@10 and RR@10 are cut too where under 10" if min(short.values()) < 10 else ""
    return [f"runs of fewer than 100 documents a query have R@100 as recall at that many ({', '.join(f'{label}: {n}' for label, n in short.items())}){cut}."]


def package_versions() -> dict[str, str]:
    """Versions of the packages a figure can depend on (numerics of encoding, scoring, evaluation)."""
    from importlib import metadata

    names = ("mvr", "torch", "transformers", "onnxruntime", "numpy", "numba", "faiss-cpu", "bm25s", "pyserini", "ir-measures", "pytrec-eval-terrier")
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _report(dataset, split, index, queries, depth, encode_ms, rows, primary) -> dict:
    import numba
    import torch

    info = index.info()
    encode = _percentiles(encode_ms)
    return {
        "dataset": Path(dataset).resolve().name,
        "split": split,
        "queries": len(queries),
        "index": index.name,
        "depth": depth,
        **primary,
        "encode_ms_p50": encode["p50"],
        "encode_ms_p95": encode["p95"],
        "index_command": info["build"].get("command"),
        "index_build_seconds": info["build"].get("seconds"),  # none once every document was deleted (no segment left)
        "index_docs_per_second": info["build"].get("docs_per_second"),
        "index_bytes_per_token": info["bytes_per_token"],
        "index_documents": info["documents"],
        "index_tokens": info["tokens"],
        "dim": info["dim"],
        "fde": info.get("fde"),
        "settings": {
            "encoder": {k: info["encoder"][k] for k in ("name", "kind", "dim", "query_maxlen", "doc_maxlen", "weights_sha256")},
            "config": info["config"],
            "numba_threads": numba.get_num_threads(),
            "torch_threads": torch.get_num_threads(),
            "packages": package_versions(),
        },
        "machine": {"processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "runs": rows,
    }


def save_report(report: dict, output: Path, markdown: Path | None = None, render=None) -> None:
    """A study's ``report`` as JSON at ``output`` (folders made), and ``render(report)`` at ``markdown``."""
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    if markdown:
        markdown.write_text(render(report))


def publish_report(report: dict, program: str, argv: Sequence[str] | None, output: Path | None) -> None:
    """A study's ``report`` with the ``command`` that made it (``program`` and its arguments:
    ``argv``, else the process's), saved at ``output`` when given (:func:`save_report`) and printed."""
    import sys

    report["command"] = f"python -m {program} " + " ".join(sys.argv[1:] if argv is None else argv)
    if output:
        save_report(report, output)
    print(json.dumps(report, indent=2))
