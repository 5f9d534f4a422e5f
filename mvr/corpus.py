"""Reading documents: BEIR ``corpus.jsonl``, plain JSONL of ``{"id", "text"}``, a folder of
``.txt`` / ``.md`` files, or any iterable a Python caller hands over.

Every reader yields :class:`Document`; ``where`` records the line or file it came from so that
later errors (duplicate ids, empty documents) can point at it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from .errors import CorpusError

TEXT_SUFFIXES = (".txt", ".md")
_FORMS = 'a BEIR corpus.jsonl (or its dataset folder), a JSONL file of {"id", "text"} objects, or a folder of .txt/.md files'


@dataclass(frozen=True)
class Document:
    """One document: ``id`` unique in its corpus, ``text``, optional ``title``."""

    id: str
    text: str
    title: str = ""
    where: str = ""

    @property
    def full_text(self) -> str:
        """What the encoder reads: ``title + " " + text`` as BEIR does it, or the text alone."""
        title = self.title.strip()
        return f"{title} {self.text}" if title else self.text


def read_jsonl_objects(path: Path) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, object)`` for each non-blank line of a JSONL file."""
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CorpusError(
                    f"{path}:{line_number}: not valid JSON ({exc.msg} at column {exc.colno}). "
                    'Each line must be one JSON object, e.g. {"id": "d1", "text": "..."}.'
                ) from None
            if not isinstance(obj, dict):
                raise CorpusError(f"{path}:{line_number}: expected a JSON object, got {type(obj).__name__}.")
            yield line_number, obj


def _document_from_object(obj: dict, where: str) -> Document:
    doc_id = obj.get("_id", obj.get("id"))
    if doc_id is None:
        raise CorpusError(f'{where}: no "_id" or "id" field; every document needs a unique id.')
    if not isinstance(doc_id, (str, int)) or isinstance(doc_id, bool):
        raise CorpusError(f"{where}: the id must be a string or an integer, got {type(doc_id).__name__}.")
    text = obj.get("text", obj.get("contents"))
    if text is None:
        raise CorpusError(f'{where}: document {doc_id!r} has no "text" field.')
    title = obj.get("title") or ""
    if not isinstance(text, str) or not isinstance(title, str):
        raise CorpusError(f'{where}: document {doc_id!r}: "text" and "title" must be strings.')
    return Document(id=str(doc_id), text=text, title=title, where=where)


def read_jsonl(path: Path) -> Iterator[Document]:
    for line_number, obj in read_jsonl_objects(path):
        yield _document_from_object(obj, f"{path}:{line_number}")


def read_text_folder(folder: Path) -> Iterator[Document]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
    if not files:
        raise CorpusError(f"{folder}: no .txt or .md files found. Expected {_FORMS}.")
    for file in files:
        try:
            text = file.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise CorpusError(f"{file}: not UTF-8 text; convert it or remove it from the folder.") from None
        yield Document(id=file.relative_to(folder).as_posix(), text=text, where=str(file))


def read_corpus(path: str | Path) -> Iterator[Document]:
    """Documents of the corpus at ``path`` (see the module docstring for the forms)."""
    path = Path(path)
    if not path.exists():
        raise CorpusError(f"corpus not found: {path}. Expected {_FORMS}.")
    if path.is_dir():
        beir = path / "corpus.jsonl"
        return read_jsonl(beir) if beir.is_file() else read_text_folder(path)
    if path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        return read_jsonl(path)
    if path.suffix.lower() in TEXT_SUFFIXES:
        return iter([Document(id=path.name, text=path.read_text(encoding="utf-8"), where=str(path))])
    raise CorpusError(f"{path}: unknown corpus file type {path.suffix!r}. Expected {_FORMS}.")


def as_documents(items: Iterable) -> Iterator[Document]:
    """Normalise what a Python caller passes: Documents, dicts, ``(id, text)`` pairs or plain strings
    (numbered from 0)."""
    if isinstance(items, (str, Path)):
        yield from read_corpus(items)
        return
    for position, item in enumerate(items):
        where = f"document #{position}"
        if isinstance(item, Document):
            yield item if item.where else Document(item.id, item.text, item.title, where)
        elif isinstance(item, dict):
            yield _document_from_object(item, where)
        elif isinstance(item, str):
            yield Document(id=str(position), text=item, where=where)
        elif isinstance(item, (tuple, list)) and len(item) in (2, 3):
            yield _document_from_object(dict(zip(("id", "text", "title"), item)), where)
        else:
            raise CorpusError(f"{where}: expected a Document, a dict, an (id, text) pair or a string, got {type(item).__name__}.")
