#!/usr/bin/env bash
# One call on a GPU machine: the CUDA tests, then decode timings on a 4-layer V2-Lite-shape
# model in BF16, Q4_K_M and FP8, with a per-op profile. Logs go to $OUT (or ./device-out).
#
# Binaries are built on the development machine (the device image lacks ds3's pkg-config
# dependencies) and carried, stripped, in one xz archive with a large dictionary (the five
# binaries share their CUDA fatbin, so it compresses ~15x):
#   cmake -S . -B build-cuda -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES="80;90"
#   cmake --build build-cuda -j2 --target ds3 test_cuda_ops test_cuda_model test_cuda_golden test_cuda_quant
#   tests/cuda/device_run.sh --pack      # writes .devdata/bin.tar.xz (git-ignored)
# then run with carry [".devdata"]:  tests/cuda/device_run.sh
# --pack also fills the rest of .devdata where it is missing: lib/ with the shared libraries
# the binaries need that the device image lacks (all they resolve but the C/C++ runtimes and
# the driver: today xxhash, pcre2, gomp), fixtures.tar.xz (the
# fixtures, ../shared/fixtures or DS3_FIXTURES_SRC, as one xz archive: ~26 MB of the 64 MiB
# carry; a plain .devdata/fixtures copy is used as it is) and, where CUPTI was found at the
# build, tools/ with the kernel-trace library and CUPTI for the "trace" step. An optional
# ds3-old in the archive (an earlier build: OLD_DS3) is timed too, for before/after numbers
# on the same machine. DS3_DEVICE_STEPS (default "tests bench") picks the parts.
set -uo pipefail
if [ "${1:-}" = --pack ]; then
  B=${BUILD:-build-cuda}
  d=$(mktemp -d)
  cp "$B/bin/ds3" "$B"/tests/cuda/test_cuda_{ops,model,golden,quant} "$d/"
  [ -n "${OLD_DS3:-}" ] && cp "$OLD_DS3" "$d/ds3-old"
  strip "$d"/*
  mkdir -p .devdata && tar -C "$d" -cf - . | xz -9 -T1 >.devdata/bin.tar.xz
  rm -rf "$d"
  ls -la .devdata/bin.tar.xz
  # Every shared library the binaries resolve here, but the C and C++ runtimes and the
  # driver, which the device image has (its own copies must win).
  mkdir -p .devdata/lib
  for l in $(ldd "$B/bin/ds3" "$B"/tests/cuda/test_cuda_{ops,model,golden,quant} | awk '/=> \//{print $3}' | sort -u |
    grep -vE '/(libc|libm|libstdc\+\+|libgcc_s|libdl|libpthread|librt|ld-linux[^/]*|libcuda|libnvidia[^/]*)\.so'); do
    cp -L "$l" .devdata/lib/
  done
  F=${DS3_FIXTURES_SRC:-../shared/fixtures}
  if [ -d "$F" ] && [ ! -d .devdata/fixtures ] && [ ! -f .devdata/fixtures.tar.xz ]; then
    tar -C "$(dirname "$F")" -cf - "$(basename "$F")" | xz -6 -T2 >.devdata/fixtures.tar.xz
  fi
  if [ -f "$B/lib/libds3_kernel_trace.so" ]; then
    mkdir -p .devdata/tools && cp "$B/lib/libds3_kernel_trace.so" .devdata/tools/
    c=$(ls /usr/local/cuda/lib*/libcupti.so.* 2>/dev/null | grep -E 'libcupti\.so\.[0-9]+$' | head -1)
    if [ -n "$c" ] && [ ! -f ".devdata/tools/$(basename "$c").xz" ]; then xz -9 -c "$c" >".devdata/tools/$(basename "$c").xz"; fi
  fi
  du -sh .devdata
  exit 0
fi
OUT=${OUT:-$PWD/device-out}
mkdir -p "$OUT"
# Only 8 files come back from a device call: full logs are gathered into tests.log and
# runs.log; per-run files stay in $W.
W=$(mktemp -d)
export DS3_FIXTURES=${DS3_FIXTURES:-$PWD/.devdata/fixtures}
STEPS=${DS3_DEVICE_STEPS:-tests bench}
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"

BIN=/tmp/ds3-bin
rm -rf $BIN && mkdir -p $BIN && tar -C $BIN -xJf .devdata/bin.tar.xz || exit 1
if [ ! -d .devdata/fixtures ] && [ -f .devdata/fixtures.tar.xz ]; then tar -C .devdata -xJf .devdata/fixtures.tar.xz; fi
for c in .devdata/tools/libcupti.so.*.xz; do [ -f "$c" ] && xz -dc "$c" >"$W/$(basename "${c%.xz}")"; done
export LD_LIBRARY_PATH=$PWD/.devdata/lib:$W${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
# The golden test runs the CLI at the path baked in at build time (DS3_BINARY in
# tests/CMakeLists.txt): put the carried binary there, also over one that an earlier call
# put there on a warm machine (marked by BAKED.carried), never over a build of this machine.
BAKED=${DS3_BAKED_BIN:-/work/main/build-cuda/bin/ds3}
if [ ! -e "$BAKED" ] || [ -e "$BAKED.carried" ]; then
  mkdir -p "$(dirname "$BAKED")" && cp -f $BIN/ds3 "$BAKED" && touch "$BAKED.carried"
fi

if [[ " $STEPS " == *" tests "* ]]; then
  for t in test_cuda_quant test_cuda_ops test_cuda_model test_cuda_golden; do
    t0=$(date +%s)
    timeout 240 "$BIN/$t" >"$W/$t.log" 2>&1
    rc=$?
    { echo "=== $t rc=$rc"; cat "$W/$t.log"; } >>"$OUT/tests.log"
    grep -E "FAILED|failed|with expansion|passed|skipped" "$W/$t.log" | head -30
    echo "== $t rc=$rc $(( $(date +%s) - t0 )) s"
  done
fi

if [[ " $STEPS " == *" bench "* ]]; then
  M=/tmp/ds3-v2lite4
  t0=$(date +%s)
  timeout 200 "$BIN/ds3" synth --preset v2-lite --layers 4 -o $M >"$OUT/model.log" 2>&1 &&
    timeout 200 "$BIN/ds3" convert $M -o $M.bf16.gguf --outtype bf16 --no-progress >>"$OUT/model.log" 2>&1 &&
    timeout 200 "$BIN/ds3" quantize $M.bf16.gguf $M.q4km.gguf Q4_K_M --no-progress >>"$OUT/model.log" 2>&1 &&
    timeout 200 "$BIN/ds3" quantize $M.bf16.gguf $M.fp8.gguf fp8 --no-progress >>"$OUT/model.log" 2>&1
  echo "models rc=$? in $(( $(date +%s) - t0 )) s: $(ls -la $M.*.gguf | awk '{printf "%s %s; ", $9, $5}')"
  P=$(seq -s, 1 64)
  run() {  # name binary model backend n [env]
    local name=$1 bin=$2 model=$3 be=$4 n=$5
    shift 5
    env "$@" timeout 120 "$bin" run -m "$model" --backend "$be" --tokens "$P" -n "$n" --temp 0 --ignore-eos \
      --print-ids >"$W/run_$name.out" 2>"$W/run_$name.err"
    local rc=$?
    { echo "=== $name rc=$rc"; cat "$W/run_$name.err"; } >>"$OUT/runs.log"
    echo "$name rc=$rc: $(grep -E '^run:' "$W/run_$name.err")"
    [ $rc -eq 0 ] || tail -3 "$W/run_$name.err"
  }
  [ -x $BIN/ds3-old ] && run bf16_old $BIN/ds3-old $M.bf16.gguf cuda 128
  run bf16 $BIN/ds3 $M.bf16.gguf cuda 128
  run q4km $BIN/ds3 $M.q4km.gguf cuda 128
  run fp8 $BIN/ds3 $M.fp8.gguf cuda 128
  run q4km_cpu $BIN/ds3 $M.q4km.gguf cpu 8
  run bf16_prof $BIN/ds3 $M.bf16.gguf cuda 128 DS3_CUDA_PROFILE=1
  run q4km_prof $BIN/ds3 $M.q4km.gguf cuda 128 DS3_CUDA_PROFILE=1
  grep "cuda profile" "$W/run_bf16_prof.err" | sed 's/^/bf16 /'
  grep "cuda profile" "$W/run_q4km_prof.err" | sed 's/^/q4km /'
  # Greedy ids of the GPU and the CPU on the quantized model (8 decoded tokens).
  cpu_ids=$(tr -s ' ,\n' '  ' <"$W/run_q4km_cpu.out" | xargs)
  nw=$(echo "$cpu_ids" | wc -w)
  cuda_ids=$(tr -s ' ,\n' '  ' <"$W/run_q4km.out" | xargs | cut -d' ' -f1-"$nw")
  [ "$cuda_ids" = "$cpu_ids" ] && echo "q4km: cuda and cpu agree on all $nw printed ids" ||
    { echo "q4km ids differ:"; echo "cuda: $cuda_ids" | cut -c1-400; echo "cpu:  $cpu_ids" | cut -c1-400; }
  "$BIN/ds3" inspect $M.q4km.gguf 2>/dev/null | grep -oE "\b(q[0-9]_[0-9K]+|iq4_xs|f32|bf16|f16|fp8_e4m3_b128)\b" | sort | uniq -c |
    tr '\n' ' ' | sed 's/^/q4km tensor types: /'; echo
fi

# "gemv": the hidden decode-GEMV timings at V3's shapes and the read ceiling of each
# product's size (test_cuda_quant [.bench]: "gemv" and "read" lines), once
# per entry of DS3_GEMV_ENVS (space-separated; an entry is comma-separated VAR=value
# settings, e.g. "DS3_CUDA_Q8_RW=1 DS3_CUDA_Q8_RW=4,DS3_CUDA_PDL=0"; "-":
# none); DS3_GEMV_FILTER: a regex on the printed lines.
if [[ " $STEPS " == *" gemv "* ]]; then
  for e in ${DS3_GEMV_ENVS:--}; do
    set=()
    [ "$e" != - ] && IFS=, read -ra set <<<"$e"
    env "${set[@]}" timeout 200 "$BIN/test_cuda_quant" "[.bench]" -s 2>&1 | grep -E "^(gemv|read)" |
      grep -E "${DS3_GEMV_FILTER:-.}" | sed "s/^/$e /" | tee -a "$OUT/gemv.txt"
  done
fi

# "rwtests": the op tests again with every GEMV forced to 2 and to 4 rows per lane group
# (the default picks them by size only, so small test shapes would not reach them), or
# once per entry of DS3_RWTESTS_ENVS (entries as in DS3_GEMV_ENVS). A failure's report
# goes to tests.log.
if [[ " $STEPS " == *" rwtests "* ]]; then
  for e in ${DS3_RWTESTS_ENVS:-DS3_CUDA_Q8_RW=2 DS3_CUDA_Q8_RW=4}; do
    IFS=, read -ra set <<<"$e"
    for t in test_cuda_quant test_cuda_ops; do
      env "${set[@]}" timeout 240 "$BIN/$t" >"$W/$t.$e.log" 2>&1
      rc=$?
      echo "== $t $e rc=$rc $(grep -E "passed|failed" "$W/$t.$e.log" | tail -1)"
      [ $rc = 0 ] || { echo "=== $t $e rc=$rc"; grep -B4 -A14 FAILED "$W/$t.$e.log" | head -60; } >>"$OUT/tests.log"
    done
  done
fi

# "v3bench": ds3 bench on the V3-width slice (8 layers) at $DS3_BENCH_TYPES (default Q4_K_M).
if [[ " $STEPS " == *" v3bench "* ]]; then
  for t in ${DS3_BENCH_TYPES:-Q4_K_M}; do
    timeout 240 "$BIN/ds3" bench --backend cuda --synthetic v3 --layers 8 --type "$t" -r 2 2>&1 | tee -a "$OUT/bench.txt"
  done
fi

# "ab": ds3 bench (DS3_AB_MODEL, default the V3-width slice "--synthetic v3 --layers 8"; type
# DS3_AB_TYPE or Q4_K_M) over the entries of DS3_AB_SETS, alternating, DS3_AB_ROUNDS times
# (default 3): a ~1 % difference in tg128 is not resolved by fewer runs
# (docs/performance-cuda.md, slice 18). An entry is comma-separated VAR=value settings for
# ds3 ("-": none) or "old" (ds3-old); the default is "- old" when ds3-old is packed, else
# "-". A run has DS3_CUDA_STEP_TIMES=1 and reports the device µs a replayed step and
# the idle µs between steps (median), which resolve ~5 µs in one call (slice 22), and the
# host's µs around a step (before the launch, the launch, the wait, after it, and outside
# run_graph between two steps). DS3_AB_PLAIN=1: without DS3_CUDA_STEP_TIMES (the events
# around each step cost ~0.3 % of tg128), tg128 and its % of the roofline only. One line a
# run in $OUT/ab.txt.
if [[ " $STEPS " == *" ab "* ]]; then
  sets=${DS3_AB_SETS:-$([ -x "$BIN/ds3-old" ] && echo "- old" || echo "-")}
  read -ra model <<<"${DS3_AB_MODEL:---synthetic v3 --layers 8}"
  times=DS3_CUDA_STEP_TIMES=$([ "${DS3_AB_PLAIN:-0}" = 1 ] && echo 0 || echo 1)
  for r in $(seq "${DS3_AB_ROUNDS:-3}"); do
    for e in $sets; do
      bin=$BIN/ds3 vars=()
      if [ "$e" = old ]; then bin=$BIN/ds3-old; elif [ "$e" != - ]; then IFS=, read -ra vars <<<"$e"; fi
      env "$times" "${vars[@]}" timeout 300 "$bin" bench --backend cuda "${model[@]}" \
        --type "${DS3_AB_TYPE:-Q4_K_M}" -r 2 -p 512 >"$W/ab.out" 2>"$W/ab.err"
      rc=$?
      if [ "${DS3_AB_PLAIN:-0}" = 1 ]; then
        echo "$e r$r rc=$rc $(grep -E '\| (pp|tg)[0-9]+ \|' "$W/ab.out" | awk -F'|' '{printf "%s%s; ", $7, $8}')" \
          "$(grep -o '[0-9.]* % of [0-9]* GB/s' "$W/ab.out")" | tee -a "$OUT/ab.txt"
        continue
      fi
      echo "$e r$r rc=$rc $(grep -E '\| (pp|tg)[0-9]+ \|' "$W/ab.out" | awk -F'|' '{printf "%s%s; ", $7, $8}')" \
        "device/idle µs $(grep -o 'the step and its copies [0-9.]*, idle before it [0-9.]*' "$W/ab.err" |
          awk '{print $6, $10}'); host µs $(grep -o 'before the launch [0-9.]*, launch [0-9.]*, wait [0-9.]*, after [0-9.]*, outside (from the step before) [0-9.]*' "$W/ab.err" |
          awk '{print $4, $6, $8, $10, $16}')" | tee -a "$OUT/ab.txt"
    done
  done
fi

# "trace": a CUPTI timeline of the replayed decode steps on the V3-width slice at Q4_K_M
# (tests/cuda/kernel_trace.cpp, carried in .devdata/tools by --pack), for ds3 and ds3-old
# when packed: $OUT/charge_<binary>.txt, each kernel's charge over the step, and
# $OUT/timeline_<binary>.txt, one step's kernels in start order (tests/cuda/trace_step.py).
if [[ " $STEPS " == *" trace "* ]]; then
  for b in ds3 ds3-old; do
    [ -x "$BIN/$b" ] || continue
    CUDA_INJECTION64_PATH=$PWD/.devdata/tools/libds3_kernel_trace.so DS3_TRACE_OUT="$W/trace_$b.csv" \
      timeout 300 "$BIN/$b" bench --backend cuda --synthetic v3 --layers 8 --type Q4_K_M -n 32 -p 512 -r 1 \
      >/dev/null 2>"$W/trace_$b.err"
    echo "trace $b rc=$?: $(tail -1 "$W/trace_$b.err")"
    python3 tests/cuda/trace_step.py "$W/trace_$b.csv" --top 45 >"$OUT/charge_$b.txt" 2>&1
    python3 tests/cuda/trace_step.py "$W/trace_$b.csv" --timeline >"$OUT/timeline_$b.txt" 2>&1
  done
fi

# "ncu": every kernel of a few decode steps on the V3-width slice at Q4_K_M, timed one by one
# by Nsight Compute (graph nodes profiled as kernels: no launch gaps), then one step's
# kernels summed by name (tests/cuda/ncu_step.py). DS3_NCU_ARGS: more ncu flags (e.g.
# "--cache-control none"); DS3_NCU_BENCH: the bench's -p/-n/-r (default "-p 0 -n 4 -r 1");
# DS3_NCU_MARKER: ncu_step.py's step marker.
if [[ " $STEPS " == *" ncu "* ]]; then
  NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
  timeout 300 "$NCU" --clock-control none ${DS3_NCU_ARGS:-} --graph-profiling node --metrics gpu__time_duration.sum --csv \
    --print-units base "$BIN/ds3" bench --backend cuda --synthetic v3 --layers 8 --type "${DS3_NCU_TYPE:-Q4_K_M}" \
    ${DS3_NCU_BENCH:--p 0 -n 4 -r 1} >"$W/ncu.csv" 2>"$W/ncu.err"
  echo "ncu rc=$? $(wc -l <"$W/ncu.csv") lines"; tail -3 "$W/ncu.err"
  python3 tests/cuda/ncu_step.py "$W/ncu.csv" ${DS3_NCU_MARKER:+"$DS3_NCU_MARKER"} | tee "$OUT/ncu_step.txt"
  xz -9 <"$W/ncu.csv" >"$OUT/ncu.csv.xz"
fi
