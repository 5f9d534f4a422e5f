"""Named search presets, saved in an index's commit: what a search does when the caller names no
first stage. A preset is a set of :class:`mvr.search.SearchOptions` values (first stage,
candidates, fusion and its weights, ...); an index may hold several and name one its default.

- ``index.search(q)``: the default preset, if the index has one (else the default first stage);
- ``index.search(q, first_stage="fde")``: no preset; the options given, nothing else;
- ``index.search(q, preset="best", candidates=50)``: that preset, with the options given over its own;
  options that change how candidates are scored (``fusion``, ``weights``, ``fusion_weight``,
  ``rerank=False``, ``prune_alpha``, ``early_exit``) replace the preset's fusion as a whole
  (``weights`` alone keep it weighted);
- ``index.search(q, preset="none")``: no preset.

``mvr index --preset best`` saves ``best`` of :data:`mvr.config.SEARCH_PRESETS` as the default;
``mvr tune`` learns a preset's fusion weights on training queries and saves it (:mod:`mvr.tuning`).
"""

from __future__ import annotations

import dataclasses

from .errors import IndexFormatError, QueryError, shown
from .fusion import stage_signals
from .registry import EXHAUSTIVE, HYBRIDS, parse_stage

NONE = "none"
_FUSION = ("fusion", "weights", "fusion_weight")  # one group: the caller's replace the preset's
_SCORING = {*_FUSION, "prune_alpha", "early_exit"}


def saved(record: dict, replace_damaged: bool = False) -> dict:
    """The presets part of a commit record: ``{"default": name or None, "presets": {name: options}}``;
    an IndexFormatError where it is damaged (``replace_damaged``: none, for a save that replaces them)."""
    search = record.get("search") or {}
    try:
        found = {"default": search.get("default"), "presets": dict(search.get("presets") or {})}
        problem = _damage(found)
    except (AttributeError, TypeError, ValueError) as error:  # not a mapping where one belongs
        problem = f"{type(error).__name__}: {error}"
    if problem is None or replace_damaged:
        return found if problem is None else {"default": None, "presets": {}}
    raise IndexFormatError(f"the index's saved search presets are damaged ({problem}); search with first_stage= (CLI --first-stage), "
                           "and save a preset again (mvr tune --save, Index.save_search_preset), which replaces them.")


def _damage(found: dict) -> str | None:
    for name, options in found["presets"].items():
        if not isinstance(name, str) or not isinstance(options, dict):
            return f"preset {shown(name)} is {shown(options)}"
        count = options.get("candidates")
        if count is not None and (not isinstance(count, int) or isinstance(count, bool) or count < 1):
            return f"preset {name!r} has candidates {shown(count)}"
    if found["default"] is not None and found["default"] not in found["presets"]:
        return f"its default {shown(found['default'])} is not one of them"
    return None


def resolve(found, first_stage: str | None, candidates: int | None, options: dict, k: int = 1) -> tuple[str | None, int | None, dict, str | None]:
    """``(first_stage, candidates, options, preset name)`` of a search for ``k`` hits of an index
    whose presets are ``found`` (:func:`saved`, or what gives them: read only where a preset is
    asked for): the preset's values under the caller's (``options`` may hold ``preset``: a name, or
    "none"); a preset's candidates grow to ``k`` as the default's do (the caller's own are kept)."""
    options = dict(options)
    name = options.pop("preset", None)
    if name == NONE or (name is None and first_stage is not None):
        return first_stage, candidates, options, None
    found = found() if callable(found) else found
    if name is None:
        if found["default"] is None:
            return first_stage, candidates, options, None
        name = found["default"]
    if not isinstance(name, str) or name not in found["presets"]:
        raise QueryError(f"this index has no search preset {name!r}; its presets: {', '.join(found['presets']) or 'none'} (mvr tune saves one).")
    base = dict(found["presets"][name])
    if options.keys() & _SCORING or options.get("rerank") is False:
        for key in _SCORING if options.get("rerank") is False else _FUSION:  # no rerank: none of the preset's scoring applies
            base.pop(key, None)
        if "weights" in options and "fusion" not in options:
            options["fusion"] = "weighted"
    if first_stage == EXHAUSTIVE:  # the caller scores every document: the preset's way of choosing candidates does not apply
        base = {key: value for key, value in base.items() if key not in (*_SCORING, "candidates", "rerank", "dense_share")}
    merged = {**base, **options}
    stage, count = merged.pop("first_stage", None), merged.pop("candidates", None)
    if "dense_share" not in options and (first_stage or stage) is not None and (first_stage or stage) not in HYBRIDS:  # the preset's split of a hybrid it no longer searches
        merged.pop("dense_share", None)
    if "fusion_weight" not in options and merged.get("fusion") != "linear":  # saved beside another fusion, before that was refused: it was never read
        merged.pop("fusion_weight", None)
    if "prune_alpha" not in options and merged.get("rerank") is False:  # likewise beside rerank=False
        merged.pop("prune_alpha", None)
    return first_stage or stage, candidates if candidates is not None or count is None else max(count, k), merged, name


def check_name(name) -> None:
    """A QueryError unless ``name`` can name a saved preset."""
    if not isinstance(name, str) or not name.replace("-", "").replace("_", "").isalnum() or name == NONE:
        raise QueryError(f"a preset name is letters, digits, - and _ (not {NONE!r}); got {name!r}.")


def create(options_class, preset: str | None, **values):
    """``options_class.create(**values)``, a QueryError saying so when the search ``preset`` gave part of them."""
    try:
        return options_class.create(**values)
    except QueryError as error:
        if preset is None:
            raise
        raise QueryError(f"{error} (The search preset {preset!r} gave the rest: name the first stage, or preset='none'.)") from None


def preset_stages(found: dict) -> dict:
    """The stages that the saved presets ``found`` read and that a new segment can build without
    settings (pooled, centroids, bm25, bm25s): what an index left without segments adds back."""
    names = set()
    for options in found["presets"].values():
        names.update(parse_stage(options.get("first_stage") or "exhaustive"))
        names.update(stage_signals(options.get("weights")))
    return {name: None for name in sorted(names) if name in ("pooled", "centroids", "bm25", "bm25s")}


def _plain(value):
    """JSON values from NumPy scalars (a weight given as np.float32, a count as np.int64)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value.item() if hasattr(value, "item") and hasattr(value, "dtype") else value


def check(index, name: str, options: dict) -> dict:
    """``options`` validated as a preset of ``index`` (JSON values; every stage it reads built)."""
    from .search import SearchOptions, check_stages

    if not isinstance(options, dict):
        raise QueryError(f"a preset is a mapping of search options such as {{\"first_stage\": \"pooled+bm25s\"}}, got {type(options).__name__}.")
    if not all(isinstance(key, str) for key in options):
        raise QueryError(f"a preset's options are named by strings, got {shown(sorted(map(repr, options)))}.")
    options = _plain(options)
    if "dense_share" in options and options.get("first_stage") is None:  # the stage it splits, named: the default may be none
        raise QueryError(f"preset {name!r}: dense_share splits a hybrid first stage's candidates; name the stage in the preset, such as \"fde+bm25s\".")
    if options.get("prf") == "rm3" and "bm25" not in str(options.get("first_stage")).split("+"):
        raise QueryError(f"preset {name!r}: prf (query expansion of the Lucene bm25 stage) needs a first_stage with bm25 in the preset, such as \"bm25\" or \"fde+bm25\".")
    check_name(name)
    if options.keys() & {"preset", "filter", "k", "threads"}:
        raise QueryError("a preset holds search options, not another preset, a filter, k or threads (each search gives its own).")
    opts = SearchOptions.create(**options)
    if opts.prf == "colbert" and not all(segment.token_ids() is not None for segment in index.segments):
        raise QueryError(f"preset {name!r}: prf=\"colbert\" reads the stored token ids, which index {index.name!r} does not hold (clustered vectors, or an older build); save it without prf.")
    if opts.group == "passages" and not index.config.passage_tokens:  # every default search would fail, naming an option nobody gave
        raise QueryError(f"preset {name!r}: group=\"passages\" applies to an index of passages (mvr index --passage-tokens N); {index.name!r} holds whole documents.")
    for stage in [*parse_stage(opts.first_stage or "exhaustive"), *stage_signals(opts.weights)]:
        if not index.has_stage(stage):
            raise QueryError(f"index {index.name!r} has no {stage} stage, which preset {name!r} reads; build it first.")
    try:  # a probing option no stage of it reads (nprobe on a flat FDE): every search of the preset would carry it unread
        check_stages(opts if opts.first_stage else dataclasses.replace(opts, first_stage=index.default_stage), index._state, options)
    except QueryError as error:
        raise QueryError(f"preset {name!r}: {error}") from None
    return {**{k: v for k, v in options.items() if v is not None}, **({"weights": opts.weights} if opts.weights else {})}
