#!/usr/bin/env bash
# Reproduce the embedded models and the rate–accuracy table from scratch on a CPU machine.
# Data: ../shared/assets (Tiny-ImageNet shards) plus, for all 500 train images per class, the Tiny-ImageNet
# folder layout at $TIN (the source repo named in ../shared/assets/README.md). Features and checkpoints go
# to ~/.cache/semcomp, never into the repo.
set -euo pipefail
cd "$(dirname "$0")/.."
TIN=${TIN:-$HOME/.cache/semcomp/data/tiny-imagenet-200}
FEAT=${FEAT:-$HOME/.cache/semcomp/features}
BB=semcomp-tiny-clip
mkdir -p "$FEAT"

# 1. the embedded CLIP (about 50 min on 2 cores with bf16 autocast)
[ -f weights/backbones/$BB/model.safetensors ] || semcomp train-backbone --train-source "$TIN" --epochs 10 --out weights/backbones/$BB

# 2. features of every Tiny-ImageNet train (100k) and val (10k) image
[ -f "$FEAT/tin-train.safetensors" ] || semcomp extract --backbone $BB --split train --source "$TIN" --out "$FEAT/tin-train.safetensors"
[ -f "$FEAT/tin-val.safetensors" ] || semcomp extract --backbone $BB --split val --out "$FEAT/tin-val.safetensors"

# 3. codecs, trained on the 160 codec-training classes only (assets/splits/tiny-imagenet.json)
# (in priority order: the app's defaults first). The seed's third 600-bit config, pqvae-n50d64k4096, is left
# out: vector-quantize-pytorch's EMA update for K=4096 costs ~2 s per batch on this CPU.
SPECS="pqvae-n8d8k16 pqvae-n16d8k16 pqvae-n32d8k16 pqvae-n64d8k16 pqvae-n200d16k8 aesq-c200l8 aesq-c250l16 aesq-c500l16
pqvae-n4d8k16 pqvae-n128d8k16 pqvae-n256d8k16 pqvae-n100d32k64
pqvae-n2d32k256 pqvae-n4d32k256 pqvae-n8d32k256 pqvae-n16d32k256
aesq-c32l4 aesq-c64l4 aesq-c128l4
fsq-c32l4 fsq-c128l4 fsq-c200l8
vqvae-n1d64k4096 vqvae-n4d128k256 vqvae-n16d128k256
dsq-b1 dsq-b2 dsq-b4"
for s in $SPECS; do
  [ -f weights/codecs/$BB/$s/model.safetensors ] || semcomp train --features "$FEAT/tin-train.safetensors" --split-name tiny-imagenet \
      --spec "$s" --epochs "${EPOCHS:-8}" --batch-size 512 --lr 2e-3 --out-dir weights/codecs/$BB
done

# 4. the rate–accuracy table on the 40 unseen classes
python bench/rate_accuracy.py --features "$FEAT/tin-val.safetensors" --backbone $BB

# 5. receiver heads (weights/heads/): captioner on CPU (~40 min), generator in a GPU burst (or on a CPU: hours)
EV="pqvae-n2d32k256 vqvae-n4d128k256 fsq-c32l4 fsq-c128l4 fsq-c200l8"
DEC="pqvae-n2d32k256 vqvae-n4d128k256 fsq-c32l4 fsq-c128l4"
CK=$HOME/.cache/semcomp/caption-ckpt
[ -f weights/heads/semcomp-tiny-clipcap/model.safetensors ] || semcomp train-caption --out weights/heads/semcomp-tiny-clipcap \
    --text-epochs 2 --image-epochs 0.6 --decoded-codecs $DEC --eval-codecs $EV
semcomp train-caption --out ~/.cache/semcomp/caption-variants/text-only --stages --init-from $CK/semcomp-tiny-clipcap/caption-text.pt \
    --eval-codecs $EV --force
semcomp train-caption --out ~/.cache/semcomp/caption-variants/image-float-only --stages image --image-epochs 0.6 \
    --init-from $CK/semcomp-tiny-clipcap/caption-text.pt --eval-codecs $EV --force
python bench/caption.py
if [ ! -f weights/heads/semcomp-tiny-unclip/model.safetensors ]; then
  python scripts/prepare_generator_burst.py --shards 31          # inputs that fit the GPU machine's 64 MiB upload
  python scripts/device_generator.py --data .devdata --out .devout/gen --seconds 330 --batch 256 --lr 3e-4   # on a GPU
  python scripts/assemble_generator.py --src .devout/gen --out weights/heads/semcomp-tiny-unclip
fi
python bench/generate.py --device-dir .devout/gen --n 100
python bench/segment.py --n 500
