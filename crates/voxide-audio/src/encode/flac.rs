//! FLAC output (RFC 9639): mono 16-bit, written frame by frame as samples arrive.
//!
//! Each subframe takes the cheapest of: constant (silence), a fixed polynomial predictor of order
//! 0–4 with partitioned Rice-coded residuals (the partition order and every partition's Rice
//! parameter chosen by exact bit counts), or verbatim. No LPC: on speech the fixed predictors
//! come within a few per cent of `flac -5`, for a fraction of the code.
//!
//! The stream has a fixed block size (every frame but the last holds as many samples), taken
//! from the first chunk the caller hands over where it is 1024–4096 samples long (4096
//! otherwise): a synthesiser whose chunks are multiples of its first (Qwen3-TTS: 1920 samples,
//! then 2, 4, … times that) has every chunk framed and sent at once, while later samples that
//! do not fill a block wait for the next chunk. (Variable block sizes would send any chunk at
//! once, but decoders such as symphonia take a stream whose STREAMINFO states one block size as
//! fixed, whatever its frames say.)
//!
//! A stream's STREAMINFO is written before its samples are known: total samples, frame sizes
//! and MD5 as "unknown" (0), as encoders writing to a pipe do; [`FlacEncoder::stream_info`]
//! gives the real one for a writer that can seek back.

use md5::{Digest, Md5};

/// Block sizes taken from the first chunk; outside them, [`MAX_BLOCK`].
const MIN_BLOCK: usize = 1024;
const MAX_BLOCK: usize = 4096;
/// Finest residual partitioning tried: 2^8 partitions.
const MAX_PARTITION_ORDER: u32 = 8;
/// Highest Rice parameter: 4-bit parameters (coding method 0) go to 14 (15 is the escape),
/// 5-bit ones (method 1) to 30.
const MAX_RICE_4BIT: u32 = 14;
const MAX_RICE_5BIT: u32 = 30;
/// Bits per sample.
const BITS: u32 = 16;
/// Length of the `fLaC` marker, the metadata block header and STREAMINFO.
pub(super) const HEADER_LEN: usize = 4 + 4 + 34;

/// Encodes mono 16-bit samples into FLAC frames.
pub(super) struct FlacEncoder {
    sample_rate: u32,
    /// Samples in every frame but the last; set by the first chunk.
    block: usize,
    /// Samples handed over but not yet framed (less than a block).
    pending: Vec<i16>,
    /// Frames and samples written.
    frames: u64,
    samples: u64,
    md5: Md5,
    /// Smallest and largest frame in bytes, for the final STREAMINFO.
    frame_bytes: (usize, usize),
    bits: BitWriter,
}

impl FlacEncoder {
    pub(super) fn new(sample_rate: u32) -> Self {
        Self {
            sample_rate,
            block: MAX_BLOCK,
            pending: Vec::new(),
            frames: 0,
            samples: 0,
            md5: Md5::new(),
            frame_bytes: (usize::MAX, 0),
            bits: BitWriter::default(),
        }
    }

    /// The stream's start, with its block size taken from the first chunk's `first_len`
    /// samples: `fLaC`, then STREAMINFO as the only (last) metadata block, with what is not
    /// known yet left 0.
    pub(super) fn stream_header(&mut self, first_len: usize) -> [u8; HEADER_LEN] {
        if (MIN_BLOCK..=MAX_BLOCK).contains(&first_len) {
            self.block = first_len;
        }
        self.header_with((0, 0), 0, [0; 16])
    }

    /// The stream's start as it should read once every sample is in (after the last
    /// [`Self::encode`]).
    pub(super) fn stream_info(&self) -> [u8; HEADER_LEN] {
        let frames = match self.frame_bytes {
            (usize::MAX, _) => (0, 0),
            sizes => sizes,
        };
        let md5 = self.md5.clone().finalize().into();
        self.header_with(frames, self.samples, md5)
    }

    fn header_with(
        &self,
        (min_frame, max_frame): (usize, usize),
        total_samples: u64,
        md5: [u8; 16],
    ) -> [u8; HEADER_LEN] {
        let mut w = BitWriter::default();
        w.bytes(b"fLaC");
        w.put(1, 1); // last metadata block
        w.put(0, 7); // STREAMINFO
        w.put(34, 24);
        // The least and most samples in a frame but the last: the block size.
        w.put(self.block as u64, 16);
        w.put(self.block as u64, 16);
        // Frame sizes that do not fit 24 bits are "unknown".
        let frame_size = |n: usize| if n < 1 << 24 { n as u64 } else { 0 };
        w.put(frame_size(min_frame), 24);
        w.put(frame_size(max_frame), 24);
        w.put(u64::from(self.sample_rate), 20);
        w.put(0, 3); // one channel
        w.put(u64::from(BITS - 1), 5);
        // 36 bits; a longer stream says "unknown".
        w.put(
            if total_samples < 1 << 36 {
                total_samples
            } else {
                0
            },
            36,
        );
        w.bytes(&md5);
        w.into_bytes().try_into().expect("STREAMINFO is 42 bytes")
    }

    /// Frames the whole blocks `samples` (with any held back) make into `out`, and the rest too
    /// if `last`.
    pub(super) fn encode(&mut self, samples: &[i16], last: bool, out: &mut Vec<u8>) {
        self.pending.extend_from_slice(samples);
        let whole = if last {
            self.pending.len()
        } else {
            self.pending.len() / self.block * self.block
        };
        let pending = std::mem::take(&mut self.pending);
        for block in pending[..whole].chunks(self.block) {
            self.frame(block, out);
        }
        self.pending = pending;
        self.pending.drain(..whole);
    }

    /// Writes one frame of `block` samples.
    fn frame(&mut self, block: &[i16], out: &mut Vec<u8>) {
        let mut w = std::mem::take(&mut self.bits);
        w.clear();
        // Frame header (RFC 9639 §9.1): sync code, fixed blocking strategy.
        w.put(0b11_1111_1111_1110, 14);
        w.put(0, 1);
        w.put(0, 1);
        w.put(0b0111, 4); // block size - 1 in 16 bits after the coded number
        let (rate_code, rate_tail) = rate_code(self.sample_rate);
        w.put(rate_code, 4);
        w.put(0, 4); // mono
        w.put(0b100, 3); // 16 bits per sample
        w.put(0, 1);
        w.coded_number(self.frames);
        w.put(block.len() as u64 - 1, 16);
        if let Some((value, bits)) = rate_tail {
            w.put(value, bits);
        }
        let crc = crc8(w.as_bytes());
        w.put(u64::from(crc), 8);
        subframe(block, &mut w);
        w.align();
        let crc = crc16(w.as_bytes());
        w.put(u64::from(crc), 16);
        let bytes = w.as_bytes();
        out.extend_from_slice(bytes);

        self.frame_bytes.0 = self.frame_bytes.0.min(bytes.len());
        self.frame_bytes.1 = self.frame_bytes.1.max(bytes.len());
        self.frames += 1;
        self.samples += block.len() as u64;
        for &s in block {
            self.md5.update(s.to_le_bytes());
        }
        self.bits = w;
    }
}

/// The frame header's sample-rate code and what follows the coded number for it (RFC 9639
/// §9.1.3): a named rate, kHz in 8 bits, Hz in 16 bits, or "see STREAMINFO".
fn rate_code(rate: u32) -> (u64, Option<(u64, u32)>) {
    match rate {
        88_200 => (0b0001, None),
        176_400 => (0b0010, None),
        192_000 => (0b0011, None),
        8_000 => (0b0100, None),
        16_000 => (0b0101, None),
        22_050 => (0b0110, None),
        24_000 => (0b0111, None),
        32_000 => (0b1000, None),
        44_100 => (0b1001, None),
        48_000 => (0b1010, None),
        96_000 => (0b1011, None),
        r if r % 1000 == 0 && r / 1000 < 256 => (0b1100, Some((u64::from(r / 1000), 8))),
        r if r < 1 << 16 => (0b1101, Some((u64::from(r), 16))),
        r if r % 10 == 0 && r / 10 < 1 << 16 => (0b1110, Some((u64::from(r / 10), 16))),
        _ => (0b0000, None),
    }
}

/// One channel's subframe: the cheapest of constant, fixed predictors and verbatim.
fn subframe(block: &[i16], w: &mut BitWriter) {
    let first = block[0];
    if block.iter().all(|&s| s == first) {
        w.put(0, 1);
        w.put(0b000000, 6); // CONSTANT
        w.put(0, 1);
        w.signed(i64::from(first), BITS);
        return;
    }
    let verbatim_bits = block.len() as u64 * u64::from(BITS);
    let mut best: Option<(u64, usize, Vec<i32>, Residual)> = None;
    for order in 0..=4.min(block.len() - 1) {
        let residual = fixed_residual(block, order);
        let coding = Residual::best(&residual, order, block.len());
        let bits = u64::from(BITS) * order as u64 + coding.bits;
        if best.as_ref().is_none_or(|b| bits < b.0) {
            best = Some((bits, order, residual, coding));
        }
    }
    match best {
        Some((bits, order, residual, coding)) if bits < verbatim_bits => {
            w.put(0, 1);
            w.put(0b001000 | order as u64, 6); // FIXED, order
            w.put(0, 1);
            for &s in &block[..order] {
                w.signed(i64::from(s), BITS);
            }
            coding.write(&residual, w);
        }
        _ => {
            w.put(0, 1);
            w.put(0b000001, 6); // VERBATIM
            w.put(0, 1);
            for &s in block {
                w.signed(i64::from(s), BITS);
            }
        }
    }
}

/// The residual of FLAC's fixed predictor of `order` (RFC 9639 §9.2.5), from sample `order` on:
/// the `order`-th difference of the signal.
fn fixed_residual(block: &[i16], order: usize) -> Vec<i32> {
    let s = |i: usize| i32::from(block[i]);
    (order..block.len())
        .map(|i| match order {
            0 => s(i),
            1 => s(i) - s(i - 1),
            2 => s(i) - 2 * s(i - 1) + s(i - 2),
            3 => s(i) - 3 * s(i - 1) + 3 * s(i - 2) - s(i - 3),
            _ => s(i) - 4 * s(i - 1) + 6 * s(i - 2) - 4 * s(i - 3) + s(i - 4),
        })
        .collect()
}

/// Zigzag: 0, −1, 1, −2, … → 0, 1, 2, 3, … (what Rice codes).
fn zigzag(r: i32) -> u32 {
    ((r << 1) ^ (r >> 31)) as u32
}

/// A residual's partitioned Rice coding: the partition order, a parameter per partition, the
/// coding method that holds the largest parameter, and its length in bits.
struct Residual {
    /// The predictor's order: warm-up samples the first partition omits.
    order: usize,
    partition_order: u32,
    parameters: Vec<u32>,
    wide_parameters: bool,
    bits: u64,
}

impl Residual {
    /// The shortest coding of `residual` (a predictor of `order` over `block` samples), by exact
    /// bit counts over every partition order the block allows and every parameter.
    fn best(residual: &[i32], order: usize, block: usize) -> Self {
        // The finest partitioning: 2^p must divide the block, and the first partition must
        // hold more than the warm-up samples it omits.
        let mut finest = 0;
        while finest < MAX_PARTITION_ORDER
            && block.is_multiple_of(1 << (finest + 1))
            && block >> (finest + 1) > order
        {
            finest += 1;
        }
        // unary[k][j]: Σ (u >> k) over the finest partition j; a coarser partition's sums are
        // those of the finest partitions it covers.
        let parts = 1usize << finest;
        let size = block >> finest;
        let mut unary = vec![vec![0u64; parts]; MAX_RICE_5BIT as usize + 1];
        let mut counts = vec![0u64; parts];
        for (i, &r) in residual.iter().enumerate() {
            let j = (i + order) / size;
            let u = zigzag(r);
            counts[j] += 1;
            for (k, sums) in unary.iter_mut().enumerate() {
                sums[j] += u64::from(u >> k);
            }
        }
        let mut best: Option<Self> = None;
        for p in (0..=finest).rev() {
            let span = 1usize << (finest - p);
            let mut parameters = Vec::with_capacity(1 << p);
            let mut bits = 2 + 4; // coding method, partition order
            for part in 0..1usize << p {
                let range = part * span..(part + 1) * span;
                let n: u64 = counts[range.clone()].iter().sum();
                let (k, cost) = (0..=MAX_RICE_5BIT)
                    .map(|k| {
                        let sum: u64 = unary[k as usize][range.clone()].iter().sum();
                        (k, n * u64::from(k + 1) + sum)
                    })
                    .min_by_key(|&(_, cost)| cost)
                    .expect("parameters to try");
                parameters.push(k);
                bits += cost;
            }
            let wide_parameters = parameters.iter().any(|&k| k > MAX_RICE_4BIT);
            bits += parameters.len() as u64 * if wide_parameters { 5 } else { 4 };
            if best.as_ref().is_none_or(|b| bits < b.bits) {
                best = Some(Self {
                    order,
                    partition_order: p,
                    parameters,
                    wide_parameters,
                    bits,
                });
            }
        }
        best.expect("partition orders to try")
    }

    fn write(&self, residual: &[i32], w: &mut BitWriter) {
        w.put(u64::from(self.wide_parameters), 2);
        w.put(u64::from(self.partition_order), 4);
        let parameter_bits = if self.wide_parameters { 5 } else { 4 };
        // The block split evenly; the first partition omits the predictor's warm-up samples.
        let size = (residual.len() + self.order) >> self.partition_order;
        let mut start = 0;
        for (part, &k) in self.parameters.iter().enumerate() {
            let len = if part == 0 { size - self.order } else { size };
            w.put(u64::from(k), parameter_bits);
            for &r in &residual[start..start + len] {
                w.rice(zigzag(r), k);
            }
            start += len;
        }
    }
}

/// Bits appended most significant first.
#[derive(Default)]
struct BitWriter {
    bytes: Vec<u8>,
    /// Bits not yet a whole byte, right-aligned, and how many.
    acc: u64,
    pending: u32,
}

impl BitWriter {
    fn clear(&mut self) {
        self.bytes.clear();
        self.acc = 0;
        self.pending = 0;
    }

    /// The low `bits` (≤ 56) of `value`.
    fn put(&mut self, value: u64, bits: u32) {
        debug_assert!(bits <= 56 && (bits == 64 || value >> bits == 0));
        self.acc = (self.acc << bits) | value;
        self.pending += bits;
        while self.pending >= 8 {
            self.pending -= 8;
            self.bytes.push((self.acc >> self.pending) as u8);
        }
        self.acc &= (1 << self.pending) - 1;
    }

    /// Two's complement in `bits` bits.
    fn signed(&mut self, value: i64, bits: u32) {
        self.put(value as u64 & ((1 << bits) - 1), bits);
    }

    fn bytes(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.put(u64::from(b), 8);
        }
    }

    /// Rice code of `u` with parameter `k`: `u >> k` zeros, a one, the low `k` bits.
    fn rice(&mut self, u: u32, k: u32) {
        let mut zeros = u >> k;
        while zeros >= 32 {
            self.put(0, 32);
            zeros -= 32;
        }
        self.put(1, zeros + 1);
        self.put(u64::from(u) & ((1 << k) - 1), k);
    }

    /// A frame's number, coded as UTF-8 extended to 36 bits (RFC 9639 §9.1.5).
    fn coded_number(&mut self, n: u64) {
        if n < 0x80 {
            return self.put(n, 8);
        }
        // Bytes after the first carry 6 bits each; the first holds what remains.
        let tail = (1..=6)
            .find(|&t| n < 1 << (6 - t + 6 * t))
            .expect("36-bit sample number");
        let lead = (0xFF00u64 >> (tail + 1)) & 0xFF; // tail + 1 leading ones
        self.put(lead | (n >> (6 * tail)), 8);
        for t in (0..tail).rev() {
            self.put(0x80 | ((n >> (6 * t)) & 0x3F), 8);
        }
    }

    /// Zero bits up to the next byte.
    fn align(&mut self) {
        if self.pending > 0 {
            self.put(0, 8 - self.pending);
        }
    }

    /// The whole bytes written so far.
    fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    fn into_bytes(mut self) -> Vec<u8> {
        self.align();
        self.bytes
    }
}

/// CRC-8, polynomial x^8 + x^2 + x + 1, of a frame header.
fn crc8(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |mut crc, &b| {
        crc ^= b;
        for _ in 0..8 {
            crc = if crc & 0x80 != 0 {
                (crc << 1) ^ 0x07
            } else {
                crc << 1
            };
        }
        crc
    })
}

/// CRC-16, polynomial x^16 + x^15 + x^2 + 1, of a whole frame.
fn crc16(bytes: &[u8]) -> u16 {
    bytes.iter().fold(0u16, |mut crc, &b| {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x8005
            } else {
                crc << 1
            };
        }
        crc
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bits_written(w: &BitWriter) -> u64 {
        w.bytes.len() as u64 * 8 + u64::from(w.pending)
    }

    #[test]
    fn coded_numbers_extend_utf8() {
        for n in [0u32, 0x7F, 0x80, 0x7FF, 0x800, 0xFFFF, 0x1_0000, 0x10_FFFF] {
            let mut w = BitWriter::default();
            w.coded_number(u64::from(n));
            let mut utf8 = [0; 4];
            let want = char::from_u32(n).unwrap().encode_utf8(&mut utf8);
            assert_eq!(w.as_bytes(), want.as_bytes(), "{n:#x}");
        }
        // The longest: 36 bits in seven bytes.
        let mut w = BitWriter::default();
        w.coded_number((1 << 36) - 1);
        assert_eq!(w.as_bytes(), [0xFE, 0xBF, 0xBF, 0xBF, 0xBF, 0xBF, 0xBF]);
    }

    #[test]
    fn crcs_give_their_check_values() {
        // CRC-8/SMBUS and CRC-16/UMTS (FLAC's), over "123456789".
        assert_eq!(crc8(b"123456789"), 0xF4);
        assert_eq!(crc16(b"123456789"), 0xFEE8);
    }

    #[test]
    fn a_residual_takes_the_bits_its_choice_counted() {
        let mut state = 7u32;
        let mut noise = |scale: i32| {
            state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            ((state >> 16) as i32 % (2 * scale + 1)) - scale
        };
        // Small and huge residuals (the latter need 5-bit Rice parameters), blocks that split
        // into 2^8 partitions and blocks that split into none.
        for (len, scale) in [(4096, 3), (4096, 20_000), (1920, 300), (1001, 50), (5, 1)] {
            let block: Vec<i16> = (0..len)
                .map(|_| noise(scale).clamp(-32768, 32767) as i16)
                .collect();
            for order in 0..=4.min(len - 1) {
                let residual = fixed_residual(&block, order);
                let coding = Residual::best(&residual, order, len);
                let mut w = BitWriter::default();
                coding.write(&residual, &mut w);
                assert_eq!(
                    bits_written(&w),
                    coding.bits,
                    "{len} samples, order {order}"
                );
                if scale < 1000 || order >= 2 {
                    assert_eq!(coding.wide_parameters, scale > 1000, "{len}, order {order}");
                }
            }
        }
    }
}
