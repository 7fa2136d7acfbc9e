//! `voxide stream`: live transcription of 16 kHz mono audio from standard input (raw s16le or
//! a WAV stream) or, built with the `mic` feature, the default microphone; text is printed
//! as soon as it is decoded.

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
    /// Transcription delay, ms: 80 to 2400 in steps of 80 (default: the model's, from its
    /// tekken.json; 480 where it names none). Longer is more accurate.
    #[arg(long)]
    delay_ms: Option<u32>,
    /// Standard input's encoding: auto (WAV if it has a RIFF header, else raw), wav, s16le.
    #[arg(long, default_value = "auto", value_parser = ["auto", "wav", "s16le"])]
    input_format: String,
    /// Weight precision: auto (the checkpoint's), f32, f16, bf16, or int8 (the decoder's
    /// matrices, quantized per row at load).
    #[arg(long, default_value = "auto", value_parser = ["auto", "f32", "f16", "bf16", "int8"])]
    precision: String,
    /// KV-cache precision: auto (f16 beside bf16, f16 or quantized weights, f32 beside
    /// f32 ones), f32, f16 or bf16.
    #[arg(long, default_value = "auto", value_parser = crate::transcribe::KV_PRECISIONS)]
    kv_precision: String,
    /// Run the encoder once this many 20 ms frames are waiting (lower: less latency, more
    /// passes over the encoder weights).
    #[arg(long, default_value_t = StreamOptions::default().encoder_min_frames)]
    encoder_frames: usize,
    /// Listen to the default microphone instead of standard input (until Ctrl-C).
    #[cfg(feature = "mic")]
    #[arg(long)]
    mic: bool,
    /// CPU threads (default: all cores).
    #[arg(short, long)]
    threads: Option<usize>,
    /// Print timings to stderr at the end.
    #[arg(short, long)]
    verbose: bool,
}

pub fn run(args: StreamArgs) -> Result<()> {
    set_threads(args.threads)?;
    if args.encoder_frames == 0 {
        bail!("--encoder-frames must be at least 1");
    }
    let source = resolve_model(&args.model)?;
    let model = load_streaming(
        &source,
        &candle_core::Device::Cpu,
        precision(&args.precision),
    )?;
    crate::release_freed_memory();
    let defaults = model.default_options();
    let options = StreamOptions {
        delay_ms: args.delay_ms.unwrap_or(defaults.delay_ms),
        kv_dtype: kv_precision(&args.kv_precision),
        encoder_min_frames: args.encoder_frames,
        restart_on_eos: true,
    };
    let mut stream = model.stream(options)?;
    let clock = Instant::now();
    #[cfg(feature = "mic")]
    if args.mic {
        return mic::run(|samples| emit(&stream.push(samples)?));
    }
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
    note!(
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

/// `--mic`: the default input device through cpal, downmixed and resampled to 16 kHz.
#[cfg(feature = "mic")]
mod mic {
    use anyhow::{anyhow, bail, Result};
    use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};
    use std::sync::mpsc;

    /// Streams microphone audio into `push` until the device fails or the process is
    /// interrupted.
    pub fn run(mut push: impl FnMut(&[f32]) -> Result<()>) -> Result<()> {
        let host = cpal::default_host();
        let device = host
            .default_input_device()
            .ok_or_else(|| anyhow!("no microphone: the audio host has no default input device"))?;
        let config = device
            .default_input_config()
            .map_err(|e| anyhow!("microphone: {e}"))?;
        let channels = config.channels() as usize;
        let rate = config.sample_rate().0;
        let (tx, rx) = mpsc::channel::<Vec<f32>>();
        let on_error = |e| note!("microphone: {e}");
        let stream = match config.sample_format() {
            cpal::SampleFormat::F32 => device.build_input_stream(
                &config.into(),
                move |data: &[f32], _: &_| {
                    let _ = tx.send(downmix(data.iter().copied(), channels));
                },
                on_error,
                None,
            ),
            cpal::SampleFormat::I16 => device.build_input_stream(
                &config.into(),
                move |data: &[i16], _: &_| {
                    let _ = tx.send(downmix(data.iter().map(|&s| s as f32 / 32768.0), channels));
                },
                on_error,
                None,
            ),
            other => bail!("microphone sample format {other:?} is not supported"),
        }
        .map_err(|e| anyhow!("microphone: {e}"))?;
        stream.play().map_err(|e| anyhow!("microphone: {e}"))?;
        note!("listening ({rate} Hz, {channels} channels); Ctrl-C to stop");
        let mut resampler = LinearResampler::new(rate, super::SAMPLE_RATE);
        while let Ok(chunk) = rx.recv() {
            push(&resampler.process(&chunk))?;
        }
        Ok(())
    }

    fn downmix(samples: impl Iterator<Item = f32>, channels: usize) -> Vec<f32> {
        let all: Vec<f32> = samples.collect();
        all.chunks(channels)
            .map(|f| f.iter().sum::<f32>() / channels as f32)
            .collect()
    }

    /// Streaming linear interpolation (what voxtral.c uses for live input; the file path
    /// uses the band-limited resampler instead).
    struct LinearResampler {
        step: f64,
        pos: f64,
        prev: Option<f32>,
    }

    impl LinearResampler {
        fn new(from: u32, to: u32) -> Self {
            Self {
                step: from as f64 / to as f64,
                pos: 0.0,
                prev: None,
            }
        }

        fn process(&mut self, input: &[f32]) -> Vec<f32> {
            let buf: Vec<f32> = self.prev.into_iter().chain(input.iter().copied()).collect();
            let mut out = Vec::new();
            while self.pos + 1.0 < buf.len() as f64 {
                let i = self.pos as usize;
                let frac = (self.pos - i as f64) as f32;
                out.push(buf[i] * (1.0 - frac) + buf[i + 1] * frac);
                self.pos += self.step;
            }
            if let Some(&last) = buf.last() {
                self.pos -= (buf.len() - 1) as f64;
                self.prev = Some(last);
            }
            out
        }
    }
}
