//! The pre-norm decoder layer of Llama-family models, written once: Mistral/Ministral
//! (Voxtral's encoder and decoder), Qwen3 (the Qwen3-TTS talker and code predictor) and, with
//! LayerNorm and a GELU MLP ([`LayerKind::LayerNormGelu`]), Mimi's codec transformer.
//!
//! x → h = x + [s₁ ·] attention(norm₁(x)) → h + [s₂ ·] mlp(norm₂(h) [· gain]), with a KV
//! cache (full or sliding window) and RoPE.

use crate::attention::{Attention, AttentionConfig, KvSource};
use crate::kernels::machine::CycleBytes;
use crate::kv_cache::KvCache;
use crate::linear::{Linear, WeightFormat};
use crate::mlp::{GeluMlp, SwiGlu};
use crate::norm::{LayerNorm, RmsNorm};
use crate::rope::RotaryEmbedding;
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

/// Checkpoint names inside one layer.
#[derive(Clone, Copy, Debug)]
pub struct LayerNames {
    /// Attention norm and FFN norm (`input_layernorm`, `post_attention_layernorm`).
    pub norms: [&'static str; 2],
    /// The attention module (`self_attn`) and its q, k, v, o projections.
    pub attention: &'static str,
    pub qkvo: [&'static str; 4],
    /// The MLP module (`mlp`) and its gate, up, down projections.
    pub mlp: &'static str,
    pub gate_up_down: [&'static str; 3],
}

impl LayerNames {
    /// Hugging Face's Llama / Qwen names.
    pub const HF: LayerNames = LayerNames {
        norms: ["input_layernorm", "post_attention_layernorm"],
        attention: "self_attn",
        qkvo: ["q_proj", "k_proj", "v_proj", "o_proj"],
        mlp: "mlp",
        gate_up_down: ["gate_proj", "up_proj", "down_proj"],
    };
}

/// Refuses a checkpoint holding a layer `count` under `layers` (layer i's tensors lie under
/// `i.`, `probe` one of them): a config that says fewer layers than the weights hold would
/// load, and compute with part of the model.
pub fn check_layer_count(layers: &VarBuilder, count: usize, probe: &str) -> Result<()> {
    if layers.contains_tensor(&format!("{count}.{probe}")) {
        let at = match layers.prefix() {
            p if p.is_empty() => count.to_string(),
            p => format!("{p}.{count}"),
        };
        candle_core::bail!(
            "the config says {count} layers, but the checkpoint holds more ({at} is there)"
        );
    }
    Ok(())
}

/// Shape of one layer.
#[derive(Clone, Copy, Debug)]
pub struct LayerConfig {
    pub dim: usize,
    pub hidden_dim: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub norm_eps: f64,
    /// Biases on q, k, v, o and on the MLP's down projection (Voxtral's encoder).
    pub attention_bias: [bool; 4],
    pub down_bias: bool,
    /// Qwen3's per-head q/k RMSNorm.
    pub qk_norm: bool,
    /// Learned per-channel scales on both residual branches (`self_attn_layer_scale.scale`,
    /// `mlp_layer_scale.scale`: Mimi-style codec transformers).
    pub layer_scale: bool,
}

/// The norms and the feed-forward block of a [`PreNormLayer`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerKind {
    /// RMSNorm and SwiGLU (`LayerNames::gate_up_down`): Llama, Mistral, Qwen3.
    RmsSwiGlu,
    /// LayerNorm with weight and bias, and a GELU (erf) MLP `fc1` → `fc2` without biases (the
    /// MLP module is still `LayerNames::mlp`): Mimi's transformer (Kyutai; the Qwen3-TTS codec
    /// encoder).
    LayerNormGelu,
}

#[derive(Clone, Debug)]
enum Norm {
    Rms(RmsNorm),
    Layer(LayerNorm),
}

impl Norm {
    fn load(vb: VarBuilder, kind: LayerKind, dim: usize, eps: f64) -> Result<Self> {
        Ok(match kind {
            LayerKind::RmsSwiGlu => Self::Rms(RmsNorm::load(vb, dim, eps)?),
            LayerKind::LayerNormGelu => Self::Layer(LayerNorm::load(vb, dim, eps)?),
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Rms(n) => n.forward(x),
            Self::Layer(n) => n.forward(x),
        }
    }
}

#[derive(Clone, Debug)]
enum Ffn {
    SwiGlu(SwiGlu),
    Gelu(GeluMlp),
}

impl Ffn {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::SwiGlu(m) => m.forward(x),
            Self::Gelu(m) => m.forward(x),
        }
    }
}

/// One pre-norm layer: norm → GQA attention (cached, RoPE) → norm → MLP; RMSNorm and SwiGLU
/// unless loaded as another [`LayerKind`].
#[derive(Clone, Debug)]
pub struct PreNormLayer {
    attention_norm: Norm,
    attention: Attention,
    ffn_norm: Norm,
    mlp: Ffn,
    /// Layer scales of the attention and MLP branches.
    scales: Option<[Tensor; 2]>,
}

impl PreNormLayer {
    /// A [`LayerKind::RmsSwiGlu`] layer.
    pub fn load(vb: VarBuilder, cfg: &LayerConfig, names: &LayerNames) -> Result<Self> {
        Self::load_kind(vb, cfg, names, LayerKind::RmsSwiGlu)
    }

    /// A layer of the given kind (`cfg.down_bias` applies to SwiGLU only).
    pub fn load_kind(
        vb: VarBuilder,
        cfg: &LayerConfig,
        names: &LayerNames,
        kind: LayerKind,
    ) -> Result<Self> {
        let scale = |name: &str| {
            vb.pp(name).get_with_hints_dtype(
                cfg.dim,
                "scale",
                candle_nn::Init::Const(1.),
                candle_core::DType::F32,
            )
        };
        let scales = if cfg.layer_scale {
            Some([scale("self_attn_layer_scale")?, scale("mlp_layer_scale")?])
        } else {
            None
        };
        Ok(Self {
            scales,
            attention_norm: Norm::load(vb.pp(names.norms[0]), kind, cfg.dim, cfg.norm_eps)?,
            attention: Attention::load(
                vb.pp(names.attention),
                AttentionConfig {
                    dim: cfg.dim,
                    n_heads: cfg.n_heads,
                    n_kv_heads: cfg.n_kv_heads,
                    head_dim: cfg.head_dim,
                    bias: cfg.attention_bias,
                    names: names.qkvo,
                    qk_norm_eps: cfg.qk_norm.then_some(cfg.norm_eps),
                },
            )?,
            ffn_norm: Norm::load(vb.pp(names.norms[1]), kind, cfg.dim, cfg.norm_eps)?,
            mlp: match kind {
                LayerKind::RmsSwiGlu => Ffn::SwiGlu(SwiGlu::load(
                    vb.pp(names.mlp),
                    cfg.dim,
                    cfg.hidden_dim,
                    names.gate_up_down,
                    cfg.down_bias,
                )?),
                LayerKind::LayerNormGelu => Ffn::Gelu(GeluMlp::load_with_bias(
                    vb.pp(names.mlp),
                    cfg.dim,
                    cfg.hidden_dim,
                    false,
                )?),
            },
        })
    }

    /// The layer with its attention and MLP matrices stored as `format`.
    pub fn into_format(self, format: WeightFormat) -> Result<Self> {
        Ok(Self {
            attention: self.attention.to_format(format)?,
            mlp: match self.mlp {
                Ffn::SwiGlu(m) => Ffn::SwiGlu(m.to_format(format)?),
                Ffn::Gelu(m) => Ffn::Gelu(m.to_format(format)?),
            },
            ..self
        })
    }

    /// The matrices a step reads (for residency planning): q, k, v, o and the MLP's (gate, up,
    /// down or fc1, fc2).
    pub fn linears_mut(&mut self) -> impl Iterator<Item = &mut Linear> {
        let mlp: Vec<&mut Linear> = match &mut self.mlp {
            Ffn::SwiGlu(m) => m.linears_mut().collect(),
            Ffn::Gelu(m) => m.linears_mut().into(),
        };
        self.attention.step_projections_mut().into_iter().chain(mlp)
    }

    /// What a pass over the layer's matrices reads, by residency.
    pub fn read_bytes(&self) -> CycleBytes {
        self.attention.read_bytes()
            + match &self.mlp {
                Ffn::SwiGlu(m) => m.read_bytes(),
                Ffn::Gelu(m) => m.read_bytes(),
            }
    }

    /// x: (batch, t, dim) at positions `offset..offset + t` → (batch, t, dim); `ffn_gain`
    /// multiplies the FFN norm's output (Voxtral Realtime's delay conditioning).
    pub fn forward(
        &self,
        x: &Tensor,
        cache: &mut KvCache,
        rope: &RotaryEmbedding,
        offset: usize,
        ffn_gain: Option<&Tensor>,
    ) -> Result<Tensor> {
        self.forward_with(x, ffn_gain, |normed| {
            self.attention
                .forward(normed, KvSource::Cached(cache), true, Some((rope, offset)))
        })
    }

    /// One position of each of several sequences, x (rows, 1, dim), row i at position
    /// `offsets[i]` of its own cache `caches[i]` ([`Attention::forward_rows`]: the matrices
    /// read once for all rows) → (rows, 1, dim); `ffn_gain` (rows, 1, dim), each row's own.
    pub fn forward_rows(
        &self,
        x: &Tensor,
        caches: &mut [&mut KvCache],
        rope: &RotaryEmbedding,
        offsets: &[usize],
        ffn_gain: Option<&Tensor>,
    ) -> Result<Tensor> {
        self.forward_with(x, ffn_gain, |normed| {
            self.attention
                .forward_rows(normed, caches, Some(rope), offsets)
        })
    }

    /// The layer around `attend`, which maps the normed x to the attention's output.
    fn forward_with(
        &self,
        x: &Tensor,
        ffn_gain: Option<&Tensor>,
        attend: impl FnOnce(&Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let mut a = attend(&self.attention_norm.forward(x)?)?;
        if let Some([scale, _]) = &self.scales {
            a = a.broadcast_mul(scale)?;
        }
        let h = (x + a)?;
        let mut n = self.ffn_norm.forward(&h)?;
        if let Some(gain) = ffn_gain {
            n = n.broadcast_mul(gain)?;
        }
        let mut m = self.mlp.forward(&n)?;
        if let Some([_, scale]) = &self.scales {
            m = m.broadcast_mul(scale)?;
        }
        h + m
    }
}

/// Per-sequence state of a stack of [`PreNormLayer`]s: one KV cache per layer and the next
/// position (the default: none, a placeholder while the state is lent).
#[derive(Clone, Debug, Default)]
pub struct StackState {
    caches: Vec<KvCache>,
    position: usize,
}

impl StackState {
    /// A state at position 0 over `caches`, one per layer.
    pub fn new(caches: Vec<KvCache>) -> Self {
        Self {
            caches,
            position: 0,
        }
    }

    /// Positions consumed so far.
    pub fn position(&self) -> usize {
        self.position
    }

    /// Forgets every position (the buffers are kept).
    pub fn reset(&mut self) {
        self.caches.iter_mut().for_each(KvCache::reset);
        self.position = 0;
    }

    /// Bytes of keys and values the newest position's attention read, over every layer.
    pub fn attended_bytes(&self) -> usize {
        self.caches.iter().map(KvCache::attended_bytes).sum()
    }

    /// Positions held by the largest cache.
    pub fn cached_positions(&self) -> usize {
        self.caches.iter().map(KvCache::capacity).max().unwrap_or(0)
    }

    /// A cache per layer of a stack of `layers` (a placeholder state has none).
    fn check_layers(&self, layers: usize) -> Result<()> {
        if self.caches.len() != layers {
            candle_core::bail!(
                "a state of {} layers' caches for a stack of {layers} layers",
                self.caches.len()
            );
        }
        Ok(())
    }

    /// An independent copy that continues from here ([`KvCache::fork`]).
    pub fn fork(&self) -> Result<Self> {
        Ok(Self {
            caches: self
                .caches
                .iter()
                .map(KvCache::fork)
                .collect::<Result<_>>()?,
            position: self.position,
        })
    }

    /// A copy of what the caches hold: the state after a prompt prefix, for sequences that
    /// start with the same positions.
    pub fn snapshot(&self) -> Result<StackPrefix> {
        Ok(StackPrefix {
            layers: self
                .caches
                .iter()
                .map(KvCache::snapshot)
                .collect::<Result<_>>()?,
            positions: self.position,
        })
    }

    /// Replaces what the caches hold by `prefix`; the next position is the one after it.
    pub fn restore(&mut self, prefix: &StackPrefix) -> Result<()> {
        if prefix.layers.len() != self.caches.len() {
            candle_core::bail!(
                "a prefix of {} layers for a stack of {}",
                prefix.layers.len(),
                self.caches.len()
            );
        }
        self.reset();
        for (cache, (k, v)) in self.caches.iter_mut().zip(&prefix.layers) {
            cache.append(k, v)?;
        }
        self.position = prefix.positions;
        Ok(())
    }

    /// x: (batch, t, dim) through `layers` at positions `position..position + t` → the last
    /// layer's output (batch, t, dim), before any final norm; `gains` per layer multiply the
    /// FFN norms' outputs ([`PreNormLayer::forward`]), and every layer's output is pushed to
    /// `hidden` when given.
    pub fn forward<'a, L>(
        &mut self,
        layers: L,
        x: &Tensor,
        rope: &RotaryEmbedding,
        gains: Option<&[Tensor]>,
        mut hidden: Option<&mut Vec<Tensor>>,
    ) -> Result<Tensor>
    where
        L: IntoIterator<Item = &'a PreNormLayer>,
        L::IntoIter: ExactSizeIterator,
    {
        let layers = layers.into_iter();
        self.check_layers(layers.len())?;
        let mut x = x.clone();
        for (i, (layer, cache)) in layers.zip(&mut self.caches).enumerate() {
            x = layer.forward(&x, cache, rope, self.position, gains.map(|g| &g[i]))?;
            if let Some(h) = hidden.as_deref_mut() {
                h.push(x.clone());
            }
        }
        self.position += x.dim(1)?;
        Ok(x)
    }

    /// One position of each of several sequences through `layers`, x (rows, 1, dim), row i
    /// continuing `states[i]` (each matrix read once for all rows; each row attends over its
    /// own caches at its own position) → the last layer's output (rows, 1, dim); `gains` per
    /// layer (rows, 1, dim), each row's own.
    pub fn forward_rows<'a, L>(
        states: &mut [&mut StackState],
        layers: L,
        x: &Tensor,
        rope: &RotaryEmbedding,
        gains: Option<&[Tensor]>,
    ) -> Result<Tensor>
    where
        L: IntoIterator<Item = &'a PreNormLayer>,
        L::IntoIter: ExactSizeIterator,
    {
        let layers = layers.into_iter();
        for state in states.iter() {
            state.check_layers(layers.len())?;
        }
        let offsets: Vec<usize> = states.iter().map(|s| s.position).collect();
        let mut x = x.clone();
        for (i, layer) in layers.enumerate() {
            let mut caches: Vec<&mut KvCache> =
                states.iter_mut().map(|s| &mut s.caches[i]).collect();
            x = layer.forward_rows(&x, &mut caches, rope, &offsets, gains.map(|g| &g[i]))?;
        }
        for state in states {
            state.position += 1;
        }
        Ok(x)
    }
}

/// The keys and values of a stack's first positions, every layer's, copied out of a
/// sequence's state ([`StackState::snapshot`]).
#[derive(Clone, Debug)]
pub struct StackPrefix {
    /// (1, kv_heads, positions, head_dim) keys and values per layer.
    layers: Vec<(Tensor, Tensor)>,
    positions: usize,
}

impl StackPrefix {
    /// A prefix of `positions` positions from each layer's keys and values (1, kv_heads,
    /// positions, head_dim).
    pub fn new(layers: Vec<(Tensor, Tensor)>, positions: usize) -> Result<Self> {
        for (k, v) in &layers {
            if k.dim(2)? != positions || v.dim(2)? != positions {
                candle_core::bail!(
                    "a prefix of {positions} positions given keys of {} and values of {}",
                    k.dim(2)?,
                    v.dim(2)?
                );
            }
        }
        Ok(Self { layers, positions })
    }

    /// Positions the prefix holds.
    pub fn positions(&self) -> usize {
        self.positions
    }

    /// Bytes of the copied keys and values.
    pub fn bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|(k, v)| (k.elem_count() + v.elem_count()) * k.dtype().size_in_bytes())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rope::RopeLayout;
    use candle_core::{DType, Device};

    /// Keys or values of `positions` positions of 2 heads × 4, counting from `first`.
    fn kv(positions: usize, first: f32) -> Result<Tensor> {
        Tensor::arange(first, first + (8 * positions) as f32, &Device::Cpu)?
            .reshape((1, 2, positions, 4))?
            .contiguous()
    }

    #[test]
    fn a_restored_prefix_is_the_snapshot_state() -> Result<()> {
        let cache = || KvCache::growable(1, 2, 16, 4, DType::F32, &Device::Cpu);
        let prefix = StackPrefix::new(vec![(kv(3, 0.0)?, kv(3, 100.0)?); 2], 3)?;
        assert_eq!(prefix.bytes(), 2 * 2 * 3 * 8 * 4);
        let mut state = StackState::new(vec![cache()?, cache()?]);
        state.restore(&prefix)?;
        assert_eq!(state.position(), 3);
        let again = state.snapshot()?;
        assert_eq!(again.positions(), 3);
        for ((k, v), (k0, v0)) in again.layers.iter().zip(&prefix.layers) {
            let values = |t: &Tensor| t.flatten_all()?.to_vec1::<f32>();
            assert_eq!(values(k)?, values(k0)?);
            assert_eq!(values(v)?, values(v0)?);
        }
        // A fork continues apart: resetting the original leaves it whole.
        let fork = state.fork()?;
        state.reset();
        assert_eq!((state.position(), fork.position()), (0, 3));
        assert_eq!(fork.snapshot()?.bytes(), prefix.bytes());
        // A prefix of another depth, or whose tensors hold other positions, is refused.
        let shallow = StackPrefix::new(vec![(kv(3, 0.0)?, kv(3, 0.0)?)], 3)?;
        assert!(state.restore(&shallow).is_err());
        assert!(StackPrefix::new(vec![(kv(3, 0.0)?, kv(2, 0.0)?)], 3).is_err());
        // A state run through a stack of another depth (a placeholder, say) is refused, not
        // run through fewer layers.
        let rope = RotaryEmbedding::new(4, 8, 10_000.0, RopeLayout::RotateHalf, &Device::Cpu)?;
        let x = Tensor::zeros((1, 1, 8), DType::F32, &Device::Cpu)?;
        let no_layers: &[PreNormLayer] = &[];
        let placeholder = StackState::default().forward(no_layers, &x, &rope, None, None);
        assert!(placeholder.is_ok(), "no layers, no caches");
        assert!(state.forward(no_layers, &x, &rope, None, None).is_err());
        let rows = StackState::forward_rows(&mut [&mut state], no_layers, &x, &rope, None);
        assert!(rows.is_err());
        Ok(())
    }
}
