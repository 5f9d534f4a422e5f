"""Reading documents: BEIR ``corpus.jsonl``, plain JSONL of ``{"id", "text"}``, a TSV of
``id<TAB>text[<TAB>title]`` (ColBERT's ``collection.tsv``), a folder of ``.txt`` / ``.md`` files,
or any iterable a Python caller hands over.

Every reader yields :class:`Document`; ``where`` records the line or file it came from so that
later errors (duplicate ids, empty documents) can point at it.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from .errors import CorpusError, QueryError, is_number, is_utf8, many, shown
from .ids import check_id

TEXT_SUFFIXES = (".txt", ".md")
_FORMS = 'a BEIR corpus.jsonl (or its dataset folder), a JSONL file of {"id", "text"} objects, a .tsv of id<TAB>text[<TAB>title], or a folder of .txt/.md files'


@dataclass(frozen=True)
class Document:
    """One document: ``id`` unique in its corpus, ``text``, optional ``title`` and ``metadata``
    (field -> a string, a number, a bool or a list of strings)."""

    id: str
    text: str
    title: str = ""
    where: str = ""
    metadata: dict = field(default_factory=dict, compare=False)
    dropped: tuple = field(default=(), compare=False, repr=False)  # fields of its line no metadata type holds, left out (said once per build)
    encoded_title: str | None = field(default=None, compare=False, repr=False)  # a passage's: the part of the title its encoding repeats

    @property
    def full_text(self) -> str:
        """What the encoder reads: ``title + " " + text`` as BEIR does it, or the text alone."""
        title = self.title.strip() if self.encoded_title is None else self.encoded_title
        return f"{title} {self.text}" if title else self.text

    @property
    def blank(self) -> bool:
        """Whether it has no character a tokenizer keeps (:func:`blank`)."""
        return blank(self.full_text)


def blank(text: str) -> bool:
    """Whether ``text`` has no character a tokenizer keeps: only white space, control and format
    characters (zero-width spaces, byte order marks, soft hyphens), which BERT-like tokenizers drop."""
    return all(c.isspace() or unicodedata.category(c) in ("Cc", "Cf") for c in text)


# utf-8-sig: a byte order mark (as Windows editors write it) is dropped, not read as text.
ENCODING = "utf-8-sig"


def query_texts(queries) -> list[str]:
    """A query or a sequence of them as a list, or a QueryError for what is neither (a number,
    None, bytes: each element is checked where it is encoded)."""
    return [queries] if isinstance(queries, str) else list(many(queries, "queries must be a string or a list of strings", QueryError))


def _not_utf8(path: Path, error_class: type) -> Exception:
    """The error for a file that is not UTF-8, naming the first line that is not."""
    with open(path, "rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            try:
                raw.decode("utf-8")  # a byte order mark is valid UTF-8 too
            except UnicodeDecodeError as exc:
                return error_class(
                    f"{path}:{line_number}: not UTF-8 text (byte {raw[exc.start]:#04x} at column {exc.start + 1}); "
                    "convert the file to UTF-8, e.g. iconv -f latin1 -t utf-8 FILE > NEW."
                )
    return error_class(f"{path}: not UTF-8 text; convert the file to UTF-8, e.g. iconv -f latin1 -t utf-8 FILE > NEW.")


def text_lines(path: Path, error_class: type = CorpusError, newline: str | None = None) -> Iterator[tuple[int, str]]:
    """``(line_number, line)`` of a UTF-8 text file (a byte order mark dropped); ``error_class``
    names the line of the first byte that is not UTF-8; ``newline="\\n"``: a line ends at LF alone
    (CRLF too), a lone CR is text, as in a TSV's fields."""
    with open(path, encoding=ENCODING, newline=newline) as handle:
        try:
            yield from enumerate(handle, start=1)
        except UnicodeDecodeError:
            raise _not_utf8(path, error_class) from None


def read_text(path: Path, error_class: type = CorpusError) -> str:
    """The whole of a UTF-8 text file (a byte order mark dropped)."""
    try:
        return path.read_text(encoding=ENCODING)
    except UnicodeDecodeError:
        raise _not_utf8(path, error_class) from None


def read_jsonl_objects(path: Path, error_class: type = CorpusError) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, object)`` for each non-blank line of a JSONL file; malformed lines
    raise ``error_class``."""
    for line_number, line in text_lines(path, error_class, newline="\n"):  # lines as _lines counts them (a lone CR is JSON's whitespace)
        if not line.strip():
            continue
        try:
            obj = json.loads(line.rstrip("\r\n"))  # a line cut short is told at its own column, not at column 1 of the next
        except json.JSONDecodeError as exc:
            raise error_class(
                f"{path}:{line_number}: not valid JSON ({exc.msg} at column {exc.colno}). "
                'Each line must be one JSON object, e.g. {"id": "d1", "text": "..."}.'
            ) from None
        if not isinstance(obj, dict):
            raise error_class(f"{path}:{line_number}: expected a JSON object, got {type(obj).__name__}.")
        yield line_number, obj


_RESERVED = ("_id", "id", "text", "contents", "title", "metadata")


_EXACT = 2**53  # numbers are stored as float64: integers beyond this would collide


def exact_number(value) -> bool:
    """Whether ``value`` is a number that float64 holds exactly enough to compare (not a bool)."""
    if not is_number(value):
        return False
    return abs(value) <= _EXACT if isinstance(value, int) else math.isfinite(value) and abs(value) <= _EXACT


def _check_text(text: str, title: str, doc_id: str, where: str) -> None:
    if not is_utf8(text) or not is_utf8(title):
        raise CorpusError(f"{where}: document {shown(doc_id)} holds a lone surrogate (no character: the text was decoded wrongly); fix its encoding.")


def repeated(values: Iterable[str]) -> str | None:
    """The first value that comes twice, or None."""
    seen: set[str] = set()
    return next((value for value in values if value in seen or seen.add(value)), None)  # (add returns None: a new value goes on)


def _metadata_value(value):
    """``value`` as stored (numpy scalars as Python ones), or None where no field type holds it."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool) or (isinstance(value, str) and is_utf8(value)):
        return value
    if exact_number(value):
        return value
    if isinstance(value, list) and all(isinstance(v, str) and is_utf8(v) for v in value):
        return value
    return None


def check_metadata(values, where: str, strict: bool = True) -> dict:
    """Metadata as stored: a dict of field -> string, number (finite, at most 2**53 in size), bool
    or list of strings (None: the field is absent). ``strict``: anything else is a CorpusError
    saying which field; otherwise such a field is left out (the other fields of a JSONL line,
    which may hold anything)."""
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise CorpusError(f'{where}: "metadata" must be an object of fields, got {type(values).__name__}.')
    out = {}
    for name, value in values.items():
        if not isinstance(name, str) or not name or name.startswith("$") or not is_utf8(name):
            if not strict:
                continue
            raise CorpusError(f"{where}: metadata field name {shown(name)} must be a non-empty UTF-8 string not starting with '$'.")
        if value is None:
            continue
        kept = _metadata_value(value)
        if kept is None:
            if not strict:
                continue
            raise CorpusError(
                f"{where}: metadata field {shown(name)} is {shown(value)}; a field holds a string, a finite number of at most 2**53, true/false or a list of strings."
            )
        out[name] = kept
    return out


def _document_from_object(obj: dict, where: str) -> Document:
    doc_id = obj.get("_id", obj.get("id"))
    if obj.get("id", doc_id) != doc_id:  # which one was meant? the other was dropped in silence
        raise CorpusError(f'{where}: the line gives "_id" {shown(doc_id)} and "id" {shown(obj["id"])}; keep one.')
    if doc_id is None:
        raise CorpusError(f'{where}: no "_id" or "id" field; every document needs a unique id.')
    doc_id = check_id(doc_id, where)
    text = obj.get("text", obj.get("contents"))
    if text is None:
        raise CorpusError(f'{where}: document {shown(doc_id)} has no "text" field.')
    title = obj.get("title") or ""
    if not isinstance(text, str) or not isinstance(title, str):
        raise CorpusError(f'{where}: document {shown(doc_id)}: "text" and "title" must be strings.')
    _check_text(text, title, doc_id, where)
    # a "metadata" object, and any other field of the line, are kept as metadata
    others = {k: v for k, v in obj.items() if k not in _RESERVED}
    metadata, top = check_metadata(obj.get("metadata"), where), check_metadata(others, where, strict=False)
    clash = next((k for k in top if k in metadata and metadata[k] != top[k]), None)
    if clash is not None:  # which one was meant? one of them was dropped in silence
        raise CorpusError(f'{where}: document {shown(doc_id)} gives {clash!r} twice, {shown(top[clash])} beside "metadata" and {shown(metadata[clash])} in it; keep one.')
    dropped = tuple(k for k, v in others.items() if v is not None and k not in top)
    return Document(id=doc_id, text=text, title=title, where=where, metadata={**metadata, **top}, dropped=dropped)


def read_jsonl(path: Path) -> Iterator[Document]:
    for line_number, obj in read_jsonl_objects(path):
        yield _document_from_object(obj, f"{path}:{line_number}")


_ASCII_SPACE = " \t\n\r\v\f"


TSV_COLUMNS = [["id", "text"], ["id", "text", "title"]]


def column_names(row: str, names: list[list[str]]) -> bool:
    """Whether ``row``, a TSV file's first line, names its columns: one of ``names``, in any case."""
    fields = [f.strip().lower() for f in row.rstrip("\r\n").split("\t")]
    while len(fields) > 1 and not fields[-1]:  # a trailing tab, as spreadsheets write
        fields.pop()
    return fields in names


def read_tsv(path: Path) -> Iterator[Document]:
    """One document a line, ``id<TAB>text`` or ``id<TAB>text<TAB>title`` (the layout of ColBERT's
    ``collection.tsv`` and of DPR's passages), each field as it stands (no quoting: a quote is
    text); a first line naming the columns (``id``, ``text``, ``title``) is skipped."""
    for line_number, line in text_lines(path, newline="\n"):
        fields, where = line.rstrip("\r\n").split("\t"), f"{path}:{line_number}"
        if not line.strip(_ASCII_SPACE) or (line_number == 1 and column_names(line, TSV_COLUMNS)):  # blank as _lines counts it
            continue
        if len(fields) not in (2, 3):
            fix = "separate the id from the text with a tab" if len(fields) == 1 else "a text holding tabs belongs in a JSONL corpus"
            raise CorpusError(f"{where}: expected id<TAB>text or id<TAB>text<TAB>title, found {len(fields)} field{'s' * (len(fields) != 1)} separated by tabs; {fix}.")
        doc_id, text, title = check_id(fields[0], where), fields[1], fields[2] if len(fields) == 3 else ""
        _check_text(text, title, doc_id, where)
        yield Document(id=doc_id, text=text, title=title, where=where)


def read_text_folder(folder: Path) -> Iterator[Document]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
    if not files:
        raise CorpusError(f"{folder}: no .txt or .md files found. Expected {_FORMS}.")
    for file in files:
        doc_id = check_id(file.relative_to(folder).as_posix(), str(file), "rename the file")
        yield Document(id=doc_id, text=read_text(file), where=str(file))


class Counted:
    """Documents read lazily, with their number counted beforehand (what progress bars show as
    the total and the ETA come from): ``len()`` and iteration."""

    def __init__(self, documents: Iterator[Document], count: int):
        self._documents, self._count = documents, count

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[Document]:
        return iter(self._documents)


def _lines(path: Path) -> int:
    """Non-blank lines of a file (a JSONL or TSV corpus's documents; a byte order mark is no text)."""
    with open(path, "rb") as handle:
        return sum(1 for number, line in enumerate(handle) if (line.removeprefix(b"\xef\xbb\xbf") if number == 0 else line).strip())


def read_corpus(path: str | Path) -> Iterable[Document]:
    """Documents of the corpus at ``path`` (see the module docstring for the forms), counted."""
    path = Path(path)
    if not path.exists():
        raise CorpusError(f"corpus not found: {path}. Expected {_FORMS}.")
    if path.is_dir():
        beir = path / "corpus.jsonl"
        if beir.is_file():  # a regular file (a FIFO would be used up by counting)
            return Counted(read_jsonl(beir), _lines(beir))
        files = sum(1 for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
        return Counted(read_text_folder(path), files)
    if path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        return Counted(read_jsonl(path), _lines(path)) if path.is_file() else read_jsonl(path)
    if path.suffix.lower() == ".tsv":
        if not path.is_file():
            return read_tsv(path)
        first = next((line for _, line in text_lines(path, newline="\n")), "")
        return Counted(read_tsv(path), _lines(path) - int(column_names(first, TSV_COLUMNS)))
    if path.suffix.lower() in TEXT_SUFFIXES:
        return iter([Document(id=check_id(path.name, str(path), "rename the file"), text=read_text(path), where=str(path))])
    raise CorpusError(f"{path}: unknown corpus file type {path.suffix!r}. Expected {_FORMS}.")


def as_documents(items: Iterable, numbered: bool = True) -> Iterator[Document]:
    """Normalise what a Python caller passes: a corpus file, or Documents, dicts, ``(id, text)``
    pairs or plain strings (numbered from 0: not where ``numbered`` is False, as for documents
    added to an index, whose ids "0", "1", ... would be those of the last call's)."""
    if isinstance(items, (str, Path)):
        if isinstance(items, str) and not os.path.exists(items) and (" " in items or "\n" in items):  # a text given for a list of them
            raise CorpusError(f"documents is the string {shown(items)}, read as a corpus file's path, and there is none: give a text as a list of one, [text].")
        return read_corpus(items)
    many(items, "documents must be a corpus file or a list of documents (Documents, dicts, (id, text) pairs)", CorpusError, also=(Document,))
    return _documents(items, numbered)


def _documents(items: Iterable, numbered: bool) -> Iterator[Document]:
    for position, item in enumerate(items):
        where = f"document #{position}"
        if isinstance(item, Document):
            where = item.where or where
            if not isinstance(item.text, str) or not isinstance(item.title, str):
                raise CorpusError(f"{where}: document {shown(item.id)}: text and title must be strings, got {type(item.text).__name__} and {type(item.title).__name__}.")
            _check_text(item.text, item.title, item.id, where)
            yield Document(check_id(item.id, where), item.text, item.title, where, check_metadata(item.metadata, where), item.dropped)
        elif isinstance(item, dict):
            yield _document_from_object(item, where)
        elif isinstance(item, str):
            if not numbered:
                raise CorpusError(f"{where}: a plain string has no id; documents added to an index need theirs: (id, text) pairs, dicts with an \"id\" or Documents.")
            _check_text(item, "", str(position), where)
            yield Document(id=str(position), text=item, where=where)
        elif isinstance(item, (tuple, list)) and len(item) in (2, 3):
            yield _document_from_object(dict(zip(("id", "text", "title"), item)), where)
        else:
            raise CorpusError(f"{where}: expected a Document, a dict, an (id, text) pair or a string, got {type(item).__name__}.")


def read_id_lines(source) -> list[str]:
    """Document ids, one per line, from a file path or an open text stream (blank lines skipped),
    each checked as :func:`check_id` does."""
    if hasattr(source, "read"):
        lines = enumerate(source.read().splitlines(), start=1)
        name = "<stdin>"
    else:
        name = str(source)
        if not Path(source).is_file():
            raise CorpusError(f"{source}: no such file of ids (one id per line).")
        lines = text_lines(Path(source))
    return [check_id(line.strip(), f"{name}:{number}") for number, line in lines if line.strip()]
