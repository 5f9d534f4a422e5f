"""``mvr info``: what an index holds, how it was built, and (``--verify``) whether its files are intact."""

from __future__ import annotations

import argparse
import json

from .common import add_common


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("info", help="describe an index")
    p.add_argument("index", help="index name or path")
    p.add_argument("--json", action="store_true")
    p.add_argument("--verify", action="store_true", help="also check all of it: every file of the index and its first stages against their manifests, counts and offsets, every stored vector")
    add_common(p)
    return p


def _projection(index, info) -> str:
    head = index.projection
    if hasattr(head, "kind"):  # a trained head (mvr train-projection), not a PCA matrix
        return f" (projection head: {head.kind}, {head.shape[0]} -> {head.shape[1]}{', query-token weights' if head.query_weight is not None else ''})"
    return f" (PCA from {info['counts']['model_dim']})" if info["dim"] != info["counts"].get("model_dim", info["dim"]) else ""


def run(args) -> int:
    from ..index import Index

    if args.verify:
        index, info = _verified(args)
    else:
        index = Index.open(args.index, home=args.index_dir)
        info = index.info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    enc = info["encoder"]
    rows = [
        ("path", info["path"]),
        ("documents", f"{info['documents']}" + (f" ({info['deleted_documents']} more deleted, dropped at the next merge)" if info.get("deleted_documents") else "")),
        ("segments", f"{len(info['segments'])} at generation {info['generation']}" + (" (format version 1, read-only: `mvr upgrade` converts it)" if info["generation"] == 0 else "")),
        ("token vectors", f"{info['tokens']} ({info['vectors_per_document']['mean']} per document, max {info['vectors_per_document']['max']})"),
        ("dim", f"{info['dim']}" + _projection(index, info)),
        ("stored as", _stored_as(index.config, info["counts"])),
        ("bytes per token", f"{info['bytes_per_token']} (per document token before pruning: vector data, codebooks, offsets)"),
        ("index size", f"{info['index_bytes'] / 2**20:.1f} MiB, and {sum(info['stages'].values()) / 2**20:.1f} MiB of first stages"),
        ("encoder", f"{enc['name']} [{enc['kind']}] sha256 {enc['weights_sha256'][:12]}; query {enc['query_maxlen']} / doc {enc['doc_maxlen']} tokens"),
        (
            "built",
            f"{info['created']} in {info['build'].get('seconds', '?')} s "
            + (f"from {info['build']['derived_from']} (no re-encoding)" if info["build"].get("derived_from") else f"({info['build'].get('docs_per_second', '?')} docs/s)"),
        ),
        ("truncated documents", info["counts"].get("truncated_documents", 0)),
    ]
    if index.config.passage_tokens:
        counts = info["counts"]
        rows.insert(2, ("passages", f"{counts['source_documents']} documents ({counts['split_documents']} of them split) stored as passages of at most {index.config.passage_tokens} tokens, "
                                    f"stride {index.config.passage_stride} (the count above is of passages; search returns documents by their best passage)"))
    fde = info["fde"]
    if fde:
        cfg = fde["config"]
        rows.append(
            (
                "FDE first stage",
                f"k_sim {cfg['k_sim']}, d_proj {cfg['d_proj'] or 'identity'}, reps {cfg['reps']}, fill {'on' if cfg['fill_empty'] else 'off'}"
                f"{', final ' + str(cfg['d_final']) if cfg['d_final'] else ''}: {fde['fde_dim']} dims, "
                f"{fde['bytes_per_document'] / 1024:.1f} KiB/document, faiss {cfg['factory']}"
                + (f" (built as {fde['factory_used']} for now: too few documents to train it)" if fde.get("factory_used", cfg["factory"]) != cfg["factory"] else ""),
            )
        )
    elif not index.segments and index.config.fde is not None:  # emptied by deletes: built again with the next add
        rows.append(("FDE first stage", "built with the documents an add brings (none now)"))
    else:
        rows.append(("FDE first stage", "none (add one with `mvr fde`)"))
    rows.append(("first stages", ", ".join(f"{name} ({size / 2**20:.1f} MiB)" for name, size in info["stages"].items()) or "none"))
    presets = info["search_presets"]
    if presets.get("damaged"):
        rows.append(("search presets", presets["damaged"]))
    if presets["default"]:
        rows.append(("default search", f"search preset {presets['default']!r}: {_options(presets['presets'][presets['default']])}"))
    else:
        rows.append(("default search", info["default_stage"]))
    for name, options in presets["presets"].items():
        if name != presets["default"]:
            rows.append((f"preset {name!r}", _options(options)))
    if args.verify:
        stages = ", ".join(info["stages"]) or "no first stage"
        rows.append(("verified", f"every file of the index and of its first stages ({stages}) matches its manifest; {info['tokens']} token vectors, all finite and non-zero"))
    for key, value in rows:
        print(f"{key:>20}  {value}")
    return 0


def _verified(args):
    """The index and its info, after checking all of it: every component's files against its own
    manifest, the counts and offsets against the files, every stored vector. A problem raises one
    line naming each damaged component or file (``--json``: printed first, with ``problems``)."""
    from ..errors import IndexFormatError
    from ..index import Index
    from ..storage import locate
    from ..storage.validate import repair_advice, scan_tokens, verify_files

    path = locate(args.index, args.index_dir)
    index = info = refused = None
    try:
        index = Index.open(path)  # first: opening puts back a first stage that a killed rebuild left hidden mid-swap
    except IndexFormatError as error:  # what opening refuses (said once where verify_files said it too)
        refused = str(error)
    problems = verify_files(path)
    try:
        for segment in index.segments if index is not None else ():
            problems += [f"{segment.path.name}: {line}" if len(index.segments) > 1 else line for line in scan_tokens(segment.tokens)]
        info = index.info() if index is not None else None
    except IndexFormatError as error:
        refused = str(error)
    problems += [refused] if refused else []
    problems += [info["search_presets"]["damaged"]] if info and info["search_presets"].get("damaged") else []
    problems = list(dict.fromkeys(problems))
    if problems:
        if args.json:
            print(json.dumps({**(info or {"path": str(path)}), "verified": False, "problems": problems}, indent=2))
        joined = "; ".join(problem.rstrip(". ") for problem in problems)  # each its own sentence, none ending the line early
        raise IndexFormatError(f"{path} is damaged: {joined}. To mend it, {repair_advice(path, problems)}.")
    return index, {**info, "verified": True, "problems": []}


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


def _options(options: dict) -> str:
    return ", ".join(f"{k} {', '.join(f'{n} {w:g}' for n, w in v.items()) if isinstance(v, dict) else v}" for k, v in options.items())
