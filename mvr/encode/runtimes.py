"""How a transformer runs: PyTorch, or its export to ONNX run by ONNX Runtime (float32, or with
int8 weights, its graph as traced or fused: :mod:`mvr.encode.quantize`). The export is made once per model and kept under ``$MVR_CACHE_DIR`` (default
``~/.cache/mvr``), named after the sha256 of the weights and of ``config.json`` (:func:`export_key`).
Beside each exported or quantised file, a sidecar ``NAME.onnx.json`` records that key in full
(as ``weights_sha256``) and the sha256 of the file itself; a file is used only when both match (read once, checked, and given to ONNX Runtime as
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

from ..threads import cores
from .quantize import FUSED_SESSION_OFF


_IMPORTING = threading.RLock()


def transformers_names(*names: str) -> tuple:
    """``names`` from transformers, its first import under one lock: two threads' first searches
    raced in its lazy module (one got "cannot import name 'AutoConfig' from 'transformers'")."""
    with _IMPORTING:
        import transformers

        return tuple(getattr(transformers, name) for name in names)


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


_RUN_FILE = "import runpy, sys; sys.path.pop(0); sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
# What each ONNX runtime runs, by the name of its cached file.
_SUFFIXES = {"onnx": "", "onnx-int8": "-int8", "onnx-int8-fused": "-int8-fused"}


def check_runtime(name: str, value: str, allowed: tuple[str, ...]) -> str:
    from ..errors import EncoderError

    if value not in allowed:
        raise EncoderError(f"{name} must be one of {', '.join(allowed)}; got {value!r}.")
    return value


class ExportError(RuntimeError):
    """The transformer could not be exported to ONNX, quantised or opened by ONNX Runtime."""


class OnnxTransformer:
    """A transformer's ``last_hidden_state`` from ONNX Runtime; one session per (runtime, threads).
    ``load_model``: the PyTorch transformer, asked for only to export it; ``folder``: where it was
    loaded from, read again with plain attention for the ``onnx-int8-fused`` export."""

    def __init__(self, load_model, tokenizer, input_names: list[str], weights_sha256: str, folder: Path):
        self._load_model = load_model
        self._folder = folder
        self.tokenizer = tokenizer
        self.input_names = input_names
        self.weights_sha256 = weights_sha256
        self._sessions: dict[tuple[str, int], object] = {}
        self._lock = threading.Lock()

    def run(self, feeds: dict, runtime: str, threads: int):
        """Run ``feeds`` (name -> int64 array) through the ``runtime`` session ("onnx", "onnx-int8" or "onnx-int8-fused")."""
        return self.session(runtime, threads).run(None, feeds)[0]

    def session(self, runtime: str, threads: int):
        """The ONNX Runtime session of ``runtime`` on ``threads`` threads, opened at its first use
        (the export made or read then); :class:`ExportError` where it cannot be."""
        threads = min(threads, cores())  # more only slow it down (mvr/threads.py)
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
        return session

    def _open(self, runtime: str, threads: int):
        return open_session(self.exported(runtime), runtime, threads)

    def path(self, runtime: str = "onnx") -> Path:
        """Where the export of these weights that ``runtime`` runs is cached."""
        return export_path(self.weights_sha256, self.input_names, runtime)

    def exported(self, runtime: str = "onnx") -> bytes:
        """The serialised ONNX model that ``runtime`` runs ("onnx": float32; "onnx-int8" and
        "onnx-int8-fused": :mod:`mvr.encode.quantize`), checked against its sidecar; made again
        where the cached file is missing, unrecorded or not theirs."""
        path = self.path(runtime)
        data = cached_export(self.weights_sha256, self.input_names, runtime)
        if data is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.stem}.{os.getpid()}.{threading.get_ident()}.tmp.onnx")
            source = tmp.with_name(f"{tmp.stem}.source.onnx")
            report: dict = {}
            try:
                if runtime == "onnx":
                    self._export(tmp)
                elif runtime == "onnx-int8":
                    source.write_bytes(self.exported())  # a private copy of the checked export, whatever happens to the cache
                    _quantize(["plain", str(source), str(tmp)])
                else:
                    config = self._export(source, attention="eager")
                    probe = self.tokenizer("a probe through both graphs: fused and traced", add_special_tokens=True)["input_ids"]
                    shape = [str(getattr(config, name, 0) or 0) for name in ("num_attention_heads", "hidden_size")]  # 0: read off the graph
                    report = _quantize(["fused", str(source), str(tmp), *shape, json.dumps(probe)])
                data = tmp.read_bytes()
                os.replace(tmp, path)
            finally:
                for left in (tmp, source, Path(f"{tmp}.staged.onnx")):  # the child's too, where it was killed
                    left.unlink(missing_ok=True)
            if report.get("unfused_because"):
                import warnings

                warnings.warn(f"mvr: the {runtime} export of {path.name} is the traced graph, unfused ({report['unfused_because']}); "
                              f"it is cached as such: delete {path} to try again.", stacklevel=2)
            import onnxruntime

            write_record(_sidecar(path), {"weights_sha256": self.weights_sha256, "onnx_sha256": hashlib.sha256(data).hexdigest(), "input_names": self.input_names,
                           "runtime": runtime, "onnxruntime": onnxruntime.__version__, **report})
        return data

    def _export(self, path: Path, attention: str | None = None):
        """The transformer exported to ``path`` (a temporary name: :meth:`exported` moves it);
        ``attention="eager"``: a copy loaded with plain attention, whose trace ONNX Runtime's
        optimizer can fuse (PyTorch's fused kernel traces into masking it cannot). Returns the
        transformer's config."""
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
        if attention is None:
            model = self._load_model()
        else:
            (AutoModel,) = transformers_names("AutoModel")
            with quiet_transformers():
                model = AutoModel.from_pretrained(str(self._folder), local_files_only=True, attn_implementation=attention).float().eval()
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
        return model.config


def open_session(model: bytes, runtime: str, threads: int):
    """An ONNX Runtime session of the serialised ``model`` that ``runtime`` runs, on ``threads`` threads."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    off = FUSED_SESSION_OFF if runtime == "onnx-int8-fused" else None
    return onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"], disabled_optimizers=off)


def export_key(weights_sha256: str, folder: Path) -> str:
    """What names a model's exports: the sha256 of its weights and of its ``config.json`` (the same
    weights under another configuration, another activation or layer norm epsilon, trace into
    another graph; the identity of an index does not hold it)."""
    config = Path(folder) / "config.json"
    extra = hashlib.sha256(config.read_bytes()).hexdigest() if config.is_file() else ""
    return hashlib.sha256(f"{weights_sha256}:{extra}".encode("ascii")).hexdigest()


def export_path(weights_sha256: str, input_names: list[str], runtime: str) -> Path:
    """Where the export of the weights ``weights_sha256`` taking ``input_names`` that ``runtime`` runs is cached."""
    return cache_dir() / f"{weights_sha256[:24]}-{len(input_names)}{_SUFFIXES[runtime]}.onnx"


def cached_export(weights_sha256: str, input_names: list[str], runtime: str) -> bytes | None:
    """The cached export of those weights for ``runtime``, checked against its sidecar; None where
    there is none that is theirs."""
    return _checked(export_path(weights_sha256, input_names, runtime), weights_sha256, input_names, runtime)


def _quantize(argv: list[str]) -> dict:
    """Run :mod:`mvr.encode.quantize` with ``argv`` in a child process (this very file, whatever
    another ``mvr`` the child's path might find); what it reports."""
    from . import quantize

    done = subprocess.run([sys.executable, "-c", _RUN_FILE, quantize.__file__, *argv], capture_output=True, text=True)
    reports = [line[len(quantize.REPORT):] for line in done.stdout.splitlines() if line.startswith(quantize.REPORT)]
    if done.returncode != 0 or not reports:
        lines = done.stderr.strip().splitlines()
        why = lines[-1] if lines else (f"killed by signal {-done.returncode} (out of memory?)" if done.returncode < 0 else f"exit status {done.returncode}")
        raise RuntimeError(f"int8 quantisation failed: {why}")
    return json.loads(reports[-1])


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _checked(path: Path, weights_sha256: str, input_names: list[str], runtime: str) -> bytes | None:
    """The bytes of the cached model ``path`` if its sidecar says it came from ``weights_sha256``
    with ``input_names``, for ``runtime`` (sidecars from before they named it: any but the fused
    one), and they hash to the sha256 it recorded; None otherwise."""
    try:
        record = json.loads(_sidecar(path).read_text(encoding="utf-8"))
        data = path.read_bytes()
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("weights_sha256") != weights_sha256 or record.get("input_names") != list(input_names):
        return None
    if record.get("runtime", None if runtime == "onnx-int8-fused" else runtime) != runtime:
        return None
    return data if record.get("onnx_sha256") == hashlib.sha256(data).hexdigest() else None


def write_record(sidecar: Path, record: dict) -> None:
    """Write the JSON ``record`` at ``sidecar`` atomically (temporary name, fsync, rename): a reader
    sees the old record or the new one, and a model file without its record is never used."""
    tmp = sidecar.with_name(f".{sidecar.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(record, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, sidecar)
    finally:
        tmp.unlink(missing_ok=True)
