#!/usr/bin/env python3
"""Seeded random-weight Qwen3-TTS talker fixtures and reference dumps for voxide.

Model: qwen-tts 0.1.1's Qwen3TTSForConditionalGeneration (talker + code predictor; no speech
tokenizer, no speaker encoder: tts_model_type "custom_voice"), built from a tiny config
(reference-parity.md section 4.4), initializer_range 0.2 (see INIT_RANGE), fp32, eval(), weights rounded to bf16 values,
attn_implementation "eager" on all three configs
(top level, talker, code predictor), constant tensors perturbed with a separate generator (seed 0,
tools/reference/common.py). Needs the qwen environment of requirements-qwen.txt (torch 2.11.0,
torchaudio 2.11.0, transformers 4.57.3, qwen-tts 0.1.1 installed with --no-deps).

Writes, under tests/fixtures/qwen3-tts/ (relative to the repository root), for each model NAME:

    NAME/config.json                 save_pretrained output (Qwen3TTSConfig, model_type qwen3_tts)
    NAME/generation_config.json      the sampling defaults the package reads from a checkpoint's
                                     generation_config.json (qwen3_tts_model.py
                                     _merge_generate_kwargs hard defaults; max_new_tokens 2048)
    NAME/model.safetensors           BF16 weights, `talker.*` names (the list is in the README)
    NAME/vocab.json, merges.txt, tokenizer_config.json
                                     a byte-level tokenizer (one token per UTF-8 byte) in Qwen2's
                                     layout, added tokens at the fixture's special ids
    NAME.reference.safetensors       reference tensors (F32 / I64, metadata {seed, generator})
    NAME.reference.json              facts: versions, config, tensor list, per-case ids, codes,
                                     cross-checks, logits-processor order, greedy top-2 gaps

Models:
    tiny-random       seed 4321, code predictor hidden 64 = talker hidden: small_to_mtp_projection
                      is nn.Identity (no tensor; the 0.6B layout), tts_model_size "0b6"
    tiny-random-proj  seed 4322, code predictor hidden 32: small_to_mtp_projection is
                      Linear(64 -> 32, bias) (the 1.7B layout), tts_model_size "1b7"

Token ids are synthetic (no tokenizer). Text template
`<|im_start|>assistant\\n{text}<|im_end|>\\n<|im_start|>assistant\\n`:
    input_ids    = [1010, 77, 10] + [101, 202, 303, 404, 505, 606, 707] + [1011, 10, 1010, 77, 10]
instruction `<|im_start|>user\\n{instruct}<|im_end|>\\n`:
    instruct_ids = [1010, 88, 10, 111, 222, 333, 1011, 10]

Cases c (all through the package's own Qwen3TTSForConditionalGeneration.generate, batch 1):
    voice      speaker "tester", language "english", no instruction, streaming text (default)
    auto       speaker None, language "auto", instruction ids (VoiceDesign-like prompt)
    dialect    speaker "dylan" (spk_is_dialect "beijing_dialect"), language "auto": the dialect's
               language id 2060 takes the language slot
    nonstream  speaker "tester", language "english", non_streaming_mode=True
Greedy: do_sample=False, subtalker_dosample=False, repetition_penalty=1.05, max_new_tokens=12;
the package adds min_new_tokens=2 and suppress_tokens = [2048, 3072) minus codec EOS 2150.

Reference tensors (H = 64 talker hidden, P = prefill length, T = trailing-text length,
F = frames returned, S = talker generate steps = len(codes_raw)):
    c.input_ids              [L] i64       target text ids (L = 15)
    c.instruct_ids           [8] i64       instruction ids (auto only)
    c.prefill_embeds         [P,H]         inputs_embeds passed to talker.generate (no padding)
    c.trailing_text          [T,H]         trailing_text_hidden passed to talker.generate
                                           (streaming: text_projection(text ids[1:]) + tts_eos;
                                           nonstream: tts_pad, T = 1)
    c.tts_pad_embed          [H]           text_projection(text_embedding(tts_pad 1000))
    c.prefill_hidden         [P,H]         talker.model last_hidden_state (after the final norm)
                                           over the prefill, position ids 0..P-1 (3 equal M-RoPE
                                           streams)
    c.prefill_logits         [P,3072]      codec_head(prefill_hidden)
    c.codes                  [F,16] i64    talker_codes_list[0] returned by generate (greedy)
    c.codes_raw              [S] i64       talker.generate(...).sequences[0]: every sampled code-0
                                           id incl. a final EOS 2150 if it was produced
    c.talker_logits          [S,3072]      raw codec_head logits of every talker generate step
                                           (row 0 = prefill last position, row k = decode step k)
    c.talker_step_inputs     [S-1,H]       talker input embedding of decode step k = 1..S-1
                                           (sum of the 16 code embeddings of frame k-1 +
                                           trailing_text[k-1], or tts_pad_embed past the end)
    c.frame0_talker_input    [H]           = c.talker_step_inputs[0]
    c.frame0_predictor_logits [15,2048]    code-predictor logits of frame 0, groups 1..15 (raw
                                           lm_head[g-1] output at the last position of each of the
                                           15 predictor calls: 2-position prefill [talker last
                                           prefill hidden, codec_embedding(code 0)], then 14 steps)
    voice.sampled_codes      [F',16] i64   do_sample=True, subtalker_dosample=True, top_k 50,
                                           top_p 1.0, temperature 0.9, repetition_penalty 1.05,
                                           max_new_tokens 8, after torch.manual_seed(7) (shape only:
                                           the Rust RNG is not expected to match)

Run:  HF_HUB_OFFLINE=1 /work/venv/tts/bin/python tools/reference/qwen3_tts_fixtures.py
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
import safetensors  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

import qwen_tts  # noqa: E402,F401  (prints the flash-attn / sox warnings)
from qwen_tts.core.models.configuration_qwen3_tts import Qwen3TTSConfig  # noqa: E402
from qwen_tts.core.models.modeling_qwen3_tts import Qwen3TTSForConditionalGeneration  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import dir_size, maxdiff, perturb_constants, save_reference  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
GENERATOR = "tools/reference/qwen3_tts_fixtures.py"
ATTN = "eager"

# ---- synthetic token ids
IM_START, IM_END, TTS_PAD, TTS_BOS, TTS_EOS = 1010, 1011, 1000, 1001, 1002
ASSISTANT, USER, NEWLINE = 77, 88, 10
TEXT_IDS = [101, 202, 303, 404, 505, 606, 707]
INPUT_IDS = [IM_START, ASSISTANT, NEWLINE] + TEXT_IDS + [IM_END, NEWLINE, IM_START, ASSISTANT, NEWLINE]
INSTRUCT_IDS = [IM_START, USER, NEWLINE, 111, 222, 333, IM_END, NEWLINE]

CASES = {
    "voice": dict(speaker="tester", language="english", instruct=False, non_streaming_mode=False),
    "auto": dict(speaker=None, language="auto", instruct=True, non_streaming_mode=False),
    "dialect": dict(speaker="dylan", language="auto", instruct=False, non_streaming_mode=False),
    "nonstream": dict(speaker="tester", language="english", instruct=False, non_streaming_mode=True),
}
GREEDY = dict(do_sample=False, subtalker_dosample=False, repetition_penalty=1.05, max_new_tokens=12)
SAMPLED = dict(do_sample=True, subtalker_dosample=True, top_k=50, top_p=1.0, temperature=0.9,
               subtalker_top_k=50, subtalker_top_p=1.0, subtalker_temperature=0.9,
               repetition_penalty=1.05, max_new_tokens=8)
SAMPLED_SEED = 7

# ---- sampling defaults the package reads from generation_config.json (hard defaults of
# qwen_tts/inference/qwen3_tts_model.py _merge_generate_kwargs)
GENERATION_CONFIG = dict(do_sample=True, top_k=50, top_p=1.0, temperature=0.9, repetition_penalty=1.05,
                         subtalker_dosample=True, subtalker_top_k=50, subtalker_top_p=1.0,
                         subtalker_temperature=0.9, max_new_tokens=2048)

# Weight init std (initializer_range of the top-level, talker and code-predictor configs; each
# sub-model initialises with its own config's value). With the package default 0.02 the
# tiny-random-proj code predictor (hidden 32) hardly depends on its input: code group 15 is the
# same id in every frame and code 0 falls into a 525/1779 loop after 3 frames. 0.2 gives distinct
# codes in every group for both models (logits up to ~8 in magnitude).
INIT_RANGE = 0.2

MODELS = {
    "tiny-random": dict(seed=4321, cp_hidden=64, tts_model_size="0b6"),
    "tiny-random-proj": dict(seed=4322, cp_hidden=32, tts_model_size="1b7"),
}


def make_config(cp_hidden, tts_model_size, tts_model_type="custom_voice", speaker_encoder_config=None):
    code_predictor = dict(
        initializer_range=INIT_RANGE,
        vocab_size=2048, hidden_size=cp_hidden, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_code_groups=16,
        rope_theta=10000, rms_norm_eps=1e-6, hidden_act="silu",
    )
    talker = dict(
        initializer_range=INIT_RANGE,
        code_predictor_config=code_predictor,
        vocab_size=3072, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, rope_theta=10000,
        rms_norm_eps=1e-6, hidden_act="silu",
        # The talker's attention reads rope_scaling["mrope_section"] and ["interleaved"]
        # unconditionally; its rotary embedding reads rope_scaling["rope_type"] (no default once
        # rope_scaling is set). sum(mrope_section) must be head_dim / 2 = 8.
        rope_scaling={"mrope_section": [2, 3, 3], "interleaved": True, "rope_type": "default"},
        num_code_groups=16,
        text_hidden_size=64,
        # not a named argument of Qwen3TTSTalkerConfig: it lands on the config through **kwargs and
        # Qwen3TTSTalkerModel reads config.text_vocab_size for text_embedding
        text_vocab_size=1024,
        codec_pad_id=2148, codec_bos_id=2149, codec_eos_token_id=2150,
        codec_think_id=2154, codec_nothink_id=2155, codec_think_bos_id=2156, codec_think_eos_id=2157,
        codec_language_id={"english": 2050, "chinese": 2055, "beijing_dialect": 2060},
        spk_id={"tester": 3000, "dylan": 3001},
        spk_is_dialect={"tester": False, "dylan": "beijing_dialect"},
    )
    cfg = Qwen3TTSConfig(
        talker_config=talker, tts_model_type=tts_model_type, tts_model_size=tts_model_size,
        speaker_encoder_config=speaker_encoder_config,
        tokenizer_type="qwen3_tts_tokenizer_12hz",
        im_start_token_id=IM_START, im_end_token_id=IM_END,
        tts_pad_token_id=TTS_PAD, tts_bos_token_id=TTS_BOS, tts_eos_token_id=TTS_EOS,
        initializer_range=INIT_RANGE,
    )
    set_attn(cfg)
    return cfg


def set_attn(cfg):
    # Each sub-model resolves its own config's attention implementation (None -> sdpa), so set
    # all three explicitly.
    cfg._attn_implementation = ATTN
    cfg.talker_config._attn_implementation = ATTN
    cfg.talker_config.code_predictor_config._attn_implementation = ATTN


def attn_impls(m):
    return dict(top=m.config._attn_implementation, talker=m.talker.config._attn_implementation,
                talker_model=m.talker.model.config._attn_implementation,
                code_predictor=m.talker.code_predictor.config._attn_implementation,
                code_predictor_model=m.talker.code_predictor.model.config._attn_implementation)


class Capture:
    """Wraps talker.generate (records its inputs, adds output_logits / output_scores) and hooks
    talker.model (inputs_embeds / position ids of every call) and talker.code_predictor (logits of
    every call)."""

    def __init__(self, model):
        self.model = model
        self.orig_generate = model.talker.generate
        self.handles = []
        self.reset()

        def generate(*args, **kw):
            self.gen_kwargs = dict(kw)
            kw["output_logits"] = True
            kw["output_scores"] = True
            self.result = self.orig_generate(*args, **kw)
            return self.result

        model.talker.generate = generate

        def talker_pre(_mod, args, kwargs):
            pid = kwargs.get("position_ids")
            self.talker_calls.append(dict(inputs_embeds=kwargs["inputs_embeds"].detach().clone(),
                                          position_ids=None if pid is None else pid.detach().clone()))

        def pred_post(_mod, _args, out):
            self.pred_logits.append(out.logits[0, -1].detach().clone())

        self.handles.append(model.talker.model.register_forward_pre_hook(talker_pre, with_kwargs=True))
        self.handles.append(model.talker.code_predictor.register_forward_hook(pred_post))

    def reset(self):
        self.gen_kwargs = None
        self.result = None
        self.talker_calls = []
        self.pred_logits = []

    def close(self):
        for h in self.handles:
            h.remove()
        self.model.talker.generate = self.orig_generate


def run_generate(model, case, gen):
    ids = torch.tensor([INPUT_IDS], dtype=torch.int64)
    instruct = [torch.tensor([INSTRUCT_IDS], dtype=torch.int64)] if case["instruct"] else None
    codes_list, hidden_list = model.generate(
        input_ids=[ids], instruct_ids=instruct, languages=[case["language"]], speakers=[case["speaker"]],
        non_streaming_mode=case["non_streaming_mode"], **gen)
    return codes_list[0], hidden_list[0]


@torch.no_grad()
def manual_prefill(model, case):
    """Independent construction of the prefill / trailing text from the spec (qwen3-tts.md 6)."""
    cfg, tc = model.config, model.config.talker_config
    tp = model.talker.text_projection
    temb = model.talker.model.text_embedding
    cemb = model.talker.model.codec_embedding

    def T(ids):
        return tp(temb(torch.tensor(ids, dtype=torch.int64)))

    def C(ids):
        return cemb(torch.tensor(ids, dtype=torch.int64))

    pad, bos, eos = T([cfg.tts_pad_token_id]), T([cfg.tts_bos_token_id]), T([cfg.tts_eos_token_id])
    spk, lang = case["speaker"], case["language"]
    lang_id = None if lang == "auto" else tc.codec_language_id[lang]
    if spk and lang in ("chinese", "auto") and tc.spk_is_dialect[spk] is not False:
        lang_id = tc.codec_language_id[tc.spk_is_dialect[spk]]
    if lang_id is None:
        codec = [tc.codec_nothink_id, tc.codec_think_bos_id, tc.codec_think_eos_id]
    else:
        codec = [tc.codec_think_id, tc.codec_think_bos_id, lang_id, tc.codec_think_eos_id]
    if spk:
        codec.append(tc.spk_id[spk])
    rows = []
    if case["instruct"]:
        rows.append(T(INSTRUCT_IDS))
    rows.append(T(INPUT_IDS[:3]))
    rows.append(pad.expand(len(codec), -1) + C(codec))
    rows.append(bos + C([tc.codec_pad_id]))
    text = INPUT_IDS[3:-5]
    if case["non_streaming_mode"]:
        rows.append(torch.cat([T(text), eos]) + C([tc.codec_pad_id] * (len(text) + 1)))
        rows.append(pad + C([tc.codec_bos_id]))
        trailing = pad
    else:
        rows.append(T(text[:1]) + C([tc.codec_bos_id]))
        trailing = torch.cat([T(text[1:]), eos])
    return torch.cat(rows), trailing, pad[0]


@torch.no_grad()
def talker_forward(model, embeds):
    out = model.talker.model(inputs_embeds=embeds[None], use_cache=False)
    h = out.last_hidden_state[0]
    return h, model.talker.codec_head(h)


@torch.no_grad()
def code_embedding_sum(model, codes_row):
    emb = model.talker.model.codec_embedding(codes_row[:1])[0]
    for g in range(1, codes_row.shape[0]):
        emb = emb + model.talker.code_predictor.model.codec_embedding[g - 1](codes_row[g:g + 1])[0]
    return emb


def top2_gap(x):
    v = torch.topk(x.double(), 2).values
    return float(v[0] - v[1])


@torch.no_grad()
def run_case(model, cap, cname, case, ref, facts):
    cap.reset()
    codes, _hid = run_generate(model, case, GREEDY)
    res, kw = cap.result, cap.gen_kwargs
    pe = kw["inputs_embeds"][0]
    assert kw["attention_mask"].shape == (1, pe.shape[0]) and bool(kw["attention_mask"].all())
    trailing = kw["trailing_text_hidden"][0]
    pad = kw["tts_pad_embed"].reshape(-1)
    P, S = pe.shape[0], len(res.logits)
    raw = res.sequences[0]
    assert raw.shape == (S,), (raw.shape, S)
    F = codes.shape[0]

    # the generate internals
    assert len(cap.talker_calls) == S, (len(cap.talker_calls), S)
    step_inputs = torch.stack([c["inputs_embeds"][0, 0] for c in cap.talker_calls[1:]])
    pos = [c["position_ids"] for c in cap.talker_calls]
    prefill_pos = [[int(x) for x in row] for row in pos[0][:, 0].tolist()]  # [3][P]
    # get_rope_index builds the position ids from attention_mask.float().cumsum(-1) - 1, so they
    # are float tensors (exact small integers); the decode steps add cache_position + rope_deltas
    decode_pos = [[int(x) for x in p[:, 0, 0].tolist()] for p in pos[1:]]
    assert all(row == list(range(P)) for row in prefill_pos), prefill_pos
    assert all(p == [P + k] * 3 for k, p in enumerate(decode_pos)), decode_pos
    assert len(cap.pred_logits) == 15 * (S - 1), len(cap.pred_logits)
    pred0 = torch.stack(cap.pred_logits[:15])
    talker_logits = torch.stack([x[0] for x in res.logits])
    scores = torch.stack([x[0] for x in res.scores])

    # standalone forwards
    h, logits = talker_forward(model, pe)
    full = torch.cat([pe, step_inputs])
    _, tf_logits = talker_forward(model, full)

    # checks
    mp, mt, mpad = manual_prefill(model, case)
    emb_sum = torch.stack([code_embedding_sum(model, codes[k]) for k in range(S - 1)]) if F else None
    text_track = torch.stack([trailing[k] if k < trailing.shape[0] else pad for k in range(S - 1)])
    checks = dict(
        manual_prefill_max_abs_diff=maxdiff(mp, pe),
        manual_trailing_text_max_abs_diff=maxdiff(mt, trailing),
        manual_tts_pad_max_abs_diff=maxdiff(mpad, pad),
        prefill_last_logits_vs_generate_step0_max_abs_diff=maxdiff(logits[-1], talker_logits[0]),
        teacher_forced_vs_generate_logits_max_abs_diff=maxdiff(tf_logits[P - 1:P - 1 + S], talker_logits),
        step_inputs_vs_code_embedding_sum_plus_text_max_abs_diff=(
            maxdiff(emb_sum + text_track, step_inputs) if F == S - 1 else None),
        frame0_predictor_argmax_equals_codes=bool(
            torch.equal(pred0.argmax(-1), codes[0, 1:])) if F else None,
        codes_raw_prefix_equals_codes_col0=bool(torch.equal(raw[:F], codes[:, 0])),
        greedy_equals_argmax_of_processed_scores=bool(torch.equal(scores.argmax(-1), raw)),
    )
    for k, v in checks.items():
        if k.endswith("max_abs_diff"):
            assert v is None or v < 1e-4, (cname, k, v)
        elif v is not None:
            assert v, (cname, k)

    p = cname + "."
    ref[p + "input_ids"] = torch.tensor(INPUT_IDS, dtype=torch.int64)
    if case["instruct"]:
        ref[p + "instruct_ids"] = torch.tensor(INSTRUCT_IDS, dtype=torch.int64)
    ref[p + "prefill_embeds"] = pe
    ref[p + "trailing_text"] = trailing
    ref[p + "tts_pad_embed"] = pad
    ref[p + "prefill_hidden"] = h
    ref[p + "prefill_logits"] = logits
    ref[p + "codes"] = codes
    ref[p + "codes_raw"] = raw
    ref[p + "talker_logits"] = talker_logits
    ref[p + "talker_step_inputs"] = step_inputs
    ref[p + "frame0_talker_input"] = step_inputs[0]
    ref[p + "frame0_predictor_logits"] = pred0

    eos = model.config.talker_config.codec_eos_token_id
    fin = torch.isfinite(scores)
    facts[cname] = dict(
        case=case, prefill_len=P, trailing_len=int(trailing.shape[0]), talker_steps=S, frames=F,
        codes_raw=raw.tolist(), ends_with_eos=bool(raw[-1] == eos), codes=codes.tolist(),
        distinct_code0=sorted(set(codes[:, 0].tolist())),
        prefill_position_ids=f"3 x [0..{P - 1}] (attention_mask.float().cumsum(-1) - 1; float dtype)",
        position_ids_dtype=str(pos[0].dtype).replace("torch.", ""),
        decode_position_ids=[p[0] for p in decode_pos],
        processed_scores_finite_per_step=fin.sum(-1).tolist(),
        eos_finite_per_step=fin[:, eos].tolist(),
        min_top2_gap_processed_scores=min(top2_gap(s) for s in scores),
        min_top2_gap_frame0_predictor=min(top2_gap(x) for x in pred0),
        min_top2_gap_predictor_all_frames=min(top2_gap(x) for x in cap.pred_logits),
        distinct_ids_per_group=[len(set(codes[:, g].tolist())) for g in range(codes.shape[1])],
        checks=checks,
    )


@torch.no_grad()
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


def write_byte_tokenizer(model_dir):
    """A byte-level tokenizer in Qwen2's file layout whose added tokens carry the fixture's
    special ids: every UTF-8 byte is one token (ids 0..255, all inside the 1024-row text
    vocabulary), so the checkpoint speaks any text end to end."""
    vocab = {c: b for b, c in sorted(bytes_to_unicode().items())}
    with open(os.path.join(model_dir, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(model_dir, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
    added = {IM_START: "<|im_start|>", IM_END: "<|im_end|>", TTS_PAD: "<tts_pad>",
             TTS_BOS: "<tts_text_bos>", TTS_EOS: "<tts_text_eod>"}
    config = {"tokenizer_class": "Qwen2Tokenizer", "added_tokens_decoder": {
        str(i): dict(content=c, lstrip=False, normalized=False, rstrip=False, single_word=False,
                     special=True) for i, c in sorted(added.items())}}
    with open(os.path.join(model_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
        f.write("\n")


def make_fixture(name, spec, out_root):
    t0 = time.time()
    seed = spec["seed"]
    cfg = make_config(spec["cp_hidden"], spec["tts_model_size"])
    torch.manual_seed(seed)
    model = Qwen3TTSForConditionalGeneration(cfg).float().eval()
    n_perturbed = perturb_constants(model)
    # Stored in bf16, as the real checkpoints are (half the fixture's size): every weight is
    # rounded to a bf16 value first, so the f32 reference runs on exactly the stored weights.
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    impl = attn_impls(model)
    assert set(impl.values()) == {ATTN}, impl
    n_params = sum(p.numel() for p in model.parameters())
    for t in (model.talker.codec_head.weight, model.talker.model.layers[0].mlp.up_proj.weight,
              model.talker.code_predictor.lm_head[0].weight,
              model.talker.code_predictor.model.layers[0].self_attn.q_proj.weight):
        assert abs(t.std().item() / INIT_RANGE - 1) < 0.05, t.std()
    proj = model.talker.code_predictor.small_to_mtp_projection
    assert isinstance(proj, torch.nn.Linear) == (spec["cp_hidden"] != 64), proj

    model_dir = os.path.join(out_root, name)
    os.makedirs(model_dir, exist_ok=True)
    model.save_pretrained(model_dir, safe_serialization=True)
    # save_pretrained serialises speaker_encoder_config with "model_type": "" (it is a
    # PretrainedConfig), but Qwen3TTSSpeakerEncoderConfig.__init__ takes no **kwargs, so the
    # package could not read its own output back. Drop that key.
    cfg_path = os.path.join(model_dir, "config.json")
    with open(cfg_path, encoding="utf-8") as f:
        config_json = json.load(f)
    assert config_json["speaker_encoder_config"].pop("model_type", "") == ""
    with open(cfg_path, "w", encoding="utf-8") as f:
        json.dump(config_json, f, indent=2, sort_keys=True)
        f.write("\n")
    with open(os.path.join(model_dir, "generation_config.json"), "w", encoding="utf-8") as f:
        json.dump(GENERATION_CONFIG, f, indent=2)
        f.write("\n")
    write_byte_tokenizer(model_dir)
    st_path = os.path.join(model_dir, "model.safetensors")
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in load_file(st_path).items()},
              st_path, metadata={"format": "pt"})
    with safe_open(st_path, "pt") as f:
        tensor_list = [(k, list(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()]
    order = {k: i for i, k in enumerate(model.state_dict())}
    tensor_list.sort(key=lambda t: order[t[0]])
    assert {k for k, _, _ in tensor_list} == set(model.state_dict()), "saved tensors != state_dict"
    assert all(d == "BF16" for _, _, d in tensor_list)

    ref, facts = {}, {}
    cap = Capture(model)
    for cname, case in CASES.items():
        run_case(model, cap, cname, case, ref, facts)
    # sampled run (shape only)
    cap.reset()
    torch.manual_seed(SAMPLED_SEED)
    scodes, _ = run_generate(model, CASES["voice"], SAMPLED)
    ref["voice.sampled_codes"] = scodes
    facts["voice_sampled"] = dict(params=SAMPLED, torch_seed=SAMPLED_SEED, codes=scodes.tolist(),
                                  codes_raw=cap.result.sequences[0].tolist())
    cap.close()

    # reload: fresh model (another seed) from config.json + model.safetensors, strict
    cfg2 = Qwen3TTSConfig.from_pretrained(model_dir)
    set_attn(cfg2)
    torch.manual_seed(seed + 1000)
    model2 = Qwen3TTSForConditionalGeneration(cfg2).float().eval()
    missing, unexpected = model2.load_state_dict(load_file(st_path), strict=True)
    assert not missing and not unexpected
    _, l2 = talker_forward(model2, ref["voice.prefill_embeds"])
    c2, _ = run_generate(model2, CASES["voice"], GREEDY)
    reload = dict(prefill_logits_max_abs_diff=maxdiff(l2, ref["voice.prefill_logits"]),
                  greedy_codes_equal=bool(torch.equal(c2, ref["voice.codes"])))
    assert reload["prefill_logits_max_abs_diff"] == 0.0 and reload["greedy_codes_equal"], reload

    ref_path = os.path.join(out_root, f"{name}.reference.safetensors")
    tensors = save_reference(ref, ref_path, seed, GENERATOR)
    doc = dict(
        name=name, seed=seed, generator=GENERATOR,
        versions=dict(python=sys.version.split()[0], torch=torch.__version__,
                      transformers=transformers.__version__, qwen_tts="0.1.1",
                      safetensors=safetensors.__version__, numpy=np.__version__),
        attn_implementation=impl, n_params=int(n_params), n_perturbed=n_perturbed,
        small_to_mtp_projection=type(proj).__name__,
        model_tensors=[dict(name=k, shape=s) for k, s, _ in tensor_list],
        input_ids=INPUT_IDS, instruct_ids=INSTRUCT_IDS, greedy=GREEDY,
        talker_generate_kwargs_added_by_package=dict(
            min_new_tokens=2, eos_token_id=model.config.talker_config.codec_eos_token_id,
            suppress_tokens="range(vocab_size - 1024, vocab_size) minus codec_eos_token_id = [2048, 3072) \\ {2150}"),
        logits_processor_order=[
            "RepetitionPenalty(1.05) over the code-0 ids generated so far (the prompt is inputs_embeds only, "
            "so input_ids start empty): x<0 -> x*1.05, else x/1.05",
            "MinNewTokensLength(2): EOS -> -inf while fewer than 2 tokens were generated",
            "SuppressTokens: [2048, 3072) minus EOS -> -inf",
            "sampling only: Temperature, TopK, TopP"],
        reload=reload,
        reference_tensors={k: dict(dtype=str(v.dtype).replace("torch.", ""), shape=list(v.shape))
                           for k, v in tensors.items()},
        config_json=config_json,
    )
    doc.update(facts)
    with open(os.path.join(out_root, f"{name}.reference.json"), "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1, ensure_ascii=False)
        f.write("\n")
    doc["_seconds"] = time.time() - t0
    return doc


def self_check(out_root, name):
    path = os.path.join(out_root, f"{name}.reference.safetensors")
    with safe_open(path, "pt") as f:
        meta = f.metadata()
        print(f"  {name}.reference.safetensors metadata {meta}")
        for k in f.keys():
            t = f.get_tensor(k)
            print(f"    {k:32s} {str(t.dtype).replace('torch.', ''):7s} {list(t.shape)}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(REPO, "tests", "fixtures", "qwen3-tts"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", choices=list(MODELS))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    names = [args.only] if args.only else list(MODELS)
    docs = {n: make_fixture(n, MODELS[n], args.out) for n in names}

    print("\n===== summary =====")
    for n, doc in docs.items():
        print(f"{n}: seed {doc['seed']}, params {doc['n_params']}, perturbed {doc['n_perturbed']}, "
              f"attn {doc['attn_implementation']['talker']}, {doc['_seconds']:.1f} s, "
              f"reload {doc['reload']}")
        print(f"  model.safetensors: {len(doc['model_tensors'])} tensors")
        for t in doc["model_tensors"]:
            print(f"    {t['name']:70s} {t['shape']}")
        for c in list(CASES):
            d = doc[c]
            print(f"  {c}: P {d['prefill_len']}, T {d['trailing_len']}, steps {d['talker_steps']}, "
                  f"frames {d['frames']}, eos {d['ends_with_eos']}, codes_raw {d['codes_raw']}, "
                  f"min gap {d['min_top2_gap_processed_scores']:.2e} / predictor "
                  f"{d['min_top2_gap_frame0_predictor']:.2e}")
            print(f"    checks {json.dumps(d['checks'])}")
        print(f"  voice greedy codes:\n{torch.tensor(doc['voice']['codes'])}")
        print(f"  voice sampled codes shape {list(torch.tensor(doc['voice_sampled']['codes']).shape)}")
        for sub in (n, n + ".reference.safetensors", n + ".reference.json"):
            print(f"  {sub}: {dir_size(os.path.join(args.out, sub))} B")
        self_check(args.out, n)
    print(f"total {args.out}: {dir_size(args.out)} B")


if __name__ == "__main__":
    main()
