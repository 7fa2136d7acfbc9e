//! `voxide`: speech-to-text and text-to-speech from the command line.

/// `eprintln!` for status lines and errors, dropping what stderr cannot take: `eprintln!`
/// panics when the write fails (stderr a pipe whose reader has gone, e.g. `2>&1 | head -1`).
macro_rules! note {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// `println!` for report lines: a stdout that cannot take them (a closed pipe, a full disk)
/// ends the command with the one-line error the streaming commands give, not a panic.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout(), $($arg)*) {
            $crate::stdout_failed(e)
        }
    }};
}

mod ask;
mod bench;
mod output;
mod quantize;
mod serve;
mod speak;
mod stream;
mod transcribe;
mod vad;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "voxide",
    version,
    about = "Fast speech models on your own hardware"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Transcribe (or translate) audio files.
    Transcribe(transcribe::TranscribeArgs),
    /// Ask questions about audio, or text alone (Voxtral Mini 3B), the answer streamed as it
    /// decodes.
    Ask(ask::AskArgs),
    /// Transcribe live audio from standard input as it arrives (streaming models).
    Stream(stream::StreamArgs),
    /// Time transcriptions: RTF, encoder, decoder ms/step, first token, peak memory.
    Bench(bench::BenchArgs),
    /// Say text aloud (Qwen3-TTS), streaming audio out as it is synthesised.
    Speak(speak::SpeakArgs),
    /// Find the speech in audio files (Silero VAD): segments as text or JSON.
    Vad(vad::VadArgs),
    /// Serve the models over HTTP: OpenAI's audio API, realtime transcription and chat about audio.
    Serve(serve::ServeArgs),
    /// Write a Whisper model as a quantized whisper.cpp file (q8_0, q5_1, q4_K, ...).
    Quantize(quantize::QuantizeArgs),
    /// Write a Whisper checkpoint as a whisper.cpp file (f16 or f32), or GGUF.
    Convert(quantize::ConvertArgs),
}

/// Hands memory freed while loading a model back to the system. Converting weights (f32 read
/// buffers → f16) frees tens of MB in the middle of glibc's heap, which it keeps otherwise;
/// trimming once after the load lowers the peak by as much, at no cost per token (a fixed
/// mmap threshold did the same but made every large activation a fresh mapping: the encoder
/// ran 70 % slower).
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages of the allocator's own heap to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Makes glibc serve large buffers from its heap and keep them there when freed, for text to
/// speech: the codec decoder allocates activations of several MB per layer and chunk, each a
/// fresh mapping by default (dynamic threshold) that costs a page fault and a zeroing per 4 kB
/// on first touch. With a 256 MB threshold and a 1 GB trim threshold, freed activations are
/// reused: the 0.6B codec alone 27.0–28.1 → 25.9–26.1 ms per frame, page faults 234–303 k →
/// 127 k per 96 frames, peak RSS +14 MB. Set after loading, so that the load's freed buffers
/// were handed back first ([`release_freed_memory`]). A trim threshold alone would turn the
/// dynamic threshold off and map every buffer over 128 kB (37 ms per frame).
pub fn reuse_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes glibc's thresholds for later allocations.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

/// Caps glibc at two heaps (arenas) where concurrent transcriptions run on many threads (a
/// batching server, files transcribed at once): each thread's heap otherwise keeps what that
/// thread's encoder freed, for no other thread to reuse. Eight concurrent whisper-tiny requests decoded in a batch (`serve
/// --max-batch-size 8`): peak RSS 760 → 551 MB, wall time level (3.77 / 3.74 s). Set before
/// the server's threads start.
pub fn share_heaps() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes how glibc places later allocations.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// `--top-p` of the sampling commands (`speak`, `ask`): the nucleus keeps a share of the
/// probability, so 0 or past 1 is an error naming the value.
pub fn check_top_p(top_p: f32) -> anyhow::Result<()> {
    if !(top_p > 0.0 && top_p <= 1.0) {
        anyhow::bail!("--top-p {top_p} must lie in (0, 1]");
    }
    Ok(())
}

/// Ends the command after a failed write to stdout (see `say!`).
fn stdout_failed(e: std::io::Error) -> ! {
    note!("error: cannot write to stdout: {e}");
    std::process::exit(1)
}

fn main() -> ExitCode {
    // A panic inside an audio decoder (symphonia's, on a damaged header) is caught and reported
    // as corrupt data in one line; its panic message would only repeat it with a backtrace.
    let report_panic = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !voxide_audio::inside_decoder() {
            report_panic(info);
        }
    }));
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Transcribe(args) => transcribe::run(args),
        Command::Ask(args) => ask::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Stream(args) => stream::run(args),
        Command::Speak(args) => speak::run(args),
        Command::Vad(args) => vad::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Quantize(args) => quantize::run_quantize(args),
        Command::Convert(args) => quantize::run_convert(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Every error message is self-contained and names what failed: one line.
            note!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
