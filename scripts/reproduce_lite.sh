#!/usr/bin/env bash
# Reproduce the default embedded backbone semcomp-lite-clip, its codec ladder, the heads' bridges and the
# tables that depend on them, on a CPU machine. Data: the Tiny-ImageNet and ImageNet-sample shards
# (SEMCOMP_SHARED_ASSETS, see semcomp/data.py). Tower features, feature files and checkpoints go to
# ~/.cache/semcomp, never into the repo. Every step skips what already exists, so a killed run resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
BB=semcomp-lite-clip
ALIGN_SHARDS=8                 # Tiny-ImageNet train shards (1,000 images each) the alignment used
CODEC_SHARDS=16                # ... and the codecs
FEAT=${FEAT:-$HOME/.cache/semcomp/features}
mkdir -p "$FEAT"

# 1. the frozen tower's pooled features + ImageNet logits, cached per shard (about 25 img/s on 2 loaded cores)
python -m semcomp.training.tower_features --tower efficientnet-lite0 --size 224 --split tin-train --shards "$CODEC_SHARDS"
python -m semcomp.training.tower_features --tower efficientnet-lite0 --size 224 --split inet-samples --views 3   # photos + 3 random crops
python -m semcomp.training.tower_features --tower efficientnet-lite0 --size 224 --split tin-val

# 2. alignment to all-MiniLM-L6-v2: variants measured with 200 ImageNet names held out, the chosen one saved
# (variant = tower@size:image_hidden:text_hidden:label_weight; the committed report measured the first 8 val shards)
python -m semcomp.training.lite_clip --train-shards "$ALIGN_SHARDS" --val-shards 8 --epochs 30 --report bench/results/lite_clip_align.json \
    --variants efficientnet-lite0@224:0:0:0 efficientnet-lite0@224:1024:0:0.5 efficientnet-lite0@224:0:0:0.5 \
    --save weights/backbones/$BB

# 3. feature files for the codecs and the benches (from the cache: the same numbers as `semcomp extract`)
[ -f "$FEAT/lite-train-photos.safetensors" ] || python -m semcomp.training.tower_features --backbone $BB \
    --codec-train-file "$FEAT/lite-train-photos.safetensors" --shards "$CODEC_SHARDS" --views 3   # 160 training classes + photos
[ -f "$FEAT/lite-val.safetensors" ] || python -m semcomp.training.tower_features --feature-file "$FEAT/lite-val.safetensors" \
    --backbone $BB --split tin-val

# 4. the codec ladder, trained on the 160 codec-training classes (assets/splits/tiny-imagenet.json) + the photo views
SPECS=${SPECS:-"fsq-c32l4 pqvae-n16d8k16 pqvae-n32d8k16 aesq-c32l4 pqvae-n4d8k16 pqvae-n2d32k256 pqvae-n8d8k16 pqvae-n4d32k256
vqvae-n4d128k256 pqvae-n16d32k256 pqvae-n64d8k16 aesq-c128l4 fsq-c128l4 aesq-c200l8 fsq-c200l8 pqvae-n200d16k8 vqvae-n1d64k4096
vqvae-n16d128k256 aesq-c250l16 aesq-c500l16 dsq-b1 dsq-b4 pqvae-n100d32k64"}
for s in $SPECS; do
  [ -f weights/codecs/$BB/$s/model.safetensors ] || semcomp train --features "$FEAT/lite-train-photos.safetensors" \
      --spec "$s" --epochs "${EPOCHS:-30}" --batch-size 256 --lr 2e-3 --out-dir weights/codecs/$BB
done

# 5. heads: bridges into the older heads' space (stop-gap until heads are retrained on this backbone)
python -m semcomp.training.bridge --backbone $BB --train-shards "$ALIGN_SHARDS"

# 6. the tables
python bench/backbone_zeroshot.py --backbones $BB semcomp-tiny-clip
python bench/rate_accuracy.py --features "$FEAT/lite-val.safetensors" --backbone $BB
python bench/examples_table.py
python bench/bridged_heads.py --features "$FEAT/lite-val.safetensors" --n 1000 --gen 10 --codecs fsq-c32l4 fsq-c128l4
