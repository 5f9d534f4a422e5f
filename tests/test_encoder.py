"""The three model forms: detection, markers, query augmentation, skiplist, projection, identity.

Each expected vector is recomputed here by hand from the transformers model and the projection
weights read from disk, so the encoder's batching, masking and pruning are checked, not trusted.
"""

import json
import re
import string
import subprocess
import sys
import threading
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from conftest import TINY
from mvr import Encoder, EncoderError, IndexConfig, QueryError
from mvr.encode import detect_spec
from mvr.encode import quantize as quantize_module
from mvr.encode.quantize import activation_products, fuse_and_quantize
from mvr.encode.runtimes import OnnxTransformer


def _by_hand(encoder, ids, attention, weight=None, keep=None):
    with torch.inference_mode():
        hidden = encoder.model(
            input_ids=torch.tensor([ids]), attention_mask=torch.tensor([attention]), token_type_ids=torch.zeros(1, len(ids), dtype=torch.long)
        ).last_hidden_state[0]
        if weight is not None:
            hidden = hidden @ weight.T
        hidden = torch.nn.functional.normalize(hidden, dim=-1).numpy()
    return hidden if keep is None else hidden[keep]


def test_forms_are_detected(models, tmp_path):
    assert detect_spec(models["plain"]).kind == "plain"
    assert detect_spec(models["colbert"]).kind == "colbert"
    assert detect_spec(models["pylate"]).kind == "pylate"
    with pytest.raises(EncoderError, match="no config.json"):
        detect_spec(tmp_path)
    with pytest.raises(EncoderError, match="not found"):
        detect_spec(tmp_path / "missing")


def test_stanford_colbert_markers_augmentation_and_skiplist(models):
    encoder = Encoder(models["colbert"], doc_runtime="torch")
    tok = encoder.tokenizer
    assert encoder.dim == 16 and encoder.spec.query_maxlen == 12 and encoder.spec.doc_maxlen == 24
    q_marker, d_marker = tok.convert_tokens_to_ids("[unused0]"), tok.convert_tokens_to_ids("[unused1]")

    query = encoder.encode_queries("hello world")
    ids = [tok.cls_token_id, q_marker, *tok.encode("hello world", add_special_tokens=False), tok.sep_token_id]
    ids += [tok.mask_token_id] * (12 - len(ids))
    attention = [1 if t != tok.mask_token_id else 0 for t in ids]  # attend_to_mask_tokens = False
    from safetensors.torch import load_file

    weight = load_file(str(models["colbert"] / "model.safetensors"))["linear.weight"]
    assert query.vectors.shape == (12, 16)  # every [MASK] keeps its vector
    np.testing.assert_allclose(query.vectors, _by_hand(encoder, ids, attention, weight), atol=1e-5)

    text = "Hello, world! It works."
    doc = encoder.encode_documents([text])
    ids = [tok.cls_token_id, d_marker, *tok.encode(text, add_special_tokens=False), tok.sep_token_id]
    keep = [i for i, t in enumerate(ids) if tok.convert_ids_to_tokens(t) not in string.punctuation]
    assert len(keep) == len(ids) - 3  # , ! .
    np.testing.assert_allclose(doc.vectors, _by_hand(encoder, ids, [1] * len(ids), weight, keep), atol=1e-5)


def test_stanford_truncates_documents_at_doc_maxlen(models):
    encoder = Encoder(models["colbert"])
    encoded = encoder.encode_documents(["word " * 200, "short"])
    assert encoded.lengths[0] == 24 and encoded.truncated.tolist() == [True, False]


def test_pylate_prefixes_dense_and_expansion(models):
    encoder = Encoder(models["pylate"], doc_runtime="torch")
    tok = encoder.tokenizer
    assert encoder.spec.kind == "pylate" and encoder.dim == 8 and encoder.spec.query_maxlen == 10
    q_prefix = tok.convert_tokens_to_ids("[Q] ")
    d_prefix = tok.convert_tokens_to_ids("[D] ")
    assert q_prefix != tok.unk_token_id and d_prefix != tok.unk_token_id
    from safetensors.torch import load_file

    weight = load_file(str(models["pylate"] / "1_Dense" / "model.safetensors"))["linear.weight"]
    query = encoder.encode_queries(["a cat"])
    ids = [tok.cls_token_id, q_prefix, *tok.encode("a cat", add_special_tokens=False), tok.sep_token_id]
    ids += [tok.mask_token_id] * (10 - len(ids))
    attention = [1 if t != tok.mask_token_id else 0 for t in ids]
    np.testing.assert_allclose(query.vectors, _by_hand(encoder, ids, attention, weight), atol=1e-5)

    doc = encoder.encode_documents(["a cat; a dog."])
    ids = [tok.cls_token_id, d_prefix, *tok.encode("a cat; a dog.", add_special_tokens=False), tok.sep_token_id]
    keep = [i for i, t in enumerate(ids) if t not in (tok.convert_tokens_to_ids(";"), tok.convert_tokens_to_ids("."))]
    np.testing.assert_allclose(doc.vectors, _by_hand(encoder, ids, [1] * len(ids), weight, keep), atol=1e-5)


def test_pylate_without_expansion_keeps_only_real_query_tokens(models, tmp_path):
    import shutil

    folder = shutil.copytree(models["pylate"], tmp_path / "noexp")
    config = json.loads((folder / "config_sentence_transformers.json").read_text())
    config["do_query_expansion"] = False
    (folder / "config_sentence_transformers.json").write_text(json.dumps(config))
    encoder = Encoder(folder)
    assert encoder.encode_queries("a cat").vectors.shape[0] == len(encoder.tokenizer.encode("a cat")) + 1


def test_plain_encoder_keeps_every_token_without_markers(models):
    encoder = Encoder(models["plain"], doc_runtime="torch")
    tok = encoder.tokenizer
    assert encoder.spec.kind == "plain" and encoder.dim == 32
    text = "Hello, world!"
    ids = tok.encode(text)
    for encoded in (encoder.encode_queries(text), encoder.encode_documents([text])):
        np.testing.assert_allclose(encoded.vectors, _by_hand(encoder, ids, [1] * len(ids)), atol=1e-5)


@pytest.mark.parametrize("runtime", ["torch", "onnx", "onnx-int8", "onnx-int8-fused"])
def test_batching_and_length_sorting_do_not_change_vectors(models, runtime):
    # int8 included: its activations are quantised per run, so documents must not share one
    encoder = Encoder(models["plain"], batch_size=2, doc_runtime=runtime)
    texts = ["one", "a much longer text with many more tokens in it", "", "two words", "x " * 30]
    together = encoder.encode_documents(texts)
    for i, text in enumerate(texts):
        alone = encoder.encode_documents([text])
        np.testing.assert_allclose(together[i], alone.vectors, atol=1e-5)
    assert np.allclose(np.linalg.norm(together.vectors, axis=1), 1, atol=1e-5)
    assert encoder.doc_runtime == runtime  # no silent fall-back to PyTorch


@pytest.mark.parametrize("runtime", ["torch", "onnx-int8-fused"])
def test_float16_vectors_are_the_float32_ones_rounded(models, runtime):
    """What a build asks for: each document's vectors rounded to float16 in its lane, the bits
    that rounding the float32 ones gives (vectors.pca.half), on two lanes as on one."""
    from mvr.vectors.pca import half

    encoder = Encoder(models["colbert"], batch_size=2, doc_runtime=runtime, threads=2)
    texts = ["one", "a much longer text with many more tokens in it", "two words", "x " * 30, "the end."]
    want = encoder.encode_documents(texts)
    for threads in (1, 2):
        got = encoder.encode_documents(texts, dtype="float16", threads=threads)
        assert got.vectors.dtype == np.float16 and got.vectors.flags.c_contiguous
        np.testing.assert_array_equal(got.vectors.view(np.uint16), half(want.vectors).view(np.uint16))
        np.testing.assert_array_equal(got.offsets, want.offsets)
        np.testing.assert_array_equal(got.token_ids, want.token_ids)


@pytest.mark.parametrize("kind", ["plain", "colbert", "pylate"])
def test_onnx_document_runtimes_follow_pytorch(models, kind, tmp_path, monkeypatch):
    monkeypatch.setenv("MVR_CACHE_DIR", str(tmp_path))
    texts = ["Hello, world! It works.", "a much longer text with many more tokens in it " * 3, "two words"]
    reference = Encoder(models[kind], doc_runtime="torch").encode_documents(texts)
    for runtime, floor in (("onnx", 0.99999), ("onnx-int8", 0.9), ("onnx-int8-fused", 0.9)):
        encoder = Encoder(models[kind], doc_runtime=runtime)
        got = encoder.encode_documents(texts)
        assert encoder.doc_runtime == runtime
        np.testing.assert_array_equal(got.offsets, reference.offsets)  # same tokens kept (skiplist, markers)
        cosine = (got.vectors * reference.vectors).sum(axis=1)
        assert cosine.min() > floor, (runtime, cosine.min())
    int8_files = list((tmp_path / "onnx").glob("*-int8.onnx"))
    assert len(int8_files) == 1 and int8_files[0].stat().st_size < 0.5 * int8_files[0].with_name(int8_files[0].name.replace("-int8", "")).stat().st_size
    # the fused export: each layer's attention one node, whose Q/K/V product is int8, as are the
    # other products with weights; no product of two activations is quantised
    fused = next((tmp_path / "onnx").glob("*-int8-fused.onnx"))
    assert json.loads(Path(f"{fused}.json").read_text())["fused"]["Attention"] == 2  # the tiny models' 2 layers
    ops = Counter(node.op_type for node in onnx.load(fused).graph.node)
    assert ops["QAttention"] == 2 and ops["MatMulInteger"] == 6 and ops["MatMul"] == 0 and ops["Attention"] == 0
    # onnx-int8 is ONNX Runtime's dynamic quantisation of the float export, byte for byte as before
    direct = "import sys\nfrom onnxruntime.quantization import QuantType, quantize_dynamic\nquantize_dynamic(sys.argv[1], sys.argv[2], weight_type=QuantType.QInt8, per_channel=True)\n"
    float_file = int8_files[0].with_name(int8_files[0].name.replace("-int8", ""))
    subprocess.run([sys.executable, "-c", direct, str(float_file), str(tmp_path / "direct.onnx")], check=True, capture_output=True)  # it sets up the root logger
    assert (tmp_path / "direct.onnx").read_bytes() == int8_files[0].read_bytes()
    # the cache holds each model and its record, nothing left over
    left = sorted(p.name for p in (tmp_path / "onnx").iterdir())
    assert len(left) == 6 and all(name.endswith((".onnx", ".onnx.json")) and not name.startswith(".") for name in left), left


def test_fused_export_quantises_only_products_with_weights_and_checks_the_fused_graph(models, tmp_path, monkeypatch):
    """Whatever the optimizer fuses, products of two activations stay float; a fused graph whose
    outputs differ from the traced one's, or an optimizer that fails, leaves the traced graph."""
    import onnxruntime.transformers.optimizer as optimizer

    monkeypatch.setenv("MVR_CACHE_DIR", str(tmp_path))
    encoder = Encoder(models["plain"], doc_runtime="onnx-int8-fused")
    traced = tmp_path / "traced.onnx"
    config = encoder._onnx._export(traced, attention="eager")
    probe = encoder.tokenizer("cats purr and dogs bark")["input_ids"]
    assert len(activation_products(onnx.load(traced))) == 4  # Q.K and weights.V in each of 2 layers

    def ops(name):
        return Counter(node.op_type for node in onnx.load(tmp_path / name).graph.node)

    # told the wrong number of heads, the optimizer leaves attention unfused (the rest it fuses)
    report = fuse_and_quantize(str(traced), str(tmp_path / "a.onnx"), config.num_attention_heads * 2, config.hidden_size, probe)
    assert "Attention" not in report["fused"] and "unfused_because" not in report
    assert ops("a.onnx")["MatMulInteger"] == 12 and ops("a.onnx")["MatMul"] == 4  # Q.K and weights.V per layer stay float

    real = optimizer.optimize_model

    def wrong(*args, **kwargs):  # a fusion that changes what the graph computes
        model = real(*args, **kwargs)
        gamma = next(i for i in model.model.graph.initializer if i.name.endswith("LayerNorm.weight"))
        gamma.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(gamma) * 2, gamma.name))
        return model

    monkeypatch.setattr(optimizer, "optimize_model", wrong)
    report = fuse_and_quantize(str(traced), str(tmp_path / "b.onnx"), config.num_attention_heads, config.hidden_size, probe)
    assert report["fused"] == {} and "outputs differ" in report["unfused_because"]
    assert ops("b.onnx")["QAttention"] == 0 and ops("b.onnx")["MatMul"] == 4

    def failing(*args, **kwargs):
        raise ValueError("no such pattern")

    monkeypatch.setattr(optimizer, "optimize_model", failing)
    report = fuse_and_quantize(str(traced), str(tmp_path / "c.onnx"), config.num_attention_heads, config.hidden_size, probe)
    assert report == {"fused": {}, "unfused_because": "ValueError: no such pattern"}
    monkeypatch.setattr(optimizer, "optimize_model", real)
    monkeypatch.setattr(quantize_module, "INT8_FLOOR", 1.01)  # no int8 graph is that close: both checks fail, and say so
    with pytest.raises(RuntimeError, match="the int8 graph's outputs are far from the float graph's on a probe"):
        fuse_and_quantize(str(traced), str(tmp_path / "e.onnx"), config.num_attention_heads, config.hidden_size, probe)
    monkeypatch.undo()
    right = fuse_and_quantize(str(traced), str(tmp_path / "d.onnx"), config.num_attention_heads, config.hidden_size, probe)
    assert right["fused"]["Attention"] == 2 and "unfused_because" not in right and ops("d.onnx")["QAttention"] == 2


@pytest.mark.parametrize("runtime,batch", [("onnx-int8", 1), ("onnx-int8-fused", 1), ("onnx", 2)])
def test_documents_run_side_by_side_one_thread_each_with_the_same_vectors(models, runtime, batch, monkeypatch):
    """Under an ONNX runtime, documents run as many batches at once as the encoder has threads,
    each session run on one thread; the vectors are those of one thread, bit for bit."""
    encoder = Encoder(models["plain"], doc_runtime=runtime, batch_size=batch)
    texts = [f"document {i} " + "with words " * (i % 7) for i in range(12)]
    alone = encoder.encode_documents(texts, threads=1)
    runs, lock, together = [], threading.Lock(), threading.Barrier(2, timeout=30)  # opens only for two runs at once
    original = OnnxTransformer.run

    def run(self, feeds, runtime_, threads):
        with lock:
            runs.append((threading.get_ident(), threads))
            n = len(runs)
        if n in (1, 2):  # the first two meet
            together.wait()
        return original(self, feeds, runtime_, threads)

    monkeypatch.setattr(OnnxTransformer, "run", run)
    side_by_side = encoder.encode_documents(texts, threads=2)
    np.testing.assert_array_equal(side_by_side.vectors, alone.vectors)
    np.testing.assert_array_equal(side_by_side.token_ids, alone.token_ids)
    assert len(runs) == 12 // batch and {threads for _, threads in runs} == {1} and len({ident for ident, _ in runs}) >= 2
    # a single batch runs on every thread: the same vectors as on one, bit for bit
    one_batch = [encoder.encode_documents(texts[i : i + batch], threads=2).vectors for i in range(0, 12, batch)]
    np.testing.assert_array_equal(np.concatenate(one_batch), alone.vectors)
    assert {threads for _, threads in runs[12 // batch :]} == {2}


def test_a_model_onnx_runtime_cannot_open_falls_back_to_pytorch_once(models, monkeypatch):
    def unsupported(self, runtime, threads):
        raise RuntimeError("Could not find an implementation for SomeOp")

    monkeypatch.setattr(OnnxTransformer, "_open", unsupported)
    texts = [f"document {i} " + "with words " * i for i in range(6)]
    want = Encoder(models["plain"], doc_runtime="torch", query_runtime="torch")
    encoder = Encoder(models["plain"], doc_runtime="onnx-int8-fused")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = encoder.encode_documents(texts, threads=2)
    assert [str(w.message) for w in caught] == ["mvr: doc_runtime falls back to PyTorch; ONNX export of plain failed: Could not find an implementation for SomeOp"]
    np.testing.assert_allclose(got.vectors, want.encode_documents(texts).vectors, atol=1e-5)
    assert encoder.doc_runtime == "torch" and encoder.query_runtime == "onnx"
    with pytest.warns(UserWarning, match="query_runtime falls back to PyTorch"):
        np.testing.assert_allclose(encoder.encode_queries(["cats"]).vectors, want.encode_queries(["cats"]).vectors, atol=1e-5)
    assert encoder.query_runtime == "torch"


def test_unknown_runtime_is_refused(models):
    with pytest.raises(EncoderError, match="doc_runtime must be one of torch, onnx, onnx-int8"):
        Encoder(models["plain"], doc_runtime="int4")
    with pytest.raises(EncoderError, match="query_runtime must be one of torch, onnx"):
        Encoder(models["plain"], query_runtime="onnx-int8")


def test_default_model_is_the_embedded_minilm(default_encoder):
    identity = default_encoder.identity
    assert identity["name"] == "all-MiniLM-L6-v2" and identity["source"] == "default"
    assert identity["dim"] == 384 and identity["kind"] == "plain"
    assert identity["query_maxlen"] == 64 and identity["doc_maxlen"] == 256


def test_identities_differ_between_weights_and_lengths(models):
    a, b = Encoder(models["plain"]).identity, Encoder(models["plain-other"]).identity
    assert a["weights_sha256"] != b["weights_sha256"]
    assert Encoder(models["plain"], query_maxlen=16).identity["query_maxlen"] == 16


def test_bad_model_folders_are_refused(models, tmp_path):
    import shutil

    folder = shutil.copytree(models["pylate"], tmp_path / "badact")
    config = json.loads((folder / "1_Dense" / "config.json").read_text())
    config["activation_function"] = "my.custom.Activation"
    (folder / "1_Dense" / "config.json").write_text(json.dumps(config))
    with pytest.raises(EncoderError, match="unsupported activation"):
        Encoder(folder)
    with pytest.raises(EncoderError, match="at least 4"):
        Encoder(models["plain"], doc_maxlen=2)
    with pytest.raises(EncoderError, match="exceeds"):
        Encoder(models["plain"], doc_maxlen=4096)


@pytest.mark.parametrize("form, removed, said", [
    # transformers makes an empty tokenizer of such a folder: every word [UNK], an index of equal scores, no error
    ("plain", ("tokenizer.json", "vocab.txt"), "holds no tokenizer (tokenizer.json, vocab.txt or another vocabulary file): save the model's tokenizer there too"),
    ("colbert", ("tokenizer.json", "vocab.txt"), "holds no tokenizer"),
    ("pylate", ("1_Dense",), "modules.json names the Dense module '1_Dense', but"),  # a FileNotFoundError once
    ("pylate", ("modules.json",), "holds 1_Dense and config_sentence_transformers.json of a PyLate ColBERT model but no modules.json"),  # read as plain once
])
def test_a_checkpoint_copied_in_part_is_refused_with_what_is_missing(models, tmp_path, form, removed, said):
    import shutil

    folder = shutil.copytree(models[form], tmp_path / form)
    for name in removed:
        target = folder / name
        shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    with pytest.raises(EncoderError, match=re.escape(said)) as caught:
        Encoder(folder)
    assert "\n" not in str(caught.value)


def test_a_hugging_face_id_is_told_how_to_download():
    with pytest.raises(EncoderError, match=r"model folder not found: .*colbertv2.0\. .*A Hugging Face id\? .*huggingface-cli download colbert-ir/colbertv2.0 --local-dir DIR"):
        Encoder("colbert-ir/colbertv2.0")
    for path in ("./colbert-ir/colbertv2.0", "tests/colbertv2", "a/b/c"):  # a path: of a folder here, or not owner/name
        with pytest.raises(EncoderError, match="model folder not found") as caught:
            Encoder(path)
        assert "Hugging Face" not in str(caught.value), path


def test_projections_are_read_without_torch_as_torch_reads_them(models, tmp_path):
    """Dense weights are read from safetensors by mvr itself (queries never import torch): float32,
    float16 and bfloat16 give what torch's .float() gives; a damaged file, or layers that do not
    chain from the transformer's output, are one-line errors naming the file or folder."""
    from safetensors.torch import load_file, save_file

    from mvr.encode.forms import safetensors_arrays

    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        tensors = {"linear.weight": torch.randn(5, 3).to(dtype), "linear.bias": torch.randn(5).to(dtype)}
        save_file(tensors, tmp_path / "w.safetensors")
        weight, bias, absent = safetensors_arrays(tmp_path / "w.safetensors", "linear.weight", "linear.bias", "other")
        assert absent is None and weight.dtype == bias.dtype == np.float32
        np.testing.assert_array_equal(weight, tensors["linear.weight"].float().numpy())
        np.testing.assert_array_equal(bias, tensors["linear.bias"].float().numpy())
    folder = _bf16_dense(models, tmp_path)
    dense = folder / "1_Dense" / "model.safetensors"
    stored = load_file(dense)
    encoder = Encoder(folder, doc_runtime="torch")
    np.testing.assert_array_equal(encoder._projections[0][0].numpy(), stored["linear.weight"].float().numpy())
    np.testing.assert_array_equal(encoder._projections[0][1].numpy(), stored["linear.bias"].float().numpy())
    assert encoder.encode_queries(["a cat"]).vectors.shape[1] == 8
    for damage, match in ((lambda: dense.write_bytes(dense.read_bytes()[:40]), "not a readable safetensors file"),
                          (lambda: dense.write_bytes(b"\xff" * 8 + b"{}"), "not a readable safetensors file"),
                          (lambda: save_file({"linear.weight": torch.randn(8, TINY["hidden_size"] + 1)}, dense), "do not chain from the transformer's"),
                          (lambda: save_file({"linear.weight": torch.randn(8, TINY["hidden_size"]), "linear.bias": torch.randn(7)}, dense), "do not chain"),
                          (lambda: save_file({"linear.weight": torch.randn(8, TINY["hidden_size"]).to(torch.int32)}, dense), "weight' is I32; projections are read in float32"),
                          (lambda: _header(dense, {"linear.weight": {"dtype": "F32", "shape": [-1, 2], "data_offsets": [0, 8]}}), "disagree"),
                          (lambda: _header(dense, {"linear.weight": {"dtype": "F32", "shape": [2**40, 2**40], "data_offsets": [0, 2**64]}}), "disagree"),
                          (lambda: _header(dense, {"linear.weight": [[[[]]]] * 2}), "not a readable safetensors file"),
                          (lambda: dense.write_bytes((100_000).to_bytes(8, "little") + b"[" * 100_000), "not a readable safetensors file")):  # too deep for json
        damage()
        with pytest.raises(EncoderError, match=match) as raised:
            Encoder(folder)
        assert "\n" not in str(raised.value) and str(raised.value).count(str(folder)) == 1


def _header(file: Path, header: dict) -> None:
    """A safetensors file of this header (and a few bytes), whatever it says."""
    text = json.dumps(header).encode()
    file.write_bytes(len(text).to_bytes(8, "little") + text + bytes(8))


def test_stanford_checkpoint_with_pytorch_bin_weights(models, tmp_path):
    """colbert-ir/colbertv2.0 ships pytorch_model.bin rather than safetensors."""
    import shutil

    from safetensors.torch import load_file

    folder = shutil.copytree(models["colbert"], tmp_path / "bin")
    state = load_file(str(folder / "model.safetensors"))
    torch.save(state, folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    from_bin, from_safetensors = Encoder(folder), Encoder(models["colbert"])
    np.testing.assert_allclose(from_bin.encode_queries("a query").vectors, from_safetensors.encode_queries("a query").vectors, atol=1e-6)
    assert from_bin.identity["weights_sha256"] != from_safetensors.identity["weights_sha256"]  # different files


@pytest.mark.parametrize("form", ["plain", "colbert", "pylate"])
def test_onnx_query_runtime_gives_the_torch_vectors(models, form, tmp_path, monkeypatch):
    monkeypatch.setenv("MVR_CACHE_DIR", str(tmp_path))
    queries = ["what do cats eat", "lava", "a much longer question about the capital cities of europe"]
    onnx = Encoder(models[form], query_runtime="onnx")
    torch_ = Encoder(models[form], query_runtime="torch")
    a, b = onnx.encode_queries(queries), torch_.encode_queries(queries)
    np.testing.assert_array_equal(a.offsets, b.offsets)
    np.testing.assert_allclose(a.vectors, b.vectors, atol=1e-5)
    assert onnx.query_runtime == "onnx" and len(list(tmp_path.glob("onnx/*.onnx"))) == 1  # exported once, cached
    again = Encoder(models[form], query_runtime="onnx").encode_queries(queries)
    np.testing.assert_allclose(again.vectors, a.vectors, atol=1e-6)
    with pytest.raises(EncoderError, match="query_runtime"):
        Encoder(models[form], query_runtime="tf")


QUERIES = ["what do cats eat", "lava", "!!!", "Ünïcödé café naïve 日本語 的", "a much longer question " * 20, *[f"query number {i} about proteins" for i in range(40)]]


def _lean_and_full(index):
    """The index's encoder of queries without PyTorch, and its full Encoder."""
    from mvr.encode.queries import QueryEncoder

    lean = index._queries()
    assert isinstance(lean, QueryEncoder), "no card or export: the index loads the full encoder"
    return lean, index.encoder


def _bf16_dense(models, tmp_path) -> Path:
    """The PyLate model with its Dense weight and a bias stored in bfloat16."""
    import shutil

    from safetensors.torch import load_file, save_file

    folder = shutil.copytree(models["pylate"], tmp_path / "pylate-bf16")
    dense = folder / "1_Dense" / "model.safetensors"
    weight = load_file(dense)["linear.weight"]
    save_file({"linear.weight": weight.bfloat16(), "linear.bias": torch.linspace(-0.5, 0.5, weight.shape[0]).bfloat16()}, dense)
    return folder


@pytest.mark.parametrize("form", ["plain", "colbert", "pylate", "pylate-bf16"])
def test_queries_encode_without_pytorch_as_the_full_encoder_does(models, form, tmp_path, monkeypatch):
    from mvr import Index
    from mvr.encode.queries import QueryEncoder

    monkeypatch.setenv("MVR_CACHE_DIR", str(tmp_path / "cache"))
    docs = [(str(i), f"document {i} on cats, lava and proteins; it goes on: " + "word " * (i * 7)) for i in range(12)]
    model = _bf16_dense(models, tmp_path) if form == "pylate-bf16" else models[form]
    built = Index.build(docs, tmp_path / "idx", encoder=Encoder(model), config=IndexConfig(fde=None, sparse=()))
    first = Index.open(tmp_path / "idx")
    assert first._queries() is first.encoder  # no card yet: the full encoder, which writes one at its first queries
    expected = first.search(QUERIES[:5], k=5)
    assert len(list((tmp_path / "cache" / "onnx").glob("*.queries.json"))) == 1
    index = Index.open(tmp_path / "idx")
    lean, full = _lean_and_full(index)
    assert isinstance(lean, QueryEncoder) and index._encoder is not None  # asking for .encoder loaded it
    a, b = lean.encode_queries(QUERIES), full.encode_queries(QUERIES, show_progress=False)
    for field in ("offsets", "token_ids", "truncated"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    np.testing.assert_array_equal(a.vectors, b.vectors)  # the same numbers: both project and normalise in numpy
    assert a.truncated[4] and a.vectors.dtype == np.float32
    for encoder in (lean, full):  # threads=0 was taken for the default by both (the lean encoder runs queries on one thread)
        with pytest.raises(QueryError, match="threads must be a positive integer, got 0"):
            encoder.encode_queries(QUERIES[:1], threads=0)
    found = Index.open(tmp_path / "idx").search(QUERIES[:5], k=5)
    np.testing.assert_array_equal(found.indices, expected.indices)
    np.testing.assert_array_equal(found.scores, expected.scores)
    assert built.search(QUERIES[:5], k=5).indices.tolist() == expected.indices.tolist()


def test_a_card_of_other_files_versions_or_identity_is_not_used(models, tmp_path, monkeypatch):
    import shutil

    from mvr import EncoderMismatchError, Index
    from mvr.encode import queries

    monkeypatch.setenv("MVR_CACHE_DIR", str(tmp_path / "cache"))
    model = shutil.copytree(models["plain"], tmp_path / "model")
    Index.build([("a", "cats eat fish"), ("b", "lava flows")], tmp_path / "idx", encoder=Encoder(model), config=IndexConfig(fde=None, sparse=())).search("cats", k=1)
    (card,) = (tmp_path / "cache" / "onnx").glob("*.queries.json")
    _lean_and_full(Index.open(tmp_path / "idx"))
    monkeypatch.setenv("MVR_QUERY_RUNTIME", "torch")  # queries asked of PyTorch: so be it
    asked = Index.open(tmp_path / "idx")
    assert asked._queries() is asked.encoder
    monkeypatch.delenv("MVR_QUERY_RUNTIME")
    record = json.loads(card.read_text())
    for field, value in (("versions", {**record["versions"], "tokenizers": "0.0.1"}), ("identity", {**record["identity"], "tokenizer_sha256": "0" * 64})):
        card.write_text(json.dumps({**record, field: value}))
        assert queries.query_encoder(Index.open(tmp_path / "idx").manifest["encoder"]) is None, field
    card.write_text("{not json")
    assert queries.query_encoder(Index.open(tmp_path / "idx").manifest["encoder"]) is None
    card.write_text(json.dumps(record))
    config = json.loads((model / "tokenizer_config.json").read_text())
    (model / "tokenizer_config.json").write_text(json.dumps({**config, "do_lower_case": False}))  # another file: another card's name
    assert queries.query_encoder(Index.open(tmp_path / "idx").manifest["encoder"]) is None
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    _lean_and_full(Index.open(tmp_path / "idx"))
    other = Index.build([("a", "cats")], tmp_path / "other", encoder=Encoder(models["plain-other"]), config=IndexConfig(fde=None, sparse=()))
    other.search("cats", k=1)  # another model, with its card
    _lean_and_full(Index.open(tmp_path / "other"))
    mismatched = Index.open(tmp_path / "idx", model=models["plain-other"])  # its card is never this index's: the full encoder refuses
    assert queries.query_encoder(mismatched.manifest["encoder"], models["plain-other"]) is None
    with pytest.raises(EncoderMismatchError, match="differs"):
        mismatched.search("cats", k=1)
    # vectors of another model of the same size, encoded apart (the lean encoder's or the full one's): refused, not scored
    index = Index.open(tmp_path / "idx")
    mine = index.encode_queries(["cats"])
    assert mine.model == index.manifest["encoder"]["weights_sha256"] and index.search_encoded(mine, 1).doc_ids
    for theirs in (Index.open(tmp_path / "other").encode_queries(["cats"]), Encoder(models["plain-other"]).encode_queries(["cats"])):
        assert theirs.vectors.shape[1] == mine.vectors.shape[1]
        with pytest.raises(EncoderMismatchError, match=r"the query vectors were encoded by another model \(weights sha256 \w{12}\.\.\.\) than index 'idx'"):
            index.search_encoded(theirs, 1)
    assert index.search_encoded(type(mine)(mine.vectors, mine.offsets), 1).doc_ids  # vectors of no known model: the caller's to vouch for


def test_a_cold_search_imports_neither_torch_nor_transformers(default_index):
    default_index.search("cats", k=2)  # the full encoder's first queries leave the card
    script = (
        "import sys, json; from mvr import Index; index = Index.open(sys.argv[1]); found = index.search(['what do cats eat', 'lava'], k=3); "
        "print(json.dumps([found.indices.tolist(), found.scores.tolist(), index.device, [m for m in ('torch', 'transformers') if m in sys.modules]]))"
    )
    out = subprocess.run([sys.executable, "-c", script, str(default_index.path)], capture_output=True, text=True, check=True).stdout
    ids, scores, device, imported = json.loads(out.strip().splitlines()[-1])
    expected = default_index.search(["what do cats eat", "lava"], k=3)
    assert imported == [] and device == "cpu"
    assert ids == expected.indices.tolist()
    assert scores == expected.scores.tolist()


def test_a_card_follows_what_transformers_sets_per_call_and_the_files_beside_a_transformer_folder(models, tmp_path, monkeypatch):
    import shutil

    from mvr import Index

    monkeypatch.setenv("MVR_CACHE_DIR", str(tmp_path / "cache"))
    plain = shutil.copytree(models["plain"], tmp_path / "split")
    config = json.loads((plain / "tokenizer_config.json").read_text())
    (plain / "tokenizer_config.json").write_text(json.dumps({**config, "split_special_tokens": True}))  # "[MASK]" in a query is text, not the token
    Index.build([("a", "cats eat fish [MASK]")], tmp_path / "s", encoder=Encoder(plain), config=IndexConfig(fde=None, sparse=())).search("warm", k=1)
    lean, full = _lean_and_full(Index.open(tmp_path / "s"))
    a, b = lean.encode_queries(["what is [MASK] here"]), full.encode_queries(["what is [MASK] here"], show_progress=False)
    assert a.token_ids.tolist() == b.token_ids.tolist() and 103 not in a.token_ids.tolist()
    np.testing.assert_array_equal(a.vectors, b.vectors)

    model = tmp_path / "pylate"  # the transformer in a folder of its own, its markers' settings beside it
    shutil.copytree(models["pylate"], model / "0_Transformer", ignore=shutil.ignore_patterns("1_Dense", "modules.json", "config_sentence_transformers.json", "sentence_bert_config.json"))
    shutil.copytree(models["pylate"] / "1_Dense", model / "1_Dense")
    for name in ("config_sentence_transformers.json", "sentence_bert_config.json"):
        shutil.copy(models["pylate"] / name, model / name)
    modules = json.loads((models["pylate"] / "modules.json").read_text())
    (model / "modules.json").write_text(json.dumps([{**m, "path": "0_Transformer"} if m["path"] == "" else m for m in modules]))
    docs = [("a", "cats eat fish"), ("b", "lava flows downhill")]
    Index.build(docs, tmp_path / "p", encoder=Encoder(model), config=IndexConfig(fde=None, sparse=())).search("warm", k=1)
    _lean_and_full(Index.open(tmp_path / "p"))
    settings = json.loads((model / "config_sentence_transformers.json").read_text())
    (model / "config_sentence_transformers.json").write_text(json.dumps({**settings, "query_prefix": "[unused0]"}))  # another marker: another card
    Index.build(docs, tmp_path / "p", encoder=Encoder(model), config=IndexConfig(fde=None, sparse=()), overwrite=True)
    index = Index.open(tmp_path / "p")
    assert index._queries() is index.encoder  # no card of these files yet: not the old marker's
    index.search("warm", k=1)
    lean, full = _lean_and_full(Index.open(tmp_path / "p"))
    a, b = lean.encode_queries(["cats"]), full.encode_queries(["cats"], show_progress=False)
    assert a.token_ids.tolist() == b.token_ids.tolist() and a.token_ids[1] == full._query_marker_id
    np.testing.assert_array_equal(a.vectors, b.vectors)


def test_a_damaged_card_or_a_tokenizer_without_its_file_leaves_queries_to_the_full_encoder(models, tmp_path, monkeypatch):
    import shutil

    from mvr import Index

    monkeypatch.setenv("MVR_CACHE_DIR", str(tmp_path / "cache"))
    bare = shutil.copytree(models["plain"], tmp_path / "bare")
    (bare / "tokenizer.json").unlink()  # the fast tokenizer is made from vocab.txt
    Index.build([("a", "cats eat fish")], tmp_path / "b", encoder=Encoder(bare), config=IndexConfig(fde=None, sparse=())).search("warm", k=1)
    index = Index.open(tmp_path / "b")
    assert index._queries() is index.encoder and len(index.search("cats", k=1)[0]) == 1

    Index.build([("a", "cats eat fish")], tmp_path / "p", encoder=Encoder(models["plain"]), config=IndexConfig(fde=None, sparse=())).search("warm", k=1)
    (card,) = (tmp_path / "cache" / "onnx").glob("*.queries.json")
    record = json.loads(card.read_text())
    damages = [{**record, "special": {**record["special"], "pad_token": "0"}}, {**record, "special": {**record["special"], "pad_token": 10**30}},
               {**record, "query_marker": 10**9}, {**record, "truncation_side": "middle"}, "[" * 200000, ""]
    for damage in damages:
        card.write_text(damage if isinstance(damage, str) else json.dumps(damage))
        index = Index.open(tmp_path / "p")
        assert index._queries() is index.encoder, str(damage)[:60]
        assert len(index.search("cats", k=1)[0]) == 1  # the full encoder's search, which writes the card again
        assert json.loads(card.read_text()) == record


def test_an_export_is_made_again_for_another_configuration_of_the_same_weights(models, tmp_path, monkeypatch):
    import shutil

    monkeypatch.setenv("MVR_CACHE_DIR", str(tmp_path / "cache"))
    model = shutil.copytree(models["plain"], tmp_path / "model")
    Encoder(model, query_runtime="onnx").encode_queries(QUERIES[:3])
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "layer_norm_eps": 0.5}))  # the same weights, another graph
    onnx, plain = Encoder(model, query_runtime="onnx"), Encoder(model, query_runtime="torch")
    np.testing.assert_allclose(onnx.encode_queries(QUERIES[:3]).vectors, plain.encode_queries(QUERIES[:3]).vectors, atol=1e-5)
    assert len(list((tmp_path / "cache" / "onnx").glob("*.onnx"))) == 2
