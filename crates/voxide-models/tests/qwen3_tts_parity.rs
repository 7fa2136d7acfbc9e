//! Numerical parity of the Qwen3-TTS talker and code predictor with the official `qwen-tts`
//! package (`Qwen3TTSForConditionalGeneration.generate`), on the seeded random-weight
//! checkpoints in tests/fixtures/qwen3-tts made by tools/reference/qwen3_tts_fixtures.py:
//! `tiny-random` (predictor as wide as the talker) and `tiny-random-proj` (a narrower
//! predictor behind `small_to_mtp_projection`, the 1.7B layout).
//!
//! Cases: a preset speaker with a language, auto language with an instruction and no speaker,
//! a dialect speaker (its dialect replaces auto), and non-streaming text.
//!
//! Voice clone (tools/reference/qwen3_tts_voice_clone_fixtures.py, `tiny-random-base`): the
//! prompt from the reference's x-vector and reference codes — in-context with the text track
//! shorter and longer than the codec track, non-streaming, and x-vector only — and its greedy
//! codes.

mod common;

use candle_core::{DType, Device, Tensor};
use common::ids;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use voxide_models::qwen3_tts::prefix_cache::DEFAULT_BUDGET;
use voxide_models::qwen3_tts::{
    generate, GenerationParams, PrefixCache, Prompt, PromptRequest, Qwen3Tts, Reference, Voice,
};
use voxide_nn::kernels::machine::machine;
use voxide_nn::linear::WeightFormat;
use voxide_nn::sampling::Sampler;

const MODELS: [&str; 2] = ["tiny-random", "tiny-random-proj"];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/qwen3-tts")
}

fn reference(model: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(
        fixtures().join(format!("{model}.reference.safetensors")),
        &Device::Cpu,
    )
    .expect("reference tensors")
}

/// max |a − b| relative to max |b|.
fn rel_diff(a: &Tensor, b: &Tensor) -> f32 {
    let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(a.len(), b.len(), "sizes differ");
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    a.iter()
        .zip(&b)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

struct Case {
    name: &'static str,
    voice: Voice,
    language: Option<&'static str>,
    instruct: bool,
    non_streaming: bool,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "voice",
            voice: Voice::Preset("tester".into()),
            language: Some("english"),
            instruct: false,
            non_streaming: false,
        },
        Case {
            name: "auto",
            voice: Voice::Unspecified,
            language: None,
            instruct: true,
            non_streaming: false,
        },
        Case {
            name: "dialect",
            voice: Voice::Preset("dylan".into()),
            language: None,
            instruct: false,
            non_streaming: false,
        },
        Case {
            name: "nonstream",
            voice: Voice::Preset("tester".into()),
            language: Some("english"),
            instruct: false,
            non_streaming: true,
        },
    ]
}

/// The prompt of a case from the reference's token ids.
fn case_prompt<'a>(tts: &Qwen3Tts, case: &Case, get: impl Fn(&str) -> &'a Tensor) -> Prompt {
    let text_ids = ids(get("input_ids"));
    let instruct_ids = case.instruct.then(|| ids(get("instruct_ids")));
    let request = PromptRequest {
        text_ids: &text_ids,
        instruct_ids: instruct_ids.as_deref(),
        language: case.language,
        voice: case.voice.clone(),
        non_streaming: case.non_streaming,
        reference: None,
    };
    Prompt::build(tts.talker(), tts.config(), &request).expect("prompt")
}

fn greedy(max_frames: usize) -> GenerationParams {
    GenerationParams {
        talker: None,
        predictor: None,
        repetition_penalty: 1.05,
        max_frames,
        min_frames: 2,
        kv_dtype: None,
    }
}

#[test]
fn prompt_logits_and_greedy_codes_match_qwen_tts() {
    for model in MODELS {
        let tts =
            Qwen3Tts::from_dir(&fixtures().join(model), &Device::Cpu, None).expect("model loads");
        let r = reference(model);
        for case in cases() {
            let what = format!("{model} {}", case.name);
            let get = |k: &str| {
                r.get(&format!("{}.{k}", case.name))
                    .unwrap_or_else(|| panic!("{what}: reference has no {k}"))
            };
            let prompt = case_prompt(&tts, &case, get);
            let d = rel_diff(&prompt.prefill.squeeze(0).unwrap(), get("prefill_embeds"));
            assert!(d < 1e-5, "{what}: prefill embeddings differ by {d}");
            let d = rel_diff(
                &prompt.trailing_text.squeeze(0).unwrap(),
                get("trailing_text"),
            );
            assert!(d < 1e-5, "{what}: trailing text differs by {d}");

            // The talker over the whole prompt: hidden states and logits.
            let talker = tts.talker();
            assert_eq!(
                talker.default_kv_dtype(),
                DType::F32,
                "beside float weights"
            );
            let mut state = talker.new_state(256, DType::F32).unwrap();
            let hidden = talker.forward(&prompt.prefill, &mut state).unwrap();
            let d = rel_diff(&hidden.squeeze(0).unwrap(), get("prefill_hidden"));
            assert!(d < 1e-4, "{what}: talker hidden states differ by {d}");
            let logits = talker.logits(&hidden).unwrap();
            let d = rel_diff(&logits.squeeze(0).unwrap(), get("prefill_logits"));
            assert!(d < 1e-4, "{what}: talker logits differ by {d}");

            // Greedy generation: the reference's frames, code for code.
            let want = get("codes");
            let want_frames = want.dim(0).unwrap();
            let want = ids(want);
            let mut streamed = Vec::new();
            let prefixes = PrefixCache::new(DEFAULT_BUDGET);
            let run = |on_frame: &mut dyn FnMut(&[u32]) -> voxide_models::Result<bool>| {
                let params = greedy(want_frames);
                generate(
                    talker,
                    &prompt,
                    &params,
                    Some(&prefixes),
                    Sampler::new(0),
                    None,
                    on_frame,
                )
                .expect("generation")
            };
            let frames = run(&mut |f| {
                streamed.push(f.to_vec());
                Ok(true)
            })
            .frames;
            assert_eq!(frames, streamed, "{what}: streamed frames differ");
            // Again from the voice positions' cached state: the same frames.
            let again = run(&mut |_| Ok(true));
            assert!(prompt.voice_positions > 0, "{what}: no voice positions");
            assert_eq!(again.cached_positions, prompt.voice_positions, "{what}");
            assert_eq!(
                again.frames, frames,
                "{what}: frames after a cached prefix differ"
            );
            let got: Vec<u32> = frames.concat();
            assert_eq!(got, want, "{what}: greedy codes differ");
        }
    }
}

/// f16 and bf16 KV caches (and f32, the same path): the talker's hidden states over each case's prompt, its last
/// positions run one at a time (the decode attention over the half-precision cache), stay
/// within what rounding K and V allows of the reference's. (Greedy codes are not compared:
/// on these random weights f16 K/V flip a near tie within seven frames.) f16 is the default
/// beside quantized weights only.
#[test]
fn half_precision_kv_caches_track_the_reference() {
    for model in MODELS {
        let tts =
            Qwen3Tts::from_dir(&fixtures().join(model), &Device::Cpu, None).expect("model loads");
        let r = reference(model);
        for case in cases() {
            let get = |k: &str| &r[&format!("{}.{k}", case.name)];
            let prompt = case_prompt(&tts, &case, get);
            let n = prompt.prefill.dim(1).unwrap();
            let singles = 4.min(n - 1);
            for (kv_dtype, bound) in [
                (DType::F32, 1e-4),
                (DType::F16, 2e-3),
                (DType::BF16, 1.5e-2),
            ] {
                let talker = tts.talker();
                let mut state = talker.new_state(n, kv_dtype).unwrap();
                let mut hidden = vec![talker
                    .forward(
                        &prompt.prefill.narrow(1, 0, n - singles).unwrap(),
                        &mut state,
                    )
                    .unwrap()];
                for p in n - singles..n {
                    let x = prompt.prefill.narrow(1, p, 1).unwrap();
                    hidden.push(talker.forward(&x, &mut state).unwrap());
                }
                let hidden = Tensor::cat(&hidden, 1).unwrap();
                let d = rel_diff(&hidden.squeeze(0).unwrap(), get("prefill_hidden"));
                println!(
                    "{model} {} {kv_dtype:?} K/V: hidden states differ by {d}",
                    case.name
                );
                assert!(
                    d < bound,
                    "{model} {} {kv_dtype:?} K/V: hidden states differ by {d}",
                    case.name
                );
            }
        }
    }
}

/// Greedy frames of `prompt`, checked against the reference's codes.
fn assert_greedy_codes(
    what: &str,
    talker: &voxide_models::qwen3_tts::Talker,
    prompt: &Prompt,
    want: &Tensor,
) {
    let frames = generate(
        talker,
        prompt,
        &greedy(want.dim(0).unwrap()),
        None,
        Sampler::new(0),
        None,
        &mut |_| Ok(true),
    )
    .expect("generation")
    .frames;
    assert_eq!(frames.concat(), ids(want), "{what}: greedy codes differ");
}

fn frames_of(t: &Tensor) -> Vec<Vec<u32>> {
    let groups = t.dim(1).unwrap();
    ids(t).chunks(groups).map(<[u32]>::to_vec).collect()
}

#[test]
fn voice_clone_prompts_and_greedy_codes_match_qwen_tts() {
    let tts = Qwen3Tts::from_dir(&fixtures().join("tiny-random-base"), &Device::Cpu, None)
        .expect("model loads");
    let r = reference("voice-clone");
    let ref_codes = frames_of(&r["ref_codes"]);
    // (case, language, non-streaming, in-context)
    let cases = [
        ("icl", Some("english"), false, true),
        ("icl_long", None, false, true),
        ("icl_nonstream", Some("english"), true, true),
        ("xvec", Some("english"), false, false),
        ("e2e", Some("english"), false, true),
    ];
    for (name, language, non_streaming, icl) in cases {
        let get = |k: &str| {
            r.get(&format!("{name}.{k}"))
                .unwrap_or_else(|| panic!("{name}: reference has no {k}"))
        };
        let text_ids = ids(get("input_ids"));
        let ref_ids = icl.then(|| ids(get("ref_ids")));
        let request = PromptRequest {
            text_ids: &text_ids,
            instruct_ids: None,
            language,
            voice: Voice::Embedding(r["xvector"].clone()),
            non_streaming,
            reference: ref_ids.as_deref().map(|text_ids| Reference {
                text_ids,
                codes: &ref_codes,
            }),
        };
        let prompt = Prompt::build(tts.talker(), tts.config(), &request).expect("prompt");
        let d = rel_diff(&prompt.prefill.squeeze(0).unwrap(), get("prefill_embeds"));
        assert!(d < 1e-5, "{name}: prefill embeddings differ by {d}");
        let d = rel_diff(
            &prompt.trailing_text.squeeze(0).unwrap(),
            get("trailing_text"),
        );
        assert!(d < 1e-5, "{name}: trailing text differs by {d}");
        assert_greedy_codes(name, tts.talker(), &prompt, get("codes"));
    }
}

/// int8 converted as the talker loads (`from_dir` with a format: loading never holds a whole
/// stack twice) stores every matrix that converting the loaded talker does, in both fixtures
/// (the second has the predictor's projection); its KV caches default to f16.
#[test]
fn int8_while_loading_converts_what_int8_after_loading_does() {
    for model in MODELS {
        let dir = fixtures().join(model);
        let while_loading =
            Qwen3Tts::from_dir(&dir, &Device::Cpu, Some(WeightFormat::Int8)).expect("int8 loads");
        let loaded = Qwen3Tts::from_dir(&dir, &Device::Cpu, None).expect("model loads");
        let after_loading = loaded
            .talker()
            .clone()
            .into_format(WeightFormat::Int8)
            .unwrap();
        let (a, b) = (while_loading.talker(), &after_loading);
        assert_eq!(a.step_bytes(), b.step_bytes(), "{model}");
        assert_eq!(
            a.predictor().frame_bytes(),
            b.predictor().frame_bytes(),
            "{model}"
        );
        assert!(
            a.step_bytes().total() < loaded.talker().step_bytes().total(),
            "{model}"
        );
        // A frame reads the predictor's stack once per acoustic group, and each group's head
        // (all of one size) once.
        let (pass, groups) = (a.predictor().pass_bytes(), a.predictor().groups());
        let heads = a.predictor().frame_bytes().total() - pass.total() * groups;
        assert!(pass.total() > 0 && heads > 0, "{model}");
        assert!(heads.is_multiple_of(groups), "{model}");
        // Where the frame's matrices fit the cache budget (a model this small does on any
        // machine whose caches are known), its plan keeps every one cached.
        let (frame, step) = (a.predictor().frame_bytes(), a.step_bytes());
        if frame.total() + step.total() <= machine().cache_budget() {
            assert_eq!((frame.streamed, step.streamed), (0, 0), "{model}");
            assert_eq!(frame.cached, frame.total(), "{model}");
        }
        assert_eq!(a.default_kv_dtype(), DType::F16, "{model}");
        assert_eq!(b.default_kv_dtype(), DType::F16, "{model}");
    }
}

#[test]
fn unknown_voice_and_language_are_clear_errors() {
    let tts = Qwen3Tts::from_dir(&fixtures().join("tiny-random"), &Device::Cpu, None).unwrap();
    let text = [1010, 77, 10, 101, 102, 1011, 10, 1010, 77, 10];
    let request = |voice: Voice, language: Option<&'static str>| PromptRequest {
        text_ids: &text,
        instruct_ids: None,
        language,
        voice,
        non_streaming: false,
        reference: None,
    };
    let err = Prompt::build(
        tts.talker(),
        tts.config(),
        &request(Voice::Preset("nobody".into()), Some("english")),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("nobody") && err.contains("tester"), "{err}");
    let err = Prompt::build(
        tts.talker(),
        tts.config(),
        &request(Voice::Unspecified, Some("klingon")),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("klingon") && err.contains("english"), "{err}");
    let empty = [1010, 77, 10, 1011, 10, 1010, 77, 10];
    let err = Prompt::build(
        tts.talker(),
        tts.config(),
        &PromptRequest {
            text_ids: &empty,
            ..request(Voice::Unspecified, None)
        },
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("empty"), "{err}");
}
