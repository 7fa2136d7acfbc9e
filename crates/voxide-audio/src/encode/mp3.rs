//! MP3 output: `rusty_mp3`'s Layer III encoder (pure Rust), mono at 64 kbit/s CBR (MPEG-2 at
//! 24 kHz: a frame per 576 samples), written frame by frame as samples arrive.
//!
//! A file starts with a LAME/Info tag frame (the encoder's delay and end padding, the frame
//! count), written in its final form over its first form at the end ([`Mp3Writer::lame_tag`])
//! so that FFmpeg, symphonia and LAME-aware players return exactly the samples written. A
//! stream (a pipe, a response) has no tag: its first form counts no frames, which symphonia
//! takes for a stream shorter than its own delay. A stream then decodes with the codec's delay
//! in front (528 + 529 samples) and up to a frame of padding at the end, as MP3 streams do.

use rusty_mp3::{Mp3Encoder, Mp3EncoderConfig};

/// Bit rate: 64 kbit/s, where MPEG-2 Layer III carries speech cleanly (a sixth of 16-bit PCM
/// at 24 kHz).
const BITRATE_KBPS: u32 = 64;
/// The rates of MPEG-1, 2 and 2.5 Layer III.
const RATES: [u32; 9] = [
    8_000, 11_025, 12_000, 16_000, 22_050, 24_000, 32_000, 44_100, 48_000,
];

/// Encodes mono f32 samples into MP3 frames.
pub(super) struct Mp3Writer {
    encoder: Mp3Encoder,
    sample_rate: u32,
    /// Whether the tag frame (the first packet) is written; still to come.
    tagged: bool,
    tag_pending: bool,
}

impl Mp3Writer {
    /// An encoder at `sample_rate`, for a stream (no tag frame; [`Self::keep_tag`]).
    pub(super) fn new(sample_rate: u32) -> std::io::Result<Self> {
        if !RATES.contains(&sample_rate) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "MP3 encodes 8, 11.025, 12, 16, 22.05, 24, 32, 44.1 or 48 kHz audio, not {sample_rate} Hz"
                ),
            ));
        }
        let config = Mp3EncoderConfig {
            bitrate_kbps: BITRATE_KBPS,
            vbr_quality: None,
        };
        Ok(Self {
            encoder: Mp3Encoder::new(config),
            sample_rate,
            tagged: false,
            tag_pending: true,
        })
    }

    /// Writes the tag frame: the output is a file that [`Self::lame_tag`] completes.
    pub(super) fn keep_tag(&mut self) {
        self.tagged = true;
    }

    /// Encodes `samples` (in [−1, 1]) and appends the frames they complete to `out`.
    pub(super) fn encode(&mut self, samples: &[f32], out: &mut Vec<u8>) -> std::io::Result<()> {
        self.encoder
            .push_pcm_f32(samples, 1, self.sample_rate)
            .map_err(|e| std::io::Error::other(format!("MP3 encoding failed: {e}")))?;
        self.drain(out);
        Ok(())
    }

    /// Encodes what is held back and the padding that flushes the encoder's delay.
    pub(super) fn finish(&mut self, out: &mut Vec<u8>) {
        self.encoder.finish();
        self.drain(out);
    }

    /// The tag frame in its final form, to write over the file's first frame.
    pub(super) fn lame_tag(&self) -> Option<&[u8]> {
        self.encoder.lame_tag_frame().filter(|_| self.tagged)
    }

    fn drain(&mut self, out: &mut Vec<u8>) {
        while let Ok(packet) = self.encoder.next_packet() {
            if std::mem::take(&mut self.tag_pending) && !self.tagged {
                continue;
            }
            out.extend_from_slice(&packet);
        }
    }
}
