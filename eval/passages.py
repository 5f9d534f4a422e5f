"""Questions about the later sections of this repository's docs/, asked of docs/ indexed whole
(each file cut at the model's 256 tokens) and as passages (``--passage-tokens 128``): where the
right file ranks, and whether the hit's text holds the answer.

    python -m mvr.eval.passages HOME --output docs/results/passages-docs.json
    (HOME holds the indexes docs-cut and docs-passages that eval/reproduce_passages.sh builds)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# (question, the file that answers it, a phrase of the answering section)
QUESTIONS = [
    ("which Prometheus metrics does the server export for search stages", "server.md", "mvr_search_stage_seconds"),
    ("how many times is a writer process killed in the crash test", "living.md", "SIGKILLs a real writer process 50 times"),
    ("what are the steps to add a new codec", "architecture.md", "deriving from `CodedStore`"),
    ("how long does deriving an index take compared to encoding again", "compression.md", "71-79 s for SciFact"),
    ("what happens to a query made only of stopwords with BM25", "sparse.md", "analyses to no terms"),
    ("why are documents encoded one per run with int8 quantisation", "speed.md", "independent of its batch-mates"),
]
K = 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mvr.eval.passages", description=__doc__.split("\n\n")[0])
    parser.add_argument("home", type=Path, help="folder holding the indexes docs-cut and docs-passages")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    from ..index import Index

    rows = []
    for name in ("docs-cut", "docs-passages"):
        index = Index.open(name, home=args.home)
        results = index.search([q for q, _, _ in QUESTIONS], k=K)
        for (question, expected, phrase), hits in zip(QUESTIONS, results):
            rank = next((h.rank for h in hits if h.id == expected), None)
            answered = any(h.id == expected and phrase in h.text for h in hits)
            first = index.search(question, k=1, first_stage="exhaustive")[0][0]
            rows.append({"index": name, "question": question, "expected": expected, "rank": rank, "text_holds_answer": answered,
                         "exhaustive_top1": first.id, "top1_passage": first.passage})
    summary = {name: {"found_in_top_3": sum(r["rank"] is not None for r in rows if r["index"] == name),
                      "answer_in_text": sum(r["text_holds_answer"] for r in rows if r["index"] == name),
                      "questions": len(QUESTIONS)} for name in ("docs-cut", "docs-passages")}
    report = {"command": "python -m mvr.eval.passages " + " ".join(argv if argv is not None else sys.argv[1:]), "k": K, "summary": summary, "rows": rows}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
