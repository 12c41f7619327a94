#!/usr/bin/env bash
# The GPU proof in one call: every check and benchmark of the project on one GPU machine,
# each stage time-boxed so that a slow one costs only itself, the results packed after every stage.
#
#   OUT=/some/dir bash benchmarks/gpu_proof.sh          (on the GPU machine, in the project root)
#
# Writes $OUT/log.txt (everything printed) and $OUT/proof.tar.gz (every JSON the commands wrote, the
# profile reports, stages.tsv with each stage's exit code and seconds). `benchmarks/gpu_report.py`
# turns the unpacked folder into benchmarks/results/<date>-<gpu>.json and the README table.
# DALI comes from /tmp/site when present (a wheel unpacked there; docs/gpu-proof.md), else from the environment.
# Knobs (environment): DEADLINE (seconds for all stages, default 540), DEVICE (gpu; cpu runs a tiny
# smoke version of every stage on a machine without one), CORPUS_COUNT, BATCH, STAGES (names to run).
# OLD=<folder holding another commit's tree> runs the side-by-side proof instead: the old
# and this tree's trainer and pipeline in the same call, old first (its compile is cold in inductor's
# default cache), then this tree cold and again warm from its persisted compile cache; the old
# side's JSONs go to results/old/, and gpu_report.py puts "ratio_to_old" on every matching row.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:?set OUT to the folder that receives log.txt and proof.tar.gz}
DEADLINE=${DEADLINE:-540}
DEVICE=${DEVICE:-gpu}
WORK=${WORK:-/tmp/relic-fast-proof}
RESULTS=$WORK/results
mkdir -p "$OUT" "$RESULTS"
LOG=$OUT/log.txt
export PYTHONUNBUFFERED=1 COLUMNS=${COLUMNS:-150}
if [ -d /tmp/site ]; then
  export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
  LD_LIBRARY_PATH=$(ls -d /tmp/site/nvidia/*/lib 2>/dev/null | tr '\n' :)${LD_LIBRARY_PATH:-}
  export LD_LIBRARY_PATH
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
PY=${PY:-python3}
RF="$PY -m relic_fast"

if [ "$DEVICE" = gpu ]; then
  CORPUS_COUNT=${CORPUS_COUNT:-2048}; BATCH=${BATCH:-128}; LOADER_BATCH=256; LOSS_B=4096
  CONFIG=configs/imagenet_resnet50.toml; LOADER_SIZES=(); TV_WORKERS=$(nproc)
  LOSS_IMPLS="reference reference-compiled fused fused-bf16"
  STEP_VARIANTS="eager-bf16-channels-last compiled-bf16-channels-last"
  CPU_THREADS=$(nproc); WINDOW=10; WINDOWS=4; PROFILE_STEPS=10
else  # smoke: the same stages, tiny, on the CPU (how this script is tested without a GPU)
  CORPUS_COUNT=${CORPUS_COUNT:-48}; BATCH=${BATCH:-8}; LOADER_BATCH=8; LOSS_B=64
  CONFIG=configs/demo_cpu.toml; TV_WORKERS=2; CPU_THREADS=2; WINDOW=2; WINDOWS=1; PROFILE_STEPS=2
  LOADER_SIZES=(--large-size 32 --small-size 16); LOSS_IMPLS=reference; STEP_VARIANTS=eager-fp32-channels-last
fi
CORPUS=$WORK/corpus
MASKS=$WORK/corpus-masks
TRAIN_SETS=(--set train.batch_size=$BATCH --set data.masks=$MASKS --set train.log_every=$WINDOW)

log() { echo "[proof $(date -u +%H:%M:%S) +${SECONDS}s] $*" | tee -a "$LOG"; }
pack() { tar czf "$OUT/proof.tar.gz.tmp" -C "$WORK" --exclude='*trace*' --exclude='corpus*' --exclude='checkpoints' \
           --exclude='compile-cache' . \
           && mv "$OUT/proof.tar.gz.tmp" "$OUT/proof.tar.gz"; }
wanted() { [ -z "${STAGES:-}" ] || [[ " $STAGES " == *" $1 "* ]]; }

# stage NAME MIN_SECONDS MAX_SECONDS COMMAND...: run unless fewer than MIN seconds are left before the
# deadline; kill it after min(MAX, seconds left); record exit code and duration; pack the results.
stage() {
  local name=$1 min=$2 max=$3; shift 3
  wanted "$name" || return 0
  local left=$((DEADLINE - SECONDS))
  if [ "$left" -lt "$min" ]; then
    log "SKIP $name: ${left}s left, it needs ${min}s"; printf '%s\tskipped\t0\n' "$name" >> "$RESULTS/stages.tsv"; return 0
  fi
  local limit=$(( max < left ? max : left )) start=$SECONDS
  log "START $name (limit ${limit}s): $*"
  timeout -k 10 "$limit" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  log "END $name rc=$rc in $((SECONDS - start))s"
  printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - start))" >> "$RESULTS/stages.tsv"
  pack
}

log "device=$DEVICE deadline=${DEADLINE}s corpus=$CORPUS_COUNT batch=$BATCH config=$CONFIG old=${OLD:-none}"
if [ -n "${OLD:-}" ]; then
  OLD=$(cd "$OLD" && pwd)
  SITE=$([ -d /tmp/site ] && echo /tmp/site: || true)
  OLD_RF="env PYTHONPATH=$SITE$OLD $PY -m relic_fast"
  CACHE=$WORK/compile-cache  # this tree's persisted inductor cache, shared by its cold and warm runs
  mkdir -p "$RESULTS/old"
  NEW_SETS=("${TRAIN_SETS[@]}" --set "train.compile_cache=$CACHE" ${NEW_TRAIN_SETS:-})
  LOADER_ARGS=(--data $CORPUS --masks $MASKS --saliency-p 0.1 --device $DEVICE --recipe 4L+2S --threads 4
               --batch-size $LOADER_BATCH --batches 4 --repeats 5 --pipelines dali "${LOADER_SIZES[@]}")
  stage info 5 40 bash -c "nvidia-smi || true; nproc; $RF info; git -C '$OLD' log -1 --oneline 2>/dev/null || true"
  stage corpus 20 90 bash -c "$PY -m benchmarks.corpus $CORPUS --count $CORPUS_COUNT && $RF masks $CORPUS --out $MASKS"
  # targets 1, 2, 4 (old): the old trainer fed by DALI vs synthetic views, its cold warm-up
  stage train-old 100 200 bash -c "cd '$OLD' && $OLD_RF bench train --config $CONFIG --data $CORPUS ${TRAIN_SETS[*]} \
    --window $WINDOW --windows $WINDOWS --out '$RESULTS/old/train-run' --json '$RESULTS/old/train.json'"
  # the same for this tree, cold (an empty compile cache), then warm: a second process on the persisted cache
  rm -rf "$CACHE"
  stage train 100 200 $RF bench train --config $CONFIG --data $CORPUS "${NEW_SETS[@]}" --window $WINDOW \
    --windows $WINDOWS --out "$RESULTS/train-run" --json "$RESULTS/train.json"
  stage train-warm 40 100 $RF bench train --config $CONFIG --data $CORPUS "${NEW_SETS[@]}" --window $WINDOW \
    --windows 1 --out "$RESULTS/train-warm-run" --json "$RESULTS/train-warm.json"
  # target 3: the GPU pipeline alone with saliency blending, old and new
  stage loader-old 25 60 bash -c "cd '$OLD' && $OLD_RF bench loader ${LOADER_ARGS[*]} --json '$RESULTS/old/loader.json'"
  stage loader 25 60 $RF bench loader "${LOADER_ARGS[@]}" --json "$RESULTS/loader.json"
  # the step's GPU-only tests: no device sync per step (the non-finite guard), under CUDA's sync detector
  stage gpu-tests 20 60 $PY -m pytest -q -m gpu -p no:cacheprovider tests/relic_fast/test_step.py
  # target 5: peak memory at 256 images per GPU (a new shape: a cold compile again), last, if time is left
  stage train-256 100 200 $RF bench train --config $CONFIG --data $CORPUS "${NEW_SETS[@]}" \
    --set train.batch_size=$((2 * BATCH)) --window $WINDOW --windows 1 --out "$RESULTS/train-256-run" \
    --json "$RESULTS/train-256.json"
  log "done: $(wc -l < "$RESULTS/stages.tsv") stages"
  pack
  exit 0
fi
stage info 5 40 bash -c "nvidia-smi || true; nproc; $RF info"
stage corpus 20 90 bash -c "$PY -m benchmarks.corpus $CORPUS --count $CORPUS_COUNT && $RF masks $CORPUS --out $MASKS"
# target 4: the fused loss at B = 4096 against the compiled reference, time and peak extra memory
stage loss 40 100 $RF bench loss --batch-sizes $LOSS_B --implementations $LOSS_IMPLS \
  --json "$RESULTS/loss.json"
# targets 1 and 3: the real trainer fed by its GPU pipeline vs synthetic views; compile warm-up, recompiles
stage train 120 260 $RF bench train --config $CONFIG --data $CORPUS "${TRAIN_SETS[@]}" --window $WINDOW \
  --windows $WINDOWS --out "$RESULTS/train-run" --json "$RESULTS/train.json"
# if the compiled step failed, the same trainer eager: the pipeline and the loop still get measured
[ -f "$RESULTS/train.json" ] || stage train-eager 60 120 $RF bench train --config $CONFIG --data $CORPUS "${TRAIN_SETS[@]}" \
  --set train.compile=off --window $WINDOW --windows $WINDOWS --out "$RESULTS/train-eager-run" --json "$RESULTS/train-eager.json"
# target 2: the GPU pipeline alone with saliency blending (p_m 0.1) and without it, and the decode ceiling
stage loader 25 75 $RF bench loader --data $CORPUS --masks $MASKS --saliency-p 0.1 --device $DEVICE --recipe 4L+2S \
  --threads 4 --batch-size $LOADER_BATCH --batches 4 --repeats 5 --pipelines dali decode-only "${LOADER_SIZES[@]}" \
  --json "$RESULTS/loader.json"
stage loader-nosal 20 45 $RF bench loader --data $CORPUS --device $DEVICE --recipe 4L+2S --threads 4 \
  --batch-size $LOADER_BATCH --batches 4 --repeats 5 --pipelines dali "${LOADER_SIZES[@]}" --json "$RESULTS/loader-nosaliency.json"
# what limits the pipeline alone (CPU side?): more DALI threads, and linear instead of cubic crops
stage loader-sweep 30 60 $RF bench loader --data $CORPUS --device $DEVICE --recipe 4L+2S --threads 4 8 12 \
  --batch-size $LOADER_BATCH --batches 4 --repeats 3 --pipelines dali "${LOADER_SIZES[@]}" --json "$RESULTS/loader-threads.json"
stage loader-linear 20 45 $RF bench loader --data $CORPUS --device $DEVICE --recipe 4L+2S --threads 4 \
  --interpolation linear --batch-size $LOADER_BATCH --batches 4 --repeats 5 --pipelines dali "${LOADER_SIZES[@]}" \
  --json "$RESULTS/loader-linear.json"
stage selftest 20 90 $RF selftest --device $DEVICE --only pipeline-statistics --only fused-loss
stage gpu-tests 30 120 $PY -m pytest -q -m gpu -p no:cacheprovider tests
# target 5: where the time goes; the data tax of the GPU pipeline
stage profile 60 150 $RF profile --config $CONFIG --data $CORPUS "${TRAIN_SETS[@]}" --steps $PROFILE_STEPS --warmup 3 \
  --out "$RESULTS/profile-gpu"
stage selftest-step 40 120 $RF selftest --device $DEVICE --only compiled-step
# target 5: a deliberately CPU-decoded configuration must say input-bound
stage profile-cpu 50 120 $RF profile --config $CONFIG --data $CORPUS "${TRAIN_SETS[@]}" --set data.device=cpu \
  --set data.num_threads=$CPU_THREADS --steps 3 --warmup 2 --loader-batches 2 --loader-repeats 1 --synthetic-steps 3 \
  --no-ablation --out "$RESULTS/profile-cpu"
# target 1's other baseline: the same trainer fed by torchvision + PIL with every core (eager: it waits for data anyway)
stage train-torchvision 60 130 $RF bench train --config $CONFIG --data $CORPUS "${TRAIN_SETS[@]}" --set train.compile=off \
  --feeds torchvision --torchvision-workers $TV_WORKERS --out "$RESULTS/train-torchvision-run" \
  --json "$RESULTS/train-torchvision.json"
# the synthetic step benchmark (eager vs compiled; the compiled graph is the trainer's, so its cache is warm here)
stage step 40 120 $RF bench step --device $DEVICE --variants $STEP_VARIANTS \
  --json "$RESULTS/step.json"
log "done: $(wc -l < "$RESULTS/stages.tsv") stages"
pack
