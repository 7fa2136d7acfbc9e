#!/usr/bin/env python3
"""Seeded random-weight Qwen3-TTS speech-tokenizer (12 Hz codec) DECODER fixture for voxide.

Model: qwen-tts 0.1.1's Qwen3TTSTokenizerV2Decoder (the `decoder` sub-module of
Qwen3TTSTokenizerV2Model; no Mimi encoder), built directly from a tiny
Qwen3TTSTokenizerV2DecoderConfig (reference-parity.md section 4.4 "Speech tokenizer"), seed 4401,
initializer_range 0.08, fp32, eval(), attention "eager" (an sdpa run is recorded as a cross-check).
Constant tensors are perturbed (tools/reference/common.py perturb_constants, seed 0) after every
codebook `cluster_usage` was set to 1 + 0.5*U(0,1) (own generator, seed 1; see CLUSTER_USAGE_SEED).
Then every parameter except the codebooks is rounded to a bf16 value and stored as BF16; the
codebooks (`embedding_sum`, `cluster_usage`) are stored as F32, unrounded. The f32 reference runs
on exactly the stored values. Needs the qwen environment of requirements-qwen.txt.

Writes, under tests/fixtures/qwen3-tts/ (relative to the repository root):

    tiny-random/speech_tokenizer/config.json
                                             Qwen3TTSTokenizerV2Config (model_type qwen3_tts_tokenizer_12hz,
                                  architectures [Qwen3TTSTokenizerV2Model]) with the tiny
                                  `decoder_config` nested and MimiConfig defaults as
                                  `encoder_config` (the encoder has NO weights in this fixture)
    tiny-random/speech_tokenizer/model.safetensors
                                   the decoder's state_dict under the real checkpoint's names
                                  (`decoder.` + Qwen3TTSTokenizerV2Decoder state_dict keys; checked
                                  against a meta-device Qwen3TTSTokenizerV2Model); BF16 except
                                  `*._codebook.{embedding_sum,cluster_usage}` (F32)
    codec.reference.safetensors   reference tensors (F32 / I64, metadata {seed, generator})
    codec.reference.json          facts: versions, config, tensor list, checks, stage statistics,
                                  architecture notes

Reference tensors (T = 23 frames, L = latent_dim 64, H = hidden 32, D = codebook_dim 32,
S = T * 1920 = 44160 samples; every stage of one batch-1 forward of `codes`, captured with
forward hooks / a wrapper of quantizer.decode; keys are the module paths inside the decoder):
    codes                              [1,16,T] i64  random ids in [0, 2048) (generator seed 0);
                                                     row 0 = semantic group (rvq_first)
    quantizer.rvq_first                [1,D,T]       rvq_first.decode(codes[:, :1])
                                                     (codebook lookup, then output_proj 16 -> 32)
    quantizer.rvq_rest                 [1,D,T]       rvq_rest.decode(codes[:, 1:]) (15 lookups summed
                                                     in group order 1..15, then output_proj)
    quantizer                          [1,D,T]       quantizer.decode(codes) = rvq_first + rvq_rest
    pre_conv                           [1,L,T]       causal conv k3 (channels-first)
    pre_transformer.input_proj         [1,T,H]       Linear L -> H
    pre_transformer.layers.{0,1}       [1,T,H]       transformer layer outputs
    pre_transformer.norm               [1,T,H]       final RMSNorm
    pre_transformer                    [1,T,L]       last_hidden_state (after output_proj H -> L)
    upsample.0.0                       [1,L,2T]      causal transposed conv (k = stride = 2)
    upsample.0.1                       [1,L,2T]      ConvNeXt block
    upsample.1.0, upsample.1.1         [1,L,4T]
    decoder.0                          [1,48,4T]     causal conv L -> 48, k7
    decoder.1                          [1,24,32T]    decoder block, rate 8
    decoder.2                          [1,12,160T]   decoder block, rate 5
    decoder.3                          [1,6,640T]    decoder block, rate 4
    decoder.4                          [1,3,S]       decoder block, rate 3
    decoder.5                          [1,3,S]       SnakeBeta
    decoder.6                          [1,1,S]       causal conv 3 -> 1, k7 (before the clamp)
    wav                                [1,1,S]       decoder(codes) = decoder.6 clamped to [-1, 1]
    wav_chunked                        [1,1,S]       chunked_decode(codes, chunk_size=8,
                                                     left_context_size=3): chunks [0,8) [5,16)
                                                     [13,23), first context*1920 samples dropped
    wav_chunked_default                [1,1,S]       chunked_decode(codes) with the defaults
                                                     (300, 25): one chunk, asserted == wav
    wav_prefix11                       [1,1,11*1920] decoder(codes[..., :11])
    codes_padded                       [1,T,16] i64  Qwen3TTSTokenizerV2Model.decode input layout
                                                     (frames x groups): codes[..., :20] transposed
                                                     + 3 frames of -1 (pad_sequence padding)
    wav_model_decode_padded            [20*1920]     Qwen3TTSTokenizerV2Model.decode(codes_padded)
                                                     .audio_values[0] (clamp codes >= 0, chunked
                                                     decode with (300, 25), cut to 1920 * number of
                                                     frames whose group-0 code is > -1)

Run:  HF_HUB_OFFLINE=1 /work/venv/tts/bin/python tools/reference/qwen3_tts_codec_fixtures.py
"""

import argparse
import copy
import json
import os
import sys
import time
import types

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import transformers  # noqa: E402
import safetensors  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

import qwen_tts  # noqa: E402,F401  (prints the flash-attn / sox warnings)
from qwen_tts.core.tokenizer_12hz.configuration_qwen3_tts_tokenizer_v2 import (  # noqa: E402
    Qwen3TTSTokenizerV2Config)
from qwen_tts.core.tokenizer_12hz.modeling_qwen3_tts_tokenizer_v2 import (  # noqa: E402
    EuclideanCodebook, Qwen3TTSTokenizerV2Decoder, Qwen3TTSTokenizerV2Model)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import dir_size, maxdiff, perturb_constants, save_reference  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
GENERATOR = "tools/reference/qwen3_tts_codec_fixtures.py"
NAME = "codec"
# The decoder lives where a checkpoint keeps its codec: the talker fixture's speech_tokenizer/.
MODEL_DIR = os.path.join("tiny-random", "speech_tokenizer")
SEED = 4401
CODES_SEED = 0
CLUSTER_USAGE_SEED = 1
ATTN = "eager"
INIT_RANGE = 0.08
T = 23
PREFIX = 11
PADDED_FRAMES = 20
CHUNK = dict(chunk_size=8, left_context_size=3)
PREFIX_NAME = "decoder."  # Qwen3TTSTokenizerV2Model.__init__: self.decoder = Qwen3TTSTokenizerV2Decoder

# Field set of the real Qwen/Qwen3-TTS-Tokenizer-12Hz (speech_tokenizer/) decoder_config, tiny
# values. Real values in the comments. `codebook_dim`, `head_dim`, `num_semantic_quantizers`,
# `semantic_codebook_size`, `vector_quantization_hidden_dimension` are not named arguments of
# Qwen3TTSTokenizerV2DecoderConfig: they land on the config through **kwargs. The reference reads
# codebook_dim (quantizer / pre_conv widths) and head_dim (attention, RoPE); it never reads
# num_semantic_quantizers (n_q_semantic is hard-coded 1), semantic_codebook_size (rvq_first has
# codebook_size entries, not 4096) or vector_quantization_hidden_dimension.
DECODER_CONFIG = dict(
    codebook_size=2048,                 # 2048
    codebook_dim=32,                    # 512 (codebook entries have codebook_dim // 2 = 16 / 256)
    vector_quantization_hidden_dimension=32,  # 512 (unused by the reference)
    num_quantizers=16,                  # 16
    num_semantic_quantizers=1,          # 1 (unused: hard-coded 1)
    semantic_codebook_size=4096,        # 4096 (unused: rvq_first has codebook_size entries)
    latent_dim=64,                      # 1024
    hidden_size=32,                     # 512
    intermediate_size=64,               # 1024
    num_hidden_layers=2,                # 8
    num_attention_heads=4,              # 16
    num_key_value_heads=4,              # 16
    head_dim=16,                        # 64 (heads * head_dim = 64 != hidden 32, as 1024 != 512)
    attention_bias=False,               # false
    attention_dropout=0.0,
    hidden_act="silu",                  # silu
    layer_scale_initial_scale=0.01,     # 0.01
    max_position_embeddings=8000,       # 8000
    rms_norm_eps=1e-5,                  # 1e-5
    rope_theta=10000,                   # 10000
    sliding_window=8,                   # 72
    upsample_rates=[8, 5, 4, 3],        # [8, 5, 4, 3]
    upsampling_ratios=[2, 2],           # [2, 2]
    decoder_dim=48,                     # 1536 (48 -> 24 -> 12 -> 6 -> 3)
    initializer_range=INIT_RANGE,       # (not in the real config)
)
TOP_CONFIG = dict(encoder_valid_num_quantizers=16, input_sample_rate=24000, output_sample_rate=24000,
                  decode_upsample_rate=1920, encode_downsample_rate=1920)
HOP = 1920

ARCHITECTURE_NOTES = dict(
    snake_beta="y = x + 1/(exp(beta) + 1e-9) * sin(x * exp(alpha))^2, alpha/beta per channel, stored in "
               "log scale (the exp is applied in forward), init zeros (-> exp 1)",
    causal_conv="F.pad(x, (k_eff - stride, extra)) with zeros, k_eff = (k-1)*dilation + 1, then Conv1d without "
                "padding; extra = right padding so the length is ceil(L/stride); every conv here has stride 1 "
                "so extra = 0 and the output length equals the input length",
    causal_trans_conv="ConvTranspose1d(kernel K, stride s, no padding), output (L-1)*s + K, then the last K - s "
                      "samples are dropped (left_pad 0, right_pad K - s) -> L*s; upsample stages K = s = factor "
                      "(nothing trimmed), decoder blocks K = 2*rate, s = rate (rate samples trimmed)",
    convnext="x + gamma * pwconv2(GELU_erf(pwconv1(LayerNorm_eps1e-6(dwconv(x)^T))))^T; dwconv is a causal "
             "depthwise conv k7 (groups = dim), pwconv1 dim -> 4*dim, gamma per channel (init 1e-6)",
    residual_unit="x + conv2(snake2(conv1(snake1(x)))), conv1 causal k7 with dilation d in (1, 3, 9), conv2 k1",
    decoder_block="SnakeBeta(in) -> causal ConvTranspose1d(in -> in/2, K = 2*rate, stride rate) -> "
                  "residual units d = 1, 3, 9 (module indices block.0 .. block.4)",
    transformer="input_proj (latent -> hidden, bias) -> layers: x += ls_attn * attn(RMSNorm(x)); "
                "x += ls_mlp * down(silu(gate(RMSNorm(x))) * up(RMSNorm(x))) -> RMSNorm -> output_proj (hidden "
                "-> latent, bias). Attention: q/k/v/o without bias, heads*head_dim may differ from hidden, no "
                "q/k norm, rotate-half RoPE theta 1e4 on positions 0..T-1, scale head_dim^-0.5, causal mask "
                "restricted to the last sliding_window keys (key j visible to query i iff i - W < j <= i). "
                "LayerScale = per-channel vector (self_attn_layer_scale.scale, mlp_layer_scale.scale)",
    quantizer="codebook vector = embedding_sum / clamp(cluster_usage, min 1e-5)[:, None] (dim codebook_dim/2); "
              "per group: F.embedding(code, table) (project_out is Identity, no tensor); rvq_first: 1 table, "
              "rvq_rest: sum of 15 tables in group order starting from 0.0; each group then output_proj = "
              "Conv1d(codebook_dim/2 -> codebook_dim, k1, no bias); result = rvq_first + rvq_rest. The "
              "input_proj Conv1d(codebook_dim -> codebook_dim/2) weights exist (encoder side) but are unused "
              "by decode",
    forward="quantizer -> pre_conv (causal k3, codebook_dim -> latent) -> pre_transformer -> upsample "
            "[transconv, ConvNeXt] x 2 -> decoder.0 (causal k7 latent -> decoder_dim) -> 4 decoder blocks -> "
            "SnakeBeta -> causal conv k7 -> 1 -> clamp(-1, 1)",
    chunked_decode="for start in 0, chunk, 2*chunk, ...: ctx = left_context if start - left_context > 0 else "
                   "start; decode codes[..., start - ctx : start + chunk] from scratch (positions restart at "
                   "0, conv states zero) and drop the first ctx*1920 samples",
)


def make_config():
    cfg = Qwen3TTSTokenizerV2Config(decoder_config=dict(DECODER_CONFIG), **TOP_CONFIG)
    cfg.architectures = ["Qwen3TTSTokenizerV2Model"]
    cfg.decoder_config._attn_implementation = ATTN
    return cfg


def codebooks(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, EuclideanCodebook)]


def is_codebook_tensor(name):
    return name.endswith("._codebook.embedding_sum") or name.endswith("._codebook.cluster_usage")


# ---------------------------------------------------------------------------------------------
# Independent re-implementation (plain torch on the state dict) used as a cross-check
# ---------------------------------------------------------------------------------------------

def _causal_conv(x, w, b, dilation=1, groups=1):
    k = (w.shape[-1] - 1) * dilation + 1
    return F.conv1d(F.pad(x, (k - 1, 0)), w, b, dilation=dilation, groups=groups)


def _trans_conv(x, w, b, stride):
    y = F.conv_transpose1d(x, w, b, stride=stride)
    trim = w.shape[-1] - stride
    return y[..., : y.shape[-1] - trim] if trim > 0 else y


def _snake(x, sd, p):
    a = torch.exp(sd[p + "alpha"])[None, :, None]
    b = torch.exp(sd[p + "beta"])[None, :, None]
    return x + 1.0 / (b + 1e-9) * torch.sin(x * a) ** 2


def _rms(x, w, eps):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def manual_decode(sd, c, codes):
    """codes [B, 16, T] -> (quantizer [B, D, T], pre_transformer [B, T, L], wav [B, 1, T*1920])."""
    def cb(p):
        return sd[p + "embedding_sum"] / sd[p + "cluster_usage"].clamp(min=1e-5)[:, None]

    def group(prefix, rows):
        q = 0.0
        for i, r in enumerate(rows):
            q = q + F.embedding(r, cb(f"{prefix}.vq.layers.{i}._codebook."))  # [B, T, D/2]
        return F.conv1d(q.transpose(1, 2), sd[f"{prefix}.output_proj.weight"])

    q = group("quantizer.rvq_first", [codes[:, 0]]) + group("quantizer.rvq_rest", list(codes[:, 1:].unbind(1)))
    x = _causal_conv(q, sd["pre_conv.conv.weight"], sd["pre_conv.conv.bias"]).transpose(1, 2)

    p = "pre_transformer."
    x = F.linear(x, sd[p + "input_proj.weight"], sd[p + "input_proj.bias"])
    B, L, _ = x.shape
    nh, nkv, hd, W = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"], c["sliding_window"]
    inv = 1.0 / (c["rope_theta"] ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
    ang = torch.arange(L, dtype=torch.float32)[:, None] * inv[None]
    cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()
    i, j = torch.arange(L)[:, None], torch.arange(L)[None]
    allowed = (j <= i) & (j > i - W)

    def rope(t):
        t1, t2 = t[..., : hd // 2], t[..., hd // 2:]
        return t * cos + torch.cat([-t2, t1], -1) * sin

    for li in range(c["num_hidden_layers"]):
        lp = f"{p}layers.{li}."
        h = _rms(x, sd[lp + "input_layernorm.weight"], c["rms_norm_eps"])
        qh = F.linear(h, sd[lp + "self_attn.q_proj.weight"]).view(B, L, nh, hd).transpose(1, 2)
        kh = F.linear(h, sd[lp + "self_attn.k_proj.weight"]).view(B, L, nkv, hd).transpose(1, 2)
        vh = F.linear(h, sd[lp + "self_attn.v_proj.weight"]).view(B, L, nkv, hd).transpose(1, 2)
        kh, vh = kh.repeat_interleave(nh // nkv, 1), vh.repeat_interleave(nh // nkv, 1)
        s = rope(qh) @ rope(kh).transpose(2, 3) * hd ** -0.5
        s = s.masked_fill(~allowed, float("-inf")).softmax(-1)
        a = (s @ vh).transpose(1, 2).reshape(B, L, nh * hd)
        x = x + sd[lp + "self_attn_layer_scale.scale"] * F.linear(a, sd[lp + "self_attn.o_proj.weight"])
        h = _rms(x, sd[lp + "post_attention_layernorm.weight"], c["rms_norm_eps"])
        m = F.linear(F.silu(F.linear(h, sd[lp + "mlp.gate_proj.weight"])) * F.linear(h, sd[lp + "mlp.up_proj.weight"]),
                     sd[lp + "mlp.down_proj.weight"])
        x = x + sd[lp + "mlp_layer_scale.scale"] * m
    x = _rms(x, sd[p + "norm.weight"], c["rms_norm_eps"])
    pre_tr = F.linear(x, sd[p + "output_proj.weight"], sd[p + "output_proj.bias"])

    x = pre_tr.transpose(1, 2)
    for ui, f in enumerate(c["upsampling_ratios"]):
        up = f"upsample.{ui}."
        x = _trans_conv(x, sd[up + "0.conv.weight"], sd[up + "0.conv.bias"], f)
        r = x
        y = _causal_conv(x, sd[up + "1.dwconv.conv.weight"], sd[up + "1.dwconv.conv.bias"], groups=x.shape[1])
        y = F.layer_norm(y.transpose(1, 2), (x.shape[1],), sd[up + "1.norm.weight"], sd[up + "1.norm.bias"], 1e-6)
        y = F.linear(F.gelu(F.linear(y, sd[up + "1.pwconv1.weight"], sd[up + "1.pwconv1.bias"])),
                     sd[up + "1.pwconv2.weight"], sd[up + "1.pwconv2.bias"])
        x = r + (sd[up + "1.gamma"] * y).transpose(1, 2)

    x = _causal_conv(x, sd["decoder.0.conv.weight"], sd["decoder.0.conv.bias"])
    for bi, rate in enumerate(c["upsample_rates"]):
        bp = f"decoder.{bi + 1}.block."
        x = _snake(x, sd, bp + "0.")
        x = _trans_conv(x, sd[bp + "1.conv.weight"], sd[bp + "1.conv.bias"], rate)
        for ri, d in enumerate((1, 3, 9)):
            rp = f"{bp}{ri + 2}."
            y = _causal_conv(_snake(x, sd, rp + "act1."), sd[rp + "conv1.conv.weight"], sd[rp + "conv1.conv.bias"], d)
            y = _causal_conv(_snake(y, sd, rp + "act2."), sd[rp + "conv2.conv.weight"], sd[rp + "conv2.conv.bias"])
            x = x + y
    n = len(c["upsample_rates"])
    x = _snake(x, sd, f"decoder.{n + 1}.")
    x = _causal_conv(x, sd[f"decoder.{n + 2}.conv.weight"], sd[f"decoder.{n + 2}.conv.bias"])
    return q, pre_tr, x.clamp(-1, 1)


# ---------------------------------------------------------------------------------------------

class StageCapture:
    def __init__(self, model):
        self.model = model
        self.enabled = False
        self.out = {}
        self.handles = []
        names = (["pre_conv", "pre_transformer", "pre_transformer.input_proj", "pre_transformer.norm"]
                 + [f"pre_transformer.layers.{i}" for i in range(len(model.pre_transformer.layers))]
                 + [f"upsample.{i}.{j}" for i in range(len(model.upsample)) for j in range(len(model.upsample[i]))]
                 + [f"decoder.{k}" for k in range(len(model.decoder))])
        mods = dict(model.named_modules())
        for n in names:
            self.handles.append(mods[n].register_forward_hook(self._hook(n)))
        q = model.quantizer
        self.orig = (q.decode, q.rvq_first.decode, q.rvq_rest.decode)
        for n, m in (("quantizer", q), ("quantizer.rvq_first", q.rvq_first), ("quantizer.rvq_rest", q.rvq_rest)):
            m.decode = self._wrap(n, m.decode)

    def _hook(self, name):
        def hook(_m, _args, out):
            if self.enabled:
                t = out.last_hidden_state if hasattr(out, "last_hidden_state") else out
                assert name not in self.out, name
                self.out[name] = t.detach().clone()
        return hook

    def _wrap(self, name, fn):
        def wrapped(codes):
            out = fn(codes)
            if self.enabled:
                assert name not in self.out, name
                self.out[name] = out.detach().clone()
            return out
        return wrapped

    def close(self):
        for h in self.handles:
            h.remove()
        q = self.model.quantizer
        q.decode, q.rvq_first.decode, q.rvq_rest.decode = self.orig
        for m in (q, q.rvq_first, q.rvq_rest):
            del m.__dict__["decode"]


def model_decode(decoder, audio_codes):
    """Qwen3TTSTokenizerV2Model.decode (the package's own code) run on this decoder without an encoder."""
    shim = types.SimpleNamespace(decoder=decoder, decode_upsample_rate=HOP,
                                 config=types.SimpleNamespace(return_dict=True))
    return Qwen3TTSTokenizerV2Model.decode(shim, audio_codes, return_dict=True).audio_values


def stats(t):
    t = t.detach().double()
    return dict(shape=list(t.shape), mean=float(t.mean()), std=float(t.std()), max_abs=float(t.abs().max()))


@torch.no_grad()
def make_fixture(out_root):
    t0 = time.time()
    cfg = make_config()
    torch.manual_seed(SEED)
    model = Qwen3TTSTokenizerV2Decoder(cfg.decoder_config).float().eval()
    assert model.config._attn_implementation == ATTN
    assert model.pre_transformer.config._attn_implementation == ATTN
    assert int(model.total_upsample) == HOP, model.total_upsample
    for t in (model.pre_conv.conv.weight, model.decoder[0].conv.weight,
              model.pre_transformer.layers[0].self_attn.q_proj.weight, model.upsample[0][1].pwconv1.weight):
        assert abs(t.std().item() / INIT_RANGE - 1) < 0.1, t.std()

    # cluster_usage: 1 + 0.5 U(0,1) (reference-parity.md section 2; common.perturb_constants would
    # give 1 + 0.1 N). Set first, so perturb_constants skips them (no longer constant).
    g = torch.Generator().manual_seed(CLUSTER_USAGE_SEED)
    cbs = codebooks(model)
    assert len(cbs) == DECODER_CONFIG["num_quantizers"], len(cbs)
    for _n, m in cbs:
        assert bool((m.cluster_usage == 1).all()) and bool((m.embedding_sum == 0).all())
        m.cluster_usage.copy_(1.0 + 0.5 * torch.rand(m.cluster_usage.shape, generator=g))
    n_perturbed = perturb_constants(model)
    sd_names = list(model.state_dict())
    # no constant tensor left (a 1-element tensor is trivially constant: decoder.6.conv.bias)
    for n, t in model.state_dict().items():
        assert t.numel() == 1 or not bool((t.reshape(-1) == t.reshape(-1)[0]).all()), n
    rounded, kept_f32 = [], []
    for n, p in model.named_parameters():
        if is_codebook_tensor(n):
            kept_f32.append(n)
            continue
        p.copy_(p.to(torch.bfloat16).float())
        rounded.append(n)
    buffers = [n for n, _ in model.named_buffers()]
    assert set(sd_names) == {n for n, _ in model.named_parameters()}, "persistent buffers present"
    n_params = sum(p.numel() for p in model.parameters())

    # --- save
    model_dir = os.path.join(out_root, MODEL_DIR)
    os.makedirs(model_dir, exist_ok=True)
    cfg.save_pretrained(model_dir)
    # save_pretrained writes `"model_type": ""` into decoder_config (a PretrainedConfig without a
    # model_type); the real file has no such key. Drop it (the config reads back either way).
    cfg_path = os.path.join(model_dir, "config.json")
    with open(cfg_path, encoding="utf-8") as f:
        config_json = json.load(f)
    assert config_json["decoder_config"].pop("model_type", "") == ""
    with open(cfg_path, "w", encoding="utf-8") as f:
        json.dump(config_json, f, indent=2, sort_keys=True)
        f.write("\n")
    st_path = os.path.join(model_dir, "model.safetensors")
    sd = model.state_dict()
    save_file({PREFIX_NAME + k: (v if is_codebook_tensor(k) else v.to(torch.bfloat16)).contiguous()
               for k, v in sd.items()}, st_path, metadata={"format": "pt"})
    with safe_open(st_path, "pt") as f:
        tensor_list = [(k, list(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()]
    order = {PREFIX_NAME + k: i for i, k in enumerate(sd_names)}
    tensor_list.sort(key=lambda t: order[t[0]])
    assert {k for k, _, _ in tensor_list} == set(order)
    assert all(d == ("F32" if is_codebook_tensor(k) else "BF16") for k, _, d in tensor_list)

    # names / shapes = the decoder part of a full Qwen3TTSTokenizerV2Model (built on the meta device)
    with torch.device("meta"):
        full = Qwen3TTSTokenizerV2Model(cfg)
    full_dec = {k: list(v.shape) for k, v in full.state_dict().items() if k.startswith(PREFIX_NAME)}
    assert full_dec == {k: s for k, s, _ in tensor_list}, "names differ from Qwen3TTSTokenizerV2Model"
    full_other_prefixes = sorted({k.split(".")[0] for k in full.state_dict() if not k.startswith(PREFIX_NAME)})
    del full

    # --- reference runs
    codes = torch.randint(0, DECODER_CONFIG["codebook_size"], (1, DECODER_CONFIG["num_quantizers"], T),
                          generator=torch.Generator().manual_seed(CODES_SEED), dtype=torch.int64)
    cap = StageCapture(model)
    cap.enabled = True
    wav = model(codes)
    cap.enabled = False
    stages = dict(cap.out)
    cap.close()
    assert wav.shape == (1, 1, T * HOP), wav.shape
    assert torch.equal(stages["quantizer"], stages["quantizer.rvq_first"] + stages["quantizer.rvq_rest"])
    assert torch.equal(stages["decoder.6"].clamp(-1, 1), wav)

    wav_chunked = model.chunked_decode(codes, **CHUNK)
    wav_chunked_default = model.chunked_decode(codes)
    assert wav_chunked.shape == wav.shape and wav_chunked_default.shape == wav.shape
    assert torch.equal(wav_chunked_default, wav), "default chunked decode (one chunk) != forward"
    wav_prefix = model(codes[..., :PREFIX])

    # chunk schedule (re-derived) and the chunks recomputed one by one
    chunks, start = [], 0
    while start < T:
        end = min(start + CHUNK["chunk_size"], T)
        ctx = CHUNK["left_context_size"] if start - CHUNK["left_context_size"] > 0 else start
        chunks.append(dict(start=start, end=end, context=ctx, decoded_frames=[start - ctx, end]))
        start = end
    rebuilt = torch.cat([model(codes[..., c["start"] - c["context"]:c["end"]])[..., c["context"] * HOP:]
                         for c in chunks], -1)
    assert torch.equal(rebuilt, wav_chunked)

    # Qwen3TTSTokenizerV2Model.decode on padded codes ([B, frames, groups], -1 padding)
    codes_padded = torch.cat([codes[..., :PADDED_FRAMES].transpose(1, 2),
                              torch.full((1, T - PADDED_FRAMES, 16), -1, dtype=torch.int64)], 1)
    wav_model = model_decode(model, codes_padded)[0]
    assert wav_model.shape == (PADDED_FRAMES * HOP,), wav_model.shape
    same = model(codes_padded.clamp(min=0).transpose(1, 2))[0, 0, :PADDED_FRAMES * HOP]
    assert torch.equal(wav_model, same)

    # out-of-range ids in Decoder.forward
    oor = {}
    for label, val in (("ge_codebook_size", 2048), ("negative", -1)):
        bad = codes.clone()
        bad[0, 3, 5] = val
        try:
            model(bad)
            oor[label] = "no error"
        except Exception as e:  # noqa: BLE001
            oor[label] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
    assert all(v != "no error" for v in oor.values()), oor

    # sdpa cross-check (same weights, attention implementation switched on the shared config)
    model.config._attn_implementation = "sdpa"
    assert model.pre_transformer.config._attn_implementation == "sdpa"
    wav_sdpa = model(codes)
    model.config._attn_implementation = ATTN

    # independent re-implementation
    mq, mpre, mwav = manual_decode({k: v.float() for k, v in sd.items()}, DECODER_CONFIG, codes)
    # sliding window is exercised: compare with an unrestricted causal mask
    big = dict(DECODER_CONFIG, sliding_window=10 ** 6)
    _, pre_nowin, wav_nowin = manual_decode({k: v.float() for k, v in sd.items()}, big, codes)

    # the same prefix test in float64: separates structural causality from f32 rounding noise
    # (the f32 kernels round differently at different sequence lengths)
    m64 = copy.deepcopy(model).double()
    prefix_diff_f64 = maxdiff(m64(codes)[..., :PREFIX * HOP], m64(codes[..., :PREFIX]))
    del m64
    prefix_diff = maxdiff(wav[..., :PREFIX * HOP], wav_prefix)
    chunk_diff = (wav_chunked - wav).abs()[0, 0]
    chunk_diff_per_chunk = [float(chunk_diff[c["start"] * HOP:c["end"] * HOP].max()) for c in chunks]
    checks = dict(
        prefix11_vs_wav_first_11_frames_max_abs_diff=prefix_diff,
        prefix11_vs_wav_first_11_frames_max_abs_diff_float64=prefix_diff_f64,
        chunked_default_equals_wav=True,
        chunked_8_3_vs_wav_max_abs_diff=float(chunk_diff.max()),
        chunked_8_3_vs_wav_max_abs_diff_per_chunk=chunk_diff_per_chunk,
        chunked_8_3_rebuilt_from_single_forwards_equal=True,
        model_decode_padded_vs_wav_first_20_frames_max_abs_diff=maxdiff(wav_model, wav[0, 0, :PADDED_FRAMES * HOP]),
        sdpa_vs_eager_wav_max_abs_diff=maxdiff(wav_sdpa, wav),
        manual_quantizer_max_abs_diff=maxdiff(mq, stages["quantizer"]),
        manual_pre_transformer_max_abs_diff=maxdiff(mpre, stages["pre_transformer"]),
        manual_wav_max_abs_diff=maxdiff(mwav, wav),
        no_sliding_window_pre_transformer_max_abs_diff=maxdiff(pre_nowin, stages["pre_transformer"]),
        no_sliding_window_wav_max_abs_diff=maxdiff(wav_nowin, wav),
        samples_clipped=int((stages["decoder.6"].abs() > 1).sum()),
    )
    assert checks["manual_quantizer_max_abs_diff"] < 1e-6, checks
    assert checks["manual_pre_transformer_max_abs_diff"] < 1e-5, checks
    assert checks["manual_wav_max_abs_diff"] < 1e-4, checks
    assert checks["sdpa_vs_eager_wav_max_abs_diff"] < 1e-4, checks
    assert checks["no_sliding_window_pre_transformer_max_abs_diff"] > 1e-3, "sliding window not exercised"
    assert prefix_diff < 1e-5, prefix_diff
    assert prefix_diff_f64 < 1e-12, prefix_diff_f64
    # per-stage causality (prefix run, stages at matching lengths)
    cap = StageCapture(model)
    cap.enabled = True
    model(codes[..., :PREFIX])
    cap.enabled = False
    pstages = dict(cap.out)
    cap.close()
    prefix_stage_diffs = {}
    for k, v in stages.items():
        pv = pstages[k]
        tdim = 1 if k.startswith("pre_transformer") else -1
        n = pv.shape[tdim]
        prefix_stage_diffs[k] = maxdiff(v.narrow(tdim, 0, n), pv)

    # --- reload: fresh decoder (other seed) from config.json + model.safetensors, strict
    cfg2 = Qwen3TTSTokenizerV2Config.from_pretrained(model_dir)
    cfg2.decoder_config._attn_implementation = ATTN
    torch.manual_seed(SEED + 1000)
    model2 = Qwen3TTSTokenizerV2Decoder(cfg2.decoder_config).float().eval()
    loaded = {k[len(PREFIX_NAME):]: v.float() for k, v in load_file(st_path).items()}
    missing, unexpected = model2.load_state_dict(loaded, strict=True)
    assert not missing and not unexpected
    reload = dict(wav_max_abs_diff=maxdiff(model2(codes), wav),
                  decoder_config_equal=cfg2.decoder_config.to_dict() == cfg.decoder_config.to_dict())
    assert reload["wav_max_abs_diff"] == 0.0, reload

    ref = dict(codes=codes)
    for k in ["quantizer.rvq_first", "quantizer.rvq_rest", "quantizer", "pre_conv", "pre_transformer.input_proj"] + \
            [f"pre_transformer.layers.{i}" for i in range(DECODER_CONFIG["num_hidden_layers"])] + \
            ["pre_transformer.norm", "pre_transformer"] + \
            [f"upsample.{i}.{j}" for i in range(2) for j in range(2)] + [f"decoder.{k}" for k in range(7)]:
        ref[k] = stages[k]
    assert set(ref) - {"codes"} == set(stages), set(stages) ^ set(ref)
    ref.update(wav=wav, wav_chunked=wav_chunked, wav_chunked_default=wav_chunked_default,
               wav_prefix11=wav_prefix, codes_padded=codes_padded, wav_model_decode_padded=wav_model)
    ref_path = os.path.join(out_root, f"{NAME}.reference.safetensors")
    tensors = save_reference(ref, ref_path, SEED, GENERATOR)

    doc = dict(
        name=NAME, seed=SEED, codes_seed=CODES_SEED, cluster_usage_seed=CLUSTER_USAGE_SEED,
        perturb_seed=0, generator=GENERATOR,
        versions=dict(python=sys.version.split()[0], torch=torch.__version__,
                      transformers=transformers.__version__, qwen_tts="0.1.1",
                      safetensors=safetensors.__version__, numpy=np.__version__),
        attn_implementation=ATTN, initializer_range=INIT_RANGE, n_params=int(n_params),
        n_perturbed=n_perturbed, n_rounded_to_bf16=len(rounded), kept_f32_unrounded=kept_f32,
        non_persistent_buffers=buffers,
        full_model_other_prefixes=full_other_prefixes,
        samples_per_frame=HOP, frames=T,
        model_tensors=[dict(name=k, shape=s, dtype=d) for k, s, d in tensor_list],
        reference_tensors={k: dict(dtype=str(v.dtype).replace("torch.", ""), shape=list(v.shape))
                           for k, v in tensors.items()},
        chunk_schedule_8_3=chunks,
        checks=checks, prefix_stage_diffs=prefix_stage_diffs, reload=reload,
        out_of_range_codes=dict(
            decoder_forward=oor,
            model_decode="Qwen3TTSTokenizerV2Model.decode: audio_lengths = (codes[..., 0] > -1).sum(1) * 1920 "
                         "(counts frames whose group-0 code is >= 0, wherever they are), then "
                         "codes.clamp(min=0) (every negative id -> 0), chunked_decode(300, 25), each wav cut to "
                         "its length. Ids >= codebook_size are not clamped: F.embedding raises IndexError. The "
                         "package's Qwen3TTSTokenizer.decode pads a list of [frames, 16] code tensors with -1 "
                         "(pad_sequence). The TTS generate never emits group-0 ids >= 2048 into the codes "
                         "(suppress_tokens [2048, 3072) except EOS; EOS is never fed back).",
        ),
        stage_stats={k: stats(v) for k, v in list(stages.items()) + [("wav", wav)]},
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
          f"rounded {doc['n_rounded_to_bf16']}, {doc['_seconds']:.1f} s, reload {doc['reload']}")
    print(f"  model.safetensors: {len(doc['model_tensors'])} tensors")
    for t in doc["model_tensors"]:
        print(f"    {t['name']:72s} {t['dtype']:5s} {t['shape']}")
    print("  reference:")
    for k, v in doc["reference_tensors"].items():
        print(f"    {k:32s} {v['dtype']:7s} {v['shape']}")
    print(f"  checks {json.dumps(doc['checks'], indent=1)}")
    print(f"  prefix stage diffs {json.dumps(doc['prefix_stage_diffs'])}")
    print(f"  out of range {json.dumps(doc['out_of_range_codes']['decoder_forward'])}")
    for k in ("quantizer", "pre_transformer", "decoder.6", "wav"):
        print(f"  {k}: {doc['stage_stats'][k]}")
    for sub in (NAME, NAME + ".reference.safetensors", NAME + ".reference.json"):
        print(f"  {sub}: {dir_size(os.path.join(args.out, sub))} B")
    print(f"  {MODEL_DIR}/model.safetensors: {dir_size(os.path.join(args.out, MODEL_DIR, 'model.safetensors'))} B")


if __name__ == "__main__":
    main()
