"""The shape of the code and its promises to callers: one registry of names, imports that run one
way, no file past about 350 lines, no process-wide side effects, optional extras that say how to
install them, settings refused before anything is encoded, searches safe in parallel threads."""

import ast
import json
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from mvr import ConfigError, Index, IndexConfig, MissingExtraError, QueryError

ROOT = Path(__file__).resolve().parents[1]
# Each room of mvr/ and the rooms it may import from (its own and those below it).
LAYERS = [
    {"errors", "registry", "config", "progress", "threads", "device", "ids", "corpus", "client", "passages", "_kernels"},
    {"encode", "vectors"},
    {"stages", "storage"},
    {"search", "first_stage", "fusion", "feedback", "search_presets", "results", "segment", "segment_build", "encoding", "checkpoints", "streaming", "explain", "summary"},
    {"index", "build", "writer", "reranking"},
    {"cli", "eval", "server", "integrations", "distributed", "tuning", "training"},
]


def _room(module: str) -> str:
    return module.split(".")[0]


def _level(room: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if room in layer)


def _imports(path: Path, package: str):
    """Every mvr module a source file imports (lazy imports in functions too), as rooms."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".")[: len(package.split(".")) - node.level + 1]
            target = ".".join([*base, node.module] if node.module else base)
            parts = target.split(".")[1:]
            if parts:
                yield parts[0]
            else:  # from . import x
                yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mvr."):
            yield node.module.split(".")[1]


def test_imports_run_one_way():
    wrong = []
    for path in sorted((ROOT / "mvr").rglob("*.py")):
        relative = path.relative_to(ROOT / "mvr").with_suffix("")
        room = relative.parts[0] if len(relative.parts) > 1 else relative.parts[0]
        if room in ("__init__", "__main__"):
            continue
        package = ".".join(["mvr", *relative.parts[:-1]]) if path.name != "__init__.py" else ".".join(["mvr", *relative.parts[:-1]])
        for target in _imports(path, package):
            if target in ("__version__",) or target == room:
                continue
            if _level(target) > _level(room) or (target == "cli" and room != "cli") or (target == "eval" and room not in ("cli", "eval")):
                wrong.append(f"{relative} imports {target}")
    assert not wrong, wrong


def test_no_file_past_about_350_lines():
    long = {str(p.relative_to(ROOT)): n for p in [*(ROOT / "mvr").rglob("*.py"), *(ROOT / "eval").glob("*.py"), *(ROOT / "kernels").glob("*.py")] if (n := len(p.read_text().splitlines())) > 360}
    assert not long, long


def test_one_registry_of_first_stages():
    from mvr.cli import build_parser
    from mvr.registry import FIRST_STAGES, HYBRIDS, STAGES, parse_stage

    choices = next(a.choices for a in build_parser()._subparsers._group_actions[0].choices["search"]._actions if a.dest == "first_stage")
    assert tuple(choices) == FIRST_STAGES and set(HYBRIDS) == {f"{v}+{t}" for v in ("fde", "centroids", "pooled") for t in ("bm25", "bm25s", "splade")}
    for name, entry in STAGES.items():
        cls = entry.load()
        assert cls.name == name and cls.format and cls.version >= 1 and cls.binds in ("vectors", "doc_ids")
    page = (ROOT / "mvr" / "server" / "page.html").read_text()  # the search page's list of stages (it lacked the pooled ones)
    assert json.loads(page.split("const STAGES = ")[1].split(";")[0]) == list(FIRST_STAGES)
    assert parse_stage("fde+bm25s") == ("fde", "bm25s") and parse_stage("exhaustive") == ()
    with pytest.raises(ConfigError, match="unknown first stage 'nope'; available: exhaustive, fde"):
        parse_stage("nope")


def test_a_hybrid_name_is_searched_not_built(default_index):
    with pytest.raises(ConfigError, match="hybrids such as fde\\+bm25s are searched, not built"):
        default_index.build_sparse(["fde+bm25s"])


def _refusing_corpus():
    raise AssertionError("a document was read before the settings were checked")
    yield  # pragma: no cover


@pytest.mark.parametrize(
    "config, message",
    [
        (IndexConfig(fde={"factory": "NotAnIndex"}), "factory string 'NotAnIndex' \\(--fde-factory\\)"),
        (IndexConfig(fde={"d_proj": 512}), "d_proj=512 \\(--fde-d-proj\\) exceeds the 384"),
        (IndexConfig(pca_dim=500, fde=None), "pca_dim=500 \\(--pca-dim\\) exceeds the model's 384"),
        (IndexConfig(splade_model=None, sparse=()), None),
    ],
)
def test_bad_settings_fail_before_any_document_is_encoded(tmp_path, default_encoder, config, message):
    if message is None:  # a good config reads the corpus (and fails on this one's first document)
        with pytest.raises(AssertionError, match="read before"):
            Index.build(_refusing_corpus(), tmp_path / "x", config=config, encoder=default_encoder)
        return
    with pytest.raises(ConfigError, match=message):
        Index.build(_refusing_corpus(), tmp_path / "x", config=config, encoder=default_encoder)
    with pytest.raises(ConfigError, match=r"d_proj=32 \(--fde-d-proj\) exceeds the 16 token dimensions \(--pca-dim"):
        IndexConfig(pca_dim=16)  # a PCA width below the FDE projection, refused on construction


def test_missing_extras_name_the_pip_command():
    code = (
        "import sys; sys.modules['pyserini'] = None; sys.modules['ir_measures'] = None\n"
        "from mvr.stages.bm25 import start_jvm\n"
        "from mvr.eval.beir import evaluate_run\n"
        "from mvr import MissingExtraError\n"
        "for call in (start_jvm, lambda: evaluate_run({}, {'q': {'d': 1}})):\n"
        "    try:\n        call()\n    except MissingExtraError as e:\n        print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert len(out) == 2
    assert "pip install 'mvr[lucene]'" in out[0] and "bm25" in out[0]
    assert "pip install 'mvr[eval]'" in out[1]
    assert issubclass(MissingExtraError, ImportError)


def test_no_process_wide_side_effects(tmp_path):
    """Building with the int8 document runtime (which quantises) and searching leave logging, the
    environment and thread counts as they were."""
    code = (
        "import logging, os, sys, json, numba, torch\n"
        "from threadpoolctl import threadpool_info\n"
        "def state(): return [logging.getLogger().level, len(logging.getLogger().handlers), sorted(k for k in os.environ if not k.startswith('TORCH')), torch.get_num_threads(), numba.get_num_threads(), {p['filepath']: p['num_threads'] for p in threadpool_info()}]\n"
        "before = state()\n"
        "import mvr\n"
        "from pathlib import Path\n"
        "index = mvr.Index.build([('a', 'cats purr'), ('b', 'dogs bark')], Path(sys.argv[1]), config=mvr.IndexConfig(doc_runtime='onnx-int8-fused', threads=1))\n"
        "index.search('cats', k=1, threads=1); index.search('cats', k=1, first_stage='exhaustive', threads=1)\n"
        "print(json.dumps([before, state()]))\n"
    )
    env = {"MVR_CACHE_DIR": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin", "MVR_QUIET": "1", "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "idx")], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    before, after = json.loads(out.stdout.splitlines()[-1])
    for library, threads in before[-1].items():  # libraries loaded later (faiss's OpenMP) count from then on
        assert after[-1][library] == threads, library
    assert before[:-1] == after[:-1]  # logging, environment (torch's own cache variable aside), torch and Numba threads
    assert (tmp_path / "cache" / "onnx").is_dir() and any(p.name.endswith("-int8-fused.onnx") for p in (tmp_path / "cache" / "onnx").iterdir())


def test_eight_threads_searching_at_once_get_what_one_gets(default_index):
    import numba
    import torch
    from threadpoolctl import threadpool_info

    queries = ["which animal purrs?", "what is the capital of France", "how do plants make sugar", "energy in cells"]
    plans = [dict(), dict(first_stage="exhaustive"), dict(first_stage="bm25s", candidates=4), dict(first_stage="fde", candidates=3, early_exit=2)]
    expected = [default_index.search(queries, k=5, **plan) for plan in plans]
    before = (torch.get_num_threads(), numba.get_num_threads(), {p["filepath"]: p["num_threads"] for p in threadpool_info()})
    start = threading.Barrier(8)

    def work(worker: int):
        start.wait()
        out = []
        for round_ in range(6):
            plan = (worker + round_) % len(plans)
            got = default_index.search(queries, k=5, threads=1 + (worker % 2), **plans[plan])
            out.append((plan, got.indices, got.scores))
        return out

    with ThreadPoolExecutor(max_workers=8) as pool:
        done = list(pool.map(work, range(8)))
    for results in done:
        for plan, indices, scores in results:
            np.testing.assert_array_equal(indices, expected[plan].indices)
            np.testing.assert_allclose(scores, expected[plan].scores, rtol=1e-6)
    assert (torch.get_num_threads(), numba.get_num_threads(), {p["filepath"]: p["num_threads"] for p in threadpool_info()}) == before


def test_eval_drops_a_document_whose_id_is_the_query_id(tmp_path, default_encoder):
    from conftest import write_beir
    from mvr.cli.eval import run_files
    from mvr.eval.beir import evaluate

    folder = write_beir(tmp_path / "beir")
    # a corpus that holds its query q1 as a document too, as ArguAna's and Quora's do
    with open(folder / "corpus.jsonl", "a") as handle:
        handle.write(json.dumps({"_id": "q1", "title": "", "text": "which animal purrs?"}) + "\n")
    index = Index.build(folder / "corpus.jsonl", tmp_path / "idx", encoder=default_encoder, show_progress=False)
    report, runs = evaluate(folder, index, first_stage="exhaustive")
    kept, kept_runs = evaluate(folder, index, first_stage="exhaustive", ignore_identical_ids=False)
    assert report["ignore_identical_ids"] is True and kept["ignore_identical_ids"] is False
    assert "q1" not in runs["exhaustive"]["q1"] and next(iter(sorted(kept_runs["exhaustive"]["q1"].items(), key=lambda x: -x[1])))[0] == "q1"
    assert report["RR@10"] == 1.0 and kept["RR@10"] < 1.0  # the query itself no longer outranks its answer
    files = run_files(tmp_path / "run.trec", ["fde@2", "fde@8"])
    assert [p.name for p in files.values()] == ["run.fde@2.trec", "run.fde@8.trec"]
    assert run_files(tmp_path / "run.trec", ["exhaustive"]) == {"exhaustive": tmp_path / "run.trec"}


def test_search_options_default_in_one_place():
    from mvr.cli import build_parser
    from mvr.config import CENTROID_PROBE, DENSE_SHARE, FDE_EF_SEARCH, FDE_NPROBE, FUSION_WEIGHT, FDEConfig
    from mvr.search import SearchOptions

    from mvr.cli.common import search_options

    args = build_parser().parse_args(["search", "x", "q"])
    assert search_options(args) == {} and args.first_stage is None  # nothing given: SearchOptions' defaults (or a preset's) stand
    helps = {a.dest: a.help for a in build_parser()._subparsers._group_actions[0].choices["search"]._actions}
    assert f"default {FDE_NPROBE})" in helps["nprobe"] and f"default {FDE_EF_SEARCH})" in helps["ef_search"] and f"default {CENTROID_PROBE})" in helps["centroid_probe"] and f"default {DENSE_SHARE})" in helps["dense_share"] and f"default {FUSION_WEIGHT})" in helps["fusion_weight"]
    from mvr.cli.common import fde_config

    args = build_parser().parse_args(["index", "c", "--name", "x"])
    f = FDEConfig()  # FDE flags left out are None (told from one given at its default), and stand for FDEConfig's defaults
    assert (args.fde_k_sim, args.fde_d_proj, args.fde_reps, args.fde_factory) == (None,) * 4 and fde_config(args) == f and args.doc_runtime == IndexConfig().doc_runtime
    helps = {a.dest: a.help for a in build_parser()._subparsers._group_actions[0].choices["index"]._actions}
    assert f"default {f.k_sim})" in helps["fde_k_sim"] and f"default {f.reps})" in helps["fde_reps"] and f"default {f.factory} = exact)" in helps["fde_factory"]
    with pytest.raises(QueryError, match="unknown search option"):
        SearchOptions.create(bogus=1)


def test_what_moved_says_where(default_index):
    with pytest.raises(AttributeError, match=r"Index.fde is gone; use index.stage\('fde'\)"):
        default_index.fde  # noqa: B018
    with pytest.raises(AttributeError, match="index.tokens"):
        default_index.doc_codes  # noqa: B018
    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        default_index.nonsense  # noqa: B018
    assert not hasattr(default_index, "has_fde") and default_index.has_stage("fde")
