//! `voxide stream`: live transcription of 16 kHz mono audio from standard input (raw s16le or
//! a WAV stream); text is printed as soon as it is decoded.

use crate::transcribe::{kv_precision, precision, set_threads};
use anyhow::{bail, Result};
use clap::Args;
use std::io::Write;
use std::time::Instant;
use voxide_audio::{PcmFormat, PcmStream};
use voxide_models::voxtral_realtime::{RealtimeStream, StreamOptions, SAMPLE_RATE};
use voxide_runtime::{load_streaming, resolve_model};

#[derive(Args, Debug)]
pub struct StreamArgs {
    /// Streaming model directory (Voxtral Realtime, either layout) or hub id.
    #[arg(short, long, env = "VOXIDE_MODEL")]
    model: String,
    /// Transcription delay, ms: 80 to 2400 in steps of 80. Longer is more accurate.
    #[arg(long, default_value_t = 480)]
    delay_ms: u32,
    /// Standard input's encoding: auto (WAV if it has a RIFF header, else raw), wav, s16le.
    #[arg(long, default_value = "auto", value_parser = ["auto", "wav", "s16le"])]
    input_format: String,
    /// Weight precision: auto (the checkpoint's), f32, f16 or bf16.
    #[arg(long, default_value = "auto", value_parser = ["auto", "f32", "f16", "bf16"])]
    precision: String,
    /// KV-cache precision: f32, f16 or bf16.
    #[arg(long, default_value = "f32", value_parser = ["f32", "f16", "bf16"])]
    kv_precision: String,
    /// Run the encoder once this many 20 ms frames are waiting (lower: less latency, more
    /// passes over the encoder weights).
    #[arg(long, default_value_t = StreamOptions::default().encoder_min_frames)]
    encoder_frames: usize,
    /// CPU threads (default: all cores).
    #[arg(short, long)]
    threads: Option<usize>,
    /// Print timings to stderr at the end.
    #[arg(short, long)]
    verbose: bool,
}

pub fn run(args: StreamArgs) -> Result<()> {
    set_threads(args.threads)?;
    let source = resolve_model(&args.model)?;
    let model = load_streaming(
        &source,
        &candle_core::Device::Cpu,
        precision(&args.precision),
    )?;
    crate::release_freed_memory();
    let options = StreamOptions {
        delay_ms: args.delay_ms,
        kv_dtype: kv_precision(&args.kv_precision),
        encoder_min_frames: args.encoder_frames.max(1),
        restart_on_eos: true,
    };
    let mut stream = model.stream(options)?;
    let clock = Instant::now();
    let format = match args.input_format.as_str() {
        "wav" => PcmFormat::Wav,
        "s16le" => PcmFormat::S16le,
        _ => PcmFormat::Auto,
    };
    let mut input = PcmStream::open(std::io::stdin().lock(), format, SAMPLE_RATE)?;
    let mut samples = 0usize;
    // Read errors (a truncated stream) end the stream: what was heard is still transcribed
    // and printed, then the error is reported.
    let mut failure = None;
    loop {
        match input.next_chunk() {
            Ok(Some(chunk)) => {
                samples += chunk.len();
                emit(&stream.push(&chunk)?)?;
            }
            Ok(None) => break,
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    if samples == 0 && failure.is_none() {
        bail!("stdin: no audio (expected 16 kHz mono s16le or WAV)");
    }
    emit(&stream.finish()?)?;
    emit("\n")?;
    if args.verbose {
        report(&stream, samples, clock);
    }
    match failure {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

/// Prints text at once (stdout is line-buffered otherwise).
fn emit(text: &str) -> Result<()> {
    if !text.is_empty() {
        let mut out = std::io::stdout().lock();
        out.write_all(text.as_bytes())
            .and_then(|_| out.flush())
            .map_err(|e| anyhow::anyhow!("cannot write to stdout: {e}"))?;
    }
    Ok(())
}

fn report(stream: &RealtimeStream, samples: usize, clock: Instant) {
    let t = stream.timings();
    let audio = samples as f64 / SAMPLE_RATE as f64;
    let wall = clock.elapsed().as_secs_f64();
    eprintln!(
        "{audio:.2} s audio | mel {:.0} ms | encoder {:.0} ms ({} passes) | prefill {:.0} ms | decoder {:.1} ms/step ({} steps) | first token {:.0} ms | wall {:.0} ms | RTF {:.3}",
        t.mel_ms,
        t.encoder_ms,
        t.encoder_calls,
        t.prefill_ms,
        t.ms_per_step(),
        t.steps,
        t.first_token_ms.unwrap_or(0.0),
        wall * 1e3,
        wall / audio.max(1e-9)
    );
}
