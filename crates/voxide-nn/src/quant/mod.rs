//! ggml's tensor types: the block formats of whisper.cpp / llama.cpp model files (legacy ggml
//! and GGUF), their exact dequantization and ggml's reference quantizers.
//!
//! A block type stores `block_size` consecutive values of one row in `block_bytes` bytes
//! (scales as f16, then packed integers); a row of `n` values (n a multiple of the block size)
//! is `n / block_size` blocks. Layouts and ids are ggml's (`ggml/src/ggml-common.h`,
//! `ggml.h`: `enum ggml_type`), credited to the ggml authors.
//!
//! [`dequantize_row`] / [`quantize_row`] convert one row, bit-exact with ggml's C code.

mod blocks;
mod kquants;

pub use blocks::{dequantize_row, quantize_row};

use std::fmt;

/// A ggml tensor type (`enum ggml_type`; the discriminant is ggml's id as stored in files).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum GgmlType {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q8_1 = 9,
    Q2K = 10,
    Q3K = 11,
    Q4K = 12,
    Q5K = 13,
    Q6K = 14,
    Q8K = 15,
    Bf16 = 30,
}

/// Values per super-block of the k-quants (`QK_K`).
pub const QK_K: usize = 256;

/// A weight backend that holds a matrix `name` in ggml blocks also answers `name` + this
/// suffix with the raw blocks, U8 (rows, blocks per row, block bytes): the block size names
/// the type (every ggml block type has its own). [`crate::Linear::load`] takes them as they
/// are, so a quantized file is neither dequantized nor quantized again.
pub const BLOCKS_SUFFIX: &str = "#ggml-blocks";

impl GgmlType {
    /// Every type this crate reads.
    pub const ALL: [GgmlType; 15] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q8_1,
        GgmlType::Q2K,
        GgmlType::Q3K,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
        GgmlType::Q8K,
        GgmlType::Bf16,
    ];

    /// The type of a ggml id, if this crate knows it.
    pub fn from_id(id: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|t| *t as u32 == id)
    }

    /// ggml's id.
    pub fn id(self) -> u32 {
        self as u32
    }

    /// ggml's name (`ggml_type_name`): "f32", "q4_0", "q4_K", ...
    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "f32",
            GgmlType::F16 => "f16",
            GgmlType::Q4_0 => "q4_0",
            GgmlType::Q4_1 => "q4_1",
            GgmlType::Q5_0 => "q5_0",
            GgmlType::Q5_1 => "q5_1",
            GgmlType::Q8_0 => "q8_0",
            GgmlType::Q8_1 => "q8_1",
            GgmlType::Q2K => "q2_K",
            GgmlType::Q3K => "q3_K",
            GgmlType::Q4K => "q4_K",
            GgmlType::Q5K => "q5_K",
            GgmlType::Q6K => "q6_K",
            GgmlType::Q8K => "q8_K",
            GgmlType::Bf16 => "bf16",
        }
    }

    /// The type named `name`, case-insensitively ("q5_1", "Q4_K", "q4_k").
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(name))
    }

    /// Values per block (1 for the plain float types).
    pub fn block_size(self) -> usize {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::Bf16 => 1,
            GgmlType::Q4_0
            | GgmlType::Q4_1
            | GgmlType::Q5_0
            | GgmlType::Q5_1
            | GgmlType::Q8_0
            | GgmlType::Q8_1 => 32,
            GgmlType::Q2K
            | GgmlType::Q3K
            | GgmlType::Q4K
            | GgmlType::Q5K
            | GgmlType::Q6K
            | GgmlType::Q8K => QK_K,
        }
    }

    /// Bytes per block (`ggml_type_size`).
    pub fn block_bytes(self) -> usize {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 | GgmlType::Bf16 => 2,
            GgmlType::Q4_0 => 2 + 16,
            GgmlType::Q4_1 => 2 * 2 + 16,
            GgmlType::Q5_0 => 2 + 4 + 16,
            GgmlType::Q5_1 => 2 * 2 + 4 + 16,
            GgmlType::Q8_0 => 2 + 32,
            GgmlType::Q8_1 => 2 * 2 + 32,
            // d, dmin (f16); 16 scale bytes; 64 bytes of 2-bit quants.
            GgmlType::Q2K => 2 * 2 + QK_K / 16 + QK_K / 4,
            // 32 bytes of high-bit mask, 64 of low 2 bits, 12 of 6-bit scales, d.
            GgmlType::Q3K => QK_K / 8 + QK_K / 4 + 12 + 2,
            // d, dmin; 12 bytes of 6-bit scales and mins; 128 bytes of nibbles.
            GgmlType::Q4K => 2 * 2 + 12 + QK_K / 2,
            // d, dmin; 12 scale bytes; 32 high-bit bytes; 128 bytes of nibbles.
            GgmlType::Q5K => 2 * 2 + 12 + QK_K / 8 + QK_K / 2,
            // 128 low-nibble bytes, 64 high-2-bit bytes, 16 i8 scales, d.
            GgmlType::Q6K => QK_K / 2 + QK_K / 4 + QK_K / 16 + 2,
            // d (f32), 256 i8 quants, 16 i16 block sums.
            GgmlType::Q8K => 4 + QK_K + QK_K / 16 * 2,
        }
    }

    /// Whether values come in blocks with scales (anything but f32 / f16 / bf16).
    pub fn is_quantized(self) -> bool {
        self.block_size() > 1
    }

    /// Bytes of a row of `n` values; `None` when `n` is not a whole number of blocks (or the
    /// size overflows).
    pub fn row_bytes(self, n: usize) -> Option<usize> {
        if !n.is_multiple_of(self.block_size()) {
            return None;
        }
        (n / self.block_size()).checked_mul(self.block_bytes())
    }
}

/// Multiplies every value of `data` (whole blocks of `ty`) by `factor` in place, by scaling
/// the blocks' scale fields (d, and the min terms). Exact when `factor` is a power of two and
/// no field leaves the normal f16 range; returns `false` (and leaves `data` unchanged) when it
/// would not be exact. Folds Whisper's 1/√64 softmax scale into a quantized query projection.
pub fn scale_blocks_exactly(ty: GgmlType, data: &mut [u8], factor: f32) -> bool {
    // Byte offsets of the f16 scale fields in a block (ggml-common.h's block structs).
    let fields: &[usize] = match ty {
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => &[0],
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q8_1 => &[0, 2],
        GgmlType::Q4K | GgmlType::Q5K => &[0, 2],
        GgmlType::Q2K => &[80, 82],
        GgmlType::Q3K => &[108],
        GgmlType::Q6K => &[208],
        _ => return false,
    };
    let pow2 = factor.is_finite() && factor != 0.0 && factor.abs().log2().fract() == 0.0;
    if !pow2 || !data.len().is_multiple_of(ty.block_bytes()) {
        return false;
    }
    let scaled = |bytes: [u8; 2]| {
        let v = half::f16::from_le_bytes(bytes).to_f32();
        let s = half::f16::from_f32(v * factor);
        (s.to_f32() == v * factor && (s.is_normal() || v == 0.0)).then(|| s.to_le_bytes())
    };
    let mut out = data.to_vec();
    for block in out.chunks_exact_mut(ty.block_bytes()) {
        for &f in fields {
            match scaled([block[f], block[f + 1]]) {
                Some(b) => block[f..f + 2].copy_from_slice(&b),
                None => return false,
            }
        }
    }
    data.copy_from_slice(&out);
    true
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sizes from ggml's `type_traits` table (ggml.c).
    #[test]
    fn block_sizes_are_ggml_s() {
        let want = [
            (GgmlType::Q4_0, 32, 18),
            (GgmlType::Q4_1, 32, 20),
            (GgmlType::Q5_0, 32, 22),
            (GgmlType::Q5_1, 32, 24),
            (GgmlType::Q8_0, 32, 34),
            (GgmlType::Q8_1, 32, 36),
            (GgmlType::Q2K, 256, 84),
            (GgmlType::Q3K, 256, 110),
            (GgmlType::Q4K, 256, 144),
            (GgmlType::Q5K, 256, 176),
            (GgmlType::Q6K, 256, 210),
            (GgmlType::Q8K, 256, 292),
        ];
        for (t, block, bytes) in want {
            assert_eq!((t.block_size(), t.block_bytes()), (block, bytes), "{t}");
        }
        assert_eq!(GgmlType::Q4_0.row_bytes(384), Some(12 * 18));
        assert_eq!(GgmlType::Q4K.row_bytes(384), None);
        for t in GgmlType::ALL {
            assert_eq!(GgmlType::from_id(t.id()), Some(t));
            assert_eq!(GgmlType::from_name(&t.name().to_uppercase()), Some(t));
        }
        assert_eq!(GgmlType::from_id(4), None);
        // BLOCKS_SUFFIX tensors name their type by block size alone.
        let mut sizes: Vec<usize> = GgmlType::ALL
            .into_iter()
            .filter(|t| t.is_quantized())
            .map(GgmlType::block_bytes)
            .collect();
        let n = sizes.len();
        sizes.sort_unstable();
        sizes.dedup();
        assert_eq!(sizes.len(), n, "two block types of one size");
    }
}
