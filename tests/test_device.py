"""--device: the choice of CPU or GPU, refused cleanly where there is no GPU, and the PyTorch paths
a GPU runs (autocast encoding, MaxSim by matrix products) checked here with the CPU as the device:
the same code, only the tensors' place differs. On a GPU machine, eval/gpu_check.py runs them there."""

import numpy as np
import pytest
import torch

from conftest import DOCS
from mvr import Encoder, Index
from mvr.cli import main
from mvr.config import DEFAULT_DOC_RUNTIME, IndexConfig
from mvr.device import resolve_device, resolve_precision
from mvr.errors import ConfigError
from mvr.storage import torch_tokens
from mvr.storage.torch_tokens import TorchTokens

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answers of a machine without a GPU")
CODECS = [
    IndexConfig(fde=None, sparse=()),
    IndexConfig(fde=None, sparse=(), codec="int8"),
    IndexConfig(fde=None, sparse=(), codec="residual", codec_bits=2, codec_centroids=8),
]


@no_gpu
def test_auto_is_the_cpu_and_cuda_is_refused_in_one_line(monkeypatch):
    monkeypatch.delenv("MVR_DEVICE", raising=False)
    assert resolve_device(None) == "cpu" and resolve_device("auto") == "cpu" and resolve_device("cpu") == "cpu"
    for name in ("cuda", "cuda:1"):
        with pytest.raises(ConfigError, match="install a CUDA build of torch") as caught:
            resolve_device(name)
        assert "\n" not in str(caught.value)
    monkeypatch.setenv("MVR_DEVICE", "cuda")
    with pytest.raises(ConfigError, match="install a CUDA build"):
        Encoder()
    monkeypatch.setenv("MVR_DEVICE", "cpu")
    assert resolve_device(None) == "cpu"


@pytest.mark.parametrize("bad", ["gpu", "cuda:x", "CPU", "", 3])
def test_unknown_devices_and_precisions_are_refused(bad):
    with pytest.raises(ConfigError, match="device must be one of auto, cpu, cuda"):
        resolve_device(bad)
    with pytest.raises(ConfigError, match="precision must be one of fp32, fp16, bf16"):
        resolve_precision(str(bad) or "half", "cpu")


def test_default_precision_follows_the_device(monkeypatch):
    assert resolve_precision(None, "cpu") == "fp32" and resolve_precision(None, "cuda") == "fp16" and resolve_precision("bf16", "cpu") == "bf16"
    # bf16 where the GPU has it (compute capability 8.0 on), else refused in one line: the GPU's answers as a T4 and an A100 give them
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    for capability, refused in (((7, 5), True), ((8, 0), False)):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
        if refused:
            with pytest.raises(ConfigError, match=r"precision bf16: Tesla T4 \(cuda:0, compute capability 7.5\) has no bf16 arithmetic; use --precision fp16"):
                resolve_precision("bf16", "cuda:0")
        else:
            assert resolve_precision("bf16", "cuda:0") == "bf16"


@no_gpu
def test_cli_device_cuda_without_a_gpu_is_one_line_and_writes_nothing(tmp_path, beir, capsys):
    home = tmp_path / "home"
    code = main(["index", str(beir / "corpus.jsonl"), "--name", "x", "--index-dir", str(home), "--device", "cuda", "--quiet"])
    err = capsys.readouterr().err
    assert code != 0 and "install a CUDA build of torch" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (home / "x").exists()
    assert main(["index", str(beir / "corpus.jsonl"), "--name", "x", "--index-dir", str(home), "--no-fde", "--sparse", "none", "--device", "cpu", "--quiet"]) == 0
    capsys.readouterr()
    code = main(["search", "x", "which animal purrs?", "--index-dir", str(home), "--device", "cuda:0", "--no-server"])
    err = capsys.readouterr().err
    assert code != 0 and "install a CUDA build of torch" in err and len(err.strip().splitlines()) == 1
    code = main(["index", "--from", "x", "--name", "y", "--index-dir", str(home), "--device", "cpu", "--quiet"])
    assert code != 0 and "deriving (--from) encodes nothing" in capsys.readouterr().err


def test_autocast_encoding_matches_float32(models):
    """The GPU's encoding path (PyTorch under autocast, texts batched by length) against float32:
    the same tokens, vectors within autocast's rounding. bf16 here (the CPU's autocast type);
    eval/gpu_check.py measures fp16 on a GPU."""
    texts = [text for _, _, text in DOCS]
    reference = Encoder(models["plain"], doc_runtime="torch", query_runtime="torch", device="cpu")
    autocast = Encoder(models["plain"], device="cpu", precision="bf16")
    assert (autocast.doc_runtime, autocast.query_runtime) == ("torch", "torch")  # ONNX Runtime has no autocast
    for side in ("encode_documents", "encode_queries"):
        a, b = getattr(reference, side)(texts), getattr(autocast, side)(texts)
        assert np.array_equal(a.offsets, b.offsets) and np.array_equal(a.token_ids, b.token_ids)
        cosine = np.sum(a.vectors * b.vectors, axis=1)
        assert cosine.min() > 0.98 and np.abs(np.linalg.norm(b.vectors, axis=1) - 1).max() < 1e-5
        assert not np.array_equal(a.vectors, b.vectors)  # autocast did run


def _stores(tmp_path, models):
    docs = [{"id": i, "title": t, "text": x} for i, t, x in DOCS] + [{"id": f"x{n}", "text": DOCS[n % 8][2] + " more words " * (n % 5)} for n in range(24)]
    for n, config in enumerate(CODECS):
        config = IndexConfig(**{**config.__dict__, "model": str(models["plain"])})
        yield Index.build(docs, tmp_path / f"i{n}", config=config)


@pytest.mark.parametrize("resident", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])  # float16: what a GPU keeps
def test_torch_maxsim_equals_the_kernels_for_every_codec(tmp_path, models, resident, dtype, monkeypatch):
    monkeypatch.setattr(torch_tokens, "_CELLS", 40)  # many small products and groups: document-aligned cuts get tested
    monkeypatch.setattr(torch_tokens, "_ROWS", 30)
    rng = np.random.default_rng(0)
    for n, index in enumerate(_stores(tmp_path, models)):
        store = index.segments[0].tokens
        device = TorchTokens(store, "cpu", budget=1 << 30 if resident else 0, dtype=dtype)
        # the float16 codec's vectors are float16 already; the others' decoded vectors move by float16's rounding
        atol = 1e-4 if dtype == torch.float32 or n == 0 else 4e-3
        queries = rng.standard_normal((11, store.dim)).astype(np.float32)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        offsets = np.array([0, 4, 11, 11])  # queries of 4 and 7 tokens, and one of none (scores 0)
        got = device.score_all(queries, offsets)
        assert (device._whole() is not None) == resident and np.allclose(got, store.score_all(queries, offsets), atol=atol) and not got[2].any()
        positions = rng.permutation(len(store.doc_offsets) - 1)[:13]
        expected = store.score(queries[:4], positions)
        assert np.allclose(device.score(queries[:4], positions), expected, atol=atol)
        for k, patience in ((3, 2), (5, 20)):
            got, scored = device.early_exit(queries[:4], positions, k, patience)
            want, scored_there = store.early_exit(queries[:4], positions, k, patience)
            both = min(scored, scored_there)  # float16's rounding may rank a near-tie otherwise, and stop a candidate sooner or later
            assert (scored == scored_there or atol > 1e-4) and np.allclose(got[:both], want[:both], atol=atol) and np.isneginf(got[scored:]).all()
        assert len(device) == len(store) and device.dim == store.dim and np.array_equal(device.decode(0, 5), store.decode(0, 5))


def test_search_through_torch_maxsim_gives_the_same_results(tmp_path, models):
    """The whole pipeline (exhaustive, candidates + rerank, early exit, a filter) with every
    segment's MaxSim in PyTorch, as Index.open(device="cuda") sets it up, against the kernels."""
    config = IndexConfig(model=str(models["plain"]), sparse=("bm25s",), codec="residual", codec_bits=2, codec_centroids=8)
    docs = [{"id": i, "title": t, "text": x, "metadata": {"n": n}} for n, (i, t, x) in enumerate(DOCS)]
    index = Index.build(docs, tmp_path / "i", config=config)
    index.add([{"id": f"x{n}", "text": DOCS[n][2] + " again", "metadata": {"n": n}} for n in range(5)], merge=False)
    device = Index.open(index.path)
    for segment in device.segments:
        segment.scorer = TorchTokens(segment.tokens, "cpu", budget=1 << 30)
    queries = ["which animal purrs?", "capital of France", "how do plants make sugar"]
    for options in ({"first_stage": "exhaustive"}, {}, {"first_stage": "bm25s", "candidates": 5}, {"early_exit": 2}, {"filter": {"n": {"$gte": 3}}}):
        a, b = index.search(queries, 5, **options), device.search(queries, 5, **options)
        assert a.doc_ids == b.doc_ids and np.array_equal(a.indices, b.indices), options
        assert np.allclose(a.scores, b.scores, atol=1e-4)


def test_gpu_check_runs_its_comparison_on_the_cpu(beir, monkeypatch):
    """eval/gpu_check.py, the script a GPU machine runs, with the CPU as its device."""
    from mvr.eval.gpu_check import run

    monkeypatch.setenv("MVR_DEVICE", "cuda")  # as a GPU machine's "auto" resolves: its CPU baseline asks for the CPU itself
    report = run(beir, 8, "cpu", "bf16", 4, 4)
    assert report["encoding"]["same_tokens"] and report["encoding"]["cosine_to_cpu_fp32_min"] > 0.98
    maxsim = report["exhaustive_maxsim"]
    assert maxsim["queries"] == 4 and maxsim["top10_overlap"] == 1.0 and maxsim["max_score_difference"] < 1e-4
    assert report["encoding"]["cpu_default_runtime"] == DEFAULT_DOC_RUNTIME  # the baseline is the CPU's default, wherever it runs
    stores = report["stores"]
    assert sorted(stores) == sorted(f"{c}, {r}" for c in ("float16", "int8", "residual") for r in ("resident", "per search"))
    for name, row in stores.items():
        assert row["resident"] == name.endswith(", resident") and row["early_exit_same_candidates"] == 1.0 and row["max_score_difference"] < 1e-4, name
        assert row["same_scores_again"], name


def test_stores_on_a_device_share_its_budget_and_give_it_back(tmp_path, models):
    """The bytes a device may hold are the process's to share: a store that no longer fits is
    scored per search (the same scores), and a store let go gives its share back."""
    import gc

    store = next(_stores(tmp_path, models)).segments[0].tokens
    need = len(store) * (store.dim * 4 + 8)
    budget = torch_tokens.Budget(need + need // 2)
    first, second = TorchTokens(store, "cpu", budget=budget), TorchTokens(store, "cpu", budget=budget)
    queries = np.ones((3, store.dim), dtype=np.float32) / np.sqrt(store.dim)
    a = first.score_all(queries, np.array([0, 3]))
    assert first._whole() is not None and budget.left == need // 2
    assert np.allclose(second.score_all(queries, np.array([0, 3])), a, atol=1e-5) and second._whole() is None and budget.left == need // 2
    del first
    gc.collect()
    assert budget.left == need + need // 2
    third = TorchTokens(store, "cpu", budget=budget)
    assert third._whole() is not None and budget.left == need // 2
    del third  # given back: the store the budget was short for takes it at its next search, as a new one would
    gc.collect()
    assert np.allclose(second.score_all(queries, np.array([0, 3])), a, atol=1e-5) and second._whole() is not None and budget.left == need // 2


def test_stores_opened_without_a_budget_share_the_devices(tmp_path, models, monkeypatch):
    """budget=None, as Index.open(device=...) opens every segment: one budget a device, taken in
    turn (on a GPU, half its free memory when first asked; the CPU's is given here)."""
    store = next(_stores(tmp_path, models)).segments[0].tokens
    need = len(store) * (store.dim * 4 + 8)
    assert torch_tokens.device_budget(torch.device("cpu")).left == 0 and TorchTokens(store, "cpu")._whole() is None  # the CPU keeps nothing unless asked
    monkeypatch.setitem(torch_tokens._BUDGETS, torch.device("cpu"), torch_tokens.Budget(need * 3 // 2))
    first, second = TorchTokens(store, "cpu"), TorchTokens(store, "cpu")
    assert first._whole() is not None and second._whole() is None and torch_tokens.device_budget(torch.device("cpu")).left == need // 2


def test_running_out_of_gpu_memory_is_one_line():
    """PyTorch's OutOfMemoryError (a RuntimeError: no handler for memory errors caught it) becomes
    a DeviceMemoryError, which the command line prints in one line and the server answers 503."""
    from mvr.device import device_memory
    from mvr.errors import DeviceMemoryError
    from mvr.server.api import _status

    import weakref

    held = []

    def work():  # what failed: its tensors are let go with the error, not kept by its traceback
        products = torch.zeros(1000)
        held.append(weakref.ref(products))
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    with pytest.raises(DeviceMemoryError) as caught:
        with device_memory("cpu", "encoding a batch of 64 texts", "pass a smaller batch size"):
            work()
    message = str(caught.value)
    assert message == "out of memory on cpu encoding a batch of 64 texts: pass a smaller batch size, or run on the CPU (--device cpu; MVR_DEVICE=cpu for mvr serve)."
    assert isinstance(caught.value, MemoryError) and held[0]() is None
    assert _status(caught.value) == 503
    with pytest.raises(DeviceMemoryError, match="out of memory on cpu x: y"), device_memory("cpu", "x", "y"):  # cuBLAS's own allocation
        raise RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`")
    for other in (ValueError("not memory"), RuntimeError("expected all tensors to be on the same device")):  # anything else passes through
        with pytest.raises(type(other), match=str(other)), device_memory("cpu", "x", "y"):
            raise other
