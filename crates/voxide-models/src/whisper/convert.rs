//! Writing whisper.cpp model files from any Whisper checkpoint: `voxide convert` (float) and
//! `voxide quantize` (ggml block types), so users can make files whisper.cpp itself loads.
//!
//! The tensors and their types follow whisper.cpp's own tools: `convert-pt-to-ggml.py` stores
//! 1-D tensors, the conv biases (as (d, 1)) and both positional tables in f32 and the other
//! matrices in f16; `quantize` turns every 2-D matrix but the positional tables into the
//! block type and copies the rest. A matrix whose rows are not whole blocks of a k-quant
//! (whisper-tiny's 384 columns against 256-value blocks) is refused, as whisper.cpp's
//! `quantize` refuses it: whisper.cpp loads only files whose matrices all share one type.
//! With `allow_fallback`, such matrices take llama.cpp's fallback type instead (a file voxide
//! loads and whisper.cpp does not), and the report lists them.
//!
//! The output is the legacy ggml format, or GGUF when the file name ends in `.gguf`
//! (see [`super::ggml`] for that layout).

use super::config::Config;
use super::ggml::{gguf_metadata, openai_name, ModelFile, MEL_FILTERS_TENSOR};
use super::tokenizer::Tokenizer;
use crate::error::{Error, Result};
use crate::ggml::legacy::{ftype_of, QNT_VERSION};
use crate::ggml::{GgmlType, GgufWriter, Hparams, LegacyWriter, MelFilters, TensorSpec};
use candle_core::{DType, Device};
use rayon::prelude::*;
use std::path::Path;
use voxide_nn::quant::{dequantize_row, quantize_row};
use voxide_nn::weights::SafetensorsFiles;

/// What was written.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConvertReport {
    /// Tensors written.
    pub tensors: usize,
    /// Matrices stored in the requested type.
    pub matrices: usize,
    /// Matrices whose rows do not fit the requested type, with the type they took instead.
    pub fallbacks: Vec<(String, GgmlType)>,
    /// Bytes of tensor data written.
    pub bytes: usize,
}

/// Where the values come from.
enum Source {
    /// A Hugging Face checkpoint: its safetensors and tensor names.
    Hf(SafetensorsFiles, Vec<String>),
    /// A whisper.cpp file.
    Ggml(ModelFile),
}

/// One tensor of the output: its whisper.cpp name, sizes (ggml order), type, and where its
/// values are read from.
struct Planned {
    spec: TensorSpec,
    source_name: String,
}

/// Refuses a directory holding another family's checkpoint by name, before its config is read
/// as Whisper's (which would only report a missing Whisper field).
fn check_whisper_dir(dir: &Path) -> Result<()> {
    let config = dir.join("config.json");
    let other = if config.is_file() {
        // An unreadable or malformed config is left to the Whisper config's own message.
        std::fs::read_to_string(&config)
            .ok()
            .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
            .and_then(|json| json["model_type"].as_str().map(str::to_string))
            .filter(|ty| ty != "whisper")
            .map(|ty| format!("model_type {ty:?}"))
    } else {
        dir.join("params.json")
            .is_file()
            .then(|| "a Mistral checkpoint (params.json)".to_string())
    };
    match other {
        Some(what) => Err(Error::InvalidRequest(format!(
            "{}: {what}; whisper.cpp files hold Whisper models only",
            dir.display()
        ))),
        None => Ok(()),
    }
}

/// Writes `source` (a Hugging Face checkpoint directory or a whisper.cpp file) to `out` with
/// its matrices in `ty`: f32 or f16 (whisper.cpp's converter layout) or a block type
/// (whisper.cpp's `quantize` layout).
pub fn convert(
    source: &Path,
    out: &Path,
    ty: GgmlType,
    allow_fallback: bool,
) -> Result<ConvertReport> {
    if ty == GgmlType::Bf16 || (ty.is_quantized() && ftype_of(ty).is_none()) {
        return Err(Error::InvalidRequest(format!(
            "whisper.cpp files cannot hold {ty} models (f32, f16, q4_0, q4_1, q5_0, q5_1, q8_0, q2_K, q3_K, q4_K, q5_K, q6_K)"
        )));
    }
    let (hparams, mel_filters, vocab, src) = if source.is_dir() {
        check_whisper_dir(source)?;
        let config = Config::from_file(&crate::error::require(source, "config.json")?)?;
        let tokenizer = Tokenizer::from_dir(source, config.vocab_size)?;
        let files = super::model::weight_files(source)?;
        let tensors = SafetensorsFiles::open(&files).map_err(|e| Error::Weights {
            path: files[0].clone(),
            message: e.to_string(),
        })?;
        let names = tensors
            .names()
            .filter(|n| n.starts_with("model.encoder.") || n.starts_with("model.decoder."))
            .map(str::to_string)
            .collect();
        let mel = voxide_audio::mel_filters(config.num_mel_bins);
        let mel_filters = MelFilters {
            n_mel: config.num_mel_bins,
            n_fft: mel.len() / config.num_mel_bins,
            data: mel,
        };
        (
            hparams_of(&config),
            mel_filters,
            tokenizer.token_bytes(),
            Source::Hf(tensors, names),
        )
    } else {
        let file = ModelFile::open(source)?;
        (
            *file.hparams(),
            file.mel_filters().clone(),
            file.vocab().to_vec(),
            Source::Ggml(file),
        )
    };
    let mut report = ConvertReport::default();
    let plan = plan(&src, ty, &mut report)?;
    check_shapes(&hparams, &plan).map_err(|e| {
        Error::InvalidRequest(format!(
            "{}: {e}; the file would carry the config's numbers and not load",
            source.display()
        ))
    })?;
    if let (false, Some((name, took))) = (allow_fallback, report.fallbacks.first()) {
        return Err(Error::InvalidRequest(format!(
            "{name} has rows that are not whole {ty} blocks of {} values (so have {} more); \
             whisper.cpp cannot hold such a model in {ty}. Pick q8_0, q5_1, q5_0, q4_1 or \
             q4_0, or allow the fallback ({name} and the others as {took}: voxide loads \
             the file, whisper.cpp does not)",
            ty.block_size(),
            report.fallbacks.len() - 1
        )));
    }
    let mut hparams = hparams;
    hparams.ftype = ftype_of(ty).expect("checked above");
    hparams.qnt_version = if ty.is_quantized() { QNT_VERSION } else { 0 };
    let mut writer = if out
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
    {
        let mut specs: Vec<TensorSpec> = plan.iter().map(|p| p.spec.clone()).collect();
        specs.push(mel_spec(&mel_filters));
        Writer::Gguf(GgufWriter::create(
            out,
            &gguf_metadata(&hparams, &vocab),
            &specs,
        )?)
    } else {
        Writer::Legacy(LegacyWriter::create(out, &hparams, &mel_filters, &vocab)?)
    };
    for p in &plan {
        let data = match &src {
            // A tensor already stored as wanted is copied: no second rounding.
            Source::Ggml(file) => match file.tensor(&p.source_name) {
                Some(t) if t.ty == p.spec.ty => file.data(t).to_vec(),
                _ => encode(&values(&src, &p.source_name)?, &p.spec),
            },
            Source::Hf(..) => encode(&values(&src, &p.source_name)?, &p.spec),
        };
        report.bytes += data.len();
        match &mut writer {
            Writer::Legacy(w) => w.write_tensor(&p.spec, &data)?,
            Writer::Gguf(w) => w.write_tensor(&p.spec.name, &data)?,
        }
    }
    report.tensors = plan.len();
    match writer {
        Writer::Legacy(w) => w.finish()?,
        Writer::Gguf(mut w) => {
            let mel: Vec<u8> = mel_filters
                .data
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect();
            w.write_tensor(MEL_FILTERS_TENSOR, &mel)?;
            w.finish()?;
        }
    }
    Ok(report)
}

/// The two containers.
enum Writer {
    Legacy(LegacyWriter),
    Gguf(GgufWriter),
}

/// The GGUF tensor holding the mel filterbank, (n_mel, n_fft) f32.
fn mel_spec(mel: &MelFilters) -> TensorSpec {
    TensorSpec::new(MEL_FILTERS_TENSOR, &[mel.n_fft, mel.n_mel], GgmlType::F32)
}

/// whisper.cpp's hyper-parameters of a configuration.
fn hparams_of(c: &Config) -> Hparams {
    Hparams {
        n_vocab: c.vocab_size,
        n_audio_ctx: c.max_source_positions,
        n_audio_state: c.d_model,
        n_audio_head: c.encoder_attention_heads,
        n_audio_layer: c.encoder_layers,
        n_text_ctx: c.max_target_positions,
        n_text_state: c.d_model,
        n_text_head: c.decoder_attention_heads,
        n_text_layer: c.decoder_layers,
        n_mels: c.num_mel_bins,
        ftype: 0,
        qnt_version: 0,
    }
}

/// Tensors kept in f32 whatever the model's type (whisper.cpp's converter and `quantize`).
fn always_f32(name: &str, n_dims: usize) -> bool {
    n_dims < 2
        || matches!(
            name,
            "encoder.conv1.bias"
                | "encoder.conv2.bias"
                | "encoder.positional_embedding"
                | "decoder.positional_embedding"
        )
}

/// llama.cpp's fallback for a k-quant whose rows are not whole 256-value blocks
/// (`llama_tensor_get_type`), restricted to the types ggml files of Whisper hold.
fn fallback(ty: GgmlType) -> GgmlType {
    match ty {
        GgmlType::Q2K | GgmlType::Q3K => GgmlType::Q4_0,
        GgmlType::Q4K => GgmlType::Q5_0,
        GgmlType::Q5K => GgmlType::Q5_1,
        GgmlType::Q6K => GgmlType::Q8_0,
        other => other,
    }
}

fn plan(src: &Source, ty: GgmlType, report: &mut ConvertReport) -> Result<Vec<Planned>> {
    let entries: Vec<(String, String, Vec<usize>)> = match src {
        Source::Hf(files, names) => names
            .iter()
            .map(|n| {
                let name = openai_name(n);
                let mut shape = files.shape(n).unwrap_or_default();
                if name == "encoder.conv1.bias" || name == "encoder.conv2.bias" {
                    shape.push(1);
                }
                (name, n.clone(), shape)
            })
            .collect(),
        Source::Ggml(file) => file
            .tensors()
            .iter()
            .filter(|t| t.name != MEL_FILTERS_TENSOR)
            .map(|t| (t.name.clone(), t.name.clone(), t.shape()))
            .collect(),
    };
    let mut plan = Vec::with_capacity(entries.len());
    for (name, source_name, shape) in entries {
        let dims: Vec<usize> = shape.iter().rev().copied().collect();
        let out_ty = if always_f32(&name, dims.len()) {
            GgmlType::F32
        } else if ty.is_quantized() && dims.len() == 2 {
            let mut t = ty;
            if t.row_bytes(dims[0]).is_none() {
                t = fallback(ty);
                if t.row_bytes(dims[0]).is_none() {
                    t = GgmlType::F16;
                }
                report.fallbacks.push((name.clone(), t));
            } else {
                report.matrices += 1;
            }
            t
        } else {
            let float = if ty == GgmlType::F32 {
                ty
            } else {
                GgmlType::F16
            };
            report.matrices += usize::from(float == ty && dims.len() >= 2);
            float
        };
        plan.push(Planned {
            spec: TensorSpec::new(name, &dims, out_ty),
            source_name,
        });
    }
    if plan.is_empty() {
        return Err(Error::InvalidRequest(
            "the source has no Whisper tensors".into(),
        ));
    }
    Ok(plan)
}

/// What a config that contradicts its weights would write: the numbers a loader takes
/// from the header (layers, vocabulary, contexts, width, mel bins) against the tensors.
fn check_shapes(h: &Hparams, plan: &[Planned]) -> std::result::Result<(), String> {
    let dims = |name: &str| {
        plan.iter()
            .find(|p| p.spec.name == name)
            .map(|p| &p.spec.dims)
    };
    // ggml order: the row length first.
    let expected = [
        (
            "decoder.token_embedding.weight",
            vec![h.n_text_state, h.n_vocab],
        ),
        (
            "decoder.positional_embedding",
            vec![h.n_text_state, h.n_text_ctx],
        ),
        (
            "encoder.positional_embedding",
            vec![h.n_audio_state, h.n_audio_ctx],
        ),
        ("encoder.conv1.weight", vec![3, h.n_mels, h.n_audio_state]),
    ];
    for (name, want) in expected {
        match dims(name) {
            Some(got) if *got == want => {}
            Some(got) => {
                return Err(format!(
                    "{name} is {got:?} (ggml order), the config makes it {want:?}"
                ))
            }
            None => return Err(format!("no {name}")),
        }
    }
    for (part, layers) in [("encoder", h.n_audio_layer), ("decoder", h.n_text_layer)] {
        let prefix = format!("{part}.blocks.");
        let held = plan
            .iter()
            .filter_map(|p| {
                p.spec
                    .name
                    .strip_prefix(&prefix)?
                    .split('.')
                    .next()?
                    .parse()
                    .ok()
            })
            .map(|i: usize| i + 1)
            .max()
            .unwrap_or(0);
        if held != layers {
            return Err(format!(
                "the config says {layers} {part} layers, the weights hold {held}"
            ));
        }
    }
    Ok(())
}

/// A tensor's values as f32, row-major.
fn values(src: &Source, name: &str) -> Result<Vec<f32>> {
    match src {
        Source::Hf(files, _) => {
            let t = files
                .load(name, &Device::Cpu)
                .and_then(|t| t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>());
            t.map_err(|e| Error::Weights {
                path: name.into(),
                message: e.to_string(),
            })
        }
        Source::Ggml(file) => {
            let t = file.tensor(name).expect("planned from the file's tensors");
            let row = t.row_len();
            let mut out = vec![0f32; t.elements()];
            if row > 0 {
                let bytes = t.ty.row_bytes(row).expect("checked when read");
                file.data(t)
                    .par_chunks_exact(bytes)
                    .zip(out.par_chunks_exact_mut(row))
                    .for_each(|(s, d)| dequantize_row(t.ty, s, d));
            }
            Ok(out)
        }
    }
}

/// The values stored as `spec.ty`, rows in parallel (ggml's k-quant searches are slow).
fn encode(values: &[f32], spec: &TensorSpec) -> Vec<u8> {
    let row = spec.dims.first().copied().unwrap_or(1);
    let row_bytes = spec.ty.row_bytes(row).expect("planned for whole blocks");
    let mut out = vec![0u8; values.len() / row.max(1) * row_bytes];
    if row > 0 {
        values
            .par_chunks_exact(row)
            .zip(out.par_chunks_exact_mut(row_bytes))
            .for_each(|(s, d)| quantize_row(spec.ty, s, d));
    }
    out
}
