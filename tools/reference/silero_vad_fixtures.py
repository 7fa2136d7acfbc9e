"""Reference speech probabilities and segments of Silero VAD v6 for the Rust parity tests.

Writes `tests/fixtures/silero-vad/reference.json` (see README.md, "Silero VAD"):

* `probs` cases: onnxruntime on `assets/silero-vad/silero_vad_v6.onnx` (faster-whisper's
  export of Silero VAD v6.0, 16 kHz only), fed one 512-sample window at a time exactly as
  the silero-vad package's `OnnxWrapper` feeds its model: the 64 samples before the window
  (zeros for the first one) are prepended, the LSTM state (h, c) is carried over, and a short
  last window is zero-padded to 512 (`get_speech_timestamps`). Each case is run twice: with the
  ONNX file's own weights (`weights: "onnx"`, v6.0) and with the weights of whisper.cpp's ggml
  file `for-tests-silero-v6.2.0-ggml.bin` (`weights: "ggml"`: Silero v6.2.0, convolutions and
  STFT basis stored as f16) substituted into the same graph, so that both Rust loaders are
  checked against onnxruntime.
* `segments` cases: `get_speech_timestamps` of silero-vad 6.2.1 (the function's own source,
  read from the installed package and run with a tiny numpy stand-in for torch, since the
  package imports torch at module level) on the probabilities of the full long-form file
  (default and non-default parameters, max-duration splitting included) and of jfk.wav.

The audio is read with soundfile as float32 (PCM_16 / 32768, 16 kHz files: no resampling);
each case records the sample count and sum so the Rust side can check it decoded the same
samples.

Run (needs onnxruntime, onnx, numpy, soundfile, and `pip install --no-deps silero-vad==6.2.1`):

    /work/venv/vad/bin/python tools/reference/silero_vad_fixtures.py
"""

import importlib.metadata
import importlib.util
import json
import os
import re
import struct
import sys
import types
import typing
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import soundfile as sf
from onnx import numpy_helper

ROOT = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("VOXIDE_SHARED", ROOT.parent / "shared"))
ONNX_PATH = SHARED / "assets/silero-vad/silero_vad_v6.onnx"
GGML_PATH = SHARED / "assets/silero-vad/for-tests-silero-v6.2.0-ggml.bin"
OUT = ROOT / "tests/fixtures/silero-vad"

WINDOW = 512
CONTEXT = 64
HIDDEN = 128
SAMPLE_RATE = 16000

# (audio relative to the shared corpus, seconds or None for all of it, weights)
# Every long-form file in full on the ONNX weights (as the issue asks), 20 s on the ggml ones.
PROB_CASES = [
    ("longform/en_concat_jfk_librispeech_fleurs.wav", None, "onnx"),
    ("longform/fleurs_de_concat.wav", None, "onnx"),
    ("longform/fleurs_en_concat.wav", None, "onnx"),
    ("longform/fleurs_es_concat.wav", None, "onnx"),
    ("longform/fleurs_fr_concat.wav", None, "onnx"),
    ("longform/fleurs_pt_concat.wav", None, "onnx"),
    ("whispercpp/jfk.wav", None, "onnx"),  # 11 s: the last window is zero-padded
    ("longform/en_concat_jfk_librispeech_fleurs.wav", 20.0, "ggml"),
    ("longform/fleurs_de_concat.wav", 20.0, "ggml"),
]

# get_speech_timestamps keyword arguments on the probabilities of a full file (a PROB_CASES
# entry with the ONNX weights).
LONGFORM = "longform/en_concat_jfk_librispeech_fleurs.wav"
SEGMENT_CASES = [
    (LONGFORM, {}),
    (LONGFORM, {"threshold": 0.6, "min_silence_duration_ms": 300, "speech_pad_ms": 100}),
    (LONGFORM, {"min_speech_duration_ms": 1000, "speech_pad_ms": 0, "neg_threshold": 0.2}),
    (LONGFORM, {"max_speech_duration_s": 5.0}),
    (LONGFORM, {"max_speech_duration_s": 5.0, "use_max_poss_sil_at_max_speech": False}),
    (LONGFORM, {"max_speech_duration_s": 2.0, "min_silence_duration_ms": 500}),
    ("whispercpp/jfk.wav", {}),
]


def read_ggml(path):
    """whisper.cpp's Silero ggml file (models/convert-silero-vad-to-ggml.py): a header of
    int32s, then per tensor (n_dims, name_len, ftype, dims reversed, name, data in the
    PyTorch tensor's C order; ftype 1 = f16)."""
    buf = path.read_bytes()
    pos = 0

    def i32():
        nonlocal pos
        (v,) = struct.unpack_from("<i", buf, pos)
        pos += 4
        return v

    assert i32() == 0x67676D6C
    n = i32()
    pos += n
    pos += 4 * (3 + 2 + 1 + 4 * 3 + 2 + 2)
    tensors = {}
    while pos < len(buf):
        n_dims, name_len, ftype = i32(), i32(), i32()
        dims = [i32() for _ in range(n_dims)]
        name = buf[pos : pos + name_len].decode()
        pos += name_len
        count = int(np.prod(dims)) if dims else 1
        dtype = np.float16 if ftype == 1 else np.float32
        a = np.frombuffer(buf, dtype=dtype, count=count, offset=pos)
        pos += count * a.itemsize
        tensors[name] = a.astype(np.float32).reshape(dims[::-1])
    return tensors


def torch_to_onnx_gates(w):
    """PyTorch LSTM gate blocks (i, f, g, o) -> ONNX (i, o, f, c)."""
    i, f, g, o = np.split(w, 4, axis=0)
    return np.concatenate([i, o, f, g], axis=0)


def ggml_model():
    """The ONNX graph with the ggml file's weights substituted."""
    model = onnx.load(ONNX_PATH)
    t = read_ggml(GGML_PATH)
    new = {
        "encoder.feature_extractor.forward_basis_buffer": t["_model.stft.forward_basis_buffer"],
        "decoder.conv1d.weight": t["_model.decoder.decoder.2.weight"].reshape(1, HIDDEN, 1),
        "decoder.conv1d.bias": t["_model.decoder.decoder.2.bias"].reshape(1),
        "onnx::LSTM_209": torch_to_onnx_gates(t["_model.decoder.rnn.weight_ih"])[None],
        "onnx::LSTM_210": torch_to_onnx_gates(t["_model.decoder.rnn.weight_hh"])[None],
        "onnx::LSTM_211": np.concatenate(
            [
                torch_to_onnx_gates(t["_model.decoder.rnn.bias_ih"]),
                torch_to_onnx_gates(t["_model.decoder.rnn.bias_hh"]),
            ]
        )[None],
    }
    for i in range(4):
        new[f"encoder.conv_layers.{i}.weight"] = t[f"_model.encoder.{i}.reparam_conv.weight"]
        new[f"encoder.conv_layers.{i}.bias"] = t[f"_model.encoder.{i}.reparam_conv.bias"]
    for init in model.graph.initializer:
        if init.name in new:
            a = np.ascontiguousarray(new.pop(init.name), dtype=np.float32)
            assert tuple(init.dims) == a.shape, (init.name, init.dims, a.shape)
            init.CopyFrom(numpy_helper.from_array(a, init.name))
    assert not new, new
    return model.SerializeToString()


def session(weights):
    opts = ort.SessionOptions()
    opts.inter_op_num_threads = 1
    opts.intra_op_num_threads = 1
    src = str(ONNX_PATH) if weights == "onnx" else ggml_model()
    return ort.InferenceSession(src, sess_options=opts, providers=["CPUExecutionProvider"])


class Streaming:
    """OnnxWrapper's feeding of one stream: context + window, state carried over."""

    def __init__(self, sess):
        self.sess = sess
        self.reset_states()

    def reset_states(self):
        self.h = np.zeros((1, 1, HIDDEN), np.float32)
        self.c = np.zeros((1, 1, HIDDEN), np.float32)
        self.context = np.zeros((1, CONTEXT), np.float32)

    def __call__(self, chunk, sr=SAMPLE_RATE):
        assert sr == SAMPLE_RATE and len(chunk) == WINDOW
        x = np.concatenate([self.context, np.asarray(chunk, np.float32)[None]], axis=1)
        out, self.h, self.c = self.sess.run(None, {"input": x, "h": self.h, "c": self.c})
        self.context = x[:, -CONTEXT:]
        return out[0]


def windows(audio):
    """get_speech_timestamps' windows: 512 samples each, the last one zero-padded."""
    n = -(-len(audio) // WINDOW) * WINDOW
    return np.pad(audio, (0, n - len(audio))).reshape(-1, WINDOW)


def batched_probs(sess, audio):
    """faster-whisper's feeding (all windows in one run, the LSTM going along the batch),
    as a cross-check of the streaming one."""
    w = windows(audio)
    ctx = np.concatenate([np.zeros((1, CONTEXT), np.float32), w[:-1, -CONTEXT:]], axis=0)
    x = np.concatenate([ctx, w], axis=1)
    h = np.zeros((1, 1, HIDDEN), np.float32)
    out, _, _ = sess.run(None, {"input": x, "h": h, "c": h.copy()})
    return out


def load_get_speech_timestamps():
    """silero-vad's own get_speech_timestamps, with numpy standing in for the few torch calls
    it makes (is_tensor, pad, .item()): the package imports torch at module level."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None:
        sys.exit("pip install --no-deps silero-vad==6.2.1 (its get_speech_timestamps is the reference)")
    src = (Path(spec.origin).parent / "utils_vad.py").read_text()
    start = src.index("@torch.no_grad()\ndef get_speech_timestamps")
    end = src.index("\nclass VADIterator")
    fake_torch = types.SimpleNamespace(
        no_grad=lambda: (lambda f: f),
        is_tensor=lambda x: isinstance(x, np.ndarray),
        Tensor=np.asarray,
        nn=types.SimpleNamespace(
            functional=types.SimpleNamespace(pad=lambda x, p: np.pad(x, (p[0], p[1])))
        ),
    )
    env = {"torch": fake_torch, "Callable": typing.Callable, "warnings": None}
    exec(compile(src[start:end], "utils_vad.py:get_speech_timestamps", "exec"), env)
    return env["get_speech_timestamps"], importlib.metadata.version("silero-vad")


class Replay:
    """A model that hands back precomputed probabilities (the segments cases)."""

    def __init__(self, probs):
        self.probs = probs
        self.i = 0

    def reset_states(self):
        self.i = 0

    def __call__(self, chunk, sr):
        p = self.probs[self.i]
        self.i += 1
        return np.float32(p)


def f32(x):
    """Shortest decimal that round-trips the f32 value."""
    return float(np.format_float_positional(np.float32(x), unique=True, trim="-"))


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    sessions = {w: session(w) for w in ("onnx", "ggml")}
    get_speech_timestamps, silero_version = load_get_speech_timestamps()
    out = {
        "generator": "tools/reference/silero_vad_fixtures.py",
        "versions": {
            "onnxruntime": ort.__version__,
            "onnx": onnx.__version__,
            "numpy": np.__version__,
            "soundfile": sf.__version__,
            "silero_vad": silero_version,
        },
        "model": "assets/silero-vad/silero_vad_v6.onnx",
        "ggml": "assets/silero-vad/for-tests-silero-v6.2.0-ggml.bin",
        "window": WINDOW,
        "context": CONTEXT,
        "sample_rate": SAMPLE_RATE,
        "probs": [],
        "segments": [],
    }
    full = {}  # audio -> (probabilities, sample count) of the whole file, ONNX weights
    for rel, seconds, weights in PROB_CASES:
        audio, sr = sf.read(SHARED / "corpus" / rel, dtype="float32")
        assert sr == SAMPLE_RATE and audio.ndim == 1, (rel, sr, audio.shape)
        if seconds is not None:
            audio = audio[: int(seconds * SAMPLE_RATE)]
        model = Streaming(sessions[weights])
        probs = np.array([model(w) for w in windows(audio)], np.float32)
        batched = batched_probs(sessions[weights], audio)
        cross = float(np.abs(batched - probs).max())
        assert cross < 1e-5, (rel, weights, cross)
        print(
            f"{rel} [{weights}] {len(probs)} windows, mean p {probs.mean():.4f}, "
            f"batched vs streaming max diff {cross:.2e}"
        )
        out["probs"].append(
            {
                "audio": rel,
                "seconds": seconds,
                "weights": weights,
                "n_samples": len(audio),
                "sample_sum": float(audio.astype(np.float64).sum()),
                "batched_vs_streaming_max_diff": cross,
                "probs": [f32(p) for p in probs],
            }
        )
        if seconds is None and weights == "onnx":
            full[rel] = (probs, len(audio))
    for rel, kwargs in SEGMENT_CASES:
        probs, n = full[rel]
        segs = get_speech_timestamps(np.zeros(n, np.float32), Replay(probs), **kwargs)
        print(f"segments {rel} {kwargs}: {len(segs)}")
        out["segments"].append(
            {
                "audio": rel,
                "weights": "onnx",
                "n_samples": n,
                "params": kwargs,
                "segments": [[int(s["start"]), int(s["end"])] for s in segs],
            }
        )
    path = OUT / "reference.json"
    text = json.dumps(out, indent=1)
    # One line per list of numbers.
    text = re.sub(r"\[[-0-9.e,\s\[\]]*\]", lambda m: re.sub(r"\s+", "", m.group(0)), text)
    path.write_text(text + "\n")
    print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
