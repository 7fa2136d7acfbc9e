//! whisper.cpp's model files as Whisper checkpoints: `ggml-base.en.bin`, `ggml-small-q5_1.bin`
//! (the legacy ggml format) and GGUF files with the same tensors.
//!
//! A file holds whisper.cpp's hyper-parameters, its mel filters, the tokens' bytes and tensors
//! under openai-whisper's names (`decoder.blocks.0.cross_attn.query.weight`). The model is
//! built by the same code as a Hugging Face checkpoint: a candle weight backend answers the HF
//! names ([`openai_name`] maps them), dequantizing what the model keeps as floats (convolutions,
//! norms, biases, positions) and handing the big matrices over as their ggml blocks
//! ([`voxide_nn::quant::BLOCKS_SUFFIX`]), which [`voxide_nn::Linear`] multiplies as they are.
//!
//! Without a generation config, the suppress lists and special tokens follow from the
//! vocabulary size, as openai-whisper and whisper.cpp derive them.

use super::config::Config;
use super::tokenizer::{gpt2_byte_chars, gpt2_char_bytes};
use super::N_FRAMES;
use crate::error::{Error, Result};
use crate::ggml::legacy::HPARAM_NAMES;
use crate::ggml::{
    GgmlType, GgufFile, Hparams, LegacyHeader, LegacyModel, MelFilters, MetaValue, TensorInfo,
};
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use std::path::Path;
use std::sync::Arc;
use voxide_nn::quant::{dequantize_row, BLOCKS_SUFFIX};

/// Hugging Face tensor name → openai-whisper's (whisper.cpp's) name:
/// `model.decoder.layers.3.encoder_attn.q_proj.weight` → `decoder.blocks.3.cross_attn.query.weight`.
pub fn openai_name(hf: &str) -> String {
    let mut n = hf.strip_prefix("model.").unwrap_or(hf).to_string();
    for (from, to) in [
        (
            "encoder.embed_positions.weight",
            "encoder.positional_embedding",
        ),
        (
            "decoder.embed_positions.weight",
            "decoder.positional_embedding",
        ),
        ("decoder.embed_tokens", "decoder.token_embedding"),
        (".layers.", ".blocks."),
        (".self_attn_layer_norm.", ".attn_ln."),
        (".encoder_attn_layer_norm.", ".cross_attn_ln."),
        (".final_layer_norm.", ".mlp_ln."),
        (".self_attn.", ".attn."),
        (".encoder_attn.", ".cross_attn."),
        (".q_proj.", ".query."),
        (".k_proj.", ".key."),
        (".v_proj.", ".value."),
        (".out_proj.", ".out."),
        (".fc1.", ".mlp.0."),
        (".fc2.", ".mlp.2."),
        ("encoder.layer_norm.", "encoder.ln_post."),
        ("decoder.layer_norm.", "decoder.ln."),
    ] {
        n = n.replace(from, to);
    }
    n
}

impl Config {
    /// The configuration of a whisper.cpp file's hyper-parameters (MLP width 4·d, GELU, as in
    /// every Whisper; whisper.cpp stores neither).
    pub fn from_hparams(h: &Hparams, path: &Path) -> Result<Self> {
        let invalid = |message: String| Error::Weights {
            path: path.to_owned(),
            message,
        };
        if h.n_audio_state != h.n_text_state {
            return Err(invalid(format!(
                "encoder width {} differs from decoder width {}; Whisper shares one d_model",
                h.n_audio_state, h.n_text_state
            )));
        }
        let config = Self {
            vocab_size: h.n_vocab,
            num_mel_bins: h.n_mels,
            d_model: h.n_audio_state,
            encoder_layers: h.n_audio_layer,
            encoder_attention_heads: h.n_audio_head,
            encoder_ffn_dim: 4 * h.n_audio_state,
            decoder_layers: h.n_text_layer,
            decoder_attention_heads: h.n_text_head,
            decoder_ffn_dim: 4 * h.n_text_state,
            max_source_positions: h.n_audio_ctx,
            max_target_positions: h.n_text_ctx,
            activation_function: "gelu".into(),
            suppress_tokens: None,
            begin_suppress_tokens: None,
        };
        config.validate().map_err(invalid)?;
        debug_assert_eq!(config.max_source_positions * 2, N_FRAMES);
        Ok(config)
    }
}

/// The GGUF tensor that holds the mel filterbank, (n_mel, n_fft) f32 (legacy files store it
/// in the header).
pub const MEL_FILTERS_TENSOR: &str = "mel_filters";

/// The GGUF metadata of a Whisper file. whisper.cpp has no GGUF layout of its own; voxide's
/// mirrors the legacy header: `general.architecture = "whisper"`, the hyper-parameters as
/// u32 `whisper.<name>` (whisper.cpp's names), `general.file_type` (the ggml ftype) and
/// `general.quantization_version`, and the vocabulary as llama.cpp stores byte-level BPE
/// (`tokenizer.ggml.model = "gpt2"`, `tokenizer.ggml.tokens` in GPT-2's byte alphabet, so
/// every token is valid UTF-8). Tensors keep whisper.cpp's names, plus
/// [`MEL_FILTERS_TENSOR`].
pub fn gguf_metadata(h: &Hparams, vocab: &[Vec<u8>]) -> Vec<(String, MetaValue)> {
    let chars = gpt2_byte_chars();
    let mut meta = vec![(
        "general.architecture".to_string(),
        MetaValue::str("whisper"),
    )];
    meta.extend(
        HPARAM_NAMES
            .iter()
            .zip(h.sizes())
            .map(|(k, v)| (format!("whisper.{k}"), MetaValue::U32(v as u32))),
    );
    meta.push(("general.file_type".into(), MetaValue::U32(h.ftype as u32)));
    meta.push((
        "general.quantization_version".into(),
        MetaValue::U32(h.qnt_version as u32),
    ));
    meta.push(("tokenizer.ggml.model".into(), MetaValue::str("gpt2")));
    let tokens: Vec<String> = vocab
        .iter()
        .map(|t| t.iter().map(|&b| chars[b as usize]).collect())
        .collect();
    meta.push((
        "tokenizer.ggml.tokens".into(),
        MetaValue::strs(tokens.iter().map(String::as_str)),
    ));
    meta
}

/// The file behind a [`ModelFile`].
enum Container {
    Legacy(LegacyModel),
    Gguf(GgufFile),
}

/// A whisper.cpp model file (legacy ggml or GGUF), opened and memory-mapped; cheap to clone.
#[derive(Clone)]
pub struct ModelFile {
    inner: Arc<(Container, LegacyHeader)>,
}

impl ModelFile {
    /// Opens and checks a model file (legacy or GGUF, by its magic).
    pub fn open(path: &Path) -> Result<Self> {
        let mut magic = [0u8; 4];
        std::fs::File::open(path)
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
            .map_err(|source| Error::Io {
                path: path.to_owned(),
                source,
            })?;
        let inner = if &magic == b"GGUF" {
            let file = GgufFile::open(path)?;
            let header = gguf_header(&file)?;
            (Container::Gguf(file), header)
        } else {
            let file = LegacyModel::open(path)?;
            let header = LegacyHeader {
                hparams: file.hparams,
                mel_filters: file.mel_filters.clone(),
                vocab: file.vocab.clone(),
            };
            (Container::Legacy(file), header)
        };
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    fn container(&self) -> &Container {
        &self.inner.0
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        match self.container() {
            Container::Legacy(f) => f.path(),
            Container::Gguf(f) => f.path(),
        }
    }

    /// whisper.cpp's hyper-parameters.
    pub fn hparams(&self) -> &Hparams {
        &self.inner.1.hparams
    }

    /// The tokens' bytes, by id.
    pub fn vocab(&self) -> &[Vec<u8>] {
        &self.inner.1.vocab
    }

    /// The mel filterbank stored with the model.
    pub fn mel_filters(&self) -> &MelFilters {
        &self.inner.1.mel_filters
    }

    /// The type of the big matrices: the token embedding's (whisper.cpp's converters and
    /// `quantize` store every 2-D matrix alike).
    pub fn weight_type(&self) -> GgmlType {
        self.tensor("decoder.token_embedding.weight")
            .map_or(GgmlType::F16, |t| t.ty)
    }

    /// The tensor called `name` (openai-whisper's name).
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        match self.container() {
            Container::Legacy(f) => f.tensor(name),
            Container::Gguf(f) => f.tensor(name),
        }
    }

    /// Every tensor, in file order (a GGUF file's include [`MEL_FILTERS_TENSOR`]).
    pub fn tensors(&self) -> &[TensorInfo] {
        match self.container() {
            Container::Legacy(f) => &f.tensors,
            Container::Gguf(f) => &f.tensors,
        }
    }

    /// The bytes of `t`, borrowed from the map.
    pub fn data(&self, t: &TensorInfo) -> &[u8] {
        match self.container() {
            Container::Legacy(f) => f.data(t),
            Container::Gguf(f) => f.data(t),
        }
    }
}

/// Hyper-parameters, mel filters and vocabulary of a Whisper GGUF file ([`gguf_metadata`]).
fn gguf_header(file: &GgufFile) -> Result<LegacyHeader> {
    let invalid = |message: String| Error::Weights {
        path: file.path().to_owned(),
        message,
    };
    let arch = file.get_str("general.architecture")?;
    if arch != "whisper" {
        return Err(invalid(format!(
            "general.architecture is {arch:?}; only Whisper GGUF files are supported"
        )));
    }
    let mut sizes = [0usize; 10];
    for (slot, key) in sizes.iter_mut().zip(HPARAM_NAMES) {
        *slot = file.get_u32(&format!("whisper.{key}"))? as usize;
    }
    let ftype = file.get_u32("general.file_type")? as i32;
    if crate::ggml::legacy::type_of_ftype(ftype).is_none() {
        return Err(invalid(format!(
            "general.file_type {ftype} is not a known ggml ftype"
        )));
    }
    let qnt_version = file
        .get_u32("general.quantization_version")
        .map_or(0, |v| v as i32);
    let hparams = Hparams::from_sizes(sizes, ftype, qnt_version);
    let byte_of = gpt2_char_bytes();
    let vocab = file
        .get_str_array("tokenizer.ggml.tokens")?
        .into_iter()
        .map(|t| {
            t.chars()
                .map(|c| byte_of.get(&c).copied())
                .collect::<Option<Vec<u8>>>()
                .ok_or_else(|| invalid(format!("token {t:?} is not in GPT-2's byte alphabet")))
        })
        .collect::<Result<Vec<_>>>()?;
    let mel = file
        .tensor(MEL_FILTERS_TENSOR)
        .filter(|t| t.ty == GgmlType::F32 && t.dims.len() == 2)
        .ok_or_else(|| invalid(format!("no f32 2-D tensor {MEL_FILTERS_TENSOR}")))?;
    let mel_filters = MelFilters {
        n_mel: mel.dims[1],
        n_fft: mel.dims[0],
        data: file
            .data(mel)
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
    };
    Ok(LegacyHeader {
        hparams,
        mel_filters,
        vocab,
    })
}

/// The tensors of a whisper.cpp file, served to candle's `VarBuilder` under Hugging Face names.
pub(crate) struct GgmlWeights {
    file: ModelFile,
}

impl GgmlWeights {
    pub(crate) fn new(file: ModelFile) -> Self {
        Self { file }
    }

    fn lookup(&self, hf: &str) -> candle_core::Result<&TensorInfo> {
        let name = openai_name(hf);
        self.file.tensor(&name).ok_or_else(|| {
            candle_core::Error::Msg(format!("tensor {name} (for {hf}) is missing")).bt()
        })
    }

    /// The tensor's values as f32, or as f16 when stored so (no widening of f16 matrices).
    fn values(&self, t: &TensorInfo, dev: &Device) -> candle_core::Result<Tensor> {
        let data = self.file.data(t);
        let shape = t.shape();
        match t.ty {
            GgmlType::F16 => {
                let v: Vec<half::f16> = data
                    .chunks_exact(2)
                    .map(|b| half::f16::from_le_bytes([b[0], b[1]]))
                    .collect();
                Tensor::from_vec(v, shape, dev)
            }
            ty => {
                let row = t.row_len();
                let row_bytes = ty.row_bytes(row).expect("checked when the file was read");
                let mut v = vec![0f32; t.elements()];
                if row > 0 {
                    for (src, dst) in data.chunks_exact(row_bytes).zip(v.chunks_exact_mut(row)) {
                        dequantize_row(ty, src, dst);
                    }
                }
                Tensor::from_vec(v, shape, dev)
            }
        }
    }
}

impl SimpleBackend for GgmlWeights {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = self.lookup(name)?;
        // Sizes must agree exactly, but whisper.cpp stores the conv biases as (d, 1).
        if t.elements() != s.elem_count() {
            return Err(candle_core::Error::UnexpectedShape {
                msg: format!("shape mismatch for {}", t.name),
                expected: s,
                got: t.shape().into(),
            }
            .bt());
        }
        self.values(t, dev)?.reshape(s)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        match name.strip_suffix(BLOCKS_SUFFIX) {
            Some(base) => {
                let t = self.lookup(base)?;
                let blocks = t.row_len() / t.ty.block_size();
                let bytes = self.file.data(t).to_vec();
                Tensor::from_vec(bytes, (t.rows(), blocks, t.ty.block_bytes()), dev)
            }
            None => self.values(self.lookup(name)?, dev)?.to_dtype(dtype),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        match name.strip_suffix(BLOCKS_SUFFIX) {
            Some(base) => self
                .lookup(base)
                .is_ok_and(|t| t.ty.is_quantized() && t.dims.len() == 2),
            None => self.lookup(name).is_ok(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hf_names_map_to_openai_names() {
        for (hf, oa) in [
            (
                "model.decoder.layers.3.encoder_attn.q_proj.weight",
                "decoder.blocks.3.cross_attn.query.weight",
            ),
            (
                "model.encoder.layers.0.self_attn_layer_norm.bias",
                "encoder.blocks.0.attn_ln.bias",
            ),
            (
                "model.encoder.layers.11.fc2.weight",
                "encoder.blocks.11.mlp.2.weight",
            ),
            ("model.encoder.layer_norm.weight", "encoder.ln_post.weight"),
            ("model.decoder.layer_norm.bias", "decoder.ln.bias"),
            (
                "model.decoder.embed_tokens.weight",
                "decoder.token_embedding.weight",
            ),
            (
                "model.encoder.embed_positions.weight",
                "encoder.positional_embedding",
            ),
            ("model.encoder.conv2.bias", "encoder.conv2.bias"),
            (
                "model.decoder.layers.0.encoder_attn_layer_norm.weight",
                "decoder.blocks.0.cross_attn_ln.weight",
            ),
            (
                "model.decoder.layers.1.final_layer_norm.weight",
                "decoder.blocks.1.mlp_ln.weight",
            ),
            (
                "model.decoder.layers.1.self_attn.out_proj.bias",
                "decoder.blocks.1.attn.out.bias",
            ),
        ] {
            assert_eq!(openai_name(hf), oa);
        }
    }
}
