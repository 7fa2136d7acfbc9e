#!/usr/bin/env python3
"""Full-size random-weight checkpoints for benchmarking (numpy + safetensors only, no torch).

    random_weights.py whisper --size {tiny,base,small,medium,large-v2,large-v3,large-v3-turbo} \
        --out DIR [--dtype f32|f16] [--seed N] [--ggml FILE]
    random_weights.py check-ggml FILE DIR      # every ggml tensor == the safetensors one

Writes a Hugging Face layout directory that voxide loads (config.json, generation_config.json,
preprocessor_config.json, tokenizer.json, tokenizer_config.json, model.safetensors) with the real
shapes of that size, and optionally the same weights in whisper.cpp's legacy ggml format
(ftype 1: 2-D and 3-D weights f16; 1-D tensors, conv biases [n, 1] and both positional
embeddings f32).

Every value is rounded to f16 before it is written, so the f32 and f16 safetensors and the ggml
file hold exactly the same numbers. Tensors are generated one at a time (in row chunks) and
streamed to disk, so large-v3 needs well under 1 GB of memory.

Values (chosen so activations stay O(1) through every layer):
  linear / conv weights  N(0, (0.5 / sqrt(fan_in))^2)
  biases                 N(0, 0.02^2)
  LayerNorm weight       1 + N(0, 0.02^2), bias N(0, 0.02^2)
  token embedding        N(0, 0.02^2)
  encoder positions      the real sinusoid table (openai-whisper `sinusoids`)
  decoder positions      N(0, 0.01^2)
Each tensor has its own generator seeded with (seed, crc32(name)), so a tensor's values do not
depend on which other tensors exist or on the order they are written.

Random Whisper weights never emit end-of-text: compare per-window encoder time and per-token
decoder time with greedy decoding, no temperature fallback and a fixed number of steps.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import shutil
import struct
import sys
import zlib
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures" / "whisper"
SHARED_ASSETS = (REPO.parent / "shared" / "assets" / "whisper")

# name: (n_mels, d_model, heads, encoder layers, decoder layers, n_vocab)
WHISPER_SIZES = {
    "tiny": (80, 384, 6, 4, 4, 51865),
    "base": (80, 512, 8, 6, 6, 51865),
    "small": (80, 768, 12, 12, 12, 51865),
    "medium": (80, 1024, 16, 24, 24, 51865),
    "large-v2": (80, 1280, 20, 32, 32, 51865),
    "large-v3": (128, 1280, 20, 32, 32, 51866),
    "large-v3-turbo": (128, 1280, 20, 32, 4, 51866),
}
N_AUDIO_CTX = 1500
N_TEXT_CTX = 448
CHUNK_ELEMS = 1 << 24  # rows are generated in chunks of about 16 M values

# ---------------------------------------------------------------------------------------------
# tensor list


def whisper_tensors(n_mels, d, n_enc, n_dec, n_vocab):
    """(HF name, shape, kind) in HF order; kind selects the initialiser."""
    ff = 4 * d
    out = [
        ("model.encoder.conv1.weight", (d, n_mels, 3), "w"),
        ("model.encoder.conv1.bias", (d,), "b"),
        ("model.encoder.conv2.weight", (d, d, 3), "w"),
        ("model.encoder.conv2.bias", (d,), "b"),
        ("model.encoder.embed_positions.weight", (N_AUDIO_CTX, d), "sinusoid"),
    ]

    def attn(prefix):
        return [
            (f"{prefix}.q_proj.weight", (d, d), "w"),
            (f"{prefix}.q_proj.bias", (d,), "b"),
            (f"{prefix}.k_proj.weight", (d, d), "w"),
            (f"{prefix}.v_proj.weight", (d, d), "w"),
            (f"{prefix}.v_proj.bias", (d,), "b"),
            (f"{prefix}.out_proj.weight", (d, d), "w"),
            (f"{prefix}.out_proj.bias", (d,), "b"),
        ]

    def ln(prefix):
        return [(f"{prefix}.weight", (d,), "ln_w"), (f"{prefix}.bias", (d,), "b")]

    def mlp(prefix):
        return [
            (f"{prefix}.fc1.weight", (ff, d), "w"),
            (f"{prefix}.fc1.bias", (ff,), "b"),
            (f"{prefix}.fc2.weight", (d, ff), "w"),
            (f"{prefix}.fc2.bias", (d,), "b"),
        ]

    for i in range(n_enc):
        p = f"model.encoder.layers.{i}"
        out += attn(f"{p}.self_attn") + ln(f"{p}.self_attn_layer_norm")
        out += mlp(p) + ln(f"{p}.final_layer_norm")
    out += ln("model.encoder.layer_norm")

    out += [
        ("model.decoder.embed_tokens.weight", (n_vocab, d), "emb"),
        ("model.decoder.embed_positions.weight", (N_TEXT_CTX, d), "dec_pos"),
    ]
    for i in range(n_dec):
        p = f"model.decoder.layers.{i}"
        out += attn(f"{p}.self_attn") + ln(f"{p}.self_attn_layer_norm")
        out += attn(f"{p}.encoder_attn") + ln(f"{p}.encoder_attn_layer_norm")
        out += mlp(p) + ln(f"{p}.final_layer_norm")
    out += ln("model.decoder.layer_norm")
    return out


def hf_to_openai(name: str) -> str:
    """HF tensor name -> openai-whisper (and ggml) name (whisper.md section 3)."""
    n = name[len("model."):] if name.startswith("model.") else name
    n = n.replace("encoder.embed_positions.weight", "encoder.positional_embedding")
    n = n.replace("decoder.embed_positions.weight", "decoder.positional_embedding")
    n = n.replace("decoder.embed_tokens", "decoder.token_embedding")
    n = n.replace(".layers.", ".blocks.")
    n = n.replace(".self_attn_layer_norm.", ".attn_ln.")
    n = n.replace(".encoder_attn_layer_norm.", ".cross_attn_ln.")
    n = n.replace(".final_layer_norm.", ".mlp_ln.")
    n = n.replace(".self_attn.", ".attn.")
    n = n.replace(".encoder_attn.", ".cross_attn.")
    n = n.replace(".q_proj.", ".query.").replace(".k_proj.", ".key.")
    n = n.replace(".v_proj.", ".value.").replace(".out_proj.", ".out.")
    n = n.replace(".fc1.", ".mlp.0.").replace(".fc2.", ".mlp.2.")
    n = n.replace("encoder.layer_norm.", "encoder.ln_post.")
    n = n.replace("decoder.layer_norm.", "decoder.ln.")
    return n


# ---------------------------------------------------------------------------------------------
# values


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> np.ndarray:
    """openai-whisper's `sinusoids` (computed in f32 like torch)."""
    assert channels % 2 == 0
    inc = np.float32(math.log(max_timescale) / (channels // 2 - 1))
    inv = np.exp(-inc * np.arange(channels // 2, dtype=np.float32)).astype(np.float32)
    t = np.arange(length, dtype=np.float32)[:, None] * inv[None, :]
    return np.concatenate([np.sin(t), np.cos(t)], axis=1).astype(np.float32)


def tensor_chunks(name, shape, kind, seed):
    """Yield the tensor's values as f16-rounded f32 arrays, row chunks of the flattened tensor
    (C order), so the concatenation is the whole tensor."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    if kind == "sinusoid":
        yield sinusoids(*shape).astype(np.float16).astype(np.float32)
        return
    rows = shape[0]
    row_elems = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
    if kind == "w":
        std, mean = 0.5 / math.sqrt(row_elems), 0.0
    elif kind == "emb":
        std, mean = 0.02, 0.0
    elif kind == "dec_pos":
        std, mean = 0.01, 0.0
    elif kind == "b":
        std, mean = 0.02, 0.0
    elif kind == "ln_w":
        std, mean = 0.02, 1.0
    else:
        raise ValueError(kind)
    step = max(1, CHUNK_ELEMS // row_elems)
    for r0 in range(0, rows, step):
        n = min(step, rows - r0) * row_elems
        x = rng.standard_normal(n, dtype=np.float32)
        x *= np.float32(std)
        if mean:
            x += np.float32(mean)
        yield x.astype(np.float16).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# writers (streaming)


class SafetensorsWriter:
    """Streams tensors into a .safetensors file; the header (all names/shapes) is written first."""

    def __init__(self, path: Path, specs, dtype: str):
        self.dtype = dtype
        self.np_dtype = np.float16 if dtype == "f16" else np.float32
        st_dtype = "F16" if dtype == "f16" else "F32"
        itemsize = np.dtype(self.np_dtype).itemsize
        header = {"__metadata__": {"format": "pt"}}
        self.order = sorted(name for name, _, _ in specs)  # data laid out in name order
        shapes = {name: shape for name, shape, _ in specs}
        off = 0
        for name in self.order:
            nbytes = int(np.prod(shapes[name], dtype=np.int64)) * itemsize
            header[name] = {"dtype": st_dtype, "shape": list(shapes[name]), "data_offsets": [off, off + nbytes]}
            off += nbytes
        self.offsets = {name: header[name]["data_offsets"][0] for name in self.order}
        self.total = off
        hb = json.dumps(header, separators=(",", ":")).encode()
        hb += b" " * ((8 - len(hb) % 8) % 8)
        self.base = 8 + len(hb)
        self.f = open(path, "wb")
        self.f.write(struct.pack("<Q", len(hb)))
        self.f.write(hb)
        self.f.truncate(self.base + self.total)

    def write(self, name, chunks):
        self.f.seek(self.base + self.offsets[name])
        for c in chunks:
            self.f.write(c.astype(self.np_dtype).tobytes())

    def close(self):
        self.f.close()


GGML_FORCE_F32 = {
    "encoder.conv1.bias",
    "encoder.conv2.bias",
    "encoder.positional_embedding",
    "decoder.positional_embedding",
}


class GgmlWriter:
    """whisper.cpp legacy ggml file (whisper.md section 7), as models/convert-pt-to-ggml.py."""

    def __init__(self, path: Path, hparams, mel_filters: np.ndarray, vocab: list[bytes]):
        self.f = open(path, "wb")
        f = self.f
        f.write(struct.pack("<i", 0x67676D6C))
        f.write(struct.pack("<11i", *hparams))
        f.write(struct.pack("<ii", *mel_filters.shape))
        f.write(np.ascontiguousarray(mel_filters, dtype="<f4").tobytes())
        f.write(struct.pack("<i", len(vocab)))
        for tok in vocab:
            f.write(struct.pack("<i", len(tok)))
            f.write(tok)

    def begin(self, oa_name: str, shape):
        shape = tuple(shape)
        if oa_name in ("encoder.conv1.bias", "encoder.conv2.bias"):
            shape = (shape[0], 1)
        f16 = not (len(shape) < 2 or oa_name in GGML_FORCE_F32)
        name = oa_name.encode()
        self.f.write(struct.pack("<iii", len(shape), len(name), 1 if f16 else 0))
        for dim in reversed(shape):  # innermost first
            self.f.write(struct.pack("<i", dim))
        self.f.write(name)
        return np.dtype("<f2") if f16 else np.dtype("<f4")

    def write_chunk(self, arr, dt):
        self.f.write(arr.astype(dt).tobytes())

    def close(self):
        self.f.close()


def load_vocab_bytes(path: Path) -> list[bytes]:
    toks = []
    with open(path, "rb") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            tok, rank = line.split()
            assert int(rank) == len(toks), "tiktoken ranks must be consecutive"
            toks.append(base64.b64decode(tok))
    return toks


# ---------------------------------------------------------------------------------------------
# configs


def whisper_configs(size, n_mels, d, heads, n_enc, n_dec, n_vocab, dtype):
    v3 = n_vocab == 51866
    fixture = FIXTURES / ("v3-random" if v3 else "tiny-random")
    if n_vocab not in (51865, 51866):
        raise SystemExit("only multilingual vocabularies (51865, 51866) are supported")
    base = json.loads((fixture / "config.json").read_text())
    gen = json.loads((fixture / "generation_config.json").read_text())
    cfg = dict(base)
    cfg.update(
        {
            "_name_or_path": f"voxide/random-whisper-{size}",
            "model_type": "whisper",
            "architectures": ["WhisperForConditionalGeneration"],
            "num_mel_bins": n_mels,
            "d_model": d,
            "encoder_attention_heads": heads,
            "decoder_attention_heads": heads,
            "encoder_layers": n_enc,
            "decoder_layers": n_dec,
            "num_hidden_layers": n_enc,
            "encoder_ffn_dim": 4 * d,
            "decoder_ffn_dim": 4 * d,
            "max_source_positions": N_AUDIO_CTX,
            "max_target_positions": N_TEXT_CTX,
            "vocab_size": n_vocab,
            "tie_word_embeddings": True,
            "dtype": "float16" if dtype == "f16" else "float32",
        }
    )
    # Real token ids of this vocabulary (whisper.md section 5).
    eot, sot = 50257, 50258
    assert cfg["eos_token_id"] == eot and cfg["decoder_start_token_id"] == sot
    assert gen["no_timestamps_token_id"] == (50364 if v3 else 50363)
    # Alignment heads: every head of the upper half of the decoder (the shape HF uses when the
    # real list is unknown); only word timestamps read them.
    gen["alignment_heads"] = [[layer, h] for layer in range(n_dec // 2, n_dec) for h in range(heads)]
    return fixture, cfg, gen


def write_whisper(args):
    n_mels, d, heads, n_enc, n_dec, n_vocab = WHISPER_SIZES[args.size]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fixture, cfg, gen = whisper_configs(args.size, n_mels, d, heads, n_enc, n_dec, n_vocab, args.dtype)
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2, sort_keys=True) + "\n")
    for fname in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(fixture / fname, out / fname)
    pre = json.loads((fixture / "preprocessor_config.json").read_text())
    pre["feature_size"] = n_mels
    (out / "preprocessor_config.json").write_text(json.dumps(pre, indent=2) + "\n")

    specs = whisper_tensors(n_mels, d, n_enc, n_dec, n_vocab)
    n_params = sum(int(np.prod(s, dtype=np.int64)) for _, s, _ in specs)
    tmp_st = out / "model.safetensors.partial"
    st = SafetensorsWriter(tmp_st, specs, args.dtype)

    gg = None
    if args.ggml:
        assets = Path(args.assets)
        mel = np.load(assets / "mel_filters.npz")[f"mel_{n_mels}"].astype(np.float32)
        vocab = load_vocab_bytes(assets / "multilingual.tiktoken")
        assert len(vocab) == 50257
        hparams = (n_vocab, N_AUDIO_CTX, d, heads, n_enc, N_TEXT_CTX, d, heads, n_dec, n_mels, 1)
        ggml_path = Path(args.ggml)
        ggml_path.parent.mkdir(parents=True, exist_ok=True)
        tmp_gg = ggml_path.with_name(ggml_path.name + ".partial")
        gg = GgmlWriter(tmp_gg, hparams, mel, vocab)

    done = 0
    for name, shape, kind in specs:
        gdt = gg.begin(hf_to_openai(name), shape) if gg else None

        def chunks():
            for c in tensor_chunks(name, shape, kind, args.seed):
                if not np.isfinite(c).all():
                    raise SystemExit(f"non-finite value generated in {name}")
                if gg:
                    gg.write_chunk(c, gdt)
                yield c

        st.write(name, chunks())
        done += int(np.prod(shape, dtype=np.int64))
        if not args.quiet:
            print(f"\r{done / n_params * 100:5.1f}%  {name:<60}", end="", file=sys.stderr, flush=True)
    if not args.quiet:
        print(file=sys.stderr)
    st.close()
    os.replace(tmp_st, out / "model.safetensors")
    if gg:
        gg.close()
        os.replace(tmp_gg, ggml_path)
    print(
        f"whisper-{args.size}: {n_params / 1e6:.1f} M parameters, {len(specs)} tensors -> {out}"
        + (f" and {args.ggml}" if args.ggml else "")
    )


def read_ggml(path: Path):
    """Parse a legacy whisper ggml file: (hparams, mel filters, vocab, {name: array in PyTorch order})."""
    import mmap

    with open(path, "rb") as f:
        data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    pos = 0

    def ints(n):
        nonlocal pos
        v = struct.unpack_from(f"<{n}i", data, pos)
        pos += 4 * n
        return v

    (magic,) = ints(1)
    assert magic == 0x67676D6C, "bad magic"
    hparams = ints(11)
    n_mel, n_fft = ints(2)
    mel = np.frombuffer(data, "<f4", n_mel * n_fft, pos).reshape(n_mel, n_fft)
    pos += 4 * n_mel * n_fft
    (n_words,) = ints(1)
    vocab = []
    for _ in range(n_words):
        (n,) = ints(1)
        vocab.append(bytes(data[pos : pos + n]))
        pos += n
    tensors = {}
    while pos < len(data):
        n_dims, name_len, ttype = ints(3)
        dims = ints(n_dims)
        name = bytes(data[pos : pos + name_len]).decode()
        pos += name_len
        dt = {0: np.dtype("<f4"), 1: np.dtype("<f2")}[ttype]
        count = int(np.prod(dims))
        tensors[name] = np.frombuffer(data, dt, count, pos).reshape(tuple(reversed(dims)))
        pos += count * dt.itemsize
    return hparams, mel, vocab, tensors


def check_ggml(args):
    """Compare every tensor of a ggml file with the model.safetensors next to config.json."""
    from safetensors import safe_open

    hparams, mel, vocab, tensors = read_ggml(Path(args.ggml))
    cfg = json.loads((Path(args.dir) / "config.json").read_text())
    n_mels, d = cfg["num_mel_bins"], cfg["d_model"]
    expect_h = (cfg["vocab_size"], N_AUDIO_CTX, d, cfg["encoder_attention_heads"], cfg["encoder_layers"],
                N_TEXT_CTX, d, cfg["decoder_attention_heads"], cfg["decoder_layers"], n_mels, 1)
    assert tuple(hparams) == expect_h, (hparams, expect_h)
    ref_mel = np.load(Path(args.assets) / "mel_filters.npz")[f"mel_{n_mels}"]
    assert np.array_equal(mel, ref_mel), "mel filters differ"
    assert vocab == load_vocab_bytes(Path(args.assets) / "multilingual.tiktoken"), "vocabulary differs"
    n_checked = 0
    with safe_open(Path(args.dir) / "model.safetensors", "np") as st:
        names = set(st.keys())
        oa = {hf_to_openai(k): k for k in names}
        assert set(oa) == set(tensors), sorted(set(oa) ^ set(tensors))
        for name, g in tensors.items():
            ref = st.get_tensor(oa[name])
            f16 = g.dtype == np.float16
            want_f16 = not (ref.ndim < 2 or name in GGML_FORCE_F32)
            assert f16 == want_f16, f"{name}: wrong ggml type"
            if name in ("encoder.conv1.bias", "encoder.conv2.bias"):
                assert g.shape == (ref.shape[0], 1), name
                g = g.reshape(ref.shape)
            assert g.shape == ref.shape, (name, g.shape, ref.shape)
            if not np.array_equal(g.astype(np.float32), ref.astype(np.float32)):
                raise SystemExit(f"{name}: values differ (max {np.abs(g.astype(np.float32) - ref).max()})")
            n_checked += 1
    print(f"ggml OK: header {hparams}, {len(vocab)} tokens, {n_checked} tensors identical to {args.dir}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="model", required=True)
    w = sub.add_parser("whisper", help="random-weight Whisper checkpoint at real shapes")
    w.add_argument("--size", required=True, choices=sorted(WHISPER_SIZES))
    w.add_argument("--out", required=True, help="output directory (suggested: target/models/whisper-<size>)")
    w.add_argument("--dtype", choices=["f32", "f16"], default="f32", help="safetensors dtype (values are f16-exact either way)")
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--ggml", help="also write whisper.cpp's legacy ggml file (ftype 1) with the same values")
    w.add_argument("--assets", default=str(SHARED_ASSETS), help="folder with mel_filters.npz and multilingual.tiktoken")
    w.add_argument("--quiet", action="store_true")
    c = sub.add_parser("check-ggml", help="compare a ggml file with a generated directory, tensor by tensor")
    c.add_argument("ggml")
    c.add_argument("dir")
    c.add_argument("--assets", default=str(SHARED_ASSETS))
    args = ap.parse_args(argv)
    if args.model == "whisper":
        write_whisper(args)
    else:
        check_ggml(args)


if __name__ == "__main__":
    main()
