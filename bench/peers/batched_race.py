#!/usr/bin/env python3
"""voxide's batched transcription vs faster-whisper's BatchedInferencePipeline, side by side.

    bench/peers/batched_race.py [--size tiny] [--batch-size 8] [--repeats 3] [--threads 2]
                                [--python /path/to/venv/bin/python]

Both engines transcribe the 151 s long-form file of the corpus with Silero VAD (the same
ONNX weights, faster-whisper's batched options: 30 s chunks, 160 ms silences), the speech in
chunks of up to 30 s, BATCH at a time, on the same random weights at real shapes
(target/models/whisper-<size>, converted to CTranslate2 under target/bench/ct2-<size>):
greedy, timestamps on, language en, no temperature fallback (random weights never end a
text, so every chunk runs its 224 tokens in both). Configurations:

  voxide          `voxide transcribe --vad --batch-size B` at the checkpoint's precision (f32;
                  large-v3-turbo's f16)
  voxide-int8     the same with --precision int8
  voxide-joined   `voxide transcribe --vad` without batches (the speech joined, window after
                  window: faster-whisper's `vad_filter`), for the batches' gain
  fw-float32      faster-whisper on CTranslate2, compute_type float32
  fw-int8         compute_type int8 (faster-whisper's recommended CPU setting)

Times exclude model loading and audio decoding (voxide: the `wall` of `-v`, from the VAD to
the last segment; faster-whisper: `transcribe(audio)` and its segments consumed). Medians over
repeats, the configurations alternated; peak RSS of each process. Prints a table with
voxide / best faster-whisper of the same precision and of any precision, and the machine
(CPU model, L3) it ran on. Needs faster-whisper 1.2.1 + ctranslate2 4.8.5 and transformers
(the converter) in --python's environment.
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("SHARED", ROOT / ".." / "shared"))
LONG = SHARED / "corpus/longform/en_concat_jfk_librispeech_fleurs.wav"
VAD = SHARED / "assets/silero-vad/silero_vad_v6.onnx"
VOXIDE = ROOT / "target/release/voxide"

FW_RUN = r"""
import json, resource, sys, time
from faster_whisper import BatchedInferencePipeline, WhisperModel, decode_audio
model_dir, compute_type, threads, batch, repeats, path = sys.argv[1:7]
model = WhisperModel(model_dir, device="cpu", compute_type=compute_type,
                     cpu_threads=int(threads))
pipeline = BatchedInferencePipeline(model)
audio = decode_audio(path, sampling_rate=16000)
times = []
for _ in range(int(repeats)):
    start = time.perf_counter()
    segments, _ = pipeline.transcribe(audio, language="en", batch_size=int(batch),
                                      beam_size=1, temperature=0.0,
                                      without_timestamps=False)
    n = sum(len(s.tokens) for s in segments)
    times.append(time.perf_counter() - start)
print(json.dumps(dict(times=times, tokens=n,
                      rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)))
"""


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def cpu():
    model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                  if l.startswith("model name")), "?")
    l3 = Path("/sys/devices/system/cpu/cpu0/cache/index3/size")
    return f"{model}, L3 {l3.read_text().strip() if l3.exists() else '?'}"


def convert(size, python):
    out = ROOT / f"target/bench/ct2-{size}"
    if not (out / "model.bin").exists():
        log(f"converting whisper-{size} to CTranslate2 -> {out}")
        subprocess.run([str(Path(python).parent / "ct2-transformers-converter"), "--model",
                        str(ROOT / f"target/models/whisper-{size}"), "--output_dir", str(out),
                        "--copy_files", "tokenizer.json", "preprocessor_config.json",
                        "--force"], check=True, stdout=subprocess.DEVNULL)
    return out


def voxide(size, args, threads):
    cmd = ["/usr/bin/time", "-f", "RSS %M", str(VOXIDE), "transcribe", "-m",
           str(ROOT / f"target/models/whisper-{size}"), "-l", "en", "--vad", "--vad-model",
           str(VAD), "-t", str(threads), "-v", "-f", "verbose_json", *args, str(LONG)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    wall = float(re.search(r"wall (\d+(?:\.\d+)?) ms", out.stderr).group(1)) / 1e3
    rss = int(re.search(r"RSS (\d+)", out.stderr).group(1)) / 1024
    tokens = sum(len(s["tokens"]) for s in json.loads(out.stdout)["segments"])
    return wall, rss, tokens


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="tiny")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--python", default=sys.executable)
    a = ap.parse_args()
    ct2 = convert(a.size, a.python)
    batch = str(a.batch_size)
    configs = {
        "voxide": lambda: voxide(a.size, ["--batch-size", batch], a.threads),
        "voxide-int8": lambda: voxide(a.size, ["--batch-size", batch, "--precision", "int8"],
                                      a.threads),
        "voxide-joined": lambda: voxide(a.size, [], a.threads),
    }
    results = {name: ([], []) for name in [*configs, "fw-float32", "fw-int8"]}
    tokens = {}
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
    for r in range(a.repeats):
        for name, run in configs.items():
            wall, rss, tokens[name] = run()
            results[name][0].append(wall)
            results[name][1].append(rss)
            log(f"round {r + 1}: {name} {wall:.2f} s, {rss:.0f} MB")
        for compute in ["float32", "int8"]:
            out = subprocess.run([a.python, "-c", FW_RUN, str(ct2), compute, str(a.threads),
                                  batch, "1", str(LONG)], capture_output=True, text=True,
                                 env=env, check=True)
            fw = json.loads(out.stdout.strip().splitlines()[-1])
            results[f"fw-{compute}"][0].extend(fw["times"])
            results[f"fw-{compute}"][1].append(fw["rss_mb"])
            tokens[f"fw-{compute}"] = fw["tokens"]
            log(f"round {r + 1}: fw-{compute} {fw['times'][0]:.2f} s, {fw['rss_mb']:.0f} MB")
    med = {name: (statistics.median(t), max(m)) for name, (t, m) in results.items()}
    best_fw = min(med["fw-float32"][0], med["fw-int8"][0])
    print(f"# whisper-{a.size} (random weights), {LONG.name} (151.5 s), VAD, batch "
          f"{a.batch_size}, {a.threads} threads; {cpu()}")
    print("| configuration | seconds (median) | peak RSS MB | segment tokens | / fw same precision "
          "| / best fw |")
    print("|---|---|---|---|---|---|")
    same = {"voxide": "fw-float32", "voxide-joined": "fw-float32", "voxide-int8": "fw-int8"}
    for name, (t, rss) in med.items():
        ratio = f"{t / med[same[name]][0]:.2f}" if name in same else ""
        print(f"| {name} | {t:.2f} | {rss:.0f} | {tokens[name]} | {ratio} | {t / best_fw:.2f} |")


if __name__ == "__main__":
    main()
