//! Speech written as FLAC, Ogg Opus and MP3: on real recordings, and read back by the
//! reference decoders (libFLAC's `flac`, opus-tools' `opusinfo` and `opusdec`, `mpg123`;
//! opt-in).

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
    let mut w = AudioWriter::new(Cursor::new(Vec::new()), format, rate)
        .unwrap()
        .for_file();
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

/// The utterance as a lossy `format` file: its bit rate within `kbits`, and exactly the samples
/// written (the encoder's delay and padding trimmed; aligned, or the waveform's SNR would be
/// near 0 dB) at more than 15 dB. Returns the file, its decoded samples and their SNR.
fn lossy_file(format: AudioOutFormat, kbits: std::ops::Range<f64>) -> (Vec<u8>, Vec<f32>, f64) {
    let (_, samples) = speech();
    let bytes = encode(format, &samples, 16_000, 1280);
    let rate = bytes.len() as f64 * 8.0 / 1000.0 / (samples.len() as f64 / 16_000.0);
    assert!(kbits.contains(&rate), "{format:?}: {rate:.1} kbit/s");
    let decoded = decode_bytes(&bytes, "speech").unwrap();
    assert_eq!(decoded.sample_rate, 16_000);
    let got = decoded.channels.into_iter().next().unwrap();
    assert_eq!(got.len(), samples.len());
    let snr = common::snr_db(&got, &samples);
    assert!(snr > 15.0, "{format:?}: SNR {snr:.1} dB");
    (bytes, got, snr)
}

#[test]
fn speech_as_opus_keeps_its_length_and_waveform() {
    // 32 kbit/s: an eighth of 16-bit PCM's 256 kbit/s at 16 kHz, Ogg pages beside; pre-skip
    // drops the encoder's delay, the last granule position its padding.
    let (bytes, got, _) = lossy_file(AudioOutFormat::Opus, 20.0..44.0);
    // Chunks of any length (whole packets go out, the rest waits) give the same packets; the
    // same audio gives the same bytes (no random serial number).
    let (_, samples) = speech();
    let odd = encode(AudioOutFormat::Opus, &samples, 16_000, 1001);
    assert_eq!(decode_bytes(&odd, "odd.opus").unwrap().channels, [got]);
    assert!(encode(AudioOutFormat::Opus, &samples, 16_000, 1280) == bytes);
}

#[test]
fn speech_as_mp3_keeps_its_length_and_waveform() {
    // A file: its LAME tag (written over the first frame at the end) trims the encoder's delay
    // and padding.
    let (bytes, _, snr) = lossy_file(AudioOutFormat::Mp3, 60.0..70.0);
    let (_, samples) = speech();
    // A stream has no tag: the codec's delay (528 + 529 samples) comes first, and at most a
    // frame of padding after the samples.
    let mut w = AudioWriter::new(Vec::new(), AudioOutFormat::Mp3, 16_000).unwrap();
    for part in samples.chunks(1280) {
        w.write(part).unwrap();
    }
    let streamed = w.finish().unwrap();
    let tag_frame = 144 * 64_000 / 16_000 / 2;
    assert_eq!(
        streamed.len(),
        bytes.len() - tag_frame,
        "all but the tag frame"
    );
    let streamed = decode_bytes(&streamed, "streamed.mp3").unwrap();
    let (delay, streamed) = (1057, &streamed.channels[0]);
    let samples_end = delay + samples.len();
    assert!((samples_end..samples_end + 576).contains(&streamed.len()));
    let aligned = &streamed[delay..samples_end];
    assert!((common::snr_db(aligned, &samples) - snr).abs() < 0.01);
}

/// Runs `program args`, returning its stdout and stderr, or `None` when it is not installed.
fn run(program: &str, args: &[&str]) -> Option<(bool, String)> {
    let out = Command::new(program).args(args).output().ok()?;
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    Some((out.status.success(), text))
}

/// Opt-in: `cargo test -p voxide-audio --test encode_outputs -- --ignored` with `flac`,
/// `opus-tools` and `mpg123` installed (Debian: `apt install flac opus-tools mpg123`).
#[test]
#[ignore = "needs the flac, opus-tools and mpg123 programs"]
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

        // mpg123 (libmpg123, gapless by the LAME tag): exactly the samples written.
        let mp3 = dir.path().join(format!("{name}.mp3"));
        std::fs::write(&mp3, encode(AudioOutFormat::Mp3, signal, rate, chunk)).unwrap();
        let decoded = dir.path().join(format!("{name}.mp3.wav"));
        let (ok, text) = run("mpg123", &["-q", "-w", path(&decoded), path(&mp3)])
            .expect("mpg123 is not installed");
        assert!(ok && !text.contains("rror"), "{name}: {text}");
        let theirs = decode_file(&decoded).unwrap().channels.remove(0);
        assert_eq!(theirs.len(), signal.len(), "{name}: mpg123's length");

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
