"""Plot an FDE candidate sweep (``mvr eval --first-stage fde --candidates 50,100,... --compare-exhaustive``):
nDCG@10 and recall of the exhaustive top-10 against the candidate count and against latency.

    python -m mvr.eval.plot docs/results/scifact-fde.json docs/results/nfcorpus-fde.json --output docs/fde-sweep.png \
        --also docs/results/scifact-hybrid.json docs/results/nfcorpus-hybrid.json

``--also``: sweeps of another first stage (e.g. the FDE + bm25s hybrid), drawn in green on the
panel of the same dataset.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def plot(reports: list[dict], output: Path, also: list[dict] = ()) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    fig, axes = plt.subplots(len(reports), 2, figsize=(12, 4.2 * len(reports)), squeeze=False)
    for row, report in zip(axes, reports):
        runs = [r for r in report["runs"] if r["first_stage"] != "exhaustive"]
        exhaustive = next((r for r in report["runs"] if r["first_stage"] == "exhaustive"), None)
        counts = [r["candidates"] for r in runs]
        latency = [r["search_ms_p50"] for r in runs]
        for ax, x, label in ((row[0], counts, "candidates reranked by exact MaxSim"), (row[1], latency, "search latency p50, ms (query encoding excluded)")):
            right = ax.twinx()
            lines = right.plot(x, [r["nDCG@10"] for r in runs], "o-", color="tab:blue", label="nDCG@10 after rerank (right axis)")
            if all("recall_of_exhaustive_top10" in r for r in runs):
                lines += ax.plot(x, [r["recall_of_exhaustive_top10"] for r in runs], "s--", color="tab:orange", label="exhaustive top-10 in candidates (left axis)")
            if exhaustive:
                lines.append(right.axhline(exhaustive["nDCG@10"], color="tab:blue", linestyle=":", label="exhaustive MaxSim nDCG@10"))
                right.axhline(exhaustive["nDCG@10"] * 0.995, color="tab:red", linestyle=":", linewidth=0.8)
                if ax is row[1]:
                    lines += right.plot([exhaustive["search_ms_p50"]], [exhaustive["nDCG@10"]], "k*", markersize=12, label="exhaustive MaxSim")
            for other in (a for a in also if a["dataset"] == report["dataset"]):
                extra = [r for r in other["runs"] if r["first_stage"] != "exhaustive"]
                x_extra = [r["candidates"] if ax is row[0] else r["search_ms_p50"] for r in extra]
                name = extra[0]["first_stage"] if extra else "other"
                lines += right.plot(x_extra, [r["nDCG@10"] for r in extra], "o-", color="tab:green", label=f"{name}: nDCG@10 (right axis)")
                if all("recall_of_exhaustive_top10" in r for r in extra):
                    lines += ax.plot(x_extra, [r["recall_of_exhaustive_top10"] for r in extra], "s--", color="tab:olive", label=f"{name}: exhaustive top-10 in candidates")
            for axis in (ax, right):
                axis.set_xscale("log")
                axis.xaxis.set_major_formatter(ScalarFormatter())
                axis.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel(label)
            ax.set_ylabel("share of exhaustive top-10")
            right.set_ylabel("nDCG@10 (red: -0.5%)")
            ax.grid(True, alpha=0.3)
            ax.set_title(f"{report['dataset']}: FDE {report['fde']['fde_dim']} dims, {report['queries']} queries")
            if ax is row[0]:
                ax.legend(lines, [line.get_label() for line in lines], loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(output, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mvr.eval.plot", description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+", type=Path)
    parser.add_argument("--also", nargs="*", type=Path, default=[], help="sweeps of another first stage, drawn on the same panels")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    plot([json.loads(p.read_text()) for p in args.reports], args.output, [json.loads(p.read_text()) for p in args.also])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
