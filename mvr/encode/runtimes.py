"""How a transformer runs: PyTorch, or its export to ONNX run by ONNX Runtime (float32, or with
int8 weights). The export is made once per model and kept under ``$MVR_CACHE_DIR`` (default
``~/.cache/mvr``), keyed by the weights' sha256."""

from __future__ import annotations

import contextlib
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


class ExportError(RuntimeError):
    """The transformer could not be exported to ONNX, quantised or opened by ONNX Runtime."""


class OnnxTransformer:
    """A transformer's ``last_hidden_state`` from ONNX Runtime; one session per (runtime, threads)."""

    def __init__(self, model, tokenizer, input_names: list[str], weights_sha256: str):
        self.model = model
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

        path = self.file(quantized=runtime == "onnx-int8")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def file(self, quantized: bool = False) -> Path:
        """The exported transformer (``quantized``: its int8 version), made on first use."""
        path = cache_dir() / f"{self.weights_sha256[:24]}-{len(self.input_names)}.onnx"
        if quantized:
            return self._quantized(self.file(), path.with_name(f"{path.stem}-int8.onnx"))
        if not path.is_file():
            self._export(path)
        return path

    def _export(self, path: Path) -> None:
        import warnings

        import torch

        path.parent.mkdir(parents=True, exist_ok=True)
        names = self.input_names

        class Transformer(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, *args):
                return self.inner(**dict(zip(names, args))).last_hidden_state

        example = torch.tensor([[self.tokenizer.cls_token_id, self.tokenizer.sep_token_id]])
        args = tuple(example if n == "input_ids" else torch.ones_like(example) if n == "attention_mask" else torch.zeros_like(example) for n in names)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        wrapper = Transformer(self.model).eval()
        try:
            with quiet_transformers(), torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    wrapper, args, str(tmp), input_names=names, output_names=["hidden"],
                    dynamic_axes={n: {0: "batch", 1: "tokens"} for n in [*names, "hidden"]}, opset_version=17, dynamo=False,
                )
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
            self.model.eval()  # the exporter may leave the module in training mode

    @staticmethod
    def _quantized(source: Path, path: Path) -> Path:
        """``source`` with every MatMul's weights quantised to int8 per output channel (ONNX
        Runtime dynamic quantisation: activations are quantised per run)."""
        if path.is_file():
            return path
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.{threading.get_ident()}.tmp.onnx")
        try:
            done = subprocess.run([sys.executable, "-c", _QUANTIZE, str(source), str(tmp)], capture_output=True, text=True)
            if done.returncode != 0:
                lines = done.stderr.strip().splitlines()
                why = lines[-1] if lines else (f"killed by signal {-done.returncode} (out of memory?)" if done.returncode < 0 else f"exit status {done.returncode}")
                raise RuntimeError(f"int8 quantisation failed: {why}")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path
