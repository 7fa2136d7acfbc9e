//! ggml's model files: whisper.cpp's legacy ggml format ([`legacy`], `ggml-tiny.bin` and
//! friends) and GGUF ([`gguf`]), read through a memory map and written one tensor at a time.
//!
//! Both formats are the work of the ggml / whisper.cpp authors (Georgi Gerganov and
//! contributors, <https://github.com/ggml-org/ggml>, <https://github.com/ggml-org/whisper.cpp>);
//! the layouts here follow their readers and writers, which each module names.
//!
//! Reading never copies tensor data: a [`TensorInfo`] says where a tensor's bytes lie and
//! [`MappedFile::data`] borrows them from the map. Every count read from a file is checked
//! against the bytes that remain before anything is allocated from it, so a corrupt or hostile
//! file ends in a one-line [`GgmlError`], never a panic or a huge allocation.

pub mod gguf;
pub mod legacy;

pub use gguf::{GgufFile, GgufWriter, MetaArray, MetaValue};
pub use legacy::{Hparams, LegacyHeader, LegacyModel, LegacyWriter, MelFilters};
pub use voxide_nn::quant::GgmlType;

use std::fs::File;
use std::path::{Path, PathBuf};

/// Where one tensor lies in a file, and what it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    /// The tensor's name (whisper.cpp's names in legacy files, `encoder.conv1.weight`).
    pub name: String,
    /// Sizes in ggml order (`ne[]`): `dims[0]` is the innermost, contiguous axis (the row
    /// length); the row-major (PyTorch) shape is the reverse, [`TensorInfo::shape`].
    pub dims: Vec<usize>,
    /// How the values are stored.
    pub ty: GgmlType,
    /// Byte offset of the data from the start of the file.
    pub offset: usize,
    /// Byte length of the data: `rows() * ty.row_bytes(row_len())`.
    pub bytes: usize,
}

impl TensorInfo {
    /// Values per row (`ne[0]`; 1 for a scalar).
    pub fn row_len(&self) -> usize {
        self.dims.first().copied().unwrap_or(1)
    }

    /// Number of rows: the product of the outer sizes (`ne[1] * ne[2] * ne[3]`).
    pub fn rows(&self) -> usize {
        self.dims.iter().skip(1).product()
    }

    /// Number of values.
    pub fn elements(&self) -> usize {
        self.dims.iter().product()
    }

    /// The row-major (PyTorch) shape: `dims` reversed.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().copied().collect()
    }

    /// Name, sizes and type, to write this tensor into another file.
    pub fn spec(&self) -> TensorSpec {
        TensorSpec {
            name: self.name.clone(),
            dims: self.dims.clone(),
            ty: self.ty,
        }
    }
}

/// A tensor to be written: everything a file stores about it but the data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    /// The tensor's name.
    pub name: String,
    /// Sizes in ggml order: `dims[0]` is the row length (see [`TensorInfo::dims`]).
    pub dims: Vec<usize>,
    /// How the values are stored.
    pub ty: GgmlType,
}

impl TensorSpec {
    /// A spec from its parts.
    pub fn new(name: impl Into<String>, dims: &[usize], ty: GgmlType) -> Self {
        Self {
            name: name.into(),
            dims: dims.to_vec(),
            ty,
        }
    }
}

/// Bytes of a tensor of `dims` (ggml order) stored as `ty`: whole rows of whole blocks, as
/// ggml's `ggml_nbytes` for a contiguous tensor. The error says why the sizes are impossible.
pub(crate) fn tensor_bytes(dims: &[usize], ty: GgmlType) -> Result<usize, String> {
    let row_len = dims.first().copied().unwrap_or(1);
    // `GgmlType::row_bytes` would overflow on the huge sizes of a hostile GGUF file.
    let (block, block_bytes) = (ty.block_size(), ty.block_bytes());
    if !row_len.is_multiple_of(block) {
        return Err(format!(
            "rows of {row_len} values are not whole {ty} blocks of {block}"
        ));
    }
    let row = (row_len / block)
        .checked_mul(block_bytes)
        .ok_or_else(|| format!("sizes {dims:?} overflow"))?;
    // The row count and the element count are checked too: with a zero-length row the byte
    // size alone would not notice outer sizes whose product overflows.
    dims.iter()
        .skip(1)
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .and_then(|rows| {
            rows.checked_mul(row_len)?;
            rows.checked_mul(row)
        })
        .ok_or_else(|| format!("sizes {dims:?} overflow"))
}

/// A model file mapped into memory: tensor data is borrowed from the map, never copied.
pub struct MappedFile {
    path: PathBuf,
    map: memmap2::Mmap,
}

impl MappedFile {
    /// Maps `path` read-only.
    pub fn open(path: &Path) -> Result<Self, GgmlError> {
        let io = |source| {
            GgmlError::new(
                path,
                GgmlErrorKind::Io {
                    action: "read",
                    source,
                },
            )
        };
        let file = File::open(path).map_err(io)?;
        // SAFETY: the map is read-only and private to this process. Like every mmap-based model
        // loader (candle's safetensors loading included), it relies on the file not being
        // truncated or rewritten while mapped, which model files are not.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        Ok(Self {
            path: path.to_owned(),
            map,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// The bytes of tensor `t`, which must come from this file.
    ///
    /// # Panics
    ///
    /// When `t`'s byte range lies outside the file (a [`TensorInfo`] from another file); the
    /// readers of this module check the ranges of the tensors they return.
    pub fn data(&self, t: &TensorInfo) -> &[u8] {
        &self.map[t.offset..t.offset + t.bytes]
    }
}

/// Why a ggml / GGUF file could not be read or written: the file, and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("{}: {kind}", path.display())]
pub struct GgmlError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong.
    pub kind: GgmlErrorKind,
}

impl GgmlError {
    pub(crate) fn new(path: &Path, kind: GgmlErrorKind) -> Self {
        Self {
            path: path.to_owned(),
            kind,
        }
    }
}

/// What is wrong with a ggml / GGUF file (one line each; [`GgmlError`] adds the path).
#[derive(Debug, thiserror::Error)]
pub enum GgmlErrorKind {
    /// The OS refused to open, map or write the file.
    #[error("cannot {action}: {source}")]
    Io {
        /// "read" or "write".
        action: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file does not start with the format's magic number.
    #[error("not a {format} file (magic {found:#010x}, expected {expected:#010x})")]
    BadMagic {
        /// "ggml" or "GGUF".
        format: &'static str,
        /// The first four bytes, little-endian (zero-padded when the file is shorter).
        found: u32,
        /// The format's magic.
        expected: u32,
    },
    /// The file ends in the middle of something.
    #[error("truncated: {what} at byte {offset} needs {needed} bytes, {available} left")]
    Truncated {
        /// What was being read.
        what: String,
        /// Where it starts.
        offset: usize,
        /// Its size.
        needed: usize,
        /// What the file has left from `offset`.
        available: usize,
    },
    /// A tensor's type id is not a ggml type this crate reads.
    #[error("tensor {tensor:?} has unknown ggml type id {id}")]
    UnknownType {
        /// The tensor.
        tensor: String,
        /// The id as stored.
        id: i64,
    },
    /// A legacy file's model-level `ftype` maps to no tensor type this crate reads.
    #[error("unsupported model ftype {ftype} (ggml_ftype {}, quantization version {})",
        ftype % 1000, ftype / 1000)]
    UnsupportedFtype {
        /// The stored value (`quantization version * 1000 + ggml_ftype`).
        ftype: i32,
    },
    /// A GGUF version other than 2 and 3.
    #[error("unsupported GGUF version {0} (versions 2 and 3, little-endian, are read)")]
    UnsupportedVersion(u32),
    /// A tensor's sizes disagree with its type or with the file.
    #[error("tensor {tensor:?}: {message}")]
    BadTensor {
        /// The tensor.
        tensor: String,
        /// What is wrong.
        message: String,
    },
    /// Two tensors share a name.
    #[error("duplicate tensor name {0:?}")]
    DuplicateTensor(String),
    /// Two metadata entries share a key.
    #[error("duplicate metadata key {0:?}")]
    DuplicateKey(String),
    /// A name that must be UTF-8 is not.
    #[error("{what} at byte {offset} is not UTF-8")]
    BadUtf8 {
        /// What the name is ("tensor name", "metadata key").
        what: &'static str,
        /// Where its bytes start.
        offset: usize,
    },
    /// A count or size out of any sensible range (negative, more than the file could hold,
    /// more dimensions than ggml has).
    #[error("{what} is {value}, expected 0 to {max}")]
    BadCount {
        /// What was counted.
        what: String,
        /// The value as stored.
        value: i128,
        /// The largest acceptable value here.
        max: u64,
    },
    /// A model file without tensors (whisper.cpp's header-only test files).
    #[error("file has no tensors")]
    NoTensors,
    /// A metadata entry is missing or of another type than asked for.
    #[error("metadata {key:?}: {message}")]
    Metadata {
        /// The key.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// Anything else malformed (a GGUF alignment that is not a power of two, a bool that is
    /// neither 0 nor 1), or a writer used out of order.
    #[error("{0}")]
    Invalid(String),
}

impl From<GgmlError> for crate::error::Error {
    fn from(e: GgmlError) -> Self {
        match e.kind {
            GgmlErrorKind::Io {
                action: "write",
                source,
            } => crate::error::Error::Write {
                path: e.path,
                source,
            },
            kind => crate::error::Error::Weights {
                path: e.path,
                message: kind.to_string(),
            },
        }
    }
}

/// A little-endian reader over a file's bytes whose every failure names the file, what was
/// being read and where.
pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(buf: &'a [u8], path: &'a Path) -> Self {
        Self { buf, pos: 0, path }
    }

    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(crate) fn error(&self, kind: GgmlErrorKind) -> GgmlError {
        GgmlError::new(self.path, kind)
    }

    /// The next `n` bytes.
    pub(crate) fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], GgmlError> {
        if n > self.remaining() {
            return Err(self.error(GgmlErrorKind::Truncated {
                what: what.to_owned(),
                offset: self.pos,
                needed: n,
                available: self.remaining(),
            }));
        }
        let bytes = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(bytes)
    }

    /// Moves to `pos` (an aligned data section), which must lie within the file.
    pub(crate) fn seek(&mut self, pos: usize, what: &str) -> Result<(), GgmlError> {
        self.take(pos.saturating_sub(self.pos), what).map(|_| ())
    }

    pub(crate) fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], GgmlError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    pub(crate) fn u32(&mut self, what: &str) -> Result<u32, GgmlError> {
        self.array(what).map(u32::from_le_bytes)
    }

    pub(crate) fn i32(&mut self, what: &str) -> Result<i32, GgmlError> {
        self.array(what).map(i32::from_le_bytes)
    }

    pub(crate) fn u64(&mut self, what: &str) -> Result<u64, GgmlError> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// A count of items of at least `min_item_bytes` each that must all fit in what is left of
    /// the file (checked before anything is allocated for them).
    pub(crate) fn count(
        &self,
        value: i128,
        min_item_bytes: usize,
        what: &str,
    ) -> Result<usize, GgmlError> {
        let max = self.remaining() / min_item_bytes.max(1);
        usize::try_from(value)
            .ok()
            .filter(|&n| n <= max)
            .ok_or_else(|| {
                self.error(GgmlErrorKind::BadCount {
                    what: what.to_owned(),
                    value,
                    max: max as u64,
                })
            })
    }

    /// A name that must be UTF-8.
    pub(crate) fn utf8(&mut self, n: usize, what: &'static str) -> Result<&'a str, GgmlError> {
        let offset = self.pos;
        let bytes = self.take(n, what)?;
        std::str::from_utf8(bytes).map_err(|_| self.error(GgmlErrorKind::BadUtf8 { what, offset }))
    }
}

/// `x` rounded up to a multiple of `align` (a power of two), as ggml's `GGML_PAD`.
pub(crate) fn align_up(x: usize, align: usize) -> Option<usize> {
    Some(x.checked_add(align - 1)? & !(align - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensor_info_shapes() {
        let t = TensorInfo {
            name: "w".into(),
            dims: vec![64, 3, 2],
            ty: GgmlType::Q8_0,
            offset: 0,
            bytes: 6 * 2 * 34,
        };
        assert_eq!((t.row_len(), t.rows(), t.elements()), (64, 6, 384));
        assert_eq!(t.shape(), [2, 3, 64]);
        let scalar = TensorInfo { dims: vec![], ..t };
        assert_eq!((scalar.row_len(), scalar.rows()), (1, 1));
        assert_eq!(tensor_bytes(&[64, 3, 2], GgmlType::Q8_0), Ok(6 * 2 * 34));
        assert_eq!(tensor_bytes(&[], GgmlType::F32), Ok(4));
        assert!(tensor_bytes(&[33], GgmlType::Q8_0).is_err());
        assert!(tensor_bytes(&[0, usize::MAX, 2], GgmlType::F32).is_err());
        assert!(tensor_bytes(&[usize::MAX / 2], GgmlType::F32).is_err());
        assert_eq!(align_up(33, 32), Some(64));
        assert_eq!(align_up(64, 32), Some(64));
    }

    #[test]
    fn errors_are_one_line_and_name_the_file() {
        let e = GgmlError::new(Path::new("/m/x.bin"), GgmlErrorKind::NoTensors);
        assert_eq!(e.to_string(), "/m/x.bin: file has no tensors");
        let e: crate::error::Error = e.into();
        assert_eq!(
            e.to_string(),
            "cannot load weights from /m/x.bin: file has no tensors"
        );
    }
}
