//! Decoding: file / bytes / stdin -> planar f32 PCM at the file's own rate.
//!
//! The format is found from the content, never from the file name. WAV,
//! FLAC, MP3, Ogg Vorbis, AIFF, CAF, M4A (AAC, ALAC; its edit list applied by
//! the `mp4` submodule), raw AAC and Matroska/WebM go through symphonia; Opus
//! goes through `unsafe-libopus`, demuxed by the `ogg` crate or, in WebM, by
//! symphonia (see the `opus` submodule). Sample values follow
//! libsndfile's float conversion (integer PCM divided by 2^(bits-1)), so WAV
//! and FLAC decode bit-exactly like python-soundfile.

mod matroska;
mod mp4;
mod opus;

use std::io::{Cursor, Read};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use symphonia::core::audio::{AudioBuffer, Signal};
use symphonia::core::codecs::{self, CodecType, DecoderOptions, CODEC_TYPE_NULL};
use symphonia::core::errors::Error as SymError;
use symphonia::core::formats::FormatOptions;
use symphonia::core::io::{MediaSourceStream, MediaSourceStreamOptions};
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;

use crate::AudioError;

/// Name used in errors for audio read from standard input.
pub const STDIN_NAME: &str = "<stdin>";
/// Name used in errors for audio passed in memory without a name.
pub const MEMORY_NAME: &str = "<memory>";

/// Decoded audio: one `Vec<f32>` per channel (planar), all the same length,
/// samples nominally in [-1, 1], at `sample_rate` Hz.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedAudio {
    /// Sample rate in Hz (the file's own rate; no resampling happened).
    pub sample_rate: u32,
    /// Planar samples: `channels[c][frame]`.
    pub channels: Vec<Vec<f32>>,
}

impl DecodedAudio {
    /// Number of channels.
    pub fn n_channels(&self) -> usize {
        self.channels.len()
    }

    /// Number of frames (samples per channel).
    pub fn n_frames(&self) -> usize {
        self.channels.first().map_or(0, Vec::len)
    }

    /// Duration in seconds.
    pub fn duration_s(&self) -> f64 {
        self.n_frames() as f64 / self.sample_rate.max(1) as f64
    }
}

/// Decode the audio file at `path`.
pub fn decode_file(path: impl AsRef<Path>) -> Result<DecodedAudio, AudioError> {
    let path = path.as_ref();
    let name = path.display().to_string();
    let data = std::fs::read(path).map_err(|source| AudioError::Unreadable {
        name: name.clone(),
        source,
    })?;
    decode_owned(data, &name)
}

/// Decode all of standard input (e.g. `voxide transcribe -`).
pub fn decode_stdin() -> Result<DecodedAudio, AudioError> {
    let mut data = Vec::new();
    std::io::stdin()
        .lock()
        .read_to_end(&mut data)
        .map_err(|source| AudioError::Unreadable {
            name: STDIN_NAME.to_string(),
            source,
        })?;
    decode_owned(data, STDIN_NAME)
}

/// Decode an in-memory encoded file; `name` is only used in error messages.
pub fn decode_bytes(data: &[u8], name: &str) -> Result<DecodedAudio, AudioError> {
    decode_owned(data.to_vec(), name)
}

/// Decode owned bytes. Any panic inside a third-party decoder on hostile
/// input is caught and reported as corrupt data: this function never panics.
pub(crate) fn decode_owned(data: Vec<u8>, name: &str) -> Result<DecodedAudio, AudioError> {
    if data.is_empty() {
        return Err(AudioError::Empty {
            name: name.to_string(),
        });
    }
    let audio = {
        let _quiet = QuietPanics::enter();
        catch_unwind(AssertUnwindSafe(|| decode_inner(data, name)))
    }
    .unwrap_or_else(|_| {
        Err(AudioError::Corrupt {
            name: name.to_string(),
            detail: "the decoder failed on malformed data".to_string(),
        })
    })?;
    if audio.n_frames() == 0 || audio.n_channels() == 0 {
        return Err(AudioError::Empty {
            name: name.to_string(),
        });
    }
    let corrupt = |detail: String| AudioError::Corrupt {
        name: name.to_string(),
        detail,
    };
    if !SAMPLE_RATES.contains(&audio.sample_rate) {
        return Err(corrupt(format!(
            "a sample rate of {} Hz (audio files use {} Hz to {} kHz)",
            audio.sample_rate,
            SAMPLE_RATES.start(),
            SAMPLE_RATES.end() / 1000
        )));
    }
    if audio.channels.iter().flatten().any(|v| !v.is_finite()) {
        return Err(corrupt(
            "samples that are not numbers (NaN or infinite floats)".to_string(),
        ));
    }
    Ok(audio)
}

/// Sample rates a decoded file may have: outside them a header is damaged (a 0 or 2 GHz rate
/// would resample a clip to nothing, or to hours of samples).
pub const SAMPLE_RATES: std::ops::RangeInclusive<u32> = 1000..=768_000;

thread_local! {
    static DECODING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Marks this thread as inside a third-party decoder for as long as the guard lives: a panic
/// there is caught and reported as corrupt data, and [`inside_decoder`] lets a program's panic
/// hook keep it off the terminal.
struct QuietPanics;

impl QuietPanics {
    fn enter() -> Self {
        DECODING.set(true);
        QuietPanics
    }
}

impl Drop for QuietPanics {
    fn drop(&mut self) {
        DECODING.set(false);
    }
}

/// Whether this thread is decoding audio, where a panic (a third-party decoder's, on hostile
/// input: symphonia asserts on a WAV rate of 0) becomes an [`AudioError::Corrupt`]. A panic hook
/// that stays silent then prints nothing for an error that is reported anyway.
pub fn inside_decoder() -> bool {
    DECODING.get()
}

/// What the first bytes say the content is.
#[derive(Debug, PartialEq, Eq)]
enum Sniffed {
    OggOpus,
    /// Something symphonia should open (WAV, FLAC, MP3, Ogg).
    Symphonia,
    /// A recognised container/codec we do not decode, with its name.
    Unsupported(String),
    NotAudio,
}

fn sniff(data: &[u8]) -> Sniffed {
    if opus::is_ogg_opus(data) {
        return Sniffed::OggOpus;
    }
    if data.len() >= 12 && &data[..4] == b"RIFF" && &data[8..12] == b"WAVE" {
        return match wav_format_problem(data) {
            Some(codec) => Sniffed::Unsupported(codec),
            None => Sniffed::Symphonia,
        };
    }
    if data.len() >= 12 && (&data[..4] == b"RF64" || &data[..4] == b"BW64") {
        // Left as RF64 by `rf64_as_riff`: no ds64 chunk to read the sizes from.
        return Sniffed::Unsupported("RF64/BW64 WAV without a ds64 chunk".into());
    }
    // Sony Wave64: RIFF's layout with GUIDs for chunk ids ("riff" then its GUID tail).
    if data.starts_with(b"riff\x2e\x91\xcf\x11\xa5\xd6\x28\xdb\x04\xc1\x00\x00") {
        return Sniffed::Unsupported("Sony Wave64 (W64) container".into());
    }
    if data.starts_with(b"fLaC") {
        return Sniffed::Symphonia;
    }
    if data.starts_with(b"OggS") {
        let body = 27 + *data.get(26).unwrap_or(&0) as usize;
        let payload = data.get(body..).unwrap_or(&[]);
        if payload.starts_with(b"Speex   ") {
            return Sniffed::Unsupported("Speex (Ogg)".into());
        }
        return Sniffed::Symphonia;
    }
    let aiff = data.len() >= 12
        && &data[..4] == b"FORM"
        && (&data[8..12] == b"AIFF" || &data[8..12] == b"AIFC");
    // MP4/M4A, Matroska/WebM, Core Audio Format.
    let container = (data.len() >= 12 && &data[4..8] == b"ftyp")
        || data.starts_with(&[0x1A, 0x45, 0xDF, 0xA3])
        || data.starts_with(b"caff");
    if aiff || container {
        return Sniffed::Symphonia;
    }
    // MP3: optional ID3v2 tag, then a valid MPEG audio frame header.
    let mut pos = 0;
    if data.len() >= 10 && data.starts_with(b"ID3") {
        let size = data[6..10]
            .iter()
            .fold(0usize, |acc, &b| (acc << 7) | (b & 0x7F) as usize);
        let footer = if data[5] & 0x10 != 0 { 10 } else { 0 };
        pos = 10 + size + footer;
        // Some writers pad between the tag and the first frame.
        while pos < data.len() && data[pos] == 0 && pos < 10 + size + footer + 4096 {
            pos += 1;
        }
    }
    match data.get(pos..).is_some_and(mpeg_frames) {
        true => Sniffed::Symphonia,
        false if pos > 0 => {
            Sniffed::Unsupported("ID3-tagged data without an MPEG audio frame".into())
        }
        false => Sniffed::NotAudio,
    }
}

/// Checks for an MPEG audio frame header (layer I, II or III, or AAC in ADTS)
/// at the start of `d` and, when the data is long enough, a second one where
/// the first frame ends: one valid header in random bytes is plausible, two
/// chained ones are not.
fn mpeg_frames(d: &[u8]) -> bool {
    // The frame's length in bytes.
    let hdr = |d: &[u8]| -> Option<usize> {
        if d.len() < 4 || d[0] != 0xFF || d[1] & 0xE0 != 0xE0 {
            return None;
        }
        let version = (d[1] >> 3) & 3; // 0: MPEG2.5, 1: reserved, 2: MPEG2, 3: MPEG1
        let layer = (d[1] >> 1) & 3; // 1: III, 2: II, 3: I
        let br_idx = (d[2] >> 4) as usize;
        let sr_idx = ((d[2] >> 2) & 3) as usize;
        let padding = ((d[2] >> 1) & 1) as usize;
        if version == 1 || layer == 0 || br_idx == 0 || br_idx == 15 || sr_idx == 3 {
            return None;
        }
        let layer_no = 4 - layer;
        let base = [44100usize, 48000, 32000][sr_idx];
        // MPEG-1 at the base rate, MPEG-2 at half, MPEG-2.5 at a quarter.
        let sr = match version {
            3 => base,
            2 => base / 2,
            _ => base / 4,
        };
        // Bit rate tables (kbit/s) by version and layer (ISO/IEC 11172-3, 13818-3).
        const V1_L1: [usize; 15] = [
            0, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448,
        ];
        const V1_L2: [usize; 15] = [
            0, 32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384,
        ];
        const V1_L3: [usize; 15] = [
            0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320,
        ];
        const V2_L1: [usize; 15] = [
            0, 32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256,
        ];
        const V2_L23: [usize; 15] = [0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160];
        let kbps = match (version == 3, layer_no) {
            (true, 1) => V1_L1,
            (true, 2) => V1_L2,
            (true, _) => V1_L3,
            (false, 1) => V2_L1,
            (false, _) => V2_L23,
        }[br_idx];
        // Bytes per frame: 384 samples in 4-byte slots (layer I), 1152 (II; III in MPEG-1)
        // or 576 (III in MPEG-2/2.5).
        let len = match layer_no {
            1 => (12 * kbps * 1000 / sr + padding) * 4,
            3 if version != 3 => 72 * kbps * 1000 / sr + padding,
            _ => 144 * kbps * 1000 / sr + padding,
        };
        Some(len)
    };
    // ADTS AAC: sync 0xFFF, layer bits 00, a 13-bit frame length; chained as below.
    let adts = |d: &[u8]| d.len() >= 7 && d[0] == 0xFF && d[1] & 0xF6 == 0xF0;
    if adts(d) {
        let len = ((d[3] as usize & 3) << 11) | (d[4] as usize) << 3 | (d[5] as usize) >> 5;
        return len >= 7 && (d.len() < len + 7 || adts(&d[len..]));
    }
    let Some(len) = hdr(d) else {
        return false;
    };
    len >= 4 && (d.len() < len + 4 || hdr(&d[len..]).is_some())
}

/// Returns the name of the codec if a RIFF/WAVE file declares a format tag
/// that symphonia cannot decode (symphonia itself would only say
/// "unsupported wave format").
fn wav_format_problem(data: &[u8]) -> Option<String> {
    let body = wav_fmt(data)?;
    if body.len() < 2 {
        return None;
    }
    let mut tag = u16::from_le_bytes([body[0], body[1]]);
    if tag == 0xFFFE && body.len() >= 26 {
        // WAVE_FORMAT_EXTENSIBLE: the real tag is the first two bytes
        // of the sub-format GUID.
        tag = u16::from_le_bytes([body[24], body[25]]);
    }
    match tag {
        // PCM, Microsoft ADPCM, IEEE float, A-law, µ-law, IMA ADPCM.
        1 | 2 | 3 | 6 | 7 | 0x11 | 0xFFFE => None,
        _ => Some(format!(
            "WAV format code 0x{tag:04X} ({})",
            wav_tag_name(tag)
        )),
    }
}

/// A WAV written before its length was known (a recorder or encoder writing to a pipe) may
/// leave 0 as its RIFF and `data` sizes. symphonia takes a RIFF size of 0 for no file and a
/// data size of 0 for no audio; ffmpeg and sox read such a file to its end, and so does this:
/// a size of 0 with bytes behind it is set to what the file holds.
fn fill_in_unknown_wav_sizes(data: &mut [u8]) {
    let set_size = |data: &mut [u8], pos: usize| {
        let rest = u32::try_from(data.len() - pos - 8).unwrap_or(u32::MAX);
        data[pos + 4..pos + 8].copy_from_slice(&rest.to_le_bytes());
    };
    if data.len() < 12 || &data[8..12] != b"WAVE" {
        return;
    }
    if data[4..8] == [0; 4] {
        set_size(data, 0);
    }
    if let Some((pos, 0)) = wav_chunk(data, b"data") {
        set_size(data, pos);
    }
}

/// RF64 and BW64 (EBU Tech 3306, ITU-R BS.2088: the WAV of recorders and broadcast tools,
/// and of ffmpeg past 4 GB) keep the RIFF and `data` sizes in a `ds64` chunk and write
/// 0xFFFFFFFF in their place. Where the data fits a RIFF size, the header is rewritten in place
/// as the RIFF it then is (the ds64 chunk becomes a `JUNK` chunk that readers skip), so that
/// symphonia reads it. Returns the data's size where it does not fit (over 4 GiB); a file
/// without a ds64 chunk stays as it is.
fn rf64_as_riff(data: &mut [u8]) -> Option<u64> {
    let is_rf64 = data.len() >= 44
        && (&data[..4] == b"RF64" || &data[..4] == b"BW64")
        && &data[8..12] == b"WAVE"
        && &data[12..16] == b"ds64";
    if !is_rf64 || u32::from_le_bytes(data[16..20].try_into().ok()?) < 24 {
        return None;
    }
    let data_size = u64::from_le_bytes(data[28..36].try_into().ok()?);
    data[..4].copy_from_slice(b"RIFF");
    data[12..16].copy_from_slice(b"JUNK");
    let riff = u32::try_from(data.len() - 8).unwrap_or(u32::MAX);
    data[4..8].copy_from_slice(&riff.to_le_bytes());
    let (pos, _) = wav_chunk(data, b"data")?;
    // What the file holds of the declared data (a cut recording holds less).
    let size = data_size.min((data.len() - pos - 8) as u64);
    match u32::try_from(size) {
        Ok(size) if size < u32::MAX => {
            data[pos + 4..pos + 8].copy_from_slice(&size.to_le_bytes());
            None
        }
        _ => Some(size),
    }
}

/// Where a WAV file's first chunk with this id starts, and its declared size.
fn wav_chunk(data: &[u8], id: &[u8; 4]) -> Option<(usize, usize)> {
    let mut pos = 12usize;
    while pos + 8 <= data.len() {
        let size = u32::from_le_bytes(data[pos + 4..pos + 8].try_into().ok()?) as usize;
        if &data[pos..pos + 4] == id {
            return Some((pos, size));
        }
        pos = pos.checked_add(8 + size + (size & 1))?;
    }
    None
}

/// The body of a WAV file's `fmt ` chunk (its first 40 bytes at most).
fn wav_fmt(data: &[u8]) -> Option<&[u8]> {
    let (pos, size) = wav_chunk(data, b"fmt ")?;
    data.get(pos + 8..pos + 8 + size.min(40))
}

fn wav_tag_name(tag: u16) -> &'static str {
    match tag {
        0x0031 => "GSM 6.10",
        0x0050 => "MPEG audio",
        0x0055 => "MPEG Layer III",
        0x0161..=0x0163 => "Windows Media Audio",
        0x00FF | 0x1600 | 0x1610 => "AAC",
        0x2000 => "AC-3",
        0x0000 => "unknown",
        _ => "not PCM or IEEE float",
    }
}

fn codec_name(codec: CodecType) -> String {
    if let Some(d) = symphonia::default::get_codecs().get_codec(codec) {
        return d.long_name.to_string();
    }
    let known: &[(CodecType, &str)] = &[
        (codecs::CODEC_TYPE_AAC, "AAC"),
        (codecs::CODEC_TYPE_ALAC, "ALAC"),
        (codecs::CODEC_TYPE_OPUS, "Opus"),
        (codecs::CODEC_TYPE_MP1, "MPEG audio layer 1"),
        (codecs::CODEC_TYPE_MP2, "MPEG audio layer 2"),
        (codecs::CODEC_TYPE_ADPCM_MS, "Microsoft ADPCM"),
        (codecs::CODEC_TYPE_ADPCM_IMA_WAV, "IMA ADPCM"),
        (codecs::CODEC_TYPE_SPEEX, "Speex"),
        (codecs::CODEC_TYPE_WAVPACK, "WavPack"),
    ];
    known
        .iter()
        .find(|(c, _)| *c == codec)
        .map_or_else(|| format!("codec id {codec}"), |(_, n)| n.to_string())
}

fn decode_inner(mut data: Vec<u8>, name: &str) -> Result<DecodedAudio, AudioError> {
    if let Some(size) = rf64_as_riff(&mut data) {
        return Err(AudioError::UnsupportedCodec {
            name: name.to_string(),
            codec: format!(
                "RF64 WAV with {:.1} GiB of audio data (WAV is read up to 4 GiB; convert it, e.g. to FLAC)",
                size as f64 / (1u64 << 30) as f64
            ),
        });
    }
    if data.starts_with(b"RIFF") {
        fill_in_unknown_wav_sizes(&mut data);
    }
    matroska::void_seek_heads_past_the_end(&mut data);
    match sniff(&data) {
        Sniffed::OggOpus => opus::decode_ogg_opus(&data, name),
        // symphonia asserts on a WAV rate of 0 (a panic, caught, with a vaguer message).
        Sniffed::Symphonia if wav_fmt(&data).is_some_and(|f| f.get(4..8) == Some(&[0; 4])) => {
            Err(AudioError::Corrupt {
                name: name.to_string(),
                detail: "the WAV header's sample rate is 0".to_string(),
            })
        }
        Sniffed::Symphonia => decode_symphonia(data, name),
        Sniffed::Unsupported(codec) => Err(AudioError::UnsupportedCodec {
            name: name.to_string(),
            codec,
        }),
        Sniffed::NotAudio => Err(AudioError::NotAudio {
            name: name.to_string(),
        }),
    }
}

fn sym_err(e: SymError, name: &str, context: &str) -> AudioError {
    let name = name.to_string();
    match e {
        SymError::Unsupported(what) => AudioError::UnsupportedCodec {
            name,
            codec: what.to_string(),
        },
        SymError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            AudioError::Corrupt {
                name,
                detail: format!("{context}: unexpected end of data"),
            }
        }
        other => AudioError::Corrupt {
            name,
            detail: format!("{context}: {other}"),
        },
    }
}

fn decode_symphonia(data: Vec<u8>, name: &str) -> Result<DecodedAudio, AudioError> {
    let edit = data
        .get(4..8)
        .filter(|kind| kind == b"ftyp")
        .and_then(|_| mp4::audio_edit(&data));
    let mss = MediaSourceStream::new(
        Box::new(Cursor::new(data)),
        MediaSourceStreamOptions::default(),
    );
    // Gapless: MP3 encoder delay/padding (LAME/Xing header) is trimmed, as
    // mpg123 (libsndfile's MP3 backend) does.
    let fmt_opts = FormatOptions {
        enable_gapless: true,
        ..Default::default()
    };
    // An empty hint: the format is probed from the content only.
    let probed = symphonia::default::get_probe()
        .format(&Hint::new(), mss, &fmt_opts, &MetadataOptions::default())
        .map_err(|e| match e {
            SymError::Unsupported(_) => AudioError::NotAudio {
                name: name.to_string(),
            },
            e => sym_err(e, name, "reading the header"),
        })?;
    let mut format = probed.format;
    let track = format
        .tracks()
        .iter()
        .find(|t| t.codec_params.codec != CODEC_TYPE_NULL)
        .ok_or_else(|| AudioError::Corrupt {
            name: name.to_string(),
            detail: "no audio track".to_string(),
        })?;
    let track_id = track.id;
    let params = track.codec_params.clone();
    if params.codec == codecs::CODEC_TYPE_OPUS {
        let head = params.extra_data.as_deref().unwrap_or_default();
        return opus::decode_opus_packets(format.as_mut(), track_id, head, name);
    }
    let mut decoder = symphonia::default::get_codecs()
        .make(&params, &DecoderOptions::default())
        .map_err(|e| match e {
            SymError::Unsupported(_) => AudioError::UnsupportedCodec {
                name: name.to_string(),
                codec: codec_name(params.codec),
            },
            e => sym_err(e, name, "opening the decoder"),
        })?;

    let mut channels: Vec<Vec<f32>> = Vec::new();
    let mut sample_rate = params.sample_rate.unwrap_or(0);
    let mut first_error: Option<String> = None;
    let mut scratch: Option<AudioBuffer<f32>> = None;
    loop {
        let packet = match format.next_packet() {
            Ok(p) => p,
            // symphonia signals the end of the stream with UnexpectedEof.
            Err(SymError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            // A new chained stream: we keep the first one.
            Err(SymError::ResetRequired) => break,
            Err(e) => {
                if channels.first().is_some_and(|c| !c.is_empty()) {
                    // Damage after valid audio: keep what decoded, as
                    // libsndfile and ffmpeg do for truncated files.
                    break;
                }
                return Err(sym_err(e, name, "reading packets"));
            }
        };
        if packet.track_id() != track_id {
            continue;
        }
        let decoded = match decoder.decode(&packet) {
            Ok(d) => d,
            // A damaged packet: skip it (symphonia's documented policy).
            Err(SymError::DecodeError(e)) => {
                first_error.get_or_insert_with(|| e.to_string());
                continue;
            }
            Err(SymError::IoError(e)) => {
                first_error.get_or_insert_with(|| e.to_string());
                continue;
            }
            Err(e) => return Err(sym_err(e, name, "decoding")),
        };
        let spec = *decoded.spec();
        let n_ch = spec.channels.count();
        if channels.is_empty() {
            if n_ch == 0 {
                return Err(AudioError::Corrupt {
                    name: name.to_string(),
                    detail: "zero channels".to_string(),
                });
            }
            channels = vec![Vec::new(); n_ch];
            sample_rate = spec.rate;
        } else if n_ch != channels.len() || spec.rate != sample_rate {
            return Err(AudioError::Corrupt {
                name: name.to_string(),
                detail: "channel count or sample rate changes mid-stream".to_string(),
            });
        }
        if decoded.frames() == 0 {
            continue;
        }
        let buf = match &mut scratch {
            Some(b) if b.capacity() >= decoded.capacity() && b.spec() == &spec => b,
            _ => scratch.insert(decoded.make_equivalent::<f32>()),
        };
        decoded.convert(buf);
        for (c, out) in channels.iter_mut().enumerate() {
            out.extend_from_slice(buf.chan(c));
        }
    }
    if channels.first().is_none_or(|c| c.is_empty()) {
        if let Some(e) = first_error {
            return Err(AudioError::Corrupt {
                name: name.to_string(),
                detail: e,
            });
        }
        return Err(AudioError::Empty {
            name: name.to_string(),
        });
    }
    if sample_rate == 0 {
        return Err(AudioError::Corrupt {
            name: name.to_string(),
            detail: "sample rate is 0".to_string(),
        });
    }
    if let Some(edit) = edit {
        edit.trim(&mut channels, sample_rate);
        if channels[0].is_empty() {
            return Err(AudioError::Empty {
                name: name.to_string(),
            });
        }
    }
    Ok(DecodedAudio {
        sample_rate,
        channels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adts_is_recognised_by_two_chained_headers() {
        // A header of a 9-byte frame (frame length 9: bits 30..43), then the next header.
        let header = [0xFF, 0xF1, 0x50, 0x80, 0x01, 0x20, 0x00];
        let mut two = header.to_vec();
        two.extend_from_slice(&[0; 2]);
        two.extend_from_slice(&header);
        two.extend_from_slice(&[0; 2]);
        assert_eq!(sniff(&two), Sniffed::Symphonia);
        // The same first header followed by anything else is not audio.
        let mut one = header.to_vec();
        one.extend_from_slice(&[0x55; 16]);
        assert_eq!(sniff(&one), Sniffed::NotAudio);
    }

    #[test]
    fn mpeg_audio_of_every_layer_is_recognised_by_two_chained_frames() {
        // MPEG-1 at 32 kHz: layer I at 32 kbit/s (48 bytes a frame), layer II at 32 kbit/s
        // (144 bytes), layer III at 32 kbit/s (144 bytes).
        for (layer_bits, len) in [(0b11, 48), (0b10, 144), (0b01, 144)] {
            let header = [0xFF, 0xF8 | layer_bits << 1 | 1, 0x18, 0xC4];
            let mut two = header.to_vec();
            two.resize(len, 0);
            two.extend_from_slice(&header);
            two.resize(2 * len, 0);
            assert_eq!(sniff(&two), Sniffed::Symphonia, "layer bits {layer_bits:b}");
            // The second header one byte off: not a chain.
            let mut off = header.to_vec();
            off.resize(len + 1, 0);
            off.extend_from_slice(&header);
            off.resize(2 * len + 1, 0);
            assert_eq!(sniff(&off), Sniffed::NotAudio, "layer bits {layer_bits:b}");
        }
    }

    #[test]
    fn sniff_rejects_text() {
        assert_eq!(sniff(b"hello world, this is text\n"), Sniffed::NotAudio);
    }

    /// A 16-bit mono WAV of `samples` with the given RIFF and data sizes.
    fn wav_with_sizes(samples: &[i16], riff: u32, data: u32) -> Vec<u8> {
        let mut d = b"RIFF".to_vec();
        d.extend(riff.to_le_bytes());
        d.extend(b"WAVEfmt \x10\0\0\0");
        d.extend([1, 0, 1, 0, 0x80, 0x3e, 0, 0, 0, 0x7d, 0, 0, 2, 0, 16, 0]);
        d.extend(b"data");
        d.extend(data.to_le_bytes());
        d.extend(samples.iter().flat_map(|v| v.to_le_bytes()));
        d
    }

    #[test]
    fn streamed_wavs_with_unknown_sizes_are_read_to_their_end() {
        let samples: Vec<i16> = (0..1600).map(|i| (i * 37 % 2000) as i16 - 1000).collect();
        let bytes = 2 * samples.len() as u32;
        let want = decode_bytes(&wav_with_sizes(&samples, 36 + bytes, bytes), "a.wav").unwrap();
        assert_eq!(want.n_frames(), samples.len());
        for (riff, data) in [(0, 0), (0, bytes), (36 + bytes, 0), (u32::MAX, u32::MAX)] {
            let got = decode_bytes(&wav_with_sizes(&samples, riff, data), "a.wav")
                .unwrap_or_else(|e| panic!("RIFF {riff}, data {data}: {e}"));
            assert_eq!(got.channels, want.channels, "RIFF {riff}, data {data}");
            assert_eq!(got.sample_rate, 16000);
        }
        // A data size of 0 with nothing behind it is still an empty file.
        let err = decode_bytes(&wav_with_sizes(&[], 0, 0), "e.wav").unwrap_err();
        assert!(err.to_string().contains("no audio"), "{err}");
    }

    /// `samples` as an RF64 (or BW64) file: sizes in a ds64 chunk, 0xFFFFFFFF in the RIFF and
    /// `data` size fields; `declared` the ds64's data size.
    fn rf64(magic: &[u8; 4], samples: &[i16], declared: u64) -> Vec<u8> {
        let riff = wav_with_sizes(samples, u32::MAX, u32::MAX);
        let mut d = magic.to_vec();
        d.extend(u32::MAX.to_le_bytes());
        d.extend(b"WAVEds64");
        d.extend(28u32.to_le_bytes());
        d.extend((riff.len() as u64 + 36 - 8).to_le_bytes());
        d.extend(declared.to_le_bytes());
        d.extend((samples.len() as u64).to_le_bytes());
        d.extend(0u32.to_le_bytes());
        d.extend(&riff[12..]);
        d
    }

    #[test]
    fn rf64_and_bw64_read_as_the_riff_they_hold() {
        let samples: Vec<i16> = (0..1600).map(|i| (i * 53 % 3000) as i16 - 1500).collect();
        let bytes = 2 * samples.len() as u64;
        let want = decode_bytes(
            &wav_with_sizes(&samples, 36 + bytes as u32, bytes as u32),
            "a.wav",
        )
        .unwrap();
        for magic in [b"RF64", b"BW64"] {
            let got = decode_bytes(&rf64(magic, &samples, bytes), "a.wav").unwrap();
            assert_eq!(got.channels, want.channels);
            assert_eq!(got.sample_rate, 16000);
        }
        // A cut recording: the ds64 declares more than the file holds; what it holds is read.
        let cut = decode_bytes(&rf64(b"RF64", &samples, 4 * bytes), "a.wav").unwrap();
        assert_eq!(cut.channels, want.channels);
        // Without a ds64 chunk there are no sizes to read.
        let mut no_ds64 = rf64(b"RF64", &samples, bytes);
        no_ds64[12..16].copy_from_slice(b"JUNK");
        let err = decode_bytes(&no_ds64, "a.wav").unwrap_err().to_string();
        assert!(err.contains("without a ds64 chunk"), "{err}");
        // Wave64 is named, not taken for something that is not audio.
        let mut w64 = b"riff\x2e\x91\xcf\x11\xa5\xd6\x28\xdb\x04\xc1\x00\x00".to_vec();
        w64.extend([0u8; 64]);
        let err = decode_bytes(&w64, "a.w64").unwrap_err().to_string();
        assert!(err.contains("Wave64"), "{err}");
    }

    #[test]
    fn wav_unknown_tag_is_named() {
        let mut d = b"RIFF\0\0\0\0WAVEfmt \x10\0\0\0".to_vec();
        d.extend_from_slice(&[0x31, 0x00, 1, 0, 0x40, 0x1f, 0, 0, 0, 0, 0, 0, 2, 0, 16, 0]);
        match sniff(&d) {
            Sniffed::Unsupported(s) => assert!(s.contains("GSM 6.10"), "{s}"),
            other => panic!("{other:?}"),
        }
    }
}
