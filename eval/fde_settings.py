"""Compare MUVERA FDE settings on one index without rebuilding it: for each setting, the share of
the exhaustive MaxSim top-10 found among the FDE top-N candidates, nDCG@10 after exact MaxSim
rerank of those candidates, the FDE's size per document and its build throughput.

    python -m mvr.eval.fde_settings ../shared/datasets/scifact --index scifact \\
        --setting k_sim=5,d_proj=16,reps=20,fill_empty=1 --setting k_sim=4,d_proj=32,reps=20,fill_empty=0 \\
        --output docs/results/fde-settings-scifact.json

The exhaustive top-10 is computed once (batched); candidates come from exact inner products of
the FDEs (what faiss "Flat" returns). Latency is not measured here: `mvr eval` measures it.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

COUNTS = (50, 100, 200, 500)


def parse_setting(text: str):
    from ..config import FDEConfig

    values = {}
    for part in text.split(","):
        key, _, value = part.partition("=")
        key = key.strip()
        if key == "fill_empty":
            values[key] = value.strip() not in ("0", "false", "False")
        elif value.strip().lower() == "none":
            values[key] = None
        else:
            values[key] = int(value)
    return FDEConfig.from_dict(values)


def compare(dataset: Path, index, settings, counts=COUNTS, split: str = "test") -> dict:
    from ..stages.fde import FDE
    from .beir import evaluate_run, load_beir

    queries, qrels = load_beir(dataset, split)
    qids = list(queries)
    encoded = index.encode_queries([queries[q] for q in qids])
    exhaustive = index.search_encoded(encoded, 10, first_stage="exhaustive").indices
    top10 = [set(row[row >= 0].tolist()) for row in exhaustive]
    rows = []
    for config in settings:
        fde = FDE.draw(config, index.dim)
        started = time.perf_counter()
        documents = fde.encode_documents(index.tokens.float16_bits(), index.doc_offsets)
        build = time.perf_counter() - started
        order = np.argsort(-(fde.encode_queries(encoded.vectors, encoded.offsets) @ documents.T), axis=1, kind="stable")
        row = {"setting": config.to_dict(), "fde_dim": fde.out_dim, "bytes_per_document": fde.out_dim * 4, "build_docs_per_second": round(index.n_docs / build, 1)}
        for count in counts:
            row[f"recall_of_exhaustive_top10@{count}"] = round(float(np.mean([len(t & set(order[i, :count].tolist())) / max(len(t), 1) for i, t in enumerate(top10)])), 4)
            run = {}
            for i, qid in enumerate(qids):
                candidates = order[i, :count].astype(np.int64)
                scores = index.score(encoded[i], candidates)
                best = np.argsort(-scores, kind="stable")[:100]  # ties: the earlier candidate first
                run[qid] = {str(index.doc_ids[candidates[b]]): float(scores[b]) for b in best}
            row[f"nDCG@10@{count}"] = round(evaluate_run(run, qrels)["nDCG@10"], 4)
        rows.append(row)
    exhaustive_run = index.search_encoded(encoded, 100, first_stage="exhaustive").to_run(qids)
    return {
        "dataset": dataset.resolve().name,
        "index": index.name,
        "queries": len(qids),
        "exhaustive_nDCG@10": round(evaluate_run(exhaustive_run, qrels)["nDCG@10"], 4),
        "counts": list(counts),
        "settings": rows,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def render(report: dict, command: str) -> str:
    counts = report["counts"]
    head = "| k_sim | d_proj | reps | fill | d_final | dims | KiB/doc | build docs/s | " + " | ".join(f"top-10 in {c}" for c in counts) + " | " + " | ".join(f"nDCG@10 @{c}" for c in counts) + " |"
    lines = [
        f"### {report['dataset']}: FDE settings ({report['queries']} test queries; exhaustive MaxSim nDCG@10 {report['exhaustive_nDCG@10']:.4f})",
        "",
        f"Made by `{command}`.",
        "",
        head,
        "|" + "---|" * (8 + 2 * len(counts)),
    ]
    for row in report["settings"]:
        s = row["setting"]
        cells = [s["k_sim"], s["d_proj"] or "id", s["reps"], "yes" if s["fill_empty"] else "no", s["d_final"] or "-", row["fde_dim"], f"{row['bytes_per_document'] / 1024:.0f}", f"{row['build_docs_per_second']:.0f}"]
        cells += [f"{row[f'recall_of_exhaustive_top10@{c}']:.3f}" for c in counts] + [f"{row[f'nDCG@10@{c}']:.4f}" for c in counts]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    import shlex
    import sys

    from ..index import Index

    parser = argparse.ArgumentParser(prog="python -m mvr.eval.fde_settings", description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--index", required=True)
    parser.add_argument("--setting", action="append", required=True, type=parse_setting, help="comma list of FDEConfig fields, e.g. k_sim=4,d_proj=32,reps=20,fill_empty=0")
    parser.add_argument("--counts", default=",".join(map(str, COUNTS)))
    parser.add_argument("--output", type=Path, required=True, help="JSON report; a markdown table is written beside it (.md)")
    args = parser.parse_args(argv)
    command = "python -m mvr.eval.fde_settings " + shlex.join(sys.argv[1:] if argv is None else argv)
    report = compare(args.dataset, Index.open(args.index), args.setting, [int(c) for c in args.counts.split(",")])
    report["command"] = command
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    table = render(report, command)
    args.output.with_suffix(".md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
