//! whisper.cpp's own model files (`ggml-tiny.bin`, `ggml-base.en-q5_1.bin`, ...): the legacy
//! ggml format written by whisper.cpp's `models/convert-pt-to-ggml.py` (and
//! `convert-h5-to-ggml.py`), rewritten by its `quantize` tool (`examples/quantize`,
//! `ggml_common_quantize_0`) and read by `whisper_model_load` (`src/whisper.cpp`). Format and
//! tools by Georgi Gerganov and the whisper.cpp contributors.
//!
//! Layout, all little-endian, with no padding or alignment anywhere:
//!
//! | field | type |
//! |---|---|
//! | magic `0x67676d6c` ("ggml") | u32 |
//! | the ten sizes of [`Hparams`] in field order (n_vocab ... n_mels), then ftype | 11 × i32 |
//! | n_mel, n_fft | 2 × i32 |
//! | mel filterbank, `[n_mel][n_fft]` row-major | n_mel·n_fft × f32 |
//! | tokens written (often fewer than n_vocab: whisper.cpp makes up the rest) | i32 |
//! | per token: length, then the token's raw bytes (not necessarily UTF-8) | u32 + bytes |
//! | per tensor, until the end of the file: n_dims, name length, ggml type id | 3 × i32 |
//! | its sizes in ggml order (`ne[0]`, the row length, first) | n_dims × i32 |
//! | its name | bytes |
//! | its data, rows of `ne[0]` values, each row whole blocks of its type | bytes |
//!
//! `ftype` is `quantization version × 1000 + ggml_ftype` (`GGML_QNT_VERSION_FACTOR`): the
//! converters write 0 (all f32) or 1 (mostly f16) with version 0, `quantize` writes version
//! `GGML_QNT_VERSION` (2) and the ftype of its quantization. The model-level `ggml_ftype`
//! numbering (`enum ggml_ftype`, ggml.h) is not the tensor-level `ggml_type` numbering.

use super::{
    tensor_bytes, Cursor, GgmlError, GgmlErrorKind, GgmlType, MappedFile, TensorInfo, TensorSpec,
};
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// The file magic, "ggml" (`GGML_FILE_MAGIC`).
pub const MAGIC: u32 = 0x6767_6d6c;

/// The quantization version `quantize` writes (`GGML_QNT_VERSION`).
pub const QNT_VERSION: i32 = 2;

/// `ftype = qnt_version * QNT_VERSION_FACTOR + ggml_ftype` (`GGML_QNT_VERSION_FACTOR`).
const QNT_VERSION_FACTOR: i32 = 1000;

/// Largest vocabulary accepted: whisper's is 51,866; far more means a corrupt file.
const MAX_VOCAB: u64 = 10_000_000;

/// ggml's tensor rank limit (`GGML_MAX_DIMS`), which `whisper_model_load` enforces.
const MAX_DIMS: u64 = 4;

/// `enum ggml_ftype` (ggml.h) against the tensor type it names (`ggml_ftype_to_ggml_type`),
/// for the types this crate reads.
const FTYPES: [(i32, GgmlType); 13] = [
    (0, GgmlType::F32),
    (1, GgmlType::F16),
    (2, GgmlType::Q4_0),
    (3, GgmlType::Q4_1),
    (7, GgmlType::Q8_0),
    (8, GgmlType::Q5_0),
    (9, GgmlType::Q5_1),
    (10, GgmlType::Q2K),
    (11, GgmlType::Q3K),
    (12, GgmlType::Q4K),
    (13, GgmlType::Q5K),
    (14, GgmlType::Q6K),
    (24, GgmlType::Bf16),
];

/// The model-level `ggml_ftype` of a model whose big matrices are `ty`; `None` for the types
/// no model is stored in (q8_1, q8_K are only intermediate types of ggml's matmuls).
pub fn ftype_of(ty: GgmlType) -> Option<i32> {
    FTYPES.iter().find(|(_, t)| *t == ty).map(|(f, _)| *f)
}

/// The tensor type a model-level `ggml_ftype` (without the quantization version) stands for.
pub fn type_of_ftype(ftype: i32) -> Option<GgmlType> {
    FTYPES.iter().find(|(f, _)| *f == ftype).map(|(_, t)| *t)
}

/// whisper.cpp's names of the stored sizes, in file order (`whisper_hparams`).
pub const HPARAM_NAMES: [&str; 10] = [
    "n_vocab",
    "n_audio_ctx",
    "n_audio_state",
    "n_audio_head",
    "n_audio_layer",
    "n_text_ctx",
    "n_text_state",
    "n_text_head",
    "n_text_layer",
    "n_mels",
];

/// whisper.cpp's hyper-parameters (`whisper_hparams`), as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hparams {
    /// Vocabulary size, specials included (51864 English-only, 51865 multilingual, 51866
    /// large-v3).
    pub n_vocab: usize,
    /// Encoder positions (1500).
    pub n_audio_ctx: usize,
    /// Encoder width.
    pub n_audio_state: usize,
    /// Encoder attention heads.
    pub n_audio_head: usize,
    /// Encoder layers.
    pub n_audio_layer: usize,
    /// Decoder positions (448).
    pub n_text_ctx: usize,
    /// Decoder width.
    pub n_text_state: usize,
    /// Decoder attention heads.
    pub n_text_head: usize,
    /// Decoder layers.
    pub n_text_layer: usize,
    /// Mel bins of the input (80, or 128 for large-v3).
    pub n_mels: usize,
    /// The model-level `ggml_ftype` (stored `ftype % 1000`): the type of the big matrices.
    pub ftype: i32,
    /// The quantization version (stored `ftype / 1000`): 0 from the converters,
    /// [`QNT_VERSION`] after whisper.cpp's `quantize`.
    pub qnt_version: i32,
}

impl Hparams {
    /// The type of the model's big matrices; `None` when `ftype` names no type this crate
    /// reads (never for hparams read from a file: those are checked).
    pub fn weight_type(&self) -> Option<GgmlType> {
        type_of_ftype(self.ftype)
    }

    /// Hyper-parameters from their sizes in file order ([`HPARAM_NAMES`]).
    pub fn from_sizes(sizes: [usize; 10], ftype: i32, qnt_version: i32) -> Self {
        let [n_vocab, n_audio_ctx, n_audio_state, n_audio_head, n_audio_layer, n_text_ctx, n_text_state, n_text_head, n_text_layer, n_mels] =
            sizes;
        Self {
            n_vocab,
            n_audio_ctx,
            n_audio_state,
            n_audio_head,
            n_audio_layer,
            n_text_ctx,
            n_text_state,
            n_text_head,
            n_text_layer,
            n_mels,
            ftype,
            qnt_version,
        }
    }

    /// The stored sizes in file order ([`HPARAM_NAMES`]).
    pub fn sizes(&self) -> [usize; 10] {
        [
            self.n_vocab,
            self.n_audio_ctx,
            self.n_audio_state,
            self.n_audio_head,
            self.n_audio_layer,
            self.n_text_ctx,
            self.n_text_state,
            self.n_text_head,
            self.n_text_layer,
            self.n_mels,
        ]
    }
}

/// The mel filterbank the model was trained with, stored in the file so that whisper.cpp needs
/// no librosa.
#[derive(Clone, Debug, PartialEq)]
pub struct MelFilters {
    /// Mel bins (rows).
    pub n_mel: usize,
    /// FFT bins (columns): `n_fft / 2 + 1` of the STFT, 201 for whisper.
    pub n_fft: usize,
    /// The weights, `[n_mel][n_fft]` row-major.
    pub data: Vec<f32>,
}

/// Everything before the tensors.
#[derive(Clone, Debug, PartialEq)]
pub struct LegacyHeader {
    /// The hyper-parameters.
    pub hparams: Hparams,
    /// The mel filterbank.
    pub mel_filters: MelFilters,
    /// The tokens written to the file, by id: raw bytes (byte-level BPE pieces need not be
    /// UTF-8). Usually fewer than `hparams.n_vocab`: the converters write only the BPE ranks,
    /// and in multilingual files id 50256 (`<|endoftext|>`) is written empty.
    pub vocab: Vec<Vec<u8>>,
}

impl LegacyHeader {
    /// Reads the header of `path` and ignores its tensors, if any (whisper.cpp's header-only
    /// `for-tests-ggml-*.bin` files have none).
    pub fn read(path: impl AsRef<Path>) -> Result<Self, GgmlError> {
        let path = path.as_ref();
        let file = MappedFile::open(path)?;
        read_header(&mut Cursor::new(file.bytes(), path))
    }
}

/// A whisper.cpp model file, mapped: header parsed, tensors located, data borrowed on demand.
pub struct LegacyModel {
    /// The hyper-parameters.
    pub hparams: Hparams,
    /// The mel filterbank.
    pub mel_filters: MelFilters,
    /// The tokens written to the file (see [`LegacyHeader::vocab`]).
    pub vocab: Vec<Vec<u8>>,
    /// The tensors in file order.
    pub tensors: Vec<TensorInfo>,
    file: MappedFile,
    index: HashMap<String, usize>,
}

impl LegacyModel {
    /// Maps and parses `path`. A file without tensors is an error
    /// ([`GgmlErrorKind::NoTensors`]): whisper.cpp accepts one as an empty model for testing,
    /// but no inference can run on it ([`LegacyHeader::read`] reads such files).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, GgmlError> {
        let path = path.as_ref();
        let file = MappedFile::open(path)?;
        let (header, tensors, index) = parse(file.bytes(), path)?;
        Ok(Self {
            hparams: header.hparams,
            mel_filters: header.mel_filters,
            vocab: header.vocab,
            tensors,
            file,
            index,
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

    /// The bytes of tensor `t` (one of [`LegacyModel::tensors`]), borrowed from the map.
    pub fn data(&self, t: &TensorInfo) -> &[u8] {
        self.file.data(t)
    }
}

/// Header, tensors and a name index of a whole file.
type Parsed = (LegacyHeader, Vec<TensorInfo>, HashMap<String, usize>);

fn parse(bytes: &[u8], path: &Path) -> Result<Parsed, GgmlError> {
    let mut cur = Cursor::new(bytes, path);
    let header = read_header(&mut cur)?;
    let mut tensors = Vec::new();
    let mut index = HashMap::new();
    // whisper.cpp reads tensors until a read hits the end of the file (and so stops silently
    // inside a cut tensor header); here only the exact end of the last tensor's data ends.
    while cur.remaining() > 0 {
        let t = read_tensor(&mut cur)?;
        if index.insert(t.name.clone(), tensors.len()).is_some() {
            return Err(cur.error(GgmlErrorKind::DuplicateTensor(t.name)));
        }
        tensors.push(t);
    }
    if tensors.is_empty() {
        return Err(cur.error(GgmlErrorKind::NoTensors));
    }
    Ok((header, tensors, index))
}

/// A stored int32 that must lie in `0..=max`.
fn bounded(cur: &Cursor, value: i32, max: u64, what: &str) -> Result<usize, GgmlError> {
    usize::try_from(value)
        .ok()
        .filter(|&v| v as u64 <= max)
        .ok_or_else(|| {
            cur.error(GgmlErrorKind::BadCount {
                what: what.to_owned(),
                value: value.into(),
                max,
            })
        })
}

fn read_header(cur: &mut Cursor) -> Result<LegacyHeader, GgmlError> {
    let mut magic = [0; 4];
    let n = cur.remaining().min(4);
    magic[..n].copy_from_slice(cur.take(n, "magic")?);
    let magic = u32::from_le_bytes(magic);
    if n < 4 || magic != MAGIC {
        return Err(cur.error(GgmlErrorKind::BadMagic {
            format: "ggml",
            found: magic,
            expected: MAGIC,
        }));
    }

    let mut sizes = [0usize; 10];
    for (slot, what) in sizes.iter_mut().zip(HPARAM_NAMES) {
        let v = cur.i32("hyper-parameters")?;
        let max = if what == "n_vocab" {
            MAX_VOCAB
        } else {
            i32::MAX as u64
        };
        *slot = bounded(cur, v, max, what)?;
    }
    let stored_ftype = cur.i32("hyper-parameters")?;
    let (ftype, qnt_version) = (
        stored_ftype % QNT_VERSION_FACTOR,
        stored_ftype / QNT_VERSION_FACTOR,
    );
    if stored_ftype < 0 || type_of_ftype(ftype).is_none() {
        return Err(cur.error(GgmlErrorKind::UnsupportedFtype {
            ftype: stored_ftype,
        }));
    }
    let hparams = Hparams::from_sizes(sizes, ftype, qnt_version);

    let n_mel = cur.i32("mel filter sizes")?;
    let n_mel = bounded(cur, n_mel, i32::MAX as u64, "n_mel of the mel filters")?;
    let n_fft = cur.i32("mel filter sizes")?;
    let n_fft = bounded(cur, n_fft, i32::MAX as u64, "n_fft of the mel filters")?;
    let n = cur.count(n_mel as i128 * n_fft as i128, 4, "mel filter values")?;
    let data = cur
        .take(n * 4, "mel filters")?
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let mel_filters = MelFilters { n_mel, n_fft, data };

    let n_tokens = cur.i32("vocabulary size")?;
    let n_tokens = bounded(cur, n_tokens, MAX_VOCAB, "vocabulary size")?;
    // Each token takes at least its 4-byte length.
    let n_tokens = cur.count(n_tokens as i128, 4, "vocabulary size")?;
    let mut vocab = Vec::with_capacity(n_tokens);
    for _ in 0..n_tokens {
        let len = cur.u32("vocabulary token length")?;
        let len = cur.count(len.into(), 1, "vocabulary token length")?;
        vocab.push(cur.take(len, "vocabulary token")?.to_vec());
    }
    Ok(LegacyHeader {
        hparams,
        mel_filters,
        vocab,
    })
}

fn read_tensor(cur: &mut Cursor) -> Result<TensorInfo, GgmlError> {
    let start = cur.pos();
    let n_dims = cur.i32("tensor header")?;
    let name_len = cur.i32("tensor header")?;
    let ttype = cur.i32("tensor header")?;
    let n_dims = bounded(
        cur,
        n_dims,
        MAX_DIMS,
        &format!("n_dims of the tensor at byte {start}"),
    )?;
    let mut dims = Vec::with_capacity(n_dims);
    for _ in 0..n_dims {
        let d = cur.i32("tensor sizes")?;
        dims.push(bounded(
            cur,
            d,
            i32::MAX as u64,
            &format!("a size of the tensor at byte {start}"),
        )?);
    }
    let name_len = cur.count(name_len.into(), 1, "tensor name length")?;
    let name = cur.utf8(name_len, "tensor name")?.to_owned();
    let bad = |message: String| GgmlErrorKind::BadTensor {
        tensor: name.clone(),
        message,
    };
    if name.is_empty() {
        return Err(cur.error(bad(format!("the tensor at byte {start} has an empty name"))));
    }
    let ty = u32::try_from(ttype)
        .ok()
        .and_then(GgmlType::from_id)
        .ok_or_else(|| {
            cur.error(GgmlErrorKind::UnknownType {
                tensor: name.clone(),
                id: ttype.into(),
            })
        })?;
    let bytes = tensor_bytes(&dims, ty).map_err(|m| cur.error(bad(m)))?;
    if bytes > cur.remaining() {
        return Err(cur.error(bad(format!(
            "{bytes} bytes of {ty} data (sizes {dims:?}) run past the end of the file, {} \
             bytes left",
            cur.remaining()
        ))));
    }
    let offset = cur.pos();
    cur.take(bytes, "tensor data")?;
    Ok(TensorInfo {
        name,
        dims,
        ty,
        offset,
        bytes,
    })
}

/// Writes a whisper.cpp model file: the header at [`LegacyWriter::create`], then one tensor per
/// [`LegacyWriter::write_tensor`], so that a model is never held twice in memory. The bytes are
/// those `convert-pt-to-ggml.py` and `quantize` write, so whisper.cpp loads the result. Call
/// [`LegacyWriter::finish`]: a dropped writer may leave a file cut after any tensor.
pub struct LegacyWriter {
    path: PathBuf,
    out: BufWriter<File>,
    names: HashSet<String>,
}

impl LegacyWriter {
    /// Checks the header, creates `path` and writes the header. `hparams.ftype` and
    /// `qnt_version` are stored as given: a quantized model needs the ftype of its type
    /// ([`ftype_of`]) and version [`QNT_VERSION`], as `quantize` writes them.
    pub fn create(
        path: impl AsRef<Path>,
        hparams: &Hparams,
        mel_filters: &MelFilters,
        vocab: &[Vec<u8>],
    ) -> Result<Self, GgmlError> {
        let path = path.as_ref();
        let header = encode_header(hparams, mel_filters, vocab)
            .map_err(|m| GgmlError::new(path, GgmlErrorKind::Invalid(m)))?;
        let io = |source| {
            GgmlError::new(
                path,
                GgmlErrorKind::Io {
                    action: "write",
                    source,
                },
            )
        };
        let mut out = BufWriter::new(File::create(path).map_err(io)?);
        out.write_all(&header).map_err(io)?;
        Ok(Self {
            path: path.to_owned(),
            out,
            names: HashSet::new(),
        })
    }

    /// Appends a tensor: its header, then `data` (rows of `dims[0]` values of `ty`, exactly
    /// as the file stores them).
    pub fn write_tensor(&mut self, tensor: &TensorSpec, data: &[u8]) -> Result<(), GgmlError> {
        let bad = |message: String| {
            GgmlError::new(
                &self.path,
                GgmlErrorKind::BadTensor {
                    tensor: tensor.name.clone(),
                    message,
                },
            )
        };
        if tensor.name.is_empty() {
            return Err(bad("empty name".into()));
        }
        if self.names.contains(&tensor.name) {
            return Err(GgmlError::new(
                &self.path,
                GgmlErrorKind::DuplicateTensor(tensor.name.clone()),
            ));
        }
        if tensor.dims.len() as u64 > MAX_DIMS {
            return Err(bad(format!("{} dimensions, ggml has 4", tensor.dims.len())));
        }
        let bytes = tensor_bytes(&tensor.dims, tensor.ty).map_err(bad)?;
        if data.len() != bytes {
            return Err(bad(format!(
                "{} bytes of data, sizes {:?} of {} need {bytes}",
                data.len(),
                tensor.dims,
                tensor.ty
            )));
        }
        let mut head = Vec::with_capacity(12 + 4 * tensor.dims.len() + tensor.name.len());
        for v in [
            tensor.dims.len(),
            tensor.name.len(),
            tensor.ty.id() as usize,
        ]
        .into_iter()
        .chain(tensor.dims.iter().copied())
        {
            head.extend(
                to_i32(v, "a tensor size or name length")
                    .map_err(bad)?
                    .to_le_bytes(),
            );
        }
        head.extend(tensor.name.as_bytes());
        let io = |source| {
            GgmlError::new(
                &self.path,
                GgmlErrorKind::Io {
                    action: "write",
                    source,
                },
            )
        };
        self.out.write_all(&head).map_err(io)?;
        self.out.write_all(data).map_err(io)?;
        self.names.insert(tensor.name.clone());
        Ok(())
    }

    /// Flushes the file to the OS.
    pub fn finish(mut self) -> Result<(), GgmlError> {
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

fn to_i32(v: usize, what: &str) -> Result<i32, String> {
    i32::try_from(v).map_err(|_| format!("{what} {v} does not fit the format's int32"))
}

/// The header's bytes, or why it cannot be written (anything [`read_header`] would reject).
fn encode_header(
    hparams: &Hparams,
    mel_filters: &MelFilters,
    vocab: &[Vec<u8>],
) -> Result<Vec<u8>, String> {
    if type_of_ftype(hparams.ftype).is_none() {
        return Err(format!("unsupported model ftype {}", hparams.ftype));
    }
    let stored_ftype = (0..=i32::MAX / QNT_VERSION_FACTOR - 1)
        .contains(&hparams.qnt_version)
        .then(|| hparams.qnt_version * QNT_VERSION_FACTOR + hparams.ftype)
        .ok_or_else(|| format!("bad quantization version {}", hparams.qnt_version))?;
    if hparams.n_vocab as u64 > MAX_VOCAB || vocab.len() as u64 > MAX_VOCAB {
        return Err(format!(
            "vocabulary of {} ({} tokens written) is over {MAX_VOCAB}",
            hparams.n_vocab,
            vocab.len()
        ));
    }
    let (n_mel, n_fft) = (mel_filters.n_mel, mel_filters.n_fft);
    if n_mel.checked_mul(n_fft) != Some(mel_filters.data.len()) {
        return Err(format!(
            "{} mel filter values for {n_mel} × {n_fft}",
            mel_filters.data.len()
        ));
    }

    let token_bytes: usize = vocab.iter().map(|t| 4 + t.len()).sum();
    let mut out = Vec::with_capacity(4 + 12 * 4 + 4 * mel_filters.data.len() + 4 + token_bytes);
    out.extend(MAGIC.to_le_bytes());
    for v in hparams.sizes() {
        out.extend(to_i32(v, "hyper-parameter")?.to_le_bytes());
    }
    out.extend(stored_ftype.to_le_bytes());
    out.extend(to_i32(n_mel, "n_mel")?.to_le_bytes());
    out.extend(to_i32(n_fft, "n_fft")?.to_le_bytes());
    for v in &mel_filters.data {
        out.extend(v.to_le_bytes());
    }
    out.extend(to_i32(vocab.len(), "vocabulary size")?.to_le_bytes());
    for token in vocab {
        let len =
            u32::try_from(token.len()).map_err(|_| format!("a token of {} bytes", token.len()))?;
        out.extend(len.to_le_bytes());
        out.extend(token);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_model(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/assets/whisper-cpp-test-models")
            .join(name)
    }

    fn temp_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("voxide-ggml-{}-{name}", std::process::id()))
    }

    fn kind(bytes: &[u8]) -> GgmlErrorKind {
        match parse(bytes, Path::new("m.bin")) {
            Ok(_) => panic!("parsed"),
            Err(e) => {
                // Every error is one line naming the file.
                let text = e.to_string();
                assert!(
                    text.starts_with("m.bin: ") && !text.contains('\n'),
                    "{text}"
                );
                e.kind
            }
        }
    }

    /// whisper.cpp's header-only test models: real hparams, mel filters and vocabularies.
    #[test]
    fn reads_whisper_cpp_test_models() {
        // (file, n_vocab, [n_audio_state, n_audio_head, n_audio_layer], token 50256)
        type Case<'a> = (&'a str, usize, [usize; 3], &'a [u8]);
        let cases: [Case; 3] = [
            ("for-tests-ggml-tiny.bin", 51865, [384, 6, 4], b""),
            ("for-tests-ggml-base.bin", 51865, [512, 8, 6], b""),
            (
                "for-tests-ggml-tiny.en.bin",
                51864,
                [384, 6, 4],
                b"<|endoftext|>",
            ),
        ];
        for (file, n_vocab, [state, head, layer], eot) in cases {
            let h = LegacyHeader::read(test_model(file)).unwrap();
            let want = Hparams {
                n_vocab,
                n_audio_ctx: 1500,
                n_audio_state: state,
                n_audio_head: head,
                n_audio_layer: layer,
                n_text_ctx: 448,
                n_text_state: state,
                n_text_head: head,
                n_text_layer: layer,
                n_mels: 80,
                ftype: 1,
                qnt_version: 0,
            };
            assert_eq!(h.hparams, want, "{file}");
            assert_eq!(h.hparams.weight_type(), Some(GgmlType::F16));
            let mel = &h.mel_filters;
            assert_eq!((mel.n_mel, mel.n_fft, mel.data.len()), (80, 201, 80 * 201));
            // openai-whisper's `mel_filters.npz["mel_80"]`, bit for bit (checked with numpy):
            // the first filter has one non-zero weight, at FFT bin 1.
            assert_eq!(mel.data[1].to_bits(), 0x3ccb_aca4, "{file}");
            assert_eq!(mel.data[..201].iter().filter(|&&v| v != 0.0).count(), 1);
            // The converters write the 50257 GPT-2 / multilingual BPE ranks; whisper.cpp adds
            // the remaining specials itself. Multilingual files store <|endoftext|> empty.
            println!("{file}: {} tokens written", h.vocab.len());
            assert_eq!(h.vocab.len(), 50257, "{file}");
            assert_eq!(h.vocab[0], b"!");
            assert_eq!(h.vocab[220], b" ");
            assert_eq!(h.vocab[50256], eot, "{file}");

            let e = LegacyModel::open(test_model(file)).err().unwrap();
            assert!(matches!(e.kind, GgmlErrorKind::NoTensors), "{e}");
            assert!(e
                .to_string()
                .ends_with(&format!("{file}: file has no tensors")));
        }
    }

    /// Tensors to write, with their data.
    type Tensors = Vec<(TensorSpec, Vec<u8>)>;

    fn synthetic() -> (Hparams, MelFilters, Vec<Vec<u8>>, Tensors) {
        let hparams = Hparams {
            n_vocab: 51864,
            n_audio_ctx: 1500,
            n_audio_state: 64,
            n_audio_head: 2,
            n_audio_layer: 1,
            n_text_ctx: 448,
            n_text_state: 64,
            n_text_head: 2,
            n_text_layer: 1,
            n_mels: 3,
            ftype: ftype_of(GgmlType::Q8_0).unwrap(),
            qnt_version: QNT_VERSION,
        };
        let mel = MelFilters {
            n_mel: 3,
            n_fft: 2,
            data: vec![0.5, -1.0, 2.0, 0.0, 1e-3, 7.0],
        };
        let vocab = vec![b"!".to_vec(), vec![0xe2, 0x80], vec![], b" the".to_vec()];
        let bytes = |n: usize, seed: u8| (0..n).map(|i| (i as u8).wrapping_mul(seed)).collect();
        let tensors = vec![
            // f32 [2, 3] (PyTorch [3, 2]): 24 bytes.
            (
                TensorSpec::new("encoder.conv1.bias", &[2, 3], GgmlType::F32),
                bytes(24, 3),
            ),
            // A scalar.
            (TensorSpec::new("s", &[], GgmlType::F32), bytes(4, 5)),
            // f16 [5]: 10 bytes.
            (
                TensorSpec::new("decoder.ln.weight", &[5], GgmlType::F16),
                bytes(10, 7),
            ),
            // q8_0, rows of 64 = 2 blocks of 34 bytes, 3 rows.
            (
                TensorSpec::new("decoder.w", &[64, 3], GgmlType::Q8_0),
                bytes(204, 11),
            ),
        ];
        (hparams, mel, vocab, tensors)
    }

    fn write_synthetic(path: &Path) -> Tensors {
        let (hparams, mel, vocab, tensors) = synthetic();
        let mut w = LegacyWriter::create(path, &hparams, &mel, &vocab).unwrap();
        for (spec, data) in &tensors {
            w.write_tensor(spec, data).unwrap();
        }
        w.finish().unwrap();
        tensors
    }

    /// The writer's bytes, assembled here the way `convert-pt-to-ggml.py` and `quantize`
    /// write them (struct.pack("i", ...) fields, then raw data, nothing between).
    #[test]
    fn writes_the_converters_layout_and_reads_it_back() {
        let path = temp_path("round-trip.bin");
        let tensors = write_synthetic(&path);
        let (hparams, mel, vocab, _) = synthetic();

        let mut want = Vec::new();
        let mut i32s = |v: &[i32]| v.iter().for_each(|v| want.extend(v.to_le_bytes()));
        i32s(&[0x6767_6d6c, 51864, 1500, 64, 2, 1, 448, 64, 2, 1, 3, 2007]);
        i32s(&[3, 2]);
        for v in &mel.data {
            want.extend(v.to_le_bytes());
        }
        want.extend(4i32.to_le_bytes());
        for t in &vocab {
            want.extend((t.len() as u32).to_le_bytes());
            want.extend(t);
        }
        for (spec, data) in &tensors {
            let ne: Vec<i32> = spec.dims.iter().map(|&d| d as i32).collect();
            for v in [ne.len() as i32, spec.name.len() as i32, spec.ty.id() as i32]
                .iter()
                .chain(&ne)
            {
                want.extend(v.to_le_bytes());
            }
            want.extend(spec.name.as_bytes());
            want.extend(data);
        }
        let got = std::fs::read(&path).unwrap();
        assert_eq!(got, want);

        let m = LegacyModel::open(&path).unwrap();
        assert_eq!(m.hparams, hparams);
        assert_eq!(m.hparams.weight_type(), Some(GgmlType::Q8_0));
        assert_eq!(m.mel_filters, mel);
        assert_eq!(m.vocab, vocab);
        assert_eq!(m.tensors.len(), tensors.len());
        for (spec, data) in &tensors {
            let t = m.tensor(&spec.name).unwrap();
            assert_eq!(t.spec(), *spec);
            assert_eq!(m.data(t), &data[..], "{}", spec.name);
        }
        let q = m.tensor("decoder.w").unwrap();
        assert_eq!((q.shape(), q.rows(), q.bytes), (vec![3, 64], 3, 204));
        assert!(m.tensor("missing").is_none());
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn malformed_files_are_errors() {
        let path = temp_path("malformed.bin");
        write_synthetic(&path);
        let good = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();

        // Every cut is an error but those at the end of a tensor's data.
        let (_, tensors, _) = parse(&good, Path::new("m.bin")).unwrap();
        let ends: Vec<usize> = tensors.iter().map(|t| t.offset + t.bytes).collect();
        for cut in 0..good.len() {
            match parse(&good[..cut], Path::new("m.bin")) {
                Ok((_, t, _)) => assert!(ends.contains(&cut) && !t.is_empty(), "cut at {cut}"),
                Err(e) => assert!(!e.to_string().contains('\n')),
            }
        }
        assert!(matches!(kind(&good[..10]), GgmlErrorKind::Truncated { .. }));

        let mut bad = good.clone();
        bad[0] = b'G';
        assert!(matches!(kind(&bad), GgmlErrorKind::BadMagic { .. }));
        assert!(matches!(kind(b"gg"), GgmlErrorKind::BadMagic { .. }));

        // Header fields, by offset: hparams at 4, ftype at 44, n_mel at 48, mel data at 56,
        // vocabulary count at 80.
        let patch = |at: usize, v: i32| {
            let mut b = good.clone();
            b[at..at + 4].copy_from_slice(&v.to_le_bytes());
            b
        };
        assert!(matches!(
            kind(&patch(4, 20_000_000)),
            GgmlErrorKind::BadCount { .. }
        ));
        assert!(matches!(
            kind(&patch(8, -1)),
            GgmlErrorKind::BadCount { .. }
        ));
        for ftype in [4, 15, -1, 2999 + 1000] {
            assert!(matches!(
                kind(&patch(44, ftype)),
                GgmlErrorKind::UnsupportedFtype { .. }
            ));
        }
        assert!(matches!(
            kind(&patch(48, 1 << 30)),
            GgmlErrorKind::BadCount { .. }
        ));
        assert!(matches!(
            kind(&patch(80, 9_999_999)),
            GgmlErrorKind::BadCount { .. }
        ));
        // The first token's length (at 84) beyond the file.
        assert!(matches!(
            kind(&patch(84, i32::MAX)),
            GgmlErrorKind::BadCount { .. }
        ));

        // The first tensor: n_dims, name length, type, then ne[0], ne[1], name.
        let first = 84 + vocab_bytes();
        assert!(matches!(
            kind(&patch(first, 5)),
            GgmlErrorKind::BadCount { .. }
        ));
        assert!(matches!(
            kind(&patch(first + 4, 1 << 30)),
            GgmlErrorKind::BadCount { .. }
        ));
        assert!(matches!(
            kind(&patch(first + 8, 4)),
            GgmlErrorKind::UnknownType { id: 4, .. }
        ));
        assert!(matches!(
            kind(&patch(first + 8, -3)),
            GgmlErrorKind::UnknownType { .. }
        ));
        assert!(matches!(
            kind(&patch(first + 12, -2)),
            GgmlErrorKind::BadCount { .. }
        ));
        // More rows than the file holds.
        assert!(matches!(
            kind(&patch(first + 16, 1000)),
            GgmlErrorKind::BadTensor { .. }
        ));
        // q8_0 with rows of 33 values: not whole blocks.
        let q = good.len() - 204 - (12 + 8 + 9);
        let e = kind(&patch(q + 12, 33));
        assert!(matches!(&e, GgmlErrorKind::BadTensor { tensor, .. } if tensor == "decoder.w"));
        assert!(e.to_string().contains("not whole q8_0 blocks"), "{e}");
        // A name that is not UTF-8, and a name used twice.
        let mut b = good.clone();
        b[first + 20] = 0xff;
        assert!(matches!(kind(&b), GgmlErrorKind::BadUtf8 { .. }));
        // The last tensor twice.
        let dup = [&good[..], &good[q..]].concat();
        assert!(matches!(kind(&dup), GgmlErrorKind::DuplicateTensor(n) if n == "decoder.w"));
    }

    /// Bytes of the synthetic vocabulary (count excluded).
    fn vocab_bytes() -> usize {
        synthetic().2.iter().map(|t| 4 + t.len()).sum()
    }

    #[test]
    fn writer_refuses_what_the_reader_would() {
        let (hparams, mel, vocab, tensors) = synthetic();
        let path = temp_path("refuse.bin");
        let create = |h: &Hparams, m: &MelFilters| LegacyWriter::create(&path, h, m, &vocab);
        assert!(create(
            &Hparams {
                ftype: 4,
                ..hparams
            },
            &mel
        )
        .is_err());
        assert!(create(
            &Hparams {
                qnt_version: -1,
                ..hparams
            },
            &mel
        )
        .is_err());
        let short = MelFilters {
            n_fft: 3,
            ..mel.clone()
        };
        assert!(create(&hparams, &short).is_err());

        let mut w = create(&hparams, &mel).unwrap();
        let (spec, data) = &tensors[3];
        assert!(w.write_tensor(spec, &data[1..]).is_err());
        let odd = TensorSpec::new("odd", &[33], GgmlType::Q8_0);
        assert!(w.write_tensor(&odd, &[0; 34]).is_err());
        let deep = TensorSpec::new("deep", &[1, 1, 1, 1, 1], GgmlType::F32);
        assert!(w.write_tensor(&deep, &[0; 4]).is_err());
        w.write_tensor(spec, data).unwrap();
        let e = w.write_tensor(spec, data).unwrap_err();
        assert!(matches!(e.kind, GgmlErrorKind::DuplicateTensor(_)), "{e}");
        w.finish().unwrap();
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn ftype_mapping_is_ggml_s() {
        // ggml.h `enum ggml_ftype`.
        assert_eq!(ftype_of(GgmlType::F16), Some(1));
        assert_eq!(ftype_of(GgmlType::Q5_0), Some(8));
        assert_eq!(ftype_of(GgmlType::Q8_0), Some(7));
        assert_eq!(ftype_of(GgmlType::Q6K), Some(14));
        assert_eq!(ftype_of(GgmlType::Q8K), None);
        assert_eq!(type_of_ftype(4), None);
        for t in GgmlType::ALL {
            if let Some(f) = ftype_of(t) {
                assert_eq!(type_of_ftype(f), Some(t));
            }
        }
    }

    /// Reads a real whisper.cpp model and writes it again: the copy must be the same bytes.
    #[test]
    #[ignore = "needs target/models/whisper-tiny/ggml-model-f16.bin (whisper.cpp's ggml-tiny.bin)"]
    fn rewrites_a_whisper_cpp_model_byte_for_byte() {
        let src = std::env::var_os("VOXIDE_GGML_MODEL").map_or_else(
            || {
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../../target/models/whisper-tiny/ggml-model-f16.bin")
            },
            PathBuf::from,
        );
        let m = LegacyModel::open(&src).unwrap();
        println!(
            "{}: {:?}, {} tokens, {} tensors",
            src.display(),
            m.hparams,
            m.vocab.len(),
            m.tensors.len()
        );
        let out = temp_path("rewrite.bin");
        let mut w = LegacyWriter::create(&out, &m.hparams, &m.mel_filters, &m.vocab).unwrap();
        for t in &m.tensors {
            w.write_tensor(&t.spec(), m.data(t)).unwrap();
        }
        w.finish().unwrap();
        let same = std::fs::read(&src).unwrap() == std::fs::read(&out).unwrap();
        std::fs::remove_file(&out).unwrap();
        assert!(same);
    }
}
