//! Audio output for synthesised speech, written chunk by chunk as it is produced: 16-bit WAV
//! (to a file, its sizes patched at the end; to a pipe, with the "unknown length" sizes players
//! accept), raw s16le, FLAC, Ogg Opus and MP3. These are the formats of OpenAI's speech API
//! except AAC, whose encoder is not at hand in Rust.

mod flac;
mod mp3;
mod ogg_opus;
mod wav;

use crate::stretch::TimeStretch;
use std::io::{Seek, SeekFrom, Write};

/// How samples are encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AudioOutFormat {
    /// RIFF/WAVE, 16-bit mono.
    Wav,
    /// Headerless signed 16-bit little endian mono.
    S16le,
    /// FLAC, 16-bit mono: lossless, about half the size of WAV for speech.
    Flac,
    /// Opus in Ogg at 32 kbit/s: a twelfth of WAV's size at 24 kHz, lossy.
    Opus,
    /// MP3 (MPEG Layer III) at 64 kbit/s, lossy; what every player plays.
    Mp3,
}

impl AudioOutFormat {
    /// Every format, by the name [`Self::from_name`] takes (OpenAI's `response_format` values).
    pub const NAMES: [&'static str; 5] = ["mp3", "opus", "flac", "wav", "pcm"];

    /// The format called `name` in [`Self::NAMES`].
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "wav" => Some(Self::Wav),
            "pcm" => Some(Self::S16le),
            "flac" => Some(Self::Flac),
            "opus" => Some(Self::Opus),
            "mp3" => Some(Self::Mp3),
            _ => None,
        }
    }

    /// The format a file name's extension calls for (`.wav`, `.pcm` or `.raw`, `.flac`, `.opus`
    /// or `.ogg`, `.mp3`), ignoring case.
    pub fn from_extension(extension: &str) -> Option<Self> {
        match extension.to_ascii_lowercase().as_str() {
            "wav" | "wave" => Some(Self::Wav),
            "pcm" | "raw" => Some(Self::S16le),
            "flac" => Some(Self::Flac),
            "opus" | "ogg" | "oga" => Some(Self::Opus),
            "mp3" => Some(Self::Mp3),
            _ => None,
        }
    }

    /// The media type of the encoded stream.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Wav => "audio/wav",
            Self::S16le => "audio/pcm",
            Self::Flac => "audio/flac",
            Self::Opus => "audio/ogg",
            Self::Mp3 => "audio/mpeg",
        }
    }
}

/// The encoder behind a writer.
enum Encoder {
    Wav,
    S16le,
    Flac(Box<flac::FlacEncoder>),
    Opus(Box<ogg_opus::OggOpusEncoder>),
    Mp3(Box<mp3::Mp3Writer>),
}

/// Writes mono f32 samples in [−1, 1] in an [`AudioOutFormat`] (optionally faster or slower:
/// [`Self::with_speed`]), chunk by chunk: each
/// [`Self::write`] encodes its chunk (Opus keeps back less than one 20 ms packet), writes it
/// and flushes, so a player downstream starts at once.
pub struct AudioWriter<W: Write> {
    out: W,
    sample_rate: u32,
    encoder: Encoder,
    samples: u64,
    started: bool,
    bytes: Vec<u8>,
    pcm: Vec<i16>,
    clamped: Vec<f32>,
    /// With [`Self::with_speed`]: the time-stretcher and its output.
    stretch: Option<TimeStretch>,
    stretched: Vec<f32>,
}

impl<W: Write> AudioWriter<W> {
    /// A writer of `format` at `sample_rate`; the stream's header goes out with the first chunk.
    /// Fails only for a rate the format does not take: Opus takes 8, 12, 16, 24 and 48 kHz,
    /// MP3 those and 11.025, 22.05, 32 and 44.1 kHz, FLAC 1 Hz to 1 048 575 Hz.
    pub fn new(out: W, format: AudioOutFormat, sample_rate: u32) -> std::io::Result<Self> {
        let encoder = match format {
            AudioOutFormat::Wav => Encoder::Wav,
            AudioOutFormat::S16le => Encoder::S16le,
            AudioOutFormat::Flac if sample_rate == 0 || sample_rate >= 1 << 20 => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("FLAC stores rates of 1 to 1048575 Hz, not {sample_rate} Hz"),
                ))
            }
            AudioOutFormat::Flac => Encoder::Flac(Box::new(flac::FlacEncoder::new(sample_rate))),
            AudioOutFormat::Opus => {
                Encoder::Opus(Box::new(ogg_opus::OggOpusEncoder::new(sample_rate)?))
            }
            AudioOutFormat::Mp3 => Encoder::Mp3(Box::new(mp3::Mp3Writer::new(sample_rate)?)),
        };
        Ok(Self {
            out,
            sample_rate,
            encoder,
            samples: 0,
            started: false,
            bytes: Vec::new(),
            pcm: Vec::new(),
            clamped: Vec::new(),
            stretch: None,
            stretched: Vec::new(),
        })
    }

    /// Marks the output as a file that [`AudioWriter::finish_seekable`] will complete: MP3 then
    /// starts with a LAME tag frame to be filled in there (a stream has none).
    pub fn for_file(mut self) -> Self {
        if let Encoder::Mp3(mp3) = &mut self.encoder {
            mp3.keep_tag();
        }
        self
    }

    /// Plays the audio `speed` times as fast, at the same pitch ([`TimeStretch`]); 1 leaves it
    /// as it is.
    pub fn with_speed(mut self, speed: f32) -> Self {
        self.stretch = (speed != 1.0).then(|| TimeStretch::new(self.sample_rate, speed));
        self
    }

    /// The underlying writer.
    pub fn get_ref(&self) -> &W {
        &self.out
    }

    /// Encodes and writes one chunk (what of it the time-stretcher completes), then flushes.
    pub fn write(&mut self, samples: &[f32]) -> std::io::Result<()> {
        let Some(stretch) = &mut self.stretch else {
            return self.encode(samples);
        };
        let mut stretched = std::mem::take(&mut self.stretched);
        stretched.clear();
        stretch.push(samples, &mut stretched);
        let written = self.encode(&stretched);
        self.stretched = stretched;
        written
    }

    /// Encodes and writes `samples`, then flushes.
    fn encode(&mut self, samples: &[f32]) -> std::io::Result<()> {
        self.bytes.clear();
        if !self.started {
            match &mut self.encoder {
                Encoder::Wav => self
                    .bytes
                    .extend_from_slice(&wav::header(self.sample_rate, wav::UNKNOWN)),
                Encoder::S16le | Encoder::Mp3(_) => {}
                Encoder::Flac(flac) => self
                    .bytes
                    .extend_from_slice(&flac.stream_header(samples.len())),
                Encoder::Opus(opus) => opus.stream_header(&mut self.bytes)?,
            }
            self.started = true;
        }
        match &mut self.encoder {
            Encoder::Wav | Encoder::S16le => {
                for &s in samples {
                    self.bytes.extend_from_slice(&to_i16(s).to_le_bytes());
                }
            }
            Encoder::Flac(flac) => {
                self.pcm.clear();
                self.pcm.extend(samples.iter().map(|&s| to_i16(s)));
                flac.encode(&self.pcm, false, &mut self.bytes);
            }
            Encoder::Opus(opus) => {
                clamp_into(samples, &mut self.clamped);
                opus.encode(&self.clamped, &mut self.bytes)?;
            }
            Encoder::Mp3(mp3) => {
                clamp_into(samples, &mut self.clamped);
                mp3.encode(&self.clamped, &mut self.bytes)?;
            }
        }
        self.out.write_all(&self.bytes)?;
        self.samples += samples.len() as u64;
        self.out.flush()
    }

    /// Writes what the encoder still holds and the stream's end (an empty stream still gets
    /// its header).
    fn end(&mut self) -> std::io::Result<()> {
        if let Some(mut stretch) = self.stretch.take() {
            let mut rest = Vec::new();
            stretch.finish(&mut rest);
            self.encode(&rest)?;
        }
        if !self.started {
            self.encode(&[])?;
        }
        self.bytes.clear();
        match &mut self.encoder {
            Encoder::Wav | Encoder::S16le => {}
            Encoder::Flac(flac) => flac.encode(&[], true, &mut self.bytes),
            Encoder::Opus(opus) => opus.finish(&mut self.bytes)?,
            Encoder::Mp3(mp3) => mp3.finish(&mut self.bytes),
        }
        self.out.write_all(&self.bytes)?;
        self.out.flush()
    }

    /// Ends the stream and returns the writer.
    pub fn finish(mut self) -> std::io::Result<W> {
        self.end()?;
        Ok(self.out)
    }
}

impl<W: Write + Seek> AudioWriter<W> {
    /// Ends a seekable stream and puts what only its end knows into its header: the WAV
    /// sizes; FLAC's sample count, block and frame sizes and MD5; MP3's LAME tag (the encoder's
    /// delay and padding, so that players trim them: the samples written, gapless).
    pub fn finish_seekable(mut self) -> std::io::Result<W> {
        self.end()?;
        let header = match &self.encoder {
            Encoder::Wav => {
                let data = u32::try_from(self.samples * 2).unwrap_or(wav::UNKNOWN);
                wav::header(self.sample_rate, data).to_vec()
            }
            Encoder::Flac(flac) => flac.stream_info().to_vec(),
            Encoder::Mp3(mp3) => match mp3.lame_tag() {
                Some(tag) => tag.to_vec(),
                None => return Ok(self.out),
            },
            Encoder::S16le | Encoder::Opus(_) => return Ok(self.out),
        };
        self.out.seek(SeekFrom::Start(0))?;
        self.out.write_all(&header)?;
        self.out.seek(SeekFrom::End(0))?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// `samples` clipped to [−1, 1] into `out`, NaN (which `clamp` keeps) as silence, as the
/// 16-bit formats write them: what the float encoders take.
fn clamp_into(samples: &[f32], out: &mut Vec<f32>) {
    out.clear();
    out.extend(
        samples
            .iter()
            .map(|&s| if s.is_nan() { 0.0 } else { s.clamp(-1.0, 1.0) }),
    );
}

/// As soundfile / libsndfile write float → PCM_16: scale by 32767, round, clip.
fn to_i16(s: f32) -> i16 {
    (s.clamp(-1.0, 1.0) * 32767.0).round() as i16
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn wav_file_reads_back_with_its_sizes() {
        let mut w = AudioWriter::new(Cursor::new(Vec::new()), AudioOutFormat::Wav, 24_000).unwrap();
        w.write(&[0.0, 0.5, -1.0]).unwrap();
        w.write(&[2.0]).unwrap();
        let bytes = w.finish_seekable().unwrap().into_inner();
        assert_eq!(bytes.len(), 44 + 8);
        assert_eq!(&bytes[40..44], &8u32.to_le_bytes());
        assert_eq!(&bytes[4..8], &44u32.to_le_bytes());
        let decoded = crate::decode_bytes(&bytes, "out.wav").unwrap();
        assert_eq!(decoded.sample_rate, 24_000);
        let want = [
            0.0,
            16384.0 / 32768.0,
            -32767.0 / 32768.0,
            32767.0 / 32768.0,
        ];
        assert_eq!(decoded.channels[0], want);
    }

    #[test]
    fn streams_have_unknown_sizes_or_no_header() {
        let mut w = AudioWriter::new(Vec::new(), AudioOutFormat::Wav, 24_000).unwrap();
        w.write(&[0.25]).unwrap();
        let bytes = w.finish().unwrap();
        assert_eq!(&bytes[40..44], &u32::MAX.to_le_bytes());
        assert_eq!(&bytes[44..], &8192i16.to_le_bytes());
        let mut w = AudioWriter::new(Vec::new(), AudioOutFormat::S16le, 24_000).unwrap();
        w.write(&[-0.25]).unwrap();
        assert_eq!(w.finish().unwrap(), (-8192i16).to_le_bytes());
    }

    /// A voice-like test signal: a few harmonics of a gliding pitch, noise, a silent stretch.
    fn voice_like(n: usize, rate: f32) -> Vec<f32> {
        let mut state = 0x1234_5678u32;
        let mut phase = 0.0f32;
        (0..n)
            .map(|i| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                let noise = (state >> 8) as f32 / (1 << 24) as f32 - 0.5;
                let t = i as f32 / rate;
                phase += 2.0 * std::f32::consts::PI * (140.0 + 60.0 * (3.0 * t).sin()) / rate;
                let voiced = (1..6)
                    .map(|h| (h as f32 * phase).sin() / h as f32)
                    .sum::<f32>();
                let gate = if (i / 2400) % 5 == 4 { 0.0 } else { 1.0 };
                gate * (0.3 * voiced + 0.002 * noise)
            })
            .collect()
    }

    /// What 16-bit PCM keeps of `samples`, as a decoder returns it.
    fn as_pcm16(samples: &[f32]) -> Vec<f32> {
        samples
            .iter()
            .map(|&s| f32::from(to_i16(s)) / 32768.0)
            .collect()
    }

    fn encode(format: AudioOutFormat, chunks: &[&[f32]], seekable: bool) -> Vec<u8> {
        let mut w = AudioWriter::new(Cursor::new(Vec::new()), format, 24_000).unwrap();
        if seekable {
            w = w.for_file();
        }
        for chunk in chunks {
            w.write(chunk).unwrap();
        }
        let out = if seekable {
            w.finish_seekable()
        } else {
            w.finish()
        };
        out.unwrap().into_inner()
    }

    #[test]
    fn flac_is_lossless_in_any_chunking() {
        let signal = voice_like(24_000 * 3 + 123, 24_000.0);
        let want = as_pcm16(&signal);
        // One chunk of 3 s (blocks of 4096); TTS-like chunks (blocks of 1920, a chunk at a
        // time); odd lengths (blocks of 4096, the rest waiting for the next chunk).
        let cuts: [&[usize]; 3] = [&[], &[1920, 5760, 13440], &[7, 9000, 9001, 20_000]];
        for cuts in cuts {
            let mut chunks = Vec::new();
            let mut start = 0;
            for &end in cuts.iter().chain([&signal.len()]) {
                chunks.push(&signal[start..end]);
                start = end;
            }
            for seekable in [false, true] {
                let bytes = encode(AudioOutFormat::Flac, &chunks, seekable);
                let decoded = crate::decode_bytes(&bytes, "out.flac").unwrap();
                assert_eq!(decoded.sample_rate, 24_000);
                assert_eq!(decoded.channels[0], want, "cuts {cuts:?}");
            }
        }
    }

    #[test]
    fn flac_edge_signals_round_trip() {
        let full_scale: Vec<f32> = (0..5000)
            .map(|i| if i % 2 == 0 { 1.0 } else { -1.0 })
            .collect();
        let steps: Vec<f32> = (0..3000)
            .map(|i| ((i / 7) % 3) as f32 * 0.4 - 0.4)
            .collect();
        let signals: [&[f32]; 5] = [
            &[0.25],
            &[0.0; 4096],
            &[0.5, -0.5, 0.25],
            &full_scale,
            &steps,
        ];
        for (i, signal) in signals.into_iter().enumerate() {
            let bytes = encode(AudioOutFormat::Flac, &[signal], true);
            let decoded = crate::decode_bytes(&bytes, "out.flac")
                .unwrap_or_else(|e| panic!("signal {i}: {e}"));
            assert_eq!(decoded.channels, [as_pcm16(signal)]);
        }
        // No samples: the stream's header alone.
        let bytes = encode(AudioOutFormat::Flac, &[], true);
        assert_eq!(bytes.len(), 42);
        assert_eq!(&bytes[..4], b"fLaC");
    }

    #[test]
    fn flac_stream_info_when_seekable_unknown_otherwise() {
        let signal = voice_like(10_000, 24_000.0);
        let streamed = encode(
            AudioOutFormat::Flac,
            &[&signal[..1920], &signal[1920..]],
            false,
        );
        let filed = encode(
            AudioOutFormat::Flac,
            &[&signal[..1920], &signal[1920..]],
            true,
        );
        // Only the header differs.
        assert_eq!(streamed[42..], filed[42..]);
        let total = |b: &[u8]| {
            (u64::from(b[21] & 0x0F) << 32)
                | u64::from(u32::from_be_bytes(b[22..26].try_into().unwrap()))
        };
        assert_eq!(total(&streamed), 0);
        assert_eq!(streamed[26..42], [0; 16]);
        assert_eq!(total(&filed), 10_000);
        // The MD5 of the samples as 16-bit little endian (what `flac -t` checks).
        use md5::Digest;
        let mut md5 = md5::Md5::new();
        for s in as_pcm16(&signal) {
            md5.update(((s * 32768.0) as i16).to_le_bytes());
        }
        assert_eq!(filed[26..42], md5.finalize()[..]);
        // Blocks of the first chunk's 1920 samples, as least and most (the last is shorter).
        assert_eq!(u16::from_be_bytes([filed[8], filed[9]]), 1920);
        assert_eq!(u16::from_be_bytes([filed[10], filed[11]]), 1920);
    }

    #[test]
    fn opus_header_pages_and_empty_streams() {
        let bytes = encode(AudioOutFormat::Opus, &[], false);
        assert_eq!(&bytes[..4], b"OggS");
        assert_eq!(bytes[5], 0x02, "first page: beginning of stream");
        assert_eq!(&bytes[28..36], b"OpusHead");
        // pre-skip: libopus' lookahead at 24 kHz (6.5 ms) in 48 kHz samples; the input rate.
        assert_eq!(u16::from_le_bytes([bytes[38], bytes[39]]), 312);
        assert_eq!(
            u32::from_le_bytes(bytes[40..44].try_into().unwrap()),
            24_000
        );
        assert!(matches!(
            crate::decode_bytes(&bytes, "out.opus"),
            Err(crate::AudioError::Empty { .. })
        ));
        // Opus takes its own rates only.
        let refused = AudioWriter::new(Vec::new(), AudioOutFormat::Opus, 22_050)
            .err()
            .unwrap();
        assert!(refused.to_string().contains("22050 Hz"), "{refused}");
        // FLAC's header has 20 bits for a rate.
        for rate in [0, 1 << 20] {
            let refused = AudioWriter::new(Vec::new(), AudioOutFormat::Flac, rate)
                .err()
                .unwrap();
            assert!(
                refused.to_string().contains(&format!("not {rate} Hz")),
                "{refused}"
            );
        }
    }

    #[test]
    fn format_names_and_extensions() {
        for name in AudioOutFormat::NAMES {
            let format = AudioOutFormat::from_name(name).unwrap();
            assert!(format.content_type().starts_with("audio/"));
        }
        assert_eq!(AudioOutFormat::from_name("aac"), None);
        assert_eq!(AudioOutFormat::from_name("mp3"), Some(AudioOutFormat::Mp3));
        assert_eq!(
            AudioOutFormat::from_extension("FLAC"),
            Some(AudioOutFormat::Flac)
        );
        assert_eq!(
            AudioOutFormat::from_extension("ogg"),
            Some(AudioOutFormat::Opus)
        );
        assert_eq!(
            AudioOutFormat::from_extension("raw"),
            Some(AudioOutFormat::S16le)
        );
        assert_eq!(
            AudioOutFormat::from_extension("MP3"),
            Some(AudioOutFormat::Mp3)
        );
        assert_eq!(AudioOutFormat::from_extension("m4a"), None);
    }

    #[test]
    fn non_finite_samples_are_written_as_silence_or_full_scale() {
        let mut signal = voice_like(4800, 24_000.0);
        signal[100] = f32::NAN;
        signal[200] = f32::INFINITY;
        signal[300] = f32::NEG_INFINITY;
        for format in [
            AudioOutFormat::Wav,
            AudioOutFormat::Flac,
            AudioOutFormat::Opus,
            AudioOutFormat::Mp3,
        ] {
            let bytes = encode(format, &[&signal], true);
            let decoded = crate::decode_bytes(&bytes, "out")
                .unwrap()
                .channels
                .remove(0);
            assert_eq!(decoded.len(), signal.len(), "{format:?}");
            assert!(decoded.iter().all(|x| x.is_finite()), "{format:?}");
            if matches!(format, AudioOutFormat::Wav | AudioOutFormat::Flac) {
                let scale = 32767.0 / 32768.0;
                assert_eq!(
                    [decoded[100], decoded[200], decoded[300]],
                    [0.0, scale, -scale]
                );
            }
        }
    }

    #[test]
    fn a_writer_at_another_speed_writes_the_stretched_samples() {
        let signal = voice_like(24_000, 24_000.0);
        let mut stretch = TimeStretch::new(24_000, 1.5);
        let mut want = Vec::new();
        for chunk in signal.chunks(1920) {
            stretch.push(chunk, &mut want);
        }
        stretch.finish(&mut want);
        let mut w = AudioWriter::new(Vec::new(), AudioOutFormat::S16le, 24_000)
            .unwrap()
            .with_speed(1.5);
        for chunk in signal.chunks(1920) {
            w.write(chunk).unwrap();
        }
        let bytes = w.finish().unwrap();
        assert_eq!(want.len(), 16_000);
        let want: Vec<u8> = want.iter().flat_map(|&s| to_i16(s).to_le_bytes()).collect();
        assert!(bytes == want);
    }
}
