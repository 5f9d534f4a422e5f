"""Document metadata, stored by column, and filters over it compiled to row masks.

Each field has one type, fixed by its first value: ``string``, ``number`` (int or float),
``bool``, or ``strings`` (a list of strings). Its column is one or two ``.npy`` files, one value
per document row (an index's rows, in order), with a mark for documents that lack the field:

    metadata.json            schema: fields in order, each {"name", "type", "file"}; format version
    meta_K.npy               string / strings: int32 codes into meta_K.vocab.json (-1: absent);
                             number: float64 (NaN: absent); bool: int8 (-1: absent)
    meta_K.offsets.npy       strings only: int64 (n_docs + 1,), row i owns codes[offsets[i]:offsets[i + 1]]
    meta_K.vocab.json        string / strings: the distinct values, sorted

A filter is a JSON object in the style of MongoDB (and of Chroma's and Qdrant's filters):
``{"field": value}`` (equality; for a list field: the list holds the value), ``{"field": {"$eq" |
"$ne" | "$in" | "$nin" | "$gt" | "$gte" | "$lt" | "$lte": ...}}``, ``{"$and": [...]}``,
``{"$or": [...]}``, ``{"$not": {...}}``; several keys in one object must all hold. It becomes a
bool mask over the rows (NumPy, vectorised), which the first stages apply before they cut their
candidates (docs/architecture.md). A filter nests at most ``MAX_FILTER_DEPTH`` objects and
lists; a range bound may be any number (compared exactly with the float64 column, 1e20 too), an
equality only a number a row can hold (finite, at most 2**53 in magnitude). Columns rather than a
database: a mask over every document is a few vectorised comparisons of arrays that are
memory-mapped like the rest of the index.
"""

from __future__ import annotations

import bisect
import json
import math
from pathlib import Path

import numpy as np

from ..corpus import exact_number
from ..errors import CorpusError, IndexFormatError, QueryError, is_number, shown
from ..threads import load_npy
from .manifest import index_folder

SCHEMA = "metadata.json"
METADATA_FORMAT, METADATA_VERSION = "mvr-metadata", 1
_COMPARE = ("$gt", "$gte", "$lt", "$lte")
_OPERATORS = ("$eq", "$ne", "$in", "$nin", *_COMPARE)
# Objects and lists inside one another in one filter: far more than a real filter needs, few enough
# that the masks (which recurse) stay clear of Python's recursion limit; mask() checks it, so the
# Python API, the CLI (which also checks on reading --filter) and the HTTP server refuse alike.
MAX_FILTER_DEPTH = 100
# Fields an index holds (Elasticsearch's default mapping limit; each is a column of every segment
# that has it) and the length of a field's name.
MAX_FIELDS, MAX_FIELD_NAME = 1000, 256
FILTER_TOO_DEEP = f"the filter is nested too deeply (more than {MAX_FILTER_DEPTH} objects and lists inside one another): flatten it; $and and $or take any number of filters in one list."


def _kind(value) -> str:
    if value is None or isinstance(value, dict):
        return "nothing"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    return "strings" if isinstance(value, list) else "string"


class MetadataWriter:
    """Collects each document's metadata (in row order) and writes the columns on :meth:`close`."""

    def __init__(self, types: dict[str, str] | None = None):
        self.rows: list[dict] = []
        self.types: dict[str, str] = dict(types or {})  # an index's fields: new documents keep their types
        self._given = set(self.types)

    def add(self, metadata: dict, where: str = "", limits: bool = True) -> None:
        """Add a row. ``limits=False``: rows already in the index (a merge, a resumed build), which
        keep fields an index made before the limits may hold beyond them."""
        for name, value in metadata.items():
            kind = _kind(value)
            if name not in self.types and limits:
                if len(name) > MAX_FIELD_NAME:
                    raise CorpusError(f"{where}: a metadata field name of {len(name):,} characters ({shown(name[:40])}...); names are at most {MAX_FIELD_NAME} characters.")
                if len(self.types) >= MAX_FIELDS:
                    raise CorpusError(f"{where}: metadata field {shown(name)} would be field {len(self.types) + 1:,} of the index; it holds at most {MAX_FIELDS:,} "
                                      "(a column each): put values of one kind in one field, a list of strings such as \"tags\": [...].")
            known = self.types.setdefault(name, kind)
            if known != kind:
                earlier = "in the index" if name in self._given else "in earlier documents"
                raise CorpusError(f"{where}: metadata field {name!r} is a {kind} here but a {known} {earlier}; one field, one type.")
        self.rows.append(metadata)

    def close(self, folder: Path) -> None:
        """Write the schema and the columns into ``folder`` (nothing when no document has metadata)."""
        present = {name: kind for name, kind in self.types.items() if any(name in row for row in self.rows)}
        if not present:
            return
        n = len(self.rows)
        fields = []
        for k, (name, kind) in enumerate(present.items()):
            stem = f"meta_{k}"
            values = [row.get(name) for row in self.rows]
            if kind == "number":
                np.save(folder / f"{stem}.npy", np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64))
            elif kind == "bool":
                np.save(folder / f"{stem}.npy", np.array([-1 if v is None else int(v) for v in values], dtype=np.int8))
            else:
                lists = [[v] if isinstance(v, str) else (v or []) for v in values]
                vocab = sorted({s for items in lists for s in items})
                code = {s: i for i, s in enumerate(vocab)}
                (folder / f"{stem}.vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
                if kind == "string":
                    np.save(folder / f"{stem}.npy", np.array([-1 if v is None else code[v] for v in values], dtype=np.int32))
                else:
                    offsets = np.zeros(n + 1, dtype=np.int64)
                    np.cumsum([len(items) for items in lists], out=offsets[1:])
                    np.save(folder / f"{stem}.offsets.npy", offsets)
                    np.save(folder / f"{stem}.npy", np.array([code[s] for items in lists for s in items], dtype=np.int32))
            fields.append({"name": name, "type": kind, "file": stem})
        schema = {"format": METADATA_FORMAT, "format_version": METADATA_VERSION, "documents": n, "fields": fields}
        (folder / SCHEMA).write_text(json.dumps(schema, ensure_ascii=False, indent=1), encoding="utf-8")


class Metadata:
    """The metadata columns of an index folder: the schema read on open, each column loaded and
    checked on first use; an index without any has none. ``folder`` None: the ``known`` fields,
    absent from ``n_docs`` rows (what a filter is checked against where no row is searched)."""

    def __init__(self, folder: Path | None, n_docs: int, known: dict[str, str] | None = None, guard=None):
        self.folder, self.n_docs, self.guard = Path(folder or "."), n_docs, guard  # guard(load): loads a column (Segment.read_lazily)
        path = self.folder / SCHEMA
        try:
            schema = json.loads(path.read_text(encoding="utf-8")) if folder is not None and path.is_file() else {"fields": [], "documents": n_docs}
            self.fields = {f["name"]: f for f in schema["fields"]}
            bad = schema["documents"] != n_docs or any(f["type"] not in ("string", "strings", "number", "bool") for f in self.fields.values())
        except (ValueError, KeyError, TypeError):
            bad = True
        if bad:
            raise IndexFormatError(f"{path} does not describe the index's {n_docs} documents; the index is damaged: `mvr info {index_folder(self.folder)} --verify`, then rebuild it.")
        self._columns: dict[str, tuple] = {}
        # fields other segments of the index hold and this one does not: absent in every row here
        for name, kind in (known or {}).items():
            if name not in self.fields:
                self.fields[name] = {"name": name, "type": kind, "file": None}
                self._columns[name] = _absent(kind, n_docs)

    def column(self, name: str) -> tuple:
        """``(values, offsets, vocab)`` of a field (offsets only for lists, vocab for strings),
        loaded and checked against the index's documents on first use."""
        if name not in self._columns:
            self._load_columns([name])
        return self._columns[name]

    def _load_columns(self, names: list[str]) -> None:
        """Load the columns ``names`` between one pair of the guard's checks (each reads the
        segment's manifest, which lists every column's files: a check per column made reading a
        row of many fields quadratic in them)."""
        def load():
            loaded = {}
            for name in names:
                loaded[name] = self._load(name)
                self._check(name, *loaded[name])
            return loaded

        self._columns.update(self.guard(load) if self.guard is not None else load())

    def _check(self, name: str, values, offsets, vocab) -> None:
        """A damaged column must not index out of range later."""
        file = f"{self.folder / self.fields[name]['file']}.npy"
        rows = len(values) if offsets is None else len(offsets) - 1
        if rows != self.n_docs or (offsets is not None and (offsets[0] != 0 or offsets[-1] != len(values) or (np.diff(offsets) < 0).any())):
            raise IndexFormatError(f"{file}: the column of metadata field {name!r} does not match the index's {self.n_docs} documents; rebuild the index.")
        if vocab is not None and len(values) and (int(np.max(values)) >= len(vocab) or int(np.min(values)) < (-1 if offsets is None else 0)):
            raise IndexFormatError(f"{file}: codes of metadata field {name!r} fall outside its vocabulary; rebuild the index.")

    def _load(self, name: str) -> tuple:
        field = self.fields[name]
        stem = self.folder / field["file"]
        values = load_npy(f"{stem}.npy", mmap_mode="r")
        offsets = load_npy(f"{stem}.offsets.npy") if field["type"] == "strings" else None
        vocab = json.loads(Path(f"{stem}.vocab.json").read_text(encoding="utf-8")) if field["type"] in ("string", "strings") else None
        return values, offsets, vocab

    def row(self, i: int) -> dict:
        """The metadata of the document at row ``i``, as it was given."""
        missing = [name for name in self.fields if name not in self._columns]
        if missing:
            self._load_columns(missing)
        out = {}
        for name, field in self.fields.items():
            values, offsets, vocab = self.column(name)
            if field["type"] == "number":
                v = float(values[i])
                if not math.isnan(v):
                    out[name] = int(v) if v.is_integer() else v
            elif field["type"] == "bool":
                if values[i] >= 0:
                    out[name] = bool(values[i])
            elif field["type"] == "string":
                if values[i] >= 0:
                    out[name] = vocab[values[i]]
            elif offsets[i + 1] > offsets[i]:
                out[name] = [vocab[c] for c in values[offsets[i] : offsets[i + 1]]]
        return out

    # -- filters -------------------------------------------------------------------------------
    def mask(self, spec) -> np.ndarray:
        """bool ``(n_docs,)``: which documents the filter ``spec`` keeps."""
        return self._mask(check_filter(spec))

    def _mask(self, spec) -> np.ndarray:
        if not isinstance(spec, dict):
            raise QueryError(f"a filter is a JSON object such as {{\"year\": {{\"$gte\": 2020}}}}, got {type(spec).__name__}.")
        keep = np.ones(self.n_docs, dtype=bool)
        for key, value in spec.items():
            if key in ("$and", "$or"):
                if not isinstance(value, list) or not value:
                    raise QueryError(f"{key} takes a non-empty list of filters, got {value!r}.")
                parts = [self._mask(part) for part in value]
                keep &= np.logical_and.reduce(parts) if key == "$and" else np.logical_or.reduce(parts)
            elif key == "$not":
                keep &= ~self._mask(value)
            elif key.startswith("$"):
                raise QueryError(f"unknown filter operator {key!r}; at the top of a filter: $and, $or, $not, or a field name.")
            else:
                keep &= self._field(key, value)
        return keep

    def _field(self, name: str, condition) -> np.ndarray:
        if name not in self.fields:
            known = ", ".join(sorted(self.fields)) or "none (the index has no metadata)"
            raise QueryError(f"unknown metadata field {name!r} in the filter; fields: {known}.")
        if isinstance(condition, dict) and any(isinstance(k, str) and k.startswith("$") for k in condition):
            wrong = next((k for k in condition if k not in _OPERATORS), None)  # {"$gt": 1, "foo": 3}: not a value to compare with
            if wrong is not None:
                raise QueryError(f"unknown operator {shown(wrong)} on field {name!r}; known: {', '.join(_OPERATORS)}.")
        if not (isinstance(condition, dict) and condition and all(k.startswith("$") for k in condition)):
            condition = {"$eq": condition}
        keep = np.ones(self.n_docs, dtype=bool)
        for op, value in condition.items():
            if op not in _OPERATORS:
                raise QueryError(f"unknown operator {op!r} on field {name!r}; known: {', '.join(_OPERATORS)}.")
            if op in ("$in", "$nin"):
                if not isinstance(value, list):
                    raise QueryError(f"{op} on field {name!r} takes a list of values, got {shown(value)}.")
                hit = np.zeros(self.n_docs, dtype=bool)
                for v in value:
                    hit |= self._equal(name, v)
                keep &= hit if op == "$in" else ~hit
            elif op in ("$eq", "$ne"):
                keep &= self._equal(name, value) if op == "$eq" else ~self._equal(name, value)
            else:
                keep &= self._compare(name, op, value)
        return keep

    def _equal(self, name: str, value) -> np.ndarray:
        kind = self.fields[name]["type"]
        values, offsets, vocab = self.column(name)
        want = {"string": "string", "strings": "string", "number": "number", "bool": "bool"}[kind]
        if isinstance(value, list) or _kind(value) != want:
            raise QueryError(f"field {name!r} holds {'lists of strings' if kind == 'strings' else kind + 's'}; the filter compares it with {shown(value)}: give a {want}.")
        if want == "number" and not exact_number(value):  # what the corpus refuses to store, no row holds
            raise QueryError(f"field {name!r} holds numbers, each finite and at most 2**53 in magnitude (float64 holds every integer up to there exactly); "
                             f"no document can equal {shown(value)}: give such a number (store larger ids as strings).")
        if kind == "number":
            return np.asarray(values) == float(value)
        if kind == "bool":
            return np.asarray(values) == int(value)
        code = _code(vocab, value)
        if kind == "string":
            return np.asarray(values) == code
        # per stored item; a row matches when any of its items does
        found = np.concatenate([[0], np.cumsum(np.asarray(values) == code)])
        return found[offsets[1:]] > found[offsets[:-1]]

    def _compare(self, name: str, op: str, value) -> np.ndarray:
        kind = self.fields[name]["type"]
        if kind != "number":
            raise QueryError(f"{op} compares numbers; field {name!r} holds {'lists of strings' if kind == 'strings' else kind + 's'} and the filter gives {shown(value)}.")
        if not is_number(value) or value != value:
            raise QueryError(f"{op} on field {name!r} takes a number (a bound such as 2020 or 1e20), got {shown(value)}.")
        bound = _bound(value, op)
        values = np.asarray(self.column(name)[0])
        with np.errstate(invalid="ignore"):  # NaN (absent) compares false
            return {"$gt": values > bound, "$gte": values >= bound, "$lt": values < bound, "$lte": values <= bound}[op]


def check_filter(spec) -> dict:
    """``spec`` as the masks read it (numpy scalars as the Python values they are), or a QueryError
    saying what is wrong with its shape: not an object, nested too deeply, a key that is not a
    string, a value of no type a field holds. Fields and operators are checked by the masks."""
    if not isinstance(spec, dict):
        raise QueryError(f"a filter is a JSON object such as {{\"year\": {{\"$gte\": 2020}}}}, got {type(spec).__name__}.")
    stack = [(spec, 1)]  # depth first without recursion: the depth is what could overflow the stack
    while stack:
        node, depth = stack.pop()
        if depth > MAX_FILTER_DEPTH:
            raise QueryError(FILTER_TOO_DEEP)
        stack.extend((child, depth + 1) for child in (node.values() if isinstance(node, dict) else node) if isinstance(child, (dict, list)))
    return _plain(spec)


def _plain(value):
    """A filter's value with numpy scalars as Python ones (as the corpus stores them); recursive,
    so only after the depth check."""
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, str):
                raise QueryError(f"filter keys are field names or operators (strings), got {shown(key)} ({type(key).__name__}).")
        return {key: _plain(v) for key, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, (np.bool_, np.integer, np.floating)):
        return bool(value) if isinstance(value, np.bool_) else int(value) if isinstance(value, np.integer) else float(value)
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    hint = ": decode bytes to str first" if isinstance(value, (bytes, bytearray)) else ": give a list" if isinstance(value, (tuple, set, frozenset, np.ndarray)) else ""
    raise QueryError(f"the filter holds {shown(value)} ({type(value).__name__}); filter values are strings, numbers, bools or lists of them{hint}.")


def _bound(value: int | float, op: str) -> float:
    """``value`` as a float64 bound that orders every float64 as ``value`` does: the columns are
    float64, and NumPy would round an integer beyond 2**53 to the float beside it, on either side."""
    if isinstance(value, float):
        return value
    try:
        near = float(value)
    except OverflowError:  # beyond every float
        return math.inf if value > 0 else -math.inf
    if near == value:  # exact (Python compares int and float exactly)
        return near
    # no float equals value: v > value and v <= value hold as against the float just below it,
    # v >= value and v < value as against the float just above
    below = near if near < value else math.nextafter(near, -math.inf)
    above = near if near > value else math.nextafter(near, math.inf)
    return below if op in ("$gt", "$lte") else above


def _absent(kind: str, n: int) -> tuple:
    """The column of a field that no row holds."""
    if kind == "number":
        return np.full(n, np.nan), None, None
    if kind == "bool":
        return np.full(n, -1, dtype=np.int8), None, None
    if kind == "string":
        return np.full(n, -1, dtype=np.int32), None, []
    return np.zeros(0, dtype=np.int32), np.zeros(n + 1, dtype=np.int64), []


def read_types(folder: Path) -> dict[str, str]:
    """``{field: type}`` of the metadata stored in ``folder`` (none when it has no schema)."""
    path = Path(folder) / SCHEMA
    if not path.is_file():
        return {}
    try:
        return {f["name"]: f["type"] for f in json.loads(path.read_text(encoding="utf-8"))["fields"]}
    except (ValueError, KeyError, TypeError):
        raise IndexFormatError(f"{path} is damaged; `mvr info {index_folder(folder)} --verify` checks the index, then rebuild it.") from None


def _code(vocab: list[str], value: str) -> int:
    """The code of ``value`` in a sorted vocabulary, or -2 (matches nothing) when absent."""
    at = bisect.bisect_left(vocab, value)
    return at if at < len(vocab) and vocab[at] == value else -2
