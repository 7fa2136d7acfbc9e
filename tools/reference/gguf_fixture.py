#!/usr/bin/env python3
"""A tiny GGUF file written by the `gguf` Python package (ggml's own GGUF library), for the
Rust reader's cross-check (`ggml::gguf::tests::reads_the_python_gguf_fixture`).

Writes tests/fixtures/ggml/tiny.gguf (about 1 KB) with `gguf.GGUFWriter`:

* metadata of every scalar type (u8 ... f64, bool, string), a string array, an f32 array, a
  u8 array and a nested array (`[[1, 2], [3]]`, arrays of i32), plus the writer's own
  `general.architecture = "tiny"`;
* tensors `f32.matrix` (np.arange(12).reshape(3, 4)), `f32.vector` (np.arange(5) / 2),
  `f16.vector` ([1, -2, 0.5]) and `q8_0.matrix` ((np.arange(128) - 64) / 8 as [2, 64],
  quantized with `gguf.quants.quantize(..., Q8_0)`, ggml's reference q8_0).

The script reads the file back with `gguf.GGUFReader` and asserts its content.

The Rust test also rewrites the file with `GgufWriter` and gets these exact bytes back. The
other direction was checked once by hand: a file written by `GgufWriter` by a throwaway test
(the metadata of `ggml::gguf::tests::round_trips_every_value_type`: every scalar type, a
non-UTF-8 string, empty and nested arrays, and f32 / f16 / q8_0 / scalar tensors) read with
`--check PATH`, which prints every field and tensor as `GGUFReader` sees them: all values, the
nested array, the non-UTF-8 string (as bytes) and the tensor data came out as written.

Run (needs only numpy and gguf, as pinned in requirements.txt's environment):

    /work/venv/ref/bin/python tools/reference/gguf_fixture.py
    /work/venv/ref/bin/python tools/reference/gguf_fixture.py --check some.gguf
"""

import argparse
import math
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType, GGUFValueType

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests/fixtures/ggml/tiny.gguf"

SCALARS = [
    ("test.u8", "add_uint8", 200),
    ("test.i8", "add_int8", -100),
    ("test.u16", "add_uint16", 60000),
    ("test.i16", "add_int16", -30000),
    ("test.u32", "add_uint32", 4000000000),
    ("test.i32", "add_int32", -2000000000),
    ("test.f32", "add_float32", 0.25),
    ("test.u64", "add_uint64", 1 << 40),
    ("test.i64", "add_int64", -(1 << 40)),
    ("test.f64", "add_float64", math.pi),
    ("test.bool", "add_bool", True),
    ("test.string", "add_string", "héllo"),
]

ARRAYS = [
    ("test.strings", ["a", "bc", "日本"]),
    ("test.f32s", [1.5, -2.0]),
    ("test.bytes", bytes([0, 1, 255])),
    ("test.nested", [[1, 2], [3]]),
]


def tensors():
    q8_src = ((np.arange(128, dtype=np.float32) - 64) / 8).reshape(2, 64)
    return [
        ("f32.matrix", np.arange(12, dtype=np.float32).reshape(3, 4), None),
        ("f32.vector", np.arange(5, dtype=np.float32) / 2, None),
        ("f16.vector", np.array([1, -2, 0.5], dtype=np.float16), None),
        ("q8_0.matrix", gguf.quants.quantize(q8_src, GGMLQuantizationType.Q8_0),
         GGMLQuantizationType.Q8_0),
    ]


def write(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(path), "tiny")
    for key, method, value in SCALARS:
        getattr(w, method)(key, value)
    for key, value in ARRAYS:
        w.add_array(key, value)
    for name, data, raw_dtype in tensors():
        w.add_tensor(name, data, raw_dtype=raw_dtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def check_fixture(path):
    r = gguf.GGUFReader(str(path))
    assert r.get_field("general.architecture").contents() == "tiny"
    for key, _method, value in SCALARS:
        got = r.get_field(key).contents()
        assert got == value or math.isclose(got, value, rel_tol=1e-7), (key, got, value)
    assert r.get_field("test.strings").contents() == ["a", "bc", "日本"]
    assert r.get_field("test.f32s").contents() == [1.5, -2.0]
    assert r.get_field("test.bytes").contents() == [0, 1, 255]
    assert r.get_field("test.nested").types[:2] == [GGUFValueType.ARRAY, GGUFValueType.ARRAY]
    by_name = {t.name: t for t in r.tensors}
    for name, data, _raw in tensors():
        got = by_name[name].data
        assert got.tobytes() == data.tobytes(), name
    q = by_name["q8_0.matrix"]
    assert list(q.shape) == [64, 2] and q.n_bytes == 136
    # The first q8_0 scale, 8 / 127 as f16, which the Rust test hard-codes.
    assert q.data.tobytes()[:2] == bytes([0x08, 0x2C])


def dump(path):
    """Every field and tensor of `path` as GGUFReader sees them."""
    r = gguf.GGUFReader(str(path))
    print(f"alignment {r.alignment}, data offset {r.data_offset}")
    for name, field in r.fields.items():
        if name.startswith("GGUF."):
            continue
        types = [t.name for t in field.types]
        try:
            value = field.contents()
        except UnicodeDecodeError:
            value = [bytes(p) for p in field.parts[len(field.parts) - 1:]]
        if types and types[0] == "ARRAY" and len(types) > 1 and types[1] == "ARRAY":
            value = f"(nested: {len(field.data)} leaf values)"
        print(f"{name}: {types} = {value!r}")
    for t in r.tensors:
        print(f"tensor {t.name}: {t.tensor_type.name} shape {[int(d) for d in t.shape]} "
              f"offset {t.data_offset} bytes {bytes(t.data.tobytes()).hex()}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", type=Path, help="print a GGUF file as GGUFReader reads it")
    args = ap.parse_args()
    if args.check:
        dump(args.check)
        return
    write(OUT)
    check_fixture(OUT)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes), checked with GGUFReader")


if __name__ == "__main__":
    main()
