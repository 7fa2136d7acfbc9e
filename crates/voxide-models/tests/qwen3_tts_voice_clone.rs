//! Voice clone end to end through the library's [`Synthesizer`] on the committed random Base
//! checkpoint (tests/fixtures/qwen3-tts/tiny-random-base, made by
//! tools/reference/qwen3_tts_voice_clone_fixtures.py): strings in, the reference clip's 24 kHz
//! samples, greedy decoding; our speaker encoder, codec encoder, prompt, talker and codec
//! decoder together must give qwen-tts' `generate_voice_clone` audio (the `e2e` case), in any
//! chunking; and VoiceDesign the same way (`voice-design.reference.*`).

use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use voxide_models::qwen3_tts::{
    ClonedVoice, GenerationParams, SpeechRequest, Synthesizer, VoiceReference,
};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/qwen3-tts")
}

fn reference() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(
        fixtures().join("voice-clone.reference.safetensors"),
        &Device::Cpu,
    )
    .expect("reference tensors")
}

fn samples(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn clip(r: &HashMap<String, Tensor>) -> VoiceReference {
    VoiceReference {
        samples: samples(&r["wav24k"]),
        text: Some("He hoped.".into()),
        context_frames: None,
    }
}

fn request(
    r: &HashMap<String, Tensor>,
    cloned_voice: Option<Arc<ClonedVoice>>,
    chunk_frames: usize,
) -> SpeechRequest {
    SpeechRequest {
        text: "Hi there.".into(),
        voice: None,
        instruct: None,
        cloned_voice,
        language: Some("english".into()),
        params: GenerationParams {
            talker: None,
            predictor: None,
            max_frames: r["e2e.codes"].dim(0).unwrap(),
            ..GenerationParams::default()
        },
        seed: 0,
        non_streaming_text: None,
        chunk_frames,
    }
}

fn base() -> Synthesizer {
    Synthesizer::from_dir(&fixtures().join("tiny-random-base"), &Device::Cpu, None)
        .expect("Base checkpoint loads")
}

/// One cloned voice serves several requests (each forks the codec state the clip left): every
/// one, in any chunking, is qwen-tts' clip.
#[test]
fn cloned_speech_equals_qwen_tts() {
    let synthesizer = base();
    let r = reference();
    let cloned = Arc::new(synthesizer.clone_voice(&clip(&r)).expect("voice clones"));
    assert_eq!(cloned.reference_frames(), r["ref_codes"].dim(0).unwrap());
    let want = samples(&r["e2e.wav"]);
    // The first request computes the voice's positions (speaker, reference transcript beside
    // the clip's first frames); the later ones start from the prefix cache.
    for (i, chunk_frames) in [1, 2, 5, 16].into_iter().enumerate() {
        let mut got = Vec::new();
        let stats = synthesizer
            .synthesize(
                &request(&r, Some(cloned.clone()), chunk_frames),
                &mut |pcm| {
                    got.extend_from_slice(pcm);
                    Ok(true)
                },
            )
            .expect("synthesis");
        assert_eq!(stats.cached_positions > 0, i > 0, "request {i}");
        assert_eq!(got.len(), want.len(), "chunks of {chunk_frames}: length");
        let worst = got
            .iter()
            .zip(&want)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            worst <= 1e-5,
            "chunks of {chunk_frames}: {worst} from qwen-tts' waveform"
        );
    }
}

/// A shorter left context for the codec: all the clip's frames is the exact clip; fewer
/// changes the audio, not its length.
#[test]
fn codec_context_of_the_clip_can_be_shortened() {
    let synthesizer = base();
    let r = reference();
    let frames = r["ref_codes"].dim(0).unwrap();
    let speak = |context_frames| {
        let cloned = synthesizer
            .clone_voice(&VoiceReference {
                context_frames,
                ..clip(&r)
            })
            .unwrap();
        let mut pcm = Vec::new();
        synthesizer
            .synthesize(&request(&r, Some(Arc::new(cloned)), 16), &mut |p| {
                pcm.extend_from_slice(p);
                Ok(true)
            })
            .unwrap();
        pcm
    };
    let exact = speak(None);
    assert_eq!(speak(Some(frames)), exact);
    let short = speak(Some(2));
    assert_eq!(short.len(), exact.len());
    assert_ne!(short, exact);
}

#[test]
fn a_clip_too_short_or_a_reference_on_the_wrong_model_is_an_error() {
    let base = base();
    let r = reference();
    let mut short = clip(&r);
    short.samples.truncate(100);
    let err = base.clone_voice(&short).unwrap_err();
    assert!(err.to_string().contains("short"), "{err}");

    let err = base
        .synthesize(&request(&r, None, 16), &mut |_| Ok(true))
        .unwrap_err();
    assert!(err.to_string().contains("reference clip"), "{err}");

    let custom =
        Synthesizer::from_dir(&fixtures().join("tiny-random"), &Device::Cpu, None).unwrap();
    let err = custom.clone_voice(&clip(&r)).unwrap_err();
    assert!(err.to_string().contains("cannot clone"), "{err}");
    let cloned = Arc::new(base.clone_voice(&clip(&r)).unwrap());
    let mut on_custom = request(&r, Some(cloned), 16);
    on_custom.voice = Some("tester".into());
    let err = custom
        .synthesize(&on_custom, &mut |_| Ok(true))
        .unwrap_err();
    assert!(err.to_string().contains("cannot clone"), "{err}");
}

/// VoiceDesign end to end: the CustomVoice fixture's weights as a VoiceDesign checkpoint (a
/// copy with `tts_model_type` switched, as the reference generator does), an instruction and
/// no speaker, the whole text in the prompt (qwen-tts' `generate_voice_design` default): the
/// reference's codes decoded, sample for sample.
#[test]
fn designed_voice_equals_qwen_tts() {
    let src = fixtures().join("tiny-random");
    let dir = std::env::temp_dir().join(format!("voxide-voice-design-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("speech_tokenizer")).unwrap();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
        }
    }
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(
            src.join("speech_tokenizer").join(f),
            dir.join("speech_tokenizer").join(f),
        )
        .unwrap();
    }
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let switched = config.replace(
        "\"tts_model_type\": \"custom_voice\"",
        "\"tts_model_type\": \"voice_design\"",
    );
    assert_ne!(switched, config);
    std::fs::write(dir.join("config.json"), switched).unwrap();

    let synthesizer = Synthesizer::from_dir(&dir, &Device::Cpu, None).expect("loads");
    let r = candle_core::safetensors::load(
        fixtures().join("voice-design.reference.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let request = SpeechRequest {
        text: "Good morning.".into(),
        voice: None,
        instruct: Some("A calm, low voice.".into()),
        cloned_voice: None,
        language: Some("english".into()),
        params: GenerationParams {
            talker: None,
            predictor: None,
            max_frames: r["codes"].dim(0).unwrap(),
            ..GenerationParams::default()
        },
        seed: 0,
        non_streaming_text: None,
        chunk_frames: 4,
    };
    let mut got = Vec::new();
    synthesizer
        .synthesize(&request, &mut |pcm| {
            got.extend_from_slice(pcm);
            Ok(true)
        })
        .expect("synthesis");
    let want = samples(&r["wav"]);
    assert_eq!(got.len(), want.len());
    let worst = got
        .iter()
        .zip(&want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(worst <= 1e-5, "{worst} from qwen-tts' waveform");
    std::fs::remove_dir_all(dir).ok();
}
