"""What encodes an index's queries: :func:`index_encoder`, the full :class:`mvr.Encoder` of its
model checked against its record; and before that is loaded, :func:`query_encoder`, queries
encoded without PyTorch or transformers: the cached ONNX export of the index's model, its
``tokenizer.json`` read by the tokenizers library, any projection read as the Encoder reads it
(mvr/encode/forms.py, ``read_projections``: float32 numpy from its safetensors file).

Importing torch and transformers took about 1.4 s of a first ``mvr search`` (docs/coldstart.md),
though queries run in ONNX Runtime once the model is exported. So the full encoder, once its
queries ran there, leaves a card beside the export (:func:`remember`): what transformers made of
the tokenizer (its form's sha256, the special tokens' ids, the query marker's, the settings it
applies at each call) and the encoder's identity, named after the sha256 of the weights and of
the other files of the model's folders (its root, its transformer's, its projections').
:func:`query_encoder` gives a :class:`QueryEncoder` only where the card of these very files is
there, written by the same versions of transformers, tokenizers and ONNX Runtime; its identity is
the index's record; ``tokenizer.json``, read by tokenizers, is the tokenizer transformers ran;
the export is cached and checked; and any projection is in safetensors, with no activation or
tanh/relu. Anything else gives None, and the full encoder runs as before, with its own checks and
errors. ``tests/test_encoder.py`` compares the two on every model form.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..config import RUNTIMES, positive_int
from ..errors import EncoderError, EncoderMismatchError
from ..threads import check_threads
from .encoder import Encoder, identity_differences
from .forms import default_model_path, detect_spec, finish_vectors, numpy_layers, read_projections, weight_files_of, weights_checksum
from .runtimes import cache_dir, cached_export, export_key, open_session, write_record
from .tokens import TokenVectors, backend_checksum, checked_texts, input_ids

_SPECIAL = ("cls_token", "sep_token", "pad_token", "mask_token")
# Files of a model folder that a tokenizer never reads: weights, exports, text for people.
_NOT_READ = {".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".onnx", ".ot", ".md"}


class _Tokenizer:
    """What :func:`mvr.encode.tokens.input_ids` asks of a tokenizer, from a ``tokenizers.Tokenizer``."""

    def __init__(self, backend, special: dict[str, int | None], truncation_side: str, split_special_tokens: bool):
        backend.no_truncation()
        backend.no_padding()
        backend.encode_special_tokens = split_special_tokens  # transformers sets it at every call; tokenizer.json does not hold it
        self.backend, self.truncation_side = backend, truncation_side
        self.cls_token_id, self.sep_token_id, self.pad_token_id, self.mask_token_id = (special[name] for name in _SPECIAL)

    def __call__(self, texts: list[str], *, add_special_tokens: bool, truncation: bool, max_length: int) -> dict:
        found = [e.ids for e in self.backend.encode_batch(texts, add_special_tokens=add_special_tokens)]
        return {"input_ids": [ids[:max_length] if self.truncation_side == "right" else ids[max(0, len(ids) - max_length) :] for ids in found]}


class QueryEncoder:
    """Encodes queries as :meth:`mvr.Encoder.encode_queries` does, in ONNX Runtime and numpy."""

    def __init__(self, spec, tokenizer: _Tokenizer, marker: int | None, input_names: list[str], model: bytes, projections: list, dim: int):
        self.spec, self.tokenizer, self.dim = spec, tokenizer, dim
        self._marker, self._projections = marker, projections
        self.input_names = input_names
        self._session = open_session(model, "onnx", 1)  # one thread at batch 1, as the full encoder runs queries
        self.query_runtime = "onnx"

    def encode_queries(self, texts, *, batch_size: int | None = None, threads: int | None = None, show_progress=None) -> TokenVectors:
        texts = checked_texts(texts, True)
        positive_int("", "batch_size", batch_size, optional=True)  # as the full encoder checks them (queries run on one thread)
        check_threads(threads)
        spec, tok = self.spec, self.tokenizer
        sequences, truncated = input_ids(tok, texts, self._marker, spec.query_maxlen, expand=spec.query_expansion)
        batch_size = batch_size or 32
        order = np.argsort([-len(s) for s in sequences], kind="stable")  # the full encoder's batches, padded alike
        results: list = [None] * len(texts)
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            width = max(len(sequences[i]) for i in rows)
            ids = np.full((len(rows), width), tok.pad_token_id or 0, dtype=np.int64)
            attention = np.zeros((len(rows), width), dtype=np.int64)
            for row, i in enumerate(rows):
                ids[row, : len(sequences[i])] = sequences[i]
                attention[row, : len(sequences[i])] = 1
            if spec.query_expansion and not spec.attend_to_expansion:
                attention[ids == tok.mask_token_id] = 0
            feeds = {"input_ids": ids, "attention_mask": attention, "token_type_ids": np.zeros_like(ids)}
            hidden = self._session.run(None, {name: feeds[name] for name in self.input_names})[0]
            hidden = finish_vectors(hidden, self._projections)
            for row, i in enumerate(rows):
                n = width if spec.query_expansion else len(sequences[i])
                results[i] = (np.asarray(hidden[row, :n], dtype=np.float32), ids[row, :n].astype(np.int32))
        offsets = np.zeros(len(texts) + 1, dtype=np.int64)
        np.cumsum([len(r[1]) for r in results], out=offsets[1:])
        vectors = np.concatenate([r[0] for r in results]) if results else np.zeros((0, self.dim), np.float32)
        token_ids = np.concatenate([r[1] for r in results]) if results else np.zeros(0, np.int32)
        return TokenVectors(np.ascontiguousarray(vectors), offsets, truncated, token_ids, getattr(self, "weights_sha256", None))


def _source(recorded: dict, model):
    """The model folder of an index's queries: ``model`` where given, else the one it recorded (None: the default)."""
    return model if model is not None else (None if recorded.get("source") == "default" else recorded.get("source"))


def index_encoder(name: str, recorded: dict, model=None, **runtime) -> Encoder:
    """The model of the index ``name`` as an :class:`Encoder` (``runtime``: batch_size, threads,
    doc_runtime, ...), checked against ``recorded``, its record; ``model``: an Encoder, used as it
    is, or a model folder for the index's own (None)."""
    if isinstance(model, Encoder):
        encoder = model
    else:
        source = _source(recorded, model)
        if model is None and source is not None and not Path(source).is_dir():
            raise EncoderError(f"index {name!r} was built with the model at {source}, which is not there any more; pass the same model's folder (model=PATH, CLI --model PATH).")
        try:
            encoder = Encoder(source, query_maxlen=recorded["query_maxlen"], doc_maxlen=recorded["doc_maxlen"], **runtime)
        except EncoderError as error:  # a model given for the index's own that cannot encode as it did (fewer positions): another model
            if model is None:
                raise
            raise EncoderMismatchError(f"index {name!r} was built with encoder {recorded['name']!r}; the model at {source} cannot encode as it did: {error} Search with the index's own model.") from None
    differences = identity_differences(recorded, encoder.identity)
    if differences:
        raise EncoderMismatchError(
            f"index {name!r} was built with encoder {recorded['name']!r}; the query encoder {encoder.name!r} differs: "
            f"{'; '.join(differences)}. Search with the index's own model, or rebuild the index with this one."
        )
    return encoder


def query_encoder(recorded: dict, model: str | os.PathLike | None = None) -> QueryEncoder | None:
    """A :class:`QueryEncoder` of the model folder ``model`` (None: the index's own) for an index
    whose encoder record is ``recorded``, or None where it could differ from the full encoder's:
    no card of these very files (:func:`remember`), an identity other than the record's, no export."""
    if os.environ.get("MVR_QUERY_RUNTIME", "onnx") not in ("", "onnx") or os.environ.get("MVR_DOC_RUNTIME", "") not in ("", *RUNTIMES):
        return None  # PyTorch asked for; or a setting the full encoder refuses, and says so
    try:
        path = (default_model_path() if (source := _source(recorded, model)) is None else Path(source)).resolve()
        spec = detect_spec(path, recorded["query_maxlen"], recorded["doc_maxlen"])
        folder = path / spec.transformer_dir
        weight_files = weight_files_of(folder)
        projections = _projections(spec, path, weight_files)
        if projections is None:
            return None
        weights = weights_checksum(weight_files)
        card = _read(_card_path(weights, path, spec))
        if not _sound(card):
            return None
        identity = {**card["identity"], **{k: v for k, v in asdict(spec).items() if k not in ("dense_dirs", "transformer_dir", "skiplist")}}
        dim = identity["dim"]
        if card["versions"] != _versions() or identity_differences(recorded, identity) or identity["weights_sha256"] != weights or (projections and projections[-1][0].shape[0] != dim):
            return None
        from tokenizers import Tokenizer

        backend = Tokenizer.from_file(str(folder / "tokenizer.json"))
        if any(i is not None and not 0 <= i < backend.get_vocab_size() for i in (*card["special"].values(), card["query_marker"])):
            return None
        exported = cached_export(export_key(weights, folder), card["input_names"], "onnx")
        if exported is None or backend_checksum(backend) != identity["tokenizer_sha256"]:  # not exported yet: the full encoder exports it
            return None
        tokenizer = _Tokenizer(backend, card["special"], card["truncation_side"], card["split_special_tokens"])
        encoder = QueryEncoder(spec, tokenizer, card["query_marker"], card["input_names"], exported, projections, dim)
        encoder.weights_sha256 = weights  # the record's, checked above: its vectors say so
        return encoder
    except Exception:  # anything unforeseen (a damaged card, export or tokenizer.json): the full encoder, which checks and says
        return None


def remember(encoder: Encoder) -> None:
    """Write the card of ``encoder``'s model, once: what its tokenizer (as transformers loaded it)
    and its export are, beside the export under ``$MVR_CACHE_DIR``, named after its weights and the
    other files of its folders. :func:`query_encoder` reads it in later processes, and checks there
    that ``tokenizer.json`` read alone is the tokenizer transformers ran. Only an encoder whose
    queries run in ONNX Runtime, with a fast tokenizer, has one; one that cannot be written (a
    cache folder not writable, a model file not readable) is left out: the full encoder goes on."""
    tok = encoder.tokenizer
    if getattr(encoder, "_remembered", False) or encoder.query_runtime != "onnx" or not getattr(tok, "is_fast", False):
        return
    encoder._remembered = True
    if not (encoder._transformer_path / "tokenizer.json").is_file():  # a fast tokenizer made from vocab.txt: not read here
        return
    card = {
        "identity": {k: v for k, v in encoder.identity.items() if k not in ("name", "source")},
        "special": {name: getattr(tok, f"{name}_id") for name in _SPECIAL},
        "query_marker": encoder._query_marker_id,
        "truncation_side": tok.truncation_side,
        "split_special_tokens": bool(getattr(tok, "split_special_tokens", False)),
        "input_names": list(encoder._onnx.input_names),
        "versions": _versions(),
    }
    try:
        path = _card_path(encoder.weights_sha256, encoder.path, encoder.spec)
        if _read(path) != card:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_record(path, card)
    except (OSError, ValueError):
        pass


def _read(path: Path):
    """The JSON at ``path``; None where there is none that reads."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None


def _sound(card) -> bool:
    """Whether ``card`` has the shape :func:`remember` writes (a hand-edited or damaged one: no)."""
    def ids(values) -> bool:
        return all(v is None or (isinstance(v, int) and not isinstance(v, bool)) for v in values)

    return (isinstance(card, dict) and isinstance(card.get("identity"), dict) and isinstance(card.get("special"), dict)
            and set(card["special"]) == set(_SPECIAL) and ids([*card["special"].values(), card.get("query_marker")])
            and card.get("truncation_side") in ("right", "left") and isinstance(card.get("split_special_tokens"), bool)
            and card.get("input_names") in (["input_ids", "attention_mask", "token_type_ids"], ["input_ids", "attention_mask"])
            and isinstance(card.get("versions"), dict))


def _versions() -> dict:
    from importlib.metadata import version

    return {name: version(name) for name in ("transformers", "tokenizers", "onnxruntime")}


def _card_path(weights_sha256: str, path: Path, spec) -> Path:
    """The card of the model at ``path`` whose weights hash to ``weights_sha256``: named after the
    other files of its folder, of its transformer's and of its projections' (tokenizer files,
    configs, the markers' settings: whatever may change how a query is cut into ids), by name and bytes."""
    digest = hashlib.sha256()
    for folder in dict.fromkeys([path, path / spec.transformer_dir, *(path / sub for sub in spec.dense_dirs)]):
        for file in sorted(folder.iterdir()):
            if file.is_file() and file.suffix not in _NOT_READ:
                with open(file, "rb") as handle:
                    digest.update(os.fsencode(file.relative_to(path)) + b"\0" + hashlib.file_digest(handle, "sha256").digest())
    return cache_dir() / f"{weights_sha256[:24]}-{digest.hexdigest()[:24]}.queries.json"


def _projections(spec, path: Path, weight_files: list[Path]) -> list | None:
    """The linear layers after the transformer as numpy ``(weight, bias, activation)``, where they
    are in safetensors files with an activation numpy runs here; else None."""
    try:
        return numpy_layers(read_projections(spec, path, weight_files, torch_files=False))
    except EncoderError:
        return None
