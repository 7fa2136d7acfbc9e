#!/usr/bin/env python3
"""Full-size random-weight checkpoints for benchmarking (numpy + safetensors only, no torch).

    random_weights.py whisper --size {tiny,base,small,medium,large-v2,large-v3,large-v3-turbo} \
        --out DIR [--dtype f32|f16] [--seed N] [--ggml FILE]
    random_weights.py check-ggml FILE DIR      # every ggml tensor == the safetensors one
    random_weights.py voxtral-realtime --out DIR [--seed N] [--layout mistral|hf]
    random_weights.py voxtral --out DIR [--seed N] [--layout mistral|hf] [--layers N]
    random_weights.py qwen3-tts --size {0.6b,1.7b} --out DIR [--seed N] \
        [--variant {custom_voice,voice_design,base}]

whisper: writes a Hugging Face layout directory that voxide loads (config.json,
generation_config.json, preprocessor_config.json, tokenizer.json, tokenizer_config.json,
model.safetensors) with the real shapes of that size, and optionally the same weights in
whisper.cpp's legacy ggml format (ftype 1: 2-D and 3-D weights f16; 1-D tensors, conv biases
[n, 1] and both positional embeddings f32). Every value is rounded to f16 before it is written,
so the f32 and f16 safetensors and the ggml file hold exactly the same numbers.

voxtral-realtime (Voxtral Mini 4B Realtime 2602, specs/voxtral-realtime.md): bf16 weights at
the real shapes, 4.43 B parameters (8.86 GB), plus a full-size synthetic tekken.json (150 000
vocab entries: ranks 0-255 the single bytes, then unique random 2-6 byte pieces, some not
UTF-8; default_vocab_size 131 072; 1000 special tokens with the ids of spec section 11, the
rest <SPECIAL_n>; the section 10.1 audio section). Suggested DIR: target/models/voxtral-realtime.
  --layout mistral (default): consolidated.safetensors (711 tensors, Mistral names, spec 12.3),
      params.json (spec 12.2), tekken.json.
  --layout hf: model.safetensors (712 tensors, HF names, spec 12.4: the same values as the
      Mistral layout with the rows of every q/k weight and of the encoder q bias permuted to
      rotate-half order, plus language_model.lm_head.weight = the embedding), config.json
      (transformers' VoxtralRealtimeConfig, real values), generation_config.json, tekken.json.
bf16 is the top 16 bits of f32, rounded to nearest even (as torch's conversion).

voxtral (Voxtral Mini 3B 2507, specs/voxtral-mini-3b.md): bf16 weights at the real shapes,
4.674 B parameters with the separate output head (9.35 GB, about 2.5 minutes and 0.35 GB of
memory on 2 cores): Whisper-large-v3-like encoder (32 layers, 1280 wide, 20 heads, LayerNorms
with bias, k without bias), projector 5120 -> 3072 -> 3072, 30-layer Llama decoder (32 / 8 heads,
FFN 8192, rope_theta 1e8), output head separate from the embedding. tekken.json as
voxtral-realtime's (same vocabulary) with the offline audio section (sampling_rate, frame_rate,
audio_encoding_config, chunk_length_s 30; no streaming fields) and no streaming specials
([AUDIO] 24, [BEGIN_AUDIO] 25, [TRANSCRIBE] 34). Suggested DIR: target/models/voxtral-mini-3b
(mistral) and target/models/voxtral-mini-3b-hf (hf).
  --layout mistral (default): consolidated.safetensors (761 tensors, names the inverse of
      transformers' convert_voxtral_weights_to_hf.py: tok_embeddings, output, layers.N.*,
      mm_whisper_embeddings.{whisper_encoder.*, audio_language_projection.{0,2}}; no positional
      table; decoder q/k rows interleaved), params.json, tekken.json.
  --layout hf: model.safetensors (762 tensors: the same values, decoder q/k rows permuted to
      rotate-half (the encoder never is), plus audio_tower.embed_positions.weight, the exact
      Whisper sinusoids in F32), config.json (VoxtralConfig; text_config has rope_theta and
      rope_parameters; loads in transformers 4.57 and 5.x), generation_config.json,
      preprocessor_config.json (WhisperFeatureExtractor, 128 mels), tekken.json.
  --layers N caps both layer counts (quick tests; the configs say N).

qwen3-tts (Qwen3-TTS-12Hz-{0.6B,1.7B}-{CustomVoice,VoiceDesign,Base}, specs/qwen3-tts.md): the
layout of the tiny fixtures tests/fixtures/qwen3-tts/tiny-random (CustomVoice) and
tiny-random-base (Base) (same tensor names, config.json keys and dtypes) at the real sizes.
--variant (config.json tts_model_type; default custom_voice) picks what is written:
  custom_voice  model.safetensors: talker + code predictor, all bf16 (0.6B: 0.906 B parameters,
                402 tensors, 1.81 GB; 1.7B: 1.917 B, 404 tensors with small_to_mtp_projection,
                3.83 GB); config.json (real shapes, spec section 7 ids; language and the 9 preset
                speaker ids (spk_id / spk_is_dialect) partly approximate), the fixture's
                generation_config.json; speech_tokenizer/ holds the codec decoder (`decoder.*`
                only, 114 M parameters, 271 tensors, 0.25 GB: codebooks F32, the rest bf16) and its
                config.json (encoder_config: MimiConfig's defaults, `_frame_rate` null,
                encoder_valid_num_quantizers 16). The same bytes as before --variant existed.
  voice_design  the same files and tensors (the same values), config.json with no preset speakers
                (spk_id, spk_is_dialect empty). Only 1.7B exists on the hub; 0.6B is allowed.
  base          (voice clone) config.json as voice_design's, plus
                - model.safetensors: the ECAPA-TDNN speaker encoder `speaker_encoder.*` (76 Conv1d
                  weights + biases, bf16; 0.6B: 8.9 M parameters, 1.83 GB in all; 1.7B: 12.0 M),
                  from config.json speaker_encoder_config (qwen-tts defaults: mel_dim 128,
                  enc_channels [512, 512, 512, 512, 1536], kernels [5, 3, 3, 3, 1], dilations
                  [1, 2, 3, 4, 1], attention 128, res2net_scale 8, se 128, sample_rate 24000,
                  enc_dim = talker hidden: 1024 / 2048);
                - speech_tokenizer/model.safetensors: the codec ENCODER `encoder.*` (transformers'
                  MimiModel encoder half: SEANet, 8-layer transformer, stride-2 downsample, split
                  RVQ of 1 semantic + 31 acoustic quantizers; 56.2 M parameters, 225 tensors;
                  codebook buffers embed_sum / cluster_usage / initialized F32, the rest bf16)
                  beside the decoder (0.39 GB), from speech_tokenizer/config.json encoder_config
                  (MimiConfig defaults: hidden 512, num_filters 64, ratios [8, 6, 5, 4], 8 layers
                  x 8 heads, intermediate 2048, codebook 2048 x 256, 32 quantizers, 1 semantic,
                  sliding_window 250; `_frame_rate` 12.5 as the real checkpoint) and
                  encoder_valid_num_quantizers 16.
                The talker, predictor and decoder tensors are those of custom_voice (same values).
Every variant: the text tokenizer (vocab.json, merges.txt, tokenizer_config.json) is byte-level
with no merges: every UTF-8 byte is one token (byte b = id b), plus the real added tokens at
their real ids (151643-151645, 151671-151673). A text is then about 4 times as many tokens
as with Qwen2's real BPE (one a byte), so prompts and text tracks are longer than the real
model's. With --qwen-tiktoken FILE (Qwen's qwen.tiktoken, in the dashscope wheel on PyPI:
`pip download dashscope==2.0.2 --no-deps`, then unzip dashscope/resources/qwen.tiktoken) the
vocabulary and merges are the real ones, converted from the ranks, and prompts have real lengths;
--tokenizer-only rewrites just the config and tokenizer files of a generated model. Random
weights sample code 0 = EOS about as often as any code (about 1/2049 a frame), so fix the number
of frames when timing. 0.6B takes about 30 s and 1.7B about 65 s on 2 cores (base a few s more).
Suggested DIR: target/models/qwen3-tts-<size>[-voice-design|-base].

Tensors are generated one at a time (in row chunks of about 16 M values) and streamed to disk,
so even the 8.86 GB checkpoint needs under 0.5 GB of memory (about 2 minutes on 2 cores).

Values (chosen so activations stay O(1) through every layer):
  linear / conv weights  N(0, (0.5 / sqrt(fan_in))^2)   (fan_in = in x kernel for convs;
                         Voxtral's ada_rms_norm_t_cond MLP too, so 1 + scale stays near 1)
  biases                 N(0, 0.02^2)
  LayerNorm / RMSNorm    weight 1 + N(0, 0.02^2); LayerNorm bias N(0, 0.02^2)
  token embedding        N(0, 0.02^2)  (tied LM head: logits have std about 0.02 sqrt(d) ~ 1)
  Whisper positions      encoder: the real sinusoid table (openai-whisper `sinusoids`);
                         decoder: N(0, 0.01^2)
  Qwen3-TTS codec        codebook embedding_sum N(0, 1) and cluster_usage 1 + 0.5 U(0, 1) (F32);
                         SnakeBeta log-scale alpha / beta N(0, 0.02^2) (exp ~ 1); layer scales
                         and ConvNeXt gamma 0.01 (1 + N(0, 0.02^2)); transposed convs
                         ([in, out, k], stride s) fan_in = in k / s, the inputs one output sums.
                         (A numpy pass of the decoder gives waveform std ~0.007, peak ~0.03:
                         quiet, never clipped.)
                         Encoder (base): SEANet / downsample / RVQ projection convs
                         N(0, 1/fan_in) (gain 1: ELU is near-linear at these levels, so the
                         signal keeps its level, std ~0.25 at the RVQ for speech at 0.18, above
                         the biases; at gain 0.5 the biases' constant dominates and every frame
                         gets the same codes); transformer as above; LayerNorm weight 1 +
                         N(0, 0.02^2), bias N(0, 0.02^2); codebook embed_sum N(0, 0.25^2) (entries
                         about the residual's scale, so codes vary frame to frame), cluster_usage
                         1 + 0.5 U(0, 1), initialized 1.0 (F32).
  Qwen3-TTS speaker enc. conv weights and biases as above (base; x-vector std ~0.13-0.3).
Each tensor has its own generator seeded with (seed, crc32(name)), so a tensor's values do not
depend on which other tensors exist or on the order they are written (Voxtral's HF layout seeds
by the Mistral name, hence the identical values; so does Voxtral Mini 3B's).

Random weights never emit end-of-text: compare per-window encoder time and per-token decoder
time with greedy decoding, no temperature fallback and a fixed number of steps.
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


def tensor_chunks(name, shape, kind, seed, round_f16=True, fan_in=None):
    """Yield the tensor's values as f32 arrays (rounded to f16 unless `round_f16` is false), row
    chunks of the flattened tensor (C order), so the concatenation is the whole tensor.
    `fan_in` overrides the product of the trailing dimensions for kind "w" (transposed convs)."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    if kind == "sinusoid":
        table = sinusoids(*shape)
        yield table.astype(np.float16).astype(np.float32) if round_f16 else table
        return
    rows = shape[0]
    row_elems = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
    uniform = False
    if kind == "w":
        std, mean = 0.5 / math.sqrt(fan_in or row_elems), 0.0
    elif kind == "w_unit":  # Qwen3-TTS codec encoder convolutions
        std, mean = 1.0 / math.sqrt(fan_in or row_elems), 0.0
    elif kind == "emb":
        std, mean = 0.02, 0.0
    elif kind == "dec_pos":
        std, mean = 0.01, 0.0
    elif kind in ("b", "snake"):  # snake: SnakeBeta's log-scale alpha / beta (exp ~ 1)
        std, mean = 0.02, 0.0
    elif kind == "ln_w":
        std, mean = 0.02, 1.0
    elif kind == "scale":  # layer scale / ConvNeXt gamma: 0.01 (1 + N(0, 0.02^2))
        std, mean = 0.0002, 0.01
    elif kind == "codebook":  # codec codebook embedding_sum: N(0, 1)
        std, mean = 1.0, 0.0
    elif kind == "usage":  # codec codebook cluster_usage: 1 + 0.5 U(0, 1)
        std, mean, uniform = 0.5, 1.0, True
    elif kind == "enc_codebook":  # codec encoder codebook embed_sum (see Q3_ENC_CODEBOOK_STD)
        std, mean = Q3_ENC_CODEBOOK_STD, 0.0
    elif kind == "one":  # codebook `initialized` flag
        std, mean = 0.0, 1.0
    else:
        raise ValueError(kind)
    step = max(1, CHUNK_ELEMS // row_elems)
    for r0 in range(0, rows, step):
        n = min(step, rows - r0) * row_elems
        x = rng.random(n, dtype=np.float32) if uniform else rng.standard_normal(n, dtype=np.float32)
        x *= np.float32(std)
        if mean:
            x += np.float32(mean)
        yield x.astype(np.float16).astype(np.float32) if round_f16 else x


# ---------------------------------------------------------------------------------------------
# writers (streaming)


def f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """bf16 bit patterns of finite f32 values: the top 16 bits, rounded to nearest even."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    u = u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))
    return (u >> np.uint32(16)).astype(np.uint16)


# --dtype name: (safetensors dtype, bytes per value, f32 chunk -> bytes)
ST_DTYPES = {
    "f32": ("F32", 4, lambda c: c.astype("<f4").tobytes()),
    "f16": ("F16", 2, lambda c: c.astype("<f2").tobytes()),
    "bf16": ("BF16", 2, lambda c: f32_to_bf16_bits(c).astype("<u2").tobytes()),
}


class SafetensorsWriter:
    """Streams tensors into a .safetensors file; the header (all names/shapes) is written first.
    `specs` holds (name, shape, ...) tuples; tensors may then be written in any order. Every
    tensor has `dtype` unless `dtypes` ({name: dtype}) names another for it."""

    def __init__(self, path: Path, specs, dtype: str, dtypes=None):
        dtypes = dtypes or {}
        header = {"__metadata__": {"format": "pt"}}
        self.order = sorted(spec[0] for spec in specs)  # data laid out in name order
        assert len(set(self.order)) == len(self.order), "duplicate tensor names"
        shapes = {spec[0]: spec[1] for spec in specs}
        self.encoders = {}
        off = 0
        for name in self.order:
            st_dtype, itemsize, self.encoders[name] = ST_DTYPES[dtypes.get(name, dtype)]
            nbytes = int(np.prod(shapes[name], dtype=np.int64)) * itemsize
            header[name] = {"dtype": st_dtype, "shape": list(shapes[name]), "data_offsets": [off, off + nbytes]}
            off += nbytes
        self.ranges = {name: header[name]["data_offsets"] for name in self.order}
        self.total = off
        hb = json.dumps(header, separators=(",", ":")).encode()
        hb += b" " * ((8 - len(hb) % 8) % 8)
        self.base = 8 + len(hb)
        self.f = open(path, "wb")
        self.f.write(struct.pack("<Q", len(hb)))
        self.f.write(hb)
        self.f.truncate(self.base + self.total)

    def write(self, name, chunks):
        start, end = self.ranges[name]
        self.f.seek(self.base + start)
        n = 0
        encode = self.encoders[name]
        for c in chunks:
            b = encode(c)
            self.f.write(b)
            n += len(b)
        if n != end - start:
            raise SystemExit(f"{name}: wrote {n} bytes, expected {end - start}")

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


# ---------------------------------------------------------------------------------------------
# Voxtral Mini 4B Realtime (specs/voxtral-realtime.md)

VXR = {
    # decoder (§6, §12.2)
    "dim": 3072, "n_layers": 26, "head_dim": 128, "hidden_dim": 9216, "n_heads": 32, "n_kv_heads": 8,
    "vocab_size": 131072, "ada_dim": 32,
    # encoder (§3, §4)
    "enc_dim": 1280, "enc_layers": 32, "enc_head_dim": 64, "enc_hidden_dim": 5120, "enc_heads": 32,
    "n_mels": 128, "downsample": 4,
}
VXR_ENC = "mm_streams_embeddings.embedding_module.whisper_encoder."
VXR_EMB = "mm_streams_embeddings.embedding_module."

# tekken's pre-tokenizer regex (as in mistral-common's tekken files)
TEKKEN_PATTERN = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|"
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|"
    r"\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Special tokens: 0-19 as mistral-common's DEPRECATED_SPECIAL_TOKENS, 24/25/32/33/34 from spec
# §11 (33 and 34 unconfirmed there); every other rank below 1000 is <SPECIAL_{rank}>.
TEKKEN_SPECIALS = {
    0: "<unk>", 1: "<s>", 2: "</s>", 3: "[INST]", 4: "[/INST]", 5: "[AVAILABLE_TOOLS]",
    6: "[/AVAILABLE_TOOLS]", 7: "[TOOL_RESULTS]", 8: "[/TOOL_RESULTS]", 9: "[TOOL_CALLS]",
    10: "[IMG]", 11: "<pad>", 12: "[IMG_BREAK]", 13: "[IMG_END]", 14: "[PREFIX]", 15: "[MIDDLE]",
    16: "[SUFFIX]", 17: "[SYSTEM_PROMPT]", 18: "[/SYSTEM_PROMPT]", 19: "[TOOL_CONTENT]",
    24: "[AUDIO]", 25: "[BEGIN_AUDIO]", 32: "[STREAMING_PAD]", 33: "[STREAMING_WORD]",
    34: "[TRANSCRIBE]",
}
TEKKEN_AUDIO = {  # spec §10.1
    "sampling_rate": 16000,
    "frame_rate": 12.5,
    "audio_encoding_config": {"num_mel_bins": 128, "hop_length": 160, "window_size": 400},
    "transcription_delay_ms": 480,
    "streaming_look_ahead_ms": 2.5,
    "streaming_look_back_ms": 52.5,
    "streaming_n_left_pad_tokens": 32,
    "transcription_format": "streaming",
}


def vx_decoder_layer(c, i):
    """(Mistral name, shape, kind) of decoder layer i (Llama / Mistral, no biases), shared by
    Voxtral Realtime and Voxtral Mini 3B; `c` holds dim, n_heads, n_kv_heads, head_dim, hidden_dim."""
    d = c["dim"]
    q, kv = c["n_heads"] * c["head_dim"], c["n_kv_heads"] * c["head_dim"]
    p = f"layers.{i}."
    return [
        (f"{p}attention_norm.weight", (d,), "ln_w"),
        (f"{p}ffn_norm.weight", (d,), "ln_w"),
        (f"{p}attention.wq.weight", (q, d), "w"),
        (f"{p}attention.wk.weight", (kv, d), "w"),
        (f"{p}attention.wv.weight", (kv, d), "w"),
        (f"{p}attention.wo.weight", (d, q), "w"),
        (f"{p}feed_forward.w1.weight", (c["hidden_dim"], d), "w"),
        (f"{p}feed_forward.w3.weight", (c["hidden_dim"], d), "w"),
        (f"{p}feed_forward.w2.weight", (d, c["hidden_dim"]), "w"),
    ]


def vx_decoder_hf_name(c, name: str):
    """Mistral decoder name (`layers.N.*`, `norm.weight`) -> (HF name under
    `language_model.model.`, RoPE row permutation (heads, head_dim) of q/k or None)."""
    perm = None
    if ".attention.wq." in name:
        perm = (c["n_heads"], c["head_dim"])
    elif ".attention.wk." in name:
        perm = (c["n_kv_heads"], c["head_dim"])
    n = name.replace("attention_norm.", "input_layernorm.").replace("ffn_norm.", "post_attention_layernorm.")
    n = n.replace("ada_rms_norm_t_cond.0.", "ada_rms_norm.linear1.")
    n = n.replace("ada_rms_norm_t_cond.2.", "ada_rms_norm.linear2.")
    for m, h in (("wq", "q_proj"), ("wk", "k_proj"), ("wv", "v_proj"), ("wo", "o_proj")):
        n = n.replace(f"attention.{m}.", f"self_attn.{h}.")
    for m, h in (("w1", "gate_proj"), ("w3", "up_proj"), ("w2", "down_proj")):
        n = n.replace(f"feed_forward.{m}.", f"mlp.{h}.")
    return "language_model.model." + n, perm


def vxr_tensors(enc_layers, dec_layers):
    """(Mistral name, shape, kind) of consolidated.safetensors (spec §12.3); kind selects the
    initialiser (see tensor_chunks)."""
    c = VXR
    d, e = c["dim"], c["enc_dim"]
    eq, ekv = c["enc_heads"] * c["enc_head_dim"], c["enc_heads"] * c["enc_head_dim"]
    out = [
        (f"{VXR_ENC}conv_layers.0.conv.weight", (e, c["n_mels"], 3), "w"),
        (f"{VXR_ENC}conv_layers.0.conv.bias", (e,), "b"),
        (f"{VXR_ENC}conv_layers.1.conv.weight", (e, e, 3), "w"),
        (f"{VXR_ENC}conv_layers.1.conv.bias", (e,), "b"),
    ]
    for i in range(enc_layers):
        p = f"{VXR_ENC}transformer.layers.{i}."
        out += [
            (f"{p}attention.wq.weight", (eq, e), "w"),
            (f"{p}attention.wq.bias", (eq,), "b"),
            (f"{p}attention.wk.weight", (ekv, e), "w"),
            (f"{p}attention.wv.weight", (ekv, e), "w"),
            (f"{p}attention.wv.bias", (ekv,), "b"),
            (f"{p}attention.wo.weight", (e, eq), "w"),
            (f"{p}attention.wo.bias", (e,), "b"),
            (f"{p}attention_norm.weight", (e,), "ln_w"),
            (f"{p}ffn_norm.weight", (e,), "ln_w"),
            (f"{p}feed_forward.w1.weight", (c["enc_hidden_dim"], e), "w"),
            (f"{p}feed_forward.w3.weight", (c["enc_hidden_dim"], e), "w"),
            (f"{p}feed_forward.w2.weight", (e, c["enc_hidden_dim"]), "w"),
            (f"{p}feed_forward.w2.bias", (e,), "b"),
        ]
    out += [
        (f"{VXR_ENC}transformer.norm.weight", (e,), "ln_w"),
        (f"{VXR_EMB}audio_language_projection.0.weight", (d, e * c["downsample"]), "w"),
        (f"{VXR_EMB}audio_language_projection.2.weight", (d, d), "w"),
        (f"{VXR_EMB}tok_embeddings.weight", (c["vocab_size"], d), "emb"),
    ]
    for i in range(dec_layers):
        p = f"layers.{i}."
        out += vx_decoder_layer(c, i) + [
            (f"{p}ada_rms_norm_t_cond.0.weight", (c["ada_dim"], d), "w"),
            (f"{p}ada_rms_norm_t_cond.2.weight", (d, c["ada_dim"]), "w"),
        ]
    out.append(("norm.weight", (d,), "ln_w"))
    return out


def vxr_hf_name(name: str):
    """Mistral name -> (HF name, RoPE row permutation (heads, head_dim) or None) (spec §12.4)."""
    c = VXR
    if name.startswith(VXR_ENC):
        n = name[len(VXR_ENC):]
        n = n.replace("conv_layers.0.conv.", "embedder.conv1.").replace("conv_layers.1.conv.", "embedder.conv2.")
        n = n.replace("transformer.layers.", "layers.").replace("transformer.norm.", "norm.")
        perm = (c["enc_heads"], c["enc_head_dim"]) if ".attention.wq." in n or ".attention.wk." in n else None
        prefix = "audio_tower."
    elif name.startswith(VXR_EMB):
        n = name[len(VXR_EMB):]
        n = n.replace("audio_language_projection.0.", "multi_modal_projector.linear_1.")
        n = n.replace("audio_language_projection.2.", "multi_modal_projector.linear_2.")
        n = n.replace("tok_embeddings.", "language_model.model.embed_tokens.")
        return n, None
    else:
        return vx_decoder_hf_name(c, name)
    n = n.replace("attention_norm.", "self_attn_layer_norm.").replace("ffn_norm.", "final_layer_norm.")
    for m, h in (("wq", "q_proj"), ("wk", "k_proj"), ("wv", "v_proj"), ("wo", "o_proj")):
        n = n.replace(f"attention.{m}.", f"self_attn.{h}.")
    for m, h in (("w1", "gate_proj"), ("w3", "up_proj"), ("w2", "down_proj")):
        n = n.replace(f"feed_forward.{m}.", f"mlp.{h}.")
    return prefix + n, perm


def vxr_hf_tensors(enc_layers, dec_layers):
    """(HF name, shape, kind, Mistral source name, permutation) of model.safetensors: the same
    values as the Mistral layout, q/k rows (and the encoder q bias) in rotate-half order, plus
    `language_model.lm_head.weight`, a copy of the embedding."""
    out = []
    for name, shape, kind in vxr_tensors(enc_layers, dec_layers):
        hf, perm = vxr_hf_name(name)
        out.append((hf, shape, kind, name, perm))
        if name.endswith("tok_embeddings.weight"):
            out.append(("language_model.lm_head.weight", shape, kind, name, None))
    return out


def vxr_chunks(src, shape, kind, perm, seed):
    """f32 row chunks of one tensor (values of the Mistral tensor `src`); with `perm` =
    (heads, head_dim) the rows of each head go from interleaved to rotate-half order: view as
    [heads, head_dim/2, 2, in] and swap the middle axes (spec §12.4). Permuted tensors are at
    most 4096 x 3072, so they are generated whole."""
    if perm is None:
        yield from tensor_chunks(src, shape, kind, seed, round_f16=False)
        return
    heads, hd = perm
    x = np.concatenate(list(tensor_chunks(src, shape, kind, seed, round_f16=False)))
    inner = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
    yield np.ascontiguousarray(x.reshape(heads, hd // 2, 2, inner).transpose(0, 2, 1, 3)).reshape(-1)


def vxr_params(enc_layers, dec_layers):
    """params.json (spec §12.2; audio_encoding_args sits inside encoder_args as in the hub file)."""
    c = VXR
    return {
        "dim": c["dim"],
        "n_layers": dec_layers,
        "head_dim": c["head_dim"],
        "hidden_dim": c["hidden_dim"],
        "n_heads": c["n_heads"],
        "n_kv_heads": c["n_kv_heads"],
        "use_biases": False,
        "causal": True,
        "rope_theta": 1000000.0,
        "norm_eps": 1e-05,
        "vocab_size": c["vocab_size"],
        "model_parallel": 1,
        "tied_embeddings": True,
        "sliding_window": 8192,
        "model_max_length": 131072,
        "multimodal": {
            "whisper_model_args": {
                "encoder_args": {
                    "audio_encoding_args": {
                        "sampling_rate": 16000,
                        "frame_rate": 12.5,
                        "num_mel_bins": c["n_mels"],
                        "hop_length": 160,
                        "window_size": 400,
                        "chunk_length_s": None,
                        "global_log_mel_max": 1.5,
                        "transcription_format": "streaming",
                    },
                    "dim": c["enc_dim"],
                    "n_layers": enc_layers,
                    "head_dim": c["enc_head_dim"],
                    "hidden_dim": c["enc_hidden_dim"],
                    "n_heads": c["enc_heads"],
                    "vocab_size": c["vocab_size"],
                    "n_kv_heads": c["enc_heads"],
                    "use_biases": True,
                    "use_cache": False,
                    "rope_theta": 1000000.0,
                    "causal": True,
                    "norm_eps": 1e-05,
                    "pos_embed": "rope",
                    "max_source_positions": None,
                    "ffn_type": "swiglu",
                    "norm_type": "rms_norm",
                    "sliding_window": 750,
                },
                "downsample_args": {"downsample_factor": c["downsample"]},
            }
        },
        "ada_rms_norm_t_cond": True,
        "ada_rms_norm_t_cond_dim": c["ada_dim"],
    }


def vxr_hf_config(enc_layers, dec_layers):
    """config.json for transformers' VoxtralRealtimeConfig (real values) and generation_config.json."""
    c = VXR
    cfg = {
        "architectures": ["VoxtralRealtimeForConditionalGeneration"],
        "model_type": "voxtral_realtime",
        "audio_config": {
            "model_type": "voxtral_realtime_encoder",
            "activation_function": "gelu",
            "attention_dropout": 0.0,
            "head_dim": c["enc_head_dim"],
            "hidden_act": "silu",
            "hidden_size": c["enc_dim"],
            "initializer_range": 0.02,
            "intermediate_size": c["enc_hidden_dim"],
            "max_position_embeddings": 1500,
            "num_attention_heads": c["enc_heads"],
            "num_hidden_layers": enc_layers,
            "num_key_value_heads": c["enc_heads"],
            "num_mel_bins": c["n_mels"],
            "rms_norm_eps": 1e-05,
            "rope_parameters": {"rope_theta": 1000000.0, "rope_type": "default"},
            "sliding_window": 750,
            "vocab_size": c["vocab_size"],
        },
        "text_config": {
            "model_type": "voxtral_realtime_text",
            "attention_dropout": 0.0,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "head_dim": c["head_dim"],
            "hidden_act": "silu",
            "hidden_size": c["dim"],
            "initializer_range": 0.02,
            "intermediate_size": c["hidden_dim"],
            "max_position_embeddings": 131072,
            "num_attention_heads": c["n_heads"],
            "num_hidden_layers": dec_layers,
            "num_key_value_heads": c["n_kv_heads"],
            "rms_norm_eps": 1e-05,
            "rope_parameters": {"rope_theta": 1000000.0, "rope_type": "default"},
            "sliding_window": 8192,
            "tie_word_embeddings": True,
            "use_cache": True,
            "vocab_size": c["vocab_size"],
        },
        "audio_length_per_tok": 8,
        "default_num_delay_tokens": 6,
        "downsample_factor": c["downsample"],
        "hidden_size": c["dim"],
        "projector_hidden_act": "gelu",
        "tie_word_embeddings": True,
        "use_cache": True,
        "dtype": "bfloat16",
    }
    gen = {"bos_token_id": 1, "eos_token_id": 2, "do_sample": False}
    return cfg, gen


def vxr_tekken(seed, audio=None, specials=None):
    """A full-size synthetic tekken.json (spec §13): 150 000 vocab entries (ranks 0-255 the single
    bytes, then unique 2-6 byte pieces: ASCII words, non-ASCII letters, some raw bytes that are
    not UTF-8), default_vocab_size 131 072, 1000 special tokens (`specials`: {rank: str}, the rest
    <SPECIAL_n>; default TEKKEN_SPECIALS) and the `audio` section (default TEKKEN_AUDIO, the
    realtime §10.1 one). The vocabulary depends on `seed` only."""
    audio = TEKKEN_AUDIO if audio is None else audio
    specials = TEKKEN_SPECIALS if specials is None else specials
    import random

    rnd = random.Random(zlib.crc32(b"tekken") ^ seed)
    lower = "abcdefghijklmnopqrstuvwxyz"
    accented = "éèàüöäßçñøåłśźżčšžőűαβγδεπστωабвгдежзийклмнопрстуфхцчшщыэюя"
    cjk = "的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着去之过家学对可里后小么心多天而能好都然没日于起还发成事只作当想看文无开手十用主行方又如前所本见经头面公同三已老从动两长知民样现分将外但身些与高意进把法此实回二理美点月明其种声全工己话儿者向情部正"
    seen = set()
    vocab = []
    for r in range(256):
        b = bytes([r])
        seen.add(b)
        vocab.append(b)
    while len(vocab) < 150000:
        u = rnd.random()
        if u < 0.6:
            word = "".join(rnd.choice(lower) for _ in range(rnd.randint(2, 5)))
            if rnd.random() < 0.5:
                word = " " + word
            if rnd.random() < 0.2:
                word = word.replace(word.strip()[0], word.strip()[0].upper(), 1)
            b = word.encode()
        elif u < 0.75:
            b = "".join(rnd.choice(accented) for _ in range(rnd.randint(1, 3))).encode()
        elif u < 0.85:
            b = rnd.choice(cjk).encode() + (rnd.choice(cjk).encode() if rnd.random() < 0.5 else b"")
        else:
            b = bytes(rnd.randrange(256) for _ in range(rnd.randint(2, 4)))
        if not 2 <= len(b) <= 6 or b in seen:
            continue
        seen.add(b)
        vocab.append(b)

    def token_str(b):
        try:
            return b.decode("utf-8")
        except UnicodeDecodeError:
            return None

    return {
        "config": {
            "pattern": TEKKEN_PATTERN,
            "num_vocab_tokens": len(vocab),
            "default_vocab_size": VXR["vocab_size"],
            "default_num_special_tokens": 1000,
            "version": "v7",
        },
        "vocab": [
            {"rank": r, "token_bytes": base64.b64encode(b).decode(), "token_str": token_str(b)}
            for r, b in enumerate(vocab)
        ],
        "special_tokens": [
            {"rank": i, "token_str": specials.get(i, f"<SPECIAL_{i}>"), "is_control": True}
            for i in range(1000)
        ],
        "audio": audio,
    }


def vx_write_json(path: Path, obj, sort_keys=False):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False, sort_keys=sort_keys)
        f.write("\n")


def vx_write_safetensors(path: Path, specs, seed, quiet, dtypes=None):
    """Streams `specs` (name, shape, kind, Mistral source name, RoPE permutation or None) into
    `path` (bf16 unless `dtypes` ({name: dtype}) says otherwise), tensor by tensor in row chunks,
    through `path`.partial. Returns the parameter count."""
    n_params = sum(int(np.prod(s, dtype=np.int64)) for _, s, *_ in specs)
    tmp = path.with_name(path.name + ".partial")
    st = SafetensorsWriter(tmp, specs, "bf16", dtypes)
    done = 0
    for name, shape, kind, src, perm in specs:

        def chunks():
            for c in vxr_chunks(src, shape, kind, perm, seed):
                if not np.isfinite(c).all():
                    raise SystemExit(f"non-finite value generated in {name}")
                yield c

        st.write(name, chunks())
        done += int(np.prod(shape, dtype=np.int64))
        if not quiet:
            print(f"\r{done / n_params * 100:5.1f}%  {name:<90}", end="", file=sys.stderr, flush=True)
    if not quiet:
        print(file=sys.stderr)
    st.close()
    os.replace(tmp, path)
    return n_params


def vx_report(label, layout, n_params, specs, path: Path, t0):
    import time

    print(
        f"{label} ({layout}): {n_params / 1e9:.3f} B parameters, {len(specs)} tensors, "
        f"{path.stat().st_size / 1e9:.2f} GB -> {path} ({time.time() - t0:.0f} s)"
    )


def write_voxtral_realtime(args):
    import time

    t0 = time.time()
    enc_layers = min(VXR["enc_layers"], args.max_layers) if args.max_layers else VXR["enc_layers"]
    dec_layers = min(VXR["n_layers"], args.max_layers) if args.max_layers else VXR["n_layers"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.layout == "mistral":
        specs = [(n, s, k, n, None) for n, s, k in vxr_tensors(enc_layers, dec_layers)]
        st_name = "consolidated.safetensors"
        (out / "params.json").write_text(json.dumps(vxr_params(enc_layers, dec_layers), indent=2) + "\n")
    else:
        specs = vxr_hf_tensors(enc_layers, dec_layers)
        st_name = "model.safetensors"
        cfg, gen = vxr_hf_config(enc_layers, dec_layers)
        (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        (out / "generation_config.json").write_text(json.dumps(gen, indent=2, sort_keys=True) + "\n")
    vx_write_json(out / "tekken.json", vxr_tekken(args.seed))
    n_params = vx_write_safetensors(out / st_name, specs, args.seed, args.quiet)
    vx_report("voxtral-realtime", args.layout, n_params, specs, out / st_name, t0)


# ---------------------------------------------------------------------------------------------
# Voxtral Mini 3B 2507 (specs/voxtral-mini-3b.md): Whisper-large-v3-like encoder (LayerNorm,
# GELU MLP, sinusoid positions, never RoPE-permuted), the realtime projector, a 30-layer Llama
# decoder with its own output head. Reuses the realtime decoder / tekken / writer helpers.

VX3 = {
    # decoder (§5)
    "dim": 3072, "n_layers": 30, "head_dim": 128, "hidden_dim": 8192, "n_heads": 32, "n_kv_heads": 8,
    "vocab_size": 131072,
    # encoder (§3, §4, §7)
    "enc_dim": 1280, "enc_layers": 32, "enc_head_dim": 64, "enc_hidden_dim": 5120, "enc_heads": 20,
    "n_mels": 128, "downsample": 4, "max_source_positions": 1500, "enc_vocab_size": 51866,
}
VX3_EMB = "mm_whisper_embeddings."
VX3_ENC = VX3_EMB + "whisper_encoder."
VX3_POSITIONS = "audio_tower.embed_positions.weight"  # HF layout only, F32
# The offline model's tekken audio section (no streaming fields).
TEKKEN_AUDIO_OFFLINE = {
    "sampling_rate": 16000,
    "frame_rate": 12.5,
    "audio_encoding_config": {"num_mel_bins": 128, "hop_length": 160, "window_size": 400},
    "chunk_length_s": 30.0,
}
# [AUDIO] 24, [BEGIN_AUDIO] 25, [TRANSCRIBE] 34 (spec §6); no streaming tokens (32, 33 are
# <SPECIAL_32>, <SPECIAL_33>).
TEKKEN_SPECIALS_OFFLINE = {k: v for k, v in TEKKEN_SPECIALS.items() if k not in (32, 33)}


def vx3_tensors(enc_layers, dec_layers):
    """(Mistral name, shape, kind) of consolidated.safetensors: the inverse of transformers'
    convert_voxtral_weights_to_hf.py mapping (no embed_positions in this layout)."""
    c = VX3
    d, e, ff = c["dim"], c["enc_dim"], c["enc_hidden_dim"]
    eq = c["enc_heads"] * c["enc_head_dim"]
    out = [
        (f"{VX3_ENC}conv_layers.0.weight", (e, c["n_mels"], 3), "w"),
        (f"{VX3_ENC}conv_layers.0.bias", (e,), "b"),
        (f"{VX3_ENC}conv_layers.1.weight", (e, e, 3), "w"),
        (f"{VX3_ENC}conv_layers.1.bias", (e,), "b"),
    ]
    for i in range(enc_layers):
        p = f"{VX3_ENC}transformer.layers.{i}."
        out += [
            (f"{p}attention.wq.weight", (eq, e), "w"),
            (f"{p}attention.wq.bias", (eq,), "b"),
            (f"{p}attention.wk.weight", (eq, e), "w"),
            (f"{p}attention.wv.weight", (eq, e), "w"),
            (f"{p}attention.wv.bias", (eq,), "b"),
            (f"{p}attention.wo.weight", (e, eq), "w"),
            (f"{p}attention.wo.bias", (e,), "b"),
            (f"{p}attention_norm.weight", (e,), "ln_w"),
            (f"{p}attention_norm.bias", (e,), "b"),
            (f"{p}feed_forward.w1.weight", (ff, e), "w"),
            (f"{p}feed_forward.w1.bias", (ff,), "b"),
            (f"{p}feed_forward.w2.weight", (e, ff), "w"),
            (f"{p}feed_forward.w2.bias", (e,), "b"),
            (f"{p}ffn_norm.weight", (e,), "ln_w"),
            (f"{p}ffn_norm.bias", (e,), "b"),
        ]
    out += [
        (f"{VX3_ENC}transformer.norm.weight", (e,), "ln_w"),
        (f"{VX3_ENC}transformer.norm.bias", (e,), "b"),
        (f"{VX3_EMB}audio_language_projection.0.weight", (d, e * c["downsample"]), "w"),
        (f"{VX3_EMB}audio_language_projection.2.weight", (d, d), "w"),
        ("tok_embeddings.weight", (c["vocab_size"], d), "emb"),
    ]
    for i in range(dec_layers):
        out += vx_decoder_layer(c, i)
    # A separate head at the embedding's scale: logits std about 0.02 sqrt(3072) ~ 1.
    out += [("norm.weight", (d,), "ln_w"), ("output.weight", (c["vocab_size"], d), "emb")]
    return out


def vx3_hf_name(name: str):
    """Mistral name -> (HF name, RoPE row permutation or None): decoder q/k only."""
    if name.startswith(VX3_ENC):
        n = name[len(VX3_ENC):]
        n = n.replace("conv_layers.0.", "conv1.").replace("conv_layers.1.", "conv2.")
        n = n.replace("transformer.layers.", "layers.").replace("transformer.norm.", "layer_norm.")
        n = n.replace("attention_norm.", "self_attn_layer_norm.").replace("ffn_norm.", "final_layer_norm.")
        for m, h in (("wq", "q_proj"), ("wk", "k_proj"), ("wv", "v_proj"), ("wo", "out_proj")):
            n = n.replace(f"attention.{m}.", f"self_attn.{h}.")
        n = n.replace("feed_forward.w1.", "fc1.").replace("feed_forward.w2.", "fc2.")
        return "audio_tower." + n, None
    if name.startswith(VX3_EMB):
        n = name[len(VX3_EMB):]
        n = n.replace("audio_language_projection.0.", "multi_modal_projector.linear_1.")
        return n.replace("audio_language_projection.2.", "multi_modal_projector.linear_2."), None
    if name == "tok_embeddings.weight":
        return "language_model.model.embed_tokens.weight", None
    if name == "output.weight":
        return "language_model.lm_head.weight", None
    return vx_decoder_hf_name(VX3, name)


def vx3_hf_tensors(enc_layers, dec_layers):
    """(HF name, shape, kind, Mistral source name, permutation) of model.safetensors: the Mistral
    tensors' values (decoder q/k rows in rotate-half order) plus the F32 sinusoid table."""
    out = [(VX3_POSITIONS, (VX3["max_source_positions"], VX3["enc_dim"]), "sinusoid", VX3_POSITIONS, None)]
    for name, shape, kind in vx3_tensors(enc_layers, dec_layers):
        hf, perm = vx3_hf_name(name)
        out.append((hf, shape, kind, name, perm))
    return out


def vx3_params(enc_layers, dec_layers):
    """params.json (as the hub file; audio_encoding_args inside encoder_args)."""
    c = VX3
    return {
        "dim": c["dim"],
        "n_layers": dec_layers,
        "head_dim": c["head_dim"],
        "hidden_dim": c["hidden_dim"],
        "n_heads": c["n_heads"],
        "n_kv_heads": c["n_kv_heads"],
        "rope_theta": 100000000.0,
        "norm_eps": 1e-05,
        "vocab_size": c["vocab_size"],
        "max_seq_len": 32768,
        "multimodal": {
            "whisper_model_args": {
                "encoder_args": {
                    "audio_encoding_args": {
                        "sampling_rate": 16000,
                        "frame_rate": 12.5,
                        "num_mel_bins": c["n_mels"],
                        "hop_length": 160,
                        "window_size": 400,
                        "chunk_length_s": 30.0,
                    },
                    "dim": c["enc_dim"],
                    "n_layers": enc_layers,
                    "head_dim": c["enc_head_dim"],
                    "hidden_dim": c["enc_hidden_dim"],
                    "n_heads": c["enc_heads"],
                    "vocab_size": c["enc_vocab_size"],
                    "max_source_positions": c["max_source_positions"],
                },
                "downsample_args": {"downsample_factor": c["downsample"]},
            }
        },
    }


def vx3_hf_config(enc_layers, dec_layers):
    """config.json (transformers' VoxtralConfig, real values; rope_theta both as the v4 field and
    as v5's rope_parameters), generation_config.json and preprocessor_config.json."""
    c = VX3
    rope = 100000000.0
    cfg = {
        "architectures": ["VoxtralForConditionalGeneration"],
        "model_type": "voxtral",
        "audio_config": {
            "model_type": "voxtral_encoder",
            "activation_dropout": 0.0,
            "activation_function": "gelu",
            "attention_dropout": 0.0,
            "dropout": 0.0,
            "head_dim": c["enc_head_dim"],
            "hidden_size": c["enc_dim"],
            "initializer_range": 0.02,
            "intermediate_size": c["enc_hidden_dim"],
            "layerdrop": 0.0,
            "max_source_positions": c["max_source_positions"],
            "num_attention_heads": c["enc_heads"],
            "num_hidden_layers": enc_layers,
            "num_key_value_heads": c["enc_heads"],
            "num_mel_bins": c["n_mels"],
            "scale_embedding": False,
            "vocab_size": c["enc_vocab_size"],
        },
        "text_config": {
            "model_type": "llama",
            "attention_bias": False,
            "attention_dropout": 0.0,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "head_dim": c["head_dim"],
            "hidden_act": "silu",
            "hidden_size": c["dim"],
            "initializer_range": 0.02,
            "intermediate_size": c["hidden_dim"],
            "max_position_embeddings": 131072,
            "mlp_bias": False,
            "num_attention_heads": c["n_heads"],
            "num_hidden_layers": dec_layers,
            "num_key_value_heads": c["n_kv_heads"],
            "pretraining_tp": 1,
            "rms_norm_eps": 1e-05,
            "rope_scaling": None,
            "rope_theta": rope,
            "rope_parameters": {"rope_theta": rope, "rope_type": "default"},
            "tie_word_embeddings": False,
            "use_cache": True,
            "vocab_size": c["vocab_size"],
        },
        "audio_token_id": 24,
        "hidden_size": c["dim"],
        "projector_hidden_act": "gelu",
        "tie_word_embeddings": False,
        "dtype": "bfloat16",
        "torch_dtype": "bfloat16",
    }
    gen = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 11, "do_sample": False}
    pre = {
        "chunk_length": 30,
        "dither": 0.0,
        "feature_extractor_type": "WhisperFeatureExtractor",
        "feature_size": c["n_mels"],
        "hop_length": 160,
        "n_fft": 400,
        "n_samples": 480000,
        "nb_max_frames": 3000,
        "padding_side": "right",
        "padding_value": 0.0,
        "processor_class": "VoxtralProcessor",
        "return_attention_mask": False,
        "sampling_rate": 16000,
    }
    return cfg, gen, pre


def write_voxtral(args):
    import time

    t0 = time.time()
    enc_layers = min(VX3["enc_layers"], args.max_layers) if args.max_layers else VX3["enc_layers"]
    dec_layers = min(VX3["n_layers"], args.max_layers) if args.max_layers else VX3["n_layers"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dtypes = {}
    if args.layout == "mistral":
        specs = [(n, s, k, n, None) for n, s, k in vx3_tensors(enc_layers, dec_layers)]
        st_name = "consolidated.safetensors"
        vx_write_json(out / "params.json", vx3_params(enc_layers, dec_layers))
    else:
        specs = vx3_hf_tensors(enc_layers, dec_layers)
        dtypes = {VX3_POSITIONS: "f32"}
        st_name = "model.safetensors"
        cfg, gen, pre = vx3_hf_config(enc_layers, dec_layers)
        vx_write_json(out / "config.json", cfg, sort_keys=True)
        vx_write_json(out / "generation_config.json", gen, sort_keys=True)
        vx_write_json(out / "preprocessor_config.json", pre, sort_keys=True)
    vx_write_json(out / "tekken.json", vxr_tekken(args.seed, TEKKEN_AUDIO_OFFLINE, TEKKEN_SPECIALS_OFFLINE))
    n_params = vx_write_safetensors(out / st_name, specs, args.seed, args.quiet, dtypes)
    vx_report("voxtral", args.layout, n_params, specs, out / st_name, t0)


# ---------------------------------------------------------------------------------------------
# Qwen3-TTS 12 Hz (specs/qwen3-tts.md): talker + code predictor, codec decoder, tokenizer

Q3_FIXTURES = REPO / "tests" / "fixtures" / "qwen3-tts"
# --size: (talker hidden H, talker intermediate, tts_model_size)
Q3_SIZES = {"0.6b": (1024, 3072, "0b6"), "1.7b": (2048, 6144, "1b7")}
Q3 = {
    # talker (§2) and code predictor (§3)
    "layers": 28, "heads": 16, "kv_heads": 8, "head_dim": 128, "codec_vocab": 3072,
    "text_vocab": 151936, "text_hidden": 2048, "groups": 16,
    "cp_hidden": 1024, "cp_inter": 3072, "cp_layers": 5, "cp_vocab": 2048,
    # codec decoder (§5.2)
    "cb_size": 2048, "cb_dim": 512, "latent": 1024, "c_hidden": 512, "c_inter": 1024,
    "c_layers": 8, "c_heads": 16, "c_kv_heads": 16, "c_head_dim": 64, "decoder_dim": 1536,
    "upsample_rates": [8, 5, 4, 3], "upsampling_ratios": [2, 2],
}
# Text ids (§7) of the added tokens written into tokenizer_config.json.
Q3_ADDED_TOKENS = {
    151643: "<|endoftext|>", 151644: "<|im_start|>", 151645: "<|im_end|>",
    151671: "<tts_pad>", 151672: "<tts_text_bos>", 151673: "<tts_text_eod>",
}
# Codec control, language and speaker ids (§7; the language and speaker ids not quoted in the
# spec are approximate: distinct and inside the 3072-entry codec vocabulary is what matters).
Q3_CODEC_IDS = {
    "codec_pad_id": 2148, "codec_bos_id": 2149, "codec_eos_token_id": 2150, "codec_think_id": 2154,
    "codec_nothink_id": 2155, "codec_think_bos_id": 2156, "codec_think_eos_id": 2157,
}
Q3_LANGUAGES = {
    "chinese": 2055, "english": 2050, "german": 2053, "italian": 2070, "portuguese": 2071,
    "spanish": 2054, "japanese": 2058, "korean": 2064, "french": 2061, "russian": 2069,
    "beijing_dialect": 2074, "sichuan_dialect": 2062,
}
Q3_SPEAKERS = {
    "vivian": 3065, "serena": 3066, "uncle_fu": 3010, "dylan": 2878, "eric": 2875, "ryan": 3061,
    "aiden": 2861, "ono_anna": 2873, "sohee": 2864,
}
Q3_DIALECTS = {"dylan": "beijing_dialect", "eric": "sichuan_dialect"}
Q3_VARIANTS = ("custom_voice", "voice_design", "base")  # --variant = config.json tts_model_type
# speaker_encoder_config (qwen-tts Qwen3TTSSpeakerEncoderConfig defaults; enc_dim = talker hidden)
Q3_SPEAKER_ENCODER = {
    "mel_dim": 128, "enc_channels": [512, 512, 512, 512, 1536], "enc_kernel_sizes": [5, 3, 3, 3, 1],
    "enc_dilations": [1, 2, 3, 4, 1], "enc_attention_channels": 128, "enc_res2net_scale": 8,
    "enc_se_channels": 128, "sample_rate": 24000,
}
# The structural fields of the speech tokenizer's encoder_config (transformers' MimiConfig
# defaults, as Qwen/Qwen3-TTS-Tokenizer-12Hz): SEANet convs, 8-layer transformer, split RVQ.
Q3_MIMI = {
    "sampling_rate": 24000, "audio_channels": 1, "hidden_size": 512, "num_filters": 64,
    "num_residual_layers": 1, "upsampling_ratios": [8, 6, 5, 4], "kernel_size": 7,
    "last_kernel_size": 3, "residual_kernel_size": 3, "dilation_growth_rate": 2, "compress": 2,
    "use_conv_shortcut": False, "num_hidden_layers": 8, "num_attention_heads": 8,
    "num_key_value_heads": 8, "head_dim": 64, "intermediate_size": 2048, "codebook_size": 2048,
    "codebook_dim": 256, "vector_quantization_hidden_dimension": 256, "num_quantizers": 32,
    "num_semantic_quantizers": 1, "sliding_window": 250,
}
Q3_ENCODER_VALID_QUANTIZERS = 16
# Codec encoder codebook embed_sum std: entries (embed_sum / cluster_usage, std ~0.2) about the
# scale of the residual the RVQ sees (std ~0.25 for speech at std 0.18), so codes vary frame to
# frame (N(0, 1) entries would dwarf it and every stage would add to it instead).
Q3_ENC_CODEBOOK_STD = 0.25


def q3_layer(p, d, inter, heads, kv_heads, hd, qk_norm):
    """(name, shape, kind, fan_in) of one pre-norm decoder layer (HF names, no biases):
    per-head q/k RMSNorm for Qwen3 (talker, predictor), layer scales for the codec."""
    out = [
        (f"{p}.input_layernorm.weight", (d,), "ln_w", None),
        (f"{p}.post_attention_layernorm.weight", (d,), "ln_w", None),
        (f"{p}.self_attn.q_proj.weight", (heads * hd, d), "w", None),
        (f"{p}.self_attn.k_proj.weight", (kv_heads * hd, d), "w", None),
        (f"{p}.self_attn.v_proj.weight", (kv_heads * hd, d), "w", None),
        (f"{p}.self_attn.o_proj.weight", (d, heads * hd), "w", None),
        (f"{p}.mlp.gate_proj.weight", (inter, d), "w", None),
        (f"{p}.mlp.up_proj.weight", (inter, d), "w", None),
        (f"{p}.mlp.down_proj.weight", (d, inter), "w", None),
    ]
    if qk_norm:
        out += [(f"{p}.self_attn.q_norm.weight", (hd,), "ln_w", None),
                (f"{p}.self_attn.k_norm.weight", (hd,), "ln_w", None)]
    else:
        out += [(f"{p}.self_attn_layer_scale.scale", (d,), "scale", None),
                (f"{p}.mlp_layer_scale.scale", (d,), "scale", None)]
    return out


def q3_talker_tensors(size, max_layers=0):
    """(name, shape, kind, fan_in) of model.safetensors (spec §10, CustomVoice: no speaker
    encoder); the predictor's input projection exists only where it is narrower than the talker."""
    c = Q3
    h, inter, _ = Q3_SIZES[size]
    cp = c["cp_hidden"]
    n_layers = min(c["layers"], max_layers) if max_layers else c["layers"]
    n_cp = min(c["cp_layers"], max_layers) if max_layers else c["cp_layers"]
    out = [
        ("talker.model.text_embedding.weight", (c["text_vocab"], c["text_hidden"]), "emb", None),
        ("talker.text_projection.linear_fc1.weight", (c["text_hidden"], c["text_hidden"]), "w", None),
        ("talker.text_projection.linear_fc1.bias", (c["text_hidden"],), "b", None),
        ("talker.text_projection.linear_fc2.weight", (h, c["text_hidden"]), "w", None),
        ("talker.text_projection.linear_fc2.bias", (h,), "b", None),
        ("talker.model.codec_embedding.weight", (c["codec_vocab"], h), "emb", None),
        ("talker.model.norm.weight", (h,), "ln_w", None),
        ("talker.codec_head.weight", (c["codec_vocab"], h), "w", None),
    ]
    for i in range(n_layers):
        out += q3_layer(f"talker.model.layers.{i}", h, inter, c["heads"], c["kv_heads"], c["head_dim"], True)
    p = "talker.code_predictor"
    if cp != h:
        out += [(f"{p}.small_to_mtp_projection.weight", (cp, h), "w", None),
                (f"{p}.small_to_mtp_projection.bias", (cp,), "b", None)]
    for g in range(c["groups"] - 1):
        out += [(f"{p}.model.codec_embedding.{g}.weight", (c["cp_vocab"], h), "emb", None),
                (f"{p}.lm_head.{g}.weight", (c["cp_vocab"], cp), "w", None)]
    for i in range(n_cp):
        out += q3_layer(f"{p}.model.layers.{i}", cp, c["cp_inter"], c["heads"], c["kv_heads"], c["head_dim"], True)
    out.append((f"{p}.model.norm.weight", (cp,), "ln_w", None))
    return out


def q3_codec_tensors():
    """(name, shape, kind, fan_in) of speech_tokenizer/model.safetensors: the decoder only
    (`decoder.*`, as the fixture's codec; spec §5.2). Transposed convs ([in, out, k], stride s) get
    fan_in = in k / s, the inputs one output sample sums; plain convs in/groups x k."""
    c = Q3
    d, lat, cb = c["c_hidden"], c["latent"], c["cb_dim"]
    out = []
    for grp, n_books in (("rvq_first", 1), ("rvq_rest", c["groups"] - 1)):
        q = f"decoder.quantizer.{grp}"
        out += [(f"{q}.input_proj.weight", (cb // 2, cb, 1), "w", None),
                (f"{q}.output_proj.weight", (cb, cb // 2, 1), "w", None)]
        for i in range(n_books):
            book = f"{q}.vq.layers.{i}._codebook"
            out += [(f"{book}.embedding_sum", (c["cb_size"], cb // 2), "codebook", None),
                    (f"{book}.cluster_usage", (c["cb_size"],), "usage", None)]
    t = "decoder.pre_transformer"
    out += [
        ("decoder.pre_conv.conv.weight", (lat, cb, 3), "w", None),
        ("decoder.pre_conv.conv.bias", (lat,), "b", None),
        (f"{t}.input_proj.weight", (d, lat), "w", None),
        (f"{t}.input_proj.bias", (d,), "b", None),
        (f"{t}.norm.weight", (d,), "ln_w", None),
        (f"{t}.output_proj.weight", (lat, d), "w", None),
        (f"{t}.output_proj.bias", (lat,), "b", None),
    ]
    for i in range(c["c_layers"]):
        out += q3_layer(f"{t}.layers.{i}", d, c["c_inter"], c["c_heads"], c["c_kv_heads"], c["c_head_dim"], False)
    for i, f in enumerate(c["upsampling_ratios"]):
        u = f"decoder.upsample.{i}"
        out += [
            (f"{u}.0.conv.weight", (lat, lat, f), "w", lat),  # transposed, stride = kernel
            (f"{u}.0.conv.bias", (lat,), "b", None),
            (f"{u}.1.dwconv.conv.weight", (lat, 1, 7), "w", None),  # depthwise
            (f"{u}.1.dwconv.conv.bias", (lat,), "b", None),
            (f"{u}.1.norm.weight", (lat,), "ln_w", None),
            (f"{u}.1.norm.bias", (lat,), "b", None),
            (f"{u}.1.pwconv1.weight", (4 * lat, lat), "w", None),
            (f"{u}.1.pwconv1.bias", (4 * lat,), "b", None),
            (f"{u}.1.pwconv2.weight", (lat, 4 * lat), "w", None),
            (f"{u}.1.pwconv2.bias", (lat,), "b", None),
            (f"{u}.1.gamma", (lat,), "scale", None),
        ]
    dd = c["decoder_dim"]
    out += [("decoder.decoder.0.conv.weight", (dd, lat, 7), "w", None),
            ("decoder.decoder.0.conv.bias", (dd,), "b", None)]
    for i, r in enumerate(c["upsample_rates"]):
        b = f"decoder.decoder.{1 + i}.block"
        cin, cout = dd >> i, dd >> (i + 1)
        out += [
            (f"{b}.0.alpha", (cin,), "snake", None),
            (f"{b}.0.beta", (cin,), "snake", None),
            (f"{b}.1.conv.weight", (cin, cout, 2 * r), "w", 2 * cin),  # transposed, stride r
            (f"{b}.1.conv.bias", (cout,), "b", None),
        ]
        for j in range(2, 5):  # residual units, dilations 1, 3, 9
            out += [
                (f"{b}.{j}.act1.alpha", (cout,), "snake", None),
                (f"{b}.{j}.act1.beta", (cout,), "snake", None),
                (f"{b}.{j}.conv1.conv.weight", (cout, cout, 7), "w", None),
                (f"{b}.{j}.conv1.conv.bias", (cout,), "b", None),
                (f"{b}.{j}.act2.alpha", (cout,), "snake", None),
                (f"{b}.{j}.act2.beta", (cout,), "snake", None),
                (f"{b}.{j}.conv2.conv.weight", (cout, cout, 1), "w", None),
                (f"{b}.{j}.conv2.conv.bias", (cout,), "b", None),
            ]
    n = len(c["upsample_rates"])
    last = dd >> n
    out += [
        (f"decoder.decoder.{1 + n}.alpha", (last,), "snake", None),
        (f"decoder.decoder.{1 + n}.beta", (last,), "snake", None),
        (f"decoder.decoder.{2 + n}.conv.weight", (1, last, 7), "w", None),
        (f"decoder.decoder.{2 + n}.conv.bias", (1,), "b", None),
    ]
    return out


def q3_conv(name, c_out, c_in, k, bias=True, kind="w"):
    """(name, shape, kind, fan_in) of a Conv1d's weight [out, in, k] (`kind`) and bias [out]."""
    out = [(f"{name}.weight", (c_out, c_in, k), kind, None)]
    return out + [(f"{name}.bias", (c_out,), "b", None)] if bias else out


def q3_speaker_encoder_tensors(sec):
    """(name, shape, kind, fan_in) of the Base model's ECAPA-TDNN speaker encoder
    (`speaker_encoder.*`, qwen-tts Qwen3TTSSpeakerEncoder) from `speaker_encoder_config` `sec`:
    every layer a Conv1d with bias (no norms): blocks.0 a TDNN mel_dim -> C0 (k0); blocks.i
    (i = 1 .. n-2) SE-Res2Net blocks (tdnn1 C(i-1) -> Ci k1, res2net_block.blocks.0..scale-2
    Ci/scale -> Ci/scale (ki), tdnn2 Ci -> Ci k1, se_block conv1 Ci -> se, conv2 se -> Ci);
    mfa C(n-1) -> C(n-1) (k(n-1); it reads the concatenated blocks 1..n-2, whose channels sum to
    C(n-1)); asp.tdnn 3 C(n-1) -> attention, asp.conv attention -> C(n-1); fc 2 C(n-1) -> enc_dim."""
    ch, ks = sec["enc_channels"], sec["enc_kernel_sizes"]
    scale, se, att = sec["enc_res2net_scale"], sec["enc_se_channels"], sec["enc_attention_channels"]
    assert len(ch) == len(ks) == len(sec["enc_dilations"]) and sum(ch[1:-1]) == ch[-1]
    p = "speaker_encoder"
    out = q3_conv(f"{p}.blocks.0.conv", ch[0], sec["mel_dim"], ks[0])
    for i in range(1, len(ch) - 1):
        b, c = f"{p}.blocks.{i}", ch[i]
        assert ch[i - 1] == c and c % scale == 0  # the block adds its input back
        out += q3_conv(f"{b}.tdnn1.conv", c, ch[i - 1], 1)
        for j in range(scale - 1):
            out += q3_conv(f"{b}.res2net_block.blocks.{j}.conv", c // scale, c // scale, ks[i])
        out += q3_conv(f"{b}.tdnn2.conv", c, c, 1)
        out += q3_conv(f"{b}.se_block.conv1", se, c, 1)
        out += q3_conv(f"{b}.se_block.conv2", c, se, 1)
    out += q3_conv(f"{p}.mfa.conv", ch[-1], ch[-1], ks[-1])
    out += q3_conv(f"{p}.asp.tdnn.conv", att, 3 * ch[-1], 1)
    out += q3_conv(f"{p}.asp.conv", ch[-1], att, 1)
    out += q3_conv(f"{p}.fc", sec["enc_dim"], 2 * ch[-1], 1)
    return out


def q3_mimi_frame_rates(enc):
    """(frame_rate, encodec_frame_rate) of a MimiConfig dict: the SEANet output rate
    ceil(sampling_rate / prod(ratios)) and `_frame_rate` or sampling_rate / (2 prod(ratios))."""
    hop = math.prod(enc["upsampling_ratios"])
    encodec = math.ceil(enc["sampling_rate"] / hop)
    return enc.get("_frame_rate") or enc["sampling_rate"] / (2 * hop), encodec


def q3_codec_encoder_tensors(enc):
    """(name, shape, kind, fan_in) of the speech tokenizer's ENCODER (`encoder.*`: qwen-tts
    Qwen3TTSTokenizerV2Encoder, transformers' MimiModel without its decoder parts) from
    `encoder_config` `enc` (a MimiConfig dict). SEANet (encoder.encoder.layers.N, the module list
    counted with its ELUs): conv audio -> F (kernel_size); per ratio r of reversed
    upsampling_ratios at width D = F, 2F, ..: residual blocks (block.1 D -> D/compress
    residual_kernel_size, block.3 D/compress -> D k1), ELU, conv D -> 2D (k 2r, stride r); ELU,
    conv -> hidden (last_kernel_size). encoder_transformer.layers.i: LayerNorms with bias, q/k/v/o,
    mlp fc1/fc2 (no biases), two layer scales. downsample hidden -> hidden (k 2 encodec/frame
    rate, stride 2, no bias). quantizer.{semantic,acoustic}_residual_vector_quantizer: input_proj
    / output_proj (k1, no bias) and per layer codebook.{embed_sum [size, dim], cluster_usage
    [size], initialized [1]} (buffers, F32). The convolutions (SEANet, downsample, projections)
    are "w_unit" (N(0, 1/fan_in)): ELU is near-linear at these levels, so the signal keeps its
    level and stays above the biases (at "w"'s 0.5 gain it shrinks ~50 x over the SEANet, the
    biases' constant dominates and every frame gets the same codes)."""
    e = enc
    conv = lambda *a, **k: q3_conv(*a, kind="w_unit", **k)  # noqa: E731
    for key, ok in (("use_conv_shortcut", False), ("audio_channels", 1)):
        if e[key] != ok:
            raise SystemExit(f"encoder_config {key} = {e[key]!r} is not supported")
    s = "encoder.encoder.layers"
    nf, d = e["num_filters"], e["hidden_size"]
    out = conv(f"{s}.0.conv", nf, e["audio_channels"], e["kernel_size"])
    idx, width = 1, nf
    for ratio in reversed(e["upsampling_ratios"]):
        for _ in range(e["num_residual_layers"]):
            hid = width // e["compress"]
            out += conv(f"{s}.{idx}.block.1.conv", hid, width, e["residual_kernel_size"])
            out += conv(f"{s}.{idx}.block.3.conv", width, hid, 1)
            idx += 1
        idx += 1  # ELU
        out += conv(f"{s}.{idx}.conv", 2 * width, width, 2 * ratio)
        idx += 1
        width *= 2
    idx += 1  # ELU
    out += conv(f"{s}.{idx}.conv", d, width, e["last_kernel_size"])
    heads, kv, hd, inter = e["num_attention_heads"], e["num_key_value_heads"], e["head_dim"], e["intermediate_size"]
    for i in range(e["num_hidden_layers"]):
        p = f"encoder.encoder_transformer.layers.{i}"
        out += [
            (f"{p}.input_layernorm.weight", (d,), "ln_w", None),
            (f"{p}.input_layernorm.bias", (d,), "b", None),
            (f"{p}.post_attention_layernorm.weight", (d,), "ln_w", None),
            (f"{p}.post_attention_layernorm.bias", (d,), "b", None),
            (f"{p}.self_attn.q_proj.weight", (heads * hd, d), "w", None),
            (f"{p}.self_attn.k_proj.weight", (kv * hd, d), "w", None),
            (f"{p}.self_attn.v_proj.weight", (kv * hd, d), "w", None),
            (f"{p}.self_attn.o_proj.weight", (d, heads * hd), "w", None),
            (f"{p}.mlp.fc1.weight", (inter, d), "w", None),
            (f"{p}.mlp.fc2.weight", (d, inter), "w", None),
            (f"{p}.self_attn_layer_scale.scale", (d,), "scale", None),
            (f"{p}.mlp_layer_scale.scale", (d,), "scale", None),
        ]
    frame_rate, encodec_rate = q3_mimi_frame_rates(e)
    if frame_rate != encodec_rate:
        out += conv("encoder.downsample.conv", d, d, 2 * int(encodec_rate / frame_rate), bias=False)
    vq = e["vector_quantization_hidden_dimension"]
    n_sem = e["num_semantic_quantizers"]
    for grp, n in (("semantic", n_sem), ("acoustic", e["num_quantizers"] - n_sem)):
        q = f"encoder.quantizer.{grp}_residual_vector_quantizer"
        if vq != d:
            out += conv(f"{q}.input_proj", vq, d, 1, bias=False)
            out += conv(f"{q}.output_proj", d, vq, 1, bias=False)
        for i in range(n):
            book = f"{q}.layers.{i}.codebook"
            out += [(f"{book}.embed_sum", (e["codebook_size"], e["codebook_dim"]), "enc_codebook", None),
                    (f"{book}.cluster_usage", (e["codebook_size"],), "usage", None),
                    (f"{book}.initialized", (1,), "one", None)]
    return out


def q3_configs(size, max_layers=0, variant="custom_voice"):
    """config.json (the tiny fixture's layout, real values), generation_config.json (the
    fixture's) and speech_tokenizer/config.json (the fixture's codec, real decoder values)."""
    c = Q3
    h, inter, size_tag = Q3_SIZES[size]
    n_layers = min(c["layers"], max_layers) if max_layers else c["layers"]
    n_cp = min(c["cp_layers"], max_layers) if max_layers else c["cp_layers"]
    ids = list(Q3_CODEC_IDS.values()) + list(Q3_LANGUAGES.values()) + list(Q3_SPEAKERS.values())
    assert len(set(ids)) == len(ids) and all(c["cp_vocab"] <= i < c["codec_vocab"] for i in ids)

    cfg = json.loads((Q3_FIXTURES / "tiny-random" / "config.json").read_text())
    gen = json.loads((Q3_FIXTURES / "tiny-random" / "generation_config.json").read_text())
    cfg.update({
        "dtype": "bfloat16",
        "initializer_range": 0.02,
        "im_start_token_id": 151644,
        "im_end_token_id": 151645,
        "tts_pad_token_id": 151671,
        "tts_bos_token_id": 151672,
        "tts_eos_token_id": 151673,
        "tts_model_size": size_tag,
        "tts_model_type": variant,
    })
    # the speaker encoder's x-vector fills a talker position (§2): enc_dim = talker hidden
    cfg["speaker_encoder_config"].update({**Q3_SPEAKER_ENCODER, "enc_dim": h})
    t = cfg["talker_config"]
    t.update({
        "head_dim": c["head_dim"],
        "hidden_size": h,
        "initializer_range": 0.02,
        "intermediate_size": inter,
        "max_position_embeddings": 32768,
        "num_attention_heads": c["heads"],
        "num_code_groups": c["groups"],
        "num_hidden_layers": n_layers,
        "num_key_value_heads": c["kv_heads"],
        "rms_norm_eps": 1e-06,
        "rope_scaling": {"interleaved": True, "mrope_section": [24, 20, 20], "rope_type": "default"},
        "rope_theta": 1000000,
        "text_hidden_size": c["text_hidden"],
        "text_vocab_size": c["text_vocab"],
        "vocab_size": c["codec_vocab"],
        "codec_language_id": dict(Q3_LANGUAGES),
        # preset speakers exist only in CustomVoice checkpoints (VoiceDesign and Base: empty)
        "spk_id": dict(Q3_SPEAKERS) if variant == "custom_voice" else {},
        "spk_is_dialect": ({name: Q3_DIALECTS.get(name, False) for name in Q3_SPEAKERS}
                           if variant == "custom_voice" else {}),
        **Q3_CODEC_IDS,
    })
    t["code_predictor_config"].update({
        "head_dim": c["head_dim"],
        "hidden_size": c["cp_hidden"],
        "initializer_range": 0.02,
        "intermediate_size": c["cp_inter"],
        "layer_types": ["full_attention"] * n_cp,
        "max_position_embeddings": 65536,
        "num_attention_heads": c["heads"],
        "num_code_groups": c["groups"],
        "num_hidden_layers": n_cp,
        "num_key_value_heads": c["kv_heads"],
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000,
        "vocab_size": c["cp_vocab"],
    })

    codec = json.loads((Q3_FIXTURES / "tiny-random" / "speech_tokenizer" / "config.json").read_text())
    codec["decoder_config"].update({
        "codebook_dim": c["cb_dim"],
        "codebook_size": c["cb_size"],
        "decoder_dim": c["decoder_dim"],
        "head_dim": c["c_head_dim"],
        "hidden_size": c["c_hidden"],
        "initializer_range": 0.02,
        "intermediate_size": c["c_inter"],
        "latent_dim": c["latent"],
        "layer_scale_initial_scale": 0.01,
        "num_attention_heads": c["c_heads"],
        "num_hidden_layers": c["c_layers"],
        "num_key_value_heads": c["c_kv_heads"],
        "num_quantizers": c["groups"],
        "rms_norm_eps": 1e-05,
        "rope_theta": 10000,
        "sliding_window": 72,
        "upsample_rates": list(c["upsample_rates"]),
        "upsampling_ratios": list(c["upsampling_ratios"]),
        "vector_quantization_hidden_dimension": c["cb_dim"],
    })
    codec["encoder_config"].update(Q3_MIMI)
    codec["encoder_valid_num_quantizers"] = Q3_ENCODER_VALID_QUANTIZERS
    if variant == "base":  # the encoder is used: its frame rate as the real checkpoint saves it
        codec["encoder_config"]["_frame_rate"] = 12.5
    return cfg, gen, codec


def bytes_to_unicode():
    """GPT-2's byte -> printable character map (the byte-level BPE alphabet)."""
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def qwen_bpe_from_tiktoken(path: Path):
    """Qwen's byte-level BPE (vocab: token string -> id, merges in rank order) from its tiktoken
    ranks file (`qwen.tiktoken`: base64 token and rank per line; Qwen2's vocab.json holds the same
    151643 tokens at the same ids). Each token's merge is the split of it into two tokens of
    lower rank, the way transformers converts tiktoken files (`TikTokenConverter`)."""
    import base64

    ranks = {}
    for line in path.read_text().splitlines():
        if line.strip():
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    to_str = bytes_to_unicode()

    def text(b: bytes) -> str:
        return "".join(to_str[c] for c in b)

    merges = []
    for token, rank in ranks.items():
        splits = [(token[:i], token[i:]) for i in range(1, len(token))
                  if token[:i] in ranks and token[i:] in ranks]
        splits.sort(key=lambda lr: (ranks[lr[0]], ranks[lr[1]]))
        merges.extend((rank, left, right) for left, right in splits)
    merges.sort(key=lambda m: m[0])
    vocab = {text(t): r for t, r in ranks.items()}
    return vocab, [f"{text(l)} {text(r)}" for _, l, r in merges]


def q3_tokenizer_files(out: Path, tiktoken: Path | None = None):
    """The text tokenizer in Qwen2's file layout. With `tiktoken` (Qwen's `qwen.tiktoken`, e.g.
    from the dashscope wheel: `pip download dashscope==2.0.2 --no-deps`), the real vocabulary
    and merges, so prompts have the real model's lengths. Without, byte-level as the tiny
    fixture's (tools/reference/qwen3_tts_fixtures.py): no merges, every UTF-8 byte one token
    (byte b has id b). Either way the real added tokens at their real ids."""
    if tiktoken is None:
        vocab = {ch: b for b, ch in sorted(bytes_to_unicode().items())}
        assert sorted(vocab.values()) == list(range(256))
        merges = []
    else:
        vocab, merges = qwen_bpe_from_tiktoken(tiktoken)
        assert max(vocab.values()) < min(Q3_ADDED_TOKENS), "regular ids below the added tokens"
    with open(out / "vocab.json", "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    (out / "merges.txt").write_text("#version: 0.2\n" + "".join(m + "\n" for m in merges), encoding="utf-8")
    tok = {"tokenizer_class": "Qwen2Tokenizer", "added_tokens_decoder": {
        str(i): {"content": content, "lstrip": False, "normalized": False, "rstrip": False,
                 "single_word": False, "special": True}
        for i, content in sorted(Q3_ADDED_TOKENS.items())}}
    (out / "tokenizer_config.json").write_text(json.dumps(tok, indent=2) + "\n")


def q3_write_safetensors(path: Path, specs, seed, label, quiet, f32_kinds=()):
    """Streams `specs` (name, shape, kind, fan_in) into `path` (bf16; kinds in `f32_kinds` F32)."""
    dtypes = {name: "f32" for name, _, kind, _ in specs if kind in f32_kinds}
    n_params = sum(int(np.prod(s, dtype=np.int64)) for _, s, *_ in specs)
    tmp = path.with_name(path.name + ".partial")
    st = SafetensorsWriter(tmp, specs, "bf16", dtypes)
    done = 0
    for name, shape, kind, fan_in in specs:

        def chunks():
            for ch in tensor_chunks(name, shape, kind, seed, round_f16=False, fan_in=fan_in):
                if not np.isfinite(ch).all():
                    raise SystemExit(f"non-finite value generated in {name}")
                yield ch

        st.write(name, chunks())
        done += int(np.prod(shape, dtype=np.int64))
        if not quiet:
            print(f"\r{label}: {done / n_params * 100:5.1f}%  {name:<72}", end="", file=sys.stderr, flush=True)
    if not quiet:
        print(file=sys.stderr)
    st.close()
    os.replace(tmp, path)
    return n_params


def write_qwen3_tts(args):
    import time

    t0 = time.time()
    out = Path(args.out)
    variant = args.variant
    (out / "speech_tokenizer").mkdir(parents=True, exist_ok=True)
    cfg, gen, codec = q3_configs(args.size, args.max_layers, variant)
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    (out / "speech_tokenizer" / "config.json").write_text(json.dumps(codec, indent=2, sort_keys=True) + "\n")
    q3_tokenizer_files(out, Path(args.qwen_tiktoken) if args.qwen_tiktoken else None)
    if args.tokenizer_only:
        return

    talker = q3_talker_tensors(args.size, args.max_layers)
    speaker = q3_speaker_encoder_tensors(cfg["speaker_encoder_config"]) if variant == "base" else []
    n_model = q3_write_safetensors(out / "model.safetensors", talker + speaker, args.seed, "model", args.quiet)
    t1 = time.time()
    decoder = q3_codec_tensors()
    encoder = q3_codec_encoder_tensors(codec["encoder_config"]) if variant == "base" else []
    n_codec = q3_write_safetensors(out / "speech_tokenizer" / "model.safetensors", encoder + decoder, args.seed,
                                   "speech_tokenizer", args.quiet,
                                   f32_kinds=("codebook", "usage", "enc_codebook", "one"))
    t2 = time.time()
    n_params = lambda specs: sum(int(np.prod(s, dtype=np.int64)) for _, s, *_ in specs)  # noqa: E731
    gb = lambda p: p.stat().st_size / 1e9  # noqa: E731
    name = f"qwen3-tts-{args.size}" + ("" if variant == "custom_voice" else "-" + variant.replace("_", "-"))
    if speaker:
        model_what = (f"talker {n_params(talker) / 1e9:.3f} B + speaker encoder {n_params(speaker) / 1e6:.1f} M "
                      f"parameters, {len(talker)} + {len(speaker)} tensors")
    else:
        model_what = f"{n_model / 1e9:.3f} B parameters, {len(talker)} tensors"
    if encoder:
        codec_what = (f"speech tokenizer encoder {n_params(encoder) / 1e6:.1f} M + decoder "
                      f"{n_params(decoder) / 1e6:.1f} M parameters, {len(encoder)} + {len(decoder)} tensors")
    else:
        codec_what = f"speech tokenizer decoder {n_codec / 1e6:.1f} M parameters, {len(decoder)} tensors"
    print(
        f"{name}: {model_what}, {gb(out / 'model.safetensors'):.2f} GB ({t1 - t0:.0f} s); {codec_what}, "
        f"{gb(out / 'speech_tokenizer' / 'model.safetensors'):.3f} GB ({t2 - t1:.0f} s) -> {out}"
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
    v = sub.add_parser("voxtral-realtime", help="random-weight Voxtral Mini 4B Realtime checkpoint at real shapes (bf16)")
    v.add_argument("--out", required=True, help="output directory (suggested: target/models/voxtral-realtime)")
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--layout", choices=["mistral", "hf"], default="mistral",
                   help="mistral: consolidated.safetensors + params.json; hf: model.safetensors + config.json")
    v.add_argument("--max-layers", type=int, default=0, help=argparse.SUPPRESS)  # testing: cap both layer counts
    v.add_argument("--quiet", action="store_true")
    v3 = sub.add_parser("voxtral", help="random-weight Voxtral Mini 3B 2507 checkpoint at real shapes (bf16)")
    v3.add_argument("--out", required=True,
                    help="output directory (suggested: target/models/voxtral-mini-3b, -hf for --layout hf)")
    v3.add_argument("--seed", type=int, default=0)
    v3.add_argument("--layout", choices=["mistral", "hf"], default="mistral",
                    help="mistral: consolidated.safetensors + params.json; hf: model.safetensors + config.json")
    v3.add_argument("--layers", "--max-layers", dest="max_layers", metavar="N", type=int, default=0,
                    help="cap both layer counts (encoder and decoder; quick tests); 0 = real counts")
    v3.add_argument("--quiet", action="store_true")
    q = sub.add_parser("qwen3-tts", help="random-weight Qwen3-TTS 12 Hz checkpoint at real shapes (bf16)")
    q.add_argument("--size", required=True, choices=sorted(Q3_SIZES))
    q.add_argument("--variant", choices=Q3_VARIANTS, default="custom_voice",
                   help="custom_voice (preset speakers), voice_design (no speakers) or base (voice clone: "
                        "speaker encoder + speech tokenizer encoder); default custom_voice")
    q.add_argument("--out", required=True,
                   help="output directory (suggested: target/models/qwen3-tts-<size>[-voice-design|-base])")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--max-layers", type=int, default=0, help=argparse.SUPPRESS)  # testing: cap both layer counts
    q.add_argument("--qwen-tiktoken", metavar="FILE",
                   help="Qwen's qwen.tiktoken ranks: write the real BPE vocabulary and merges (real prompt "
                        "lengths) instead of the byte-level tokenizer")
    q.add_argument("--tokenizer-only", action="store_true",
                   help="write the config and tokenizer files only (e.g. to add --qwen-tiktoken to a generated model)")
    q.add_argument("--quiet", action="store_true")
    c = sub.add_parser("check-ggml", help="compare a ggml file with a generated directory, tensor by tensor")
    c.add_argument("ggml")
    c.add_argument("dir")
    c.add_argument("--assets", default=str(SHARED_ASSETS))
    args = ap.parse_args(argv)
    if args.model == "whisper":
        write_whisper(args)
    elif args.model == "voxtral-realtime":
        write_voxtral_realtime(args)
    elif args.model == "voxtral":
        write_voxtral(args)
    elif args.model == "qwen3-tts":
        write_qwen3_tts(args)
    else:
        check_ggml(args)


if __name__ == "__main__":
    main()
