//! Safetensors checkpoints read tensor by tensor.
//!
//! candle's loader memory-maps whole files; every page it touches stays in the resident set
//! until the map is dropped, so a model's peak memory was its checkpoint plus its tensors.
//! Here each tensor is read with one positioned read straight into its own buffer: the peak
//! is the model plus the largest tensor being converted.

use crate::kernels::ops::to_dtype_contiguous;
use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
#[cfg(not(unix))]
use std::io::{Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Where one tensor lives.
#[derive(Clone, Debug)]
struct Entry {
    file: usize,
    dtype: DType,
    shape: Vec<usize>,
    /// Absolute byte offset of the data.
    offset: u64,
}

/// The tensors of one or more safetensors files (shards), read on demand.
#[derive(Debug)]
pub struct SafetensorsFiles {
    paths: Vec<PathBuf>,
    files: Vec<Mutex<File>>,
    entries: HashMap<String, Entry>,
}

fn parse_dtype(s: &str) -> Option<DType> {
    Some(match s {
        "F32" => DType::F32,
        "F16" => DType::F16,
        "BF16" => DType::BF16,
        "F64" => DType::F64,
        "I64" => DType::I64,
        "I32" => DType::I32,
        "I16" => DType::I16,
        "U32" => DType::U32,
        "U8" | "BOOL" => DType::U8,
        _ => return None,
    })
}

impl SafetensorsFiles {
    /// Opens the files and validates their headers: every tensor's bytes must lie inside its
    /// file and match its dtype and shape (a truncated download fails here, naming a tensor).
    pub fn open(paths: &[PathBuf]) -> Result<Self> {
        let mut files = Vec::new();
        let mut entries = HashMap::new();
        for (index, path) in paths.iter().enumerate() {
            let fail =
                |what: String| candle_core::Error::Msg(format!("{}: {what}", path.display()));
            let mut file = File::open(path).map_err(|e| fail(e.to_string()))?;
            let file_len = file.metadata().map_err(|e| fail(e.to_string()))?.len();
            let mut len = [0u8; 8];
            file.read_exact(&mut len)
                .map_err(|_| fail("not a safetensors file (shorter than its header)".into()))?;
            let header_len = u64::from_le_bytes(len);
            if header_len > 100 << 20 || 8 + header_len > file_len {
                return Err(fail(format!(
                    "not a safetensors file (header length {header_len})"
                )));
            }
            let mut header = vec![0u8; header_len as usize];
            file.read_exact(&mut header)
                .map_err(|e| fail(e.to_string()))?;
            let json: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&header)
                .map_err(|e| fail(format!("not a safetensors file (header: {e})")))?;
            let data_start = 8 + header_len;
            for (name, info) in json.iter().filter(|(n, _)| *n != "__metadata__") {
                let bad = || fail(format!("malformed header entry for {name}"));
                let dtype_name = info["dtype"].as_str().ok_or_else(bad)?;
                let dtype = parse_dtype(dtype_name)
                    .ok_or_else(|| fail(format!("{name} has unsupported dtype {dtype_name}")))?;
                let shape: Vec<usize> = info["shape"]
                    .as_array()
                    .ok_or_else(bad)?
                    .iter()
                    .map(|d| d.as_u64().map(|d| d as usize))
                    .collect::<Option<_>>()
                    .ok_or_else(bad)?;
                let offsets = info["data_offsets"].as_array().ok_or_else(bad)?;
                let (start, end) = match (
                    offsets.first().and_then(|v| v.as_u64()),
                    offsets.get(1).and_then(|v| v.as_u64()),
                ) {
                    (Some(s), Some(e)) if e >= s => (s, e),
                    _ => return Err(bad()),
                };
                let bytes = shape.iter().product::<usize>() as u64 * dtype.size_in_bytes() as u64;
                if end - start != bytes {
                    return Err(fail(format!(
                        "{name}: {} bytes stored for {bytes} expected",
                        end - start
                    )));
                }
                if data_start + end > file_len {
                    return Err(fail(format!(
                        "truncated: {name} ends at byte {} but the file has {file_len} bytes",
                        data_start + end
                    )));
                }
                entries.insert(
                    name.clone(),
                    Entry {
                        file: index,
                        dtype,
                        shape,
                        offset: data_start + start,
                    },
                );
            }
            files.push(Mutex::new(file));
        }
        Ok(Self {
            paths: paths.to_vec(),
            files,
            entries,
        })
    }

    /// The 2-D tensor `name`, of shape `(rows, cols)`, as a [`RowTable`]: left in the file.
    pub fn row_table(&self, name: &str, (rows, cols): (usize, usize)) -> Result<RowTable> {
        let entry = self.entries.get(name).ok_or_else(|| {
            candle_core::Error::CannotFindTensor {
                path: name.to_string(),
            }
            .bt()
        })?;
        if entry.shape != [rows, cols] {
            return Err(candle_core::Error::UnexpectedShape {
                msg: format!("shape mismatch for {name}"),
                expected: (rows, cols).into(),
                got: entry.shape.clone().into(),
            }
            .bt());
        }
        let path = self.paths[entry.file].clone();
        let file = File::open(&path)
            .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", path.display())))?;
        Ok(RowTable {
            name: name.to_string(),
            path,
            file: Arc::new(Mutex::new(file)),
            offset: entry.offset,
            rows,
            cols,
            dtype: entry.dtype,
        })
    }

    /// Every tensor's name, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        let mut names: Vec<&str> = self.entries.keys().map(String::as_str).collect();
        names.sort_unstable();
        names.into_iter()
    }

    /// Stored shape of a tensor.
    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.entries.get(name).map(|e| e.shape.clone())
    }

    /// Stored dtype of a tensor.
    pub fn dtype(&self, name: &str) -> Option<DType> {
        self.entries.get(name).map(|e| e.dtype)
    }

    fn entry(&self, name: &str) -> Result<&Entry> {
        self.entries.get(name).ok_or_else(|| {
            candle_core::Error::CannotFindTensor {
                path: name.to_string(),
            }
            .bt()
        })
    }

    /// The stored values of `entry` (T of its stored dtype's size), read straight from the
    /// file into their buffer: no zero fill first (a second pass over every page of a 9 GB
    /// checkpoint).
    fn read_vec<T: Copy>(&self, name: &str, entry: &Entry) -> Result<Vec<T>> {
        let numel: usize = entry.shape.iter().product();
        let mut data: Vec<T> = crate::kernels::machine::huge_page_vec(numel);
        let len = numel * std::mem::size_of::<T>();
        let file = self.files[entry.file].lock().expect("a reader panicked");
        read_at(&file, data.as_mut_ptr() as *mut u8, len, entry.offset).map_err(|e| {
            candle_core::Error::Msg(format!(
                "{}: reading {name}: {e}",
                self.paths[entry.file].display()
            ))
        })?;
        // SAFETY: `read_at` initialised all `len` bytes; the callers' types are plain numbers
        // with no invalid bit patterns, stored little-endian as this target reads them.
        unsafe { data.set_len(numel) };
        Ok(data)
    }

    /// Reads one tensor in its stored dtype.
    pub fn load(&self, name: &str, device: &Device) -> Result<Tensor> {
        let entry = self.entry(name)?;
        fn typed<T: candle_core::WithDType>(
            files: &SafetensorsFiles,
            name: &str,
            entry: &Entry,
            device: &Device,
        ) -> Result<Tensor> {
            Tensor::from_vec(
                files.read_vec::<T>(name, entry)?,
                entry.shape.as_slice(),
                device,
            )
        }
        match entry.dtype {
            DType::F32 => typed::<f32>(self, name, entry, device),
            DType::F16 => typed::<half::f16>(self, name, entry, device),
            DType::BF16 => typed::<half::bf16>(self, name, entry, device),
            DType::F64 => typed::<f64>(self, name, entry, device),
            DType::I64 => typed::<i64>(self, name, entry, device),
            DType::I32 => typed::<i32>(self, name, entry, device),
            DType::I16 => typed::<i16>(self, name, entry, device),
            DType::U32 => typed::<u32>(self, name, entry, device),
            _ => typed::<u8>(self, name, entry, device),
        }
    }

    /// Reads one tensor as `dtype`, converted by [`to_dtype_contiguous`]: f32 to and from f16
    /// / bf16 on all threads, the same values as candle's `to_dtype`, which converts one value
    /// at a time on one core (PERFORMANCE.md #142).
    pub fn load_as(&self, name: &str, dtype: DType, device: &Device) -> Result<Tensor> {
        to_dtype_contiguous(&self.load(name, device)?, dtype)
    }
}

/// A 2-D tensor left in its file and read a few rows at a time: an embedding table far larger
/// than what a request looks up (Qwen3-TTS' text embedding: 151 936 × 2048, 622 MB in bf16, of
/// which a request reads a few hundred rows) stays out of the resident set.
#[derive(Clone, Debug)]
pub struct RowTable {
    name: String,
    path: PathBuf,
    file: Arc<Mutex<File>>,
    /// Absolute byte offset of row 0.
    offset: u64,
    rows: usize,
    cols: usize,
    dtype: DType,
}

impl RowTable {
    /// (rows, cols).
    pub fn dims(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// Rows `ids` as (ids.len(), cols) f32 on `device`.
    pub fn lookup(&self, ids: &[u32], device: &Device) -> Result<Tensor> {
        let row_bytes = self.cols * self.dtype.size_in_bytes();
        let mut bytes = vec![0u8; ids.len() * row_bytes];
        let file = self.file.lock().expect("a reader panicked");
        for (row, &id) in bytes.chunks_exact_mut(row_bytes).zip(ids) {
            if id as usize >= self.rows {
                return Err(candle_core::Error::Msg(format!(
                    "{}: row {id} of {}",
                    self.name, self.rows
                )));
            }
            read_at(
                &file,
                row.as_mut_ptr(),
                row_bytes,
                self.offset + id as u64 * row_bytes as u64,
            )
            .map_err(|e| {
                candle_core::Error::Msg(format!(
                    "{}: reading {}: {e}",
                    self.path.display(),
                    self.name
                ))
            })?;
        }
        Tensor::from_raw_buffer(&bytes, self.dtype, &[ids.len(), self.cols], device)?
            .to_dtype(DType::F32)
    }
}

/// Bytes per parallel part of [`read_at`]: a layer's smaller matrices (a 6 MB key projection, a
/// 25 MB query projection) are split too (PERFORMANCE.md #160; 32 MB parts read them on one
/// thread).
#[cfg(unix)]
const PART: usize = 4 << 20;

/// Reads `len` bytes at `offset` into `dst` (uninitialised memory: no reference to it is
/// formed). Large tensors are read in parallel parts: copying from the page cache and
/// faulting in the destination pages both scale with threads.
#[cfg(unix)]
fn read_at(file: &File, dst: *mut u8, len: usize, offset: u64) -> std::io::Result<()> {
    use rayon::prelude::*;
    if len <= PART {
        return read_part(file, dst, len, offset);
    }
    // Addresses cross threads as integers; each part writes its own disjoint range.
    let base = dst as usize;
    (0..len.div_ceil(PART)).into_par_iter().try_for_each(|i| {
        let start = i * PART;
        let n = PART.min(len - start);
        read_part(file, (base + start) as *mut u8, n, offset + start as u64)
    })
}

#[cfg(unix)]
fn read_part(file: &File, dst: *mut u8, len: usize, offset: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut done = 0;
    while done < len {
        // SAFETY: dst..dst + len is writable memory owned by the caller.
        let n = unsafe {
            libc::pread(
                file.as_raw_fd(),
                dst.add(done) as *mut libc::c_void,
                len - done,
                (offset + done as u64) as libc::off_t,
            )
        };
        match n {
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            n if n < 0 => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            n => done += n as usize,
        }
    }
    Ok(())
}

#[cfg(not(unix))]
fn read_at(file: &File, dst: *mut u8, len: usize, offset: u64) -> std::io::Result<()> {
    // SAFETY: zero the buffer first so a slice over it is initialised memory.
    let bytes = unsafe {
        std::ptr::write_bytes(dst, 0, len);
        std::slice::from_raw_parts_mut(dst, len)
    };
    let mut file = file;
    file.seek(SeekFrom::Start(offset))?;
    file.read_exact(bytes)
}

impl SimpleBackend for SafetensorsFiles {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> Result<Tensor> {
        if let Some(stored) = self.dtype(name) {
            // Integers cast to a float weight would load and compute nonsense (a tensor written
            // as int32 or bool by a broken export).
            if stored.is_int() && dtype.is_float() {
                candle_core::bail!(
                    "{name} is stored as {}, where the model needs floating-point weights",
                    stored.as_str()
                );
            }
        }
        let stored = self.shape(name).map(Shape::from);
        if stored.as_ref().is_some_and(|stored| stored != &s) {
            return Err(candle_core::Error::UnexpectedShape {
                msg: format!("shape mismatch for {name}"),
                expected: s,
                got: stored.expect("checked above"),
            }
            .bt());
        }
        self.load_as(name, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> Result<Tensor> {
        self.load_as(name, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn write(path: &Path, header: &str, data: &[u8]) {
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(data);
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn row_tables_read_rows_from_the_file() {
        let dir = std::env::temp_dir().join(format!("voxide-rows-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("e.safetensors");
        let values: Vec<f32> = (0..12).map(|v| v as f32 * 0.5 - 1.0).collect();
        let data: Vec<u8> = values
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
            .collect();
        let header = r#"{"e":{"dtype":"BF16","shape":[4,3],"data_offsets":[0,24]}}"#;
        write(&path, header, &data);
        let files = SafetensorsFiles::open(std::slice::from_ref(&path)).unwrap();
        let table = files.row_table("e", (4, 3)).unwrap();
        assert_eq!(table.dims(), (4, 3));
        let rows = table.lookup(&[3, 0, 3], &Device::Cpu).unwrap();
        assert_eq!(rows.dtype(), DType::F32);
        assert_eq!(
            rows.to_vec2::<f32>().unwrap(),
            vec![
                values[9..12].to_vec(),
                values[0..3].to_vec(),
                values[9..12].to_vec()
            ]
        );
        assert!(table.lookup(&[4], &Device::Cpu).is_err());
        assert!(files.row_table("e", (3, 4)).is_err());
        assert!(files.row_table("missing", (4, 3)).is_err());
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn float_conversions_at_load_equal_candles() {
        use half::{bf16, f16};
        let dir = std::env::temp_dir().join(format!("voxide-cv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.safetensors");
        // Over one parallel chunk (65 536) and not a multiple of the buffer: rounding ties,
        // subnormals of either narrow type, values past f16's range, infinities and NaN.
        let n = 70_001;
        let special = [
            0.0,
            -0.0,
            1.0 + f32::EPSILON * 1024.0,
            6.0e-8,
            1.0e-40,
            65_520.0,
            -1.0e6,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::MIN_POSITIVE,
        ];
        let values: Vec<f32> = (0..n)
            .map(|i| match special.get(i) {
                Some(&v) => v,
                None => (i as f32 * 0.618_034).sin() * 10f32.powi(i as i32 % 13 - 6),
            })
            .collect();
        let f32_bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let f16_bytes: Vec<u8> = values
            .iter()
            .flat_map(|&v| f16::from_f32(v).to_le_bytes())
            .collect();
        let bf16_bytes: Vec<u8> = values
            .iter()
            .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
            .collect();
        let (a, b) = (f32_bytes.len(), f32_bytes.len() + f16_bytes.len());
        let header = format!(
            r#"{{"a":{{"dtype":"F32","shape":[{n}],"data_offsets":[0,{a}]}},"h":{{"dtype":"F16","shape":[{n}],"data_offsets":[{a},{b}]}},"b":{{"dtype":"BF16","shape":[{n}],"data_offsets":[{b},{}]}}}}"#,
            b + bf16_bytes.len()
        );
        write(&path, &header, &[f32_bytes, f16_bytes, bf16_bytes].concat());
        let files = SafetensorsFiles::open(std::slice::from_ref(&path)).unwrap();
        let dev = Device::Cpu;
        fn raw<T: candle_core::WithDType>(t: &Tensor, bits: fn(T) -> u32) -> Vec<u32> {
            t.to_vec1::<T>().unwrap().into_iter().map(bits).collect()
        }
        let bits = |t: &Tensor| match t.dtype() {
            DType::F32 => raw(t, f32::to_bits),
            DType::F16 => raw(t, |v: f16| v.to_bits().into()),
            DType::BF16 => raw(t, |v: bf16| v.to_bits().into()),
            other => panic!("{other:?}"),
        };
        for (name, dtype) in [
            ("a", DType::F16),
            ("a", DType::BF16),
            ("h", DType::F32),
            ("b", DType::F32),
            ("a", DType::F32),
        ] {
            let got = files.load_as(name, dtype, &dev).unwrap();
            let want = files.load(name, &dev).unwrap().to_dtype(dtype).unwrap();
            assert_eq!(
                (got.dtype(), got.dims()),
                (dtype, want.dims()),
                "{name} as {dtype:?}"
            );
            assert_eq!(bits(&got), bits(&want), "{name} as {dtype:?}");
        }
        std::fs::remove_dir_all(dir).ok();
    }

    /// A tensor of several parts, the last one short, after another tensor (an offset that is
    /// no multiple of anything): every byte where the file has it.
    #[cfg(unix)]
    #[test]
    fn large_tensors_are_read_in_parts_in_place() {
        let dir = std::env::temp_dir().join(format!("voxide-parts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("p.safetensors");
        let n = 2 * PART + PART / 2 + 13;
        let data: Vec<u8> = (0..n + 3).map(|i| (i * 7 + i / 4099) as u8).collect();
        let header = format!(
            r#"{{"a":{{"dtype":"U8","shape":[3],"data_offsets":[0,3]}},"big":{{"dtype":"U8","shape":[{n}],"data_offsets":[3,{}]}}}}"#,
            n + 3
        );
        write(&path, &header, &data);
        let files = SafetensorsFiles::open(std::slice::from_ref(&path)).unwrap();
        let big = files.load("big", &Device::Cpu).unwrap();
        assert!(big.to_vec1::<u8>().unwrap() == data[3..]);
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn reads_tensors_and_rejects_damage() {
        let dir = std::env::temp_dir().join(format!("voxide-st-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("w.safetensors");
        let data: Vec<u8> = [1.0f32, -2.0, 3.5, 4.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let header = r#"{"__metadata__":{"format":"pt"},"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}"#;
        write(&path, header, &data);
        let files = SafetensorsFiles::open(std::slice::from_ref(&path)).unwrap();
        let w = files.load("w", &Device::Cpu).unwrap();
        assert_eq!(
            w.to_vec2::<f32>().unwrap(),
            vec![vec![1.0, -2.0], vec![3.5, 4.0]]
        );
        assert_eq!(files.dtype("w"), Some(DType::F32));
        let vb = candle_nn::VarBuilder::from_backend(Box::new(files), DType::F16, Device::Cpu);
        assert_eq!(vb.get((2, 2), "w").unwrap().dtype(), DType::F16);
        assert!(vb
            .get((4, 1), "w")
            .unwrap_err()
            .to_string()
            .contains("shape mismatch for w"));
        assert!(vb.get((2, 2), "missing").is_err());

        // An integer tensor where a float weight is read.
        let int_header = r#"{"w":{"dtype":"I32","shape":[2,2],"data_offsets":[0,16]}}"#;
        write(&path, int_header, &data);
        let files = SafetensorsFiles::open(std::slice::from_ref(&path)).unwrap();
        let vb = candle_nn::VarBuilder::from_backend(Box::new(files), DType::F32, Device::Cpu);
        let err = vb.get((2, 2), "w").unwrap_err().to_string();
        assert!(err.contains("w is stored as i32"), "{err}");

        write(&path, header, &data[..10]);
        let err = SafetensorsFiles::open(std::slice::from_ref(&path))
            .unwrap_err()
            .to_string();
        assert!(err.contains("truncated: w ends at byte"), "{err}");
        std::fs::write(&path, b"definitely not safetensors").unwrap();
        assert!(SafetensorsFiles::open(std::slice::from_ref(&path))
            .unwrap_err()
            .to_string()
            .contains("not a safetensors file"));
        std::fs::write(&path, b"abc").unwrap();
        assert!(SafetensorsFiles::open(&[path]).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
