#!/usr/bin/env python3
"""Write the MP4/M4A and raw AAC decode fixtures for `crates/voxide-audio` tests.

    python tools/reference/mp4_aac_fixtures.py      (needs av, numpy, safetensors)

libsndfile (the reference of `audio_fixtures.py`) does not read MP4, so the
reference here is FFmpeg, through PyAV: two small synthetic clips written by
FFmpeg's own muxer and encoders (the seeded test signal of `audio_fixtures.py`:
two tones, a chirp, noise) into `tests/fixtures/audio/`:

* `synth_aac_44k_stereo.m4a`: AAC-LC, 44.1 kHz stereo, 1.5 s, 96 kbit/s. The
  encoder primes 1024 samples and pads the last frame; the file's edit list
  names the 66 150 samples that are the audio.
* `synth_alac_48k_mono.m4a`: ALAC (lossless), 48 kHz mono, 16-bit, 0.5 s.
* `synth_aac_22k_mono.aac`: raw AAC-LC in ADTS frames (no container, so no
  edit list: priming and padding stay, for FFmpeg as for voxide), 22.05 kHz
  mono, 1 s, 48 kbit/s.

`mp4_aac.json` + `mp4_aac.safetensors`: per clip the rate, channel count, frame count
(in M4A the samples the edit list names, which are the samples that went in;
in ADTS all that FFmpeg decodes), per-channel sums of squares over those
frames and three 2048-frame excerpts per channel (start, middle, end) of
FFmpeg's decode, which drops the priming where the edit list says so.

Fixtures are committed; do not regenerate them in CI.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import av
import numpy as np
from safetensors.numpy import save_file

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "audio"
EXCERPT = 2048


def signal(sr: int, channels: int, seconds: float) -> np.ndarray:
    """[channels, frames] float32, as `audio_fixtures.synth_files`."""
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * sr)) / sr
    chans = []
    for c in range(channels):
        x = 0.3 * np.sin(2 * np.pi * 220.0 * (c + 1) * t)
        x += 0.2 * np.sin(2 * np.pi * (300 + 1000 * t) * t)
        x += 0.02 * rng.standard_normal(len(t))
        chans.append(x)
    return np.stack(chans).astype(np.float32)


def write(name: str, codec: str, sr: int, channels: int, seconds: float, sample_fmt: str, bit_rate: int | None) -> int:
    """Encodes the test signal into `name`; returns its frame count."""
    x = signal(sr, channels, seconds)
    layout = "stereo" if channels == 2 else "mono"
    out = av.open(str(OUT / name), "w", format="adts" if name.endswith(".aac") else "ipod")
    stream = out.add_stream(codec, rate=sr, layout=layout)
    stream.format = sample_fmt
    if bit_rate:
        stream.bit_rate = bit_rate
    for i in range(0, x.shape[1], 1024):
        block = x[:, i : i + 1024]
        if sample_fmt == "s16p":
            block = (np.clip(block, -1, 1) * 32767).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(block), format=sample_fmt, layout=layout
        )
        frame.sample_rate = sr
        frame.pts = i
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode(None):
        out.mux(packet)
    out.close()
    os.chmod(OUT / name, 0o644)
    return x.shape[1]


def decode(name: str) -> tuple[np.ndarray, int]:
    """FFmpeg's decode as float32 [channels, frames] (priming dropped)."""
    with av.open(str(OUT / name)) as f:
        frames = list(f.decode(audio=0))
    scale = {"fltp": 1.0, "s16p": 1 / 32768, "s32p": 1 / 2**31}[frames[0].format.name]
    x = np.concatenate([fr.to_ndarray() for fr in frames], axis=1).astype(np.float64) * scale
    return x, frames[0].sample_rate


def main() -> None:
    clips = [
        ("synth_aac_44k_stereo.m4a", "aac", 44100, 2, 1.5, "fltp", 96000),
        ("synth_alac_48k_mono.m4a", "alac", 48000, 1, 0.5, "s16p", None),
        ("synth_aac_22k_mono.aac", "aac", 22050, 1, 1.0, "fltp", 48000),
    ]
    entries, tensors = [], {}
    for name, codec, sr, channels, seconds, fmt, rate in clips:
        frames = write(name, codec, sr, channels, seconds, fmt, rate)
        x, got_sr = decode(name)
        assert got_sr == sr and x.shape[0] == channels and x.shape[1] >= frames, (name, x.shape)
        if name.endswith(".m4a"):
            x = x[:, :frames]
        frames = x.shape[1]
        n = min(EXCERPT, frames)
        offsets = {"start": 0, "mid": max(0, frames // 2 - n // 2), "end": frames - n}
        for part, off in offsets.items():
            tensors[f"{name}/{part}"] = np.ascontiguousarray(x[:, off : off + n].astype(np.float32))
        entries.append(
            {
                "path": name,
                "codec": codec,
                "container": "ADTS" if name.endswith(".aac") else "MP4",
                "sample_rate": sr,
                "channels": channels,
                "frames": frames,
                "sum_squares": [float(np.sum(x[c] ** 2)) for c in range(channels)],
                "excerpt_len": n,
                "excerpts": offsets,
            }
        )
        print(f"{name}: {sr} Hz x{channels}, {frames} frames")
    save_file(tensors, str(OUT / "mp4_aac.safetensors"))
    os.chmod(OUT / "mp4_aac.safetensors", 0o644)
    versions = {
        "python": sys.version.split()[0],
        "av": av.__version__,
        "libavcodec": ".".join(map(str, av.library_versions["libavcodec"])),
        "numpy": np.__version__,
    }
    with open(OUT / "mp4_aac.json", "w", encoding="utf-8") as f:
        json.dump({"versions": versions, "files": entries}, f, indent=1)


if __name__ == "__main__":
    main()
