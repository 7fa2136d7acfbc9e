//! 16-bit PCM output for synthesized speech, written as it is produced: a WAV stream (to a
//! file, with its sizes patched at the end, or to a pipe, with the "unknown length" sizes
//! players accept) or raw s16le.

use std::io::{Seek, SeekFrom, Write};

/// Sizes written into a WAV header whose length is not known yet (ffmpeg, aplay and sox read
/// to the end of the stream).
const UNKNOWN: u32 = u32::MAX;

/// How samples are framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PcmOutFormat {
    /// RIFF/WAVE, 16-bit mono.
    Wav,
    /// Headerless signed 16-bit little endian mono.
    S16le,
}

/// Writes mono f32 samples in [−1, 1] as 16-bit PCM, chunk by chunk.
pub struct PcmWriter<W: Write> {
    out: W,
    format: PcmOutFormat,
    sample_rate: u32,
    samples: u64,
    header_written: bool,
    bytes: Vec<u8>,
}

impl<W: Write> PcmWriter<W> {
    /// A writer of `format` at `sample_rate`; the WAV header goes out with the first chunk.
    pub fn new(out: W, format: PcmOutFormat, sample_rate: u32) -> Self {
        Self {
            out,
            format,
            sample_rate,
            samples: 0,
            header_written: false,
            bytes: Vec::new(),
        }
    }

    fn header(&self, data_bytes: u32) -> [u8; 44] {
        let mut h = [0u8; 44];
        let byte_rate = self.sample_rate * 2;
        h[0..4].copy_from_slice(b"RIFF");
        h[4..8].copy_from_slice(&data_bytes.saturating_add(36).to_le_bytes());
        h[8..16].copy_from_slice(b"WAVEfmt ");
        h[16..20].copy_from_slice(&16u32.to_le_bytes());
        h[20..22].copy_from_slice(&1u16.to_le_bytes()); // PCM
        h[22..24].copy_from_slice(&1u16.to_le_bytes()); // mono
        h[24..28].copy_from_slice(&self.sample_rate.to_le_bytes());
        h[28..32].copy_from_slice(&byte_rate.to_le_bytes());
        h[32..34].copy_from_slice(&2u16.to_le_bytes()); // block align
        h[34..36].copy_from_slice(&16u16.to_le_bytes()); // bits per sample
        h[36..40].copy_from_slice(b"data");
        h[40..44].copy_from_slice(&data_bytes.to_le_bytes());
        h
    }

    /// Converts and writes one chunk, then flushes (a player downstream starts at once).
    pub fn write(&mut self, samples: &[f32]) -> std::io::Result<()> {
        if self.format == PcmOutFormat::Wav && !self.header_written {
            let header = self.header(UNKNOWN);
            self.out.write_all(&header)?;
        }
        self.header_written = true;
        self.bytes.clear();
        for &s in samples {
            // As soundfile / libsndfile write float → PCM_16: scale by 32767, round, clip.
            let v = (s.clamp(-1.0, 1.0) * 32767.0).round() as i16;
            self.bytes.extend_from_slice(&v.to_le_bytes());
        }
        self.out.write_all(&self.bytes)?;
        self.samples += samples.len() as u64;
        self.out.flush()
    }

    /// Samples written so far.
    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// Ends the stream (an empty WAV still gets its header) and returns the writer.
    pub fn finish(mut self) -> std::io::Result<W> {
        if !self.header_written {
            self.write(&[])?;
        }
        self.out.flush()?;
        Ok(self.out)
    }
}

impl<W: Write + Seek> PcmWriter<W> {
    /// Ends a seekable stream with the real sizes in its WAV header.
    pub fn finish_seekable(self) -> std::io::Result<W> {
        let (format, data) = (self.format, self.samples * 2);
        let header = self.header(u32::try_from(data).unwrap_or(UNKNOWN));
        let mut out = self.finish()?;
        if format == PcmOutFormat::Wav {
            out.seek(SeekFrom::Start(0))?;
            out.write_all(&header)?;
            out.seek(SeekFrom::End(0))?;
            out.flush()?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn wav_file_reads_back_with_its_sizes() {
        let mut w = PcmWriter::new(Cursor::new(Vec::new()), PcmOutFormat::Wav, 24_000);
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
        let mut w = PcmWriter::new(Vec::new(), PcmOutFormat::Wav, 24_000);
        w.write(&[0.25]).unwrap();
        let bytes = w.finish().unwrap();
        assert_eq!(&bytes[40..44], &u32::MAX.to_le_bytes());
        assert_eq!(&bytes[44..], &8192i16.to_le_bytes());
        let mut w = PcmWriter::new(Vec::new(), PcmOutFormat::S16le, 24_000);
        w.write(&[-0.25]).unwrap();
        assert_eq!(w.finish().unwrap(), (-8192i16).to_le_bytes());
    }
}
