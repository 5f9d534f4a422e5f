"""Shared fixtures: tiny random models of each form, built here with save_pretrained (nothing is
downloaded), the embedded default model, and a tiny BEIR-layout dataset."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("MVR_QUIET", "1")
# The suite is the CPU's (tests/test_device.py checks the GPU's code with the CPU as its device; on a
# GPU machine, eval/gpu_check.py runs it there): "auto" would move every encoder and index to a GPU.
os.environ.setdefault("MVR_DEVICE", "cpu")
# Exported ONNX query models go to a cache of this test run, not the user's home. A process this run
# starts that imports this file (a Ray case, a killed writer) shares the run's cache; the process
# that made it removes it at exit, so runs do not pile up exports (about 190 MB each) in the temp dir.
if "MVR_TEST_CACHE" not in os.environ:
    os.environ["MVR_TEST_CACHE"] = tempfile.mkdtemp(prefix="mvr-test-cache-")
    atexit.register(shutil.rmtree, os.environ["MVR_TEST_CACHE"], True)
os.environ["MVR_CACHE_DIR"] = os.environ["MVR_TEST_CACHE"]

from mvr.config import IndexConfig  # noqa: E402  (light: no torch, no faiss)

# Tests that do not test first stages build without them: no FDE, no text stage (faster, no JVM).
FAST = IndexConfig(fde=None, sparse=())


TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)

DOCS = [
    ("d1", "Cats", "Cats are small domesticated carnivorous mammals that purr."),
    ("d2", "Dogs", "Dogs are loyal companions, descended from wolves."),
    ("d3", "Photosynthesis", "Plants convert sunlight, water and carbon dioxide into glucose."),
    ("d4", "Mitochondria", "The mitochondrion is the powerhouse of the cell; it makes ATP."),
    ("d5", "", "Paris is the capital and most populous city of France."),
    ("d6", "Rome", "Rome was the capital of the Roman Empire for centuries."),
    ("d7", "Volcanoes", "A volcano is a rupture in the crust through which lava erupts!"),
    ("d8", "Tea", "Green tea is rich in antioxidants called catechins."),
]
YEARS = {"d1": 2019, "d2": 2020, "d3": 2021, "d4": 2022, "d5": 2023, "d6": 2018, "d7": 2021, "d8": 2024}


def dated_docs() -> list[dict]:
    """DOCS as dicts, each with a "year" in its metadata (the server, page and retriever tests filter on it)."""
    return [{"id": i, "title": t, "text": x, "metadata": {"year": YEARS[i]}} for i, t, x in DOCS]


QUERIES = [
    ("q1", "which animal purrs?", {"d1": 1}),
    ("q2", "what is the capital of France", {"d5": 2, "d6": 0}),
    ("q3", "how do plants make sugar from light", {"d3": 1}),
    ("q4", "energy production in cells", {"d4": 1}),
]


def _tokenizer_files(dest: Path) -> None:
    from mvr.encode import default_model_path

    source = default_model_path()
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (source / name).is_file():
            shutil.copy(source / name, dest / name)


def make_plain(dest: Path, seed: int = 0) -> Path:
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    dest.mkdir(parents=True, exist_ok=True)
    BertModel(BertConfig(vocab_size=30522, **TINY)).save_pretrained(dest)
    _tokenizer_files(dest)
    return dest


def make_stanford(dest: Path, dim: int = 16, query_maxlen: int = 12, doc_maxlen: int = 24, seed: int = 0) -> Path:
    """A Stanford ColBERT (colbert-ir) checkpoint: HF_ColBERT = bert.* + linear (no bias) + artifact.metadata."""
    import torch
    from transformers import BertConfig, BertModel, BertPreTrainedModel

    class HF_ColBERT(BertPreTrainedModel):
        config_class = BertConfig
        base_model_prefix = "bert"

        def __init__(self, config):
            super().__init__(config)
            self.bert = BertModel(config)
            self.linear = torch.nn.Linear(config.hidden_size, dim, bias=False)
            self.post_init()

    torch.manual_seed(seed)
    dest.mkdir(parents=True, exist_ok=True)
    HF_ColBERT(BertConfig(vocab_size=30522, **TINY)).save_pretrained(dest)
    _tokenizer_files(dest)
    metadata = {
        "query_token_id": "[unused0]",
        "doc_token_id": "[unused1]",
        "query_maxlen": query_maxlen,
        "doc_maxlen": doc_maxlen,
        "dim": dim,
        "mask_punctuation": True,
        "attend_to_mask_tokens": False,
        "similarity": "cosine",
    }
    (dest / "artifact.metadata").write_text(json.dumps(metadata))
    return dest


def make_pylate(dest: Path, dim: int = 8, query_length: int = 10, document_length: int = 20, seed: int = 0) -> Path:
    """A PyLate ColBERT: Transformer at the root, one Dense module, prefixes added to the tokenizer."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(seed)
    dest.mkdir(parents=True, exist_ok=True)
    _tokenizer_files(dest)
    tokenizer = AutoTokenizer.from_pretrained(str(dest))
    tokenizer.add_tokens(["[Q] ", "[D] "])
    tokenizer.save_pretrained(dest)
    model = BertModel(BertConfig(vocab_size=30522, **TINY))
    model.resize_token_embeddings(len(tokenizer))
    model.save_pretrained(dest)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Dense", "type": "pylate.models.Dense.Dense"},
    ]
    (dest / "modules.json").write_text(json.dumps(modules))
    (dest / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": document_length - 1, "do_lower_case": False}))
    (dest / "config_sentence_transformers.json").write_text(
        json.dumps(
            {
                "query_prefix": "[Q] ",
                "document_prefix": "[D] ",
                "query_length": query_length,
                "document_length": document_length,
                "attend_to_expansion_tokens": False,
                "skiplist_words": list(string.punctuation),
                "do_query_expansion": True,
            }
        )
    )
    dense = dest / "1_Dense"
    dense.mkdir()
    (dense / "config.json").write_text(
        json.dumps({"in_features": TINY["hidden_size"], "out_features": dim, "bias": False, "activation_function": "torch.nn.modules.linear.Identity"})
    )
    save_file({"linear.weight": torch.randn(dim, TINY["hidden_size"])}, str(dense / "model.safetensors"))
    return dest


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {
        "plain": make_plain(root / "plain"),
        "plain-other": make_plain(root / "plain-other", seed=1),
        "colbert": make_stanford(root / "colbert"),
        "pylate": make_pylate(root / "pylate"),
    }


@pytest.fixture(scope="session")
def default_encoder():
    from mvr import Encoder

    return Encoder()


@pytest.fixture(scope="session")
def plain_encoder(models):
    """An encoder of the tiny random BERT model (token states, no ColBERT head): fast, for layout tests."""
    from mvr import Encoder

    return Encoder(models["plain"])


def write_beir(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "corpus.jsonl", "w") as handle:
        for doc_id, title, text in DOCS:
            handle.write(json.dumps({"_id": doc_id, "title": title, "text": text, "metadata": {}}) + "\n")
    with open(folder / "queries.jsonl", "w") as handle:
        for qid, text, _ in QUERIES:
            handle.write(json.dumps({"_id": qid, "text": text, "metadata": {}}) + "\n")
        handle.write(json.dumps({"_id": "q-unjudged", "text": "not in the qrels"}) + "\n")
    (folder / "qrels").mkdir(exist_ok=True)
    with open(folder / "qrels" / "test.tsv", "w") as handle:
        handle.write("query-id\tcorpus-id\tscore\n")
        for qid, _, rels in QUERIES:
            for doc_id, rel in rels.items():
                handle.write(f"{qid}\t{doc_id}\t{rel}\n")
    return folder


@pytest.fixture
def beir(tmp_path) -> Path:
    return write_beir(tmp_path / "tiny-beir")


@pytest.fixture(scope="session")
def default_index(tmp_path_factory, default_encoder):
    """The tiny corpus indexed with the default model (built once per session)."""
    from mvr import Index

    folder = write_beir(tmp_path_factory.mktemp("data") / "tiny-beir")
    return Index.build(folder / "corpus.jsonl", tmp_path_factory.mktemp("idx") / "tiny", encoder=default_encoder)


def kill_when_ready(args: list, seconds: float, after: str | None = None) -> tuple[str, str]:
    """Run the worker script ``args`` (after the interpreter) with this test run's import path,
    wait for its READY line (and then for a line starting with ``after``, if given), let it work
    ``seconds``, then SIGKILL it: its stdout (every line, those waited for included) and stderr,
    in which there must be no traceback (a worker that fails is not a worker killed)."""
    import threading

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    worker = subprocess.Popen([sys.executable, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    watchdog = threading.Timer(300, worker.kill)  # a worker that never says READY (or hangs) is killed, not waited for
    watchdog.start()
    seen = []
    try:
        seen.append(worker.stdout.readline())
        while seen[0].strip() == "READY" and after is not None and seen[-1] and not seen[-1].startswith(after):
            seen.append(worker.stdout.readline())
        time.sleep(seconds)
    finally:
        worker.send_signal(signal.SIGKILL)  # before its stderr is read: a worker blocked writing a full pipe never ends by itself
        out, err = worker.communicate(timeout=60)
        watchdog.cancel()
    assert seen[0].strip() == "READY", seen[0] + err
    assert "Traceback" not in err, err
    return "".join(seen) + out, err


def maxsim_reference(query: np.ndarray, docs: list[np.ndarray]) -> np.ndarray:
    """Plain NumPy MaxSim in float64: sum over query tokens of the best document token."""
    return np.array([(query.astype(np.float64) @ d.astype(np.float64).T).max(axis=1).sum() if len(d) else 0.0 for d in docs])


def segment_path(index_or_path) -> Path:
    """The one segment folder of a one-segment index (a freshly built one): given an open
    :class:`mvr.Index`, or an index folder (a copy too), read through its pointer and commit."""
    if not isinstance(index_or_path, (str, os.PathLike)):
        segments = index_or_path.segments
        assert len(segments) == 1, f"{index_or_path!r} has {len(segments)} segments, not one"
        return Path(segments[0].path)
    folder = Path(index_or_path)
    pointer = json.loads((folder / "manifest.json").read_text())
    assert pointer.get("format_version") == 2, f"{folder} is not a version-2 index: {pointer.get('format_version')!r}"
    commit = json.loads((folder / pointer["commit"]).read_text())
    assert len(commit["segments"]) == 1, f"{folder} has {len(commit['segments'])} segments, not one"
    return folder / "segments" / commit["segments"][0]["name"]
