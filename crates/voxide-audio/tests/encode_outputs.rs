//! Speech written as FLAC and Ogg Opus: on real recordings, and read back by the reference
//! decoders (libFLAC's `flac`, opus-tools' `opusinfo` and `opusdec`, opt-in).

mod common;

use std::io::Cursor;
use std::path::Path;
use std::process::Command;
use voxide_audio::{decode_bytes, decode_file, AudioOutFormat, AudioWriter};

/// A LibriSpeech utterance (16 kHz, 10.4 s, as its reference libFLAC 1.2.1 file) and its samples.
fn speech() -> (std::path::PathBuf, Vec<f32>) {
    let path = common::corpus("librispeech/1089-134686-0000.flac");
    let audio = decode_file(&path).unwrap();
    assert_eq!(audio.sample_rate, 16_000);
    (path, audio.channels[0].clone())
}

/// `samples` at `rate` in `format`, in chunks of `chunk` samples, finished as a file.
fn encode(format: AudioOutFormat, samples: &[f32], rate: u32, chunk: usize) -> Vec<u8> {
    let mut w = AudioWriter::new(Cursor::new(Vec::new()), format, rate).unwrap();
    for part in samples.chunks(chunk) {
        w.write(part).unwrap();
    }
    w.finish_seekable().unwrap().into_inner()
}

/// What 16-bit output keeps of `samples` (scaled by 32767, as libsndfile writes), as a decoder
/// returns it.
fn as_pcm16(samples: &[f32]) -> Vec<f32> {
    samples
        .iter()
        .map(|&s| (s.clamp(-1.0, 1.0) * 32767.0).round() / 32768.0)
        .collect()
}

#[test]
fn speech_as_flac_is_lossless_and_near_libflac_size() {
    let (path, samples) = speech();
    let bytes = encode(AudioOutFormat::Flac, &samples, 16_000, 1280);
    let decoded = decode_bytes(&bytes, "speech.flac").unwrap();
    assert_eq!(decoded.channels[0], as_pcm16(&samples));
    // Fixed predictors only, against the LibriSpeech file's libFLAC (LPC): within 10 %.
    let reference = std::fs::metadata(&path).unwrap().len() as f64;
    let ratio = bytes.len() as f64 / reference;
    assert!(ratio < 1.10, "{} bytes, {ratio:.3}× libFLAC's", bytes.len());
}

#[test]
fn speech_as_opus_keeps_its_length_and_waveform() {
    let (_, samples) = speech();
    let bytes = encode(AudioOutFormat::Opus, &samples, 16_000, 1280);
    // 32 kbit/s: a twelfth of 16-bit PCM's 256 kbit/s at 16 kHz, Ogg pages beside.
    let seconds = samples.len() as f64 / 16_000.0;
    let kbits = bytes.len() as f64 * 8.0 / 1000.0 / seconds;
    assert!((20.0..44.0).contains(&kbits), "{kbits:.1} kbit/s");
    let decoded = decode_bytes(&bytes, "speech.opus").unwrap();
    assert_eq!(decoded.sample_rate, 16_000);
    // Exactly the samples written: pre-skip drops the encoder's delay, the last granule
    // position its padding. Aligned, or the waveform's SNR would be near 0 dB.
    let got = &decoded.channels[0];
    assert_eq!(got.len(), samples.len());
    let snr = common::snr_db(got, &samples);
    assert!(snr > 15.0, "SNR {snr:.1} dB");
    // Chunks of any length (whole packets go out, the rest waits) give the same packets; the
    // same audio gives the same bytes (no random serial number).
    let odd = encode(AudioOutFormat::Opus, &samples, 16_000, 1001);
    assert_eq!(
        decode_bytes(&odd, "odd.opus").unwrap().channels,
        decoded.channels
    );
    assert!(encode(AudioOutFormat::Opus, &samples, 16_000, 1280) == bytes);
}

/// Runs `program args`, returning its stdout and stderr, or `None` when it is not installed.
fn run(program: &str, args: &[&str]) -> Option<(bool, String)> {
    let out = Command::new(program).args(args).output().ok()?;
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    Some((out.status.success(), text))
}

/// Opt-in: `cargo test -p voxide-audio --test encode_outputs -- --ignored` with `flac` and
/// `opus-tools` installed (Debian: `apt install flac opus-tools`).
#[test]
#[ignore = "needs the flac and opus-tools programs"]
fn reference_decoders_accept_the_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let (_, samples) = speech();
    let tone: Vec<f32> = (0..24_000 * 2 + 77)
        .map(|i| 0.4 * (i as f32 * 0.07).sin())
        .collect();
    let cases: [(&str, &[f32], u32, usize); 4] = [
        ("speech", &samples, 16_000, 1280),
        ("tts-chunks", &tone, 24_000, 1920),
        ("odd-chunks", &tone, 24_000, 1001),
        ("one-sample", &[0.25], 24_000, 1),
    ];
    for (name, signal, rate, chunk) in cases {
        let flac = dir.path().join(format!("{name}.flac"));
        std::fs::write(&flac, encode(AudioOutFormat::Flac, signal, rate, chunk)).unwrap();
        let (ok, text) = run("flac", &["-t", path(&flac)]).expect("flac is not installed");
        // `flac -t` checks every frame's CRCs and the MD5 of the whole.
        assert!(
            ok && text.contains(": ok") && !text.contains("WARNING"),
            "{name}: {text}"
        );

        let opus = dir.path().join(format!("{name}.opus"));
        std::fs::write(&opus, encode(AudioOutFormat::Opus, signal, rate, chunk)).unwrap();
        let (ok, text) = run("opusinfo", &[path(&opus)]).expect("opus-tools is not installed");
        assert!(
            ok && !text.contains("WARNING") && !text.contains("ERROR"),
            "{name}: {text}"
        );
        let wav = dir.path().join(format!("{name}.wav"));
        let rate_arg = rate.to_string();
        let (ok, text) = run("opusdec", &["--rate", &rate_arg, path(&opus), path(&wav)]).unwrap();
        assert!(ok, "{name}: {text}");
        // libopus' own decoder, through opusdec's pre-skip and end trimming: the samples written.
        let theirs = decode_file(&wav).unwrap().channels.remove(0);
        assert_eq!(theirs.len(), signal.len(), "{name}");
        // The same waveform, within opusdec's resampling from 48 kHz (it delays by a fraction
        // of a sample: the best of a few shifts) and Opus' own loss.
        if signal.len() > 1000 {
            let snr = (-2isize..=2)
                .map(|lag| {
                    let (a, b) = if lag >= 0 {
                        (
                            &signal[..signal.len() - lag as usize],
                            &theirs[lag as usize..],
                        )
                    } else {
                        (
                            &signal[(-lag) as usize..],
                            &theirs[..theirs.len() - (-lag) as usize],
                        )
                    };
                    common::snr_db(b, a)
                })
                .fold(f64::MIN, f64::max);
            assert!(
                snr > 12.0,
                "{name}: opusdec's output {snr:.1} dB from the input"
            );
        }
    }
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}
