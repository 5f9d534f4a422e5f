"""Pruning, clustering and codecs measured on one full float16 index, without encoding again.

For each setting, an index is derived from the full one (``Index.derive`` = ``mvr index --from``)
and measured: vectors per document, bytes per original document token (everything search
reads to score: codes, codebooks, offsets), nDCG@10 with exhaustive MaxSim and with the default
two-stage search (FDE + bm25s candidates, exact MaxSim rerank), and the derive time.

    python -m mvr.eval.compression ../shared/datasets/scifact --index scifact \\
        --setting full --setting prune=special+punctuation --setting cluster_ratio=0.25,codec=residual,codec_bits=2 \\
        --output docs/results/compression-scifact.json
    python -m mvr.eval.compression plot docs/results/compression-*.json --output docs/compression.png
    (several studies of one dataset are drawn on one panel)

A setting is ``key=value`` pairs of IndexConfig fields separated by commas (lists joined by
``+``); ``full`` is the source itself. Derived indexes go next to the source as
``<index>-<label>`` and are removed afterwards unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

INT_FIELDS = {"cluster_count", "cluster_iters", "codec_bits", "codec_centroids", "codec_sample"}
FLOAT_FIELDS = {"cluster_ratio", "prune_max_df", "cluster_idf_weight"}
LIST_FIELDS = {"prune", "cluster_keep"}


def parse_setting(text: str) -> dict:
    """``"prune=special+punctuation,cluster_ratio=0.25"`` -> IndexConfig field changes."""
    if text == "full":
        return {}
    changes = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep:
            raise SystemExit(f"setting {text!r}: expected key=value pairs, got {part!r}")
        if key in LIST_FIELDS:
            changes[key] = tuple(v for v in value.split("+") if v and v != "none")
        elif key in INT_FIELDS:
            changes[key] = int(value)
        elif key in FLOAT_FIELDS:
            changes[key] = float(value)
        else:
            changes[key] = value
    return changes


def _label(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "._" else "-" for ch in text)


def measure(dataset: Path, index, settings: list[str], split: str = "test", keep: bool = False, candidates: int | None = None) -> dict:
    from ..index import Index
    from .beir import evaluate_run, load_beir

    queries, qrels = load_beir(dataset, split)
    qids = list(queries)
    texts = [queries[q] for q in qids]
    encoded = index.encode_queries(texts)
    rows = []
    for text in settings:
        changes = parse_setting(text)
        started = time.perf_counter()
        target = index.path.parent / f"{index.name}-{_label(text)}"
        derived = index if not changes else Index.derive(index, target, overwrite=True, show_progress=False, **changes)
        derive_seconds = time.perf_counter() - started
        info = derived.info()
        row = {
            "setting": text,
            "changes": {k: list(v) if isinstance(v, tuple) else v for k, v in changes.items()},
            "vectors_per_document": info["vectors_per_document"]["mean"],
            "source_tokens_per_document": info["source_tokens_per_document"],
            "vector_ratio": round(info["source_tokens_per_document"] / max(info["vectors_per_document"]["mean"], 1e-9), 2),
            "bytes_per_token": info["bytes_per_token"],
            "derive_seconds": round(derive_seconds, 1),
        }
        t0 = time.perf_counter()
        exhaustive = derived.search_encoded(encoded, 100, first_stage="exhaustive")
        row["exhaustive_seconds"] = round(time.perf_counter() - t0, 1)
        row["exhaustive"] = {m: round(v, 4) for m, v in evaluate_run(exhaustive.to_run(qids), qrels).items()}
        stage = derived.default_stage
        two = derived.search_encoded(encoded, 100, texts=texts, first_stage=stage, candidates=candidates)
        row["two_stage"] = {"first_stage": stage, "candidates": candidates or 100, **{m: round(v, 4) for m, v in evaluate_run(two.to_run(qids), qrels).items()}}
        rows.append(row)
        print(
            f"{text:60s} {row['vectors_per_document']:7.1f} vec/doc {row['bytes_per_token']:8.2f} B/token  "
            f"exhaustive {row['exhaustive']['nDCG@10']:.4f}  two-stage {row['two_stage']['nDCG@10']:.4f}",
            flush=True,
        )
        if changes and not keep:
            del derived
            shutil.rmtree(target, ignore_errors=True)
    base = next((r for r in rows if r["setting"] == "full"), None)
    if base:
        for row in rows:
            for kind in ("exhaustive", "two_stage"):
                row[kind]["loss_vs_full"] = round(1 - row[kind]["nDCG@10"] / base["exhaustive"]["nDCG@10"], 4)
    return {
        "study": "compression",
        "dataset": Path(dataset).resolve().name,
        "split": split,
        "queries": len(qids),
        "index": index.name,
        "source_bytes_per_token": index.info()["bytes_per_token"],
        "command": "python -m mvr.eval.compression " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "rows": rows,
    }


def table(report: dict) -> str:
    lines = [
        f"{report['dataset']} ({report['queries']} queries, index {report['index']}): `{report['command']}`",
        "",
        "| setting | vectors/doc | fewer | bytes/token | nDCG@10 exhaustive | vs full | nDCG@10 two-stage | vs full |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        ex, two = r["exhaustive"], r["two_stage"]
        lines.append(
            f"| {r['setting']} | {r['vectors_per_document']} | {r['vector_ratio']}x | {r['bytes_per_token']} | {ex['nDCG@10']:.4f} | "
            f"{-100 * ex.get('loss_vs_full', 0):+.2f}% | {two['nDCG@10']:.4f} | {-100 * two.get('loss_vs_full', 0):+.2f}% |"
        )
    return "\n".join(lines) + "\n"


def _family(changes: dict) -> str:
    clustered = "cluster_ratio" in changes or "cluster_count" in changes
    kinds = [k for k, present in (("prune", "prune" in changes), ("cluster", clustered), ("codec", "codec" in changes)) if present]
    family = "+".join(kinds) or "full"
    if not clustered:
        return family
    how = changes.get("cluster_method", "ward") + (", idf-weighted" if changes.get("cluster_idf_weight") else "")
    return family + f" ({how}{', every token pooled' if changes.get('cluster_keep') == [] else ''})"


def _short(setting: str) -> str:
    """A plot label: "prune=special+punctuation,cluster_method=ward,cluster_ratio=0.25" -> "sp+p wc0.25"."""
    for long, short in (
        ("special+punctuation", "sp+p"), ("prune=", ""), ("cluster_method=ward,", "w"), ("cluster_method=kmeans,", "k"),
        ("cluster_keep=none,", ""), ("cluster_ratio=", "c"), ("cluster_idf_weight=", "idf"), ("codec=residual,codec_bits=", "r"), ("codec=", ""), (",", " "),
    ):
        setting = setting.replace(long, short)
    return setting


def plot(reports: list[dict], output: Path) -> None:
    """nDCG@10 (exhaustive and two-stage) against vectors per document and bytes per token."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    merged: dict[str, dict] = {}
    for report in reports:  # several studies of one dataset share a panel
        into = merged.setdefault(report["dataset"], {"dataset": report["dataset"], "rows": []})
        known = {r["setting"] for r in into["rows"]}
        into["rows"] += [r for r in report["rows"] if r["setting"] not in known]
    reports = list(merged.values())
    palette = iter([plt.get_cmap("tab20")(i) for i in range(0, 20, 2)] + [plt.get_cmap("tab20")(i) for i in range(1, 20, 2)])
    colors = {"full": "black", "prune": "tab:orange", "codec": "tab:green"}
    fig, axes = plt.subplots(len(reports), 2, figsize=(13, 4.6 * len(reports)), squeeze=False)
    for row, report in zip(axes, reports):
        base = next(r for r in report["rows"] if r["setting"] == "full")["exhaustive"]["nDCG@10"]
        for ax, key, label in ((row[0], "vectors_per_document", "vectors per document"), (row[1], "bytes_per_token", "bytes per original document token")):
            seen = set()
            for r in report["rows"]:
                family = _family(r["changes"])
                color = colors.setdefault(family, next(palette, "gray"))
                ax.plot(r[key], r["exhaustive"]["nDCG@10"], "o", color=color, label=family if family not in seen else None)
                ax.plot(r[key], r["two_stage"]["nDCG@10"], "x", color=color)
                seen.add(family)
                if ax is row[1] or family != "codec":
                    ax.annotate(_short(r["setting"]), (r[key], r["exhaustive"]["nDCG@10"]), fontsize=6, xytext=(3, 3), textcoords="offset points")
            for frac, style in ((0.995, ":"), (0.99, "--"), (0.97, "-.")):
                ax.axhline(base * frac, color="gray", linestyle=style, linewidth=0.8)
            if ax is row[1]:
                ax.axvline(16, color="tab:red", linewidth=0.8)
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel(label + (" (red: 16 bytes)" if ax is row[1] else ""))
            ax.set_ylabel("nDCG@10 (o exhaustive, x two-stage)")
            ax.set_title(f"{report['dataset']}: lines at -0.5%, -1%, -3% of full float16")
            ax.grid(True, alpha=0.3)
            if ax is row[0]:
                ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(output, dpi=110)


def main(argv: list[str] | None = None) -> int:
    from ..index import Index

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["plot"]:
        parser = argparse.ArgumentParser(prog="python -m mvr.eval.compression plot", description="Plot compression studies.")
        parser.add_argument("reports", nargs="+", type=Path)
        parser.add_argument("--output", type=Path, required=True)
        args = parser.parse_args(argv[1:])
        plot([json.loads(p.read_text()) for p in args.reports], args.output)
        return 0

    parser = argparse.ArgumentParser(prog="python -m mvr.eval.compression", description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", type=Path, help="BEIR dataset folder (queries.jsonl, qrels/)")
    parser.add_argument("--index", required=True, help="a full float16 index of that corpus")
    parser.add_argument("--index-dir", default=None)
    parser.add_argument("--setting", action="append", required=True, help="IndexConfig changes, e.g. cluster_ratio=0.25,codec=int8 (repeatable; 'full' = the source)")
    parser.add_argument("--candidates", type=int, default=None, help="two-stage candidates (default 100)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--keep", action="store_true", help="keep the derived indexes")
    parser.add_argument("--output", type=Path, required=True, help="JSON report (a Markdown table is written beside it)")
    args = parser.parse_args(argv)
    index = Index.open(args.index, home=args.index_dir)
    report = measure(args.dataset, index, args.setting, args.split, args.keep, args.candidates)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    args.output.with_suffix(".md").write_text(table(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
