//! `voxide quantize` and `voxide convert`: Whisper checkpoints (Hugging Face directories or
//! whisper.cpp files) written as whisper.cpp model files, quantized or float.

use crate::output::OutputFile;
use anyhow::{bail, Result};
use clap::Args;
use std::path::PathBuf;
use std::time::Instant;
use voxide_models::ggml::GgmlType;
use voxide_models::whisper::convert::convert;
use voxide_models::Error;

/// Block types a whisper.cpp file can hold.
const BLOCK_TYPES: [&str; 10] = [
    "q8_0", "q5_1", "q5_0", "q4_1", "q4_0", "q6_k", "q5_k", "q4_k", "q3_k", "q2_k",
];

#[derive(Args)]
pub struct QuantizeArgs {
    /// A Whisper checkpoint directory (config.json + model.safetensors), a whisper.cpp
    /// model file (ggml .bin or GGUF), or a hub id (openai/whisper-tiny).
    input: PathBuf,
    /// The file to write: whisper.cpp's ggml format, or GGUF when it ends in .gguf.
    output: PathBuf,
    /// The block type of the matrices.
    #[arg(long = "type", value_parser = BLOCK_TYPES)]
    ty: String,
    /// Store matrices whose rows are not whole blocks of a k-quant (whisper-tiny's 384
    /// columns) in llama.cpp's fallback type (q4_K → q5_0, ...); whisper.cpp cannot load the
    /// result, voxide can.
    #[arg(long)]
    allow_fallback: bool,
}

#[derive(Args)]
pub struct ConvertArgs {
    /// A Whisper checkpoint directory (config.json + model.safetensors), a whisper.cpp
    /// model file (ggml .bin or GGUF), or a hub id (openai/whisper-tiny).
    input: PathBuf,
    /// The file to write: whisper.cpp's ggml format, or GGUF when it ends in .gguf.
    output: PathBuf,
    /// The type of the matrices (whisper.cpp's converter writes f16).
    #[arg(long = "type", default_value = "f16", value_parser = ["f16", "f32"])]
    ty: String,
}

pub fn run_quantize(args: QuantizeArgs) -> Result<()> {
    write(args.input, args.output, &args.ty, args.allow_fallback)
}

pub fn run_convert(args: ConvertArgs) -> Result<()> {
    write(args.input, args.output, &args.ty, false)
}

fn write(input: PathBuf, output: PathBuf, ty: &str, allow_fallback: bool) -> Result<()> {
    let Some(ty) = GgmlType::from_name(ty) else {
        bail!("unknown type {ty}");
    };
    // The output first: an unwritable path fails before any input is read or fetched.
    let out = OutputFile::new(&output)?;
    // A local checkpoint or file, or a hub id (fetched as `transcribe --model` fetches it).
    let input = voxide_runtime::resolve_model(&input.to_string_lossy())?
        .path()
        .to_owned();
    if output.exists() && output.canonicalize().ok() == input.canonicalize().ok() {
        bail!("{} is the input; write to another file", output.display());
    }
    let start = Instant::now();
    let report = convert(&input, out.write_path(), ty, allow_fallback).map_err(|e| match e {
        // Named by the user's path, not the `.partial` sibling written.
        Error::Write { path, source } if path == out.write_path() => out.error(source),
        e => e.into(),
    })?;
    out.commit()?;
    note!(
        "wrote {}: {} tensors ({} matrices as {ty}), {:.1} MB of weights, in {:.1} s",
        output.display(),
        report.tensors,
        report.matrices,
        report.bytes as f64 / 1e6,
        start.elapsed().as_secs_f64()
    );
    for (name, took) in &report.fallbacks {
        note!("  {name}: rows are not whole {ty} blocks; stored as {took}");
    }
    Ok(())
}
