//! The Base checkpoints' ECAPA-TDNN speaker encoder (qwen-tts `Qwen3TTSSpeakerEncoder`,
//! specs/qwen3-tts.md §6 "Base"): a 24 kHz reference clip → one x-vector, the talker's speaker
//! embedding.
//!
//! ```text
//! samples ─log-magnitude mel (128 bins, hop 256)─▶ (T, 128) ─transpose─▶ (1, 128, T)
//!   ─blocks.0: TDNN k5─▶ (1, C₀, T)
//!   ─blocks.1..n−2: SE-Res2Net [TDNN k1, Res2Net (k, d), TDNN k1, squeeze-excitation] + residual─▶
//!   ─mfa: TDNN k1 over cat(blocks.1..n−2)─▶ (1, A, T)
//!   ─asp: attentive statistics pooling─▶ (1, 2A, 1) ─fc k1─▶ x-vector (enc_dim)
//! ```
//!
//! A TDNN is a convolution with torch's `padding="same", padding_mode="reflect"`, then ReLU. The
//! real encoder has channels [512, 512, 512, 512, 1536] (A = 1536), kernels [5, 3, 3, 3, 1],
//! dilations [1, 2, 3, 4, 1], Res2Net scale 8 and enc_dim = the talker's hidden size. Weights may
//! be BF16 in the checkpoint; everything here runs in f32 (the reference computes in the
//! model's dtype, so this is at least as precise).

use crate::error::{Error, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;
use voxide_audio::{LogMagnitudeMel, MelGeometry};
use voxide_nn::conv::{Conv1d, Conv1dSpec, ReflectSameConv1d};

/// `speaker_encoder_config` of a Base checkpoint's `config.json` (qwen-tts
/// `Qwen3TTSSpeakerEncoderConfig`); omitted fields take the Python defaults.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct SpeakerEncoderConfig {
    /// Mel bins of the input (128).
    pub mel_dim: usize,
    /// x-vector size (the talker's hidden size in real checkpoints; Python default 1024).
    pub enc_dim: usize,
    /// Output channels of blocks.0, the SE-Res2Net blocks, and mfa (last).
    pub enc_channels: Vec<usize>,
    /// Kernel width of each entry of `enc_channels`.
    pub enc_kernel_sizes: Vec<usize>,
    /// Dilation of each entry of `enc_channels`.
    pub enc_dilations: Vec<usize>,
    /// Hidden channels of the attentive pooling.
    pub enc_attention_channels: usize,
    /// Res2Net groups per SE-Res2Net block.
    pub enc_res2net_scale: usize,
    /// Squeeze channels of the squeeze-excitation.
    pub enc_se_channels: usize,
    /// Rate the reference clip is resampled to (24000).
    pub sample_rate: u32,
}

impl Default for SpeakerEncoderConfig {
    fn default() -> Self {
        Self {
            mel_dim: 128,
            enc_dim: 1024,
            enc_channels: vec![512, 512, 512, 512, 1536],
            enc_kernel_sizes: vec![5, 3, 3, 3, 1],
            enc_dilations: vec![1, 2, 3, 4, 1],
            enc_attention_channels: 128,
            enc_res2net_scale: 8,
            enc_se_channels: 128,
            sample_rate: 24_000,
        }
    }
}

impl SpeakerEncoderConfig {
    /// Checks what the reference would fail on (or silently compute differently): equal list
    /// lengths, at least one SE-Res2Net block, residual widths, Res2Net splits, mfa's input
    /// width, and the fixed mel front end of `extract_speaker_embedding`.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let (ch, k, d) = (
            &self.enc_channels,
            &self.enc_kernel_sizes,
            &self.enc_dilations,
        );
        if ch.len() != k.len() || ch.len() != d.len() {
            return Err(format!(
                "enc_channels, enc_kernel_sizes and enc_dilations have lengths {}, {}, {}; they \
                 must be equal",
                ch.len(),
                k.len(),
                d.len()
            ));
        }
        if ch.len() < 3 {
            return Err(format!(
                "enc_channels has {} entries; need at least 3 (a first TDNN, SE-Res2Net blocks, mfa)",
                ch.len()
            ));
        }
        let positive = [
            self.mel_dim,
            self.enc_dim,
            self.enc_attention_channels,
            self.enc_res2net_scale,
            self.enc_se_channels,
        ];
        if positive.contains(&0) || ch.contains(&0) || k.contains(&0) || d.contains(&0) {
            return Err("speaker encoder sizes, kernels and dilations must be positive".into());
        }
        let n = ch.len();
        let scale = self.enc_res2net_scale;
        for i in 1..n - 1 {
            if ch[i] != ch[i - 1] || !ch[i].is_multiple_of(scale) {
                return Err(format!(
                    "SE-Res2Net block {i} has {} channels after {}: they must be equal (residual) \
                     and divisible by enc_res2net_scale {scale}",
                    ch[i],
                    ch[i - 1]
                ));
            }
        }
        let aggregated: usize = ch[1..n - 1].iter().sum();
        if aggregated != ch[n - 1] {
            return Err(format!(
                "mfa takes the {aggregated} channels of the SE-Res2Net blocks but enc_channels \
                 ends with {}",
                ch[n - 1]
            ));
        }
        let mel = MelGeometry::QWEN3_TTS_SPEAKER;
        if self.mel_dim != mel.n_mels || self.sample_rate != mel.sample_rate {
            return Err(format!(
                "mel_dim {} at {} Hz: the speaker mel is fixed at {} bins at {} Hz",
                self.mel_dim, self.sample_rate, mel.n_mels, mel.sample_rate
            ));
        }
        Ok(())
    }
}

/// Time-delay layer: reflect-"same" convolution, then ReLU.
#[derive(Clone, Debug)]
struct Tdnn {
    conv: ReflectSameConv1d,
}

impl Tdnn {
    fn load(
        vb: VarBuilder,
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        dilation: usize,
    ) -> candle_core::Result<Self> {
        Ok(Self {
            conv: ReflectSameConv1d::load(
                vb.pp("conv"),
                in_channels,
                out_channels,
                kernel,
                dilation,
            )?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.conv.forward(x)?.relu()
    }
}

/// A convolution with kernel 1: torch's reflect-"same" padding is then no padding at all.
fn pointwise(
    vb: VarBuilder,
    in_channels: usize,
    out_channels: usize,
) -> candle_core::Result<Conv1d> {
    Conv1d::load(vb, Conv1dSpec::new(in_channels, out_channels, 1))
}

/// Res2Net: the channels split into `scale` groups; group 0 passes through, group 1 goes
/// through TDNN 0, group i ≥ 2 through TDNN i−1 after adding group i−1's output.
#[derive(Clone, Debug)]
struct Res2Net {
    blocks: Vec<Tdnn>,
}

impl Res2Net {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let width = x.dim(1)? / (self.blocks.len() + 1);
        let mut parts: Vec<Tensor> = Vec::with_capacity(self.blocks.len() + 1);
        parts.push(x.narrow(1, 0, width)?);
        for (i, block) in self.blocks.iter().enumerate() {
            let part = x.narrow(1, (i + 1) * width, width)?;
            let input = match parts.last() {
                Some(prev) if i > 0 => (part + prev)?,
                _ => part,
            };
            parts.push(block.forward(&input)?);
        }
        Tensor::cat(&parts, 1)
    }
}

/// TDNN k1 → Res2Net (k, d) → TDNN k1 → squeeze-excitation (time mean → k1 conv, ReLU → k1
/// conv, sigmoid → per-channel gate), plus the input.
#[derive(Clone, Debug)]
struct SeRes2NetBlock {
    tdnn1: Tdnn,
    res2net: Res2Net,
    tdnn2: Tdnn,
    se_conv1: Conv1d,
    se_conv2: Conv1d,
}

impl SeRes2NetBlock {
    fn load(
        vb: VarBuilder,
        channels: usize,
        cfg: &SpeakerEncoderConfig,
        kernel: usize,
        dilation: usize,
    ) -> candle_core::Result<Self> {
        let group = channels / cfg.enc_res2net_scale;
        let res2net = (0..cfg.enc_res2net_scale - 1)
            .map(|i| {
                Tdnn::load(
                    vb.pp("res2net_block.blocks").pp(i),
                    group,
                    group,
                    kernel,
                    dilation,
                )
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(Self {
            tdnn1: Tdnn::load(vb.pp("tdnn1"), channels, channels, 1, 1)?,
            res2net: Res2Net { blocks: res2net },
            tdnn2: Tdnn::load(vb.pp("tdnn2"), channels, channels, 1, 1)?,
            se_conv1: pointwise(vb.pp("se_block.conv1"), channels, cfg.enc_se_channels)?,
            se_conv2: pointwise(vb.pp("se_block.conv2"), cfg.enc_se_channels, channels)?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.tdnn1.forward(x)?;
        let h = self.tdnn2.forward(&self.res2net.forward(&h)?)?;
        let gate = self.se_conv1.forward(&h.mean_keepdim(2)?)?.relu()?;
        let gate = candle_nn::ops::sigmoid(&self.se_conv2.forward(&gate)?)?;
        h.broadcast_mul(&gate)? + x
    }
}

/// Attentive statistics pooling over time: attention logits per channel and frame from
/// `conv(tanh(tdnn(cat(x, mean, std))))` with the plain mean / std broadcast over time, softmax
/// over time, then the attention-weighted mean and std.
#[derive(Clone, Debug)]
struct AttentivePooling {
    /// `asp.tdnn` (kernel 1) split by input block, [attention, C] each: its product with
    /// `cat(x, mean, std)` is `x_part · x + (mean_part · mean + std_part · std)`, and the
    /// bracket is the same for every frame — a third of the multiply, and no 3C × T copy.
    tdnn_x: Tensor,
    tdnn_mean: Tensor,
    tdnn_std: Tensor,
    /// [attention, 1].
    tdnn_bias: Tensor,
    conv: Conv1d,
}

impl AttentivePooling {
    /// Standard deviations are floored at sqrt(1e-12), as the reference's `clamp(eps)`.
    const EPS: f64 = 1e-12;

    fn load(vb: VarBuilder, channels: usize, attention: usize) -> candle_core::Result<Self> {
        let tdnn = vb.pp("tdnn.conv");
        let (f32, zero) = (DType::F32, candle_nn::Init::Const(0.));
        let weight = tdnn
            .get_with_hints_dtype((attention, 3 * channels, 1), "weight", zero, f32)?
            .squeeze(2)?;
        let part = |i: usize| weight.narrow(1, i * channels, channels)?.contiguous();
        Ok(Self {
            tdnn_x: part(0)?,
            tdnn_mean: part(1)?,
            tdnn_std: part(2)?,
            tdnn_bias: tdnn
                .get_with_hints_dtype(attention, "bias", zero, f32)?
                .unsqueeze(1)?,
            conv: pointwise(vb.pp("conv"), attention, channels)?,
        })
    }

    /// x (1, C, T) → (1, 2C, 1): weighted mean, then weighted std.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (mean, std) = Self::stats(x, None)?;
        let per_utterance = (self.tdnn_mean.matmul(&mean.squeeze(0)?)?
            + self.tdnn_std.matmul(&std.squeeze(0)?)?
            + &self.tdnn_bias)?;
        let hidden = self
            .tdnn_x
            .matmul(&x.squeeze(0)?)?
            .broadcast_add(&per_utterance)?
            .relu()?
            .tanh()?;
        let logits = self.conv.forward(&hidden.unsqueeze(0)?)?;
        let weights = candle_nn::ops::softmax_last_dim(&logits)?;
        let (mean, std) = Self::stats(x, Some(&weights))?;
        Tensor::cat(&[mean, std], 1)
    }

    /// Mean and std over time (1, C, 1) each: uniform, or with `weights` (1, C, T) summing to 1.
    fn stats(x: &Tensor, weights: Option<&Tensor>) -> candle_core::Result<(Tensor, Tensor)> {
        let average = |v: &Tensor| match weights {
            Some(w) => (v * w)?.sum_keepdim(2),
            None => v.mean_keepdim(2),
        };
        let mean = average(x)?;
        let var = average(&x.broadcast_sub(&mean)?.sqr()?)?;
        Ok((mean, var.clamp(Self::EPS, f64::INFINITY)?.sqrt()?))
    }
}

/// The intermediate tensors of one [`SpeakerEncoder::forward_stages`] pass (batch 1), named as
/// the reference's modules.
#[derive(Clone, Debug)]
pub struct SpeakerStages {
    /// `blocks.i` outputs, `(1, enc_channels[i], T)` for i < n − 1.
    pub blocks: Vec<Tensor>,
    /// Multi-layer feature aggregation, (1, A, T).
    pub mfa: Tensor,
    /// Attentive statistics pooling: weighted mean then std, (1, 2A, 1).
    pub asp: Tensor,
    /// The x-vector, (enc_dim).
    pub xvector: Tensor,
}

/// A loaded speaker encoder with its mel front end.
#[derive(Clone, Debug)]
pub struct SpeakerEncoder {
    config: SpeakerEncoderConfig,
    mel: std::sync::Arc<LogMagnitudeMel>,
    first: Tdnn,
    blocks: Vec<SeRes2NetBlock>,
    mfa: Tdnn,
    asp: AttentivePooling,
    fc: Conv1d,
    /// Fewest mel frames every reflect padding accepts.
    min_frames: usize,
    device: Device,
}

impl SpeakerEncoder {
    /// Loads `speaker_encoder.*` from `vb`, the root of a Base checkpoint's model.safetensors;
    /// an error if `cfg` is inconsistent ([`SpeakerEncoderConfig::validate`]) or a tensor is
    /// missing or mis-shaped. Weights are converted to f32 whatever their dtype.
    pub fn load(vb: VarBuilder, cfg: &SpeakerEncoderConfig) -> candle_core::Result<Self> {
        cfg.validate().map_err(candle_core::Error::Msg)?;
        let vb = vb.pp("speaker_encoder");
        let (ch, k, d) = (&cfg.enc_channels, &cfg.enc_kernel_sizes, &cfg.enc_dilations);
        let n = ch.len();
        let first = Tdnn::load(vb.pp("blocks.0"), cfg.mel_dim, ch[0], k[0], d[0])?;
        let blocks = (1..n - 1)
            .map(|i| SeRes2NetBlock::load(vb.pp("blocks").pp(i), ch[i], cfg, k[i], d[i]))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let mfa = Tdnn::load(vb.pp("mfa"), ch[n - 1], ch[n - 1], k[n - 1], d[n - 1])?;
        let asp = AttentivePooling::load(vb.pp("asp"), ch[n - 1], cfg.enc_attention_channels)?;
        let fc = pointwise(vb.pp("fc"), 2 * ch[n - 1], cfg.enc_dim)?;
        let min_frames = blocks
            .iter()
            .flat_map(|b| &b.res2net.blocks)
            .chain([&first, &mfa])
            .map(|tdnn| tdnn.conv.min_frames())
            .max()
            .unwrap_or(1);
        Ok(Self {
            config: cfg.clone(),
            mel: std::sync::Arc::new(LogMagnitudeMel::new(MelGeometry::QWEN3_TTS_SPEAKER)),
            first,
            blocks,
            mfa,
            asp,
            fc,
            min_frames,
            device: vb.device().clone(),
        })
    }

    /// The configuration it was loaded with.
    pub fn config(&self) -> &SpeakerEncoderConfig {
        &self.config
    }

    /// The encoder's input for a mono clip at 24 kHz (resample first, as qwen-tts does with
    /// librosa): log-magnitude mel, (T, mel_dim) with T = len / 256, on the encoder's device.
    /// A clip too short for the reflect paddings of the mel and the convolutions is an
    /// [`Error::InvalidRequest`].
    pub fn mel(&self, samples_24k: &[f32]) -> Result<Tensor> {
        let need = self.mel.min_samples(self.min_frames);
        // `need` covers the mel's own minimum, so log_mel only fails on clips shorter than it.
        let mel = (samples_24k.len() >= need)
            .then(|| self.mel.log_mel(samples_24k))
            .flatten()
            .ok_or_else(|| {
                let rate = self.mel.geometry().sample_rate as f64;
                Error::InvalidRequest(format!(
                    "the reference clip is too short for the speaker encoder: {} samples ({:.3} s) \
                     at 24 kHz, need at least {need} ({:.3} s)",
                    samples_24k.len(),
                    samples_24k.len() as f64 / rate,
                    need as f64 / rate
                ))
            })?;
        let frames = mel.len() / self.config.mel_dim;
        Ok(Tensor::from_vec(
            mel,
            (frames, self.config.mel_dim),
            &self.device,
        )?)
    }

    /// Runs the network on a mel (T, mel_dim) from [`Self::mel`], keeping every stage.
    pub fn forward_stages(&self, mel: &Tensor) -> candle_core::Result<SpeakerStages> {
        let x = mel.t()?.unsqueeze(0)?.contiguous()?;
        let mut outputs = vec![self.first.forward(&x)?];
        for block in &self.blocks {
            let next = block.forward(&outputs[outputs.len() - 1])?;
            outputs.push(next);
        }
        let mfa = self.mfa.forward(&Tensor::cat(&outputs[1..], 1)?)?;
        let asp = self.asp.forward(&mfa)?;
        let xvector = self.fc.forward(&asp)?.flatten_all()?;
        Ok(SpeakerStages {
            blocks: outputs,
            mfa,
            asp,
            xvector,
        })
    }

    /// The x-vector of a mono 24 kHz clip (qwen-tts `extract_speaker_embedding`), enc_dim values.
    pub fn embed(&self, samples_24k: &[f32]) -> Result<Vec<f32>> {
        let stages = self.forward_stages(&self.mel(samples_24k)?)?;
        Ok(stages.xvector.to_vec1::<f32>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_validation() {
        let cfg: SpeakerEncoderConfig = serde_json::from_str(r#"{"enc_dim": 2048}"#).unwrap();
        assert_eq!(cfg.enc_dim, 2048);
        assert_eq!(cfg.enc_channels, [512, 512, 512, 512, 1536]);
        assert_eq!(cfg.enc_dilations, [1, 2, 3, 4, 1]);
        assert_eq!(
            (cfg.mel_dim, cfg.enc_res2net_scale, cfg.sample_rate),
            (128, 8, 24_000)
        );
        assert!(cfg.validate().is_ok());
        let bad = |json: &str| {
            serde_json::from_str::<SpeakerEncoderConfig>(json)
                .unwrap()
                .validate()
                .unwrap_err()
        };
        assert!(bad(r#"{"enc_kernel_sizes": [5, 3, 3, 1]}"#).contains("lengths 5, 4, 5"));
        assert!(bad(r#"{"enc_channels": [512, 512, 512, 512, 1024]}"#).contains("mfa"));
        assert!(bad(r#"{"enc_res2net_scale": 7}"#).contains("divisible"));
        assert!(bad(r#"{"sample_rate": 16000}"#).contains("fixed"));
    }
}
