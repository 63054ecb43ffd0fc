#!/usr/bin/env bash
# One call on a GPU machine: the CUDA tests, the goldens with --backend cuda and a decode
# timing on a 4-layer V2-Lite-shape model in BF16. Logs go to $OUT (or ./device-out).
#   DS3_FIXTURES=.devdata/fixtures tests/cuda/device_run.sh
# Uses prebuilt binaries from .devdata/bin when they start (built elsewhere with
# DS3_BINARY=$DS3_BAKED_BIN), else builds here in build-dev.
set -uo pipefail
OUT=${OUT:-$PWD/device-out}
mkdir -p "$OUT"
export DS3_FIXTURES=${DS3_FIXTURES:-$PWD/.devdata/fixtures}
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"

BIN=""
if [ -x .devdata/bin/test_cuda_ops ]; then
  export LD_LIBRARY_PATH=$PWD/.devdata/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  if .devdata/bin/test_cuda_ops "cuda: create_backend*" >"$OUT/prebuilt.err" 2>&1; then
    BIN=$PWD/.devdata/bin
    mkdir -p "$(dirname "$DS3_BAKED_BIN")" && cp .devdata/bin/ds3 "$DS3_BAKED_BIN"
    echo "using prebuilt binaries"
  else
    echo "prebuilt binaries do not start: $(head -c 300 "$OUT/prebuilt.err")"
    unset LD_LIBRARY_PATH
  fi
fi
if [ -z "$BIN" ]; then
  t0=$(date +%s)
  cmake -S . -B build-dev -DCMAKE_BUILD_TYPE=Release -DDS3_VULKAN=OFF -DCMAKE_CUDA_ARCHITECTURES=90 >"$OUT/build.log" 2>&1 &&
    cmake --build build-dev -j16 --target ds3 test_cuda_ops test_cuda_model test_cuda_golden >>"$OUT/build.log" 2>&1
  rc=$?
  echo "build rc=$rc in $(( $(date +%s) - t0 )) s"; tail -5 "$OUT/build.log"
  [ $rc -eq 0 ] || exit 1
  mkdir -p build-dev/all && cp build-dev/bin/ds3 build-dev/tests/cuda/test_cuda_* build-dev/all/
  BIN=$PWD/build-dev/all
fi

for t in test_cuda_ops test_cuda_model test_cuda_golden; do
  t0=$(date +%s.%N)
  timeout 240 "$BIN/$t" 2>&1 | tee "$OUT/$t.log" | grep -E "FAILED|failed|with expansion|^  [a-z]|passed|skipped" | head -40
  echo "== $t rc=${PIPESTATUS[0]} $(( $(date +%s) - ${t0%.*} )) s"
done

# Decode timing: 4 layers of V2-Lite's real shapes, BF16.
if [ "${DS3_SKIP_BENCH:-0}" != 1 ]; then
  M=/tmp/ds3-v2lite4
  timeout 200 "$BIN/ds3" synth --preset v2-lite --layers 4 -o $M >"$OUT/synth.log" 2>&1 &&
    timeout 200 "$BIN/ds3" convert $M -o $M.bf16.gguf --outtype bf16 >>"$OUT/synth.log" 2>&1
  echo "synth+convert rc=$? size $(du -h $M.bf16.gguf 2>/dev/null | cut -f1)"
  P=$(seq -s, 1 64)
  for be in cuda cpu; do
    n=128; [ $be = cpu ] && n=16
    timeout 120 "$BIN/ds3" run -m $M.bf16.gguf --backend $be --tokens "$P" -n $n --temp 0 --ignore-eos --print-ids \
      >"$OUT/run_$be.out" 2>"$OUT/run_$be.err"
    echo "run $be rc=$?: $(grep -E '^run:' "$OUT/run_$be.err")"
  done
  timeout 120 "$BIN/ds3" run -m $M.bf16.gguf --backend cuda --tokens "$(seq -s, 1 1000)" -n 128 --temp 0 --ignore-eos \
    --print-ids >"$OUT/run_cuda_long.out" 2>"$OUT/run_cuda_long.err"
  echo "run cuda, 1000-token prompt rc=$?: $(grep -E '^run:' "$OUT/run_cuda_long.err")"
  cmp -n 40 "$OUT/run_cuda.out" "$OUT/run_cpu.out" >/dev/null 2>&1 && echo "cuda and cpu ids agree on the first bytes" ||
    { echo "ids differ:"; head -c 200 "$OUT/run_cuda.out"; echo; head -c 200 "$OUT/run_cpu.out"; echo; }
fi
