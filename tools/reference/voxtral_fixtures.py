#!/usr/bin/env python3
"""Seeded random-weight Voxtral Mini 3B (2507) fixtures and reference dumps for voxide.

Model: transformers' VoxtralForConditionalGeneration + VoxtralProcessor (transformers 5.23.0,
mistral-common 1.13.1), built from a tiny config (voxtral-mini-3b.md section 11), seed 1234, fp32,
eval(), default attention (sdpa). audio_tower.embed_positions is set to Whisper's sinusoids(1500,
64) (transformers' init leaves it random; the real checkpoint and the converter use sinusoids),
then constant tensors are perturbed with a separate generator (seed 0, tools/reference/common.py).

Writes, under tests/fixtures/voxtral/ (relative to the repository root):

    tiny-random-hf/                  save_pretrained output: config.json (model_type "voxtral"),
                                     generation_config.json (pad_token_id 11 as the converter
                                     writes it), model.safetensors (hub names: audio_tower.*,
                                     multi_modal_projector.*, language_model.model.*,
                                     language_model.lm_head.weight: the head is NOT tied),
                                     processor_config.json, tekken.json. Loadable with
                                     VoxtralForConditionalGeneration.from_pretrained and
                                     AutoProcessor.from_pretrained (needs mistral-common).
    tiny-random-mistral/             Mistral-native layout: consolidated.safetensors (F32, the
                                     exact inverse of transformers' convert_voxtral_weights_to_hf.py
                                     STATE_DICT_MAPPING: tok_embeddings, output, norm, layers.N.*,
                                     mm_whisper_embeddings.*; decoder wq/wk rows permuted back to
                                     interleaved-pair RoPE, encoder not permuted, no embed_positions),
                                     params.json (the real Voxtral-Mini-3B structure), tekken.json.
    tiny-random.reference.safetensors  reference tensors (F32 / I64, metadata {seed, generator}).
    tiny-random.reference.json       facts: versions, config summary, prompt layouts, prompts built
                                     by mistral-common itself, cross-check diffs, greedy gaps.

tekken.json is a small synthetic v7 file (common.write_synthetic_tekken): pattern of
mistral-common's bundled tekken_240911.json, num_vocab_tokens 1100, default_vocab_size 2048,
default_num_special_tokens 1000; vocab = the bundled file's first 1100 entries (only ranks
< 1048 are reachable, id = 1000 + rank); special tokens 0..19 with mistral-common's standard
names, [AUDIO] 24, [BEGIN_AUDIO] 25, [TRANSCRIBE] 34, every other rank "<SPECIAL_N>" (no
streaming tokens). audio section of the offline model: sampling_rate 16000, frame_rate 12.5,
audio_encoding_config {num_mel_bins 128, hop_length 160, window_size 400}, chunk_length_s 30.0,
no transcription_format (mistral-common's default "instruct": [BEGIN_AUDIO] + [AUDIO] * n
inside an [INST] turn, audio zero-padded at the end to a multiple of 480000 samples).

Tiny config: audio hidden 64, intermediate 256 (= 4 x hidden, the projector reshape needs it),
2 layers, 4 heads (head_dim 16), 128 mels, max_source_positions 1500; text (Llama) vocab 2048,
hidden 64, intermediate 128, 2 layers, 4 heads / 2 KV heads, head_dim 16, rope theta 1e8, rms eps
1e-5, max_position_embeddings 131072, tie_word_embeddings false; audio_token_id 24, projector
GELU. initializer_range 0.1 (audio) and 0.25 (text) instead of 0.02 so that greedy ids vary.

Inputs (both on the 16-bit grid: the processor serialises audio through a 16-bit PCM WAV):
  * short: common.standard_audio(), 3 s (48000 samples) of 440 Hz sine + chirp + 0.01 N(0,1);
  * long: the first 40.0 s (640000 samples) of corpus/longform/fleurs_en_concat.wav (16 kHz mono
    PCM_16, read with soundfile as float32 = int16 / 32768; no resampling needed); k = 2 windows.

Reference tensors (tiny-random.reference.safetensors). CLIP in {short, long}; k = windows (1, 2);
T = prompt length; m = generated tokens (<= 24).
  CLIP.audio                       [n] f32      the samples given to the processor (unpadded)
  CLIP.input_features              [k,128,3000] apply_transcription_request(language="en"):
                                                mistral-common zero-pads the audio at the end to
                                                480000 k samples, WhisperFeatureExtractor(128)
                                                runs on the WHOLE padded array (centred STFT,
                                                last frame dropped, clamp at max - 8 with the max
                                                over all k windows), then the 3000 k frames are
                                                split into k windows
  CLIP.encoder_hidden_states.0     [k,1500,64]  GELU(conv2(GELU(conv1(x)))) + embed_positions:
                                                the input of encoder layer 0
  CLIP.encoder_hidden_states.1     [k,1500,64]  output of encoder layer 0
  CLIP.encoder_hidden_states.2     [k,1500,64]  output of encoder layer 1 AFTER the final
                                                layer_norm (HF replaces the last entry by the
                                                normed output = last_hidden_state)
  CLIP.audio_embeds                [375k,64]    projector: linear_2(GELU(linear_1(enc.reshape(
                                                -1, 256)))), windows in order; the rows that
                                                replace the [AUDIO] ids
  CLIP.transcribe.input_ids        [1,T] i64    <s> [INST] [BEGIN_AUDIO] [AUDIO]*375k [/INST]
                                                lang:en [TRANSCRIBE] (one [BEGIN_AUDIO] for all
                                                windows)
  CLIP.transcribe.inputs_embeds    [1,T,64]     embed_tokens(ids) with the [AUDIO] rows replaced
                                                (masked_scatter) by audio_embeds
  CLIP.transcribe.text_hidden_states.0  [1,T,64] = inputs_embeds (decoder input)
  CLIP.transcribe.text_hidden_states.1  [1,T,64] output of decoder layer 0
  CLIP.transcribe.text_hidden_states.2  [1,T,64] output of decoder layer 1 AFTER the final norm
  CLIP.transcribe.logits_tail      [16,2048]    logits of prompt positions T-16 .. T-1
  short.transcribe.logits          [1,T,2048]   all prompt logits (short only)
  CLIP.transcribe.greedy_ids       [m] i64      generate(do_sample=False, max_new_tokens=24),
                                                new tokens only (stops early at EOS 2)
  CLIP.transcribe.greedy_scores    [m,2048]     raw logits of every generated step (row 0 =
                                                position T-1 = logits_tail[-1]; row j is the
                                                cached step fed greedy_ids[j-1])
  short.chat.input_ids             [1,T] i64    processor.apply_chat_template of [user: audio
                                                (short) + "What is said in this recording?"]
  short.chat.greedy_ids            [m] i64      as above
  short.chat.greedy_scores         [m,2048]     as above
(short.chat uses the same input_features as short.transcribe: one 30 s window.)

Run with the pinned environment of requirements.txt (mistral-common[audio] included); seed
determinism only holds within one torch/transformers version. Offline: no hub access
(HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 are set below). The Mistral round-trip check runs
transformers' own convert_voxtral_weights_to_hf.py, which is in the transformers GitHub
repository but not in the wheel: it is looked up in the installed package, then --converter /
$VOXIDE_VOXTRAL_CONVERTER (src/transformers/models/voxtral/convert_voxtral_weights_to_hf.py from
a transformers checkout); --skip-converter runs only the independent checks.
"""

import argparse
import importlib.util
import json
import math
import os
import shutil
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pycountry  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import transformers  # noqa: E402
import safetensors  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import (  # noqa: E402
    AutoProcessor,
    VoxtralConfig,
    VoxtralForConditionalGeneration,
    VoxtralProcessor,
    WhisperFeatureExtractor,
)
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb  # noqa: E402
from transformers.models.whisper.modeling_whisper import sinusoids  # noqa: E402
from transformers.tokenization_mistral_common import MistralCommonBackend  # noqa: E402

import mistral_common  # noqa: E402
from mistral_common.protocol.instruct.chunk import AudioChunk, TextChunk  # noqa: E402
from mistral_common.protocol.instruct.messages import AssistantMessage, UserMessage  # noqa: E402
from mistral_common.protocol.instruct.request import ChatCompletionRequest  # noqa: E402
from mistral_common.protocol.transcription.request import TranscriptionRequest  # noqa: E402
from mistral_common.tokens.tokenizers.audio import Audio  # noqa: E402
from mistral_common.tokens.tokenizers.base import SpecialTokenPolicy  # noqa: E402
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (  # noqa: E402
    dir_size, interleave_rows, maxdiff, perturb_constants, rope_interleaved, rope_rotate_half,
    rotate_half_rows, save_reference, sha256, standard_audio, top2_gaps, write_synthetic_tekken,
)

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SHARED = os.environ.get("VOXIDE_SHARED", "/work/shared")
LONG_REL = "corpus/longform/fleurs_en_concat.wav"
LONG_PATH = os.path.join(SHARED, LONG_REL)
CONVERTER_REL = "models/voxtral/convert_voxtral_weights_to_hf.py"

GENERATOR = "tools/reference/voxtral_fixtures.py"
NAME = "tiny-random"
SEED = 1234
SR = 16000
MODEL_ID = "mistralai/Voxtral-Mini-3B-2507"  # only fills TranscriptionRequest.model

# ---- tiny dimensions
A_DIM, A_FFN, A_LAYERS, A_HEADS, N_MELS, MAX_SOURCE_POSITIONS = 64, 256, 2, 4, 128, 1500
A_HEAD_DIM = A_DIM // A_HEADS
A_VOCAB = 51866  # vestigial (VoxtralEncoderConfig default)
T_VOCAB, T_DIM, T_FFN, T_LAYERS, T_HEADS, T_KV, T_HEAD_DIM = 2048, 64, 128, 2, 4, 2, 16
ROPE_THETA, EPS, MODEL_MAX_LENGTH, DOWNSAMPLE = 1e8, 1e-5, 131072, 4
# initializer_range: with 0.02 the logits hardly depend on the input (cf. the Realtime script).
# Audio 0.1 / text 0.25 give varied greedy ids with top-2 gaps well above 1e-3.
INIT_RANGE_AUDIO, INIT_RANGE_TEXT = 0.1, 0.25
assert A_FFN == DOWNSAMPLE * A_DIM

# ---- prompt constants
BOS, EOS, INST, END_INST, PAD = 1, 2, 3, 4, 11
AUDIO, BEGIN_AUDIO, TRANSCRIBE = 24, 25, 34
CHUNK_SAMPLES, WINDOW_FRAMES, TOKENS_PER_WINDOW = 480000, 3000, 375
HOP, WIN = 160, 400
MAX_NEW_TOKENS, N_TAIL = 24, 16
LONG_SECONDS = 40.0
LANGUAGES = ["en", "fr", "de", "es", "pt", "hi", "nl", "it"]  # Voxtral's 8 documented languages
QUESTION = "What is said in this recording?"
TRANSLATE_FR = "Translate this audio into French."

EXTRA_SPECIAL = {AUDIO: "[AUDIO]", BEGIN_AUDIO: "[BEGIN_AUDIO]", TRANSCRIBE: "[TRANSCRIBE]"}
TEKKEN_AUDIO = {
    "sampling_rate": 16000,
    "frame_rate": 12.5,
    "audio_encoding_config": {"num_mel_bins": 128, "hop_length": 160, "window_size": 400},
    "chunk_length_s": 30.0,
}

ENC = "mm_whisper_embeddings.whisper_encoder."
PROJ = "mm_whisper_embeddings.audio_language_projection."


# --------------------------------------------------------------------------------------
# configs


def build_config():
    return VoxtralConfig(
        audio_config=dict(
            model_type="voxtral_encoder", hidden_size=A_DIM, intermediate_size=A_FFN,
            num_hidden_layers=A_LAYERS, num_attention_heads=A_HEADS, num_mel_bins=N_MELS,
            max_source_positions=MAX_SOURCE_POSITIONS, vocab_size=A_VOCAB,
            initializer_range=INIT_RANGE_AUDIO,
        ),
        text_config=dict(
            model_type="llama", vocab_size=T_VOCAB, hidden_size=T_DIM, intermediate_size=T_FFN,
            num_hidden_layers=T_LAYERS, num_attention_heads=T_HEADS, num_key_value_heads=T_KV,
            head_dim=T_HEAD_DIM, rms_norm_eps=EPS,
            rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA},
            max_position_embeddings=MODEL_MAX_LENGTH, tie_word_embeddings=False,
            bos_token_id=BOS, eos_token_id=EOS, initializer_range=INIT_RANGE_TEXT,
        ),
        audio_token_id=AUDIO, projector_hidden_act="gelu",
    )


def params_json():
    """Mistral params.json with the structure of Voxtral-Mini-3B-2507's."""
    return {
        "dim": T_DIM,
        "n_layers": T_LAYERS,
        "head_dim": T_HEAD_DIM,
        "hidden_dim": T_FFN,
        "n_heads": T_HEADS,
        "n_kv_heads": T_KV,
        "rope_theta": ROPE_THETA,
        "norm_eps": EPS,
        "vocab_size": T_VOCAB,
        "max_seq_len": MODEL_MAX_LENGTH,
        "multimodal": {
            "whisper_model_args": {
                "encoder_args": {
                    "audio_encoding_args": {
                        "sampling_rate": SR,
                        "frame_rate": 12.5,
                        "num_mel_bins": N_MELS,
                        "hop_length": HOP,
                        "window_size": WIN,
                        "chunk_length_s": 30.0,
                    },
                    "dim": A_DIM,
                    "n_layers": A_LAYERS,
                    "head_dim": A_HEAD_DIM,
                    "hidden_dim": A_FFN,
                    "n_heads": A_HEADS,
                    "vocab_size": A_VOCAB,
                    "max_source_positions": MAX_SOURCE_POSITIONS,
                },
                "downsample_args": {"downsample_factor": DOWNSAMPLE},
            },
        },
    }


# --------------------------------------------------------------------------------------
# Mistral-native layout


def hf_to_mistral(sd):
    """Hub-named HF state dict (model.safetensors keys) -> Mistral-native names: the exact
    inverse of the converter's STATE_DICT_MAPPING, decoder wq/wk rows back to interleaved pairs,
    no embed_positions. Returns an ordered dict of contiguous tensors."""
    out = {}
    lm = "language_model.model."
    out["tok_embeddings.weight"] = sd[lm + "embed_tokens.weight"]
    for i in range(T_LAYERS):
        h, m = f"{lm}layers.{i}.", f"layers.{i}."
        out[m + "attention_norm.weight"] = sd[h + "input_layernorm.weight"]
        out[m + "ffn_norm.weight"] = sd[h + "post_attention_layernorm.weight"]
        out[m + "attention.wq.weight"] = interleave_rows(sd[h + "self_attn.q_proj.weight"], T_HEADS, T_HEAD_DIM)
        out[m + "attention.wk.weight"] = interleave_rows(sd[h + "self_attn.k_proj.weight"], T_KV, T_HEAD_DIM)
        out[m + "attention.wv.weight"] = sd[h + "self_attn.v_proj.weight"]
        out[m + "attention.wo.weight"] = sd[h + "self_attn.o_proj.weight"]
        out[m + "feed_forward.w1.weight"] = sd[h + "mlp.gate_proj.weight"]
        out[m + "feed_forward.w2.weight"] = sd[h + "mlp.down_proj.weight"]
        out[m + "feed_forward.w3.weight"] = sd[h + "mlp.up_proj.weight"]
    out["norm.weight"] = sd[lm + "norm.weight"]
    out["output.weight"] = sd["language_model.lm_head.weight"]
    at = "audio_tower."
    for j, conv in ((0, "conv1"), (1, "conv2")):
        for p in ("weight", "bias"):
            out[f"{ENC}conv_layers.{j}.{p}"] = sd[f"{at}{conv}.{p}"]
    for i in range(A_LAYERS):
        h, m = f"{at}layers.{i}.", f"{ENC}transformer.layers.{i}."
        for x in ("q", "v"):
            out[m + f"attention.w{x}.weight"] = sd[h + f"self_attn.{x}_proj.weight"]
            out[m + f"attention.w{x}.bias"] = sd[h + f"self_attn.{x}_proj.bias"]
        out[m + "attention.wk.weight"] = sd[h + "self_attn.k_proj.weight"]
        out[m + "attention.wo.weight"] = sd[h + "self_attn.out_proj.weight"]
        out[m + "attention.wo.bias"] = sd[h + "self_attn.out_proj.bias"]
        for p in ("weight", "bias"):
            out[m + f"attention_norm.{p}"] = sd[h + f"self_attn_layer_norm.{p}"]
            out[m + f"ffn_norm.{p}"] = sd[h + f"final_layer_norm.{p}"]
            out[m + f"feed_forward.w1.{p}"] = sd[h + f"fc1.{p}"]
            out[m + f"feed_forward.w2.{p}"] = sd[h + f"fc2.{p}"]
    for p in ("weight", "bias"):
        out[f"{ENC}transformer.norm.{p}"] = sd[f"{at}layer_norm.{p}"]
    out[PROJ + "0.weight"] = sd["multi_modal_projector.linear_1.weight"]
    out[PROJ + "2.weight"] = sd["multi_modal_projector.linear_2.weight"]
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


def find_converter(explicit):
    for p in (explicit, os.environ.get("VOXIDE_VOXTRAL_CONVERTER"),
              os.path.join(os.path.dirname(transformers.__file__), CONVERTER_REL)):
        if p and os.path.isfile(p):
            return p
    return None


CONVERTER_IMPORT_PATCH = ("    MistralCommonTokenizer,\n", "    MistralCommonBackend as MistralCommonTokenizer,\n")


def load_converter(path):
    """Import transformers' convert_voxtral_weights_to_hf.py as a module. Its top-level
    `from transformers import (MistralCommonTokenizer, ...)` fails in transformers 5.x (the class
    is MistralCommonBackend now; only write_processor uses it), so that one import line is
    rewritten (CONVERTER_IMPORT_PATCH) before executing the file when the old name is missing.
    Returns (module, patched)."""
    with open(path, encoding="utf-8") as f:
        src = f.read()
    patched = False
    try:
        from transformers import MistralCommonTokenizer  # noqa: F401
    except ImportError:
        assert src.count(CONVERTER_IMPORT_PATCH[0]) == 1
        src = src.replace(*CONVERTER_IMPORT_PATCH)
        patched = True
    spec = importlib.util.spec_from_loader("convert_voxtral_weights_to_hf", loader=None, origin=path)
    mod = importlib.util.module_from_spec(spec)
    mod.__file__ = path
    exec(compile(src, path, "exec"), mod.__dict__)
    return mod, patched


def flat_config(cfg):
    d = cfg.to_dict()
    out = {}
    for k, v in d.items():
        if k in ("audio_config", "text_config"):
            for kk, vv in v.items():
                out[f"{k}.{kk}"] = vv
        else:
            out[k] = v
    return out


# ---- independent re-implementation on the Mistral-native weights (interleaved RoPE)


def layer_norm(x, W, p):
    return F.layer_norm(x, (x.shape[-1],), W[p + ".weight"], W[p + ".bias"], 1e-5)


def rms(x, w, eps=EPS):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def whisper_sinusoids(length, channels):
    """voxtral-mini-3b.md 8.2: increment ln(10000)/(C/2 - 1); row = [sin(p inv), cos(p inv)]."""
    inc = math.log(10000.0) / (channels // 2 - 1)
    inv = torch.exp(-inc * torch.arange(channels // 2, dtype=torch.float32))
    ang = torch.arange(length, dtype=torch.float32)[:, None] * inv[None, :]
    return torch.cat([ang.sin(), ang.cos()], dim=1)


def native_forward(W, feats, ids):
    """feats [k,128,3000], ids [T] -> dict(audio_embeds [375k,64], logits [T,2048])."""
    x = F.gelu(F.conv1d(feats, W[ENC + "conv_layers.0.weight"], W[ENC + "conv_layers.0.bias"], padding=1))
    x = F.gelu(F.conv1d(x, W[ENC + "conv_layers.1.weight"], W[ENC + "conv_layers.1.bias"], stride=2,
                        padding=1))
    h = x.transpose(1, 2) + whisper_sinusoids(MAX_SOURCE_POSITIONS, A_DIM)  # [k,1500,64]
    k, n, _ = h.shape
    for i in range(A_LAYERS):
        m = f"{ENC}transformer.layers.{i}."
        y = layer_norm(h, W, m + "attention_norm")
        q = (y @ W[m + "attention.wq.weight"].T + W[m + "attention.wq.bias"]).view(k, n, A_HEADS, A_HEAD_DIM)
        kk = (y @ W[m + "attention.wk.weight"].T).view(k, n, A_HEADS, A_HEAD_DIM)
        v = (y @ W[m + "attention.wv.weight"].T + W[m + "attention.wv.bias"]).view(k, n, A_HEADS, A_HEAD_DIM)
        s = torch.einsum("bqhd,bkhd->bhqk", q, kk) * A_HEAD_DIM ** -0.5  # bidirectional
        o = torch.einsum("bhqk,bkhd->bqhd", s.softmax(-1), v).reshape(k, n, A_DIM)
        h = h + o @ W[m + "attention.wo.weight"].T + W[m + "attention.wo.bias"]
        y = layer_norm(h, W, m + "ffn_norm")
        y = F.gelu(y @ W[m + "feed_forward.w1.weight"].T + W[m + "feed_forward.w1.bias"])
        h = h + y @ W[m + "feed_forward.w2.weight"].T + W[m + "feed_forward.w2.bias"]
    h = layer_norm(h, W, ENC + "transformer.norm")
    a = h.reshape(-1, A_DIM * DOWNSAMPLE)
    a = F.gelu(a @ W[PROJ + "0.weight"].T) @ W[PROJ + "2.weight"].T
    x = W["tok_embeddings.weight"][ids].clone()
    pos_audio = (ids == AUDIO).nonzero()[:, 0]
    assert len(pos_audio) == a.shape[0]
    x[pos_audio] = a
    T = x.shape[0]
    pos = torch.arange(T)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    rep = T_HEADS // T_KV
    for i in range(T_LAYERS):
        m = f"layers.{i}."
        y = rms(x, W[m + "attention_norm.weight"])
        q = rope_interleaved((y @ W[m + "attention.wq.weight"].T).view(T, T_HEADS, T_HEAD_DIM), pos, ROPE_THETA)
        kk = rope_interleaved((y @ W[m + "attention.wk.weight"].T).view(T, T_KV, T_HEAD_DIM), pos, ROPE_THETA)
        v = (y @ W[m + "attention.wv.weight"].T).view(T, T_KV, T_HEAD_DIM)
        kk, v = kk.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        s = torch.einsum("qhd,khd->hqk", q, kk) * T_HEAD_DIM ** -0.5
        s = s.masked_fill(~causal[None], float("-inf"))
        o = torch.einsum("hqk,khd->qhd", s.softmax(-1), v).reshape(T, T_HEADS * T_HEAD_DIM)
        x = x + o @ W[m + "attention.wo.weight"].T
        y = rms(x, W[m + "ffn_norm.weight"])
        x = x + (F.silu(y @ W[m + "feed_forward.w1.weight"].T) * (y @ W[m + "feed_forward.w3.weight"].T)
                 ) @ W[m + "feed_forward.w2.weight"].T
    x = rms(x, W["norm.weight"])
    return dict(audio_embeds=a, logits=x @ W["output.weight"].T)


# --------------------------------------------------------------------------------------
# prompts


def wav_b64(x):
    return Audio(audio_array=x, sampling_rate=SR, format="wav").to_base64("wav")


def compact(ids):
    """Token ids -> pieces: lists of ids, with each run of [AUDIO] (24) replaced by
    {"audio": run length}. expand(compact(ids)) == ids."""
    out, cur, i = [], [], 0
    while i < len(ids):
        if ids[i] == AUDIO:
            j = i
            while j < len(ids) and ids[j] == AUDIO:
                j += 1
            if cur:
                out.append(cur)
                cur = []
            out.append({"audio": j - i})
            i = j
        else:
            cur.append(int(ids[i]))
            i += 1
    if cur:
        out.append(cur)
    return out


def expand(pieces):
    ids = []
    for p in pieces:
        ids.extend([AUDIO] * p["audio"] if isinstance(p, dict) else p)
    return ids


def layout(ids):
    """Positions of the prompt's structural tokens."""
    ids = list(ids)
    aud = [i for i, t in enumerate(ids) if t == AUDIO]
    return dict(
        n_ids=len(ids), begin_audio_positions=[i for i, t in enumerate(ids) if t == BEGIN_AUDIO],
        n_audio=len(aud), audio_first=aud[0] if aud else None, audio_last=aud[-1] if aud else None,
        inst_positions=[i for i, t in enumerate(ids) if t == INST],
        end_inst_positions=[i for i, t in enumerate(ids) if t == END_INST],
        pieces=compact(ids),
    )


def mistral_prompts(mt, audio_b64, n_audio_expected):
    """Prompts built by mistral-common itself from the short clip."""
    tok = mt.instruct_tokenizer.tokenizer
    out = dict(rule="ids = expand(pieces): concatenate the pieces in order; a list is literal ids, "
                    "{\"audio\": n} is n copies of [AUDIO] (24). Each audio chunk is the short clip, "
                    "zero-padded by mistral-common to 480000 samples -> [BEGIN_AUDIO] + 375 [AUDIO].")
    # ---- transcription requests
    tr = {}
    for lang in LANGUAGES + [None]:
        enc = mt.encode_transcription(TranscriptionRequest(model=MODEL_ID, audio=audio_b64, language=lang))
        ids = list(enc.tokens)
        lang_ids = tok.encode(f"lang:{lang}", bos=False, eos=False) if lang else []
        expected = [BOS, INST, BEGIN_AUDIO] + [AUDIO] * n_audio_expected + [END_INST] + lang_ids + [TRANSCRIBE]
        assert ids == expected, (lang, compact(ids))
        assert len(enc.audios) == 1 and len(enc.audios[0].audio_array) == CHUNK_SAMPLES
        tr[lang or "auto"] = dict(language=lang, lang_string=f"lang:{lang}" if lang else None,
                                  lang_ids=lang_ids, n_ids=len(ids), pieces=compact(ids))
    out["transcribe"] = tr
    out["transcribe_rule"] = ("[1 <s>, 3 [INST], 25 [BEGIN_AUDIO]] + [24]*375k + [4 [/INST]] + "
                              "encode('lang:xx', no bos/eos) + [34 [TRANSCRIBE]]; language None (auto) "
                              "omits the lang ids: ... [/INST] [TRANSCRIBE]")
    # ---- chat requests
    A = {"type": "input_audio", "input_audio": "<short clip: 48000 samples, base64 16-bit WAV>"}

    def user(*content):
        return {"role": "user", "content": list(content)}

    def text(t):
        return {"type": "text", "text": t}

    cases = {
        "a_audio_question": [user(A, text(QUESTION))],
        "b_two_audio_question": [user(A, A, text("Are these two recordings the same?"))],
        "c_multi_turn": [user(A, text(QUESTION)),
                         {"role": "assistant", "content": "A tone and a rising chirp."},
                         user(text("Describe it in one word."))],
        "d_translate_fr": [user(A, text(TRANSLATE_FR))],
    }

    def to_mc(msg):
        if msg["role"] == "assistant":
            return AssistantMessage(content=msg["content"])
        chunks = []
        for c in msg["content"]:
            chunks.append(AudioChunk(input_audio=audio_b64) if c["type"] == "input_audio"
                          else TextChunk(text=c["text"]))
        return UserMessage(content=chunks)

    chat = {}
    for name, msgs in cases.items():
        enc = mt.encode_chat_completion(ChatCompletionRequest(messages=[to_mc(m) for m in msgs]))
        ids = list(enc.tokens)
        n_aud = sum(1 for m in msgs for c in (m["content"] if isinstance(m["content"], list) else [])
                    if c["type"] == "input_audio")
        assert len(enc.audios) == n_aud and all(len(a.audio_array) == CHUNK_SAMPLES for a in enc.audios)
        assert sum(t == AUDIO for t in ids) == n_audio_expected * n_aud
        assert sum(t == BEGIN_AUDIO for t in ids) == n_aud
        chat[name] = dict(messages=msgs, n_ids=len(ids), n_audio_chunks=n_aud, pieces=compact(ids),
                          text_keep=tok.decode([t for t in ids if t != AUDIO],
                                               special_token_policy=SpecialTokenPolicy.KEEP))
    out["chat"] = chat
    out["chat_rule"] = ("<s> then per user turn [INST] + (per audio chunk: [BEGIN_AUDIO] + [AUDIO]*375) "
                        "+ text ids + [/INST]; an assistant turn is its text ids + </s>; no space or "
                        "separator between audio and text; no [TRANSCRIBE], no lang ids")
    out["translate_instruction"] = dict(
        text_template="Translate this audio into {language_name}.",
        example=TRANSLATE_FR,
        language_names={c: pycountry.languages.get(alpha_2=c).name for c in LANGUAGES},
        names_source="pycountry (which mistral-common's LanguageAlpha2 validation uses); the Voxtral "
                     "docs list English, Spanish, French, Portuguese, Hindi, German, Dutch, Italian")
    return out


def tekken_facts(mt):
    tok = mt.instruct_tokenizer.tokenizer
    ac = mt.instruct_tokenizer.audio_encoder.audio_config
    facts = dict(
        loads_with_mistral_common=True, instruct_tokenizer=type(mt.instruct_tokenizer).__name__,
        n_words=tok.n_words, num_special_tokens=tok.num_special_tokens, bos_id=tok.bos_id,
        eos_id=tok.eos_id, pad_id=tok.pad_id, audio=tok.get_special_token("[AUDIO]"),
        begin_audio=tok.get_special_token("[BEGIN_AUDIO]"),
        transcribe=tok.get_special_token("[TRANSCRIBE]"),
        transcription_format=str(ac.transcription_format), chunk_length_s=ac.chunk_length_s,
        chunk_frames=ac.chunk_frames, raw_audio_length_per_tok=ac.raw_audio_length_per_tok,
        audio_length_per_tok=ac.audio_length_per_tok, is_streaming=ac.is_streaming,
        audio_tokens_rule=("pad the audio with zeros at the end to ceil(n / 480000) * 480000 samples; "
                           "frames = n_padded // 160; n_audio = ceil(frames / 8) = 375 per 30 s; "
                           "tokens = [BEGIN_AUDIO] + [AUDIO] * n_audio (one BEGIN_AUDIO per audio "
                           "chunk, however many windows)"),
    )
    assert (facts["bos_id"], facts["eos_id"], facts["audio"], facts["begin_audio"], facts["transcribe"]) == \
        (BOS, EOS, AUDIO, BEGIN_AUDIO, TRANSCRIBE)
    assert not facts["is_streaming"] and facts["chunk_frames"] == CHUNK_SAMPLES
    assert facts["raw_audio_length_per_tok"] == 1280 and facts["audio_length_per_tok"] == 8
    # encode / decode cases (id = 1000 + rank; control tokens yield nothing with IGNORE)
    cases = []
    for t in ["lang:en", " the cat", QUESTION, TRANSLATE_FR, "café é", "Hello, world!"]:
        ids = tok.encode(t, bos=False, eos=False)
        assert tok.decode(ids) == t
        cases.append(dict(text=t, ids=list(ids), bytes_hex=t.encode("utf-8").hex()))
    split_cases = [
        dict(ids=[1000 + 0xC3, 1000 + 0xA9], text="é"),
        dict(ids=[1000 + 287, 1000 + 0x9D], text="\u201d"),
        dict(ids=[BOS, INST, BEGIN_AUDIO, AUDIO, END_INST, 1000 + 278, TRANSCRIBE, 1000 + 337, EOS],
             text=" theé"),
    ]
    for c in split_cases:
        assert tok.decode(c["ids"], special_token_policy=SpecialTokenPolicy.IGNORE) == c["text"], c
        c["keep"] = tok.decode(c["ids"], special_token_policy=SpecialTokenPolicy.KEEP)
        c["bytes_hex"] = c["text"].encode("utf-8").hex()
    facts["encode_cases"] = cases
    facts["decode_cases"] = split_cases
    return facts


# --------------------------------------------------------------------------------------
# model runs


def run_generate(model, inputs):
    with torch.no_grad():
        out = model.generate(**inputs, do_sample=False, max_new_tokens=MAX_NEW_TOKENS, output_logits=True,
                             return_dict_in_generate=True)
    seq = out.sequences[0]
    n_prompt = inputs["input_ids"].shape[1]
    assert torch.equal(seq[:n_prompt], inputs["input_ids"][0])
    gen = seq[n_prompt:].clone()
    logits = torch.cat(out.logits, 0).float()
    assert logits.shape[0] == gen.shape[0]
    assert torch.equal(logits.argmax(-1), gen)
    return gen, logits


def teacher_forced(model, inputs_embeds, gen):
    """Uncached forward over prompt + gen[:-1] from the merged prompt embeddings; returns the
    logits of positions T-1 .. T-1+m-1 (row j produced gen[j])."""
    m = model.model
    with torch.no_grad():
        x = torch.cat([inputs_embeds, m.language_model.embed_tokens(gen[None, :-1])], 1)
        h = m.language_model(inputs_embeds=x, use_cache=False).last_hidden_state
        return model.lm_head(h)[0, inputs_embeds.shape[1] - 1:]


def clip_case(tag, model, processor, fe, mt, x, ref, full_logits):
    """Transcription request (language en) for one clip: processor, encoder, projector, decoder,
    greedy; fills ref and returns facts."""
    m = model.model
    n = len(x)
    k = math.ceil(n / CHUNK_SAMPLES)
    inp = processor.apply_transcription_request(audio=x, model_id=MODEL_ID, language="en", sampling_rate=SR,
                                                format="wav")
    feats, ids = inp["input_features"], inp["input_ids"]
    assert feats.shape == (k, N_MELS, WINDOW_FRAMES), feats.shape
    n_audio = int((ids == AUDIO).sum())
    assert n_audio == TOKENS_PER_WINDOW * k, (n_audio, k)
    # the same request through mistral-common directly (the audio it hands to the extractor)
    enc = mt.encode_transcription(TranscriptionRequest(model=MODEL_ID, audio=wav_b64(x), language="en"))
    assert list(enc.tokens) == ids[0].tolist()
    padded = np.concatenate([x, np.zeros(k * CHUNK_SAMPLES - n, np.float32)])
    assert len(enc.audios) == 1 and np.array_equal(enc.audios[0].audio_array, padded)
    # features == WhisperFeatureExtractor(feature_size=128) on the zero-padded audio
    whole = fe(padded, sampling_rate=SR, padding="longest", truncation=False, return_tensors="pt").input_features
    whole = whole.reshape(N_MELS, k, WINDOW_FRAMES).transpose(0, 1)
    facts = dict(n_samples=n, seconds=n / SR, k_windows=k, padded_samples=len(padded),
                 features_vs_whisper_extractor_on_padded_audio_max_abs_diff=maxdiff(whole, feats))
    assert facts["features_vs_whisper_extractor_on_padded_audio_max_abs_diff"] == 0.0
    per_window = [fe(padded[i * CHUNK_SAMPLES:(i + 1) * CHUNK_SAMPLES], sampling_rate=SR,
                     return_tensors="pt").input_features[0] for i in range(k)]
    facts["features_vs_each_window_extracted_alone_max_abs_diff"] = [
        maxdiff(per_window[i], feats[i]) for i in range(k)]
    facts["features_window_max"] = [float(feats[i].max()) for i in range(k)]
    facts["features_window_min"] = [float(feats[i].min()) for i in range(k)]
    facts["features_global_floor"] = float(feats.max()) - 2.0  # (M - 8 + 4) / 4 = (M + 4) / 4 - 2
    with torch.no_grad():
        eo = m.audio_tower(feats, output_hidden_states=True)
        assert len(eo.hidden_states) == A_LAYERS + 1
        assert maxdiff(eo.hidden_states[-1], eo.last_hidden_state) == 0.0
        conv = F.gelu(m.audio_tower.conv2(F.gelu(m.audio_tower.conv1(feats)))).transpose(1, 2)
        facts["encoder_hidden_states_0_vs_conv_plus_positions_max_abs_diff"] = maxdiff(
            conv + m.audio_tower.embed_positions.weight, eo.hidden_states[0])
        af = m.get_audio_features(feats)
        audio_embeds = af.pooler_output
        assert audio_embeds.shape == (TOKENS_PER_WINDOW * k, T_DIM)
        assert maxdiff(af.last_hidden_state, eo.last_hidden_state) == 0.0
        out = model(**inp, output_hidden_states=True, use_cache=False)
        emb = m.language_model.embed_tokens(ids)
        mask = (ids == AUDIO)[..., None].expand_as(emb)
        inputs_embeds = emb.masked_scatter(mask, audio_embeds)
        assert maxdiff(out.hidden_states[0], inputs_embeds) == 0.0
        assert len(out.hidden_states) == T_LAYERS + 1
        normed = m.language_model.norm(out.hidden_states[-1])
        facts["text_hidden_states_last_is_after_final_norm"] = bool(
            maxdiff(model.lm_head(out.hidden_states[-1]), out.logits) == 0.0)
        facts["renorming_last_hidden_state_changes_it_by"] = maxdiff(normed, out.hidden_states[-1])
    gen, gen_logits = run_generate(model, inp)
    tf = teacher_forced(model, inputs_embeds, gen)
    lay = layout(ids[0].tolist())
    facts.update(
        prompt_len=int(ids.shape[1]), layout=lay,
        ids_before_audio=ids[0, :lay["audio_first"]].tolist(),
        ids_after_audio=ids[0, lay["audio_last"] + 1:].tolist(),
        greedy_ids=gen.tolist(), generated=len(gen), ends_with_eos=bool(len(gen) and gen[-1] == EOS),
        distinct_ids=len(set(gen.tolist())),
        greedy_text_ignore=mt.instruct_tokenizer.tokenizer.decode(gen.tolist(), SpecialTokenPolicy.IGNORE),
        first_step_vs_prompt_last_logits_max_abs_diff=maxdiff(gen_logits[0], out.logits[0, -1]),
        cached_steps_vs_uncached_teacher_forced_max_abs_diff=maxdiff(gen_logits, tf),
        **top2_gaps(gen_logits),
    )
    assert facts["cached_steps_vs_uncached_teacher_forced_max_abs_diff"] < 1e-3
    assert facts["n_gaps_below_1e_3"] == 0 and facts["distinct_ids"] > 4, facts
    ref[f"{tag}.audio"] = torch.from_numpy(x)
    ref[f"{tag}.input_features"] = feats
    for i, h in enumerate(eo.hidden_states):
        ref[f"{tag}.encoder_hidden_states.{i}"] = h
    ref[f"{tag}.audio_embeds"] = audio_embeds
    ref[f"{tag}.transcribe.input_ids"] = ids
    ref[f"{tag}.transcribe.inputs_embeds"] = inputs_embeds
    for i, h in enumerate(out.hidden_states):
        ref[f"{tag}.transcribe.text_hidden_states.{i}"] = h
    ref[f"{tag}.transcribe.logits_tail"] = out.logits[0, -N_TAIL:]
    if full_logits:
        ref[f"{tag}.transcribe.logits"] = out.logits
    ref[f"{tag}.transcribe.greedy_ids"] = gen
    ref[f"{tag}.transcribe.greedy_scores"] = gen_logits
    return facts, inp, out


def make_fixture(out_root, threads, converter_path):
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
    write_synthetic_tekken(tekken_path, EXTRA_SPECIAL, TEKKEN_AUDIO)
    tekken_sha = sha256(tekken_path)
    shutil.copyfile(tekken_path, os.path.join(mi_dir, "tekken.json"))
    mt = MistralTokenizer.from_file(tekken_path)
    facts["tekken"] = tekken_facts(mt)
    facts["tekken"]["audio_section"] = TEKKEN_AUDIO

    # ---------------- model
    cfg = build_config()
    torch.manual_seed(SEED)
    model = VoxtralForConditionalGeneration(cfg).to(torch.float32).eval()
    m = model.model
    with torch.no_grad():
        m.audio_tower.embed_positions.weight.copy_(sinusoids(MAX_SOURCE_POSITIONS, A_DIM))
    n_perturbed = perturb_constants(model, seed=0)
    n_params = sum(p.numel() for p in model.parameters())
    assert model.lm_head.weight.data_ptr() != m.language_model.embed_tokens.weight.data_ptr()
    model.generation_config.pad_token_id = PAD  # as convert_voxtral_weights_to_hf.py writes it
    if hasattr(model.generation_config, "_from_model_config"):
        del model.generation_config._from_model_config
    model.save_pretrained(hf_dir)
    fe = WhisperFeatureExtractor(feature_size=N_MELS)
    processor = VoxtralProcessor(feature_extractor=fe, tokenizer=MistralCommonBackend(tokenizer_path=tekken_path))
    processor.save_pretrained(hf_dir)
    facts["hf_dir_files"] = sorted(os.listdir(hf_dir))
    facts["tekken_json_unchanged_by_processor_save"] = sha256(tekken_path) == tekken_sha
    assert facts["tekken_json_unchanged_by_processor_save"]
    facts["whisper_feature_extractor"] = {k: v for k, v in fe.to_dict().items() if k != "mel_filters"}
    facts["whisper_sinusoids_formula_vs_transformers_max_abs_diff"] = maxdiff(
        whisper_sinusoids(MAX_SOURCE_POSITIONS, A_DIM), sinusoids(MAX_SOURCE_POSITIONS, A_DIM))
    assert facts["whisper_sinusoids_formula_vs_transformers_max_abs_diff"] < 1e-6

    # ---------------- inputs
    short = standard_audio()
    long_full, sr = sf.read(LONG_PATH, dtype="float32")
    assert sr == SR and long_full.ndim == 1
    long_clip = np.ascontiguousarray(long_full[: int(LONG_SECONDS * SR)])
    assert np.array_equal(np.round(long_clip.astype(np.float64) * 32768.0) / 32768.0, long_clip)

    ref = {}
    f_short, inp_short, out_short = clip_case("short", model, processor, fe, mt, short, ref, True)
    f_long, _, _ = clip_case("long", model, processor, fe, mt, long_clip, ref, False)
    f_short["source"] = "common.standard_audio() (same as voxtral_realtime_fixtures.standard_audio)"
    f_long["source"] = dict(file=LONG_REL, sha256=sha256(LONG_PATH), read="soundfile.read(dtype='float32') "
                            "(16 kHz mono PCM_16: already 16 kHz and on the 16-bit grid, no resampling)",
                            first_samples=len(long_clip))
    facts["short"], facts["long"] = f_short, f_long

    # ---------------- chat (audio understanding) on the short clip
    conversation = [{"role": "user", "content": [{"type": "audio", "base64": wav_b64(short)},
                                                 {"type": "text", "text": QUESTION}]}]
    chat_inp = processor.apply_chat_template(conversation)
    chat_ids = chat_inp["input_ids"]
    assert torch.equal(chat_inp["input_features"], inp_short["input_features"])
    mc = mt.encode_chat_completion(ChatCompletionRequest(messages=[UserMessage(content=[
        AudioChunk(input_audio=wav_b64(short)), TextChunk(text=QUESTION)])]))
    chat_gen, chat_logits = run_generate(model, chat_inp)
    facts["chat"] = dict(
        conversation=[{"role": "user", "content": [{"type": "audio", "base64": "<short clip, 16-bit WAV>"},
                                                   {"type": "text", "text": QUESTION}]}],
        prompt_len=int(chat_ids.shape[1]), layout=layout(chat_ids[0].tolist()),
        processor_ids_equal_mistral_common_chat_completion=list(mc.tokens) == chat_ids[0].tolist(),
        greedy_ids=chat_gen.tolist(), generated=len(chat_gen),
        ends_with_eos=bool(len(chat_gen) and chat_gen[-1] == EOS), distinct_ids=len(set(chat_gen.tolist())),
        **top2_gaps(chat_logits),
    )
    assert facts["chat"]["processor_ids_equal_mistral_common_chat_completion"]
    assert facts["chat"]["n_gaps_below_1e_3"] == 0 and facts["chat"]["distinct_ids"] > 4
    ref["short.chat.input_ids"] = chat_ids
    ref["short.chat.greedy_ids"] = chat_gen
    ref["short.chat.greedy_scores"] = chat_logits

    # ---------------- prompts built by mistral-common itself
    facts["prompts"] = mistral_prompts(mt, wav_b64(short), TOKENS_PER_WINDOW)
    assert expand(facts["prompts"]["transcribe"]["en"]["pieces"]) == ref["short.transcribe.input_ids"][0].tolist()
    assert expand(facts["prompts"]["chat"]["a_audio_question"]["pieces"]) == chat_ids[0].tolist()
    tok = mt.instruct_tokenizer.tokenizer
    facts["prompts"]["decode_cases"] = facts["tekken"]["decode_cases"] + [
        dict(ids=f_short["greedy_ids"], ignore=tok.decode(f_short["greedy_ids"], SpecialTokenPolicy.IGNORE),
             keep=tok.decode(f_short["greedy_ids"], SpecialTokenPolicy.KEEP),
             note="short.transcribe.greedy_ids (random model)"),
        dict(ids=facts["chat"]["greedy_ids"], ignore=tok.decode(facts["chat"]["greedy_ids"], SpecialTokenPolicy.IGNORE),
             keep=tok.decode(facts["chat"]["greedy_ids"], SpecialTokenPolicy.KEEP),
             note="short.chat.greedy_ids (random model)"),
    ]

    # ---------------- reload
    re_model = VoxtralForConditionalGeneration.from_pretrained(hf_dir).eval()
    with torch.no_grad():
        re_out = re_model(**inp_short, use_cache=False)
    facts["reload_logits_max_abs_diff"] = maxdiff(re_out.logits, out_short.logits)
    assert facts["reload_logits_max_abs_diff"] == 0.0
    assert not re_model.config.text_config.tie_word_embeddings
    del re_model
    re_proc = AutoProcessor.from_pretrained(hf_dir)
    assert isinstance(re_proc, VoxtralProcessor)
    re_inp = re_proc.apply_transcription_request(audio=short, model_id=MODEL_ID, language="en", sampling_rate=SR,
                                                 format="wav")
    assert torch.equal(re_inp["input_ids"], inp_short["input_ids"])
    assert torch.equal(re_inp["input_features"], inp_short["input_features"])
    facts["reloaded_processor_identical"] = True

    # ---------------- Mistral-native layout
    hub = load_file(os.path.join(hf_dir, "model.safetensors"))
    W = hf_to_mistral(hub)
    save_file(W, os.path.join(mi_dir, "consolidated.safetensors"))
    with open(os.path.join(mi_dir, "params.json"), "w", encoding="utf-8") as f:
        json.dump(params_json(), f, indent=2)
        f.write("\n")
    Wl = load_file(os.path.join(mi_dir, "consolidated.safetensors"))
    assert set(Wl) == set(W) and not any("embed_positions" in k for k in Wl)
    assert len(Wl) == len(hub) - 1  # everything but embed_positions
    val = dict(n_tensors=len(Wl), n_hf_tensors=len(hub))
    # independent inverse (common.rotate_half_rows) on the decoder; the encoder is copied as is
    for i in range(T_LAYERS):
        assert torch.equal(rotate_half_rows(Wl[f"layers.{i}.attention.wq.weight"], T_HEADS, T_HEAD_DIM),
                           hub[f"language_model.model.layers.{i}.self_attn.q_proj.weight"])
        assert torch.equal(rotate_half_rows(Wl[f"layers.{i}.attention.wk.weight"], T_KV, T_HEAD_DIM),
                           hub[f"language_model.model.layers.{i}.self_attn.k_proj.weight"])
        assert torch.equal(Wl[f"{ENC}transformer.layers.{i}.attention.wq.weight"],
                           hub[f"audio_tower.layers.{i}.self_attn.q_proj.weight"])
    # the converter itself
    if converter_path:
        conv, patched = load_converter(converter_path)
        new_cfg = conv.convert_config(json.loads(json.dumps(params_json())))
        a, b = flat_config(new_cfg), flat_config(model.config)
        diff = {k: [a.get(k), b.get(k)] for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}
        allowed = {"audio_config.initializer_range", "text_config.initializer_range", "text_config.bos_token_id",
                   "text_config.eos_token_id", "audio_config.head_dim", "audio_config.num_key_value_heads",
                   "text_config.sliding_window", "dtype", "transformers_version", "architectures"}
        assert set(diff) <= allowed, diff
        for k in ("audio_config.head_dim", "audio_config.num_key_value_heads"):
            assert k not in diff or diff[k][0] in (A_HEAD_DIM, A_HEADS), diff
        assert diff.get("text_config.sliding_window", [None, None])[0] is None
        conv_sd = conv.convert_state_dict(dict(Wl), new_cfg.text_config)
        conv_sd["audio_tower.embed_positions.weight"] = sinusoids(new_cfg.audio_config.max_source_positions,
                                                                  new_cfg.audio_config.hidden_size)
        assert set(conv_sd) == set(hub), set(conv_sd) ^ set(hub)
        mism = [k for k in hub if not torch.equal(conv_sd[k], hub[k])]
        assert not mism, mism
        # and a model built from the converted config + converted weights gives the same logits
        with tempfile.TemporaryDirectory() as td:
            save_file({k: v.contiguous() for k, v in conv_sd.items()}, os.path.join(td, "model.safetensors"))
            new_cfg.save_pretrained(td)
            cm = VoxtralForConditionalGeneration.from_pretrained(td).eval()
            with torch.no_grad():
                c_logits = cm(**inp_short, use_cache=False).logits
            del cm
        val["converter"] = dict(
            file=os.path.basename(converter_path), sha256=sha256(converter_path),
            found_in=("installed transformers" if converter_path.startswith(os.path.dirname(transformers.__file__))
                      else "--converter / VOXIDE_VOXTRAL_CONVERTER (transformers GitHub source)"),
            import_line_patched=(f"{CONVERTER_IMPORT_PATCH[0].strip()} -> {CONVERTER_IMPORT_PATCH[1].strip()}"
                                 if patched else False),
            convert_config_differences_vs_hf_config=diff,
            convert_state_dict_plus_sinusoids_equals_hf_state_dict=True,
            converted_checkpoint_logits_max_abs_diff=maxdiff(c_logits, out_short.logits))
        assert val["converter"]["converted_checkpoint_logits_max_abs_diff"] == 0.0
    else:
        val["converter"] = "skipped (--skip-converter)"
    # attention scores: native weights + interleaved RoPE vs HF weights + rotate-half RoPE
    with torch.no_grad():
        x = m.language_model.layers[0].input_layernorm(out_short.hidden_states[0])[0]
        T = x.shape[0]
        pos = torch.arange(T)

        def scores(wq, wk, rope):
            q = rope((x @ wq.T).view(T, T_HEADS, T_HEAD_DIM), pos, ROPE_THETA)
            k = rope((x @ wk.T).view(T, T_KV, T_HEAD_DIM), pos, ROPE_THETA).repeat_interleave(T_HEADS // T_KV, 1)
            return torch.einsum("qhd,khd->hqk", q, k) * T_HEAD_DIM ** -0.5

        hq = hub["language_model.model.layers.0.self_attn.q_proj.weight"]
        hk = hub["language_model.model.layers.0.self_attn.k_proj.weight"]
        s_hf = scores(hq, hk, rope_rotate_half)
        val["decoder_layer0_scores_native_interleaved_vs_hf_max_abs_diff"] = maxdiff(
            scores(Wl["layers.0.attention.wq.weight"], Wl["layers.0.attention.wk.weight"], rope_interleaved), s_hf)
        val["decoder_layer0_scores_negative_control_unpermuted_interleaved_max_abs_diff"] = maxdiff(
            scores(hq, hk, rope_interleaved), s_hf)
        cos, sin = m.language_model.rotary_emb(x[None], pos[None])
        qh = (x @ hq.T).view(T, T_HEADS, T_HEAD_DIM)
        q_hf, _ = apply_rotary_pos_emb(qh.transpose(0, 1)[None], qh.transpose(0, 1)[None], cos, sin)
        val["rope_rotate_half_vs_hf_apply_rotary_max_abs_diff"] = maxdiff(
            q_hf[0].transpose(0, 1), rope_rotate_half(qh, pos, ROPE_THETA))
        # whole model from the native tensors
        nat = native_forward(Wl, inp_short["input_features"], inp_short["input_ids"][0])
        val["native_forward_short_max_abs_diff"] = dict(
            audio_embeds=maxdiff(nat["audio_embeds"], ref["short.audio_embeds"]),
            logits=maxdiff(nat["logits"], out_short.logits[0]))
    assert val["decoder_layer0_scores_native_interleaved_vs_hf_max_abs_diff"] < 1e-4, val
    assert val["decoder_layer0_scores_negative_control_unpermuted_interleaved_max_abs_diff"] > 1e-2, val
    assert val["rope_rotate_half_vs_hf_apply_rotary_max_abs_diff"] < 1e-5, val
    assert all(v < 1e-3 for v in val["native_forward_short_max_abs_diff"].values()), val
    facts["mistral_native_validation"] = val

    # ---------------- save
    ref_path = os.path.join(out_root, f"{NAME}.reference.safetensors")
    tensors = save_reference(ref, ref_path, SEED, GENERATOR)
    os.chmod(ref_path, 0o644)
    with open(os.path.join(hf_dir, "config.json"), encoding="utf-8") as f:
        config_json = json.load(f)
    doc = dict(
        name=NAME, seed=SEED, generator=GENERATOR,
        versions=dict(python=sys.version.split()[0], torch=torch.__version__,
                      transformers=transformers.__version__, safetensors=safetensors.__version__,
                      numpy=np.__version__, mistral_common=mistral_common.__version__,
                      soundfile=sf.__version__),
        config_summary=dict(
            audio=dict(hidden=A_DIM, intermediate=A_FFN, layers=A_LAYERS, heads=A_HEADS, head_dim=A_HEAD_DIM,
                       mels=N_MELS, max_source_positions=MAX_SOURCE_POSITIONS, norm="LayerNorm eps 1e-5",
                       k_proj_bias=False, initializer_range=INIT_RANGE_AUDIO),
            text=dict(vocab=T_VOCAB, hidden=T_DIM, intermediate=T_FFN, layers=T_LAYERS, heads=T_HEADS,
                      kv_heads=T_KV, head_dim=T_HEAD_DIM, rope_theta=ROPE_THETA, rms_eps=EPS,
                      max_position_embeddings=MODEL_MAX_LENGTH, tie_word_embeddings=False,
                      initializer_range=INIT_RANGE_TEXT),
            audio_token_id=AUDIO, projector="linear_1 (256 -> 64) -> GELU (erf) -> linear_2 (64 -> 64), no bias"),
        n_params=int(n_params), n_perturbed=n_perturbed,
        attn_implementation=model.config._attn_implementation,
        reference_tensors={k: dict(dtype=str(v.dtype).replace("torch.", ""), shape=list(v.shape))
                           for k, v in tensors.items()},
        config_json=config_json, params_json=params_json(),
        generation_config_json=json.load(open(os.path.join(hf_dir, "generation_config.json"), encoding="utf-8")),
    )
    doc.update(facts)
    with open(os.path.join(out_root, f"{NAME}.reference.json"), "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1, ensure_ascii=False)
        f.write("\n")
    doc["_seconds"] = time.time() - t0
    return doc


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(REPO, "tests", "fixtures", "voxtral"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--converter", default=None,
                    help="path to transformers' convert_voxtral_weights_to_hf.py (not in the wheel)")
    ap.add_argument("--skip-converter", action="store_true",
                    help="run without the converter round-trip check")
    args = ap.parse_args()
    conv = None if args.skip_converter else find_converter(args.converter)
    if conv is None and not args.skip_converter:
        sys.exit("convert_voxtral_weights_to_hf.py not found: pass --converter PATH (from a transformers "
                 "checkout, src/transformers/" + CONVERTER_REL + ") or --skip-converter")
    os.makedirs(args.out, exist_ok=True)
    doc = make_fixture(args.out, args.threads, conv)

    print("\n===== summary =====")
    print(f"{NAME}: params {doc['n_params']}, perturbed {doc['n_perturbed']}, {doc['_seconds']:.1f} s")
    for sub in (f"{NAME}-hf", f"{NAME}-mistral"):
        for f in sorted(os.listdir(os.path.join(args.out, sub))):
            print(f"  {sub}/{f}: {dir_size(os.path.join(args.out, sub, f))} B")
    for suffix in (".reference.safetensors", ".reference.json"):
        print(f"  {NAME}{suffix}: {dir_size(os.path.join(args.out, NAME + suffix))} B")
    for k in ("short", "long", "chat"):
        d = doc[k]
        lay = d["layout"]
        print(f"  {k}: T {d['prompt_len']}, BEGIN_AUDIO at {lay['begin_audio_positions']}, [AUDIO] "
              f"{lay['n_audio']} at {lay['audio_first']}..{lay['audio_last']}, generated {d['generated']} "
              f"(eos {d['ends_with_eos']}, {d['distinct_ids']} distinct), min top-2 gap "
              f"{d['min_top2_logit_gap']:.3g}")
    for k in ("short", "long"):
        d = doc[k]
        print(f"  {k}: ids before audio {d['ids_before_audio']}, after {d['ids_after_audio']}; features vs "
              f"per-window extraction {d['features_vs_each_window_extracted_alone_max_abs_diff']}; cached vs "
              f"uncached {d['cached_steps_vs_uncached_teacher_forced_max_abs_diff']:.2e}")
    print(f"  reload: {doc['reload_logits_max_abs_diff']}")
    print(f"  mistral-native validation: {json.dumps(doc['mistral_native_validation'])}")
    print(f"total {args.out}: {dir_size(args.out)} B")


if __name__ == "__main__":
    main()
