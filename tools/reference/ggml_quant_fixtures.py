#!/usr/bin/env python3
"""Write the ggml block-format fixtures for `crates/voxide-nn/src/quant/blocks.rs` tests.

Run from anywhere with the reference environment (numpy + gguf 0.19.0, ggml's numpy port) and a
whisper.cpp checkout whose ggml-base library is built (`cmake -B build && cmake --build build`):

    /work/venv/ref/bin/python tools/reference/ggml_quant_fixtures.py /work/peers/whisper.cpp

It compiles `tools/reference/ggml_quants_ref.c` (gcc, against `<checkout>/ggml/{include,src}`
and `<checkout>/build/bin/libggml-base.so`; `--build-dir` picks another build directory), which
runs ggml's own `quantize_row_*_ref` / `dequantize_row_*` (see that file), and writes to
`tests/fixtures/ggml-quants/` (about 0.4 MB), all raw little-endian without headers:

* `input.f32`: the input of the block types, 8 rows x 512 float32 (seed 20240601):
  0 zeros; 1 N(0,1) with one outlier (1000 at column 300); 2 N(0,1) times a scale
  10**U(-6,3) per 16 values; 3 N(0,0.02) (typical weights); 4 all-positive first half,
  all-negative second half; 5 structured blocks (a constant block, values ~1e-20, a single
  non-zero, exact .5 rounding ties with amax 127, small integers, 90 % zeros);
  6 Student-t(2) * 0.1; 7 N(0,1) * 1e4 clipped to +-6e4 (near the f16 range of the scales).
* `input-float.f32`: the input of f32 / f16 / bf16, 4 rows x 512 float32: 0 special values
  (+-0, +-inf, quiet / signalling / negative NaNs with payloads, f16 and bf16 overflow,
  subnormals, round-to-even ties) then random; 1 exact f16 rounding ties; 2 exact bf16
  rounding ties; 3 random sign and magnitude 10**U(-12,12).
* `<type>.quant.bin`: that input quantized a 512-value row at a time by ggml's C reference
  (`ggml_fp32_to_fp16_row`, `ggml_fp32_to_bf16_row_ref`, `quantize_row_<type>_ref`; f32 is a
  copy). For every type gguf-py can quantize (f32, f16, bf16, q4_0, q4_1, q5_0, q5_1, q8_0)
  the script asserts that `gguf.quants.quantize` gives the same bytes, except where gguf-py is
  known to differ from ggml: f16 of NaN (numpy keeps payload bits, ggml writes 0x7e00) and
  blocks of zeros some of which are -0.0 (gguf-py's scale d is +0 there, ggml's -0).
* `<type>.dequant.f32`: `<type>.quant.bin` dequantized. From `gguf.quants.dequantize` where
  gguf-py has it (all but q8_1 and q8_K), asserted bit-identical to ggml's C
  `dequantize_row_*`; q8_K from the C harness; q8_1 (ggml has no `dequantize_row_q8_1`) as
  `q * d` in float32, the order of q8_0.
* `<type>.random.bin` + `<type>.random.dequant.f32` (block types only): 2048 values' worth of
  random blocks (uniform random bytes, every f16 field a random finite f16, q8_K's f32 scale
  a random finite f32) and their dequantization, from the same references as above.
* `index.json`: shapes, which reference produced each file, versions, the checkout's commit.

Fixtures are committed; do not regenerate them in CI.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import quants

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "ggml-quants"
HARNESS = Path(__file__).resolve().parent / "ggml_quants_ref.c"

SEED = 20240601
N_PER_ROW = 512
RANDOM_VALUES = 2048

# ggml name -> (gguf type, block size, block bytes, offsets of the f16 fields in a block)
TYPES = {
    "f32": (Q.F32, 1, 4, ()),
    "f16": (Q.F16, 1, 2, ()),
    "bf16": (Q.BF16, 1, 2, ()),
    "q4_0": (Q.Q4_0, 32, 18, (0,)),
    "q4_1": (Q.Q4_1, 32, 20, (0, 2)),
    "q5_0": (Q.Q5_0, 32, 22, (0,)),
    "q5_1": (Q.Q5_1, 32, 24, (0, 2)),
    "q8_0": (Q.Q8_0, 32, 34, (0,)),
    "q8_1": (Q.Q8_1, 32, 36, (0, 2)),
    "q2_K": (Q.Q2_K, 256, 84, (80, 82)),
    "q3_K": (Q.Q3_K, 256, 110, (108,)),
    "q4_K": (Q.Q4_K, 256, 144, (0, 2)),
    "q5_K": (Q.Q5_K, 256, 176, (0, 2)),
    "q6_K": (Q.Q6_K, 256, 210, (208,)),
    "q8_K": (Q.Q8_K, 256, 292, ()),  # f32 scale at 0, set separately
}
FLOAT_TYPES = ("f32", "f16", "bf16")
GGUF_QUANTIZE = ("f32", "f16", "bf16", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0")
NO_GGUF_DEQUANTIZE = ("q8_1", "q8_K")


def block_input(rng: np.random.Generator) -> np.ndarray:
    """The 8 x 512 input of the block types (rows as in the module docstring)."""
    n = N_PER_ROW
    rows = np.zeros((8, n), dtype=np.float32)
    rows[1] = rng.standard_normal(n)
    rows[1, 300] = 1000.0
    rows[2] = rng.standard_normal(n) * np.repeat(10.0 ** rng.uniform(-6, 3, n // 16), 16)
    rows[3] = rng.normal(0.0, 0.02, n)
    half = np.abs(rng.standard_normal(n // 2)) + 0.5
    rows[4] = np.concatenate([half, -half[::-1]])
    s = rows[5]
    s[0:32] = 0.5
    s[32:64] = rng.standard_normal(32) * 1e-20
    s[70] = -3.0
    s[96] = 127.0
    s[97:128] = np.arange(-15, 16) + 0.5
    s[128:256] = rng.integers(-8, 8, 128)
    s[256:512] = rng.standard_normal(256) * (rng.random(256) < 0.1)
    rows[6] = rng.standard_t(2, n) * 0.1
    rows[7] = np.clip(rng.standard_normal(n) * 1e4, -6e4, 6e4)
    return rows


def random_sign(rng: np.random.Generator, n: int) -> np.ndarray:
    """n random float32 sign bits."""
    return rng.integers(0, 2, n).astype(np.uint32) << 31


def float_input(rng: np.random.Generator) -> np.ndarray:
    """The 4 x 512 input of f32 / f16 / bf16 (rows as in the module docstring)."""
    n = N_PER_ROW
    bits = np.zeros((4, n), dtype=np.uint32)
    special = [
        0x00000000, 0x80000000, 0x7F800000, 0xFF800000,  # +-0, +-inf
        0x7FC00000, 0xFFC00000, 0x7F800001, 0x7FA00000, 0xFFE12345,  # NaNs
        0x7F7FFFFF, 0xFF7FFFFF, 0x7F7F8000, 0x7F7F7FFF,  # bf16 overflow / ties at the top
        0x00000001, 0x80000001, 0x00400000,  # f32 subnormals
    ]
    f16_cases = np.array([
        65504.0, 65519.0, 65520.0, -65536.0, 1e-8, -1e-8,
        2.0**-24, 2.0**-25, 3 * 2.0**-25, 2.0**-14, 2.0**-14 - 2.0**-25,
        1 + 2.0**-11, 1 + 3 * 2.0**-11, -(1 + 2.0**-11), 0.1, -1 / 3,
    ], dtype=np.float32)
    head = np.concatenate([np.array(special, dtype=np.uint32), f16_cases.view(np.uint32)])
    bits[0, : head.size] = head
    bits[0, head.size :] = rng.standard_normal(n - head.size).astype(np.float32).view(np.uint32)
    # Exact ties: the bits below the kept mantissa are exactly one half of the last kept bit.
    exp_f16 = rng.integers(127 - 14, 127 + 16, n).astype(np.uint32)  # normal f16 range
    mant_f16 = rng.integers(0, 1 << 10, n).astype(np.uint32) << 13
    bits[1] = random_sign(rng, n) | (exp_f16 << 23) | mant_f16 | 0x1000
    exp_bf16 = rng.integers(1, 255, n).astype(np.uint32)
    mant_bf16 = rng.integers(0, 1 << 7, n).astype(np.uint32) << 16
    bits[2] = random_sign(rng, n) | (exp_bf16 << 23) | mant_bf16 | 0x8000
    values = np.where(rng.random(n) < 0.5, -1.0, 1.0) * 10.0 ** rng.uniform(-12, 12, n)
    bits[3] = values.astype(np.float32).view(np.uint32)
    return bits.view(np.float32)


def random_blocks(rng: np.random.Generator, name: str) -> np.ndarray:
    """Random valid blocks: random bytes, every scale field a random finite float."""
    _, block, nbytes, halves = TYPES[name]
    count = RANDOM_VALUES // block
    blocks = rng.integers(0, 256, (count, nbytes), dtype=np.uint8)
    for off in halves:
        sign, exp = rng.integers(0, 2, count) << 15, rng.integers(0, 31, count) << 10
        h = sign | exp | rng.integers(0, 1024, count)
        blocks[:, off : off + 2] = h.astype("<u2").view(np.uint8).reshape(count, 2)
    if name == "q8_K":
        sign, exp = rng.integers(0, 2, count) << 31, rng.integers(0, 255, count) << 23
        f = sign | exp | rng.integers(0, 1 << 23, count)
        blocks[:, 0:4] = f.astype("<u4").view(np.uint8).reshape(count, 4)
    return blocks


def build_harness(checkout: Path, build_dir: Path, tmp: Path) -> Path:
    """Compiles ggml_quants_ref.c against the checkout's headers and libggml-base."""
    lib = build_dir / "bin"
    if not (lib / "libggml-base.so").exists():
        sys.exit(f"{lib}/libggml-base.so not found: build the checkout with cmake first")
    exe = tmp / "ggml_quants_ref"
    cmd = [
        "gcc", "-O2", "-std=gnu11", "-Wall", "-Wextra",
        "-I", str(checkout / "ggml" / "include"), "-I", str(checkout / "ggml" / "src"),
        str(HARNESS), "-L", str(lib), "-lggml-base", f"-Wl,-rpath,{lib}", "-o", str(exe),
    ]
    subprocess.run(cmd, check=True)
    return exe


def run(exe: Path, args: list[str], data: bytes) -> bytes:
    return subprocess.run([str(exe), *args], input=data, stdout=subprocess.PIPE, check=True).stdout


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool((a.view(np.uint32) == b.view(np.uint32)).all())


def dequantize(exe: Path, name: str, blocks: np.ndarray) -> tuple[np.ndarray, str]:
    """Reference dequantization of whole blocks (flat uint8) and where it came from."""
    qtype, block, nbytes, _ = TYPES[name]
    if name == "q8_1":
        b = blocks.reshape(-1, nbytes)
        d = b[:, 0:2].copy().view("<f2").astype(np.float32)
        q = b[:, 4:].view(np.int8).astype(np.float32)
        return (q * d).reshape(-1), "numpy q*d (ggml has no dequantize_row_q8_1)"
    c = np.frombuffer(run(exe, ["dequantize", name], blocks.tobytes()), dtype="<f4")
    if name in NO_GGUF_DEQUANTIZE:
        return c, "ggml-c"
    g = quants.dequantize(blocks.reshape(-1, nbytes), qtype).reshape(-1).astype(np.float32)
    if not same_bits(g, c):
        bad = np.flatnonzero(g.view(np.uint32) != c.view(np.uint32))
        sys.exit(f"{name}: gguf-py and ggml C dequantization differ at {bad[:10]}")
    return g, "gguf-py (== ggml-c)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkout", type=Path, help="whisper.cpp (or llama.cpp) checkout with ggml/")
    ap.add_argument("--build-dir", type=Path, help="its cmake build dir (default <checkout>/build)")
    args = ap.parse_args()
    checkout = args.checkout.resolve()
    build_dir = (args.build_dir or checkout / "build").resolve()

    rng = np.random.default_rng(SEED)
    inputs = {"input.f32": block_input(rng), "input-float.f32": float_input(rng)}
    OUT.mkdir(parents=True, exist_ok=True)
    for file, x in inputs.items():
        (OUT / file).write_bytes(x.astype("<f4").tobytes())

    git = ["git", "-C", str(checkout), "rev-parse", "HEAD"]
    commit = subprocess.run(git, stdout=subprocess.PIPE, text=True, check=False).stdout.strip()
    index: dict = {
        "generator": "tools/reference/ggml_quant_fixtures.py",
        "seed": SEED,
        "n_per_row": N_PER_ROW,
        "ggml_checkout_commit": commit or None,
        "versions": {"numpy": np.__version__, "gguf": version("gguf")},
        "inputs": {f: {"rows": int(x.shape[0]), "n_per_row": N_PER_ROW} for f, x in inputs.items()},
        "types": {},
    }

    with tempfile.TemporaryDirectory() as tmp:
        exe = build_harness(checkout, build_dir, Path(tmp))
        for name, (qtype, block, nbytes, _) in TYPES.items():
            input_file = "input-float.f32" if name in FLOAT_TYPES else "input.f32"
            x = inputs[input_file]
            quant = run(exe, ["quantize", name, str(N_PER_ROW)], x.tobytes())
            quant = np.frombuffer(quant, dtype=np.uint8)
            assert quant.size == x.size // block * nbytes, name
            quant_ref = "ggml-c"
            if name in GGUF_QUANTIZE:
                with np.errstate(over="ignore"):  # f16 overflow to inf is part of the test
                    g = quants.quantize(x, qtype).reshape(-1).view(np.uint8).reshape(-1, nbytes)
                # Known differences, excluded: numpy keeps f16 NaN payloads (ggml writes 0x7e00);
                # on an all-zero block gguf-py takes the scale's sign from the first zero's
                # (-0.0 gives d = +0) where ggml starts from +0 (d = 0 / -8 = -0).
                xb = x.reshape(-1, block)
                if name == "f16":
                    keep = ~np.isnan(xb[:, 0])
                else:
                    keep = (xb != 0).any(axis=1) | (block == 1)
                if not np.array_equal(g[keep], quant.reshape(-1, nbytes)[keep]):
                    bad = np.flatnonzero((g != quant.reshape(-1, nbytes)).any(axis=1) & keep)
                    sys.exit(f"{name}: gguf-py and ggml C quantization differ in blocks {bad[:10]}")
                skipped = int((~keep).sum())
                what = "NaN values" if name == "f16" else "all-zero blocks"
                note = f"; {skipped} {what} not compared" if skipped else ""
                quant_ref = f"ggml-c (== gguf-py{note})"
            deq, deq_ref = dequantize(exe, name, quant)
            (OUT / f"{name}.quant.bin").write_bytes(quant.tobytes())
            (OUT / f"{name}.dequant.f32").write_bytes(deq.astype("<f4").tobytes())
            entry = {
                "input": input_file,
                "quant": f"{name}.quant.bin",
                "quant_reference": quant_ref,
                "dequant": f"{name}.dequant.f32",
                "dequant_reference": deq_ref,
            }
            if name not in FLOAT_TYPES:
                blocks = random_blocks(rng, name).reshape(-1)
                rdeq, rdeq_ref = dequantize(exe, name, blocks)
                (OUT / f"{name}.random.bin").write_bytes(blocks.tobytes())
                (OUT / f"{name}.random.dequant.f32").write_bytes(rdeq.astype("<f4").tobytes())
                entry.update(
                    random=f"{name}.random.bin",
                    random_dequant=f"{name}.random.dequant.f32",
                    random_dequant_reference=rdeq_ref,
                )
                err = np.sqrt(np.mean((deq - x.reshape(-1)) ** 2)) / np.sqrt(np.mean(x**2))
                entry["relative_rms_error"] = float(err)
            index["types"][name] = entry
            print(f"{name:5} quant {quant.size:6} B  [{quant_ref}]  dequant [{deq_ref}]")

    (OUT / "index.json").write_text(json.dumps(index, indent=2) + "\n")
    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"wrote {OUT.relative_to(ROOT)}: {total} bytes")


if __name__ == "__main__":
    main()
