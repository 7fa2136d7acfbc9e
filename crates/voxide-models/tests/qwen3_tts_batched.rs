//! Concurrent Qwen3-TTS requests with their frames taken together
//! (`Synthesizer::batch_concurrent_frames`): each request — its own text, voice, language,
//! text layout, frame budget, greedy or sampled — speaks what it speaks alone, sample for
//! sample, on the seeded random-weight CustomVoice fixture (its bf16 weights and int8); one
//! that stops listening mid-way stops there without holding the others up.

mod common;

use candle_core::Device;
use std::path::Path;
use voxide_models::qwen3_tts::{GenerationParams, SpeechRequest, Synthesizer};
use voxide_nn::linear::WeightFormat;

fn request(text: &str, voice: &str, language: &str, max_frames: usize) -> SpeechRequest {
    SpeechRequest {
        text: text.into(),
        voice: Some(voice.into()),
        instruct: None,
        cloned_voice: None,
        language: Some(language.into()),
        params: GenerationParams {
            talker: None,
            predictor: None,
            max_frames,
            ..GenerationParams::default()
        },
        seed: 0,
        non_streaming_text: None,
        chunk_frames: 4,
    }
}

/// A request, and the number of audio chunks after which its listener hangs up (`None`:
/// never).
type Call = (SpeechRequest, Option<usize>);

/// The request's audio (as far as its listener took it) and its frame count.
fn speak(synthesizer: &Synthesizer, (request, hang_up): &Call) -> (Vec<f32>, usize) {
    let mut pcm = Vec::new();
    let mut chunks = 0;
    let stats = synthesizer
        .synthesize(request, &mut |chunk| {
            pcm.extend_from_slice(chunk);
            chunks += 1;
            Ok(hang_up.is_none_or(|n| chunks < n))
        })
        .unwrap();
    (pcm, stats.frames)
}

#[test]
fn concurrent_requests_batched_speak_what_each_speaks_alone() {
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/qwen3-tts/tiny-random");
    let sampled = |mut r: SpeechRequest, seed: u64| {
        r.params.talker = GenerationParams::default().talker;
        r.params.predictor = GenerationParams::default().predictor;
        r.seed = seed;
        r
    };
    let streamed_text = {
        let mut r = request("Streamed text, frame by frame.", "tester", "english", 9);
        r.non_streaming_text = Some(false);
        r
    };
    let calls: Vec<Call> = vec![
        (request("Hello world.", "tester", "english", 12), None),
        (
            sampled(request("Good morning.", "dylan", "auto", 10), 7),
            None,
        ),
        (streamed_text, None),
        (
            sampled(request("Good morning.", "dylan", "auto", 10), 8),
            None,
        ),
        (
            request("A listener who leaves.", "tester", "english", 16),
            Some(2),
        ),
    ];
    for format in [None, Some(WeightFormat::Int8)] {
        let mut synthesizer = Synthesizer::from_dir(&fixture, &Device::Cpu, format).unwrap();
        let alone: Vec<_> = calls.iter().map(|c| speak(&synthesizer, c)).collect();
        // The requests say different things (the test would not see audio swapped), and the
        // listener who hangs up heard less than it asked for.
        for (i, a) in alone.iter().enumerate() {
            assert!(a.1 > 0, "{format:?}: request {i} spoke nothing");
            assert!(
                alone[..i].iter().all(|b| b.0 != a.0),
                "{format:?}: request {i}"
            );
        }
        assert!(alone[4].1 < 16, "{format:?}: {} frames", alone[4].1);
        assert_eq!(synthesizer.batch_stats(), None);
        synthesizer.batch_concurrent_frames(3);
        let together = common::at_once(&calls, |call| speak(&synthesizer, call));
        for (i, (got, want)) in together.iter().zip(&alone).enumerate() {
            assert_eq!(got.1, want.1, "{format:?}: request {i}'s frames");
            assert!(got.0 == want.0, "{format:?}: request {i}'s audio differs");
        }
        let stats = synthesizer.batch_stats().unwrap();
        assert!(
            stats.largest >= 2 && stats.batches < stats.decodes && stats.largest <= 3,
            "{format:?}: {stats:?}"
        );
    }
}
