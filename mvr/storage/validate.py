"""An index checked against its own files: on open (cheap) and by ``mvr info --verify`` (all of it).

The Numba kernels trust their inputs: a count or an offset that disagrees with the arrays makes
them read out of bounds (a crash, or silently wrong scores). So an index is opened only after

- its manifest's fields have the types the readers expect (:func:`check_fields`, :func:`index_config`);
- every ``.npy`` of it and of its first stages has a readable header, holds numbers (never Python
  objects) and is exactly as long as its header says (:func:`npy_header`);
- each array has the shape and type its counts imply, and the offsets (``doc_offsets.npy``,
  ``text_offsets.npy``, ``title_offsets.npy``) start at 0, never decrease and end at the row
  count or the blob's size; a residual store's centroid ids name existing centroids
  (:func:`check_arrays`).

Opening reads the headers, the offset arrays and the centroid ids only. :func:`verify_files`
(every file of the index and of each first stage against its manifest's sha256, and each stage
against what it was built from) and :func:`scan_tokens` (every stored vector decoded: none NaN,
infinite or all zeros) read everything, for ``mvr info --verify``. A first stage that lost its
manifest, or that its segment's config records but is not there, is damage too
(:func:`lost_stages`): it must not silently vanish from the searches. Commands that rebuild a
stage open the index with that stage unchecked (:func:`replacing`).
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

import numpy as np

from ..config import IndexConfig
from ..errors import ConfigError, IndexFormatError, IndexNotFoundError, is_number
from ..registry import CODECS, STAGES, store_class
from ..threads import load_npy, read_npy_header
from .formats import SEGMENT_FORMAT, TOKEN_IDS, rebuild_command, stage_format, stage_mismatch, upgrade_config
from .manifest import MANIFEST, index_folder, read_manifest, verify

_SCAN_ROWS = 1 << 16
_ID_ROWS = 1 << 22
_SHOWN = 5  # row numbers named in a problem
_KINDS = {"text": lambda d: d.kind in "US", "integers": lambda d: d.kind in "iu", "floats": lambda d: d.kind == "f"}
# Fields of an index manifest that the readers use, and their types.
_SECTIONS = {"config": dict, "encoder": dict, "counts": dict, "build": dict, "created": str}
_COUNTS = ("documents", "tokens", "dim", "max_doc_len")
_OPTIONAL_COUNTS = ("model_dim", "source_tokens", "truncated_documents", "skipped_empty_documents", "pruned_tokens")
ENCODER_FIELDS = {"name": str, "source": str, "weights_sha256": str, "kind": str, "dim": int, "query_maxlen": int, "doc_maxlen": int}
_REPLACING: ContextVar[frozenset] = ContextVar("mvr_replacing", default=frozenset())  # first stages opening leaves unchecked
# The files of each codec, as storage/tokens.py and storage/residual.py write them: shape (None:
# any length) and dtype, in terms of the row count "n", the width "dim" and, for the residual
# codec, its packed code bytes per row, bucket levels and cutoffs (from config.codec_bits).
def damaged(index: Path, name: str, what: str, fix: str = "rebuild it with `mvr index`") -> IndexFormatError:
    """The one-line error for a damaged file ``name`` (relative to ``index``, an index folder or one
    of its segments); the command named is the index folder's (:func:`index_folder`)."""
    return IndexFormatError(f"{Path(index) / name}: {what}; the index is damaged: `mvr info {index_folder(index)} --verify` checks all of it, then {fix}.")


@contextmanager
def replacing(*stages: str):
    """Within it, opening an index leaves its first ``stages`` unchecked (their files, and whether
    they are there at all): what `mvr fde`, `mvr sparse`, ... open an index with, to rebuild them."""
    token = _REPLACING.set(_REPLACING.get() | frozenset(stages))
    try:
        yield
    finally:
        _REPLACING.reset(token)


def _describe(fields: dict, key: str) -> str:
    if key not in fields:
        return "nothing (the field is missing)"
    value = fields[key]
    return type(value).__name__ if isinstance(value, (dict, list)) else f"{type(value).__name__} {value!r}"


def _is_count(value, minimum: int = 0) -> bool:
    return is_number(value, whole=True) and value >= minimum


# -- the manifest ------------------------------------------------------------------------------
def check_fields(path: Path, manifest: dict, file: str = MANIFEST) -> None:
    """Raise :class:`IndexFormatError` where a field the readers use is missing or of the wrong type."""
    for key, kind in _SECTIONS.items():
        if not isinstance(manifest.get(key), kind):
            raise damaged(path, file, f"'{key}' must be {'an object' if kind is dict else 'a string'}, got {_describe(manifest, key)}")
    bytes_per_token = manifest.get("bytes_per_token")
    if not is_number(bytes_per_token):
        raise damaged(path, file, f"'bytes_per_token' must be a number, got {_describe(manifest, 'bytes_per_token')}")
    counts = manifest["counts"]
    for key in _COUNTS:
        if not _is_count(counts.get(key), 1 if key == "dim" else 0):
            raise damaged(path, file, f"counts.{key} must be a whole number{' >= 1' if key == 'dim' else ' >= 0'}, got {_describe(counts, key)}")
    for key in _OPTIONAL_COUNTS:
        if key in counts and not _is_count(counts[key]):
            raise damaged(path, file, f"counts.{key} must be a whole number >= 0, got {_describe(counts, key)}")
    encoder = manifest["encoder"]
    for key, kind in ENCODER_FIELDS.items():
        value = encoder.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise damaged(path, file, f"encoder.{key} must be {'a string' if kind is str else 'a whole number'}, got {_describe(encoder, key)}")


def index_config(path: Path, manifest: dict, file: str = MANIFEST) -> IndexConfig:
    """The saved config of an index or segment (any layout of format 1), after :func:`check_fields`;
    ``file``: where ``manifest`` was read from (named in errors)."""
    check_fields(path, manifest, file)
    try:
        return IndexConfig.from_dict(upgrade_config(manifest["config"]))
    except (ConfigError, TypeError, ValueError) as error:
        raise damaged(path, file, f"its config cannot be read ({str(error).rstrip('.')})") from None


# -- .npy files ----------------------------------------------------------------------------------
def npy_header(index: Path, name: str, fix: str = "rebuild it with `mvr index`") -> tuple[tuple, np.dtype]:
    """Shape and dtype of ``index/name`` from its header, without reading the data; refuses a
    file that is not a ``.npy``, holds Python objects (loading it would run pickled code) or
    whose length is not what its header says."""
    file = Path(index) / name
    try:
        with open(file, "rb") as handle:
            shape, _, dtype = read_npy_header(handle)
            start = handle.tell()
    except (OSError, ValueError, EOFError, SyntaxError, TypeError) as error:
        raise damaged(index, name, f"not a readable .npy array ({str(error).strip() or type(error).__name__})", fix) from None
    if dtype.hasobject:
        raise damaged(index, name, f"holds Python objects (dtype {dtype}), not numbers or text; mvr never loads pickled data", fix)
    expected = start + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if file.stat().st_size != expected:
        raise damaged(index, name, f"is {file.stat().st_size} bytes, its header ({dtype} {shape}) says {expected}", fix)
    return tuple(shape), dtype


def load_array(index: Path, name: str, mmap: bool = False, fix: str = "rebuild it with `mvr index`") -> np.ndarray:
    """``index/name`` loaded (memory-mapped with ``mmap``), its header checked first."""
    npy_header(index, name, fix)
    try:
        return load_npy(Path(index) / name, mmap_mode="r" if mmap else None)
    except (OSError, ValueError, EOFError) as error:
        raise damaged(index, name, f"cannot be read ({error})", fix) from None


def _expect(index: Path, name: str, shape: tuple, dtype: str) -> None:
    """Raise unless ``name``'s header has ``shape`` (None: any length there) and ``dtype`` (a
    numpy name, or a kind of :data:`_KINDS`)."""
    got, have = npy_header(index, name)
    if len(got) != len(shape) or any(want is not None and want != size for want, size in zip(shape, got)):
        want = "(" + ", ".join("any" if w is None else str(w) for w in shape) + ("," if len(shape) == 1 else "") + ")"
        raise damaged(index, name, f"has shape {got}, the manifest's counts say {want}")
    if not (_KINDS[dtype](have) if dtype in _KINDS else have == np.dtype(dtype)):
        raise damaged(index, name, f"has dtype {have}, expected {dtype}")


def _offsets(index: Path, name: str, n: int, end: int, what: str) -> np.ndarray:
    """An int64 offsets file of ``n + 1`` entries from 0 to ``end``, never decreasing."""
    _expect(index, name, (n + 1,), "int64")
    offsets = load_array(index, name)
    if offsets[0] != 0:
        raise damaged(index, name, f"starts at {offsets[0]}, not 0")
    falls = np.flatnonzero(np.diff(offsets) < 0)
    if len(falls):
        raise damaged(index, name, f"decreases at entry {falls[0] + 1} ({offsets[falls[0]]} then {offsets[falls[0] + 1]}): offsets never decrease")
    if offsets[-1] != end:
        raise damaged(index, name, f"ends at {offsets[-1]}, but {what} is {end}")
    return offsets


def check_arrays(path: Path, manifest: dict, config: IndexConfig) -> np.ndarray:
    """Check every array of the index against its counts and each other (headers, and the offsets
    in full); returns ``doc_offsets``, int64 ``(n_docs + 1,)``."""
    counts, files = manifest["counts"], manifest["files"]
    n_docs, n_tokens, dim = counts["documents"], counts["tokens"], counts["dim"]
    for name in files:
        if name.endswith(".npy"):
            npy_header(path, name)
    for name in store_files(config.codec):
        if name not in files:
            raise damaged(path, name, f"is not listed in the manifest, but the manifest's codec {config.codec!r} keeps its vectors there")
    for name in ("doc_offsets.npy", "doc_ids.npy", "doc_ids_order.npy", "text.bin", "text_offsets.npy", "title.bin", "title_offsets.npy"):
        if name not in files:
            raise damaged(path, name, "is not listed in the manifest")
    for name, (shape, dtype) in store_class(config.codec).layout(n_tokens, dim, config).items():
        _expect(path, name, shape, dtype)
    if config.codec == "residual":  # the decoding kernel reads centroids[id] unchecked
        ids, n_centroids = load_array(path, "centroid_ids.npy", mmap=True), npy_header(path, "centroids.npy")[0][0]
        top = max((int(ids[start : start + _ID_ROWS].max()) for start in range(0, len(ids), _ID_ROWS)), default=-1)
        if top >= n_centroids:
            raise damaged(path, "centroid_ids.npy", f"names centroid {top}, but centroids.npy holds {n_centroids}")
    doc_offsets = _offsets(path, "doc_offsets.npy", n_docs, n_tokens, "the manifest's counts.tokens")
    longest = int(np.diff(doc_offsets).max(initial=0))
    if counts["max_doc_len"] != longest:
        raise damaged(path, MANIFEST, f"counts.max_doc_len is {counts['max_doc_len']}, but the longest document in doc_offsets.npy has {longest} vectors")
    _expect(path, "doc_ids.npy", (n_docs,), "text")
    _expect(path, "doc_ids_order.npy", (n_docs,), "integers")
    for blob in ("text", "title"):
        _offsets(path, f"{blob}_offsets.npy", n_docs, (path / f"{blob}.bin").stat().st_size, f"the size of {blob}.bin")
    if (path / TOKEN_IDS).is_file():
        _expect(path, TOKEN_IDS, (n_tokens,), "integers")
    if (path / "projection.npy").is_file():
        _expect(path, "projection.npy", (counts.get("model_dim", manifest["encoder"]["dim"]), dim), "floats")
    for stage in stage_folders(path):
        if stage.name not in _REPLACING.get():
            fix = f"rebuild it with `{rebuild_command(stage.name, index_folder(path))}`"
            for file in sorted(stage.glob("*.npy")):
                npy_header(path, f"{stage.name}/{file.name}", fix)
    for error in lost_stages(path, manifest, config):
        raise error
    return doc_offsets


def lost_stages(path: Path, manifest: dict, config: IndexConfig) -> list[IndexFormatError]:
    """The first stages of ``path`` (a segment, or a version-1 index) that are there without their
    manifest, or (a segment) that its config records but are not there at all, as errors naming
    the command that rebuilds each; those being rebuilt (:func:`replacing`) are left out."""
    # what a build with this config made (mvr/segment_build.py, planned_stages)
    made = {"fde": config.fde is not None, "centroids": bool(config.centroid_stage), "pooled": config.pooled, "splade": config.splade_model is not None}
    recorded = {name for name in STAGES if made.get(name, name in config.sparse)} if manifest.get("format") == SEGMENT_FORMAT else set()
    errors = []
    for name in STAGES:
        folder = Path(path) / name
        if name in _REPLACING.get() or (folder / MANIFEST).is_file():
            continue
        fix = f"rebuild it with `{rebuild_command(name, index_folder(path))}`"
        if folder.is_dir():
            errors.append(damaged(path, f"{name}/{MANIFEST}", f"missing, so the {name} first stage in that folder cannot be read", fix))
        elif name in recorded:
            errors.append(damaged(path, name, f"missing: the {name} first stage that the segment's config records is not there", fix))
    return errors


def repair_advice(path: Path, problems: list[str]) -> str:
    """What mends the ``problems`` :func:`verify_files` and opening found in the index at ``path``:
    the rebuild of each first stage named when they all lie in first stages (their own files, or
    built from other vectors), else the index built again."""
    import re

    from .commits import SEGMENTS

    where = re.compile(rf"(?:{SEGMENTS}/[^/:]+/)?({'|'.join(map(re.escape, STAGES))})[/:]")
    named = [where.match(problem.replace(f"{Path(path)}/", "", 1)) for problem in problems]
    if not all(named):
        return "build the index again with `mvr index` (or put back a copy of it)"
    stages = dict.fromkeys(found.group(1) for found in named)
    return "rebuild " + " and ".join(f"`{rebuild_command(stage, Path(path))}`" for stage in stages)


def store_files(codec: str) -> tuple[str, ...]:
    """The files of the token store of ``codec`` (``files[0]`` identifies the vectors)."""
    return store_class(codec).files if codec in CODECS else ()


def stage_folders(path: Path) -> list[Path]:
    """The first-stage folders of an index: its subfolders with a manifest."""
    return sorted(p for p in Path(path).iterdir() if p.is_dir() and not p.name.startswith(".") and (p / MANIFEST).is_file())


# -- mvr info --verify -------------------------------------------------------------------------
def verify_files(path: Path) -> list[str]:
    """Every file of the index against the manifests and commit that list it: each segment's files
    and first stages (and each stage against the vectors or ids it was built from; a lost one:
    :func:`lost_stages`), the current commit and its deletion bitmaps. One line per problem
    (none: intact)."""
    from .commits import pin_current

    try:
        _, commit, pin = pin_current(path)  # pinned: a writer's collection leaves its files alone meanwhile
        if commit is None:
            return _verify_folder(path, read_manifest(path), "")
    except (IndexFormatError, IndexNotFoundError, OSError) as error:
        return [str(error)]
    try:
        return _verify_segments(Path(path), commit)
    finally:
        pin.release()


def _verify_segments(path: Path, commit: dict) -> list[str]:
    from .commits import SEGMENTS
    from .formats import SEGMENT_VERSION
    from .manifest import sha256_file

    problems = []
    for seg in commit["segments"]:
        folder = Path(path) / SEGMENTS / seg["name"]
        try:
            manifest = read_manifest(folder, SEGMENT_FORMAT, SEGMENT_VERSION)
        except (IndexFormatError, IndexNotFoundError) as error:
            problems.append(str(error))  # it names the file, as opening says it
            continue
        problems += _verify_folder(folder, manifest, f"{SEGMENTS}/{seg['name']}/")
        deletes = seg.get("deletes")
        if deletes is not None:
            file = folder / deletes["file"]
            if not file.is_file() or sha256_file(file) != deletes["sha256"]:
                problems.append(f"{SEGMENTS}/{seg['name']}/{deletes['file']}: missing, or its sha256 differs from the commit's")
    return problems


def _verify_folder(path: Path, manifest: dict, prefix: str) -> list[str]:
    files = manifest["files"]
    problems = [f"{prefix}{name}: its sha256 differs from the manifest's" for name in verify(path, manifest)]
    config = manifest.get("config") if isinstance(manifest.get("config"), dict) else {}
    vectors = store_files(config.get("codec", "float16")) if isinstance(config.get("codec", "float16"), str) else ()
    built_from = {"vectors_sha256": files.get(vectors[0], {}).get("sha256") if vectors else None, "doc_ids_sha256": files.get("doc_ids.npy", {}).get("sha256")}
    documents = manifest["counts"].get("documents") if isinstance(manifest.get("counts"), dict) else None
    for stage in stage_folders(path):
        try:
            stage_manifest = read_manifest(stage, *stage_format(stage.name))
        except (IndexFormatError, IndexNotFoundError) as error:
            problems.append(str(error))
            continue
        problems += [f"{prefix}{stage.name}/{name}: its sha256 differs from {stage.name}/{MANIFEST}" for name in verify(stage, stage_manifest)]
        other = stage_mismatch(stage_manifest, {key: want for key, want in built_from.items() if key in stage_manifest}, documents)
        if other:
            problems.append(f"{prefix}{stage.name}/: built for other {other} than the index holds; rebuild it with `{rebuild_command(stage.name, index_folder(path))}`")
    try:
        problems += [str(error) for error in lost_stages(path, manifest, IndexConfig.from_dict(upgrade_config(manifest.get("config"))))]
    except (ConfigError, TypeError, ValueError, AttributeError):
        pass  # a config that cannot be read: opening the index says so
    return problems


def scan_tokens(tokens, rows: int = _SCAN_ROWS) -> list[str]:
    """Every stored vector of ``tokens`` (an opened TokenStore), decoded ``rows`` at a time: the
    rows that are NaN or infinite, or all zeros (what a damaged file gives: a normalised vector
    never is), one line each kind (none: all finite and non-zero)."""
    name = type(tokens).files[0] if type(tokens).files else "the token store"
    bad: dict[str, list[int]] = {"are NaN or infinite": [], "are all zeros": []}
    counted = dict.fromkeys(bad, 0)
    for start in range(0, len(tokens), rows):
        block = tokens.decode(start, min(start + rows, len(tokens)))
        for what, found in (("are NaN or infinite", ~np.isfinite(block).all(axis=1)), ("are all zeros", ~block.any(axis=1))):
            at = np.flatnonzero(found)
            counted[what] += len(at)
            bad[what] += (at[: _SHOWN] + start).tolist()[: _SHOWN - len(bad[what])]
    return [
        f"{name}: {counted[what]} of {len(tokens)} token vectors {what} (rows {', '.join(map(str, bad[what]))}{', ...' if counted[what] > _SHOWN else ''})"
        for what in bad
        if counted[what]
    ]
