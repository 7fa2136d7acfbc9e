//! Shared neural-network blocks of voxide.
//!
//! Every model family composes these blocks instead of writing its own copy: a block is written
//! once here (linear layers, norms, attention with a preallocated KV cache, MLPs, RoPE, the conv
//! stem, sampling) and the families differ only in how they wire them and in their weight names.
//! Tensors come from `candle`; hot paths that candle serves poorly get their own kernels here.

pub mod activation;
pub mod attention;
pub mod conv;
pub mod kernels;
pub mod kv_cache;
pub mod linear;
pub mod mlp;
pub mod norm;
pub mod quant;
pub mod rope;
pub mod sampling;
pub mod transformer;
pub mod weights;

pub use attention::{Attention, AttentionConfig, CrossKv, KvSource};
pub use conv::{Conv1d, Conv1dSpec, ConvStem, ConvStemState};
pub use kv_cache::{KvCache, KvView};
pub use linear::Linear;
pub use mlp::{GeluMlp, SwiGlu};
pub use norm::{LayerNorm, RmsNorm};
pub use rope::{RopeLayout, RotaryEmbedding};

pub use candle_core::{DType, Device, Result, Tensor};
pub use candle_nn::VarBuilder;
