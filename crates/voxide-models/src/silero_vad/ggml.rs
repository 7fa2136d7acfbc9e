//! whisper.cpp's Silero VAD file (`ggml-silero-v*.bin`, written by its
//! `models/convert-silero-vad-to-ggml.py`; read by `whisper_vad_init_with_params`).
//!
//! Layout, all little-endian: int32 magic `0x67676d6c`; int32 length + model type
//! (`silero-16k`); int32 version major, minor, patch; int32 window (512) and context (64);
//! int32 number of encoder layers (4), then (in, out, kernel) per layer; int32 LSTM input and
//! hidden sizes; int32 final conv in and out. Then tensors until the end of the file: int32
//! n_dims, name length, ftype (0 = f32, 1 = f16); n_dims int32 sizes, innermost first (ggml
//! order: the reverse of the PyTorch shape); the name; the data in the PyTorch tensor's C
//! order. The convolution weights and the STFT basis are f16, the rest f32; the PyTorch
//! names carry a `_model.` prefix, and size-1 axes are squeezed away (`decoder.decoder.2`:
//! weight `[128]`, bias a scalar).

use super::{RawTensor, CONTEXT, WINDOW};
use std::collections::HashMap;

const MAGIC: u32 = 0x6767_6d6c;

/// The header's architecture numbers that this implementation assumes.
const ENCODER: [[i32; 3]; 4] = [[129, 128, 3], [128, 64, 3], [64, 64, 3], [64, 128, 3]];

/// A header, and the file's tensors under their PyTorch shapes.
pub(super) struct GgmlFile {
    /// `major.minor.patch` of the silero-vad package it was converted from.
    pub version: String,
    pub tensors: HashMap<String, RawTensor>,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| format!("truncated file (in {what})"))?;
        let bytes = &self.buf[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn i32(&mut self, what: &str) -> Result<i32, String> {
        Ok(i32::from_le_bytes(self.take(4, what)?.try_into().unwrap()))
    }

    /// A count or size: an int32 in `0..=max`.
    fn size(&mut self, what: &str, max: usize) -> Result<usize, String> {
        let v = self.i32(what)?;
        usize::try_from(v)
            .ok()
            .filter(|&v| v <= max)
            .ok_or_else(|| format!("bad {what}: {v}"))
    }

    fn expect(&mut self, what: &str, want: i32) -> Result<(), String> {
        match self.i32(what)? {
            v if v == want => Ok(()),
            v => Err(format!("{what} is {v}, expected {want}")),
        }
    }
}

/// Parses a whole ggml Silero file.
pub(super) fn read(bytes: &[u8]) -> Result<GgmlFile, String> {
    let mut r = Reader { buf: bytes, pos: 0 };
    if bytes.len() < 4 || r.i32("magic")? as u32 != MAGIC {
        return Err("not a ggml file (bad magic)".into());
    }
    // whisper.cpp's speech models share the magic; their next int32 is the vocabulary size.
    let n = r.i32("model type length")?;
    let Some(n) = usize::try_from(n).ok().filter(|&n| n <= 64) else {
        return Err(
            "a ggml file, but not a Silero VAD: it has no model type where whisper.cpp's \
             VAD files have one (a Whisper model? the VAD file is ggml-silero-v*.bin)"
                .into(),
        );
    };
    let model_type = String::from_utf8_lossy(r.take(n, "model type")?).into_owned();
    if model_type != "silero-16k" {
        return Err(format!(
            "model type {model_type:?} is not a Silero VAD (silero-16k)"
        ));
    }
    let version = format!(
        "{}.{}.{}",
        r.i32("version")?,
        r.i32("version")?,
        r.i32("version")?
    );
    r.expect("window size", WINDOW as i32)?;
    r.expect("context size", CONTEXT as i32)?;
    r.expect("number of encoder layers", ENCODER.len() as i32)?;
    for layer in ENCODER {
        for (v, what) in layer.into_iter().zip(["in", "out", "kernel"]) {
            r.expect(&format!("encoder layer {what} size"), v)?;
        }
    }
    r.expect("LSTM input size", 128)?;
    r.expect("LSTM hidden size", 128)?;
    r.expect("final conv input size", 128)?;
    r.expect("final conv output size", 1)?;

    let mut tensors = HashMap::new();
    while r.pos < bytes.len() {
        let n_dims = r.size("tensor rank", 4)?;
        let name_len = r.size("tensor name length", 256)?;
        let ftype = r.i32("tensor type")?;
        let mut dims = (0..n_dims)
            .map(|_| r.size("tensor dimension", 1 << 20))
            .collect::<Result<Vec<_>, _>>()?;
        dims.reverse();
        let name = String::from_utf8_lossy(r.take(name_len, "tensor name")?).into_owned();
        let count: usize = dims.iter().product();
        let data = match ftype {
            0 => r
                .take(count * 4, &name)?
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect(),
            1 => r
                .take(count * 2, &name)?
                .chunks_exact(2)
                .map(|b| f16_to_f32(u16::from_le_bytes([b[0], b[1]])))
                .collect(),
            t => return Err(format!("tensor {name}: unsupported ggml type {t}")),
        };
        tensors.insert(name, RawTensor { dims, data });
    }
    Ok(GgmlFile { version, tensors })
}

/// IEEE half → single precision (exact).
fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let mant = u32::from(h & 0x3ff);
    let bits = match (exp, mant) {
        (0, 0) => sign,
        // Subnormal: mant × 2^-24.
        (0, _) => return sign_of(h) * mant as f32 * f32::powi(2.0, -24),
        (0x1f, _) => sign | 0x7f80_0000 | (mant << 13),
        _ => sign | ((exp + 127 - 15) << 23) | (mant << 13),
    };
    f32::from_bits(bits)
}

fn sign_of(h: u16) -> f32 {
    if h >> 15 == 1 {
        -1.0
    } else {
        1.0
    }
}

#[cfg(test)]
mod tests {
    use super::{f16_to_f32, read, MAGIC};

    #[test]
    fn a_whisper_ggml_model_is_named_as_not_a_vad() {
        // whisper.cpp's model header: the magic, then n_vocab.
        let mut header = MAGIC.to_le_bytes().to_vec();
        header.extend(51865i32.to_le_bytes());
        let e = read(&header).err().unwrap();
        assert!(e.contains("not a Silero VAD"), "{e}");
        let e = read(&MAGIC.to_le_bytes()).err().unwrap();
        assert!(e.contains("truncated"), "{e}");
    }

    #[test]
    fn half_to_single() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x8001), -(2f32.powi(-24)));
        assert_eq!(f16_to_f32(0x3555), 0.333_251_95);
        assert!(f16_to_f32(0x7c00).is_infinite());
    }
}
