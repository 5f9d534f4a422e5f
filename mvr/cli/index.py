"""``mvr index``: encode a corpus into an index, or derive a smaller one from a float16 index."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import LARGE_CORPUS, RUNTIMES, FDEConfig, IndexConfig
from ..errors import ConfigError
from ..registry import SPARSE_STAGES
from .common import add_common, add_compaction, add_device, add_fde, add_wait, compaction, fde_config


def add_parser(sub) -> argparse.ArgumentParser:
    d = IndexConfig()
    p = sub.add_parser(
        "index",
        help="encode a corpus into an index",
        description="Encode a corpus into an index, or (--from) derive a pruned / clustered / compressed index from a float16 one.",
    )
    p.add_argument("corpus", nargs="?", help="BEIR corpus.jsonl (or its dataset folder), JSONL of {id, text}, a .tsv of id<TAB>text[<TAB>title], or a folder of .txt/.md files")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--name", help="index name: a plain folder name under --index-dir")
    where.add_argument("--path", type=Path, help="write the index at this folder instead of under --index-dir")
    p.add_argument("--model", default=d.model, help="local model folder (default: the embedded all-MiniLM-L6-v2)")
    p.add_argument("--doc-maxlen", type=int, default=d.doc_maxlen, help="document length in tokens (default: the model's; 256 for plain encoders)")
    p.add_argument("--query-maxlen", type=int, default=d.query_maxlen, help="query length in tokens (default: the model's; 64 for plain encoders)")
    p.add_argument("--batch-size", type=int, default=None, help=f"texts per forward pass (default {d.batch_size})")
    p.add_argument(
        "--doc-runtime", choices=RUNTIMES, default=d.doc_runtime,
        help=f"how documents run through the model: onnx-int8-fused (ONNX Runtime, int8 weights, attention fused: 2.9x PyTorch on one thread at its nDCG@10, docs/speed.md), onnx-int8 (the graph as traced), onnx, torch (default: {d.doc_runtime})",
    )
    p.add_argument("--pca-dim", type=int, default=d.pca_dim, help="reduce token vectors with uncentred PCA to this many dims")
    p.add_argument("--skip-empty", action="store_true", default=d.skip_empty, help="drop documents with no text instead of failing")
    p.add_argument("--overwrite", action="store_true", help="replace an existing index of that name (only once the new one is complete)")
    add_wait(p)
    p.add_argument("--resume", action="store_true", help="go on from where an interrupted build of this name stopped (its last whole chunk of documents), with the same corpus and settings; without it a build starts over")
    p.add_argument(
        "--sparse", default=None,
        help=f"text first stages to build: comma list of {', '.join(SPARSE_STAGES)} (bm25 = Lucene, extra 'lucene'), or 'none' (default: {','.join(d.sparse) or 'none'}, what the default search reads)",
    )
    p.add_argument(
        "--centroid-stage", action=argparse.BooleanOptionalAction, default=d.centroid_stage,
        help=f"build the centroid-interaction first stage (PLAID / WARP style: a few hundred bytes per document; docs/scale.md), or not (default: above {LARGE_CORPUS:,} documents, in place of the flat FDE)",
    )
    p.add_argument("--splade-model", default=d.splade_model, help="masked-LM folder: also build the learned-sparse (SPLADE) first stage")
    p.add_argument("--ray", default=None, metavar="ADDRESS", help="encode on Ray workers: 'local' (a Ray instance on this machine), 'auto' (the cluster this machine is a node of) or a cluster's address (extra 'ray'); the same index as without")
    p.add_argument("--ray-workers", type=int, default=None, metavar="N", help="with --ray: encoder actors, one CPU each (default 2)")
    p.add_argument("--workers", type=int, default=1, metavar="N", help="encode in N processes of this machine's CPU, one thread each; the same index as one process (default 1). One process already runs its documents side by side, one per thread, and on 2 cores is faster than 2 workers (docs/scale.md)")
    p.add_argument("--passage-tokens", type=int, default=d.passage_tokens, metavar="N", help="split documents longer than N tokens into overlapping passages, searched one by one (default: none; longer documents are cut at --doc-maxlen)")
    p.add_argument("--passage-stride", type=int, default=d.passage_stride, metavar="S", help="tokens from one passage's start to the next (default: 3/4 of N)")
    add_device(p, "document encoding", precision=True)
    add_fde(p, with_switch=True)
    add_compaction(p)
    add_common(p)
    return p


def run(args) -> int:
    from ..corpus import read_corpus
    from ..index import Index

    settings = compaction(args)
    fde = fde_config(args)
    preset_fde = settings.pop("fde", fde)
    fde = preset_fde if fde == FDEConfig() else fde  # a preset's FDE choice unless FDE flags say otherwise
    preset_centroids = settings.pop("centroid_stage", None)
    centroid_stage = preset_centroids if args.centroid_stage is None else args.centroid_stage
    target = args.name if args.path is None else args.path  # a str stays under --index-dir; a Path is where it says
    if args.source is not None:
        if args.corpus is not None:
            raise ConfigError("give a CORPUS to encode or --from INDEX to derive from, not both.")
        if args.ray is not None or args.ray_workers is not None or args.device is not None or args.precision is not None or args.resume or args.workers != 1:
            raise ConfigError("--ray, --ray-workers, --workers, --device, --precision and --resume apply to encoding a CORPUS; deriving (--from) encodes nothing.")
        d = IndexConfig()
        encoding = {"--model": args.model != d.model, "--doc-maxlen": args.doc_maxlen != d.doc_maxlen, "--query-maxlen": args.query_maxlen != d.query_maxlen,
                    "--batch-size": args.batch_size is not None, "--doc-runtime": args.doc_runtime != d.doc_runtime, "--pca-dim": args.pca_dim != d.pca_dim,
                    "--skip-empty": args.skip_empty, "--sparse": args.sparse is not None, "--splade-model": args.splade_model != d.splade_model,
                    "--passage-tokens": args.passage_tokens != d.passage_tokens, "--passage-stride": args.passage_stride != d.passage_stride}
        given = [flag for flag, changed in encoding.items() if changed]
        if given:  # they were silently left as the source's
            raise ConfigError(f"{', '.join(given)} cannot change without encoding the corpus again: a derived index (--from) keeps its source's; index the CORPUS instead.")
        changes = dict(settings, threads=args.threads, fde=fde, centroid_stage=centroid_stage)
        index = Index.derive(
            args.source, target, home=args.index_dir, overwrite=args.overwrite, show_progress=False if args.quiet else None, command=args.command_line, wait=args.wait, **changes
        )
    else:
        if args.corpus is None:
            raise ConfigError("give a CORPUS to encode (or --from INDEX to derive from an existing index).")
        default = IndexConfig()
        config = IndexConfig(
            model=args.model,
            query_maxlen=args.query_maxlen,
            doc_maxlen=args.doc_maxlen,
            batch_size=args.batch_size if args.batch_size is not None else default.batch_size,
            doc_runtime=args.doc_runtime,
            pca_dim=args.pca_dim,
            skip_empty=args.skip_empty,
            threads=args.threads,
            fde=fde,
            centroid_stage=centroid_stage,
            sparse=tuple(s for s in args.sparse.split(",") if s and s != "none") if args.sparse is not None else default.sparse,
            splade_model=args.splade_model,
            passage_tokens=args.passage_tokens,
            passage_stride=args.passage_stride,
            **settings,
        )
        encoder = None
        if args.ray_workers is not None and args.ray is None:
            raise ConfigError("--ray-workers sets how many Ray workers --ray encodes on; give --ray too, or --workers N for processes of this machine.")
        if args.workers != 1 and (args.ray is not None or args.device not in (None, "cpu") or args.precision is not None):
            raise ConfigError("--workers encodes in processes of this machine's CPU; it does not go with --ray (--ray-workers), --device other than cpu, or --precision.")
        if args.ray is not None:
            from ..distributed import RayEncoder, connect

            if args.device is not None or args.precision is not None:
                raise ConfigError("--device and --precision choose where this machine encodes; with --ray the workers encode (on their own GPU when they have one).")
            workers = 2 if args.ray_workers is None else args.ray_workers
            connect(args.ray, cpus=workers)
            encoder = RayEncoder(config.model, workers=workers, query_maxlen=config.query_maxlen, doc_maxlen=config.doc_maxlen,
                                 batch_size=config.batch_size, doc_runtime=config.doc_runtime)
        elif args.workers != 1:
            from ..encode.pool import ProcessEncoder

            encoder = ProcessEncoder(config.model, workers=args.workers, query_maxlen=config.query_maxlen, doc_maxlen=config.doc_maxlen,
                                     batch_size=config.batch_size, doc_runtime=config.doc_runtime)
        elif args.device is not None or args.precision is not None:
            from ..encode import Encoder

            encoder = Encoder(config.model, query_maxlen=config.query_maxlen, doc_maxlen=config.doc_maxlen, batch_size=config.batch_size,
                              threads=config.threads, doc_runtime=config.doc_runtime, device=args.device, precision=args.precision)
        try:
            index = Index.build(
                read_corpus(args.corpus),
                target,
                config=config,
                encoder=encoder,
                home=args.index_dir,
                overwrite=args.overwrite,
                show_progress=False if args.quiet else None,
                command=args.command_line,
                resume=args.resume,
                wait=args.wait,
            )
        finally:
            if args.ray is not None or args.workers != 1:
                encoder.close()
    info = index.info()
    build = info["build"]
    rate = "derived, no re-encoding" if "derived_from" in build else f"{build['docs_per_second']:.1f} docs/s"  # a derived index's is its source's encoding
    print(
        f"indexed {info['documents']} {'passages' if index.config.passage_tokens else 'documents'} ({info['tokens']} token vectors, dim {info['dim']}) into {index.path} "
        f"in {build['seconds']:.1f} s ({rate}); {info['bytes_per_token']:.1f} bytes/token"
        + (f"; {info['vectors_per_document']['mean']} vectors per document from {info['source_tokens_per_document']}" if index.config.compacts else "")
        + (f"; resumed after {build['resumed_at']} documents (docs/s of this run's)" if "resumed_at" in build else "")
    )
    counts = info["counts"]
    if index.config.passage_tokens:
        size = min(index.config.passage_tokens, info["encoder"]["doc_maxlen"])  # a passage is at most what the model reads
        print(f"split {counts.get('split_documents', 0)} of {counts.get('source_documents', info['documents'])} documents longer than {size} tokens "
              f"(or than fits the model beside the title) into passages (stride {index.config.passage_stride}): {info['documents']} passages in all; "
              "search returns documents by their best passage")
    if counts.get("truncated_documents"):
        print(f"note: {counts['truncated_documents']} of {info['documents']} documents were longer than {info['encoder']['doc_maxlen']} tokens and were cut there "
              "(what follows is not searched); --passage-tokens N splits long documents into passages instead")
    if counts.get("skipped_empty_documents"):  # a merged segment carries neither count
        print(f"note: {counts['skipped_empty_documents']} empty documents were skipped")
    return 0
