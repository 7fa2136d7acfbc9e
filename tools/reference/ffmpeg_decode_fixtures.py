#!/usr/bin/env python3
"""Write the decode fixtures of formats libsndfile does not read, against FFmpeg.

    python tools/reference/ffmpeg_decode_fixtures.py      (needs av, numpy, safetensors)

libsndfile (the reference of `audio_fixtures.py`) reads neither MP4, raw AAC
nor Matroska, and the corpus has no AIFF, CAF or MP2, so the reference here is
FFmpeg, through PyAV: small clips of the seeded test signal of
`audio_fixtures.py` (two tones, a chirp, noise), written by FFmpeg's own muxers
and encoders into `tests/fixtures/audio/`:

* `synth_aac_44k_stereo.m4a`: AAC-LC, 44.1 kHz stereo, 1.5 s, 96 kbit/s. The
  encoder primes 1024 samples and pads the last frame; the file's edit list
  names the 66 150 samples that are the audio.
* `synth_alac_48k_mono.m4a`: ALAC (lossless), 48 kHz mono, 16-bit, 0.5 s.
* `synth_aac_22k_mono.aac`: raw AAC-LC in ADTS frames (no container, so no
  edit list: priming and padding stay, for FFmpeg as for voxide), 22.05 kHz
  mono, 1 s, 48 kbit/s.
* `synth_opus_48k_stereo.webm`: Opus (libopus) in WebM, 48 kHz stereo, 1 s,
  as browsers record: pre-skip in the OpusHead, the end padding marked by
  Matroska's DiscardPadding.
* `synth_vorbis_44k_stereo.webm`: Vorbis (FFmpeg's own encoder, marked
  experimental) in WebM, 44.1 kHz stereo, 1 s.
* `synth_flac_16k_mono.mkv`: FLAC in Matroska, 16 kHz mono, 0.5 s.
* `synth_pcm_44k_stereo.aiff`: 16-bit big-endian PCM in AIFF, 0.5 s.
* `synth_pcm_16k_mono.caf`: 16-bit PCM in Core Audio Format, 0.5 s.
* `synth_mp2_32k_stereo.mp2`: MPEG-1 audio layer II, 32 kHz stereo, 1 s,
  128 kbit/s (broadcast's format; libsndfile reads it only through mpg123).

`ffmpeg_decode.json` + `ffmpeg_decode.safetensors`: per clip the container,
codec, rate, channel count, frame count (in M4A the samples the edit list
names; elsewhere all that FFmpeg decodes), per-channel sums of squares over
those frames and three 2048-frame excerpts per channel (start, middle, end)
of FFmpeg's decode.

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

# name, muxer, codec, rate, channels, seconds, sample format, bit rate
CLIPS = [
    ("synth_aac_44k_stereo.m4a", "ipod", "aac", 44100, 2, 1.5, "fltp", 96000),
    ("synth_alac_48k_mono.m4a", "ipod", "alac", 48000, 1, 0.5, "s16p", None),
    ("synth_aac_22k_mono.aac", "adts", "aac", 22050, 1, 1.0, "fltp", 48000),
    ("synth_opus_48k_stereo.webm", "webm", "libopus", 48000, 2, 1.0, "flt", 64000),
    ("synth_vorbis_44k_stereo.webm", "webm", "vorbis", 44100, 2, 1.0, "fltp", None),
    ("synth_flac_16k_mono.mkv", "matroska", "flac", 16000, 1, 0.5, "s16", None),
    ("synth_pcm_44k_stereo.aiff", "aiff", "pcm_s16be", 44100, 2, 0.5, "s16", None),
    ("synth_pcm_16k_mono.caf", "caf", "pcm_s16le", 16000, 1, 0.5, "s16", None),
    ("synth_mp2_32k_stereo.mp2", "mp2", "mp2", 32000, 2, 1.0, "s16", 128000),
]


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


def as_frame(block: np.ndarray, sample_fmt: str, layout: str, sr: int, pts: int) -> av.AudioFrame:
    """One frame of `block` ([channels, n] float32) in `sample_fmt` (planar or packed)."""
    if sample_fmt.startswith("s16"):
        block = (np.clip(block, -1, 1) * 32767).astype(np.int16)
    if not sample_fmt.endswith("p"):
        block = block.T.reshape(1, -1)  # packed: one plane, channels interleaved
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(block), format=sample_fmt, layout=layout)
    frame.sample_rate = sr
    frame.pts = pts
    return frame


def write(name, muxer, codec, sr, channels, seconds, sample_fmt, bit_rate) -> int:
    """Encodes the test signal into `name`; returns its frame count."""
    x = signal(sr, channels, seconds)
    layout = "stereo" if channels == 2 else "mono"
    out = av.open(str(OUT / name), "w", format=muxer)
    # FFmpeg's Vorbis encoder is experimental: it runs only when asked to.
    options = {"strict": "-2"} if codec == "vorbis" else {}
    stream = out.add_stream(codec, rate=sr, layout=layout, options=options)
    stream.format = sample_fmt
    if bit_rate:
        stream.bit_rate = bit_rate
    step = {"libopus": 960, "mp2": 1152}.get(codec, 1024)
    for i in range(0, x.shape[1], step):
        for packet in stream.encode(as_frame(x[:, i : i + step], sample_fmt, layout, sr, i)):
            out.mux(packet)
    for packet in stream.encode(None):
        out.mux(packet)
    out.close()
    os.chmod(OUT / name, 0o644)
    return x.shape[1]


def decode(name: str, codec: str) -> tuple[np.ndarray, int]:
    """FFmpeg's decode as float64 [channels, frames]. Layer II through FFmpeg's float
    decoder (`mp2float`; its default `mp2` is fixed-point, ~85 dB from any float one)."""
    with av.open(str(OUT / name)) as f:
        stream = f.streams.audio[0]
        if codec == "mp2":
            ctx = av.CodecContext.create("mp2float", "r")
            # demux() ends with an empty packet, which flushes the decoder.
            frames = [fr for p in f.demux(stream) for fr in ctx.decode(p)]
        else:
            frames = [fr for fr in f.decode(stream)]
    fmt = frames[0].format.name
    scale = {"flt": 1.0, "fltp": 1.0, "s16": 1 / 32768, "s16p": 1 / 32768, "s32p": 1 / 2**31}[fmt]
    channels = len(frames[0].layout.channels)
    parts = []
    for fr in frames:
        a = fr.to_ndarray().astype(np.float64)
        parts.append(a if fmt.endswith("p") else a.reshape(-1, channels).T)
    return np.concatenate(parts, axis=1) * scale, frames[0].sample_rate


def main() -> None:
    entries, tensors = [], {}
    for name, muxer, codec, sr, channels, seconds, fmt, rate in CLIPS:
        frames_in = write(name, muxer, codec, sr, channels, seconds, fmt, rate)
        x, got_sr = decode(name, codec)
        assert got_sr == sr and x.shape[0] == channels, (name, got_sr, x.shape)
        if muxer == "ipod":
            # PyAV drops the priming the edit list names but not the end padding.
            assert x.shape[1] >= frames_in, (name, x.shape)
            x = x[:, :frames_in]
        frames = x.shape[1]
        n = min(EXCERPT, frames)
        offsets = {"start": 0, "mid": max(0, frames // 2 - n // 2), "end": frames - n}
        for part, off in offsets.items():
            tensors[f"{name}/{part}"] = np.ascontiguousarray(x[:, off : off + n].astype(np.float32))
        entries.append(
            {
                "path": name,
                "container": muxer,
                "codec": codec,
                "sample_rate": sr,
                "channels": channels,
                "frames": frames,
                "sum_squares": [float(np.sum(x[c] ** 2)) for c in range(channels)],
                "excerpt_len": n,
                "excerpts": offsets,
            }
        )
        print(f"{name}: {sr} Hz x{channels}, {frames} frames ({frames_in} in)")
    save_file(tensors, str(OUT / "ffmpeg_decode.safetensors"))
    os.chmod(OUT / "ffmpeg_decode.safetensors", 0o644)
    versions = {
        "python": sys.version.split()[0],
        "av": av.__version__,
        "libavcodec": ".".join(map(str, av.library_versions["libavcodec"])),
        "numpy": np.__version__,
    }
    with open(OUT / "ffmpeg_decode.json", "w", encoding="utf-8") as f:
        json.dump({"versions": versions, "files": entries}, f, indent=1)


if __name__ == "__main__":
    main()
