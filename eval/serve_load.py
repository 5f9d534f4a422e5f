"""``mvr serve`` under load, on loopback: a bounded run that stops by itself.

    python -m mvr.eval.serve_load INDEX ../shared/datasets/scifact --output docs/results/serve-scifact.json --markdown docs/server.md
    (--clients 16 --seconds 60 by default; --work DIR keeps the index copy the server writes to)

The index is hard-linked into a work folder (segments never change once written, so the copy
costs no space and the original is never written), and ``mvr serve`` runs on it as its own
process on a free loopback port. Then:

1. Reads: ``clients`` threads, each with its own kept-alive connection, send the dataset's test
   queries one at a time (each client from its own offset, round robin) for ``seconds``, default
   search options, k=10: throughput, latency p50 / p90 / p99 seen by the client, and errors (any
   non-200 answer, or a connection failure). Every distinct query answered is then searched in
   this process, on the same index, and compared: same ids in the same order, same scores.
2. Reads with a writer: the same for ``seconds``, while one more client adds batches of
   ``--write-batch`` new documents (copies of corpus documents under new ids) and deletes them
   again, through the server. Errors of reads and writes are counted apart.
3. Bad requests: the table of :data:`BAD_REQUESTS`, each sent once; the status and the message
   it got; then the server must still answer a search.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from .beir import load_beir, package_versions, save_report

K = 10

# (what, method, path, raw body, content type, expected status); {index} is the served index
BAD_REQUESTS = [
    ("malformed JSON", "POST", "/indexes/{index}/search", b'{"query": ', "application/json", 400),
    ("body not UTF-8", "POST", "/indexes/{index}/search", b'{"query": "\xff\xfe"}', "application/json", 400),
    ("a JSON list, not an object", "POST", "/indexes/{index}/search", b"[1, 2]", "application/json", 422),
    ("k as a string", "POST", "/indexes/{index}/search", b'{"query": "x", "k": "10"}', "application/json", 422),
    ("query as a number", "POST", "/indexes/{index}/search", b'{"query": 7}', "application/json", 422),
    ("unknown option", "POST", "/indexes/{index}/search", b'{"query": "x", "topk": 5}', "application/json", 422),
    ("k over the limit", "POST", "/indexes/{index}/search", b'{"query": "x", "k": 100000}', "application/json", 400),
    ("batch over the limit", "POST", "/indexes/{index}/search", json.dumps({"query": ["x"] * 1000}).encode(), "application/json", 400),
    ("query over the limit", "POST", "/indexes/{index}/search", json.dumps({"query": "x" * 100_000}).encode(), "application/json", 400),
    ("unknown first stage", "POST", "/indexes/{index}/search", b'{"query": "x", "first_stage": "nope"}', "application/json", 400),
    ("filter on a missing field", "POST", "/indexes/{index}/search", b'{"query": "x", "filter": {"year": 1}}', "application/json", 400),
    ("oversize body (40 MiB)", "POST", "/indexes/{index}/search", b'{"query": "' + b"x" * (40 * 2**20) + b'"}', "application/json", 413),
    ("form-encoded body", "POST", "/indexes/{index}/search", b"query=x", "application/x-www-form-urlencoded", 415),
    ("unknown index", "POST", "/indexes/nope/search", b'{"query": "x"}', "application/json", 404),
    ("path traversal", "POST", "/indexes/..%2F..%2Fetc/search", b'{"query": "x"}', "application/json", 404),
    ("hidden index name", "GET", "/indexes/.staging", None, None, 400),
    ("document without text", "POST", "/indexes/{index}/documents", b'{"documents": [{"id": "z"}]}', "application/json", 422),
    ("control character in an id", "POST", "/indexes/{index}/documents", b'{"documents": [{"id": "a\\u0000b", "text": "t"}]}', "application/json", 400),
    ("ids not strings", "DELETE", "/indexes/{index}/documents", b'{"ids": [1, 2]}', "application/json", 422),
    ("missing API key", "GET", "/indexes", None, None, 401),
]


def _start(work: Path, name: str, api_key: str) -> tuple[subprocess.Popen, str]:
    command = [sys.executable, "-m", "mvr.cli", "serve", name, "--index-dir", str(work), "--port", "0", "--quiet"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "MVR_API_KEY": api_key})
    line = process.stdout.readline()
    if "serving at" not in line:
        process.kill()
        raise SystemExit(f"mvr serve did not start: {process.stderr.read()}")
    return process, line.split("serving at ")[1].split()[0]


def _load(url: str, api_key: str, name: str, queries: list[str], clients: int, seconds: float, writer=None) -> dict:
    from ..client import Client

    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[str] = []
    answers: dict[str, list] = {}
    stop = threading.Event()

    def read(number: int) -> None:
        client = Client(url, api_key)
        at = number * len(queries) // clients
        while not stop.is_set():
            query = queries[at % len(queries)]
            at += 1
            started = time.perf_counter()
            try:
                hits = client.search(name, query, k=K)[0]
            except Exception as error:  # noqa: BLE001 - counted and shown
                errors.append(f"{type(error).__name__}: {error}")
                continue
            latencies[number].append((time.perf_counter() - started) * 1e3)
            answers.setdefault(query, hits)
        client.close()

    threads = [threading.Thread(target=read, args=(i,)) for i in range(clients)]
    wrote = {}
    if writer:
        threads.append(threading.Thread(target=lambda: wrote.update(writer(stop))))
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    all_ms = np.array([ms for per in latencies for ms in per])
    return {
        "clients": clients,
        "seconds": round(elapsed, 1),
        "queries": int(all_ms.size),
        "queries_per_second": round(all_ms.size / elapsed, 1),
        "latency_ms": {p: round(float(np.percentile(all_ms, q)), 1) for p, q in (("p50", 50), ("p90", 90), ("p99", 99))} if all_ms.size else {},
        "errors": len(errors),
        "error_examples": errors[:5],
        **({"writes": wrote} if writer else {}),
        "_answers": answers,
    }


def _writer(url: str, api_key: str, name: str, corpus: list[dict], batch: int):
    from ..client import Client

    def write(stop: threading.Event) -> dict:
        client, round_, counts = Client(url, api_key), 0, {"added": 0, "deleted": 0, "errors": 0, "error_examples": []}
        while not stop.is_set():
            round_ += 1
            docs = [{**corpus[(round_ * batch + j) % len(corpus)], "id": f"load-{round_}-{j}"} for j in range(batch)]
            try:
                counts["added"] += client.add(name, docs)["added"]
                counts["deleted"] += client.delete(name, [d["id"] for d in docs])["deleted"]
            except Exception as error:  # noqa: BLE001 - counted and shown
                counts["errors"] += 1
                counts["error_examples"].append(f"{type(error).__name__}: {error}")
        client.close()
        counts["error_examples"] = counts["error_examples"][:5]
        return counts

    return write


def _compare(index, answers: dict[str, list]) -> dict:
    """The server's answers against this process's search of the same index."""
    texts = sorted(answers)
    local = index.search(texts, k=K)
    same_ids = same_scores = 0
    worst = 0.0
    for text, hits in zip(texts, local):
        served = answers[text]
        same_ids += [h["id"] for h in served] == [h.id for h in hits]
        diff = max((abs(a["score"] - b.score) for a, b in zip(served, hits)), default=0.0)
        same_scores += diff == 0.0
        worst = max(worst, diff)
    return {"queries": len(texts), "identical_ids": same_ids, "identical_scores": same_scores, "max_score_difference": worst}


def _bad_requests(url: str, api_key: str, name: str) -> list[dict]:
    import http.client
    import urllib.parse

    parsed = urllib.parse.urlsplit(url)
    rows = []
    for what, method, path, body, kind, expected in BAD_REQUESTS:
        connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=120)
        headers = {"Content-Type": kind} if kind else {}
        if what != "missing API key":
            headers["Authorization"] = f"Bearer {api_key}"
        connection.request(method, path.format(index=name), body=body, headers=headers)
        response = connection.getresponse()
        payload = response.read()
        connection.close()
        try:
            message = json.loads(payload)["detail"]
        except (ValueError, KeyError, TypeError):
            message = payload[:200].decode(errors="replace")
        rows.append({"request": what, "status": response.status, "expected": expected, "message": message})
    return rows


def _markdown(report: dict) -> str:
    def phase(title: str, row: dict) -> list[str]:
        lat = row["latency_ms"]
        lines = [f"| {title} | {row['clients']} | {row['seconds']} | {row['queries']} | {row['queries_per_second']} | {lat.get('p50')} | {lat.get('p90')} | {lat.get('p99')} | {row['errors']} |"]
        return lines

    reads, mixed, same = report["reads"], report["reads_with_writer"], report["reads"]["matches_in_process"]
    writes = mixed["writes"]
    lines = [
        "# mvr serve under load",
        "",
        f"Measured by `{report['command']}` on {report['machine']['cpus']} CPU cores, client and server on the same machine",
        f"(index `{report['index']['name']}`: {report['index']['documents']} documents, default first stage `{report['index']['default_stage']}`, k={K};",
        "the server runs as its own process, `mvr serve` with its defaults: as many searches at once as cores, one thread each).",
        "",
        "| phase | clients | seconds | queries | queries/s | p50 ms | p90 ms | p99 ms | errors |",
        "|---|---|---|---|---|---|---|---|---|",
        *phase("searches", reads),
        *phase("searches + a writer", mixed),
        "",
        f"- Results against in-process search of the same index: {same['identical_ids']} of {same['queries']} distinct queries with identical ids in",
        f"  identical order, {same['identical_scores']} with identical scores (largest difference {same['max_score_difference']:.3g}).",
        f"- The writer, meanwhile: {writes['added']} documents added and {writes['deleted']} deleted through the server in batches,",
        f"  {writes['errors']} errors.",
        "",
        "## Bad requests",
        "",
        "Each sent once to the running server; every one gets a 4xx and a one-line message, and the server",
        f"answers searches after them: {'yes' if report['server_alive_after'] else 'NO'}.",
        "",
        "| request | status | message |",
        "|---|---|---|",
    ]
    for row in report["bad_requests"]:
        mark = "" if row["status"] == row["expected"] else f" (expected {row['expected']})"
        lines.append(f"| {row['request']} | {row['status']}{mark} | {row['message'].replace('|', '/')} |")
    counts = {}
    for row in report["bad_requests"]:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    lines += ["", "Statuses: " + ", ".join(f"{status}: {n}" for status, n in sorted(counts.items())) + "."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mvr.eval.serve_load", description=__doc__.split("\n\n")[0])
    parser.add_argument("index", help="index name (under --index-dir) or path; not written to: the server writes to a hard-linked copy")
    parser.add_argument("dataset", type=Path, help="BEIR dataset folder whose test queries are sent")
    parser.add_argument("--index-dir", type=Path, default=None)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60.0, help="each of the two load phases")
    parser.add_argument("--write-batch", type=int, default=8, help="documents per add (and delete) of the writer")
    parser.add_argument("--work", type=Path, default=None, help="folder for the index copy (default: a temporary one, removed after)")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--markdown", type=Path, default=None)
    args = parser.parse_args(argv)

    from ..index import Index
    from ..storage import locate

    source = locate(args.index, args.index_dir)
    work = Path(args.work or tempfile.mkdtemp(prefix="mvr-serve-load-"))
    copy = work / source.name
    if copy.exists():
        shutil.rmtree(copy)
    shutil.copytree(source, copy, copy_function=os.link)  # immutable segments: a hard-linked copy is a safe one
    index = Index.open(copy)
    if index.legacy:
        index.upgrade()
    queries, _ = load_beir(args.dataset)
    texts = [queries[q] for q in sorted(queries)]
    corpus = [{"id": d.id, "title": d.title, "text": d.text} for d in (index.document(p) for p in range(min(index.n_rows, 500)))]
    api_key = os.urandom(12).hex()
    process, url = _start(work, source.name, api_key)
    try:
        reads = _load(url, api_key, source.name, texts, args.clients, args.seconds)
        index.refresh()
        reads["matches_in_process"] = _compare(index, reads.pop("_answers"))
        mixed = _load(url, api_key, source.name, texts, args.clients, args.seconds, _writer(url, api_key, source.name, corpus, args.write_batch))
        mixed.pop("_answers")
        bad = _bad_requests(url, api_key, source.name)
        from ..client import Client

        alive = len(Client(url, api_key).search(source.name, texts[0], k=K)[0]) == K
    finally:
        process.terminate()
        process.wait(timeout=60)
    described = {"name": source.name, "documents": index.n_docs, "default_stage": index.default_stage, "dim": index.dim}
    del index
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    report = {
        "command": "python -m mvr.eval.serve_load " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "index": described,
        "dataset": str(args.dataset),
        "machine": {"cpus": os.cpu_count()},
        "packages": package_versions(),
        "reads": reads,
        "reads_with_writer": mixed,
        "bad_requests": bad,
        "server_alive_after": alive,
    }
    save_report(report, args.output, args.markdown, _markdown)
    print(json.dumps({k: report[k] for k in ("reads", "reads_with_writer")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
