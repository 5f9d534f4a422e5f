"""Option groups the subcommands share. Every default is read from the dataclass that owns it
(IndexConfig, FDEConfig, SearchOptions), never typed here a second time."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from ..config import CENTROID_PROBE, CLUSTER_METHODS, DEFAULT_CANDIDATES, FDE_EF_SEARCH, FDE_NPROBE, DENSE_SHARE, FUSION_WEIGHT, KEEP_CLASSES, PRESETS, PRUNE_RULES, FDEConfig, IndexConfig
from ..registry import CODECS, FIRST_STAGES
from ..fusion import FUSIONS, SIGNALS
from ..search import PRF
from ..errors import ConfigError


def add_wait(parser: argparse.ArgumentParser) -> None:
    """``--wait SECONDS``: how long a command that writes an index waits for another writer of it."""
    parser.add_argument("--wait", type=float, default=0.0, metavar="SECONDS", help="wait this long for another writer of the index to finish (default: fail at once)")


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--index-dir", type=Path, default=None, help="where named indexes live (default: $MVR_INDEX_DIR or ./indexes)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for encoding and scoring (default: all cores)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def add_device(parser: argparse.ArgumentParser, what: str, precision: bool = False) -> None:
    """``--device`` (and ``--precision``): where PyTorch work runs (mvr/device.py)."""
    parser.add_argument("--device", default=None, metavar="auto|cpu|cuda[:N]",
                        help=f"where {what} runs: a CUDA GPU, the CPU, or auto: the GPU when torch sees one (default: $MVR_DEVICE, else auto; a CUDA torch is needed, README 'GPU')")
    if precision:
        parser.add_argument("--precision", default=None, choices=("fp32", "fp16", "bf16"),
                            help="autocast type of the transformer (default: fp16 on a GPU, fp32 on the CPU; other than fp32, documents run in PyTorch)")


def add_fde(parser: argparse.ArgumentParser, with_switch: bool, recorded: bool = False) -> None:
    """The FDE's flags; ``recorded``: each left out keeps the index's recorded setting (mvr fde)."""
    group = parser.add_argument_group("MUVERA FDE first stage")
    if with_switch:
        group.add_argument("--no-fde", action="store_true", help="build no FDE first stage (exhaustive search only)")
    d = FDEConfig()
    kept = "the index's, else " if recorded else ""

    # each left out is None: the index's setting (mvr fde), else FDEConfig's (fde_config tells a flag given from one left out)
    group.add_argument("--fde-k-sim", type=int, default=None, help=f"SimHash bits per repetition (2**k partitions; default {kept}{d.k_sim})")
    group.add_argument("--fde-d-proj", type=int, default=None, help=f"AMS projection dims per token; 0 keeps all dims (default {kept}{d.d_proj})")
    group.add_argument("--fde-reps", type=int, default=None, help=f"repetitions (default {kept}{d.reps})")
    group.add_argument("--fde-d-final", type=int, default=None, help=f"final Count-Sketch dimension (default: {kept}none)")
    group.add_argument("--fde-fill", action="store_true", default=None, help=f"fill empty document partitions with the Hamming-nearest token (default: {kept}leave them zero)")
    group.add_argument("--fde-factory", default=None, help=f"faiss index factory string, inner product (default {kept}{d.factory} = exact)")
    group.add_argument("--fde-seed", type=int, default=None, help=f"seed of the FDE's random projections (default {kept}{d.seed})")


def fde_config(args, base: FDEConfig | None = None) -> FDEConfig | None:
    """The FDE the flags ask for: each flag given over ``base`` (None: the defaults); None with --no-fde."""
    asked = {"k_sim": args.fde_k_sim, "d_proj": args.fde_d_proj, "reps": args.fde_reps, "d_final": args.fde_d_final, "fill_empty": args.fde_fill, "factory": args.fde_factory, "seed": args.fde_seed}
    given = {name: (value or None) if name == "d_proj" else value for name, value in asked.items() if value is not None}  # --fde-d-proj 0: every dimension
    config = dataclasses.replace(base or FDEConfig(), **given)
    if getattr(args, "no_fde", False):
        if given or config != FDEConfig():  # a flag at its default value too (--fde-factory Flat)
            raise ConfigError("--no-fde leaves out the FDE that the --fde-* options given set up; give one or the other.")
        return None
    return config


def add_search(parser: argparse.ArgumentParser, counts=None) -> None:
    """First stage, candidates and reranking options. ``counts``: a type for --candidates that
    takes a comma list (mvr eval sweeps several). An option left out is not passed on, so that a
    search preset's own value stands (mvr/search_presets.py)."""
    group = parser.add_argument_group("candidates and reranking")
    group.add_argument("--preset", default=None, metavar="NAME", help="a search preset saved in the index (default: the index's default preset when no --first-stage is given; none: no preset)")
    group.add_argument("--first-stage", default=None, choices=FIRST_STAGES, help="how candidates are found (default: the index's default preset, else the first it has of fde+bm25s, centroids+bm25s, pooled+bm25s, fde, centroids, pooled, else exhaustive)")
    many = " or a comma list to sweep" if counts else ""
    group.add_argument("--candidates", type=counts or int, default=None, help=f"first-stage candidates reranked by exact MaxSim{many} (default {DEFAULT_CANDIDATES}, 256 after the centroid stage alone; not with exhaustive)")
    group.add_argument("--no-rerank", action="store_true", help="return the first stage's own ranking (e.g. BM25 alone)")
    group.add_argument("--prune-alpha", type=float, default=None, help="drop candidates scoring below (1 - alpha) x the k-th best first-stage score")
    group.add_argument("--early-exit", type=int, default=None, metavar="BETA", help="stop reranking after BETA consecutive candidates miss the top-k")
    group.add_argument("--fusion", choices=FUSIONS, default=None, help="fuse MaxSim with first-stage scores (rrf, linear), or with other signals (weighted, with --weights)")
    group.add_argument("--fusion-weight", type=float, default=None, help=f"MaxSim's weight in linear fusion of z-scores (default {FUSION_WEIGHT})")
    group.add_argument("--weights", type=_weights, default=None, metavar="SIGNAL=W,...", help=f"weighted fusion: each signal's weight, e.g. maxsim=0.45,pooled=0.25,bm25s=0.3 (signals: {', '.join(SIGNALS)})")
    group.add_argument("--dense-share", type=float, default=None, help=f"hybrid first stages (fde+bm25s, ...): share of the candidates taken from the vector stage (default {DENSE_SHARE})")
    group.add_argument("--nprobe", type=int, default=None, help=f"FDE in a faiss IVF index: lists probed per query (default {FDE_NPROBE})")
    group.add_argument("--ef-search", type=int, default=None, help=f"FDE in a faiss HNSW index: search breadth (default {FDE_EF_SEARCH})")
    group.add_argument("--centroid-probe", type=int, default=None, help=f"the centroid stage: nearest centroids probed per query token (default {CENTROID_PROBE})")
    group.add_argument("--prf", choices=PRF, default=None, help="pseudo-relevance feedback: rm3 expands the Lucene bm25 first stage's query (pyserini's, 10 terms from the top 10 documents); colbert searches again with the query's token vectors expanded by its top documents' (ColBERT-PRF)")
    group.add_argument("--group", choices=("documents", "passages"), default=None, help="an index of passages: return documents by their best passage (default) or the passages")
    group.add_argument(
        "--filter", type=_filter, default=None, metavar="JSON",
        help='keep documents whose metadata match, e.g. \'{"year": {"$gte": 2020}, "source": {"$in": ["pubmed", "arxiv"]}}\' ($eq $ne $in $nin $gt $gte $lt $lte $and $or $not)',
    )


def _weights(text: str) -> dict:
    weights = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        try:
            weight = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected SIGNAL=WEIGHT pairs separated by commas, e.g. maxsim=0.6,bm25s=0.4; got {part!r}") from None
        if name.strip() in weights:
            raise argparse.ArgumentTypeError(f"{name.strip()} is given two weights; give each signal one")
        weights[name.strip()] = weight
    return weights


def search_options(args) -> dict:
    """The options of :class:`mvr.search.SearchOptions` given on the command line (first stage and
    candidates apart), and the preset named; those not given are left out."""
    given = {
        "preset": args.preset,
        "rerank": False if args.no_rerank else None,
        "prune_alpha": args.prune_alpha,
        "early_exit": args.early_exit,
        "fusion": args.fusion,
        "fusion_weight": args.fusion_weight,
        "weights": args.weights,
        "dense_share": args.dense_share,
        "nprobe": args.nprobe,
        "ef_search": args.ef_search,
        "centroid_probe": args.centroid_probe,
        "filter": args.filter,
        "group": args.group,
        "prf": args.prf,
    }
    return {k: v for k, v in given.items() if v is not None}


def _filter(text: str) -> dict:
    from ..errors import QueryError
    from ..storage.metadata import FILTER_TOO_DEEP, check_filter

    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc.msg} at column {exc.colno}): {text!r}") from None
    except RecursionError:  # the decoder recurses once per level, long before our depth check could run
        raise argparse.ArgumentTypeError(FILTER_TOO_DEEP) from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"a filter is a JSON object, got {text!r}")
    try:
        return check_filter(value)  # its shape now, before the index opens (fields: at search)
    except QueryError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_compaction(parser: argparse.ArgumentParser) -> None:
    d = IndexConfig()
    group = parser.add_argument_group("fewer and smaller vectors (docs/compression.md)")
    group.add_argument("--from", dest="source", default=None, metavar="INDEX", help="derive from this float16 index's stored vectors instead of encoding CORPUS")
    group.add_argument("--preset", choices=sorted(PRESETS), default=None, help="; ".join(f"{k}: {v['about']}" for k, v in PRESETS.items()).replace("%", "%%"))
    group.add_argument("--projection", default=None, metavar="FILE", help="apply a trained projection head (`mvr train-projection`) to every token vector, queries and documents")
    group.add_argument("--prune", default=None, help=f"drop document tokens by rule, comma list of {', '.join(PRUNE_RULES)}")
    group.add_argument("--prune-max-df", type=float, default=None, help=f"the df rule drops tokens found in more than this share of documents (default {d.prune_max_df})")
    group.add_argument("--cluster-ratio", type=float, default=None, help="cluster each document to ceil(ratio x its tokens) centroids")
    group.add_argument("--cluster-count", type=int, default=None, help="... or to at most this many centroids")
    group.add_argument("--cluster-method", choices=CLUSTER_METHODS, default=None, help=f"{' or '.join(CLUSTER_METHODS)} (default {d.cluster_method})")
    group.add_argument("--cluster-iters", type=int, default=None, help=f"k-means iterations (default {d.cluster_iters})")
    group.add_argument("--cluster-keep", default=None, help=f"token classes never pooled, comma list of {', '.join(KEEP_CLASSES)}, or none (default {','.join(d.cluster_keep) or 'none'})")
    group.add_argument("--cluster-idf-weight", type=float, default=None, help=f"Ward: scale tokens by idf ** W for the linkage so rare terms merge last (default {d.cluster_idf_weight:g})")
    group.add_argument("--codec", choices=tuple(CODECS), default=None, help=f"stored vectors: {', '.join(CODECS)} (default {d.codec})")
    group.add_argument("--codec-bits", type=int, choices=(1, 2, 4), default=None, help=f"residual bits per dimension (default {d.codec_bits})")
    group.add_argument("--codec-centroids", type=int, default=None, help="residual codec centroids (default: a power of two near 4 sqrt(vectors))")


def _names(text: str | None):
    return None if text is None else tuple(r for r in text.split(",") if r and r != "none")


def compaction(args) -> dict:
    """The compaction settings asked for: the preset's, then each flag given."""
    settings = {k: v for k, v in PRESETS[args.preset].items() if k != "about"} if args.preset else {}
    flags = {
        "projection": args.projection,
        "prune": _names(args.prune),
        "prune_max_df": args.prune_max_df,
        "cluster_ratio": args.cluster_ratio,
        "cluster_count": args.cluster_count,
        "cluster_method": args.cluster_method,
        "cluster_iters": args.cluster_iters,
        "cluster_keep": _names(args.cluster_keep),
        "cluster_idf_weight": args.cluster_idf_weight,
        "codec": args.codec,
        "codec_bits": args.codec_bits,
        "codec_centroids": args.codec_centroids,
    }
    settings.update({k: v for k, v in flags.items() if v is not None})
    if "cluster_count" in settings and args.cluster_ratio is None:
        settings.pop("cluster_ratio", None)
    from ..build import check_read, unread_settings

    given = {name for name, value in flags.items() if value is not None}
    for name, _ in unread_settings(IndexConfig(**settings)):
        if name not in given:  # a preset's, left unread by the flags given (--preset small --codec float16: its codec_bits)
            settings.pop(name)
    if args.source is None:  # a flag given that the build would not read (a derived index's settings are its source's, then these)
        check_read(IndexConfig(**settings), given)
    return settings


def _query_id(qid, where: str) -> str:
    """A query id as TREC runs need it (one field: no whitespace or control characters)."""
    from ..ids import check_id
    from ..errors import CorpusError, QueryError

    try:
        return check_id(qid, where, "change the query id")
    except CorpusError as error:
        raise QueryError(str(error).replace("document id", "query id")) from None


def _query_text(text: str, qid, where: str) -> str:
    from ..errors import QueryError

    if not text.strip():  # said here, where the line is known, not as "query #7 is empty" by the search
        raise QueryError(f"{where}: query {qid!r} is empty; give it text or remove the line.")
    return text


_QUERY_COLUMNS = [[name, text] for name in ("id", "_id", "qid", "query_id", "query-id") for text in ("text", "query")]


def read_queries(path: Path) -> list[tuple[str, str]]:
    """``(id, text)`` of each query in a JSONL file of ``{_id|id, text}`` or a TSV of ``id<TAB>text``
    (UTF-8, a byte order mark allowed; a first line of column names, such as ``qid<TAB>query``, skipped)."""
    from ..corpus import column_names, read_jsonl_objects, repeated, text_lines
    from ..errors import QueryError

    if not path.is_file():
        raise QueryError(f"{path} is a folder; --queries takes a file of queries (JSONL, or id<TAB>text)." if path.is_dir() else f"queries file not found: {path}.")
    queries, header = [], False
    if path.suffix.lower() in (".jsonl", ".json"):
        for line, obj in read_jsonl_objects(path, QueryError):
            qid, text = obj.get("_id", obj.get("id")), obj.get("text")
            if qid is not None:
                qid = _query_id(qid, f"{path}:{line}")
            if qid is None or not isinstance(text, str):
                raise QueryError(f'{path}:{line}: each query needs "_id" (or "id") and "text".')
            queries.append((str(qid), _query_text(text, qid, f"{path}:{line}")))
        form = 'one JSON object {"_id": ..., "text": ...} per line'
    else:
        for line, row in text_lines(path, QueryError, newline="\n"):
            row = row.rstrip("\r\n")
            if line == 1 and column_names(row, [["query-id", "corpus-id", "score"]]):
                raise QueryError(f"{path} holds relevance judgements (query-id, corpus-id, score), not queries: give the queries' file (a BEIR dataset's queries.jsonl).")
            if line == 1 and column_names(row, _QUERY_COLUMNS):  # as a corpus's
                header = True
            elif row.strip():
                parts = row.split("\t", 1)
                if len(parts) != 2:
                    raise QueryError(f"{path}:{line}: expected id<TAB>text (a file of JSON lines is read as such when its name ends in .jsonl).")
                queries.append((_query_id(parts[0], f"{path}:{line}"), _query_text(parts[1], parts[0], f"{path}:{line}")))
        form = "one id<TAB>text per line"
    if not queries:
        # an empty file would otherwise search nothing and exit 0, as if every query had run
        raise QueryError(f"{path} holds no queries ({'only a line of column names' if header else 'the file is empty or blank'}); expected {form}.")
    twice = repeated(qid for qid, _ in queries)
    if twice is not None:  # a run holds one ranking per query id: one of the two would be lost
        raise QueryError(f"{path}: the query id {twice!r} is given twice; give each query its own id.")
    return queries


def check_output(path: Path | None, option: str) -> None:
    """A one-line error before any work where ``path`` (an output file) cannot be written: a folder
    stands there, or a file stands where one of its folders should be."""
    if path is None:
        return
    if path.is_dir():
        raise ConfigError(f"{option} {path} is a folder; name a file to write.")
    folder = next((parent for parent in path.parents if parent.exists()), None)
    if folder is not None and not folder.is_dir():
        raise ConfigError(f"{option} {path}: {folder} is a file, not a folder; name a file in a folder.")


def write_output(path: Path, text: str, option: str) -> None:
    """``text`` into the file ``path`` (its folders made), an OSError as a one-line error."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot write {option} {path}: {error.strerror or error}.") from None


def warn(*warnings: str) -> None:
    """Each warning on its own line of standard error, as mvr's warnings are said."""
    for warning in warnings:
        print(f"mvr: warning: {warning}", file=sys.stderr)
