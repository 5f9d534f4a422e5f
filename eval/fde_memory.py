"""Peak memory of building the FDE first stage (issue 15, point 1): every document's encoding
held at once beside the faiss index's own copy (what builds did before, ``block`` = all
documents) against encoding and adding a block at a time (today, 4,096 documents a block). Each
in a fresh process, its peak RSS (``ru_maxrss``) measured from a baseline taken once the token
codes are in memory and the kernels loaded, so the figure is the FDE build's own.

    python -m mvr.eval.fde_memory scifact --output docs/results/fde-memory-scifact.json --markdown docs/results/fde-memory-scifact.md
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

from .beir import save_report

FACTORIES = ("Flat", "IVF256,PQ64")
CHILD = """
import json, resource, sys, tempfile
from pathlib import Path
import numpy as np
import faiss
from mvr import Index
from mvr.config import FDEConfig
from mvr.stages.fde import FDE, build_fde
index = Index.open(sys.argv[1], home=sys.argv[2] or None)
segment = index.segments[0]
codes = np.array(segment.tokens.float16_bits())  # in memory before the baseline: only the build's own memory counts
offsets = np.asarray(segment.doc_offsets)
config = FDEConfig(factory=sys.argv[4])
FDE.draw(config, segment.dim).encode_documents(codes, offsets[:2])  # the kernel loaded
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with tempfile.TemporaryDirectory() as folder:
    block = int(sys.argv[3]) or len(offsets) - 1
    manifest = build_fde(Path(folder), codes, offsets, segment.dim, config, segment.vectors_sha256, block=block)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"peak_bytes": (after - before) * 1024, "documents": manifest["documents"], "fde_dim": manifest["fde_dim"],
                  "index_bytes": int(manifest["bytes_per_document"] * manifest["documents"]), "seconds": manifest["build"]["seconds"]}))
"""


def _run(index: str, home: str, block: int, factory: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, index, home, str(block), factory], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mvr.eval.fde_memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("index", help="index name or path (its first segment is read)")
    parser.add_argument("--index-dir", default="")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--markdown", type=Path, default=None)
    args = parser.parse_args(argv)
    rows = []
    for factory in FACTORIES:
        for label, block in (("every document at once (before)", 0), ("4,096 documents a block (now)", 4096)):
            rows.append({"factory": factory, "mode": label, "block": block or None, **_run(args.index, args.index_dir, block, factory)})
    report = {"command": "python -m mvr.eval.fde_memory " + shlex.join(argv if argv is not None else sys.argv[1:]), "rows": rows}
    save_report(report, args.output, args.markdown, _markdown)
    print(json.dumps(rows, indent=2))
    return 0


def _markdown(report: dict) -> str:
    rows = report["rows"]
    first = rows[0]
    lines = [
        "# FDE build memory: every document at once against a block at a time",
        "",
        f"Measured by `{report['command']}` ({first['documents']} documents, {first['fde_dim']}-dim FDEs):",
        "peak RSS of the build above a baseline taken with the token codes in memory, each in a fresh process.",
        "",
        "| factory | how | peak MiB | index MiB | seconds |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(f"| {row['factory']} | {row['mode']} | {row['peak_bytes'] / 2**20:.0f} | {row['index_bytes'] / 2**20:.0f} | {row['seconds']:.1f} |")
    lines.append("")
    for factory in FACTORIES:
        before, now = (r for r in rows if r["factory"] == factory)
        lines.append(f"- {factory}: the block-at-a-time build peaks at {now['peak_bytes'] / max(before['peak_bytes'], 1):.2f}x the all-at-once one.")
    lines += [
        "",
        "SciFact is barely more than one block, so the saving here is small; what changed is what the peak",
        "grows with. Before, every document's FDE was held beside the index's own copy (a flat index: twice",
        "its size; 80 GB for a million documents at 40 KiB each). Now a flat index is sized once and filled",
        "in place, a block at a time: its own size plus one block (4,096 x 40 KiB = 160 MiB, measured",
        "above: 364 = 202 + 160 MiB); a trained factory holds its training sample and one block.",
        "",
        "Blocks leave the index unchanged (`tests/test_fde.py` compares the bytes). A trained factory",
        "(IVF, PQ) trains on at most 50,000 documents, evenly spaced, so its training sample is",
        "bounded too; a segment smaller than that trains on all its documents, as before. The Flat",
        "index itself holds every FDE (40 KiB a document with the default settings): bounding that",
        "is point 2 of the issue (a smaller FDE, a compressed faiss index, or another first stage).",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
