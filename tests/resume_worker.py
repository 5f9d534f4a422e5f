"""Builds an index (or resumes its build) slowly, for tests/test_resume.py to kill:
python resume_worker.py PATH MODEL N_DOCS CHUNK RESUME(0|1) [DELAY]"""

import sys
import time
from pathlib import Path

from mvr import Encoder, Index
from mvr.config import IndexConfig


def corpus(n: int, delay: float = 0.0):
    for i in range(n):
        if delay:
            time.sleep(delay)
        yield {"id": f"doc{i:03d}", "title": f"title {i}", "text": f"document {i} about {'tea' if i % 3 else 'cats'} and number {i * 7 % 11} " * (1 + i % 4),
               "metadata": {"n": i, "tag": "even" if i % 2 == 0 else "odd"}}


CONFIG = IndexConfig(sparse=("bm25s",))

if __name__ == "__main__":
    path, model, n, chunk, resume = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1"
    delay = float(sys.argv[6]) if len(sys.argv) > 6 else 0.02
    encoder = Encoder(model)
    print("READY", flush=True)
    Index.build(corpus(n, delay), Path(path), config=CONFIG, encoder=encoder, chunk_size=chunk, resume=resume, show_progress=False)
    print("DONE", flush=True)
