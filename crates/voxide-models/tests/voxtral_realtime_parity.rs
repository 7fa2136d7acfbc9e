//! Numerical parity of Voxtral Realtime with transformers' `VoxtralRealtimeForConditionalGeneration`,
//! on the seeded random-weight checkpoint in tests/fixtures/voxtral-realtime (both layouts:
//! HF `model.safetensors` + `config.json`, and Mistral `consolidated.safetensors` +
//! `params.json` made by inverting the published conversion), made by
//! tools/reference/voxtral_realtime_fixtures.py.
//!
//! The fixture's windows are small (encoder 20 frames, decoder 24 positions) so the sliding
//! masks, cache compaction and rolling are exercised by a 3 s input.

mod common;

use common::{assert_close, ids, max_abs, max_abs_diff, samples};

use candle_core::{DType, Device, Tensor, D};
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use voxide_audio::{MelStream, WhisperMel};
use voxide_models::tekken::Tekken;
use voxide_models::voxtral_realtime::{
    Config, StreamOptions, VoxtralRealtime, VoxtralRealtimeModel,
};
use voxide_nn::linear::WeightFormat;
use voxide_nn::{RopeLayout, VarBuilder};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/voxtral-realtime")
}

const LAYOUTS: [&str; 2] = ["tiny-random-hf", "tiny-random-mistral"];

fn reference() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(
        fixtures().join("tiny-random.reference.safetensors"),
        &Device::Cpu,
    )
    .expect("reference tensors")
}

fn load(layout: &str) -> VoxtralRealtime {
    load_as(layout, None)
}

/// The fixture of `layout` with its matrices stored as `format`.
fn load_as(layout: &str, format: Option<WeightFormat>) -> VoxtralRealtime {
    VoxtralRealtime::from_dir(&fixtures().join(layout), &Device::Cpu, format).expect("model loads")
}

/// Stream mel frames (time-major) -> (1, n_mels, t).
fn stream_mel(audio: &[f32], left_pad: usize, right_pad: usize) -> Tensor {
    let mel = WhisperMel::new(128);
    let mut stream = MelStream::new(&mel, 1.5);
    let mut frames = stream.push(&mel, &vec![0.0; left_pad]);
    frames.extend(stream.push(&mel, audio));
    frames.extend(stream.push(&mel, &vec![0.0; right_pad]));
    frames.extend(stream.finish(&mel));
    let t = frames.len() / 128;
    Tensor::from_vec(frames, (t, 128), &Device::Cpu)
        .unwrap()
        .t()
        .unwrap()
        .unsqueeze(0)
        .unwrap()
}

/// Features: real speech without padding (centred STFT, reflect at both ends), and the
/// offline schedule's padded inputs through the streaming extractor. The largest difference
/// (9e-5, a low-energy bin next to the −6.5 clamp) is transformers' own f32 rounding: an exact
/// f64 computation differs from its output by 9.3e-5 at the same place.
#[test]
fn frontend_matches_transformers() {
    let r = reference();
    let mel = WhisperMel::new(128);
    let got = mel.log_mel_fixed_max(&samples(&r["frontend_audio"]), 1.5);
    let got = Tensor::from_vec(got.data, (1, 128, got.n_frames), &Device::Cpu).unwrap();
    assert_close(
        "features, 2 s LibriSpeech",
        &got,
        &r["frontend_features"],
        5e-5,
    );
    for (audio, features, n) in [
        ("audio", "offline_input_features", 48000),
        ("speech_audio", "speech_input_features", 64000),
    ] {
        let audio = samples(&r[audio]);
        let audio = &audio[..n];
        let right = n.div_ceil(1280) * 1280 - n + 17 * 1280;
        let got = stream_mel(audio, 32 * 1280, right);
        assert_close(features, &got, &r[features], 5e-5);
    }
}

/// Every stage of the raw forward (304 mel frames, 38 positions, random input ids) in both
/// layouts: conv stem, each encoder layer, adapter, t_cond and the ada gains, each decoder
/// layer, logits.
#[test]
fn stages_match_transformers() {
    let r = reference();
    for layout in LAYOUTS {
        let model = load(layout);
        let net = model.network();
        let mut state = net.new_state(6, DType::F32).unwrap();
        let [conv1, conv2] = net.stem(&mut state, &r["input_features"]).unwrap();
        assert_close(&format!("{layout} conv1"), &conv1, &r["conv1_out"], 1e-5);
        assert_close(&format!("{layout} conv2"), &conv2, &r["conv2_out"], 1e-5);
        let frames = conv2.transpose(1, 2).unwrap().contiguous().unwrap();
        assert_close(
            &format!("{layout} encoder hidden 0"),
            &frames,
            &r["encoder_hidden_states.0"],
            1e-5,
        );
        let mut hidden = Vec::new();
        let encoded = net.encode(&mut state, &frames, Some(&mut hidden)).unwrap();
        assert_close(
            &format!("{layout} encoder hidden 1"),
            &hidden[0],
            &r["encoder_hidden_states.1"],
            1e-5,
        );
        assert_close(
            &format!("{layout} encoder output"),
            &encoded,
            &r["encoder_last_hidden_state"],
            1e-5,
        );
        let audio = net.adapt(&encoded).unwrap();
        assert_close(
            &format!("{layout} adapter"),
            &audio,
            &r["audio_embeds"],
            1e-5,
        );
        let t_cond = net.t_cond(6).unwrap().flatten_all().unwrap();
        assert_close(&format!("{layout} t_cond"), &t_cond, &r["t_cond"], 1e-6);
        for (i, gain) in net.gains(&state).iter().enumerate() {
            let want = (&r[&format!("ada_scale.{i}")] + 1.0).unwrap();
            assert_close(
                &format!("{layout} ada gain {i}"),
                &gain.flatten_all().unwrap(),
                &want,
                1e-5,
            );
        }
        let x = (net.embed(&ids(&r["input_ids"])).unwrap() + &r["audio_embeds"]).unwrap();
        assert_close(
            &format!("{layout} decoder input"),
            &x,
            &r["text_hidden_states.0"],
            1e-5,
        );
        let mut hidden = Vec::new();
        let out = net.decode(&mut state, &x, Some(&mut hidden)).unwrap();
        assert_close(
            &format!("{layout} decoder hidden 1"),
            &hidden[0],
            &r["text_hidden_states.1"],
            1e-5,
        );
        assert_close(
            &format!("{layout} decoder output"),
            &out,
            &r["text_hidden_states.2"],
            1e-5,
        );
        let logits = net.logits(&out).unwrap();
        assert_close(&format!("{layout} logits"), &logits, &r["logits"], 1e-5);
    }
}

/// Negative control: the Mistral weights with HF's rotate-half pairing load without error
/// and give clearly wrong logits, so a layout/RoPE mix-up cannot pass the test above.
#[test]
fn wrong_rope_pairing_is_detected() {
    let r = reference();
    let dir = fixtures().join("tiny-random-mistral");
    let config = Config::from_dir(&dir).unwrap();
    let tensors =
        candle_core::safetensors::load(dir.join("consolidated.safetensors"), &Device::Cpu).unwrap();
    let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
    let net =
        VoxtralRealtimeModel::load_with_rope(vb, config, RopeLayout::RotateHalf, None).unwrap();
    let mut state = net.new_state(6, DType::F32).unwrap();
    let [_, conv2] = net.stem(&mut state, &r["input_features"]).unwrap();
    let frames = conv2.transpose(1, 2).unwrap().contiguous().unwrap();
    let encoded = net.encode(&mut state, &frames, None).unwrap();
    let diff = max_abs_diff(&encoded, &r["encoder_last_hidden_state"]);
    println!("wrong pairing: encoder output off by {diff:.3}");
    assert!(diff > 0.1, "the RoPE pairing made no difference: {diff}");
}

/// The mel clamp's `global_log_mel_max` of an HF checkpoint comes from its processor files:
/// `processor_config.json` as transformers 5 saves it (under `feature_extractor`, as in the
/// committed fixture), or a flat `preprocessor_config.json`, which wins where both name it.
#[test]
fn hf_processor_files_give_the_mel_clamp() {
    let hf = fixtures().join("tiny-random-hf");
    assert_eq!(Config::from_dir(&hf).unwrap().global_log_mel_max, 1.5);
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(hf.join("config.json"), dir.path().join("config.json")).unwrap();
    let max = || Config::from_dir(dir.path()).unwrap().global_log_mel_max;
    assert_eq!(max(), 1.5, "the default without processor files");
    std::fs::write(
        dir.path().join("processor_config.json"),
        r#"{"feature_extractor": {"global_log_mel_max": 2.5, "feature_size": 128}}"#,
    )
    .unwrap();
    assert_eq!(max(), 2.5, "processor_config.json's feature_extractor");
    std::fs::write(
        dir.path().join("preprocessor_config.json"),
        r#"{"global_log_mel_max": 3.25}"#,
    )
    .unwrap();
    assert_eq!(max(), 3.25, "preprocessor_config.json first");
    std::fs::write(dir.path().join("preprocessor_config.json"), "{}").unwrap();
    assert_eq!(
        max(),
        2.5,
        "a preprocessor file without it defers to the processor's"
    );
    std::fs::write(dir.path().join("processor_config.json"), "{not json").unwrap();
    let err = Config::from_dir(dir.path()).unwrap_err().to_string();
    assert!(err.contains("processor_config.json"), "{err}");
}

/// Greedy ids of the offline schedule equal transformers' `generate`, both layouts, on the
/// 3 s synthetic input and on 4 s of real speech; the logits of every step match too.
#[test]
fn offline_ids_match_transformers() {
    let r = reference();
    for layout in LAYOUTS {
        let model = load(layout);
        for (audio, n, want) in [
            ("audio", 48000, "offline_generated_ids"),
            ("speech_audio", 64000, "speech_generated_ids"),
        ] {
            let audio = samples(&r[audio]);
            let (transcript, timings) = model
                .transcribe(&audio[..n], StreamOptions::default(), &mut |_| true)
                .unwrap();
            assert_eq!(transcript.token_ids, ids(&r[want]), "{layout} {want}");
            assert_eq!(timings.prefills, 1);
        }
    }
}

/// Logits (steps, vocab) of the offline schedule over `features` (the whole padded input),
/// each step fed the reference's previous id: prefill of `prompt`, then one position per id.
fn teacher_forced_logits(
    net: &VoxtralRealtimeModel,
    features: &Tensor,
    prompt: &[u32],
    generated: &[u32],
) -> Tensor {
    let mut state = net.new_state(6, DType::F32).unwrap();
    let [_, conv] = net.stem(&mut state, features).unwrap();
    let frames = conv.transpose(1, 2).unwrap().contiguous().unwrap();
    let vectors = net
        .adapt(&net.encode(&mut state, &frames, None).unwrap())
        .unwrap();
    let n = prompt.len();
    let x = (net.embed(prompt).unwrap() + vectors.narrow(1, 0, n).unwrap()).unwrap();
    let hidden = net.decode(&mut state, &x, None).unwrap();
    let mut logits = vec![net.logits(&hidden.narrow(1, n - 1, 1).unwrap()).unwrap()];
    for (k, &id) in generated[..generated.len() - 1].iter().enumerate() {
        let x = (net.embed(&[id]).unwrap() + vectors.narrow(1, n + k, 1).unwrap()).unwrap();
        let hidden = net.decode(&mut state, &x, None).unwrap();
        logits.push(net.logits(&hidden).unwrap());
    }
    Tensor::cat(&logits, 1).unwrap().squeeze(0).unwrap()
}

/// Logits of every step of the offline schedule equal transformers' (teacher-forced with the
/// reference ids; the decoder's window is 24 positions, so 87 positions roll it).
#[test]
fn offline_step_logits_match_transformers() {
    let r = reference();
    for layout in LAYOUTS {
        let model = load(layout);
        let generated = ids(&r["offline_generated_ids"]);
        let logits = teacher_forced_logits(
            model.network(),
            &r["offline_input_features"],
            &ids(&r["offline_input_ids"]),
            &generated,
        );
        assert_close(
            &format!("{layout} offline step logits"),
            &logits,
            &r["offline_logits"],
            1e-5,
        );
        let argmax = logits
            .argmax(D::Minus1)
            .unwrap()
            .to_dtype(DType::I64)
            .unwrap();
        assert_eq!(ids(&argmax), generated);
    }
}

/// The ids of `audio` pushed in chunks of `sizes` (cycled), the encoder run on every new frame.
fn streamed_ids(model: &VoxtralRealtime, audio: &[f32], sizes: &[usize]) -> Vec<u32> {
    let mut stream = model
        .stream(StreamOptions {
            encoder_min_frames: 1,
            ..StreamOptions::default()
        })
        .unwrap();
    let mut at = 0;
    for &size in sizes.iter().cycle() {
        if at >= audio.len() {
            break;
        }
        let end = (at + size).min(audio.len());
        stream.push(&audio[at..end]).unwrap();
        at = end;
    }
    stream.finish().unwrap();
    stream.tokens().iter().map(|t| t.id).collect()
}

/// Streaming in chunks of 40, 1280 and 3000 samples and of random sizes gives exactly the
/// offline ids, in both layouts.
#[test]
fn streaming_chunks_give_the_offline_ids() {
    let r = reference();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for layout in LAYOUTS {
        let model = load(layout);
        for (audio, n, want) in [
            ("audio", 48000, "offline_generated_ids"),
            ("speech_audio", 64000, "speech_generated_ids"),
        ] {
            let audio = samples(&r[audio]);
            let want = ids(&r[want]);
            let random: Vec<usize> = (0..400).map(|_| rng.random_range(1..5000)).collect();
            for sizes in [vec![40], vec![1280], vec![3000], random] {
                assert_eq!(
                    streamed_ids(&model, &audio[..n], &sizes),
                    want,
                    "{layout}, chunks {:?}…",
                    &sizes[..sizes.len().min(3)]
                );
            }
        }
    }
}

/// bf16 weights (the checkpoints' own) and int8 decoders: streamed in chunks of 40 and 1280
/// samples and of random sizes, the audio gives the ids of the offline pass over the same
/// weights. The encoder's products compute a position alike in blocks of any size, where the
/// kernels of many rows round x otherwise than a few rows' GEMV would (bf16 on AVX512-BF16).
#[test]
fn narrow_streaming_gives_the_narrow_offline_ids() {
    let r = reference();
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    for format in [WeightFormat::Bf16, WeightFormat::Int8] {
        let model = load_as("tiny-random-mistral", Some(format));
        for (name, n) in [("audio", 48000), ("speech_audio", 64000)] {
            let audio = &samples(&r[name])[..n];
            let (offline, _) = model
                .transcribe(audio, StreamOptions::default(), &mut |_| true)
                .unwrap();
            let random: Vec<usize> = (0..400).map(|_| rng.random_range(1..5000)).collect();
            for sizes in [vec![40], vec![1280], random] {
                assert_eq!(
                    streamed_ids(&model, audio, &sizes),
                    offline.token_ids,
                    "{format:?} {name}, chunks {:?}…",
                    &sizes[..sizes.len().min(3)]
                );
            }
        }
    }
}

/// An endless stream runs in bounded memory: 5 minutes of audio (3750 positions, against
/// windows of 20 encoder frames and 24 decoder positions) leave every cache at most its
/// window plus headroom, and every position is decoded.
#[test]
fn long_streams_stay_bounded() {
    let model = load("tiny-random-mistral");
    let mut stream = model
        .stream(StreamOptions {
            restart_on_eos: true,
            ..StreamOptions::default()
        })
        .unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let second: Vec<f32> = (0..16000).map(|_| rng.random_range(-0.3..0.3)).collect();
    for _ in 0..300 {
        stream.push(&second).unwrap();
    }
    let (encoder, decoder) = stream.cached_positions();
    println!("after 300 s: encoder cache {encoder}, decoder cache {decoder} positions");
    assert!(encoder <= 20 - 1 + 256 && decoder <= 24 - 1 + 256);
    // Every complete 80 ms position up to the encoder's batching lag was decoded.
    let positions = stream.positions();
    assert!(positions + 16 >= 32 + 3750, "{positions}");
    let eos = stream.tokens().iter().filter(|t| t.id == 2).count();
    println!(
        "{eos} end-of-stream tokens, {} tokens",
        stream.tokens().len()
    );
}

/// f16 and bf16 KV caches: logits drift, ids of the fixture do not change.
#[test]
fn half_precision_kv_caches_keep_the_ids() {
    let r = reference();
    let model = load("tiny-random-hf");
    let audio = samples(&r["speech_audio"]);
    let want = ids(&r["speech_generated_ids"]);
    for kv_dtype in [DType::F16, DType::BF16] {
        let options = StreamOptions {
            kv_dtype: Some(kv_dtype),
            ..StreamOptions::default()
        };
        let (transcript, _) = model.transcribe(&audio, options, &mut |_| true).unwrap();
        let same = transcript
            .token_ids
            .iter()
            .zip(&want)
            .filter(|(a, b)| a == b)
            .count();
        println!("{kv_dtype:?} KV cache: {same} of {} ids as f32", want.len());
        assert_eq!(transcript.token_ids, want, "{kv_dtype:?}");
    }
}

/// Narrow weights: bf16 (on AVX512-BF16 the encoder and the decoder's prompt round x to
/// bf16) and int8 decoder weights (per-row scales). The logits of the offline schedule drift
/// by a bounded amount relative to their range (reported for PERFORMANCE.md).
#[test]
fn narrow_weight_drift_is_bounded() {
    let r = reference();
    for (format, max_drift) in [(WeightFormat::Bf16, 0.02), (WeightFormat::Int8, 0.05)] {
        let model = load_as("tiny-random-mistral", Some(format));
        let audio = samples(&r["speech_audio"]);
        let want = ids(&r["speech_generated_ids"]);
        let (transcript, _) = model
            .transcribe(&audio, StreamOptions::default(), &mut |_| true)
            .unwrap();
        let same = transcript
            .token_ids
            .iter()
            .zip(&want)
            .take_while(|(a, b)| a == b)
            .count();
        println!("{format:?}: first {same} of {} ids as f32", want.len());
        // Teacher-forced logits, so one flipped id does not change the inputs after it.
        let prompt = ids(&r["offline_input_ids"]);
        let logits =
            teacher_forced_logits(model.network(), &r["speech_input_features"], &prompt, &want);
        let reference = &r["speech_logits"];
        let drift = max_abs_diff(&logits, reference) / max_abs(reference);
        let argmax = logits
            .argmax(D::Minus1)
            .unwrap()
            .to_dtype(DType::I64)
            .unwrap();
        let agree = ids(&argmax)
            .iter()
            .zip(&want)
            .filter(|(a, b)| a == b)
            .count();
        println!(
            "{format:?}: logits drift {:.2} % of their range; teacher-forced argmax agrees on {agree} of {}",
            drift * 100.0,
            want.len()
        );
        assert!(drift < max_drift, "{format:?} logits drift {drift}");
        assert!(
            agree * 10 >= want.len() * 8,
            "{format:?}: {agree} of {}",
            want.len()
        );
    }
}

/// Quantizing each decoder layer as it loads (`from_dir` with int8: loading never holds the
/// whole decoder twice) gives the very model that quantizing the loaded one does.
#[test]
fn int8_while_loading_equals_int8_after_loading() {
    let r = reference();
    let dir = fixtures().join("tiny-random-mistral");
    let while_loading =
        VoxtralRealtime::from_dir(&dir, &Device::Cpu, Some(WeightFormat::Int8)).unwrap();
    let tensors =
        candle_core::safetensors::load(dir.join("consolidated.safetensors"), &Device::Cpu).unwrap();
    let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
    let after_loading = VoxtralRealtimeModel::load(vb, Config::from_dir(&dir).unwrap())
        .unwrap()
        .with_decoder_format(WeightFormat::Int8)
        .unwrap();
    assert_eq!(
        while_loading.network().decoder_step_bytes(),
        after_loading.decoder_step_bytes()
    );
    let (prompt, want) = (
        ids(&r["offline_input_ids"]),
        ids(&r["speech_generated_ids"]),
    );
    let features = &r["speech_input_features"];
    let a = teacher_forced_logits(while_loading.network(), features, &prompt, &want);
    let b = teacher_forced_logits(&after_loading, features, &prompt, &want);
    assert_eq!(max_abs_diff(&a, &b), 0.0);
}

/// End-of-stream: offline decoding stops at it; a live stream starts a new prompt on the
/// following audio (its next token comes one prompt later) and keeps going. The fixture never
/// emits EOS, so its embedding row (also its output-head row) is scaled up until it does.
#[test]
fn live_streams_restart_after_end_of_stream() {
    let dir = fixtures().join("tiny-random-mistral");
    let mut tensors =
        candle_core::safetensors::load(dir.join("consolidated.safetensors"), &Device::Cpu).unwrap();
    let name = "mm_streams_embeddings.embedding_module.tok_embeddings.weight";
    let e = &tensors[name];
    let scale: Vec<f32> = (0..e.dim(0).unwrap())
        .map(|i| if i == 2 { 40.0 } else { 1.0 })
        .collect();
    let scale = Tensor::from_vec(scale, (e.dim(0).unwrap(), 1), &Device::Cpu).unwrap();
    let scaled = e.broadcast_mul(&scale).unwrap();
    tensors.insert(name.to_string(), scaled);
    let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
    let net = VoxtralRealtimeModel::load(vb, Config::from_dir(&dir).unwrap()).unwrap();
    let model =
        VoxtralRealtime::new(net, Tekken::from_file(dir.join("tekken.json")).unwrap()).unwrap();
    let audio = samples(&reference()["speech_audio"]);
    let eos = model.tokenizer().eos();

    let (offline, _) = model
        .transcribe(&audio, StreamOptions::default(), &mut |_| true)
        .unwrap();
    assert_eq!(
        offline.token_ids.last(),
        Some(&eos),
        "the scaled head emits EOS"
    );
    assert_eq!(offline.token_ids.iter().filter(|&&t| t == eos).count(), 1);

    let mut live = model
        .stream(StreamOptions {
            restart_on_eos: true,
            ..StreamOptions::default()
        })
        .unwrap();
    for _ in 0..4 {
        live.push(&audio).unwrap();
    }
    let tokens = live.tokens();
    let ends: Vec<usize> = (0..tokens.len()).filter(|&i| tokens[i].id == eos).collect();
    println!("{} tokens, EOS at {ends:?}", tokens.len());
    assert!(ends.len() >= 2, "the stream restarted and ended again");
    for &i in &ends {
        if let Some(next) = tokens.get(i + 1) {
            // A new prompt of 39 positions starts right after the EOS position.
            assert_eq!(next.position, tokens[i].position + 39, "{next:?}");
        }
    }
    // And it kept decoding the audio it was given, up to a prompt's worth still being
    // gathered after the last EOS (plus the encoder's batching lag).
    assert!(
        live.positions() + 39 + 16 >= 32 + 4 * 50,
        "{}",
        live.positions()
    );
}

/// Without a request's precision the KV caches follow the weights: f32 beside the f32
/// fixture (the parity above), f16 beside bf16 or int8 weights.
#[test]
fn kv_caches_default_to_f16_beside_narrow_weights() {
    let dir = fixtures().join("tiny-random-mistral");
    for (format, want) in [
        (None, DType::F32),
        (Some(WeightFormat::Bf16), DType::F16),
        (Some(WeightFormat::Int8), DType::F16),
    ] {
        let model = VoxtralRealtime::from_dir(&dir, &Device::Cpu, format).unwrap();
        assert_eq!(model.network().default_kv_dtype(), want, "{format:?}");
    }
}
