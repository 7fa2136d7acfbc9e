#!/usr/bin/env python3
"""Seeded random-weight Qwen3-TTS Base speaker encoder (ECAPA-TDNN) fixture for voxide.

Model: qwen-tts 0.1.1's Qwen3TTSSpeakerEncoder, built directly from a small
Qwen3TTSSpeakerEncoderConfig (CONFIG below: the real mel front end, 128 mels, with channels
[32, 32, 32, 32, 96] instead of [512, 512, 512, 512, 1536]), seed 5501, fp32, eval(). Every conv
weight is re-drawn from N(0, (GAIN / sqrt(fan_in))^2) (ASP_CONV_GAIN for `asp.conv`, so that the
attentive pooling is far from uniform), every bias set to 0, then constant tensors are perturbed
(tools/reference/common.py perturb_constants, seed 0: the zero biases become 0.05 N(0, 1)). The
default init (kaiming-uniform) gives nearly uniform attention and squeeze-excitation gates near
0.5, where a port that dropped either would still come close. Every parameter is then rounded to
a bf16 value and stored as BF16; the f32 reference runs on exactly the stored values. Needs the
qwen environment of requirements-qwen.txt.

Input: the first 3 s (48000 samples) of corpus/librispeech/1089-134686-0000.flac (16 kHz, read
as float32 with soundfile like qwen_tts' _load_audio_to_np), resampled to 24 kHz with
librosa.resample(y, orig_sr=16000, target_sr=24000) as Qwen3TTSModel.create_voice_clone_prompt
does. The embedding comes from the package's own
Qwen3TTSForConditionalGeneration.extract_speaker_embedding (run on a shim holding this encoder):
mel_spectrogram(n_fft 1024, 128 mels, 24 kHz, hop 256, window 1024, fmin 0, fmax 12000) ->
transpose -> speaker_encoder -> [0].

Writes, under tests/fixtures/qwen3-tts/ (relative to the repository root):

    speaker-encoder/config.json        {"speaker_encoder_config": CONFIG} (every field, as the
                                       real Base config.json holds it)
    speaker-encoder/model.safetensors  the encoder's state_dict under the real checkpoint's names
                                       (`speaker_encoder.` + Qwen3TTSSpeakerEncoder state_dict keys;
                                       checked against a meta-device Qwen3TTSForConditionalGeneration
                                       with tts_model_type "base"), all BF16
    speaker.reference.safetensors      reference tensors (F32, metadata {seed, generator})
    speaker.reference.json             facts: versions, config, input, tensor list, checks, stage
                                       statistics

Reference tensors (S = 72000 samples, T = S // 256 = 281 frames, C = 32, A = 96, E = 48;
batch 1; captured with a forward pre-hook (mel) and forward hooks (the rest)):
    wav24k      [S]         the 24 kHz samples (librosa output, float32)
    mel         [T,128]     speaker_encoder input: mel_spectrogram(...).transpose(1, 2)[0]
                            (reflect pad 384 each side, no centring, periodic Hann, magnitude
                            sqrt(re^2 + im^2 + 1e-9), Slaney mel 0-12 kHz, ln(max(x, 1e-5)))
    mel_f64     [T,128]     the same formula in float64 numpy on the same f32 window and mel basis
                            (numpy_mel_f64), rounded to f32: the exact value torch's f32 STFT
                            approximates (they differ by up to ~2.3e-4 near the 1e-5 clamp)
    blocks.0    [1,C,T]     TDNN: reflect-"same" conv k5 (128 -> C), ReLU
    blocks.{1,2,3} [1,C,T]  SE-Res2Net blocks (kernel 3, dilations 2, 3, 4), residual included
    mfa         [1,A,T]     TDNN k1 over cat(blocks.1, blocks.2, blocks.3)
    asp         [1,2A,1]    attentive statistics pooling: cat(weighted mean, weighted std)
    xvector     [E]         extract_speaker_embedding output (fc, squeezed)

Run:  HF_HUB_OFFLINE=1 /work/venv/tts/bin/python tools/reference/qwen3_tts_speaker_fixtures.py
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

import librosa  # noqa: E402
import numpy as np  # noqa: E402
import safetensors  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

import qwen_tts  # noqa: E402,F401  (prints the flash-attn / sox warnings)
from qwen_tts.core.models.configuration_qwen3_tts import (  # noqa: E402
    Qwen3TTSConfig, Qwen3TTSSpeakerEncoderConfig)
from qwen_tts.core.models.modeling_qwen3_tts import (  # noqa: E402
    Qwen3TTSForConditionalGeneration, Qwen3TTSSpeakerEncoder, mel_spectrogram)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import dir_size, maxdiff, perturb_constants, save_reference, sha256  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SHARED = os.environ.get("VOXIDE_SHARED", "/work/shared")
CLIP = os.path.join(SHARED, "corpus", "librispeech", "1089-134686-0000.flac")
GENERATOR = "tools/reference/qwen3_tts_speaker_fixtures.py"
NAME = "speaker"
MODEL_DIR = "speaker-encoder"
PREFIX_NAME = "speaker_encoder."  # Qwen3TTSForConditionalGeneration.speaker_encoder
SEED = 5501
GAIN = 1.0
ASP_CONV_GAIN = 3.0
SECONDS = 3
SR = 24000
# extract_speaker_embedding's mel_spectrogram arguments (hard-coded there).
MEL = dict(n_fft=1024, num_mels=128, sampling_rate=24000, hop_size=256, win_size=1024, fmin=0, fmax=12000)

# Every field of Qwen3TTSSpeakerEncoderConfig; real values (the Python defaults, which the real
# Base config.json repeats with enc_dim = talker hidden size) in the comments.
CONFIG = dict(
    mel_dim=128,                        # 128
    enc_dim=48,                         # 1024 (0.6B) / 2048 (1.7B)
    enc_channels=[32, 32, 32, 32, 96],  # [512, 512, 512, 512, 1536]
    enc_kernel_sizes=[5, 3, 3, 3, 1],   # [5, 3, 3, 3, 1]
    enc_dilations=[1, 2, 3, 4, 1],      # [1, 2, 3, 4, 1]
    enc_attention_channels=16,          # 128
    enc_res2net_scale=4,                # 8
    enc_se_channels=16,                 # 128
    sample_rate=24000,                  # 24000
)


def stats(t):
    t = t.detach().double()
    return dict(shape=list(t.shape), mean=float(t.mean()), std=float(t.std()), max_abs=float(t.abs().max()),
                zero_fraction=float((t == 0).double().mean()))


def numpy_mel_f64(wav):
    """mel_spectrogram re-done in float64 numpy on the same f32 constants (torch.hann_window(1024),
    the f32 librosa mel basis): the exact value of the package's formula, which torch's f32 STFT
    misses by up to ~2e-4 in the quietest bins (near the 1e-5 clamp, where the FFT's absolute
    rounding error is large relative to the bin)."""
    n_fft, hop = MEL["n_fft"], MEL["hop_size"]
    basis = librosa.filters.mel(sr=SR, n_fft=n_fft, n_mels=MEL["num_mels"], fmin=MEL["fmin"],
                                fmax=MEL["fmax"]).astype(np.float64)
    pad = (n_fft - hop) // 2
    y = np.pad(wav.astype(np.float64), (pad, pad), mode="reflect")
    frames = 1 + (len(y) - n_fft) // hop
    window = torch.hann_window(MEL["win_size"]).double().numpy()
    idx = np.arange(n_fft)[None, :] + hop * np.arange(frames)[:, None]
    spec = np.fft.rfft(y[idx] * window, axis=-1)
    mag = np.sqrt(spec.real ** 2 + spec.imag ** 2 + 1e-9)
    return np.log(np.maximum(mag @ basis.T, 1e-5))  # [frames, mels]


class Capture:
    """Forward hooks on the stages, a pre-hook on the encoder input."""

    def __init__(self, enc):
        self.out = {}
        self.handles = [enc.register_forward_pre_hook(self._pre)]
        names = [f"blocks.{i}" for i in range(len(enc.blocks))] + ["mfa", "asp", "fc"]
        mods = dict(enc.named_modules())
        for n in names:
            self.handles.append(mods[n].register_forward_hook(self._hook(n)))

    def _pre(self, _m, args):
        self.out["mel"] = args[0].detach().clone()

    def _hook(self, name):
        def hook(_m, _args, out):
            assert name not in self.out, name
            self.out[name] = out.detach().clone()
        return hook

    def close(self):
        for h in self.handles:
            h.remove()


def extract(enc, wav):
    """The package's Qwen3TTSForConditionalGeneration.extract_speaker_embedding on `enc`."""
    shim = types.SimpleNamespace(speaker_encoder=enc, device=torch.device("cpu"), dtype=torch.float32)
    return Qwen3TTSForConditionalGeneration.extract_speaker_embedding(shim, audio=wav, sr=SR)


def init_weights(enc):
    """Draws every weight again from the global generator (seeded before construction)."""
    for n, p in enc.named_parameters():
        if n.endswith(".weight"):
            assert p.dim() == 3, n  # every weight is a Conv1d kernel [out, in, k]
            gain = ASP_CONV_GAIN if n == "asp.conv.weight" else GAIN
            p.normal_(0.0, gain / float(np.sqrt(p.shape[1] * p.shape[2])))
        else:
            assert n.endswith(".bias"), n
            p.zero_()


@torch.no_grad()
def make_fixture(out_root):
    t0 = time.time()
    cfg = Qwen3TTSSpeakerEncoderConfig(**CONFIG)
    torch.manual_seed(SEED)
    enc = Qwen3TTSSpeakerEncoder(cfg).float().eval()
    init_weights(enc)
    n_perturbed = perturb_constants(enc)
    for n, p in enc.named_parameters():
        p.copy_(p.to(torch.bfloat16).float())
        assert p.numel() == 1 or not bool((p.reshape(-1) == p.reshape(-1)[0]).all()), n
    assert not list(enc.named_buffers()), "buffers present"
    sd = enc.state_dict()
    n_params = sum(p.numel() for p in enc.parameters())

    # --- save
    model_dir = os.path.join(out_root, MODEL_DIR)
    os.makedirs(model_dir, exist_ok=True)
    config_json = {"speaker_encoder_config": dict(CONFIG)}
    with open(os.path.join(model_dir, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config_json, f, indent=2, sort_keys=True)
        f.write("\n")
    st_path = os.path.join(model_dir, "model.safetensors")
    save_file({PREFIX_NAME + k: v.to(torch.bfloat16).contiguous() for k, v in sd.items()}, st_path,
              metadata={"format": "pt"})
    with safe_open(st_path, "pt") as f:
        tensor_list = [(k, list(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()]
    order = {PREFIX_NAME + k: i for i, k in enumerate(sd)}
    tensor_list.sort(key=lambda t: order[t[0]])
    assert {k for k, _, _ in tensor_list} == set(order) and all(d == "BF16" for _, _, d in tensor_list)

    # names / shapes = the speaker_encoder part of a full Base model (built on the meta device;
    # the talker needs text_vocab_size, spk_id, codec_language_id and rope_scaling: no defaults)
    talker = dict(text_vocab_size=16, spk_id={}, codec_language_id={}, rope_scaling={"mrope_section": [24, 20, 20], "interleaved": True,
                                                    "rope_type": "default"})
    with torch.device("meta"):
        full = Qwen3TTSForConditionalGeneration(
            Qwen3TTSConfig(tts_model_type="base", talker_config=talker, speaker_encoder_config=dict(CONFIG)))
    full_spk = {k: list(v.shape) for k, v in full.state_dict().items() if k.startswith(PREFIX_NAME)}
    assert full_spk == {k: s for k, s, _ in tensor_list}, "names differ from Qwen3TTSForConditionalGeneration"
    del full

    # --- input
    clip, clip_sr = sf.read(CLIP, dtype="float32", always_2d=False)
    assert clip_sr == 16000 and clip.ndim == 1, (clip_sr, clip.shape)
    clip = clip[: SECONDS * clip_sr]
    wav = librosa.resample(y=clip.astype(np.float32), orig_sr=int(clip_sr), target_sr=SR)
    assert wav.dtype == np.float32 and wav.shape == (SECONDS * SR,), (wav.dtype, wav.shape)

    # --- reference run (the package's own pipeline)
    cap = Capture(enc)
    xvector = extract(enc, wav)
    cap.close()
    stages = cap.out
    mel = stages.pop("mel")
    mel_direct = mel_spectrogram(torch.from_numpy(wav).unsqueeze(0), n_fft=MEL["n_fft"], num_mels=MEL["num_mels"],
                                 sampling_rate=MEL["sampling_rate"], hop_size=MEL["hop_size"],
                                 win_size=MEL["win_size"], fmin=MEL["fmin"], fmax=MEL["fmax"]).transpose(1, 2)
    assert torch.equal(mel, mel_direct)
    frames = SECONDS * SR // MEL["hop_size"]
    assert mel.shape == (1, frames, 128), mel.shape
    assert torch.equal(stages.pop("fc")[0, :, 0], xvector)
    assert xvector.shape == (CONFIG["enc_dim"],), xvector.shape

    # --- checks
    # f64 reference (same weights, f64 activations): the f32 rounding floor of every stage
    enc64 = copy.deepcopy(enc).double()
    cap64 = Capture(enc64)
    x64 = enc64(mel.double())[0]
    cap64.close()
    f32_vs_f64 = {k: maxdiff(stages[k], cap64.out[k]) for k in stages}
    f32_vs_f64["xvector"] = maxdiff(xvector, x64)
    # zero instead of reflect padding: what a port with the wrong padding would be off by
    enc0 = copy.deepcopy(enc)
    for m in enc0.modules():
        if isinstance(m, torch.nn.Conv1d):
            m.padding_mode = "zeros"
    cap0 = Capture(enc0)
    x0 = enc0(mel)[0]
    cap0.close()
    zero_padding = {k: maxdiff(stages[k], cap0.out[k]) for k in stages}
    zero_padding["xvector"] = maxdiff(xvector, x0)
    # attentive pooling vs plain (uniform) mean / std
    h = stages["mfa"]
    uniform = torch.cat([h.mean(2), h.std(2, unbiased=False)], 1)
    attention_logits = enc.asp.conv(enc.asp.tanh(enc.asp.tdnn(torch.cat(
        [h, h.mean(2, keepdim=True).expand_as(h), h.std(2, unbiased=False, keepdim=True).expand_as(h)], 1))))
    attention = torch.softmax(attention_logits, dim=2)
    mel64 = numpy_mel_f64(wav)
    mel_err = np.abs(mel[0].double().numpy() - mel64)
    checks = dict(
        mel_equals_direct_mel_spectrogram=True,
        mel_torch_f32_vs_numpy_f64_max_abs=float(mel_err.max()),
        mel_torch_f32_vs_numpy_f64_mean_abs=float(mel_err.mean()),
        mel_torch_f32_vs_numpy_f64_max_abs_above_ln_1e_3=float(mel_err[mel64 > np.log(1e-3)].max()),
        stage_f32_vs_f64_max_abs=f32_vs_f64,
        zero_padding_vs_reflect_max_abs=zero_padding,
        asp_vs_uniform_pooling_relative=float((stages["asp"][..., 0] - uniform).norm() / uniform.norm()),
        attention_weight_times_frames_min_max=[float(attention.min() * frames), float(attention.max() * frames)],
        xvector_rms=float(xvector.norm() / np.sqrt(xvector.numel())),
    )
    assert checks["mel_torch_f32_vs_numpy_f64_max_abs"] < 5e-4, checks
    assert checks["mel_torch_f32_vs_numpy_f64_mean_abs"] < 5e-6, checks
    assert max(f32_vs_f64.values()) < 1e-4, checks
    assert zero_padding["blocks.0"] > 1e-2 and zero_padding["xvector"] > 1e-3, checks
    assert checks["asp_vs_uniform_pooling_relative"] > 1e-2, checks
    assert float(xvector.std()) > 0.1, xvector

    # --- reload: fresh encoder (other seed) from model.safetensors, strict
    torch.manual_seed(SEED + 1000)
    enc2 = Qwen3TTSSpeakerEncoder(Qwen3TTSSpeakerEncoderConfig(**config_json["speaker_encoder_config"])).eval()
    loaded = {k[len(PREFIX_NAME):]: v.float() for k, v in load_file(st_path).items()}
    missing, unexpected = enc2.load_state_dict(loaded, strict=True)
    assert not missing and not unexpected
    reload = dict(xvector_max_abs_diff=maxdiff(extract(enc2, wav), xvector))
    assert reload["xvector_max_abs_diff"] == 0.0, reload

    ref = dict(wav24k=torch.from_numpy(wav), mel=mel[0], mel_f64=torch.from_numpy(mel64).float())
    for k in [f"blocks.{i}" for i in range(len(enc.blocks))] + ["mfa", "asp"]:
        ref[k] = stages[k]
    ref["xvector"] = xvector
    ref_path = os.path.join(out_root, f"{NAME}.reference.safetensors")
    tensors = save_reference(ref, ref_path, SEED, GENERATOR)

    doc = dict(
        name=NAME, seed=SEED, perturb_seed=0, generator=GENERATOR,
        versions=dict(python=sys.version.split()[0], torch=torch.__version__,
                      transformers=transformers.__version__, qwen_tts="0.1.1", librosa=librosa.__version__,
                      soundfile=sf.__version__, safetensors=safetensors.__version__, numpy=np.__version__),
        init=dict(weights=f"N(0, (gain / sqrt(fan_in))^2), gain {GAIN} ({ASP_CONV_GAIN} for asp.conv)",
                  biases="0, then perturbed to 0.05 N(0, 1)"),
        n_params=int(n_params), n_perturbed=n_perturbed, n_rounded_to_bf16=len(sd),
        input=dict(file="corpus/librispeech/1089-134686-0000.flac", sha256=sha256(CLIP), sample_rate=16000,
                   first_samples=len(clip), resample="librosa.resample(y, orig_sr=16000, target_sr=24000)",
                   samples_24k=len(wav), frames=frames),
        mel=MEL,
        model_tensors=[dict(name=k, shape=s, dtype=d) for k, s, d in tensor_list],
        reference_tensors={k: dict(dtype=str(v.dtype).replace("torch.", ""), shape=list(v.shape))
                           for k, v in tensors.items()},
        checks=checks, reload=reload,
        stage_stats={k: stats(v) for k, v in tensors.items()},
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
        print(f"    {t['name']:60s} {t['dtype']:5s} {t['shape']}")
    print("  reference:")
    for k, v in doc["reference_tensors"].items():
        print(f"    {k:12s} {v['dtype']:7s} {v['shape']}  {doc['stage_stats'][k]}")
    print(f"  checks {json.dumps(doc['checks'], indent=1)}")
    for sub in (NAME + ".reference.safetensors", NAME + ".reference.json", MODEL_DIR):
        print(f"  {sub}: {dir_size(os.path.join(args.out, sub))} B")


if __name__ == "__main__":
    main()
