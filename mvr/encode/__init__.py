"""Text -> token vectors: model forms (``forms``), runtimes torch / ONNX / int8 (``runtimes``),
the encoder (``encoder``) and what it returns (``tokens``)."""

import copyreg

from .encoder import Encoder
from .forms import DEFAULT_MODEL_NAME, EncoderSpec, default_model_path, detect_spec
from .tokens import TokenVectors, token_classes

__all__ = ["Encoder", "EncoderSpec", "TokenVectors", "DEFAULT_MODEL_NAME", "default_model_path", "detect_spec", "token_classes"]


def _settings(encoder: Encoder) -> tuple:
    """An Encoder pickled or deep-copied (a framework's copy of a retriever, another process): the
    settings that load it again, not its model's weights; a copy made of its path alone encoded
    with the model's own lengths and runtimes, which the index then refused, or did not."""
    settings = {"query_maxlen": encoder.spec.query_maxlen, "doc_maxlen": encoder.spec.doc_maxlen, "batch_size": encoder.batch_size, "threads": encoder.threads,
                "query_runtime": encoder.query_runtime, "doc_runtime": encoder.doc_runtime, "device": encoder.device, "precision": encoder.precision}
    return _load, (None if encoder.is_default else str(encoder.path), settings)


def _load(model, settings: dict) -> Encoder:
    return Encoder(model, **settings)


copyreg.pickle(Encoder, _settings)
