//! Ogg Opus output (RFC 7845): mono, 20 ms Opus packets from libopus' encoder (`unsafe-libopus`,
//! libopus 1.3.1 in Rust), an Ogg page flushed after every chunk so that a listener gets each
//! chunk as soon as it is synthesised.
//!
//! As `opusenc` (opus-tools) writes a file: OpusHead with the encoder's lookahead as pre-skip and
//! the input rate, OpusTags with a vendor string, the end padded with silence until the
//! lookahead is flushed out, and the last page's granule position set to trim that padding,
//! so a decoder returns exactly the samples written.

use ogg::writing::{PacketWriteEndInfo, PacketWriter};
use unsafe_libopus::{
    opus_encode_float, opus_encoder_create, opus_encoder_ctl_impl, opus_encoder_destroy,
    opus_strerror, varargs, OpusEncoder, OPUS_APPLICATION_AUDIO, OPUS_GET_LOOKAHEAD_REQUEST,
    OPUS_OK, OPUS_SET_BITRATE_REQUEST,
};

/// Target bitrate: 32 kbit/s VBR, transparent-sounding for one voice at up to 24 kHz (RFC 7587
/// §3.1.1 gives 28–40 kbit/s for full-band speech).
const BITRATE: i32 = 32_000;
/// The Ogg stream's serial number: fixed, so the same audio gives the same bytes.
const SERIAL: u32 = 0x766f_7869;
/// Largest packet libopus writes (RFC 6716 §3.4: 1275 bytes a frame).
const MAX_PACKET: usize = 1275;

/// libopus' encoder state, freed on drop.
struct Encoder(*mut OpusEncoder);

impl Drop for Encoder {
    fn drop(&mut self) {
        // SAFETY: created by `opus_encoder_create`, freed once.
        unsafe { opus_encoder_destroy(self.0) }
    }
}

// SAFETY: the state is owned by one `OggOpusEncoder` and used through `&mut self` only.
unsafe impl Send for Encoder {}

/// Encodes mono f32 samples into Ogg Opus pages.
pub(super) struct OggOpusEncoder {
    encoder: Encoder,
    sample_rate: u32,
    /// 48 kHz samples per input sample (2 at 24 kHz).
    factor: u64,
    /// Input samples per 20 ms packet.
    frame: usize,
    /// The encoder's delay, in input samples.
    lookahead: usize,
    /// Samples not yet a whole packet.
    pending: Vec<f32>,
    /// Samples handed over in all; packets written in all.
    samples: u64,
    packets: u64,
    pages: PacketWriter<'static, Vec<u8>>,
    packet: Vec<u8>,
}

impl OggOpusEncoder {
    /// An encoder at `sample_rate`, which must be one of Opus' (8, 12, 16, 24 or 48 kHz).
    pub(super) fn new(sample_rate: u32) -> std::io::Result<Self> {
        if ![8_000, 12_000, 16_000, 24_000, 48_000].contains(&sample_rate) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("Opus encodes 8, 12, 16, 24 or 48 kHz audio, not {sample_rate} Hz"),
            ));
        }
        let mut error = 0;
        // SAFETY: plain constructor; the result is checked before use.
        let state = unsafe {
            opus_encoder_create(sample_rate as i32, 1, OPUS_APPLICATION_AUDIO, &mut error)
        };
        if error != OPUS_OK || state.is_null() {
            return Err(opus_error("cannot create the Opus encoder", error));
        }
        let encoder = Encoder(state);
        let mut lookahead = 0i32;
        // SAFETY: a live encoder; the requests take an i32 and an &mut i32, as given.
        unsafe {
            let set = opus_encoder_ctl_impl(encoder.0, OPUS_SET_BITRATE_REQUEST, varargs!(BITRATE));
            let get = opus_encoder_ctl_impl(
                encoder.0,
                OPUS_GET_LOOKAHEAD_REQUEST,
                varargs!(&mut lookahead),
            );
            if set != OPUS_OK || get != OPUS_OK {
                return Err(opus_error("cannot set up the Opus encoder", set.min(get)));
            }
        }
        Ok(Self {
            encoder,
            sample_rate,
            factor: u64::from(48_000 / sample_rate),
            frame: sample_rate as usize / 50,
            lookahead: lookahead.max(0) as usize,
            pending: Vec::new(),
            samples: 0,
            packets: 0,
            pages: PacketWriter::new(Vec::new()),
            packet: vec![0; MAX_PACKET],
        })
    }

    /// The identification and comment headers, each on a page of its own (RFC 7845 §3).
    pub(super) fn stream_header(&mut self, out: &mut Vec<u8>) -> std::io::Result<()> {
        let pre_skip = u16::try_from(self.lookahead as u64 * self.factor).unwrap_or(u16::MAX);
        let mut head = Vec::with_capacity(19);
        head.extend_from_slice(b"OpusHead");
        head.push(1); // version
        head.push(1); // channels
        head.extend_from_slice(&pre_skip.to_le_bytes());
        head.extend_from_slice(&self.sample_rate.to_le_bytes());
        head.extend_from_slice(&0i16.to_le_bytes()); // output gain
        head.push(0); // mapping family 0: mono or stereo, no table
        let vendor = concat!("voxide ", env!("CARGO_PKG_VERSION"), " (libopus 1.3.1)");
        let mut tags = Vec::with_capacity(16 + vendor.len());
        tags.extend_from_slice(b"OpusTags");
        tags.extend_from_slice(&(vendor.len() as u32).to_le_bytes());
        tags.extend_from_slice(vendor.as_bytes());
        tags.extend_from_slice(&0u32.to_le_bytes()); // no user comments
        self.pages
            .write_packet(head, SERIAL, PacketWriteEndInfo::EndPage, 0)?;
        self.pages
            .write_packet(tags, SERIAL, PacketWriteEndInfo::EndPage, 0)?;
        out.append(self.pages.inner_mut());
        Ok(())
    }

    /// Encodes the whole packets `samples` (with any held back) make, ending a page after the
    /// last; keeps the rest (< 20 ms) for the next call.
    pub(super) fn encode(&mut self, samples: &[f32], out: &mut Vec<u8>) -> std::io::Result<()> {
        self.samples += samples.len() as u64;
        self.pending.extend_from_slice(samples);
        let whole = self.pending.len() / self.frame * self.frame;
        let pending = std::mem::take(&mut self.pending);
        let packets = whole / self.frame;
        for (i, frame) in pending[..whole].chunks(self.frame).enumerate() {
            let end = if i + 1 == packets {
                PacketWriteEndInfo::EndPage
            } else {
                PacketWriteEndInfo::NormalPacket
            };
            self.packet(frame, end, None)?;
        }
        self.pending = pending;
        self.pending.drain(..whole);
        out.append(self.pages.inner_mut());
        Ok(())
    }

    /// Pads with silence until every sample written has left the encoder's lookahead, and ends
    /// the stream with a granule position that trims the padding.
    pub(super) fn finish(&mut self, out: &mut Vec<u8>) -> std::io::Result<()> {
        // At least one packet, to carry the end of the stream.
        let needed = (self.samples as usize + self.lookahead)
            .div_ceil(self.frame)
            .max(self.packets as usize + 1);
        let mut padded = std::mem::take(&mut self.pending);
        padded.resize((needed - self.packets as usize) * self.frame, 0.0);
        let end_granule = (self.lookahead as u64 + self.samples) * self.factor;
        let packets = padded.len() / self.frame;
        for (i, frame) in padded.chunks(self.frame).enumerate() {
            let last = i + 1 == packets;
            let end = if last {
                PacketWriteEndInfo::EndStream
            } else {
                PacketWriteEndInfo::NormalPacket
            };
            self.packet(frame, end, last.then_some(end_granule))?;
        }
        out.append(self.pages.inner_mut());
        Ok(())
    }

    /// Encodes one 20 ms frame as the next packet; its granule position is the 48 kHz samples
    /// decoded through it, or `granule` (the stream's end).
    fn packet(
        &mut self,
        frame: &[f32],
        end: PacketWriteEndInfo,
        granule: Option<u64>,
    ) -> std::io::Result<()> {
        // SAFETY: a live encoder; `frame` holds `self.frame` samples of one channel and
        // `packet` has room for the largest packet.
        let len = unsafe {
            opus_encode_float(
                self.encoder.0,
                frame.as_ptr(),
                self.frame as i32,
                self.packet.as_mut_ptr(),
                self.packet.len() as i32,
            )
        };
        if len < 0 {
            return Err(opus_error("Opus encoding failed", len));
        }
        self.packets += 1;
        let granule = granule.unwrap_or(self.packets * self.frame as u64 * self.factor);
        self.pages
            .write_packet(self.packet[..len as usize].to_vec(), SERIAL, end, granule)
    }
}

fn opus_error(what: &str, code: i32) -> std::io::Error {
    std::io::Error::other(format!("{what}: {}", opus_strerror(code)))
}
