//! Concurrent Voxtral Mini 3B requests with their decoder steps taken together
//! (`Voxtral::batch_concurrent_steps`): each request — a transcription, a translation, a chat
//! question, sampled or greedy, each with a prompt of its own length — generates what it
//! generates alone, on the seeded random-weight fixture (f32 and int8 weights, both layouts).

mod common;

use common::{ids, samples};

use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use voxide_models::voxtral::{Content, GenerateOptions, Message, Role, Voxtral};
use voxide_nn::linear::WeightFormat;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/voxtral")
}

fn reference() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(
        fixtures().join("tiny-random.reference.safetensors"),
        &Device::Cpu,
    )
    .expect("reference tensors")
}

/// A request and what it answers: the generated ids and text.
enum Request<'a> {
    Transcribe(&'a [f32], Option<&'a str>, GenerateOptions),
    Translate(&'a [f32], &'a str, GenerateOptions),
    Ask(&'a [f32], &'a str, GenerateOptions),
}

fn answer(model: &Voxtral, request: &Request<'_>) -> (Vec<u32>, String) {
    match request {
        Request::Transcribe(audio, language, options) => {
            let (t, _) = model
                .transcribe(audio, *language, options, &mut |_| true)
                .unwrap();
            (t.token_ids, t.text)
        }
        Request::Translate(audio, target, options) => {
            let (t, _) = model
                .translate(audio, target, options, &mut |_| true)
                .unwrap();
            (t.token_ids, t.text)
        }
        Request::Ask(audio, question, options) => {
            let messages = [Message {
                role: Role::User,
                content: vec![
                    Content::Audio { windows: 1 },
                    Content::Text(question.to_string()),
                ],
            }];
            let mut streamed = String::new();
            let (text, generation) = model
                .ask(&messages, &[audio.to_vec()], options, &mut |piece, _| {
                    streamed.push_str(piece);
                    true
                })
                .unwrap();
            assert_eq!(streamed, text);
            (generation.ids, text)
        }
    }
}

/// Five requests at once through a model that takes their steps together: each answers what
/// it answers alone (for the reference's transcription, transformers' ids), and steps did
/// share batches.
#[test]
fn concurrent_requests_batched_generate_what_each_generates_alone() {
    let r = reference();
    let short = samples(&r["short.audio"]);
    let long = samples(&r["long.audio"]);
    let want = ids(&r["short.transcribe.greedy_ids"]);
    let budget = |n: usize| GenerateOptions {
        max_new_tokens: n,
        ..Default::default()
    };
    let sampled = GenerateOptions {
        max_new_tokens: 14,
        temperature: 0.9,
        top_p: 0.95,
        seed: 7,
        ..Default::default()
    };
    let requests = [
        Request::Transcribe(&short, Some("en"), budget(want.len())),
        Request::Transcribe(&long, None, budget(12)),
        Request::Translate(&short[..short.len() / 2], "fr", budget(9)),
        Request::Ask(&short, "What is said in this recording?", budget(16)),
        Request::Ask(&long[..long.len() / 3], "Who speaks?", sampled),
    ];
    for (layout, format) in [
        ("tiny-random-mistral", None),
        ("tiny-random-hf", None),
        ("tiny-random-mistral", Some(WeightFormat::Int8)),
    ] {
        let what = format!("{layout} {format:?}");
        let mut model = Voxtral::from_dir(&fixtures().join(layout), &Device::Cpu, format).unwrap();
        let alone: Vec<_> = requests.iter().map(|q| answer(&model, q)).collect();
        if format.is_none() {
            assert_eq!(alone[0].0, want, "{what}");
        }
        // The requests say different things (the test would not see answers swapped).
        assert!(alone.iter().skip(1).all(|a| a.0 != alone[0].0), "{what}");
        assert_eq!(model.batch_stats(), None);
        model.batch_concurrent_steps(4);
        let together = common::at_once(&requests, |request| answer(&model, request));
        for (i, (got, want)) in together.iter().zip(&alone).enumerate() {
            assert_eq!(got, want, "{what}: request {i}");
        }
        let stats = model.batch_stats().unwrap();
        assert!(
            stats.largest >= 2 && stats.batches < stats.decodes && stats.largest <= 4,
            "{what}: {stats:?}"
        );
    }
}
