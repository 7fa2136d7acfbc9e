//! Live PCM input: 16 kHz mono samples read from a pipe as they arrive, either raw s16le or a
//! WAV stream (a header, then PCM; the data size may be unknown: 0 or 0xFFFFFFFF, as ffmpeg
//! and arecord write when piping).

use crate::error::AudioError;
use std::io::Read;

/// Sample encoding of a [`PcmStream`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PcmFormat {
    /// Sniff: a RIFF/WAVE header means WAV, anything else raw s16le.
    Auto,
    /// Headerless signed 16-bit little-endian mono at the expected rate.
    S16le,
    /// A WAV stream: 16-bit PCM or 32-bit float, any channel count (downmixed).
    Wav,
}

/// Reads 16 kHz mono f32 samples from a byte stream, chunk by chunk.
pub struct PcmStream<R: Read> {
    reader: R,
    /// Bytes read but not yet converted (a partial frame).
    pending: Vec<u8>,
    encoding: Encoding,
    /// Data bytes the WAV header announced, if it knew.
    declared: Option<u64>,
    consumed: u64,
    done: bool,
}

#[derive(Clone, Copy, Debug)]
enum Encoding {
    I16 { channels: usize },
    F32 { channels: usize },
}

impl Encoding {
    fn frame_bytes(self) -> usize {
        match self {
            Encoding::I16 { channels } => 2 * channels,
            Encoding::F32 { channels } => 4 * channels,
        }
    }
}

const CHUNK_BYTES: usize = 8192;

/// The compressed format whose signature `head` starts with: only signatures that raw PCM
/// is unlikely to begin with (an MP3 without an ID3 tag starts with a frame sync that is also
/// a plausible sample, and goes through as PCM).
fn compressed_kind(head: &[u8]) -> Option<&'static str> {
    let at = |from: usize, magic: &[u8]| head.get(from..from + magic.len()) == Some(magic);
    [
        (0, &b"ID3"[..], "MP3 (an ID3 tag)"),
        (0, b"fLaC", "FLAC"),
        (0, b"OggS", "Ogg (Opus or Vorbis)"),
        (0, b"RF64", "RF64 WAV"),
        (0, b"BW64", "BW64 WAV"),
        (0, b"riff\x2e\x91\xcf\x11", "Sony Wave64"),
        (8, b"AIFF", "AIFF"),
        (8, b"AIFC", "AIFF"),
        (0, b"caff", "CAF"),
        (4, b"ftyp", "MP4/M4A"),
        (0, b"\x1a\x45\xdf\xa3", "Matroska/WebM"),
    ]
    .into_iter()
    .find(|(from, magic, _)| at(*from, magic))
    .map(|(_, _, kind)| kind)
}

/// The longest `fmt ` chunk a WAV stream may have: 16 bytes of PCM, 18 or 40 of the extended
/// forms; a size beyond any of them is a damaged header, not a chunk to read.
const MAX_FMT_BYTES: u32 = 1024;

/// Whether the stream's first bytes are all printable ASCII: text piped in by mistake. The
/// bytes of real s16le audio fall in that range together about once in 10⁵ streams (silence
/// never: its bytes are 0x00 and 0xFF), and `--input-format s16le` reads them all the same.
fn looks_like_text(head: &[u8]) -> bool {
    head.len() >= 4
        && head
            .iter()
            .all(|&b| matches!(b, b'\n' | b'\r' | b'\t' | 0x20..=0x7e))
}

impl<R: Read> PcmStream<R> {
    /// Opens the stream; a WAV header is read (and checked) here. `rate` is the sample rate
    /// the caller needs: a WAV at another rate is an error, not silently wrong text.
    pub fn open(mut reader: R, format: PcmFormat, rate: u32) -> Result<Self, AudioError> {
        let mut head = Vec::new();
        let wav = match format {
            PcmFormat::S16le => false,
            PcmFormat::Wav => true,
            PcmFormat::Auto => {
                read_up_to(&mut reader, &mut head, 12)?;
                if let Some(kind) = compressed_kind(&head) {
                    return Err(stream_error(&format!(
                        "input is {kind}; streaming takes {rate} Hz mono s16le or WAV (decode it first, e.g. `ffmpeg -i IN -ar {rate} -ac 1 -f wav -`)"
                    )));
                }
                // A RIFF start shorter than a header is a cut WAV, not four samples.
                let wav = head.starts_with(b"RIFF") && (head.len() < 12 || &head[8..12] == b"WAVE");
                if !wav && looks_like_text(&head) {
                    return Err(stream_error(&format!(
                        "input looks like text ({:?}…), not audio: streaming takes {rate} Hz mono s16le or WAV (name raw PCM with --input-format s16le)",
                        String::from_utf8_lossy(&head)
                    )));
                }
                wav
            }
        };
        if !wav {
            return Ok(Self {
                reader,
                pending: head,
                encoding: Encoding::I16 { channels: 1 },
                declared: None,
                consumed: 0,
                done: false,
            });
        }
        let missing = 12 - head.len();
        read_up_to(&mut reader, &mut head, missing)?;
        if head.len() < 12 && head.starts_with(b"RIFF") {
            return Err(stream_error(
                "truncated WAV header: the input ends inside it",
            ));
        }
        if head.len() < 12 || &head[..4] != b"RIFF" || &head[8..12] != b"WAVE" {
            return Err(stream_error(
                "input is not a WAV stream (no RIFF/WAVE header)",
            ));
        }
        let mut encoding = None;
        loop {
            let mut chunk = [0u8; 8];
            let mut buf = Vec::new();
            read_up_to(&mut reader, &mut buf, 8)?;
            if buf.len() < 8 {
                return Err(stream_error(
                    "WAV stream ended before its data chunk (truncated header)",
                ));
            }
            chunk.copy_from_slice(&buf);
            let size = u32::from_le_bytes([chunk[4], chunk[5], chunk[6], chunk[7]]);
            match &chunk[..4] {
                b"fmt " => {
                    if size > MAX_FMT_BYTES {
                        return Err(stream_error(&format!(
                            "WAV fmt chunk of {size} bytes: a damaged header"
                        )));
                    }
                    let mut fmt = Vec::new();
                    read_up_to(&mut reader, &mut fmt, size as usize + (size as usize & 1))?;
                    if fmt.len() < 16 {
                        return Err(stream_error("truncated WAV fmt chunk"));
                    }
                    let tag = u16::from_le_bytes([fmt[0], fmt[1]]);
                    let channels = u16::from_le_bytes([fmt[2], fmt[3]]) as usize;
                    let sample_rate = u32::from_le_bytes([fmt[4], fmt[5], fmt[6], fmt[7]]);
                    let bits = u16::from_le_bytes([fmt[14], fmt[15]]);
                    // WAVE_FORMAT_EXTENSIBLE keeps the real tag in its sub-format GUID.
                    let tag = if tag == 0xFFFE && fmt.len() >= 26 {
                        u16::from_le_bytes([fmt[24], fmt[25]])
                    } else {
                        tag
                    };
                    if sample_rate == 0 {
                        return Err(stream_error("WAV stream header gives a sample rate of 0"));
                    }
                    if sample_rate != rate {
                        return Err(stream_error(&format!(
                            "WAV stream is {sample_rate} Hz; streaming needs {rate} Hz (resample first, e.g. `ffmpeg -i IN -ar {rate} -ac 1 -f wav -`)"
                        )));
                    }
                    if channels == 0 {
                        return Err(stream_error("WAV stream has 0 channels"));
                    }
                    encoding = Some(match (tag, bits) {
                        (1, 16) => Encoding::I16 { channels },
                        (3, 32) => Encoding::F32 { channels },
                        _ => {
                            return Err(stream_error(&format!(
                                "WAV stream format {tag} with {bits}-bit samples is not supported (use 16-bit PCM or 32-bit float)"
                            )))
                        }
                    });
                }
                b"data" => {
                    let encoding = encoding
                        .ok_or_else(|| stream_error("WAV data chunk before its fmt chunk"))?;
                    let declared = (size != 0 && size != u32::MAX).then_some(size as u64);
                    return Ok(Self {
                        reader,
                        pending: Vec::new(),
                        encoding,
                        declared,
                        consumed: 0,
                        done: false,
                    });
                }
                _ => {
                    // Skip LIST, fact, … chunks, without holding them (a damaged size may say
                    // 4 GB); an input that ends inside one ends before the data chunk.
                    let skip = u64::from(size) + u64::from(size & 1);
                    std::io::copy(&mut (&mut reader).take(skip), &mut std::io::sink())
                        .map_err(|e| stream_error(&format!("cannot read the stream: {e}")))?;
                }
            }
        }
    }

    /// The next samples (mono, f32 in [-1, 1]); `None` at the end of the stream. A stream
    /// that ends inside a sample, or before the data size its WAV header announced, is an
    /// error (after all complete samples were returned).
    pub fn next_chunk(&mut self) -> Result<Option<Vec<f32>>, AudioError> {
        loop {
            if self.done {
                return Ok(None);
            }
            let mut buf = [0u8; CHUNK_BYTES];
            let n = loop {
                match self.reader.read(&mut buf) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(stream_error(&format!("cannot read the stream: {e}"))),
                }
            };
            let mut take = n;
            if let Some(declared) = self.declared {
                // Bytes after the data chunk (trailing chunks) are not audio.
                let left = declared.saturating_sub(self.consumed + self.pending.len() as u64);
                take = take.min(left as usize);
            }
            self.pending.extend_from_slice(&buf[..take]);
            let frame = self.encoding.frame_bytes();
            let whole = self.pending.len() / frame * frame;
            if n == 0 {
                self.done = true;
                if self.pending.len() > whole {
                    return Err(stream_error(&format!(
                        "stream ended inside a sample ({} stray bytes): truncated stream",
                        self.pending.len() - whole
                    )));
                }
                if let Some(declared) = self.declared {
                    if self.consumed + (whole as u64) < declared {
                        return Err(stream_error(&format!(
                            "WAV stream ended after {} of the {declared} data bytes its header announced: truncated stream",
                            self.consumed + whole as u64
                        )));
                    }
                }
            }
            if whole == 0 {
                if self.done {
                    return Ok(None);
                }
                continue;
            }
            let samples = self.convert(&self.pending[..whole]);
            if samples.iter().any(|v| !v.is_finite()) {
                self.done = true;
                return Err(stream_error(
                    "samples that are not numbers (NaN or infinite floats)",
                ));
            }
            self.consumed += whole as u64;
            self.pending.drain(..whole);
            return Ok(Some(samples));
        }
    }

    fn convert(&self, bytes: &[u8]) -> Vec<f32> {
        match self.encoding {
            Encoding::I16 { channels } => bytes
                .chunks_exact(2 * channels)
                .map(|f| {
                    f.chunks_exact(2)
                        .map(|s| i16::from_le_bytes([s[0], s[1]]) as f32 / 32768.0)
                        .sum::<f32>()
                        / channels as f32
                })
                .collect(),
            Encoding::F32 { channels } => bytes
                .chunks_exact(4 * channels)
                .map(|f| {
                    f.chunks_exact(4)
                        .map(|s| f32::from_le_bytes([s[0], s[1], s[2], s[3]]))
                        .sum::<f32>()
                        / channels as f32
                })
                .collect(),
        }
    }
}

/// Appends up to `n` more bytes (fewer only at the end of the stream).
fn read_up_to<R: Read>(reader: &mut R, out: &mut Vec<u8>, n: usize) -> Result<(), AudioError> {
    let start = out.len();
    out.resize(start + n, 0);
    let mut got = 0;
    while got < n {
        match reader.read(&mut out[start + got..]) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(stream_error(&format!("cannot read the stream: {e}"))),
        }
    }
    out.truncate(start + got);
    Ok(())
}

fn stream_error(message: &str) -> AudioError {
    AudioError::Stream(message.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wav(rate: u32, samples: &[i16], declared: Option<u32>) -> Vec<u8> {
        let data: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
        let mut out = b"RIFF\0\0\0\0WAVEfmt ".to_vec();
        out.extend(16u32.to_le_bytes());
        out.extend(1u16.to_le_bytes());
        out.extend(1u16.to_le_bytes());
        out.extend(rate.to_le_bytes());
        out.extend((rate * 2).to_le_bytes());
        out.extend(2u16.to_le_bytes());
        out.extend(16u16.to_le_bytes());
        out.extend(b"data");
        out.extend(declared.unwrap_or(data.len() as u32).to_le_bytes());
        out.extend(data);
        out
    }

    fn read_all<R: Read>(mut s: PcmStream<R>) -> Result<Vec<f32>, AudioError> {
        let mut all = Vec::new();
        while let Some(chunk) = s.next_chunk()? {
            all.extend(chunk);
        }
        Ok(all)
    }

    #[test]
    fn raw_and_wav_streams_decode_the_same_samples() {
        let samples: Vec<i16> = (0..10_000)
            .map(|i| ((i * 37) % 65536 - 32768) as i16)
            .collect();
        let raw: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
        let want: Vec<f32> = samples.iter().map(|&s| s as f32 / 32768.0).collect();
        let from_raw =
            read_all(PcmStream::open(&raw[..], PcmFormat::Auto, 16000).unwrap()).unwrap();
        assert_eq!(from_raw, want);
        for declared in [None, Some(0), Some(u32::MAX)] {
            let bytes = wav(16000, &samples, declared);
            let s = PcmStream::open(&bytes[..], PcmFormat::Auto, 16000).unwrap();
            assert_eq!(read_all(s).unwrap(), want);
        }
    }

    /// A stream shorter than the format sniff (one sample) still decodes.
    #[test]
    fn a_single_sample_is_read() {
        let s = PcmStream::open(&[0u8, 0x40][..], PcmFormat::Auto, 16000).unwrap();
        assert_eq!(read_all(s).unwrap(), vec![0.5]);
    }

    #[test]
    fn bad_streams_are_errors() {
        let bytes = wav(44100, &[0; 100], None);
        let e = PcmStream::open(&bytes[..], PcmFormat::Auto, 16000)
            .err()
            .unwrap();
        assert!(e.to_string().contains("44100 Hz"), "{e}");
        let mut bytes = wav(16000, &[0; 100], Some(400));
        bytes.truncate(bytes.len() - 10);
        let e = read_all(PcmStream::open(&bytes[..], PcmFormat::Auto, 16000).unwrap()).unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
        let odd = [1u8, 2, 3];
        let e = read_all(PcmStream::open(&odd[..], PcmFormat::S16le, 16000).unwrap()).unwrap_err();
        assert!(e.to_string().contains("inside a sample"), "{e}");
        let e = PcmStream::open(&b"RIFF\0\0\0\0WAVE"[..], PcmFormat::Auto, 16000)
            .err()
            .unwrap();
        assert!(e.to_string().contains("truncated header"), "{e}");
        let e = PcmStream::open(&wav(0, &[0; 10], None)[..], PcmFormat::Auto, 16000)
            .err()
            .unwrap();
        assert!(e.to_string().contains("sample rate of 0"), "{e}");
        for text in [&b"hello\n"[..], b"Hello, world! This is text."] {
            let e = PcmStream::open(text, PcmFormat::Auto, 16000).err().unwrap();
            assert!(e.to_string().contains("looks like text"), "{e}");
            assert!(PcmStream::open(text, PcmFormat::S16le, 16000).is_ok());
        }
        for cut in [&b"RIFF"[..], b"RIFF\x24\0\0\0"] {
            let e = PcmStream::open(cut, PcmFormat::Auto, 16000).err().unwrap();
            assert!(e.to_string().contains("truncated WAV header"), "{e}");
        }
        for (bytes, kind) in [
            (&b"fLaC\0\0\0\x22\x10\0\x10\0"[..], "FLAC"),
            (b"ID3\x04\0\0\0\0\x01\x00\0\0", "MP3"),
            (b"RF64\xff\xff\xff\xffWAVE", "RF64"),
            (b"riff\x2e\x91\xcf\x11\xa5\xd6\x28\xdb", "Wave64"),
            (b"FORM\0\0\x10\0AIFF", "AIFF"),
            (b"\0\0\0\x20ftypM4A ", "MP4"),
            (
                b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\xf7\x81",
                "Matroska",
            ),
        ] {
            let e = PcmStream::open(bytes, PcmFormat::Auto, 16000)
                .err()
                .unwrap();
            assert!(e.to_string().contains(kind), "{e}");
            // Named raw PCM is taken as it is.
            assert!(PcmStream::open(bytes, PcmFormat::S16le, 16000).is_ok());
        }
        // Chunk sizes no header has: a fmt chunk is refused, another chunk is skipped
        // without being held (the stream then ends before its data chunk).
        let header = |id: &[u8; 4], size: u32| {
            let mut b = b"RIFF\0\0\0\0WAVE".to_vec();
            b.extend(id);
            b.extend(size.to_le_bytes());
            b.extend([0u8; 64]);
            b
        };
        let e = PcmStream::open(&header(b"fmt ", 0x7fff_ffff)[..], PcmFormat::Auto, 16000)
            .err()
            .unwrap();
        assert!(e.to_string().contains("damaged header"), "{e}");
        let e = PcmStream::open(&header(b"LIST", 0xffff_fff0)[..], PcmFormat::Auto, 16000)
            .err()
            .unwrap();
        assert!(e.to_string().contains("before its data chunk"), "{e}");
        // Float samples that are not numbers end the stream with an error.
        let mut float = b"RIFF\0\0\0\0WAVEfmt ".to_vec();
        float.extend(16u32.to_le_bytes());
        float.extend([3, 0, 1, 0]);
        float.extend(16000u32.to_le_bytes());
        float.extend(64000u32.to_le_bytes());
        float.extend([4, 0, 32, 0]);
        float.extend(b"data");
        float.extend(8u32.to_le_bytes());
        float.extend(0.5f32.to_le_bytes());
        float.extend(f32::NAN.to_le_bytes());
        let e = read_all(PcmStream::open(&float[..], PcmFormat::Auto, 16000).unwrap()).unwrap_err();
        assert!(e.to_string().contains("not numbers"), "{e}");
    }
}
