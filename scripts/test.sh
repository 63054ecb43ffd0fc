#!/usr/bin/env bash
# README command 2 (and what CI runs): install the dependencies, build, run every test.
#   1. Release build + ctest (unit, conformance against ../shared/fixtures when present,
#      CLI tests; CUDA tests skip without a GPU, Vulkan tests run on lavapipe).
#   2. ASan/UBSan build of the parser tests (GGUF, safetensors, tokenizer) + ctest.
#   3. The GGUF fuzz target for a bounded time (FUZZ_SECONDS, default 60).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh

echo "== [1/3] release build and tests"
BUILD_DIR=build scripts/build.sh
ctest --test-dir build --output-on-failure -j2 --timeout 1200

echo "== [2/3] sanitizer build of the parser tests"
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDS3_SANITIZE=ON \
  -DDS3_CUDA=OFF -DDS3_VULKAN=OFF >/dev/null
cmake --build build-asan -j "${JOBS:-2}" --target tests_parser
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
  ctest --test-dir build-asan --output-on-failure -j2 --timeout 1200 -L parser

echo "== [3/3] fuzzing the GGUF reader for ${FUZZ_SECONDS:-60} s"
scripts/fuzz.sh "${FUZZ_SECONDS:-60}"
echo "== all tests passed"
