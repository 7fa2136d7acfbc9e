//! Times the Qwen3-TTS codec decoder alone: 96 seeded random frames decoded in chunks, as the
//! synthesizer streams them.
//!
//! `cargo run --release -p voxide-models --example codec_decode -- SPEECH_TOKENIZER_DIR [CHUNK]`

use std::time::Instant;
use voxide_models::qwen3_tts::codec::load_codec;

const FRAMES: usize = 96;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .ok_or("usage: codec_decode SPEECH_TOKENIZER_DIR [CHUNK_FRAMES]")?;
    let chunk: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(16);
    let device = candle_core::Device::Cpu;
    let (_, codec) = load_codec(std::path::Path::new(&dir), &device)?;
    let cfg = codec.config();
    let mut state = 1u64;
    let frames: Vec<Vec<u32>> = (0..FRAMES)
        .map(|_| {
            (0..cfg.num_quantizers)
                .map(|_| {
                    state = state
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1_442_695_040_888_963_407);
                    ((state >> 33) % cfg.codebook_size as u64) as u32
                })
                .collect()
        })
        .collect();
    let mut stream = codec.new_state(&device)?;
    let start = Instant::now();
    for part in frames.chunks(chunk.max(1)) {
        let clock = Instant::now();
        codec.push(&mut stream, part)?;
        let ms = clock.elapsed().as_secs_f64() * 1e3;
        eprintln!(
            "{} frames: {:.1} ms per frame",
            part.len(),
            ms / part.len() as f64
        );
    }
    let ms = start.elapsed().as_secs_f64() * 1e3;
    println!(
        "{FRAMES} frames in chunks of {chunk}: {:.1} ms per frame",
        ms / FRAMES as f64
    );
    Ok(())
}
