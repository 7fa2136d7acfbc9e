//! The talker (a Qwen3 decoder over summed text and codec embeddings that predicts each
//! frame's first, "semantic" code) and the code predictor (a small Qwen3 decoder that
//! predicts the frame's 15 acoustic codes one after another). Blocks come from `voxide-nn`.
//!
//! Shapes (1.7B): text ids → text_embedding [151 936, 2048] → text_projection 2048 → 2048 → H;
//! codec ids → codec_embedding [3072, H]; 28 layers of H = 2048 (16 q heads, 8 kv heads × 128,
//! per-head q/k RMSNorm); codec_head [3072, H]. Code predictor: small_to_mtp_projection
//! H → 1024 (1.7B only), 5 layers of 1024, 15 embeddings [2048, H] and 15 heads [2048, 1024].
//! M-RoPE with three equal position streams is plain RoPE (rotate-half pairs).

use super::config::{CodePredictorConfig, DecoderDims, TalkerConfig};
use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;
use voxide_nn::kernels::machine::CycleBytes;
use voxide_nn::linear::WeightFormat;
use voxide_nn::transformer::{check_layer_count, LayerNames, PreNormLayer, StackState};
use voxide_nn::weights::RowTable;
use voxide_nn::{KvCache, Linear, RmsNorm, RopeLayout, RotaryEmbedding};

/// RoPE table length; later positions are computed on the fly.
const ROPE_TABLE: usize = 4096;

/// Positions a stack runs at once: attention's mask and scores take block × positions seen,
/// so a long prompt costs O(block · t) memory instead of O(t²).
const PREFILL_BLOCK: usize = 512;

/// A Qwen3 decoder stack: layers, final norm, rotary table.
#[derive(Clone, Debug)]
struct Stack {
    layers: Vec<PreNormLayer>,
    norm: RmsNorm,
    rope: RotaryEmbedding,
    n_kv_heads: usize,
    head_dim: usize,
}

impl Stack {
    /// Loads the layers, each converted to `format` as soon as it is read (loading never holds
    /// the whole stack in the stored precision beside its converted copy).
    fn load(vb: VarBuilder, dims: &DecoderDims, format: Option<WeightFormat>) -> Result<Self> {
        let layer = dims.layer();
        let layers = vb.pp("layers");
        let norm = format!("{}.weight", LayerNames::HF.norms[0]);
        check_layer_count(&layers, dims.num_hidden_layers, &norm)?;
        let layers = (0..dims.num_hidden_layers)
            .map(|i| {
                let l = PreNormLayer::load(layers.pp(i), &layer, &LayerNames::HF)?;
                match format {
                    Some(f) => l.into_format(f),
                    None => Ok(l),
                }
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            layers,
            norm: RmsNorm::load(vb.pp("norm"), layer.dim, layer.norm_eps)?,
            rope: RotaryEmbedding::new(
                layer.head_dim,
                ROPE_TABLE,
                dims.rope_theta,
                RopeLayout::RotateHalf,
                vb.device(),
            )?,
            n_kv_heads: layer.n_kv_heads,
            head_dim: layer.head_dim,
        })
    }

    fn new_state(&self, capacity: usize, kv_dtype: DType, device: &Device) -> Result<StackState> {
        let caches = (0..self.layers.len())
            .map(|_| {
                KvCache::new(
                    1,
                    self.n_kv_heads,
                    capacity,
                    self.head_dim,
                    kv_dtype,
                    device,
                )
            })
            .collect::<Result<_>>()?;
        Ok(StackState::new(caches))
    }

    /// x: (1, t, dim) at the state's position → final-norm hidden states (1, t, dim).
    fn forward(&self, x: &Tensor, state: &mut StackState) -> Result<Tensor> {
        self.forward_in_blocks(x, state, PREFILL_BLOCK)
    }

    /// [`Self::forward`], `block` positions at a time: each block attends to the cached ones
    /// before it, so the result is one pass's.
    fn forward_in_blocks(
        &self,
        x: &Tensor,
        state: &mut StackState,
        block: usize,
    ) -> Result<Tensor> {
        let t = x.dim(1)?;
        let mut outs = Vec::with_capacity(t.div_ceil(block));
        for start in (0..t).step_by(block) {
            let x = x.narrow(1, start, block.min(t - start))?;
            let h = state.forward(&self.layers, &x, &self.rope, None, None)?;
            outs.push(self.norm.forward(&h)?);
        }
        Tensor::cat(&outs, 1)
    }

    /// One position of each of several requests, x (rows, 1, dim), row i continuing
    /// `states[i]` (each matrix read once for all rows; each row's attention over its own
    /// caches at its own position) → final-norm hidden states (rows, 1, dim). One row runs
    /// [`Self::forward`], so a request alone computes what it always did.
    fn forward_rows(&self, x: &Tensor, states: &mut [&mut StackState]) -> Result<Tensor> {
        if let [state] = states {
            return self.forward(x, state);
        }
        let h = StackState::forward_rows(states, &self.layers, x, &self.rope, None)?;
        self.norm.forward(&h)
    }

    fn linears_mut(&mut self) -> impl Iterator<Item = &mut Linear> {
        self.layers.iter_mut().flat_map(PreNormLayer::linears_mut)
    }

    fn read_bytes(&self) -> CycleBytes {
        self.layers.iter().map(PreNormLayer::read_bytes).sum()
    }

    fn into_format(self, format: WeightFormat) -> Result<Self> {
        Ok(Self {
            layers: self
                .layers
                .into_iter()
                .map(|l| l.into_format(format))
                .collect::<Result<_>>()?,
            ..self
        })
    }
}

/// `linear` stored as `format`, if one is given.
fn in_format(linear: Linear, format: Option<WeightFormat>) -> Result<Linear> {
    match format {
        Some(f) => linear.to_format(f),
        None => Ok(linear),
    }
}

/// Rows `ids` of an embedding table as f32: (1, ids, dim).
fn lookup(table: &Tensor, ids: &[u32]) -> Result<Tensor> {
    let ids = Tensor::new(ids, table.device())?;
    table
        .index_select(&ids, 0)?
        .to_dtype(DType::F32)?
        .unsqueeze(0)
}

/// The code predictor (`talker.code_predictor`).
#[derive(Clone, Debug)]
pub struct CodePredictor {
    /// `small_to_mtp_projection`, where the predictor is narrower than the talker.
    projection: Option<Linear>,
    /// Embeddings of acoustic codes 1..G−1 (talker width).
    codec_embedding: Vec<Tensor>,
    stack: Stack,
    /// Heads predicting codes 1..G−1.
    lm_head: Vec<Linear>,
}

impl CodePredictor {
    /// Loads the predictor, its matrices converted to `format` as they are read.
    fn load(
        vb: VarBuilder,
        cfg: &CodePredictorConfig,
        talker_dim: usize,
        format: Option<WeightFormat>,
    ) -> Result<Self> {
        let d = &cfg.dims;
        let groups = d.num_code_groups - 1;
        let projection = if d.hidden_size != talker_dim {
            Some(in_format(
                Linear::load(
                    vb.pp("small_to_mtp_projection"),
                    talker_dim,
                    d.hidden_size,
                    true,
                )?,
                format,
            )?)
        } else {
            None
        };
        let model = vb.pp("model");
        let codec_embedding = (0..groups)
            .map(|g| {
                model
                    .pp("codec_embedding")
                    .pp(g)
                    .get((d.vocab_size, talker_dim), "weight")
            })
            .collect::<Result<_>>()?;
        let lm_head = (0..groups)
            .map(|g| {
                in_format(
                    Linear::load(vb.pp("lm_head").pp(g), d.hidden_size, d.vocab_size, false)?,
                    format,
                )
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            projection,
            codec_embedding,
            stack: Stack::load(model, d, format)?,
            lm_head,
        })
    }

    fn into_format(self, format: WeightFormat) -> Result<Self> {
        Ok(Self {
            projection: self.projection.map(|p| p.to_format(format)).transpose()?,
            stack: self.stack.into_format(format)?,
            lm_head: self
                .lm_head
                .into_iter()
                .map(|h| h.to_format(format))
                .collect::<Result<_>>()?,
            ..self
        })
    }

    /// Bytes of weights the acoustic steps of one frame read, by residency (each step reads
    /// the whole stack, and its own head).
    pub fn frame_bytes(&self) -> CycleBytes {
        let heads: CycleBytes = self.lm_head.iter().map(Linear::read_bytes).sum();
        self.pass_bytes() * self.groups() + heads
    }

    /// Bytes of weights every acoustic step reads, by residency: the stack and the projection,
    /// read again by each of a frame's steps with only a head read in between.
    pub fn pass_bytes(&self) -> CycleBytes {
        let projection = self
            .projection
            .iter()
            .map(Linear::read_bytes)
            .sum::<CycleBytes>();
        self.stack.read_bytes() + projection
    }

    /// Acoustic groups predicted per frame (G − 1 = 15).
    pub fn groups(&self) -> usize {
        self.lm_head.len()
    }

    /// A fresh state for one frame (G + 1 positions at most; the cache is reset each frame),
    /// its KV caches in `kv_dtype`.
    pub fn new_state(&self, kv_dtype: DType, device: &Device) -> Result<StackState> {
        self.stack.new_state(self.groups() + 2, kv_dtype, device)
    }

    /// Embeddings of acoustic codes `codes` of group `group` (1-based, 1..G−1): (1, n, H).
    pub fn embed(&self, group: usize, codes: &[u32]) -> Result<Tensor> {
        lookup(&self.codec_embedding[group - 1], codes)
    }

    /// Runs talker-width inputs (1, t, H) and returns the logits of acoustic group `group`
    /// (1-based) at the last position: (vocab,).
    pub fn step(&self, x: &Tensor, state: &mut StackState, group: usize) -> Result<Tensor> {
        let x = match &self.projection {
            Some(p) => p.forward(x)?,
            None => x.clone(),
        };
        let h = self.stack.forward(&x, state)?;
        let last = h.narrow(1, h.dim(1)? - 1, 1)?;
        self.lm_head[group - 1].forward(&last)?.flatten_all()
    }

    /// [`Self::step`] for one position of each of several requests, x (rows, 1, H), row i
    /// continuing `states[i]`: the logits of group `group`, a row each (rows, vocab).
    pub fn step_rows(
        &self,
        x: &Tensor,
        states: &mut [&mut StackState],
        group: usize,
    ) -> Result<Tensor> {
        let x = match &self.projection {
            Some(p) => p.forward(x)?,
            None => x.clone(),
        };
        let h = self.stack.forward_rows(&x, states)?;
        self.lm_head[group - 1].forward(&h)?.squeeze(1)
    }
}

/// The talker with its code predictor (`talker.*` of the checkpoint).
#[derive(Clone, Debug)]
pub struct Talker {
    /// Left in the checkpoint file (see [`RowTable`]): a request reads a few hundred rows.
    text_embedding: RowTable,
    text_projection: [Linear; 2],
    activation: candle_nn::Activation,
    codec_embedding: Tensor,
    stack: Stack,
    codec_head: Linear,
    predictor: CodePredictor,
    config: TalkerConfig,
}

impl Talker {
    /// Loads `talker.*` (`vb` at the checkpoint root); the text embedding
    /// (`talker.model.text_embedding.weight`) comes as a [`RowTable`] of the same file. With
    /// `format`, the matrices [`Self::into_format`] converts are converted as they are read.
    pub fn load(
        vb: VarBuilder,
        cfg: &TalkerConfig,
        text_embedding: RowTable,
        format: Option<WeightFormat>,
    ) -> Result<Self> {
        let vb = vb.pp("talker");
        let model = vb.pp("model");
        let d = &cfg.dims;
        let h = d.hidden_size;
        let tp = vb.pp("text_projection");
        let mut talker = Self {
            text_embedding,
            text_projection: [
                Linear::load(
                    tp.pp("linear_fc1"),
                    cfg.text_hidden_size,
                    cfg.text_hidden_size,
                    true,
                )?,
                Linear::load(tp.pp("linear_fc2"), cfg.text_hidden_size, h, true)?,
            ],
            activation: d.hidden_act,
            codec_embedding: model
                .pp("codec_embedding")
                .get((d.vocab_size, h), "weight")?,
            stack: Stack::load(model, d, format)?,
            codec_head: in_format(
                Linear::load(vb.pp("codec_head"), h, d.vocab_size, false)?,
                format,
            )?,
            predictor: CodePredictor::load(
                vb.pp("code_predictor"),
                &cfg.code_predictor_config,
                h,
                format,
            )?,
            config: cfg.clone(),
        };
        talker.plan_residency();
        Ok(talker)
    }

    /// The talker and predictor matrices stored as `format` (int8 halves what a frame reads);
    /// embeddings and the text projection keep the checkpoint's precision.
    pub fn into_format(self, format: WeightFormat) -> Result<Self> {
        let mut talker = Self {
            stack: self.stack.into_format(format)?,
            codec_head: self.codec_head.to_format(format)?,
            predictor: self.predictor.into_format(format)?,
            ..self
        };
        talker.plan_residency();
        Ok(talker)
    }

    /// Bytes of weights a talker step reads, by residency (layers and codec head).
    pub fn step_bytes(&self) -> CycleBytes {
        self.stack.read_bytes() + self.codec_head.read_bytes()
    }

    /// Which matrices of a frame stay cached: the predictor's stack (and projection), read
    /// once per acoustic group, before the talker's and the heads, read once per frame.
    fn plan_residency(&mut self) {
        let groups = self.predictor.groups();
        let mut frame: Vec<(&mut Linear, usize)> = vec![(&mut self.codec_head, 1)];
        frame.extend(self.stack.linears_mut().map(|l| (l, 1)));
        frame.extend(self.predictor.stack.linears_mut().map(|l| (l, groups)));
        frame.extend(self.predictor.lm_head.iter_mut().map(|l| (l, 1)));
        frame.extend(self.predictor.projection.iter_mut().map(|l| (l, groups)));
        Linear::plan_cycle_residency(frame, 0);
    }

    pub fn config(&self) -> &TalkerConfig {
        &self.config
    }

    pub fn device(&self) -> &Device {
        self.codec_embedding.device()
    }

    pub fn predictor(&self) -> &CodePredictor {
        &self.predictor
    }

    /// Text ids → projected text-track embeddings (1, t, H).
    pub fn embed_text(&self, ids: &[u32]) -> Result<Tensor> {
        let x = self
            .text_embedding
            .lookup(ids, self.device())?
            .unsqueeze(0)?;
        let x = self
            .activation
            .forward(&self.text_projection[0].forward(&x)?)?;
        self.text_projection[1].forward(&x)
    }

    /// Codec ids → codec-track embeddings (1, t, H).
    pub fn embed_codec(&self, ids: &[u32]) -> Result<Tensor> {
        lookup(&self.codec_embedding, ids)
    }

    /// Frames of G codes → the sum of their G code embeddings, the talker's input for the
    /// next position (1, n, H): code 0 from the talker's table, codes 1..G−1 from the
    /// predictor's.
    pub fn embed_frames(&self, frames: &[Vec<u32>]) -> Result<Tensor> {
        let group = |g: usize| frames.iter().map(|f| f[g]).collect::<Vec<_>>();
        let mut sum = self.embed_codec(&group(0))?;
        for g in 1..=self.predictor.groups() {
            sum = (sum + self.predictor.embed(g, &group(g))?)?;
        }
        Ok(sum)
    }

    /// A fresh talker state for `capacity` positions (prompt + frames), its KV caches in
    /// `kv_dtype`.
    pub fn new_state(&self, capacity: usize, kv_dtype: DType) -> Result<StackState> {
        self.stack.new_state(capacity, kv_dtype, self.device())
    }

    /// The precision of the talker's and code predictor's KV caches when a request names
    /// none: f16 beside quantized weights, whose rounding moves the logits far more than f16
    /// keys and values do; f32 beside float weights, which then give qwen-tts' greedy codes
    /// exactly (on the bf16 fixtures f16 K/V flip a near tie within seven frames).
    pub fn default_kv_dtype(&self) -> DType {
        match self.codec_head.weight_format().dtype() {
            None => DType::F16,
            Some(_) => DType::F32,
        }
    }

    /// Runs embeddings (1, t, H) and returns the final-norm hidden states (1, t, H).
    pub fn forward(&self, x: &Tensor, state: &mut StackState) -> Result<Tensor> {
        self.stack.forward(x, state)
    }

    /// One position of each of several requests, x (rows, 1, H), row i continuing
    /// `states[i]` → final-norm hidden states (rows, 1, H).
    pub fn forward_rows(&self, x: &Tensor, states: &mut [&mut StackState]) -> Result<Tensor> {
        self.stack.forward_rows(x, states)
    }

    /// codec_head over hidden states (…, H) → (…, vocab).
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        self.codec_head.forward(hidden)
    }
}

#[cfg(test)]
mod tests {
    use super::super::Qwen3Tts;
    use super::*;
    use std::path::Path;

    /// A prompt run in blocks through the caches equals one pass, and leaves the same state
    /// behind (the next step's output agrees too).
    #[test]
    fn prefill_blocks_equal_one_pass() -> Result<()> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/qwen3-tts/tiny-random");
        let tts = Qwen3Tts::from_dir(&dir, &Device::Cpu, None).expect("fixture model");
        let talker = tts.talker();
        let h = talker.config().dims.hidden_size;
        let x = Tensor::randn(0f32, 1.0, (1, 61, h), &Device::Cpu)?;
        let step = Tensor::randn(0f32, 1.0, (1, 1, h), &Device::Cpu)?;
        let run = |block: usize| -> Result<(Tensor, Tensor)> {
            let mut state = talker.new_state(62, DType::F32)?;
            let prefill = talker.stack.forward_in_blocks(&x, &mut state, block)?;
            assert_eq!(state.position(), 61);
            Ok((prefill, talker.forward(&step, &mut state)?))
        };
        let (one, next) = run(61)?;
        for block in [1, 7, 32] {
            let (blocked, blocked_next) = run(block)?;
            for (a, b) in [(&blocked, &one), (&blocked_next, &next)] {
                let d = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
                // Blocks of one take the decode-step kernel: other rounding.
                assert!(d < 1e-4, "blocks of {block}: {d}");
            }
        }
        Ok(())
    }
}
