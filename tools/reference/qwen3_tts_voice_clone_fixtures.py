#!/usr/bin/env python3
"""Seeded random-weight Qwen3-TTS Base (voice clone) checkpoint and reference dumps for voxide.

Model: qwen-tts 0.1.1's Qwen3TTSForConditionalGeneration with tts_model_type "base" (talker,
code predictor and the ECAPA-TDNN speaker encoder), the talker and predictor of
qwen3_tts_fixtures.py's tiny config (INIT_RANGE 0.2) and a small speaker encoder (channels
[32, 32, 32, 32, 96], enc_dim = talker hidden 64), plus a speech tokenizer
(Qwen3TTSTokenizerV2Model) with a tiny Mimi ENCODER (MIMI below: the real structure -- causal
convs, ratios [8, 6, 5, 4], compress 2, split RVQ of 32 quantizers with 1 semantic, 16 kept --
at hidden 32) and the tiny decoder of qwen3_tts_codec_fixtures.py. Seed 4501 (talker and speaker
encoder), 4502 (speech tokenizer); fp32, eval(), "eager" attention, constant tensors perturbed
(common.py, seed 0), codebook cluster_usage = 1 + 0.5 U(0, 1) (seed 1); every parameter rounded
to a bf16 value and stored BF16 (the codebooks' buffers F32), so the f32 reference runs on
exactly the stored values. Needs the qwen environment of requirements-qwen.txt.

Writes, under tests/fixtures/qwen3-tts/:

    tiny-random-base/                config.json, generation_config.json, model.safetensors
                                     (`talker.*` + `speaker_encoder.*`), the byte-level tokenizer
                                     of qwen3_tts_fixtures.py
    tiny-random-base/speech_tokenizer/
                                     config.json (Qwen3TTSTokenizerV2Config: encoder_config =
                                     MIMI, decoder_config = DECODER), preprocessor_config.json,
                                     model.safetensors (`encoder.*` + `decoder.*`)
    voice-clone.reference.safetensors / .json

The reference clip: the first CLIP_SECONDS of CLIP (a real LibriSpeech utterance), loaded and
resampled to 24 kHz with librosa exactly as qwen_tts/inference/qwen3_tts_model.py
(`_load_audio_to_np`: librosa.load(sr=None, mono=True); `librosa.resample(orig_sr, 24000)`).

Reference tensors (H = 64, R = reference frames, P = prefill length):
    wav24k                [N]       the reference clip at 24 kHz (what both encoders read)
    mel                   [M,128]   extract_speaker_embedding's mel (frames x mels)
    xvector               [H]       model.extract_speaker_embedding(wav24k, 24000)
    ref_codes             [R,16] i64 speech tokenizer encode(wav24k, sr=24000).audio_codes[0]
    c.prefill_embeds      [P,H]     inputs_embeds handed to talker.generate
    c.trailing_text       [T,H]     trailing_text_hidden handed to talker.generate
    c.codes               [F,16] i64 greedy codes returned by model.generate
    c.talker_logits       [S,3072]  raw codec_head logits of every talker step
    c.wav (icl, e2e)      [F*1920]  Qwen3TTSModel.generate_voice_clone's decode: the codec
                                    decodes ref_codes ++ codes and the first R*1920 samples are cut

Cases c (greedy: do_sample=False, subtalker_dosample=False, repetition_penalty 1.05,
max_new_tokens 12; input ids as qwen3_tts_fixtures.py; the reference text's template
`<|im_start|>assistant\\n{ref_text}<|im_end|>\\n`):
    icl           ICL, streaming text, language english; ref text of 4 tokens: the text track
                  (ref + text + tts_eos = 12) is shorter than the codec track (codec_bos + R),
                  padded with tts_pad
    icl_long      ICL, streaming text, language auto; ref text of 40 tokens: longer than the codec
                  track, the surplus rides on the generated frames
    icl_nonstream ICL, non_streaming_mode=True
    xvec          x_vector_only_mode=True (no reference codes), streaming text, english
    e2e           ICL as voxide's Synthesizer builds it from strings with the fixture's byte-level
                  tokenizer (one token per UTF-8 byte, specials at their ids): text E2E_TEXT,
                  reference transcript E2E_REF_TEXT, english; its codes decoded as
                  generate_voice_clone does (e2e.wav)

VoiceDesign end to end (voice-design.reference.safetensors / .json): the committed tiny-random
weights and codec (qwen3_tts_fixtures.py, qwen3_tts_codec_fixtures.py) loaded strictly, the
config's tts_model_type switched to "voice_design" (the Rust test makes the same copy), ids from
strings with the byte-level tokenizer (DESIGN_TEXT, DESIGN_INSTRUCT, english), no speaker,
non_streaming_mode=True as Qwen3TTSModel.generate_voice_design defaults, greedy:
    codes   [F,16] i64   greedy codes of model.generate
    wav     [F*1920]     the speech tokenizer's decode of them (generate_voice_design's output)

Run:  HF_HUB_OFFLINE=1 /work/venv/tts/bin/python tools/reference/qwen3_tts_voice_clone_fixtures.py
"""

import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import librosa  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import EncodecFeatureExtractor  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import qwen3_tts_fixtures as tts  # noqa: E402
from common import dir_size, maxdiff, perturb_constants, save_reference  # noqa: E402
from qwen_tts.core.models.modeling_qwen3_tts import Qwen3TTSForConditionalGeneration  # noqa: E402
from qwen_tts.core.tokenizer_12hz.configuration_qwen3_tts_tokenizer_v2 import (  # noqa: E402
    Qwen3TTSTokenizerV2Config)
from qwen_tts.core.tokenizer_12hz.modeling_qwen3_tts_tokenizer_v2 import (  # noqa: E402
    Qwen3TTSTokenizerV2Model)
from qwen_tts.inference.qwen3_tts_model import Qwen3TTSModel  # noqa: E402
from qwen_tts.inference.qwen3_tts_tokenizer import Qwen3TTSTokenizer  # noqa: E402

REPO = tts.REPO
OUT = os.path.join(REPO, "tests", "fixtures", "qwen3-tts")
NAME = "tiny-random-base"
GENERATOR = "tools/reference/qwen3_tts_voice_clone_fixtures.py"
SEED, CODEC_SEED, USAGE_SEED = 4501, 4502, 1
CLIP = os.path.join(REPO, "..", "shared", "corpus", "librispeech", "1089-134686-0000.flac")
CLIP_SECONDS = 1.3

SPEAKER_ENCODER = dict(mel_dim=128, enc_dim=64, enc_channels=[32, 32, 32, 32, 96],
                       enc_kernel_sizes=[5, 3, 3, 3, 1], enc_dilations=[1, 2, 3, 4, 1],
                       enc_attention_channels=16, enc_res2net_scale=4, enc_se_channels=16,
                       sample_rate=24000)
MIMI = dict(sampling_rate=24000, frame_rate=12.5, hidden_size=32, num_filters=4,
            num_residual_layers=1, upsampling_ratios=[8, 6, 5, 4], kernel_size=7, last_kernel_size=3,
            residual_kernel_size=3, dilation_growth_rate=2, use_causal_conv=True, pad_mode="constant",
            compress=2, codebook_size=256, codebook_dim=16, num_quantizers=32,
            vector_quantization_hidden_dimension=16, num_semantic_quantizers=1, upsample_groups=32,
            num_hidden_layers=2, intermediate_size=64, num_attention_heads=4, num_key_value_heads=4,
            hidden_act="gelu", max_position_embeddings=8000, initializer_range=0.08, norm_eps=1e-5,
            rope_theta=10000.0, sliding_window=8, layer_scale_initial_scale=0.01)
DECODER_CONFIG = os.path.join(OUT, "tiny-random", "speech_tokenizer", "config.json")

REF_SHORT = [121, 122, 123, 124]
REF_LONG = [131 + i for i in range(40)]
E2E_TEXT, E2E_REF_TEXT = "Hi there.", "He hoped."
DESIGN_TEXT, DESIGN_INSTRUCT = "Good morning.", "A calm, low voice."


def byte_ids(template):
    """The fixture tokenizer's ids of `template`: specials at their ids, every other UTF-8 byte
    its own token."""
    specials = {"<|im_start|>": tts.IM_START, "<|im_end|>": tts.IM_END}
    ids, rest = [], template
    while rest:
        hit = next((k for k in specials if rest.startswith(k)), None)
        if hit:
            ids.append(specials[hit])
            rest = rest[len(hit):]
        else:
            ids.extend(rest[0].encode())
            rest = rest[1:]
    return ids


CASES = {
    "icl": dict(ref=REF_SHORT, language="english", non_streaming_mode=False, xvec_only=False),
    "icl_long": dict(ref=REF_LONG, language="auto", non_streaming_mode=False, xvec_only=False),
    "icl_nonstream": dict(ref=REF_SHORT, language="english", non_streaming_mode=True, xvec_only=False),
    "xvec": dict(ref=None, language="english", non_streaming_mode=False, xvec_only=True),
    "e2e": dict(ref="bytes", language="english", non_streaming_mode=False, xvec_only=False),
}


def ref_ids(ref):
    return [tts.IM_START, tts.ASSISTANT, tts.NEWLINE] + ref + [tts.IM_END, tts.NEWLINE]


def round_bf16(module):
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(p.to(torch.bfloat16).float())


def set_cluster_usage(module):
    g = torch.Generator().manual_seed(USAGE_SEED)
    n = 0
    with torch.no_grad():
        for name, b in module.named_buffers():
            if name.endswith("cluster_usage"):
                b.copy_(1 + 0.5 * torch.rand(b.shape, generator=g))
                n += 1
    return n


def store_bf16(path, keep_f32):
    tensors = load_file(path)
    save_file({k: (v if keep_f32(k) else v.to(torch.bfloat16)).contiguous() for k, v in tensors.items()},
              path, metadata={"format": "pt"})
    with safe_open(path, "pt") as f:
        return {k: (list(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}


def build_talker(model_dir):
    cfg = tts.make_config(64, "0b6", tts_model_type="base", speaker_encoder_config=SPEAKER_ENCODER)
    cfg.talker_config.spk_id = {}
    cfg.talker_config.spk_is_dialect = {}
    torch.manual_seed(SEED)
    model = Qwen3TTSForConditionalGeneration(cfg).float().eval()
    assert model.speaker_encoder is not None
    n_perturbed = perturb_constants(model)
    round_bf16(model)
    model.save_pretrained(model_dir, safe_serialization=True)
    cfg_path = os.path.join(model_dir, "config.json")
    with open(cfg_path, encoding="utf-8") as f:
        config_json = json.load(f)
    config_json["speaker_encoder_config"].pop("model_type", None)  # see qwen3_tts_fixtures.py
    with open(cfg_path, "w", encoding="utf-8") as f:
        json.dump(config_json, f, indent=2, sort_keys=True)
        f.write("\n")
    with open(os.path.join(model_dir, "generation_config.json"), "w", encoding="utf-8") as f:
        json.dump(tts.GENERATION_CONFIG, f, indent=2)
        f.write("\n")
    tts.write_byte_tokenizer(model_dir)
    tensors = store_bf16(os.path.join(model_dir, "model.safetensors"), lambda k: False)
    assert set(tensors) == set(model.state_dict()), "saved tensors != state_dict"
    return model, n_perturbed, tensors


def build_codec(codec_dir):
    with open(DECODER_CONFIG, encoding="utf-8") as f:
        decoder_config = json.load(f)["decoder_config"]
    cfg = Qwen3TTSTokenizerV2Config(encoder_config=MIMI, decoder_config=decoder_config,
                                    encoder_valid_num_quantizers=16)
    cfg._attn_implementation = "eager"
    cfg.encoder_config._attn_implementation = "eager"
    cfg.decoder_config._attn_implementation = "eager"
    torch.manual_seed(CODEC_SEED)
    codec = Qwen3TTSTokenizerV2Model(cfg).float().eval()
    n_usage = set_cluster_usage(codec)
    n_perturbed = perturb_constants(codec)
    round_bf16(codec)
    codec.save_pretrained(codec_dir, safe_serialization=True)
    EncodecFeatureExtractor(feature_size=1, sampling_rate=24000, padding_value=0.0).save_pretrained(codec_dir)
    keep = lambda k: k.endswith(("embedding_sum", "cluster_usage", "embed_sum", "initialized"))  # noqa: E731
    tensors = store_bf16(os.path.join(codec_dir, "model.safetensors"), keep)
    wrapper = Qwen3TTSTokenizer()
    wrapper.model = codec
    wrapper.config = codec.config
    wrapper.device = torch.device("cpu")
    wrapper.feature_extractor = EncodecFeatureExtractor(feature_size=1, sampling_rate=24000)
    return wrapper, n_perturbed, n_usage, tensors


@torch.no_grad()
def main():
    torch.set_num_threads(2)
    model_dir = os.path.join(OUT, NAME)
    codec_dir = os.path.join(model_dir, "speech_tokenizer")
    os.makedirs(codec_dir, exist_ok=True)
    model, n_perturbed, model_tensors = build_talker(model_dir)
    codec, codec_perturbed, n_usage, codec_tensors = build_codec(codec_dir)

    wav, sr = librosa.load(CLIP, sr=None, mono=True)
    wav = wav[: int(CLIP_SECONDS * sr)]
    wav24k = librosa.resample(y=wav.astype(np.float32), orig_sr=sr, target_sr=24000).astype(np.float32)

    # The high-level API end to end (its own prompt building, decode with the reference prefix).
    api = Qwen3TTSModel(model, processor=None)
    api.model.load_speech_tokenizer(codec)
    prompt_items = api.create_voice_clone_prompt(ref_audio=(wav24k, 24000), ref_text="unused",
                                                 x_vector_only_mode=False)
    ref_codes = prompt_items[0].ref_code
    xvector = prompt_items[0].ref_spk_embedding
    assert maxdiff(xvector, model.extract_speaker_embedding(wav24k, 24000)) == 0.0
    ref = dict(wav24k=torch.from_numpy(wav24k), ref_codes=ref_codes, xvector=xvector)
    from qwen_tts.core.models.modeling_qwen3_tts import mel_spectrogram
    ref["mel"] = mel_spectrogram(torch.from_numpy(wav24k).unsqueeze(0), n_fft=1024, num_mels=128,
                                 sampling_rate=24000, hop_size=256, win_size=1024, fmin=0,
                                 fmax=12000).transpose(1, 2)[0]
    R = ref_codes.shape[0]
    assert R == -(-len(wav24k) // 1920), (R, len(wav24k))

    cap = tts.Capture(model)
    facts = {}
    ids = torch.tensor([tts.INPUT_IDS], dtype=torch.int64)
    for cname, case in CASES.items():
        cap.reset()
        prompt = dict(ref_code=[None if case["xvec_only"] else ref_codes], ref_spk_embedding=[xvector],
                      x_vector_only_mode=[case["xvec_only"]], icl_mode=[not case["xvec_only"]])
        if case["ref"] == "bytes":
            text_ids = torch.tensor([byte_ids(f"<|im_start|>assistant\n{E2E_TEXT}<|im_end|>\n"
                                              "<|im_start|>assistant\n")], dtype=torch.int64)
            rid = byte_ids(f"<|im_start|>assistant\n{E2E_REF_TEXT}<|im_end|>\n")
        else:
            text_ids = ids
            rid = None if case["ref"] is None else ref_ids(case["ref"])
        rids = None if rid is None else [torch.tensor([rid], dtype=torch.int64)]
        codes_list, _ = model.generate(input_ids=[text_ids], ref_ids=rids, voice_clone_prompt=prompt,
                                       languages=[case["language"]],
                                       non_streaming_mode=case["non_streaming_mode"], **tts.GREEDY)
        codes = codes_list[0]
        kw, res = cap.gen_kwargs, cap.result
        p = cname + "."
        ref[p + "prefill_embeds"] = kw["inputs_embeds"][0]
        ref[p + "trailing_text"] = kw["trailing_text_hidden"][0]
        ref[p + "codes"] = codes
        ref[p + "talker_logits"] = torch.stack([x[0] for x in res.logits])
        if rid is not None:
            ref[p + "ref_ids"] = torch.tensor(rid, dtype=torch.int64)
        ref[p + "input_ids"] = text_ids[0]
        if cname in ("icl", "e2e"):
            # Qwen3TTSModel.generate_voice_clone's decode of ref_codes ++ codes, cut
            wavs, _ = codec.decode([{"audio_codes": torch.cat([ref_codes, codes])}])
            total = R + codes.shape[0]
            cut = int(R / total * wavs[0].shape[0])
            assert wavs[0].shape[0] == total * 1920
            # The package's cut is int(R / total * samples): float rounding can make it one
            # sample short of R * 1920 (then its clip starts with the reference's last sample).
            # Stored from R * 1920, the exact frame boundary; the cut is in the json.
            ref[p + "wav"] = torch.from_numpy(wavs[0][R * 1920:].copy())
            facts[cname + "_package_cut"] = dict(cut=cut, frame_boundary=R * 1920)
        facts[cname] = dict(case=case, prefill_len=int(kw["inputs_embeds"].shape[1]),
                            trailing_len=int(kw["trailing_text_hidden"].shape[1]), frames=int(codes.shape[0]),
                            codes=codes.tolist(),
                            min_top2_gap=min(tts.top2_gap(x[0]) for x in res.logits),
                            distinct_ids_per_group=[len(set(codes[:, g].tolist())) for g in range(16)])
    cap.close()

    tensors = save_reference(ref, os.path.join(OUT, "voice-clone.reference.safetensors"), SEED, GENERATOR)
    doc = dict(
        generator=GENERATOR, seed=SEED, codec_seed=CODEC_SEED, clip=os.path.relpath(CLIP, REPO),
        clip_seconds=CLIP_SECONDS, e2e_text=E2E_TEXT, e2e_ref_text=E2E_REF_TEXT, clip_sample_rate=int(sr), samples_24k=len(wav24k),
        versions=dict(torch=torch.__version__, transformers=transformers.__version__,
                      librosa=librosa.__version__, qwen_tts="0.1.1"),
        n_perturbed=n_perturbed, codec_perturbed=codec_perturbed, cluster_usage_buffers=n_usage,
        ref_codes=ref_codes.tolist(), xvector_std=float(xvector.std()),
        distinct_ref_codes_per_group=[len(set(ref_codes[:, g].tolist())) for g in range(16)],
        model_tensors={k: v for k, v in model_tensors.items()},
        codec_tensors={k: v for k, v in codec_tensors.items()},
        reference_tensors={k: dict(dtype=str(v.dtype).replace("torch.", ""), shape=list(v.shape))
                           for k, v in tensors.items()},
        greedy=tts.GREEDY, cases=facts,
    )
    with open(os.path.join(OUT, "voice-clone.reference.json"), "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    for cname, d in facts.items():
        if cname.endswith("package_cut"):
            print(cname, d)
            continue
        print(cname, {k: d[k] for k in ("prefill_len", "trailing_len", "frames", "min_top2_gap")})
        print("  distinct per group", d["distinct_ids_per_group"])
    print("ref codes", ref_codes.shape, "distinct", doc["distinct_ref_codes_per_group"])
    print("xvector std", doc["xvector_std"], "wav std", float(ref["icl.wav"].std()))
    print("sizes", dir_size(model_dir), dir_size(os.path.join(OUT, "voice-clone.reference.safetensors")))


@torch.no_grad()
def voice_design():
    """generate_voice_design's path on the CustomVoice fixture's weights as a VoiceDesign model."""
    from qwen_tts.core.models.configuration_qwen3_tts import Qwen3TTSConfig
    src = os.path.join(OUT, "tiny-random")
    cfg = Qwen3TTSConfig.from_pretrained(src)
    cfg.tts_model_type = "voice_design"
    tts.set_attn(cfg)
    model = Qwen3TTSForConditionalGeneration(cfg).float().eval()
    missing, unexpected = model.load_state_dict(
        {k: v.float() for k, v in load_file(os.path.join(src, "model.safetensors")).items()}, strict=True)
    assert not missing and not unexpected
    codec_cfg = Qwen3TTSTokenizerV2Config.from_pretrained(os.path.join(src, "speech_tokenizer"))
    codec_cfg.decoder_config._attn_implementation = "eager"
    codec = Qwen3TTSTokenizerV2Model(codec_cfg).float().eval()
    weights = load_file(os.path.join(src, "speech_tokenizer", "model.safetensors"))
    missing, unexpected = codec.load_state_dict({k: v.float() for k, v in weights.items()}, strict=False)
    assert not unexpected and all(k.startswith("encoder.") for k in missing)
    text_ids = torch.tensor([byte_ids(f"<|im_start|>assistant\n{DESIGN_TEXT}<|im_end|>\n"
                                      "<|im_start|>assistant\n")], dtype=torch.int64)
    instruct_ids = torch.tensor([byte_ids(f"<|im_start|>user\n{DESIGN_INSTRUCT}<|im_end|>\n")],
                                dtype=torch.int64)
    codes_list, _ = model.generate(input_ids=[text_ids], instruct_ids=[instruct_ids], languages=["english"],
                                   speakers=[None], non_streaming_mode=True, **tts.GREEDY)
    codes = codes_list[0]
    wav = codec.decode(codes.unsqueeze(0)).audio_values[0].reshape(-1)
    assert wav.shape[0] == codes.shape[0] * 1920
    ref = dict(codes=codes, wav=wav, input_ids=text_ids[0], instruct_ids=instruct_ids[0])
    tensors = save_reference(ref, os.path.join(OUT, "voice-design.reference.safetensors"), 0, GENERATOR)
    doc = dict(generator=GENERATOR, weights="tests/fixtures/qwen3-tts/tiny-random (tts_model_type -> voice_design)",
               text=DESIGN_TEXT, instruct=DESIGN_INSTRUCT, language="english", non_streaming_mode=True,
               greedy=tts.GREEDY, codes=codes.tolist(),
               reference_tensors={k: dict(dtype=str(v.dtype).replace("torch.", ""), shape=list(v.shape))
                                  for k, v in tensors.items()})
    with open(os.path.join(OUT, "voice-design.reference.json"), "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print("voice design", codes.shape, "wav std", float(wav.std()))


if __name__ == "__main__":
    main()
    voice_design()
