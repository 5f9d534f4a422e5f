"""Text -> token vectors with a transformers model, for late interaction.

The model folder's form (Stanford ColBERT, PyLate, or any BERT-like encoder) is detected by
:mod:`mvr.encode.forms`; the transformer runs in PyTorch or ONNX Runtime (:mod:`mvr.encode.runtimes`).
Output is always one flat float32 ``(n_tokens, dim)`` array plus ``offsets`` (never padded 3-D
tensors), every row L2-normalised, with the vocabulary id behind each row.
"""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import numpy as np

from ..config import DEFAULT_DOC_RUNTIME, INT8_RUNTIMES, QUERY_RUNTIMES, RUNTIMES, positive_int
from ..device import autocast_dtype, device_memory, resolve_device, resolve_precision
from ..errors import EncoderError
from ..progress import progress
from ..threads import check_threads, cpu_threads
from .forms import DEFAULT_MODEL_NAME, default_model_path, detect_spec, encoder_settings, finish_vectors, numpy_layers, read_projections, weight_files_of, weights_checksum
from .runtimes import ExportError, OnnxTransformer, check_runtime, export_key, quiet_transformers, transformers_names
from .tokens import TokenVectors, character_spans, checked_texts, input_ids, token_classes, tokenizer_checksum, vector_dtype


def identity_differences(recorded: dict, actual: dict) -> list[str]:
    """What differs between an index's record of its encoder and another encoder's identity
    (its name and folder aside: the same weights may be moved or renamed; a field the record
    lacks, such as ``tokenizer_sha256`` in an index built before it was recorded, is not compared)."""
    keys = sorted(set(recorded) - {"name", "source"})
    return [f"{key}: index {recorded.get(key)!r}, query encoder {actual.get(key)!r}" for key in keys if recorded.get(key) != actual.get(key)]


class Encoder:
    """Encodes queries and documents into L2-normalised token vectors.

    ``model``: a local model folder, or None for the embedded default (all-MiniLM-L6-v2).
    ``query_maxlen`` / ``doc_maxlen``: override the model's own lengths (in tokens, markers and
    special tokens included). ``threads``: torch threads while encoding (restored afterwards).
    ``query_runtime``: "onnx" runs the transformer of query encoding in ONNX Runtime (exported
    once per model and cached under ``$MVR_CACHE_DIR``, default ``~/.cache/mvr``; same outputs
    within float rounding, about twice as fast at batch 1 on CPU), "torch" keeps PyTorch; None
    reads ``$MVR_QUERY_RUNTIME`` (default "onnx"). ``doc_runtime``: the same for documents, with
    "onnx-int8" and "onnx-int8-fused" too (weights int8 per output channel, activations quantised
    per run, one document per run; the fused graph is the default, docs/speed.md has their speed and
    nDCG@10; :mod:`mvr.encode.quantize` how each is made); None reads ``$MVR_DOC_RUNTIME``. A model the exporter
    cannot handle stays on PyTorch, with a warning. ``device`` (mvr/device.py): "auto" (a CUDA GPU
    when torch sees one, else the CPU; None reads ``$MVR_DEVICE``, default "auto"), "cpu", "cuda" or
    "cuda:N"; on a GPU both sides run in PyTorch, texts batched by length, under autocast at
    ``precision`` ("fp16" by default there, "bf16" or "fp32"); a precision other than fp32 runs
    PyTorch on the CPU too. Vectors always come back as float32 on the CPU.
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
        device: str | None = None,
        precision: str | None = None,
    ):
        import torch

        AutoConfig, AutoTokenizer = transformers_names("AutoConfig", "AutoTokenizer")
        for name, value in (("query_maxlen", query_maxlen), ("doc_maxlen", doc_maxlen), ("batch_size", batch_size), ("threads", threads)):
            positive_int("", name, value, optional=name != "batch_size")
            if name.endswith("maxlen") and value is not None and value < 4:
                raise EncoderError(f"{name} must be at least 4 tokens, got {value}.")
        self.is_default = model is None
        self.path = (default_model_path() if model is None else Path(model)).resolve()
        self.name = DEFAULT_MODEL_NAME if model is None else self.path.name
        self.spec = detect_spec(self.path, query_maxlen, doc_maxlen, given=model)
        self.batch_size = batch_size
        self.threads = threads
        self.query_runtime = check_runtime("query_runtime", query_runtime or os.environ.get("MVR_QUERY_RUNTIME") or "onnx", QUERY_RUNTIMES)
        self.doc_runtime = check_runtime("doc_runtime", doc_runtime or os.environ.get("MVR_DOC_RUNTIME") or DEFAULT_DOC_RUNTIME, RUNTIMES)
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        if self.device != "cpu" or self.precision != "fp32":  # ONNX Runtime runs here on the CPU, in float32 or int8
            self.query_runtime = self.doc_runtime = "torch"

        transformer_path = self._transformer_path = self.path / self.spec.transformer_dir
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(transformer_path), local_files_only=True)
            with quiet_transformers():
                self.config = AutoConfig.from_pretrained(str(transformer_path), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise EncoderError(f"could not load the model in {transformer_path}: {exc}") from None
        self._model = None  # the PyTorch transformer, loaded at first use (see model)
        self._model_lock = threading.Lock()
        weight_files = weight_files_of(transformer_path)
        layers = read_projections(self.spec, self.path, weight_files, inputs=self.config.hidden_size)
        self._numpy_layers = numpy_layers(layers)
        self._projections = [(torch.from_numpy(w), None if b is None else torch.from_numpy(b), name and getattr(torch.nn.functional, name)) for w, b, name in layers]
        self.dim, self._activations = layers[-1][0].shape[0] if layers else self.config.hidden_size, [name for _, _, name in layers]

        max_positions = getattr(self.config, "max_position_embeddings", None)
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
        self.weights_sha256, self.tokenizer_sha256 = weights_checksum(weight_files), tokenizer_checksum(tok)
        input_names = ["input_ids", "attention_mask", *(["token_type_ids"] if self._pass_token_types else [])]
        self._onnx = OnnxTransformer(lambda: self.model, tok, input_names, export_key(self.weights_sha256, transformer_path), transformer_path)

    @property
    def model(self):
        """The PyTorch transformer, loaded at its first use: queries run through the cached ONNX
        export never need it, which saves most of a cold start (docs/server.md)."""
        if self._model is None:
            with self._model_lock:
                if self._model is None:
                    (AutoModel,) = transformers_names("AutoModel")
                    try:
                        with quiet_transformers():
                            model = AutoModel.from_pretrained(str(self._transformer_path), local_files_only=True)
                    except (OSError, ValueError) as exc:
                        raise EncoderError(f"could not load the model in {self._transformer_path}: {exc}") from None
                    with device_memory(self.device, "loading the model", "free the GPU's memory"):
                        self._model = model.eval().float().to(self.device)
        return self._model

    # -- ONNX Runtime ----------------------------------------------------------------------------
    def onnx_ready(self, is_query: bool = False, threads: int = 1) -> bool:
        """Whether this side (documents by default) runs in ONNX Runtime, its session on ``threads``
        threads open (the export made or read); False where its runtime is torch or the model
        cannot be exported (then that side stays on torch from then on, with a warning)."""
        attribute = "query_runtime" if is_query else "doc_runtime"
        if getattr(self, attribute) == "torch":
            return False
        try:
            self._onnx.session(getattr(self, attribute), threads)
            return True
        except ExportError as exc:  # an architecture the exporter cannot handle
            warnings.warn(f"mvr: {attribute} falls back to PyTorch; ONNX export of {self.name} failed: {exc}", stacklevel=2)
            setattr(self, attribute, "torch")
            return False

    def _onnx_hidden(self, inputs: dict, is_query: bool, threads: int):
        """The transformer's last hidden state from ONNX Runtime on ``threads`` threads, or None
        (then torch runs) where this side does not run there (:meth:`onnx_ready`)."""
        import torch

        if not self.onnx_ready(is_query, threads):
            return None
        feeds = {name: value.numpy() for name, value in inputs.items()}
        return torch.from_numpy(self._onnx.run(feeds, self.query_runtime if is_query else self.doc_runtime, threads))

    def _torch_hidden(self, inputs: dict, dtype):
        """The transformer's last hidden state from PyTorch on this encoder's device (under
        autocast at ``dtype``, None: float32), as float32 on the CPU."""
        import torch

        texts, cast = len(inputs["input_ids"]), torch.autocast(torch.device(self.device).type, dtype) if dtype is not None else contextlib.nullcontext()
        with device_memory(self.device, f"encoding a batch of {texts} texts", "encode fewer texts at once (--batch-size, batch_size=; fewer queries a request)"), cast:
            # the inputs on the device are no name of this frame: at an error they go with the frames the traceback clears
            return self.model(**{name: value.to(self.device, non_blocking=True) for name, value in inputs.items()}).last_hidden_state.float().cpu()

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
            "tokenizer_sha256": self.tokenizer_sha256,
            "dim": int(self.dim),
            "skiplist_ids": [int(i) for i in self._skip_ids.tolist()],
            **{k: v for k, v in asdict(self.spec).items() if k not in ("dense_dirs", "transformer_dir", "skiplist")},
            **({"dense_activations": self._activations} if self.spec.dense_dirs else {}),  # their weights are in weights_sha256
        }

    # -- encoding --------------------------------------------------------------------------------
    def encode_queries(self, texts: str | Sequence[str], *, batch_size: int | None = None, threads: int | None = None, show_progress=None) -> TokenVectors:
        """Token vectors of queries (markers and ``[MASK]`` augmentation as the model wants)."""
        return self._encode(checked_texts(texts, True), is_query=True, batch_size=batch_size, threads=check_threads(threads), show_progress=show_progress)

    def encode_documents(self, texts: Sequence[str], *, batch_size: int | None = None, threads: int | None = None, show_progress=None, dtype="float32") -> TokenVectors:
        """Token vectors of documents (truncated at ``doc_maxlen`` tokens; skiplist tokens dropped), in float16 as stored where ``dtype`` says."""
        return self._encode(checked_texts(texts, False), is_query=False, batch_size=batch_size, threads=check_threads(threads), show_progress=show_progress, dtype=vector_dtype(dtype))

    def document_batch(self, batch_size: int | None = None) -> int:
        """Documents per run: ``batch_size`` (default the encoder's), or one under the int8 runtime,
        whose activations are quantised over the whole run: alone, a document's vectors do not
        depend on batch-mates (and no padding is wasted; on SciFact no slower than batches of 32)."""
        return 1 if self.doc_runtime in INT8_RUNTIMES else batch_size or self.batch_size

    def for_documents(self, doc_runtime: str, batch_size: int, threads: int | None) -> Encoder:
        """This encoder, or where it runs documents otherwise on the CPU, the same model there with
        ``doc_runtime`` (an index's: documents added to it are encoded as its others were)."""
        if self.doc_runtime == doc_runtime or self.device != "cpu" or self.precision != "fp32":
            return self
        return Encoder(**encoder_settings(self, batch_size=batch_size, threads=threads, doc_runtime=doc_runtime))

    def tokenize_documents(self, texts: Sequence[str]) -> list[list[int]]:
        """The model input ids of each document (markers and special tokens included, truncated)."""
        return self._token_ids(list(texts), is_query=False)[0]

    def document_token_ids(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """The token id behind each vector that :meth:`encode_documents` gives the same texts
        (skiplist tokens dropped): flat int32 ids and int64 offsets, one row range per text. For
        indexes built before token ids were stored with the vectors."""
        sequences, _ = self._token_ids(list(texts), is_query=False)
        skip = set(self._skip_ids.tolist())
        kept = [[t for t in ids if t not in skip] for ids in sequences]
        offsets = np.zeros(len(kept) + 1, dtype=np.int64)
        np.cumsum([len(ids) for ids in kept], out=offsets[1:])
        flat = np.fromiter((t for ids in kept for t in ids), dtype=np.int32, count=int(offsets[-1]))
        return flat, offsets

    @property
    def document_budget(self) -> int:
        """Text tokens a document may have before it is cut: ``doc_maxlen`` less [CLS], [SEP] and the marker."""
        return self.spec.doc_maxlen - 2 - (self._doc_marker_id is not None)

    def document_spans(self, text: str) -> tuple[np.ndarray, np.ndarray] | None:
        """The vocabulary id and character span in ``text`` of each vector :meth:`encode_documents`
        gives it (skiplist tokens dropped; ``(-1, -1)`` for [CLS], the marker and [SEP]); None
        where the tokenizer gives no offsets (not a fast tokenizer) or tokenises otherwise."""
        if not getattr(self.tokenizer, "is_fast", False):
            return None
        expected = self._token_ids([text], is_query=False)[0][0]  # [CLS] (marker) body [SEP]
        return character_spans(self.tokenizer, text, expected, 1 + (self._doc_marker_id is not None), self._skip_ids.numpy())

    def token_classes(self) -> dict[str, np.ndarray]:
        """Vocabulary ids of the token classes that pruning and clustering name (see
        :func:`mvr.encode.tokens.token_classes`), this model's markers counted as special."""
        return token_classes(self.tokenizer, (self._query_marker_id, self._doc_marker_id))

    def _token_ids(self, texts: list[str], is_query: bool) -> tuple[list[list[int]], np.ndarray]:
        """Model input ids of each text, and which texts were truncated to fit."""
        marker = self._query_marker_id if is_query else self._doc_marker_id
        maxlen = self.spec.query_maxlen if is_query else self.spec.doc_maxlen
        return input_ids(self.tokenizer, texts, marker, maxlen, expand=is_query and self.spec.query_expansion)

    def _encode(self, texts: list[str], *, is_query: bool, batch_size: int | None, threads: int | None, show_progress, dtype=np.dtype(np.float32)) -> TokenVectors:
        import torch

        positive_int("", "batch_size", batch_size, optional=True)  # 0 fell back to the default, -1 divided by zero
        if not texts:
            return TokenVectors(np.zeros((0, self.dim), dtype), np.zeros(1, np.int64), np.zeros(0, bool), np.zeros(0, np.int32), self.weights_sha256)
        sequences, truncated = self._token_ids(texts, is_query)
        batch_size = self.document_batch(batch_size) if not is_query else batch_size or self.batch_size
        order = np.argsort([-len(s) for s in sequences], kind="stable")
        results: list[np.ndarray | None] = [None] * len(texts)
        ids_out: list[np.ndarray | None] = [None] * len(texts)
        # show_progress may be a caller's reporter (one bar over a whole corpus), advanced here, closed there
        outer = hasattr(show_progress, "update")
        bar = show_progress if outer else progress(total=len(texts), desc="encoding queries" if is_query else "encoding documents", unit="text", show=show_progress)
        pad_id = self.tokenizer.pad_token_id or 0
        autocast, out_type = autocast_dtype(self.precision), getattr(torch, dtype.name)
        lock = threading.Lock()

        @torch.inference_mode()
        def encode(start: int) -> None:
            batch = [sequences[i] for i in order[start : start + batch_size]]
            width = max(len(s) for s in batch)
            id_rows = torch.full((len(batch), width), pad_id, dtype=torch.long)
            attention = torch.zeros((len(batch), width), dtype=torch.long)
            for row, ids in enumerate(batch):
                id_rows[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
                attention[row, : len(ids)] = 1
            if is_query and self.spec.query_expansion and not self.spec.attend_to_expansion:
                attention[id_rows == self.tokenizer.mask_token_id] = 0
            inputs = {"input_ids": id_rows, "attention_mask": attention}
            if self._pass_token_types:
                inputs["token_type_ids"] = torch.zeros_like(id_rows)
            hidden = self._onnx_hidden(inputs, is_query, each)
            if hidden is not None and is_query and self._numpy_layers is not None:  # as mvr/encode/queries.py does: the same vectors
                hidden = torch.from_numpy(finish_vectors(hidden.numpy(), self._numpy_layers))
            else:
                hidden = self._torch_hidden(inputs, autocast) if hidden is None else hidden
                for weight, bias, activation in self._projections:
                    hidden = torch.nn.functional.linear(hidden, weight, bias)
                    hidden = hidden if activation is None else activation(hidden)
                hidden = torch.nn.functional.normalize(hidden, p=2, dim=-1)
            if is_query and self.spec.query_expansion:
                keep = torch.ones_like(id_rows, dtype=torch.bool)
            else:
                keep = torch.zeros_like(id_rows, dtype=torch.bool)
                for row, ids in enumerate(batch):
                    keep[row, : len(ids)] = True
                if not is_query and len(self._skip_ids):
                    keep &= ~torch.isin(id_rows, self._skip_ids)
            for row, original in enumerate(order[start : start + batch_size]):
                results[original] = hidden[row][keep[row]].to(out_type).numpy()  # float16 as vectors.pca.half rounds
                ids_out[original] = id_rows[row][keep[row]].numpy().astype(np.int32)
            with lock:
                bar.update(len(batch))

        starts = range(0, len(order), batch_size)
        with cpu_threads(threads or self.threads, "torch"):
            # ONNX Runtime spreads one run over threads poorly: queries run on one (at batch 1 a second
            # costs more than it brings, docs/speed.md), document batches as many at once as there
            # are threads, the threads shared among them (a batch's vectors are the same on any
            # number: tests/test_encoder.py), once the session is open (the export made once, or
            # found failing: then PyTorch, one batch at a time on every thread).
            threads_now = torch.get_num_threads()
            lanes = 1 if is_query else min(threads_now, len(starts))
            each = 1 if is_query else max(1, threads_now // lanes)
            if lanes > 1 and self.onnx_ready(False, each):
                pool = ThreadPoolExecutor(lanes, thread_name_prefix="mvr-encode")
                try:  # each lane's torch work (normalising, projecting) on its own threads: lanes sharing torch's pool waited on each other, 10x per call
                    with cpu_threads(each, "torch"):
                        list(pool.map(encode, starts))  # each lane's error raised here
                finally:
                    pool.shutdown(cancel_futures=True)
            else:
                for start in starts:
                    encode(start)
        if not outer:
            bar.close()
        lengths = np.array([r.shape[0] for r in results], dtype=np.int64)
        offsets = np.zeros(len(texts) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        vectors = np.concatenate(results, axis=0) if results else np.zeros((0, self.dim), dtype=dtype)
        token_ids = np.concatenate(ids_out) if ids_out else np.zeros(0, dtype=np.int32)
        return TokenVectors(np.ascontiguousarray(vectors, dtype=dtype), offsets, truncated, token_ids, self.weights_sha256)
