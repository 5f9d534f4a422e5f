"""The int8 document exports, made from a float ONNX export. :mod:`mvr.encode.runtimes` runs this
very file in a child process: ONNX Runtime's quantiser logs advice through the root logger and
configures it on first use, so it never runs in the process that asked for it.

``plain``: every MatMul's weights quantised to int8 per output channel, activations per run (ONNX
Runtime dynamic quantisation; the embedding tables too): the ``onnx-int8`` runtime, made the same
way, byte for byte, since indexes first recorded it.

``fused``: the ``onnx-int8-fused`` runtime. ONNX Runtime's transformer optimizer first fuses each
layer's attention (one ``Attention`` node: the Q, K and V products, softmax and mask), the
embeddings with their layer norm, and each bias with its GELU. Residual adds stay apart from their
layer norms: ONNX Runtime's fused ``SkipLayerNormalization`` takes five times as long here as the
two apart (the session that runs the graph turns that fusion off too: :data:`FUSED_SESSION_OFF`).
Only the products with weights (the fused attention's Q/K/V product among them) are then
quantised as ``plain`` does; the products of two activations (query by key, weights by value), the
embeddings and the layer norms stay float32. A probe input checks each step: the fused float graph
must give the traced one's outputs, and the int8 graph must stay close to them. Where the optimizer
fails or a check does not hold, the traced graph is quantised the same way (and checked), and the
report says why.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

# ONNX Runtime's own graph optimisations that a session running the ``fused`` graph leaves off.
FUSED_SESSION_OFF = ["SkipLayerNormFusion"]
# How the child reports back: the one stdout line that starts with it.
REPORT = "mvr-quantize-report "
# The least mean cosine between an int8 graph's outputs and its float graph's on the probe; int8
# gives 0.99 on real models, a graph the quantiser broke gives noise.
INT8_FLOOR = 0.9


def quantize(source: str, target: str, exclude: list[str] | None = None, ops: list[str] | None = None) -> None:
    """``source`` with its MatMul weights (``ops``: those node kinds; None: every kind the quantiser
    knows) int8 per output channel, into ``target``; the nodes named in ``exclude`` stay float."""
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    extra = {"DefaultTensorType": TensorProto.FLOAT} if ops else {}  # fused ops defeat the quantiser's shape inference
    quantize_dynamic(source, target, weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=ops, nodes_to_exclude=exclude or [], extra_options=extra)


def activation_products(model) -> list[str]:
    """The MatMul nodes of ``model`` (an onnx ModelProto) that multiply two activations."""
    weights = {init.name for init in model.graph.initializer}
    return [node.name for node in model.graph.node if node.op_type == "MatMul" and not any(name in weights for name in node.input)]


def _outputs(model_bytes: bytes, probe: list[int]) -> np.ndarray:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    ids = np.array([probe], dtype=np.int64)
    given = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    return session.run(None, {i.name: given[i.name] for i in session.get_inputs()})[0]


def _quantized(graph, target: str, want: np.ndarray, probe: list[int]) -> None:
    """``graph`` with only its products with weights in int8, into ``target``, checked on ``probe``
    against ``want`` (its float outputs)."""
    import onnx

    staged = f"{target}.staged.onnx"
    onnx.save(graph, staged)
    try:
        quantize(staged, target, exclude=activation_products(graph), ops=["MatMul", "Attention"])
    finally:
        os.unlink(staged)
    with open(target, "rb") as handle:
        got = _outputs(handle.read(), probe)
    a, b = want.reshape(-1, want.shape[-1]), got.reshape(-1, got.shape[-1])
    cosine = float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)).mean())
    if not cosine >= INT8_FLOOR:
        raise RuntimeError(f"the int8 graph's outputs are far from the float graph's on a probe (mean cosine {cosine:.3f})")


def fuse_and_quantize(source: str, target: str, heads: int, hidden: int, probe: list[int]) -> dict:
    """The ``fused`` export of ``source`` (an export traced through plain attention) into
    ``target`` (``heads`` / ``hidden``: the model's; 0 lets the optimizer read them off the graph);
    returns what was fused (empty where the traced graph was quantised) and why not."""
    import onnx

    traced = onnx.load(source)
    want = _outputs(traced.SerializeToString(), probe)
    try:
        from onnxruntime.transformers.fusion_options import FusionOptions
        from onnxruntime.transformers.optimizer import optimize_model

        options = FusionOptions("bert")
        options.enable_skip_layer_norm = options.enable_bias_skip_layer_norm = False
        optimized = optimize_model(source, model_type="bert", num_heads=heads, hidden_size=hidden, opt_level=1, optimization_options=options)
        got = _outputs(optimized.model.SerializeToString(), probe)
        if want.shape != got.shape or not np.allclose(want, got, rtol=1e-3, atol=1e-3):
            why = f"the fused graph's outputs differ from the traced one's by up to {float(np.abs(want - got).max()) if want.shape == got.shape else 'shape'}"
        else:
            _quantized(optimized.model, target, want, probe)
            return {"fused": {op: n for op, n in optimized.get_fused_operator_statistics().items() if n}}
    except Exception as error:  # an architecture the optimizer cannot read, or a fused graph the quantiser cannot
        why = f"{type(error).__name__}: {error}".splitlines()[0]
    _quantized(traced, target, want, probe)
    return {"fused": {}, "unfused_because": why}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    kind, source, target = argv[:3]
    if kind == "plain":
        quantize(source, target)
        report = {}
    else:
        report = fuse_and_quantize(source, target, int(argv[3]), int(argv[4]), json.loads(argv[5]))
    print(REPORT + json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
