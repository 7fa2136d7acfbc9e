//! GGUF, ggml's self-describing model format (spec: ggml's `docs/gguf.md`, by Georgi Gerganov
//! and the ggml contributors). The reader follows ggml's `gguf_init_from_file_impl`
//! (`ggml/src/gguf.cpp`) and the `gguf` Python package's `GGUFReader`; the writer writes what
//! the package's `GGUFWriter` writes.
//!
//! Layout, all little-endian:
//!
//! | field | type |
//! |---|---|
//! | magic "GGUF" | 4 bytes (`0x46554747` as a u32) |
//! | version: 2 or 3 (1 had u32 counts; 3 only adds big-endian files, refused here) | u32 |
//! | tensor count, metadata count | 2 × u64 |
//! | per metadata entry: key (string), value type, value | string, u32, value |
//! | per tensor: name, n_dims | string, u32 |
//! | its sizes in ggml order (`ne[0]`, the row length, first) | n_dims × u64 |
//! | its ggml type id, its data offset (from the data section) | u32, u64 |
//! | zero padding to the alignment | |
//! | data section: each tensor at its offset (a multiple of the alignment), padded | bytes |
//!
//! A string is a u64 length and that many bytes; an array is its element type (u32), a u64
//! count and the elements, where an element of type array is again type, count and elements.
//! The alignment is the u32 `general.alignment` entry, 32 without one.

use super::{
    align_up, tensor_bytes, Cursor, GgmlError, GgmlErrorKind, GgmlType, MappedFile, TensorInfo,
    TensorSpec,
};
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// "GGUF" read as a little-endian u32 (`GGUF_MAGIC`).
pub const MAGIC: u32 = 0x4655_4747;

/// The version written (`GGUF_VERSION`).
pub const VERSION: u32 = 3;

/// Data alignment without a `general.alignment` entry (`GGUF_DEFAULT_ALIGNMENT`).
pub const DEFAULT_ALIGNMENT: usize = 32;

/// The key that sets the data alignment.
pub const ALIGNMENT_KEY: &str = "general.alignment";

/// ggml's tensor rank limit (`GGML_MAX_DIMS`).
const MAX_DIMS: u64 = 4;

/// Tensor names must be shorter than this for ggml to load a file (`GGML_MAX_NAME`); the
/// writer keeps to it, the reader does not need to.
const MAX_NAME: usize = 64;

/// Deepest array nesting read: no model nests at all (ggml's own reader refuses nested
/// arrays); the limit keeps a hostile file from recursing the reader off its stack.
const MAX_NESTING: usize = 8;

/// Value type ids (`enum gguf_type`).
mod ty {
    pub const U8: u32 = 0;
    pub const I8: u32 = 1;
    pub const U16: u32 = 2;
    pub const I16: u32 = 3;
    pub const U32: u32 = 4;
    pub const I32: u32 = 5;
    pub const F32: u32 = 6;
    pub const BOOL: u32 = 7;
    pub const STRING: u32 = 8;
    pub const ARRAY: u32 = 9;
    pub const U64: u32 = 10;
    pub const I64: u32 = 11;
    pub const F64: u32 = 12;
}

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    /// The stored bytes. The spec says UTF-8, but ggml does not check, and vocabularies of
    /// byte-level BPE hold pieces that are not UTF-8 on their own; [`GgufFile::get_str`]
    /// checks.
    String(Vec<u8>),
    Array(MetaArray),
    U64(u64),
    I64(i64),
    F64(f64),
}

/// A metadata array: its elements, which all have one type (kept for empty arrays too).
#[derive(Clone, Debug, PartialEq)]
pub enum MetaArray {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    F32(Vec<f32>),
    Bool(Vec<bool>),
    /// Raw bytes, as [`MetaValue::String`].
    String(Vec<Vec<u8>>),
    /// Arrays of arrays; each inner array has its own element type.
    Array(Vec<MetaArray>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F64(Vec<f64>),
}

impl MetaValue {
    /// A string value.
    pub fn str(s: &str) -> Self {
        Self::String(s.as_bytes().to_vec())
    }

    /// An array of strings.
    pub fn strs<'a>(items: impl IntoIterator<Item = &'a str>) -> Self {
        Self::Array(MetaArray::strs(items))
    }

    fn type_id(&self) -> u32 {
        match self {
            Self::U8(_) => ty::U8,
            Self::I8(_) => ty::I8,
            Self::U16(_) => ty::U16,
            Self::I16(_) => ty::I16,
            Self::U32(_) => ty::U32,
            Self::I32(_) => ty::I32,
            Self::F32(_) => ty::F32,
            Self::Bool(_) => ty::BOOL,
            Self::String(_) => ty::STRING,
            Self::Array(_) => ty::ARRAY,
            Self::U64(_) => ty::U64,
            Self::I64(_) => ty::I64,
            Self::F64(_) => ty::F64,
        }
    }

    /// The type's name, for messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Array(_) => "array",
            v => type_name(v.type_id()),
        }
    }

    /// The value of an integer of any width.
    fn as_int(&self) -> Option<i128> {
        Some(match *self {
            Self::U8(v) => v.into(),
            Self::I8(v) => v.into(),
            Self::U16(v) => v.into(),
            Self::I16(v) => v.into(),
            Self::U32(v) => v.into(),
            Self::I32(v) => v.into(),
            Self::U64(v) => v.into(),
            Self::I64(v) => v.into(),
            _ => return None,
        })
    }
}

impl MetaArray {
    /// A string array.
    pub fn strs<'a>(items: impl IntoIterator<Item = &'a str>) -> Self {
        Self::String(items.into_iter().map(|s| s.as_bytes().to_vec()).collect())
    }

    fn elem_type_id(&self) -> u32 {
        match self {
            Self::U8(_) => ty::U8,
            Self::I8(_) => ty::I8,
            Self::U16(_) => ty::U16,
            Self::I16(_) => ty::I16,
            Self::U32(_) => ty::U32,
            Self::I32(_) => ty::I32,
            Self::F32(_) => ty::F32,
            Self::Bool(_) => ty::BOOL,
            Self::String(_) => ty::STRING,
            Self::Array(_) => ty::ARRAY,
            Self::U64(_) => ty::U64,
            Self::I64(_) => ty::I64,
            Self::F64(_) => ty::F64,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Self::U8(v) => v.len(),
            Self::I8(v) => v.len(),
            Self::U16(v) => v.len(),
            Self::I16(v) => v.len(),
            Self::U32(v) => v.len(),
            Self::I32(v) => v.len(),
            Self::F32(v) => v.len(),
            Self::Bool(v) => v.len(),
            Self::String(v) => v.len(),
            Self::Array(v) => v.len(),
            Self::U64(v) => v.len(),
            Self::I64(v) => v.len(),
            Self::F64(v) => v.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn type_name(id: u32) -> &'static str {
    match id {
        ty::U8 => "u8",
        ty::I8 => "i8",
        ty::U16 => "u16",
        ty::I16 => "i16",
        ty::U32 => "u32",
        ty::I32 => "i32",
        ty::F32 => "f32",
        ty::BOOL => "bool",
        ty::STRING => "string",
        ty::ARRAY => "array",
        ty::U64 => "u64",
        ty::I64 => "i64",
        ty::F64 => "f64",
        _ => "unknown",
    }
}

/// A GGUF file, mapped: metadata parsed, tensors located, data borrowed on demand.
pub struct GgufFile {
    /// The format version (2 or 3).
    pub version: u32,
    /// The metadata in file order.
    pub metadata: Vec<(String, MetaValue)>,
    /// The tensors in file order.
    pub tensors: Vec<TensorInfo>,
    /// The data alignment.
    pub alignment: usize,
    /// Where the data section starts.
    pub data_offset: usize,
    file: MappedFile,
    index: HashMap<String, usize>,
}

/// A parsed file, less its map.
struct Parsed {
    version: u32,
    metadata: Vec<(String, MetaValue)>,
    tensors: Vec<TensorInfo>,
    alignment: usize,
    data_offset: usize,
    index: HashMap<String, usize>,
}

impl GgufFile {
    /// Maps and parses `path`. A file without tensors (a vocabulary-only file) is fine.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, GgmlError> {
        let path = path.as_ref();
        let file = MappedFile::open(path)?;
        let p = parse(file.bytes(), path)?;
        Ok(Self {
            version: p.version,
            metadata: p.metadata,
            tensors: p.tensors,
            alignment: p.alignment,
            data_offset: p.data_offset,
            file,
            index: p.index,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// The tensor called `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.index.get(name).and_then(|&i| self.tensors.get(i))
    }

    /// The bytes of tensor `t` (one of [`GgufFile::tensors`]), borrowed from the map.
    pub fn data(&self, t: &TensorInfo) -> &[u8] {
        self.file.data(t)
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    fn meta_error(&self, key: &str, message: String) -> GgmlError {
        GgmlError::new(
            self.path(),
            GgmlErrorKind::Metadata {
                key: key.to_owned(),
                message,
            },
        )
    }

    fn need(&self, key: &str) -> Result<&MetaValue, GgmlError> {
        self.get(key)
            .ok_or_else(|| self.meta_error(key, "missing".into()))
    }

    fn wrong_type(&self, key: &str, v: &MetaValue, want: &str) -> GgmlError {
        self.meta_error(key, format!("is {}, expected {want}", v.type_name()))
    }

    /// An integer of any stored width whose value fits `T`: converters store the same counts
    /// as u32 or i32 or u64.
    fn int<T: TryFrom<i128>>(&self, key: &str, want: &str) -> Result<T, GgmlError> {
        let v = self.need(key)?;
        let n = v.as_int().ok_or_else(|| self.wrong_type(key, v, want))?;
        T::try_from(n).map_err(|_| self.meta_error(key, format!("{n} does not fit {want}")))
    }

    /// `key` as a u32 (from any integer type whose value fits).
    pub fn get_u32(&self, key: &str) -> Result<u32, GgmlError> {
        self.int(key, "u32")
    }

    /// `key` as an i32 (from any integer type whose value fits).
    pub fn get_i32(&self, key: &str) -> Result<i32, GgmlError> {
        self.int(key, "i32")
    }

    /// `key` as a u64 (from any integer type whose value fits).
    pub fn get_u64(&self, key: &str) -> Result<u64, GgmlError> {
        self.int(key, "u64")
    }

    /// `key`, an f32.
    pub fn get_f32(&self, key: &str) -> Result<f32, GgmlError> {
        match self.need(key)? {
            MetaValue::F32(v) => Ok(*v),
            v => Err(self.wrong_type(key, v, "f32")),
        }
    }

    /// `key`, a bool.
    pub fn get_bool(&self, key: &str) -> Result<bool, GgmlError> {
        match self.need(key)? {
            MetaValue::Bool(v) => Ok(*v),
            v => Err(self.wrong_type(key, v, "bool")),
        }
    }

    /// `key`, a UTF-8 string.
    pub fn get_str(&self, key: &str) -> Result<&str, GgmlError> {
        match self.need(key)? {
            MetaValue::String(s) => {
                std::str::from_utf8(s).map_err(|_| self.meta_error(key, "is not UTF-8".into()))
            }
            v => Err(self.wrong_type(key, v, "string")),
        }
    }

    /// `key`, an array of any type.
    pub fn get_array(&self, key: &str) -> Result<&MetaArray, GgmlError> {
        match self.need(key)? {
            MetaValue::Array(a) => Ok(a),
            v => Err(self.wrong_type(key, v, "array")),
        }
    }

    fn wrong_array(&self, key: &str, a: &MetaArray, want: &str) -> GgmlError {
        let elem = type_name(a.elem_type_id());
        self.meta_error(key, format!("is an array of {elem}, expected {want}"))
    }

    /// `key`, an array of UTF-8 strings.
    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>, GgmlError> {
        match self.get_array(key)? {
            MetaArray::String(items) => items
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    std::str::from_utf8(s)
                        .map_err(|_| self.meta_error(key, format!("item {i} is not UTF-8")))
                })
                .collect(),
            a => Err(self.wrong_array(key, a, "an array of string")),
        }
    }

    /// `key`, an array of strings as raw bytes (vocabularies whose pieces need not be UTF-8).
    pub fn get_bytes_array(&self, key: &str) -> Result<&[Vec<u8>], GgmlError> {
        match self.get_array(key)? {
            MetaArray::String(items) => Ok(items),
            a => Err(self.wrong_array(key, a, "an array of string")),
        }
    }

    /// `key`, an array of f32.
    pub fn get_f32_array(&self, key: &str) -> Result<&[f32], GgmlError> {
        match self.get_array(key)? {
            MetaArray::F32(items) => Ok(items),
            a => Err(self.wrong_array(key, a, "an array of f32")),
        }
    }

    /// `key`, an array of i32.
    pub fn get_i32_array(&self, key: &str) -> Result<&[i32], GgmlError> {
        match self.get_array(key)? {
            MetaArray::I32(items) => Ok(items),
            a => Err(self.wrong_array(key, a, "an array of i32")),
        }
    }

    /// `key`, an array of u32.
    pub fn get_u32_array(&self, key: &str) -> Result<&[u32], GgmlError> {
        match self.get_array(key)? {
            MetaArray::U32(items) => Ok(items),
            a => Err(self.wrong_array(key, a, "an array of u32")),
        }
    }
}

fn parse(bytes: &[u8], path: &Path) -> Result<Parsed, GgmlError> {
    let mut cur = Cursor::new(bytes, path);
    if bytes.len() < 4 || cur.u32("magic")? != MAGIC {
        let mut found = [0; 4];
        let n = bytes.len().min(4);
        found[..n].copy_from_slice(&bytes[..n]);
        return Err(cur.error(GgmlErrorKind::BadMagic {
            format: "GGUF",
            found: u32::from_le_bytes(found),
            expected: MAGIC,
        }));
    }
    let version = cur.u32("version")?;
    if !(2..=3).contains(&version) {
        return Err(cur.error(GgmlErrorKind::UnsupportedVersion(version)));
    }
    let n_tensors = cur.u64("tensor count")?;
    let n_kv = cur.u64("metadata count")?;
    // The smallest entry: an empty key (refused below, with its own message), a type and a
    // u8; the smallest tensor info: an empty name, n_dims 0, type, offset.
    let n_kv = cur.count(n_kv.into(), 8 + 4 + 1, "metadata count")?;

    let mut metadata = Vec::with_capacity(n_kv);
    let mut keys = HashSet::new();
    for _ in 0..n_kv {
        let key = read_name(&mut cur, "metadata key")?;
        if key.is_empty() {
            return Err(cur.error(GgmlErrorKind::Invalid("empty metadata key".into())));
        }
        if !keys.insert(key.clone()) {
            return Err(cur.error(GgmlErrorKind::DuplicateKey(key)));
        }
        let t = cur.u32("metadata value type")?;
        let value = read_value(&mut cur, t, &key, 0)?;
        metadata.push((key, value));
    }

    let alignment = match metadata.iter().find(|(k, _)| k == ALIGNMENT_KEY) {
        None => DEFAULT_ALIGNMENT,
        Some((_, MetaValue::U32(a))) if a.is_power_of_two() => *a as usize,
        Some((_, v)) => {
            return Err(cur.error(GgmlErrorKind::Metadata {
                key: ALIGNMENT_KEY.into(),
                message: format!("{v:?} is not a u32 power of two"),
            }))
        }
    };

    let n_tensors = cur.count(n_tensors.into(), 8 + 4 + 4 + 8, "tensor count")?;
    // (name, dims, type, offset in the data section)
    let mut infos = Vec::with_capacity(n_tensors);
    for _ in 0..n_tensors {
        let start = cur.pos();
        let name = read_name(&mut cur, "tensor name")?;
        let n_dims = cur.u32("tensor n_dims")?;
        if u64::from(n_dims) > MAX_DIMS {
            return Err(cur.error(GgmlErrorKind::BadCount {
                what: format!("n_dims of tensor {name:?}"),
                value: n_dims.into(),
                max: MAX_DIMS,
            }));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            let d = cur.u64("tensor sizes")?;
            // ggml's sizes are int64.
            dims.push(
                usize::try_from(d)
                    .ok()
                    .filter(|&d| d as u64 <= i64::MAX as u64)
                    .ok_or_else(|| {
                        cur.error(GgmlErrorKind::BadCount {
                            what: format!("a size of tensor {name:?}"),
                            value: d.into(),
                            max: i64::MAX as u64,
                        })
                    })?,
            );
        }
        let id = cur.u32("tensor type")?;
        let t = GgmlType::from_id(id).ok_or_else(|| {
            cur.error(GgmlErrorKind::UnknownType {
                tensor: name.clone(),
                id: id.into(),
            })
        })?;
        let offset = cur.u64("tensor offset")?;
        if name.is_empty() {
            return Err(cur.error(GgmlErrorKind::BadTensor {
                tensor: name,
                message: format!("the tensor at byte {start} has an empty name"),
            }));
        }
        infos.push((name, dims, t, offset));
    }

    // The data section starts at the next multiple of the alignment (ggml seeks there only
    // when there are tensors; writers pad regardless).
    let data_offset = align_up(cur.pos(), alignment).unwrap_or(usize::MAX);
    if !infos.is_empty() {
        cur.seek(data_offset, "padding before the tensor data")?;
    }
    let mut tensors = Vec::with_capacity(infos.len());
    let mut index = HashMap::with_capacity(infos.len());
    for (name, dims, t, offset) in infos {
        let bad = |message: String| {
            cur.error(GgmlErrorKind::BadTensor {
                tensor: name.clone(),
                message,
            })
        };
        let bytes = tensor_bytes(&dims, t).map_err(bad)?;
        if offset % alignment as u64 != 0 {
            return Err(bad(format!(
                "data offset {offset} is not a multiple of the alignment {alignment}"
            )));
        }
        let start = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(data_offset))
            .filter(|s| {
                s.checked_add(bytes)
                    .is_some_and(|end| end <= bytes_len(&cur))
            })
            .ok_or_else(|| {
                bad(format!(
                    "{bytes} bytes of {t} data (sizes {dims:?}) at data offset {offset} run \
                     past the end of the file"
                ))
            })?;
        if index.insert(name.clone(), tensors.len()).is_some() {
            return Err(cur.error(GgmlErrorKind::DuplicateTensor(name)));
        }
        tensors.push(TensorInfo {
            name,
            dims,
            ty: t,
            offset: start,
            bytes,
        });
    }
    Ok(Parsed {
        version,
        metadata,
        tensors,
        alignment,
        data_offset,
        index,
    })
}

/// The length of the file under `cur`.
fn bytes_len(cur: &Cursor) -> usize {
    cur.pos() + cur.remaining()
}

/// A length-prefixed name that must be UTF-8.
fn read_name(cur: &mut Cursor, what: &'static str) -> Result<String, GgmlError> {
    let len = cur.u64(what)?;
    let len = cur.count(len.into(), 1, &format!("{what} length"))?;
    cur.utf8(len, what).map(str::to_owned)
}

fn read_string(cur: &mut Cursor, key: &str) -> Result<Vec<u8>, GgmlError> {
    let len = cur.u64("string length")?;
    let len = cur.count(len.into(), 1, &format!("string length in {key:?}"))?;
    Ok(cur.take(len, "string")?.to_vec())
}

fn read_bool(cur: &mut Cursor, key: &str) -> Result<bool, GgmlError> {
    match cur.array::<1>("bool")? {
        [0] => Ok(false),
        [1] => Ok(true),
        [b] => Err(cur.error(GgmlErrorKind::Metadata {
            key: key.to_owned(),
            message: format!("bool stored as {b}"),
        })),
    }
}

fn unknown_type(cur: &Cursor, key: &str, t: u32) -> GgmlError {
    cur.error(GgmlErrorKind::Metadata {
        key: key.to_owned(),
        message: format!("unknown value type {t}"),
    })
}

fn read_value(cur: &mut Cursor, t: u32, key: &str, depth: usize) -> Result<MetaValue, GgmlError> {
    Ok(match t {
        ty::U8 => MetaValue::U8(u8::from_le_bytes(cur.array("u8")?)),
        ty::I8 => MetaValue::I8(i8::from_le_bytes(cur.array("i8")?)),
        ty::U16 => MetaValue::U16(u16::from_le_bytes(cur.array("u16")?)),
        ty::I16 => MetaValue::I16(i16::from_le_bytes(cur.array("i16")?)),
        ty::U32 => MetaValue::U32(cur.u32("u32")?),
        ty::I32 => MetaValue::I32(cur.i32("i32")?),
        ty::F32 => MetaValue::F32(f32::from_le_bytes(cur.array("f32")?)),
        ty::BOOL => MetaValue::Bool(read_bool(cur, key)?),
        ty::STRING => MetaValue::String(read_string(cur, key)?),
        ty::ARRAY => MetaValue::Array(read_array(cur, key, depth + 1)?),
        ty::U64 => MetaValue::U64(cur.u64("u64")?),
        ty::I64 => MetaValue::I64(i64::from_le_bytes(cur.array("i64")?)),
        ty::F64 => MetaValue::F64(f64::from_le_bytes(cur.array("f64")?)),
        _ => return Err(unknown_type(cur, key, t)),
    })
}

/// `n` fixed-size values, read in one piece (`n` is already checked against the file).
fn read_vec<const N: usize, T>(
    cur: &mut Cursor,
    n: usize,
    f: fn([u8; N]) -> T,
) -> Result<Vec<T>, GgmlError> {
    let bytes = cur.take(n * N, "array")?;
    Ok(bytes
        .chunks_exact(N)
        .map(|c| {
            let mut a = [0; N];
            a.copy_from_slice(c);
            f(a)
        })
        .collect())
}

fn read_array(cur: &mut Cursor, key: &str, depth: usize) -> Result<MetaArray, GgmlError> {
    if depth > MAX_NESTING {
        return Err(cur.error(GgmlErrorKind::Metadata {
            key: key.to_owned(),
            message: format!("arrays nested deeper than {MAX_NESTING}"),
        }));
    }
    let t = cur.u32("array type")?;
    let n = cur.u64("array length")?;
    let min_item_bytes = match t {
        ty::U8 | ty::I8 | ty::BOOL => 1,
        ty::U16 | ty::I16 => 2,
        ty::U32 | ty::I32 | ty::F32 => 4,
        // A string is at least its length; an array its type and count.
        ty::U64 | ty::I64 | ty::F64 | ty::STRING => 8,
        ty::ARRAY => 12,
        _ => return Err(unknown_type(cur, key, t)),
    };
    let n = cur.count(
        n.into(),
        min_item_bytes,
        &format!("length of array {key:?}"),
    )?;
    Ok(match t {
        ty::U8 => MetaArray::U8(read_vec(cur, n, u8::from_le_bytes)?),
        ty::I8 => MetaArray::I8(read_vec(cur, n, i8::from_le_bytes)?),
        ty::U16 => MetaArray::U16(read_vec(cur, n, u16::from_le_bytes)?),
        ty::I16 => MetaArray::I16(read_vec(cur, n, i16::from_le_bytes)?),
        ty::U32 => MetaArray::U32(read_vec(cur, n, u32::from_le_bytes)?),
        ty::I32 => MetaArray::I32(read_vec(cur, n, i32::from_le_bytes)?),
        ty::F32 => MetaArray::F32(read_vec(cur, n, f32::from_le_bytes)?),
        ty::U64 => MetaArray::U64(read_vec(cur, n, u64::from_le_bytes)?),
        ty::I64 => MetaArray::I64(read_vec(cur, n, i64::from_le_bytes)?),
        ty::F64 => MetaArray::F64(read_vec(cur, n, f64::from_le_bytes)?),
        ty::BOOL => MetaArray::Bool(
            (0..n)
                .map(|_| read_bool(cur, key))
                .collect::<Result<_, _>>()?,
        ),
        ty::STRING => MetaArray::String(
            (0..n)
                .map(|_| read_string(cur, key))
                .collect::<Result<_, _>>()?,
        ),
        _ => MetaArray::Array(
            (0..n)
                .map(|_| read_array(cur, key, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
    })
}

/// Writes a GGUF file (version 3): metadata and tensor infos at [`GgufWriter::create`], with
/// every tensor's offset computed from the specs up front, then the data one tensor per
/// [`GgufWriter::write_tensor`], so that a model is never held twice in memory. The bytes are
/// those of the `gguf` Python package's `GGUFWriter` (each tensor padded to the alignment, the
/// last one too). Call [`GgufWriter::finish`]: it checks that every tensor was written.
pub struct GgufWriter {
    path: PathBuf,
    out: BufWriter<File>,
    /// Tensors still to be written, in file order: (name, bytes).
    pending: std::collections::VecDeque<(String, usize)>,
    alignment: usize,
}

impl GgufWriter {
    /// Checks `metadata` and `tensors`, creates `path` and writes everything but the tensor
    /// data. The alignment is `metadata`'s `general.alignment` (a u32 power of two), 32
    /// without one.
    pub fn create(
        path: impl AsRef<Path>,
        metadata: &[(String, MetaValue)],
        tensors: &[TensorSpec],
    ) -> Result<Self, GgmlError> {
        let path = path.as_ref();
        let err = |kind| GgmlError::new(path, kind);
        let mut keys = HashSet::new();
        for (key, _) in metadata {
            if key.is_empty() {
                return Err(err(GgmlErrorKind::Invalid("empty metadata key".into())));
            }
            if !keys.insert(key.as_str()) {
                return Err(err(GgmlErrorKind::DuplicateKey(key.clone())));
            }
        }
        let alignment = match metadata.iter().find(|(k, _)| k == ALIGNMENT_KEY) {
            None => DEFAULT_ALIGNMENT,
            Some((_, MetaValue::U32(a))) if a.is_power_of_two() => *a as usize,
            Some((_, v)) => {
                return Err(err(GgmlErrorKind::Metadata {
                    key: ALIGNMENT_KEY.into(),
                    message: format!("{v:?} is not a u32 power of two"),
                }))
            }
        };

        let mut head = Vec::new();
        head.extend(MAGIC.to_le_bytes());
        head.extend(VERSION.to_le_bytes());
        head.extend((tensors.len() as u64).to_le_bytes());
        head.extend((metadata.len() as u64).to_le_bytes());
        for (key, value) in metadata {
            put_string(&mut head, key.as_bytes());
            head.extend(value.type_id().to_le_bytes());
            put_value(&mut head, value);
        }
        let mut pending = std::collections::VecDeque::with_capacity(tensors.len());
        let mut names = HashSet::new();
        let mut offset = 0usize;
        for t in tensors {
            let bad = |message: String| {
                err(GgmlErrorKind::BadTensor {
                    tensor: t.name.clone(),
                    message,
                })
            };
            if t.name.is_empty() {
                return Err(bad("empty name".into()));
            }
            if !names.insert(t.name.as_str()) {
                return Err(err(GgmlErrorKind::DuplicateTensor(t.name.clone())));
            }
            if t.name.len() >= MAX_NAME {
                return Err(bad(format!(
                    "a name of {} bytes, ggml's limit is {}",
                    t.name.len(),
                    MAX_NAME - 1
                )));
            }
            if t.dims.len() as u64 > MAX_DIMS {
                return Err(bad(format!("{} dimensions, ggml has 4", t.dims.len())));
            }
            let bytes = tensor_bytes(&t.dims, t.ty).map_err(bad)?;
            put_string(&mut head, t.name.as_bytes());
            head.extend((t.dims.len() as u32).to_le_bytes());
            for &d in &t.dims {
                head.extend((d as u64).to_le_bytes());
            }
            head.extend(t.ty.id().to_le_bytes());
            head.extend((offset as u64).to_le_bytes());
            offset = align_up(bytes, alignment)
                .and_then(|b| offset.checked_add(b))
                .ok_or_else(|| bad("the data section overflows".into()))?;
            pending.push_back((t.name.clone(), bytes));
        }
        let padded = align_up(head.len(), alignment).unwrap_or(head.len());
        head.resize(padded, 0);

        let io = |source| {
            err(GgmlErrorKind::Io {
                action: "write",
                source,
            })
        };
        let mut out = BufWriter::new(File::create(path).map_err(io)?);
        out.write_all(&head).map_err(io)?;
        Ok(Self {
            path: path.to_owned(),
            out,
            pending,
            alignment,
        })
    }

    /// Writes the data of the next tensor, `name` (the specs' order), exactly as the file
    /// stores it (rows of `dims[0]` values of its type).
    pub fn write_tensor(&mut self, name: &str, data: &[u8]) -> Result<(), GgmlError> {
        let err = |kind| GgmlError::new(&self.path, kind);
        let Some((next, bytes)) = self.pending.front() else {
            return Err(err(GgmlErrorKind::Invalid(format!(
                "tensor {name:?} written after all tensors"
            ))));
        };
        if next != name {
            return Err(err(GgmlErrorKind::Invalid(format!(
                "tensor {name:?} written where {next:?} comes"
            ))));
        }
        if data.len() != *bytes {
            return Err(err(GgmlErrorKind::BadTensor {
                tensor: name.to_owned(),
                message: format!("{} bytes of data, its spec needs {bytes}", data.len()),
            }));
        }
        let pad = align_up(data.len(), self.alignment).unwrap_or(data.len()) - data.len();
        let io = |source| {
            err(GgmlErrorKind::Io {
                action: "write",
                source,
            })
        };
        self.out.write_all(data).map_err(io)?;
        self.out.write_all(&vec![0; pad]).map_err(io)?;
        self.pending.pop_front();
        Ok(())
    }

    /// Checks that every tensor was written and flushes the file to the OS.
    pub fn finish(mut self) -> Result<(), GgmlError> {
        if let Some((name, _)) = self.pending.front() {
            return Err(GgmlError::new(
                &self.path,
                GgmlErrorKind::Invalid(format!(
                    "finished before tensor {name:?} (and {} more) was written",
                    self.pending.len() - 1
                )),
            ));
        }
        self.out.flush().map_err(|source| {
            GgmlError::new(
                &self.path,
                GgmlErrorKind::Io {
                    action: "write",
                    source,
                },
            )
        })
    }
}

fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s);
}

/// A value without its type id.
fn put_value(out: &mut Vec<u8>, v: &MetaValue) {
    match v {
        MetaValue::U8(v) => out.extend(v.to_le_bytes()),
        MetaValue::I8(v) => out.extend(v.to_le_bytes()),
        MetaValue::U16(v) => out.extend(v.to_le_bytes()),
        MetaValue::I16(v) => out.extend(v.to_le_bytes()),
        MetaValue::U32(v) => out.extend(v.to_le_bytes()),
        MetaValue::I32(v) => out.extend(v.to_le_bytes()),
        MetaValue::F32(v) => out.extend(v.to_le_bytes()),
        MetaValue::Bool(v) => out.push(u8::from(*v)),
        MetaValue::String(s) => put_string(out, s),
        MetaValue::Array(a) => put_array(out, a),
        MetaValue::U64(v) => out.extend(v.to_le_bytes()),
        MetaValue::I64(v) => out.extend(v.to_le_bytes()),
        MetaValue::F64(v) => out.extend(v.to_le_bytes()),
    }
}

/// An array: element type, count, elements.
fn put_array(out: &mut Vec<u8>, a: &MetaArray) {
    out.extend(a.elem_type_id().to_le_bytes());
    out.extend((a.len() as u64).to_le_bytes());
    match a {
        MetaArray::U8(v) => out.extend(v),
        MetaArray::I8(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
        MetaArray::U16(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
        MetaArray::I16(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
        MetaArray::U32(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
        MetaArray::I32(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
        MetaArray::F32(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
        MetaArray::Bool(v) => out.extend(v.iter().map(|&b| u8::from(b))),
        MetaArray::String(v) => v.iter().for_each(|s| put_string(out, s)),
        MetaArray::Array(v) => v.iter().for_each(|inner| put_array(out, inner)),
        MetaArray::U64(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
        MetaArray::I64(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
        MetaArray::F64(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("voxide-gguf-{}-{name}", std::process::id()))
    }

    fn kind(bytes: &[u8]) -> GgmlErrorKind {
        match parse(bytes, Path::new("m.gguf")) {
            Ok(_) => panic!("parsed"),
            Err(e) => {
                let text = e.to_string();
                assert!(
                    text.starts_with("m.gguf: ") && !text.contains('\n'),
                    "{text}"
                );
                e.kind
            }
        }
    }

    fn metadata() -> Vec<(String, MetaValue)> {
        let kv = |k: &str, v| (k.to_owned(), v);
        vec![
            kv("general.architecture", MetaValue::str("whisper")),
            kv("t.u8", MetaValue::U8(200)),
            kv("t.i8", MetaValue::I8(-100)),
            kv("t.u16", MetaValue::U16(60_000)),
            kv("t.i16", MetaValue::I16(-30_000)),
            kv("t.u32", MetaValue::U32(4_000_000_000)),
            kv("t.i32", MetaValue::I32(-2_000_000_000)),
            kv("t.f32", MetaValue::F32(0.25)),
            kv("t.bool", MetaValue::Bool(true)),
            kv("t.string", MetaValue::str("héllo")),
            // A byte-level BPE piece: half of a UTF-8 character.
            kv("t.bytes", MetaValue::String(vec![0xe2, 0x80])),
            kv("t.u64", MetaValue::U64(1 << 40)),
            kv("t.i64", MetaValue::I64(-(1 << 40))),
            kv("t.f64", MetaValue::F64(std::f64::consts::PI)),
            kv("t.strs", MetaValue::strs(["a", "", "日本"])),
            kv("t.f32s", MetaValue::Array(MetaArray::F32(vec![1.5, -2.0]))),
            kv("t.i32s", MetaValue::Array(MetaArray::I32(vec![-1, 7]))),
            kv("t.u32s", MetaValue::Array(MetaArray::U32(vec![3]))),
            kv(
                "t.bools",
                MetaValue::Array(MetaArray::Bool(vec![true, false])),
            ),
            kv("t.u8s", MetaValue::Array(MetaArray::U8(vec![]))),
            kv("t.i8s", MetaValue::Array(MetaArray::I8(vec![-1]))),
            kv("t.u16s", MetaValue::Array(MetaArray::U16(vec![1, 2]))),
            kv("t.i16s", MetaValue::Array(MetaArray::I16(vec![-3]))),
            kv("t.u64s", MetaValue::Array(MetaArray::U64(vec![u64::MAX]))),
            kv("t.i64s", MetaValue::Array(MetaArray::I64(vec![i64::MIN]))),
            kv("t.f64s", MetaValue::Array(MetaArray::F64(vec![0.1]))),
            kv(
                "t.nested",
                MetaValue::Array(MetaArray::Array(vec![
                    MetaArray::I32(vec![1, 2]),
                    MetaArray::strs(["x"]),
                    MetaArray::Array(vec![]),
                ])),
            ),
        ]
    }

    fn tensors() -> Vec<(TensorSpec, Vec<u8>)> {
        let bytes = |n: usize, seed: u8| (0..n).map(|i| (i as u8).wrapping_mul(seed)).collect();
        vec![
            // 12 bytes, padded to 32.
            (TensorSpec::new("a.f32", &[3], GgmlType::F32), bytes(12, 3)),
            // f16 [5, 2] (PyTorch [2, 5]): 20 bytes.
            (
                TensorSpec::new("b.f16", &[5, 2], GgmlType::F16),
                bytes(20, 5),
            ),
            // q8_0: 2 rows of one 34-byte block.
            (
                TensorSpec::new("c.q8_0", &[32, 2], GgmlType::Q8_0),
                bytes(68, 7),
            ),
            (TensorSpec::new("d.scalar", &[], GgmlType::F32), bytes(4, 9)),
        ]
    }

    fn write(path: &Path, metadata: &[(String, MetaValue)], tensors: &[(TensorSpec, Vec<u8>)]) {
        let specs: Vec<TensorSpec> = tensors.iter().map(|(s, _)| s.clone()).collect();
        let mut w = GgufWriter::create(path, metadata, &specs).unwrap();
        for (spec, data) in tensors {
            w.write_tensor(&spec.name, data).unwrap();
        }
        w.finish().unwrap();
    }

    #[test]
    fn round_trips_every_value_type() {
        let path = temp_path("round-trip.gguf");
        let (metadata, tensors) = (metadata(), tensors());
        write(&path, &metadata, &tensors);
        let f = GgufFile::open(&path).unwrap();
        assert_eq!((f.version, f.alignment), (3, 32));
        assert_eq!(f.metadata, metadata);
        assert_eq!(f.data_offset % 32, 0);
        assert_eq!(f.tensors.len(), tensors.len());
        for (t, (spec, data)) in f.tensors.iter().zip(&tensors) {
            assert_eq!(t.spec(), *spec);
            assert_eq!(t.offset % 32, 0, "{}", t.name);
            assert_eq!(f.data(t), &data[..], "{}", t.name);
            assert_eq!(f.tensor(&t.name), Some(t));
        }
        assert_eq!(f.tensor("b.f16").unwrap().shape(), [2, 5]);
        // The file ends with the last tensor's padding.
        let last = f.tensors.last().unwrap();
        let len = std::fs::metadata(&path).unwrap().len() as usize;
        assert_eq!(len, last.offset + 32);

        assert_eq!(f.get_str("general.architecture").unwrap(), "whisper");
        assert_eq!(f.get_u32("t.u32").unwrap(), 4_000_000_000);
        assert_eq!(f.get_u32("t.u8").unwrap(), 200);
        assert_eq!(f.get_i32("t.i16").unwrap(), -30_000);
        assert_eq!(f.get_u64("t.u64").unwrap(), 1 << 40);
        assert_eq!(f.get_f32("t.f32").unwrap(), 0.25);
        assert!(f.get_bool("t.bool").unwrap());
        assert_eq!(f.get_str_array("t.strs").unwrap(), ["a", "", "日本"]);
        assert_eq!(f.get_bytes_array("t.strs").unwrap()[2], "日本".as_bytes());
        assert_eq!(f.get_f32_array("t.f32s").unwrap(), [1.5, -2.0]);
        assert_eq!(f.get_i32_array("t.i32s").unwrap(), [-1, 7]);
        assert_eq!(f.get_u32_array("t.u32s").unwrap(), [3]);
        assert_eq!(f.get_array("t.nested").unwrap().len(), 3);
        assert!(f.get_array("t.u8s").unwrap().is_empty());

        // Getter errors name the file and the key.
        let e = |r: Result<(), GgmlError>| r.unwrap_err().to_string();
        let p = path.display();
        assert_eq!(
            e(f.get_u32("nope").map(drop)),
            format!("{p}: metadata \"nope\": missing")
        );
        assert_eq!(
            e(f.get_u32("t.i32").map(drop)),
            format!("{p}: metadata \"t.i32\": -2000000000 does not fit u32")
        );
        assert_eq!(
            e(f.get_f32("t.string").map(drop)),
            format!("{p}: metadata \"t.string\": is string, expected f32")
        );
        assert!(e(f.get_str("t.bytes").map(drop)).ends_with("is not UTF-8"));
        assert!(e(f.get_f32_array("t.i32s").map(drop))
            .ends_with("is an array of i32, expected an array of f32"));
        assert!(f.get_str_array("t.f32").is_err());
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn honours_general_alignment() {
        let path = temp_path("align.gguf");
        let metadata = vec![(ALIGNMENT_KEY.to_owned(), MetaValue::U32(64))];
        write(&path, &metadata, &tensors());
        let f = GgufFile::open(&path).unwrap();
        assert_eq!(f.alignment, 64);
        assert_eq!(f.data_offset % 64, 0);
        for t in &f.tensors {
            assert_eq!(t.offset % 64, 0);
        }
        std::fs::remove_file(&path).unwrap();

        for bad in [MetaValue::U32(48), MetaValue::U32(0), MetaValue::U64(32)] {
            let metadata = vec![(ALIGNMENT_KEY.to_owned(), bad)];
            assert!(GgufWriter::create(&path, &metadata, &[]).is_err());
        }
    }

    /// `tests/fixtures/ggml/tiny.gguf`, written by the `gguf` Python package
    /// (tools/reference/gguf_fixture.py).
    #[test]
    fn reads_the_python_gguf_fixture() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/ggml/tiny.gguf");
        let f = GgufFile::open(&path).unwrap();
        assert_eq!((f.version, f.alignment), (3, 32));
        assert_eq!(f.get_str("general.architecture").unwrap(), "tiny");
        assert_eq!(f.get("test.u8"), Some(&MetaValue::U8(200)));
        assert_eq!(f.get("test.i8"), Some(&MetaValue::I8(-100)));
        assert_eq!(f.get("test.u16"), Some(&MetaValue::U16(60_000)));
        assert_eq!(f.get("test.i16"), Some(&MetaValue::I16(-30_000)));
        assert_eq!(f.get("test.u32"), Some(&MetaValue::U32(4_000_000_000)));
        assert_eq!(f.get("test.i32"), Some(&MetaValue::I32(-2_000_000_000)));
        assert_eq!(f.get("test.f32"), Some(&MetaValue::F32(0.25)));
        assert_eq!(f.get("test.u64"), Some(&MetaValue::U64(1 << 40)));
        assert_eq!(f.get("test.i64"), Some(&MetaValue::I64(-(1 << 40))));
        assert_eq!(
            f.get("test.f64"),
            Some(&MetaValue::F64(std::f64::consts::PI))
        );
        assert!(f.get_bool("test.bool").unwrap());
        assert_eq!(f.get_str("test.string").unwrap(), "héllo");
        assert_eq!(
            f.get_str_array("test.strings").unwrap(),
            ["a", "bc", "日本"]
        );
        assert_eq!(f.get_f32_array("test.f32s").unwrap(), [1.5, -2.0]);
        assert_eq!(
            f.get_array("test.bytes").unwrap(),
            &MetaArray::U8(vec![0, 1, 255])
        );
        assert_eq!(
            f.get_array("test.nested").unwrap(),
            &MetaArray::Array(vec![MetaArray::I32(vec![1, 2]), MetaArray::I32(vec![3])])
        );

        let names: Vec<&str> = f.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            ["f32.matrix", "f32.vector", "f16.vector", "q8_0.matrix"]
        );
        let f32s = |t: &TensorInfo| -> Vec<f32> {
            f.data(t)
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        };
        // np.arange(12).reshape(3, 4): ggml sizes [4, 3].
        let m = f.tensor("f32.matrix").unwrap();
        assert_eq!(
            (m.dims.as_slice(), m.ty),
            ([4, 3].as_slice(), GgmlType::F32)
        );
        assert_eq!(f32s(m), (0..12).map(|i| i as f32).collect::<Vec<_>>());
        let v = f.tensor("f32.vector").unwrap();
        assert_eq!(f32s(v), [0.0, 0.5, 1.0, 1.5, 2.0]);
        // f16 [1, -2, 0.5]: IEEE half bits.
        let h = f.tensor("f16.vector").unwrap();
        assert_eq!((h.ty, h.bytes), (GgmlType::F16, 6));
        assert_eq!(f.data(h), [0x00, 0x3c, 0x00, 0xc0, 0x00, 0x38]);
        // gguf.quants.quantize((arange(128) - 64) / 8 as [2, 64], Q8_0): per block of 32 the
        // f16 scale max|x| / 127, then round-half-away(x * 127 / max|x|) as i8.
        let q = f.tensor("q8_0.matrix").unwrap();
        assert_eq!(
            (q.dims.as_slice(), q.ty, q.bytes),
            ([64, 2].as_slice(), GgmlType::Q8_0, 136)
        );
        let data = f.data(q);
        for (b, block) in data.chunks_exact(34).enumerate() {
            let x: Vec<f32> = (0..32)
                .map(|i| ((b * 32 + i) as f32 - 64.0) / 8.0)
                .collect();
            let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
            let id = 1.0 / (amax / 127.0);
            let qs: Vec<u8> = x.iter().map(|v| (v * id).round() as i8 as u8).collect();
            assert_eq!(&block[2..], &qs[..], "block {b}");
        }
        // The first block's scale: 8 / 127 as f16.
        assert_eq!(&data[..2], &[0x08, 0x2c]);

        // Our writer, given what was read, writes the Python writer's bytes.
        let copy = temp_path("python-copy.gguf");
        let specs: Vec<TensorSpec> = f.tensors.iter().map(TensorInfo::spec).collect();
        let mut w = GgufWriter::create(&copy, &f.metadata, &specs).unwrap();
        for t in &f.tensors {
            w.write_tensor(&t.name, f.data(t)).unwrap();
        }
        w.finish().unwrap();
        let same = std::fs::read(&copy).unwrap() == std::fs::read(&path).unwrap();
        std::fs::remove_file(&copy).unwrap();
        assert!(same);
    }

    /// A byte builder for hand-made headers.
    #[derive(Clone, Default)]
    struct B(Vec<u8>);

    impl B {
        fn gguf(version: u32, n_tensors: u64, n_kv: u64) -> Self {
            B(b"GGUF".to_vec()).u32(version).u64(n_tensors).u64(n_kv)
        }
        fn u32(mut self, v: u32) -> Self {
            self.0.extend(v.to_le_bytes());
            self
        }
        fn u64(mut self, v: u64) -> Self {
            self.0.extend(v.to_le_bytes());
            self
        }
        fn bytes(mut self, v: &[u8]) -> Self {
            self.0.extend(v);
            self
        }
        fn str(self, s: &[u8]) -> Self {
            self.u64(s.len() as u64).bytes(s)
        }
        /// A tensor info.
        fn tensor(self, name: &str, dims: &[u64], ty: u32, offset: u64) -> Self {
            let mut b = self.str(name.as_bytes()).u32(dims.len() as u32);
            for &d in dims {
                b = b.u64(d);
            }
            b.u32(ty).u64(offset)
        }
        /// Zero padding to 32, then `n` data bytes.
        fn data(mut self, n: usize) -> Self {
            let pad = self.0.len().next_multiple_of(32);
            self.0.resize(pad + n, 0);
            self
        }
    }

    #[test]
    fn malformed_files_are_errors() {
        let path = temp_path("malformed.gguf");
        write(&path, &metadata(), &tensors());
        let good = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let p = parse(&good, Path::new("m.gguf")).unwrap();
        // Every cut before the last tensor's data ends is an error (after it come only the
        // last tensor's padding bytes, which nothing reads).
        let end = p.tensors.last().map(|t| t.offset + t.bytes).unwrap();
        for cut in 0..good.len() {
            let r = parse(&good[..cut], Path::new("m.gguf"));
            assert_eq!(r.is_ok(), cut >= end, "cut at {cut}");
        }
        assert!(matches!(kind(&good[..20]), GgmlErrorKind::Truncated { .. }));

        assert!(matches!(kind(b"GGU"), GgmlErrorKind::BadMagic { .. }));
        assert!(matches!(
            kind(b"ggufxxxxxxxxxxxxxxxxxxxx"),
            GgmlErrorKind::BadMagic { .. }
        ));
        for v in [0, 1, 4, 3 << 24] {
            assert!(matches!(
                kind(&B::gguf(v, 0, 0).0),
                GgmlErrorKind::UnsupportedVersion(x) if x == v
            ));
        }
        // Version 2 and an empty file of version 3 read.
        assert!(parse(&B::gguf(2, 0, 0).0, Path::new("m.gguf")).is_ok());
        assert!(parse(&B::gguf(3, 0, 0).0, Path::new("m.gguf")).is_ok());
        // Counts beyond the file.
        assert!(matches!(
            kind(&B::gguf(3, 0, 1 << 40).0),
            GgmlErrorKind::BadCount { .. }
        ));
        assert!(matches!(
            kind(&B::gguf(3, u64::MAX, 0).0),
            GgmlErrorKind::BadCount { .. }
        ));

        // Metadata: a string length beyond the file, in a key and in a value.
        let kv = || B::gguf(3, 0, 1);
        let e = kind(&kv().u64(1 << 40).bytes(b"k").0);
        assert!(matches!(e, GgmlErrorKind::BadCount { .. }), "{e}");
        let e = kind(&kv().str(b"k").u32(8).u64(u64::MAX).bytes(b"abc").0);
        assert!(e.to_string().contains("string length in \"k\""), "{e}");
        // An array length beyond the file.
        let e = kind(&kv().str(b"k").u32(9).u32(4).u64(1 << 60).0);
        assert!(matches!(e, GgmlErrorKind::BadCount { .. }), "{e}");
        // Unknown value types, a bad bool, a key that is not UTF-8, an empty key.
        let e = kind(&kv().str(b"k").u32(13).u32(0).0);
        assert!(matches!(e, GgmlErrorKind::Metadata { .. }), "{e}");
        let e = kind(&kv().str(b"k").u32(9).u32(99).u64(0).0);
        assert!(matches!(e, GgmlErrorKind::Metadata { .. }), "{e}");
        let e = kind(&kv().str(b"k").u32(7).bytes(&[2]).0);
        assert!(matches!(e, GgmlErrorKind::Metadata { .. }), "{e}");
        let e = kind(&kv().str(&[0xc3]).u32(0).bytes(&[0]).0);
        assert!(matches!(e, GgmlErrorKind::BadUtf8 { .. }), "{e}");
        assert!(matches!(
            kind(&kv().str(b"").u32(0).bytes(&[0]).0),
            GgmlErrorKind::Invalid(_)
        ));
        // A duplicate key.
        let two = B::gguf(3, 0, 2)
            .str(b"k")
            .u32(0)
            .bytes(&[1])
            .str(b"k")
            .u32(0)
            .bytes(&[2]);
        assert!(matches!(kind(&two.0), GgmlErrorKind::DuplicateKey(k) if k == "k"));
        // Arrays nested past the limit.
        let mut deep = kv().str(b"k").u32(9);
        for _ in 0..20 {
            deep = deep.u32(9).u64(1);
        }
        let e = kind(&deep.u32(0).u64(0).0);
        assert!(e.to_string().contains("nested deeper"), "{e}");
        // A bad alignment.
        let e = kind(&kv().str(ALIGNMENT_KEY.as_bytes()).u32(4).u32(24).0);
        assert!(e.to_string().contains("power of two"), "{e}");

        // Tensors: one f32 [4] (16 bytes), checks one at a time.
        let t = |name: &str, dims: &[u64], ty: u32, offset: u64, data: usize| {
            B::gguf(3, 1, 0).tensor(name, dims, ty, offset).data(data).0
        };
        let ok = t("w", &[4], 0, 0, 16);
        assert_eq!(
            parse(&ok, Path::new("m.gguf")).unwrap().tensors[0].bytes,
            16
        );
        assert!(matches!(
            kind(&t("w", &[1; 5], 0, 0, 16)),
            GgmlErrorKind::BadCount { .. }
        ));
        assert!(matches!(
            kind(&t("w", &[4], 4, 0, 16)),
            GgmlErrorKind::UnknownType { id: 4, .. }
        ));
        assert!(matches!(
            kind(&t("w", &[4], 40, 0, 16)),
            GgmlErrorKind::UnknownType { .. }
        ));
        let e = kind(&t("w", &[33], 8, 0, 64));
        assert!(e.to_string().contains("not whole q8_0 blocks"), "{e}");
        let e = kind(&t("w", &[4], 0, 16, 64));
        assert!(
            e.to_string().contains("not a multiple of the alignment"),
            "{e}"
        );
        let e = kind(&t("w", &[4], 0, 0, 15));
        assert!(e.to_string().contains("past the end"), "{e}");
        let e = kind(&t("w", &[1 << 62, 4], 0, 0, 16));
        assert!(matches!(e, GgmlErrorKind::BadTensor { .. }), "{e}");
        let e = kind(&t("w", &[u64::MAX], 0, 0, 16));
        assert!(matches!(e, GgmlErrorKind::BadCount { .. }), "{e}");
        let e = kind(&t("", &[4], 0, 0, 16));
        assert!(matches!(e, GgmlErrorKind::BadTensor { .. }), "{e}");
        // No room for the padding before the data section.
        let e = kind(&B::gguf(3, 1, 0).tensor("w", &[0], 0, 0).0);
        assert!(matches!(e, GgmlErrorKind::Truncated { .. }), "{e}");
        let dup = B::gguf(3, 2, 0)
            .tensor("w", &[4], 0, 0)
            .tensor("w", &[4], 0, 32)
            .data(64);
        assert!(matches!(kind(&dup.0), GgmlErrorKind::DuplicateTensor(n) if n == "w"));
    }

    #[test]
    fn writer_checks_its_input() {
        let path = temp_path("writer.gguf");
        let spec = |n: &str| TensorSpec::new(n, &[4], GgmlType::F32);
        let dup = vec![("k".to_owned(), MetaValue::U8(1)); 2];
        assert!(GgufWriter::create(&path, &dup, &[]).is_err());
        assert!(GgufWriter::create(&path, &[], &[spec("a"), spec("a")]).is_err());
        assert!(GgufWriter::create(&path, &[], &[spec(&"n".repeat(64))]).is_err());
        assert!(
            GgufWriter::create(&path, &[], &[TensorSpec::new("q", &[33], GgmlType::Q8_0)]).is_err()
        );

        let mut w = GgufWriter::create(&path, &[], &[spec("a"), spec("b")]).unwrap();
        assert!(w.write_tensor("b", &[0; 16]).is_err());
        assert!(w.write_tensor("a", &[0; 15]).is_err());
        w.write_tensor("a", &[0; 16]).unwrap();
        let e = w.finish().unwrap_err();
        assert!(e.to_string().contains("before tensor \"b\""), "{e}");
        std::fs::remove_file(&path).unwrap();
    }
}
