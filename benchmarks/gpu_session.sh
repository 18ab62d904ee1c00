#!/usr/bin/env bash
# Every GPU measurement of one lent-GPU session, one `timeout` per part, output under $OUT (see
# ../shared/gpu/README.md): the separator's RTF, captioning at Qwen2-Audio-7B size (issue #20) and the
# training loop at dit-l (issue #22). Run from the project root with the carried wheels: bash benchmarks/gpu_session.sh [PART ...]
set -u
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee "$OUT/gpu.txt"
part() {  # part NAME SECONDS COMMAND...
  local name=$1 limit=$2; shift 2
  echo "=== $name (limit ${limit} s)"
  local start=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  echo "rc=$? after $((SECONDS - start)) s" >> "$OUT/$name.log"
  grep -v -i "warn\|Loading weights\|Writing model" "$OUT/$name.log" | tail -20
}
# The parts named on the command line, by default the two that say where the dit-l step's time goes (#22), one
# device call of at most 300 s: the training loop compiled with its whole kernel table (train_compiled, <= 200 s)
# and kernel choices on one block (step_kernels, <= 90 s: SDPA backends, the GEGLU's projection split). Also:
# generate_speed (seconds per 10-s clip, <= 140 s), train_throughput (eager and compiled), separate_speed and
# caption_gpu (#20).
for name in "${@:-train_compiled step_kernels}"; do
  for one in $name; do
    case $one in
      separate_speed) part separate_speed 50 python3 benchmarks/separate_speed.py --gpu-only ;;
      caption_gpu) part caption_gpu 220 python3 benchmarks/caption_gpu.py ;;
      train_throughput) part train_throughput 280 python3 benchmarks/train_throughput.py --gpu-only --gpu-modes compiled,eager --profile-dir "$OUT" ;;
      train_compiled) part train_compiled 200 python3 benchmarks/train_throughput.py --gpu-only --gpu-modes compiled --profile-dir "$OUT" ;;
      generate_speed) part generate_speed 140 python3 benchmarks/generate_speed.py --gpu-only ;;
      step_kernels) part step_kernels 90 python3 benchmarks/step_kernels.py ;;
      *) echo "unknown part $one (train_compiled, generate_speed, step_kernels, train_throughput, separate_speed, caption_gpu)"; exit 2 ;;
    esac
  done
done
