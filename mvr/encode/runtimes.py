"""How a transformer runs: PyTorch, or its export to ONNX run by ONNX Runtime (float32, or with
int8 weights). The export is made once per model and kept under ``$MVR_CACHE_DIR`` (default
``~/.cache/mvr``), named after the weights' sha256. Beside each exported or quantised file, a
sidecar ``NAME.onnx.json`` records the full sha256 of the weights it came from and of the file
itself; a file is used only when both match (read once, checked, and given to ONNX Runtime as
those very bytes), else it is made again: another model's export under that name, a damaged
file, or one from before the sidecars would otherwise change every result silently."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path


@contextlib.contextmanager
def quiet_transformers():
    """transformers' own logging at ERROR and no progress bars, restored afterwards."""
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


def cache_dir() -> Path:
    return Path(os.environ.get("MVR_CACHE_DIR") or Path.home() / ".cache" / "mvr") / "onnx"


# The quantiser logs advice through the root logger (and configures it on first use): it runs in
# a child process so that nothing of this process's logging changes.
_QUANTIZE = (
    "import sys\n"
    "from onnxruntime.quantization import QuantType, quantize_dynamic\n"
    "quantize_dynamic(sys.argv[1], sys.argv[2], weight_type=QuantType.QInt8, per_channel=True)\n"
)


def check_runtime(name: str, value: str, allowed: tuple[str, ...]) -> str:
    from ..errors import EncoderError

    if value not in allowed:
        raise EncoderError(f"{name} must be one of {', '.join(allowed)}; got {value!r}.")
    return value


class ExportError(RuntimeError):
    """The transformer could not be exported to ONNX, quantised or opened by ONNX Runtime."""


class OnnxTransformer:
    """A transformer's ``last_hidden_state`` from ONNX Runtime; one session per (runtime, threads)."""

    def __init__(self, load_model, tokenizer, input_names: list[str], weights_sha256: str):
        self._load_model = load_model  # the PyTorch transformer, asked for only to export it
        self.tokenizer = tokenizer
        self.input_names = input_names
        self.weights_sha256 = weights_sha256
        self._sessions: dict[tuple[str, int], object] = {}
        self._lock = threading.Lock()

    def run(self, feeds: dict, runtime: str, threads: int):
        """Run ``feeds`` (name -> int64 array) through the ``runtime`` session ("onnx" or "onnx-int8")."""
        session = self._sessions.get((runtime, threads))
        if session is None:
            with self._lock:
                session = self._sessions.get((runtime, threads))
                if session is None:
                    try:
                        session = self._open(runtime, threads)
                    except Exception as error:  # an architecture the exporter cannot handle
                        raise ExportError(str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__) from error
                self._sessions[(runtime, threads)] = session
        return session.run(None, feeds)[0]

    def _open(self, runtime: str, threads: int):
        import onnxruntime

        model = self.exported(quantized=runtime == "onnx-int8")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])

    def path(self, quantized: bool = False) -> Path:
        """Where the export of these weights (``quantized``: its int8 version) is cached."""
        stem = f"{self.weights_sha256[:24]}-{len(self.input_names)}"
        return cache_dir() / (f"{stem}-int8.onnx" if quantized else f"{stem}.onnx")

    def exported(self, quantized: bool = False) -> bytes:
        """The serialised ONNX model of these weights (``quantized``: int8), checked against its
        sidecar; made again where the cached file is missing, unrecorded or not theirs."""
        path = self.path(quantized)
        data = _checked(path, self.weights_sha256, self.input_names)
        if data is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.stem}.{os.getpid()}.{threading.get_ident()}.tmp.onnx")
            try:
                if quantized:
                    self._quantize(self.exported(), tmp)
                else:
                    self._export(tmp)
                data = tmp.read_bytes()
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
            _record(path, {"weights_sha256": self.weights_sha256, "onnx_sha256": hashlib.sha256(data).hexdigest(), "input_names": self.input_names})
        return data

    def _export(self, path: Path) -> None:
        """The transformer exported to ``path`` (a temporary name: :meth:`exported` moves it)."""
        import warnings

        import torch

        names = self.input_names

        class Transformer(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, *args):
                return self.inner(**dict(zip(names, args))).last_hidden_state

        example = torch.tensor([[self.tokenizer.cls_token_id, self.tokenizer.sep_token_id]])
        args = tuple(example if n == "input_ids" else torch.ones_like(example) if n == "attention_mask" else torch.zeros_like(example) for n in names)
        model = self._load_model()
        wrapper = Transformer(model).eval()
        try:
            with quiet_transformers(), torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    wrapper, args, str(path), input_names=names, output_names=["hidden"],
                    dynamic_axes={n: {0: "batch", 1: "tokens"} for n in [*names, "hidden"]}, opset_version=17, dynamo=False,
                )
        finally:
            model.eval()  # the exporter may leave the module in training mode

    @staticmethod
    def _quantize(source: bytes, path: Path) -> None:
        """The float export ``source`` (checked bytes) with every MatMul's weights quantised to
        int8 per output channel into ``path`` (ONNX Runtime dynamic quantisation: activations are
        quantised per run). The quantiser reads a private copy of ``source``: it quantises the
        export that was checked, whatever happens to the cache meanwhile."""
        copy = path.with_name(f"{path.stem}.source.onnx")
        try:
            copy.write_bytes(source)
            done = subprocess.run([sys.executable, "-c", _QUANTIZE, str(copy), str(path)], capture_output=True, text=True)
            if done.returncode != 0:
                lines = done.stderr.strip().splitlines()
                why = lines[-1] if lines else (f"killed by signal {-done.returncode} (out of memory?)" if done.returncode < 0 else f"exit status {done.returncode}")
                raise RuntimeError(f"int8 quantisation failed: {why}")
        finally:
            copy.unlink(missing_ok=True)


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _checked(path: Path, weights_sha256: str, input_names: list[str]) -> bytes | None:
    """The bytes of the cached model ``path`` if its sidecar says it came from ``weights_sha256``
    with ``input_names`` and they hash to the sha256 it recorded; None otherwise."""
    try:
        record = json.loads(_sidecar(path).read_text(encoding="utf-8"))
        data = path.read_bytes()
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("weights_sha256") != weights_sha256 or record.get("input_names") != list(input_names):
        return None
    return data if record.get("onnx_sha256") == hashlib.sha256(data).hexdigest() else None


def _record(path: Path, record: dict) -> None:
    """Write the sidecar of ``path`` atomically (temporary name, fsync, rename): a reader sees
    the old record or the new one, and a model file without its record is never used."""
    sidecar = _sidecar(path)
    tmp = sidecar.with_name(f".{sidecar.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(record, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, sidecar)
    finally:
        tmp.unlink(missing_ok=True)
