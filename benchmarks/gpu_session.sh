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
# The parts named on the command line, by default the two issue #22 still needs measured: the training loop at
# dit-l (compiled and eager, ≤ 280 s) and generation's seconds per 10-s clip (≤ 180 s), one device call of at most
# 460 s; each part's slowest row runs last. The separator's RTF and captioning (#20, measured) fit a second call:
# bash benchmarks/gpu_session.sh separate_speed caption_gpu
for name in "${@:-train_throughput generate_speed}"; do
  for one in $name; do
    case $one in
      separate_speed) part separate_speed 50 python3 benchmarks/separate_speed.py --gpu-only ;;
      caption_gpu) part caption_gpu 220 python3 benchmarks/caption_gpu.py ;;
      train_throughput) part train_throughput 280 python3 benchmarks/train_throughput.py --gpu-only --gpu-modes compiled,eager ;;
      generate_speed) part generate_speed 180 python3 benchmarks/generate_speed.py ;;
      *) echo "unknown part $one (separate_speed, caption_gpu, train_throughput, generate_speed)"; exit 2 ;;
    esac
  done
done
