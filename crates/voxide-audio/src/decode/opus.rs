//! Opus: `ogg` crate demuxer (or symphonia's Matroska/WebM demuxer) + `unsafe-libopus`
//! (libopus 1.3.1 in Rust).
//!
//! symphonia 0.5 has no Opus decoder, so the Ogg path reproduces what
//! libsndfile's `ogg_opus.c` does (python-soundfile is the reference):
//!
//! * decode rate: the lowest Opus rate >= the OpusHead input sample rate
//!   (48/24/16/12/8 kHz), so a 16 kHz-sourced file comes back at 16 kHz;
//! * the OpusHead output gain is applied by the decoder (`OPUS_SET_GAIN`);
//! * `pre-skip` (in 48 kHz units) is dropped from the start;
//! * the frame count is `(last granule - start granule - pre-skip) / factor`,
//!   and the last page's granule position trims the end padding.

use std::io::Cursor;

use unsafe_libopus::{
    opus_multistream_decode_float, opus_multistream_decoder_create,
    opus_multistream_decoder_ctl_impl, opus_multistream_decoder_destroy,
    opus_packet_get_nb_samples, opus_strerror, varargs, OpusMSDecoder, OPUS_OK,
    OPUS_SET_GAIN_REQUEST,
};

use symphonia::core::errors::Error as SymError;
use symphonia::core::formats::FormatReader;

use super::{sym_err, DecodedAudio};
use crate::AudioError;

/// Largest Opus packet duration: 120 ms at 48 kHz.
const MAX_PACKET_SAMPLES_48K: usize = 5760;

/// True when the bytes start with an Ogg page whose first packet is an
/// `OpusHead` header (the BOS page of an Ogg Opus stream).
pub(super) fn is_ogg_opus(data: &[u8]) -> bool {
    if data.len() < 27 || &data[..4] != b"OggS" {
        return false;
    }
    let body = 27 + data[26] as usize;
    data.len() >= body + 8 && &data[body..body + 8] == b"OpusHead"
}

/// Parsed `OpusHead` identification header (RFC 7845 §5.1).
#[derive(Debug, Clone)]
struct OpusHead {
    channels: u8,
    /// Samples at 48 kHz to drop from the start of the decoded stream.
    pre_skip: u16,
    /// Rate of the original input, informational; picks the decode rate.
    input_sample_rate: u32,
    /// Q7.8 dB gain to apply to the output.
    output_gain: i16,
    nb_streams: u8,
    nb_coupled: u8,
    mapping: Vec<u8>,
}

fn parse_opus_head(p: &[u8], name: &str) -> Result<OpusHead, AudioError> {
    let corrupt = |detail: &str| AudioError::Corrupt {
        name: name.to_string(),
        detail: format!("bad OpusHead header: {detail}"),
    };
    if p.len() < 19 || &p[..8] != b"OpusHead" {
        return Err(corrupt("too short"));
    }
    let version = p[8];
    // Major version 0 is the only one defined; minor versions stay compatible.
    if version >> 4 != 0 {
        return Err(AudioError::UnsupportedCodec {
            name: name.to_string(),
            codec: format!("Ogg Opus encapsulation version {version}"),
        });
    }
    let channels = p[9];
    let pre_skip = u16::from_le_bytes([p[10], p[11]]);
    let input_sample_rate = u32::from_le_bytes([p[12], p[13], p[14], p[15]]);
    let output_gain = i16::from_le_bytes([p[16], p[17]]);
    let family = p[18];
    if channels == 0 {
        return Err(corrupt("zero channels"));
    }
    let (nb_streams, nb_coupled, mapping) = if family == 0 {
        if channels > 2 {
            return Err(corrupt("mapping family 0 with more than 2 channels"));
        }
        (1, channels - 1, vec![0, 1][..channels as usize].to_vec())
    } else {
        if family != 1 && family != 255 {
            return Err(AudioError::UnsupportedCodec {
                name: name.to_string(),
                codec: format!("Opus channel mapping family {family}"),
            });
        }
        let need = 21 + channels as usize;
        if p.len() < need {
            return Err(corrupt("channel mapping table cut short"));
        }
        let (s, c) = (p[19], p[20]);
        if s == 0 || c > s || s as usize + c as usize > 255 {
            return Err(corrupt("invalid stream counts"));
        }
        let mapping = p[21..need].to_vec();
        if mapping
            .iter()
            .any(|&m| m != 255 && m as usize >= s as usize + c as usize)
        {
            return Err(corrupt("invalid channel mapping"));
        }
        (s, c, mapping)
    };
    Ok(OpusHead {
        channels,
        pre_skip,
        input_sample_rate,
        output_gain,
        nb_streams,
        nb_coupled,
        mapping,
    })
}

/// libsndfile's choice: decode at the lowest Opus rate that is >= the
/// original input rate; returned as the factor 48000 / rate.
fn sr_factor(input_sample_rate: u32) -> u32 {
    match input_sample_rate {
        r if r > 24000 => 1,
        r if r > 16000 => 2,
        r if r > 12000 => 3,
        r if r > 8000 => 4,
        _ => 6,
    }
}

/// Packets that complete on one Ogg page, with that page's granule position.
struct Page {
    packets: Vec<Vec<u8>>,
    granule: u64,
    eos: bool,
}

/// Owns a libopus multistream decoder and frees it on drop.
struct MsDecoder(*mut OpusMSDecoder);

impl Drop for MsDecoder {
    fn drop(&mut self) {
        // SAFETY: the pointer came from opus_multistream_decoder_create and
        // is freed exactly once.
        unsafe { opus_multistream_decoder_destroy(self.0) }
    }
}

fn opus_error(code: i32) -> &'static str {
    opus_strerror(code)
}

/// A libopus decoder for one stream at one rate, with the OpusHead's gain applied.
struct OpusDecoder {
    dec: MsDecoder,
    channels: usize,
    /// The last packet's samples, interleaved.
    pcm: Vec<f32>,
    max_frame: usize,
    name: String,
}

impl OpusDecoder {
    fn new(head: &OpusHead, rate: u32, name: &str) -> Result<Self, AudioError> {
        let corrupt = |detail: String| AudioError::Corrupt {
            name: name.to_string(),
            detail,
        };
        let channels = head.channels as usize;
        let mut err = 0i32;
        // SAFETY: FFI-style constructor; arguments validated by parse_opus_head,
        // the mapping slice has `channels` entries.
        let dec = unsafe {
            opus_multistream_decoder_create(
                rate as i32,
                channels as i32,
                head.nb_streams as i32,
                head.nb_coupled as i32,
                head.mapping.as_ptr(),
                &mut err,
            )
        };
        if dec.is_null() || err != OPUS_OK {
            return Err(corrupt(format!(
                "cannot create Opus decoder: {}",
                opus_error(err)
            )));
        }
        let dec = MsDecoder(dec);
        // SAFETY: valid decoder; OPUS_SET_GAIN takes one i32 (Q7.8 dB).
        let ret = unsafe {
            opus_multistream_decoder_ctl_impl(
                dec.0,
                OPUS_SET_GAIN_REQUEST,
                varargs!(head.output_gain as i32),
            )
        };
        if ret != OPUS_OK {
            return Err(corrupt(format!(
                "invalid OpusHead output gain {}: {}",
                head.output_gain,
                opus_error(ret)
            )));
        }
        let max_frame = MAX_PACKET_SAMPLES_48K * rate as usize / 48000;
        Ok(Self {
            dec,
            channels,
            pcm: vec![0.0; max_frame * channels],
            max_frame,
            name: name.to_string(),
        })
    }

    /// Decodes one packet: its samples, interleaved.
    fn decode(&mut self, packet: &[u8]) -> Result<&[f32], AudioError> {
        let corrupt = |detail: String| AudioError::Corrupt {
            name: self.name.clone(),
            detail,
        };
        if packet.is_empty() || packet.len() > i32::MAX as usize {
            return Err(corrupt("empty Opus packet".into()));
        }
        // SAFETY: `pcm` holds max_frame * channels floats, the largest packet libopus may
        // return at this rate.
        let n = unsafe {
            opus_multistream_decode_float(
                self.dec.0,
                packet.as_ptr(),
                packet.len() as i32,
                self.pcm.as_mut_ptr(),
                self.max_frame as i32,
                0,
            )
        };
        if n < 0 {
            return Err(corrupt(format!(
                "Opus packet decode failed: {}",
                opus_error(n)
            )));
        }
        Ok(&self.pcm[..n as usize * self.channels])
    }
}

/// Demux the first Opus logical stream into pages of complete packets.
/// Returns (OpusHead packet, data pages). A stream cut short mid-page ends
/// at the last complete page, as libsndfile does.
fn read_pages(data: &[u8], name: &str) -> Result<(Vec<u8>, Vec<Page>), AudioError> {
    let corrupt = |detail: String| AudioError::Corrupt {
        name: name.to_string(),
        detail,
    };
    let mut reader = ogg::PacketReader::new(Cursor::new(data));
    let mut serial = None;
    let mut head = None;
    let mut tags_seen = false;
    let mut pages = Vec::new();
    let mut current = Vec::new();
    loop {
        let pkt = match reader.read_packet() {
            Ok(Some(p)) => p,
            Ok(None) => break,
            Err(ogg::OggReadError::ReadError(e))
                if e.kind() == std::io::ErrorKind::UnexpectedEof =>
            {
                // Truncated final page: keep what was complete.
                break;
            }
            Err(e) if head.is_some() && tags_seen && !pages.is_empty() => {
                // Damage after valid audio: libsndfile stops at the damage
                // too (it cannot resync a CRC-failed page either).
                let _ = e;
                break;
            }
            Err(e) => return Err(corrupt(format!("Ogg: {e}"))),
        };
        let s = *serial.get_or_insert(pkt.stream_serial());
        if pkt.stream_serial() != s {
            // Multiplexed or chained streams: only the first Opus stream.
            continue;
        }
        if head.is_none() {
            head = Some(pkt.data);
            continue;
        }
        if !tags_seen {
            if !pkt.data.starts_with(b"OpusTags") {
                return Err(corrupt("missing OpusTags header".into()));
            }
            tags_seen = true;
            continue;
        }
        let last = pkt.last_in_page();
        let (granule, eos) = (pkt.absgp_page(), pkt.last_in_stream());
        current.push(pkt.data);
        if last {
            pages.push(Page {
                packets: std::mem::take(&mut current),
                granule,
                eos,
            });
            if eos {
                break;
            }
        }
    }
    match head {
        Some(h) => Ok((h, pages)),
        None => Err(corrupt("no Ogg page could be read".into())),
    }
}

/// Decode an Ogg Opus byte stream the way libsndfile does.
pub(super) fn decode_ogg_opus(data: &[u8], name: &str) -> Result<DecodedAudio, AudioError> {
    let corrupt = |detail: String| AudioError::Corrupt {
        name: name.to_string(),
        detail,
    };
    let (head_pkt, pages) = read_pages(data, name)?;
    let head = parse_opus_head(&head_pkt, name)?;
    let factor = sr_factor(head.input_sample_rate);
    let rate = 48000 / factor;
    let channels = head.channels as usize;

    let Some(first) = pages.first() else {
        return Err(AudioError::Empty {
            name: name.to_string(),
        });
    };

    // Start granule: the first data page's granule minus the duration of the
    // packets completing on it (streams may start at a non-zero granule).
    let first_dur: u64 = first
        .packets
        .iter()
        .map(|p| packet_samples(p, 48000).max(0) as u64)
        .sum();
    if first_dur == 0 {
        return Err(corrupt("first Opus page has zero duration".into()));
    }
    let mut pkt_pos: u64 = if !first.eos {
        if first_dur > first.granule {
            return Err(corrupt(
                "first page granule position is less than its sample count".into(),
            ));
        }
        first.granule - first_dur
    } else {
        if first_dur < first.granule {
            return Err(corrupt(
                "single-page stream with an ambiguous granule offset".into(),
            ));
        }
        0
    };
    let gp_start = pkt_pos;
    let gp_end = pages
        .iter()
        .rev()
        .map(|p| p.granule)
        .find(|&g| g != u64::MAX)
        .unwrap_or(u64::MAX);
    // Frames libsndfile reports; saturating so a bogus granule cannot wrap.
    let frames_total = if gp_end == u64::MAX {
        None
    } else {
        Some(gp_end.saturating_sub(gp_start + head.pre_skip as u64) / factor as u64)
    };

    let mut decoder = OpusDecoder::new(&head, rate, name)?;
    let cap = frames_total.unwrap_or(0).min(1 << 26) as usize;
    let mut planar: Vec<Vec<f32>> = (0..channels).map(|_| Vec::with_capacity(cap)).collect();
    let pre_skip = head.pre_skip as u64;
    let f = factor as u64;

    for (pi, page) in pages.iter().enumerate() {
        if pi > 0 {
            // libsndfile restarts the running position at the previous
            // page's granule on every new page.
            pkt_pos = pages[pi - 1].granule;
        }
        let pg_pos = page.granule;
        for pkt in &page.packets {
            let pcm = decoder.decode(pkt)?;
            let nsamp = (pcm.len() / channels) as u64;
            let pkt_granule = pkt_pos.saturating_add(nsamp * f);
            let len = if pkt_granule <= pg_pos {
                nsamp
            } else if page.eos {
                // End trimming: the last page's granule marks the end.
                (pg_pos.saturating_sub(pkt_pos) / f).min(nsamp)
            } else {
                return Err(corrupt(format!(
                    "mid-stream page granule {pg_pos} is less than the decoded position {pkt_granule}"
                )));
            };
            let loc = if pkt_pos < pre_skip {
                ((pre_skip - pkt_pos) / f).min(len)
            } else {
                0
            };
            push_planar(
                &mut planar,
                &pcm[loc as usize * channels..len as usize * channels],
            );
            pkt_pos = pkt_granule;
        }
    }
    // python-soundfile reads exactly `frames` frames (fewer if the decode
    // ran short).
    if let Some(n) = frames_total {
        for ch in &mut planar {
            ch.truncate(n as usize);
        }
    }
    Ok(DecodedAudio {
        sample_rate: rate,
        channels: planar,
    })
}

/// Appends interleaved samples to their channels.
fn push_planar(planar: &mut [Vec<f32>], interleaved: &[f32]) {
    let channels = planar.len();
    for (c, out) in planar.iter_mut().enumerate() {
        out.extend(interleaved.iter().skip(c).step_by(channels));
    }
}

/// Decodes the Opus packets of another container's track (Matroska/WebM, demuxed by
/// symphonia), whose codec private data is the OpusHead: at the rate the Ogg path takes, its
/// pre-skip dropped. Matroska marks the end padding with DiscardPadding, which symphonia's
/// demuxer does not pass on, so up to one packet of the encoder's padding stays at the end
/// (FFmpeg drops it).
pub(super) fn decode_opus_packets(
    format: &mut dyn FormatReader,
    track_id: u32,
    head: &[u8],
    name: &str,
) -> Result<DecodedAudio, AudioError> {
    let head = parse_opus_head(head, name)?;
    let factor = sr_factor(head.input_sample_rate);
    let rate = 48000 / factor;
    let mut decoder = OpusDecoder::new(&head, rate, name)?;
    let channels = head.channels as usize;
    let mut planar = vec![Vec::new(); channels];
    let mut skip = (head.pre_skip as u32 / factor) as usize;
    loop {
        let packet = match format.next_packet() {
            Ok(p) => p,
            Err(SymError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) if planar[0].is_empty() => return Err(sym_err(e, name, "reading packets")),
            // Damage after valid audio: keep what decoded, as for the other containers.
            Err(_) => break,
        };
        if packet.track_id() != track_id {
            continue;
        }
        let pcm = decoder.decode(&packet.data)?;
        let dropped = skip.min(pcm.len() / channels);
        skip -= dropped;
        push_planar(&mut planar, &pcm[dropped * channels..]);
    }
    if planar[0].is_empty() {
        return Err(AudioError::Empty {
            name: name.to_string(),
        });
    }
    Ok(DecodedAudio {
        sample_rate: rate,
        channels: planar,
    })
}

/// Samples in a packet at `rate`, or a negative libopus error code.
fn packet_samples(p: &[u8], rate: i32) -> i32 {
    if p.is_empty() || p.len() > i32::MAX as usize {
        return -1;
    }
    // SAFETY: reads at most p.len() bytes of the packet.
    unsafe { opus_packet_get_nb_samples(p.as_ptr(), p.len() as i32, rate) }
}
