#!/usr/bin/env bash
# Reproduce the default embedded backbone semcomp-lite-clip, its codec ladder, the progressive codec, the
# heads and the tables that depend on them, on a CPU machine. Data: the Tiny-ImageNet and ImageNet-sample
# shards (SEMCOMP_SHARED_ASSETS, see semcomp/data.py). Tower features, feature files, staged codecs and
# checkpoints go to ~/.cache/semcomp, never into the repo. Steps skip what already exists *for the current
# backbone weights* (feature files and staged codecs live under a folder named by the backbone's sha256), so a
# killed run resumes and a re-aligned backbone retrains everything after it.
set -euo pipefail
cd "$(dirname "$0")/.."
BB=semcomp-lite-clip
ALIGN_SHARDS=36                # Tiny-ImageNet train shards (1,000 images each) the alignment used
CODEC_SHARDS=16                # ... the ladder codecs and the caption head (the progressive codec uses all 36)
CACHE=$HOME/.cache/semcomp
FEAT=${FEAT:-$CACHE/features}
mkdir -p "$FEAT"

# 1. the frozen tower's pooled features + ImageNet logits, cached per shard (56 s a shard on 2 idle cores)
python -m semcomp.training.tower_features --tower efficientnet-lite0 --size 224 --split tin-train --shards "$ALIGN_SHARDS"
python -m semcomp.training.tower_features --tower efficientnet-lite0 --size 224 --split inet-samples --views 3   # photos + 3 random crops
python -m semcomp.training.tower_features --tower efficientnet-lite0 --size 224 --split tin-val

# 2. alignment to all-MiniLM-L6-v2, measured with 200 ImageNet names held out, then saved trained on all names
# (variant = tower@size:image_hidden:text_hidden:label_weight; the 8-shard variant study is lite_clip_align_8shards.json)
python -m semcomp.training.lite_clip --train-shards "$ALIGN_SHARDS" --val-shards 8 --epochs 30 \
    --report bench/results/lite_clip_align.json --variants efficientnet-lite0@224:0:0:0.5 --save weights/backbones/$BB

# 3. feature files (from the tower cache: the same numbers as `semcomp extract`), rebuilt when the backbone changes
SHA=$(python -c "import json; print(json.load(open('weights/backbones/$BB/card.json'))['sha256'][:12])")
if [ "$(cat "$FEAT/lite.sha" 2>/dev/null)" != "$SHA" ]; then rm -f "$FEAT"/lite-*.safetensors; echo "$SHA" > "$FEAT/lite.sha"; fi
[ -f "$FEAT/lite-val.safetensors" ] || python -m semcomp.training.tower_features --feature-file "$FEAT/lite-val.safetensors" \
    --backbone $BB --split tin-val
[ -f "$FEAT/lite-train-photos.safetensors" ] || python -m semcomp.training.tower_features --backbone $BB \
    --codec-train-file "$FEAT/lite-train-photos.safetensors" --shards "$CODEC_SHARDS" --views 3   # 160 training classes + photos
[ -f "$FEAT/lite-train.safetensors" ] || python -m semcomp.training.tower_features --feature-file "$FEAT/lite-train.safetensors" \
    --backbone $BB --split tin-train --shards "$CODEC_SHARDS"
[ -f "$FEAT/lite-tin-train.safetensors" ] || python -m semcomp.training.tower_features --feature-file "$FEAT/lite-tin-train.safetensors" \
    --backbone $BB --split tin-train --shards "$ALIGN_SHARDS"
[ -f "$FEAT/lite-tin-train-photos.safetensors" ] || python -m semcomp.training.tower_features --backbone $BB \
    --codec-train-file "$FEAT/lite-tin-train-photos.safetensors" --shards "$ALIGN_SHARDS" --views 3   # 36 shards + photos

# 4. the codec ladder on the 160 codec-training classes (assets/splits/tiny-imagenet.json) + the photo views, staged
# outside the repo, then copied over the shipped folders (one thread each: two trainings share the 2 cores)
STAGE=$CACHE/codecs-new/$SHA
SPECS=${SPECS:-"fsq-c32l4 pqvae-n16d8k16 pqvae-n32d8k16 aesq-c32l4 pqvae-n4d8k16 pqvae-n2d32k256 pqvae-n8d8k16 pqvae-n4d32k256
vqvae-n4d128k256 pqvae-n16d32k256 pqvae-n64d8k16 aesq-c128l4 fsq-c128l4 aesq-c200l8 fsq-c200l8 aesq-c250l16 aesq-c500l16 dsq-b1 dsq-b4"}
for s in $SPECS; do
  [ -f "$STAGE/$BB/$s/model.safetensors" ] || semcomp train --features "$FEAT/lite-train-photos.safetensors" \
      --spec "$s" --epochs "${EPOCHS:-30}" --batch-size 256 --lr 2e-3 --threads 1 --out-dir "$STAGE/$BB" --ckpt-dir "$CACHE/codec-ckpt-a"
done
# 5. the progressive codec (every budget from one model) on the 36 shards' training classes and the photo views of
# those classes (--split-name drops the file's other, unlabelled views): three seeds of one recipe (semcomp train's
# prq defaults: first stage kept at its k-means; trained until the held-out loss stops improving, 40 minutes at most,
# one thread each, two at a time); seed 0 ships, chosen before any was measured (README: "One progressive model")
for seed in 0 1 2; do
  [ -f "$CACHE/codecs-photos/seed$seed/prq-s128o32k256/model.safetensors" ] || semcomp -v train --spec prq-s128o32k256 \
      --features "$FEAT/lite-tin-train-photos.safetensors" --split-name tiny-imagenet --epochs 1000 --threads 1 \
      --max-minutes 40 --seed $seed --out-dir "$CACHE/codecs-photos/seed$seed"
done
mkdir -p "$STAGE/prq" && rm -rf "$STAGE/prq/prq-s128o32k256" && cp -r "$CACHE/codecs-photos/seed0/prq-s128o32k256" "$STAGE/prq/"
for d in "$STAGE/$BB"/*/ "$STAGE/prq/prq-s128o32k256/"; do
  rm -rf "weights/codecs/$BB/$(basename "$d")"; cp -r "$d" "weights/codecs/$BB/$(basename "$d")"
done

# 6. heads: the SmolLM2 captioner (text stage, then image stage; each stops after --minutes and resumes when rerun),
# and the bridges into the older heads' space (generator; GPT-2 captioner fallback)
CK=$CACHE/caption-lm-$SHA
python -m semcomp.training.caption_lm --stage text --steps 100 --minutes 14 --threads 1 --ckpt-dir "$CK"
python -m semcomp.training.caption_lm --stage image --steps 30 --minutes 9 --threads 1 --ckpt-dir "$CK" \
    --train-features "$FEAT/lite-train.safetensors"
python -m semcomp.training.caption_lm --export weights/heads/semcomp-lite-smolcap --ckpt-dir "$CK"
python -m semcomp.training.bridge --backbone $BB --train-shards 8
# the one-pass generator on the backbone's own space (needs the tower cache of 24 train shards; 75 min, resumable)
python -m semcomp.training.tower_features --tower efficientnet-lite0 --size 224 --split tin-train --shards 24
# (two runs, as shipped: 75 min at a constant rate, then 100 min resumed with perceptual jitter and a cosine anneal)
python -m semcomp.training.feature_decoder --shards 24 --minutes 75 --threads 2 --ckpt-dir "$CACHE/feature-decoder-$SHA"
python -m semcomp.training.feature_decoder --shards 24 --minutes 100 --threads 2 --ckpt-dir "$CACHE/feature-decoder-$SHA" \
    --anneal 2719 2900 --jitter 16 --export weights/heads/semcomp-lite-decoder
python -m semcomp.zoo stamp --backbone $BB weights/codecs/$BB/* weights/heads/semcomp-lite-*   # bind them to these weights

# 7. the tables (rate_accuracy first: the app and later benches pick codecs from it)
python bench/rate_accuracy.py --features "$FEAT/lite-val.safetensors" --backbone $BB
python bench/backbone_zeroshot.py --backbones $BB semcomp-tiny-clip
python bench/examples_table.py
python bench/entropy_coding.py
python bench/codec_speed.py --threads 1
python bench/probe.py --probe-train val-half --shots 1,4,16 --codecs aesq-c32l4,aesq-c128l4,fsq-c200l8
python bench/peers.py --train "$FEAT/lite-train.safetensors" --test "$FEAT/lite-val.safetensors" --backbone $BB
python bench/bridged_heads.py --features "$FEAT/lite-val.safetensors" --n 1000 --gen 10 --codecs fsq-c32l4 fsq-c128l4
python bench/caption_lm.py --n 500 --n-decoded 200 --threads 2
python bench/feature_decoder.py --features "$FEAT/lite-val.safetensors" --n 1000 --n-baseline 100
python bench/pixel_vs_semantic.py --per-class 5 --jpeg-q 1,10,20,40,75 --webp-q 0,5,25,50,75 --keep-rd
python bench/segment.py --n 500 --pairs 500
python bench/compressed_domain.py --train "$FEAT/lite-tin-train.safetensors" --database 1000000 --queries 300 \
    --check-queries 100 --bits 64,128 --out-name compressed_domain_prq                       # ~30 min on 1 thread

# a progressive recipe's 3 seeds against the peers: <name>_prq.json, then one table merged with the peers' runs
prq_table() {
  local name=$1; shift
  python bench/progressive.py --part prq --codec "$@" --train "$FEAT/lite-tin-train.safetensors" \
      --test "$FEAT/lite-val.safetensors" --out-name "$name"
  python bench/progressive.py --part merge --codec none --train - --test - --out-name "$name" \
      --peers-name progressive_beaminit progressive_lsqseeds
}

# 8. the progressive codec against its peers: step 5's three seeds (seed 0 is the shipped one), the peers fitted on
# the same features (3 seeds where they are close), merged into one table (README "One progressive model")
python bench/progressive.py --part peers --codec none --train "$FEAT/lite-tin-train.safetensors" --test "$FEAT/lite-val.safetensors" \
    --max-train 10000 --seeds 3 --seed-budgets 8 16 --opq-budgets 32 64 --out-name progressive_beaminit
python bench/progressive.py --part peers --codec none --train "$FEAT/lite-tin-train.safetensors" --test "$FEAT/lite-val.safetensors" \
    --max-train 10000 --seeds 3 --seed-budgets 8 16 --budgets 8 16 --no-ladder --out-name progressive_lsqseeds
prq_table progressive_photos "$CACHE"/codecs-photos/seed{0,1,2}/prq-s128o32k256
# the 1-SE tie rule with the test images counted (paired bootstrap over images and seeds), and encode/decode speed
python bench/paired_se.py --codec "$CACHE"/codecs-photos/seed{0,1,2}/prq-s128o32k256 --train "$FEAT/lite-tin-train.safetensors" \
    --test "$FEAT/lite-val.safetensors" --out-name paired_se_photos
python bench/paired_se.py --codec "$CACHE"/codecs-photos/seed{0,1,2}/prq-s128o32k256 --drop-unlabelled \
    --train "$FEAT/lite-tin-train-photos.safetensors" --test "$FEAT/lite-val.safetensors" --out-name paired_se_photos_samefit
python bench/progressive_speed.py --features "$FEAT/lite-val.safetensors" --budgets 8 32 64 128 256 512 1024
# the recipe on the thumbnails only (the shipped codec until 2026-12-05): 3 seeds, its table and its paired SE
for seed in 0 1 2; do
  [ -f "$CACHE/codecs-plateau/seed$seed/prq-s128o32k256/model.safetensors" ] || semcomp -v train --spec prq-s128o32k256 \
      --features "$FEAT/lite-tin-train.safetensors" --split-name tiny-imagenet --epochs 1000 --threads 1 --max-minutes 40 \
      --seed $seed --out-dir "$CACHE/codecs-plateau/seed$seed"
done
prq_table progressive_frozen "$CACHE"/codecs-plateau/seed{0,1,2}/prq-s128o32k256
python bench/paired_se.py --codec "$CACHE"/codecs-plateau/seed{0,1,2}/prq-s128o32k256 \
    --train "$FEAT/lite-tin-train.safetensors" --test "$FEAT/lite-val.safetensors"
# the 8-bit cut as a k-means draw, and the first-stage-redo recipe tried against it (3 seeds; not shipped)
python bench/first_stage_draws.py --train "$FEAT/lite-tin-train.safetensors" --test "$FEAT/lite-val.safetensors"
for seed in 0 1 2; do
  [ -f "$CACHE/codecs-redo/seed$seed/prq-s128o32k256/model.safetensors" ] || semcomp -v train --spec prq-s128o32k256 \
      --features "$FEAT/lite-tin-train.safetensors" --split-name tiny-imagenet --prq-init-beam 5 --prq-frozen-stages 1 \
      --prq-first-redo 10 --epochs 1000 --threads 1 --max-minutes 40 --seed $seed --out-dir "$CACHE/codecs-redo/seed$seed"
done
prq_table progressive_redo "$CACHE"/codecs-redo/seed{0,1,2}/prq-s128o32k256

# 9. probes, not shipped (README "On photos no codec trained on"): 64 own codebooks (seed 0 on the thumbnails, 3
# seeds with the photo views), the recipe on all 3,840 photo views (3 seeds); then every codec on photos no codec
# trained on
[ -f "$CACHE/codecs-o64/seed0/prq-s128o64k256/model.safetensors" ] || semcomp -v train --spec prq-s128o64k256 \
    --features "$FEAT/lite-tin-train.safetensors" --split-name tiny-imagenet --epochs 1000 --threads 1 --max-minutes 40 \
    --seed 0 --out-dir "$CACHE/codecs-o64/seed0"
for seed in 0 1 2; do  # both: 64 own codebooks trained with the photo views
  [ -f "$CACHE/codecs-o64photos/seed$seed/prq-s128o64k256/model.safetensors" ] || semcomp -v train --spec prq-s128o64k256 \
      --features "$FEAT/lite-tin-train-photos.safetensors" --split-name tiny-imagenet --epochs 1000 --threads 1 \
      --max-minutes 40 --seed $seed --out-dir "$CACHE/codecs-o64photos/seed$seed"
done
for seed in 0 1 2; do  # the shipped recipe on all 3,840 photo views (the 3,200 outside the training classes are -1)
  [ -f "$CACHE/codecs-allphotos/seed$seed/prq-s128o32k256/model.safetensors" ] || semcomp -v train --spec prq-s128o32k256 \
      --features "$FEAT/lite-tin-train-photos.safetensors" --split-name tiny-imagenet --keep-unlabelled --epochs 1000 \
      --threads 1 --max-minutes 40 --seed $seed --out-dir "$CACHE/codecs-allphotos/seed$seed"
done
prq_table progressive_allphotos "$CACHE"/codecs-allphotos/seed{0,1,2}/prq-s128o32k256
python bench/paired_se.py --codec "$CACHE"/codecs-allphotos/seed{0,1,2}/prq-s128o32k256 --train "$FEAT/lite-tin-train.safetensors" \
    --test "$FEAT/lite-val.safetensors" --out-name paired_se_allphotos
python bench/photo_codecs.py --threads 1 --codec "$CACHE"/codecs-photos/seed{1,2}/prq-s128o32k256 \
    "$CACHE"/codecs-plateau/seed{0,1,2}/prq-s128o32k256 "$CACHE"/codecs-allphotos/seed{0,1,2}/prq-s128o32k256 \
    "$CACHE/codecs-o64/seed0/prq-s128o64k256" "$CACHE"/codecs-o64photos/seed{0,1,2}/prq-s128o64k256
python bench/paired_se.py --codec "$CACHE"/codecs-o64photos/seed{0,1,2}/prq-s128o64k256 \
    --train "$FEAT/lite-tin-train.safetensors" --test "$FEAT/lite-val.safetensors" --out-name paired_se_o64photos
python bench/paired_se.py --codec "$CACHE/codecs-o64/seed0/prq-s128o64k256" --train "$FEAT/lite-tin-train.safetensors" \
    --test "$FEAT/lite-val.safetensors" --budgets 8 16 64 256 512 768 1024 \
    --peers "faiss PQ" "PCA + uniform SQ4" "faiss RQ (beam 5)" "faiss LSQ" --out-name paired_se_o64_probe
