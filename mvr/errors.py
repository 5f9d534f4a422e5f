"""The exceptions mvr raises for bad input. Each message says what was received, what was
expected and how to fix it; the CLI prints the message alone, without a traceback."""

from collections.abc import Mapping, Set


class MvrError(Exception):
    """Base of every error mvr raises on purpose."""


class ConfigError(MvrError, ValueError):
    """A configuration value is out of range, unknown, or inconsistent with another."""


class CorpusError(MvrError, ValueError):
    """A corpus file or folder is missing, malformed, empty or holds duplicate ids."""


class EncoderError(MvrError, ValueError):
    """A model folder cannot be loaded as any encoder form mvr knows."""


class EncoderMismatchError(MvrError, ValueError):
    """Queries were encoded by a different encoder (weights, dims, lengths or markers) than the index."""


class IndexNotFoundError(MvrError, FileNotFoundError):
    """No index exists under the given name or path."""


class IndexFormatError(MvrError, ValueError):
    """An index directory is damaged, incomplete, or written by an unknown format version."""


class IndexExistsError(MvrError, FileExistsError):
    """An index of that name exists and overwriting was not asked for."""


class IndexLockedError(MvrError, RuntimeError):
    """Another live process is writing an index of that name (it holds the name's writer lock)."""


class DatasetError(MvrError, ValueError):
    """A BEIR-layout evaluation folder is missing a file or a split."""


class QueryError(MvrError, ValueError):
    """A query is empty or not text, or a search argument (k, threads) is out of range."""


class StageError(MvrError, RuntimeError):
    """A first stage's engine (the Java runtime for Lucene, a SPLADE model) could not be started or read."""


class DeviceMemoryError(MvrError, MemoryError):
    """A GPU ran out of memory (PyTorch's OutOfMemoryError, said in one line with what to change)."""


class MissingExtraError(MvrError, ImportError):
    """An optional part of mvr was asked for, but the packages it needs are not installed."""


def missing_extra(what: str, extra: str, error: ImportError) -> MissingExtraError:
    """The one-line error for an optional part whose packages are missing: names the pip command."""
    return MissingExtraError(f"{what} needs the '{extra}' extra ({error.name or error}): pip install 'mvr[{extra}]'")


def shown(value, limit: int = 80) -> str:
    """``repr(value)`` for a message, cut after ``limit`` characters (a client's megabyte-long id
    or list would otherwise come back whole in the error about it)."""
    try:
        text = repr(value)
    except ValueError:  # an int of more than 4,300 digits has no repr
        return f"an integer of about {int(value.bit_length() * 0.30103)} digits"
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def is_number(value, whole: bool = False) -> bool:
    """Whether ``value`` is a Python int (``whole``), or an int or float: never a bool, which
    Python counts as an int (``True`` is no count of anything) and JSON writes as ``true``."""
    return isinstance(value, int if whole else (int, float)) and not isinstance(value, bool)


def is_utf8(text: str) -> bool:
    """Whether ``text`` is UTF-8 text: no lone surrogate (what Python makes of bytes that are not
    UTF-8 in a file name, or text decoded wrongly; libraries taking text, faiss's among them, fail on it)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_flags(**values) -> None:
    """Each of ``values`` True or False (``show_progress``: or None), else a ConfigError naming it:
    a string "no" or a 0 would be taken for what its truth says."""
    for flag, value in values.items():
        if not isinstance(value, bool) and not (value is None and flag == "show_progress"):
            raise ConfigError(f"{flag} must be True or False{' (or None)' if flag == 'show_progress' else ''}, got {shown(value)}.")


def many(values, what: str, error_class: type, ordered: bool = True, also: tuple = ()):
    """``values`` unchanged where it is a collection of several things, else ``error_class``
    saying ``what`` they must be: a string, bytes or a mapping (read letter by letter, byte by
    byte or key by key), a number or None, a set where ``ordered`` (its order is none), or one of
    the types ``also`` names."""
    if isinstance(values, (str, bytes, bytearray, Mapping, *also)) or (ordered and isinstance(values, Set)) or not hasattr(values, "__iter__"):
        hint = ": decode bytes to str first" if isinstance(values, (bytes, bytearray)) else " (one alone: pass [it])" if isinstance(values, (str, Mapping, *also)) else ""
        raise error_class(f"{what}, got {type(values).__name__}{hint}.")
    return values


def closest(name, known) -> list[str]:
    """The one of ``known`` closest in spelling to ``name``, in a list (empty where none is close)."""
    import difflib

    return difflib.get_close_matches(str(name), list(known), n=1, cutoff=0.6)


def meant(unknown, known) -> str:
    """`` (x: did you mean y?; ...)`` for each of the ``unknown`` names close in spelling to one of
    ``known`` (empty where none is)."""
    hints = [f"{name}: did you mean {close[0]}?" for name in unknown for close in [closest(name, known)] if close]
    return f" ({'; '.join(hints)})" if hints else ""
