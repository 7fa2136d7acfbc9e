#!/usr/bin/env python3
"""Batched-transcription references for voxide: faster-whisper's BatchedInferencePipeline.

Converts the committed random-weight model tests/fixtures/whisper/tiny-random (Hugging Face
layout) to CTranslate2 (float32, in a temporary directory), runs faster-whisper's
`BatchedInferencePipeline.transcribe` on the 151 s long-form file of the corpus, and writes

    tests/fixtures/whisper/tiny-random.batched.json

with the speech segments its VAD found (`get_speech_timestamps` with the batched pipeline's
options: chunks of at most 30 s, silences of 160 ms), the chunks it cut from the joined
speech (`collect_chunks`: offset and duration), each chunk's encoder input (its frame count
and the sum of each mel bin over the 3000 padded frames: the random model hears little of
its audio, so the tokens alone would not show a feature that differs), and per case every segment it returned
(seek, start, end, tokens, text, avg_logprob, no_speech_prob) and the language.

Cases (greedy: beam_size=1, temperature 0; random weights never end a text, so every chunk
runs to the length bound: without max_new_tokens CTranslate2 takes half its 448-token
max_length, 224 tokens, openai-whisper's sample_len — with it, half of prompt + max_new_tokens,
a rule of its own, so the cases leave it unset):

    timestamps        without_timestamps=False, language "en", batch_size 4
    notimestamps      the pipeline's default without_timestamps=True (one segment per chunk)
    detect            no language: detected on the chunks' features joined
    prompt            an initial_prompt before every chunk's tokens (one that starts with a
                      space: see PROMPT)
    clips             clip_timestamps instead of the VAD: three stretches, each a chunk

Run with faster-whisper 1.2.1, ctranslate2 4.8.5 and the transformers of requirements.txt
(the converter), e.g. /work/venv/ref/bin/pip install faster-whisper==1.2.1 ctranslate2==4.8.5.
"""

import json
import os
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import ctranslate2  # noqa: E402
import faster_whisper  # noqa: E402
from ctranslate2.converters import TransformersConverter  # noqa: E402
import numpy as np  # noqa: E402
from faster_whisper import BatchedInferencePipeline, WhisperModel, decode_audio  # noqa: E402
from faster_whisper.audio import pad_or_trim  # noqa: E402
from faster_whisper.vad import VadOptions, collect_chunks, get_speech_timestamps  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHARED = os.environ.get("VOXIDE_SHARED", os.path.join(os.path.dirname(REPO), "shared"))
AUDIO = "corpus/longform/en_concat_jfk_librispeech_fleurs.wav"
MODEL = os.path.join(REPO, "tests/fixtures/whisper/tiny-random")
OUT = os.path.join(REPO, "tests/fixtures/whisper/tiny-random.batched.json")
BATCH_SIZE = 4
# With its leading space: the batched pipeline encodes the prompt as given, where
# openai-whisper (and faster-whisper's sequential pipeline, and voxide) encode " " + the
# prompt stripped; the two agree on a prompt that starts with one space.
PROMPT = " Vocabulary: Voxide, Whisper, FLEURS."
CASES = {
    "timestamps": dict(language="en", without_timestamps=False),
    "notimestamps": dict(language="en"),
    "detect": dict(language=None, without_timestamps=False),
    "prompt": dict(language="en", initial_prompt=PROMPT, without_timestamps=False),
    # Stretches given instead of the VAD's: each a chunk at its own times (VAD not run).
    "clips": dict(language="en", without_timestamps=False,
                  clip_timestamps=[dict(start=5.0, end=20.5), dict(start=31.25, end=52.0),
                                   dict(start=80.0, end=95.0)]),
}


def main():
    with tempfile.TemporaryDirectory() as ct2_dir:
        TransformersConverter(MODEL, copy_files=["tokenizer.json", "preprocessor_config.json"]
                              ).convert(ct2_dir, force=True)
        model = WhisperModel(ct2_dir, device="cpu", compute_type="float32", cpu_threads=2)
        pipeline = BatchedInferencePipeline(model)
        audio = decode_audio(os.path.join(SHARED, AUDIO), sampling_rate=16000)
        # The batched pipeline's VAD options (its `transcribe` builds the same).
        vad = VadOptions(max_speech_duration_s=30, min_silence_duration_ms=160)
        speech = get_speech_timestamps(audio, vad)
        audio_chunks, chunks = collect_chunks(audio, speech, max_duration=30)
        # Each chunk's encoder input as the pipeline builds it: its own log-mel, the last
        # frame dropped, padded to 3000 frames; kept as its frame count and per-bin sums.
        features = [model.feature_extractor(c)[..., :-1] for c in audio_chunks]
        padded = [pad_or_trim(f) for f in features]
        out = {
            "generator": "tools/reference/whisper_batched_fixtures.py",
            "versions": {"faster_whisper": faster_whisper.__version__,
                         "ctranslate2": ctranslate2.__version__},
            "audio": AUDIO,
            "batch_size": BATCH_SIZE,
            "speech": [[s["start"], s["end"]] for s in speech],
            "chunks": [[c["offset"], c["duration"]] for c in chunks],
            "features": [dict(frames=f.shape[-1], bin_sums=p.astype(np.float64).sum(-1).tolist())
                         for f, p in zip(features, padded)],
            "cases": {},
        }
        for name, options in CASES.items():
            segments, info = pipeline.transcribe(
                audio, batch_size=BATCH_SIZE, beam_size=1, temperature=0.0, **options)
            out["cases"][name] = {
                "options": options,
                "language": info.language,
                "segments": [
                    dict(seek=s.seek, start=s.start, end=s.end, tokens=list(s.tokens),
                         text=s.text, avg_logprob=s.avg_logprob,
                         no_speech_prob=s.no_speech_prob)
                    for s in segments
                ],
            }
            print(f"{name}: {len(out['cases'][name]['segments'])} segments, "
                  f"language {info.language}", file=sys.stderr)
    print(f"{len(speech)} speech segments, {len(chunks)} chunks", file=sys.stderr)
    with open(OUT, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
