//! Word-level timestamps against openai-whisper's `transcribe(word_timestamps=True)` on the
//! random-weight fixtures (tools/reference/whisper_word_fixtures.py): identical ids per window,
//! identical segments and words, word times within 0.01 s. The same for openai-whisper's
//! long-form options: `clip_timestamps`, `carry_initial_prompt`,
//! `hallucination_silence_threshold`, and for `suppress_tokens`.

mod common;

use common::{json_ids as ids, root, shared};
use serde_json::Value;
use voxide_models::whisper::{Suppress, TranscribeOptions, WhisperPipeline};

fn fixture(name: &str) -> (WhisperPipeline, Value) {
    let dir = root().join("tests/fixtures/whisper");
    let pipeline =
        WhisperPipeline::from_dir(&dir.join(name), &candle_core::Device::Cpu, None).unwrap();
    let json = std::fs::read_to_string(dir.join(format!("{name}.words.json"))).unwrap();
    (pipeline, serde_json::from_str(&json).unwrap())
}

/// Transcribes the case's audio with the reference's options and compares everything.
fn words_match(name: &str, key: &str) {
    let (pipeline, json) = fixture(name);
    let want = &json[key];
    let heads: Vec<[usize; 2]> = json["alignment_heads_used"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            [
                p[0].as_u64().unwrap() as usize,
                p[1].as_u64().unwrap() as usize,
            ]
        })
        .collect();
    let mut used = pipeline.alignment_heads().to_vec();
    used.sort_unstable();
    assert_eq!(used, heads, "{name}: alignment heads");

    let audio = shared().join(want["audio"].as_str().unwrap());
    let samples = voxide_audio::load_mono(&voxide_audio::AudioInput::File(audio), 16_000).unwrap();
    let options = &want["options"];
    let mut opts = TranscribeOptions {
        word_timestamps: options["word_timestamps"].as_bool().unwrap(),
        initial_prompt: options["initial_prompt"].as_str().map(String::from),
        carry_initial_prompt: options["carry_initial_prompt"].as_bool() == Some(true),
        clip_timestamps: options["clip_timestamps"]
            .as_str()
            .map(|c| c.split(',').map(|t| t.parse().unwrap()).collect())
            .unwrap_or_default(),
        hallucination_silence_threshold: options["hallucination_silence_threshold"].as_f64(),
        ..TranscribeOptions::default()
    };
    opts.decode.language = options["language"].as_str().map(String::from);
    if let Some(list) = options["suppress_tokens"].as_str() {
        opts.decode.suppress_tokens = Suppress::parse(list).unwrap();
    }
    opts.decode.beam_size = options["beam_size"].as_u64().map(|b| b as usize);
    opts.decode.without_timestamps = options["without_timestamps"].as_bool() == Some(true);
    // Progress is told after each window, with where the next one starts.
    let mut fractions = Vec::new();
    let (got, _) = pipeline
        .transcribe(&samples, &opts, &mut |p| {
            fractions.push(p.fraction);
            true
        })
        .unwrap();

    let windows = want["windows"].as_array().unwrap();
    let want_seeks: Vec<u64> = windows
        .iter()
        .map(|w| w["seek"].as_u64().unwrap())
        .collect();
    if opts.clip_timestamps.len() <= 1 {
        // One stretch: each window starts where the last one's seek ended, which the segments
        // do not show where none were kept (hallucinations skipped).
        let content_frames = (samples.len() / 160) as f64;
        let seeks: Vec<u64> = fractions
            .iter()
            .map(|f| (f * content_frames).round() as u64)
            .collect();
        assert_eq!(
            seeks[..seeks.len() - 1],
            want_seeks[1..],
            "{name} {key}: window starts"
        );
    }
    let want_ids: Vec<u32> = windows.iter().flat_map(|w| ids(&w["tokens"])).collect();
    assert_eq!(got.token_ids, want_ids, "{name} {key}: ids of the windows");
    let segments = want["segments"].as_array().unwrap();
    assert_eq!(got.segments.len(), segments.len(), "{name} {key}: segments");
    let (mut n_words, mut worst_time, mut worst_prob) = (0, 0f64, 0f64);
    for (g, w) in got.segments.iter().zip(segments) {
        let id = g.id;
        assert_eq!(
            g.seek as u64,
            w["seek"].as_u64().unwrap(),
            "{name} {key}: seek {id}"
        );
        assert_eq!(g.tokens, ids(&w["tokens"]), "{name} {key}: tokens {id}");
        assert_eq!(
            g.text,
            w["text"].as_str().unwrap(),
            "{name} {key}: text {id}"
        );
        for (a, b) in [(g.start, &w["start"]), (g.end, &w["end"])] {
            let diff = (a - b.as_f64().unwrap()).abs();
            assert!(
                diff <= 0.01 + 1e-9,
                "{name} {key}: segment {id} times {a} vs {b}"
            );
            worst_time = worst_time.max(diff);
        }
        let Some(words) = g.words.as_ref() else {
            assert!(!opts.word_timestamps && w.get("words").is_none());
            continue;
        };
        let want_words = w["words"].as_array().unwrap();
        let text = |ws: &mut dyn Iterator<Item = String>| ws.collect::<Vec<_>>();
        assert_eq!(
            text(&mut words.iter().map(|x| x.word.clone())),
            text(
                &mut want_words
                    .iter()
                    .map(|x| x["word"].as_str().unwrap().to_string())
            ),
            "{name} {key}: words of segment {id}"
        );
        for (a, b) in words.iter().zip(want_words) {
            for (x, y) in [(a.start, &b["start"]), (a.end, &b["end"])] {
                let diff = (x - y.as_f64().unwrap()).abs();
                assert!(
                    diff <= 0.01 + 1e-9,
                    "{name} {key}: {:?} in segment {id}: {x} vs {y}",
                    a.word
                );
                worst_time = worst_time.max(diff);
            }
            let dp = (a.probability - b["probability"].as_f64().unwrap()).abs();
            assert!(dp < 1e-4, "{name} {key}: probability of {:?}", a.word);
            worst_prob = worst_prob.max(dp);
        }
        n_words += words.len();
    }
    assert_eq!(
        got.text,
        want["text"].as_str().unwrap(),
        "{name} {key}: text"
    );
    println!(
        "{name:12} {key:10} {} windows (seeks {want_seeks:?}), {} segments, {n_words} words; max |time diff| \
         {worst_time:.3} s, max |probability diff| {worst_prob:.1e}",
        windows.len(),
        segments.len()
    );
}

#[test]
fn words_of_jfk_match_openai_whisper_with_default_alignment_heads() {
    words_match("tiny-random", "jfk");
}

#[test]
fn words_of_jfk_with_beam_search_match_openai_whisper() {
    words_match("tiny-random", "jfk_beam5");
}

#[test]
fn words_of_a_long_form_file_match_openai_whisper() {
    words_match("tiny-random", "longform");
}

#[test]
fn words_of_whole_windows_without_timestamps_match_openai_whisper() {
    words_match("tiny-random", "longform_notimestamps");
}

#[test]
fn clips_of_a_long_form_file_match_openai_whisper() {
    words_match("tiny-random", "longform_clips");
    words_match("tiny-random", "longform_clips_nowords");
}

#[test]
fn a_carried_initial_prompt_matches_openai_whisper() {
    words_match("tiny-random", "longform_carry_prompt");
    // Longer than half the text context: openai-whisper's slicing keeps the prompt's tail.
    words_match("tiny-random", "longform_carry_long_prompt");
}

#[test]
fn silences_around_hallucinations_are_skipped_as_openai_whisper_does() {
    words_match("tiny-random", "jfk_hallucination");
    words_match("tiny-random", "longform_hallucination");
    // Thresholds that reach the end of the input, and the end of a window.
    words_match("tiny-random", "jfk_hallucination_8s");
    words_match("tiny-random", "longform_hallucination_25s");
}

#[test]
fn suppressed_tokens_match_openai_whisper() {
    for case in [
        "jfk_suppress_none",
        "jfk_suppress_more",
        "jfk_suppress_only",
    ] {
        words_match("tiny-random", case);
    }
}

#[test]
fn configured_alignment_heads_are_used() {
    words_match("v3-random", "jfk");
}

#[test]
fn models_without_alignment_heads_take_the_second_half_of_the_decoder() {
    words_match("en-random", "jfk");
}

#[test]
fn alignment_heads_outside_the_decoder_are_a_clear_error() {
    let src = root().join("tests/fixtures/whisper/en-random");
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    let gen = dir.path().join("generation_config.json");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&gen).unwrap()).unwrap();
    config["alignment_heads"] = serde_json::json!([[1, 0], [2, 1]]);
    std::fs::write(&gen, config.to_string()).unwrap();
    let error = WhisperPipeline::from_dir(dir.path(), &candle_core::Device::Cpu, None)
        .err()
        .expect("a head in a third layer of two")
        .to_string();
    assert!(
        error.contains("alignment head [2, 1] is outside the decoder (2 layers of 2 heads)"),
        "{error}"
    );
}

#[test]
fn suppress_lists_are_openai_whispers() {
    let (pipeline, _) = fixture("tiny-random");
    let rules = pipeline.rules();
    let s = *rules.special();
    let n_vocab = pipeline.model().config().vocab_size as u32;
    let specials: Vec<u32> = [
        s.transcribe,
        s.translate,
        s.sot,
        s.sot_prev,
        s.sot_lm,
        s.no_speech,
    ]
    .into_iter()
    .filter(|&t| t < n_vocab)
    .collect();
    let sorted = |mut v: Vec<u32>| {
        v.sort_unstable();
        v.dedup();
        v
    };
    // "-1": the non-speech set and the special tokens.
    let default = rules.suppressed(Some(&Suppress::default())).unwrap();
    let mut non_speech = pipeline.tokenizer().non_speech_tokens().unwrap();
    non_speech.extend(&specials);
    assert_eq!(default.as_ref(), sorted(non_speech.clone()));
    // "": nothing, not even the special tokens.
    assert!(rules.suppressed(None).unwrap().is_empty());
    // Ids without -1: those and the special tokens, not the non-speech set.
    let only = Suppress::parse("561, 7").unwrap();
    let mut want = vec![561, 7];
    want.extend(&specials);
    assert_eq!(
        rules.suppressed(only.as_ref()).unwrap().as_ref(),
        sorted(want)
    );
    // Ids with -1: added to the default.
    let more = Suppress::parse("-1,561").unwrap();
    non_speech.push(561);
    assert_eq!(
        rules.suppressed(more.as_ref()).unwrap().as_ref(),
        sorted(non_speech)
    );
    let outside = Suppress::parse(&format!("-1,{n_vocab}")).unwrap();
    let error = rules.suppressed(outside.as_ref()).unwrap_err().to_string();
    assert!(error.contains("outside the vocabulary"), "{error}");
    assert_eq!(Suppress::parse(" "), Ok(None));
    assert_eq!(Suppress::parse("-1"), Ok(Some(Suppress::default())));
    for bad in ["-2", "x", "1,,2", "4294967296"] {
        assert!(Suppress::parse(bad).is_err(), "{bad}");
    }
}
