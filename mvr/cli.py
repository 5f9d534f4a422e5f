"""The ``mvr`` command line: index, search, info, list, eval.

Errors of mvr's own hierarchy print as one ``mvr: error: ...`` line and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from .errors import MvrError


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--index-dir", type=Path, default=None, help="where named indexes live (default: $MVR_INDEX_DIR or ./indexes)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for encoding and scoring (default: all cores)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_fde(parser: argparse.ArgumentParser, with_switch: bool) -> None:
    group = parser.add_argument_group("MUVERA FDE first stage")
    if with_switch:
        group.add_argument("--no-fde", action="store_true", help="build no FDE first stage (exhaustive search only)")
    group.add_argument("--fde-k-sim", type=int, default=4, help="SimHash bits per repetition (2**k partitions; default 4)")
    group.add_argument("--fde-d-proj", type=int, default=32, help="AMS projection dims per token; 0 keeps all dims (default 32)")
    group.add_argument("--fde-reps", type=int, default=20, help="repetitions (default 20)")
    group.add_argument("--fde-d-final", type=int, default=None, help="final Count-Sketch dimension (default: none)")
    group.add_argument("--fde-fill", action="store_true", help="fill empty document partitions with the Hamming-nearest token (default: leave them zero)")
    group.add_argument("--fde-factory", default="Flat", help="faiss index factory string, inner product (default Flat = exact)")
    group.add_argument("--fde-seed", type=int, default=0)


def add_rerank_options(parser: argparse.ArgumentParser) -> None:
    from .index import DEFAULT_DENSE_SHARE

    group = parser.add_argument_group("candidates and reranking")
    group.add_argument("--no-rerank", action="store_true", help="return the first stage's own ranking (e.g. BM25 alone)")
    group.add_argument("--prune-alpha", type=float, default=None, help="drop candidates scoring below (1 - alpha) x the k-th best first-stage score")
    group.add_argument("--early-exit", type=int, default=None, metavar="BETA", help="stop reranking after BETA consecutive candidates miss the top-k")
    group.add_argument("--fusion", choices=("rrf", "linear"), default=None, help="fuse MaxSim with first-stage scores")
    group.add_argument("--fusion-weight", type=float, default=0.8, help="MaxSim's weight in linear fusion of z-scores (default 0.8)")
    group.add_argument("--dense-share", type=float, default=DEFAULT_DENSE_SHARE, help=f"hybrid first stages (fde+bm25s, ...): share of the candidates taken from FDE (default {DEFAULT_DENSE_SHARE})")


def rerank_options(args) -> dict:
    return {
        "rerank": not args.no_rerank,
        "prune_alpha": args.prune_alpha,
        "early_exit": args.early_exit,
        "fusion": args.fusion,
        "fusion_weight": args.fusion_weight,
        "dense_share": args.dense_share,
    }


def _fde_config(args):
    from .fde import FDEConfig

    if getattr(args, "no_fde", False):
        return None
    return FDEConfig(
        k_sim=args.fde_k_sim,
        d_proj=args.fde_d_proj or None,
        reps=args.fde_reps,
        d_final=args.fde_d_final,
        fill_empty=args.fde_fill,
        factory=args.fde_factory,
        seed=args.fde_seed,
    )


def _add_compaction(parser: argparse.ArgumentParser) -> None:
    from .config import CLUSTER_METHODS, CODECS, KEEP_CLASSES, PRESETS, PRUNE_RULES

    group = parser.add_argument_group("fewer and smaller vectors (docs/compression.md)")
    group.add_argument("--from", dest="source", default=None, metavar="INDEX", help="derive from this float16 index's stored vectors instead of encoding CORPUS")
    group.add_argument("--preset", choices=sorted(PRESETS), default=None, help="; ".join(f"{k}: {v['about']}" for k, v in PRESETS.items()).replace("%", "%%"))
    group.add_argument("--prune", default=None, help=f"drop document tokens by rule, comma list of {', '.join(PRUNE_RULES)}")
    group.add_argument("--prune-max-df", type=float, default=None, help="the df rule drops tokens found in more than this share of documents (default 0.5)")
    group.add_argument("--cluster-ratio", type=float, default=None, help="k-means each document to ceil(ratio x its tokens) centroids")
    group.add_argument("--cluster-count", type=int, default=None, help="... or to at most this many centroids")
    group.add_argument("--cluster-method", choices=CLUSTER_METHODS, default=None, help="ward (agglomerative, default) or kmeans")
    group.add_argument("--cluster-iters", type=int, default=None, help="k-means iterations (default 10)")
    group.add_argument("--cluster-keep", default=None, help=f"token classes never pooled, comma list of {', '.join(KEEP_CLASSES)}, or none (default special)")
    group.add_argument("--cluster-idf-weight", type=float, default=None, help="Ward: scale tokens by idf ** W for the linkage so rare terms merge last (default 0)")
    group.add_argument("--codec", choices=CODECS, default=None, help="stored vectors: float16 (default), int8, residual")
    group.add_argument("--codec-bits", type=int, choices=(1, 2, 4), default=None, help="residual bits per dimension (default 2)")
    group.add_argument("--codec-centroids", type=int, default=None, help="residual codec centroids (default: a power of two near 4 sqrt(vectors))")


def _compaction(args) -> dict:
    """The compaction settings asked for: the preset's, then each flag given."""
    from .config import PRESETS

    settings = {k: v for k, v in PRESETS[args.preset].items() if k != "about"} if args.preset else {}
    flags = {
        "prune": tuple(r for r in args.prune.split(",") if r and r != "none") if args.prune is not None else None,
        "prune_max_df": args.prune_max_df,
        "cluster_ratio": args.cluster_ratio,
        "cluster_count": args.cluster_count,
        "cluster_method": args.cluster_method,
        "cluster_iters": args.cluster_iters,
        "cluster_keep": tuple(c for c in args.cluster_keep.split(",") if c and c != "none") if args.cluster_keep is not None else None,
        "cluster_idf_weight": args.cluster_idf_weight,
        "codec": args.codec,
        "codec_bits": args.codec_bits,
        "codec_centroids": args.codec_centroids,
    }
    settings.update({k: v for k, v in flags.items() if v is not None})
    if "cluster_count" in settings and args.cluster_ratio is None:
        settings.pop("cluster_ratio", None)
    return settings


def _build_parser() -> argparse.ArgumentParser:
    from .encoder import DEFAULT_DOC_RUNTIME, RUNTIMES

    parser = argparse.ArgumentParser(prog="mvr", description="Multi-vector (late-interaction) retrieval.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "index",
        help="encode a corpus into an index",
        description="Encode a corpus into an index, or (--from) derive a pruned / clustered / compressed index from a float16 one.",
    )
    p.add_argument("corpus", nargs="?", help="BEIR corpus.jsonl (or its dataset folder), JSONL of {id, text}, or a folder of .txt/.md files")
    p.add_argument("--name", required=True, help="index name (under --index-dir) or a path")
    p.add_argument("--model", default=None, help="local model folder (default: the embedded all-MiniLM-L6-v2)")
    p.add_argument("--doc-maxlen", type=int, default=None, help="document length in tokens (default: the model's; 256 for plain encoders)")
    p.add_argument("--query-maxlen", type=int, default=None, help="query length in tokens (default: the model's; 64 for plain encoders)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--doc-runtime", choices=RUNTIMES, default=DEFAULT_DOC_RUNTIME,
        help=f"how documents run through the model: onnx-int8 (ONNX Runtime, int8 weights; 1.5x PyTorch at the same nDCG@10, docs/speed.md), onnx, torch (default: {DEFAULT_DOC_RUNTIME})",
    )
    p.add_argument("--pca-dim", type=int, default=None, help="reduce token vectors with uncentred PCA to this many dims")
    p.add_argument("--skip-empty", action="store_true", help="drop documents with no text instead of failing")
    p.add_argument("--overwrite", action="store_true", help="replace an existing index of that name (only once the new one is complete)")
    p.add_argument("--sparse", default="bm25,bm25s", help="sparse first stages to build: comma list of bm25 (Lucene), bm25s, or 'none' (default: both)")
    p.add_argument("--splade-model", default=None, help="masked-LM folder: also build the learned-sparse (SPLADE) first stage")
    _add_fde(p, with_switch=True)
    _add_compaction(p)
    _add_common(p)

    p = sub.add_parser("sparse", help="(re)build an index's sparse first stages from its stored texts", description="(Re)build BM25 first stages of an index.")
    p.add_argument("index", help="index name or path")
    p.add_argument("--stage", action="append", choices=("bm25", "bm25s", "splade"), help="which (repeatable; default: bm25 and bm25s)")
    p.add_argument("--splade-model", default=None, help="with --stage splade: the masked-LM folder")
    _add_common(p)

    p = sub.add_parser("fde", help="(re)build an index's MUVERA first stage from its stored vectors", description="(Re)build the FDE first stage of an index without re-encoding it.")
    p.add_argument("index", help="index name or path")
    _add_fde(p, with_switch=False)
    _add_common(p)

    p = sub.add_parser("search", help="search an index", description="Search an index with one query or a file of queries.")
    p.add_argument("index", help="index name or path")
    p.add_argument("query", nargs="?", help="the query text (or use --queries)")
    p.add_argument("--queries", type=Path, help="JSONL of {_id|id, text} or TSV of id<TAB>text, one query per line")
    p.add_argument("-k", type=int, default=10, help="results per query (default 10)")
    p.add_argument("--model", default=None, help="query model folder (default: the one the index was built with)")
    from .index import FIRST_STAGES

    p.add_argument("--first-stage", default=None, choices=FIRST_STAGES, help="how candidates are found (default: fde+bm25s where the index has both, else fde, else exhaustive)")
    p.add_argument("--candidates", type=int, default=None, help="first-stage candidates reranked by exact MaxSim (default 100; not with exhaustive)")
    add_rerank_options(p)
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="JSON output")
    out.add_argument("--trec", action="store_true", help="TREC run output: qid Q0 docid rank score run")
    p.add_argument("--run-name", default="mvr")
    _add_common(p)

    p = sub.add_parser("info", help="describe an index")
    p.add_argument("index", help="index name or path")
    p.add_argument("--json", action="store_true")
    p.add_argument("--verify", action="store_true", help="also check every file's sha256 against the manifest")
    _add_common(p)

    p = sub.add_parser("list", help="list the indexes under --index-dir")
    _add_common(p)

    p = sub.add_parser("eval", help="evaluate an index on a BEIR dataset", description="Evaluate an index on a BEIR-layout dataset folder.")
    from .eval.beir import add_arguments

    add_arguments(p)
    _add_common(p)
    return parser


def _read_queries(path: Path) -> list[tuple[str, str]]:
    from .corpus import read_jsonl_objects
    from .errors import QueryError

    if not path.is_file():
        raise QueryError(f"queries file not found: {path}.")
    if path.suffix.lower() in (".jsonl", ".json"):
        queries = []
        for line, obj in read_jsonl_objects(path):
            qid, text = obj.get("_id", obj.get("id")), obj.get("text")
            if qid is None or not isinstance(text, str):
                raise QueryError(f'{path}:{line}: each query needs "_id" (or "id") and "text".')
            queries.append((str(qid), text))
        return queries
    queries = []
    for line, row in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if row.strip():
            parts = row.split("\t", 1)
            if len(parts) != 2:
                raise QueryError(f"{path}:{line}: expected id<TAB>text.")
            queries.append((parts[0], parts[1]))
    return queries


def _cmd_index(args) -> int:
    from .config import IndexConfig
    from .corpus import read_corpus
    from .errors import ConfigError
    from .index import Index

    compaction = _compaction(args)
    if args.source is not None:
        if args.corpus is not None:
            raise ConfigError("give a CORPUS to encode or --from INDEX to derive from, not both.")
        changes = dict(compaction, threads=args.threads, fde=_fde_config(args))
        index = Index.derive(
            args.source, args.name, home=args.index_dir, overwrite=args.overwrite, show_progress=False if args.quiet else None, command=args.command_line, **changes
        )
    else:
        if args.corpus is None:
            raise ConfigError("give a CORPUS to encode (or --from INDEX to derive from an existing index).")
        config = IndexConfig(
            model=args.model,
            query_maxlen=args.query_maxlen,
            doc_maxlen=args.doc_maxlen,
            batch_size=args.batch_size,
            doc_runtime=args.doc_runtime,
            pca_dim=args.pca_dim,
            skip_empty=args.skip_empty,
            threads=args.threads,
            fde=_fde_config(args),
            sparse=tuple(s for s in args.sparse.split(",") if s and s != "none"),
            splade_model=args.splade_model,
            **compaction,
        )
        index = Index.build(
            read_corpus(args.corpus),
            args.name,
            config=config,
            home=args.index_dir,
            overwrite=args.overwrite,
            show_progress=False if args.quiet else None,
            command=args.command_line,
        )
    info = index.info()
    build = info["build"]
    print(
        f"indexed {info['documents']} documents ({info['tokens']} token vectors, dim {info['dim']}) into {index.path} "
        f"in {build['seconds']:.1f} s ({build['docs_per_second']:.1f} docs/s); {info['bytes_per_token']:.1f} bytes/token"
        + (f"; {info['vectors_per_document']['mean']} vectors per document from {info['source_tokens_per_document']}" if index.config.compacts else "")
    )
    if info["counts"]["truncated_documents"]:
        print(f"note: {info['counts']['truncated_documents']} documents were longer than {info['encoder']['doc_maxlen']} tokens and were truncated")
    if info["counts"]["skipped_empty_documents"]:
        print(f"note: {info['counts']['skipped_empty_documents']} empty documents were skipped")
    return 0


def _cmd_search(args) -> int:
    from .errors import QueryError
    from .index import Index

    if (args.query is None) == (args.queries is None):
        raise QueryError("give either a query text or --queries FILE.")
    queries = _read_queries(args.queries) if args.queries else [("q1", args.query)]
    index = Index.open(args.index, home=args.index_dir, model=args.model)
    results = index.search(
        [text for _, text in queries], k=args.k, first_stage=args.first_stage, candidates=args.candidates, threads=args.threads, **rerank_options(args)
    )
    if args.trec:
        print("\n".join(results.to_trec([qid for qid, _ in queries], args.run_name)))
    elif args.json:
        payload = [
            {"query_id": qid, "query": text, "hits": [{"rank": h.rank, "id": h.id, "score": h.score, "title": h.title, "text": h.text} for h in hits]}
            for (qid, text), hits in zip(queries, results)
        ]
        print(json.dumps(payload if args.queries else payload[0], ensure_ascii=False, indent=2))
    else:
        for (qid, text), hits in zip(queries, results):
            if args.queries:
                print(f"## {qid}: {text}")
            print(f"{'rank':>4}  {'score':>8}  {'id':<16}  text")
            for hit in hits:
                snippet = " ".join(f"{hit.title} {hit.text}".split())
                print(f"{hit.rank:>4}  {hit.score:>8.3f}  {hit.id[:16]:<16}  {snippet[:100]}")
    return 0


def _cmd_info(args) -> int:
    from . import store
    from .index import Index

    index = Index.open(args.index, home=args.index_dir)
    info = index.info()
    if args.verify:
        damaged = store.verify(index.path, index.manifest)
        info["verified"] = not damaged
        if damaged:
            raise store.IndexFormatError(f"{index.path}: checksum mismatch in {', '.join(damaged)}; rebuild the index.")
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    enc = info["encoder"]
    rows = [
        ("path", info["path"]),
        ("documents", info["documents"]),
        ("token vectors", f"{info['tokens']} ({info['vectors_per_document']['mean']} per document, max {info['vectors_per_document']['max']})"),
        ("dim", f"{info['dim']}" + (f" (PCA from {info['counts']['model_dim']})" if info["dim"] != info["counts"]["model_dim"] else "")),
        ("stored as", _stored_as(index.config, info["counts"])),
        ("bytes per token", f"{info['bytes_per_token']} (per document token before pruning: vector data, codebooks, offsets)"),
        ("index size", f"{info['index_bytes'] / 2**20:.1f} MiB"),
        ("encoder", f"{enc['name']} [{enc['kind']}] sha256 {enc['weights_sha256'][:12]}; query {enc['query_maxlen']} / doc {enc['doc_maxlen']} tokens"),
        (
            "built",
            f"{info['created']} in {info['build']['seconds']} s "
            + (f"from {info['build']['derived_from']} (no re-encoding)" if info["build"].get("derived_from") else f"({info['build']['docs_per_second']} docs/s)"),
        ),
        ("truncated documents", info["counts"]["truncated_documents"]),
    ]
    fde = info["fde"]
    if fde:
        cfg = fde["config"]
        rows.append(
            (
                "FDE first stage",
                f"k_sim {cfg['k_sim']}, d_proj {cfg['d_proj'] or 'identity'}, reps {cfg['reps']}, fill {'on' if cfg['fill_empty'] else 'off'}"
                f"{', final ' + str(cfg['d_final']) if cfg['d_final'] else ''}: {fde['fde_dim']} dims, "
                f"{fde['bytes_per_document'] / 1024:.1f} KiB/document, faiss {cfg['factory']}",
            )
        )
    else:
        rows.append(("FDE first stage", "none (exhaustive search only; add one with `mvr fde`)"))
    if args.verify:
        rows.append(("checksums", "ok"))
    for key, value in rows:
        print(f"{key:>20}  {value}")
    return 0


def _stored_as(config, counts: dict) -> str:
    parts = []
    if config.prune:
        parts.append(f"pruned ({', '.join(config.prune)}): {counts.get('pruned_tokens', 0)} tokens dropped")
    if config.clusters:
        how = f"ratio {config.cluster_ratio}" if config.cluster_ratio is not None else f"at most {config.cluster_count}"
        method = "Ward linkage" if config.cluster_method == "ward" else f"k-means, {config.cluster_iters} iterations"
        if config.cluster_idf_weight:
            method += f", idf^{config.cluster_idf_weight:g}-weighted"
        kept = f", {'/'.join(config.cluster_keep)} tokens kept" if config.cluster_keep else ""
        parts.append(f"clustered per document ({how}, {method}{kept})")
    codec = config.codec if config.codec != "residual" else f"residual {config.codec_bits}-bit, {counts.get('codec_centroids')} centroids"
    parts.append(codec)
    return "; ".join(parts) + f" — from {counts.get('source_tokens', counts['tokens'])} document tokens"


def _cmd_fde(args) -> int:
    from .index import Index

    index = Index.open(args.index, home=args.index_dir)
    manifest = index.build_fde(_fde_config(args), threads=args.threads, command=args.command_line)
    print(
        f"built the FDE of {index.name}: {manifest['documents']} documents x {manifest['fde_dim']} dims, "
        f"{manifest['bytes_per_document'] / 1024:.1f} KiB per document, in {manifest['build']['seconds']:.1f} s "
        f"({manifest['build']['docs_per_second']:.0f} docs/s)"
    )
    return 0


def _cmd_sparse(args) -> int:
    from .index import Index

    index = Index.open(args.index, home=args.index_dir)
    stages = args.stage or ("bm25", "bm25s")
    built = index.build_sparse(stages, splade_model=args.splade_model, command=args.command_line, show_progress=False if args.quiet else None)
    for stage, manifest in built.items():
        print(f"built the {stage} first stage of {index.name}: {manifest['documents']} documents in {manifest['build']['seconds']:.1f} s")
    return 0


def _cmd_list(args) -> int:
    from . import store

    for name in store.available(args.index_dir):
        print(name)
    return 0


def _cmd_eval(args) -> int:
    from .eval.beir import run_from_args

    return run_from_args(args)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    args = _build_parser().parse_args(argv)
    args.command_line = "mvr " + shlex.join(argv)  # kept in manifests and reports, to rerun them
    try:
        return {"index": _cmd_index, "search": _cmd_search, "info": _cmd_info, "fde": _cmd_fde, "sparse": _cmd_sparse, "list": _cmd_list, "eval": _cmd_eval}[args.command](args)
    except MvrError as exc:
        print(f"mvr: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mvr: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
