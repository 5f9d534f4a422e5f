#!/usr/bin/env bash
# Reruns every figure of docs/compression.md: pruning, per-document clustering (k-means and Ward)
# and the int8 / residual codecs, derived from the full float16 indexes `scifact` and `nfcorpus`
# (built by eval/reproduce.sh; nothing is encoded again). From the repository root after
# `pip install -e '.[all]'`; about 2 hours on 2 cores.
set -euo pipefail
DATA=${DATA:-../shared/datasets}
OUT=${OUT:-docs/results}
for ds in scifact nfcorpus; do
  python -m mvr.eval.compression "$DATA/$ds" --index "$ds" --output "$OUT/compression-$ds.json" \
    --setting full \
    --setting prune=special --setting prune=special+punctuation --setting prune=special+punctuation+stopwords --setting prune=df,prune_max_df=0.2 \
    --setting cluster_method=kmeans,cluster_keep=none,cluster_ratio=0.5 --setting cluster_method=kmeans,cluster_keep=none,cluster_ratio=0.25 --setting cluster_method=kmeans,cluster_keep=none,cluster_ratio=0.1 \
    --setting prune=special+punctuation,cluster_method=kmeans,cluster_keep=none,cluster_ratio=0.25 --setting prune=special+punctuation,cluster_method=kmeans,cluster_keep=none,cluster_ratio=0.1 \
    --setting codec=int8 --setting codec=residual,codec_bits=4 --setting codec=residual,codec_bits=2 --setting codec=residual,codec_bits=1 \
    --setting prune=special+punctuation,cluster_method=kmeans,cluster_keep=none,cluster_ratio=0.25,codec=residual,codec_bits=2 \
    --setting prune=special+punctuation,cluster_method=kmeans,cluster_keep=none,cluster_ratio=0.25,codec=residual,codec_bits=1 \
    --setting cluster_method=kmeans,cluster_keep=none,cluster_ratio=0.125,codec=residual,codec_bits=2
  python -m mvr.eval.compression "$DATA/$ds" --index "$ds" --output "$OUT/compression-ward-$ds.json" \
    --setting full \
    --setting cluster_method=ward,cluster_keep=none,cluster_ratio=0.5 --setting cluster_method=ward,cluster_keep=none,cluster_ratio=0.33 \
    --setting cluster_method=ward,cluster_keep=none,cluster_ratio=0.25 --setting cluster_method=ward,cluster_keep=none,cluster_ratio=0.1 \
    --setting prune=punctuation,cluster_method=ward,cluster_keep=none,cluster_ratio=0.25 \
    --setting prune=special+punctuation,cluster_method=ward,cluster_keep=none,cluster_ratio=0.25 \
    --setting prune=special+punctuation,cluster_method=ward,cluster_keep=none,cluster_ratio=0.1 \
    --setting cluster_method=ward,cluster_keep=none,cluster_ratio=0.25,codec=residual,codec_bits=2 \
    --setting cluster_method=ward,cluster_keep=none,cluster_ratio=0.15,codec=residual,codec_bits=2 \
    --setting cluster_method=ward,cluster_keep=none,cluster_ratio=0.3,codec=residual,codec_bits=1 \
    --setting prune=special+punctuation,cluster_method=ward,cluster_keep=none,cluster_ratio=0.25,codec=residual,codec_bits=1
  python -m mvr.eval.compression "$DATA/$ds" --index "$ds" --output "$OUT/compression-16b-$ds.json" \
    --setting full \
    --setting cluster_method=ward,cluster_keep=none,cluster_ratio=0.14,codec=residual,codec_bits=2 \
    --setting cluster_method=ward,cluster_keep=none,cluster_ratio=0.125,codec=residual,codec_bits=2 \
    --setting cluster_method=ward,cluster_keep=none,cluster_ratio=0.28,codec=residual,codec_bits=1 \
    --setting prune=punctuation,cluster_method=ward,cluster_keep=none,cluster_ratio=0.16,codec=residual,codec_bits=2 \
    --setting cluster_method=ward,cluster_keep=none,cluster_ratio=0.33,codec=residual,codec_bits=2
  # [CLS]/[SEP] kept out of the pooling (the default since), and IDF-weighted Ward
  python -m mvr.eval.compression "$DATA/$ds" --index "$ds" --output "$OUT/compression-keep-$ds.json" \
    --setting full \
    --setting cluster_ratio=0.24 --setting cluster_ratio=0.24,cluster_idf_weight=0.5 \
    --setting cluster_ratio=0.09 --setting cluster_ratio=0.095,cluster_idf_weight=0.75 \
    --setting cluster_ratio=0.28,codec=residual,codec_bits=1 \
    --setting cluster_ratio=0.28,cluster_idf_weight=0.5,codec=residual,codec_bits=1
done
python -m mvr.eval.compression plot "$OUT"/compression-*.json --output docs/compression.png
