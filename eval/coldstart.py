"""Where a cold ``mvr search`` spends its time, part by part, and what a running ``mvr serve``
saves: each measurement in a fresh process, repeated, the median kept.

    python -m mvr.eval.coldstart scifact --output docs/results/coldstart-scifact.json --markdown docs/coldstart.md

Parts, in one fresh process each run: importing mvr and building the command line's parser;
opening the index (reading its commit and segments); loading the query model (its card, the
tokenizer and the ONNX Runtime session of its cached export: mvr/encode/queries.py) and encoding
one query; the first search (first stages read from disk, Numba kernels loaded from their cache);
a warm search. Then, as cuts already made, what the full encoder (PyTorch, transformers) would
take to load and encode the query, and what loading the PyTorch transformer would add on top.
End to end: ``mvr search INDEX QUERY`` as a command, opened here (``--no-server``); the same
with the full encoder (a cache holding the model's exports but no card, whose card is removed
before each run); and answered by a ``mvr serve`` that this command starts.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .beir import save_report

QUERY = "ALDH1 expression is associated with poorer prognosis in breast cancer"
PARTS_SCRIPT = """
import json, sys, time
t = [time.perf_counter()]
import mvr.cli
mvr.cli.build_parser()
t.append(time.perf_counter())
from mvr import Index
index = Index.open(sys.argv[1], home=sys.argv[2] or None)
t.append(time.perf_counter())
index.encode_queries([sys.argv[3]])
t.append(time.perf_counter())
index.search(sys.argv[3], k=10)
t.append(time.perf_counter())
index.search(sys.argv[3] + " and survival", k=10)
t.append(time.perf_counter())
assert type(index._queries()).__name__ == "QueryEncoder", "queries loaded the full encoder: no card (run a search once)"
index.encoder.encode_queries([sys.argv[3]], show_progress=False)  # the full encoder, which queries no longer load
t.append(time.perf_counter())
index.encoder.model  # the PyTorch transformer, which they did not load either
t.append(time.perf_counter())
names = ["import", "index_open", "model_load", "first_search", "warm_search", "full_encoder", "pytorch_model"]
print(json.dumps({n: round(b - a, 4) for n, a, b in zip(names, t, t[1:])}))
"""


def _parts(index: str, home: str, query: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PARTS_SCRIPT, index, home, query], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _command(args: list[str], env: dict | None = None) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "mvr.cli", *args], capture_output=True, text=True, check=True, env=env)
    return time.perf_counter() - started


def _without_card(args: list[str], repeats: int) -> list[float]:
    """``mvr search`` timed as before queries had cards: a cache whose exports are links to the real
    ones, and no card (the one each run writes removed before the next)."""
    from mvr.encode.runtimes import cache_dir

    with tempfile.TemporaryDirectory() as cache:
        (Path(cache) / "onnx").mkdir()
        for file in cache_dir().iterdir():
            if not file.name.endswith(".queries.json"):
                (Path(cache) / "onnx" / file.name).symlink_to(file)
        times = []
        for _ in range(repeats):
            for card in (Path(cache) / "onnx").glob("*.queries.json"):
                card.unlink()
            times.append(_command(args, {**os.environ, "MVR_CACHE_DIR": cache}))
        return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mvr.eval.coldstart", description=__doc__.split("\n\n")[0])
    parser.add_argument("index")
    parser.add_argument("--index-dir", default="")
    parser.add_argument("--query", default=QUERY)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--markdown", type=Path, default=None)
    args = parser.parse_args(argv)

    runs = [_parts(args.index, args.index_dir, args.query) for _ in range(args.repeats)]
    parts = {name: round(statistics.median(r[name] for r in runs), 3) for name in runs[0]}
    where = ["--index-dir", args.index_dir] if args.index_dir else []
    search = ["search", args.index, args.query, "-k", "10", *where]
    local = [_command([*search, "--no-server"]) for _ in range(args.repeats)]
    full = _without_card([*search, "--no-server"], args.repeats)
    env = {**os.environ, "MVR_RUNTIME_DIR": str(args.output.parent / ".coldstart-runtime")}
    server = subprocess.Popen([sys.executable, "-m", "mvr.cli", "serve", args.index, "--port", "0", "--quiet", *where], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        if "serving at" not in server.stdout.readline():
            raise SystemExit(f"mvr serve did not start: {server.stderr.read()}")
        os.environ["MVR_RUNTIME_DIR"] = env["MVR_RUNTIME_DIR"]
        served = [_command(search) for _ in range(args.repeats)]
    finally:
        server.terminate()
        server.wait(timeout=60)
    report = {
        "command": "python -m mvr.eval.coldstart " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "cpus": os.cpu_count(),
        "repeats": args.repeats,
        "parts_s": parts,
        "cold_total_s": round(sum(v for k, v in parts.items() if k not in ("warm_search", "full_encoder", "pytorch_model")), 3),
        "mvr_search_local_s": round(statistics.median(local), 3),
        "mvr_search_local_full_encoder_s": round(statistics.median(full), 3),
        "mvr_search_through_server_s": round(statistics.median(served), 3),
    }
    save_report(report, args.output, args.markdown, _markdown)
    print(json.dumps(report, indent=2))
    return 0


def _markdown(report: dict) -> str:
    p = report["parts_s"]
    rows = [("import mvr, build the parser", p["import"]), ("open the index", p["index_open"]), ("load the query model, encode one query", p["model_load"]),
            ("first search (first stages from disk, kernels from cache)", p["first_search"]), ("a warm search", p["warm_search"])]
    lines = [
        "# Cold start: where a first `mvr search` spends its time",
        "",
        f"Measured by `{report['command']}` on {report['cpus']} cores (median of {report['repeats']} fresh processes each).",
        "",
        "| part | seconds |",
        "|---|---|",
        *[f"| {what} | {seconds:.3f} |" for what, seconds in rows],
        f"| **cold total** (all but the warm search) | **{report['cold_total_s']:.3f}** |",
        "",
        "Cuts already made, each timed in the same processes after the parts above:",
        "",
        "- Queries no longer load the full encoder (importing PyTorch and transformers, the tokenizer through them): they run in",
        f"  ONNX Runtime and numpy from the model's card (mvr/encode/queries.py). Loading it and encoding the query took {p['full_encoder']:.2f} s,",
        f"  {p['full_encoder'] / max(p['model_load'], 1e-9):.1f}x the model part above; the transformers import scans every installed distribution's",
        "  metadata, so it grows with the environment.",
        f"- Nor the PyTorch transformer (its ONNX export is cached), which would add {p['pytorch_model']:.2f} s more.",
        "",
        "| `mvr search INDEX QUERY -k 10`, end to end | seconds |",
        "|---|---|",
        f"| opened here (`--no-server`) | {report['mvr_search_local_s']:.2f} |",
        f"| opened here with the full encoder (no card: as before 2026-11-30) | {report['mvr_search_local_full_encoder_s']:.2f} |",
        f"| answered by a running `mvr serve` (found through its note, see docs/server.md) | {report['mvr_search_through_server_s']:.2f} |",
        "",
        f"Queries without PyTorch make the command {report['mvr_search_local_full_encoder_s'] / max(report['mvr_search_local_s'], 1e-9):.2f}x faster;",
        f"a running server makes it {report['mvr_search_local_s'] / max(report['mvr_search_through_server_s'], 1e-9):.0f}x faster still.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
