#!/usr/bin/env bash
# Fuzzes the GGUF reader with libFuzzer for a bounded time.
#   scripts/fuzz.sh [SECONDS]        (default 60; env FUZZ_JOBS=N runs N workers)
# Builds fuzz_gguf (clang, -fsanitize=fuzzer,address,undefined) in build-fuzz/, runs it on
# a copy of tests/fuzz/corpus/gguf (so the committed seeds stay as they are), and exits
# non-zero when it finds a crash; the reproducer is left in build-fuzz/artifacts/.
set -euo pipefail

seconds="${1:-60}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${DS3_FUZZ_BUILD_DIR:-$root/build-fuzz}"
jobs="${FUZZ_JOBS:-1}"

cc="$(command -v clang || command -v clang-14 || true)"
cxx="$(command -v clang++ || command -v clang++-14 || true)"
if [[ -z "$cc" || -z "$cxx" ]]; then
  echo "fuzz.sh: clang is required (apt-get install clang libclang-rt-14-dev)" >&2
  exit 2
fi

CC="$cc" CXX="$cxx" cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DDS3_FUZZ=ON -DDS3_TESTS=OFF -DDS3_CUDA=OFF -DDS3_VULKAN=OFF >/dev/null
cmake --build "$build" --target fuzz_gguf -j"${BUILD_JOBS:-2}"

corpus="$build/corpus-gguf"
rm -rf "$corpus"
mkdir -p "$corpus" "$build/artifacts"
cp "$root"/tests/fuzz/corpus/gguf/* "$corpus"/

echo "fuzz.sh: running fuzz_gguf for ${seconds}s on $(ls "$corpus" | wc -l) seeds" >&2
parallel=()
if [[ "$jobs" -gt 1 ]]; then parallel=(-fork="$jobs"); fi
status=0
"$build/tests/fuzz/fuzz_gguf" "$corpus" "${parallel[@]}" \
  -max_total_time="$seconds" -max_len=8192 -timeout=10 -rss_limit_mb=2048 \
  -artifact_prefix="$build/artifacts/" -print_final_stats=1 || status=$?
if [[ $status -ne 0 ]]; then
  echo "fuzz.sh: fuzz_gguf failed (exit $status); reproducers:" >&2
  ls -l "$build/artifacts/" >&2 || true
  exit 1
fi
echo "fuzz.sh: no crash in ${seconds}s" >&2
