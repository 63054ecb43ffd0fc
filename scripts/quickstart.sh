#!/usr/bin/env bash
# README command 1: install the dependencies, build, and run the whole pipeline on a
# small model the project makes itself: a random-weight DeepSeek-V3-shaped release
# (FP8 weights with 128x128 block scales, sharded safetensors) -> GGUF -> greedy decode.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh
DS3=build/bin/ds3
WORK=${WORK:-out/quickstart}
rm -rf "$WORK" && mkdir -p "$WORK"

echo "== ds3 synth: a tiny DeepSeek-V3 release in $WORK/hf"
$DS3 synth --preset v3-tiny -o "$WORK/hf"
echo "== ds3 convert -> $WORK/v3-tiny.gguf"
$DS3 convert "$WORK/hf" -o "$WORK/v3-tiny.gguf" --outtype bf16
echo "== ds3 inspect --verify"
$DS3 inspect "$WORK/v3-tiny.gguf" --verify | tail -n 12
echo "== ds3 run: 16 greedy tokens after the prompt 0,15,27"
$DS3 run -m "$WORK/v3-tiny.gguf" --tokens 0,15,27 -n 16 --temp 0 --print-ids
