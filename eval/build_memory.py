"""Peak memory of `mvr index` against corpus size (issue 15, point 1): the first N documents of a
BEIR corpus indexed with a preset, each build in a child process whose peak RSS is read.

    python -m mvr.eval.build_memory ../shared/datasets/scifact --documents 500 5183 --preset tiny --output docs/results/build-memory-scifact.json

A build whose memory does not grow with the corpus shows the same peak at every size, beyond the
arrays it must hold per document (ids, offsets: bytes per document). Two peaks: the resident set
(``ru_maxrss``, memory-mapped pages included) and the memory no file backs (RssAnon, sampled
every 20 ms).
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import tempfile
import time
from pathlib import Path


def _anonymous_peak(state: dict, stop) -> None:
    """The largest RssAnon (memory no file backs: what memory-mapped pages are not) seen every 20 ms."""
    while not stop.wait(0.02):
        try:
            for line in open("/proc/self/status"):
                if line.startswith("RssAnon:"):
                    state["peak"] = max(state["peak"], int(line.split()[1]) * 1024)
        except OSError:
            return


def _build(dataset: str, documents: int, preset: str, large: bool, folder: str, queue) -> None:
    import threading

    from mvr import Index
    from mvr.config import PRESETS, IndexConfig
    from mvr.corpus import read_corpus

    def first():
        for i, doc in enumerate(read_corpus(Path(dataset) / "corpus.jsonl")):
            if i == documents:
                return
            yield doc

    anonymous, stop = {"peak": 0}, threading.Event()
    sampler = threading.Thread(target=_anonymous_peak, args=(anonymous, stop), daemon=True)
    sampler.start()
    started = time.perf_counter()
    settings = {k: v for k, v in PRESETS[preset].items() if k != "about"} if preset else {}
    if large:  # what a build of more than LARGE_CORPUS documents does by default: the centroid stage, no flat FDE
        settings.update(centroid_stage=True, fde=None)
    index = Index.build(first(), Path(folder) / "x", config=IndexConfig(**settings), show_progress=False)
    queue.put({"documents": index.n_docs, "tokens": index.n_tokens, "source_tokens": index.manifest["counts"].get("source_tokens"),
               "build_s": round(time.perf_counter() - started, 1), "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "peak_anonymous_bytes": anonymous["peak"]})
    stop.set()


def measure(dataset: Path, documents: int, preset: str | None, large: bool) -> dict:
    context = multiprocessing.get_context("spawn")  # a fresh process: its peak is this build's
    queue = context.Queue()
    with tempfile.TemporaryDirectory() as folder:
        child = context.Process(target=_build, args=(str(dataset), documents, preset, large, folder, queue))
        child.start()
        child.join()
        if child.exitcode != 0:
            raise SystemExit(f"the build of {documents} documents failed (exit {child.exitcode})")
        return queue.get(timeout=10)


def main(argv=None) -> int:
    from .beir import publish_report

    p = argparse.ArgumentParser(prog="python -m mvr.eval.build_memory", description=__doc__.split("\n\n")[0])
    p.add_argument("dataset", type=Path)
    p.add_argument("--documents", type=int, nargs="+", required=True)
    p.add_argument("--preset", default="tiny", help="a preset of `mvr index --preset`, or 'none' (default tiny)")
    p.add_argument("--large-corpus-defaults", action="store_true", help="build as above LARGE_CORPUS documents: the centroid stage instead of the flat FDE (40 KiB a document, in memory)")
    p.add_argument("--output", type=Path, default=None)
    args = p.parse_args(argv)
    preset = None if args.preset == "none" else args.preset
    rows = [measure(args.dataset, n, preset, args.large_corpus_defaults) for n in args.documents]
    report = {"dataset": args.dataset.name, "preset": preset, "large_corpus_defaults": args.large_corpus_defaults, "builds": rows}
    if len(rows) > 1:
        first, last = rows[0], rows[-1]
        for key in ("peak_rss_bytes", "peak_anonymous_bytes"):
            report[key.replace("_bytes", "_growth_bytes_per_document")] = round((last[key] - first[key]) / max(last["documents"] - first["documents"], 1), 1)
    publish_report(report, "mvr.eval.build_memory", argv, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
