//! `voxide`: speech-to-text (and, later, text-to-speech) from the command line.

mod bench;
mod transcribe;

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
    /// Time transcriptions: RTF, encoder, decoder ms/step, first token, peak memory.
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Transcribe(args) => transcribe::run(args),
        Command::Bench(args) => bench::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Every error message is self-contained and names what failed: one line.
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
