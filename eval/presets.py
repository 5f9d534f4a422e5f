"""Every preset in one table (issue 16, lever 5): nDCG@10, bytes per token with every component
counted, and search latency, each preset derived from one index built with today's defaults.

    python -m mvr.eval.presets --index-dir indexes --output docs/results/presets.json

For each dataset, the source is the index ``mvr index CORPUS --name DATASET-int8`` builds (the
default settings: int8-encoded documents, float16 vectors, FDE + bm25s). Each preset of
:data:`mvr.config.PRESETS` is derived from it (``mvr index --from DATASET-int8 --preset P``, no
re-encoding) and measured like a user's ``mvr eval DATA --index X`` with no stage option: the
index's default search (for ``best``, its saved fusion preset), beside exhaustive MaxSim over
its stored vectors. Bytes per token: the stored vectors (codes, codebooks, any projection) and
every first stage (FDE, pooled vectors, bm25s, ...) on disk, divided by the corpus's tokens
before pruning and clustering. Latency: search p50 / p95 in ms, one query at a time, query
encoding excluded (the same encoder for every row), all rows in one process.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

DATASETS = ("scifact", "nfcorpus")


def measure(data: Path, index, label: str) -> dict:
    from .beir import evaluate

    report, _ = evaluate(data, index, split="test", compare_exhaustive=True, show_progress=False)
    full, run = report["runs"]
    tokens = sum(s.manifest["counts"]["source_tokens"] for s in index.segments)
    stages = index.stage_bytes()
    vectors = round(index.manifest["bytes_per_token"] * tokens)
    return {
        "preset": label,
        "default_search": run["first_stage"] + (f", fusion {run['options']['fusion']}" if run.get("options", {}).get("fusion") else ""),
        "nDCG@10": run["nDCG@10"],
        "R@100": run["R@100"],
        "exhaustive_nDCG@10": full["nDCG@10"],
        "search_ms_p50": run["search_ms_p50"],
        "search_ms_p95": run["search_ms_p95"],
        "exhaustive_search_ms_p50": full["search_ms_p50"],
        "vectors_per_document": round(index.n_tokens / max(index.n_docs, 1), 2),
        "bytes_per_token": {"vectors": round(vectors / tokens, 1), **{name: round(b / tokens, 1) for name, b in stages.items()},
                            "total": round((vectors + sum(stages.values())) / tokens, 1)},
    }


def run(data: Path, home, presets=None) -> dict:
    from mvr import Index
    from mvr.config import PRESETS

    out = {}
    for name in DATASETS:
        source = Index.open(f"{name}-int8", home=home)
        rows = [measure(data / name, source, "none (default build)")]
        for preset in presets or PRESETS:
            settings = {k: v for k, v in PRESETS[preset].items() if k != "about"}
            work = Path(tempfile.mkdtemp(prefix=f"mvr-preset-{preset}-"))  # derived indexes live here, never beside the user's
            try:
                derived = Index.derive(source, work / "index", show_progress=False, **settings)
                rows.append(measure(data / name, derived, preset))
                del derived
            finally:
                shutil.rmtree(work, ignore_errors=True)
        out[name] = {"source": source.name, "rows": rows}
    return out


def main(argv=None) -> int:
    from .beir import publish_report

    p = argparse.ArgumentParser(prog="python -m mvr.eval.presets", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=Path("../shared/datasets"), help="folder with scifact/ and nfcorpus/ in BEIR layout")
    p.add_argument("--index-dir", default=None, help="where scifact-int8 and nfcorpus-int8 are (mvr index ../shared/datasets/DATASET/corpus.jsonl --name DATASET-int8)")
    p.add_argument("--presets", nargs="+", default=None, help="only these presets (default: every one)")
    p.add_argument("--output", type=Path, default=None)
    args = p.parse_args(argv)
    publish_report(run(args.data, args.index_dir, args.presets), "mvr.eval.presets", argv, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
