//! The Silero VAD v6 network (16 kHz branch), in f32 on the CPU.
//!
//! Per 512-sample window, with the 64 samples before it prepended (576 samples):
//!
//! 1. STFT as a convolution (`encoder.feature_extractor`): reflect-pad, frames of 256 with a
//!    hop of 128 against `forward_basis_buffer` [258, 1, 256] (the Hann-windowed real and
//!    imaginary DFT rows of bins 0..=128), magnitude `sqrt(re² + im²)` → [4, 129].
//!    The ONNX graph pads 128 on both sides (832 samples, 5 frames) and drops frame 0, which
//!    leaves frames starting at samples 0, 128, 256, 384 of the input: the same as padding
//!    only the right end by 64 (whisper.cpp pads 64 on both sides of a bare 512-sample window
//!    instead, with no context; the silero-vad package prepends the context).
//! 2. Encoder (`encoder.conv_layers.0..3`): Conv1d kernel 3, padding 1, strides 1, 2, 2, 1,
//!    channels 129 → 128 → 64 → 64 → 128, each followed by ReLU: [4, 129] → [1, 128].
//! 3. Decoder: one LSTM cell step (hidden 128; h and c carried across windows), ReLU, 1×1
//!    conv 128 → 1 (`decoder.conv1d`), sigmoid: the speech probability.
//!
//! Every detail was read off the ONNX graph (`silero_vad_v6.onnx`: `Pad` mode reflect, pads
//! [0, 128, 0, 128]; `Conv` stride 128; `Slice` `[1:]` on time; `LSTM` over the window axis,
//! gates i, o, f, c); the ggml layout and the PyTorch names follow whisper.cpp
//! (`whisper_vad_build_graph`, `models/convert-silero-vad-to-ggml.py`).
//!
//! ~680 k multiply-adds per window (STFT 264 k, encoder 284 k, LSTM 131 k): 21 M per second
//! of audio. Two paths compute the same function (within ~1e-6):
//! - [`VadState::probability`], one window at a time in plain f32 loops, for live streams
//!   (~0.25 ms per 32 ms window on one core);
//! - [`SileroVad::probabilities`], a whole file: the STFT, the encoder and the LSTM's input
//!   projection do not depend on the recurrent state, so they run as matrix products over
//!   blocks of windows (candle's GEMM), and only `W_hh · h` and the cell update run window by
//!   window: ~650× real time on one core against ~130× for the loops.

use super::{ggml, onnx, RawTensor, CONTEXT, WINDOW};
use crate::{Error, Result};
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::Path;
use voxide_nn::kernels::simd::dot;

/// LSTM input and hidden size.
const HIDDEN: usize = 128;
/// STFT filter length, hop and number of frequency bins.
const N_FFT: usize = 256;
const HOP: usize = 128;
const N_BINS: usize = N_FFT / 2 + 1;
/// Frames per window: (576 + 64 right padding − 256) / 128 + 1.
const N_FRAMES: usize = 4;
/// Samples the network sees per window: context + window.
const INPUT: usize = CONTEXT + WINDOW;
/// `INPUT` plus the reflected right padding.
const PADDED: usize = (N_FRAMES - 1) * HOP + N_FFT;
/// Windows per block of [`SileroVad::probabilities`] (16 s: 1 MB of frames).
const BLOCK: usize = 512;

/// One encoder convolution: kernel 3, padding 1, followed by ReLU.
struct Conv1d {
    /// `weight` [out, in, 3] stored as [out, 3 × in] (tap-major) so that each output is one
    /// dot product with the three input frames laid side by side.
    weight: Vec<f32>,
    bias: Vec<f32>,
    in_channels: usize,
    out_channels: usize,
    stride: usize,
}

impl Conv1d {
    const KERNEL: usize = 3;

    fn t_out(&self, t_in: usize) -> usize {
        (t_in + 2 - Self::KERNEL) / self.stride + 1
    }

    /// The input frames that output frame `t` sees, side by side: `col` [3 × in] =
    /// [x[t·s − 1], x[t·s], x[t·s + 1]], zeros outside the input (padding 1). `x` [t_in, in].
    fn im2col(&self, x: &[f32], t_in: usize, t: usize, col: &mut [f32]) {
        let c_in = self.in_channels;
        for k in 0..Self::KERNEL {
            let dst = &mut col[k * c_in..(k + 1) * c_in];
            match (t * self.stride + k).checked_sub(1) {
                Some(src) if src < t_in => dst.copy_from_slice(&x[src * c_in..(src + 1) * c_in]),
                _ => dst.fill(0.0),
            }
        }
    }

    /// `x` [t_in, in] (time-major) → `out` [t_out, out]; returns t_out.
    fn forward(&self, x: &[f32], t_in: usize, out: &mut [f32], col: &mut [f32]) -> usize {
        let c_out = self.out_channels;
        let col = &mut col[..Self::KERNEL * self.in_channels];
        let t_out = self.t_out(t_in);
        for t in 0..t_out {
            self.im2col(x, t_in, t, col);
            let y = &mut out[t * c_out..(t + 1) * c_out];
            matvec(&self.weight, col, &self.bias, y);
            relu(y);
        }
        t_out
    }

    /// [`Conv1d::forward`] on `n` inputs [n, t_in, in] at once → [n, t_out, out]: one matrix
    /// product of their columns [n × t_out, 3 × in] with `weight_t`.
    fn forward_batch(
        &self,
        x: &[f32],
        n: usize,
        t_in: usize,
        weight_t: &Tensor,
    ) -> Result<Vec<f32>> {
        let (c_in, t_out) = (self.in_channels, self.t_out(t_in));
        let width = Self::KERNEL * c_in;
        let mut cols = vec![0.0; n * t_out * width];
        for (i, x) in x.chunks_exact(t_in * c_in).enumerate() {
            for t in 0..t_out {
                let row = (i * t_out + t) * width;
                self.im2col(x, t_in, t, &mut cols[row..row + width]);
            }
        }
        let mut y = matmul(cols, n * t_out, weight_t)?;
        for row in y.chunks_exact_mut(self.out_channels) {
            row.iter_mut().zip(&self.bias).for_each(|(v, b)| *v += b);
            relu(row);
        }
        Ok(y)
    }
}

/// The transposed weights of the batched path, `x · Wᵀ` as candle matrices.
struct Transposed {
    /// [256, 258].
    forward_basis_buffer: Tensor,
    /// [3 × in, out] per layer.
    conv_layers: [Tensor; 4],
    /// `weight_ih` transposed [128, 4 × 128].
    weight_ih: Tensor,
    /// `weight_hh` transposed [128, 4 × 128] (plain: the product with h is one per window).
    weight_hh: Vec<f32>,
}

/// Loaded Silero VAD weights (f32), shareable between streams and threads; each stream keeps
/// its own [`VadState`].
pub struct SileroVad {
    /// `encoder.feature_extractor.forward_basis_buffer` [258, 1, 256] as [258, 256]: rows
    /// 0..129 the real parts, 129..258 the imaginary parts.
    forward_basis_buffer: Vec<f32>,
    /// `encoder.conv_layers.0..3`.
    conv_layers: [Conv1d; 4],
    /// The LSTM's `[weight_ih | weight_hh]` [4 × 128, 128 + 128] in PyTorch's gate order
    /// (i, f, g, o), so that the gates are one product with `[x; h]`.
    rnn_weight: Vec<f32>,
    /// `bias_ih + bias_hh` [4 × 128].
    rnn_bias: Vec<f32>,
    /// `decoder.conv1d` (1×1, 128 → 1).
    conv1d_weight: Vec<f32>,
    conv1d_bias: f32,
    transposed: Transposed,
    description: String,
}

impl SileroVad {
    /// Loads weights from whisper.cpp's ggml file (`ggml-silero-v*.bin`) or from an ONNX file
    /// (faster-whisper's `silero_vad_v6.onnx`, or the silero-vad package's 16 kHz exports);
    /// the format is recognised by content. Errors name the file in one line.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::from_bytes(&bytes).map_err(|message| Error::Weights {
            path: path.to_owned(),
            message,
        })
    }

    /// [`SileroVad::load`] on the file's bytes; errors are bare messages.
    fn from_bytes(bytes: &[u8]) -> std::result::Result<Self, String> {
        if bytes.is_empty() {
            return Err("empty file".into());
        }
        if bytes.starts_with(b"lmgg") {
            let file = ggml::read(bytes)?;
            let description = format!(
                "Silero VAD v{} (whisper.cpp ggml; f16 convolutions and STFT basis)",
                file.version
            );
            return Self::from_torch_names(file.tensors, "_model.", description);
        }
        // A ModelProto starts with field 1 (ir_version, a varint): byte 0x08.
        if bytes[0] != 0x08 {
            return Err(
                "not a Silero VAD model: expected whisper.cpp's ggml file or an .onnx file".into(),
            );
        }
        let graph = onnx::read_graph(bytes)?;
        if graph
            .tensors
            .contains_key("encoder.feature_extractor.forward_basis_buffer")
        {
            return Self::from_onnx_names(graph);
        }
        for prefix in ["model.", "_model.", ""] {
            if graph
                .tensors
                .contains_key(&format!("{prefix}stft.forward_basis_buffer"))
            {
                let description = "Silero VAD (ONNX, f32)".to_string();
                return Self::from_torch_names(graph.tensors, prefix, description);
            }
        }
        Err(
            "no Silero VAD weights in this ONNX file (no STFT basis among its top-level \
             initializers; models that keep their weights inside If branches are not supported)"
                .into(),
        )
    }

    /// faster-whisper's export: `encoder.*`, `decoder.conv1d.*`, and the LSTM's W, R, B under
    /// generated names, found through the `LSTM` node; ONNX orders the gates i, o, f, c.
    fn from_onnx_names(mut graph: onnx::OnnxGraph) -> std::result::Result<Self, String> {
        let lstm = match graph.lstm_inputs.as_slice() {
            [inputs] if inputs.len() >= 4 => inputs.clone(),
            _ => return Err("expected exactly one LSTM node with W, R and B".into()),
        };
        let t = &mut graph.tensors;
        let conv = |t: &mut HashMap<String, RawTensor>, i: usize| {
            (
                take(t, &format!("encoder.conv_layers.{i}.weight")),
                take(t, &format!("encoder.conv_layers.{i}.bias")),
            )
        };
        let convs = [conv(t, 0), conv(t, 1), conv(t, 2), conv(t, 3)];
        let w = take(t, &lstm[1])?;
        let r = take(t, &lstm[2])?;
        let b = take(t, &lstm[3])?;
        expect_shape(&lstm[1], &w, &[4 * HIDDEN, HIDDEN])?;
        expect_shape(&lstm[2], &r, &[4 * HIDDEN, HIDDEN])?;
        expect_shape(&lstm[3], &b, &[8 * HIDDEN])?;
        // ONNX (i, o, f, c) → PyTorch (i, f, g, o).
        let reorder = |x: &[f32], row: usize| -> Vec<f32> {
            [0, 2, 3, 1]
                .iter()
                .flat_map(|&g| x[g * HIDDEN * row..(g + 1) * HIDDEN * row].iter().copied())
                .collect()
        };
        let (b_ih, b_hh) = b.data.split_at(4 * HIDDEN);
        Self::assemble(
            take(t, "encoder.feature_extractor.forward_basis_buffer")?,
            convs,
            (
                reorder(&w.data, HIDDEN),
                reorder(&r.data, HIDDEN),
                reorder(b_ih, 1),
                reorder(b_hh, 1),
            ),
            (
                take(t, "decoder.conv1d.weight")?,
                take(t, "decoder.conv1d.bias")?,
            ),
            "Silero VAD (ONNX, f32)".into(),
        )
    }

    /// The PyTorch module's names (`stft.*`, `encoder.N.reparam_conv.*`, `decoder.rnn.*`,
    /// `decoder.decoder.2.*`) under `prefix`: ggml files and silero-vad's own 16 kHz ONNX.
    fn from_torch_names(
        mut t: HashMap<String, RawTensor>,
        prefix: &str,
        description: String,
    ) -> std::result::Result<Self, String> {
        let t = &mut t;
        let conv = |t: &mut HashMap<String, RawTensor>, i: usize| {
            (
                take(t, &format!("{prefix}encoder.{i}.reparam_conv.weight")),
                take(t, &format!("{prefix}encoder.{i}.reparam_conv.bias")),
            )
        };
        let convs = [conv(t, 0), conv(t, 1), conv(t, 2), conv(t, 3)];
        let mut rnn = |name: &str, shape: &[usize]| -> std::result::Result<Vec<f32>, String> {
            let name = format!("{prefix}decoder.rnn.{name}");
            let x = take(t, &name)?;
            expect_shape(&name, &x, shape)?;
            Ok(x.data)
        };
        let lstm = (
            rnn("weight_ih", &[4 * HIDDEN, HIDDEN])?,
            rnn("weight_hh", &[4 * HIDDEN, HIDDEN])?,
            rnn("bias_ih", &[4 * HIDDEN])?,
            rnn("bias_hh", &[4 * HIDDEN])?,
        );
        Self::assemble(
            take(t, &format!("{prefix}stft.forward_basis_buffer"))?,
            convs,
            lstm,
            (
                take(t, &format!("{prefix}decoder.decoder.2.weight"))?,
                take(t, &format!("{prefix}decoder.decoder.2.bias"))?,
            ),
            description,
        )
    }

    /// Checks shapes and lays the tensors out for [`Stream::step`]. `lstm`: weight_ih,
    /// weight_hh, bias_ih, bias_hh in PyTorch's gate order.
    #[allow(clippy::type_complexity)]
    fn assemble(
        basis: RawTensor,
        convs: [(
            std::result::Result<RawTensor, String>,
            std::result::Result<RawTensor, String>,
        ); 4],
        lstm: (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>),
        head: (RawTensor, RawTensor),
        description: String,
    ) -> std::result::Result<Self, String> {
        expect_shape("STFT basis", &basis, &[2 * N_BINS, 1, N_FFT])?;
        const CHANNELS: [(usize, usize, usize); 4] =
            [(N_BINS, 128, 1), (128, 64, 2), (64, 64, 2), (64, HIDDEN, 1)];
        let mut layers = Vec::with_capacity(4);
        for (i, ((w, b), (c_in, c_out, stride))) in convs.into_iter().zip(CHANNELS).enumerate() {
            let (w, b) = (w?, b?);
            expect_shape(&format!("conv layer {i} weight"), &w, &[c_out, c_in, 3])?;
            expect_shape(&format!("conv layer {i} bias"), &b, &[c_out])?;
            // [out, in, k] → [out, k, in].
            let mut weight = vec![0.0; w.data.len()];
            for o in 0..c_out {
                for c in 0..c_in {
                    for k in 0..3 {
                        weight[(o * 3 + k) * c_in + c] = w.data[(o * c_in + c) * 3 + k];
                    }
                }
            }
            layers.push(Conv1d {
                weight,
                bias: b.data,
                in_channels: c_in,
                out_channels: c_out,
                stride,
            });
        }
        let (w_ih, w_hh, b_ih, b_hh) = lstm;
        let rnn_weight = w_ih
            .chunks_exact(HIDDEN)
            .zip(w_hh.chunks_exact(HIDDEN))
            .flat_map(|(a, b)| a.iter().chain(b).copied())
            .collect();
        let rnn_bias = b_ih.iter().zip(&b_hh).map(|(a, b)| a + b).collect();
        let (w, b) = head;
        expect_shape("decoder conv weight", &w, &[1, HIDDEN, 1])?;
        expect_shape("decoder conv bias", &b, &[1])?;
        let transposed = (|| -> candle_core::Result<Transposed> {
            let t = |data: &[f32], rows: usize, cols: usize| {
                Tensor::from_slice(data, (rows, cols), &Device::Cpu)?
                    .t()?
                    .contiguous()
            };
            let conv = |c: &Conv1d| t(&c.weight, c.out_channels, 3 * c.in_channels);
            Ok(Transposed {
                forward_basis_buffer: t(&basis.data, 2 * N_BINS, N_FFT)?,
                conv_layers: [
                    conv(&layers[0])?,
                    conv(&layers[1])?,
                    conv(&layers[2])?,
                    conv(&layers[3])?,
                ],
                weight_ih: t(&w_ih, 4 * HIDDEN, HIDDEN)?,
                weight_hh: t(&w_hh, 4 * HIDDEN, HIDDEN)?.flatten_all()?.to_vec1()?,
            })
        })()
        .map_err(|e| e.to_string())?;
        let model = Self {
            forward_basis_buffer: basis.data,
            conv_layers: layers
                .try_into()
                .map_err(|_| "four conv layers expected".to_string())?,
            rnn_weight,
            rnn_bias,
            conv1d_weight: w.data,
            conv1d_bias: b.data[0],
            transposed,
            description,
        };
        let all = [
            &model.forward_basis_buffer,
            &model.rnn_weight,
            &model.rnn_bias,
            &model.conv1d_weight,
        ];
        let convs = model.conv_layers.iter().flat_map(|c| [&c.weight, &c.bias]);
        if !all
            .into_iter()
            .chain(convs)
            .flatten()
            .all(|v| v.is_finite())
        {
            return Err("weights contain NaN or infinity".into());
        }
        Ok(model)
    }

    /// What was loaded, for logs: version and format.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// A fresh stream (zero LSTM state and context).
    pub fn state(&self) -> VadState<'_> {
        VadState {
            model: self,
            stream: Stream::default(),
        }
    }

    /// Speech probability of every 512-sample window of `samples` (16 kHz), the last one
    /// zero-padded (`get_speech_timestamps`' first half): what a fresh [`VadState`] gives
    /// window by window, computed in blocks of windows.
    pub fn probabilities(&self, samples: &[f32]) -> Result<Vec<f32>> {
        let n_windows = samples.len().div_ceil(WINDOW);
        let mut probs = Vec::with_capacity(n_windows);
        let mut stream = Stream::default();
        let mut x = [0.0f32; PADDED];
        for first in (0..n_windows).step_by(BLOCK) {
            let n = BLOCK.min(n_windows - first);
            // Frames [n × 4, 256]; x as in `Stream::step`: the previous 64 samples (zeros
            // before the start), the window, zeros after the end, the reflected padding.
            let mut frames = vec![0.0; n * N_FRAMES * N_FFT];
            for (w, dst) in frames.chunks_exact_mut(N_FRAMES * N_FFT).enumerate() {
                let start = (first + w) * WINDOW;
                for (j, v) in x[..INPUT].iter_mut().enumerate() {
                    *v = (start + j)
                        .checked_sub(CONTEXT)
                        .and_then(|i| samples.get(i))
                        .copied()
                        .unwrap_or(0.0);
                }
                reflect_pad(&mut x);
                for (t, frame) in dst.chunks_exact_mut(N_FFT).enumerate() {
                    frame.copy_from_slice(&x[t * HOP..t * HOP + N_FFT]);
                }
            }
            // STFT [n × 4, 258] → magnitude [n, 4, 129].
            let spec = matmul(frames, n * N_FRAMES, &self.transposed.forward_basis_buffer)?;
            let mag: Vec<f32> = spec
                .chunks_exact(2 * N_BINS)
                .flat_map(|s| {
                    let (re, im) = s.split_at(N_BINS);
                    re.iter().zip(im).map(|(r, i)| (r * r + i * i).sqrt())
                })
                .collect();
            // Encoder → [n, 128].
            let mut h = mag;
            let mut t = N_FRAMES;
            for (conv, w_t) in self.conv_layers.iter().zip(&self.transposed.conv_layers) {
                h = conv.forward_batch(&h, n, t, w_t)?;
                t = conv.t_out(t);
            }
            // W_ih · x for every window [n, 512]; the rest is sequential.
            let gx = matmul(h, n, &self.transposed.weight_ih)?;
            for gx in gx.chunks_exact(4 * HIDDEN) {
                probs.push(stream.lstm_and_decoder(self, gx, true));
            }
        }
        Ok(probs)
    }
}

/// `x` [rows, k] · `w_t` [k, n] → [rows, n], row-major.
fn matmul(x: Vec<f32>, rows: usize, w_t: &Tensor) -> Result<Vec<f32>> {
    let k = x.len() / rows.max(1);
    let x = Tensor::from_vec(x, (rows, k), &Device::Cpu)?;
    Ok(x.matmul(w_t)?.flatten_all()?.to_vec1()?)
}

/// Fills `x[576..640]` with the reflection of `x[..576]` (ONNX `Pad` mode reflect: the edge
/// sample is not repeated).
fn reflect_pad(x: &mut [f32; PADDED]) {
    for i in INPUT..PADDED {
        x[i] = x[2 * (INPUT - 1) - i];
    }
}

fn relu(x: &mut [f32]) {
    x.iter_mut().for_each(|v| *v = v.max(0.0));
}

/// Removes a tensor from the map, or says it is missing.
fn take(t: &mut HashMap<String, RawTensor>, name: &str) -> std::result::Result<RawTensor, String> {
    t.remove(name)
        .ok_or_else(|| format!("missing tensor {name}"))
}

/// Checks a shape, ignoring axes of size 1 (ggml files squeeze them away).
fn expect_shape(name: &str, t: &RawTensor, shape: &[usize]) -> std::result::Result<(), String> {
    let squeeze = |d: &[usize]| d.iter().copied().filter(|&n| n != 1).collect::<Vec<_>>();
    let count: usize = t.dims.iter().product();
    if squeeze(&t.dims) != squeeze(shape) || count != t.data.len() {
        return Err(format!(
            "tensor {name} has shape {:?} ({} values), expected {shape:?}",
            t.dims,
            t.data.len()
        ));
    }
    Ok(())
}

/// One stream's LSTM state and context (all that is carried across windows), with scratch
/// buffers so that a window allocates nothing.
struct Stream {
    h: [f32; HIDDEN],
    c: [f32; HIDDEN],
    /// The last 64 samples of the previous window (zeros before the first).
    context: [f32; CONTEXT],
    /// Context + window + reflected padding [640].
    x: [f32; PADDED],
    /// STFT [4, 258], then encoder activations (time-major).
    a: Vec<f32>,
    b: Vec<f32>,
    col: Vec<f32>,
    /// `[x; h]` [256], then the gates [512].
    xh: Vec<f32>,
    gates: Vec<f32>,
}

impl Default for Stream {
    fn default() -> Self {
        Self {
            h: [0.0; HIDDEN],
            c: [0.0; HIDDEN],
            context: [0.0; CONTEXT],
            x: [0.0; PADDED],
            a: vec![0.0; N_FRAMES * 2 * N_BINS],
            b: vec![0.0; N_FRAMES * 2 * N_BINS],
            col: vec![0.0; 3 * N_BINS],
            xh: vec![0.0; 2 * HIDDEN],
            gates: vec![0.0; 4 * HIDDEN],
        }
    }
}

impl Stream {
    /// The speech probability of one window (≤ 512 samples; zero-padded).
    fn step(&mut self, m: &SileroVad, window: &[f32]) -> f32 {
        assert!(
            window.len() <= WINDOW,
            "Silero VAD windows are {WINDOW} samples, got {}",
            window.len()
        );
        // x = context ++ window (zero-padded to 512) ++ reflect(x)[64]: [640].
        let x = &mut self.x;
        x[..CONTEXT].copy_from_slice(&self.context);
        x[CONTEXT..CONTEXT + window.len()].copy_from_slice(window);
        x[CONTEXT + window.len()..INPUT].fill(0.0);
        reflect_pad(x);
        self.context.copy_from_slice(&x[INPUT - CONTEXT..INPUT]);

        // STFT [4, 258] → magnitude [4, 129].
        let no_bias = [0.0; 2 * N_BINS];
        for t in 0..N_FRAMES {
            let frame = &x[t * HOP..t * HOP + N_FFT];
            let spec = &mut self.a[t * 2 * N_BINS..(t + 1) * 2 * N_BINS];
            matvec(&m.forward_basis_buffer, frame, &no_bias, spec);
            let (re, im) = spec.split_at(N_BINS);
            let mag = &mut self.b[t * N_BINS..(t + 1) * N_BINS];
            for ((m, r), i) in mag.iter_mut().zip(re).zip(im) {
                *m = (r * r + i * i).sqrt();
            }
        }

        // Encoder: [4, 129] → [4, 128] → [2, 64] → [1, 64] → [1, 128].
        let [c0, c1, c2, c3] = &m.conv_layers;
        let t = c0.forward(&self.b, N_FRAMES, &mut self.a, &mut self.col);
        let t = c1.forward(&self.a, t, &mut self.b, &mut self.col);
        let t = c2.forward(&self.b, t, &mut self.a, &mut self.col);
        let t = c3.forward(&self.a, t, &mut self.b, &mut self.col);
        debug_assert_eq!(t, 1);

        // [x; h] for the gates.
        self.xh[..HIDDEN].copy_from_slice(&self.b[..HIDDEN]);
        self.xh[HIDDEN..].copy_from_slice(&self.h);
        let mut gates = std::mem::take(&mut self.gates);
        matvec(&m.rnn_weight, &self.xh, &m.rnn_bias, &mut gates);
        let p = self.lstm_and_decoder(m, &gates, false);
        self.gates = gates;
        p
    }

    /// The LSTM cell and the decoder. `gates`: all four pre-activations [512] (i, f, g, o),
    /// or with `add_hidden`, only `W_ih · x`: the bias and `W_hh · h` are added here.
    fn lstm_and_decoder(&mut self, m: &SileroVad, gates: &[f32], add_hidden: bool) -> f32 {
        let mut pre = [0.0f32; 4 * HIDDEN];
        pre.copy_from_slice(gates);
        if add_hidden {
            // pre += b + W_hh · h, as Σ_k h[k] · W_hhᵀ[k]: four rows of 512 at a time, every
            // output independent, so the loop vectorises without reassociating a sum.
            pre.iter_mut().zip(&m.rnn_bias).for_each(|(p, b)| *p += b);
            let w = m.transposed.weight_hh.chunks_exact(4 * 4 * HIDDEN);
            for (rows, h) in w.zip(self.h.chunks_exact(4)) {
                let (r0, rest) = rows.split_at(4 * HIDDEN);
                let (r1, rest) = rest.split_at(4 * HIDDEN);
                let (r2, r3) = rest.split_at(4 * HIDDEN);
                for ((((p, a), b), c), d) in pre.iter_mut().zip(r0).zip(r1).zip(r2).zip(r3) {
                    *p += h[0] * a + h[1] * b + h[2] * c + h[3] * d;
                }
            }
        }
        let (i, rest) = pre.split_at(HIDDEN);
        let (f, rest) = rest.split_at(HIDDEN);
        let (g, o) = rest.split_at(HIDDEN);
        let mut logit = m.conv1d_bias;
        for j in 0..HIDDEN {
            let c = sigmoid(f[j]) * self.c[j] + sigmoid(i[j]) * g[j].tanh();
            let h = sigmoid(o[j]) * c.tanh();
            self.c[j] = c;
            self.h[j] = h;
            // Decoder: ReLU, 1×1 conv 128 → 1.
            logit += m.conv1d_weight[j] * h.max(0.0);
        }
        sigmoid(logit)
    }
}

/// A stream of 512-sample windows over a loaded [`SileroVad`]: the LSTM state (h, c) and the
/// 64-sample context carried from window to window, as the silero-vad package's
/// `OnnxWrapper` carries them.
pub struct VadState<'m> {
    model: &'m SileroVad,
    stream: Stream,
}

impl VadState<'_> {
    /// The speech probability of the next window of 16 kHz audio: 512 samples (a shorter
    /// last window is zero-padded, as `get_speech_timestamps` pads it); a longer one is an
    /// error.
    pub fn probability(&mut self, window: &[f32]) -> Result<f32> {
        if window.len() > WINDOW {
            return Err(Error::InvalidRequest(format!(
                "Silero VAD windows are {WINDOW} samples, got {}",
                window.len()
            )));
        }
        Ok(self.stream.step(self.model, window))
    }

    /// Forgets the stream: zero state and context, as for a new file.
    pub fn reset(&mut self) {
        self.stream.h = [0.0; HIDDEN];
        self.stream.c = [0.0; HIDDEN];
        self.stream.context = [0.0; CONTEXT];
    }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// `y = W x + b`, `W` [y.len(), x.len()] row-major.
fn matvec(w: &[f32], x: &[f32], b: &[f32], y: &mut [f32]) {
    let n = x.len();
    for ((row, yi), bi) in w.chunks_exact(n).zip(y.iter_mut()).zip(b) {
        *yi = bi + dot(row, x);
    }
}

#[cfg(test)]
mod tests {
    use super::SileroVad;

    #[test]
    fn shareable_between_threads() {
        fn check<T: Send + Sync>() {}
        check::<SileroVad>();
    }

    #[test]
    fn not_a_model() {
        for (bytes, expect) in [
            (&b""[..], "empty file"),
            (b"RIFF....WAVE", "not a Silero VAD model"),
            (b"lmgg\x0a\0\0\0silero-16k\x06\0", "truncated"),
            (b"\x08\x07\x12\x03abc", "not an ONNX model (no graph)"),
            (b"\x08\x07\x3a\x00", "no Silero VAD weights"),
            (b"\x08\x07\x3a\x7f", "truncated protobuf"),
        ] {
            match SileroVad::from_bytes(bytes) {
                Ok(_) => panic!("{bytes:?} loaded"),
                Err(e) => assert!(e.contains(expect), "{bytes:?}: {e}"),
            }
        }
    }
}
