//! Benchmark peer: whisper.cpp (the copy bundled in `whisper-rs-sys`), timed through its C API.
//!
//! ```text
//! voxide-peer-whispercpp --model GGML [--threads 2] [-n REPEATS] [--decode-tokens 200]
//!                        [--json OUT] FILES...
//! ```
//!
//! Measures model load, the encoder on one 30 s window, the decoder per token (single-token
//! decode calls with a growing KV cache), and end-to-end `whisper_full_with_state` per file
//! (greedy, no temperature fallback, language "en"), plus peak RSS. See bench/peers/README.md.

use std::ffi::{CStr, CString};
use std::os::raw::{c_char, c_int, c_void};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::ptr;
use std::time::Instant;

use serde_json::{json, Value};
use whisper_rs_sys as sys;

const SAMPLE_RATE: u32 = 16_000;
const WINDOW_SAMPLES: usize = 30 * SAMPLE_RATE as usize;
/// The whisper.cpp version whose `whisper_state` layout `StateTimings` mirrors.
const BUNDLED_VERSION: &str = "1.8.3";

const USAGE: &str = "\
usage: voxide-peer-whispercpp --model GGML [options] FILES...

options:
  --model FILE          whisper.cpp ggml model file
  --threads N           threads for every call (default 2)
  -n, --repeats N       timed encoder runs and decoder passes, after one warm-up (default 5)
  --decode-tokens N     single-token decoder steps per pass (default 200)
  --e2e-repeats N       end-to-end runs per file (default 1; the median is reported)
  --json FILE           write the results as JSON
  --no-flash-attn       disable flash attention (whisper.cpp's default is on)
  --condition           condition each window on the previous text (no_context = false);
                        the default is whisper.cpp's library default, no_context = true
  --timestamps          decode with timestamps (default: no_timestamps = true; with random
                        weights the timestamp rule fires at every step, and each window
                        decodes to a few timestamp tokens instead of 220 text tokens)
  --language LANG       end-to-end language (default en)
  --skip-micro          only the end-to-end runs
  --verbose             keep whisper.cpp's log output
FILES are 16 kHz WAV files (PCM 16-bit or float 32-bit; channels are averaged).";

struct Args {
    model: PathBuf,
    threads: i32,
    repeats: usize,
    decode_tokens: usize,
    e2e_repeats: usize,
    json: Option<PathBuf>,
    flash_attn: bool,
    condition: bool,
    timestamps: bool,
    language: String,
    skip_micro: bool,
    verbose: bool,
    files: Vec<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        model: PathBuf::new(),
        threads: 2,
        repeats: 5,
        decode_tokens: 200,
        e2e_repeats: 1,
        json: None,
        flash_attn: true,
        condition: false,
        timestamps: false,
        language: "en".to_owned(),
        skip_micro: false,
        verbose: false,
        files: Vec::new(),
    };
    let mut model = None;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        fn num<T: std::str::FromStr>(name: &str, v: String) -> Result<T, String> {
            v.parse().map_err(|_| format!("{name}: not a number: {v}"))
        }
        match arg.as_str() {
            "--model" | "-m" => model = Some(PathBuf::from(value(&arg)?)),
            "--threads" | "-t" => a.threads = num(&arg, value(&arg)?)?,
            "--repeats" | "-n" => a.repeats = num(&arg, value(&arg)?)?,
            "--decode-tokens" => a.decode_tokens = num(&arg, value(&arg)?)?,
            "--e2e-repeats" => a.e2e_repeats = num(&arg, value(&arg)?)?,
            "--json" => a.json = Some(PathBuf::from(value(&arg)?)),
            "--language" | "-l" => a.language = value(&arg)?,
            "--no-flash-attn" => a.flash_attn = false,
            "--condition" => a.condition = true,
            "--timestamps" => a.timestamps = true,
            "--skip-micro" => a.skip_micro = true,
            "--verbose" | "-v" => a.verbose = true,
            "--help" | "-h" => return Err(String::new()),
            s if s.starts_with('-') => return Err(format!("unknown option {s}")),
            _ => a.files.push(PathBuf::from(arg)),
        }
    }
    a.model = model.ok_or("--model is required")?;
    if a.threads < 1 || a.repeats < 1 || a.e2e_repeats < 1 {
        return Err("--threads, --repeats and --e2e-repeats must be at least 1".to_owned());
    }
    if a.decode_tokens + 8 > 448 {
        return Err("--decode-tokens must be at most 440 (text context 448)".to_owned());
    }
    Ok(a)
}

// ---------------------------------------------------------------------------------------------
// WAV

/// Minimal RIFF/WAVE reader: PCM 16-bit or IEEE float 32-bit (also as WAVE_FORMAT_EXTENSIBLE),
/// channels averaged to mono; the sample rate must be 16 kHz.
fn read_wav(path: &Path) -> Result<Vec<f32>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let bad = |m: &str| format!("{}: {m}", path.display());
    if bytes.len() < 12 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Err(bad("not a RIFF/WAVE file"));
    }
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]);
    let u32_at =
        |o: usize| u32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]);
    let mut fmt = None;
    let mut pos = 12;
    while pos + 8 <= bytes.len() {
        let id = &bytes[pos..pos + 4];
        let len = u32_at(pos + 4) as usize;
        let body = pos + 8;
        let end = (body + len).min(bytes.len());
        if id == b"fmt " {
            if len < 16 {
                return Err(bad("short fmt chunk"));
            }
            let mut tag = u16_at(body);
            if tag == 0xFFFE && len >= 26 {
                tag = u16_at(body + 24); // sub-format GUID starts with the format tag
            }
            fmt = Some((tag, u16_at(body + 2), u32_at(body + 4), u16_at(body + 14)));
        } else if id == b"data" {
            let (tag, channels, rate, bits) = fmt.ok_or_else(|| bad("data before fmt"))?;
            if rate != SAMPLE_RATE {
                return Err(bad(&format!("sample rate {rate} Hz, need {SAMPLE_RATE}")));
            }
            let ch = channels.max(1) as usize;
            let data = &bytes[body..end];
            let samples: Vec<f32> = match (tag, bits) {
                (1, 16) => data
                    .chunks_exact(2)
                    .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0)
                    .collect(),
                (3, 32) => data
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
                _ => return Err(bad(&format!("unsupported format tag {tag}, {bits} bits"))),
            };
            return Ok(samples
                .chunks_exact(ch)
                .map(|f| f.iter().sum::<f32>() / ch as f32)
                .collect());
        }
        pos = body + len + (len & 1);
    }
    Err(bad("no data chunk"))
}

// ---------------------------------------------------------------------------------------------
// measurement helpers

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

fn stats(v: &[f64]) -> Value {
    if v.is_empty() {
        return Value::Null;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    let median = if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    };
    json!({
        "median": median,
        "min": s[0],
        "max": s[n - 1],
        "mean": s.iter().sum::<f64>() / n as f64,
        "n": n,
    })
}

fn median(v: &[f64]) -> f64 {
    stats(v)["median"].as_f64().unwrap_or(f64::NAN)
}

/// Peak resident set size of this process in MB (getrusage; ru_maxrss is in KiB on Linux).
fn peak_rss_mb() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct we own.
    unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru.ru_maxrss as f64 * 1024.0 / 1e6
    }
}

/// CPU seconds used by this process (user + system).
fn process_cpu_s() -> f64 {
    // SAFETY: as above.
    unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
        tv(ru.ru_utime) + tv(ru.ru_stime)
    }
}

/// Busy CPU seconds of the whole machine so far (from /proc/stat; None when unavailable).
fn machine_busy_s() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?;
    let f: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    if f.len() < 8 {
        return None;
    }
    // user nice system idle iowait irq softirq steal: busy = all but idle and iowait.
    let busy = f[0] + f[1] + f[2] + f[5] + f[6] + f[7];
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(busy / hz)
}

/// Process vs machine CPU time over a measured phase: other_s is what other processes used.
struct CpuProbe {
    proc0: f64,
    machine0: Option<f64>,
}

impl CpuProbe {
    fn start() -> Self {
        Self {
            proc0: process_cpu_s(),
            machine0: machine_busy_s(),
        }
    }
    fn finish(&self) -> Value {
        let p = process_cpu_s() - self.proc0;
        match (self.machine0, machine_busy_s()) {
            (Some(m0), Some(m1)) => {
                let m = m1 - m0;
                json!({"process_s": p, "machine_busy_s": m, "other_s": (m - p).max(0.0)})
            }
            _ => json!({"process_s": p}),
        }
    }
}

/// Mirror of the first members of whisper.cpp 1.8.3's `struct whisper_state` (plain integers at
/// the start of the struct). Only read when `whisper_version()` is the bundled version, and only
/// trusted when its encoder count agrees with the encoder-begin callbacks we counted.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct StateTimings {
    t_sample_us: i64,
    t_encode_us: i64,
    t_decode_us: i64,
    t_batchd_us: i64,
    t_prompt_us: i64,
    t_mel_us: i64,
    n_sample: i32,
    n_encode: i32,
    n_decode: i32,
    n_batchd: i32,
    n_prompt: i32,
    n_fail_p: i32,
    n_fail_h: i32,
}

fn read_state_timings(state: *mut sys::whisper_state) -> StateTimings {
    // SAFETY: `state` is a live whisper_state of the bundled version, whose first members are
    // laid out as StateTimings (see its doc comment); we only read.
    unsafe { ptr::read(state.cast::<StateTimings>()) }
}

fn timings_delta(a: StateTimings, b: StateTimings) -> Value {
    let per = |us: i64, n: i32| {
        if n > 0 {
            us as f64 / 1e3 / f64::from(n)
        } else {
            0.0
        }
    };
    let (sample, encode, decode, batchd, prompt) = (
        b.t_sample_us - a.t_sample_us,
        b.t_encode_us - a.t_encode_us,
        b.t_decode_us - a.t_decode_us,
        b.t_batchd_us - a.t_batchd_us,
        b.t_prompt_us - a.t_prompt_us,
    );
    let (ns, ne, nd, nb, np) = (
        b.n_sample - a.n_sample,
        b.n_encode - a.n_encode,
        b.n_decode - a.n_decode,
        b.n_batchd - a.n_batchd,
        b.n_prompt - a.n_prompt,
    );
    json!({
        "mel_ms": (b.t_mel_us - a.t_mel_us) as f64 / 1e3,
        "sample_ms": sample as f64 / 1e3, "n_sample": ns, "sample_ms_per_run": per(sample, ns),
        "encode_ms": encode as f64 / 1e3, "n_encode": ne, "encode_ms_per_run": per(encode, ne),
        "decode_ms": decode as f64 / 1e3, "n_decode": nd, "decode_ms_per_run": per(decode, nd),
        "batchd_ms": batchd as f64 / 1e3, "n_batchd": nb, "batchd_ms_per_run": per(batchd, nb),
        "prompt_ms": prompt as f64 / 1e3, "n_prompt": np, "prompt_ms_per_run": per(prompt, np),
        "fallbacks_logprob": b.n_fail_p - a.n_fail_p,
        "fallbacks_entropy": b.n_fail_h - a.n_fail_h,
    })
}

unsafe extern "C" fn quiet_log(
    _level: sys::ggml_log_level,
    _text: *const c_char,
    _ud: *mut c_void,
) {
}

unsafe extern "C" fn count_encoder_begin(
    _ctx: *mut sys::whisper_context,
    _state: *mut sys::whisper_state,
    user_data: *mut c_void,
) -> bool {
    // SAFETY: user_data points to the counter owned by `run_full` for the duration of the call.
    unsafe { *user_data.cast::<i32>() += 1 };
    true
}

fn cstr(p: *const c_char) -> String {
    if p.is_null() {
        String::new()
    } else {
        // SAFETY: whisper.cpp returns NUL-terminated strings that live as long as the context.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }
}

// ---------------------------------------------------------------------------------------------

struct FullRun {
    wall_ms: f64,
    segments: i32,
    tokens: i64,
    encoder_calls: i32,
    timings: Option<Value>,
    cpu: Value,
    text_head: String,
}

fn run_full(
    ctx: *mut sys::whisper_context,
    state: *mut sys::whisper_state,
    args: &Args,
    lang: &CString,
    samples: &[f32],
    layout_ok: bool,
) -> Result<FullRun, String> {
    // SAFETY: plain C calls on a live context/state with valid pointers; the callback counter
    // and the language string outlive the whisper_full call.
    unsafe {
        let mut p = sys::whisper_full_default_params(
            sys::whisper_sampling_strategy_WHISPER_SAMPLING_GREEDY,
        );
        p.n_threads = args.threads;
        p.language = lang.as_ptr();
        p.detect_language = false;
        p.translate = false;
        p.no_context = !args.condition;
        p.no_timestamps = !args.timestamps;
        p.temperature = 0.0;
        p.temperature_inc = 0.0; // no fallback (whisper-cli -nf)
        p.greedy.best_of = 1;
        p.print_progress = false;
        p.print_realtime = false;
        p.print_timestamps = false;
        p.print_special = false;
        let mut encoder_calls: i32 = 0;
        p.encoder_begin_callback = Some(count_encoder_begin);
        p.encoder_begin_callback_user_data = (&mut encoder_calls as *mut i32).cast();

        let before = read_state_timings(state);
        let cpu = CpuProbe::start();
        let t = Instant::now();
        let rc =
            sys::whisper_full_with_state(ctx, state, p, samples.as_ptr(), samples.len() as c_int);
        let wall_ms = ms_since(t);
        let cpu = cpu.finish();
        if rc != 0 {
            return Err(format!("whisper_full_with_state failed ({rc})"));
        }
        let after = read_state_timings(state);
        let segments = sys::whisper_full_n_segments_from_state(state);
        let mut tokens = 0i64;
        let mut text = String::new();
        for s in 0..segments {
            tokens += i64::from(sys::whisper_full_n_tokens_from_state(state, s));
            if text.len() < 120 {
                text.push_str(&cstr(sys::whisper_full_get_segment_text_from_state(
                    state, s,
                )));
            }
        }
        let timings = (layout_ok && after.n_encode - before.n_encode == encoder_calls).then(|| {
            let mut t = timings_delta(before, after);
            // whisper.cpp 1.8.3 does not count n_sample: per decoded token instead.
            let sample_ms = t["sample_ms"].as_f64().unwrap_or(0.0);
            t["sample_ms_per_token"] = json!(sample_ms / tokens.max(1) as f64);
            t
        });
        Ok(FullRun {
            wall_ms,
            segments,
            tokens,
            encoder_calls,
            timings,
            cpu,
            text_head: text.chars().take(120).collect(),
        })
    }
}

fn run(args: &Args) -> Result<Value, String> {
    // SAFETY (whole function): calls into whisper.cpp's C API with the pointers it returned,
    // checked for null, and buffers that outlive each call.
    unsafe {
        if !args.verbose {
            sys::whisper_log_set(Some(quiet_log), ptr::null_mut());
            sys::ggml_log_set(Some(quiet_log), ptr::null_mut());
        }
        let version = cstr(sys::whisper_version());
        let layout_ok = version == BUNDLED_VERSION;
        let system_info = cstr(sys::whisper_print_system_info()).trim().to_owned();

        // Audio first, so a bad file fails before the model load.
        let mut audio = Vec::new();
        for f in &args.files {
            audio.push(read_wav(f)?);
        }

        let model_c =
            CString::new(args.model.to_string_lossy().as_bytes()).map_err(|e| e.to_string())?;
        let model_bytes = std::fs::metadata(&args.model)
            .map_err(|e| format!("{}: {e}", args.model.display()))?
            .len();
        let mut cparams = sys::whisper_context_default_params();
        cparams.use_gpu = false;
        cparams.flash_attn = args.flash_attn;
        let t = Instant::now();
        let ctx = sys::whisper_init_from_file_with_params_no_state(model_c.as_ptr(), cparams);
        let load_ms = ms_since(t);
        if ctx.is_null() {
            return Err(format!(
                "whisper.cpp could not load {}",
                args.model.display()
            ));
        }
        let t = Instant::now();
        let state = sys::whisper_init_state(ctx);
        let state_init_ms = ms_since(t);
        if state.is_null() {
            return Err("whisper_init_state failed".to_owned());
        }
        let rss_after_load = peak_rss_mb();
        let hparams = json!({
            "n_vocab": sys::whisper_model_n_vocab(ctx),
            "n_audio_ctx": sys::whisper_model_n_audio_ctx(ctx),
            "n_audio_state": sys::whisper_model_n_audio_state(ctx),
            "n_audio_head": sys::whisper_model_n_audio_head(ctx),
            "n_audio_layer": sys::whisper_model_n_audio_layer(ctx),
            "n_text_ctx": sys::whisper_model_n_text_ctx(ctx),
            "n_text_layer": sys::whisper_model_n_text_layer(ctx),
            "n_mels": sys::whisper_model_n_mels(ctx),
            "ftype": sys::whisper_model_ftype(ctx),
            "type": cstr(sys::whisper_model_type_readable(ctx)),
        });
        eprintln!(
            "whisper.cpp {version}: {} ({:.1} MB), {} threads, flash_attn {}",
            args.model.display(),
            model_bytes as f64 / 1e6,
            args.threads,
            args.flash_attn
        );
        eprintln!("load {load_ms:.1} ms, state init {state_init_ms:.1} ms");

        let mut micro = Value::Null;
        if !args.skip_micro {
            // One 30 s window: the first file's first 30 s (zeros when no file or shorter).
            let mut window = vec![0.0f32; WINDOW_SAMPLES];
            if let Some(a) = audio.first() {
                let n = a.len().min(WINDOW_SAMPLES);
                window[..n].copy_from_slice(&a[..n]);
            }
            let t = Instant::now();
            if sys::whisper_pcm_to_mel_with_state(
                ctx,
                state,
                window.as_ptr(),
                window.len() as c_int,
                args.threads,
            ) != 0
            {
                return Err("whisper_pcm_to_mel_with_state failed".to_owned());
            }
            let mel_ms = ms_since(t);

            let cpu = CpuProbe::start();
            let mut enc = Vec::new();
            for i in 0..=args.repeats {
                let t = Instant::now();
                if sys::whisper_encode_with_state(ctx, state, 0, args.threads) != 0 {
                    return Err("whisper_encode_with_state failed".to_owned());
                }
                if i > 0 {
                    enc.push(ms_since(t)); // run 0 is the warm-up
                }
            }
            let enc_cpu = cpu.finish();
            eprintln!(
                "encoder (30 s window): median {:.1} ms over {} runs",
                median(&enc),
                enc.len()
            );

            // Decoder: the multilingual prompt, then single tokens with n_past growing.
            let lang_id =
                sys::whisper_lang_id(CString::new(args.language.as_str()).unwrap().as_ptr());
            let prompt = [
                sys::whisper_token_sot(ctx),
                sys::whisper_token_lang(ctx, lang_id.max(0)),
                sys::whisper_token_transcribe(ctx),
                sys::whisper_token_not(ctx),
            ];
            let text_token: sys::whisper_token = 440; // any text token; repeated
            let cpu = CpuProbe::start();
            let mut prompt_ms = Vec::new();
            let mut per_token = Vec::new();
            let mut pass_mean = Vec::new();
            for pass in 0..=args.repeats {
                let t = Instant::now();
                if sys::whisper_decode_with_state(
                    ctx,
                    state,
                    prompt.as_ptr(),
                    prompt.len() as c_int,
                    0,
                    args.threads,
                ) != 0
                {
                    return Err("whisper_decode_with_state (prompt) failed".to_owned());
                }
                let p_ms = ms_since(t);
                let mut this = Vec::with_capacity(args.decode_tokens);
                for i in 0..args.decode_tokens {
                    let t = Instant::now();
                    let n_past = (prompt.len() + i) as c_int;
                    if sys::whisper_decode_with_state(
                        ctx,
                        state,
                        &text_token,
                        1,
                        n_past,
                        args.threads,
                    ) != 0
                    {
                        return Err("whisper_decode_with_state failed".to_owned());
                    }
                    this.push(ms_since(t));
                }
                if pass > 0 {
                    prompt_ms.push(p_ms);
                    pass_mean.push(this.iter().sum::<f64>() / this.len().max(1) as f64);
                    per_token.extend(this);
                }
            }
            let dec_cpu = cpu.finish();
            eprintln!(
                "decoder: median {:.2} ms/token ({} tokens x {} passes)",
                median(&per_token),
                args.decode_tokens,
                args.repeats
            );
            micro = json!({
                "window_source": args.files.first().map(|f| f.display().to_string()),
                "mel_ms": mel_ms,
                "encoder_ms": stats(&enc),
                "encoder_runs_ms": enc,
                "encoder_cpu": enc_cpu,
                "decoder": {
                    "prompt_tokens": prompt.len(),
                    "tokens_per_pass": args.decode_tokens,
                    "passes": args.repeats,
                    "token_id": text_token,
                    "prompt_ms": stats(&prompt_ms),
                    "ms_per_token": stats(&per_token),
                    "pass_mean_ms_per_token": stats(&pass_mean),
                    "cpu": dec_cpu,
                },
            });
        }
        let rss_after_micro = peak_rss_mb();

        let lang = CString::new(args.language.as_str()).map_err(|e| e.to_string())?;
        let mut files = Vec::new();
        for (path, samples) in args.files.iter().zip(&audio) {
            let audio_s = samples.len() as f64 / f64::from(SAMPLE_RATE);
            let mut runs = Vec::new();
            for _ in 0..args.e2e_repeats {
                runs.push(run_full(ctx, state, args, &lang, samples, layout_ok)?);
            }
            let walls: Vec<f64> = runs.iter().map(|r| r.wall_ms).collect();
            let med = median(&walls);
            // Report the run closest to the median wall time.
            let r = runs
                .iter()
                .min_by(|a, b| (a.wall_ms - med).abs().total_cmp(&(b.wall_ms - med).abs()))
                .unwrap();
            eprintln!(
                "{}: {:.1} s audio, {:.0} ms wall (RTF {:.3}), {} segments, {} tokens, {} windows",
                path.display(),
                audio_s,
                r.wall_ms,
                r.wall_ms / 1e3 / audio_s,
                r.segments,
                r.tokens,
                r.encoder_calls
            );
            files.push(json!({
                "path": path.display().to_string(),
                "audio_s": audio_s,
                "wall_ms": r.wall_ms,
                "wall_ms_runs": walls,
                "rtf": r.wall_ms / 1e3 / audio_s,
                "segments": r.segments,
                "tokens": r.tokens,
                "encoder_calls": r.encoder_calls,
                "whisper_timings": r.timings,
                "cpu": r.cpu,
                "text_head": r.text_head,
            }));
        }
        let rss_peak = peak_rss_mb();

        sys::whisper_free_state(state);
        sys::whisper_free(ctx);

        Ok(json!({
            "schema": "voxide-peer/1",
            "peer": "whisper.cpp",
            "whisper_cpp_version": version,
            "binding": "whisper-rs-sys 0.15.0",
            "system_info": system_info,
            "model": args.model.display().to_string(),
            "model_bytes": model_bytes,
            "hparams": hparams,
            "threads": args.threads,
            "flash_attn": args.flash_attn,
            "settings": {
                "sampling": "greedy",
                "temperature": 0.0,
                "temperature_inc": 0.0,
                "no_context": !args.condition,
                "no_timestamps": !args.timestamps,
                "language": args.language,
                "repeats": args.repeats,
                "decode_tokens": args.decode_tokens,
                "e2e_repeats": args.e2e_repeats,
            },
            "load_ms": load_ms,
            "state_init_ms": state_init_ms,
            "micro": micro,
            "files": files,
            "peak_rss_mb": rss_peak,
            "peak_rss_mb_after": {"load": rss_after_load, "micro": rss_after_micro, "e2e": rss_peak},
        }))
    }
}

fn print_table(r: &Value) {
    let f = |v: &Value| {
        v.as_f64()
            .map_or_else(|| "-".to_owned(), |x| format!("{x:.2}"))
    };
    println!(
        "\nwhisper.cpp {} | {} | {} threads | flash_attn {}",
        r["whisper_cpp_version"].as_str().unwrap_or("?"),
        r["model"].as_str().unwrap_or("?"),
        r["threads"],
        r["flash_attn"]
    );
    println!(
        "{:<34} {:>12} {:>12} {:>12}",
        "measure", "median", "min", "max"
    );
    println!("{:<34} {:>12}", "model load ms", f(&r["load_ms"]));
    let m = &r["micro"];
    if !m.is_null() {
        let e = &m["encoder_ms"];
        println!(
            "{:<34} {:>12} {:>12} {:>12}",
            "encoder ms (30 s window)",
            f(&e["median"]),
            f(&e["min"]),
            f(&e["max"])
        );
        let d = &m["decoder"]["ms_per_token"];
        println!(
            "{:<34} {:>12} {:>12} {:>12}",
            "decoder ms/token (single steps)",
            f(&d["median"]),
            f(&d["min"]),
            f(&d["max"])
        );
        let p = &m["decoder"]["pass_mean_ms_per_token"];
        println!(
            "{:<34} {:>12} {:>12} {:>12}",
            "decoder ms/token (pass means)",
            f(&p["median"]),
            f(&p["min"]),
            f(&p["max"])
        );
    }
    println!(
        "\n{:<48} {:>8} {:>10} {:>7} {:>7} {:>8} {:>10} {:>10}",
        "file", "audio s", "wall ms", "RTF", "tokens", "windows", "enc ms/w", "dec ms/t"
    );
    for x in r["files"].as_array().into_iter().flatten() {
        let t = &x["whisper_timings"];
        let name = x["path"].as_str().unwrap_or("?");
        let name = Path::new(name)
            .file_name()
            .map_or(name.into(), |n| n.to_string_lossy());
        println!(
            "{:<48} {:>8.1} {:>10.0} {:>7.3} {:>7} {:>8} {:>10} {:>10}",
            name,
            x["audio_s"].as_f64().unwrap_or(0.0),
            x["wall_ms"].as_f64().unwrap_or(0.0),
            x["rtf"].as_f64().unwrap_or(0.0),
            x["tokens"].as_i64().unwrap_or(0),
            x["encoder_calls"].as_i64().unwrap_or(0),
            f(&t["encode_ms_per_run"]),
            f(&t["decode_ms_per_run"]),
        );
    }
    println!("\npeak RSS {} MB", f(&r["peak_rss_mb"]));
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("error: {e}\n");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(r) => {
            print_table(&r);
            if let Some(path) = &args.json {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    let _ = std::fs::create_dir_all(dir);
                }
                let text = serde_json::to_string_pretty(&r).unwrap() + "\n";
                if let Err(e) = std::fs::write(path, text) {
                    eprintln!("error: {}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
                eprintln!("wrote {}", path.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
