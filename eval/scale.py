"""How mvr scales with the corpus (issue 15, point 6): a synthetic corpus of any size drawn from a
real index's token vectors, built block by block, searched one query at a time on one thread.

    python -m mvr.eval.scale --documents 100000 --output docs/results/scale-100k.json
    python -m mvr.eval.scale --plot docs/results/scale-*.json --output docs/scale.png --markdown docs/results/scale.md

The corpus: document ``i`` is drawn (seeded by ``i`` alone, so any block is made independently and
the same every time) from 2-4 windows of consecutive token vectors of random documents of the
source index (SciFact, encoded by the embedded model, every token in float16), 48-144 tokens in
all (MS MARCO passages run about 80), each vector perturbed with Gaussian noise of norm about
``--doc-noise`` (0.25: cosine 0.97 to its source) and re-normalised. A query is 8-24 tokens of one
document, perturbed more (``--query-noise`` 1.0: cosine 0.71 to its source, 0.69 to the stored
token: the median of how close a real SciFact test query token comes to the nearest token of a
relevant document, 0.69 with the embedded model); that document is the known relevant one.

The build (in a child process, whose peak RSS is ``peak_rss_bytes``; ``baseline_rss_bytes`` is
its RSS before the first block, with the source's vectors read and the codec's sample drawn) runs the ``--preset``
(default ``tiny``: Ward to 0.28 of the tokens, 1-bit residual codec) with the centroid stage and
no FDE or text stage, the documents streamed a block at a time (mvr/streaming.py). Search: the
index's default (the centroid stage and exact MaxSim rerank of its 256 candidates),
one query at a time on one thread (query encoding is not part of it: the queries are vectors);
``recall_at_10`` is the share of the exhaustive top-10 it finds, the exhaustive search run on
``--exhaustive-queries`` of the queries.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SEED_QUERIES = 1 << 40  # queries are seeded apart from documents


class Synthetic:
    """Documents and queries drawn from the float16 token vectors of ``source`` (an open index)."""

    def __init__(self, source, doc_noise: float = 0.25, query_noise: float = 1.0, seed: int = 0, tokens: tuple[int, int] = (48, 144)):
        segments = source._state.segments
        if len(segments) != 1 or source.config.compacts:
            raise SystemExit(f"the source index {source.name!r} must be one segment keeping every token in float16 (a fresh `mvr index` build).")
        self.vectors = np.load(segments[0].path / "vectors.npy", mmap_mode="r")
        self.offsets = np.asarray(segments[0].doc_offsets)
        self.encoder = dict(source.manifest["encoder"])
        self.dim = int(self.vectors.shape[1])
        self.doc_noise, self.query_noise, self.seed, self.tokens = doc_noise, query_noise, seed, tokens

    def document(self, i: int) -> np.ndarray:
        """Document ``i``'s token vectors, float32 ``(n, dim)``."""
        rng = np.random.default_rng([self.seed, i])
        length = int(rng.integers(self.tokens[0], self.tokens[1] + 1))
        parts = int(rng.integers(2, 5))
        cuts = np.sort(rng.choice(np.arange(1, length), size=parts - 1, replace=False))
        rows = []
        for size in np.diff(np.concatenate([[0], cuts, [length]])):
            d = int(rng.integers(len(self.offsets) - 1))
            start, stop = int(self.offsets[d]), int(self.offsets[d + 1])
            first = start + int(rng.integers(max(stop - start - size, 0) + 1))
            rows.append(np.arange(first, min(first + size, stop)))
        vectors = np.asarray(self.vectors[np.concatenate(rows)], dtype=np.float32)
        return _perturb(vectors, self.doc_noise, rng)

    def block(self, numbers):
        from mvr.streaming import Block

        docs = [self.document(int(i)) for i in numbers]
        offsets = np.zeros(len(docs) + 1, dtype=np.int64)
        np.cumsum([len(d) for d in docs], out=offsets[1:])
        ids = [f"d{int(i)}" for i in numbers]
        return Block(ids, np.concatenate(docs), offsets, texts=[f"synthetic document {i}" for i in ids])

    def blocks(self, n_docs: int, size: int = 1024):
        for start in range(0, n_docs, size):
            yield self.block(range(start, min(start + size, n_docs)))

    def queries(self, n_queries: int, n_docs: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(vectors, offsets, relevant document number of each)``."""
        out, targets = [], []
        for q in range(n_queries):
            rng = np.random.default_rng([self.seed, SEED_QUERIES + q])
            target = int(rng.integers(n_docs))
            tokens = self.document(target)
            chosen = np.sort(rng.choice(len(tokens), size=min(len(tokens), int(rng.integers(8, 25))), replace=False))
            out.append(_perturb(tokens[chosen], self.query_noise, rng))
            targets.append(target)
        offsets = np.zeros(n_queries + 1, dtype=np.int64)
        np.cumsum([len(v) for v in out], out=offsets[1:])
        return np.concatenate(out), offsets, np.array(targets)


def _perturb(vectors: np.ndarray, noise: float, rng) -> np.ndarray:
    vectors = vectors + rng.standard_normal(vectors.shape, dtype=np.float32) * np.float32(noise / np.sqrt(vectors.shape[1]))
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def config_for(preset: str | None):
    from mvr.config import PRESETS, IndexConfig

    settings = {k: v for k, v in PRESETS[preset].items() if k != "about"} if preset else {}
    return IndexConfig(fde=None, sparse=(), centroid_stage=True, **settings)


def _build(args, target: str, result: dict) -> None:
    """In a child process: build the synthetic index at ``target``."""
    from mvr import Index
    from mvr.build import build_blocks

    source = Synthetic(Index.open(args.source, home=args.source_dir), args.doc_noise, args.query_noise, args.seed)
    sample_docs = np.unique(np.linspace(0, args.documents - 1, num=min(args.documents, args.fit_documents)).astype(np.int64))
    float(np.asarray(source.vectors[:: max(1, 4096 // source.vectors.strides[0])]).sum(dtype=np.float64))  # every page of the source read once
    sample = source.block(sample_docs)
    result["baseline_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    started = time.perf_counter()
    index = build_blocks(
        source.blocks(args.documents), Path(target), sample=sample, model_dim=source.dim, encoder=source.encoder,
        config=config_for(args.preset), n_docs=args.documents, show_progress=False if args.quiet else None,
        command=" ".join(sys.argv),
    )
    result["build_s"] = time.perf_counter() - started
    result["vectors_per_document"] = index.info()["vectors_per_document"]["mean"]


def _child(args, target, queue):
    result: dict = {}
    try:
        _build(args, target, result)
    finally:
        queue.put(result)  # empty when the build failed: the parent must not wait for ever


def component_bytes(path: Path) -> dict[str, int]:
    """Bytes on disk of an index, by component: token store, each first stage, ids, texts, the rest."""
    groups = {"token_store": ("codes.npy", "centroid_ids.npy", "centroids.npy", "bucket_values.npy", "bucket_cutoffs.npy", "vectors.npy", "scales.npy", "doc_offsets.npy", "projection.npy"),
              "ids": ("doc_ids.npy", "doc_ids_order.npy"), "texts": ("text.bin", "text_offsets.npy", "title.bin", "title_offsets.npy")}
    out = {"token_store": 0, "ids": 0, "texts": 0, "other": 0}
    for file in path.rglob("*"):
        if not file.is_file():
            continue
        parts = file.relative_to(path).parts
        stage = parts[2] if len(parts) > 3 and parts[0] == "segments" else None
        key = f"stage_{stage}" if stage else next((k for k, names in groups.items() if file.name in names), "other")
        out[key] = out.get(key, 0) + file.stat().st_size
    return out


def run(args) -> dict:
    from mvr import Index
    from mvr.config import default_candidates

    made = args.index_dir is None
    folder = Path(tempfile.mkdtemp(prefix="mvr-scale-")) if made else Path(args.index_dir)
    target = folder / f"synthetic-{args.documents}"
    if args.search_only:  # the index kept by an earlier run, whose build figures are kept too
        earlier = json.loads(Path(args.output).read_text())
        built = {k: earlier[k] for k in ("build_s", "baseline_rss_bytes", "vectors_per_document")}
        peak = earlier["peak_rss_bytes"]
    else:
        queue = multiprocessing.get_context("spawn").Queue()
        child = multiprocessing.get_context("spawn").Process(target=_child, args=(args, str(target), queue))
        child.start()
        built = queue.get()
        child.join()
        if child.exitcode or not built:
            raise SystemExit(f"the build failed (exit {child.exitcode})")
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    index = Index.open(target)
    source = Synthetic(Index.open(args.source, home=args.source_dir), args.doc_noise, args.query_noise, args.seed)
    vectors, offsets, targets = source.queries(args.queries, args.documents)
    queries = [(vectors[offsets[q] : offsets[q + 1]], np.array([0, offsets[q + 1] - offsets[q]], dtype=np.int64)) for q in range(args.queries)]
    from mvr.encode import TokenVectors

    def one(q, **options):
        return index.search_encoded(TokenVectors(*queries[q]), 10, threads=1, **options)

    for file in sorted(target.rglob("*.npy")):  # the index in the page cache, as a server that has been up holds it
        with open(file, "rb") as handle:
            while handle.read(1 << 24):
                pass
    for q in range(min(5, args.queries)):  # kernels compiled
        one(q)
    times, found = [], []
    for q in range(args.queries):
        started = time.perf_counter()
        found.append(one(q).indices[0])
        times.append((time.perf_counter() - started) * 1e3)
    checked = np.linspace(0, args.queries - 1, num=min(args.queries, args.exhaustive_queries)).astype(int)
    chosen = [queries[q][0] for q in checked]
    together = TokenVectors(np.concatenate(chosen), np.concatenate([[0], np.cumsum([len(v) for v in chosen])]).astype(np.int64))
    exhaustive = index.search_encoded(together, 10, first_stage="exhaustive").indices
    recall = [len(set(found[q].tolist()) & set(row.tolist())) / 10 for q, row in zip(checked, exhaustive)]
    sizes = component_bytes(target)
    n = args.documents
    result = {
        "documents": n,
        "preset": args.preset,
        "build_s": round(built["build_s"], 2),
        "documents_per_s": round(n / built["build_s"], 1),
        "peak_rss_bytes": int(peak),
        "baseline_rss_bytes": int(built["baseline_rss_bytes"]),
        "bytes_per_document": round(sum(sizes.values()) / n, 1),
        "bytes_per_document_by_component": {k: round(v / n, 1) for k, v in sorted(sizes.items())},
        "vectors_per_document": built["vectors_per_document"],
        "search_ms_p50": round(float(np.percentile(times, 50)), 3),
        "search_ms_p95": round(float(np.percentile(times, 95)), 3),
        "recall_at_10": round(float(np.mean(recall)), 4),
        "exhaustive_queries": len(checked),
        "queries": args.queries,
        "relevant_in_top10": round(float(np.mean([targets[q] in set(f.tolist()) for q, f in enumerate(found)])), 4),
        "relevant_in_exhaustive_top10": round(float(np.mean([targets[q] in set(row.tolist()) for q, row in zip(checked, exhaustive)])), 4),
        "search": {"first_stage": index.default_stage, "candidates": default_candidates(index.default_stage), "threads": 1},
        "corpus": {"source": str(args.source), "doc_noise": args.doc_noise, "query_noise": args.query_noise, "seed": args.seed, "tokens_per_document": [48, 144]},
        "command": "python -m mvr.eval.scale " + " ".join(sys.argv[1:]),
    }
    if not args.keep and not args.search_only:
        shutil.rmtree(folder if made else target, ignore_errors=True)
    return result


def calibrate(source, dataset: Path, split: str = "test", n_queries: int = 150) -> dict:
    """How close real query tokens come to the relevant documents: for the first ``n_queries``
    judged queries of ``dataset`` (BEIR layout), each query token's best cosine among the tokens
    of each relevant document of ``source`` (what ``--query-noise`` is set from)."""
    from mvr.eval.beir import load_beir

    queries, qrels = load_beir(dataset, split)
    judged = [q for q in qrels if q in queries][:n_queries]
    encoded = source.encode_queries([queries[q] for q in judged])
    position = {str(d): i for i, d in enumerate(source.doc_ids)}
    best = []
    for i, q in enumerate(judged):
        tokens = encoded.vectors[encoded.offsets[i] : encoded.offsets[i + 1]]
        for d in (d for d, grade in qrels[q].items() if grade > 0 and d in position):
            best.append((tokens @ source.document_vectors(position[d]).T).max(axis=1))
    best = np.concatenate(best)
    return {"queries": len(judged), "query_tokens": int(len(best)), "median": round(float(np.median(best)), 3), "mean": round(float(best.mean()), 3)}


def table(files: list[Path]) -> str:
    """The result files as a markdown table, smallest corpus first."""
    points = sorted((json.loads(Path(f).read_text()) for f in files), key=lambda r: r["documents"])
    lines = [
        "| documents | build s | docs/s | peak RSS GiB (baseline) | bytes/doc | of which: token store / centroid stage / ids + texts | vectors/doc | search p50 / p95 ms | recall of exhaustive top-10 | relevant in top-10 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in points:
        parts = p["bytes_per_document_by_component"]
        lines.append(
            f"| {p['documents']:,} | {p['build_s']:.0f} | {p['documents_per_s']:.0f} | {p['peak_rss_bytes'] / 2**30:.2f} ({p['baseline_rss_bytes'] / 2**30:.2f}) | {p['bytes_per_document']:,.0f} "
            f"| {parts['token_store']:,.0f} / {parts.get('stage_centroids', 0):,.0f} / {parts['ids'] + parts['texts']:,.0f} | {p['vectors_per_document']:.1f} "
            f"| {p['search_ms_p50']:.1f} / {p['search_ms_p95']:.1f} | {p['recall_at_10']:.3f} ({p['exhaustive_queries']} queries) | {p['relevant_in_top10']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def plot(files: list[Path], output: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = sorted((json.loads(Path(f).read_text()) for f in files), key=lambda r: r["documents"])
    n = [p["documents"] for p in points]
    panels = [("build_s", "build (s)", None), ("peak_rss_bytes", "build peak RSS (GiB)", 8), ("bytes_per_document", "index bytes per document", 8192),
              ("search_ms_p50", "search p50 / p95 (ms, 1 thread)", 20), ("recall_at_10", "recall of the exhaustive top-10", 0.95)]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.2))
    for ax, (key, title, target) in zip(axes, panels):
        values = [p[key] / (1 << 30) if key == "peak_rss_bytes" else p[key] for p in points]
        ax.plot(n, values, marker="o", label="p50" if key == "search_ms_p50" else None)
        if key == "search_ms_p50":
            ax.plot(n, [p["search_ms_p95"] for p in points], marker="s", linestyle="--", label="p95")
            ax.legend(fontsize=8)
        if target is not None:  # the bound
            ax.axhline(target, color="grey", linestyle=":", linewidth=1)
        ax.set_xscale("log")
        ax.set_ylim(bottom=0, top=1.0 if key == "recall_at_10" else None)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("documents")
    fig.tight_layout()
    fig.savefig(output, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m mvr.eval.scale", description=__doc__.split("\n\n")[0])
    p.add_argument("--documents", type=int, default=10_000)
    p.add_argument("--preset", default="tiny", help="compaction preset of the build (default tiny, 16 bytes per token)")
    p.add_argument("--output", required=True, help="JSON file (with --plot: the image)")
    p.add_argument("--plot", nargs="+", type=Path, default=None, help="draw these result files against corpus size instead of running")
    p.add_argument("--markdown", type=Path, default=None, help="with --plot: also write the result files as a markdown table here")
    p.add_argument("--source", default="scifact", help="a float16 index whose token vectors the corpus is drawn from (default scifact)")
    p.add_argument("--source-dir", default=None, help="where --source lives (default: the index home)")
    p.add_argument("--index-dir", default=None, help="where the synthetic index is built (default: a temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the synthetic index")
    p.add_argument("--search-only", action="store_true", help="measure search again on the index an earlier --keep run left in --index-dir, keeping the build figures of its --output")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--exhaustive-queries", type=int, default=50, help="queries also searched exhaustively, for recall_at_10")
    p.add_argument("--fit-documents", type=int, default=4096, help="documents, evenly spaced, the codec is fitted on")
    p.add_argument("--doc-noise", type=float, default=0.25)
    p.add_argument("--query-noise", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--calibrate", type=Path, default=None, metavar="DATASET", help="print how close the real queries of this BEIR dataset come to their relevant documents in --source, instead of running")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.calibrate:
        from mvr import Index

        found = {**calibrate(Index.open(args.source, home=args.source_dir), args.calibrate), "command": "python -m mvr.eval.scale " + " ".join(sys.argv[1:] if argv is None else argv)}
        Path(args.output).write_text(json.dumps(found, indent=2) + "\n")
        print(json.dumps(found))
        return 0
    if args.plot:
        plot(args.plot, Path(args.output))
        if args.markdown:
            args.markdown.write_text(table(args.plot))
        return 0
    if args.search_only and (args.index_dir is None or not Path(args.output).is_file()):
        raise SystemExit("--search-only measures an index kept by an earlier run: give its --index-dir and the --output it wrote.")
    result = run(args)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("documents", "build_s", "peak_rss_bytes", "bytes_per_document", "search_ms_p50", "search_ms_p95", "recall_at_10")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
