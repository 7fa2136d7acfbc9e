//! Concurrent Voxtral Realtime streams with their decoder steps taken together
//! (`VoxtralRealtime::batch_concurrent_steps`): each stream decodes the ids it decodes alone,
//! whatever ran beside it, on the seeded random-weight fixture (f32, bf16 and int8 weights).

mod common;

use common::{ids, samples};

use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use voxide_models::voxtral_realtime::{StreamOptions, VoxtralRealtime};
use voxide_nn::linear::WeightFormat;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/voxtral-realtime")
}

fn reference() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(
        fixtures().join("tiny-random.reference.safetensors"),
        &Device::Cpu,
    )
    .expect("reference tensors")
}

/// A stream's input: its audio, its delay and how it is pushed (chunk sizes cycled; empty:
/// one offline `transcribe` call).
struct Input {
    audio: Vec<f32>,
    delay_ms: u32,
    chunks: Vec<usize>,
}

/// The ids of `input` through `model`, pushed as it says.
fn decode(model: &VoxtralRealtime, input: &Input) -> Vec<u32> {
    let options = StreamOptions {
        delay_ms: input.delay_ms,
        encoder_min_frames: 1,
        ..StreamOptions::default()
    };
    if input.chunks.is_empty() {
        let (transcript, _) = model
            .transcribe(&input.audio, options, &mut |_| true)
            .unwrap();
        return transcript.token_ids;
    }
    let mut stream = model.stream(options).unwrap();
    let mut at = 0;
    for &size in input.chunks.iter().cycle() {
        if at >= input.audio.len() {
            break;
        }
        let end = (at + size).min(input.audio.len());
        stream.push(&input.audio[at..end]).unwrap();
        at = end;
    }
    stream.finish().unwrap();
    stream.tokens().iter().map(|t| t.id).collect()
}

/// Four streams at once — two offline transcriptions and two live streams pushed in chunks of
/// 1280 samples and of random sizes, at three delays — through a model that takes their
/// steps together: each gets the ids it gets alone (for the reference's clips at the default
/// delay, transformers' ids), and steps did share batches.
#[test]
fn concurrent_streams_batched_decode_what_each_decodes_alone() {
    let r = reference();
    let audio = samples(&r["audio"]);
    let speech = samples(&r["speech_audio"]);
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let random: Vec<usize> = (0..400).map(|_| rng.random_range(1..5000)).collect();
    let inputs = [
        Input {
            audio: audio[..48000].to_vec(),
            delay_ms: 480,
            chunks: Vec::new(),
        },
        Input {
            audio: speech[..64000].to_vec(),
            delay_ms: 480,
            chunks: vec![1280],
        },
        Input {
            audio: speech[8000..56000].to_vec(),
            delay_ms: 160,
            chunks: random,
        },
        Input {
            audio: audio[..40000].to_vec(),
            delay_ms: 960,
            chunks: Vec::new(),
        },
    ];
    for (layout, format) in [
        ("tiny-random-mistral", None),
        ("tiny-random-hf", None),
        ("tiny-random-mistral", Some(WeightFormat::Bf16)),
        ("tiny-random-mistral", Some(WeightFormat::Int8)),
    ] {
        let what = format!("{layout} {format:?}");
        let mut model =
            VoxtralRealtime::from_dir(&fixtures().join(layout), &Device::Cpu, format).unwrap();
        let alone: Vec<Vec<u32>> = inputs.iter().map(|i| decode(&model, i)).collect();
        if format.is_none() {
            assert_eq!(alone[0], ids(&r["offline_generated_ids"]), "{what}");
            assert_eq!(alone[1], ids(&r["speech_generated_ids"]), "{what}");
        }
        // The delays differ, and so do the ids (the test would not see rows swapped).
        assert!(alone[0] != alone[3] && alone[1] != alone[2], "{what}");
        assert_eq!(model.batch_stats(), None);
        model.batch_concurrent_steps(4);
        let together = common::at_once(&inputs, |input| decode(&model, input));
        for (i, (got, want)) in together.iter().zip(&alone).enumerate() {
            assert_eq!(got, want, "{what}: stream {i}");
        }
        let stats = model.batch_stats().unwrap();
        assert!(
            stats.largest >= 2 && stats.batches < stats.decodes,
            "{what}: {stats:?}"
        );
    }
}

/// One decoder step of several streams at once equals each stream's step alone, state
/// included: the next step of each, taken alone, gives the same logits as after a step alone.
#[test]
fn a_batch_of_one_step_each_leaves_each_stream_as_alone() {
    let model =
        VoxtralRealtime::from_dir(&fixtures().join("tiny-random-mistral"), &Device::Cpu, None)
            .unwrap();
    let network = model.network();
    let dim = network.config().decoder.dim;
    // Three streams of different delays and lengths of context.
    let mut states: Vec<_> = [(480, 5), (160, 1), (2400, 9)]
        .into_iter()
        .enumerate()
        .map(|(i, (delay_ms, context))| {
            let delay = model.delay_tokens(delay_ms).unwrap();
            let mut state = network.new_state(delay, DType::F32).unwrap();
            let x = Tensor::randn(0f32, 1.0, (1, context, dim), &Device::Cpu).unwrap();
            network
                .decode(&mut state, &(x * (1.0 + i as f64)).unwrap(), None)
                .unwrap();
            state
        })
        .collect();
    let x = Tensor::randn(0f32, 1.0, (3, 1, dim), &Device::Cpu).unwrap();
    let mut alone = states.clone();
    let want: Vec<Tensor> = alone
        .iter_mut()
        .enumerate()
        .map(|(i, s)| {
            network
                .decode(s, &x.narrow(0, i, 1).unwrap(), None)
                .unwrap()
        })
        .collect();
    let mut refs: Vec<_> = states.iter_mut().collect();
    let got = network.decode_rows(&mut refs, &x).unwrap();
    let next = Tensor::randn(0f32, 1.0, (1, 1, dim), &Device::Cpu).unwrap();
    for (i, want) in want.iter().enumerate() {
        let diff = common::max_abs_diff(&got.narrow(0, i, 1).unwrap(), want);
        assert!(diff < 1e-5, "row {i}: {diff}");
        assert_eq!(states[i].decoder_position(), alone[i].decoder_position());
        let after = network.decode(&mut states[i], &next, None).unwrap();
        let after_alone = network.decode(&mut alone[i], &next, None).unwrap();
        let diff = common::max_abs_diff(&after, &after_alone);
        assert!(diff < 1e-5, "row {i}, the step after: {diff}");
    }
}
