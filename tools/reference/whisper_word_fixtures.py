#!/usr/bin/env python3
"""Word-timestamp references for voxide: openai-whisper's transcribe(word_timestamps=True).

Reads the committed random-weight models of tools/reference/whisper_fixtures.py
(tests/fixtures/whisper/<name>/, Hugging Face layout), loads them into openai-whisper with the
alignment heads of their generation_config.json (openai-whisper's default, every head of the
second half of the decoder layers, when it names none), and writes

    tests/fixtures/whisper/<name>.words.json

with, per case, every window's tokens and every segment with its words, as
transcribe(word_timestamps=True, temperature=0) returns them:

    tiny-random  jfk (greedy), jfk (beam search 5), the long-form FLEURS file (greedy, and
                 without timestamps: one segment per window, every window's text aligned);
                 openai-whisper's long-form options on the same files: clip_timestamps (with
                 and without words), carry_initial_prompt (a short prompt, and one longer
                 than half the text context), hallucination_silence_threshold (jfk, and the
                 long-form file from 70 s on; thresholds that reach the end of the file and
                 the end of a window); suppress_tokens on jfk: none, the default set and two
                 ids, two ids alone
    v3-random    jfk; its generation_config names alignment heads of its own
    en-random    jfk; its generation_config names none

Cases are transcribed with word_timestamps=True unless they say otherwise. --cases
recomputes only the named cases, keeping the rest of an existing file.

Run with the pinned environment of requirements.txt (see README.md).
"""

import argparse
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import soundfile as sf  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from whisper.model import ModelDimensions, Whisper  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from whisper_fixtures import JFK, LONGFORM, REPO, hf_to_openai_name, run_transcribe  # noqa: E402

GENERATOR = "tools/reference/whisper_word_fixtures.py"
# Three stretches, the last open to the end; their bounds fall inside windows, not on them.
CLIPS = "5,20.5,31.25,52,80"
PROMPT = "Vocabulary: Voxide, Whisper, FLEURS."
CASES = {
    "tiny-random": [("jfk", JFK, {}), ("jfk_beam5", JFK, dict(beam_size=5)),
                    ("longform", LONGFORM, dict(language="en")),
                    ("longform_notimestamps", LONGFORM,
                     dict(language="en", without_timestamps=True)),
                    ("longform_clips", LONGFORM, dict(language="en", clip_timestamps=CLIPS)),
                    ("longform_clips_nowords", LONGFORM,
                     dict(language="en", clip_timestamps=CLIPS, word_timestamps=False)),
                    ("longform_carry_prompt", LONGFORM,
                     dict(language="en", initial_prompt=PROMPT, carry_initial_prompt=True,
                          word_timestamps=False)),
                    ("longform_carry_long_prompt", LONGFORM,
                     dict(language="en", initial_prompt=" ".join([PROMPT] * 40),
                          carry_initial_prompt=True, word_timestamps=False)),
                    ("jfk_suppress_none", JFK, dict(suppress_tokens="", word_timestamps=False)),
                    ("jfk_suppress_more", JFK,
                     dict(suppress_tokens="-1,561,38168", word_timestamps=False)),
                    ("jfk_suppress_only", JFK, dict(suppress_tokens="561", word_timestamps=False)),
                    ("jfk_hallucination", JFK, dict(hallucination_silence_threshold=0.5)),
                    ("jfk_hallucination_8s", JFK, dict(hallucination_silence_threshold=8.0)),
                    ("longform_hallucination_25s", LONGFORM,
                     dict(language="en", clip_timestamps="70",
                          hallucination_silence_threshold=25.0)),
                    ("longform_hallucination", LONGFORM,
                     dict(language="en", clip_timestamps="70",
                          hallucination_silence_threshold=3.0))],
    "v3-random": [("jfk", JFK, {})],
    "en-random": [("jfk", JFK, {})],
}


def load_openai(model_dir):
    with open(os.path.join(model_dir, "config.json")) as f:
        c = json.load(f)
    with open(os.path.join(model_dir, "generation_config.json")) as f:
        gen = json.load(f)
    dims = ModelDimensions(
        n_mels=c["num_mel_bins"], n_audio_ctx=c["max_source_positions"],
        n_audio_state=c["d_model"], n_audio_head=c["encoder_attention_heads"],
        n_audio_layer=c["encoder_layers"], n_vocab=c["vocab_size"],
        n_text_ctx=c["max_target_positions"], n_text_state=c["d_model"],
        n_text_head=c["decoder_attention_heads"], n_text_layer=c["decoder_layers"])
    om = Whisper(dims)
    sd = {}
    for k, v in load_file(os.path.join(model_dir, "model.safetensors")).items():
        nk = hf_to_openai_name(k)
        if nk is not None:
            sd[nk] = v
    missing, unexpected = om.load_state_dict(sd, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    heads = gen.get("alignment_heads")
    if heads is not None:
        mask = torch.zeros(dims.n_text_layer, dims.n_text_head, dtype=torch.bool)
        for layer, head in heads:
            mask[layer, head] = True
        om.register_buffer("alignment_heads", mask.to_sparse(), persistent=False)
    used = [[int(l), int(h)] for l, h in om.alignment_heads.indices().T.tolist()]
    return om.to(torch.float32).eval(), heads, used


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", default=os.path.join(REPO, "tests", "fixtures", "whisper"))
    ap.add_argument("--only", nargs="*", help="subset of model names")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cases", nargs="*", help="recompute only these cases")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    audio = {}
    for path in (JFK, LONGFORM):
        samples, sr = sf.read(path, dtype="float32")
        assert sr == 16000 and samples.ndim == 1
        audio[path] = samples
    for name, cases in CASES.items():
        if args.only and name not in args.only:
            continue
        om, configured, used = load_openai(os.path.join(args.dir, name))
        out = os.path.join(args.dir, f"{name}.words.json")
        doc = dict(name=name, generator=GENERATOR, alignment_heads_configured=configured,
                   alignment_heads_used=used)
        if args.cases:
            with open(out, encoding="utf-8") as f:
                doc = json.load(f)
        for key, path, kw in cases:
            if args.cases and key not in args.cases:
                continue
            r = run_transcribe(om, audio[path], **{"word_timestamps": True, **kw})
            r["audio"] = os.path.relpath(path, os.path.join(REPO, "..", "shared"))
            doc[key] = r
            words = sum(len(s.get("words", [])) for s in r["segments"])
            print(f"{name} {key}: {r['n_windows']} windows, seeks "
                  f"{[w['seek'] for w in r['windows']]}, {len(r['segments'])} segments, "
                  f"{words} words", flush=True)
        with open(out, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1, ensure_ascii=False)
            f.write("\n")


if __name__ == "__main__":
    main()
